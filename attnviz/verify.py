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

:func:`compare` is also what ``attnviz check`` runs on its built-in inputs
(:mod:`attnviz.pipelines.check`).
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
    # object detection (tests/detect_tiny.py KINDS, tests/test_detect.py)
    "detr", "conditional_detr", "yolos", "deformable_detr", "rt_detr",
    # speech (tests/audio_tiny.py, tests/test_audio.py; WavLM is recomputed and checked on every call instead)
    "whisper", "wav2vec2", "hubert", "data2vec-audio", "unispeech", "unispeech-sat",
    # vision-language models while they answer (tests/vlm_tiny.py VLM_KINDS, tests/test_vlm.py)
    "llava", "llava_next", "llava_onevision", "qwen2_vl", "qwen2_5_vl", "qwen3_vl", "idefics3", "smolvlm", "paligemma",
    "gemma3",
})
#: Query positions of the run-time check's probe (a prefix of the text).
PROBE_TOKENS = 32
#: Max abs difference allowed per model dtype (see the module docstring).
TOLERANCES = {"float32": 1e-5, "float64": 1e-5, "float16": 1e-2, "bfloat16": 3e-2}

#: Verification.status values.
PROVEN, VERIFIED, MISMATCH, EAGER, SKIPPED = "proven", "verified", "mismatch", "eager", "skipped"


def tolerance_for(model) -> float:
    """The max abs difference allowed between attnviz's capture and eager for ``model``'s dtype."""
    return TOLERANCES.get(dtype_name(model), 1e-2)


def dtype_name(model) -> str:
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

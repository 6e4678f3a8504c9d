"""``attnviz check`` as a library call: is attnviz's capture exact on this model?

::

    from attnviz.pipelines.check import CheckRequest, run
    report = run(CheckRequest("../shared/models/deit-tiny-patch16-224"))
    report.exact, report.max_abs_diff      # True, 0.0
    report.to_json()                       # what `attnviz check ... --json` prints
    report.exit_code                       # 0 exact, 6 not exact

Every layer and head of every attention kind that attnviz's capture gives on a few built-in inputs
is compared with the model's own eager ``output_attentions`` (:func:`attnviz.verify.compare`). Which
inputs depends on the model's modality (:mod:`attnviz.inputs`): :data:`CHECK_INPUTS` holds one
function per modality that ``check`` covers; a model of any other modality is refused in one line
(exit 3) naming its modality. Before a map is compared, the capture checks that it is a ``[query,
key]`` probability map of the input's length; a band or block layout (Longformer, BigBird) is
refused, never called exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

from attnviz.errors import ModelError
from attnviz.pipelines.common import ModelRequest, quiet_libraries
from attnviz.verify import PROVEN_TYPES, compare, dtype_name, tolerance_for

#: Exit status when some attention map differs from eager by more than the tolerance.
NOT_EXACT = 6


@dataclass(frozen=True)
class CheckRequest:
    """``attnviz check``'s options: the model and how to load it (``model.verify`` is not used: this is the check)."""

    model: ModelRequest | str = ModelRequest()

    def model_request(self) -> ModelRequest:
        return self.model if isinstance(self.model, ModelRequest) else ModelRequest(self.model)


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
    quantization: str | None = None

    @property
    def exact(self) -> bool:
        return bool(self.rows) and all(r.max_abs_diff <= self.tolerance for r in self.rows)

    @property
    def exit_code(self) -> int:
        """0 when exact, :data:`NOT_EXACT` (6) otherwise."""
        return 0 if self.exact else NOT_EXACT

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
            "quantization": self.quantization,
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


def _report(model_id, model_type, modality, model, rows, backends, prefix=None) -> CheckReport:
    backend = "eager" if "eager" in backends else (backends[0] if backends else "?")
    return CheckReport(
        model_id, model_type, modality, backend, dtype_name(model), tolerance_for(model),
        model_type in PROVEN_TYPES, tuple(rows), prefix, getattr(model, "attnviz_quantization", None),
    )


def _check_text(name: str, options) -> CheckReport:
    from attnviz.inputs.tokens import load_text_model, prepare_text

    from attnviz.bands import BAND_TYPES

    from attnviz.pipelines.longdoc import block_sparse, short_block_sparse

    tm = load_text_model(name, options, command="check")
    rows, backends = [], []
    if block_sparse(tm):  # BigBird: the block layout on a text long enough for it, then full attention on the short ones
        from attnviz.blocksparse import min_block_sparse_length

        label, content = CHECK_TEXTS[-1]
        prepared = prepare_text(tm, content, CHECK_TARGET if tm.encoder_decoder else None)
        times = -(-min_block_sparse_length(tm.config) // max(1, len(prepared.tokens) - 2)) + 1
        prepared = prepare_text(tm, " ".join([content] * times), CHECK_TARGET if tm.encoder_decoder else None)
        rows.append(_band_row(f"{label} x{times}", tm, prepared))
        backends.append("blocks")
        short_block_sparse(tm, len(prepare_text(tm, CHECK_TEXTS[0][1]).tokens))
    for label, content in CHECK_TEXTS:
        prepared = prepare_text(tm, content, CHECK_TARGET if tm.encoder_decoder else None)
        if tm.model_type in BAND_TYPES and tm.model_type not in ("big_bird", "bigbird_pegasus"):
            rows.append(_band_row(label, tm, prepared))  # the long-document capture (past 1024 tokens; LongT5 always)
            backends.append("band")
        if tm.model_type == "longt5":  # its encoder has no dense map; decoder and cross-attention are in the band run
            continue
        ours, ref, diffs = compare(tm.model, prepared.inputs)
        backends.append(ours.backend)
        rows += _rows_for(label, ours, ref, diffs)
    return _report(tm.source.model_id, tm.model_type, "text", tm.model, rows, backends)


def _band_row(label: str, tm, prepared) -> KindCheck:
    """The band capture (:func:`attnviz.bands.capture_band`) against the model's own eager ``output_attentions``
    (:func:`attnviz.bands.eager_band`), every stored probability; inf where a row does not sum to 1."""
    from attnviz.inputs.tokens import model_inputs
    from attnviz.pipelines.text import _global_positions
    from attnviz.analysis.select import ViewSpec
    from attnviz.bands import capture_band, eager_band

    _global_positions(tm, prepared, None, ViewSpec(), dense=False)  # Longformer / LED: the first token global
    inputs = model_inputs(tm, prepared)
    report: dict = {}
    ours = capture_band(tm.model, inputs, report=report).band
    if ours.format == "blocks":  # BigBird: against the model's own dense map wherever it holds the probability
        diff = report.get("eager_max_abs_diff", float("inf"))
        if float((ours.row_sums() - 1).abs().max()) > 1e-4:
            diff = float("inf")
        return KindCheck(f"{label} (blocks)", ours.kind, ours.num_layers, ours.num_heads, ours.n, ours.n, False,
                         ours.num_layers, diff)
    theirs = eager_band(tm.model, inputs)
    diff = 0.0
    for name in ("local", "global_keys", "global_rows", "side_keys"):
        a, b = getattr(ours, name), getattr(theirs, name)
        if (a is None) != (b is None) or (a is not None and a.shape != b.shape):
            diff = float("inf")
        elif a is not None and a.numel():
            diff = max(diff, float((a - b).abs().max()))
    if float((ours.row_sums() - 1).abs().max()) > 1e-4:
        diff = float("inf")
    n = ours.n
    return KindCheck(f"{label} (band)", ours.kind, ours.num_layers, ours.num_heads, n, n + len(ours.side_spans), False,
                     ours.num_layers, diff)


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


#: Row names of the detection tensors (their ``--save-attn`` names) in ``attnviz check``.
CHECK_DETECTION_KINDS = {
    "encoder_attentions": "encoder", "decoder_attentions": "decoder", "cross_attentions": "cross",
    "attentions": "self", "encoder_attention_weights": "encoder weights", "cross_attention_weights": "cross weights",
}


def _check_detection(name: str, options) -> CheckReport:
    """Object detectors (``attnviz detect``): every tensor attnviz captures on :data:`CHECK_IMAGES` against the
    model's own eager ``output_attentions`` -- dense maps, and for deformable attention the ``[Q, H, levels,
    points]`` weights (``keys`` counts levels x points)."""
    from attnviz.inputs.detection import DEFORMABLE, compare_detector, load_detector, preprocess

    det = load_detector(name, options)
    rows, backends = [], []
    for i, (label, size) in enumerate(CHECK_IMAGES):
        inputs, _geometry = preprocess(det, check_photo(size, seed=i))
        captured, diffs = compare_detector(det, inputs)
        backends.append(captured.backend)
        for name, (shape, diff) in diffs.items():
            kind = CHECK_DETECTION_KINDS.get(name, name)
            if len(shape) == 5:  # deformable weights [L, Q, H, levels, points]
                L, Q, H, levels, points = shape
                keys, grid = levels * points, None
            else:
                L, H, Q, keys = shape
                grid = captured.encoder_grid if name.startswith("encoder") else None
            rows.append(KindCheck(f"{size[0]}×{size[1]}", kind, L, H, Q, keys, False, 0, diff, grid))
    if not rows:
        raise ModelError(f"'{name}' ({det.model_type}) returned no eager attention to compare with")
    kind = "deformable" if det.attention == DEFORMABLE else "dense"
    return _report(det.source.model_id, det.model_type, f"detection ({kind})", det.model, rows, backends)


#: Built-in clips of ``attnviz check`` (synthetic chirps with noise): name -> seconds.
CHECK_CLIPS = (("1 s", 1.0), ("3.5 s", 3.5))


def check_clip(seconds: float, rate: int, seed: int = 0):
    """A deterministic synthetic clip: a rising chirp, a 440 Hz tone and a little noise, float32 ``[n]`` at ``rate`` Hz."""
    import numpy as np

    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    return (0.4 * np.sin(2 * np.pi * (200 + 300 * t) * t) + 0.1 * np.sin(2 * np.pi * 440 * t)
            + 0.05 * rng.standard_normal(t.size)).astype(np.float32)


def _check_audio(name: str, options) -> CheckReport:
    """Speech models (``attnviz audio``): on :data:`CHECK_CLIPS`, every layer of the encoder's self-attention (and
    Whisper's decoder and cross-attention over its own greedy transcript) against the model's eager
    ``output_attentions``; WavLM's eager maps are head means, so their head mean is compared."""
    from attnviz.inputs.speech import compare_speech, features, load_speech_model, transcribe

    sm = load_speech_model(name, options)
    rows, backends = [], []
    for i, (label, seconds) in enumerate(CHECK_CLIPS):
        feats = features(sm, check_clip(min(seconds, sm.max_seconds), sm.rate, seed=i))
        transcript = transcribe(sm, feats, max_new_tokens=24) if sm.seq2seq else None
        att, diffs = compare_speech(sm, feats, transcript)
        if i == 0:
            from attnviz.models import check_finite

            check_finite(sm.source, sm.model)  # after the first forward pass (SpeechModel.with_weights)
        backends.append(att.backend)
        for tensor, (shape, diff) in diffs.items():
            L, H, Q, K = shape
            kind = CHECK_DETECTION_KINDS.get(tensor, tensor) + (" mean" if sm.model_type == "wavlm" else "")
            rows.append(KindCheck(label, kind, L, H, Q, K, tensor == "decoder_attentions", 0, diff))
    what = "encoder-decoder" if sm.seq2seq else "encoder"
    return _report(sm.source.model_id, sm.model_type, f"audio ({what})", sm.model, rows, backends)


#: Prompt and answer length of the vision-language check.
CHECK_VLM_PROMPT, CHECK_VLM_TOKENS = "Describe the photo.", 6


def _check_vlm(name: str, options) -> CheckReport:
    """A vision-language model answers :data:`CHECK_VLM_PROMPT` about each of :data:`CHECK_IMAGES` and a tall photo
    (greedy, :data:`CHECK_VLM_TOKENS` tokens); every generated token's row (every layer and head) is compared with
    eager ``output_attentions`` of one forward over the prompt, its pixel inputs and the generated ids
    (:func:`attnviz.vlm.eager_generation_rows`), and the greedy ids with plain greedy ``model.generate`` (the
    checkpoint's own repetition penalty and the like left out, as attnviz decodes): ids that differ make the
    row's difference infinite (not exact)."""
    import torch

    from attnviz.vlm import attend_vlm_generation, eager_generation_rows, load_vlm, prepare_vlm_prompt

    vm = load_vlm(name, options)
    chat = bool(getattr(vm.processor, "chat_template", None))
    rows = []
    for i, (label, size) in enumerate(CHECK_IMAGES + (("tall", (200, 320)),)):
        photo = check_photo(size, seed=i)
        vgen = attend_vlm_generation(CHECK_VLM_PROMPT, photo, vm, chat=chat, max_new_tokens=CHECK_VLM_TOKENS,
                                     stop_at_eos=False, verify=False)
        g = vgen.generation
        prepared = prepare_vlm_prompt(vm, CHECK_VLM_PROMPT, photo, chat=chat)
        ref = eager_generation_rows(vm, prepared, g.generated_ids)
        # rows of another shape (layers, keys) are not this sequence's maps: never called exact
        diff = float((ref - g.attentions).abs().max()) if ref.shape == g.attentions.shape else float("inf")
        from transformers import GenerationConfig

        own = vm.model.generation_config
        # plain greedy decoding, as attnviz decodes: none of the checkpoint's own repetition penalty, top-k...
        plain = GenerationConfig(do_sample=False, max_new_tokens=g.num_generated, min_new_tokens=g.num_generated,
                                 eos_token_id=own.eos_token_id, pad_token_id=own.pad_token_id, bos_token_id=own.bos_token_id)
        with torch.inference_mode():
            device = next(vm.model.parameters()).device
            out = vm.model.generate(**{k: v.to(device) for k, v in prepared.inputs.items()}, generation_config=plain)
        label = f"{size[0]}×{size[1]} ({vgen.num_image_tokens} img)"
        if out[0, g.prompt_length:].tolist() != list(g.generated_ids):
            diff, label = float("inf"), label + " ids≠generate"
        rows.append(KindCheck(label, "self", g.num_layers,
                              g.num_heads, g.num_generated, g.prompt_length + g.num_generated, True, 0, diff))
    return _report(vm.source.model_id, vm.model_type, "vision-language", vm.model, rows, [g.backend])


#: The built-in inputs of ``attnviz check`` per modality name (:data:`attnviz.inputs.MODALITIES`): a function
#: ``(name, LoadOptions) -> CheckReport``.
CHECK_INPUTS: dict[str, Callable] = {"text": _check_text, "image": _check_image, "detection": _check_detection,
                                     "audio": _check_audio, "vision-language": _check_vlm}


def run(request: CheckRequest) -> "CheckReport":
    """Compare attnviz's capture with eager ``output_attentions`` on the built-in inputs (``attnviz check``).

    Text models run :data:`CHECK_TEXTS` (plus :data:`CHECK_TARGET` on the decoder side of
    encoder-decoder models); vision models run :data:`CHECK_IMAGES` through their image processor.

    Returns:
        :class:`CheckReport`: ``exact``, ``exit_code`` (0 or :data:`NOT_EXACT`), ``to_json()``.

    Raises:
        ModelError: (exit 3) the model cannot be loaded, is of a modality ``check`` does not cover, uses a
            sparse layout, or cannot run eager attention.
    """
    from attnviz.inputs import TEXT, modality_of, require_modality
    from attnviz.models import load_config, resolve_model

    quiet_libraries()
    model = request.model_request()
    options = model.load_options()
    config = load_config(resolve_model(model.name), options)
    modality = modality_of(config)
    check = CHECK_INPUTS.get(modality.name)
    if check is None:
        covered = ", ".join(CHECK_INPUTS)
        raise ModelError(f"'{model.name}' is a {modality.noun}; attnviz check covers {covered} models only")
    if modality is TEXT:
        require_modality(config, model.name, TEXT, command="check")  # sparse layouts: refused, never "exact"
    return check(model.name, options)

"""Detection input: load an object-detection Transformer and its image processor, capture where each object query looks.

Public entry points: :func:`load_detector`, :func:`preprocess` and :func:`attend_detector`.

Two kinds of attention, told apart by the model's modules (never by its name):

- *dense* (DETR, Conditional DETR, DAB-DETR, Table Transformer, YOLOS): ordinary softmax attention, captured by
  :func:`attnviz.capture.capture` (equal to eager ``output_attentions``). DETR-family models give encoder
  self-attention ``[L, H, S, S]`` over the ``S = rows * cols`` backbone feature map, decoder self-attention
  ``[L, H, Q, Q]`` between the ``Q`` object queries and cross-attention ``[L, H, Q, S]``. YOLOS is one ViT stack:
  ``[CLS]``, the ``rows * cols`` patches, then ``Q`` detection tokens (Fang et al. 2021); a detection token's row
  over the patches is its "cross-attention".
- *deformable* (Deformable DETR, RT-DETR; Zhu et al. 2021, Zhao et al. 2024): each query samples
  ``points`` locations per head on each feature level around a reference point and mixes them with softmax
  weights. A forward pre-hook on every ``MultiScaleDeformableAttention`` kernel module records the very
  ``sampling_locations`` ``[Q, H, levels, points, 2]`` (normalised x, y in [0, 1] over the level's map) and
  ``attention_weights`` ``[Q, H, levels, points]`` the kernel receives, and the level shapes; the hooks are
  removed in ``finally``. Dense decoder self-attention (and RT-DETR's AIFI encoder layer over the top level) is
  captured as above.

Geometry. The processor resizes the photo (``W x H``) to ``rw x rh`` and may pad it (bottom/right) to the model
input ``pw x ph``; ``pixel_mask`` (when given) marks the resized part. A feature level of ``rows x cols`` spans the
whole model input, so its cell ``(r, c)`` covers input pixels ``[c * pw / cols, (c + 1) * pw / cols)`` and so on,
and an input pixel ``x`` is photo pixel ``x * W / rw``. The padded area lies outside ``[0, W] x [0, H]`` and is
never drawn as photo (:class:`Geometry`).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

from attnviz.errors import ModelError, UsageError
from attnviz.models import (
    LoadOptions, ModelSource, check_finite, check_weight_files, load_config, load_model_for_capture, resolve_model,
)

DENSE = "dense"
DEFORMABLE = "deformable"
#: The kernel module every multi-scale deformable attention of transformers calls (Deformable DETR, RT-DETR, ...).
DEFORMABLE_KERNEL = "MultiScaleDeformableAttention"
#: Detector model types ``attnviz detect`` shows (RT-DETRv2 and D-FINE call a kernel function with per-level point
#: counts instead of the module; Grounding DINO, OWL-ViT and the segmenters are not query -> image detectors).
SUPPORTED = frozenset({"detr", "conditional_detr", "dab-detr", "table-transformer", "yolos", "deformable_detr", "rt_detr"})


@dataclass(frozen=True)
class Geometry:
    """Where the model input lies on the photo.

    ``photo``: (width, height) of the photo in its pixels; ``resized``: (width, height) of the photo inside the model
    input after the processor's resize; ``input``: (width, height) of ``pixel_values`` (resized plus padding).
    """

    photo: tuple[int, int]
    resized: tuple[int, int]
    input: tuple[int, int]

    @property
    def scale(self) -> tuple[float, float]:
        """Photo pixels per input pixel, (x, y)."""
        return self.photo[0] / self.resized[0], self.photo[1] / self.resized[1]

    @property
    def extent(self) -> tuple[float, float, float, float]:
        """The whole model input (padding included) in photo pixels: (left, top, right, bottom); right/bottom are
        beyond the photo where the processor padded."""
        sx, sy = self.scale
        return 0.0, 0.0, self.input[0] * sx, self.input[1] * sy

    def cell_box(self, grid: tuple[int, int], row: int, col: int) -> tuple[float, float, float, float]:
        """Cell ``(row, col)`` of a ``(rows, cols)`` feature level in photo pixels (left, top, right, bottom)."""
        _, _, right, bottom = self.extent
        cw, ch = right / grid[1], bottom / grid[0]
        return col * cw, row * ch, (col + 1) * cw, (row + 1) * ch

    def cell_at(self, grid: tuple[int, int], x: float, y: float) -> tuple[int, int]:
        """(row, col) of the ``grid`` cell holding photo pixel ``(x, y)``.

        Raises:
            UsageError: the point lies outside the photo.
        """
        if not (0 <= x < self.photo[0] and 0 <= y < self.photo[1]):
            raise UsageError(f"--point {x:g},{y:g} is outside the photo ({self.photo[0]}x{self.photo[1]} pixels)")
        _, _, right, bottom = self.extent
        return min(int(y / bottom * grid[0]), grid[0] - 1), min(int(x / right * grid[1]), grid[1] - 1)

    def to_photo(self, xy_normalised):
        """Normalised (x, y) over the model input (a sampling location) -> photo pixels; any leading shape."""
        _, _, right, bottom = self.extent
        out = xy_normalised.clone() if hasattr(xy_normalised, "clone") else xy_normalised.copy()
        out[..., 0] = out[..., 0] * right
        out[..., 1] = out[..., 1] * bottom
        return out

    def to_json(self) -> dict:
        return {"photo": list(self.photo), "resized": list(self.resized), "input": list(self.input)}


@dataclass(frozen=True)
class Detector:
    """An object-detection model with its image processor.

    ``attention``: :data:`DENSE` or :data:`DEFORMABLE`; ``yolos``: a single ViT stack with detection tokens;
    ``num_queries``: object queries (YOLOS: detection tokens); ``head``: the model has a detection head (boxes);
    ``model`` is None until :meth:`with_weights`.
    """

    source: ModelSource
    config: Any
    processor: Any
    attention: str
    yolos: bool
    num_queries: int
    head: bool
    model: Any = None
    options: LoadOptions = LoadOptions()

    @property
    def model_type(self) -> str:
        return str(self.config.model_type)

    def with_weights(self) -> "Detector":
        """This detector with its weights loaded (``AutoModelForObjectDetection``, else the base ``AutoModel``).

        The weights' NaN/infinity screen (:func:`attnviz.models.check_finite`) runs in :func:`attend_detector`,
        after the forward pass has paged the checkpoint in, and before anything is shown.

        Raises:
            ModelError: weights missing, incomplete or unloadable (:func:`attnviz.models.load_model`).
        """
        if self.model is not None:
            return self
        from transformers import AutoModel, AutoModelForObjectDetection

        auto = AutoModelForObjectDetection if self.head else AutoModel
        model = load_model_for_capture(self.source, auto, self.options, finite_check=False)  # after the forward
        head = self.head and not getattr(model, "attnviz_new_head", ())
        return Detector(self.source, self.config, self.processor, self.attention, self.yolos, self.num_queries, head,
                        model, self.options)


def _attention_kind(config) -> str:
    mt = str(getattr(config, "model_type", ""))
    if "deformable" in mt or mt.startswith("rt_detr") or mt == "d_fine" or getattr(config, "decoder_n_points", None):
        return DEFORMABLE
    return DENSE


def load_detector(name: str, options: LoadOptions = LoadOptions(), *, weights: bool = True) -> Detector:
    """Load an object-detection Transformer (any ``AutoModelForObjectDetection``) and its image processor.

    A checkpoint without a detection head in its ``architectures`` (``DetrModel``...) loads as the base model:
    attention without boxes. With ``weights=False`` only the config and processor load.

    Raises:
        ModelError: (exit 3) not a detection model (names the command that takes it), not found, no image
        processor, weights unloadable.
    """
    from transformers import AutoImageProcessor

    from attnviz.inputs import DETECTION, require_modality

    source = resolve_model(name)
    config = load_config(source, options)
    require_modality(config, name, DETECTION)
    if str(config.model_type) not in SUPPORTED:
        why = ("it samples a different number of points per feature level through a kernel function attnviz does "
               "not hook yet" if config.model_type in ("rt_detr_v2", "d_fine") else
               "its attention is not a DETR-style query -> image map")
        raise ModelError(f"'{name}' ({config.model_type}) is a detector attnviz detect cannot show yet: {why} "
                         f"(supported: DETR, Conditional DETR, DAB-DETR, Table Transformer, YOLOS, Deformable DETR, RT-DETR)")
    try:
        processor = AutoImageProcessor.from_pretrained(source.location, trust_remote_code=options.trust_remote_code)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"cannot load an image processor for '{name}' (it needs a preprocessor_config.json): {first}") from exc
    archs = " ".join(getattr(config, "architectures", None) or ())
    head = not archs or "ForObjectDetection" in archs
    yolos = config.model_type == "yolos"
    queries = int(getattr(config, "num_detection_tokens" if yolos else "num_queries", 0) or 0)
    check_weight_files(source, options)
    det = Detector(source, config, processor, _attention_kind(config), yolos, queries, head, None, options)
    return det.with_weights() if weights else det


def preprocess(det: Detector, image) -> tuple[dict, Geometry]:
    """Run the image processor on an RGB photo (PIL): model inputs and the :class:`Geometry`.

    Raises:
        ModelError: the processor fails or returns an unexpected shape.
    """
    from attnviz.inputs.imagefile import run_processor

    batch = run_processor(det.processor, image, det.source.model_id)
    pv = batch["pixel_values"]
    ih, iw = int(pv.shape[-2]), int(pv.shape[-1])
    mask = batch.get("pixel_mask")
    if mask is not None:
        m = mask[0].bool()
        rh, rw = int(m.any(dim=1).sum()), int(m.any(dim=0).sum())
    else:
        rh, rw = ih, iw
    inputs = {"pixel_values": pv}
    if mask is not None and not det.yolos:
        inputs["pixel_mask"] = mask
    return inputs, Geometry((image.width, image.height), (rw, rh), (iw, ih))


# ---------------------------------------------------------------------------
# deformable attention: the kernel's own inputs, recorded by hooks


@dataclass
class DeformableCalls:
    """What the hooks recorded, per kind (``"encoder"``, ``"cross"``), one entry per call in layer order.

    ``weights[kind][l]``: ``[Q, H, levels, points]`` float32; ``locations[kind][l]``: ``[Q, H, levels, points, 2]``
    float32 (normalised x, y); ``references[kind][l]``: ``[Q, levels, 2]`` reference points (normalised x, y; the
    centre of a ``[Q, levels, 4]`` reference box); ``shapes[kind]``: the levels' (rows, cols).
    """

    weights: dict[str, list] = field(default_factory=dict)
    locations: dict[str, list] = field(default_factory=dict)
    shapes: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    references: dict[str, list] = field(default_factory=dict)


def _deformable_kind(path: str) -> str:
    return "encoder" if "encoder" in path.split(".") and "decoder" not in path.split(".") else "cross"


def record_deformable(model, inputs: dict, run) -> tuple[Any, DeformableCalls]:
    """Call ``run()`` (a forward of ``model``) with a pre-hook on each deformable kernel module recording its inputs.

    Returns:
        ``(run(), DeformableCalls)``; the hooks are removed even when ``run`` raises.
    """
    calls = DeformableCalls()
    handles = []

    def hook_for(path: str, module):
        kind = _deformable_kind(path)
        sig = inspect.signature(type(module).forward)

        def hook(mod, args, kwargs):
            bound = sig.bind(mod, *args, **kwargs).arguments
            calls.weights.setdefault(kind, []).append(bound["attention_weights"][0].detach().float().cpu())
            calls.locations.setdefault(kind, []).append(bound["sampling_locations"][0].detach().float().cpu())
            calls.shapes[kind] = [(int(h), int(w)) for h, w in bound["value_spatial_shapes_list"]]

        return hook

    def parent_hook_for(path: str):
        kind = _deformable_kind(path)

        def hook(mod, args, kwargs):
            ref = kwargs.get("reference_points")
            if ref is not None:
                calls.references.setdefault(kind, []).append(ref[0, ..., :2].detach().float().cpu())

        return hook

    modules = dict(model.named_modules())
    try:
        for path, module in modules.items():
            if type(module).__name__ == DEFORMABLE_KERNEL:
                handles.append(module.register_forward_pre_hook(hook_for(path, module), with_kwargs=True))
                parent = path.rpartition(".")[0]
                if parent in modules:
                    handles.append(modules[parent].register_forward_pre_hook(parent_hook_for(parent), with_kwargs=True))
        if not handles:
            raise ModelError(f"{type(model).__name__} has no {DEFORMABLE_KERNEL} module to capture")
        out = run()
    finally:
        for h in handles:
            h.remove()
    return out, calls


# ---------------------------------------------------------------------------
# the capture


#: What :func:`attend_detector` keeps of the dense encoder self-attention (the one map that grows as ``S^2``).
ENCODER_ALL, ENCODER_LAST, ENCODER_NONE = "all", "last", "none"


@dataclass
class DetectionAttention:
    """Everything captured from one forward pass of a detector on one photo.

    Dense maps (float32, CPU): ``encoder`` ``[E, H, S, S]`` holds the encoder layers ``encoder_layers`` (0-based; all,
    the last, or none, as asked), ``decoder`` ``[L, H, Q, Q]``, ``cross`` ``[L, H, Q, S]``. YOLOS (``yolos``): one
    stack; ``encoder`` is its patches' rows over the patches, ``cross`` the detection tokens' rows over the patches,
    ``decoder`` their rows over the detection tokens, and ``self_full`` the whole ``[L, H, T, T]`` when every layer
    was kept. Deformable models: ``deformable`` (:class:`DeformableCalls`), ``decoder`` dense, ``encoder`` dense only
    for RT-DETR's AIFI layer (over ``encoder_grid``). ``levels``: (rows, cols) of each feature level the queries look
    at; ``outputs``: the model output (logits, pred_boxes).
    """

    attention: str
    levels: list[tuple[int, int]]
    encoder_grid: tuple[int, int] | None
    encoder: Any
    decoder: Any
    cross: Any
    deformable: DeformableCalls | None
    outputs: Any
    backend: str
    self_full: Any = None
    encoder_layers: tuple[int, ...] = ()
    yolos: bool = False


def _level_grids(model, inputs: dict, run) -> tuple[Any, list[tuple[int, int]]]:
    """Run ``run()`` recording the (rows, cols) of the DETR-style input projection's output (the feature map)."""
    grids: list[tuple[int, int]] = []
    proj = getattr(getattr(model, "model", model), "input_projection", None)
    handle = None
    if proj is not None:
        handle = proj.register_forward_hook(lambda m, a, out: grids.append((int(out.shape[-2]), int(out.shape[-1]))))
    try:
        out = run()
    finally:
        if handle is not None:
            handle.remove()
    return out, grids


def _on_model(model, inputs: dict) -> dict:
    """``inputs`` on the model's device, floating-point ones in its dtype (``pixel_values`` for a float16 model)."""
    param = next(model.parameters())
    return {k: (v.to(param.device, param.dtype) if v.is_floating_point() else v.to(param.device)) for k, v in inputs.items()}


class _Keep:
    """The capture's ``on_layer`` callback: keeps every decoder and cross-attention layer, the encoder layers asked
    for, and for YOLOS the detection tokens' rows (``queries``) of every layer (float32, CPU)."""

    def __init__(self, encoder: str, queries: int | None = None):
        self.encoder, self.queries = encoder, queries
        self.maps: dict[str, list] = {}
        self.layers: dict[str, list[int]] = {}
        self.rows: list = []

    def __call__(self, kind: str, layer: int, probs) -> None:
        from attnviz.types import ENCODER, SELF

        if kind == SELF and self.queries is not None:
            self.rows.append(probs[:, -self.queries:, :].float().cpu())
        big = kind == ENCODER or (kind == SELF and self.queries is not None)
        if big and self.encoder == ENCODER_NONE:
            return
        if big and self.encoder == ENCODER_LAST:
            self.maps[kind], self.layers[kind] = [], []
        self.maps.setdefault(kind, []).append(probs.float().cpu())
        self.layers.setdefault(kind, []).append(layer)

    def stacked(self, kind: str):
        import torch

        maps = self.maps.get(kind)
        return torch.stack(maps) if maps else None


def attend_detector(det: Detector, inputs: dict, encoder: str = ENCODER_ALL) -> DetectionAttention:
    """One forward pass of ``det.model`` capturing its attention (see :class:`DetectionAttention` and
    :func:`_attend`), then the weights' NaN/infinity screen (:func:`attnviz.models.check_finite`; also when the
    capture fails, so that broken weights are named rather than the non-finite attention they give).

    Raises:
        ModelError: weights holding NaN or infinity (naming the tensor); as :func:`_attend`.
    """
    try:
        captured = _attend(det, inputs, encoder)
        _check_maps(det, captured)
    except Exception as exc:
        check_finite(det.source, det.model)
        if isinstance(exc, RuntimeError) and not isinstance(exc, ModelError):
            dtype = str(next(det.model.parameters()).dtype).replace("torch.", "")
            first = " ".join(str(exc).split())[:200]
            raise ModelError(f"{type(det.model).__name__} failed in its own forward pass in {dtype}: {first}") from exc
        raise
    check_finite(det.source, det.model)
    return captured


#: How far a probability row may sum from 1 in :func:`_check_maps` (half-precision models round every weight).
ROW_SUM_TOLERANCE = 2e-2


def _check_maps(det: Detector, captured: DetectionAttention) -> None:
    """Refuse what is not a map of the photo's positions before it is drawn, saved or called exact: dense encoder
    maps must be ``[S, S]`` over the ``rows x cols`` feature map, decoder maps ``[Q, Q]`` and cross-attention
    ``[Q, S]`` over the ``Q`` object queries; every row (dense) and every head's weights over levels x points
    (deformable) must sum to 1, with ``[Q, H, levels, points]`` weights (encoder: one query per cell of every
    level) and ``[..., 2]`` sampling locations.

    Raises:
        ModelError: naming the tensor, its shape and the one expected.
    """
    arch = type(det.model).__name__
    q = det.num_queries
    grid = captured.encoder_grid or (captured.levels[0] if captured.levels else None)
    s = grid[0] * grid[1] if grid else None
    expected = {"encoder": (s, s), "decoder": (q, q), "cross": (q, s)}
    for name in ("encoder", "decoder", "cross"):
        t = getattr(captured, name)
        if t is None:
            continue
        want = expected[name]
        if tuple(t.shape[-2:]) != want:
            raise ModelError(f"{arch}: its {name} attention is {list(t.shape[-2:])} per head, not the {list(want)} map "
                             f"of {q} object queries over a {grid[0]}x{grid[1]} feature map; attnviz detect cannot show it")
    # YOLOS's three maps are slices of longer rows: their sums are checked on the whole rows, when kept
    rows = {"attentions": captured.self_full} if captured.yolos else {
        n: getattr(captured, n) for n in ("encoder", "decoder", "cross")}
    for name, t in rows.items():
        worst = float((t.sum(-1) - 1).abs().max()) if t is not None and t.numel() else 0.0
        if not worst <= ROW_SUM_TOLERANCE:
            raise ModelError(f"{arch}: its {name} attention rows sum to 1 within {worst:.2g} only: not probabilities")
    calls = captured.deformable
    for kind in (calls.weights if calls is not None else {}):
        for w, loc in zip(calls.weights[kind], calls.locations[kind]):
            levels = len(calls.shapes[kind])
            queries = sum(r * c for r, c in calls.shapes[kind]) if kind == "encoder" else q
            if w.ndim != 4 or tuple(w.shape[::2]) != (queries, levels) or tuple(loc.shape) != (*w.shape, 2):
                raise ModelError(f"{arch}: deformable {kind} weights {list(w.shape)} and locations {list(loc.shape)} "
                                 f"are not [{queries} queries, H, {levels} levels, points] and [..., 2]")
            worst = float((w.sum((-1, -2)) - 1).abs().max()) if w.numel() else 0.0
            if not worst <= ROW_SUM_TOLERANCE:
                raise ModelError(f"{arch}: deformable {kind} weights sum to 1 within {worst:.2g} only: not a softmax")


def _attend(det: Detector, inputs: dict, encoder: str = ENCODER_ALL) -> DetectionAttention:
    """One forward pass of ``det.model`` capturing its attention (see :class:`DetectionAttention`).

    Dense maps come from :func:`attnviz.capture.capture` (equal to eager ``output_attentions``, 1e-5 fp32), streamed
    layer by layer: ``encoder`` says which encoder self-attention layers to keep (:data:`ENCODER_ALL` for
    ``--save-attn`` and ``check``, :data:`ENCODER_LAST` for ``--point``, :data:`ENCODER_NONE`), the only maps whose
    size grows as the square of the feature map. Deformable sampling locations and weights are the kernel's own
    inputs (:func:`record_deformable`).

    Raises:
        ModelError: the model produced no attention, or maps whose shapes do not fit the feature map.
    """
    from attnviz.capture import CapturePlan, capture
    from attnviz.types import DECODER, ENCODER, SELF

    model = det.model
    inputs = _on_model(model, inputs)
    keep = _Keep(encoder, det.num_queries if det.yolos else None)
    plan = CapturePlan(on_layer=keep)
    if det.attention == DEFORMABLE:
        cap, calls = record_deformable(model, inputs, lambda: capture(model, inputs, plan))
        levels = calls.shapes.get("cross") or calls.shapes.get("encoder") or []
        enc = keep.stacked(ENCODER)
        dec = keep.stacked(DECODER) if DECODER in keep.maps else keep.stacked(SELF)
        enc_grid = None
        if ENCODER in cap.attention:
            s = cap.attention[ENCODER].num_keys
            enc_grid = next((g for g in reversed(levels) if g[0] * g[1] == s), None)
            if enc_grid is None:
                raise ModelError(f"the encoder's dense attention covers {s} positions, which fits no feature level {levels}")
        return DetectionAttention(DEFORMABLE, levels, enc_grid, enc, dec, None, calls, cap.outputs, cap.backend,
                                  encoder_layers=tuple(keep.layers.get(ENCODER, ())))
    if det.yolos:
        cap = capture(model, inputs, plan)
        ph, pw = _patch(det.config)
        rows, cols = inputs["pixel_values"].shape[-2] // ph, inputs["pixel_values"].shape[-1] // pw
        q = det.num_queries
        t = cap.attention[SELF].num_keys
        if t != 1 + rows * cols + q:
            raise ModelError(f"YOLOS sequence of {t} tokens is not [CLS] + {rows}x{cols} patches + {q} detection tokens")
        import torch

        det_rows = torch.stack(keep.rows)  # [L, H, Q, T]
        full = keep.stacked(SELF)
        patches = slice(1, 1 + rows * cols)
        return DetectionAttention(DENSE, [(rows, cols)], (rows, cols), full[:, :, patches, patches] if full is not None else None,
                                  det_rows[:, :, :, t - q:], det_rows[:, :, :, patches], None, cap.outputs, cap.backend,
                                  self_full=full if encoder == ENCODER_ALL else None,
                                  encoder_layers=tuple(keep.layers.get(SELF, ())), yolos=True)
    cap, grids = _level_grids(model, inputs, lambda: capture(model, inputs, plan))
    if not grids:
        raise ModelError(f"{type(model).__name__}: cannot find the feature map its decoder attends to")
    grid = grids[-1]
    from attnviz.types import CROSS

    cross = keep.stacked(CROSS)
    if cross is None or cross.shape[-1] != grid[0] * grid[1]:
        raise ModelError(f"{type(model).__name__}: no cross-attention over the {grid[0]}x{grid[1]} feature map was captured")
    return DetectionAttention(DENSE, [grid], grid, keep.stacked(ENCODER), keep.stacked(DECODER), cross, None,
                              cap.outputs, cap.backend, encoder_layers=tuple(keep.layers.get(ENCODER, ())))


def attention_tensors(captured: DetectionAttention) -> dict:
    """Every captured tensor by its ``--save-attn`` name (float32, CPU).

    Dense: ``encoder_attentions [L,H,S,S]``, ``decoder_attentions [L,H,Q,Q]``, ``cross_attentions [L,H,Q,S]``
    (YOLOS also ``attentions [L,H,T,T]``, of which the others are slices). Deformable: ``encoder_attention_weights
    [L,S,H,levels,points]``, ``encoder_sampling_locations [L,S,H,levels,points,2]`` (normalised x, y),
    ``cross_attention_weights [L,Q,H,levels,points]``, ``cross_sampling_locations [L,Q,H,levels,points,2]`` and
    the dense maps it has (decoder self-attention; RT-DETR's AIFI layer as ``encoder_attentions``).
    """
    import torch

    out = {}
    for name, t in (("encoder_attentions", captured.encoder), ("decoder_attentions", captured.decoder),
                    ("cross_attentions", captured.cross), ("attentions", captured.self_full)):
        if t is not None:
            out[name] = t.float().contiguous()
    calls = captured.deformable
    if calls is not None:
        for kind in ("encoder", "cross"):
            if calls.weights.get(kind):
                out[f"{kind}_attention_weights"] = torch.stack(calls.weights[kind])
                out[f"{kind}_sampling_locations"] = torch.stack(calls.locations[kind])
    return out


def eager_tensors(det: Detector, inputs: dict) -> dict:
    """The model's own eager ``output_attentions`` under the names of :func:`attention_tensors` (no sampling
    locations: eager does not return them). The model is switched to eager attention for the call and back.

    Raises:
        ModelError: the model cannot run eager attention.
    """
    import torch

    from attnviz.capture import eager_attention

    model = det.model
    inputs = _on_model(model, inputs)
    with eager_attention(model), torch.inference_mode():
        out = model(**inputs, output_attentions=True)

    def stack(maps):
        if not maps or any(m is None for m in maps):
            return None
        return torch.stack([m[0].detach().float().cpu() for m in maps])

    if det.yolos:
        return {"attentions": stack(out.attentions)}
    ref = {"decoder_attentions": stack(out.decoder_attentions)}
    enc, cross = stack(out.encoder_attentions), stack(out.cross_attentions)
    if det.attention == DEFORMABLE:
        if enc is not None:
            ref["encoder_attention_weights" if enc.ndim == 5 else "encoder_attentions"] = enc
        ref["cross_attention_weights"] = cross
    else:
        ref["encoder_attentions"], ref["cross_attentions"] = enc, cross
    return {k: v for k, v in ref.items() if v is not None}


def compare_detector(det: Detector, inputs: dict) -> tuple[DetectionAttention, dict[str, tuple[tuple[int, ...], float]]]:
    """:func:`attend_detector` against the model's eager ``output_attentions`` (:func:`eager_tensors`).

    Returns:
        ``(captured, {name: (shape, max abs difference)})`` for every tensor eager returns; a tensor missing on
        either side or of another shape counts as ``inf``.
    """
    captured = attend_detector(det, inputs)
    ours = attention_tensors(captured)
    diffs = {}
    for name, ref in eager_tensors(det, inputs).items():
        mine = ours.get(name)
        if mine is None or tuple(mine.shape) != tuple(ref.shape):
            diffs[name] = (tuple(ref.shape), float("inf"))
        else:
            diffs[name] = (tuple(ref.shape), float((mine - ref).abs().max()) if ref.numel() else 0.0)
    return captured, diffs


def attend_verified(det: Detector, inputs: dict, enabled: bool = True, encoder: str = ENCODER_ALL):
    """:func:`attend_detector`, trusted as far as :mod:`attnviz.verify` allows.

    A model type on :data:`attnviz.verify.PROVEN_TYPES` (the tests compare it with eager) is captured directly;
    another (DAB-DETR, Table Transformer...) is first compared with its own eager ``output_attentions`` on this
    very photo (:func:`compare_detector`, one extra forward, every encoder layer kept) unless ``enabled`` is False
    (``--no-verify``). ``encoder``: see :func:`attend_detector`.

    Returns:
        ``(DetectionAttention, attnviz.verify.Verification)``.

    Raises:
        ModelError: the capture differs from eager beyond the tolerance (a detector has no eager fallback here).
    """
    from attnviz.verify import PROVEN, PROVEN_TYPES, SKIPPED, VERIFIED, Verification, tolerance_for

    if det.model_type in PROVEN_TYPES:
        return attend_detector(det, inputs, encoder), Verification(PROVEN, det.model_type)
    if not enabled:
        return attend_detector(det, inputs, encoder), Verification(SKIPPED, det.model_type)
    captured, diffs = compare_detector(det, inputs)
    tolerance = tolerance_for(det.model)
    worst = max((d for _, d in diffs.values()), default=float("inf"))
    if not worst <= tolerance:
        raise ModelError(f"{type(det.model).__name__} ({det.model_type}): attnviz's capture differs from eager "
                         f"output_attentions by {worst:.2g} (tolerance {tolerance:g}) on this photo; attnviz detect "
                         "cannot show it exactly")
    return captured, Verification(VERIFIED, det.model_type, {k: d for k, (_, d) in diffs.items()}, tolerance, "this photo")


def _patch(config) -> tuple[int, int]:
    p = config.patch_size
    return (int(p[0]), int(p[1])) if isinstance(p, (list, tuple)) else (int(p), int(p))


def feature_strides(levels: list[tuple[int, int]], geometry: Geometry) -> list[int]:
    """The stride (input pixels per cell, a power of two) of each feature level."""
    import math

    out = []
    for rows, cols in levels:
        ratio = max(geometry.input[1] / rows, geometry.input[0] / cols)
        out.append(int(2 ** round(math.log2(ratio))))
    return out


# ---------------------------------------------------------------------------
# boxes


@dataclass(frozen=True)
class Detection:
    """One detected object: ``index`` (0-based, in score order), ``query`` (the object query / detection token that
    predicted it, 0-based), ``label``, ``score`` (0..1), ``box`` (x0, y0, x1, y1) in photo pixels; ``below_threshold``:
    shown only because nothing reached ``--threshold``."""

    index: int
    query: int
    label: str
    score: float
    box: tuple[float, float, float, float]
    below_threshold: bool = False

    def to_json(self) -> dict:
        return {"index": self.index, "query": self.query, "label": self.label, "score": round(self.score, 6),
                "box": [round(v, 3) for v in self.box], "below_threshold": self.below_threshold}


def detections(det: Detector, outputs, geometry: Geometry, threshold: float, fallback: int = 3) -> tuple[list[Detection], bool]:
    """Boxes and labels from the processor's ``post_process_object_detection`` at ``threshold``, in photo pixels.

    Each box is matched to the query that predicted it: the query whose ``pred_boxes`` (cx, cy, w, h normalised,
    converted as transformers does) gives the same box. With nothing above ``threshold``, the ``fallback``
    top-scoring queries (marked ``below_threshold``).

    Returns:
        (detections sorted by score, whether any reached ``threshold``).
    """
    import torch

    if not det.head or getattr(outputs, "pred_boxes", None) is None:
        return [], False
    import copy

    outputs = copy.copy(outputs)  # post-processed in float32: a half-precision model's boxes and scores, widened
    for name in ("logits", "pred_boxes"):
        outputs[name] = getattr(outputs, name).detach().float().cpu()
    w, h = geometry.photo
    sizes = torch.tensor([[h, w]])
    found = True
    res = det.processor.post_process_object_detection(outputs, threshold=threshold, target_sizes=sizes)[0]
    if len(res["scores"]) == 0:
        found = False
        res = det.processor.post_process_object_detection(outputs, threshold=0.0, target_sizes=sizes)[0]
    pb = outputs.pred_boxes[0].detach().float().cpu()
    cx, cy, bw, bh = pb.unbind(-1)
    qboxes = torch.stack([(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h], -1)
    logits = outputs.logits[0].detach().float().cpu()
    scores = (logits.softmax(-1), logits.sigmoid())  # DETR family: softmax with a no-object class; others: sigmoid
    id2label = getattr(det.model.config, "id2label", {}) or {}
    order = torch.argsort(res["scores"].float(), descending=True, stable=True)
    if not found:
        order = order[:fallback]
    out, used = [], set()
    for i, k in enumerate(order.tolist()):
        box = res["boxes"][k].detach().float().cpu()
        label_id, score = int(res["labels"][k]), float(res["scores"][k])
        dist = (qboxes - box).abs().max(dim=-1).values / max(w, h)
        gap = torch.stack([(s[:, label_id] - score).abs() for s in scores]).min(dim=0).values if label_id < logits.shape[-1] else 0 * dist
        cost = dist + gap
        for q_used, l_used in used:
            if l_used == label_id:
                cost[q_used] = float("inf")
        q = int(cost.argmin())
        if not float(cost[q]) < 1e-3:
            raise ModelError("cannot tell which object query predicted a box of post_process_object_detection")
        used.add((q, label_id))
        out.append(Detection(i, q, str(id2label.get(label_id, label_id)), score, tuple(float(v) for v in box), not found))
    return out, found

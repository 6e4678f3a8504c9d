"""Image input: load a Vision Transformer and its image processor, capture attention over a photo.

Public entry points: :func:`load_image_model` and :func:`attend_image`; helpers that
turn an :class:`~attnviz.types.ImageAttention` into patch maps
(:func:`cls_attention`, :func:`query_attention`, :func:`rollout_map`) and map
photo pixels to patches (:func:`point_to_patch`).

Token layout. A ViT-family model's sequence is ``prefix_tokens`` special tokens
followed by ``rows * cols`` patch tokens in row-major order. The prefix is read
from the model's config (never guessed from the sequence length):

====================================  ===================================
model_type                            prefix
====================================  ===================================
vit (ViT, DeiT non-distilled, DINO)   [CLS]
deit (distilled DeiT)                 [CLS], distillation token
dinov2                                [CLS]
dinov2_with_registers                 [CLS], ``num_register_tokens`` registers
beit, data2vec-vision                 [CLS]
clip_vision_model (CLIP vision tower) [CLS]
siglip_vision_model                   none (SigLIP has no [CLS])
ijepa (I-JEPA)                        none (no [CLS])
====================================  ===================================

Models without [CLS] are read through the mean query row (the mean over all
tokens of each layer's attention rows). ViTMAE is refused: it randomly drops
``mask_ratio`` of the patches and shuffles the rest on every forward pass, so
its tokens are not the photo's patches in order.

The grid is the processed ``pixel_values`` height and width divided by the
patch size (a non-square input gives a non-square grid), and ``prefix + rows *
cols`` must equal the captured sequence length. Swin (windowed attention) and
other non-ViT vision models are refused with a :class:`~attnviz.errors.ModelError`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from attnviz.capture import FULL, CapturePlan
from attnviz.errors import ModelError, UsageError
from attnviz.models import DEFAULT_IMAGE_MODEL, LoadOptions, ModelSource, check_weight_files, load_config, load_model_for_capture, resolve_model
from attnviz.types import SELF, ImageAttention, Prediction
from attnviz.verify import verified_capture

#: model_type -> names of the prefix tokens that come before the patches (registers added from the config).
_PREFIX = {
    "vit": ("[CLS]",),
    "vit_msn": ("[CLS]",),
    "deit": ("[CLS]", "[DIST]"),
    "dinov2": ("[CLS]",),
    "dinov2_with_registers": ("[CLS]",),
    "beit": ("[CLS]",),
    "data2vec-vision": ("[CLS]",),
    "clip_vision_model": ("[CLS]",),
    "siglip_vision_model": (),
    "ijepa": (),
}
#: Models that randomly mask and shuffle patches on every forward (MAE pre-training): refused.
_RANDOM_MASKING = {"vit_mae"}
#: Multimodal checkpoints whose vision tower we load on its own.
_VISION_TOWER = {"clip": "CLIPVisionModel", "siglip": "SiglipVisionModel"}
_WINDOWED = {"swin", "swinv2", "donut-swin", "maskformer-swin", "swin2sr", "swiftformer"}
SUPPORTED = (
    "ViT, DeiT, DINO, DINOv2 (with or without registers), BEiT, Data2VecVision, I-JEPA, "
    "and the vision towers of CLIP and SigLIP"
)
#: How many predictions attend_image keeps for a classifier.
TOP_K = 5


@dataclass(frozen=True)
class VisionInfo:
    """What attnviz reads from a vision model's config.

    ``prefix`` names the special tokens before the patches (``("[CLS]",)``,
    ``("[CLS]", "[DIST]")``, ``("[CLS]", "[REG]", ...)`` or ``()``);
    ``patch_size`` is ``(height, width)`` in input pixels.
    """

    model_type: str
    patch_size: tuple[int, int]
    prefix: tuple[str, ...]
    num_layers: int
    num_heads: int
    classifier: bool

    @property
    def prefix_tokens(self) -> int:
        return len(self.prefix)

    @property
    def cls_index(self) -> int | None:
        return self.prefix.index("[CLS]") if "[CLS]" in self.prefix else None


@dataclass(frozen=True)
class ImageModel:
    """A vision model's image processor and :class:`VisionInfo`, and (once loaded) its weights.

    ``model`` is ``None`` until :meth:`with_weights` loads it, so that layer/head
    ranges and ``--patch`` are checked against the config and processor first.
    """

    source: ModelSource
    model: Any
    processor: Any
    info: VisionInfo
    options: LoadOptions = LoadOptions()

    @property
    def model_type(self) -> str:
        return self.info.model_type

    def with_weights(self) -> "ImageModel":
        """This model with its weights loaded; a classifier whose head the checkpoint lacks shows no predictions.

        Raises:
            ModelError: weights missing, incomplete or unloadable (:func:`attnviz.models.load_model`).
        """
        if self.model is not None:
            return self
        config = load_config(self.source, self.options)
        model = load_model_for_capture(self.source, _model_class(config, self.info), self.options)
        # the loaded model's own config is authoritative (e.g. a vision tower of a CLIPModel checkpoint)
        loaded = vision_info(model.config)
        classifier = self.info.classifier and not getattr(model, "attnviz_new_head", ())
        info = VisionInfo(loaded.model_type, loaded.patch_size, loaded.prefix, loaded.num_layers, loaded.num_heads, classifier)
        return ImageModel(self.source, model, self.processor, info, self.options)


# ---------------------------------------------------------------------------
# loading


def vision_config(config):
    """The config that describes the vision transformer (the vision tower's for CLIP/SigLIP)."""
    sub = getattr(config, "vision_config", None)
    return sub if sub is not None and config.model_type in _VISION_TOWER else config


def check_supported(config, name: str) -> None:
    """Refuse models whose attention attnviz cannot draw over the photo faithfully.

    Raises:
        ModelError: Swin-style windowed attention, a text model, or an unsupported vision model.
    """
    mt = config.model_type
    vc = vision_config(config)
    if mt in _WINDOWED or getattr(vc, "model_type", "") in _WINDOWED:
        raise ModelError(
            f"'{name}' is a {mt} model: Swin-style models compute attention inside shifted local windows, "
            f"so there is no [CLS] -> patch map over the whole image to draw; attnviz image supports {SUPPORTED}"
        )
    if vc.model_type in _PREFIX:
        return
    if vc.model_type in _RANDOM_MASKING:
        ratio = getattr(vc, "mask_ratio", None)
        raise ModelError(
            f"'{name}' is a {vc.model_type} model: it randomly masks {ratio if ratio is not None else 'a share'} of the "
            "patches and shuffles the rest on every forward pass, so its tokens are not the photo's patches in order; "
            f"attnviz image supports {SUPPORTED}"
        )
    if getattr(config, "vision_config", None) is None and (
        hasattr(config, "vocab_size") and not hasattr(config, "patch_size")
    ):
        raise ModelError(f"'{name}' is not a vision model (model_type '{mt}'); use 'attnviz text'")
    raise ModelError(f"'{name}' is a '{mt}' model, which attnviz image does not support; it supports {SUPPORTED}")


def vision_info(config) -> VisionInfo:
    """Read the token layout and size of a supported vision model from its config.

    Raises:
        ModelError: unsupported model or a config without patch size / layers / heads.
    """
    vc = vision_config(config)
    mt = vc.model_type
    if mt not in _PREFIX:
        check_supported(config, mt)
    prefix = _PREFIX[mt]
    if mt == "dinov2_with_registers":
        prefix = prefix + ("[REG]",) * int(getattr(vc, "num_register_tokens", 0) or 0)
    patch = getattr(vc, "patch_size", None)
    if isinstance(patch, (list, tuple)):
        patch = (int(patch[0]), int(patch[-1]))
    elif isinstance(patch, int) and patch > 0:
        patch = (patch, patch)
    else:
        raise ModelError(f"the config of this {mt} model has no patch_size")
    layers, heads = getattr(vc, "num_hidden_layers", None), getattr(vc, "num_attention_heads", None)
    if not layers or not heads:
        raise ModelError(f"the config of this {mt} model has no num_hidden_layers / num_attention_heads")
    archs = getattr(config, "architectures", None) or []
    classifier = any(a.endswith(("ForImageClassification", "ForImageClassificationWithTeacher")) for a in archs)
    return VisionInfo(mt, patch, prefix, int(layers), int(heads), classifier)


def _model_class(config, info: VisionInfo):
    import transformers

    if info.classifier:
        return transformers.AutoModelForImageClassification
    if config.model_type in _VISION_TOWER:
        return getattr(transformers, _VISION_TOWER[config.model_type])
    return transformers.AutoModel


def load_image_model(name: str = DEFAULT_IMAGE_MODEL, options: LoadOptions = LoadOptions(), *, weights: bool = True) -> ImageModel:
    """Load a Vision Transformer (or a CLIP/SigLIP vision tower) and its image processor.

    Classifiers (``*ForImageClassification``, DeiT ``...WithTeacher``) load with
    their head so that :func:`attend_image` can report predictions; a full
    CLIPModel / SiglipModel checkpoint loads only its vision tower. With
    ``weights=False`` only the config and processor load; :meth:`ImageModel.with_weights`
    loads the rest.

    Raises:
        ModelError: not found (offline and not cached: one line suggesting
        ``--model PATH``), Swin or another unsupported model, no image processor.
    """
    from transformers import AutoImageProcessor

    source = resolve_model(name)
    config = load_config(source, options)
    check_supported(config, name)
    info = vision_info(config)
    try:
        processor = AutoImageProcessor.from_pretrained(source.location, trust_remote_code=options.trust_remote_code)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise ModelError(
            f"cannot load an image processor for '{name}' (it needs a preprocessor_config.json): {first}"
        ) from exc
    check_weight_files(source, options)
    im = ImageModel(source, None, processor, info, options)
    return im.with_weights() if weights else im


# ---------------------------------------------------------------------------
# the processor's resize / crop, mapped back onto the photo


def _size_field(size, key: str):
    if size is None:
        return None
    if isinstance(size, dict):
        return size.get(key)
    return getattr(size, key, None)


def _resized_size(processor, height: int, width: int) -> tuple[int, int]:
    """(height, width) of the photo after the processor's resize step (transformers' own rules)."""
    import numpy as np
    from transformers.image_transforms import get_resize_output_image_size, get_size_with_aspect_ratio

    if not getattr(processor, "do_resize", False):
        return height, width
    size = getattr(processor, "size", None)
    if isinstance(size, int):
        return size, size
    se, le = _size_field(size, "shortest_edge"), _size_field(size, "longest_edge")
    h, w = _size_field(size, "height"), _size_field(size, "width")
    mh, mw = _size_field(size, "max_height"), _size_field(size, "max_width")
    if se and le:
        return tuple(get_size_with_aspect_ratio((height, width), se, le))
    if se:
        dummy = np.broadcast_to(np.zeros((1, 1, 1), dtype=np.uint8), (1, height, width))
        return tuple(get_resize_output_image_size(dummy, size=se, default_to_square=False, input_data_format="channels_first"))
    if mh and mw:
        from transformers.image_transforms import get_image_size_for_max_height_width

        return tuple(get_image_size_for_max_height_width((height, width), mh, mw))
    if h and w:
        return int(h), int(w)
    raise ModelError(f"cannot tell how the image processor resizes images (size={size!r})")


def crop_box(processor, width: int, height: int, input_size: tuple[int, int]) -> tuple[float, float, float, float]:
    """The region of the photo, in its own pixels, that became the ``input_size`` pixel tensor.

    Follows the processor's config: resize (fixed ``height``/``width``, or
    ``shortest_edge`` keeping the aspect ratio, ...) then, with ``do_center_crop``,
    a centred ``crop_size`` crop (``top = (H - h) // 2`` as transformers does).
    Coordinates can fall outside the photo where a crop larger than the resized
    photo pads it.

    Raises:
        ModelError: the processor's output size does not match its config (an
        unusual processor whose geometry attnviz cannot map back onto the photo).
    """
    rh, rw = _resized_size(processor, height, width)
    top = left = 0
    out_h, out_w = rh, rw
    if getattr(processor, "do_center_crop", False):
        crop = getattr(processor, "crop_size", None)
        ch, cw = _size_field(crop, "height"), _size_field(crop, "width")
        if isinstance(crop, int):
            ch = cw = crop
        if ch and cw:
            top, left = (rh - ch) // 2, (rw - cw) // 2
            out_h, out_w = int(ch), int(cw)
    if (out_h, out_w) != tuple(input_size):
        raise ModelError(
            f"the image processor ({type(processor).__name__}) made a {input_size[1]}x{input_size[0]} input, but its "
            f"resize/crop settings give {out_w}x{out_h}; attnviz cannot map the patches back onto the photo"
        )
    sx, sy = width / rw, height / rh
    return (left * sx, top * sy, (left + out_w) * sx, (top + out_h) * sy)


def preprocess(im: ImageModel, image) -> tuple[Any, tuple[float, float, float, float], tuple[int, int], tuple[int, int]]:
    """Run the image processor on an RGB photo.

    Returns:
        ``(pixel_values [1, 3, H, W], grid_box, (rows, cols), (H, W))`` where
        ``grid_box`` is the part of the photo (its own pixels, left/top/right/bottom)
        covered by the ``rows x cols`` patch grid: the processor's crop, less any
        remainder rows/columns of pixels that do not fill a whole patch.
    """
    from attnviz.inputs.imagefile import run_processor

    pixel_values = run_processor(im.processor, image, im.source.model_id)["pixel_values"]
    h, w = int(pixel_values.shape[-2]), int(pixel_values.shape[-1])
    ph, pw = im.info.patch_size
    rows, cols = h // ph, w // pw
    if rows < 1 or cols < 1:
        raise ModelError(f"the processed image ({w}x{h}) is smaller than one {pw}x{ph} patch")
    left, top, right, bottom = crop_box(im.processor, image.width, image.height, (h, w))
    sx, sy = (right - left) / w, (bottom - top) / h
    grid_box = (left, top, left + cols * pw * sx, top + rows * ph * sy)
    return pixel_values, grid_box, (rows, cols), (h, w)


# ---------------------------------------------------------------------------
# capture


def attend_image(
    image,
    model: ImageModel | str = DEFAULT_IMAGE_MODEL,
    *,
    plan: CapturePlan = FULL,
    options: LoadOptions = LoadOptions(),
    progress: Callable[[str, int], None] | None = None,
    verify: bool = True,
) -> ImageAttention:
    """Capture the attention of a Vision Transformer over one photo.

    Args:
        image: a path to an image file or a PIL image (converted to RGB, EXIF
            orientation applied; see :func:`attnviz.inputs.imagefile.load_image`).
        model: an :class:`ImageModel` or a name for :func:`load_image_model`.
        plan: what to capture (default: every layer and head in full; see
            :func:`attnviz.analysis.patches.image_plan` for the light plan the CLI uses).
        verify: for a model type outside :data:`attnviz.verify.PROVEN_TYPES`,
            compare the capture with eager on this image first and use eager if
            they differ (``result.verification`` says what happened).

    Returns:
        :class:`~attnviz.types.ImageAttention`; with the default plan
        ``result.attention.full`` is float32 ``[layers, heads, T, T]`` equal to
        transformers' eager ``output_attentions`` (within 1e-5 in fp32), with
        ``T = prefix_tokens + rows * cols``. Classifiers also get the top-5
        predictions (softmax of the logits, labels from ``config.id2label``).

    Raises:
        InputError: unreadable image. ModelError: model problems, or a token
        count that does not match prefix + patch grid.
    """
    from attnviz.inputs.imagefile import load_image

    im = (model if isinstance(model, ImageModel) else load_image_model(model, options)).with_weights()
    photo = load_image(image)
    pixel_values, box, grid, input_size = preprocess(im, photo)
    param = next(im.model.parameters())
    pixel_values = pixel_values.to(device=param.device, dtype=param.dtype)
    try:
        result, verdict = verified_capture(im.model, im.model_type, {"pixel_values": pixel_values}, plan, progress, verify)
    except (ValueError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0][:240] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"'{im.source.model_id}' failed on this image: {first}") from exc
    maps = result.attention.get(SELF)
    if maps is None:
        raise ModelError(f"'{im.source.model_id}' produced no self-attention")
    rows, cols = grid
    expected = im.info.prefix_tokens + rows * cols
    if maps.num_keys != expected or maps.num_queries != expected:
        raise ModelError(
            f"'{im.source.model_id}' ({im.model_type}) has {maps.num_keys} tokens, but {im.info.prefix_tokens} prefix "
            f"tokens + a {rows}x{cols} patch grid make {expected}; attnviz cannot tell which token is which patch"
        )
    if maps.num_layers != im.info.num_layers:
        raise ModelError(f"captured {maps.num_layers} attention layers, but the config says {im.info.num_layers}")
    return ImageAttention(
        model_id=im.source.model_id,
        model_type=im.model_type,
        backend=result.backend,
        image=photo,
        crop_box=box,
        grid=grid,
        prefix_tokens=im.info.prefix_tokens,
        cls_index=im.info.cls_index,
        attention=maps,
        predictions=predictions(im, result.outputs),
        input_size=input_size,
        verification=verdict,
    )


def predictions(im: ImageModel, outputs, k: int = TOP_K) -> tuple[Prediction, ...]:
    """Top-``k`` labels of a classifier (softmax of the logits); ``()`` for other models."""
    import torch

    logits = getattr(outputs, "logits", None)
    if not im.info.classifier or logits is None or logits.ndim != 2:
        return ()
    probs = torch.softmax(logits[0].float(), dim=-1).cpu()
    top = torch.topk(probs, min(k, probs.numel()))
    id2label = getattr(im.model.config, "id2label", None) or {}
    out = []
    for score, idx in zip(top.values.tolist(), top.indices.tolist()):
        label = id2label.get(idx, id2label.get(str(idx), f"LABEL_{idx}"))
        out.append(Prediction(str(label), float(score)))
    return tuple(out)


def patch_at(crop_box, grid: tuple[int, int], image_size: tuple[int, int], x: float, y: float) -> tuple[int, int]:
    """The patch ``(row, col)`` of a ``grid`` laid over ``crop_box`` (photo pixels) that covers pixel ``(x, y)``.

    ``image_size`` is the photo's ``(width, height)``; :func:`preprocess` gives ``crop_box`` and
    ``grid`` without the model's weights, so ``--patch`` is checked before they load.

    Raises:
        UsageError: the point lies outside the region the model saw (the crop).
    """
    left, top, right, bottom = crop_box
    rows, cols = grid
    width, height = image_size
    if not (left <= x < right and top <= y < bottom) or not (0 <= x < width and 0 <= y < height):
        raise UsageError(
            f"--patch {x:g},{y:g} is outside the part of the photo the model saw: "
            f"x in [{max(left, 0):.0f}, {min(right, width):.0f}), y in [{max(top, 0):.0f}, {min(bottom, height):.0f})"
        )
    col = min(cols - 1, int((x - left) / (right - left) * cols))
    row = min(rows - 1, int((y - top) / (bottom - top) * rows))
    return row, col

"""Tiny random-weight Vision Transformers built from configs, saved with an image processor into tmp dirs.

Every family attnviz image supports, plus Swin (to test the refusal). Weights are
random but drawn wide (``initializer_range=0.5``) so that attention is peaked,
not uniform, and the comparisons with eager attention mean something.

=================  ===================================  =========  ====================================
kind               model class                          prefix     processor
=================  ===================================  =========  ====================================
vit                ViTForImageClassification (5 labels) 1          ViT: squash to 32x32
deit-distilled     DeiTForImageClassificationWithTeacher 2         DeiT: 40x40 then centre crop 32
dinov2-registers   Dinov2WithRegistersModel, 4 regs     5          Bit: shortest edge 36, crop 28
dinov2             Dinov2Model                          1          Bit: shortest edge 36, crop 28
dinov2-nocrop      Dinov2Model                          1          Bit: shortest edge 28, no crop
siglip             SiglipVisionModel                    0          Siglip: 32x32
beit               BeitModel                            1          Beit: 32x32
clip-vision        CLIPVisionModel                      1          CLIP: shortest edge 32, crop 32
clip-full          CLIPModel (text + vision)            1          CLIP: shortest edge 32, crop 32
data2vec-vision    Data2VecVisionModel (rel. pos. bias) 1          Beit: 32x32
ijepa              IJepaModel (no [CLS])                0          ViT: 32x32
swin               SwinModel                            -          ViT: 32x32
=================  ===================================  =========  ====================================
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

#: kind -> (prefix tokens, patch size)
LAYOUT = {
    "vit": (1, 8),
    "deit-distilled": (2, 8),
    "dinov2-registers": (5, 7),
    "dinov2": (1, 7),
    "dinov2-nocrop": (1, 7),
    "siglip": (0, 8),
    "beit": (1, 8),
    "clip-vision": (1, 8),
    "clip-full": (1, 8),
    "data2vec-vision": (1, 8),
    "ijepa": (0, 8),
}
KINDS = tuple(LAYOUT)
COMMON = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=40, initializer_range=0.5)
LABELS = {0: "red", 1: "green", 2: "blue", 3: "cat", 4: "espresso"}

#: the real weights in ../shared (beside the project root); tests that need them skip where it is absent
ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
DEIT = SHARED / "models" / "deit-tiny-patch16-224"
DINOV2 = SHARED / "models" / "dinov2-small-saliency"
SAMPLES = ROOT / "samples"
needs_deit = pytest.mark.skipif(not DEIT.exists(), reason="../shared/models/deit-tiny-patch16-224 is not here")
needs_dinov2 = pytest.mark.skipif(not DINOV2.exists(), reason="../shared/models/dinov2-small-saliency is not here")



def _processor(name: str, **kwargs):
    """The PIL-backend image processor class (no torchvision needed) of ``name``, built with ``kwargs``."""
    import transformers

    cls = getattr(transformers, name + "Pil", None) or getattr(transformers, name)
    return cls(**kwargs)


def build(kind: str):
    """``(model, processor)`` of a tiny random model of ``kind``."""
    import transformers as tf

    torch.manual_seed(0)
    if kind == "vit":
        cfg = tf.ViTConfig(image_size=32, patch_size=8, num_labels=5, id2label=LABELS, label2id={v: k for k, v in LABELS.items()}, **COMMON)
        return tf.ViTForImageClassification(cfg), _processor("ViTImageProcessor", size={"height": 32, "width": 32})
    if kind == "deit-distilled":
        cfg = tf.DeiTConfig(image_size=32, patch_size=8, num_labels=5, id2label=LABELS, label2id={v: k for k, v in LABELS.items()}, **COMMON)
        model = tf.DeiTForImageClassificationWithTeacher(cfg)
        return model, _processor("DeiTImageProcessor", size={"height": 40, "width": 40}, crop_size={"height": 32, "width": 32})
    if kind in ("dinov2", "dinov2-nocrop", "dinov2-registers"):
        proc = (
            _processor("BitImageProcessor", size={"shortest_edge": 28}, do_center_crop=False)
            if kind == "dinov2-nocrop"
            else _processor("BitImageProcessor", size={"shortest_edge": 36}, crop_size={"height": 28, "width": 28})
        )
        if kind == "dinov2-registers":
            cfg = tf.Dinov2WithRegistersConfig(image_size=28, patch_size=7, num_register_tokens=4, **COMMON)
            return tf.Dinov2WithRegistersModel(cfg), proc
        cfg = tf.Dinov2Config(image_size=28, patch_size=7, **COMMON)
        return tf.Dinov2Model(cfg), proc
    if kind == "siglip":
        cfg = tf.SiglipVisionConfig(image_size=32, patch_size=8, **COMMON)
        return tf.SiglipVisionModel(cfg), _processor("SiglipImageProcessor", size={"height": 32, "width": 32})
    if kind == "beit":
        cfg = tf.BeitConfig(image_size=32, patch_size=8, use_relative_position_bias=True, **COMMON)
        return tf.BeitModel(cfg), _processor("BeitImageProcessor", size={"height": 32, "width": 32})
    if kind in ("clip-vision", "clip-full"):
        proc = _processor("CLIPImageProcessor", size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
        vision = dict(image_size=32, patch_size=8, **COMMON)
        if kind == "clip-vision":
            return tf.CLIPVisionModel(tf.CLIPVisionConfig(**vision)), proc
        text = dict(vocab_size=99, max_position_embeddings=16, **COMMON)
        cfg = tf.CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)
        return tf.CLIPModel(cfg), proc
    if kind == "data2vec-vision":
        cfg = tf.Data2VecVisionConfig(image_size=32, patch_size=8, use_relative_position_bias=True, **COMMON)
        return tf.Data2VecVisionModel(cfg), _processor("BeitImageProcessor", size={"height": 32, "width": 32})
    if kind == "ijepa":
        cfg = tf.IJepaConfig(image_size=32, patch_size=8, **COMMON)
        return tf.IJepaModel(cfg), _processor("ViTImageProcessor", size={"height": 32, "width": 32})
    if kind == "swin":
        cfg = tf.SwinConfig(image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 2], window_size=4)
        return tf.SwinModel(cfg), _processor("ViTImageProcessor", size={"height": 32, "width": 32})
    raise ValueError(kind)


def make_vision_model(root: Path, kind: str) -> Path:
    """Build a tiny model of ``kind`` and ``save_pretrained`` it with its processor into ``root/kind``."""
    folder = Path(root) / kind
    if (folder / "config.json").exists():
        return folder
    model, processor = build(kind)
    model.eval()
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def make_photo(path: Path, size=(48, 40), seed: int = 0) -> Path:
    """A small RGB photo-like image (smooth gradients plus noise) saved to ``path``."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    w, h = size
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([x * 255 / max(1, w - 1), y * 255 / max(1, h - 1), (x + y) * 127 / max(1, w + h - 2)], -1)
    img = np.clip(img + rng.normal(0, 20, img.shape), 0, 255).astype(np.uint8)
    Image.fromarray(img, "RGB").save(path)
    return Path(path)


def eager_attentions(folder: Path, image_path: Path):
    """Reference: transformers' eager ``output_attentions`` for the photo, stacked to ``[L, H, T, T]``.

    Loads the folder independently of attnviz (AutoImageProcessor + the model
    class that fits) and feeds it the photo opened with Pillow.
    """
    import transformers as tf
    from PIL import Image

    cfg = tf.AutoConfig.from_pretrained(folder)
    archs = cfg.architectures or []
    if cfg.model_type == "clip":
        cls = tf.CLIPVisionModel
    elif any("ForImageClassification" in a for a in archs):
        cls = tf.AutoModelForImageClassification
    else:
        cls = tf.AutoModel
    model = cls.from_pretrained(folder, attn_implementation="eager").eval()
    processor = tf.AutoImageProcessor.from_pretrained(folder)
    with Image.open(image_path) as im:
        pixel_values = processor(images=im.convert("RGB"), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        out = model(pixel_values=pixel_values, output_attentions=True)
    return torch.stack([a[0].float() for a in out.attentions]), out


def reference_rollout(attentions: torch.Tensor, cls_index: int | None, prefix: int, grid) -> torch.Tensor:
    """Attention rollout written out independently of attnviz (mean over heads, no discarding).

    For each layer: A = mean over heads, A' = 0.5 A + 0.5 I, rows renormalised;
    R = A'_L ... A'_1. Returns the [CLS] row (mean row without [CLS]) over the patches as ``[rows, cols]``.
    """
    n = attentions.shape[-1]
    eye = torch.eye(n, dtype=torch.float64)
    result = eye.clone()
    for layer in range(attentions.shape[0]):
        a = attentions[layer].double().mean(dim=0)
        a = 0.5 * a + 0.5 * eye
        a = a / a.sum(dim=-1, keepdim=True)
        result = a @ result
    row = result[cls_index] if cls_index is not None else result.mean(dim=0)
    return row[prefix:].reshape(grid).float()

"""Image-token layouts of vision-language models: each image token's rectangle in the original photo, tested against
the processor's own grid, token count and pixels (a photo whose colours encode their coordinates)."""

from __future__ import annotations

import numpy as np
import pytest
import torch


def _gradient(width: int, height: int, blue: int = 0):
    """A photo whose red channel is x / (W - 1) and green channel y / (H - 1) (0..255), blue ``blue`` everywhere."""
    from PIL import Image

    x = np.linspace(0, 255, width)[None, :].repeat(height, 0)
    y = np.linspace(0, 255, height)[:, None].repeat(width, 1)
    return Image.fromarray(np.stack([x, y, np.full_like(x, blue)], -1).round().astype(np.uint8))


def _qwen3_vl_image_processor():
    """Qwen/Qwen3-VL-2B-Instruct's image processor (PIL backend): patch 16, merge 2 (32-pixel tokens), mean = std =
    0.5, 256 * 256 .. 4096 * 4096 pixels."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    return Qwen2VLImageProcessorPil(patch_size=16, merge_size=2, temporal_patch_size=2, image_mean=[0.5] * 3,
                                    image_std=[0.5] * 3, size={"shortest_edge": 65536, "longest_edge": 16777216})


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen3_vl"])
@pytest.mark.parametrize("size", [(400, 400), (640, 240), (240, 640), (1000, 120)])
def test_qwen2_vl_token_boxes_hold_their_pixels(size, family):
    """Square, wide, tall and very wide photos, through Qwen2-VL's processor (patch 14) and Qwen3-VL's (patch 16):
    as many boxes as the processor's own count (grid_t * grid_h * grid_w // merge_size^2); the boxes tile the photo;
    and the centre pixel of every patch the processor put into a token, decoded back to photo coordinates, lies in
    that token's box (which also pins the processor's patch order: 2x2 windows, row-major over the merged grid)."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from attnviz.inputs.vlm import image_token_layout, qwen2_vl_layout

    proc = Qwen2VLImageProcessorPil() if family == "qwen2_vl" else _qwen3_vl_image_processor()
    W, H = size
    out = proc(images=_gradient(W, H), return_tensors="pt")
    grid = out["image_grid_thw"][0].tolist()
    m, p = proc.merge_size, proc.patch_size
    assert p == (14 if family == "qwen2_vl" else 16)
    layout = qwen2_vl_layout((W, H), grid, m)
    assert image_token_layout(family, None, proc, (W, H), out) == layout
    boxes = layout.token_boxes()
    assert len(boxes) == grid[0] * grid[1] * grid[2] // m ** 2 == layout.num_tokens
    area = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).sum()
    assert area == pytest.approx(W * H) and boxes[:, :2].min() == 0 and boxes[:, 2].max() == W and boxes[:, 3].max() == H
    pix = out["pixel_values"]  # [grid_h * grid_w, 3 * temporal * p * p]
    T = proc.temporal_patch_size
    patches = pix.reshape(-1, 3, T, p, p)[:, :, 0, p // 2, p // 2]  # each patch's centre pixel, normalised
    mean, std = torch.tensor(proc.image_mean), torch.tensor(proc.image_std)
    rgb = patches * std + mean  # 0..1
    x = rgb[:, 0].numpy() * (W - 1)
    y = rgb[:, 1].numpy() * (H - 1)
    token = np.arange(len(pix)) // (m * m)  # 2x2 windows of patches, one token each
    slack = 2.0 + max(W / (grid[2] * p), H / (grid[1] * p))  # rounding to 1/255 and the resize filter
    b = boxes[token]
    assert (x >= b[:, 0] - slack).all() and (x <= b[:, 2] + slack).all()
    assert (y >= b[:, 1] - slack).all() and (y <= b[:, 3] + slack).all()
    shuffled = np.roll(token, m * m)  # a wrong order (the next token's patches) is caught
    assert not ((x >= boxes[shuffled][:, 0] - slack) & (x <= boxes[shuffled][:, 2] + slack)
                & (y >= boxes[shuffled][:, 1] - slack) & (y <= boxes[shuffled][:, 3] + slack)).all()


def test_qwen2_vl_layout_refuses_what_it_cannot_place():
    from attnviz.inputs.vlm import qwen2_vl_layout

    with pytest.raises(ValueError, match="not a multiple"):
        qwen2_vl_layout((100, 100), (1, 5, 4), 2)
    with pytest.raises(ValueError, match="video"):
        qwen2_vl_layout((100, 100), (2, 4, 4), 2)
    doc = qwen2_vl_layout((100, 50), (1, 4, 8), 2).to_json()
    assert doc == {"image_size": [100, 50], "tiles": [{"name": "image", "grid": [2, 4], "box": [0.0, 0.0, 100.0, 50.0],
                                                       "token_range": [0, 8], "view": "image", "newline": False}]}


@pytest.mark.parametrize("size", [(400, 400), (640, 240), (240, 640)])
def test_llava_center_crop_token_boxes_hold_their_pixels(size):
    """LLaVA-1.5's CLIP processor (shortest edge 336, centre crop 336, patch 14): 576 image tokens, each box in the
    original photo holds the pixel the processor put at its patch's centre; the boxes tile the centre crop only."""
    from transformers import CLIPImageProcessor

    from attnviz.inputs.vlm import center_crop_layout

    proc = CLIPImageProcessor(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336})
    W, H = size
    pix = proc(images=_gradient(W, H), return_tensors="pt")["pixel_values"][0]  # [3, 336, 336]
    layout = center_crop_layout((W, H), 336, (336, 336), 14)
    boxes = layout.token_boxes()
    assert layout.num_tokens == len(boxes) == (336 // 14) ** 2
    mean, std = torch.tensor(proc.image_mean)[:, None, None], torch.tensor(proc.image_std)[:, None, None]
    rgb = (pix * std + mean).numpy()
    centre = np.arange(24) * 14 + 7
    x = rgb[0][np.ix_(centre, centre)].reshape(-1) * (W - 1)
    y = rgb[1][np.ix_(centre, centre)].reshape(-1) * (H - 1)
    slack = 2.0 + max(W, H) / 336
    assert (x >= boxes[:, 0] - slack).all() and (x <= boxes[:, 2] + slack).all()
    assert (y >= boxes[:, 1] - slack).all() and (y <= boxes[:, 3] + slack).all()
    x0, y0, x1, y1 = layout.tiles[0].box
    short = min(W, H)
    assert (x1 - x0) == pytest.approx(short, abs=2) and (y1 - y0) == pytest.approx(short, abs=2)  # the centre square
    assert x0 == pytest.approx((W - short) / 2, abs=2) and y0 == pytest.approx((H - short) / 2, abs=2)


# ----------------------------------------------------------------------------------------------- shared test helpers


def _tokenizer(*special: str):
    """The tiny BPE tokenizer of tests/tiny.py with the processor's special tokens added."""
    from tiny import bpe_tokenizer

    tok = bpe_tokenizer()
    tok.add_special_tokens({"additional_special_tokens": list(special)})
    return tok


def _patch_features(pix, mean, std, size, n: int, p: int):
    """The vision tower's view of processed tiles, as features that remember where they come from.

    ``pix``: normalised ``[P, 3, S, S]`` tiles of a ``_gradient(W, H, blue=255)`` photo (padding is black, so blue
    marks the photo's own pixels). Returns float64 ``[P, n * n, 3]``: per patch (row-major, ``p`` pixels, the first
    ``n * p`` rows/columns of the tile, as the patch embedding sees them) the sums of ``x * real``, ``y * real`` and
    ``real`` over its pixels: linear, so any mixing of features (bilinear shrinking) still yields a weighted centroid
    ``(x, y)`` of the photo pixels it saw."""
    W, H = size
    rgb = pix.double() * torch.tensor(std, dtype=torch.float64)[:, None, None] + torch.tensor(mean, dtype=torch.float64)[:, None, None]
    rgb = rgb[:, :, :n * p, :n * p]
    real = (rgb[:, 2] * 255 - 104).clamp(0, 151) / 151  # 255: the photo; 0 (black) or 104 (OneVision's mean) padding
    feats = torch.stack([rgb[:, 0] * (W - 1) * real, rgb[:, 1] * (H - 1) * real, real], 1)
    feats = feats.reshape(len(pix), 3, n, p, n, p).sum((3, 5))  # [P, 3, n, n]
    return feats.permute(0, 2, 3, 1).reshape(len(pix), n * n, 3)


def _inside(x, y, boxes, slack):
    return ((x >= boxes[:, 0] - slack) & (x <= boxes[:, 2] + slack) & (y >= boxes[:, 1] - slack)
            & (y <= boxes[:, 3] + slack))


def _centre_tolerance(size) -> float:
    """How far (pixels) the centroid of a patch's decoded coordinates may lie from the true centre: colours are
    rounded to 1/255 of the photo's side, and the resize filter blurs."""
    return 1.5 + max(size) / 1000


def _check_sequence(feats, boxes, slack, tol):
    """``feats``: float64 ``[T, 3]`` per image token in sequence order (as :func:`_patch_features`, NaN for newline
    tokens); ``boxes``: the layout's ``[T, 4]``. Every newline token sits where the layout has a NaN row, every other
    token saw some of the photo and the centroid of what it saw lies in its box, and within ``tol`` pixels of the
    box's centre where it saw nothing but the photo (which pins the boxes to a fraction of a patch); rolled by one
    token, the boxes fail."""
    feats = np.asarray(feats, dtype=np.float64)
    assert feats.shape == (len(boxes), 3)
    newline = np.isnan(boxes[:, 0])
    assert (np.isnan(feats[:, 0]) == newline).all()
    f, b = feats[~newline], boxes[~newline]
    assert (f[:, 2] > 0).all()  # no token is all padding
    x, y = f[:, 0] / f[:, 2], f[:, 1] / f[:, 2]
    assert _inside(x, y, b, slack).all()
    full = f[:, 2] >= f[:, 2].max() - 1e-6
    assert full.sum() > len(f) / 2
    assert np.abs(x - (b[:, 0] + b[:, 2]) / 2)[full].max() < tol
    assert np.abs(y - (b[:, 1] + b[:, 3]) / 2)[full].max() < tol
    assert not _inside(x, y, np.roll(b, 1, 0), slack).all()


# ------------------------------------------------------------------------------------------- LLaVA-NeXT / OneVision

_NEXT_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]


def _llava_next():
    """llava-hf/llava-v1.6-mistral-7b-hf's processor (336 tiles, shortest edge 336, CLS dropped) and config."""
    from transformers import LlavaNextConfig, LlavaNextProcessor
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

    ip = LlavaNextImageProcessorPil(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336},
                                    image_grid_pinpoints=_NEXT_PINPOINTS)
    proc = LlavaNextProcessor(image_processor=ip, tokenizer=_tokenizer("<image>"), patch_size=14,
                              vision_feature_select_strategy="default", num_additional_image_tokens=1)
    return proc, LlavaNextConfig(image_grid_pinpoints=_NEXT_PINPOINTS)


def _llava_onevision():
    """llava-hf/llava-onevision-qwen2-0.5b-ov-hf's processor (SigLIP 384, patch 14, 729 tokens a tile, anyres_max_9)
    and config. The real processor also holds a video processor, which needs torchvision: this one leaves it out."""
    from transformers import LlavaOnevisionConfig, LlavaOnevisionProcessor, ProcessorMixin
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import LlavaOnevisionImageProcessorPil

    class ImageOnly(LlavaOnevisionProcessor):
        def __init__(self, image_processor, tokenizer):
            self.num_image_tokens, self.vision_feature_select_strategy = 729, "full"
            self.image_token, self.video_token, self.vision_aspect_ratio = "<image>", "<video>", "anyres_max_9"
            self.image_token_id = tokenizer.convert_tokens_to_ids("<image>")
            self.video_token_id = tokenizer.convert_tokens_to_ids("<video>")
            ProcessorMixin.__init__(self, image_processor, tokenizer)

    proc = ImageOnly(LlavaOnevisionImageProcessorPil(), _tokenizer("<image>", "<video>"))
    return proc, LlavaOnevisionConfig()


def _pack(model_type, config, feats, image_sizes, newline):
    """The model's own ``pack_image_features`` (base, unpad, OneVision's shrinking, newline tokens) on ``feats``."""
    from types import SimpleNamespace

    if model_type == "llava_next":
        from transformers.models.llava_next.modeling_llava_next import LlavaNextModel

        out, _ = LlavaNextModel.pack_image_features(SimpleNamespace(config=config), [feats], image_sizes, "default", newline)
    else:
        from transformers.models.llava_onevision.modeling_llava_onevision import LlavaOnevisionModel

        out, _ = LlavaOnevisionModel.pack_image_features(SimpleNamespace(config=config), [feats], image_sizes, newline,
                                                         config.vision_aspect_ratio)
    return out[0]


@pytest.mark.parametrize("model_type,size", [
    ("llava_next", (400, 400)), ("llava_next", (640, 240)), ("llava_next", (240, 640)), ("llava_next", (1000, 120)),
    ("llava_onevision", (400, 400)), ("llava_onevision", (640, 240)), ("llava_onevision", (240, 640)),
    ("llava_onevision", (1000, 120)), ("llava_onevision", (1300, 1000)),
])
def test_anyres_token_boxes_hold_their_pixels(model_type, size):
    """LLaVA-NeXT and LLaVA-OneVision, square, wide, tall, very wide photos (and one big enough for OneVision to shrink
    its grid): the layout (through the dispatcher) holds as many tokens as the real processor put into the prompt;
    then the processor's pixel_values, turned into features that remember which photo pixels each vision patch saw,
    go through the model's own ``pack_image_features``: newline tokens land exactly on the layout's NaN rows (after
    each row of the tiles' grid, none in the base), no kept token is all padding, and the centroid of what each token
    saw lies in its box (also after OneVision's bilinear shrinking); rolled by one token, or with the base placed after
    the tiles, the boxes fail; where a token saw only the photo, its box's centre is the centroid of what it saw
    (within ~2 pixels: OneVision's 27 patches of 14 pixels leave 6 pixels of each 384 tile unseen, and the boxes
    follow). Without shrinking, what the unpadding removes is never a patch of the photo only (the unpadding rounds
    in whole features, so it may drop a few photo rows at the edges: the tiles' box says where)."""
    from attnviz.inputs.vlm import image_token_layout

    proc, config = _llava_next() if model_type == "llava_next" else _llava_onevision()
    W, H = size
    out = proc(images=[_gradient(W, H, blue=255)], text=["<image> What is this?"], return_tensors="pt")
    layout = image_token_layout(model_type, config, proc, (W, H), out)
    assert layout.num_tokens == int((out["input_ids"] == proc.image_token_id).sum())
    assert layout.views() == ("global", "tiles") and [t.newline for t in layout.tiles] == [False, True]
    ip, vc = proc.image_processor, config.vision_config
    n = vc.image_size // vc.patch_size
    pix = out["pixel_values"][0]
    feats = _patch_features(pix, ip.image_mean, ip.image_std, (W, H), n, vc.patch_size)
    ids = torch.arange(feats.shape[0] * feats.shape[1], dtype=torch.float64).reshape(feats.shape[0], -1, 1)
    seq = _pack(model_type, config, torch.cat([feats, ids], -1), out["image_sizes"], torch.full((4,), float("nan")))
    boxes = layout.token_boxes()
    _check_sequence(seq[:, :3], boxes, 2.0 + max(W, H) / 255, _centre_tolerance(size))
    nb = layout.tiles[0].num_tokens
    assert not np.array_equal(np.isnan(np.concatenate([boxes[nb:], boxes[:nb]])[:, 0]), np.isnan(seq[:, 0].numpy()))
    kept = seq[nb:][~torch.isnan(seq[nb:, 0]), 3]
    shrunk = not torch.equal(kept, kept.round())  # OneVision interpolated the grid
    assert shrunk == (size == (1300, 1000))
    if not shrunk:  # what the unpadding removes is padding, at least in part: never a patch of the photo only
        removed = np.setdiff1d(ids[1:].flatten().numpy(), kept.numpy())
        assert (feats.reshape(-1, 3)[removed, 2] < vc.patch_size ** 2 - 1e-6).all()
        assert len(kept) + len(removed) == ids[1:].numel()


def test_onevision_multi_image_photos_are_padded_squares():
    """A OneVision prompt with two photos: no tiles; each photo is padded to a centred square (grey), squashed to one
    384 tile, and followed by one newline token: 729 + 1 tokens each (the processor's count), the square's boxes
    hold the pixels the model's ``pack_image_features`` keeps, and the trailing newline covers no pixels."""
    from attnviz.inputs.vlm import image_token_layout

    proc, config = _llava_onevision()
    W, H = 640, 240
    out = proc(images=[[_gradient(W, H, blue=255), _gradient(W, H, blue=255)]], text=["<image><image> Compare."],
               return_tensors="pt")
    layout = image_token_layout("llava_onevision", config, proc, (W, H), out)
    assert [t.name for t in layout.tiles] == ["image", "newline"] and layout.num_tokens == 729 + 1
    assert 2 * layout.num_tokens == int((out["input_ids"] == proc.image_token_id).sum())
    x0, y0, x1, y1 = layout.tiles[0].box
    assert (x0, y0) == (0, -200) and x1 == pytest.approx(640 * 378 / 384) and y1 - y0 == pytest.approx(x1 - x0)
    ip = proc.image_processor
    pix = out["pixel_values"].reshape(-1, 3, 384, 384)[:1]
    feats = _patch_features(pix, ip.image_mean, ip.image_std, (W, H), 27, 14)
    feats[:, :, 2] = feats[:, :, 2].clamp(min=1e-9)  # the grey padding alone: a token that saw no photo
    seq = _pack("llava_onevision", config, feats, out["image_sizes"][:1], torch.full((3,), float("nan")))
    boxes = layout.token_boxes()
    real = ~np.isnan(boxes[:, 0])
    seen = seq[:, 2].numpy() > 1  # tokens that saw some of the photo (the others lie in the padding)
    cx, cy = seq[:, 0].numpy() / seq[:, 2].numpy(), seq[:, 1].numpy() / seq[:, 2].numpy()
    assert np.isnan(seq[:, 0].numpy()).tolist() == (~real).tolist() and seen.sum() >= 27 * 10
    assert _inside(cx[seen], cy[seen], boxes[seen], 5.0).all()
    centre_y = (boxes[real][:, 1] + boxes[real][:, 3]) / 2
    assert ((centre_y < 0) | (centre_y > H))[~seen[real]].all()  # the tokens that saw only padding lie outside


# ---------------------------------------------------------------------------------------------- Idefics3 / SmolVLM


def _idefics3(size=None, **kwargs):
    """HuggingFaceM4/Idefics3-8B-Llama3's processor (364 tiles, longest edge 4 x 364, image_seq_len 169) and config
    (patch 14, scale factor 2)."""
    from transformers import Idefics3Config, Idefics3Processor
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

    ip = Idefics3ImageProcessorPil(size={"longest_edge": size or 4 * 364}, max_image_size={"longest_edge": 364}, **kwargs)
    tok = _tokenizer("<image>", "<fake_token_around_image>", "<global-img>", "<end_of_utterance>")
    config = Idefics3Config(vision_config={"image_size": 364, "patch_size": 14}, scale_factor=2)
    return Idefics3Processor(ip, tok, image_seq_len=169), config


def _smolvlm(size=None, **kwargs):
    """HuggingFaceTB/SmolVLM-256M-Instruct's processor (512 tiles, longest edge 2048, image_seq_len 64) and config
    (patch 16, scale factor 4). The real processor needs num2words and a video processor (torchvision): this one
    keeps the image part, with SmolVLM's own prompt code."""
    from transformers import ProcessorMixin, SmolVLMConfig
    from transformers.models.smolvlm.image_processing_pil_smolvlm import SmolVLMImageProcessorPil
    from transformers.models.smolvlm.processing_smolvlm import SmolVLMProcessor

    class ImageOnly(SmolVLMProcessor):
        def __init__(self, image_processor, tokenizer):
            self.fake_image_token, self.image_token = "<fake_token_around_image>", "<image>"
            self.end_of_utterance_token, self.global_image_token = "<end_of_utterance>", "<global-img>"
            self.video_token, self.image_seq_len = "<video>", 64
            self.image_token_id = tokenizer.convert_tokens_to_ids("<image>")
            ProcessorMixin.__init__(self, image_processor, tokenizer)

    ip = SmolVLMImageProcessorPil(size={"longest_edge": size or 2048}, max_image_size={"longest_edge": 512}, **kwargs)
    tok = _tokenizer("<image>", "<fake_token_around_image>", "<global-img>", "<end_of_utterance>")
    config = SmolVLMConfig(vision_config={"image_size": 512, "patch_size": 16}, scale_factor=4)
    return ImageOnly(ip, tok), config


def _tile_markers(ids, image_id, tok) -> list[str]:
    """The marker text before each run of image tokens in the prompt: ``"row 1 col 2"`` or ``"global"``."""
    import re

    ids = ids.tolist()
    names, gap = [], []
    for i, t in enumerate(ids):
        if t == image_id:
            if i == 0 or ids[i - 1] != image_id:
                text = tok.decode(gap)
                m = re.findall(r"<row_(\d+)_col_(\d+)>|(<global-img>)", text)
                names.append("global" if m[-1][2] else f"row {m[-1][0]} col {m[-1][1]}")
                gap = []
        else:
            gap.append(t)
    return names


def _check_shuffled_tiles(out, layout, config, ip, size, kept_tiles):
    """Every image token of ``out`` (sequence order = the processor's frames, pixel_shuffled by the model's own code)
    gathers ``s * s`` patches whose centroids all lie in the token's box; rolled by one token they do not."""
    from transformers.models.idefics3.modeling_idefics3 import Idefics3Connector

    W, H = size
    vc, s = config.vision_config, config.scale_factor
    n = vc.image_size // vc.patch_size
    pix = out["pixel_values"][0][:kept_tiles]
    feats = _patch_features(pix, ip.image_mean, ip.image_std, (W, H), n, vc.patch_size)
    shuffled = Idefics3Connector.pixel_shuffle(None, feats.contiguous(), s)  # [tiles, g * g, 3 * s * s]
    groups = shuffled.reshape(-1, s * s, 3)  # each token: its s * s patches' features
    x, y = (groups[..., 0] / groups[..., 2]).numpy(), (groups[..., 1] / groups[..., 2]).numpy()
    boxes = layout.token_boxes()
    assert len(boxes) == len(groups)
    slack = 2.0 + max(W, H) / 255
    for k in range(s * s):  # every patch of the group, not only its centre
        assert _inside(x[:, k], y[:, k], boxes, slack).all()
    tol = _centre_tolerance(size)  # the group's centroid is the box's centre: the group is the box
    assert np.abs(x.mean(1) - (boxes[:, 0] + boxes[:, 2]) / 2).max() < tol
    assert np.abs(y.mean(1) - (boxes[:, 1] + boxes[:, 3]) / 2).max() < tol
    assert not _inside(x[:, 0], y[:, 0], np.roll(boxes, 1, 0), slack).all()


@pytest.mark.parametrize("family,size", [
    ("idefics3", (400, 400)), ("idefics3", (640, 240)), ("idefics3", (240, 640)), ("idefics3", (1000, 120)),
    ("smolvlm", (400, 400)), ("smolvlm", (640, 240)), ("smolvlm", (240, 640)), ("smolvlm", (1000, 120)),
])
def test_idefics3_token_boxes_hold_their_pixels(family, size):
    """Idefics3 and SmolVLM, square, wide, tall and very wide photos: the layout (through the dispatcher) holds the
    processor's own count; its tiles come in the prompt's order (the ``<row_r_col_c>`` markers row-major, then
    ``<global-img>`` last); the tiles cut the photo exactly (no padding: their boxes cover it once); and every patch of
    every token's pixel_shuffle group (an s x s block of patches) saw pixels inside the token's box."""
    from attnviz.inputs.vlm import image_token_layout

    proc, config = _idefics3() if family == "idefics3" else _smolvlm()
    W, H = size
    out = proc(images=[_gradient(W, H, blue=255)], text=["<image> What is this?"], return_tensors="pt")
    layout = image_token_layout(family, config, proc, (W, H), out)
    ids = out["input_ids"][0]
    assert layout.num_tokens == int((ids == proc.image_token_id).sum())
    assert [t.name for t in layout.tiles] == _tile_markers(ids, proc.image_token_id, proc.tokenizer)
    assert layout.tiles[-1].name == "global" and layout.views() == ("tiles", "global")
    split = [t.box for t in layout.tiles[:-1]]
    assert sum((x1 - x0) * (y1 - y0) for x0, y0, x1, y1 in split) == pytest.approx(W * H)
    assert layout.tiles[-1].box == (0, 0, W, H)
    _check_shuffled_tiles(out, layout, config, proc.image_processor, (W, H), len(layout.tiles))


@pytest.mark.parametrize("family", ["idefics3", "smolvlm"])
def test_idefics3_single_tile_photos(family):
    """Without image splitting, and when the photo fits one tile, the processor makes the global image only (one
    view, ``"image"``): the layout follows, with the processor's count and pixels."""
    from attnviz.inputs.vlm import image_token_layout

    make = _idefics3 if family == "idefics3" else _smolvlm
    for (proc, config), (W, H) in [(make(do_image_splitting=False), (640, 240)), (make(size=300), (240, 400))]:
        out = proc(images=[_gradient(W, H, blue=255)], text=["<image> Hi"], return_tensors="pt")
        layout = image_token_layout(family, config, proc, (W, H), out)
        assert [t.name for t in layout.tiles] == ["global"] and layout.views() == ("image",)
        assert layout.num_tokens == int((out["input_ids"] == proc.image_token_id).sum()) == proc.image_seq_len
        _check_shuffled_tiles(out, layout, config, proc.image_processor, (W, H), 1)


# ----------------------------------------------------------------------------------- LLaVA and Qwen via the dispatcher


@pytest.mark.parametrize("strategy", ["default", "full"])
def test_llava_dispatch_counts_like_the_processor(strategy):
    """LLaVA-1.5 through the dispatcher: 576 tokens (``"default"`` drops [CLS]), or [CLS] first (``"full"``, one
    token over the whole crop, view ``"global"``), as many as the processor puts into the prompt."""
    from transformers import CLIPImageProcessor, LlavaConfig, LlavaProcessor

    from attnviz.inputs.vlm import image_token_layout

    ip = CLIPImageProcessor(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336})
    proc = LlavaProcessor(image_processor=ip, tokenizer=_tokenizer("<image>"), patch_size=14,
                          vision_feature_select_strategy=strategy, num_additional_image_tokens=1)
    config = LlavaConfig(vision_feature_select_strategy=strategy)
    out = proc(images=[_gradient(640, 240)], text=["<image> Hi"], return_tensors="pt")
    layout = image_token_layout("llava", config, proc, (640, 240), out)
    assert layout.num_tokens == int((out["input_ids"] == proc.image_token_id).sum())
    boxes = layout.token_boxes()
    if strategy == "full":
        assert layout.views() == ("global", "image") and tuple(boxes[0]) == layout.tiles[1].box
    assert layout.tiles[-1].box == pytest.approx((200.0, 0.0, 440.0, 240.0), abs=1)


def test_qwen2_vl_dispatch_and_refusals():
    """Qwen2-VL / Qwen2.5-VL / Qwen3-VL through the dispatcher; other model types, and a llava_next whose feature
    strategy would not give a square of features, are refused with a one-line ValueError."""
    from transformers import LlavaNextConfig
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from attnviz.inputs.vlm import LAYOUT_TYPES, image_token_layout

    assert LAYOUT_TYPES == {"llava", "llava_next", "llava_onevision", "qwen2_vl", "qwen2_5_vl", "qwen3_vl", "idefics3",
                            "smolvlm", "paligemma", "gemma3"}
    proc = Qwen2VLImageProcessorPil()
    out = proc(images=_gradient(640, 240), return_tensors="pt")
    for kind in ("qwen2_vl", "qwen2_5_vl", "qwen3_vl"):
        layout = image_token_layout(kind, None, proc, (640, 240), out)
        assert layout.num_tokens == int(out["image_grid_thw"][0].prod()) // 4
    with pytest.raises(ValueError, match="no image-token layout for model type 'mllama'"):
        image_token_layout("mllama", None, proc, (640, 240), out)
    with pytest.raises(ValueError, match="strategy"):
        image_token_layout("llava_next", LlavaNextConfig(vision_feature_select_strategy="full"), None, (640, 240), {})


# ----------------------------------------------------------------------------------------------- PaliGemma / Gemma-3


def _paligemma():
    """google/paligemma-3b-pt-224's processor (SigLIP, 224 px squashed, bicubic, 256 image tokens) and config."""
    from transformers import PaliGemmaConfig, PaliGemmaProcessor, SiglipImageProcessorPil

    ip = SiglipImageProcessorPil(size={"height": 224, "width": 224}, resample=3, image_mean=[0.5] * 3,
                                 image_std=[0.5] * 3)
    ip.image_seq_length = 256
    return PaliGemmaProcessor(image_processor=ip, tokenizer=_tokenizer()), PaliGemmaConfig()


def _gemma3(**kwargs):
    """google/gemma-3-4b-it's processor (896 px squashed, bilinear, pan-and-scan off, 256 image tokens) and config
    (SigLIP 896 px, patch 14: 64 x 64 patches pooled 4 x 4)."""
    from transformers import Gemma3Config, Gemma3ImageProcessorPil, Gemma3Processor

    from vlm_tiny import GEMMA3_IMAGE_TOKENS, _gemma_tokenizer

    ip = Gemma3ImageProcessorPil(size={"height": 896, "width": 896}, resample=2, image_mean=[0.5] * 3,
                                 image_std=[0.5] * 3, do_pan_and_scan=False, **kwargs)
    tok = _gemma_tokenizer(["<start_of_turn>", "<end_of_turn>", *GEMMA3_IMAGE_TOKENS.values()],
                           extra=GEMMA3_IMAGE_TOKENS)
    config = Gemma3Config(vision_config={"image_size": 896, "patch_size": 14}, mm_tokens_per_image=256)
    return Gemma3Processor(image_processor=ip, tokenizer=tok, image_seq_length=256), config


def _siglip_patch_sums(pix, mean, std, size, image_size: int, patch: int):
    """SigLIP's own patch embedding (``SiglipVisionEmbeddings``: a conv, then patches row-major) set to give, per
    patch of a ``_gradient(W, H)`` photo's processed pixels ``pix`` ``[1, 3, S, S]``, the sums of the decoded ``x``,
    ``y`` and the pixel count (no padding here: every pixel is the photo's): float64 ``[1, patches, 3]``."""
    from transformers import SiglipVisionConfig
    from transformers.models.siglip.modeling_siglip import SiglipVisionEmbeddings

    W, H = size
    emb = SiglipVisionEmbeddings(SiglipVisionConfig(hidden_size=3, image_size=image_size, patch_size=patch)).double()
    with torch.no_grad():
        emb.patch_embedding.weight.zero_()
        emb.patch_embedding.weight[0, 0] = std[0] * (W - 1)
        emb.patch_embedding.weight[1, 1] = std[1] * (H - 1)
        emb.patch_embedding.bias.copy_(torch.tensor([mean[0] * (W - 1), mean[1] * (H - 1), 1.0]) * patch * patch)
        emb.position_embedding.weight.zero_()
        return emb(pix.double())


@pytest.mark.parametrize("family,size", [
    ("paligemma", (400, 400)), ("paligemma", (640, 240)), ("paligemma", (240, 640)), ("paligemma", (1000, 120)),
    ("gemma3", (400, 400)), ("gemma3", (640, 240)), ("gemma3", (240, 640)), ("gemma3", (1000, 120)),
])
def test_squashed_square_token_boxes_hold_their_pixels(family, size):
    """PaliGemma and Gemma-3, square, wide, tall and very wide photos: the layout (through the dispatcher) is one
    grid over the whole photo with the processor's own count of image tokens (256); the processor's pixel_values go
    through SigLIP's own patch embedding (set to sum each patch's decoded photo coordinates) and, for Gemma-3, the
    model's own ``Gemma3MultiModalProjector`` (its average pooling of 4 x 4 patches; norm and projection made the
    identity): the centroid of what each token saw is its box's centre (within ~2 pixels), and rolled by one token the
    boxes fail -- which pins the token order (row-major) and Gemma-3's pooling blocks."""
    from attnviz.inputs.vlm import image_token_layout

    proc, config = _paligemma() if family == "paligemma" else _gemma3()
    W, H = size
    text = "<image>What is this?" if family == "paligemma" else "<start_of_image>What is this?"
    out = proc(images=[_gradient(W, H, blue=255)], text=[text], return_tensors="pt")
    image_id = proc.image_token_id if family == "paligemma" else proc.tokenizer.image_token_id
    layout = image_token_layout(family, config, proc, (W, H), out)
    assert layout.num_tokens == int((out["input_ids"] == image_id).sum()) == 256
    assert len(layout.tiles) == 1 and layout.tiles[0].box == (0, 0, W, H) and layout.tiles[0].grid == (16, 16)
    vc, ip = config.vision_config, proc.image_processor
    assert out["pixel_values"].shape == (1, 3, vc.image_size, vc.image_size)
    feats = _siglip_patch_sums(out["pixel_values"], ip.image_mean, ip.image_std, (W, H), vc.image_size, vc.patch_size)
    if family == "gemma3":
        from transformers.models.gemma3.modeling_gemma3 import Gemma3MultiModalProjector

        cfg = config.__class__(vision_config={"image_size": vc.image_size, "patch_size": vc.patch_size, "hidden_size": 3},
                               text_config={"hidden_size": 3, "num_attention_heads": 1, "num_key_value_heads": 1},
                               mm_tokens_per_image=config.mm_tokens_per_image)
        proj = Gemma3MultiModalProjector(cfg).double()
        assert proj.kernel_size == 4
        proj.mm_soft_emb_norm = torch.nn.Identity()
        with torch.no_grad():
            proj.mm_input_projection_weight.copy_(torch.eye(3))
            feats = proj(feats)  # [1, 256, 3]: the means of each 4 x 4 block's sums, in the model's token order
    assert feats.shape == (1, 256, 3)
    _check_sequence(feats[0].numpy(), layout.token_boxes(), 2.0 + max(W, H) / 255, _centre_tolerance(size))


def test_squashed_square_refusals():
    """Gemma-3 with pan-and-scan (crops the layout does not place), an image processor whose size is not the vision
    tower's, and a processor whose image_seq_length is not what the model makes, are refused with a ValueError."""
    from attnviz.inputs.vlm import image_token_layout, squashed_square_layout

    proc, config = _gemma3(pan_and_scan_min_crop_size=256, pan_and_scan_max_num_crops=4,
                           pan_and_scan_min_ratio_to_activate=1.2)
    proc.image_processor.do_pan_and_scan = True
    with pytest.raises(ValueError, match="pan-and-scan"):
        image_token_layout("gemma3", config, proc, (900, 300), {})
    proc, config = _gemma3()
    proc.image_processor.size = {"height": 448, "width": 448}
    with pytest.raises(ValueError, match="448x448"):
        image_token_layout("gemma3", config, proc, (900, 300), {})
    proc, config = _paligemma()
    proc.image_seq_length = 100
    with pytest.raises(ValueError, match="100 image tokens"):
        image_token_layout("paligemma", config, proc, (900, 300), {})
    config.vision_config.patch_size = 15
    with pytest.raises(ValueError, match="patches"):
        image_token_layout("paligemma", config, proc, (900, 300), {})
    with pytest.raises(ValueError, match="empty"):
        squashed_square_layout((10, 10), 0)
    doc = squashed_square_layout((100, 50), 4).to_json()
    assert doc["tiles"] == [{"name": "image", "grid": [4, 4], "box": [0.0, 0.0, 100.0, 50.0], "token_range": [0, 16],
                             "view": "image", "newline": False}]


# ------------------------------------------------------------------------------------- views, paint, raster, JSON


def test_paint_and_raster_put_each_weight_in_its_cell():
    """``paint`` splits per-token weights (sequence order) into each tile's ``[rows, cols]`` grid (newline tokens
    apart), ``raster`` draws a view over the photo (NaN where no cell lies), ``to_json`` carries view, newline and
    the uneven spans; wrong-sized weights and unknown views are refused."""
    from attnviz.inputs.vlm import anyres_layout

    layout = anyres_layout((640, 240), [[384, 384], [384, 768], [768, 384]], 384, 14, max_tiles=9)
    base, tiles = layout.tiles
    assert layout.views() == ("global", "tiles")
    assert base.grid == (27, 27) and not base.newline and tiles.newline
    rows, cols = tiles.grid
    assert layout.num_tokens == 729 + rows * (cols + 1)
    w = np.arange(layout.num_tokens, dtype=float)
    (g,) = layout.paint(w, "global")
    assert g.values.shape == (27, 27) and g.newline is None and g.values[1, 0] == 27
    (t,) = layout.paint(w, "tiles")
    assert t.values.shape == (rows, cols) and t.values[1, 0] == 729 + cols + 1 and t.newline[0] == 729 + cols
    assert t.extent == (tiles.box[0], tiles.box[2], tiles.box[3], tiles.box[1])
    boxes = layout.token_boxes()
    assert np.isnan(boxes[729 + cols]).all() and not np.isnan(np.delete(boxes, np.arange(rows) * (cols + 1) + 729 + cols, 0)).any()
    xs, ys = tiles.spans()  # 27 patches of 14 pixels in each 384 tile: a 6-pixel gap (in the tile) after every 27th
    gaps = xs[1:, 0] - xs[:-1, 1]
    assert np.allclose(gaps[np.arange(len(gaps)) % 27 != 26], 0)
    img = layout.raster(w, "global", (24, 64))
    assert img.shape == (24, 64) and img[0, 0] == 0 and np.isnan(img[-1, -1])  # the base's unseen last pixels
    full = layout.raster(w, "tiles")
    assert full.shape == (240, 640)
    x, y = 321, 100  # the value at a photo pixel is the weight of the token whose box holds it
    r = np.searchsorted(ys[:, 0], y + 0.5, side="right") - 1
    c = np.searchsorted(xs[:, 0], x + 0.5, side="right") - 1
    assert full[y, x] == t.values[r, c]
    doc = layout.to_json()
    assert doc["tiles"][1]["view"] == "tiles" and doc["tiles"][1]["newline"] is True and len(doc["tiles"][1]["x_spans"]) == cols
    with pytest.raises(ValueError, match="weights"):
        layout.paint(w[:-1], "tiles")
    with pytest.raises(ValueError, match="no view"):
        layout.paint(w, "image")

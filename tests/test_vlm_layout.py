"""Image-token layouts of vision-language models: each image token's rectangle in the original photo, tested against
the processor's own grid, token count and pixels (a photo whose colours encode their coordinates)."""

from __future__ import annotations

import numpy as np
import pytest
import torch


def _gradient(width: int, height: int):
    """A photo whose red channel is x / (W - 1) and green channel y / (H - 1) (0..255)."""
    from PIL import Image

    x = np.linspace(0, 255, width)[None, :].repeat(height, 0)
    y = np.linspace(0, 255, height)[:, None].repeat(width, 1)
    return Image.fromarray(np.stack([x, y, np.zeros_like(x)], -1).round().astype(np.uint8))


@pytest.mark.parametrize("size", [(400, 400), (640, 240), (240, 640), (1000, 120)])
def test_qwen2_vl_token_boxes_hold_their_pixels(size):
    """Square, wide, tall and very wide photos: as many boxes as the processor's own count (grid_t * grid_h * grid_w
    // merge_size^2); the boxes tile the photo; and the centre pixel of every patch the processor put into a token,
    decoded back to photo coordinates, lies in that token's box (which also pins the processor's patch order: 2x2
    windows, row-major over the merged grid)."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from attnviz.inputs.vlm import qwen2_vl_layout

    proc = Qwen2VLImageProcessorPil()
    W, H = size
    out = proc(images=_gradient(W, H), return_tensors="pt")
    grid = out["image_grid_thw"][0].tolist()
    m, p = proc.merge_size, proc.patch_size
    layout = qwen2_vl_layout((W, H), grid, m)
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
                                                       "token_range": [0, 8]}]}


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

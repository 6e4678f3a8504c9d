"""Vision-language models (issue "Where a vision-language model looks while it answers"): where each image token of a
prompt comes from in the photo.

A VLM's processor turns a photo into image tokens through its own resize, tiling and patch merging; attention on an
image token is only readable over the photo once that token's pixel rectangle is known. This module computes the
image-token layout of one photo from what the processor reports (its grid), as pixel boxes in the *original* photo.

Supported so far: LLaVA-1.5 (:func:`center_crop_layout`: a CLIP processor resizes the photo's shortest edge to the
crop size and keeps the centre square; the grid of patches is the image tokens, [CLS] dropped) and Qwen2-VL /
Qwen2.5-VL (``image_grid_thw``: the photo is resized, without cropping or padding, to
``grid_h x grid_w`` patches of ``patch_size`` pixels, and each ``merge_size x merge_size`` window of patches becomes one
token, row-major over the merged grid; ``processing_qwen2_vl`` counts ``grid_t * grid_h * grid_w // merge_size**2``
image tokens).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ImageTile:
    """One part of a photo that the processor turns into a grid of image tokens.

    ``name``: ``"image"`` (a single view), later ``"tile 0"``/``"base"`` for tiling models; ``grid``: token rows and
    columns; ``box``: the region of the original photo it covers, ``(x0, y0, x1, y1)`` in pixels (floats);
    ``token_range``: ``[start, end)`` among the photo's image tokens, row-major within the tile.
    """

    name: str
    grid: tuple[int, int]
    box: tuple[float, float, float, float]
    token_range: tuple[int, int]


@dataclass(frozen=True)
class ImageTokenLayout:
    """The image tokens of one photo: its ``image_size`` ``(width, height)`` in pixels and its ``tiles``."""

    image_size: tuple[int, int]
    tiles: tuple[ImageTile, ...]

    @property
    def num_tokens(self) -> int:
        return self.tiles[-1].token_range[1] if self.tiles else 0

    def token_boxes(self) -> np.ndarray:
        """Float64 ``[T, 4]``: image token ``t``'s rectangle ``(x0, y0, x1, y1)`` in the original photo, in pixels."""
        out = np.zeros((self.num_tokens, 4))
        for tile in self.tiles:
            rows, cols = tile.grid
            x0, y0, x1, y1 = tile.box
            r, c = np.divmod(np.arange(rows * cols), cols)
            w, h = (x1 - x0) / cols, (y1 - y0) / rows
            out[tile.token_range[0]:tile.token_range[1]] = np.stack([x0 + c * w, y0 + r * h, x0 + (c + 1) * w,
                                                                      y0 + (r + 1) * h], 1)
        return out

    def to_json(self) -> dict:
        """``image_size``, and per tile ``name``, ``grid``, ``box``, ``token_range`` (plain JSON)."""
        return {"image_size": list(self.image_size),
                "tiles": [{"name": t.name, "grid": list(t.grid), "box": [round(v, 3) for v in t.box],
                           "token_range": list(t.token_range)} for t in self.tiles]}


def qwen2_vl_layout(image_size: tuple[int, int], grid_thw, merge_size: int = 2) -> ImageTokenLayout:
    """The image tokens of a photo for Qwen2-VL / Qwen2.5-VL.

    Args:
        image_size: the original photo's ``(width, height)`` in pixels.
        grid_thw: the processor's ``image_grid_thw`` row for this photo: ``(t, grid_h, grid_w)`` in patches
            (``t`` is 1 for a photo).
        merge_size: the processor's ``merge_size`` (2: each 2x2 window of patches is one token).

    Returns:
        One tile covering the whole photo with ``grid_h / merge_size`` x ``grid_w / merge_size`` tokens (the
        processor resizes the photo to a multiple of ``patch_size * merge_size`` on each side, without cropping or
        padding, so each token covers the same fraction of the original photo).

    Raises:
        ValueError: a grid that is not a multiple of ``merge_size``, or ``t != 1``.
    """
    t, gh, gw = (int(v) for v in grid_thw)
    if t != 1:
        raise ValueError(f"a photo has one temporal patch, not {t} (a video?)")
    if gh % merge_size or gw % merge_size:
        raise ValueError(f"grid {gh}x{gw} is not a multiple of the merge size {merge_size}")
    W, H = (int(v) for v in image_size)
    rows, cols = gh // merge_size, gw // merge_size
    return ImageTokenLayout((W, H), (ImageTile("image", (rows, cols), (0.0, 0.0, float(W), float(H)), (0, rows * cols)),))


def center_crop_layout(image_size: tuple[int, int], shortest_edge: int, crop_size: tuple[int, int], patch_size: int
                       ) -> ImageTokenLayout:
    """The image tokens of a photo for a CLIP-style processor (LLaVA-1.5): resize so that the shortest edge is
    ``shortest_edge`` pixels (the other ``int(shortest_edge * long / short)``), crop the centre ``crop_size``
    ``(height, width)`` (top ``int((h - crop_h) / 2)``, left likewise), then one token per ``patch_size`` patch,
    row-major ([CLS] is not an image token of the prompt).

    Returns:
        One tile covering the cropped region of the original photo (what lies outside the crop is never seen).

    Raises:
        ValueError: a crop larger than the resized photo, or not a multiple of ``patch_size``.
    """
    W, H = (int(v) for v in image_size)
    ch, cw = (int(v) for v in crop_size)
    if ch % patch_size or cw % patch_size:
        raise ValueError(f"crop {ch}x{cw} is not a multiple of the patch size {patch_size}")
    short, long_ = (W, H) if W <= H else (H, W)
    resized_long = int(shortest_edge * long_ / short)
    rw, rh = (shortest_edge, resized_long) if W <= H else (resized_long, shortest_edge)
    if ch > rh or cw > rw:
        raise ValueError(f"crop {ch}x{cw} is larger than the resized photo {rh}x{rw}")
    top, left = int((rh - ch) / 2.0), int((rw - cw) / 2.0)
    sx, sy = rw / W, rh / H
    box = (left / sx, top / sy, (left + cw) / sx, (top + ch) / sy)
    rows, cols = ch // patch_size, cw // patch_size
    return ImageTokenLayout((W, H), (ImageTile("image", (rows, cols), box, (0, rows * cols)),))

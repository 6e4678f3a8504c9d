"""Vision-language models (issue "Where a vision-language model looks while it answers"): where each image token of a
prompt comes from in the photo.

A VLM's processor turns a photo into image tokens through its own resize, tiling and patch merging; attention on an
image token is only readable over the photo once that token's pixel rectangle is known. This module computes the
image-token layout of one photo from what the processor reports, as pixel boxes in the *original* photo, in the order
of the image-placeholder tokens of the prompt (the positions where ``input_ids == config.image_token_id``).

Supported (:data:`LAYOUT_TYPES`, dispatched by :func:`image_token_layout`):

* LLaVA-1.5 (``llava``, :func:`center_crop_layout`): a CLIP processor resizes the photo's shortest edge to the crop
  size and keeps the centre square; the grid of patches is the image tokens ([CLS] dropped by the ``"default"``
  feature strategy; with ``"full"`` it is one more token, first, drawn over the whole crop).
* Qwen2-VL / Qwen2.5-VL / Qwen3-VL (``qwen2_vl``, ``qwen2_5_vl``, ``qwen3_vl``, :func:`qwen2_vl_layout`): the photo
  is resized, without cropping or padding, to ``grid_h x grid_w`` patches (14 pixels; Qwen3-VL's 16), and each
  ``merge_size x merge_size`` window of patches is one token, row-major over the merged grid.
* LLaVA-NeXT / LLaVA-OneVision (``llava_next``, ``llava_onevision``, :func:`anyres_layout`): first the base view (the
  whole photo squashed to one vision tile, no newline tokens), then the high-resolution tiles as ONE combined grid
  over the photo after the model's unpadding, each of its rows followed by one ``image_newline`` token; OneVision
  bilinearly shrinks that grid when it holds more than ``anyres_max_N`` tiles' worth of tokens.
* Idefics3 / SmolVLM (``idefics3``, ``smolvlm``, :func:`idefics3_layout`): the photo, stretched to whole tiles, is cut
  into square tiles, row-major, then the whole photo squashed to one tile (the global image) comes last; in each
  tile the pixel shuffle makes one token of each ``scale_factor x scale_factor`` block of patches, row-major.
* PaliGemma / Gemma-3 (``paligemma``, ``gemma3``, :func:`squashed_square_layout`): the photo is resized to the
  vision tower's square input without keeping its aspect (no crop, no padding), so one grid covers the whole photo:
  PaliGemma's tokens are SigLIP's patches, row-major; Gemma-3's multi-modal projector average-pools each ``k x k``
  block of patches into one of its ``mm_tokens_per_image`` tokens, row-major (Gemma-3's pan-and-scan crops are
  refused).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, NamedTuple

import numpy as np

#: The ``config.model_type`` values :func:`image_token_layout` places.
LAYOUT_TYPES = frozenset({"llava", "llava_next", "llava_onevision", "qwen2_vl", "qwen2_5_vl", "qwen3_vl", "idefics3",
                          "smolvlm", "paligemma", "gemma3"})

Span = tuple[float, float]


@dataclass(frozen=True)
class ImageTile:
    """One part of a photo that the processor turns into a grid of image tokens.

    ``name``: ``"image"`` for a single view; ``"base"``/``"tiles"`` (anyres), ``"row 1 col 2"``/``"global"``
    (Idefics3) for tiling models. ``grid``: token rows and columns. ``box``: the region of the original photo the
    grid covers, ``(x0, y0, x1, y1)`` in pixels (floats; may reach outside the photo where the processor padded it).
    ``token_range``: ``[start, end)`` among the photo's image tokens (sequence order); the tile's tokens are its grid
    row-major, and with ``newline`` each row is followed by one token that covers no pixels, so the tile holds
    ``rows * (cols + newline)`` tokens.
    ``view``: tiles that share a view are drawn together on one panel over the photo: ``"image"`` (single-view
    models), ``"global"`` (a whole-photo base/global view of a tiling model), ``"tiles"`` (its high-resolution tiles).
    ``x_spans``/``y_spans``: when not empty, column ``c`` covers ``x_spans[c]`` = ``(x0, x1)`` and row ``r``
    ``y_spans[r]`` in photo pixels (a grid that is not uniform, e.g. OneVision's tiles, whose 27 patches of 14 pixels
    leave the last 6 pixels of each 384-pixel tile unseen); when empty the grid divides ``box`` evenly.
    """

    name: str
    grid: tuple[int, int]
    box: tuple[float, float, float, float]
    token_range: tuple[int, int]
    view: str = "image"
    newline: bool = False
    x_spans: tuple[Span, ...] = ()
    y_spans: tuple[Span, ...] = ()

    @property
    def num_tokens(self) -> int:
        rows, cols = self.grid
        return rows * (cols + int(self.newline))

    def spans(self) -> tuple[np.ndarray, np.ndarray]:
        """Float64 ``[cols, 2]`` x-spans and ``[rows, 2]`` y-spans of the grid's cells, in photo pixels."""
        rows, cols = self.grid
        x0, y0, x1, y1 = self.box
        if self.x_spans:
            xs = np.asarray(self.x_spans, dtype=np.float64).reshape(cols, 2)
        else:
            e = x0 + (x1 - x0) * np.arange(cols + 1) / max(cols, 1)
            xs = np.stack([e[:-1], e[1:]], 1)
        if self.y_spans:
            ys = np.asarray(self.y_spans, dtype=np.float64).reshape(rows, 2)
        else:
            e = y0 + (y1 - y0) * np.arange(rows + 1) / max(rows, 1)
            ys = np.stack([e[:-1], e[1:]], 1)
        return xs, ys

    def cell_boxes(self) -> np.ndarray:
        """Float64 ``[rows, cols, 4]``: cell ``(r, c)``'s rectangle ``(x0, y0, x1, y1)`` in photo pixels."""
        rows, cols = self.grid
        xs, ys = self.spans()
        out = np.empty((rows, cols, 4))
        out[..., 0], out[..., 2] = xs[None, :, 0], xs[None, :, 1]
        out[..., 1], out[..., 3] = ys[:, None, 0], ys[:, None, 1]
        return out

    def token_boxes(self) -> np.ndarray:
        """Float64 ``[num_tokens, 4]`` in the tile's token order; NaN rows for newline tokens."""
        rows, cols = self.grid
        cells = self.cell_boxes()
        if self.newline:
            cells = np.concatenate([cells, np.full((rows, 1, 4), np.nan)], 1)
        return cells.reshape(-1, 4)


class TileValues(NamedTuple):
    """Per-token values of one tile, ready to draw: ``values`` float64 ``[rows, cols]`` (cell ``(r, c)`` covers
    ``tile.cell_boxes()[r, c]``), ``newline`` float64 ``[rows]`` (the values of the row's newline tokens) or None.

    ``extent`` is ``(x0, x1, y1, y0)`` in photo pixels, for ``ax.imshow(values, extent=extent)`` over a photo drawn
    with ``ax.imshow(photo, extent=(0, W, H, 0))`` (default ``origin="upper"``); exact for a uniform grid, within one
    patch for a tile with ``x_spans``/``y_spans`` (draw ``tile.cell_boxes()`` for the exact cells).
    """

    tile: ImageTile
    values: np.ndarray
    newline: np.ndarray | None

    @property
    def extent(self) -> tuple[float, float, float, float]:
        x0, y0, x1, y1 = self.tile.box
        return (x0, x1, y1, y0)


@dataclass(frozen=True)
class ImageTokenLayout:
    """The image tokens of one photo: its ``image_size`` ``(width, height)`` in pixels and its ``tiles``, in sequence
    order (their ``token_range`` follow each other from 0)."""

    image_size: tuple[int, int]
    tiles: tuple[ImageTile, ...]

    def __post_init__(self):
        at = 0
        for tile in self.tiles:
            if tile.token_range != (at, at + tile.num_tokens):
                raise ValueError(f"tile {tile.name!r} holds tokens {tile.token_range}, not [{at}, {at + tile.num_tokens})")
            at += tile.num_tokens

    @property
    def num_tokens(self) -> int:
        """How many image tokens the photo puts into the prompt (newline tokens included)."""
        return self.tiles[-1].token_range[1] if self.tiles else 0

    def token_boxes(self) -> np.ndarray:
        """Float64 ``[T, 4]``: image token ``t``'s rectangle ``(x0, y0, x1, y1)`` in the original photo, in pixels,
        ``t`` in the order of the image-placeholder tokens of the prompt; NaN rows for tokens that cover no pixels
        (newline tokens)."""
        if not self.tiles:
            return np.zeros((0, 4))
        return np.concatenate([t.token_boxes() for t in self.tiles])

    def views(self) -> tuple[str, ...]:
        """The distinct ``view`` names, in the order of their first tile."""
        return tuple(dict.fromkeys(t.view for t in self.tiles))

    def paint(self, weights, view: str) -> tuple[TileValues, ...]:
        """Spread per-image-token ``weights`` (``[T]``, sequence order, e.g. one generated token's attention on the
        image tokens) over the tiles of ``view``: one :class:`TileValues` per tile (grid values ``[rows, cols]``, and
        the newline tokens' values apart). Tiles without cells (a lone newline token) are left out.

        Raises:
            ValueError: ``weights`` is not ``[T]``, or ``view`` is not one of :meth:`views`.
        """
        w = np.asarray(weights, dtype=np.float64)
        if w.shape != (self.num_tokens,):
            raise ValueError(f"expected {self.num_tokens} image-token weights, got shape {tuple(w.shape)}")
        if view not in self.views():
            raise ValueError(f"no view {view!r}; this layout has {', '.join(self.views())}")
        out = []
        for tile in self.tiles:
            rows, cols = tile.grid
            if tile.view != view or rows * cols == 0:
                continue
            part = w[tile.token_range[0]:tile.token_range[1]].reshape(rows, cols + int(tile.newline))
            out.append(TileValues(tile, part[:, :cols].copy(), part[:, cols].copy() if tile.newline else None))
        return tuple(out)

    def raster(self, weights, view: str, shape: tuple[int, int] | None = None) -> np.ndarray:
        """``weights`` (``[T]``) of ``view`` as an image over the photo: float64 ``[h, w]`` (``shape``; the photo's
        ``(H, W)`` when None), pixel ``(i, j)`` holding the value of the cell that contains the photo point at its
        centre (``((j + 0.5) * W / w, (i + 0.5) * H / h)``), NaN where no cell of the view does; where tiles of a
        view overlap, the later one wins."""
        W, H = self.image_size
        h, w = (H, W) if shape is None else (int(shape[0]), int(shape[1]))
        out = np.full((h, w), np.nan)
        px = (np.arange(w) + 0.5) * W / w
        py = (np.arange(h) + 0.5) * H / h
        for tv in self.paint(weights, view):
            xs, ys = tv.tile.spans()
            col = _cell_index(px, xs)
            row = _cell_index(py, ys)
            ok = (row[:, None] >= 0) & (col[None, :] >= 0)
            vals = tv.values[np.clip(row, 0, None)[:, None], np.clip(col, 0, None)[None, :]]
            out = np.where(ok, vals, out)
        return out

    def to_json(self) -> dict:
        """``image_size``, and per tile ``name``, ``grid``, ``box``, ``token_range``, ``view``, ``newline`` (and
        ``x_spans``/``y_spans`` where the grid is not uniform), as plain JSON."""
        tiles = []
        for t in self.tiles:
            doc = {"name": t.name, "grid": list(t.grid), "box": [round(v, 3) for v in t.box],
                   "token_range": list(t.token_range), "view": t.view, "newline": t.newline}
            if t.x_spans or t.y_spans:
                xs, ys = t.spans()
                doc["x_spans"] = np.round(xs, 3).tolist()
                doc["y_spans"] = np.round(ys, 3).tolist()
            tiles.append(doc)
        return {"image_size": list(self.image_size), "tiles": tiles}


def _cell_index(points: np.ndarray, spans: np.ndarray) -> np.ndarray:
    """For each point, the index of the span ``[a, b)`` holding it, or -1."""
    if not len(spans):
        return np.full(len(points), -1)
    i = np.searchsorted(spans[:, 0], points, side="right") - 1
    ok = (i >= 0) & (points < spans[np.clip(i, 0, None), 1])
    return np.where(ok, i, -1)


def _layout(image_size, tiles: list[dict]) -> ImageTokenLayout:
    """Build a layout from tile specs (``ImageTile`` fields without ``token_range``), numbering the tokens."""
    out, at = [], 0
    for spec in tiles:
        rows, cols = spec["grid"]
        n = rows * (cols + int(spec.get("newline", False)))
        out.append(ImageTile(token_range=(at, at + n), **spec))
        at += n
    W, H = (int(v) for v in image_size)
    return ImageTokenLayout((W, H), tuple(out))


# --------------------------------------------------------------------------------------------------------- Qwen2-VL


def qwen2_vl_layout(image_size: tuple[int, int], grid_thw, merge_size: int = 2) -> ImageTokenLayout:
    """The image tokens of a photo for Qwen2-VL / Qwen2.5-VL / Qwen3-VL.

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
    return _layout((W, H), [dict(name="image", grid=(rows, cols), box=(0.0, 0.0, float(W), float(H)))])


# ----------------------------------------------------------------------------------------------------------- LLaVA


def _resize_crop_box(W: int, H: int, shortest_edge: int | None, size_hw: tuple[int, int] | None,
                     crop_size: tuple[int, int] | None) -> tuple[tuple[float, float, float, float], tuple[int, int]]:
    """Where a resize (shortest edge to ``shortest_edge``, the other ``int(shortest_edge * long / short)``; or to
    ``size_hw`` ``(h, w)`` exactly) then an optional centre crop ``(h, w)`` (top ``int((h - crop_h) / 2)``) of a
    ``W x H`` picture lands: the kept region in the picture's pixels, and the output ``(h, w)``."""
    if shortest_edge is not None:
        short, long_ = (W, H) if W <= H else (H, W)
        resized_long = int(shortest_edge * long_ / short)
        rw, rh = (shortest_edge, resized_long) if W <= H else (resized_long, shortest_edge)
    elif size_hw is not None:
        rh, rw = size_hw
    else:
        rw, rh = W, H
    if crop_size is None:
        return (0.0, 0.0, float(W), float(H)), (rh, rw)
    ch, cw = crop_size
    if ch > rh or cw > rw:
        raise ValueError(f"crop {ch}x{cw} is larger than the resized photo {rh}x{rw}")
    top, left = int((rh - ch) / 2.0), int((rw - cw) / 2.0)
    sx, sy = rw / W, rh / H
    return (left / sx, top / sy, (left + cw) / sx, (top + ch) / sy), (ch, cw)


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
    box, _ = _resize_crop_box(W, H, int(shortest_edge), None, (ch, cw))
    return _layout((W, H), [dict(name="image", grid=(ch // patch_size, cw // patch_size), box=box)])


def _square_frame(W: int, H: int) -> tuple[int, int, int]:
    """``pad_to_square``: the side ``S`` of the square and the photo's offset ``(left, top)`` in it."""
    S = max(W, H)
    return S, (S - W) // 2 if W < H else 0, (S - H) // 2 if H < W else 0


def _llava_layout(image_size, processor, patch_size: int, cls: bool) -> ImageTokenLayout:
    """LLaVA (one view): the image processor's optional ``do_pad`` (pad to a centred square), resize and centre
    crop, then one token per patch; ``cls``: the [CLS] token is kept, first, drawn over the whole view."""
    ip = getattr(processor, "image_processor", processor)
    W, H = (int(v) for v in image_size)
    fx, fy, fw, fh = 0, 0, W, H  # the frame the resize sees, in photo pixels
    if getattr(ip, "do_pad", False) and hasattr(ip, "pad_to_square"):
        S, left, top = _square_frame(W, H)
        fx, fy, fw, fh = -left, -top, S, S
    size, crop = getattr(ip, "size", None) or {}, getattr(ip, "crop_size", None) or {}
    do_resize = getattr(ip, "do_resize", True)
    shortest = size.get("shortest_edge") if do_resize else None
    size_hw = (size.get("height"), size.get("width")) if do_resize and size.get("height") else None
    if do_resize and shortest is None and size_hw is None:
        raise ValueError(f"cannot follow the resize of {type(ip).__name__} (size {dict(size)})")
    crop_hw = (crop.get("height"), crop.get("width")) if getattr(ip, "do_center_crop", False) and crop.get("height") else None
    (x0, y0, x1, y1), (oh, ow) = _resize_crop_box(fw, fh, shortest, size_hw, crop_hw)
    if oh % patch_size or ow % patch_size:
        raise ValueError(f"the processed photo {oh}x{ow} is not a multiple of the patch size {patch_size}")
    box = (fx + x0, fy + y0, fx + x1, fy + y1)
    tiles = [dict(name="image", grid=(oh // patch_size, ow // patch_size), box=box)]
    if cls:
        tiles.insert(0, dict(name="cls", grid=(1, 1), box=box, view="global"))
    return _layout((W, H), tiles)


# ------------------------------------------------------------------------------------------ LLaVA-NeXT / OneVision


def select_best_resolution(original_size: tuple[int, int], possible_resolutions) -> tuple[int, int]:
    """The ``(height, width)`` among ``possible_resolutions`` that LLaVA-NeXT's processor and model pick for a photo of
    ``original_size`` ``(height, width)`` (as ``transformers.image_processing_utils.select_best_resolution``)."""
    oh, ow = original_size
    best, best_eff, best_waste = None, 0, float("inf")
    for h, w in possible_resolutions:
        scale = min(w / ow, h / oh)
        eff = min(int(ow * scale) * int(oh * scale), ow * oh)
        waste = w * h - eff
        if eff > best_eff or (eff == best_eff and waste < best_waste):
            best, best_eff, best_waste = (int(h), int(w)), eff, waste
    if best is None:
        raise ValueError("no grid pinpoints")
    return best


def anyres_layout(image_size: tuple[int, int], grid_pinpoints, tile_size: int, patch_size: int,
                  max_tiles: int | None = None) -> ImageTokenLayout:
    """The image tokens of a photo for LLaVA-NeXT (``max_tiles=None``) and LLaVA-OneVision (``max_tiles=N`` of
    ``vision_aspect_ratio="anyres_max_N"``), one photo per prompt.

    What the processor and ``pack_image_features`` do: the processor picks the pinpoint ``(bh, bw)`` that keeps most
    of the photo (:func:`select_best_resolution`), resizes the photo to fit it keeping the aspect
    (``get_patch_output_size``: the long side exact, the other ``ceil``), pads it centred with zeros (left
    ``(bw - new_w) // 2``) and cuts it into ``tile_size`` tiles; before them it puts the whole photo squashed to one
    ``tile_size`` square. Each tile gives ``n x n`` features, ``n = tile_size // patch_size`` (the vision tower's
    patches; pixels past ``n * patch_size`` are not seen). The model puts the base's ``n x n`` tokens first (no
    newline), then joins the tiles' features into one grid, removes the rows (or columns) of padding
    (``unpad_image``: ``(cur - int(round(orig * cur_other / orig_other, 7))) // 2`` on each side, in features),
    OneVision shrinks that grid bilinearly to ``int(h // ratio) x int(w // ratio)`` when
    ``ratio = sqrt(h * w / (N * n * n)) > 1.1``, and follows each row with one ``image_newline`` token.

    Args:
        image_size: the original photo's ``(width, height)``.
        grid_pinpoints: the pinpoints ``[[height, width], ...]`` (config ``image_grid_pinpoints``).
        tile_size: the vision tower's input size (``config.vision_config.image_size``: 336, 384).
        patch_size: the vision tower's patch size (14).
        max_tiles: OneVision's ``N``; None for LLaVA-NeXT (no shrinking).

    Returns:
        Tile ``"base"`` (view ``"global"``, ``n x n`` over the photo, or its first ``n * patch_size / tile_size``
        when the patches do not fill the tile), then tile ``"tiles"`` (view ``"tiles"``, ``newline=True``), the
        unpadded (and maybe shrunk) grid with its cells' spans in photo pixels: a shrunk cell covers its share of the
        features it interpolates (bilinear, ``align_corners=False``: its centre is where it samples). Its box may
        reach up to a feature beyond the photo's edge (unpadding works in whole features).
    """
    W, H = (int(v) for v in image_size)
    T, p = int(tile_size), int(patch_size)
    n = T // p
    if n < 1:
        raise ValueError(f"tile {T} is smaller than the patch size {p}")
    bh, bw = select_best_resolution((H, W), grid_pinpoints)
    if bh % T or bw % T:
        raise ValueError(f"pinpoint {bh}x{bw} is not a multiple of the tile size {T}")
    nph, npw = bh // T, bw // T
    # the processor's resize to fit the pinpoint, and its centred padding
    sw, sh = bw / W, bh / H
    if sw < sh:
        new_w, new_h = bw, min(math.ceil(H * sw), bh)
    else:
        new_h, new_w = bh, min(math.ceil(W * sh), bw)
    paste_x, paste_y = (bw - new_w) // 2, (bh - new_h) // 2
    # the model's unpadding, in features
    cur_h, cur_w = nph * n, npw * n
    r0, r1, c0, c1 = 0, cur_h, 0, cur_w
    if W / H > cur_w / cur_h:
        new_rows = int(round(H * (cur_w / W), 7))
        pad = (cur_h - new_rows) // 2
        r0, r1 = pad, cur_h - pad
    else:
        new_cols = int(round(W * (cur_h / H), 7))
        pad = (cur_w - new_cols) // 2
        c0, c1 = pad, cur_w - pad
    rows, cols = r1 - r0, c1 - c0
    out_rows, out_cols = rows, cols
    if max_tiles is not None:
        ratio = math.sqrt(rows * cols / (max_tiles * n * n))
        if ratio > 1.1:
            out_rows, out_cols = int(rows // ratio), int(cols // ratio)

    def spans(start: int, count: int, out: int, paste: int, new: int, orig: int) -> tuple[Span, ...]:
        # feature coordinate u (continuous, over the joined grid) -> pixel of the padded canvas -> photo pixel
        def pixel(u: float, end: bool) -> float:
            k = u / n
            tile = math.floor(k + 1e-9)
            if end and tile > 0 and abs(k - round(k)) < 1e-9:
                tile -= 1  # the end of a tile's last patch, not the start of the next tile
            return ((tile * T + (u - tile * n) * p) - paste) * orig / new

        step = count / out
        return tuple((pixel(start + i * step, False), pixel(start + (i + 1) * step, True)) for i in range(out))

    if min(rows, cols, out_rows, out_cols) < 1:
        raise ValueError(f"the {W}x{H} photo is too thin for its tiles: the unpadded grid is {out_rows}x{out_cols} "
                         "features (the processor's image tokens would be newlines only)")
    xs = spans(c0, cols, out_cols, paste_x, new_w, W)
    ys = spans(r0, rows, out_rows, paste_y, new_h, H)
    seen = n * p / T
    return _layout((W, H), [
        dict(name="base", grid=(n, n), box=(0.0, 0.0, W * seen, H * seen), view="global"),
        dict(name="tiles", grid=(out_rows, out_cols), box=(xs[0][0], ys[0][0], xs[-1][1], ys[-1][1]), view="tiles",
             newline=True, x_spans=xs, y_spans=ys),
    ])


def padded_square_layout(image_size: tuple[int, int], tile_size: int, patch_size: int) -> ImageTokenLayout:
    """LLaVA-OneVision's photos of a multi-image prompt (no tiling): the processor pads the photo to a centred square
    (side ``max(W, H)``, left ``(S - W) // 2``), resizes it to ``tile_size``, and the model follows the ``n x n``
    tokens with one ``image_newline`` token (a tile ``"newline"`` of grid ``(1, 0)``, no pixels)."""
    W, H = (int(v) for v in image_size)
    n = int(tile_size) // int(patch_size)
    S, left, top = _square_frame(W, H)
    side = S * n * patch_size / tile_size
    return _layout((W, H), [
        dict(name="image", grid=(n, n), box=(float(-left), float(-top), -left + side, -top + side)),
        dict(name="newline", grid=(1, 0), box=(0.0, 0.0, 0.0, 0.0), newline=True),
    ])


# ---------------------------------------------------------------------------------------------- Idefics3 / SmolVLM


def _idefics3_resized(W: int, H: int, longest_edge: int | None, tile: int, splitting: bool) -> tuple[int, int]:
    """The ``(h, w)`` of the photo the Idefics3/SmolVLM processor cuts into tiles (before the tiles)."""
    h, w = H, W
    if longest_edge is not None:  # resize: longest edge to longest_edge, the other int(), made even; cap at 4096
        if w >= h:
            w, h = longest_edge, int(longest_edge / (W / H))
            h += h % 2
        else:
            h, w = longest_edge, int(longest_edge * (W / H))
            w += w % 2
        h, w = max(h, 1), max(w, 1)
        aspect = w / h
        if w >= h and w > 4096:
            w, h = 4096, int(4096 / aspect)
        elif h > w and h > 4096:
            h, w = 4096, int(4096 * aspect)
        h, w = max(h, 1), max(w, 1)
    if not splitting:
        return h, w
    aspect = w / h  # resize_for_vision_encoder: both sides up to whole tiles
    if w >= h:
        w = math.ceil(w / tile) * tile
        h = math.ceil(int(w / aspect) / tile) * tile
    else:
        h = math.ceil(h / tile) * tile
        w = math.ceil(int(h * aspect) / tile) * tile
    return h, w


def idefics3_layout(image_size: tuple[int, int], tile_size: int, patch_size: int, scale_factor: int,
                    longest_edge: int | None = None, do_image_splitting: bool = True) -> ImageTokenLayout:
    """The image tokens of a photo for Idefics3 / SmolVLM.

    The image processor resizes the photo's longest edge to ``longest_edge`` (``size["longest_edge"]``; None: no
    resize), then, splitting, stretches it to whole ``tile_size`` tiles on both sides (no padding, so the tiles cut
    the photo exactly) and cuts it row-major, adding the whole photo squashed to one tile (the global image) last;
    when the photo fits one tile, or without splitting, there is only the global image. The prompt has
    ``image_seq_len`` tokens per tile in the same order (``<row_r_col_c>`` markers, then ``<global-img>``). In a tile
    the vision tower's ``tile_size / patch_size`` square of patches goes through ``pixel_shuffle``: token ``(i, j)``
    of the ``g x g`` grid (``g = tile_size / patch_size / scale_factor``, row-major) gathers the
    ``scale_factor x scale_factor`` block of patches at rows ``i*s .. i*s+s-1``, columns ``j*s .. j*s+s-1``
    (a rectangle; only the order of their channels is shuffled).

    Returns:
        Tiles ``"row 1 col 1"``, ... (view ``"tiles"``), then ``"global"`` (view ``"global"``), each a ``g x g``
        grid; or only ``"global"`` (view ``"image"``) when the photo is not split.

    Raises:
        ValueError: a tile that is not a whole number of ``patch_size * scale_factor`` blocks.
    """
    W, H = (int(v) for v in image_size)
    M, p, s = int(tile_size), int(patch_size), int(scale_factor)
    if M % (p * s):
        raise ValueError(f"tile {M} is not a multiple of patch {p} x scale factor {s}")
    g = M // (p * s)
    h, w = _idefics3_resized(W, H, longest_edge, M, do_image_splitting)
    whole = (0.0, 0.0, float(W), float(H))
    if not do_image_splitting or (h <= M and w <= M):
        return _layout((W, H), [dict(name="global", grid=(g, g), box=whole)])
    nrows, ncols = (h - M) // M + 1, (w - M) // M + 1
    tiles = [dict(name=f"row {r + 1} col {c + 1}", grid=(g, g), view="tiles",
                  box=(c * M * W / w, r * M * H / h, (c + 1) * M * W / w, (r + 1) * M * H / h))
             for r in range(nrows) for c in range(ncols)]
    tiles.append(dict(name="global", grid=(g, g), box=whole, view="global"))
    return _layout((W, H), tiles)


# ---------------------------------------------------------------------------------------------- PaliGemma / Gemma-3


def squashed_square_layout(image_size: tuple[int, int], rows: int, cols: int | None = None) -> ImageTokenLayout:
    """The image tokens of a photo that the processor resizes to the vision tower's square input without keeping its
    aspect (PaliGemma's SigLIP processor, Gemma-3's at 896 px, pan-and-scan off): one ``rows x cols`` grid
    (``cols = rows`` when None) over the whole photo, row-major. PaliGemma: one token per patch (``image_size /
    patch_size`` a side); Gemma-3: one token per ``k x k`` block of patches average-pooled by the multi-modal
    projector (``sqrt(mm_tokens_per_image)`` a side, ``k = image_size / patch_size / that``).

    Raises:
        ValueError: an empty grid.
    """
    cols = rows if cols is None else cols
    if rows < 1 or cols < 1:
        raise ValueError(f"an empty {rows}x{cols} grid")
    W, H = (int(v) for v in image_size)
    return _layout((W, H), [dict(name="image", grid=(int(rows), int(cols)), box=(0.0, 0.0, float(W), float(H)))])


def _check_square_resize(ip, side: int) -> None:
    """The image processor resizes every photo to ``side x side`` pixels, without crop or padding."""
    size = _get(ip, "size", {})
    h, w = _get(size, "height", None), _get(size, "width", None)
    if not _get(ip, "do_resize", True) or h is None or w is None:
        raise ValueError(f"the image processor does not resize to a fixed height and width (size {dict(size)})")
    if (int(h), int(w)) != (side, side):
        raise ValueError(f"the image processor resizes to {h}x{w}, the vision tower takes {side}x{side}")
    if _get(ip, "do_center_crop", False) or _get(ip, "do_pad", False):
        raise ValueError("the image processor crops or pads the photo")


def _paligemma_layout(image_size, config, processor, processed) -> ImageTokenLayout:
    vision = _get(config, "vision_config", {})
    T, p = int(_get(vision, "image_size", 0)), int(_get(vision, "patch_size", 0))
    if not T or not p or T % p:
        raise ValueError(f"vision image size {T} is not a whole number of {p}-pixel patches")
    ip = getattr(processor, "image_processor", processor)
    _check_square_resize(ip, T)
    n = T // p
    seq_len = _get(processor, "image_seq_length", None)
    if seq_len is not None and int(seq_len) != n * n:
        raise ValueError(f"the processor puts {seq_len} image tokens into the prompt, the vision tower makes {n * n}")
    _check_one_view(processed, T)
    return squashed_square_layout(image_size, n)


def _gemma3_layout(image_size, config, processor, processed) -> ImageTokenLayout:
    vision = _get(config, "vision_config", {})
    T, p = int(_get(vision, "image_size", 0)), int(_get(vision, "patch_size", 0))
    tokens = int(_get(config, "mm_tokens_per_image", 256))
    side = math.isqrt(tokens)
    if not T or not p or T % p or side * side != tokens or (T // p) % side:
        raise ValueError(f"{T // max(p, 1)}x{T // max(p, 1)} patches do not pool into {tokens} tokens")
    ip = getattr(processor, "image_processor", processor)
    if _get(ip, "do_pan_and_scan", False):
        raise ValueError("pan-and-scan crops are not placed (the processor's do_pan_and_scan is on)")
    _check_square_resize(ip, T)
    seq_len = _get(processor, "image_seq_length", None)
    if seq_len is not None and int(seq_len) != tokens:
        raise ValueError(f"the processor puts {seq_len} image tokens into the prompt, the model makes {tokens}")
    crops = processed.get("num_crops")
    if crops is not None and any(int(c) for c in (crops.flatten().tolist() if hasattr(crops, "flatten") else crops)):
        raise ValueError("pan-and-scan crops are not placed")
    _check_one_view(processed, T)
    return squashed_square_layout(image_size, side)


def _check_one_view(processed, side: int) -> None:
    """``pixel_values`` of one ``side x side`` view (no crops)."""
    pix = processed.get("pixel_values")
    if pix is not None and getattr(pix, "ndim", 0) == 4 and (pix.shape[0] != 1 or tuple(pix.shape[2:]) != (side, side)):
        raise ValueError(f"the processor made {pix.shape[0]} views of {tuple(pix.shape[2:])} pixels, attnviz expects one "
                         f"of {side}x{side}")


# ------------------------------------------------------------------------------------------------------ dispatcher


def _get(obj, name: str, default=None):
    value = obj.get(name, default) if isinstance(obj, Mapping) else getattr(obj, name, default)
    return default if value is None else value


def _first_row(value) -> list:
    """Row 0 of a processor output (tensor, array or nested list) as a plain list."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    return list(value[0])


def _has_cls(vision_config, processor) -> bool:
    kind = str(_get(vision_config, "model_type", ""))
    if "clip" in kind:
        return True
    if "siglip" in kind:
        return False
    return bool(_get(processor, "num_additional_image_tokens", 0))


def image_token_layout(model_type: str, config, processor, image_size: tuple[int, int],
                       processed: Mapping[str, Any]) -> ImageTokenLayout:
    """The image-token layout of the one photo of ``processed`` (the processor's output for it), for a model of
    ``model_type`` (one of :data:`LAYOUT_TYPES`) with ``config``; ``image_size`` is the photo's ``(width, height)``.
    The caller checks that ``layout.num_tokens`` equals the count of image tokens in ``processed["input_ids"]``.

    Raises:
        ValueError: an unsupported model type, or a processor/config this module cannot follow.
    """
    W, H = (int(v) for v in image_size)
    vision = _get(config, "vision_config", {})
    ip = getattr(processor, "image_processor", processor)
    if model_type in ("qwen2_vl", "qwen2_5_vl", "qwen3_vl"):
        if "image_grid_thw" not in processed:
            raise ValueError("the processor returned no image_grid_thw")
        merge = int(_get(ip, "merge_size", _get(vision, "spatial_merge_size", 2)))
        return qwen2_vl_layout((W, H), _first_row(processed["image_grid_thw"]), merge)
    if model_type == "llava":
        strategy = _get(config, "vision_feature_select_strategy", "default")
        patch = int(_get(vision, "patch_size", _get(processor, "patch_size", 14)))
        if isinstance(_get(config, "vision_feature_layer", -2), (list, tuple)) and strategy != "default":
            raise ValueError("several vision feature layers with the 'full' strategy")
        return _llava_layout((W, H), processor, patch, cls=strategy == "full" and _has_cls(vision, processor))
    if model_type in ("llava_next", "llava_onevision"):
        pinpoints = _get(config, "image_grid_pinpoints", None) or _get(ip, "image_grid_pinpoints", None)
        if not pinpoints:
            raise ValueError("no image_grid_pinpoints in the config")
        T, p = int(_get(vision, "image_size", 0)), int(_get(vision, "patch_size", 0))
        if not T or not p:
            raise ValueError("the vision config has no image_size/patch_size")
        strategy = _get(config, "vision_feature_select_strategy", "default")
        if _has_cls(vision, processor) != (strategy == "default"):  # the model views each tile's features as n x n
            raise ValueError(f"the '{strategy}' feature strategy does not give {T // p}x{T // p} features per tile")
        if "image_sizes" in processed:
            ih, iw = (int(v) for v in _first_row(processed["image_sizes"]))
            if (iw, ih) != (W, H):
                raise ValueError(f"the processor saw a {iw}x{ih} photo, not {W}x{H}")
        if model_type == "llava_next":
            return anyres_layout((W, H), pinpoints, T, p)
        batch_num = processed.get("batch_num_images")
        if batch_num is not None:
            batch_num = batch_num.tolist() if hasattr(batch_num, "tolist") else list(batch_num)
            if batch_num and int(batch_num[0]) != 1:
                return padded_square_layout((W, H), T, p)
        aspect = str(_get(config, "vision_aspect_ratio", None) or _get(processor, "vision_aspect_ratio", "anyres_max_9"))
        if not aspect.startswith("anyres_max_"):
            raise ValueError(f"vision_aspect_ratio {aspect!r} is not anyres_max_N")
        return anyres_layout((W, H), pinpoints, T, p, max_tiles=int(aspect[len("anyres_max_"):]))
    if model_type in ("idefics3", "smolvlm"):
        M = _get(_get(ip, "max_image_size", {}), "longest_edge", None) or _get(vision, "image_size", None)
        p, s = _get(vision, "patch_size", None), _get(config, "scale_factor", None)
        if not (M and p and s):
            raise ValueError("cannot find the tile size, patch size and scale factor")
        longest = _get(_get(ip, "size", {}), "longest_edge", None) if _get(ip, "do_resize", True) else None
        layout = idefics3_layout((W, H), int(M), int(p), int(s), longest, bool(_get(ip, "do_image_splitting", True)))
        seq_len = _get(processor, "image_seq_len", None)
        g = layout.tiles[0].grid
        if seq_len is not None and int(seq_len) != g[0] * g[1]:
            raise ValueError(f"the processor puts {seq_len} tokens per tile, the model makes {g[0] * g[1]}")
        pix = processed.get("pixel_values")
        if pix is not None and getattr(pix, "ndim", 0) == 5 and pix.shape[0] == 1 and pix.shape[1] != len(layout.tiles):
            raise ValueError(f"the processor made {pix.shape[1]} tiles, attnviz expects {len(layout.tiles)}")
        return layout
    if model_type == "paligemma":
        return _paligemma_layout((W, H), config, processor, processed)
    if model_type == "gemma3":
        return _gemma3_layout((W, H), config, processor, processed)
    raise ValueError(f"no image-token layout for model type {model_type!r} (supported: {', '.join(sorted(LAYOUT_TYPES))})")

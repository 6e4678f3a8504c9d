"""Views of ``attnviz detect``: matplotlib Figures, no I/O.

- :func:`detections_view` -- the photo with every detected box, its index, label and score;
- :func:`dense_view` -- one query's (or one encoder pixel's) attention over the feature map, every head and the head
  mean, drawn over the photo (DETR: Carion et al. 2020, Fig. 3 and 6);
- :func:`points_view` -- deformable attention (Zhu et al. 2021): every head's sampling points over all feature
  levels, area and colour proportional to the attention weight, with the reference point.

Maps are drawn over the model input's extent in photo pixels (:attr:`attnviz.inputs.detection.Geometry.extent`) and
the axes stop at the photo's edges, so the processor's padding is never drawn as photo.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from attnviz.render.layout import DEFAULT_STYLE, IMAGE_CMAP, Style, attach_metadata, shared_vmax

#: Box colours, cycled by detection index.
BOX_COLOURS = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45")
OVERLAY_ALPHA = 0.6
#: Marker shapes of the feature levels in :func:`points_view` (finest first).
LEVEL_MARKERS = ("o", "s", "^", "D", "v", "P")


def _photo_axes(ax, photo: np.ndarray) -> None:
    h, w = photo.shape[:2]
    ax.imshow(photo, extent=(0, w, h, 0), interpolation="bilinear")
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
    ax.set_xticks([])
    ax.set_yticks([])


def _panels(n: int, photo: np.ndarray, style: Style, natural: float) -> tuple[Figure, list, float]:
    width = style.width(natural)
    cols = min(n, 4 if width >= 5 else 2)
    rows = math.ceil(n / cols)
    h, w = photo.shape[:2]
    panel_w = (width - 0.9) / cols
    height = rows * (panel_w * h / w + 0.3) + 0.9
    if style.height_in is not None:
        height = style.height_in
    fig = Figure(figsize=(width, height), dpi=style.resolution, layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel().tolist()
    for ax in axes[n:]:
        ax.set_axis_off()
    return fig, axes[:n], width


def _titles(fig: Figure, title: str, subtitle: str, fonts) -> None:
    fig.suptitle(f"{title}\n{subtitle}" if subtitle else title, fontsize=fonts.title * 0.85)


def _outline(ax, box, colour: str, lw: float = 1.5) -> None:
    if box is None:
        return
    x0, y0, x1, y1 = box
    ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=colour, linewidth=lw))


def detections_view(photo: np.ndarray, detections: Sequence, *, title: str, subtitle: str = "",
                    style: Style = DEFAULT_STYLE, model: str = "") -> Figure:
    """The photo with every detection's box, ``index: label score``.

    Args:
        photo: ``[H, W, 3]`` uint8 RGB.
        detections: objects with ``index``, ``label``, ``score``, ``box`` (x0, y0, x1, y1 photo pixels) and
            ``below_threshold`` (drawn dashed).
    """
    width = style.width(7.0)
    h, w = photo.shape[:2]
    fonts = style.fonts(width)
    fig = Figure(figsize=(width, style.height_in or width * h / w + 0.7), dpi=style.resolution, layout="constrained")
    ax = fig.subplots()
    _photo_axes(ax, photo)
    for d in detections:
        colour = BOX_COLOURS[d.index % len(BOX_COLOURS)]
        x0, y0, x1, y1 = d.box
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=colour, linewidth=2,
                               linestyle="--" if d.below_threshold else "-"))
        ax.text(max(x0, 0), max(y0, 0), f"{d.index}: {d.label} {d.score:.2f}", color="white", fontsize=fonts.small,
                va="top", ha="left", bbox=dict(facecolor=colour, alpha=0.8, pad=1.5, linewidth=0), clip_on=True)
    _titles(fig, title, subtitle, fonts)
    attach_metadata(fig, title, model, style, "detections")
    return fig


def dense_view(photo: np.ndarray, maps: np.ndarray, extent: tuple[float, float, float, float], *, names: Sequence[str],
               title: str, subtitle: str = "", box=None, point=None, style: Style = DEFAULT_STYLE, model: str = "",
               view: str = "object") -> Figure:
    """Attention maps over the photo, one panel each.

    Args:
        photo: ``[H, W, 3]`` uint8 RGB.
        maps: ``[panels, rows, cols]`` attention probabilities over a feature map (rows sum over all panels' keys
            to at most 1).
        extent: (left, top, right, bottom) of the feature map in photo pixels (beyond the photo where padded).
        names: panel titles ("head 0", ..., "mean").
        box: the object's box (photo pixels) outlined; point: (x, y) marked with a cross.
    """
    maps = np.asarray(maps, dtype=np.float64)
    fig, axes, width = _panels(len(maps), photo, style, 11.0 if len(maps) > 4 else 8.0)
    fonts = style.fonts(width)
    cmap = style.colormap(IMAGE_CMAP)
    vmax = shared_vmax(maps)
    left, top, right, bottom = extent
    img = None
    for ax, m, name in zip(axes, maps, names):
        _photo_axes(ax, photo)
        top_val = m.max() if style.scale == "per-head" else vmax
        img = ax.imshow(m, extent=(left, right, bottom, top), cmap=cmap, alpha=OVERLAY_ALPHA, vmin=0, vmax=top_val,
                        interpolation="nearest")
        ax.set_xlim(0, photo.shape[1])
        ax.set_ylim(photo.shape[0], 0)
        _outline(ax, box, "white")
        if point is not None:
            ax.plot([point[0]], [point[1]], marker="x", color="white", markersize=7, mew=2)
        ax.set_title(name, fontsize=fonts.small)
    if img is not None and style.scale != "per-head":
        fig.colorbar(img, ax=axes, shrink=0.8, label="attention probability").ax.tick_params(labelsize=fonts.small)
    _titles(fig, title, subtitle, fonts)
    attach_metadata(fig, title, model, style, view)
    return fig


def points_view(photo: np.ndarray, points: np.ndarray, weights: np.ndarray, levels: np.ndarray, *, names: Sequence[str],
                title: str, subtitle: str = "", reference=None, box=None, strides: Sequence[int] = (),
                style: Style = DEFAULT_STYLE, model: str = "", view: str = "object") -> Figure:
    """Deformable attention: each head's sampling points over the photo.

    Args:
        photo: ``[H, W, 3]`` uint8 RGB.
        points: ``[heads, N, 2]`` sampling locations (x, y) in photo pixels (N = levels * points per level).
        weights: ``[heads, N]`` attention weights (each head's sum to 1).
        levels: ``[N]`` feature level of each point (marker shape).
        reference: (x, y) reference point in photo pixels, drawn as a white star.
    """
    points = np.asarray(points, dtype=np.float64)
    weights = np.asarray(weights, dtype=np.float64)
    fig, axes, width = _panels(len(points), photo, style, 11.0 if len(points) > 4 else 8.0)
    fonts = style.fonts(width)
    cmap = style.colormap(IMAGE_CMAP)
    vmax = float(weights.max()) if weights.size else 1.0
    sc = None
    base = (width / 4) * 90
    for ax, p, wt, name in zip(axes, points, weights, names):
        _photo_axes(ax, photo)
        order = np.argsort(wt)  # heaviest on top
        for lvl in np.unique(levels):
            sel = order[levels[order] == lvl]
            sc = ax.scatter(p[sel, 0], p[sel, 1], s=8 + base * wt[sel] / max(vmax, 1e-12), c=wt[sel], cmap=cmap,
                            vmin=0, vmax=vmax, marker=LEVEL_MARKERS[int(lvl) % len(LEVEL_MARKERS)],
                            edgecolors="black", linewidths=0.4)
        if reference is not None:
            ax.plot([reference[0]], [reference[1]], marker="*", color="white", markeredgecolor="black", markersize=10)
        _outline(ax, box, "white")
        ax.set_title(name, fontsize=fonts.small)
    if sc is not None:
        cb = fig.colorbar(sc, ax=axes, shrink=0.8, label="attention weight")
        cb.ax.tick_params(labelsize=fonts.small)
    if strides:
        legend = ", ".join(f"{LEVEL_MARKERS[i % len(LEVEL_MARKERS)]} = stride {s}" for i, s in enumerate(strides))
        subtitle = f"{subtitle}\nmarkers: {legend}; star: reference point" if subtitle else f"markers: {legend}"
    _titles(fig, title, subtitle, fonts)
    attach_metadata(fig, title, model, style, view)
    return fig

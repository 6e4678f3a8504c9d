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
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from attnviz.render.common import wrap
from attnviz.render.layout import DEFAULT_STYLE, IMAGE_CMAP, Style, attach_metadata, shared_vmax

#: Box colours, cycled by detection index.
BOX_COLOURS = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45")
OVERLAY_ALPHA = 0.6
#: Marker shapes of the feature levels in :func:`points_view` (finest first).
LEVEL_MARKERS = ("o", "s", "^", "D", "v", "P")


def _photo_axes(ax, photo: np.ndarray, size: tuple[int, int] | None = None) -> None:
    """Draw ``photo`` (``[H, W, 3]`` uint8) on ``ax`` in photo-pixel coordinates; ``size``: the photo's own (width,
    height) when ``photo`` is a smaller copy (see :func:`_display_copy`)."""
    w, h = size or (photo.shape[1], photo.shape[0])
    ax.imshow(photo, extent=(0, w, h, 0), interpolation="bilinear")
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
    ax.set_xticks([])
    ax.set_yticks([])


def _display_copy(photo: np.ndarray, width_px: float) -> np.ndarray:
    """``photo`` resized (Lanczos, Pillow) to about ``width_px`` pixels wide when it is more than 1.5x wider, so
    each panel draws what it can show, not the whole photo again; never enlarged."""
    from PIL import Image

    h, w = photo.shape[:2]
    if w <= 1.5 * width_px:
        return photo
    new_w = max(1, int(round(width_px)))
    new_h = max(1, int(round(h * new_w / w)))
    return np.asarray(Image.fromarray(photo).resize((new_w, new_h), Image.Resampling.LANCZOS))


@dataclass(frozen=True)
class _Grid:
    """A figure of photo panels laid out by hand, in inches (constrained layout cost 0.4 s a figure).

    ``fig``; ``axes``: the ``n`` panels, row-major; ``width``: figure width; ``panel``: (width, height) of a panel;
    ``bar``: [left, bottom, width, height] of the colour bar in figure fractions; ``photo``: the display copy."""

    fig: Figure
    axes: list
    width: float
    panel: tuple[float, float]
    bar: list
    photo: np.ndarray


#: Layout constants of :func:`_panels`, in inches.
_SIDE, _GAP, _BAR_W, _BAR_AREA, _PANEL_TITLE = 0.08, 0.12, 0.14, 0.95, 0.28


def _panels(n: int, photo: np.ndarray, style: Style, natural: float, *, title_lines: int, legend: float = 0.0) -> _Grid:
    """``n`` photo panels (up to 4 a row; 2 below 5 inches) with room on top for ``title_lines`` lines of title, a
    colour bar on the right and ``legend`` inches at the bottom."""
    width = style.width(natural)
    fonts = style.fonts(width)
    cols = min(n, 4 if width >= 5 else 2)
    rows = math.ceil(n / cols)
    h, w = photo.shape[:2]
    panel_w = (width - 2 * _SIDE - _BAR_AREA - (cols - 1) * _GAP) / cols
    panel_h = panel_w * h / w
    top = 0.08 + title_lines * fonts.title * 0.85 * 1.2 / 72 + 0.06
    height = top + rows * (panel_h + _PANEL_TITLE) + legend + 0.1
    if style.height_in is not None:  # fit the panels into the height asked for
        room = style.height_in - top - legend - 0.1 - rows * _PANEL_TITLE
        if room > 0.3 * rows:
            panel_h = min(panel_h, room / rows)
            panel_w = panel_h * w / h
        height = style.height_in
    fig = Figure(figsize=(width, height), dpi=style.resolution)
    axes = []
    grid_w = cols * panel_w + (cols - 1) * _GAP
    left0 = _SIDE + max(0.0, (width - 2 * _SIDE - _BAR_AREA - grid_w) / 2)
    for k in range(n):
        r, c = divmod(k, cols)
        x = left0 + c * (panel_w + _GAP)
        y = height - top - _PANEL_TITLE - r * (panel_h + _PANEL_TITLE) - panel_h
        axes.append(fig.add_axes((x / width, y / height, panel_w / width, panel_h / height)))
    span_top = height - top - _PANEL_TITLE
    span_bottom = height - top - rows * (panel_h + _PANEL_TITLE)
    span = span_top - span_bottom
    bar_h = min(span * 0.9, max(panel_h, 1.2))
    bar_x = left0 + grid_w + 0.2
    bar = [bar_x / width, (span_bottom + (span - bar_h) / 2) / height, _BAR_W / width, bar_h / height]
    copy = _display_copy(photo, panel_w * style.resolution)
    return _Grid(fig, axes, width, (panel_w, panel_h), bar, copy)


def _title_text(title: str, subtitle: str, width: float, fonts) -> tuple[str, int]:
    """Title and subtitle wrapped to ``width`` inches; and the number of lines."""
    size = fonts.title * 0.85
    text = wrap(title, width - 0.2, size) + ("\n" + wrap(subtitle, width - 0.2, size) if subtitle else "")
    return text, text.count("\n") + 1


def _put_title(fig: Figure, text: str, fonts) -> None:
    height = fig.get_figheight()
    fig.text(0.5, 1 - 0.08 / height, text, ha="center", va="top", fontsize=fonts.title * 0.85, linespacing=1.15)


def _colorbar(grid: _Grid, mappable, label: str, fonts) -> None:
    cax = grid.fig.add_axes(grid.bar)
    cb = grid.fig.colorbar(mappable, cax=cax)
    bar_h_in = grid.bar[3] * grid.fig.get_figheight()
    cb.set_label(wrap(label, max(bar_h_in - 0.05, 0.3), fonts.small), fontsize=fonts.small, linespacing=1.0)
    cb.ax.tick_params(labelsize=fonts.small)


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
    text, lines = _title_text(title, subtitle, width, fonts)
    top = 0.08 + lines * fonts.title * 0.85 * 1.2 / 72 + 0.12
    panel_w = width - 2 * _SIDE
    panel_h = panel_w * h / w
    height = style.height_in or top + panel_h + 0.1
    if style.height_in is not None and panel_h > height - top - 0.1:
        panel_h = max(0.5, height - top - 0.1)
        panel_w = panel_h * w / h
    fig = Figure(figsize=(width, height), dpi=style.resolution)
    ax = fig.add_axes(((width - panel_w) / 2 / width, (height - top - panel_h) / height, panel_w / width, panel_h / height))
    _photo_axes(ax, _display_copy(photo, panel_w * style.resolution), (w, h))
    for d in detections:
        colour = BOX_COLOURS[d.index % len(BOX_COLOURS)]
        x0, y0, x1, y1 = d.box
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=colour, linewidth=2,
                               linestyle="--" if d.below_threshold else "-"))
        ax.text(max(x0, 0), max(y0, 0), f"{d.index}: {d.label} {d.score:.2f}", color="white", fontsize=fonts.small,
                va="top", ha="left", bbox=dict(facecolor=colour, alpha=0.8, pad=1.5, linewidth=0), clip_on=True)
    _put_title(fig, text, fonts)
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
    width = style.width(11.0 if len(maps) > 4 else 8.0)
    fonts = style.fonts(width)
    text, lines = _title_text(title, subtitle, width, fonts)
    grid = _panels(len(maps), photo, style, width, title_lines=lines)
    cmap = style.colormap(IMAGE_CMAP)
    vmax = shared_vmax(maps)
    left, top, right, bottom = extent
    size = (photo.shape[1], photo.shape[0])
    img = None
    for ax, m, name in zip(grid.axes, maps, names):
        _photo_axes(ax, grid.photo, size)
        top_val = m.max() if style.scale == "per-head" else vmax
        img = ax.imshow(m, extent=(left, right, bottom, top), cmap=cmap, alpha=OVERLAY_ALPHA, vmin=0, vmax=top_val,
                        interpolation="nearest")
        ax.set_xlim(0, size[0])
        ax.set_ylim(size[1], 0)
        _outline(ax, box, "white")
        if point is not None:
            ax.plot([point[0]], [point[1]], marker="x", color="white", markersize=7, mew=2)
        ax.set_title(name, fontsize=fonts.small, pad=3)
    if img is not None and style.scale != "per-head":
        _colorbar(grid, img, "attention probability", fonts)
    _put_title(grid.fig, text, fonts)
    attach_metadata(grid.fig, title, model, style, view)
    return grid.fig


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
        strides: the feature levels' strides (the legend).
    """
    points = np.asarray(points, dtype=np.float64)
    weights = np.asarray(weights, dtype=np.float64)
    width = style.width(11.0 if len(points) > 4 else 8.0)
    fonts = style.fonts(width)
    text, lines = _title_text(title, subtitle, width, fonts)
    legend = 2 * fonts.small * 1.5 / 72 + 0.1 if (strides or reference is not None) else 0.0
    grid = _panels(len(points), photo, style, width, title_lines=lines, legend=legend)
    cmap = style.colormap(IMAGE_CMAP)
    vmax = float(weights.max()) if weights.size else 1.0
    size = (photo.shape[1], photo.shape[0])
    sc = None
    base = (0.06 * grid.panel[0] * 72) ** 2  # the heaviest point: 6% of a panel across (points²)
    for ax, p, wt, name in zip(grid.axes, points, weights, names):
        _photo_axes(ax, grid.photo, size)
        order = np.argsort(wt)  # heaviest on top
        for lvl in np.unique(levels):
            sel = order[levels[order] == lvl]
            sc = ax.scatter(p[sel, 0], p[sel, 1], s=8 + base * wt[sel] / max(vmax, 1e-12), c=wt[sel], cmap=cmap,
                            vmin=0, vmax=vmax, marker=LEVEL_MARKERS[int(lvl) % len(LEVEL_MARKERS)],
                            edgecolors="black", linewidths=0.4)
        if reference is not None:
            ax.plot([reference[0]], [reference[1]], marker="*", color="white", markeredgecolor="black", markersize=10)
        _outline(ax, box, "white")
        ax.set_title(name, fontsize=fonts.small, pad=3)
    if sc is not None:
        _colorbar(grid, sc, "attention weight", fonts)
    if legend:
        from matplotlib.lines import Line2D

        handles = [Line2D([], [], linestyle="none", marker=LEVEL_MARKERS[i % len(LEVEL_MARKERS)], markerfacecolor="#bbbbbb",
                          markeredgecolor="black", markersize=6, label=f"stride {s}") for i, s in enumerate(strides)]
        if reference is not None:
            handles.append(Line2D([], [], linestyle="none", marker="*", markerfacecolor="white", markeredgecolor="black",
                                  markersize=9, label="reference point"))
        grid.fig.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, 0.0), ncol=len(handles),
                        fontsize=fonts.small, frameon=False, borderaxespad=0.2, handletextpad=0.3, columnspacing=1.2,
                        title="feature level of each sampling point (area and colour: attention weight)",
                        title_fontsize=fonts.small)
    _put_title(grid.fig, text, fonts)
    attach_metadata(grid.fig, title, model, style, view)
    return grid.fig

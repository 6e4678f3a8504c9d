"""Views of a Vision Transformer's attention, drawn over the photo itself.

Every function takes an :class:`~attnviz.types.ImageAttention` (plus the maps it
shows) and returns a :class:`matplotlib.figure.Figure`; nothing here writes files
or touches pyplot.

Geometry. The photo is drawn at its own size in its own pixel coordinates
(``extent=(0, width, height, 0)``); a patch map of ``rows x cols`` values is drawn
over ``result.crop_box`` (the part of the photo the patch grid covers, after the
processor's resize and crop) with ``imshow(..., extent=crop_box)`` and
nearest-neighbour cells, so each cell sits exactly over the pixels of its patch.
Where the processor crops, the crop is outlined (dashed) and the photo outside it
is dimmed.

Views:

- :func:`heads_view` -- where [CLS] (or another patch: :func:`patch_view`) looks
  in one layer, one panel per head plus the head mean;
- :func:`rollout_view` -- attention rollout, optionally with sink patches left out;
- :func:`predictions_view` -- a classifier's top labels;
- :func:`report_view` -- one page: photo, head mean, rollout (and the rollout
  without sinks), predictions and notes.
"""

from __future__ import annotations

import math
import weakref
from typing import Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from attnviz.render.common import Frame, Titles, add_colorbar, clamp, figure_text, wrap
from attnviz.render.layout import DEFAULT_STYLE, IMAGE_CMAP, Fonts, Style, attach_metadata, max_chars, shared_vmax
from attnviz.types import ImageAttention, Prediction

__all__ = [
    "heads_view", "patch_view", "rollout_view", "predictions_view", "report_view", "figure_text",
    "OVERLAY_CMAP", "OVERLAY_ALPHA",
]

#: Colour map of the heat overlays (dark = little attention, bright = much; perceptually uniform, colour-blind safe).
OVERLAY_CMAP = IMAGE_CMAP
#: Opacity of the heat overlay over the photo.
OVERLAY_ALPHA = 0.6
#: Colour that marks attention-sink patches, and the query patch of :func:`patch_view`.
SINK_COLOR = "#00e5ff"
QUERY_COLOR = "#39ff14"
#: Photos are drawn at most this many pixels on their long side (the coordinates stay the photo's own).
MAX_PHOTO_PIXELS = 1200

TITLE_SIZE = 12.0
SUBTITLE_SIZE = 9.0
PANEL_TITLE_SIZE = 9.0


# ---------------------------------------------------------------------------
# geometry and drawing helpers


def _region(result: ImageAttention) -> tuple[float, float, float, float]:
    """Display limits ``(x0, x1, y0, y1)``: the photo, grown to hold a crop that reaches beyond it (padding)."""
    left, top, right, bottom = result.crop_box
    w, h = result.image.width, result.image.height
    return min(0.0, left), max(float(w), right), min(0.0, top), max(float(h), bottom)


#: Panels are drawn no wider than 4:1 (nor taller than 1:4); a longer photo is stretched to it and the
#: caption says so, so a 3000x20 px strip still shows its cells and the colour bar has room.
MAX_ASPECT = 4.0


def _true_aspect(result: ImageAttention) -> float:
    x0, x1, y0, y1 = _region(result)
    return (x1 - x0) / max(1e-9, (y1 - y0))


def _aspect(result: ImageAttention) -> float:
    """Width / height of a panel: the photo's own, within [1 / MAX_ASPECT, MAX_ASPECT]."""
    return min(MAX_ASPECT, max(1.0 / MAX_ASPECT, _true_aspect(result)))


def _stretch(result: ImageAttention) -> float:
    """How much a y unit is drawn longer than an x unit (1.0: the photo's own proportions)."""
    return _true_aspect(result) / _aspect(result)


_PHOTOS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _photo_array(result: ImageAttention) -> np.ndarray:
    """The photo as an RGB array for drawing, at most :data:`MAX_PHOTO_PIXELS` on its long side
    (made once per photo: a big photo is shrunk once, not once per panel)."""
    image = result.image
    try:
        return _PHOTOS[image]
    except (KeyError, TypeError):
        pass
    shown = image
    if max(image.size) > MAX_PHOTO_PIXELS:
        shown = image.copy()
        shown.thumbnail((MAX_PHOTO_PIXELS, MAX_PHOTO_PIXELS))
    arr = np.asarray(shown.convert("RGB"))
    try:
        _PHOTOS[image] = arr
    except TypeError:  # pragma: no cover - not weak-referenceable
        pass
    return arr


def _crops(result: ImageAttention) -> bool:
    """True when the crop box is not (about) the whole photo."""
    left, top, right, bottom = result.crop_box
    w, h = result.image.width, result.image.height
    tol = 0.5
    return abs(left) > tol or abs(top) > tol or abs(right - w) > tol or abs(bottom - h) > tol


def _draw_photo(ax, result: ImageAttention, photo: np.ndarray | None = None, *, outline: bool = True) -> None:
    """The photo at its own size; outside the crop dimmed and the crop outlined (dashed)."""
    photo = _photo_array(result) if photo is None else photo
    w, h = result.image.width, result.image.height
    ax.imshow(photo, extent=(0, w, h, 0), interpolation="antialiased", zorder=0)
    x0, x1, y0, y1 = _region(result)
    left, top, right, bottom = result.crop_box
    if _crops(result):
        # dim what the model did not see
        dim = dict(facecolor="white", alpha=0.55, linewidth=0, zorder=1)
        for rect in (
            (x0, y0, left - x0, y1 - y0), (right, y0, x1 - right, y1 - y0),
            (left, y0, right - left, top - y0), (left, bottom, right - left, y1 - bottom),
        ):
            if rect[2] > 0 and rect[3] > 0:
                ax.add_patch(Rectangle(rect[:2], rect[2], rect[3], **dim))
        if outline:
            box = Rectangle((left, top), right - left, bottom - top, fill=False, edgecolor="white", linewidth=1.6, zorder=4)
            ax.add_patch(box)
            box = Rectangle((left, top), right - left, bottom - top, fill=False, edgecolor="black", linewidth=1.2,
                            linestyle=(0, (4, 3)), zorder=5)
            box.set_gid("crop")
            ax.add_patch(box)
    _frame_axes(ax, result)


def _frame_axes(ax, result: ImageAttention) -> None:
    x0, x1, y0, y1 = _region(result)
    ax.set_xlim(x0, x1)
    ax.set_ylim(y1, y0)
    ax.set_aspect(_stretch(result))
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_linewidth(0.5)
        spine.set_color("#888888")


def _overlay(ax, result: ImageAttention, values, *, vmin: float | None = None, vmax: float | None = None,
             alpha: float = OVERLAY_ALPHA, cmap: str = OVERLAY_CMAP):
    """A ``[rows, cols]`` map over the crop box (NaN cells transparent, hatched grey); returns the AxesImage."""
    import matplotlib

    arr = np.asarray(values, dtype=np.float64)
    finite = arr[np.isfinite(arr)]
    if vmin is None:
        vmin = float(finite.min()) if finite.size else 0.0
    if vmax is None:
        vmax = float(finite.max()) if finite.size else 1.0
    if vmax <= vmin:
        vmax = vmin + (abs(vmin) * 1e-3 or 1e-6)
    cm = matplotlib.colormaps[cmap].with_extremes(bad=(0, 0, 0, 0))
    left, top, right, bottom = result.crop_box
    img = ax.imshow(
        np.ma.masked_invalid(arr), extent=(left, right, bottom, top), cmap=cm, vmin=vmin, vmax=vmax,
        alpha=alpha, interpolation="nearest", zorder=2,
    )
    img.set_gid("heatmap")
    if not np.all(np.isfinite(arr)):
        rows, cols = arr.shape
        cw, ch = (right - left) / cols, (bottom - top) / rows
        for r, c in zip(*np.nonzero(~np.isfinite(arr))):
            patch = Rectangle((left + c * cw, top + r * ch), cw, ch, facecolor=(0.6, 0.6, 0.6, 0.5),
                              edgecolor="#444444", hatch="xxxx", linewidth=0.0, zorder=3)
            patch.set_gid("left-out")
            ax.add_patch(patch)
    _frame_axes(ax, result)
    return img


def _colorbar(frame: Frame, img, left_in: float, top_in: float, height_in: float, label: str, width_in: float = 0.15,
              fontsize: float = 9.0):
    """A colour bar for an overlay, drawn opaque (the overlay's transparency would grey it out)."""
    from matplotlib.cm import ScalarMappable

    return add_colorbar(frame, ScalarMappable(norm=img.norm, cmap=img.cmap), left_in, top_in, height_in, label, width_in=width_in,
                        fontsize=fontsize)


def _mark_patches(ax, result: ImageAttention, cells: Sequence[tuple[int, int]], color: str, gid: str, lw: float = 1.6) -> None:
    """Outline patches ``(row, col)`` (a dark under-stroke keeps the outline visible on any colour)."""
    left, top, right, bottom = result.crop_box
    rows, cols = result.grid
    cw, ch = (right - left) / cols, (bottom - top) / rows
    for r, c in cells:
        for ec, width, z in (("black", lw + 1.4, 6), (color, lw, 7)):
            rect = Rectangle((left + c * cw, top + r * ch), cw, ch, fill=False, edgecolor=ec, linewidth=width, zorder=z)
            rect.set_gid(gid)
            ax.add_patch(rect)


def _titles(title: str, subtitle: str, width_in: float) -> Titles:
    return Titles(wrap(title, width_in - 0.4, TITLE_SIZE), wrap(subtitle, width_in - 0.4, SUBTITLE_SIZE) if subtitle else "")


def _grid_shape(n: int) -> tuple[int, int]:
    """(rows, cols) of a panel grid for ``n`` panels: about 1.5 times as wide as tall, at least 4 across."""
    cols = min(n, max(4, math.ceil(math.sqrt(n * 1.5))))
    return math.ceil(n / cols), cols


def _settings_text(result: ImageAttention) -> str:
    rows, cols = result.grid
    h, w = result.input_size
    prefix = f"{result.prefix_tokens} prefix token{'s' if result.prefix_tokens != 1 else ''}"
    stretched = _stretch(result)
    shape = "" if abs(stretched - 1) < 1e-6 else (
        f" (drawn stretched to {_aspect(result):.3g}:1, the photo is {_true_aspect(result):.3g}:1)"
    )
    return (
        f"photo {result.image.width}x{result.image.height} px{shape} -> model input {w}x{h} px, {rows}x{cols} patches "
        f"(+ {prefix}) · backend {result.backend}"
    )


def _panel_size(result: ImageAttention, width_in: float, max_height_in: float | None = None) -> tuple[float, float]:
    aspect = _aspect(result)
    w, h = width_in, width_in / aspect
    if max_height_in is not None and h > max_height_in:
        h, w = max_height_in, max_height_in * aspect
    return w, h


def sinks_note(sinks, grid: tuple[int, int]) -> str:
    """What was measured at the flagged patches, without claiming what they show (empty without sinks).

    E.g. ``"Possible attention sink: patch (row 6, col 8) takes 41% of the late-layer [CLS]
    attention to patches, 80x its uniform share (1/196) and at least 4x any neighbour."``
    """
    if not sinks:
        return ""
    n = grid[0] * grid[1]
    parts = [
        f"patch (row {s.row}, col {s.col}) takes {s.share:.0%} of the "
        f"{'late-layer [CLS] attention to patches' if s.signal == 'attention' else 'rollout over patches'}, "
        f"{s.share * n:.0f}x its uniform share (1/{n})"
        for s in sinks
    ]
    what = "Possible attention sink" if len(sinks) == 1 else "Possible attention sinks"
    return (f"{what}: " + "; ".join(parts) + ", and at least 4x any neighbouring patch. "
            "This measures where attention goes, not what the patch shows.")


# ---------------------------------------------------------------------------
# per-head maps of one layer


def _style_fonts(style: Style, width: float) -> Fonts:
    return style.fonts(width) if style.print_size else Fonts(TITLE_SIZE, SUBTITLE_SIZE, PANEL_TITLE_SIZE)


def _titles_in(style: Style, title: str, subtitle: str, width_in: float) -> Titles:
    f = _style_fonts(style, width_in)
    margin = 0.4 if width_in >= 5 else 0.2
    return Titles(wrap(title, width_in - margin, f.title, bold=True), wrap(subtitle, width_in - margin, f.sub) if subtitle else "",
                  f.title, f.sub)


def _heads_figure(
    result: ImageAttention,
    maps,
    *,
    title: str,
    subtitle: str,
    panel_titles: Sequence[str],
    cbar_label: str,
    sinks=(),
    query_cell: tuple[int, int] | None = None,
    point: tuple[float, float] | None = None,
    panel_width_in: float = 3.0,
    style: Style = DEFAULT_STYLE,
    view: str = "heads view",
) -> Figure:
    maps = np.asarray(maps, dtype=np.float64)  # [panels, rows, cols]
    n = maps.shape[0]
    per_head = style.scale == "per-head"
    cmap = style.cmap or IMAGE_CMAP
    if style.print_size:
        width = style.width(0)
        fonts = style.fonts(width)
        cb_room = 0.7 if width < 5 else 0.85
        min_panel = 0.62 if width < 5 else 1.05
        cols = int(clamp(round((width - 0.15 - cb_room) / (min_panel + 0.08)), 1, n))
        grid_rows = math.ceil(n / cols)
        cols = math.ceil(n / grid_rows)
        gap_x = 0.08
        pw_max = (width - 0.15 - cb_room - (cols - 1) * gap_x) / cols
        pw, ph = _panel_size(result, pw_max, max_height_in=pw_max * 1.5)
        label_h = fonts.small * 1.35 / 72 + 0.03
        gap_y = 0.06
        cell_w = pw + gap_x
        x_left = 0.1
    else:
        fonts = Fonts(TITLE_SIZE, SUBTITLE_SIZE, PANEL_TITLE_SIZE)
        grid_rows, cols = _grid_shape(n)
        pw, ph = _panel_size(result, panel_width_in, max_height_in=panel_width_in * 1.5)
        cb_room = 1.1
        gap_x, gap_y, label_h = 0.25, 0.25, 0.3
        cell_w = pw + gap_x
        width = max(7.0, 0.4 + cols * cell_w + cb_room)
        x_left = 0.3
    if per_head:
        tops = [float(np.nanmax(m)) if np.isfinite(m).any() else 1.0 for m in maps]
        shown = np.stack([m / t if t > 0 else m for m, t in zip(maps, tops)])
        vmax = 1.0
        panel_titles = [f"{t} · max {_short_num(top)}" for t, top in zip(panel_titles, tops)]
        note = "colour: each panel on its own scale, 0 to its maximum (given in its title); panels cannot be compared by colour"
        label = "fraction of the panel's maximum (per-head scale)" if not (style.print_size and width < 5) else "÷ panel max (per-head)"
    else:
        shown = maps
        vmax = shared_vmax(maps)
        note = "colour: one scale shared by all panels, from 0, so heads compare by colour"
        label = cbar_label + (" (one scale, all panels)" if not (style.print_size and width < 5) else " (shared scale)")
    titles = _titles_in(style, title, subtitle + "\n" + note, width)
    top0 = titles.height_in() + 0.05
    natural = grid_rows * (label_h + ph + gap_y)
    cb_min = 1.25 if style.print_size else 2.0  # room for the colour bar's label
    natural = max(natural, label_h + cb_min + gap_y)
    height, plot_h = style.height(top0 + 0.1, natural)
    if plot_h < natural:  # WxH: shrink the panels to fit
        f = plot_h / natural
        pw, ph = pw * f, ph * f
    frame = Frame(width, height, style.resolution)
    frame.titles(titles)
    photo = _photo_array(result)
    sink_cells = [(s.row, s.col) for s in sinks]
    img = None
    for i in range(n):
        gr, gc = divmod(i, cols)
        x = x_left + gc * cell_w
        y = top0 + gr * (label_h + ph + gap_y) + label_h
        ax = frame.axes(x, y, pw, ph)
        _draw_photo(ax, result, photo)
        img = _overlay(ax, result, shown[i], vmin=0.0, vmax=vmax, cmap=cmap)
        if sink_cells:
            _mark_patches(ax, result, sink_cells, SINK_COLOR, "sink", lw=1.0 if pw > 1 else 0.6)
        if query_cell is not None:
            _mark_patches(ax, result, [query_cell], QUERY_COLOR, "query", lw=1.6 if pw > 1 else 0.8)
        if point is not None:
            ax.plot([point[0]], [point[1]], marker="+", markersize=9 if pw > 1 else 5, markeredgewidth=2 if pw > 1 else 1,
                    color=QUERY_COLOR, zorder=8)
        chars = max_chars(pw * 72, fonts.small)
        ax.set_title(_short(panel_titles[i], chars), fontsize=fonts.small, loc="left", pad=2)
    grid_h = max(grid_rows * (label_h + ph + gap_y) - gap_y - label_h, cb_min * min(1.0, plot_h / natural))
    _colorbar(frame, img, x_left + cols * cell_w - gap_x + 0.1, top0 + label_h, grid_h, label,
              width_in=0.1 if style.print_size else 0.15, fontsize=fonts.small if style.print_size else 9.0)
    fig = frame.figure
    attach_metadata(fig, titles.title, style.model_label(result.model_id), style, view)
    return fig


def _short_num(v: float) -> str:
    return f"{v:.2f}".removeprefix("0") if v >= 0.01 else f"{v:.1e}"


def heads_view(
    result: ImageAttention,
    layer: int = -1,
    *,
    heads: Sequence[int] | None = None,
    sinks=(),
    style: Style = DEFAULT_STYLE,
) -> Figure:
    """Where [CLS] looks in one layer: one panel per head (``heads``, default all) plus the head mean.

    Each panel shows the [CLS] -> patch attention probabilities over the photo.
    By default (``style.scale == "shared"``) all panels share one colour scale
    from 0 to the largest weight of any panel, with one colour bar that says so,
    so a weak head looks weak; with ``"per-head"`` each panel runs from 0 to its
    own maximum (given in its title, and the subtitle says panels cannot be
    compared by colour). The panel title gives the head and the share that went
    to prefix tokens ([CLS] itself, distillation, registers), which has no place
    on the photo. For a model without [CLS] (SigLIP) the map is the mean
    attention row over all tokens, and the title says so. ``sinks`` (from
    :func:`attnviz.analysis.sinks.detect_sinks`) are outlined.
    """
    from attnviz.analysis.patches import cls_attention, query_label

    maps_obj = result.attention
    layer = maps_obj.check_layer(layer)
    grid = cls_attention(result, layer)  # [H, rows, cols]
    heads = list(range(result.num_heads)) if heads is None else [maps_obj.check_head(h) for h in heads]
    panels = [grid[h].numpy() for h in heads]
    mass = [float(grid[h].sum()) for h in heads]
    compact = style.print_size and style.compact(style.width(0))
    if compact:
        names = [f"{h} · {1 - m:.0%}" if result.prefix_tokens else f"head {h}" for h, m in zip(heads, mass)]
    else:
        names = [f"head {h} · {1 - m:.0%} to prefix" if result.prefix_tokens else f"head {h}" for h, m in zip(heads, mass)]
    mean = grid.mean(dim=0)
    panels.append(mean.numpy())
    names.append(("mean" if compact else f"mean of {result.num_heads} heads") + (f" · {1 - float(mean.sum()):.0%}" if result.prefix_tokens else ""))
    q = query_label(result)
    notes = [_settings_text(result)]
    if result.prefix_tokens:
        notes.append("panel title: head · share of its attention that goes to prefix tokens (not drawn on the photo)")
    if result.cls_index is None:
        notes.append("This model has no [CLS] token: each map is the mean attention row over all tokens.")
    if sinks:
        notes.append("Cyan squares: possible attention-sink patches (see the report).")
    title = f"{q} -> patch attention · {style.model_label(result.model_id)} · layer {layer} of 0..{result.num_layers - 1}"
    return _heads_figure(
        result, np.stack(panels), title=title, subtitle="\n".join(notes), panel_titles=names,
        cbar_label="attention weight", sinks=sinks, style=style, view="per-head [CLS] attention",
    )


def patch_view(
    result: ImageAttention,
    layer: int,
    row: int,
    col: int,
    *,
    point: tuple[float, float] | None = None,
    heads: Sequence[int] | None = None,
    sinks=(),
    style: Style = DEFAULT_STYLE,
) -> Figure:
    """Where the patch at ``(row, col)`` looks in one layer: one panel per head plus the head mean.

    The query patch is outlined in green and ``point`` (photo pixels) marked with
    a cross. Colour scales as in :func:`heads_view` (shared by default).
    """
    from attnviz.analysis.patches import query_attention

    maps_obj = result.attention
    layer = maps_obj.check_layer(layer)
    grid = query_attention(result, layer, row, col)
    heads = list(range(result.num_heads)) if heads is None else [maps_obj.check_head(h) for h in heads]
    panels = [grid[h].numpy() for h in heads] + [grid.mean(dim=0).numpy()]
    compact = style.print_size and style.compact(style.width(0))
    if compact:
        names = [f"{h} · {1 - float(grid[h].sum()):.0%}" if result.prefix_tokens else f"head {h}" for h in heads]
        names.append("mean")
    else:
        names = [f"head {h} · {1 - float(grid[h].sum()):.0%} to prefix" if result.prefix_tokens else f"head {h}" for h in heads]
        names.append(f"mean of {result.num_heads} heads")
    at = f" at pixel ({point[0]:g}, {point[1]:g})" if point is not None else ""
    title = (f"patch (row {row}, col {col}){at} -> patch attention · {style.model_label(result.model_id)} · "
             f"layer {layer} of 0..{result.num_layers - 1}")
    notes = [_settings_text(result), "Green square: the query patch."]
    if result.prefix_tokens:
        notes.append("panel title: head · share of its attention that goes to prefix tokens (not drawn on the photo)")
    return _heads_figure(
        result, np.stack(panels), title=title, subtitle="\n".join(notes), panel_titles=names,
        cbar_label="attention weight", sinks=sinks, query_cell=(row, col), point=point, style=style, view="patch attention",
    )


# ---------------------------------------------------------------------------
# rollout

#: How the rollout's colour bar reads: its scale runs from the smallest to the largest weight, not from 0.
ROLLOUT_SCALE = "scale: min to max, not from 0"


def _rollout_subtitle(result: ImageAttention, settings: dict) -> str:
    fusion = settings.get("head_fusion", "mean")
    discard = float(settings.get("discard_ratio", 0.0))
    if result.cls_index is not None:
        dropped = f"lowest {discard:.0%} of weights discarded (never attention to [CLS]), " if discard else ""
        row = "the [CLS] row"
    else:
        dropped = f"lowest {discard:.0%} of weights discarded, " if discard else ""
        row = "the mean row over all tokens (this model has no [CLS])"
    return (
        f"Rollout (Abnar & Zuidema 2020): head fusion {fusion}, discard ratio {discard:g}. Per layer the heads are "
        f"fused, {dropped}A' = norm(0.5 A + 0.5 I), R = A'_L ... A'_1; shown: {row} of R over the patches, "
        f"colour {ROLLOUT_SCALE}."
    )


def _draw_rollout(ax, result, rollout, sinks, masked: bool, cmap: str = IMAGE_CMAP):
    from attnviz.analysis.sinks import without_sinks

    import torch

    values = torch.as_tensor(rollout).double()
    if masked and sinks:
        values = without_sinks(values, sinks)
    img = _overlay(ax, result, values.numpy(), cmap=cmap)
    if sinks and not masked:
        _mark_patches(ax, result, [(s.row, s.col) for s in sinks], SINK_COLOR, "sink")
    return img


def rollout_view(
    result: ImageAttention,
    rollout,
    settings: dict | None = None,
    *,
    sinks=(),
    masked: bool = False,
    width_in: float = 7.0,
    style: Style = DEFAULT_STYLE,
) -> Figure:
    """Attention rollout over the photo: ``rollout`` is the raw ``[rows, cols]`` row of R over the patches.

    The colour scale runs from the smallest to the largest value shown, not from
    0, and the colour bar and subtitle say so (the colour bar gives the raw
    rollout weights). With ``masked`` the ``sinks`` are left out (hatched) and
    the scale spans the other patches only; without it they are outlined in cyan.
    """
    settings = dict(settings or {})
    what = "attention rollout" + (" without sink patches" if masked and sinks else "")
    notes = [_rollout_subtitle(result, settings), _settings_text(result)]
    if sinks and masked:
        cells = ", ".join(f"({s.row}, {s.col})" for s in sinks)
        notes.append(f"Sink patch{'es' if len(sinks) > 1 else ''} {cells} left out (hatched); the colour scale spans the other patches.")
    elif sinks:
        notes.append(sinks_note(sinks, result.grid) + " Cyan square: that patch; see the view without it.")
    short = style.print_size and style.width(width_in) < 5
    label = "rollout weight (" + ("min to max" if short else ROLLOUT_SCALE) + (", sinks left out)" if masked and sinks and not short else ")")
    return _map_figure(result, what, notes, label, settings, width_in, style,
                       lambda ax, cmap: _draw_rollout(ax, result, rollout, sinks, masked, cmap))


def _map_figure(result: ImageAttention, what: str, notes: list[str], label: str, settings: dict, width_in: float,
                style: Style, draw) -> Figure:
    """One map over the photo with titles and a colour bar; ``draw(ax, cmap)`` draws the overlay and returns it."""
    width = style.width(width_in)
    fonts = _style_fonts(style, width)
    cb_room = 1.3 if not style.print_size else (0.75 if width < 5 else 0.95)
    pw, ph = _panel_size(result, width - cb_room - 0.1, max_height_in=8.0 if not style.print_size else width)
    if not style.print_size:
        width = max(width, pw + 1.3)
    titles = _titles_in(style, f"{what} · {style.model_label(result.model_id)}", "\n".join(notes), width)
    top = titles.height_in() + 0.1
    height, plot_h = style.height(top + 0.15, ph)
    if plot_h < ph:
        pw, ph = pw * plot_h / ph, plot_h
    frame = Frame(width, height, style.resolution)
    frame.titles(titles)
    x0 = 0.3 if not style.print_size else 0.1
    ax = frame.axes(x0, top, pw, ph)
    _draw_photo(ax, result)
    img = draw(ax, style.cmap or IMAGE_CMAP)
    _colorbar(frame, img, x0 + pw + 0.1, top, ph, label,
              width_in=0.15 if not style.print_size else 0.1, fontsize=fonts.small if style.print_size else 9.0)
    attach_metadata(frame.figure, titles.title, style.model_label(result.model_id), style, what, settings)
    return frame.figure


def method_view(result: ImageAttention, method, target=None, *, width_in: float = 7.0, style: Style = DEFAULT_STYLE) -> Figure:
    """One method's map over the photo: ``method`` is an :class:`attnviz.analysis.explain.MethodMap` (raw
    ``[rows, cols]`` values of the [CLS] or mean row over the patches); ``target`` the explained
    :class:`attnviz.signals.Target` (None for methods without one). The colour scale runs from the smallest
    to the largest value shown, and the colour bar says so in the method's own unit.
    """
    what = method.title + (f" · target {target.label}" if target is not None and method.needs_target else "")
    notes = [method.describe(target), _settings_text(result)]
    short = style.print_size and style.width(width_in) < 5
    label = f"{method.unit} (" + ("min to max" if short else ROLLOUT_SCALE) + ")"
    settings = {"method": method.method, "layer": method.layer,
                "target": target.to_dict() if target is not None and method.needs_target else None}
    return _map_figure(result, what, notes, label, settings, width_in, style,
                       lambda ax, cmap: _overlay(ax, result, np.asarray(method.values, dtype=np.float64), cmap=cmap))


def methods_view(result: ImageAttention, methods, target=None, *, width_in: float = 10.0, style: Style = DEFAULT_STYLE) -> Figure:
    """The photo once per method, side by side (one column each, its own min-to-max colour scale and bar).

    ``methods``: :class:`attnviz.analysis.explain.MethodMap` s; ``target``: the gradient methods' target.
    """
    n = len(methods)
    width = style.width(width_in)
    fonts = _style_fonts(style, width)
    gap = 0.25
    cb_h = 0.12
    pw, ph = _panel_size(result, (width - 0.4 - gap * (n - 1)) / n)
    names = ", ".join(m.method for m in methods)
    target_text = f"Gradient methods explain {target.describe()}. " if target is not None and any(m.needs_target for m in methods) else ""
    subtitle = (f"{target_text}Each panel: the {methods[0].row} row over the patches, its own colour scale "
                f"({ROLLOUT_SCALE}). {_settings_text(result)}")
    titles = _titles_in(style, f"methods side by side · {style.model_label(result.model_id)}", subtitle, width)
    top = titles.height_in() + 0.1
    label_h = 0.45
    height = top + label_h + ph + 0.25 + cb_h + 0.55
    frame = Frame(width, height, style.resolution)
    frame.titles(titles)
    for i, m in enumerate(methods):
        x = 0.2 + i * (pw + gap)
        head = wrap(m.title + ("" if m.layer is None else f" · layer {m.layer}"), pw, fonts.text)
        t = frame.figure.text(x / frame.width, 1 - (top + 0.05) / frame.height, head, ha="left", va="top",
                              fontsize=fonts.text, fontweight="bold")
        t.set_gid(f"method-{m.method}")
        ax = frame.axes(x, top + label_h, pw, ph)
        _draw_photo(ax, result)
        img = _overlay(ax, result, np.asarray(m.values, dtype=np.float64), cmap=style.cmap or IMAGE_CMAP)
        cax = frame.axes(x, top + label_h + ph + 0.2, pw, cb_h)
        cb = frame.figure.colorbar(_mappable(img), cax=cax, orientation="horizontal")
        cb.set_label(m.unit, fontsize=fonts.small)
        cb.ax.tick_params(labelsize=max(6.0, fonts.small - 1), length=2, pad=1.5)
        from matplotlib.ticker import FuncFormatter, MaxNLocator

        cb.locator = MaxNLocator(nbins=3)
        cb.formatter = FuncFormatter(lambda v, _pos: f"{v:.2g}" if abs(v) >= 1e-4 or v == 0 else f"{v:.0e}")
        cb.update_ticks()
        cax.set_gid("colorbar")
    attach_metadata(frame.figure, titles.title, style.model_label(result.model_id), style, "methods", {"methods": names})
    return frame.figure


def _mappable(img):
    from matplotlib.cm import ScalarMappable

    return ScalarMappable(norm=img.norm, cmap=img.cmap)


# ---------------------------------------------------------------------------
# predictions


def _draw_predictions(ax, predictions: Sequence[Prediction], fontsize: float = 9.0, label_chars: int = 34) -> None:
    labels = [_short(p.label, label_chars) for p in predictions][::-1]
    scores = [p.score for p in predictions][::-1]
    y = np.arange(len(scores))
    bars = ax.barh(y, scores, color="#4c72b0", height=0.6)
    for bar in bars:
        bar.set_gid("prediction")
    small = max(6.0, fontsize - 1)
    ax.set_yticks(y, labels, fontsize=fontsize)
    ax.set_xlim(0, 1.0)
    ax.set_xticks([0, 0.5, 1.0], ["0", "0.5", "1"])
    ax.set_xlabel("probability (softmax)", fontsize=small, labelpad=1)
    ax.tick_params(axis="x", labelsize=small, pad=1.5, length=2)
    ax.tick_params(axis="y", pad=1.5, length=2)
    for yi, s in zip(y, scores):
        if s > 0.7:
            ax.text(s - 0.01, yi, f"{s:.3f}", va="center", ha="right", fontsize=small, color="white")
        else:
            ax.text(s + 0.01, yi, f"{s:.3f}", va="center", fontsize=small)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def _short(label: str, n: int) -> str:
    label = str(label).replace("$", r"\$")
    return label if len(label) <= n else label[: max(1, n - 1)] + "…"


def predictions_view(result: ImageAttention, width_in: float = 6.5, style: Style = DEFAULT_STYLE) -> Figure:
    """A classifier's top predictions as horizontal bars (probability = softmax of the logits)."""
    preds = list(result.predictions)
    width = style.width(width_in)
    fonts = _style_fonts(style, width)
    font = fonts.text if style.print_size else 9.0
    titles = _titles_in(style, f"top-{len(preds)} predictions · {style.model_label(result.model_id)}", "labels from config.id2label", width)
    top = titles.height_in() + 0.1
    bar_h = max(font * 2.0 / 72, 0.32 if not style.print_size else 0.2) * max(1, len(preds))
    label_w = min(2.6, width * 0.42)
    height, bar_h = style.height(top + 0.5, bar_h, min_plot=0.4)
    frame = Frame(width, height, style.resolution)
    frame.titles(titles)
    ax = frame.axes(label_w, top, width - label_w - 0.25, bar_h)
    if preds:
        _draw_predictions(ax, preds, font, max_chars(label_w * 72 - 8, font))
    else:
        ax.text(0.5, 0.5, "this model has no classification head", ha="center", va="center", transform=ax.transAxes, fontsize=font)
        ax.set_axis_off()
    attach_metadata(frame.figure, titles.title, style.model_label(result.model_id), style, "predictions")
    return frame.figure


# ---------------------------------------------------------------------------
# the one-page report


def report_view(
    result: ImageAttention,
    *,
    layer: int,
    head: int | None,
    rollout,
    settings: dict | None = None,
    sinks=(),
    files: Sequence[str] = (),
    style: Style = DEFAULT_STYLE,
) -> Figure:
    """One page: the photo, [CLS] attention of ``layer`` (head mean, or ``head``), the rollout, the
    rollout without sink patches (when there are sinks), the predictions and notes.

    The attention panel's colour bar starts at 0; the rollout's runs from its
    minimum to its maximum, and its colour bar says so.
    """
    from attnviz.analysis.patches import cls_attention, query_label

    settings = dict(settings or {})
    fusion, discard = settings.get("head_fusion", "mean"), float(settings.get("discard_ratio", 0.0))
    layer = result.attention.check_layer(layer)
    grid = cls_attention(result, layer)
    if head is None:
        att, att_name = grid.mean(dim=0), f"{query_label(result)} attention, layer {layer}, mean of {result.num_heads} heads"
    else:
        head = result.attention.check_head(head)
        att, att_name = grid[head], f"{query_label(result)} attention, layer {layer}, head {head}"
    cmap = style.cmap or IMAGE_CMAP
    n_panels = 4 if sinks else 3
    if style.print_size:
        width = style.width(0)
        fonts = style.fonts(width)
        compact = style.compact(width)
        per_row = 2 if compact else n_panels
        cbar_w, gap = 0.08, (0.62 if compact else 0.68)
        pw_max = (width - 0.15 - per_row * (0.05 + cbar_w + gap)) / per_row
        pw, ph = _panel_size(result, pw_max, max_height_in=pw_max * 1.3)
        panel_font = fonts.small
        label_lines = 3 if compact else 2
    else:
        fonts = Fonts(TITLE_SIZE, SUBTITLE_SIZE, PANEL_TITLE_SIZE)
        per_row = n_panels
        pw, ph = _panel_size(result, 3.3, max_height_in=4.4)
        cbar_w, gap = 0.12, 0.75
        panel_font = PANEL_TITLE_SIZE
        label_lines = 2
        width = None
    cell_w = pw + 0.05 + cbar_w + gap
    if width is None:
        width = max(10.0, 0.3 + n_panels * cell_w)
    panel_rows = math.ceil(n_panels / per_row)
    rows, cols = result.grid
    title = f"attnviz image · {style.model_label(result.model_id)}"
    sub = (
        f"{result.model_type}, {result.num_layers} layers x {result.num_heads} heads, {rows}x{cols} patches + "
        f"{result.prefix_tokens} prefix token{'s' if result.prefix_tokens != 1 else ''}, backend {result.backend} · "
        f"rollout: heads fused by {fusion}, discard ratio {discard:g}; attention colour from 0, rollout colour from its min to its max"
    )
    titles = _titles_in(style, title, sub, width)
    top = titles.height_in() + 0.1
    label_h = label_lines * panel_font * 1.25 / 72 + 0.04
    preds = list(result.predictions)
    pred_font = fonts.text if style.print_size else 9.0
    bar_row = max(pred_font * 2.0 / 72, 0.2 if style.print_size else 0.32)
    notes = []
    if sinks:
        notes.append(sinks_note(sinks, result.grid))
    if result.cls_index is None:
        notes.append("This model has no [CLS] token: attention and rollout show the mean row over all tokens.")
    if _crops(result):
        notes.append("Dashed box: the part of the photo the model's patches cover (after the processor's resize and crop); "
                     "the rest is dimmed.")
    # bottom block: predictions (left) and notes (right) on screen and page; stacked at column width
    stacked = style.print_size and style.compact(width)
    preds_h = (bar_row * len(preds) + 0.45 + panel_font * 1.4 / 72) if preds else 0.0
    text_x = 0.3 if not style.print_size else 0.1
    pred_label_w = 2.4 if not style.print_size else min(1.5, width * 0.35)
    pred_w = 3.0 if not style.print_size else (width - pred_label_w - 0.3 if stacked else min(2.2, width * 0.3))
    if preds and not stacked:
        text_x = pred_label_w + pred_w + 0.4
    text_w = width - text_x - 0.2
    note_font = 10.0 if not style.print_size else fonts.text
    body_font = 9.0 if not style.print_size else fonts.small
    warn_text = ""
    if sinks:
        warn_text = wrap(
            sinks_note(sinks, result.grid) + " The panel "
            + ("on the right" if not stacked else "'rollout without'") + " leaves "
            + ("it" if len(sinks) == 1 else "them") + " out (also rollout-no-sinks)." + " Cyan outline: the flagged patch"
            + ("es." if len(sinks) > 1 else "."), text_w - 0.3, note_font,
        )
    lines = [n for n in notes if not n.startswith("Possible attention sink")]
    if not preds:
        lines.insert(0, "This model has no classification head, so there are no predictions.")
    if files:
        lines.append("Views beside this report: " + ", ".join(files) + ".")
    body = "\n".join(wrap(line, text_w, body_font) for line in lines)
    warn_h = ((warn_text.count("\n") + 1) * note_font * 1.25 / 72 + 0.3) if warn_text else 0.0
    body_h = ((body.count("\n") + 1) * body_font * 1.25 / 72) if body else 0.0
    text_h = warn_h + body_h + 0.1
    panels_h = panel_rows * (label_h + ph + 0.15)
    bottom_h = (preds_h + 0.1 + text_h) if stacked else max(preds_h, text_h)
    if not style.print_size:
        bottom_h = max(bottom_h, 1.9 if preds else 1.3)
    height, _ = style.height(top + panels_h + bottom_h + 0.35, 0.0, min_plot=0.0)
    frame = Frame(width, height, style.resolution)
    frame.titles(titles)
    fig = frame.figure
    photo = _photo_array(result)
    cb_font = fonts.small if style.print_size else 9.0

    def panel(i: int, name: str, color: str = "black"):
        pr, pc = divmod(i, per_row)
        x = (0.3 if not style.print_size else 0.1) + pc * cell_w
        y = top + pr * (label_h + ph + 0.15) + label_h
        ax = frame.axes(x, y, pw, ph)
        ax.set_title(wrap(name, pw + (0.6 if not style.print_size else gap * 0.8), panel_font), fontsize=panel_font, loc="left",
                     pad=2, color=color, linespacing=1.1)
        return ax, x, y

    ax, _, _ = panel(0, f"photo {result.image.width}x{result.image.height}" + (" · dashed: what the model saw" if _crops(result) else "")
                     + ("" if abs(_stretch(result) - 1) < 1e-6 else f" · drawn stretched to {_aspect(result):.3g}:1"))
    _draw_photo(ax, result, photo)
    ax, x, y = panel(1, att_name)
    _draw_photo(ax, result, photo)
    img = _overlay(ax, result, att.numpy(), vmin=0.0, cmap=cmap)
    if sinks:
        _mark_patches(ax, result, [(s.row, s.col) for s in sinks], SINK_COLOR, "sink", lw=1.2 if pw > 1.2 else 0.7)
    _colorbar(frame, img, x + pw + 0.05, y, ph, "attention weight (from 0)", width_in=cbar_w, fontsize=cb_font)
    ax, x, y = panel(2, "attention rollout" + (" (cyan: flagged patch)" if sinks else ""))
    _draw_photo(ax, result, photo)
    img = _draw_rollout(ax, result, rollout, sinks, masked=False, cmap=cmap)
    _colorbar(frame, img, x + pw + 0.05, y, ph, "rollout weight (min to max)", width_in=cbar_w, fontsize=cb_font)
    if sinks:
        ax, x, y = panel(3, "rollout without the flagged patch" + ("es" if len(sinks) > 1 else "") + " (hatched)", color="#b00020")
        _draw_photo(ax, result, photo)
        img = _draw_rollout(ax, result, rollout, sinks, masked=True, cmap=cmap)
        _colorbar(frame, img, x + pw + 0.05, y, ph, "rollout weight (min to max)", width_in=cbar_w, fontsize=cb_font)

    y_bottom = top + panels_h + 0.1
    if preds:
        ax = frame.axes(text_x if stacked else pred_label_w + (0.2 if not style.print_size else 0.1),
                        y_bottom + panel_font * 1.4 / 72 + 0.05, pred_w, bar_row * len(preds))
        if stacked:
            ax.set_position(frame.rect(pred_label_w + 0.1, y_bottom + panel_font * 1.4 / 72 + 0.05, pred_w, bar_row * len(preds)))
        _draw_predictions(ax, preds, pred_font, max_chars(pred_label_w * 72 - 8, pred_font))
        ax.set_title(f"top-{len(preds)} predictions", fontsize=panel_font, loc="left", pad=2)
    y_text = (y_bottom + preds_h + 0.1) if stacked else y_bottom + 0.1
    if warn_text:
        t = fig.text(text_x / width, 1 - (y_text + 0.08) / height, warn_text, ha="left", va="top", fontsize=note_font, color="#8b0000",
                     bbox=dict(boxstyle="round,pad=0.4", facecolor="#fff0f0", edgecolor="#b00020", linewidth=1.0))
        t.set_gid("sink-warning")
        y_text += warn_h
    if body:
        t = fig.text(text_x / width, 1 - y_text / height, body, ha="left", va="top", fontsize=body_font, color="#333333")
        t.set_gid("notes")
    attach_metadata(fig, titles.title, style.model_label(result.model_id), style, "image report", settings)
    return fig

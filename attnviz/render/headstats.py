"""Views of ``attnviz heads``: one layers x heads heatmap per statistic, the probe accuracies, and the head map.

Same style helpers as the text views (:mod:`attnviz.render.common`, :mod:`attnviz.render.text`): a
:class:`~attnviz.render.common.Frame` laid out in inches for a
:class:`~attnviz.render.layout.Style` (``style=``: size, dpi, fonts, colour map, display label),
titles/subtitles with the model's display label, colour bars, and metadata in the saved files.
Each function returns a matplotlib Figure and does no I/O.
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from attnviz.analysis.headstats import DEFINITIONS, LABELS
from attnviz.render.common import (
    ATTENTION_CMAP, FOCUS_COLOR, Frame, add_colorbar, clamp, layer_head_axes, probability_norm, short_weight, text_color_on,
)
from attnviz.render.layout import DEFAULT_STYLE, Style
from attnviz.render.text import _finish, _titles_for

#: Short colour bar labels for print sizes (the title names the statistic).
SHORT = {
    "first": "probability", "sep_eos": "probability", "punct": "probability", "entropy_ratio": "ratio",
    "prev": "share of queries", "same": "share of queries", "next": "share of queries", "probe_accuracy": "accuracy",
}


def _corpus_note(result) -> str:
    s = result.sums
    units = "words (pieces merged: to = sum, from = mean)" if result.settings.words else "tokens"
    return f"corpus {result.corpus}: {s.examples:,} examples, {s.tokens:,} tokens; units: {units}"


def statistic_view(result, name: str, style: Style | None = None) -> Figure:
    """A layers x heads heatmap of one statistic, the 3 most distinctive heads outlined.

    Each cell is annotated with its value where the values fit at the style's
    size; otherwise (narrow figures, many heads) the three outlined heads carry
    their rank 1-3 and the subtitle lists their values (every value: ``heads.json``).

    Args:
        result: :class:`attnviz.pipelines.headstats_engine.HeadsResult`.
        name: one of :data:`attnviz.analysis.headstats.STATISTICS`, or ``"probe_accuracy"`` (needs probes).
        style: size, dpi, fonts, colour map and display label (default: screen).

    The image data is float64 ``[layers, heads]``; probabilities and shares use a
    0-1 scale, entropy (nats) and distance (tokens/words) 0 to their maximum.
    """
    style = style or DEFAULT_STYLE
    if name == "probe_accuracy":
        values = result.probes.accuracy
    else:
        values = result.stats[name]
    what, unit = LABELS[name]
    if unit == "tokens" and result.settings.words:
        unit = "words"
    L, H = values.shape
    compact = False
    if style.print_size:
        width = style.width(0)
        fonts = style.fonts(width)
        compact = style.compact(width)
        font = tick = fonts.small
        label_font = fonts.text
        left = 0.1 + label_font * 1.3 / 72 + tick * 0.62 * (len(str(L - 1)) + (0 if compact else 1)) / 72 + 0.06
        cb_room = 0.72 if compact else 0.85
        cw = (width - left - cb_room) / H
        ch = clamp(cw * 0.75, font * 1.5 / 72, 0.45)
        if cw * 72 >= font * 0.62 * 4 + 2:  # values fit across: make the rows tall enough for them too
            ch = max(ch, font * 1.5 / 72)
    else:
        fonts = style.fonts(None)
        cw = clamp(15.0 / H, 0.5, 0.85)
        ch = clamp(12.0 / L, 0.34, 0.52)
        font = clamp(cw * 10.5, 6.0, 8.5)
        tick = None
        label_font = 9.0
        left = 0.75
        width = max(left + H * cw + 1.4, 7.0)
        cb_room = 1.4
    plot_w, natural_h = H * cw, L * ch
    finite = values[np.isfinite(values)]
    vmax = 1.0 if unit is None else (float(finite.max()) if finite.size and finite.max() > 0 else 1.0)
    cells = [[_fmt(float(v), unit, short=True) if np.isfinite(v) else "–" for v in row] for row in values]
    longest = max((len(c) for row in cells for c in row), default=3)
    annotate = cw * 72 >= font * 0.62 * longest + 2 and ch * 72 >= font * 1.25
    top = result.distinctive(name, 3)
    notes = [f"cell: {DEFINITIONS[name]}", _corpus_note(result)]
    order = "lowest" if name in ("entropy", "entropy_ratio") else "highest"
    notes.append(f"{order}{'' if annotate else ' (numbers 1-3; all values: heads.json)'}: "
                 + "; ".join(f"L{l} H{h} {_fmt(v, unit)}" for l, h, v in top))
    if name == "probe_accuracy":
        p = result.probes
        notes.append(f"{len(p.probes)} probes; baselines: most recent earlier word {p.baselines['recent_word']:.2f}, "
                     f"first word {p.baselines['first_word']:.2f}")
    titles = _titles_for(style, width, "Heads", result, what + (f" ({unit})" if unit else ""), "all layers and heads", notes)
    tick_h = (tick if tick is not None else clamp(font + 0.5, 6, 8)) * 1.3 / 72
    if style.print_size:
        top_in = titles.height_in() + tick_h + label_font * 1.3 / 72 + 0.08
        height, plot_h = style.height(top_in + 0.12, natural_h if style.height_in is not None else max(natural_h, 1.0))
        ch = plot_h / L
        cb_h = plot_h
    else:
        top_in = titles.height_in() + 0.5
        plot_h = natural_h
        cb_h = clamp(plot_h, 2.2, 5.0)
        height = top_in + max(plot_h, cb_h) + 0.25
    frame = Frame(width, height, style.resolution)
    frame.titles(titles)
    ax = frame.axes(left, top_in, plot_w, plot_h)
    cmap, norm = style.colormap(ATTENTION_CMAP), probability_norm(vmax)
    data = np.ma.masked_invalid(values.astype(np.float64))
    img = ax.imshow(data, cmap=cmap, norm=norm, aspect="auto", interpolation="nearest")
    img.set_gid(f"stat-{name}")
    layer_head_axes(ax, L, H, font, ch, cell_w=cw, tick_font=tick, label_font=label_font, prefix=not compact)
    if annotate:
        for l in range(L):
            for h in range(H):
                v = float(values[l, h])
                if not np.isfinite(v):
                    ax.text(h, l, "–", ha="center", va="center", fontsize=font, color="#777777")
                    continue
                ax.text(h, l, cells[l][h], ha="center", va="center", fontsize=font, color=text_color_on(cmap, norm, min(v, vmax)))
    else:
        for rank, (l, h, v) in enumerate(top, 1):
            ax.text(h, l, str(rank), ha="center", va="center", fontsize=font, fontweight="bold",
                    color=text_color_on(cmap, norm, min(v, vmax) if np.isfinite(v) else 0.0))
    for l, h, _ in top:
        ax.add_patch(Rectangle((h - 0.5, l - 0.5), 1, 1, facecolor="none", edgecolor=FOCUS_COLOR,
                               linewidth=2.0 if not compact else 1.2, zorder=3))
    if style.print_size:
        label = SHORT.get(name, unit or what)
        if unit is not None:
            label = unit
        add_colorbar(frame, img, left + plot_w + 0.12, top_in, max(cb_h, 0.6), label, width_in=0.12, fontsize=fonts.small)
    else:
        add_colorbar(frame, img, left + plot_w + 0.25, top_in, cb_h, what if unit is None else f"{unit}")
    return _finish(frame, style, f"heads: {name}", result, titles, {"statistic": name, "corpus": result.corpus,
                                                                     "words": result.settings.words})


def _fmt(v: float, unit: str | None, short: bool = False) -> str:
    if unit is None:
        return short_weight(v) if short else f"{v:.2f}"
    return f"{v:.1f}" if short and v >= 10 else f"{v:.2f}"


def _place_labels(xy_in: np.ndarray, texts: list[str], font: float, room: tuple[float, float], radius_pt: float = 3.0) -> list[int]:
    """Indices of the point labels that can be drawn legibly: each label starts 3 pt right of and 2 pt above
    its point (``xy_in``: points in inches from the plot's bottom-left); a label that would overlap a label
    already placed or another point (a marker of ``radius_pt``), or leave the ``room`` (width, height in
    inches), is left out."""
    boxes: list[tuple[float, float, float, float]] = []
    keep = []
    r = radius_pt / 72
    for i, ((x, y), s) in enumerate(zip(xy_in, texts)):
        x0 = x + 3 / 72
        y0 = y + (2 - 0.3 * font) / 72
        box = (x0, y0, x0 + len(s) * font * 0.7 / 72, y0 + 1.25 * font / 72)
        if box[2] > room[0] or box[3] > room[1] or box[1] < 0:
            continue
        if any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in boxes):
            continue
        others = np.delete(xy_in, i, axis=0)
        if len(others) and np.any((others[:, 0] + r > box[0]) & (others[:, 0] - r < box[2])
                                  & (others[:, 1] + r > box[1]) & (others[:, 1] - r < box[3])):
            continue
        boxes.append(box)
        keep.append(i)
    return keep


def head_map_view(result, style: Style | None = None) -> Figure:
    """The head map: every head placed in 2-D by metric MDS on the mean Jensen–Shannon distances between
    heads' attention rows (Clark et al. 2019, Figure 6); colour = layer, each point labelled ``L{layer}H{head}``
    where the labels do not collide (the subtitle says when some are left out).

    Data: ``result.coords`` float64 ``[layers * heads, 2]`` (head ``i`` is layer ``i // heads``).

    Args:
        result: :class:`attnviz.pipelines.headstats_engine.HeadsResult`.
        style: size, dpi, fonts, colour map (of the layers) and display label (default: screen).
    """
    style = style or DEFAULT_STYLE
    L, H = result.num_layers, result.num_heads
    xy = np.asarray(result.coords, dtype=np.float64)
    width = style.width(8.0)
    fonts = style.fonts(width)
    compact = style.compact(width)
    st = result.settings
    notes = [
        f"distance between two heads: mean Jensen–Shannon distance sqrt(JSD) of their attention rows over "
        f"{result.sums.js_rows:,} sampled queries ({st.cluster_queries} per example in 1 of {st.cluster_every}; "
        "definition in heads.json); placed by metric MDS: nearby heads attend alike",
        _corpus_note(result),
    ]
    names = [f"L{i // H}H{i % H}" for i in range(L * H)]
    legend_font = fonts.small if style.print_size else 8.0
    if style.print_size:
        font = fonts.small
        col_w = legend_font * 0.62 * max(5, len(str(L - 1)) + 4) / 72  # marker and number, or the title "layer"
        x0 = 0.1
    else:
        font = clamp(9.0 - 0.02 * L * H, 6.0, 7.0)
        col_w = 1.2
        x0 = 0.5
    # the legend: one column of layers, more where they would not fit beside the plot
    rows_fit = max(1, int((width - x0 - col_w - 0.2) * 72 / (legend_font * 1.9)) - 1)
    ncol = max(1, -(-L // rows_fit))
    legend_w = 0.1 + ncol * col_w + 0.1
    natural_side = max(min(width - x0 - legend_w, 6.0 if not style.print_size else width), 1.0)
    margin = 0.08  # inches between the points and the plot's edges
    marker = 28 if not compact else 14  # scatter marker area, pt^2
    marker_r = float(np.sqrt(marker)) / 2 + 0.5

    def layout(side: float) -> tuple[list[int], tuple[float, float, float]]:
        """The labels kept on a ``side``-inch plot, and ``(x of the left edge, y of the bottom edge, data units per inch)``."""
        label_w = max((len(s) for s in names), default=4) * font * 0.7 / 72 + 3 / 72
        label_h = (2 + 1.0 * font) / 72
        span_x = float(np.ptp(xy[:, 0])) if xy.size else 0.0
        span_y = float(np.ptp(xy[:, 1])) if xy.size else 0.0
        usable = max(side - 2 * margin - max(label_w, label_h), 0.2)
        upi = max(span_x, span_y, 1e-9) / usable  # data units per inch
        if span_x == 0 and span_y == 0:
            upi = 1.0
        cx = (xy[:, 0].min() if xy.size else 0.0) - margin * upi
        # vertically: the points and the labels above them centred
        cy = (xy[:, 1].min() if xy.size else 0.0) - max((side * upi - span_y - label_h * upi) / 2, margin * upi)
        xy_in = np.stack([(xy[:, 0] - cx) / upi, (xy[:, 1] - cy) / upi], 1) if xy.size else np.zeros((0, 2))
        return _place_labels(xy_in, names, font, (side, side), marker_r), (cx, cy, upi)

    kept, geo = layout(natural_side)
    crowded = "labels of crowded heads left out (every head's position: heads.json)"
    for attempt in range(2):
        shown_notes = notes + ([crowded] if len(kept) < len(names) else [])
        titles = _titles_for(style, width, "Head map", result, f"{L * H} heads", "all layers and heads", shown_notes)
        top_in = titles.height_in() + 0.12
        height, side = style.height(top_in + 0.15, natural_side, min_plot=0.8)
        side = min(side, natural_side)
        if side == natural_side or attempt == 1:
            break
        kept, geo = layout(side)
    if side != natural_side:
        kept, geo = layout(side)
    cx, cy, upi = geo
    frame = Frame(width, height, style.resolution)
    frame.titles(titles)
    ax = frame.axes(x0, top_in, side, side)
    cmap = style.colormap("viridis")
    colors = [cmap(l / max(1, L - 1)) for l in range(L)]
    for l in range(L):
        pts = xy[l * H : (l + 1) * H]
        ax.scatter(pts[:, 0], pts[:, 1], s=marker, color=colors[l], edgecolor="black", linewidth=0.4, label=str(l), zorder=2)
    for i in kept:
        x, y = xy[i]
        ax.annotate(names[i], (x, y), xytext=(3, 2), textcoords="offset points", fontsize=font, color="#333333", zorder=3)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlim(cx, cx + side * upi)
    ax.set_ylim(cy, cy + side * upi)
    legend = ax.legend(loc="upper left", bbox_to_anchor=(1.0 + 0.1 / side, 1.0), fontsize=legend_font, frameon=False,
                       title="layer", title_fontsize=legend_font, ncol=ncol, handletextpad=0.2, columnspacing=0.6,
                       borderaxespad=0.0, markerscale=0.8)
    legend.set_gid("legend")
    ax.collections[0].set_gid("heads")
    return _finish(frame, style, "head map", result, titles, {"corpus": result.corpus, "words": st.words,
                                                              "cluster_queries": st.cluster_queries,
                                                              "cluster_every": st.cluster_every})

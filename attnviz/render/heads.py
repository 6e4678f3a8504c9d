"""Views of ``attnviz heads``: one layers x heads heatmap per statistic, the probe accuracies, and the head map.

Same style helpers as the text views (:mod:`attnviz.render.common`): a
:class:`~attnviz.render.common.Frame` laid out in inches, titles/subtitles from
:func:`~attnviz.render.common.make_titles`, the attention colour map and colour bars.
Each function returns a matplotlib Figure and does no I/O.
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from attnviz.analysis.corpus import DEFINITIONS
from attnviz.render.layout import DEFAULT_STYLE
from attnviz.render.common import (
    FOCUS_COLOR, Frame, add_colorbar, attention_cmap, clamp, layer_head_axes, make_titles, probability_norm, short_weight,
    text_color_on,
)

#: Display name and unit of each statistic; ``None`` unit = a probability or share in [0, 1].
LABELS = {
    "first": ("attention to the first token ([CLS]/BOS)", None),
    "sep_eos": ("attention to [SEP]/EOS", None),
    "punct": ("attention to punctuation", None),
    "entropy": ("row entropy", "nats"),
    "entropy_ratio": ("row entropy / uniform entropy", None),
    "prev": ("share of queries attending most to the previous token", None),
    "same": ("share of queries attending most to themselves", None),
    "next": ("share of queries attending most to the next token", None),
    "distance": ("mean attention distance", "tokens"),
    "probe_accuracy": ("probe accuracy of the head's link", None),
}


def _corpus_note(result) -> str:
    s = result.sums
    units = "words (pieces merged: to = sum, from = mean)" if result.settings.words else "tokens"
    return f"corpus {result.corpus}: {s.examples:,} examples, {s.tokens:,} tokens; units: {units}"


def statistic_view(result, name: str) -> Figure:
    """A layers x heads heatmap of one statistic, each cell annotated with its value; the 3 most distinctive heads outlined.

    Args:
        result: :class:`attnviz.heads.HeadsResult`.
        name: one of :data:`attnviz.analysis.corpus.STATISTICS`, or ``"probe_accuracy"`` (needs probes).

    The image data is float64 ``[layers, heads]``; probabilities and shares use a
    0-1 scale, entropy (nats) and distance (tokens/words) 0 to their maximum.
    """
    if name == "probe_accuracy":
        values = result.probes.accuracy
    else:
        values = result.stats[name]
    what, unit = LABELS[name]
    if unit == "tokens" and result.settings.words:
        unit = "words"
    L, H = values.shape
    cw = clamp(15.0 / H, 0.5, 0.85)
    ch = clamp(12.0 / L, 0.34, 0.52)
    font = clamp(cw * 10.5, 5.0, 8.5)
    plot_w, plot_h = H * cw, L * ch
    left = 0.75
    width = max(left + plot_w + 1.4, 7.0)
    finite = values[np.isfinite(values)]
    vmax = 1.0 if unit is None else (float(finite.max()) if finite.size and finite.max() > 0 else 1.0)
    notes = [f"cell: {DEFINITIONS[name]}", _corpus_note(result)]
    top = result.distinctive(name, 3)
    order = "lowest" if name in ("entropy", "entropy_ratio") else "highest"
    notes.append(f"{order}: " + "; ".join(f"L{l} H{h} {_fmt(v, unit)}" for l, h, v in top))
    if name == "probe_accuracy":
        p = result.probes
        notes.append(f"{len(p.probes)} probes; baselines: most recent earlier word {p.baselines['recent_word']:.2f}, "
                     f"first word {p.baselines['first_word']:.2f}")
    titles = make_titles("Heads", result.model_id, what + (f" ({unit})" if unit else ""), "all layers and heads", notes, width)
    top_in = titles.height_in() + 0.5
    cb_h = clamp(plot_h, 2.2, 5.0)
    frame = Frame(width, top_in + max(plot_h, cb_h) + 0.25, DEFAULT_STYLE.resolution)
    frame.titles(titles)
    ax = frame.axes(left, top_in, plot_w, plot_h)
    cmap, norm = attention_cmap(), probability_norm(vmax)
    data = np.ma.masked_invalid(values.astype(np.float64))
    img = ax.imshow(data, cmap=cmap, norm=norm, aspect="auto", interpolation="nearest")
    img.set_gid(f"stat-{name}")
    layer_head_axes(ax, L, H, font, ch)
    for l in range(L):
        for h in range(H):
            v = float(values[l, h])
            if not np.isfinite(v):
                ax.text(h, l, "–", ha="center", va="center", fontsize=font, color="#777777")
                continue
            ax.text(h, l, _fmt(v, unit, short=True), ha="center", va="center", fontsize=font,
                    color=text_color_on(cmap, norm, min(v, vmax)))
    for l, h, _ in top:
        ax.add_patch(Rectangle((h - 0.5, l - 0.5), 1, 1, facecolor="none", edgecolor=FOCUS_COLOR, linewidth=2.0, zorder=3))
    add_colorbar(frame, img, left + plot_w + 0.25, top_in, cb_h, what if unit is None else f"{unit}")
    return frame.figure


def _fmt(v: float, unit: str | None, short: bool = False) -> str:
    if unit is None:
        return short_weight(v) if short else f"{v:.2f}"
    return f"{v:.1f}" if short and v >= 10 else f"{v:.2f}"


def head_map_view(result) -> Figure:
    """The head map: every head placed in 2-D by metric MDS on the mean Jensen–Shannon distances between
    heads' attention rows (Clark et al. 2019, Figure 6); colour = layer, each point labelled ``L{layer}H{head}``.

    Data: ``result.coords`` float64 ``[layers * heads, 2]`` (head ``i`` is layer ``i // heads``).
    """
    import matplotlib

    L, H = result.num_layers, result.num_heads
    xy = np.asarray(result.coords, dtype=np.float64)
    width = 8.0
    st = result.settings
    notes = [
        f"distance between two heads: mean Jensen–Shannon distance sqrt(JSD) of their attention rows over "
        f"{result.sums.js_rows:,} sampled queries ({st.cluster_queries} per example in 1 of {st.cluster_every}; "
        "definition in heads.json); placed by metric MDS: nearby heads attend alike",
        _corpus_note(result),
    ]
    titles = make_titles("Head map", result.model_id, f"{L * H} heads", "all layers and heads", notes, width)
    top_in = titles.height_in() + 0.2
    side = 6.0
    frame = Frame(width, top_in + side + 0.5, DEFAULT_STYLE.resolution)
    frame.titles(titles)
    ax = frame.axes(0.5, top_in, side, side)
    cmap = matplotlib.colormaps["viridis"]
    colors = [cmap(l / max(1, L - 1)) for l in range(L)]
    for l in range(L):
        pts = xy[l * H : (l + 1) * H]
        ax.scatter(pts[:, 0], pts[:, 1], s=28, color=colors[l], edgecolor="black", linewidth=0.4, label=str(l), zorder=2)
    font = clamp(9.0 - 0.02 * L * H, 4.5, 7.0)
    span = float(np.ptp(xy[:, 0])) if xy.size else 1.0
    for i, (x, y) in enumerate(xy):
        ax.annotate(f"L{i // H}H{i % H}", (x, y), xytext=(3, 2), textcoords="offset points", fontsize=font, color="#333333", zorder=3)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_aspect("equal", adjustable="datalim")
    if span == 0:
        ax.set_xlim(-1, 1)
    legend = ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False, title="layer", title_fontsize=8)
    legend.set_gid("legend")
    ax.collections[0].set_gid("heads")
    return frame.figure

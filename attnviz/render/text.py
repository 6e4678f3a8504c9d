"""Static views of a text model's attention: head view, model view, focus view and matrix view.

Every function takes a :class:`~attnviz.types.TextAttention` (from
:func:`attnviz.attend_text`) and returns a :class:`matplotlib.figure.Figure`
built without pyplot; the caller saves it (``fig.savefig("out.png")``).

Conventions shared by all views:

- Layers and heads are 0-based, as in transformers. ``head=None`` means the
  mean of the layer's heads (taken on the raw probabilities, before words are
  merged or special tokens hidden).
- ``kind`` picks the attention: ``"self"`` (single-stack models; on an
  encoder-decoder model it means ``"encoder"``), ``"encoder"`` (source ->
  source), ``"decoder"`` (target -> target, causal) or ``"cross"`` (queries:
  target tokens, keys: source tokens).
- What a view shows is set by :class:`~attnviz.analysis.select.ViewSpec`
  (word pieces or words; special tokens shown, or hidden with rows
  renormalised); the subtitle says which, in ``ViewSpec.describe()``'s words.
- Values are attention probabilities (each query row sums to 1). Under a causal
  mask the cells a query may not attend to (later keys) are masked and drawn
  hatched, never as a 0-valued colour.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from matplotlib.collections import LineCollection
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from attnviz.analysis.select import ViewSpec, prepare
from attnviz.analysis.words import Units
from attnviz.errors import UsageError
from attnviz.analysis.focus import Focus
from attnviz.render.common import (
    ATTENTION_CMAP,
    FOCUS_COLOR,
    MISSING_COLOR,
    Frame,
    add_colorbar,
    block_reduce,
    clamp,
    hatch_behind,
    kv_heads_note,
    layer_head_text,
    make_titles,
    probability_norm,
    safe_label,
    short_weight,
    spread_positions,
    scale_label,
    text_color_on,
    wrap,
)
from attnviz.render.layout import (
    DEFAULT_STYLE, MIN_FONT_PT, Style, attach_metadata, max_chars, scale_note, thin_step, thinned, with_fonts,
)
from attnviz.types import CROSS, DECODER, ENCODER, SELF, AttentionMaps, TextAttention, TokenInfo

__all__ = ["head_view", "model_view", "focus_view", "matrix_view", "maps_for", "causal_mask", "head_view_links"]

#: Above this many units (tokens or words) a head view draws only the top-k links per query.
LONG_UNITS = 60
#: Default links per query for long inputs.
LONG_TOP_K = 3
#: Above this many units a matrix view labels tick positions (every n-th index) instead of tokens.
MATRIX_LABEL_LIMIT = 120
#: Links lighter than this probability are not drawn in the head view (they would be invisible).
MIN_LINK = 0.005

_KIND_TEXT = {
    SELF: "self-attention",
    ENCODER: "encoder self-attention (source -> source)",
    DECODER: "decoder self-attention (target -> target)",
    CROSS: "cross-attention (queries: target tokens, keys: source tokens)",
}
_LINK_COLOR = "#1f5fa8"
_FADED_COLOR = "#8c8c8c"


# ---------------------------------------------------------------------------
# data helpers


def maps_for(result: TextAttention, kind: str = SELF) -> tuple[AttentionMaps, TokenInfo, TokenInfo]:
    """``(maps, query_info, key_info)`` of ``kind``: see :meth:`attnviz.types.TextAttention.sides`."""
    return result.sides(kind)


def _layer_tensor(maps: AttentionMaps, layer: int) -> torch.Tensor:
    """float32 ``[heads, query, key]`` of ``layer``; UsageError if the capture plan did not keep it."""
    layer = maps.check_layer(layer)
    try:
        return maps.layer(layer)
    except KeyError:
        kept = ", ".join(map(str, sorted(maps.layers))) or "none"
        raise UsageError(f"layer {layer} was not captured (the capture kept layers: {kept}); capture it in full or pick a kept layer") from None


def causal_mask(query_units: Units, key_units: Units) -> np.ndarray:
    """bool ``[Q_units, K_units]``: True where a query may not attend to a key under a causal mask.

    A key unit is masked for a query unit when all its tokens come after all the
    query unit's tokens (for merged words: a word may attend to its own pieces).
    """
    q_last = np.array([max(g) for g in query_units.groups])
    k_first = np.array([min(g) for g in key_units.groups])
    return k_first[None, :] > q_last[:, None]


def _focus_unit(units: Units, focus: tuple[int, ...], side: str = "query") -> int:
    """Index of the unit (word or token) that holds the first focus token; UsageError if it is hidden or out of range."""
    if not focus:
        raise UsageError("the focus token is empty")
    for i, g in enumerate(units.groups):
        if focus[0] in g:
            return i
    raise UsageError(
        f"the focus token (position {focus[0]}) is not among the {side} tokens shown"
        " (a special token hidden by --hide-special, or a position past the input)"
    )


def _kind_name(result: TextAttention, kind: str) -> str:
    return ENCODER if kind == SELF and SELF not in result.attention and ENCODER in result.attention else kind


def _notes(result: TextAttention, maps: AttentionMaps, kind: str, spec: ViewSpec, extra: list[str] | None = None,
           hatched: bool = False) -> list[str]:
    values = "attention probabilities renormalised over the tokens shown" if spec.hide_special else "attention probabilities"
    notes = [f"{_KIND_TEXT.get(_kind_name(result, kind), kind)}; values: {values}"]
    if maps.causal:
        notes.append("causal mask: each token attends only to itself and earlier tokens" + ("; hatched cells: not allowed" if hatched else ""))
    if result.dropped_tokens is None:
        notes.append(f"input truncated: only its first {len(result.tokens)} tokens are shown")
    elif result.dropped_tokens:
        notes.append(f"input truncated: the last {result.dropped_tokens} tokens were dropped")
    return notes + list(extra or [])


def _head_map(maps: AttentionMaps, layer: int, head: int | None) -> tuple[int, int | None, torch.Tensor]:
    """``(layer, head, map [Q, K])``: one head's map, or the head mean (``head`` None), from a per-head
    capture (``maps.head_maps``) when it holds that map, else from the layer's ``[H, Q, K]``."""
    layer = maps.check_layer(layer)
    head = None if head is None else maps.check_head(head)
    kept = getattr(maps, "head_maps", None) or {}
    if (layer, head) in kept:
        return layer, head, kept[(layer, head)]
    lt = _layer_tensor(maps, layer)
    return layer, head, (lt.mean(dim=0) if head is None else lt[head])


def _titles_for(style: Style, width: float, view: str, result, what: str, spec: ViewSpec | str, notes: list[str]):
    """Title (view, the model's display label, ``what``) and subtitle (``spec.describe()`` or a settings string, then
    ``notes``) in the style's fonts for a figure ``width`` inches wide; ``result`` is any result with a ``model_id``
    (text, generation, heads)."""
    settings = spec if isinstance(spec, str) else spec.describe()
    return make_titles(view, style.model_label(result.model_id), what, settings, notes, width, fonts=style.fonts(width))


def _finish(frame: Frame, style: Style, view: str, result, titles, settings: dict) -> Figure:
    """Attach the figure's metadata (title, display label, style, ``view``, ``settings``) and return it."""
    attach_metadata(frame.figure, titles.title, style.model_label(result.model_id), style, view, settings)
    return frame.figure


# ---------------------------------------------------------------------------
# head view


def head_view_links(w: np.ndarray, mask: np.ndarray | None, top_k: int, skip_query: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The links a head view draws for a ``[Q_units, K_units]`` map ``w``: ``(queries, keys, weights)``.

    With ``top_k`` below the number of keys, the ``top_k`` strongest keys of each
    query; else every link of at least :data:`MIN_LINK`. Links ruled out by a
    causal ``mask`` and the links of ``skip_query`` (drawn separately, as the
    focus) are left out.
    """
    nq, nk = w.shape
    if top_k < nk:  # row blocks: never a [Q, K] index array for a long input
        idx = np.empty((nq, top_k), dtype=np.int64)
        for r0 in range(0, nq, 256):
            idx[r0 : r0 + 256] = np.argpartition(-w[r0 : r0 + 256], top_k - 1, axis=1)[:, :top_k]
    else:
        idx = np.broadcast_to(np.arange(nk), (nq, nk))
    qs = np.repeat(np.arange(nq), idx.shape[1])
    ks = idx.reshape(-1)
    vals = w[qs, ks]
    keep = (qs != (skip_query if skip_query is not None else -1)) & (vals >= (0.0 if top_k < nk else MIN_LINK))
    if mask is not None:
        keep &= ~mask[qs, ks]
    return qs[keep], ks[keep], np.clip(vals[keep], 0.0, 1.0)


@with_fonts
def head_view(
    result: TextAttention,
    layer: int,
    head: int | None,
    spec: ViewSpec,
    focus: tuple[int, ...] | None = None,
    kind: str = SELF,
    top_k: int | None = None,
    style: Style = DEFAULT_STYLE,
) -> Figure:
    """Token-link graph of one head (a static bertviz head view).

    Queries are listed on the left, keys on the right; a line joins each query to
    each key with opacity and width proportional to the attention probability
    (links under 0.005 are not drawn). With ``focus`` (the token indices from
    :func:`~attnviz.analysis.select.find_focus`, on the query side) the focus
    unit's links are drawn on top in red (width proportional to the weight,
    opacity relative to its strongest link), the rest faded, and the weights of
    its strongest targets are printed after their labels. Under a causal mask the
    keys the focus may not attend to are greyed.

    Collections carry gids: ``"links"`` (all other links) and ``"focus-links"``;
    label texts ``"q{i}"`` / ``"k{i}"`` for query / key unit ``i``.

    Args:
        result: from :func:`attnviz.attend_text`; ``maps.layer(layer)`` is float32
            ``[heads, query_tokens, key_tokens]`` probabilities.
        layer: 0-based layer (negative counts from the end).
        head: 0-based head, or None for the mean of the layer's heads.
        spec: words or word pieces; special tokens hidden (rows renormalised) or not.
        focus: token positions of the focus token, or None; the view uses the
            unit (word or token) that holds ``focus[0]``.
        kind: ``"self"``, ``"encoder"``, ``"decoder"`` or ``"cross"``.
        top_k: links drawn per query (the strongest ones); default: all up to 60
            units, 3 above (the links drawn then have an opacity of at least 0.04).
            Labels are thinned (every n-th, with its index) when they no longer
            fit at the style's text size.
        style: size, dpi and fonts (:class:`attnviz.render.layout.Style`).

    Returns:
        A Figure ``style.width(8)`` inches wide.

    Raises:
        UsageError: bad kind, layer or head, layer not captured, ``top_k < 1``,
            focus token hidden or out of range.
    """
    maps, query_info, key_info = maps_for(result, kind)
    layer, head, attn = _head_map(maps, layer, head)
    vm = prepare(attn, query_info, key_info, spec)
    w = vm.attn.numpy()
    nq, nk = w.shape
    n = max(nq, nk)
    if top_k is not None and top_k < 1:
        raise UsageError(f"--top-k must be at least 1, not {top_k}")
    long_input = n > LONG_UNITS
    if top_k is None:
        top_k = LONG_TOP_K if long_input else nk
    top_k = min(top_k, nk)
    fq = _focus_unit(vm.query_units, focus) if focus else None
    mask = causal_mask(vm.query_units, vm.key_units) if maps.causal else None

    # --- geometry (inches)
    width = style.width(8.0)
    fonts = style.fonts(width)
    compact = style.compact(width)
    per_unit = 0.22 if width >= 7.5 else (0.16 if not compact else 0.125)
    natural_h = clamp(per_unit * n, 1.2, 16.0 if width >= 7.5 else (9.0 if not compact else 5.5))
    label_w = clamp(width * 0.25, 0.85, 1.9)
    side = 0.2 if not compact else 0.06
    mid = width - 2 * (label_w + side)
    notes = []
    if top_k < nk:
        notes.append(f"strongest {top_k} link{'s' if top_k > 1 else ''} per query shown (of {nk} keys)")
    link_note = "line opacity and width ∝ attention probability"
    if fq is not None:
        link_note += f"; red: links of '{safe_label(vm.query_units.labels[fq], 20)}' (opacity relative to its strongest link)"
    notes.append(link_note)
    what = layer_head_text(layer, head) + (f" (mean of {maps.num_heads} heads)" if head is None else "")
    titles = _titles_for(style, width, "Head view", result, what, spec, _notes(result, maps, kind, spec, notes))
    top = titles.height_in() + fonts.small * 1.6 / 72 + 0.1
    height, plot_h = style.height(top + 0.15, natural_h)
    frame = Frame(width, height, style.resolution)
    frame.titles(titles)
    ax = frame.axes(side + label_w, top, mid, plot_h)
    ax.set_axis_off()
    ax.set_xlim(0.0, 1.0)
    span = float(max(n - 1, 1))
    pad = 0.5 * span / max(n - 1, 1)
    ax.set_ylim(span + pad, -pad)
    yq = np.linspace(0, span, nq) if nq > 1 else np.array([span / 2])
    yk = np.linspace(0, span, nk) if nk > 1 else np.array([span / 2])
    x0, x1 = 0.0, 1.0

    # --- links
    qs, ks, vals = head_view_links(w, mask, top_k, fq)
    segs = np.stack([np.stack([np.full(len(qs), x0), yq[qs]], 1), np.stack([np.full(len(qs), x1), yk[ks]], 1)], 1)
    colors = np.tile(np.array(to_rgba(_FADED_COLOR if fq is not None else _LINK_COLOR)), (len(vals), 1))
    alpha = np.maximum(vals, 0.04) if top_k < nk else vals
    colors[:, 3] = alpha * (0.3 if fq is not None else 1.0)
    lw_scale = 1.0 if not compact else 0.6
    lines = LineCollection(segs, colors=colors, linewidths=(0.3 + 2.7 * vals) * lw_scale, zorder=1, capstyle="round")
    lines.set_gid("links")
    ax.add_collection(lines)

    key_suffix: dict[int, str] = {}
    if fq is not None:
        row = np.where(mask[fq], 0.0, w[fq]) if mask is not None else w[fq]
        order = np.argsort(-row, kind="stable")
        chosen = [int(k) for k in order[: max(top_k, 10)] if row[k] > 0]
        fw = np.clip(row[chosen], 0.0, 1.0)
        top_w = float(fw.max()) if len(fw) else 1.0
        fcol = np.tile(np.array(to_rgba(FOCUS_COLOR)), (len(chosen), 1))
        fcol[:, 3] = 0.12 + 0.88 * fw / max(top_w, 1e-12)
        flines = LineCollection(
            [((x0, yq[fq]), (x1, yk[k])) for k in chosen], colors=fcol, linewidths=(0.8 + 4.0 * fw) * lw_scale, zorder=3,
            capstyle="round",
        )
        flines.set_gid("focus-links")
        ax.add_collection(flines)
        key_suffix = {int(k): short_weight(float(row[k])) for k in order[:3] if row[k] >= 0.01}

    # --- labels
    hdr = 0.08 / plot_h
    ax.text(0.0, 1 + hdr, "query" if compact else "query (attends from)", transform=ax.transAxes, ha="right", va="bottom",
            fontsize=fonts.small, color="#555555", style="italic")
    ax.text(1.0, 1 + hdr, "key" if compact else "key (attended to)", transform=ax.transAxes, ha="left", va="bottom",
            fontsize=fonts.small, color="#555555", style="italic")
    ylim = (span + pad, -pad)
    label_pt = (label_w + side - 0.04) * 72
    qlabels = _column_labels(ax, vm.query_units, yq, x0, "right", plot_h * 72, ylim, {fq: ""} if fq is not None else {},
                             fonts.text, label_pt)
    klabels = _column_labels(ax, vm.key_units, yk, x1, "left", plot_h * 72, ylim, key_suffix, fonts.text, label_pt)
    if fq is not None:
        t = qlabels[fq]
        t.set_color(FOCUS_COLOR)
        t.set_fontweight("bold")
        t.set_bbox(dict(boxstyle="round,pad=0.1", fc=FOCUS_COLOR, alpha=0.15, ec="none"))
    for k, t in klabels.items():
        if k in key_suffix:
            t.set_fontweight("bold")
            t.set_color(FOCUS_COLOR)
        elif fq is not None and mask is not None and mask[fq, k]:
            t.set_color("#bdbdbd")  # the focus may not attend here (causal mask)
    return _finish(frame, style, "head view", result, titles, {"layer": layer, "head": head, "kind": kind, "words": spec.words,
                                                                "hide_special": spec.hide_special, "top_k": top_k})


def _column_labels(ax, units: Units, ys: np.ndarray, x_line: float, ha: str, height_pt: float, ylim: tuple[float, float],
                   always: dict[int, str], size: float = 8.0, width_pt: float = 130.0) -> dict[int, object]:
    """Draw one column of labels next to the link ends at ``x_line``.

    Every unit is labelled at ``size`` points if the labels fit (a pitch of 1.3
    lines); otherwise every n-th unit (with its index) plus the units in
    ``always`` (the focus and its targets), which are moved apart if they would
    overlap (a short leader line joins a moved label to its link end). ``always``
    maps a unit to a suffix (its weight). Labels are cut to ``width_pt`` points.
    Returns ``{unit: Text}``.
    """
    n = len(units)
    pitch = height_pt / max(n, 1)
    dpp = abs(ylim[0] - ylim[1]) / height_pt  # data units per point
    gap = 0.018 if ha == "left" else -0.018
    x = x_line + gap
    texts: dict[int, object] = {}
    chars = max_chars(width_pt - 2, size * 1.08)  # bold labels are a little wider

    def text_of(i: int, indexed: bool) -> str:
        suffix = always.get(i, "")
        room = chars - (len(suffix) + 2 if suffix else 0) - (len(str(i)) + 1 if indexed else 0)
        lab = safe_label(units.labels[i], max(3, min(14, room)))
        if indexed:
            lab = f"{i} {lab}" if ha == "left" else f"{lab} {i}"
        return f"{lab}  {suffix}" if suffix else lab

    min_gap = size * 1.3 * dpp
    if pitch >= size * 1.3:
        placed = {i: ys[i] for i in range(n)}
        indexed = False
    else:
        step = thin_step(n, height_pt, size * 1.8)
        indexed = True
        special = sorted(always)
        moved = spread_positions([ys[i] for i in special], min_gap, min(ylim), max(ylim))
        placed = {i: y for i, y in zip(special, moved)}
        for i in range(0, n, step):
            if i not in placed and all(abs(ys[i] - y) >= min_gap for y in moved):
                placed[i] = ys[i]
    for i, y in sorted(placed.items()):
        t = ax.text(x, y, text_of(i, indexed), ha=ha, va="center", fontsize=size,
                    color="#666666" if units.special[i] else "black", clip_on=False, zorder=4)
        t.set_gid(("q" if ha == "right" else "k") + str(i))
        texts[i] = t
        if abs(y - ys[i]) > 1e-9:
            ax.plot([x_line, x_line + gap * 0.8], [ys[i], y], color="#999999", linewidth=0.6, clip_on=False, zorder=4)
    return texts


# ---------------------------------------------------------------------------
# matrix view

#: Cells of at least this probability get their value printed in the matrix view (when cells are big enough).
ANNOTATE_MIN = 0.095
ANNOTATE_TEXT = ".10"


def _tick_labels(units: Units, idx: list[int], indexed: bool, chars: int) -> list[str]:
    return [f"{i} {safe_label(units.labels[i], max(3, chars - len(str(i)) - 1))}" if indexed else safe_label(units.labels[i], chars)
            for i in idx]


@with_fonts
def matrix_view(result: TextAttention, layer: int, head: int | None, spec: ViewSpec, kind: str = SELF,
                focus: tuple[int, ...] | None = None, style: Style = DEFAULT_STYLE) -> Figure:
    """One head (or the head mean) as a query x key heatmap.

    Rows are queries (attends from), columns keys (attended to), on a linear 0..1
    colour scale (square-root above 120 units, said on the colour bar). Rows and
    columns are labelled with their tokens (or words) where the labels fit at the
    style's text size, else every n-th (with its index); above 120 units the
    ticks are positions. Where cells are big enough (up to 20 units) the weights
    of at least .10 are printed in them, and the subtitle says so (and says when
    they are not printed). With ``focus`` (token indices, query side) the focus
    unit's row is outlined in red and its label set in red. Above about 2800
    units the map is shrunk for display (each pixel the largest weight of its
    block, said in the subtitle).

    Args:
        result: from :func:`attnviz.attend_text`.
        layer: 0-based layer (negative counts from the end).
        head: 0-based head, or None for the mean of the layer's heads.
        spec: words or word pieces; special tokens hidden (rows renormalised) or not.
        kind: ``"self"``, ``"encoder"``, ``"decoder"`` or ``"cross"``.
        focus: token positions of the focus token (its row is marked), or None.
        style: size, dpi, fonts and colour map.

    Returns:
        A Figure ``style.width(natural)`` inches wide (natural: up to about 18 in).

    Raises:
        UsageError: bad kind, layer or head, layer not captured, focus hidden.
    """
    maps, query_info, key_info = maps_for(result, kind)
    layer, head, attn = _head_map(maps, layer, head)
    vm = prepare(attn, query_info, key_info, spec)
    values = vm.attn.numpy()
    nq, nk = values.shape
    n = max(nq, nk)
    mask = causal_mask(vm.query_units, vm.key_units) if maps.causal else np.zeros((nq, nk), dtype=bool)
    fq = _focus_unit(vm.query_units, focus) if focus else None
    labelled = n <= MATRIX_LABEL_LIMIT
    sqrt = not labelled
    # natural (screen) size: cells of up to 0.3 in
    natural_cell = min((14.0 if labelled else 9.0) / n, 0.3)  # long inputs: 9 in (saving a bigger image costs RAM)
    longest = lambda units: max((len(safe_label(s, 14)) for s in units.labels), default=1)  # noqa: E731
    natural_font = clamp(natural_cell * 72 * 0.72, 6.0, 9.0)
    natural_left = (0.45 + longest(vm.query_units) * natural_font * 0.6 / 72) if labelled else 0.9
    width = style.width(max(natural_left + max(nk * natural_cell, 2.5) + 1.4, 6.5))
    fonts = style.fonts(width)
    compact = style.compact(width)
    font = fonts.text if style.print_size else natural_font
    cb_room = 0.95 if not compact else 0.78
    chars_cap = 14 if not compact else 10
    ylabel_room = 0.22 if not compact else 0.18
    if labelled:
        left = ylabel_room + 0.08 + min(longest(vm.query_units) + len(str(nq)) + 1, chars_cap) * font * 0.68 / 72
    else:
        left = ylabel_room + 0.1 + len(str(nq)) * font * 0.6 / 72
    plot_w = max(width - left - cb_room, 1.0)
    cell = plot_w / nk
    natural_plot_h = cell * nq if style.print_size else max(nq * natural_cell, 2.5)
    if not style.print_size:
        plot_w = max(nk * natural_cell, 2.5)
        cell = plot_w / nk
    # ticks: every label, or every n-th with its index
    pitch_x, pitch_y = plot_w * 72 / nk, natural_plot_h * 72 / nq
    what = layer_head_text(layer, head) + (f" (mean of {maps.num_heads} heads)" if head is None else "")
    notes = _notes(result, maps, kind, spec, hatched=True)
    if not labelled:
        notes.append(f"{nq} x {nk} {'words' if spec.words else 'tokens'}: axes show positions (0-based)")
    ann_font = max(MIN_FONT_PT, min(font, 7.5))
    cell_pt = min(pitch_x, pitch_y)
    annotate = n <= 20 and cell_pt >= ann_font * 0.6 * len(ANNOTATE_TEXT) + 3 and cell_pt >= ann_font * 1.3
    if annotate:
        notes.append("numbers: weights ≥ .10 (smaller ones not printed)")
    elif n <= 20:
        notes.append("weights not printed: cells too small at this size (see --json)")
    if fq is not None:
        notes.append(f"red outline: the row of '{safe_label(vm.query_units.labels[fq], 20)}' (focus)")
    titles = _titles_for(style, width, "Attention matrix", result, what, spec, notes)
    top = titles.height_in() + 0.1
    # bottom margin: x tick labels (rotated) + xlabel
    if labelled:
        x_step = 1 if pitch_x >= font * 1.25 else thin_step(nk, plot_w * 72, font * 1.6)
        xchars = min(longest(vm.key_units), chars_cap) + (len(str(nk)) + 1 if x_step > 1 else 0)
        bottom = 0.12 + xchars * font * 0.6 / 72 + font * 1.5 / 72
    else:
        x_step = 1
        bottom = 0.12 + font * 2.8 / 72
    height, plot_h = style.height(top + bottom + 0.05, natural_plot_h)
    pitch_y = plot_h * 72 / nq
    shown, shown_mask, factor = block_reduce(values, mask, int(max(plot_w, plot_h) * style.resolution), how="max")
    if factor > 1:
        notes.append(f"shrunk for display: each pixel shows the largest weight of up to {factor} x {factor} cells")
        titles = _titles_for(style, width, "Attention matrix", result, what, spec, notes)
        top = titles.height_in() + 0.1
        height, plot_h = style.height(top + bottom + 0.05, natural_plot_h)
    frame = Frame(width, height, style.resolution)
    frame.titles(titles)
    ax = frame.axes(left, top, plot_w, plot_h)
    cmap = style.colormap(ATTENTION_CMAP)
    norm = probability_norm(1.0, sqrt=sqrt)
    if mask.any():
        hatch_behind(ax, -0.5, -0.5, nk, nq)
    if factor > 1:
        # a long input: colour the shrunk map here, in row bands, as 8-bit RGBA (matplotlib would otherwise resample
        # it through float64 RGBA arrays of the output's size, hundreds of MB at N = 4096)
        from matplotlib.cm import ScalarMappable

        rgba = np.empty((*shown.shape, 4), dtype=np.uint8)
        for b0 in range(0, shown.shape[0], 256):
            band = np.ma.masked_array(shown[b0 : b0 + 256], mask=None if shown_mask is None else shown_mask[b0 : b0 + 256])
            rgba[b0 : b0 + 256] = cmap(norm(band), bytes=True)
        img = ax.imshow(rgba, aspect="auto", interpolation="nearest", zorder=1, extent=(-0.5, nk - 0.5, nq - 0.5, -0.5))
        mappable = ScalarMappable(norm=norm, cmap=cmap)
    else:
        img = ax.imshow(np.ma.masked_array(shown, mask=shown_mask), cmap=cmap, norm=norm, aspect="auto",
                        interpolation="nearest" if n <= 400 else "antialiased", zorder=1,
                        extent=(-0.5, nk - 0.5, nq - 0.5, -0.5))
        mappable = img
    img.set_gid("attention")
    ax.set_xlim(-0.5, nk - 0.5)
    ax.set_ylim(nq - 0.5, -0.5)
    if labelled:
        y_step = 1 if pitch_y >= font * 1.25 else thin_step(nq, plot_h * 72, font * 1.6)
        xi = thinned(nk, x_step)
        yi = thinned(nq, y_step, keep=[fq] if fq is not None else ())
        ax.set_xticks(xi, _tick_labels(vm.key_units, xi, x_step > 1, chars_cap), rotation=90, fontsize=font)
        ax.set_yticks(yi, _tick_labels(vm.query_units, yi, y_step > 1, chars_cap), fontsize=font)
        for tl, i in zip(ax.get_xticklabels(), xi):
            tl.set_color("#777777" if vm.key_units.special[i] else "black")
        for tl, i in zip(ax.get_yticklabels(), yi):
            tl.set_color("#777777" if vm.query_units.special[i] else "black")
            if i == fq:
                tl.set_color(FOCUS_COLOR)
                tl.set_fontweight("bold")
        ax.tick_params(length=0 if x_step == 1 else 2, pad=2)
    else:
        ax.set_xticks(range(0, nk, thin_step(nk, plot_w * 72, max(font * 0.6 * (len(str(nk)) + 3), 0 if style.print_size else 40))))
        ax.set_yticks(range(0, nq, thin_step(nq, plot_h * 72, max(font * 2.2, 0 if style.print_size else 30))))
        ax.tick_params(labelsize=font, length=2, pad=1.5)
    ax.set_xlabel("key (attended to)", fontsize=font, labelpad=2)
    ax.set_ylabel("query (attends from)", fontsize=font, labelpad=2)
    if annotate:
        for q in range(nq):
            for k in range(nk):
                v = float(values[q, k])
                if not mask[q, k] and v >= ANNOTATE_MIN:
                    ax.text(k, q, short_weight(v), ha="center", va="center", fontsize=ann_font, color=text_color_on(cmap, norm, v))
    if fq is not None:
        r = Rectangle((-0.5, fq - 0.5), nk, 1, facecolor="none", edgecolor=FOCUS_COLOR, linewidth=1.5, zorder=5, clip_on=False)
        r.set_gid("focus-row")
        ax.add_patch(r)
    add_colorbar(frame, mappable, left + plot_w + 0.12, top, plot_h if style.print_size else clamp(plot_h, 2.0, 6.0),
                 scale_label("attention probability", spec.hide_special, sqrt), width_in=0.12 if compact else 0.16,
                 fontsize=font)
    return _finish(frame, style, "attention matrix", result, titles, {"layer": layer, "head": head, "kind": kind, "words": spec.words,
                                                                       "hide_special": spec.hide_special})


# ---------------------------------------------------------------------------
# model view


@with_fonts
def model_view(result: TextAttention, spec: ViewSpec, kind: str = SELF, style: Style = DEFAULT_STYLE) -> Figure:
    """Every layer and head in one grid of small heatmaps (rows: layers, columns: heads).

    Each cell is one head's ``[Q_units, K_units]`` probability map. By default
    (``style.scale == "shared"``) every cell is on one linear 0..1 colour scale
    with one colour bar (square-root above 120 units per cell), and the colour
    bar says the scale is shared; with ``"per-head"`` each cell runs from 0 to its
    own maximum, and the colour bar says that instead. Cells are labelled
    ``"L{l} H{h}"`` on screen where they are large enough; otherwise the layer
    numbers are in the left margin and the head numbers above the grid (thinned
    where they would not fit). Maps larger than a cell's pixels are shrunk for
    display, each pixel the largest weight of its block (said in the subtitle).
    Causally masked cells are hatched; layers the capture plan did not keep are
    drawn grey, "not captured". With grouped-query attention the KV head groups
    are named in the subtitle (and bracketed above the grid on screen).

    The images are in layer-major order, each with gid ``"L{l} H{h}"``.

    Args:
        result: from :func:`attnviz.attend_text`.
        spec: words or word pieces; special tokens hidden (rows renormalised) or not.
        kind: ``"self"``, ``"encoder"``, ``"decoder"`` or ``"cross"``.
        style: size, dpi, fonts, colour map and scale.

    Returns:
        A Figure ``style.width(natural)`` inches wide (natural: up to about 24 in).

    Raises:
        UsageError: bad kind; --hide-special leaves nothing; no layer captured.
    """
    maps, query_info, key_info = maps_for(result, kind)
    L, H = maps.num_layers, maps.num_heads
    per_head = style.scale == "per-head"
    if style.print_size:
        width = style.width(0)
        fonts = style.fonts(width)
        label_size = fonts.small
        cell_labels = False
        left = 0.12 + fonts.text * 1.3 / 72 + label_size * 0.6 * len(str(L - 1)) / 72 + 0.05
        cb_room = 0.85 if width >= 5 else 0.78
        gap_x = gap_y = 0.03
        s = (width - left - cb_room - (H - 1) * gap_x) / H
        s = max(s, 0.05)
        if style.height_in is None:
            s = min(s, 0.9)
    else:
        s = clamp(min(20.0 / H, 16.0 / L), 0.2, 1.15)  # cell side, inches
        for _ in range(3):  # shrink until the grid, gaps included, fits in about 21 x 20 inches
            cell_labels = s >= 0.45  # "L{l} H{h}" over every cell; else layer/head numbers in the margins
            gap_x, gap_y = (0.07, 0.2 if s >= 0.6 else 0.16) if cell_labels else (0.03, 0.04)
            fit = min((21.0 - (H - 1) * gap_x) / H, (20.0 - L * gap_y) / L)
            if s <= fit or s <= 0.2:
                break
            s = max(0.2, fit)
        label_size = clamp(s * 8.0, 6.0, 8.0) if cell_labels else 6.0
        left = 0.3 if cell_labels else 0.55
        fonts = style.fonts(None)
        cb_room = 1.4
    gx, gy = gap_x / s, gap_y / s
    grid_w, grid_h = H * (1 + gx) - gx, L * (1 + gy)
    plot_w, plot_h = grid_w * s, grid_h * s
    max_px = max(16, int(s * min(style.resolution, 150)))
    col_labels = 0.0 if cell_labels else label_size * 1.4 / 72 + (fonts.text * 1.3 / 72 if style.print_size else 0.0)
    width = style.width(max(left + plot_w + cb_room, 7.0))
    layers = [l for l in range(L) if maps.has_layer(l)]
    if not layers:
        raise UsageError("the capture kept no full layer; the model view needs whole layers (capture in full)")
    prepared = {l: prepare(maps.layer(l), query_info, key_info, spec) for l in layers}
    vm0 = prepared[layers[0]]
    nq, nk = vm0.attn.shape[-2:]
    mask = causal_mask(vm0.query_units, vm0.key_units) if maps.causal else None
    sqrt = max(nq, nk) > MATRIX_LABEL_LIMIT and not per_head
    extra = [f"rows: layers 0-{L - 1}; columns: heads 0-{H - 1}; each cell: query rows x key columns ({nq} x {nk} {'words' if spec.words else 'tokens'})"]
    factor = math.ceil(max(nq, nk) / max_px)
    if factor > 1:
        extra.append(f"cells shrunk for display: each pixel shows the largest weight of up to {factor} x {factor} cells")
    missing = [l for l in range(L) if l not in prepared]
    if missing:
        extra.append(f"layers {', '.join(map(str, missing))} not captured")
    note = kv_heads_note(maps.kv_heads)
    if note:
        extra.append(note)
    extra.append(f"colour: {scale_note(style.scale, 'heads')}")
    titles = _titles_for(style, width, "Model view", result, layer_head_text(None, None), spec,
                         _notes(result, maps, kind, spec, extra, hatched=True))
    bracket = 0.25 if maps.kv_heads and not style.print_size else 0.0
    top = titles.height_in() + 0.1 + bracket + col_labels
    if style.height_in is not None:
        height, _ = style.height(top + 0.3, plot_h)
        s = min(s, (height - top - 0.3) / (L * (1 + gy)))
        plot_w, plot_h = grid_w * s, grid_h * s
    else:
        height = top + plot_h + 0.3
    frame = Frame(width, height, style.resolution)
    frame.titles(titles)
    ax = frame.axes(left, top, plot_w, plot_h)
    ax.set_axis_off()
    cmap, norm = style.colormap(ATTENTION_CMAP), probability_norm(1.0, sqrt=sqrt)
    img = None
    row_step = 1 if s * 72 >= label_size * 1.3 else thin_step(L, plot_h * 72, label_size * 1.5)
    col_step = 1 if s * 72 >= label_size * 0.6 * len(str(H - 1)) + 2 else thin_step(H, plot_w * 72, label_size * 0.6 * len(str(H - 1)) + 3)
    margin_prefix = "" if style.print_size else ("L", "H")
    for l in range(L):
        y0 = l * (1 + gy) + gy
        for h in range(H):
            x0 = h * (1 + gx)
            if cell_labels:
                ax.text(x0, y0 - 0.04, f"L{l} H{h}", ha="left", va="bottom", fontsize=label_size, color="#333333")
            elif h == 0 and l % row_step == 0:
                ax.text(-0.06 / s, y0 + 0.5, f"{margin_prefix[0] if margin_prefix else ''}{l}", ha="right", va="center",
                        fontsize=label_size, color="#333333", clip_on=False)
            if not cell_labels and l == 0 and h % col_step == 0:
                ax.text(x0 + 0.5, -0.02 / s, f"{margin_prefix[1] if margin_prefix else ''}{h}", ha="center", va="bottom",
                        fontsize=label_size, color="#333333", clip_on=False)
            if l not in prepared:
                r = Rectangle((x0, y0), 1, 1, facecolor=MISSING_COLOR, edgecolor="none")
                r.set_gid(f"L{l} H{h} missing")
                ax.add_patch(r)
                if s >= 0.7 or (h == 0 and s >= 0.45):
                    ax.text(x0 + 0.5, y0 + 0.5, "not\ncaptured", ha="center", va="center", fontsize=max(6.0, label_size * 0.9), color="#666666")
                continue
            vals, m, _ = block_reduce(prepared[l].attn[h].numpy(), mask, max_px, how="max")
            if per_head:
                top_v = float(np.max(np.where(m, 0.0, vals))) if m is not None else float(vals.max())
                vals = vals / top_v if top_v > 0 else vals
            if m is not None and m.any():
                hatch_behind(ax, x0, y0, 1, 1)
            img = ax.imshow(np.ma.masked_array(vals, mask=m if m is not None else False), cmap=cmap, norm=norm,
                            extent=(x0, x0 + 1, y0 + 1, y0), aspect="auto", interpolation="nearest", zorder=1)
            img.set_gid(f"L{l} H{h}")
            ax.add_patch(Rectangle((x0, y0), 1, 1, facecolor="none", edgecolor="#cccccc", linewidth=0.4, zorder=2))
    if style.print_size:
        ax.text(-0.06 / s - label_size * 0.6 * len(str(L - 1)) / 72 / s - 0.04 / s, grid_h / 2, "layer", rotation=90,
                ha="right", va="center", fontsize=fonts.text, clip_on=False)
        ax.text(grid_w / 2, -(label_size * 1.4 / 72 + 0.02) / s, "head", ha="center", va="bottom", fontsize=fonts.text, clip_on=False)
    if maps.kv_heads and not style.print_size:
        groups: dict[int, list[int]] = {}
        for h, kv in enumerate(maps.kv_heads):
            groups.setdefault(kv, []).append(h)
        yb = -(0.1 + col_labels) / s
        for kv, hs in groups.items():
            if hs != list(range(hs[0], hs[-1] + 1)):
                continue
            xa, xb = hs[0] * (1 + gx), hs[-1] * (1 + gx) + 1
            ax.plot([xa, xa, xb, xb], [yb + 0.06 / s, yb, yb, yb + 0.06 / s], color="#777777", linewidth=0.8, clip_on=False)
            ax.text((xa + xb) / 2, yb - 0.02 / s, f"KV {kv}" if (xb - xa) * s < 0.8 else f"KV head {kv}", ha="center", va="bottom", fontsize=label_size, color="#555555", clip_on=False)
    ax.set_xlim(0, grid_w)
    ax.set_ylim(grid_h, 0)
    if per_head:
        label = scale_label("probability / head's max (per-head scale)", spec.hide_special, False)
    else:
        label = scale_label("probability (one scale, all heads)", spec.hide_special, sqrt)
    cb_h = (plot_h - gy * s) if style.print_size else clamp(plot_h - gy * s, 1.5, 5.0)
    add_colorbar(frame, img, left + plot_w + 0.12, top + (gy * s), max(cb_h, 0.6), label,
                 width_in=0.12 if style.print_size else 0.18, fontsize=fonts.small if style.print_size else 9.0)
    return _finish(frame, style, "model view", result, titles, {"kind": kind, "words": spec.words, "hide_special": spec.hide_special})


# ---------------------------------------------------------------------------
# focus view


@with_fonts
def focus_view(result: TextAttention, focus: Focus, spec: ViewSpec, style: Style = DEFAULT_STYLE) -> Figure:
    """Which heads link the focus token where: a layers x heads heatmap.

    Each cell's value is ``focus.weights[layer, head]``: the weight (probability)
    the focus unit puts on its link target in that head (see
    :mod:`attnviz.analysis.focus` for which targets are eligible: not special, not itself,
    not its neighbour, earlier by default), on a 0..1 scale. Where cells are big
    enough they are annotated with the target and the weight (e.g.
    ``"animal\\n.68"``), else with the weight, else (column width) only the three
    strongest heads carry their rank; the subtitle lists those three either way.
    The three strongest heads are outlined. From a word (``spec.words``), the rows
    of its pieces are averaged and pieces of each target summed (Clark et al. 2019).

    The image data is float32 ``[layers, heads]``.

    Args:
        result: from :func:`attnviz.attend_text`.
        focus: from :func:`attnviz.analysis.focus.analyse_focus` with the same ``spec``.
        spec: words or word pieces; special tokens hidden (rows renormalised) or not.
        style: size, dpi, fonts and colour map.
    """
    kind = focus.kind
    maps, _, _ = maps_for(result, kind)
    fu = focus.unit
    focus_label = safe_label(focus.text, 40)
    weights, targets = focus.weights, focus.targets
    ranked = list(focus.top[:3])
    L, H = weights.shape
    data = weights.numpy().astype(np.float32)

    if style.print_size:
        width = style.width(0)
        fonts = style.fonts(width)
        font = fonts.small
        tick = fonts.small
        left = 0.1 + fonts.text * 1.3 / 72 + tick * 0.6 * (len(str(L - 1)) + (0 if style.compact(width) else 1)) / 72 + 0.06
        cb_room = 0.72 if style.compact(width) else 0.85
        cw = (width - left - cb_room) / H
        ch = clamp(cw * 0.75, font * 1.5 / 72, 0.45)
        if cw * 72 >= font * 0.62 * 5 and ch * 72 < font * 2.5:
            ch = min(max(ch, font * 2.5 / 72), 0.5)
    else:
        cw = clamp(15.0 / H, 0.5, 0.85)
        ch = clamp(12.0 / L, 0.34, 0.52)
        font = clamp(cw * 10.5, 6.0, 8.5)
        tick = clamp(font + 0.5, 6, 8)
        left = 0.75
        fonts = style.fonts(None)
        width = max(left + H * cw + 1.4, 7.0)
        cb_room = 1.4
    plot_w, natural_h = H * cw, L * ch
    compact = style.print_size and style.compact(width)
    head_prefix = "" if compact else "H"
    side = "queries: target tokens" if kind == CROSS else ""
    where = f"'{focus_label}' ({'word' if spec.words else 'token'} {fu}{', ' + side if side else ''})"
    chars = max(0, int((cw * 72 - 2) / (font * 0.62)))
    two_lines = chars >= 4 and ch * 72 >= font * 2.4
    one_line = not two_lines and cw * 72 >= font * 0.62 * 3 + 2 and ch * 72 >= font * 1.25
    if two_lines:
        cell_note = "cell: link target and weight"
    elif one_line:
        cell_note = "cell: weight (targets: --json, or a wider --size)"
    else:
        cell_note = "numbers 1-3: the strongest heads"
    extra = [
        f"colour: weight {where} puts on its {focus.describe()} (0 to 1); rows: layers, columns: heads; {cell_note}",
    ]
    if focus.fallback:
        extra.append(focus.fallback)
    if ranked:
        extra.append("strongest heads: " + "; ".join(f"L{h.layer} H{h.head} → {safe_label(h.target_label, 14)} {short_weight(h.weight)}" for h in ranked))
    titles = _titles_for(style, width, "Focus view", result, f"{where}, all layers and heads", spec,
                         _notes(result, maps, kind, spec, extra))
    top = titles.height_in() + tick * 1.3 / 72 + fonts.text * 1.3 / 72 + 0.08
    cb_min = 1.0 if style.print_size else 2.2
    height, plot_h = style.height(top + 0.12, max(natural_h, cb_min) if not style.print_size else natural_h)
    if style.height_in is None and not style.print_size:
        plot_h = natural_h
        height = top + max(natural_h, clamp(natural_h, 2.2, 5.0)) + 0.25
    ch = plot_h / L
    frame = Frame(width, height, style.resolution)
    frame.titles(titles)
    ax = frame.axes(left, top, plot_w, plot_h)
    cmap, norm = style.colormap(ATTENTION_CMAP), probability_norm(1.0)
    img = ax.imshow(data, cmap=cmap, norm=norm, aspect="auto", interpolation="nearest")
    img.set_gid("focus")
    col_step = 1 if cw * 72 >= tick * 0.6 * (len(str(H - 1)) + len(head_prefix)) + 2 else thin_step(H, plot_w * 72, tick * 0.6 * (len(str(H - 1)) + 2))
    row_step = 1 if ch * 72 >= tick * 1.2 else thin_step(L, plot_h * 72, tick * 1.4)
    ax.set_xticks(range(0, H, col_step), [f"{head_prefix}{h}" for h in range(0, H, col_step)], fontsize=tick)
    ax.set_yticks(range(0, L, row_step), [f"{head_prefix and 'L'}{l}" for l in range(0, L, row_step)], fontsize=tick)
    ax.tick_params(length=0, pad=1.5)
    ax.xaxis.set_ticks_position("top")
    ax.xaxis.set_label_position("top")
    ax.set_xlabel("head", fontsize=fonts.text, labelpad=2)
    ax.set_ylabel("layer", fontsize=fonts.text, labelpad=2)
    if two_lines or one_line:
        for l in range(L):
            for h in range(H):
                v = float(weights[l, h])
                if two_lines:
                    text = f"{safe_label(focus.labels[int(targets[l, h])], chars)}\n{short_weight(v)}"
                else:
                    text = short_weight(v)
                ax.text(h, l, text, ha="center", va="center", fontsize=font, color=text_color_on(cmap, norm, v), linespacing=1.05)
    else:
        for rank, hl in enumerate(ranked, 1):
            v = float(weights[hl.layer, hl.head])
            ax.text(hl.head, hl.layer, str(rank), ha="center", va="center", fontsize=font, fontweight="bold",
                    color=text_color_on(cmap, norm, v))
    for hl in ranked:
        ax.add_patch(Rectangle((hl.head - 0.5, hl.layer - 0.5), 1, 1, facecolor="none", edgecolor=FOCUS_COLOR,
                               linewidth=2.0 if not compact else 1.2, zorder=3))
    cb_h = plot_h if style.print_size else clamp(plot_h, 2.2, 5.0)
    add_colorbar(frame, img, left + plot_w + 0.12, top, max(cb_h, 0.6), scale_label("weight on link target", spec.hide_special, False),
                 width_in=0.12 if style.print_size else 0.18, fontsize=fonts.small if style.print_size else 9.0)
    return _finish(frame, style, "focus view", result, titles, {"token": focus_label, "kind": kind, "words": spec.words,
                                                                 "hide_special": spec.hide_special, "direction": focus.direction})


# ---------------------------------------------------------------------------
# methods over the tokens (grad-attention, relevance, value-norm...)


def token_scores_view(result: TextAttention, explanation, *, methods=None, width_in: float = 9.0,
                      style: Style = DEFAULT_STYLE) -> Figure:
    """The text once per method, each token shaded by the method's value for the explained row (``attnviz text
    --method``): ``method-NAME`` (one method) and ``methods`` (several, one block each, top to bottom).

    ``explanation``: an :class:`attnviz.analysis.explain.Explanation` whose maps hold ``[rows, N]`` values; each
    block shows the last row (the token whose prediction the gradient methods explain), coloured from 0 to that
    row's maximum (every method's values are >= 0), with its own colour bar; the explained token is outlined.
    """
    import matplotlib
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    maps = list(methods if methods is not None else explanation.maps)
    n = int(maps[0].values.shape[-1])  # a generated token's explanation covers the tokens up to it
    tokens = [safe_label(t, 18) for t in result.tokens.tokens[:n]]
    width = style.width(width_in)
    fonts = style.fonts(width)
    font = clamp(fonts.text, MIN_FONT_PT, 10.0)
    char_in = font * 0.62 / 72
    pad_in = 0.06
    line_h = font * 2.1 / 72
    left, right = 0.3, width - 2.1  # the colour bars sit to the right of the tokens
    # one layout for every block: token boxes wrapped into lines
    boxes = []
    x, line = left, 0
    for t in tokens:
        w = len(t) * char_in + 2 * pad_in
        if x + w > right and x > left:
            x, line = left, line + 1
        boxes.append((x, line, w))
        x += w + 0.04
    lines = line + 1
    target = explanation.target
    first = maps[0]
    row_label = first.row.split(", ")[-1] if first.row else ""
    where = "(outlined)" if first.rows_in_keys else "(a decoder position; shown: its relevance over the source tokens)"
    notes = [f"Explained row: the token '{safe_label(row_label, 30)}' {where}"
             + (f"; gradient methods explain {safe_label(target.describe(), 200)}" if target is not None and any(m.needs_target for m in maps) else "")
             + ". Each block: its own colour scale from 0 to the largest value over the other tokens (the explained "
             "token's own value, e.g. relevance's 1 from R = I, would swamp it: it is drawn white and written in the heading)."]
    notes += [f"{m.title}: {m.source}" + ("" if m.layer is None else f" (layer {m.layer})") for m in maps]
    what = maps[0].title if len(maps) == 1 else "methods side by side"
    titles = _titles_for(style, width, what, result, "", "", notes)
    top = titles.height_in() + 0.15
    heading_h = 2 * font * 1.3 / 72 + 0.08
    block_h = heading_h + lines * line_h + 0.35
    height = top + block_h * len(maps) + 0.1
    frame = Frame(width, height, style.resolution)
    frame.titles(titles)
    cmap = matplotlib.colormaps[style.cmap or ATTENTION_CMAP]
    fig = frame.figure
    for b, m in enumerate(maps):
        y0 = top + b * block_h
        values = m.values[-1] if m.values.dim() == 2 else m.values
        values = values.double().numpy()
        own = m.positions[-1] if m.positions and m.rows_in_keys else None
        others = np.delete(values, own) if own is not None and values.size > 1 else values
        vmax = float(others.max()) if others.size and float(others.max()) > 0 else 1.0
        heading = (f"{m.title}" + ("" if m.layer is None else f" · layer {m.layer}") + f" · {m.unit}: max {vmax:.3g}"
                   + (f", the explained token itself {values[own]:.3g}" if own is not None else ""))
        t = fig.text(left / width, 1 - y0 / height, wrap(heading, right - left, font, bold=True), ha="left", va="top",
                     fontsize=font, fontweight="bold")
        t.set_gid(f"method-{m.method}")
        ax = frame.axes(0, y0 + heading_h, width, lines * line_h)
        ax.set_xlim(0, width)
        ax.set_ylim(lines * line_h, 0)
        ax.axis("off")
        rows_pos = set(m.positions[-1:]) if m.rows_in_keys else set()
        norm = Normalize(0, vmax)
        for i, (bx, bl, bw) in enumerate(boxes):
            # the explained token itself is drawn white: its own value is off the scale (written in the heading)
            color = (1.0, 1.0, 1.0, 1.0) if i == own else cmap(norm(values[i]))
            rect = Rectangle((bx, bl * line_h + 0.02), bw, line_h - 0.06, facecolor=color, edgecolor=FOCUS_COLOR if i in rows_pos else "none",
                             linewidth=1.8 if i in rows_pos else 0)
            rect.set_gid(f"token-{i}")
            ax.add_patch(rect)
            ax.text(bx + bw / 2, bl * line_h + line_h / 2 - 0.01, tokens[i], ha="center", va="center", fontsize=font,
                    color="black" if i == own else text_color_on(cmap, norm, values[i]))
        cax = frame.axes(width - 1.85, y0 + heading_h + 0.08, 1.5, 0.1)
        cb = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), cax=cax, orientation="horizontal")
        cb.ax.tick_params(labelsize=max(MIN_FONT_PT, font - 2), length=2, pad=1)
        cb.set_ticks([0, vmax], labels=["0", f"{vmax:.3g}"])
        cax.set_gid("colorbar")
    return _finish(frame, style, "methods" if len(maps) > 1 else f"method-{maps[0].method}", result, titles,
                   {"methods": [m.method for m in maps], "target": target.to_dict() if target is not None else None})


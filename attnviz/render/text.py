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
from attnviz.focus import Focus
from attnviz.render.common import (
    DPI,
    FOCUS_COLOR,
    MISSING_COLOR,
    Frame,
    add_colorbar,
    attention_cmap,
    block_reduce,
    clamp,
    hatch_behind,
    kv_heads_note,
    layer_head_axes,
    layer_head_text,
    make_titles,
    nice_step,
    probability_norm,
    safe_label,
    short_weight,
    spread_positions,
    scale_label,
    text_color_on,
)
from attnviz.types import CROSS, DECODER, ENCODER, SELF, AttentionMaps, TextAttention, TokenInfo

__all__ = ["head_view", "model_view", "focus_view", "matrix_view", "maps_for", "causal_mask"]

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
    if result.dropped_tokens:
        notes.append(f"input truncated: the last {result.dropped_tokens} tokens were dropped")
    return notes + list(extra or [])


def _head_map(maps: AttentionMaps, layer: int, head: int | None) -> tuple[int, int | None, torch.Tensor]:
    layer = maps.check_layer(layer)
    head = None if head is None else maps.check_head(head)
    lt = _layer_tensor(maps, layer)
    return layer, head, (lt.mean(dim=0) if head is None else lt[head])


# ---------------------------------------------------------------------------
# head view


def head_view(
    result: TextAttention,
    layer: int,
    head: int | None,
    spec: ViewSpec,
    focus: tuple[int, ...] | None = None,
    kind: str = SELF,
    top_k: int | None = None,
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
            fit; the plot is at most 16 inches high.

    Returns:
        A Figure, 8 inches wide and at most about 19 inches high.

    Raises:
        UsageError: bad kind, layer or head, layer not captured, ``top_k < 1``,
            focus token hidden or out of range.
    """
    maps, query_info, key_info = maps_for(result, kind)
    layer, head, attn = _head_map(maps, layer, head)
    vm = prepare(attn, query_info, key_info, spec)
    w = vm.attn.numpy().astype(np.float64)
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
    plot_h = clamp(0.22 * n, 2.0, 16.0)
    label_w, side = 1.9, 0.2
    width = 8.0
    mid = width - 2 * (label_w + side)
    notes = []
    if top_k < nk:
        notes.append(f"strongest {top_k} link{'s' if top_k > 1 else ''} per query shown (of {nk} keys)")
    link_note = "line opacity and width ∝ attention probability"
    if fq is not None:
        link_note += f"; red: links of '{safe_label(vm.query_units.labels[fq], 20)}' (opacity relative to its strongest link)"
    notes.append(link_note)
    what = layer_head_text(layer, head) + (f" (mean of {maps.num_heads} heads)" if head is None else "")
    titles = make_titles("Head view", result.model_id, what, spec.describe(), _notes(result, maps, kind, spec, notes), width)
    top = titles.height_in() + 0.4
    height = top + plot_h + 0.3
    frame = Frame(width, height)
    frame.titles(titles)
    fig = frame.figure
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
    if top_k < nk:
        idx = np.argpartition(-w, top_k - 1, axis=1)[:, :top_k]
    else:
        idx = np.broadcast_to(np.arange(nk), (nq, nk))
    qs = np.repeat(np.arange(nq), idx.shape[1])
    ks = idx.reshape(-1)
    vals = w[qs, ks]
    keep = (qs != (fq if fq is not None else -1)) & (vals >= (0.0 if top_k < nk else MIN_LINK))
    if mask is not None:
        keep &= ~mask[qs, ks]
    qs, ks, vals = qs[keep], ks[keep], np.clip(vals[keep], 0.0, 1.0)
    segs = np.stack([np.stack([np.full(len(qs), x0), yq[qs]], 1), np.stack([np.full(len(qs), x1), yk[ks]], 1)], 1)
    colors = np.tile(np.array(to_rgba(_FADED_COLOR if fq is not None else _LINK_COLOR)), (len(vals), 1))
    alpha = np.maximum(vals, 0.04) if top_k < nk else vals
    colors[:, 3] = alpha * (0.3 if fq is not None else 1.0)
    lines = LineCollection(segs, colors=colors, linewidths=0.3 + 2.7 * vals, zorder=1, capstyle="round")
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
            [((x0, yq[fq]), (x1, yk[k])) for k in chosen], colors=fcol, linewidths=0.8 + 4.0 * fw, zorder=3, capstyle="round"
        )
        flines.set_gid("focus-links")
        ax.add_collection(flines)
        key_suffix = {int(k): short_weight(float(row[k])) for k in order[:3] if row[k] >= 0.01}

    # --- labels
    hdr = 0.1 / plot_h
    ax.text(0.0, 1 + hdr, "query (attends from)", transform=ax.transAxes, ha="right", va="bottom", fontsize=8.5, color="#555555", style="italic")
    ax.text(1.0, 1 + hdr, "key (attended to)", transform=ax.transAxes, ha="left", va="bottom", fontsize=8.5, color="#555555", style="italic")
    ylim = (span + pad, -pad)
    qlabels = _column_labels(ax, vm.query_units, yq, x0, "right", plot_h * 72, ylim, {fq: ""} if fq is not None else {})
    klabels = _column_labels(ax, vm.key_units, yk, x1, "left", plot_h * 72, ylim, key_suffix)
    if fq is not None:
        t = qlabels[fq]
        t.set_color(FOCUS_COLOR)
        t.set_fontweight("bold")
        t.set_bbox(dict(boxstyle="round,pad=0.15", fc=FOCUS_COLOR, alpha=0.15, ec="none"))
    for k, t in klabels.items():
        if k in key_suffix:
            t.set_fontweight("bold")
            t.set_color(FOCUS_COLOR)
        elif fq is not None and mask is not None and mask[fq, k]:
            t.set_color("#bdbdbd")  # the focus may not attend here (causal mask)
    return fig


def _column_labels(ax, units: Units, ys: np.ndarray, x_line: float, ha: str, height_pt: float, ylim: tuple[float, float],
                   always: dict[int, str]) -> dict[int, object]:
    """Draw one column of labels next to the link ends at ``x_line``.

    Every unit is labelled if the labels fit at 7 points or more; otherwise every
    n-th unit (with its index) plus the units in ``always`` (the focus and its
    targets), which are moved apart if they would overlap (a short leader line
    joins a moved label to its link end). ``always`` maps a unit to a suffix (its
    weight). Returns ``{unit: Text}``.
    """
    n = len(units)
    pitch = height_pt / max(n, 1)
    dpp = abs(ylim[0] - ylim[1]) / height_pt  # data units per point
    gap = 0.018 if ha == "left" else -0.018
    x = x_line + gap
    texts: dict[int, object] = {}

    def text_of(i: int, indexed: bool) -> str:
        lab = safe_label(units.labels[i], 14)
        if indexed:
            lab = f"{i} {lab}" if ha == "left" else f"{lab} {i}"
        suffix = always.get(i, "")
        return f"{lab}  {suffix}" if suffix else lab

    if pitch >= 8.8:
        size = clamp(pitch * 0.75, 7.0, 9.5)
        placed = {i: ys[i] for i in range(n)}
        indexed = False
    else:
        size = 7.5
        step = nice_step(n, int(height_pt / (size * 1.7)))
        indexed = True
        special = sorted(always)
        moved = spread_positions([ys[i] for i in special], size * 1.35 * dpp, min(ylim), max(ylim))
        placed = {i: y for i, y in zip(special, moved)}
        min_gap = size * 1.35 * dpp
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


def matrix_view(result: TextAttention, layer: int, head: int | None, spec: ViewSpec, kind: str = SELF) -> Figure:
    """One layer's head (or head mean) as a heatmap: query rows, key columns.

    The image (gid ``"attention"``) holds the float32 ``[Q_units, K_units]``
    probabilities, masked where a causal mask forbids the cell (drawn hatched).
    Up to 120 units per axis every row and column is labelled with its token (or
    word) on a linear 0..1 colour scale, and up to 20 units the weights of at
    least .10 are printed in their cells. Above 120 units the ticks mark every
    n-th position and the colour scale is square-root (said on the colour bar);
    above about 2800 units the map is shrunk for display (each pixel the largest
    weight of its block, said in the subtitle).

    Args:
        result: from :func:`attnviz.attend_text`.
        layer: 0-based layer (negative counts from the end).
        head: 0-based head, or None for the mean of the layer's heads.
        spec: words or word pieces; special tokens hidden (rows renormalised) or not.
        kind: ``"self"``, ``"encoder"``, ``"decoder"`` or ``"cross"``.

    Returns:
        A Figure of at most about 18 x 18 inches.

    Raises:
        UsageError: bad kind, layer or head, layer not captured.
    """
    maps, query_info, key_info = maps_for(result, kind)
    layer, head, attn = _head_map(maps, layer, head)
    vm = prepare(attn, query_info, key_info, spec)
    values = vm.attn.numpy()
    nq, nk = values.shape
    mask = causal_mask(vm.query_units, vm.key_units) if maps.causal else np.zeros((nq, nk), dtype=bool)
    labelled = max(nq, nk) <= MATRIX_LABEL_LIMIT
    sqrt = not labelled
    cell = min(14.0 / max(nq, nk), 0.3)
    plot_w, plot_h = max(nk * cell, 2.5), max(nq * cell, 2.5)
    font = clamp(cell * 72 * 0.72, 5.5, 9.0)
    longest = lambda units: max((len(safe_label(s, 14)) for s in units.labels), default=1)  # noqa: E731
    left = (0.45 + longest(vm.query_units) * font * 0.6 / 72) if labelled else 0.9
    bottom = (0.4 + longest(vm.key_units) * font * 0.6 / 72) if labelled else 0.6
    width = max(left + plot_w + 1.4, 6.5)
    what = layer_head_text(layer, head) + (f" (mean of {maps.num_heads} heads)" if head is None else "")
    notes = _notes(result, maps, kind, spec, hatched=True)
    if not labelled:
        notes.append(f"{nq} x {nk} {'words' if spec.words else 'tokens'}: axes show positions (0-based)")
    shown, shown_mask, factor = block_reduce(values, mask, int(2 * max(plot_w, plot_h) * DPI), how="max")
    if factor > 1:
        notes.append(f"shrunk for display: each pixel shows the largest weight of up to {factor} x {factor} cells")
    titles = make_titles("Attention matrix", result.model_id, what, spec.describe(), notes, width)
    top = titles.height_in() + 0.15
    height = top + plot_h + bottom + 0.2
    frame = Frame(width, height)
    frame.titles(titles)
    ax = frame.axes(left, top, plot_w, plot_h)
    cmap = attention_cmap()
    norm = probability_norm(1.0, sqrt=sqrt)
    if mask.any():
        hatch_behind(ax, -0.5, -0.5, nk, nq)
    img = ax.imshow(np.ma.masked_array(shown, mask=shown_mask), cmap=cmap, norm=norm, aspect="auto",
                    interpolation="nearest" if max(nq, nk) <= 400 else "antialiased", zorder=1,
                    extent=(-0.5, nk - 0.5, nq - 0.5, -0.5))
    img.set_gid("attention")
    ax.set_xlim(-0.5, nk - 0.5)
    ax.set_ylim(nq - 0.5, -0.5)
    if labelled:
        ax.set_xticks(range(nk), [safe_label(s, 14) for s in vm.key_units.labels], rotation=90, fontsize=font)
        ax.set_yticks(range(nq), [safe_label(s, 14) for s in vm.query_units.labels], fontsize=font)
        for tl, sp in zip(ax.get_xticklabels(), vm.key_units.special):
            tl.set_color("#777777" if sp else "black")
        for tl, sp in zip(ax.get_yticklabels(), vm.query_units.special):
            tl.set_color("#777777" if sp else "black")
        ax.tick_params(length=0, pad=2)
    else:
        ax.set_xticks(range(0, nk, nice_step(nk, int(plot_w * 72 / 40))))
        ax.set_yticks(range(0, nq, nice_step(nq, int(plot_h * 72 / 30))))
        ax.tick_params(labelsize=8)
    ax.set_xlabel("key (attended to)", fontsize=9)
    ax.set_ylabel("query (attends from)", fontsize=9)
    if max(nq, nk) <= 20:
        for q in range(nq):
            for k in range(nk):
                v = float(values[q, k])
                if not mask[q, k] and v >= 0.095:
                    ax.text(k, q, short_weight(v), ha="center", va="center", fontsize=min(font, 7.5), color=text_color_on(cmap, norm, v))
    add_colorbar(frame, img, left + plot_w + 0.25, top, clamp(plot_h, 2.0, 6.0), scale_label("attention probability", spec.hide_special, sqrt))
    return frame.figure


# ---------------------------------------------------------------------------
# model view


def model_view(result: TextAttention, spec: ViewSpec, kind: str = SELF) -> Figure:
    """Every layer and head in one grid of small heatmaps (rows: layers, columns: heads).

    Each cell is one head's ``[Q_units, K_units]`` probability map labelled
    ``"L{l} H{h}"`` (0-based; for grids too dense for that, above about 40
    layers or heads, the layer and head numbers are in the margins instead), on one shared linear 0..1 colour scale with one
    colour bar (linear; square-root above 120 units per cell, said on the colour
    bar). Maps larger than a cell's pixels are shrunk for display, each pixel the
    largest weight of its block (said in the subtitle). Causally masked cells are hatched; layers the capture
    plan did not keep are drawn grey, "not captured". With grouped-query
    attention the KV head groups are bracketed above the grid and named in the subtitle.

    The images are in layer-major order, each with gid ``"L{l} H{h}"``.

    Args:
        result: from :func:`attnviz.attend_text`.
        spec: words or word pieces; special tokens hidden (rows renormalised) or not.
        kind: ``"self"``, ``"encoder"``, ``"decoder"`` or ``"cross"``.

    Returns:
        A Figure of at most about 24 x 24 inches.

    Raises:
        UsageError: bad kind; --hide-special leaves nothing.
    """
    maps, query_info, key_info = maps_for(result, kind)
    L, H = maps.num_layers, maps.num_heads
    s = clamp(min(20.0 / H, 16.0 / L), 0.2, 1.15)  # cell side, inches
    for _ in range(3):  # shrink until the grid, gaps included, fits in about 21 x 20 inches
        cell_labels = s >= 0.45  # "L{l} H{h}" over every cell; else layer/head numbers in the margins
        gap_x, gap_y = (0.07, 0.2 if s >= 0.6 else 0.16) if cell_labels else (0.03, 0.04)
        fit = min((21.0 - (H - 1) * gap_x) / H, (20.0 - L * gap_y) / L)
        if s <= fit or s <= 0.2:
            break
        s = max(0.2, fit)
    gx, gy = gap_x / s, gap_y / s
    label_size = clamp(s * 8.0, 5.0, 8.0) if cell_labels else 6.0
    max_px = max(16, int(s * DPI))
    grid_w, grid_h = H * (1 + gx) - gx, L * (1 + gy)
    plot_w, plot_h = grid_w * s, grid_h * s
    left = 0.3 if cell_labels else 0.55
    col_labels = 0.0 if cell_labels else 0.15  # inches for head numbers above the grid
    width = max(left + plot_w + 1.4, 7.0)
    layers = [l for l in range(L) if maps.has_layer(l)]
    if not layers:
        raise UsageError("the capture kept no full layer; the model view needs whole layers (capture in full)")
    prepared = {l: prepare(maps.layer(l), query_info, key_info, spec) for l in layers}
    vm0 = prepared[layers[0]]
    nq, nk = vm0.attn.shape[-2:]
    mask = causal_mask(vm0.query_units, vm0.key_units) if maps.causal else None
    sqrt = max(nq, nk) > MATRIX_LABEL_LIMIT
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
    titles = make_titles("Model view", result.model_id, layer_head_text(None, None), spec.describe(),
                         _notes(result, maps, kind, spec, extra, hatched=True), width)
    bracket = 0.25 if maps.kv_heads else 0.0
    top = titles.height_in() + 0.1 + bracket + col_labels
    height = top + plot_h + 0.3
    frame = Frame(width, height)
    frame.titles(titles)
    ax = frame.axes(left, top, plot_w, plot_h)
    ax.set_axis_off()
    cmap, norm = attention_cmap(), probability_norm(1.0, sqrt=sqrt)
    img = None
    for l in range(L):
        y0 = l * (1 + gy) + gy
        for h in range(H):
            x0 = h * (1 + gx)
            if cell_labels:
                ax.text(x0, y0 - 0.04, f"L{l} H{h}", ha="left", va="bottom", fontsize=label_size, color="#333333")
            elif h == 0:
                ax.text(-0.08 / s, y0 + 0.5, f"L{l}", ha="right", va="center", fontsize=label_size, color="#333333", clip_on=False)
            if not cell_labels and l == 0:
                ax.text(x0 + 0.5, -0.02 / s, f"H{h}", ha="center", va="bottom", fontsize=label_size, color="#333333", clip_on=False)
            if l not in prepared:
                r = Rectangle((x0, y0), 1, 1, facecolor=MISSING_COLOR, edgecolor="none")
                r.set_gid(f"L{l} H{h} missing")
                ax.add_patch(r)
                if s >= 0.7 or (h == 0 and s >= 0.45):
                    ax.text(x0 + 0.5, y0 + 0.5, "not\ncaptured", ha="center", va="center", fontsize=label_size * 0.9, color="#666666")
                continue
            vals, m, _ = block_reduce(prepared[l].attn[h].numpy(), mask, max_px, how="max")
            if m is not None and m.any():
                hatch_behind(ax, x0, y0, 1, 1)
            img = ax.imshow(np.ma.masked_array(vals, mask=m if m is not None else False), cmap=cmap, norm=norm,
                            extent=(x0, x0 + 1, y0 + 1, y0), aspect="auto", interpolation="nearest", zorder=1)
            img.set_gid(f"L{l} H{h}")
            ax.add_patch(Rectangle((x0, y0), 1, 1, facecolor="none", edgecolor="#cccccc", linewidth=0.4, zorder=2))
    if maps.kv_heads:
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
    label = scale_label("attention probability", spec.hide_special, sqrt)
    add_colorbar(frame, img, left + plot_w + 0.3, top + (gy * s), clamp(plot_h - gy * s, 1.5, 5.0), label)
    return frame.figure


# ---------------------------------------------------------------------------
# focus view


def focus_view(result: TextAttention, focus: Focus, spec: ViewSpec) -> Figure:
    """Which heads link the focus token where: a layers x heads heatmap.

    Each cell's value is ``focus.weights[layer, head]``: the weight (probability)
    the focus unit puts on its link target in that head (see
    :mod:`attnviz.focus` for which targets are eligible: not special, not itself,
    not its neighbour, earlier by default); the cell is annotated with the target
    and the weight (e.g. ``"animal\\n.68"``). The three strongest heads are
    outlined and listed in the subtitle. From a word (``spec.words``), the rows of
    its pieces are averaged and pieces of each target summed (Clark et al. 2019).

    The image data is float32 ``[layers, heads]``.

    Args:
        result: from :func:`attnviz.attend_text`.
        focus: from :func:`attnviz.focus.analyse_focus` with the same ``spec``.
        spec: words or word pieces; special tokens hidden (rows renormalised) or not.
    """
    kind = focus.kind
    maps, _, _ = maps_for(result, kind)
    fu = focus.unit
    focus_label = focus.text
    weights, targets = focus.weights, focus.targets
    ranked = list(focus.top[:3])
    missing: list[int] = []
    L, H = weights.shape
    data = np.ma.masked_array(weights.numpy().astype(np.float32), mask=np.zeros((L, H), dtype=bool))

    cw = clamp(15.0 / H, 0.5, 0.85)
    ch = clamp(12.0 / L, 0.34, 0.52)
    font = clamp(cw * 10.5, 5.0, 8.5)
    plot_w, plot_h = H * cw, L * ch
    left = 0.75
    width = max(left + plot_w + 1.4, 7.0)
    side = "queries: target tokens" if kind == CROSS else ""
    where = f"'{focus_label}' ({'word' if spec.words else 'token'} {fu}{', ' + side if side else ''})"
    extra = [
        f"cell: weight {where} puts on its {focus.describe()}; rows: layers, columns: heads",
    ]
    if ranked:
        extra.append("strongest heads: " + "; ".join(f"L{h.layer} H{h.head} → {safe_label(h.target_label, 14)} {short_weight(h.weight)}" for h in ranked))
    if missing:
        extra.append(f"layers {', '.join(map(str, missing))} not captured")
    titles = make_titles("Focus view", result.model_id, f"{where}, all layers and heads", spec.describe(),
                         _notes(result, maps, kind, spec, extra), width)
    top = titles.height_in() + 0.5
    cb_h = clamp(plot_h, 2.2, 5.0)
    height = top + max(plot_h, cb_h) + 0.25
    frame = Frame(width, height)
    frame.titles(titles)
    ax = frame.axes(left, top, plot_w, plot_h)
    cmap, norm = attention_cmap(), probability_norm(1.0)
    if missing:
        ax.set_facecolor(MISSING_COLOR)
    img = ax.imshow(data, cmap=cmap, norm=norm, aspect="auto", interpolation="nearest")
    img.set_gid("focus")
    layer_head_axes(ax, L, H, font, ch)
    chars = max(3, int(cw * 72 / (font * 0.62)))
    two_lines = ch * 72 >= font * 2.4
    for l in range(L):
        for h in range(H):
            if data.mask[l, h]:
                ax.text(h, l, "n/c", ha="center", va="center", fontsize=font, color="#777777")
                continue
            v = float(weights[l, h])
            label = safe_label(focus.labels[int(targets[l, h])], chars)
            ax.text(h, l, f"{label}\n{short_weight(v)}" if two_lines else f"{label} {short_weight(v)}", ha="center", va="center",
                    fontsize=font, color=text_color_on(cmap, norm, v), linespacing=1.05)
    for hl in ranked:
        ax.add_patch(Rectangle((hl.head - 0.5, hl.layer - 0.5), 1, 1, facecolor="none", edgecolor=FOCUS_COLOR, linewidth=2.0, zorder=3))
    add_colorbar(frame, img, left + plot_w + 0.25, top, cb_h, scale_label("weight on link target", spec.hide_special, False))
    return frame.figure

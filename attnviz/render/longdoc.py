"""Views of a long document's sliding-window + global attention (:class:`attnviz.analysis.longdoc.LongDocument`):
the banded overview, the focus token's profile along the document, the global tokens' rows, and one window's matrix.

Functions return matplotlib Figures (no I/O). Colour scales are shared within a figure, square-root (small weights of
long rows stay visible), and say so; downsampled axes say how many queries one pixel column averages.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from matplotlib.figure import Figure

from attnviz.analysis.longdoc import (
    LongDocument, band_overview, block_map, focus_profile, global_panels, global_strip, side_share, side_strip, top_links,
    window_matrix,
)
from attnviz.render.common import (
    FOCUS_COLOR, Frame, add_colorbar, make_titles, probability_norm, safe_label, scale_label, short_weight, wrap,
)
from attnviz.render.layout import DEFAULT_STYLE, Style, attach_metadata, shared_vmax, with_fonts

#: Most pixel columns a document axis gets before queries are averaged in groups.
MAX_COLUMNS = 1600
#: Global tokens drawn in the global view (the rest are in the JSON).
MAX_GLOBAL_PANELS = 6


def _pool(values: np.ndarray, max_cols: int = MAX_COLUMNS) -> tuple[np.ndarray, int]:
    """``[rows, N]`` -> ``[rows, ceil(N / f)]``, the mean of ``f`` consecutive columns (``f`` = 1 when it fits)."""
    n = values.shape[-1]
    f = max(1, math.ceil(n / max_cols))
    if f == 1:
        return values, 1
    pad = (-n) % f
    padded = np.pad(values, ((0, 0), (0, pad)), constant_values=np.nan)
    import warnings

    with warnings.catch_warnings():  # a group of only missing cells stays missing (NaN), silently
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(padded.reshape(values.shape[0], -1, f), axis=-1).astype(np.float32), f


def _weight(value: float) -> str:
    """A probability in two significant digits without the leading zero: ``.68``, ``.0021``."""
    return short_weight(value) if value >= 0.01 else f"{value:.2g}".replace("0.", ".", 1)


def _titles(style: Style, width: float, view: str, doc: LongDocument, what: str, notes: Sequence[str]):
    if doc.side_spans:
        size = doc.side_spans[0][1] - doc.side_spans[0][0]
        extra = f" · {len(doc.side_spans)} transient-global keys (sums of blocks of {size} tokens)"
    else:
        extra = f" · global tokens: {_globals_text(doc)}" if doc.global_index else " · no global tokens"
    if doc.block_size:
        band = doc.band
        settings = (f"{doc.n} tokens · block-sparse: blocks of {doc.block_size}, each query block attends its window "
                    f"of 3 blocks, {band.num_random_blocks} random block{'' if band.num_random_blocks == 1 else 's'} and the first "
                    "and last (global) blocks")
    else:
        settings = f"{doc.n} tokens · sliding window ±{doc.half_width}" + extra
    return make_titles(view, style.model_label(doc.model_id), what, settings, notes, width, fonts=style.fonts(width))


def _globals_text(doc: LongDocument, limit: int = 6) -> str:
    parts = [f"{i} '{safe_label(doc.tokens[i], 12)}'" for i in doc.global_index[:limit]]
    more = len(doc.global_index) - limit
    return ", ".join(parts) + (f" (+{more} more)" if more > 0 else "")


def _finish(frame: Frame, style: Style, view: str, doc: LongDocument, titles, settings: dict) -> Figure:
    attach_metadata(frame.figure, titles.title, style.model_label(doc.model_id), style, view, settings)
    return frame.figure


@with_fonts
def band_view(doc: LongDocument, layer: int | None = None, style: Style = DEFAULT_STYLE) -> Figure:
    """The banded overview: query position (x) by relative key offset ``-W..W`` (y), one panel per layer (head mean)
    or, with ``layer``, one per head of that layer; under each panel a strip per global token with every query's
    weight on it. Global queries' columns are empty (their rows are in :func:`global_view`).

    Raises:
        ValueError: ``doc.band`` is None (only focus rows were captured).
    """
    if doc.band is None:
        raise ValueError("the banded overview needs the whole band (capture_sliding_window(keep_band=True))")
    band = doc.band
    W = band.half_width
    panels = ([(l, None, f"layer {l}, head mean") for l in range(doc.num_layers)] if layer is None
              else [(layer, h, f"layer {layer}, head {h}") for h in range(doc.num_heads)])
    images, strips = [], []
    n = doc.n
    for l, h, _ in panels:
        img, f = _pool(band_overview(band, l, h))  # NaN (grey) where there is no key for this view
        images.append(img)
        strips.append(_pool(np.concatenate([global_strip(band, l, h), side_strip(band, l, h)]))[0])
    vmax = shared_vmax([float(np.nanmax(i)) for i in images if np.isfinite(i).any()]
                       + [float(np.nanmax(s)) for s in strips if s.size])
    norm = probability_norm(vmax, sqrt=True)
    cmap = style.colormap("viridis")
    width = style.width(10.0)
    fonts = style.fonts(width)
    strip_labels = [safe_label(doc.tokens[p], 10) for p in band.global_index[:8]] + (["global blocks"] if band.side_spans else [])
    G = len(strip_labels)
    strip_h = 0.09 * max(min(G, 8), 2 if G else 0)
    panel_h = 0.8
    gap = 0.42
    what = "banded overview" + ("" if layer is None else f", layer {layer}")
    notes = [f"x: query position; y: key offset from the query (−{W}..{W}); colour: attention probability; grey: no "
             "key there (before the start, past the end, outside a narrower layer's window)"
             + (", a global key (its strip) or a global query (global view)" if band.global_index else "")
             + (f"; each pixel column is the mean of {f} queries" if f > 1 else "")]
    if band.global_index:
        notes.append("strips under each panel: every query's weight on each global token (global queries' own rows: "
                     "global view)")
    if band.side_spans:
        notes.append("strip under each panel: every query's total weight on the transient-global keys")
    titles = _titles(style, width, "band view", doc, what, notes)
    top = titles.height_in() + 0.1
    plot = len(panels) * (panel_h + strip_h + gap)
    height = top + plot + 0.45
    frame = Frame(width, height, style.resolution)
    frame.titles(titles)
    left, right = 0.75, 1.0
    pw = width - left - right
    y = top
    mappable = None
    for (l, h, label), img, strip in zip(panels, images, strips):
        ax = frame.axes(left, y, pw, panel_h)
        ax.set_facecolor("#d9d9d9")
        mappable = ax.imshow(img, aspect="auto", cmap=cmap, norm=norm, origin="lower", interpolation="nearest",
                             extent=(0, n, -W - 0.5, W + 0.5))
        ax.set_title(label, fontsize=fonts.sub, loc="left", pad=2)
        ax.set_yticks([-W, 0, W])
        ax.tick_params(labelsize=fonts.small, length=2)
        ax.set_xticks([])
        ax.set_ylabel("offset", fontsize=fonts.small)
        last = ax
        if G:
            sax = frame.axes(left, y + panel_h + 0.02, pw, strip_h)
            shown = np.concatenate([strip[:min(8, len(band.global_index))], strip[len(band.global_index):]])
            sax.imshow(shown, aspect="auto", cmap=cmap, norm=norm, interpolation="nearest", extent=(0, n, len(shown), 0))
            sax.set_yticks([i + 0.5 for i in range(len(shown))])
            sax.set_yticklabels(strip_labels, fontsize=max(6.0, fonts.small - 1))
            sax.set_xticks([])
            sax.tick_params(length=0)
            last = sax
        y += panel_h + strip_h + gap
    last.set_xticks(_ticks(n))
    last.tick_params(axis="x", labelsize=fonts.small, length=2)
    last.set_xlabel("query position (token)", fontsize=fonts.small)
    add_colorbar(frame, mappable, width - right + 0.2, top, min(plot - gap, 3.0), scale_label("attention probability", False, True),
                 fontsize=fonts.sub)
    return _finish(frame, style, "band", doc, titles, {"layer": layer})


def _ticks(n: int) -> list[int]:
    """Round tick positions along a document of ``n`` tokens."""
    from matplotlib.ticker import MaxNLocator

    return [int(t) for t in MaxNLocator(nbins=8, integer=True).tick_values(0, max(n - 1, 1)) if 0 <= t <= n - 1]


@with_fonts
def profile_view(doc: LongDocument, head: int | None = None, top: int = 3, style: Style = DEFAULT_STYLE) -> Figure:
    """The focus token's attention along the whole document, one line per layer (head mean or ``head``): its window
    shaded, global keys marked (▼), the ``top`` strongest keys (other than itself) dotted and written out.

    Raises:
        ValueError: no focus rows in ``doc``.
    """
    if doc.focus_rows is None:
        raise ValueError("the focus profile needs the focus token's rows")
    prof = focus_profile(doc.focus_rows, doc.n, head)  # [L, N]
    side = side_share(doc.focus_rows, doc.n, head)  # [L]
    n = doc.n
    width = style.width(10.0)
    fonts = style.fonts(width)
    focus = doc.focus_index
    q = focus[0]
    notes = ["x: key position; y: attention probability of the focus token's row"
             + (" (mean of its pieces)" if len(focus) > 1 else "")
             + ("; shaded blue: its window blocks, orange: its random blocks" if doc.block_size else "; shaded: its sliding window")
             + ("; ▼: global tokens" if doc.global_index else "") + "; dots: strongest keys, written at the right"
             + ("; 'global blocks': its weight on the transient-global keys (not drawn)" if doc.side_spans else "")]
    what = f"'{safe_label(doc.focus_text or doc.tokens[q], 20)}' (token {q}), " + ("head mean" if head is None else f"head {head}")
    titles = _titles(style, width, "focus profile", doc, what, notes)
    top_in = titles.height_in() + 0.1
    panel_h, gap = 0.62, 0.2
    L = doc.num_layers
    plot = L * (panel_h + gap)
    height = top_in + plot + 0.45
    frame = Frame(width, height, style.resolution)
    frame.titles(titles)
    left, right = 0.75, min(2.6, max(1.1, 0.3 * width))  # the right column names the strongest keys
    pw = width - left - right
    y = top_in
    for l in range(L):
        ax = frame.axes(left, y, pw, panel_h)
        values = prof[l]
        lo, hi = doc.window_span(l, q)
        ax.axvspan(lo - 0.5, hi + 0.5, color="#cfe3f5", zorder=0, lw=0)
        for b in doc.random_blocks(l, q):  # BigBird: the key blocks of its random slots
            ax.axvspan(b * doc.block_size - 0.5, min(n, (b + 1) * doc.block_size) - 0.5, color="#fde0c5", zorder=0, lw=0)
        ax.fill_between(np.arange(n), values, step="mid", color="#1f77b4", alpha=0.35, lw=0, zorder=1)
        ax.plot(np.arange(n), values, drawstyle="steps-mid", color="#1f77b4", lw=0.6, zorder=2)
        ymax = float(values.max()) if values.size else 1.0
        ax.set_ylim(0, ymax * 1.25 if ymax > 0 else 1.0)
        ax.set_xlim(-0.5, n - 0.5)
        if doc.global_index:
            ax.plot(list(doc.global_index), [ymax * 1.18 if ymax > 0 else 0.9] * len(doc.global_index), marker="v",
                    color="#555555", ms=3.5, zorder=3, lw=0)
        for p in focus:
            ax.axvline(p, color=FOCUS_COLOR, lw=0.8, zorder=3)
        links = top_links(values, doc.tokens, top, exclude=focus)
        ax.plot([k.position for k in links], [k.weight for k in links], "o", color=FOCUS_COLOR, ms=2.5, zorder=4)
        ax.set_yticks([0, round(ymax, 3)] if ymax > 0 else [0])
        ax.tick_params(labelsize=max(6.0, fonts.small - 1), length=2, pad=1)
        ax.set_xticks([])
        ax.text(0.004, 0.94, f"layer {l}", transform=ax.transAxes, ha="left", va="top", fontsize=max(6.0, fonts.small - 1),
                bbox=dict(facecolor="white", edgecolor="none", alpha=0.8, pad=1))
        ax.set_ylabel("")
        label = "\n".join(f"{safe_label(k.token, 12)} ({k.position}) {_weight(k.weight)}" for k in links) or "–"
        if doc.side_spans:
            label += f"\nglobal blocks {_weight(float(side[l]))}"
        ax.text(1.02, 0.5, label, transform=ax.transAxes, ha="left", va="center", fontsize=max(6.0, fonts.small - 1),
                linespacing=1.0)
        last = ax
        y += panel_h + gap
    last.set_xticks(_ticks(n))
    last.tick_params(axis="x", labelsize=fonts.small, length=2)
    last.set_xlabel("key position (token)", fontsize=fonts.small)
    return _finish(frame, style, "profile", doc, titles, {"focus": list(focus), "head": head})


@with_fonts
def global_view(doc: LongDocument, head: int | None = None, top: int = 5, style: Style = DEFAULT_STYLE) -> Figure:
    """Each global token's attention over the document (layers x key position, head mean or ``head``), with its
    ``top`` strongest keys in the last layer written out; at most :data:`MAX_GLOBAL_PANELS` global tokens.

    Raises:
        ValueError: no band or no global tokens.
    """
    if doc.band is None or not doc.global_index:
        raise ValueError("the global view needs global tokens and the band")
    panels = global_panels(doc, head)
    shown = list(range(min(len(panels), MAX_GLOBAL_PANELS)))
    pooled = [_pool(panels[g][2]) for g in shown]
    f = pooled[0][1]
    vmax = shared_vmax([float(np.nanmax(p)) for p, _ in pooled])
    norm = probability_norm(vmax, sqrt=True)
    cmap = style.colormap("viridis")
    width = style.width(10.0)
    fonts = style.fonts(width)
    notes = ["x: key position; y: layer; colour: the global token's attention probability"
             + (f"; each pixel column is the mean of {f} keys" if f > 1 else "")]
    if len(panels) > len(shown):
        notes.append(f"first {len(shown)} of {len(panels)} global tokens (all are in the JSON)")
    if doc.block_size:
        notes.append("BigBird's global blocks: each panel is the mean of the block's queries' rows")
    what = "global tokens' attention" + ("" if head is None else f", head {head}")
    titles = _titles(style, width, "global view", doc, what, notes)
    top_in = titles.height_in() + 0.1
    L = doc.num_layers
    panel_h = max(0.6, min(1.6, 0.12 * L))
    left, right = 0.75, 1.0
    pw = width - left - right
    title_lines = 1 + int(len("global token 0 'xxxxxxxxxxxx' · last layer's strongest keys: ") + top * 22) // max(
        12, int(pw * 72 / (max(6.0, fonts.small) * 0.58)))  # what wrap() makes of a title of that length
    gap = 0.45 + title_lines * max(6.0, fonts.small) * 1.1 / 72
    plot = len(shown) * (panel_h + gap)
    bar = max(1.4, min(plot - gap, 3.0))  # the colour bar needs room for its label, even beside one panel
    frame = Frame(width, top_in + max(plot, bar + gap) + 0.3, style.resolution)
    frame.titles(titles)
    y = top_in + gap - 0.45
    mappable = None
    n = doc.n
    for g, (img, _) in zip(shown, pooled):
        label, positions, rows = panels[g]
        ax = frame.axes(left, y, pw, panel_h)
        mappable = ax.imshow(img, aspect="auto", cmap=cmap, norm=norm, interpolation="nearest", extent=(0, n, L, 0))
        links = top_links(rows[-1], doc.tokens, top, exclude=positions)
        name = label if doc.block_size else f"global token {positions[0]} '{safe_label(label, 14)}'"
        title = (f"{name} · last layer's strongest keys: "
                 + ", ".join(f"{safe_label(k.token, 10)} ({k.position}) {_weight(k.weight)}" for k in links))
        ax.set_title(wrap(title, pw, max(6.0, fonts.small)), fontsize=max(6.0, fonts.small), loc="left", pad=2,
                     linespacing=1.0)
        ax.set_yticks([i + 0.5 for i in range(L)] if L <= 12 else [0.5, L - 0.5])
        ax.set_yticklabels([f"L{i}" for i in range(L)] if L <= 12 else ["L0", f"L{L - 1}"], fontsize=max(6.0, fonts.small - 1))
        ax.set_xticks(_ticks(n))
        ax.tick_params(axis="x", labelsize=max(6.0, fonts.small - 1), length=2, pad=1)
        y += panel_h + gap
    add_colorbar(frame, mappable, width - right + 0.2, top_in + gap - 0.45, bar,
                 scale_label("attention probability", False, True), fontsize=fonts.sub)
    return _finish(frame, style, "global", doc, titles, {"head": head})


def window_radius(style: Style, radius: int) -> int:
    """Tokens each side the window view shows at ``style``'s width: ``radius``, fewer in a narrow figure (every token
    gets at least 0.11 in, so its label stays readable), at least 2."""
    if style.width_in is None:
        return radius
    room = style.width_in - min(1.3, 0.3 * style.width_in) - 0.42 - 1.3
    return max(2, min(radius, int(room / 0.11 - 1) // 2))


@with_fonts
def window_view(doc: LongDocument, center: int, layer: int, radius: int = 24, head: int | None = None,
                style: Style = DEFAULT_STYLE) -> Figure:
    """The attention among the tokens around ``center`` (``radius`` each side) in ``layer`` as a labelled matrix
    (head mean or ``head``), with a last column for each query's weight on keys outside the shown range (the rest of
    its window and the global tokens), so every row's colours account for all of its probability.

    Raises:
        ValueError: no band.
    """
    if doc.band is None:
        raise ValueError("the window view needs the band")
    radius = window_radius(style, radius)
    matrix, start, outside = window_matrix(doc.band, layer, center, radius, head)
    R = matrix.shape[0]
    labels = [f"{safe_label(doc.tokens[start + i], 12)} {start + i}" for i in range(R)]
    width = style.width(max(6.0, min(14.0, 1.6 + 0.16 * R + 1.7)))
    fonts = style.fonts(width)
    label_w = min(1.3, 0.3 * width)
    side_w = 0.42
    cell = max(0.03, min(0.16, (width - label_w - side_w - 1.3) / R))
    notes = [f"tokens {start}..{start + R - 1} (rows: queries, columns: keys); grey: never attended; right: each "
             "query's weight on every other key (the rest of its window, global tokens), written out"]
    what = f"window at {center}, layer {layer}, " + ("head mean" if head is None else f"head {head}")
    titles = _titles(style, width, "window view", doc, what, notes)
    top_in = titles.height_in() + 0.1
    grid = cell * R
    frame = Frame(width, top_in + grid + label_w + 0.2, style.resolution)
    frame.titles(titles)
    shown = np.ma.masked_where(matrix == 0, matrix)
    norm = probability_norm(shared_vmax(matrix), sqrt=True)
    cmap = style.colormap("viridis")
    ax = frame.axes(label_w, top_in, cell * R, grid)
    ax.set_facecolor("#d9d9d9")
    im = ax.imshow(shown, aspect="auto", cmap=cmap, norm=norm, interpolation="nearest")
    font = max(5.0, min(fonts.small, cell * 72 * 0.8))
    ax.set_yticks(range(R))
    ax.set_yticklabels(labels, fontsize=font)
    ax.set_xticks(range(R))
    ax.set_xticklabels(labels, fontsize=font, rotation=90)
    ax.tick_params(length=0, pad=1)
    if start <= center < start + R:
        ax.get_yticklabels()[center - start].set_color(FOCUS_COLOR)
        ax.get_xticklabels()[center - start].set_color(FOCUS_COLOR)
    sax = frame.axes(label_w + cell * R + 0.05, top_in, side_w, grid)
    sax.set_xlim(0, 1)
    sax.set_ylim(R - 0.5, -0.5)
    sax.set_xticks([0.5])
    sax.set_xticklabels(["elsewhere"], fontsize=font, rotation=90)
    sax.set_yticks([])
    sax.tick_params(length=0, pad=1)
    for i, v in enumerate(outside):
        sax.text(0.5, i, _weight(float(v)), ha="center", va="center", fontsize=font)
    add_colorbar(frame, im, label_w + cell * R + side_w + 0.2, top_in, min(grid, 3.0),
                 scale_label("attention probability", False, True), fontsize=fonts.sub)
    return _finish(frame, style, "window", doc, titles, {"center": center, "layer": layer, "head": head, "radius": radius})


@with_fonts
def blocks_view(doc: LongDocument, layer: int | None = None, style: Style = DEFAULT_STYLE) -> Figure:
    """BigBird's block-sparse attention at block resolution: query block (y) by key block (x), each cell the mean over
    the block's queries of their weight on the key block (rows sum to 1); one panel per layer (head mean) or, with
    ``layer``, per head of that layer. Grey: key blocks a query block never attends.

    Raises:
        ValueError: ``doc.band`` is not block-sparse.
    """
    if not doc.block_size:
        raise ValueError("the block view is for BigBird's block-sparse attention")
    blocks = doc.band
    nb, bs = blocks.num_blocks, blocks.block_size
    panels = ([(l, None, f"layer {l}") for l in range(doc.num_layers)] if layer is None
              else [(layer, h, f"head {h}") for h in range(doc.num_heads)])
    maps = [block_map(blocks, l, h) for l, h, _ in panels]
    norm = probability_norm(shared_vmax(maps), sqrt=True)
    cmap = style.colormap("viridis")
    width = style.width(10.0)
    fonts = style.fonts(width)
    cols = min(4 if width >= 6 else 2, len(panels))
    rows_n = math.ceil(len(panels) / cols)
    gap = 0.45
    right = 1.0
    cell_w = (width - 0.6 - right - gap * (cols - 1)) / cols
    what = "block view, head mean" if layer is None else f"block view, layer {layer}"
    notes = [f"y: query block, x: key block (blocks of {bs} tokens; {nb} blocks); colour: the block's queries' mean "
             f"weight on the key block (rows sum to 1); grey: never attended; a block attended in several slots counts "
             f"each (eval mode: every random block is block 0)"]
    titles = _titles(style, width, "block view", doc, what, notes)
    top_in = titles.height_in() + 0.1
    frame = Frame(width, top_in + rows_n * (cell_w + gap) + 0.3, style.resolution)
    frame.titles(titles)
    im = None
    ticks = _ticks(nb)
    for i, ((l, h, label), m) in enumerate(zip(panels, maps)):
        r, c = divmod(i, cols)
        ax = frame.axes(0.6 + c * (cell_w + gap), top_in + r * (cell_w + gap), cell_w, cell_w)
        ax.set_facecolor("#d9d9d9")
        im = ax.imshow(np.ma.masked_where(m == 0, m), cmap=cmap, norm=norm, interpolation="nearest")
        ax.set_title(label, fontsize=fonts.small, loc="left", pad=2)
        ax.set_xticks(ticks)
        ax.set_yticks(ticks)
        ax.tick_params(labelsize=max(6.0, fonts.small - 1), length=2, pad=1)
    add_colorbar(frame, im, width - right + 0.2, top_in, min(rows_n * (cell_w + gap) - gap, 3.0),
                 scale_label("attention probability", False, True), fontsize=fonts.sub)
    return _finish(frame, style, "blocks", doc, titles, {"layer": layer})

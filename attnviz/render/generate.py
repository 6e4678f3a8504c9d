"""Views of attention during generation: generation map, sink share per step, and a generated token's head view.

Every function takes a :class:`~attnviz.types.GenerationAttention` (from
:func:`attnviz.generate.attend_generation`) and returns a
:class:`matplotlib.figure.Figure` built without pyplot, with the helpers and style
of the text views (:mod:`attnviz.render.common`, :mod:`attnviz.render.text`).
The focus view of a generated token is the text focus view itself, fed through
:func:`attnviz.generate.as_text_attention`.

Rows are generated tokens: row ``i`` is generated token ``i``'s own query (it
sees the prompt, the tokens generated before it and itself). Keys it could not
see (later tokens) are hatched. Layers and heads are 0-based.
"""

from __future__ import annotations

import numpy as np
from matplotlib.collections import LineCollection
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure

from attnviz.analysis.generation import checked, sink_share
from attnviz.analysis.words import Units
from attnviz.errors import UsageError
from attnviz.render.layout import DEFAULT_STYLE
from attnviz.render.common import (
    DPI,
    FOCUS_COLOR,
    Frame,
    add_colorbar,
    attention_cmap,
    clamp,
    hatch_behind,
    kv_heads_note,
    make_titles,
    nice_step,
    probability_norm,
    safe_label,
    scale_label,
    short_weight,
)
from attnviz.render.text import LONG_TOP_K, _column_labels
from attnviz.types import GenerationAttention

__all__ = ["generation_map", "sink_view", "generation_head_view", "FUSIONS"]

#: How heads are combined when no head is chosen.
FUSIONS = ("mean", "max")
#: Up to this many key columns every column is labelled with its token.
LABEL_LIMIT = 100
BOUNDARY_COLOR = "#d62728"


def _pick(result: GenerationAttention, layer: int | None, head: int | None, fusion: str, cross: bool):
    """``(layer, head, what, values float32 [T, K])`` for a layer/head, a head fusion, or the last layer by default."""
    attn = checked(result, layer, head, cross)
    L, H = attn.shape[:2]
    layer = (L - 1 if layer is None else layer) % L
    if head is not None:
        head %= H
        return layer, head, f"layer {layer}, head {head}", attn[layer, head]
    if fusion not in FUSIONS:
        raise UsageError(f"--fusion must be one of {', '.join(FUSIONS)}, not '{fusion}'")
    values = attn[layer].mean(dim=0) if fusion == "mean" else attn[layer].amax(dim=0)
    return layer, None, f"layer {layer}, {fusion} of {H} heads", values


def _unseen(result: GenerationAttention, cross: bool) -> np.ndarray:
    """bool ``[T, K]``: keys a step could not see (later tokens). None of them for cross-attention."""
    T = result.num_generated
    if cross:
        return np.zeros((T, result.prompt_length), dtype=bool)
    K = result.context_length + T
    return np.arange(K)[None, :] > (np.arange(T)[:, None] + result.context_length)


def _reduce_columns(values: np.ndarray, mask: np.ndarray, max_cols: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Shrink the key axis to at most ``max_cols`` columns, each the largest weight of ``f`` neighbours (masked cells skipped)."""
    rows, cols = values.shape
    f = max(1, -(-cols // max(1, max_cols)))
    if f == 1:
        return values, mask, 1
    pad = (-cols) % f
    v = np.pad(np.where(mask, -np.inf, values), ((0, 0), (0, pad)), constant_values=-np.inf).reshape(rows, -1, f).max(axis=2)
    m = ~np.isfinite(v)
    return np.where(m, 0.0, v).astype(np.float32), m, f


def _step_labels(result: GenerationAttention) -> list[str]:
    return [f"{safe_label(t, 12)} {i}" for i, t in enumerate(result.generated)]


def _notes(result: GenerationAttention, cross: bool) -> list[str]:
    if cross:
        first = "cross-attention: rows are generated tokens (decoder queries), columns the source (prompt) tokens"
    elif result.encoder_decoder:
        first = "decoder self-attention: rows are generated tokens, columns the decoder start token and the generated tokens"
    else:
        first = "rows: generated tokens (each row is that token's own query); columns: prompt tokens, then generated tokens"
    notes = [first + "; values: attention probabilities"]
    if not cross:
        notes.append("hatched: later tokens, which a step cannot see")
    if result.sampling.get("do_sample"):
        s = result.sampling
        notes.append(f"sampled: temperature {s.get('temperature')}, top-p {s.get('top_p')}, seed {s.get('seed')}")
    else:
        notes.append("greedy decoding")
    return notes


# ---------------------------------------------------------------------------
# generation map


def generation_map(
    result: GenerationAttention, layer: int | None = None, head: int | None = None, fusion: str = "mean", cross: bool = False
) -> Figure:
    """Generated tokens (rows) x every earlier token (columns) for one layer: a head, or the heads' mean or maximum.

    The prompt/generation boundary is a red vertical line (decoder-only models).
    Up to 100 key columns every column is labelled with its token, on a linear
    0..1 colour scale; beyond that the colour scale is square-root (said on the
    colour bar) and a decoder-only model's prompt gets a narrower panel of its own
    (gid ``"attention-prompt"``; ticks every n-th position, "index token") so that
    the generated tokens' columns (``"attention-generated"``) stay legible; key
    columns beyond about 2 pixels each are shrunk for display, each pixel the
    largest weight of its columns (said in the subtitle). Rows are labelled
    ``"token step"`` (every n-th above about 90 rows). The image (gid
    ``"attention"``) holds float32 ``[generated, keys]`` values, masked (hatched)
    where a step could not see the key.

    Args:
        result: from :func:`attnviz.generate.attend_generation`.
        layer: 0-based layer (negative counts from the end); default the last.
        head: 0-based head; None combines the heads with ``fusion``.
        fusion: ``"mean"`` or ``"max"`` over the layer's heads.
        cross: the cross-attention of an encoder-decoder model (columns: source tokens).

    Returns:
        A Figure at most about 19 inches wide and 18 high.

    Raises:
        UsageError: bad layer, head or fusion; ``cross`` without cross-attention.
    """
    layer, head, what, attn = _pick(result, layer, head, fusion, cross)
    values = attn.numpy().astype(np.float32)
    mask = _unseen(result, cross)
    T, K = values.shape
    C = result.context_length
    labels = list(result.prompt.tokens if cross else result.key_labels)
    special = list(result.prompt.special if cross else result.key_special)
    sqrt = K > LABEL_LIMIT
    split = sqrt and not cross and not result.encoder_decoder and C > 1
    if split:  # long prompt: the prompt's columns thinned in a panel of their own, the generated ones kept legible
        gen_w = clamp(T * 0.16, 1.6, 6.0)
        panels = [(0, C, clamp(C * 0.16, 3.0, 15.0 - gen_w)), (C, K, gen_w)]
    else:
        panels = [(0, K, clamp(K * 0.16, 4.0, 15.0))]
    gap = 0.12
    plot_w = sum(p[2] for p in panels) + gap * (len(panels) - 1)
    row_h = clamp(12.0 / max(T, 1), 0.06, 0.22)
    plot_h = max(T * row_h, 1.6)
    row_font = clamp(row_h * 72 * 0.75, 6.0, 8.5)
    row_step = nice_step(T, int(plot_h * 72 / (row_font * 1.5)))
    left = 0.35 + max((len(s) for s in _step_labels(result)), default=4) * row_font * 0.6 / 72
    fully = [c1 - c0 <= LABEL_LIMIT and w * 72 / max(c1 - c0, 1) >= 7.0 for c0, c1, w in panels]
    longest = max((len(safe_label(labels[k], 12)) if f else len(f"{k} {safe_label(labels[k], 10)}")
                   for (c0, c1, _), f in zip(panels, fully) for k in range(c0, c1)), default=4)
    bottom = 0.55 + longest * 8.0 * 0.6 / 72
    width = left + plot_w + 1.3
    notes = _notes(result, cross)
    if split:
        notes.append(f"long prompt: its {C} columns are drawn in their own, narrower panel (ticks mark every n-th position)")
    elif not fully[0]:
        notes.append(f"{K} key tokens: ticks mark every n-th position (index and token)")
    if row_step > 1:
        notes.append(f"every {row_step}th generated token labelled")
    note = kv_heads_note(result.kv_heads)
    if note and head is not None:
        notes.append(note)
    shrunk = []
    for c0, c1, w in panels:
        f = -(-(c1 - c0) // max(1, int(2 * w * DPI)))
        if f > 1:
            shrunk.append(f)
    if shrunk:
        notes.append(f"shrunk for display: each pixel column shows the largest weight of up to {max(shrunk)} key tokens")
    view = "Cross-attention map" if cross else "Generation map"
    titles = make_titles(view, result.model_id, what, f"{result.num_generated} generated tokens, prompt {result.prompt_length} tokens", notes, width)
    top = titles.height_in() + 0.35
    height = top + plot_h + bottom + 0.1
    frame = Frame(width, height, DEFAULT_STYLE.resolution)
    frame.titles(titles)
    cmap, norm = attention_cmap(), probability_norm(1.0, sqrt=sqrt)
    step_labels = _step_labels(result)
    rows = list(range(0, T, row_step))
    x = left
    img = None
    for i, ((c0, c1, w), full_labels) in enumerate(zip(panels, fully)):
        ax = frame.axes(x, top, w, plot_h)
        ax.set_gid(f"panel{i}")
        x += w + gap
        vals, m = values[:, c0:c1], mask[:, c0:c1]
        if m.any():
            hatch_behind(ax, c0 - 0.5, -0.5, c1 - c0, T)
        shown, shown_mask, _ = _reduce_columns(vals, m, int(2 * w * DPI))
        img = ax.imshow(np.ma.masked_array(shown, mask=shown_mask), cmap=cmap, norm=norm, aspect="auto", interpolation="nearest",
                        extent=(c0 - 0.5, c1 - 0.5, T - 0.5, -0.5), zorder=1)
        img.set_gid("attention" if len(panels) == 1 else ("attention-prompt" if i == 0 else "attention-generated"))
        ax.set_xlim(c0 - 0.5, c1 - 0.5)
        ax.set_ylim(T - 0.5, -0.5)
        if i == 0:
            ax.set_yticks(rows, [step_labels[r] for r in rows], fontsize=row_font)
            ax.set_ylabel("generated token (step)", fontsize=9)
        else:
            ax.set_yticks(rows, [])
        if full_labels:
            col_font = clamp(w * 72 / max(c1 - c0, 1) * 0.75, 6.0, 8.5)
            ax.set_xticks(range(c0, c1), [safe_label(labels[k], 12) for k in range(c0, c1)], rotation=90, fontsize=col_font)
            for tl, sp in zip(ax.get_xticklabels(), special[c0:c1]):
                tl.set_color("#777777" if sp else "black")
        else:
            step = nice_step(c1 - c0, int(w * 72 / 11))
            ticks = list(range(c0, c1, step))
            ax.set_xticks(ticks, [f"{k} {safe_label(labels[k], 10)}" for k in ticks], rotation=90, fontsize=7.0)
        ax.tick_params(length=2, pad=2)
        if split:
            ax.set_title(f"prompt ({C} tokens)" if i == 0 else f"generated ({T})", fontsize=8.5,
                         color="#333333" if i == 0 else BOUNDARY_COLOR, pad=3)
        if not cross and not result.encoder_decoder and (i == 1 or not split):
            b = C - 0.5
            line = ax.axvline(b, color=BOUNDARY_COLOR, linewidth=1.2 if not split else 2.4, zorder=3)
            line.set_gid("boundary")
            if not split:
                ax.text(b, -0.5, "prompt ", ha="right", va="bottom", fontsize=8, color=BOUNDARY_COLOR, clip_on=False)
                ax.text(b, -0.5, " generated", ha="left", va="bottom", fontsize=8, color=BOUNDARY_COLOR, clip_on=False)
    frame.figure.text((left + plot_w / 2) / width, 1 - (top + plot_h + bottom - 0.02) / height, "key (attended to)",
                      ha="center", va="bottom", fontsize=9)
    add_colorbar(frame, img, left + plot_w + 0.25, top, clamp(plot_h, 1.6, 6.0), scale_label("attention probability", False, sqrt))
    return frame.figure


# ---------------------------------------------------------------------------
# sink share


def sink_view(result: GenerationAttention) -> Figure:
    """How much attention each generated token gives the first token (BOS / first prompt token: the attention sink).

    Top: the share per step, mean over all layers and heads (line), with the
    lowest and highest layer (band). Bottom: layers x steps heatmap (gid
    ``"sink"``) of the share, mean over each layer's heads, on a linear 0..1
    scale. Encoder-decoder models: the share of the decoder start token.

    Returns:
        A Figure about 9 inches wide.
    """
    share = sink_share(result).numpy()  # [L, T]
    L, T = share.shape
    first = result.key_labels[0]
    plot_w = clamp(T * 0.2, 5.0, 14.0)
    line_h, heat_h = 1.6, clamp(L * 0.22, 1.2, 6.0)
    left, width = 0.8, 0.8 + plot_w + 1.3
    labelled = T <= 60
    notes = [
        f"share of each step's attention that goes to key position 0 ('{safe_label(first, 14)}'), "
        "which decoders use as an attention sink (Xiao et al. 2024)",
        "top: mean over layers and heads, band: lowest to highest layer; bottom: mean over each layer's heads",
    ]
    titles = make_titles("Sink share per step", result.model_id, f"{L} layers, {result.num_generated} generated tokens", "", notes, width)
    top = titles.height_in() + 0.15
    bottom = 1.0 if labelled else 0.6
    height = top + line_h + 0.25 + heat_h + bottom
    frame = Frame(width, height, DEFAULT_STYLE.resolution)
    frame.titles(titles)
    ax = frame.axes(left, top, plot_w, line_h)
    x = np.arange(T)
    ax.fill_between(x, share.min(axis=0), share.max(axis=0), color="#9ecae1", alpha=0.6, linewidth=0, label="layer range")
    (mean_line,) = ax.plot(x, share.mean(axis=0), color="#08519c", linewidth=1.5, marker="o" if T <= 60 else None, markersize=3,
                           label="mean")
    mean_line.set_gid("sink-mean")
    ax.set_xlim(-0.5, T - 0.5)
    ax.set_ylim(0, 1.0)
    ax.set_ylabel("share", fontsize=9)
    ax.tick_params(labelsize=8, labelbottom=False)
    ax.grid(axis="y", color="#eeeeee")
    ax.legend(fontsize=7.5, loc="upper right", frameon=False, ncol=2)
    hx = frame.axes(left, top + line_h + 0.25, plot_w, heat_h)
    cmap, norm = attention_cmap(), probability_norm(1.0)
    img = hx.imshow(share, cmap=cmap, norm=norm, aspect="auto", interpolation="nearest", extent=(-0.5, T - 0.5, L - 0.5, -0.5))
    img.set_gid("sink")
    lstep = nice_step(L, int(heat_h * 72 / 10))
    hx.set_yticks(range(0, L, lstep), [f"L{l}" for l in range(0, L, lstep)], fontsize=7.5)
    hx.set_ylabel("layer", fontsize=9)
    if labelled:
        hx.set_xticks(range(T), _step_labels(result), rotation=90, fontsize=7)
    else:
        step = nice_step(T, int(plot_w * 72 / 22))
        hx.set_xticks(range(0, T, step))
        hx.tick_params(labelsize=8)
    hx.set_xlabel("generated token (step)", fontsize=9)
    add_colorbar(frame, img, left + plot_w + 0.25, top + line_h + 0.25, heat_h, "share to first token")
    return frame.figure


# ---------------------------------------------------------------------------
# head view of one generated token


def generation_head_view(result: GenerationAttention, step: int, layer: int | None = None, head: int | None = None,
                         top_k: int = LONG_TOP_K) -> Figure:
    """Token-link graph of one head (or head mean) during generation, for the generated token ``step``.

    Left: the generated tokens (queries); right: every key token (prompt and
    generated). Each generated token's ``top_k`` strongest links are drawn faded
    (opacity and width proportional to the probability); the chosen token's
    links (its 10 strongest) are drawn in red, and its 3 strongest targets are
    labelled with their weights. Keys it cannot see are greyed. Labels are
    thinned (every n-th, with its index) when they do not fit. Collections carry
    gids ``"links"`` and ``"focus-links"``.

    Args:
        result: from :func:`attnviz.generate.attend_generation`.
        step: the generated token (0-based; negative counts from the end).
        layer: 0-based layer, default the last; head: 0-based head, or None for the mean.

    Raises:
        UsageError: bad step, layer or head.
    """
    step = result.check_step(step)
    layer, head, what, attn = _pick(result, layer, head, "mean", False)
    w = attn.numpy().astype(np.float64)  # [T, K]
    T, K = w.shape
    mask = _unseen(result, False)
    n = max(T, K)
    plot_h = clamp(0.22 * n, 2.0, 16.0)
    label_w, side, width = 1.9, 0.2, 8.0
    mid = width - 2 * (label_w + side)
    fq = step
    notes = _notes(result, False)[:1] + [
        f"strongest {top_k} links per generated token shown, faded; red: the links of '{safe_label(result.generated[fq], 20)}' "
        f"(step {fq}; opacity relative to its strongest link)",
        "line opacity and width ∝ attention probability",
    ]
    titles = make_titles("Head view", result.model_id, what, f"generated token {fq}", notes, width)
    top = titles.height_in() + 0.4
    frame = Frame(width, top + plot_h + 0.3, DEFAULT_STYLE.resolution)
    frame.titles(titles)
    ax = frame.axes(side + label_w, top, mid, plot_h)
    ax.set_axis_off()
    ax.set_xlim(0.0, 1.0)
    span = float(max(n - 1, 1))
    pad = 0.5
    ax.set_ylim(span + pad, -pad)
    yq = np.linspace(0, span, T) if T > 1 else np.array([span / 2])
    yk = np.linspace(0, span, K) if K > 1 else np.array([span / 2])
    k = min(top_k, K)
    idx = np.argpartition(-w, k - 1, axis=1)[:, :k]
    qs = np.repeat(np.arange(T), k)
    ks = idx.reshape(-1)
    vals = np.clip(w[qs, ks], 0.0, 1.0)
    keep = (qs != fq) & ~mask[qs, ks] & (vals > 0)
    qs, ks, vals = qs[keep], ks[keep], vals[keep]
    segs = np.stack([np.stack([np.zeros(len(qs)), yq[qs]], 1), np.stack([np.ones(len(qs)), yk[ks]], 1)], 1)
    colors = np.tile(np.array(to_rgba("#8c8c8c")), (len(vals), 1))
    colors[:, 3] = np.maximum(vals, 0.04) * 0.3
    lines = LineCollection(segs, colors=colors, linewidths=0.3 + 2.7 * vals, zorder=1)
    lines.set_gid("links")
    ax.add_collection(lines)
    row = np.where(mask[fq], 0.0, w[fq])
    order = np.argsort(-row, kind="stable")
    chosen = [int(j) for j in order[:10] if row[j] > 0]
    fw = np.clip(row[chosen], 0.0, 1.0)
    fcol = np.tile(np.array(to_rgba(FOCUS_COLOR)), (len(chosen), 1))
    fcol[:, 3] = 0.12 + 0.88 * fw / max(float(fw.max()) if len(fw) else 1.0, 1e-12)
    flines = LineCollection([((0, yq[fq]), (1, yk[j])) for j in chosen], colors=fcol, linewidths=0.8 + 4.0 * fw, zorder=3)
    flines.set_gid("focus-links")
    ax.add_collection(flines)
    suffix = {int(j): short_weight(float(row[j])) for j in order[:3] if row[j] > 0}
    ax.text(0.0, 1 + 0.1 / plot_h, "generated token (query)", transform=ax.transAxes, ha="right", va="bottom", fontsize=8.5,
            color="#555555", style="italic")
    ax.text(1.0, 1 + 0.1 / plot_h, "key (attended to)", transform=ax.transAxes, ha="left", va="bottom", fontsize=8.5,
            color="#555555", style="italic")
    ylim = (span + pad, -pad)
    qunits = Units(tuple(result.generated), tuple((i,) for i in range(T)), tuple(result.generated_special))
    kunits = Units(tuple(result.key_labels), tuple((i,) for i in range(K)), tuple(result.key_special))
    qlabels = _column_labels(ax, qunits, yq, 0.0, "right", plot_h * 72, ylim, {fq: ""})
    klabels = _column_labels(ax, kunits, yk, 1.0, "left", plot_h * 72, ylim, suffix)
    t = qlabels[fq]
    t.set_color(FOCUS_COLOR)
    t.set_fontweight("bold")
    for j, t in klabels.items():
        if j in suffix:
            t.set_fontweight("bold")
            t.set_color(FOCUS_COLOR)
        elif mask[fq, j]:
            t.set_color("#bdbdbd")
    if not result.encoder_decoder:
        yb = (yk[result.context_length - 1] + yk[result.context_length]) / 2 if result.context_length < K else yk[-1]
        ax.plot([1.0, 1.03], [yb, yb], color="#d62728", linewidth=1.2, clip_on=False)
    return frame.figure

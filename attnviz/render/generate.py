"""Views of attention during generation: generation map, sink share per step, and a generated token's head view.

Every function takes a :class:`~attnviz.types.GenerationAttention` (from
:func:`attnviz.generate.attend_generation`) and returns a
:class:`matplotlib.figure.Figure` built without pyplot, with the helpers and style
of the text views (:mod:`attnviz.render.common`, :mod:`attnviz.render.text`) and their
:class:`~attnviz.render.layout.Style` (``style=``: size, dpi, fonts, colour map, display label; metadata
in the saved files).
The focus view of a generated token is the text focus view itself, fed through
:func:`attnviz.generate.as_text_attention`.

Rows are generated tokens: row ``i`` is generated token ``i``'s own query (it
sees the prompt, the tokens generated before it and itself). Keys it could not
see (later tokens) are hatched. Layers and heads are 0-based.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from matplotlib.collections import LineCollection
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure

from attnviz.analysis.generation import checked, sink_share
from attnviz.analysis.vlm import collapsed_image_tokens
from attnviz.analysis.words import Units
from attnviz.errors import UsageError
from attnviz.render.common import (
    ATTENTION_CMAP,
    FOCUS_COLOR,
    Frame,
    add_colorbar,
    clamp,
    hatch_behind,
    kv_heads_note,
    nice_step,
    probability_norm,
    safe_label,
    scale_label,
    short_weight,
    wrap,
)
from attnviz.render.layout import DEFAULT_STYLE, Style
from attnviz.render.text import LONG_TOP_K, _column_labels, _finish, _titles_for
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


def _step_labels(result: GenerationAttention, chars: int = 12) -> list[str]:
    return [f"{safe_label(t, chars)} {i}" for i, t in enumerate(result.generated)]


def _colorbar_room(label: str, height_in: float, font: float) -> float:
    """Inches right of a plot that a print-size colour bar (:func:`add_colorbar`, 0.12 in wide, ``font`` points)
    labelled ``label`` over ``height_in`` inches takes: gap, bar, tick labels and the wrapped label."""
    lines = wrap(label, max(height_in - 0.1, 0.8), font).count("\n") + 1
    return 0.12 + 0.12 + (font * 0.62 * 3 + 2 + 4) / 72 + lines * font * 1.1 / 72 + 0.06


def _fitting(options: tuple[str, ...], room_in: float, font: float) -> str:
    """The first of ``options`` that fits in ``room_in`` inches at ``font`` points (else the last, the shortest)."""
    return next((s for s in options if len(s) * font * 0.62 / 72 <= room_in), options[-1])


def _notes(result: GenerationAttention, cross: bool) -> list[str]:
    if cross:
        first = "cross-attention: rows are generated tokens (decoder queries), columns the source (prompt) tokens"
    elif result.encoder_decoder:
        first = "decoder self-attention: rows are generated tokens, columns the decoder start token and the generated tokens"
    else:
        first = "rows: generated tokens (each row is that token's own query); columns: prompt tokens, then generated tokens"
    notes = [first + "; values: attention probabilities"]
    image = collapsed_image_tokens(result)
    if image:
        notes.append(f"the prompt's {image} image tokens are summed into one column, '<image ×{image}>'")
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
    result: GenerationAttention, layer: int | None = None, head: int | None = None, fusion: str = "mean", cross: bool = False,
    style: Style | None = None,
) -> Figure:
    """Generated tokens (rows) x every earlier token (columns) for one layer: a head, or the heads' mean or maximum.

    The prompt/generation boundary is a red vertical line (decoder-only models).
    Up to 100 key columns every column is labelled with its token where the
    labels fit at the style's size, on a linear 0..1 colour scale; beyond that the
    colour scale is square-root (said on the colour bar) and a decoder-only
    model's prompt gets a narrower panel of its own (gid ``"attention-prompt"``;
    ticks every n-th position, "index token") so that the generated tokens'
    columns (``"attention-generated"``) stay legible; key columns beyond about 2
    per pixel are shrunk for display, each pixel the largest weight of its
    columns (said in the subtitle). Rows are labelled ``"token step"`` (every n-th
    where they do not fit). The image (gid ``"attention"``) holds float32
    ``[generated, keys]`` values, masked (hatched) where a step could not see the key.

    Args:
        result: from :func:`attnviz.generate.attend_generation`.
        layer: 0-based layer (negative counts from the end); default the last.
        head: 0-based head; None combines the heads with ``fusion``.
        fusion: ``"mean"`` or ``"max"`` over the layer's heads.
        cross: the cross-attention of an encoder-decoder model (columns: source tokens).
        style: size, dpi, fonts, colour map and display label (default: screen).

    Returns:
        A Figure ``style.width(natural)`` inches wide (natural: at most about 19 inches wide and 18 high).

    Raises:
        UsageError: bad layer, head or fusion; ``cross`` without cross-attention.
    """
    style = style or DEFAULT_STYLE
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
        natural = [(0, C, clamp(C * 0.16, 3.0, 15.0 - gen_w)), (C, K, gen_w)]
    else:
        natural = [(0, K, clamp(K * 0.16, 4.0, 15.0))]
    gap = 0.12 if not style.print_size else 0.08
    natural_w = sum(p[2] for p in natural) + gap * (len(natural) - 1)
    compact = False
    if style.print_size:
        width = style.width(0)
        fonts = style.fonts(width)
        compact = style.compact(width)
        row_font = tick_font = fonts.small
        label_font = fonts.text
        chars = 10 if compact else 12
        step_labels = _step_labels(result, chars)
        left = 0.1 + label_font * 1.3 / 72 + max((len(s) for s in step_labels), default=4) * row_font * 0.62 / 72 + 0.06
        natural_h = clamp(T * row_font * 1.5 / 72, 1.0, max(2.0, width * 1.1))
        cb_room = max(0.72 if compact else 0.85, _colorbar_room(scale_label("attention probability", False, sqrt), natural_h,
                                                                fonts.small))
        avail = max(width - left - cb_room - gap * (len(natural) - 1), 0.8)
        if split:  # the generated tokens' panel as wide as its labels need, up to half the plot
            gen_w = min(max(T * tick_font * 1.35 / 72, avail * 0.3), avail * 0.5)
            panels = [(0, C, avail - gen_w), (C, K, gen_w)]
        else:
            panels = [(0, K, avail)]
        plot_w = sum(p[2] for p in panels) + gap * (len(panels) - 1)
    else:
        fonts = style.fonts(None)
        panels = natural
        plot_w = natural_w
        row_h = clamp(12.0 / max(T, 1), 0.06, 0.22)
        natural_h = max(T * row_h, 1.6)
        row_font = clamp(row_h * 72 * 0.75, 6.0, 8.5)
        tick_font = 7.0
        label_font = fonts.text
        chars = 12
        step_labels = _step_labels(result, chars)
        left = 0.35 + max((len(s) for s in step_labels), default=4) * row_font * 0.6 / 72
        cb_room = 1.3
        width = left + plot_w + cb_room
    col_fonts = [tick_font if style.print_size else clamp(w * 72 / max(c1 - c0, 1) * 0.75, 6.0, 8.5) for c0, c1, w in panels]
    fully = [c1 - c0 <= LABEL_LIMIT and w * 72 / max(c1 - c0, 1) >= max(7.0, f * 1.25) for (c0, c1, w), f in zip(panels, col_fonts)]
    short = chars - 2
    steps = [1 if f else nice_step(c1 - c0, int(w * 72 / (tick_font * 1.6))) for (c0, c1, w), f in zip(panels, fully)]
    longest = max((len(safe_label(labels[k], chars)) if f else len(f"{k} {safe_label(labels[k], short)}")
                   for (c0, c1, _), f, st in zip(panels, fully, steps) for k in range(c0, c1, st)), default=4)
    col_font_max = max(f if full else tick_font for f, full in zip(col_fonts, fully))
    bottom = 0.1 + longest * col_font_max * 0.62 / 72 + label_font * 1.4 / 72 + 0.06
    notes = _notes(result, cross)
    if split:
        notes.append(f"long prompt: its {C} columns are drawn in their own, narrower panel (ticks mark every n-th position)")
    elif not fully[0]:
        notes.append(f"{K} key tokens: ticks mark every n-th position (index and token)")
    note = kv_heads_note(result.kv_heads)
    if note and head is not None:
        notes.append(note)
    shrunk = []
    for c0, c1, w in panels:
        f = -(-(c1 - c0) // max(1, int(2 * w * style.resolution)))
        if f > 1:
            shrunk.append(f)
    if shrunk:
        notes.append(f"shrunk for display: each pixel column shows the largest weight of up to {max(shrunk)} key tokens")
    view = "Cross-attention map" if cross else "Generation map"
    image = collapsed_image_tokens(result)
    settings = f"{result.num_generated} generated tokens, prompt {result.prompt_length - bool(image) + image} tokens"
    above = (tick_font * 1.4 + 3) / 72 + 0.05 if style.print_size else 0.35
    for attempt in range(2):  # the row-label note can only be known once the plot's height is
        titles = _titles_for(style, width, view, result, what, settings, notes)
        top = titles.height_in() + above
        if style.print_size:
            height, plot_h = style.height(top + bottom + 0.05, natural_h)
        else:
            plot_h = natural_h
            height = top + plot_h + bottom + 0.1
        row_step = nice_step(T, int(plot_h * 72 / (row_font * 1.5)))
        if row_step == 1 or attempt == 1:
            break
        notes = notes + [f"every {row_step}th generated token labelled"]
    frame = Frame(width, height, style.resolution)
    frame.titles(titles)
    cmap, norm = style.colormap(ATTENTION_CMAP), probability_norm(1.0, sqrt=sqrt)
    rows = list(range(0, T, row_step))
    x = left
    img = None
    small = fonts.small if style.print_size else 8.0
    for i, ((c0, c1, w), full_labels, col_font, step) in enumerate(zip(panels, fully, col_fonts, steps)):
        ax = frame.axes(x, top, w, plot_h)
        ax.set_gid(f"panel{i}")
        x += w + gap
        vals, m = values[:, c0:c1], mask[:, c0:c1]
        if m.any():
            hatch_behind(ax, c0 - 0.5, -0.5, c1 - c0, T)
        shown, shown_mask, _ = _reduce_columns(vals, m, int(2 * w * style.resolution))
        img = ax.imshow(np.ma.masked_array(shown, mask=shown_mask), cmap=cmap, norm=norm, aspect="auto", interpolation="nearest",
                        extent=(c0 - 0.5, c1 - 0.5, T - 0.5, -0.5), zorder=1)
        img.set_gid("attention" if len(panels) == 1 else ("attention-prompt" if i == 0 else "attention-generated"))
        ax.set_xlim(c0 - 0.5, c1 - 0.5)
        ax.set_ylim(T - 0.5, -0.5)
        if i == 0:
            ax.set_yticks(rows, [step_labels[r] for r in rows], fontsize=row_font)
            ax.set_ylabel("generated token (step)", fontsize=label_font, labelpad=2)
        else:
            ax.set_yticks(rows, [])
        if full_labels:
            ax.set_xticks(range(c0, c1), [safe_label(labels[k], chars) for k in range(c0, c1)], rotation=90, fontsize=col_font)
            for tl, sp in zip(ax.get_xticklabels(), special[c0:c1]):
                tl.set_color("#777777" if sp else "black")
        else:
            ticks = list(range(c0, c1, step))
            ax.set_xticks(ticks, [f"{k} {safe_label(labels[k], short)}" for k in ticks], rotation=90, fontsize=tick_font)
        ax.tick_params(length=2, pad=2)
        if split:
            options = (f"prompt ({C} tokens)", f"prompt ({C})", "prompt") if i == 0 else (f"generated ({T})", f"gen. ({T})", "gen.")
            title_font = small if style.print_size else 8.5
            ax.set_title(_fitting(options, w + gap * 0.5, title_font), fontsize=title_font,
                         color="#333333" if i == 0 else BOUNDARY_COLOR, pad=3)
        if not cross and not result.encoder_decoder and (i == 1 or not split):
            b = C - 0.5
            line = ax.axvline(b, color=BOUNDARY_COLOR, linewidth=(1.2 if not split else 2.4) * (0.7 if compact else 1.0), zorder=3)
            line.set_gid("boundary")
            if not split:
                # the labels either side of the boundary, shortened where the plot leaves them no room
                room_r = (c1 - 0.5 - b) / max(c1 - c0, 1) * w + (0.1 if style.print_size else 0.2)
                room_l = (b - c0 + 0.5) / max(c1 - c0, 1) * w + left - 0.05
                right_text = _fitting((" generated", " gen."), room_r, small)
                left_text = _fitting(("prompt ", "pr. "), room_l, small)
                ax.text(b, -0.5, left_text, ha="right", va="bottom", fontsize=small, color=BOUNDARY_COLOR, clip_on=False)
                ax.text(b, -0.5, right_text, ha="left", va="bottom", fontsize=small, color=BOUNDARY_COLOR, clip_on=False)
    frame.figure.text((left + plot_w / 2) / width, 1 - (top + plot_h + bottom - 0.04) / height, "key (attended to)",
                      ha="center", va="bottom", fontsize=label_font)
    cb_label = scale_label("attention probability", False, sqrt)
    if style.print_size:
        add_colorbar(frame, img, left + plot_w + 0.12, top, max(plot_h, 0.6), cb_label, width_in=0.12, fontsize=fonts.small)
    else:
        add_colorbar(frame, img, left + plot_w + 0.25, top, clamp(plot_h, 1.6, 6.0), cb_label)
    return _finish(frame, style, view.lower(), result, titles,
                   {"layer": layer, "head": head, "fusion": fusion if head is None else None, "cross": cross})


# ---------------------------------------------------------------------------
# sink share


def sink_view(result: GenerationAttention, style: Style | None = None) -> Figure:
    """How much attention each generated token gives the first token (BOS / first prompt token: the attention sink).

    Top: the share per step, mean over all layers and heads (line), with the
    lowest and highest layer (band). Bottom: layers x steps heatmap (gid
    ``"sink"``) of the share, mean over each layer's heads, on a linear 0..1
    scale. Encoder-decoder models: the share of the decoder start token. Steps
    are labelled with their tokens where the labels fit, else with numbers.

    Args:
        result: from :func:`attnviz.generate.attend_generation`.
        style: size, dpi, fonts, colour map and display label (default: screen).

    Returns:
        A Figure ``style.width(natural)`` inches wide (natural: about 9 inches).
    """
    first = result.key_labels[0]
    notes = [
        f"share of each step's attention that goes to key position 0 ('{safe_label(first, 14)}'), "
        "which decoders use as an attention sink (Xiao et al. 2024)",
        "top: mean over layers and heads, band: lowest to highest layer; bottom: mean over each layer's heads",
    ]
    return layer_share_view(result, sink_share(result).numpy(), "Sink share per step", "share to first token", notes,
                            gid="sink", view="sink share", style=style)


def layer_share_view(result: GenerationAttention, share: np.ndarray, title: str, bar_label: str, notes: Sequence[str],
                     gid: str, view: str, style: Style | None = None) -> Figure:
    """A share per layer and generated token (float ``[layers, steps]``, 0-1): top, the mean over layers per step
    (line, gid ``"{gid}-mean"``) and the lowest to highest layer (band); bottom, the layers x steps heatmap (gid
    ``gid``) on a linear 0..1 scale with colour bar ``bar_label``. ``notes[0]`` is the subtitle, the rest notes.
    Used by :func:`sink_view` and the vision-language image-share view."""
    style = style or DEFAULT_STYLE
    L, T = share.shape
    if style.print_size:
        width = style.width(0)
        fonts = style.fonts(width)
        compact = style.compact(width)
        tick = fonts.small
        label_font = fonts.text
        left = 0.1 + label_font * 1.3 / 72 + tick * 0.62 * max(3, len(str(L - 1)) + 1) / 72 + 0.08
        cb_room = 0.72 if compact else 0.85
        line_h, heat_h = (0.9 if compact else 1.2), clamp(L * tick * 1.5 / 72, 0.8, 2.5)
        cb_room = max(cb_room, _colorbar_room(bar_label, heat_h, fonts.small))
        plot_w = max(width - left - cb_room, 0.8)
        gap = 0.1
        chars = 10 if compact else 12
    else:
        compact = False
        fonts = style.fonts(None)
        tick, label_font = 7.5, fonts.text
        plot_w = clamp(T * 0.2, 5.0, 14.0)
        line_h, heat_h = 1.6, clamp(L * 0.22, 1.2, 6.0)
        left, cb_room = 0.8, 1.3
        gap = 0.25
        chars = 12
        width = left + plot_w + cb_room
    x_font = tick if style.print_size else 7.0
    step_labels = _step_labels(result, chars)
    labelled = T <= 60 and plot_w * 72 / max(T, 1) >= x_font * 1.25
    if labelled:
        bottom = 0.1 + max((len(s) for s in step_labels), default=4) * x_font * 0.62 / 72 + label_font * 1.4 / 72 + 0.06
    else:
        bottom = 0.1 + x_font * 1.4 / 72 + label_font * 1.4 / 72 + 0.08
    legend_h = fonts.small * 1.8 / 72 if style.print_size else 0.3
    titles = _titles_for(style, width, title, result, f"{L} layers, {T} generated tokens", notes[0], list(notes[1:]))
    top = titles.height_in() + legend_h + 0.05
    height, plots = style.height(top + gap + bottom, line_h + heat_h)
    line_h, heat_h = line_h * plots / (line_h + heat_h), heat_h * plots / (line_h + heat_h)
    frame = Frame(width, height, style.resolution)
    frame.titles(titles)
    ax = frame.axes(left, top, plot_w, line_h)
    x = np.arange(T)
    ax.fill_between(x, share.min(axis=0), share.max(axis=0), color="#9ecae1", alpha=0.6, linewidth=0, label="layer range")
    (mean_line,) = ax.plot(x, share.mean(axis=0), color="#08519c", linewidth=1.5 if not compact else 1.0,
                           marker="o" if T <= 60 else None, markersize=3 if not compact else 2, label="mean")
    mean_line.set_gid(f"{gid}-mean")
    ax.set_xlim(-0.5, T - 0.5)
    ax.set_ylim(0, 1.0)
    if style.print_size:
        ax.set_yticks([0.0, 0.5, 1.0])
    ax.set_ylabel("share", fontsize=label_font, labelpad=2)
    ax.tick_params(labelsize=tick if style.print_size else 8, labelbottom=False, length=2, pad=1.5)
    ax.grid(axis="y", color="#eeeeee")
    legend = ax.legend(fontsize=fonts.small if style.print_size else 7.5, loc="lower right", bbox_to_anchor=(1.0, 1.0),
                       frameon=False, ncol=2, borderaxespad=0.1, borderpad=0.1, handlelength=1.5, columnspacing=1.0)
    legend.set_gid("legend")
    hx = frame.axes(left, top + line_h + gap, plot_w, heat_h)
    cmap, norm = style.colormap(ATTENTION_CMAP), probability_norm(1.0)
    img = hx.imshow(share, cmap=cmap, norm=norm, aspect="auto", interpolation="nearest", extent=(-0.5, T - 0.5, L - 0.5, -0.5))
    img.set_gid(gid)
    lstep = nice_step(L, int(heat_h * 72 / (tick * 1.4)))
    hx.set_yticks(range(0, L, lstep), [f"L{l}" for l in range(0, L, lstep)], fontsize=tick)
    hx.set_ylabel("layer", fontsize=label_font, labelpad=2)
    if labelled:
        hx.set_xticks(range(T), step_labels, rotation=90, fontsize=x_font)
    else:
        pitch = 22 if not style.print_size else x_font * (0.62 * len(str(T)) + 1.5)
        step = nice_step(T, int(plot_w * 72 / pitch))
        hx.set_xticks(range(0, T, step))
        hx.tick_params(labelsize=8 if not style.print_size else x_font)
    hx.tick_params(length=2, pad=1.5)
    hx.set_xlabel("generated token (step)", fontsize=label_font, labelpad=2)
    if style.print_size:
        add_colorbar(frame, img, left + plot_w + 0.12, top + line_h + gap, heat_h, bar_label, width_in=0.12,
                     fontsize=fonts.small)
    else:
        add_colorbar(frame, img, left + plot_w + 0.25, top + line_h + gap, heat_h, bar_label)
    return _finish(frame, style, view, result, titles, {"layers": L, "steps": T})


# ---------------------------------------------------------------------------
# head view of one generated token


def generation_head_view(result: GenerationAttention, step: int, layer: int | None = None, head: int | None = None,
                         top_k: int = LONG_TOP_K, style: Style | None = None) -> Figure:
    """Token-link graph of one head (or head mean) during generation, for the generated token ``step``.

    Left: the generated tokens (queries); right: every key token (prompt and
    generated). Each generated token's ``top_k`` strongest links are drawn faded
    (opacity and width proportional to the probability); the chosen token's
    links (its 10 strongest) are drawn in red, and its 3 strongest targets are
    labelled with their weights. Keys it cannot see are greyed. Labels are
    thinned (every n-th, with its index) when they do not fit at the style's text
    size. Collections carry gids ``"links"`` and ``"focus-links"``.

    Args:
        result: from :func:`attnviz.generate.attend_generation`.
        step: the generated token (0-based; negative counts from the end).
        layer: 0-based layer, default the last; head: 0-based head, or None for the mean.
        top_k: links drawn per generated token.
        style: size, dpi, fonts and display label (default: screen).

    Returns:
        A Figure ``style.width(8)`` inches wide.

    Raises:
        UsageError: bad step, layer or head.
    """
    style = style or DEFAULT_STYLE
    step = result.check_step(step)
    layer, head, what, attn = _pick(result, layer, head, "mean", False)
    w = attn.numpy().astype(np.float64)  # [T, K]
    T, K = w.shape
    mask = _unseen(result, False)
    n = max(T, K)
    width = style.width(8.0)
    fonts = style.fonts(width)
    compact = style.compact(width)
    per_unit = 0.22 if width >= 7.5 else (0.16 if not compact else 0.125)
    natural_h = clamp(per_unit * n, 2.0 if not style.print_size else 1.2, 16.0 if width >= 7.5 else (9.0 if not compact else 5.5))
    label_w = clamp(width * 0.25, 0.85, 1.9)
    side = 0.2 if not compact else 0.06
    mid = width - 2 * (label_w + side)
    fq = step
    notes = _notes(result, False)[:1] + [
        f"strongest {top_k} links per generated token shown, faded; red: the links of '{safe_label(result.generated[fq], 20)}' "
        f"(step {fq}; opacity relative to its strongest link)",
        "line opacity and width ∝ attention probability",
    ]
    titles = _titles_for(style, width, "Head view", result, what, f"generated token {fq}", notes)
    top = titles.height_in() + fonts.small * 1.6 / 72 + 0.1
    height, plot_h = style.height(top + 0.15, natural_h)
    frame = Frame(width, height, style.resolution)
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
    lw_scale = 1.0 if not compact else 0.6
    segs = np.stack([np.stack([np.zeros(len(qs)), yq[qs]], 1), np.stack([np.ones(len(qs)), yk[ks]], 1)], 1)
    colors = np.tile(np.array(to_rgba("#8c8c8c")), (len(vals), 1))
    colors[:, 3] = np.maximum(vals, 0.04) * 0.3
    lines = LineCollection(segs, colors=colors, linewidths=(0.3 + 2.7 * vals) * lw_scale, zorder=1)
    lines.set_gid("links")
    ax.add_collection(lines)
    row = np.where(mask[fq], 0.0, w[fq])
    order = np.argsort(-row, kind="stable")
    chosen = [int(j) for j in order[:10] if row[j] > 0]
    fw = np.clip(row[chosen], 0.0, 1.0)
    fcol = np.tile(np.array(to_rgba(FOCUS_COLOR)), (len(chosen), 1))
    fcol[:, 3] = 0.12 + 0.88 * fw / max(float(fw.max()) if len(fw) else 1.0, 1e-12)
    flines = LineCollection([((0, yq[fq]), (1, yk[j])) for j in chosen], colors=fcol, linewidths=(0.8 + 4.0 * fw) * lw_scale,
                            zorder=3)
    flines.set_gid("focus-links")
    ax.add_collection(flines)
    suffix = {int(j): short_weight(float(row[j])) for j in order[:3] if row[j] > 0}
    hdr = 0.08 / plot_h
    ax.text(0.0, 1 + hdr, "query" if compact else "generated token (query)", transform=ax.transAxes, ha="right", va="bottom",
            fontsize=fonts.small, color="#555555", style="italic")
    ax.text(1.0, 1 + hdr, "key" if compact else "key (attended to)", transform=ax.transAxes, ha="left", va="bottom",
            fontsize=fonts.small, color="#555555", style="italic")
    ylim = (span + pad, -pad)
    label_pt = (label_w + side - 0.04) * 72
    qunits = Units(tuple(result.generated), tuple((i,) for i in range(T)), tuple(result.generated_special))
    kunits = Units(tuple(result.key_labels), tuple((i,) for i in range(K)), tuple(result.key_special))
    qlabels = _column_labels(ax, qunits, yq, 0.0, "right", plot_h * 72, ylim, {fq: ""}, fonts.text, label_pt)
    klabels = _column_labels(ax, kunits, yk, 1.0, "left", plot_h * 72, ylim, suffix, fonts.text, label_pt)
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
        ax.plot([1.0, 1.03], [yb, yb], color=BOUNDARY_COLOR, linewidth=1.2 * lw_scale, clip_on=False)
    return _finish(frame, style, "head view", result, titles, {"step": step, "layer": layer, "head": head, "top_k": top_k})

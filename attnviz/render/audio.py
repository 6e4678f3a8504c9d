"""Views of ``attnviz audio``: matplotlib Figures, no I/O. Time runs left to right in seconds everywhere.

- :func:`spectrogram_view` -- the waveform and a spectrogram (Whisper: its own log-mel input features), optionally
  with the transcript's word spans (``words.png``);
- :func:`alignment_view` -- generated tokens x time: a head's (or the alignment heads' mean) cross-attention over the
  clip's frames, with the DTW path and each token's time (Whisper; OpenAI ``timing.py``);
- :func:`encoder_view` -- one encoder layer's frame x frame self-attention, every head and the head mean.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from matplotlib.figure import Figure

from attnviz.render.common import block_reduce, safe_label, wrap
from attnviz.render.layout import DEFAULT_STYLE, IMAGE_CMAP, Style, attach_metadata, shared_vmax

WORD_COLOURS = ("#4363d8", "#e6194b")


def _title(fig: Figure, title: str, subtitle: str, width: float, fonts) -> float:
    """Draw the title block at the top; return its height in inches."""
    size = fonts.title * 0.85
    text = wrap(title, width - 0.3, size) + ("\n" + wrap(subtitle, width - 0.3, size) if subtitle else "")
    lines = text.count("\n") + 1
    return 0.1 + lines * size * 1.2 / 72 + 0.1, text


def _figure(width: float, height: float, style: Style) -> Figure:
    return Figure(figsize=(width, height), dpi=style.resolution)


def _axes(fig: Figure, left: float, bottom: float, w: float, h: float):
    W, H = fig.get_figwidth(), fig.get_figheight()
    return fig.add_axes((left / W, bottom / H, w / W, h / H))


def _put(fig: Figure, text: str, fonts) -> None:
    fig.text(0.5, 1 - 0.08 / fig.get_figheight(), text, ha="center", va="top", fontsize=fonts.title * 0.85,
             linespacing=1.15)


def spectrogram_view(samples: np.ndarray, rate: int, *, mel: np.ndarray | None = None, mel_hop_s: float = 0.01,
                     words: Sequence = (), title: str, subtitle: str = "", style: Style = DEFAULT_STYLE, model: str = "",
                     view: str = "spectrogram") -> Figure:
    """Waveform over a spectrogram of the clip; with ``words``, each word's span shaded and labelled.

    Args:
        samples: float32 ``[n]`` mono at ``rate`` Hz (what the model hears).
        mel: ``[mels, frames]`` log-mel features (Whisper's input, 10 ms hop); None: an STFT spectrogram (25 ms
            window, 10 ms hop) of ``samples`` in dB.
        words: objects with ``text``, ``start_s``, ``end_s``.
    """
    duration = len(samples) / rate
    width = style.width(9.0)
    fonts = style.fonts(width)
    top, text = _title(None, title, subtitle, width, fonts)
    left, right = 0.75, 0.25
    lanes = _word_lanes(words, duration, width - left - right, fonts.small)
    n_lanes = max(lanes, default=-1) + 1
    wave_h, word_h = (0.8 if style.height_in is None else 0.45), (0.06 + 0.17 * n_lanes if words else 0.0)
    height, spec_h = style.height(top + wave_h + word_h + 0.55, 1.9, min_plot=0.6)  # UsageError when too short
    fig = _figure(width, height, style)
    pw = width - left - right
    y = height - top - wave_h
    ax_w = _axes(fig, left, y, pw, wave_h - 0.08)
    t = np.arange(len(samples)) / rate
    step = max(1, len(samples) // 4000)
    ax_w.plot(t[::step], samples[::step], color="#333333", linewidth=0.5)
    ax_w.set_xlim(0, duration)
    peak = float(np.abs(samples).max()) or 1.0
    ax_w.set_ylim(-peak * 1.05, peak * 1.05)
    ax_w.set_xticks([])
    ax_w.set_yticks([])
    ax_w.set_ylabel("wave", fontsize=fonts.small)
    if words:
        y -= word_h
        ax_t = _axes(fig, left, y, pw, word_h)
        ax_t.set_xlim(0, duration)
        ax_t.set_ylim(0, 1)
        ax_t.axis("off")
    y -= spec_h
    ax_s = _axes(fig, left, y, pw, spec_h)
    if mel is not None:
        ax_s.imshow(mel, origin="lower", aspect="auto", cmap=style.colormap("magma"),
                    extent=(0, mel.shape[1] * mel_hop_s, 0, mel.shape[0]), interpolation="nearest")
        ax_s.set_ylabel("mel bin", fontsize=fonts.text)
    else:
        nfft = max(2, min(int(0.025 * rate), len(samples)))
        hop = max(1, min(int(0.01 * rate), nfft - 1))
        ax_s.specgram(samples, NFFT=nfft, Fs=rate, noverlap=nfft - hop, cmap=style.colormap("magma"), scale="dB")
        ax_s.set_ylabel("Hz", fontsize=fonts.text)
    ax_s.set_xlim(0, duration)
    ax_s.set_xlabel("time (s)", fontsize=fonts.text)
    ax_s.tick_params(labelsize=fonts.small)
    for k, w in enumerate(words):
        colour = WORD_COLOURS[k % 2]
        for ax in (ax_w, ax_s):
            ax.axvspan(w.start_s, max(w.end_s, w.start_s + 0.005), color=colour, alpha=0.12 if ax is ax_w else 0.0,
                       linewidth=0)
        ax_s.axvline(w.start_s, color="white", linewidth=0.6, alpha=0.7)
        if lanes[k] < 0:  # no room for its label: the span is still shaded and marked
            continue
        mid = (w.start_s + w.end_s) / 2
        ax_t.text(mid, 1 - (lanes[k] + 0.5) / n_lanes, safe_label(w.text, 16), ha="center", va="center",
                  fontsize=fonts.small, color=colour, clip_on=False)
    _put(fig, text, fonts)
    attach_metadata(fig, title, model, style, view)
    return fig


#: Most rows of word labels under the waveform; a word whose label fits in none of them is left unlabelled.
MAX_WORD_LANES = 4


def _word_lanes(words: Sequence, duration: float, width_in: float, font_pt: float) -> list[int]:
    """A row (0..MAX_WORD_LANES-1) for each word's label, centred on its span, so that no two labels in a row
    overlap (label width estimated at 0.6 em a character); -1 where no row has room."""
    ends = [-math.inf] * MAX_WORD_LANES
    out = []
    per_s = width_in / max(duration, 1e-9)  # inches per second
    for w in words:
        half = (len(safe_label(w.text, 16)) * 0.6 * font_pt / 72 + 0.06) / 2 / per_s
        mid = (w.start_s + w.end_s) / 2
        lane = next((i for i, e in enumerate(ends) if mid - half >= e), -1)
        if lane >= 0:
            ends[lane] = mid + half
        out.append(lane)
    return out


def alignment_view(matrix: np.ndarray, frame_s: float, tokens: Sequence[str], *, ends: Sequence[float] = (),
                   path: tuple[np.ndarray, np.ndarray] | None = None, path_offset: int = 0, title: str,
                   subtitle: str = "", what: str = "attention probability", style: Style = DEFAULT_STYLE,
                   model: str = "") -> Figure:
    """Tokens (rows, top to bottom) x time (seconds): cross-attention probabilities over the clip's frames.

    Args:
        matrix: ``[tokens, frames]`` probabilities (each row's share on the clip's frames; rows over the whole
            window sum to 1).
        tokens: row labels; ends: a time per row (seconds; the pipeline passes each token's start), drawn as a tick;
        path: DTW path (rows relative to ``path_offset``, frames), drawn as a line.
    """
    T, F = matrix.shape
    width = style.width(9.0)
    fonts = style.fonts(width)
    top, text = _title(None, title, subtitle, width, fonts)
    row_h = 0.16 if T <= 40 else max(0.05, 6.5 / T)
    height, plot_h = style.height(top + 0.7, max(1.2, T * row_h), min_plot=0.6)  # UsageError when too short
    fig = _figure(width, height, style)
    left = 0.25 + min(1.2, fonts.small * 0.6 * max((len(t) for t in tokens), default=4) / 72)
    bar = 1.15
    ax = _axes(fig, left, 0.55, width - left - bar, plot_h)
    vmax = shared_vmax(matrix)
    img = ax.imshow(matrix, aspect="auto", cmap=style.colormap(IMAGE_CMAP), vmin=0, vmax=vmax,
                    extent=(0, F * frame_s, T - 0.5, -0.5), interpolation="nearest")
    step = max(1, math.ceil(T * fonts.small * 1.2 / 72 / plot_h))
    shown = list(range(0, T, step))
    ax.set_yticks(shown)
    ax.set_yticklabels([safe_label(tokens[i], 14) for i in shown], fontsize=fonts.small)
    ax.set_xlabel("time (s)", fontsize=fonts.text)
    ax.tick_params(axis="x", labelsize=fonts.small)
    if path is not None and len(path[0]):
        ax.plot((path[1] + 0.5) * frame_s, path[0] + path_offset, color="white", linewidth=0.8, alpha=0.85,
                label="DTW path")
    if len(ends):
        ax.scatter(ends, np.arange(len(ends)), marker="|", color="#00e5ff", s=40, linewidths=1.2, label="token start")
    if (path is not None and len(path[0])) or len(ends):
        ax.legend(loc="upper right", fontsize=fonts.small, framealpha=0.7)
    cax = _axes(fig, width - bar + 0.15, 0.55, 0.14, plot_h)
    cb = fig.colorbar(img, cax=cax)
    cb.set_label(wrap(what, max(plot_h - 0.05, 0.4), fonts.small), fontsize=fonts.small)
    cb.ax.tick_params(labelsize=fonts.small)
    _put(fig, text, fonts)
    attach_metadata(fig, title, model, style, "alignment")
    return fig


def encoder_view(maps: np.ndarray, frame_s: float, *, names: Sequence[str], title: str, subtitle: str = "",
                 style: Style = DEFAULT_STYLE, model: str = "") -> Figure:
    """Frame x frame self-attention (query frame down, key frame across, both in seconds), one panel per map.

    Args:
        maps: ``[panels, F, F]`` (an array or a sequence of ``[F, F]`` arrays) probabilities over the clip's frames
            (the head mean last), float32 or float64.

    A map with more frames than its panel has pixels is drawn one pixel per ``f x f`` block of frames, the block's
    largest probability (:func:`attnviz.render.common.block_reduce`: a sharp diagonal stays visible), and the
    subtitle says so; the colour scale is that of the full maps.
    """
    n = len(maps)
    width = style.width(11.0 if n > 4 else 8.0)
    fonts = style.fonts(width)
    cols = min(n, 4 if width >= 5 else 2)
    rows = math.ceil(n / cols)
    bar, gap, side, label = 0.95, 0.3, 0.5, 0.45
    panel = (width - side - bar - (cols - 1) * gap) / cols
    tops = [float(m.max()) for m in maps]
    reduced = [block_reduce(m, None, max(16, int(panel * style.resolution)), "max") for m in maps]
    factor = reduced[0][2]
    dur = maps[0].shape[-1] * frame_s
    maps = [r[0] for r in reduced]
    if factor > 1:
        subtitle = (subtitle + "; " if subtitle else "") + f"one pixel per {factor}x{factor} frames (their maximum)"
    top, text = _title(None, title, subtitle, width, fonts)
    height = style.height_in or top + rows * (panel + label + 0.2) + 0.05
    if style.height_in is not None:  # a fixed size: the number of columns that gives the largest panels
        def fit(c: int) -> float:
            r = math.ceil(n / c)
            return min((width - side - bar - (c - 1) * gap) / c, (height - top - 0.05) / r - label - 0.2)

        cols = max(range(1, n + 1), key=fit)
        rows, panel = math.ceil(n / cols), fit(cols)
        if panel < 0.3:
            from attnviz.errors import UsageError

            raise UsageError(f"--size {style.width_in:g}x{style.height_in:g} is too small for the encoder view's {n} "
                             "panels (each would be under 0.3 in); use a larger size")
    fig = _figure(width, height, style)
    vmax = shared_vmax(tops)
    cmap = style.colormap(IMAGE_CMAP)
    img = None
    for k, (m, name, peak) in enumerate(zip(maps, names, tops)):
        r, c = divmod(k, cols)
        x = side + c * (panel + gap)
        y = height - top - (r + 1) * (panel + label + 0.2) + label
        ax = _axes(fig, x, y, panel, panel)
        top_val = peak if style.scale == "per-head" else vmax
        img = ax.imshow(m, cmap=cmap, vmin=0, vmax=top_val or 1.0, extent=(0, dur, dur, 0), interpolation="nearest")
        ax.set_title(name, fontsize=fonts.text, pad=3)
        ax.tick_params(labelsize=fonts.small)
        if c == 0:
            ax.set_ylabel("query time (s)", fontsize=fonts.small)
        ax.set_xlabel("key time (s)", fontsize=fonts.small, labelpad=1)
    if img is not None:
        cax = _axes(fig, width - bar + 0.12, height - top - rows * (panel + label + 0.2) + label, 0.14,
                    rows * (panel + label + 0.2) - label - 0.2)
        cb = fig.colorbar(img, cax=cax)
        what = "attention probability" + (" (each panel its own scale)" if style.scale == "per-head" else "")
        cb.set_label(what, fontsize=fonts.small)
        cb.ax.tick_params(labelsize=fonts.small)
    _put(fig, text, fonts)
    attach_metadata(fig, title, model, style, "encoder")
    return fig


def heads_view(scores: np.ndarray, official: Sequence[tuple[int, int]], *, title: str, subtitle: str = "",
               style: Style = DEFAULT_STYLE, model: str = "") -> Figure:
    """``[layers, heads]`` alignment scores (0..1) as a grid, the checkpoint's alignment heads outlined."""
    from matplotlib.patches import Rectangle

    L, H = scores.shape
    width = style.width(max(4.5, min(9.0, 1.6 + 0.45 * H)))
    fonts = style.fonts(width)
    top, text = _title(None, title, subtitle, width, fonts)
    cell = min(0.45, (width - 1.8) / H)
    if style.height_in is not None:
        cell = min(cell, (style.height_in - top - 0.65) / L)
        if cell < 0.15:
            from attnviz.errors import UsageError

            raise UsageError(f"--size {style.width_in:g}x{style.height_in:g} is too short for the heads view's {L} "
                             "layers; use a taller size")
    height = style.height_in or top + L * cell + 0.65
    fig = _figure(width, height, style)
    ax = _axes(fig, 0.7, 0.55, H * cell, L * cell)
    img = ax.imshow(scores, cmap=style.colormap(IMAGE_CMAP), vmin=0, vmax=max(float(scores.max()), 1e-9), aspect="auto")
    for l in range(L):
        for h in range(H):
            v = scores[l, h]
            ax.text(h, l, f"{v:.2f}", ha="center", va="center", fontsize=fonts.small * 0.9,
                    color="black" if v > 0.6 * scores.max() else "white")
    for l, h in official:
        if 0 <= l < L and 0 <= h < H:
            ax.add_patch(Rectangle((h - 0.5, l - 0.5), 1, 1, fill=False, edgecolor="#00e5ff", linewidth=1.6))
    ax.set_xticks(range(H))
    ax.set_yticks(range(L))
    ax.tick_params(labelsize=fonts.small)
    ax.set_xlabel("head", fontsize=fonts.text)
    ax.set_ylabel("decoder layer", fontsize=fonts.text)
    cax = _axes(fig, 0.7 + H * cell + 0.15, 0.55, 0.14, L * cell)
    cb = fig.colorbar(img, cax=cax)
    cb.set_label("score", fontsize=fonts.small)
    cb.ax.tick_params(labelsize=fonts.small)
    _put(fig, text, fonts)
    attach_metadata(fig, title, model, style, "heads")
    return fig

"""Helpers every view shares: figures, titles, colour maps, labels, colour bars, masks.

Everything here builds on :class:`matplotlib.figure.Figure` directly (no pyplot,
no global state, no file I/O), so views render headless with the Agg canvas and
can be saved as PNG, SVG or PDF by the caller (``fig.savefig(path)``).

Layout is done in inches (:class:`Frame`) rather than with a layout engine: views
know how much room their labels need, the result is the same on every machine,
and grids of hundreds of cells stay fast.
"""

from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import Colormap, Normalize, PowerNorm
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

#: Name of the default colour map of attention probabilities (perceptually uniform, colour-blind safe;
#: see :mod:`attnviz.render.layout`).
ATTENTION_CMAP = "viridis"
#: Colour and hatch of cells a query may not attend to (causal mask), and of cells not captured.
MASKED_COLOR = "#9e9e9e"
MASKED_HATCH = "/////"
MASKED_FILL = "#e6e6e6"
MISSING_COLOR = "#e0e0e0"
#: Colour that marks the focus token and its links.
FOCUS_COLOR = "#d62728"
#: Resolution of every figure, in dots per inch (PNG output).
DPI = 100
#: Largest figure side, in inches (at :data:`DPI` that is 2400 pixels).
MAX_SIDE_IN = 24.0

TITLE_SIZE = 12.0
SUBTITLE_SIZE = 9.0


def clamp(value: float, low: float, high: float) -> float:
    """``value`` limited to ``[low, high]``."""
    return max(low, min(high, value))


def attention_cmap(name: str = ATTENTION_CMAP) -> Colormap:
    """A copy of colour map ``name`` whose "bad" colour (masked cells) is transparent.

    Masked cells then show whatever is drawn behind the image, e.g. the hatched
    "not allowed" background of :func:`hatch_behind`.
    """
    import matplotlib

    return matplotlib.colormaps[name].with_extremes(bad=(0.0, 0.0, 0.0, 0.0))


def probability_norm(vmax: float = 1.0, sqrt: bool = False) -> Normalize:
    """A colour scale for probabilities from 0 to ``vmax`` (default 1): linear, or square-root with ``sqrt``.

    The square-root scale (a :class:`~matplotlib.colors.PowerNorm` with gamma 0.5)
    keeps the small weights of long inputs visible; views that use it say so in
    the colour bar label (see :func:`scale_label`).
    """
    vmax = vmax if vmax > 0 else 1.0
    return PowerNorm(gamma=0.5, vmin=0.0, vmax=vmax) if sqrt else Normalize(vmin=0.0, vmax=vmax)


def scale_label(what: str, renormalised: bool, sqrt: bool) -> str:
    """Colour bar label: ``"attention probability (renormalised; square-root scale)"`` and the like."""
    notes = [n for n, on in (("renormalised", renormalised), ("square-root scale", sqrt)) if on]
    return what + (f" ({'; '.join(notes)})" if notes else "")


def text_color_on(cmap: Colormap, norm: Normalize, value: float) -> str:
    """Black or white, whichever reads better on the colour ``cmap(norm(value))``."""
    r, g, b, _ = cmap(norm(value))
    return "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white"


def safe_label(text: str, max_chars: int = 14) -> str:
    """A token or word as a plot label: one line, at most ``max_chars`` characters.

    Longer labels end in an ellipsis; whitespace and control characters become
    visible (``␣``, ``⏎``, ``⇥``); ``$`` is escaped so matplotlib never reads a
    label as mathtext; an empty label becomes ``∅``.
    """
    s = str(text)
    if s == "":
        return "∅"
    s = s.replace("\r\n", "⏎").replace("\n", "⏎").replace("\r", "⏎").replace("\t", "⇥")
    if s.strip() == "":
        s = "␣" * min(len(s), 3)
    s = "".join(ch if ch.isprintable() else "\ufffd" for ch in s)
    if len(s) > max_chars:
        s = s[: max(1, max_chars - 1)] + "…"
    return s.replace("$", r"\$")


def short_weight(value: float) -> str:
    """A probability in two decimals without the leading zero: ``0.68`` -> ``".68"``, ``1.0`` -> ``"1.0"``, ``0.001`` -> ``"<.01"``."""
    if value != value:  # NaN
        return "–"
    if value >= 0.995:
        return "1.0"
    if 0 < value < 0.005:
        return "<.01"
    return f"{value:.2f}".removeprefix("0")


def nice_step(n: int, capacity: int) -> int:
    """The smallest of 1, 2, 5, 10, 20, 50, ... such that ``n`` items every ``step`` fit in ``capacity`` labels."""
    capacity = max(1, capacity)
    if n <= capacity:
        return 1
    raw = n / capacity
    base = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 5, 10):
        if m * base >= raw:
            return int(m * base)
    return int(10 * base)  # pragma: no cover


def wrap(text: str, width_in: float, fontsize: float, bold: bool = False) -> str:
    """``text`` wrapped to fit ``width_in`` inches at ``fontsize`` points (a cautious character count)."""
    chars = max(12, int(width_in * 72 / (fontsize * (0.64 if bold else 0.58))))
    return "\n".join(textwrap.fill(line, chars, break_on_hyphens=False) for line in text.split("\n"))


@dataclass(frozen=True)
class Titles:
    """A view's title (model, layer/head) and subtitle (view settings, notes), already wrapped."""

    title: str
    subtitle: str
    title_size: float = TITLE_SIZE
    sub_size: float = SUBTITLE_SIZE

    def height_in(self) -> float:
        """Inches the title block needs at the top of a figure."""
        lines_t = self.title.count("\n") + 1
        lines_s = (self.subtitle.count("\n") + 1) if self.subtitle else 0
        top = 0.25 if self.title_size >= 10 else 0.12
        return top + lines_t * self.title_size * 1.3 / 72 + lines_s * self.sub_size * 1.3 / 72 + 0.1


def make_titles(view: str, model_id: str, what: str, settings: str, notes: Sequence[str] = (), width_in: float = 8.0,
                fonts=None) -> Titles:
    """Title ``"{view} · {model_id} · {what}"`` and a subtitle of the view ``settings`` and ``notes``.

    ``what`` names the layer/head (e.g. ``"layer 3, head 1"``); ``settings`` is
    :meth:`attnviz.analysis.select.ViewSpec.describe`; each note goes on its own
    line. Both are wrapped to ``width_in`` inches.
    """
    ts, ss = (fonts.title, fonts.sub) if fonts is not None else (TITLE_SIZE, SUBTITLE_SIZE)
    margin = 0.3 if width_in >= 5 else 0.15
    title = wrap(f"{view} · {model_id} · {what}" if what else f"{view} · {model_id}", width_in - margin, ts, bold=True)
    sub = [settings] + [n for n in notes if n]
    return Titles(title, wrap("\n".join(sub), width_in - margin, ss), ts, ss)


def layer_head_text(layer: int | None, head: int | None) -> str:
    """``"layer 3, head 1"``; ``"layer 3, head mean"`` when ``head`` is None; ``"all layers and heads"`` when both are None."""
    if layer is None:
        return "all layers and heads"
    return f"layer {layer}, head {'mean' if head is None else head}"


def kv_heads_note(kv_heads: Sequence[int] | None) -> str:
    """Describe grouped-query attention: ``"grouped-query attention: heads 0-1 share KV head 0, heads 2-3 share KV head 1"``.

    Returns ``""`` when every head has its own key/value head (``kv_heads`` None).
    Long lists are shortened to the first groups and the group size.
    """
    if not kv_heads:
        return ""
    groups: dict[int, list[int]] = {}
    for h, kv in enumerate(kv_heads):
        groups.setdefault(kv, []).append(h)

    def span(hs: list[int]) -> str:
        if hs == list(range(hs[0], hs[-1] + 1)):
            return f"heads {hs[0]}-{hs[-1]}" if len(hs) > 1 else f"head {hs[0]}"
        return "heads " + ",".join(map(str, hs))

    parts = [f"{span(hs)} share KV head {kv}" if len(hs) > 1 else f"{span(hs)} reads KV head {kv}" for kv, hs in sorted(groups.items())]
    sizes = {len(hs) for hs in groups.values()}
    head = f"grouped-query attention ({len(kv_heads)} query heads, {len(groups)} KV heads"
    head += f", {sizes.pop()} per KV head): " if len(sizes) == 1 else "): "
    if len(parts) > 4:
        parts = parts[:3] + ["..."]
    return head + ", ".join(parts)


class Frame:
    """Place axes on a figure in inches: ``Frame(width, height)`` then :meth:`axes`.

    Coordinates are measured from the figure's left and top edges, so a view can
    reserve exactly the room its title and labels need.
    """

    def __init__(self, width_in: float, height_in: float, dpi: int = DPI):
        self.width = float(width_in)
        self.height = float(height_in)
        self.figure = Figure(figsize=(self.width, self.height), dpi=dpi)
        self.figure.patch.set_facecolor("white")
        self.figure.attnviz_dpi = dpi  # type: ignore[attr-defined]  # what report.write_figure saves PNGs at

    def rect(self, left_in: float, top_in: float, width_in: float, height_in: float) -> list[float]:
        """Figure-fraction ``[left, bottom, width, height]`` of a box given in inches from the top-left."""
        return [
            left_in / self.width,
            1.0 - (top_in + height_in) / self.height,
            width_in / self.width,
            height_in / self.height,
        ]

    def axes(self, left_in: float, top_in: float, width_in: float, height_in: float, **kwargs) -> Axes:
        """New axes in the box ``(left, top, width, height)``, in inches from the figure's top-left corner."""
        return self.figure.add_axes(self.rect(left_in, top_in, width_in, height_in), **kwargs)

    def titles(self, titles: Titles) -> None:
        """Draw a title block (title bold, subtitle grey) at the top left of the figure."""
        fig = self.figure
        x = (0.2 if self.width >= 5 else 0.08) / self.width
        y = 1.0 - (0.18 if titles.title_size >= 10 else 0.08) / self.height
        t = fig.text(x, y, titles.title, ha="left", va="top", fontsize=titles.title_size, fontweight="bold")
        t.set_gid("title")
        if titles.subtitle:
            lines_t = titles.title.count("\n") + 1
            y2 = y - (lines_t * titles.title_size * 1.3 / 72 + 0.04) / self.height
            s = fig.text(x, y2, titles.subtitle, ha="left", va="top", fontsize=titles.sub_size, color="#444444")
            s.set_gid("subtitle")


def layer_head_axes(ax: Axes, num_layers: int, num_heads: int, font: float, cell_h: float, cell_w: float | None = None,
                    tick_font: float | None = None, label_font: float = 9.0, prefix: bool = True) -> None:
    """Label a layers x heads grid: ``H0..`` along the top, ``L0..`` down the side, axis names "head" and "layer".

    ``font`` is the cell font size in points, ``cell_h`` (and ``cell_w``) a cell's height (width) in inches.
    ``tick_font`` sets the tick labels' size (default: from ``font`` and ``cell_h``), ``label_font`` the axis
    names'; labels that would not fit in a cell are thinned to every n-th; ``prefix`` False drops the "H"/"L"
    (narrow figures).
    """
    tx = tick_font if tick_font is not None else clamp(font + 0.5, 6, 8)
    ty = tick_font if tick_font is not None else clamp(cell_h * 20, 6, 8)
    hp, lp = ("H", "L") if prefix else ("", "")
    col_step = row_step = 1
    if cell_w is not None:
        need = tx * 0.6 * (len(str(num_heads - 1)) + len(hp)) + 2
        if cell_w * 72 < need:
            col_step = nice_step(num_heads, int(num_heads * cell_w * 72 / (need + 2)))
    if cell_h * 72 < ty * 1.2:
        row_step = nice_step(num_layers, int(num_layers * cell_h * 72 / (ty * 1.4)))
    ax.set_xticks(range(0, num_heads, col_step), [f"{hp}{h}" for h in range(0, num_heads, col_step)], fontsize=tx)
    ax.set_yticks(range(0, num_layers, row_step), [f"{lp}{l}" for l in range(0, num_layers, row_step)], fontsize=ty)
    ax.tick_params(length=0, pad=1.5)
    ax.xaxis.set_ticks_position("top")
    ax.xaxis.set_label_position("top")
    ax.set_xlabel("head", fontsize=label_font, labelpad=2)
    ax.set_ylabel("layer", fontsize=label_font, labelpad=2)


def figure_text(fig: Figure) -> str:
    """All text drawn on ``fig`` (title, subtitle, notes), joined by newlines, for tests and checks."""
    return "\n".join(t.get_text() for t in fig.texts)


def add_colorbar(frame: Frame, mappable, left_in: float, top_in: float, height_in: float, label: str, width_in: float = 0.18,
                 fontsize: float = 9.0, ticks=None):
    """A vertical colour bar for ``mappable`` in the box at ``(left_in, top_in)`` inches, labelled ``label``
    (``fontsize`` points, smaller on a short bar; tick labels one point smaller, never under 6)."""
    cax = frame.axes(left_in, top_in, width_in, height_in)
    cb = frame.figure.colorbar(mappable, cax=cax, ticks=ticks)
    # a short bar (a wide, flat panel) gets a smaller label rather than one that runs past it: at most two
    # lines along the bar, shrinking the font down to 6 pt
    size = fontsize
    while size > 6.0 and wrap(label, max(height_in - 0.05, 0.3), size).count("\n") > 1:
        size = max(6.0, size - 0.5)
    cb.set_label(wrap(label, max(height_in - 0.05, 0.3), size), fontsize=size, linespacing=1.0)
    cb.ax.tick_params(labelsize=max(6.0, fontsize - 1), length=2, pad=1.5)
    if ticks is None:
        from matplotlib.ticker import FuncFormatter, MaxNLocator

        cb.locator = MaxNLocator(nbins=int(clamp(height_in * 72 / (fontsize * 2.6), 2, 6)))
        cb.formatter = FuncFormatter(lambda v, _pos: f"{v:.2g}" if abs(v) >= 1e-4 or v == 0 else f"{v:.0e}")
        cb.update_ticks()
    cax.set_gid("colorbar")
    return cb


def hatch_behind(ax: Axes, x0: float, y0: float, width: float, height: float, color: str = MASKED_COLOR) -> Rectangle:
    """A hatched rectangle (data coordinates) drawn under an image: its masked (transparent) cells show the hatch.

    Used for attention a query is not allowed to give (keys after it, under a causal mask).
    """
    rect = Rectangle((x0, y0), width, height, facecolor=MASKED_FILL, edgecolor=color, hatch=MASKED_HATCH, linewidth=0, zorder=0)
    rect.set_gid("masked")
    ax.add_patch(rect)
    return rect


def masked_legend_handle(label: str = "not allowed (causal mask)") -> Rectangle:
    """A legend entry for hatched masked cells."""
    return Rectangle((0, 0), 1, 1, facecolor=MASKED_FILL, edgecolor=MASKED_COLOR, hatch=MASKED_HATCH, label=label)


def block_reduce(values: np.ndarray, mask: np.ndarray | None, max_size: int, how: str = "max") -> tuple[np.ndarray, np.ndarray | None, int]:
    """Shrink a ``[rows, cols]`` map to at most ``max_size`` per side, one value per ``f x f`` block.

    ``how`` is ``"max"`` (the largest weight of the block: sharp patterns stay
    visible) or ``"mean"``. Masked cells (``mask`` True) do not count; a block
    whose cells are all masked stays masked. Returns ``(values, mask, f)``; ``f``
    is 1 (and the inputs come back unchanged) when the map already fits.

    Raises:
        ValueError: unknown ``how``.
    """
    if how not in ("max", "mean"):
        raise ValueError(f"how must be 'max' or 'mean', not {how!r}")
    rows, cols = values.shape
    f = max(1, math.ceil(max(rows, cols) / max(1, max_size)))
    if f == 1:
        return values, mask, 1
    R, C = math.ceil(rows / f), math.ceil(cols / f)
    out = np.zeros((R, C), dtype=np.float32)
    empty = np.zeros((R, C), dtype=bool)
    pc = C * f - cols
    band = max(1, (1 << 22) // max(1, f * C * f))  # output rows per band: a few MB of work at a time
    for b0 in range(0, R, band):  # bands of rows: never a padded copy of the whole map
        b1 = min(R, b0 + band)
        r0, r1 = b0 * f, min(rows, b1 * f)
        pr = (b1 - b0) * f - (r1 - r0)
        allowed = np.ones((r1 - r0, cols), dtype=bool) if mask is None else ~mask[r0:r1]
        allowed = np.pad(allowed, ((0, pr), (0, pc)))  # padding is not allowed
        cnt = allowed.reshape(b1 - b0, f, C, f).sum(axis=(1, 3))
        if how == "max":
            v = np.pad(values[r0:r1].astype(np.float32, copy=False), ((0, pr), (0, pc)))
            v = np.where(allowed, v, -np.inf).reshape(b1 - b0, f, C, f).max(axis=(1, 3))
            out[b0:b1] = np.where(cnt > 0, v, 0.0)
        else:
            v = np.pad(values[r0:r1].astype(np.float64), ((0, pr), (0, pc)))
            vs = np.where(allowed, v, 0.0).reshape(b1 - b0, f, C, f).sum(axis=(1, 3))
            out[b0:b1] = np.where(cnt > 0, vs / np.maximum(cnt, 1), 0.0)
        empty[b0:b1] = cnt == 0
    return out, (empty if mask is not None else None), f


def spread_positions(positions: Sequence[float], min_gap: float, low: float, high: float) -> list[float]:
    """Move sorted 1-D label positions apart so neighbours are at least ``min_gap`` apart, within ``[low, high]``.

    Used to keep labels that must be shown (a focus token and its targets) from
    overlapping. Positions that already have room do not move.
    """
    out = [float(p) for p in positions]
    n = len(out)
    if n < 2:
        return out
    for i in range(1, n):
        out[i] = max(out[i], out[i - 1] + min_gap)
    if out[-1] > high:
        out[-1] = high
        for i in range(n - 2, -1, -1):
            out[i] = min(out[i], out[i + 1] - min_gap)
    if out[0] < low:  # no room at all: spread evenly
        out = list(np.linspace(low, high, n))
    return out

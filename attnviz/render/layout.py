"""The one layout and style module every view uses: figure sizes, dpi, fonts, colour maps and scales.

A :class:`Style` says how big a figure is when printed and how it is coloured:

- ``size``: ``"screen"`` (the default: each view's own width, what reads well on
  a monitor), ``"column"`` (:data:`COLUMN_IN` = 3.3 in, one column of a
  two-column paper), ``"page"`` (:data:`PAGE_IN` = 6.9 in, the full text width)
  or ``"WxH"`` in inches (e.g. ``"5x4"``: that exact size);
- ``dpi``: pixels per inch of PNG output (default 300 for print sizes, 150 on screen);
- ``cmap``: a matplotlib colour map name (default: perceptually uniform and
  colour-blind safe, :data:`TEXT_CMAP` / :data:`IMAGE_CMAP`);
- ``scale``: ``"shared"`` (all heads of a figure on one colour scale, the
  default) or ``"per-head"`` (each head on its own scale, said on the figure);
- ``label``: the model's display name in titles (default :func:`display_label`).

Figures are saved at exactly their size (no ``bbox_inches="tight"`` cropping), so
a figure of ``size`` inches printed at that width shows every font at its nominal
point size; :meth:`Style.fonts` never goes below :data:`MIN_FONT_PT` (6 pt).

Nothing here imports matplotlib at import time (the CLI builds a Style before
any heavy import).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from attnviz.errors import UsageError

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

#: Width of one column of a two-column paper (ACL, IEEE, NeurIPS two-column), inches.
COLUMN_IN = 3.3
#: Full text width of a paper, inches.
PAGE_IN = 6.9
#: Smallest font size any view uses, in points at printed size.
MIN_FONT_PT = 6.0
#: Default colour map of text views (viridis: perceptually uniform, colour-blind safe, prints in grey).
TEXT_CMAP = "viridis"
#: Default colour map of image overlays (inferno: perceptually uniform, colour-blind safe; dark = little attention).
IMAGE_CMAP = "inferno"
SIZES = ("screen", "column", "page")
#: Longest model name a title shows (``--label`` or the model's display label).
LABEL_CHARS = 60
SCALES = ("shared", "per-head")
_WXH = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*[xX×]\s*(\d+(?:\.\d+)?)\s*$")


@dataclass(frozen=True)
class Fonts:
    """Font sizes in points: ``title``, ``text`` (subtitles, axis labels, tick labels), ``small`` (annotations)."""

    title: float
    text: float
    small: float

    @property
    def sub(self) -> float:
        """Subtitle size (the notes under the title)."""
        return self.small


@dataclass(frozen=True)
class Style:
    """How a figure is sized and coloured (see the module docstring)."""

    size: str = "screen"
    width_in: float | None = None
    height_in: float | None = None
    dpi: int | None = None
    cmap: str | None = None
    scale: str = "shared"
    label: str | None = None
    settings: dict = field(default_factory=dict, compare=False, hash=False)

    # -- construction

    @classmethod
    def from_options(cls, size: str = "screen", dpi: int | None = None, cmap: str | None = None, scale: str = "shared",
                     label: str | None = None, settings: dict | None = None) -> "Style":
        """Validate the CLI's ``--size``, ``--dpi``, ``--cmap``, ``--scale`` and ``--label``.

        Raises:
            UsageError: a size that is not column, page, screen or WxH (1..40 in),
                a dpi outside 50..1200, an unknown colour map or scale, an empty label.
        """
        name, w, h = parse_size(size)
        if dpi is not None and not 50 <= dpi <= 1200:
            raise UsageError(f"--dpi must be between 50 and 1200, not {dpi}")
        if scale not in SCALES:
            raise UsageError(f"--scale must be one of {', '.join(SCALES)}, not '{scale}'")
        if cmap is not None:
            check_cmap(cmap)
        if label is not None and not label.strip():
            raise UsageError("--label is empty")
        return cls(name, w, h, dpi, cmap, scale, label.strip() if label else None, dict(settings or {}))

    # -- derived values

    @property
    def print_size(self) -> bool:
        """True for column, page and WxH sizes (figures meant for print)."""
        return self.width_in is not None

    @property
    def resolution(self) -> int:
        """Pixels per inch of PNG output: ``dpi``, else 300 for print sizes and 150 on screen."""
        return int(self.dpi or (300 if self.print_size else 150))

    def width(self, natural: float) -> float:
        """The figure width in inches: the asked width, else the view's ``natural`` (screen) width."""
        return float(self.width_in) if self.width_in is not None else float(natural)

    def height(self, fixed: float, plot: float, min_plot: float = 0.8) -> tuple[float, float]:
        """``(figure height, plot height)`` in inches for a view whose flexible part wants ``plot``
        inches and whose titles, labels and margins take ``fixed`` inches.

        With a WxH size the figure is exactly H high and the plot gets what is left.

        Raises:
            UsageError: H leaves less than ``min_plot`` inches for the plot.
        """
        if self.height_in is None:
            return fixed + plot, plot
        left = self.height_in - fixed
        if left < min_plot:
            raise UsageError(
                f"--size {self.width_in:g}x{self.height_in:g} is too short for this view: its titles and labels need "
                f"{fixed:.1f} in, leaving {max(left, 0):.1f} in for the plot; use a taller size"
            )
        return self.height_in, left

    def fonts(self, width_in: float | None = None) -> Fonts:
        """Font sizes for a figure ``width_in`` inches wide (default: this style's width), never under 6 pt."""
        w = self.width_in if width_in is None else width_in
        if w is None or w >= 7.5:
            return Fonts(12.0, 9.0, 8.0)
        if w >= 5.0:
            return Fonts(9.5, 8.0, 7.0)
        return Fonts(8.0, 7.0, MIN_FONT_PT)

    def compact(self, width_in: float) -> bool:
        """True when a figure ``width_in`` inches wide must use its compact layout (column width)."""
        return width_in < 5.0

    def colormap(self, default: str):
        """The matplotlib colour map to use (``cmap`` or ``default``) with transparent "bad" cells."""
        import matplotlib

        return matplotlib.colormaps[self.cmap or default].with_extremes(bad=(0.0, 0.0, 0.0, 0.0))

    def model_label(self, model_id: str) -> str:
        """The model's name in titles and JSON: ``label``, else :func:`display_label` of ``model_id``; at most
        :data:`LABEL_CHARS` characters (a longer one ends in "…", so that a title still fits its figure)."""
        name = self.label or display_label(model_id)
        return name if len(name) <= LABEL_CHARS else name[: LABEL_CHARS - 1].rstrip() + "…"

    def describe(self) -> dict:
        """The style as plain JSON values (for metadata and ``--json``)."""
        return {"size": self.size, "width_in": self.width_in, "height_in": self.height_in, "dpi": self.resolution,
                "cmap": self.cmap, "scale": self.scale}


DEFAULT_STYLE = Style()


#: Fonts that views fall back to, glyph by glyph, for characters DejaVu Sans lacks (Chinese, Japanese, Korean...),
#: in this order, where they are installed (Debian: fonts-noto-cjk, fonts-wqy-microhei, fonts-droid-fallback).
FALLBACK_FONTS = (
    "Noto Sans CJK JP", "Noto Sans CJK SC", "Noto Sans CJK TC", "Noto Sans CJK KR", "Source Han Sans", "Source Han Sans SC",
    "WenQuanYi Micro Hei", "WenQuanYi Zen Hei", "Droid Sans Fallback", "AR PL UMing CN", "Noto Sans", "Noto Sans Symbols",
)
_FAMILIES: list[str] | None = None


def font_families() -> list[str]:
    """``["DejaVu Sans", <installed fallback fonts>]``: matplotlib draws each glyph with the first family that has it."""
    global _FAMILIES
    if _FAMILIES is None:
        from matplotlib import font_manager

        installed = {f.name for f in font_manager.fontManager.ttflist}
        _FAMILIES = ["DejaVu Sans"] + [name for name in FALLBACK_FONTS if name in installed]
    return list(_FAMILIES)


def with_fonts(view):
    """Decorator for a view: its texts are made with :func:`font_families` (so a CJK token is drawn, not a box),
    without changing the caller's matplotlib settings."""
    import functools

    @functools.wraps(view)
    def drawn(*args, **kwargs):
        import logging

        import matplotlib

        logging.getLogger("matplotlib.font_manager").setLevel(logging.ERROR)  # "no bold weight" for a fallback font
        with matplotlib.rc_context({"font.family": font_families()}):
            return view(*args, **kwargs)

    return drawn


def parse_size(text: str) -> tuple[str, float | None, float | None]:
    """``"column"`` -> ``("column", 3.3, None)``, ``"page"`` -> ``("page", 6.9, None)``, ``"screen"`` ->
    ``("screen", None, None)``, ``"5x4"`` -> ``("5x4", 5.0, 4.0)`` (inches).

    Raises:
        UsageError: anything else, or a side outside 1..40 inches.
    """
    s = str(text).strip().lower()
    if s == "column":
        return "column", COLUMN_IN, None
    if s == "page":
        return "page", PAGE_IN, None
    if s in ("screen", ""):
        return "screen", None, None
    m = _WXH.match(s)
    if not m:
        raise UsageError(f"--size must be column, page, screen or WxH in inches (e.g. 5x4), not '{text}'")
    w, h = float(m.group(1)), float(m.group(2))
    if not (1.0 <= w <= 40.0 and 1.0 <= h <= 40.0):
        raise UsageError(f"--size {text}: width and height must be between 1 and 40 inches")
    return f"{w:g}x{h:g}", w, h


def check_cmap(name: str) -> str:
    """``name`` if matplotlib knows the colour map. Raises UsageError (with a few suggestions) otherwise."""
    import matplotlib

    if name not in matplotlib.colormaps:
        raise UsageError(f"--cmap '{name}' is not a matplotlib colour map; try viridis, cividis, magma, inferno or Blues")
    return name


def display_label(model_id: str) -> str:
    """A model's display name: the Hub id as given, or for a local folder its folder name (never a relative path).

    ``"../shared/models/deit-tiny-patch16-224"`` -> ``"deit-tiny-patch16-224"``;
    ``"facebook/deit-tiny-patch16-224"`` (not a folder here) stays as it is.
    """
    s = str(model_id)
    try:
        p = Path(s).expanduser()
        is_dir = p.is_dir()
    except OSError:  # pragma: no cover
        is_dir = False
    if is_dir or s.startswith((".", "/", "~")) or "\\" in s or s.count("/") > 1:
        name = Path(s.rstrip("/\\")).expanduser().resolve().name if is_dir else Path(s.rstrip("/\\")).name
        return name or s
    return s


# ---------------------------------------------------------------------------
# thinning long label lists


def thin_step(n: int, length_pt: float, pitch_pt: float) -> int:
    """Label every ``step``-th of ``n`` items along ``length_pt`` points so labels are at least ``pitch_pt`` apart.

    ``step`` is 1, 2, 5, 10, 20, 50, ... (1 when every label fits); see :func:`attnviz.render.common.nice_step`.
    """
    from attnviz.render.common import nice_step

    return nice_step(n, int(length_pt / max(pitch_pt, 1e-9)))


def thinned(n: int, step: int, keep: Sequence[int] = (), min_gap: int | None = None) -> list[int]:
    """Indices ``0, step, 2*step, ...`` plus every index in ``keep``; regular ones closer than ``min_gap``
    (default 0.8 ``step``, at least 1) to a kept one are dropped so labels do not collide."""
    keep = sorted({k for k in keep if 0 <= k < n})
    gap = max(1, math.ceil(0.8 * step) if min_gap is None else min_gap)
    out = set(keep)
    for i in range(0, n, max(1, step)):
        if all(abs(i - k) >= gap for k in keep):
            out.add(i)
    return sorted(out)


def max_chars(width_pt: float, font_pt: float) -> int:
    """How many characters of ``font_pt`` text fit in ``width_pt`` points (about 0.6 em per character)."""
    return max(1, int(width_pt / (font_pt * 0.6)))


# ---------------------------------------------------------------------------
# colour scales


def shared_vmax(values, floor: float = 1e-12) -> float:
    """The top of one colour scale shared by several maps: their largest finite value (at least ``floor``)."""
    import numpy as np

    arr = np.asarray(values, dtype=np.float64)
    finite = arr[np.isfinite(arr)]
    return max(float(finite.max()) if finite.size else 1.0, floor)


def scale_note(scale: str, what: str = "heads") -> str:
    """The sentence a colour bar carries about its scale: shared by all ``what``, or one per ``what``."""
    if scale == "per-head":
        return f"each of the {what} on its own scale, 0 to its maximum"
    return f"one scale shared by all {what}, from 0"


# ---------------------------------------------------------------------------
# saving: metadata and fonts


def attach_metadata(fig: "Figure", title: str, model: str, style: Style, view: str, settings: dict | None = None) -> None:
    """Remember what a figure shows, for :func:`savefig_kwargs` to write into the PNG/PDF/SVG file."""
    from attnviz.version import __version__

    fig.attnviz_metadata = {  # type: ignore[attr-defined]
        "title": title.replace("\n", " "),
        "model": model,
        "view": view,
        "software": f"attnviz {__version__}",
        "settings": {**style.describe(), **dict(style.settings), **dict(settings or {})},
    }


#: zlib level of the PNGs (Pillow's default is 6): a photo figure of 9 panels at 150 dpi encodes in 0.29 s instead of
#: 0.46 s and is 16 % larger (benchmarks/DETECT.md).
PNG_COMPRESS_LEVEL = 3


def savefig_kwargs(fig: "Figure", fmt: str, dpi: int | None = None) -> dict:
    """``savefig`` keyword arguments: the figure's dpi (or ``dpi``) and the format's metadata.

    PNG gets text chunks (Title, Software, Description, Model, Settings); PDF its
    Info dictionary (Title, Creator, Subject, Keywords); SVG Dublin Core
    (Title, Creator, Description, Keywords). Saving never crops (no
    ``bbox_inches="tight"``), so a PNG is exactly ``width x dpi`` pixels wide; PNGs are compressed at
    :data:`PNG_COMPRESS_LEVEL`.
    """
    import json

    meta = getattr(fig, "attnviz_metadata", None) or {}
    title = meta.get("title", "attnviz figure")
    software = meta.get("software", "attnviz")
    settings = json.dumps(meta.get("settings", {}), sort_keys=True, default=str)
    desc = f"{meta.get('view', 'view')} of {meta.get('model', '?')}; settings: {settings}"
    if fmt == "png":
        md = {"Title": title, "Software": software, "Description": desc, "Model": str(meta.get("model", "")), "Settings": settings}
    elif fmt == "pdf":
        md = {"Title": title, "Creator": software, "Subject": desc, "Keywords": f"attention, {meta.get('model', '')}"}
    elif fmt == "svg":
        md = {"Title": title, "Creator": software, "Description": desc, "Keywords": ["attention", str(meta.get("model", ""))]}
    else:
        md = {}
    kwargs = {"format": fmt, "dpi": dpi or getattr(fig, "attnviz_dpi", None) or fig.dpi, "metadata": md, "facecolor": "white"}
    if fmt == "png":
        kwargs["pil_kwargs"] = {"compress_level": PNG_COMPRESS_LEVEL}
    return kwargs


#: rcParams for saving: SVG keeps text as <text> elements; PDF/PS embed TrueType (Type 42), never Type 3, fonts.
SAVE_RC = {"svg.fonttype": "none", "pdf.fonttype": 42, "ps.fonttype": 42}


# ---------------------------------------------------------------------------
# measuring figures (used by tests and the gallery script)


def text_boxes(fig: "Figure") -> list[tuple[object, object]]:
    """``(Text, Bbox in display units)`` of every visible, non-empty text drawn on ``fig`` (after a draw)."""
    from matplotlib.text import Text

    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = fig.canvas if hasattr(fig.canvas, "get_renderer") else FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    out = []
    tick_texts: set[int] = set()
    drawn: list = []
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            for tick in axis.get_major_ticks() + axis.get_minor_ticks():
                tick_texts.update((id(tick.label1), id(tick.label2)))
            if not (ax.get_visible() and ax.axison and axis.get_visible()):
                continue
            for tick in axis._update_ticks():  # the ticks matplotlib draws: those inside the view limits
                drawn.extend(lab for lab in (tick.label1, tick.label2) if tick.get_visible() and lab.get_visible())
    texts = [t for t in fig.findobj(Text) if id(t) not in tick_texts] + drawn
    for t in texts:
        if not t.get_visible() or not t.get_text().strip():
            continue
        if t.axes is not None and not t.axes.get_visible():
            continue
        bb = t.get_window_extent(renderer)
        if bb.width <= 0 or bb.height <= 0:
            continue
        out.append((t, bb))
    return out


def overlapping_texts(fig: "Figure", tolerance_px: float = 0.5) -> list[tuple[str, str]]:
    """Pairs of visible texts on ``fig`` whose bounding boxes overlap (by more than ``tolerance_px``)."""
    boxes = text_boxes(fig)
    bad = []
    for i in range(len(boxes)):
        ti, bi = boxes[i]
        for j in range(i + 1, len(boxes)):
            tj, bj = boxes[j]
            w = min(bi.x1, bj.x1) - max(bi.x0, bj.x0)
            h = min(bi.y1, bj.y1) - max(bi.y0, bj.y0)
            if w > tolerance_px and h > tolerance_px:
                bad.append((ti.get_text(), tj.get_text()))
    return bad


def smallest_font(fig: "Figure") -> float:
    """The smallest font size (points at the figure's size) among the visible texts of ``fig``."""
    sizes = [t.get_fontsize() for t, _ in text_boxes(fig)]
    return min(sizes) if sizes else float("inf")


def texts_outside(fig: "Figure", tolerance_px: float = 1.0) -> list[str]:
    """Visible texts that stick out of the figure (they would be cut off when saved at the figure's size)."""
    W, H = fig.bbox.width, fig.bbox.height
    return [t.get_text() for t, b in text_boxes(fig)
            if b.x0 < -tolerance_px or b.y0 < -tolerance_px or b.x1 > W + tolerance_px or b.y1 > H + tolerance_px]


def model_reference(model_id: str) -> str:
    """How JSON names the model so it can be loaded again: the Hub id as given, or a local folder's absolute path."""
    try:
        p = Path(str(model_id)).expanduser()
        if p.is_dir():
            return os.path.abspath(p)  # absolute, but through the user's own symlinks
    except OSError:  # pragma: no cover
        pass
    return str(model_id)

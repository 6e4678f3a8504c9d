"""Figure options every drawing command shares: --size, --dpi, --label, --cmap, --scale, and --views parsing.

Only typer is imported here (``attnviz --help`` stays light); the options become an
:class:`attnviz.render.layout.Style` inside the command.
"""

from __future__ import annotations

from typing import Sequence

import typer

SIZE = typer.Option("screen", "--size", help="Figure size: column (3.3 in), page (6.9 in), screen (default) or WxH in inches, e.g. 5x4.")
DPI_OPTION = typer.Option(None, "--dpi", help="PNG pixels per inch (default 300 for column/page/WxH, 150 for screen).")
LABEL = typer.Option(None, "--label", help="Model name in titles and JSON (default: the Hub id or the folder's name).")
CMAP = typer.Option(None, "--cmap", help="matplotlib colour map (default: viridis for text, inferno for images).")
SCALE = typer.Option("shared", "--scale", help="shared (one colour scale for all heads of a figure) or per-head.")


def parse_views(text: str, allowed: Sequence[str]) -> tuple[str, ...]:
    """``"head,focus"`` -> ``("head", "focus")`` in the order of ``allowed``.

    Raises:
        UsageError: an empty list or a name not in ``allowed``.
    """
    from attnviz.errors import UsageError

    names = [v.strip().lower() for v in str(text).split(",") if v.strip()]
    if not names:
        raise UsageError(f"--views is empty; pick from {','.join(allowed)}")
    bad = [v for v in names if v not in allowed]
    if bad:
        raise UsageError(f"--views: unknown view '{bad[0]}'; pick from {','.join(allowed)}")
    return tuple(v for v in allowed if v in names)

"""The ``attnviz`` command: a thin typer layer over the Python API.

Nothing here imports torch or transformers at module level, so ``attnviz --help``
stays fast; each command imports what it needs when it runs.
"""

from __future__ import annotations

import typer

from attnviz import __version__

app = typer.Typer(
    name="attnviz",
    help="See the attention of Hugging Face Transformer models: PNG/SVG/PDF reports and a terminal summary, offline.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"attnviz {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """attnviz: attention reports for Transformer models."""


from attnviz.cli import text as _text  # noqa: E402,F401  (registers the command)
from attnviz.cli import heads as _heads  # noqa: E402,F401

try:  # the image command lives in its own module
    from attnviz.cli import image as _image  # noqa: E402,F401
except ImportError:  # pragma: no cover
    pass


def main() -> None:
    """Console-script entry point."""
    app()

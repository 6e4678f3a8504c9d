"""The ``attnviz`` command: a thin typer layer over the Python API.

Nothing here imports torch or transformers at module level, so ``attnviz --help``
stays fast; each command imports what it needs when it runs.
"""

from __future__ import annotations

import errno
import sys

import typer
from typer.core import TyperGroup

try:  # typer >= 0.20 carries its own copy of click
    from typer._click import exceptions as click
except ImportError:  # pragma: no cover - older typer uses click itself
    from click import exceptions as click

#: Ctrl-C / an aborted prompt: typer's own Abort (click's where typer uses click itself).
_ABORT = tuple({getattr(typer, "Abort", None), getattr(click, "Abort", None)} - {None}) or (KeyboardInterrupt,)

from attnviz.cli.common import quiet_broken_pipe
from attnviz.version import __version__


class _Group(TyperGroup):
    """The command group: command-line parse errors become one ``attnviz: error:`` line (exit 2)."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except BrokenPipeError:
            quiet_broken_pipe()
        except click.NoArgsIsHelpError as exc:
            typer.echo(exc.ctx.get_help() if exc.ctx else exc.format_message())
            sys.exit(2)
        except click.UsageError as exc:
            message = " ".join(exc.format_message().split())
            typer.echo(f"attnviz: error: {message}", err=True)
            command = exc.ctx.command_path if exc.ctx is not None else "attnviz"
            typer.echo(f"Try '{command} --help'.", err=True)
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            typer.echo(f"attnviz: error: {' '.join(exc.format_message().split())}", err=True)
            sys.exit(exc.exit_code)
        except _ABORT:
            typer.echo("attnviz: interrupted", err=True)
            sys.exit(130)
        except OSError as exc:
            if exc.errno != errno.EPIPE:
                raise
            quiet_broken_pipe()
        sys.exit(rv if isinstance(rv, int) else 0)


app = typer.Typer(
    name="attnviz",
    cls=_Group,
    help="See the attention of Hugging Face Transformer models: PNG/SVG/PDF reports and a terminal summary, offline.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
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

from attnviz.cli import check as _check  # noqa: E402,F401
from attnviz.cli import generate as _generate  # noqa: E402,F401  (registers the command)
from attnviz.cli import detect as _detect  # noqa: E402,F401  (registers the command)
from attnviz.cli import audio as _audio  # noqa: E402,F401  (registers the command)
from attnviz.cli import faithfulness as _faithfulness  # noqa: E402,F401  (registers the command)


def main() -> None:
    """Console-script entry point."""
    app()

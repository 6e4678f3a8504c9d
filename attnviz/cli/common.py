"""What every command shares: the one place errors become a line and an exit code, and output helpers."""

from __future__ import annotations

import json
import os
import sys
import warnings
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import typer

from attnviz.errors import AttnvizError, AttnvizWarning

if TYPE_CHECKING:  # pragma: no cover
    from attnviz.pipelines.common import ModelRequest, OutputRequest, StyleRequest

INTERNAL_ERROR = 70

def _out_dir(value: str) -> Path:
    """``--out``: refuses an empty name (typer would read "" as the current folder)."""
    from attnviz.errors import OutputError
    from attnviz.report import check_out_dir

    try:
        return check_out_dir(value)
    except OutputError as exc:
        raise typer.BadParameter(str(exc)) from None


# Options every command shares (typer reads these defaults; nothing heavy is imported).
OUT = typer.Option(Path("attnviz-out"), "--out", "-o", parser=_out_dir, help="Folder for the reports.")
FORMAT = typer.Option("png", "--format", help="png, svg, pdf or html (interactive report.html); several with commas, e.g. png,html.")
JSON = typer.Option(False, "--json", help="Print one JSON document instead of the summary.")
DEVICE = typer.Option("cpu", "--device", help="cpu, cuda, mps or auto.")
DTYPE = typer.Option("float32", "--dtype", help="float32, bfloat16 or float16.")
DEVICE_MAP = typer.Option(None, "--device-map", help="e.g. auto: spread a big model over devices (accelerate).")
ALLOW_PICKLE = typer.Option(False, "--allow-pickle", help="Allow pickle (.bin) weights; only for sources you trust.")
TRUST_REMOTE_CODE = typer.Option(False, "--trust-remote-code", help="Run model code from the Hub; only for sources you trust.")
DEBUG = typer.Option(False, "--debug", help="Show tracebacks.")
FORCE = typer.Option(False, "--force", help="Overwrite files in the way that attnviz did not write (never the model's own files).")
RANDOM_WEIGHTS_OK = typer.Option(
    False, "--random-weights-ok", help="Show a model even if its checkpoint lacks attention tensors (they are random; every output says so).",
)
VERIFY = typer.Option(
    True, "--verify/--no-verify",
    help="For a model type attnviz's tests do not cover, check the capture against eager attention first (on the first tokens / the image).",
)


def quiet_libraries() -> None:
    """Silence transformers/huggingface_hub progress bars and info logs (we print our own), without importing them."""
    from attnviz.pipelines.common import quiet_libraries as quiet

    quiet()


def warn(message: str) -> None:
    """One warning line on stderr."""
    typer.echo(f"attnviz: warning: {message}", err=True)


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised like Ctrl-C so that every ``finally`` removes its temporary files."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _raise_terminated(signum, frame):  # pragma: no cover - exercised through a subprocess
    raise Terminated(signum)


@contextmanager
def _signals_as_interrupts() -> Iterator[None]:
    """Treat SIGTERM and SIGHUP like SIGINT while a command runs (main thread only)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}
    for name in ("SIGTERM", "SIGHUP"):
        sig = getattr(signal, name, None)
        if sig is not None:
            previous[sig] = signal.signal(sig, _raise_terminated)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextmanager
def guarded(debug: bool) -> Iterator[None]:
    """Turn :class:`AttnvizError` into one line on stderr and its exit code.

    Unexpected exceptions also become one line (exit 70). ``debug`` prints the
    traceback first and keeps the same exit code. :class:`AttnvizWarning` warnings
    raised inside (the pipelines' notices) are printed at once as one-line
    ``attnviz: warning:`` messages, each message once. Ctrl-C exits 130; SIGTERM and
    SIGHUP are handled the same way (temporary files removed) and exit 143 and 129.
    """
    seen: set[str] = set()
    previous_show = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if isinstance(category, type) and issubclass(category, AttnvizWarning):
            text = str(message)
            if text not in seen:
                seen.add(text)
                warn(text)
            return
        previous_show(message, category, filename, lineno, file, line)

    with warnings.catch_warnings(), _signals_as_interrupts():
        warnings.simplefilter("always", AttnvizWarning)
        warnings.showwarning = show
        try:
            yield
        except typer.Exit:
            raise
        except AttnvizError as exc:
            if debug:
                traceback.print_exc()
            typer.echo(f"attnviz: error: {exc}", err=True)
            raise typer.Exit(exc.exit_code) from None
        except Terminated as exc:
            import signal

            typer.echo(f"attnviz: stopped by {signal.Signals(exc.signum).name}", err=True)
            raise typer.Exit(128 + exc.signum) from None
        except KeyboardInterrupt:
            typer.echo("attnviz: interrupted", err=True)
            raise typer.Exit(130) from None
        except BrokenPipeError:
            quiet_broken_pipe()
        except Exception as exc:  # noqa: BLE001 - the CLI must not print a traceback
            if debug:
                traceback.print_exc()
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            hint = "" if debug else " (rerun with --debug for the traceback)"
            typer.echo(f"attnviz: error: {type(exc).__name__}: {first[:300]}{hint}", err=True)
            raise typer.Exit(INTERNAL_ERROR) from None
        finally:
            warnings.showwarning = previous_show


def quiet_broken_pipe() -> None:
    """The reader of our output went away (``attnviz text ... | head -1``): exit 141 (as SIGPIPE would), without a word."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # Python's flush at exit would raise again
    except (OSError, ValueError):  # pragma: no cover
        pass
    os._exit(141)


def run_command(debug: bool, as_json: bool, produce: Callable[[], Any], print_human: Callable[[Any], None]) -> None:
    """The body of every command: ``produce()`` (a pipeline run) inside :func:`guarded`, then its ``--json``
    document (``run.to_json()``) or ``print_human(run)``."""
    from rich.console import Console

    Console.on_broken_pipe = lambda self: quiet_broken_pipe()  # rich would exit 1; a closed pipe is no error
    with guarded(debug):
        quiet_libraries()
        run = produce()
        if as_json:
            print_json(run.to_json())
        else:
            print_human(run)


def model_request(model: str, device: str = "cpu", dtype: str = "float32", device_map: str | None = None,
                  allow_pickle: bool = False, trust_remote_code: bool = False, random_weights_ok: bool = False,
                  verify: bool = True, **_ignored) -> "ModelRequest":
    """The model options every command shares, as a :class:`attnviz.pipelines.common.ModelRequest`."""
    from attnviz.pipelines.common import ModelRequest

    return ModelRequest(model, device, dtype, device_map, allow_pickle, trust_remote_code, random_weights_ok, verify)


def output_request(out: Path, fmt: str = "png", force: bool = False, save_attn: Path | None = None, **_ignored) -> "OutputRequest":
    """``--out``, ``--format``, ``--force`` and ``--save-attn`` as a :class:`attnviz.pipelines.common.OutputRequest`."""
    from attnviz.pipelines.common import OutputRequest

    return OutputRequest(out, fmt, force, save_attn)


def style_request(size: str = "screen", dpi: int | None = None, label: str | None = None, cmap: str | None = None,
                  scale: str = "shared", **_ignored) -> "StyleRequest":
    """``--size``, ``--dpi``, ``--label``, ``--cmap`` and ``--scale`` as a :class:`attnviz.pipelines.common.StyleRequest`."""
    from attnviz.pipelines.common import StyleRequest

    return StyleRequest(size, dpi, label, cmap, scale)


def print_methods(console, explanation) -> None:
    """One line for ``--method``: the methods drawn, the target of the gradient methods, the run-time check."""
    if explanation is None:
        return
    from rich.markup import escape

    names = ", ".join(m.method for m in explanation.maps)
    target = f" · target: {escape(explanation.target.describe())}" if explanation.target is not None else ""
    diff = explanation.checks.get("logits")
    check = f" · gradient pass matches the model's logits to {diff:.1e}" if diff is not None else ""
    console.print(f"methods: {names}{target}{check}", soft_wrap=True)


def print_files(console, files, save_attn=None) -> None:
    """The closing "wrote:" list of the human output."""
    paths = list(files) + ([save_attn] if save_attn else [])
    if paths:
        console.print("wrote:")
        for path in paths:
            console.print(f"  {path}", soft_wrap=True)


def print_json(document: dict) -> None:
    """The one JSON document on stdout."""
    sys.stdout.write(json.dumps(document, indent=2, ensure_ascii=False, allow_nan=False) + "\n")
    sys.stdout.flush()

"""What every command shares: the one place errors become a line and an exit code, and output helpers."""

from __future__ import annotations

import json
import logging
import os
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import typer

from attnviz.errors import AttnvizError, AttnvizWarning

INTERNAL_ERROR = 70

# Options every command shares (typer reads these defaults; nothing heavy is imported).
OUT = typer.Option(Path("attnviz-out"), "--out", "-o", help="Folder for the reports.")
FORMAT = typer.Option("png", "--format", help="png, svg or pdf.")
JSON = typer.Option(False, "--json", help="Print one JSON document instead of the summary.")
DEVICE = typer.Option("cpu", "--device", help="cpu, cuda, mps or auto.")
DTYPE = typer.Option("float32", "--dtype", help="float32, bfloat16 or float16.")
DEVICE_MAP = typer.Option(None, "--device-map", help="e.g. auto: spread a big model over devices (accelerate).")
ALLOW_PICKLE = typer.Option(False, "--allow-pickle", help="Allow pickle (.bin) weights; only for sources you trust.")
TRUST_REMOTE_CODE = typer.Option(False, "--trust-remote-code", help="Run model code from the Hub; only for sources you trust.")
DEBUG = typer.Option(False, "--debug", help="Show tracebacks.")
VERIFY = typer.Option(
    True, "--verify/--no-verify",
    help="For a model type attnviz's tests do not cover, check the capture against eager attention first (on the first tokens / the image).",
)


def quiet_libraries() -> None:
    """Silence transformers/huggingface_hub progress bars and info logs (we print our own)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        import transformers

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass
    logging.getLogger("huggingface_hub").setLevel(logging.ERROR)


def warn(message: str) -> None:
    """One warning line on stderr."""
    typer.echo(f"attnviz: warning: {message}", err=True)


@contextmanager
def guarded(debug: bool) -> Iterator[None]:
    """Turn :class:`AttnvizError` into one line on stderr and its exit code.

    Unexpected exceptions also become one line (exit 70) unless ``debug``, which
    re-raises them with the traceback. Warnings raised inside are printed as
    one-line ``attnviz: warning:`` messages.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", AttnvizWarning)
        try:
            yield
        except typer.Exit:
            raise
        except AttnvizError as exc:
            _flush(caught)
            if debug:
                raise
            typer.echo(f"attnviz: error: {exc}", err=True)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            typer.echo("attnviz: interrupted", err=True)
            raise typer.Exit(130) from None
        except Exception as exc:  # noqa: BLE001 - the CLI must not print a traceback
            _flush(caught)
            if debug:
                raise
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            typer.echo(f"attnviz: error: {type(exc).__name__}: {first[:300]} (rerun with --debug for the traceback)", err=True)
            raise typer.Exit(INTERNAL_ERROR) from None
        _flush(caught)


def _flush(caught) -> None:
    seen = set()
    for w in caught:
        if issubclass(w.category, AttnvizWarning) and str(w.message) not in seen:
            seen.add(str(w.message))
            warn(str(w.message))
    caught.clear()


def print_json(document: dict) -> None:
    """The one JSON document on stdout."""
    sys.stdout.write(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def verification_json(result) -> dict:
    """``verified`` (True when the capture was checked against eager on this model and matched) and
    ``verification`` (see :meth:`attnviz.verify.Verification.to_json`) for a command's ``--json``."""
    v = getattr(result, "verification", None)
    return {"verified": bool(v is not None and v.verified), "verification": v.to_json() if v is not None else None}

"""The only code that writes files: figures and attention tensors.

Every file is written to a temporary name in its destination folder and moved into
place when complete (``os.replace``), so an interrupted run never leaves a
half-written file where a good one was.
"""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Mapping

from attnviz.errors import OutputError

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from matplotlib.figure import Figure

FORMATS = ("png", "svg", "pdf")
DPI = 150


def prepare_out_dir(path: str | os.PathLike) -> Path:
    """Create ``path`` (and parents) if needed and check that it is a writable folder.

    Raises:
        OutputError: it is a file, or cannot be created or written.
    """
    out = Path(path).expanduser()
    if out.exists() and not out.is_dir():
        raise OutputError(f"output folder '{out}' is a file")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".attnviz-check-"):
            pass
    except OSError as exc:
        raise OutputError(f"cannot write to output folder '{out}': {exc.strerror or exc}") from exc
    return out


@contextmanager
def _atomic(path: Path, mode: str = "wb") -> Iterator:
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    except OSError as exc:
        raise OutputError(f"cannot write '{path}': {exc.strerror or exc}") from exc
    try:
        with os.fdopen(fd, mode) as fh:
            yield fh
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_figure(fig: "Figure", out_dir: Path, stem: str, fmt: str = "png") -> Path:
    """Save a matplotlib Figure as ``out_dir/stem.fmt`` (png at 150 dpi, svg or pdf).

    Raises:
        OutputError: unknown format or a write error.
    """
    if fmt not in FORMATS:
        raise OutputError(f"--format must be one of {', '.join(FORMATS)}, not '{fmt}'")
    path = Path(out_dir) / f"{stem}.{fmt}"
    try:
        with _atomic(path) as fh:
            fig.savefig(fh, format=fmt, dpi=DPI, bbox_inches="tight", facecolor="white")
    except OSError as exc:
        raise OutputError(f"cannot write '{path}': {exc.strerror or exc}") from exc
    return path


def check_tensor_path(path: str | os.PathLike) -> Path:
    """Validate a ``--save-attn`` destination before any work is done; create its folder.

    Raises:
        OutputError: the path is a folder, lacks the .safetensors suffix, or its folder is not writable.
    """
    p = Path(path).expanduser()
    if p.is_dir():
        raise OutputError(f"--save-attn '{p}' is a folder; give a file name such as attn.safetensors")
    if p.suffix != ".safetensors":
        raise OutputError(f"--save-attn '{p}' must end in .safetensors")
    prepare_out_dir(p.parent if str(p.parent) else ".")
    return p


def save_tensors(path: str | os.PathLike, tensors: Mapping[str, "torch.Tensor"], metadata: Mapping[str, object]) -> Path:
    """Write ``tensors`` to a safetensors file with string metadata (non-strings JSON-encoded).

    Raises:
        OutputError: the file cannot be written.
    """
    from safetensors.torch import save

    p = check_tensor_path(path)
    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()}
    data = save({k: v.contiguous() for k, v in tensors.items()}, metadata=meta)
    try:
        with _atomic(p) as fh:
            fh.write(data)
    except OSError as exc:
        raise OutputError(f"cannot write '{p}': {exc.strerror or exc}") from exc
    return p

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


# ---------------------------------------------------------------------------
# streaming attention maps into a safetensors file, layer by layer


_ST_DTYPES = {"float32": ("F32", 4), "float16": ("F16", 2)}


def attention_tensor_name(kind: str) -> str:
    """Tensor name of an attention kind in a ``--save-attn`` file: ``"attentions"`` for ``"self"``, else ``"<kind>_attentions"``."""
    return "attentions" if kind == "self" else f"{kind}_attentions"


def _stream_header(shapes: Mapping[str, tuple[int, ...]], dtype: str, metadata: Mapping[str, object] | None) -> tuple[bytes, dict]:
    """The safetensors header (length prefix included, padded to 8 bytes) and each kind's data offset."""
    if dtype not in _ST_DTYPES:
        raise OutputError(f"attention files are float32 or float16, not '{dtype}'")
    code, size = _ST_DTYPES[dtype]
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = {k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()}
    offsets, start = {}, 0
    for kind, shape in shapes.items():
        nbytes = size
        for dim in shape:
            nbytes *= int(dim)
        header[attention_tensor_name(kind)] = {"dtype": code, "shape": [int(d) for d in shape], "data_offsets": [start, start + nbytes]}
        offsets[kind] = start
        start += nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text, offsets


def attention_file_size(
    shapes: Mapping[str, tuple[int, int, int, int]], dtype: str = "float32", metadata: Mapping[str, object] | None = None
) -> int:
    """Bytes of the ``--save-attn`` file that :class:`AttentionWriter` will write for ``shapes`` (say it before starting).

    ``shapes``: ``{kind: (layers, heads, queries, keys)}``, e.g. from
    :func:`attnviz.capture.attention_shapes`; ``dtype``: "float32" or "float16".
    """
    head, _ = _stream_header(shapes, dtype, metadata)
    size = _ST_DTYPES[dtype][1]
    return len(head) + sum(size * int(l) * int(h) * int(q) * int(k) for l, h, q, k in shapes.values())


class AttentionWriter:
    """Stream attention maps into one safetensors file as a capture produces them, one layer at a time.

    The file holds one tensor per attention kind, ``[layers, heads, query, key]``
    float32 (or float16 with ``dtype="float16"``): ``"attentions"`` for a
    single-stack model's ``"self"`` attention, ``"encoder_attentions"``,
    ``"decoder_attentions"`` and ``"cross_attentions"`` for encoder-decoder models
    (:func:`attention_tensor_name`), plus ``metadata`` as strings (non-strings
    JSON-encoded). The header is written first, then each layer's bytes at their
    place; the file is written under a temporary name in its folder and moved
    into place by :meth:`close` only when every layer of every kind has arrived,
    so an interrupted run never leaves a partial file.

    Usage::

        shapes = attention_shapes(model, inputs)            # attnviz.capture
        print(f"writing {attention_file_size(shapes, 'float16') / 1e9:.1f} GB")
        with AttentionWriter(path, shapes, dtype="float16", metadata=meta) as writer:
            capture(model, inputs, CapturePlan(on_layer=writer.write_layer, ...))

    Memory: one layer in flight (a float16 file converts one head at a time).

    Raises:
        OutputError: bad path or dtype, a write error, a layer whose shape is not
            the declared one, or (on close) missing layers.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        shapes: Mapping[str, tuple[int, int, int, int]],
        dtype: str = "float32",
        metadata: Mapping[str, object] | None = None,
    ):
        self.path = check_tensor_path(path)
        self.shapes = {kind: tuple(int(d) for d in shape) for kind, shape in shapes.items()}
        self.dtype = dtype
        head, self._offsets = _stream_header(self.shapes, dtype, metadata)
        self._data_start = len(head)
        self._item = _ST_DTYPES[dtype][1]
        self.expected_bytes = attention_file_size(self.shapes, dtype, metadata)
        self._written: dict[str, set[int]] = {kind: set() for kind in self.shapes}
        try:
            fd, self._tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".part")
            self._fh = os.fdopen(fd, "wb")
            self._fh.write(head)
            self._fh.truncate(self.expected_bytes)
        except OSError as exc:
            self._discard()
            raise OutputError(f"cannot write '{self.path}': {exc.strerror or exc}") from exc

    def write_layer(self, kind: str, layer: int, probs: "torch.Tensor") -> None:
        """Write one layer's ``[heads, query, key]`` probabilities (signature of ``CapturePlan.on_layer``)."""
        import torch

        shape = self.shapes.get(kind)
        if shape is None:
            self.abort()
            raise OutputError(f"the capture produced '{kind}' attention, which the file was not sized for ({', '.join(self.shapes)})")
        if not 0 <= layer < shape[0] or tuple(probs.shape) != shape[1:]:
            self.abort()
            raise OutputError(
                f"{kind} attention layer {layer} has shape {list(probs.shape)}, but the file was sized for "
                f"{shape[0]} layers of {list(shape[1:])}"
            )
        layer_bytes = self._item * probs.numel()
        try:
            self._fh.seek(self._data_start + self._offsets[kind] + layer * layer_bytes)
            target = torch.float16 if self.dtype == "float16" else torch.float32
            for head in probs.detach():  # one head at a time: bounded extra memory for the float16 copy
                chunk = head.to(device="cpu", dtype=target).contiguous()
                self._fh.write(_le_bytes(chunk))
        except OSError as exc:
            self.abort()
            raise OutputError(f"cannot write '{self.path}': {exc.strerror or exc}") from exc
        self._written[kind].add(layer)

    __call__ = write_layer

    def missing(self) -> dict[str, list[int]]:
        """Layers not written yet, per kind."""
        return {k: [l for l in range(s[0]) if l not in self._written[k]] for k, s in self.shapes.items() if len(self._written[k]) < s[0]}

    def close(self) -> Path:
        """Check that every layer arrived, then move the file into place. Returns its path.

        Raises:
            OutputError: layers are missing (the partial file is removed) or the move fails.
        """
        missing = self.missing()
        if missing:
            self.abort()
            detail = "; ".join(f"{kind}: {len(layers)} of {self.shapes[kind][0]} layers" for kind, layers in missing.items())
            raise OutputError(f"'{self.path}' was not written: the capture did not deliver every layer ({detail})")
        try:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()
            os.chmod(self._tmp, 0o666 & ~_umask())
            os.replace(self._tmp, self.path)
        except OSError as exc:
            self._discard()
            raise OutputError(f"cannot write '{self.path}': {exc.strerror or exc}") from exc
        return self.path

    def abort(self) -> None:
        """Remove the partial file (idempotent)."""
        self._discard()

    def _discard(self) -> None:
        fh = getattr(self, "_fh", None)
        if fh is not None and not fh.closed:
            fh.close()
        tmp = getattr(self, "_tmp", None)
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)

    def __enter__(self) -> "AttentionWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _le_bytes(t: "torch.Tensor") -> memoryview:
    """A little-endian byte view of a contiguous CPU tensor (no copy on little-endian machines)."""
    import sys

    arr = t.numpy()
    if sys.byteorder != "little":  # pragma: no cover
        arr = arr.byteswap()
    return memoryview(arr).cast("B")


# ---------------------------------------------------------------------------
# documents and tables (attnviz heads)


def write_json(out_dir: Path, name: str, document: Mapping[str, object]) -> Path:
    """Write ``document`` as indented UTF-8 JSON to ``out_dir/name`` (atomically).

    Raises:
        OutputError: the file cannot be written.
    """
    path = Path(out_dir) / name
    data = (json.dumps(document, indent=2, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")
    try:
        with _atomic(path) as fh:
            fh.write(data)
    except OSError as exc:
        raise OutputError(f"cannot write '{path}': {exc.strerror or exc}") from exc
    return path


def write_parquet(out_dir: Path, name: str, columns: Mapping[str, list], metadata: Mapping[str, str] | None = None) -> Path:
    """Write a table of equally long ``columns`` to ``out_dir/name`` as Parquet (pyarrow), atomically.

    Raises:
        OutputError: the file cannot be written.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(out_dir) / name
    table = pa.table(dict(columns))
    if metadata:
        table = table.replace_schema_metadata({k: str(v) for k, v in metadata.items()})
    try:
        with _atomic(path) as fh:
            pq.write_table(table, fh)
    except OSError as exc:
        raise OutputError(f"cannot write '{path}': {exc.strerror or exc}") from exc
    return path

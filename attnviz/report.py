"""The only code that writes files: figures and attention tensors.

Every file is written to a temporary name in its destination folder and moved into
place when complete (``os.replace``), so an interrupted run never leaves a
half-written file where a good one was. A command's run writes through one
:class:`RunOutput`: all its files are staged and moved into place together, only
over files attnviz wrote (the folder's manifest says which), never onto the
model's own files.
"""

from __future__ import annotations

import json
import os
import tempfile
import weakref
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Mapping

from attnviz.errors import OutputError

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from matplotlib.figure import Figure

FORMATS = ("png", "svg", "pdf")
#: Name of the manifest each output folder holds: what the last run wrote there.
MANIFEST = ".attnviz-manifest.json"
#: Temporary files and folders attnviz makes start with this and end in ``.part``
#: (``.attnviz-<pid>-<random>.part``); a later run removes those of dead processes.
TEMP_PREFIX = ".attnviz-"
_HASH_LIMIT = 64 * 2**20  # files above this are recorded by size and mtime, not sha256


@contextmanager
def _atomic(path: Path, mode: str = "wb") -> Iterator:
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{TEMP_PREFIX}{os.getpid()}-", suffix=".part")
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


def write_figure(fig: "Figure", out_dir: Path, stem: str, fmt: str = "png", dpi: int | None = None) -> Path:
    """Save a matplotlib Figure as ``out_dir/stem.fmt`` (png, svg or pdf) at its own size, never cropped.

    PNG is ``dpi`` (default: the figure's style dpi) pixels per inch; SVG keeps text as ``<text>``;
    PDF embeds TrueType fonts; all three carry metadata (title, attnviz version, model, settings:
    :func:`attnviz.render.layout.savefig_kwargs`).

    Raises:
        OutputError: unknown format or a write error.
    """
    if fmt not in FORMATS:
        raise OutputError(f"--format must be one of {', '.join(FORMATS)}, not '{fmt}'")
    path = Path(out_dir) / f"{stem}.{fmt}"
    try:
        with _atomic(path) as fh:
            import matplotlib

            from attnviz.render.layout import SAVE_RC, savefig_kwargs

            # SVG keeps <text>, PDF embeds TrueType (Type 42) fonts; the figure's own size and dpi, never cropped
            with matplotlib.rc_context(SAVE_RC):
                fig.savefig(fh, **savefig_kwargs(fig, fmt, dpi))
    except OSError as exc:
        raise OutputError(f"cannot write '{path}': {exc.strerror or exc}") from exc
    return path


def write_html(page: str, out_dir: Path, stem: str = "report") -> Path:
    """Write one self-contained HTML page (from :mod:`attnviz.html`) as ``out_dir/stem.html`` (UTF-8).

    Raises:
        OutputError: a write error.
    """
    path = Path(out_dir) / f"{stem}.html"
    try:
        with _atomic(path) as fh:
            fh.write(page.encode("utf-8"))
    except OSError as exc:
        raise OutputError(f"cannot write '{path}': {exc.strerror or exc}") from exc
    return path


def check_tensor_path(path: str | os.PathLike) -> Path:
    """Validate a ``--save-attn`` destination before any work is done (creates nothing).

    Raises:
        OutputError: the path is a folder, lacks the .safetensors suffix, a parent is a file, a symbolic
            link loop or a dangling link, or the deepest existing folder on the way cannot be written.
    """
    p = Path(path).expanduser()
    if p.is_dir():
        raise OutputError(f"--save-attn '{p}' is a folder; give a file name such as attn.safetensors")
    if p.suffix != ".safetensors":
        raise OutputError(f"--save-attn '{p}' must end in .safetensors")
    for parent in p.parents:
        if parent.exists() or parent.is_symlink():
            _check_folder(parent, f"--save-attn '{p}': ")
            break
    return p


def _check_folder(folder: Path, prefix: str = "") -> None:
    """Refuse an existing ``folder`` (the deepest existing one on the way to an output) that cannot take files.

    Raises:
        OutputError: a file, a symbolic link loop or dangling link, or not writable.
    """
    import errno

    if folder.is_symlink() and not folder.exists():
        try:
            os.stat(folder)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise OutputError(f"{prefix}'{folder}' is a symbolic link loop") from None
        raise OutputError(f"{prefix}'{folder}' is a symbolic link to '{os.readlink(folder)}', which does not exist")
    if not folder.is_dir():
        raise OutputError(f"{prefix}'{folder}' is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"{prefix}cannot write to '{folder}': permission denied")


def check_out_dir(value: str | os.PathLike) -> Path:
    """Refuse an empty ``--out`` (it would silently mean the current folder); returns the folder as a Path.

    The CLI must check the option's text before it becomes a ``Path`` (``Path("")`` is ``.``).

    Raises:
        OutputError: ``value`` is empty or only whitespace.
    """
    text = os.fspath(value)
    if not str(text).strip():
        raise OutputError("--out is empty; give a folder (--out . for the current one)")
    return Path(text).expanduser()


def _tensor_metadata(metadata: Mapping[str, object] | None) -> dict[str, str]:
    """String metadata of an attention file, marked as attnviz's (:func:`is_attnviz_tensor_file`)."""
    meta = {"format": "attnviz-attention", "attnviz": _version()}
    meta.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()})
    # which values are JSON (the rest are plain strings), so a reader never mistakes the string "123" for a number
    meta["json_keys"] = json.dumps(sorted(k for k, v in (metadata or {}).items() if not isinstance(v, str)))
    return meta


def save_tensors(path: str | os.PathLike, tensors: Mapping[str, "torch.Tensor"], metadata: Mapping[str, object]) -> Path:
    """Write ``tensors`` (float32/float16/int64 CPU tensors) to a safetensors file with string metadata (non-strings
    JSON-encoded), tensor by tensor: no copy of the data is made (a long document's band can be gigabytes).

    Raises:
        OutputError: the file cannot be written, or a tensor's dtype has no safetensors code here.
    """
    import torch

    codes = {torch.float32: "F32", torch.float16: "F16", torch.int64: "I64", torch.int32: "I32", torch.bfloat16: "BF16"}
    p = check_tensor_path(path)
    header: dict[str, object] = {"__metadata__": _tensor_metadata(metadata)}
    start = 0
    parts = []
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        if t.dtype not in codes:
            raise OutputError(f"cannot save tensor '{name}' of dtype {t.dtype}")
        nbytes = t.numel() * t.element_size()
        header[name] = {"dtype": codes[t.dtype], "shape": [int(d) for d in t.shape], "data_offsets": [start, start + nbytes]}
        start += nbytes
        parts.append(t)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        with _atomic(p) as fh:
            fh.write(len(text).to_bytes(8, "little") + text)
            for t in parts:
                if t.numel():
                    fh.write(t.reshape(-1).view(torch.uint8).numpy().data)
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
    header: dict[str, object] = {"__metadata__": _tensor_metadata(metadata)}
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
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, self._tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f"{TEMP_PREFIX}{os.getpid()}-", suffix=".part")
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
# one run's outputs: staged, then moved into place together, with a manifest


def _fingerprint(path: Path) -> dict:
    import hashlib

    st = path.stat()
    if st.st_size > _HASH_LIMIT:
        return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return {"size": st.st_size, "sha256": digest.hexdigest()}


def _same_file(path: Path, recorded: object) -> bool:
    """``path`` is a regular file (not a link) that still is what a manifest recorded."""
    if not isinstance(recorded, dict) or path.is_symlink() or not path.is_file():
        return False
    try:
        now = _fingerprint(path)
    except OSError:
        return False
    keys = ("size", "sha256") if "sha256" in recorded else ("size", "mtime_ns")
    return all(now.get(k) == recorded.get(k) for k in keys)


def read_manifest(folder: str | os.PathLike) -> dict:
    """The manifest of an output folder (``{}`` when there is none or it is unreadable)."""
    try:
        doc = json.loads((Path(folder) / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) and isinstance(doc.get("files"), dict) else {}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Remove ``.attnviz-<pid>-*.part`` files/folders in ``folder`` left by processes that are gone (e.g. SIGKILL)."""
    import shutil

    removed = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return removed
    for entry in entries:
        name = entry.name
        if not (name.startswith(TEMP_PREFIX) and name.endswith(".part")):
            continue
        pid = name[len(TEMP_PREFIX):].split("-", 1)[0]
        if not pid.isdigit() or _pid_alive(int(pid)):
            continue
        try:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
            removed.append(entry)
        except OSError:
            pass
    return removed


def _temp_name() -> str:
    import secrets

    return f"{TEMP_PREFIX}{os.getpid()}-{secrets.token_hex(4)}.part"


def _process_start(pid: int) -> str | None:
    """When process ``pid`` started (Linux ``/proc/<pid>/stat`` field 22, clock ticks since boot), or None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rfind(")") + 2:].split()
    return fields[19] if len(fields) > 19 else None


def _claim_holder(entry: Path) -> dict | None:
    """The live claim recorded in ``entry`` (``{"pid", "start", "target", "command"}``), or None when its
    process is gone (or its pid now belongs to another process)."""
    try:
        doc = json.loads(entry.read_text(encoding="utf-8"))
        pid = int(doc["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not _pid_alive(pid):
        return None
    start = doc.get("start")
    if start is not None and _process_start(pid) not in (None, start):
        return None  # the pid was reused by another process
    return doc


@contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    """Hold an exclusive ``fcntl.flock`` on ``folder`` itself (a descriptor of the folder, no lock file) for a
    moment; the kernel drops it if the process dies. No-op where there is no ``fcntl`` (Windows)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:  # a file system without locks: the claims alone still catch runs that do not start together
            pass
        yield
    finally:
        os.close(fd)  # closing the only descriptor releases the lock


def _claim(folder: Path, target: Path, command: str, label: str, hint: str) -> Path:
    """Claim ``target`` (a folder or file to be created or replaced in ``folder``) for this process.

    The claim is a small ``.attnviz-<pid>-lock-<random>.part`` file in ``folder`` naming the target;
    checking the other claims and writing this one happen under :func:`_folder_lock`, so of two runs
    that start together exactly one gets the target. Claims of processes that are gone are ignored
    and removed (as every ``.part`` of a dead process is, :func:`remove_stale_temporaries`).

    Raises:
        OutputError: a live attnviz process (another pid) holds a claim on ``target``.
    """
    import secrets

    key = os.path.abspath(target)
    with _folder_lock(folder):
        try:
            entries = list(folder.iterdir())
        except OSError as exc:
            raise OutputError(f"cannot write to '{folder}': {exc.strerror or exc}") from exc
        for entry in entries:
            name = entry.name
            if not (name.startswith(TEMP_PREFIX) and name.endswith(".part") and "-lock-" in name):
                continue
            holder = _claim_holder(entry)
            if holder is None:
                entry.unlink(missing_ok=True)  # a dead process's claim never blocks
                continue
            if int(holder["pid"]) != os.getpid() and holder.get("target") == key:
                other = f", '{holder['command']}'" if holder.get("command") else ""
                raise OutputError(f"{label} is being written by another attnviz run (pid {holder['pid']}{other}); {hint}")
        path = folder / f"{TEMP_PREFIX}{os.getpid()}-lock-{secrets.token_hex(4)}.part"
        doc = {"pid": os.getpid(), "start": _process_start(os.getpid()), "target": key, "command": command}
        try:
            path.write_text(json.dumps(doc), encoding="utf-8")
        except OSError as exc:
            raise OutputError(f"cannot write to '{folder}': creating a file there fails ({exc.strerror or exc})") from exc
    return path


def _release(claims: list[Path]) -> None:
    """Remove claim files (idempotent; also run by a finaliser when a RunOutput is dropped or Python exits)."""
    while claims:
        claims.pop().unlink(missing_ok=True)


class _Place:
    """A destination folder that may not exist yet; files are staged in a temporary folder and moved in on commit.

    If the folder exists, the stage is a hidden folder inside it. If not, the stage stands for its
    first missing ancestor (created beside that ancestor's parent) and is renamed into place, so a
    failed run creates no folder at all.
    """

    def __init__(self, folder: Path):
        self.folder = folder
        probe = folder
        while not probe.exists() and not probe.is_symlink():
            if probe.parent == probe:
                break
            probe = probe.parent
        if probe.exists() and not probe.is_dir():
            raise OutputError(f"'{probe}' is a file, so '{folder}' cannot be a folder")
        _check_folder(probe)
        self.existing = probe  # the deepest folder that exists
        self.exists = probe == folder
        self._stage: Path | None = None

    @property
    def first_missing(self) -> Path:
        return self.folder if self.exists else Path(self.existing, self.folder.relative_to(self.existing).parts[0])

    def claim(self, command: str, label: str, hint: str, target: Path | None = None) -> Path:
        """Claim what this place creates (its folder, or the first missing folder on the way; ``target`` instead
        when given) against concurrent attnviz runs (:func:`_claim`). Raises OutputError when another holds it."""
        return _claim(self.existing, target if target is not None else self.first_missing, command, label, hint)

    def stage(self) -> Path:
        """The staged counterpart of :attr:`folder` (created on first use)."""
        if self._stage is None:
            remove_stale_temporaries(self.existing)
            root = self.existing / _temp_name()
            try:
                root.mkdir()
            except OSError as exc:
                raise OutputError(f"cannot write to '{self.existing}': {exc.strerror or exc}") from exc
            self._stage = root
        inner = self._stage if self.exists else self._stage / self.folder.relative_to(self.first_missing)
        try:
            inner.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"cannot write to '{self.existing}': {exc.strerror or exc}") from exc
        return inner

    def staged(self, folder: Path) -> Path | None:
        """The staged counterpart of ``folder`` when it lies in the part of the tree this place creates, else None."""
        if self.exists:
            return None
        try:
            rel = Path(folder).relative_to(self.first_missing)
        except ValueError:
            return None
        self.stage()
        inner = self._stage / rel
        inner.mkdir(parents=True, exist_ok=True)
        return inner

    def discard(self) -> None:
        import shutil

        if self._stage is not None:
            shutil.rmtree(self._stage, ignore_errors=True)
            self._stage = None


class RunOutput:
    """Every file one run writes, all or nothing, and only over files attnviz wrote.

    Figures (and any other report files) go to ``out_dir``; an attention tensor file
    (``--save-attn``) may go elsewhere. Everything is first written into a temporary
    ``.attnviz-<pid>-<random>.part`` folder next to its destination; :meth:`commit`
    checks every destination again and then moves the files into place, writes the
    folder's manifest (:data:`MANIFEST`: what this run wrote, with its settings and the
    attnviz version) and removes the previous run's outputs that this run did not write
    again (only those still exactly as attnviz wrote them). A run that fails or is
    interrupted before the commit leaves every previous file as it was and creates no
    folder.

    Rules, checked by :meth:`check` (call it before the expensive work) and at commit:

    - a file that exists under a name this run writes must be one attnviz wrote (listed in
      the folder's manifest with the same content) unless ``force``;
    - nothing is ever written onto a file in ``protect`` (the model's and tokenizer's
      files), whatever ``force`` says;
    - the tensor file may replace only an attention file attnviz wrote
      (:func:`is_attnviz_tensor_file`) unless ``force``;
    - one run at a time per destination: :meth:`check` claims the output folder (and a
      ``--save-attn`` file elsewhere) with a ``.attnviz-<pid>-lock-<random>.part`` file in the
      deepest existing folder, written under an ``fcntl.flock`` of that folder; another run
      into the same place then fails at its own check, naming this run's pid. The claim is
      removed at commit or abort (and when the object is dropped or Python exits); a claim
      whose process is gone never blocks and is removed by the next run.

    After :meth:`commit`, :attr:`files` lists the final paths, :attr:`removed` the previous
    run's outputs that were removed (:attr:`previous_command`: that run's command;
    :func:`describe_removed` says it in one line) and :attr:`left_alone` those kept because
    they changed since.

    Usage::

        out = RunOutput("attnviz-out", command="text", settings={...}, protect=model_files)
        out.check(["head-view.png"], tensor="attn.safetensors")   # fails fast, before loading
        with out:
            out.figure(fig, "head-view", "png")
            save_tensors(out.tensor_target("attn.safetensors"), tensors, meta)
        out.files  # final paths

    Raises:
        OutputError: an empty ``out_dir``; a destination that is a folder/file of the wrong kind,
            a symbolic link loop, not writable, a user's file in the way, a protected file, or
            claimed by another attnviz run.
    """

    def __init__(self, out_dir: str | os.PathLike, *, command: str, settings: Mapping[str, object] | None = None,
                 force: bool = False, protect: "set[str] | frozenset[str]" = frozenset(), stamp: str | None = None):
        self.out_dir = check_out_dir(out_dir)
        if self.out_dir.exists() and not self.out_dir.is_dir():
            raise OutputError(f"output folder '{self.out_dir}' is a file")
        self.command = command
        self.settings = dict(settings or {})
        self.force = force
        self.protect = frozenset(protect)
        self.stamp = stamp
        self._place = _Place(self.out_dir)
        self._previous = read_manifest(self.out_dir) if self._place.exists else {}
        self._names: list[str] = []
        self._tensor: tuple[Path, _Place] | None = None
        self._claims: list[Path] = []
        self._claimed: set[str] = set()
        self._finalizer = weakref.finalize(self, _release, self._claims)  # also when dropped unfinished, or at exit
        self.files: list[Path] = []
        self.tensor: Path | None = None
        self.left_alone: list[Path] = []
        self.removed: list[Path] = []
        self.previous_command: str | None = None

    # -- the lock ---------------------------------------------------------

    def _lock(self) -> None:
        """Claim the output folder against concurrent attnviz runs (once; released at commit or abort).

        Re-reads where the folder stands (another run may have created it meanwhile) and its manifest.

        Raises:
            OutputError: another live attnviz run is writing into the same folder (naming its pid).
        """
        if "out" in self._claimed:
            return
        if self._place._stage is None:
            self._place = _Place(self.out_dir)
        self._claims.append(self._place.claim(
            self.command, f"output folder '{self.out_dir}'", "wait for it to finish or choose another --out"))
        self._claimed.add("out")
        self._previous = read_manifest(self.out_dir) if self._place.exists else {}

    def _lock_tensor(self, final: Path) -> None:
        """Claim a ``--save-attn`` file outside the output folder (its folder when that is created)."""
        folder = os.path.abspath(final.parent)
        if folder == os.path.abspath(self.out_dir):
            return
        if not self._place.exists and (folder + os.sep).startswith(os.path.abspath(self._place.first_missing) + os.sep):
            return  # inside the folder tree this run creates: covered by the output folder's claim
        key = os.path.abspath(final)
        if key in self._claimed:
            return
        place = _Place(final.parent)
        self._claims.append(place.claim(
            self.command, f"--save-attn '{final}'", "wait for it to finish or choose another --save-attn",
            target=final if place.exists else None))
        self._claimed.add(key)

    def release(self) -> None:
        """Drop this run's claims on its destinations (idempotent; :meth:`commit` and :meth:`abort` call it)."""
        _release(self._claims)
        self._claimed.clear()

    # -- checks -----------------------------------------------------------

    def _check_target(self, path: Path, owned: bool, what: str) -> None:
        real = os.path.realpath(path)
        if real in self.protect or os.path.realpath(path.parent) + os.sep + path.name in self.protect:
            raise OutputError(f"refusing to write {what} '{path}': the model is loaded from that file")
        if not (path.exists() or path.is_symlink()):
            return
        if path.is_dir() and not path.is_symlink():
            raise OutputError(f"cannot write {what} '{path}': it is a folder")
        if not owned and not self.force:
            where = "another --out" if what == "a report to" else "another file name"
            raise OutputError(f"'{path}' exists and attnviz did not write it; choose {where}, move it, or rerun with --force")

    def _owned(self, name: str) -> bool:
        path = self.out_dir / name
        if self._tensor is not None and os.path.abspath(path) == os.path.abspath(self._tensor[0]) and is_attnviz_tensor_file(path):
            return True
        return _same_file(path, self._previous.get("files", {}).get(name))

    def check(self, names=(), tensor: str | os.PathLike | None = None) -> None:
        """Check destinations before any work: ``names`` in the output folder, ``tensor`` anywhere.

        Also claims the destinations against other attnviz runs (:meth:`_lock`): from here until
        :meth:`commit` or :meth:`abort`, another run into the same folder fails at its own ``check``.

        Raises:
            OutputError: see the class docstring; another run is writing there.
        """
        self._lock()
        for name in names:
            self._check_target(self.out_dir / name, self._owned(name), "a report to")
        if tensor is not None:
            path = check_tensor_path(tensor)
            self._check_target(path, is_attnviz_tensor_file(path), "attention to")
            self._lock_tensor(path)

    # -- writing ----------------------------------------------------------

    def path(self, name: str) -> Path:
        """A staged path to write the output folder's file ``name`` to (moved into place on commit)."""
        self._lock()
        if name in self._names:
            raise OutputError(f"two outputs of this run are both named '{name}'")
        self._check_target(self.out_dir / name, self._owned(name), "a report to")
        self._names.append(name)
        return self._place.stage() / name

    def figure(self, fig: "Figure", stem: str, fmt: str = "png", **savefig) -> Path:
        """Stage ``fig`` as ``stem.fmt`` (see :func:`write_figure`); returns its final path."""
        if self.stamp:
            fig.text(0.5, 0.002, self.stamp, ha="center", va="bottom", fontsize=8, color="#b00020", weight="bold")
        staged = self.path(f"{stem}.{fmt}")
        write_figure(fig, staged.parent, stem, fmt, **savefig)
        return self.out_dir / staged.name

    def page(self, html: str, stem: str = "report") -> Path:
        """Stage one self-contained HTML page (:mod:`attnviz.html`) as ``stem.html`` (UTF-8); returns its final path."""
        staged = self.path(f"{stem}.html")
        if self.stamp:
            from html import escape

            banner = (f'<div role="alert" style="background:#b00020;color:#fff;font:bold 14px sans-serif;padding:6px 10px">'
                      f"{escape(self.stamp)}</div>")
            html = html.replace("<body>", "<body>" + banner, 1) if "<body>" in html else banner + html
        write_html(html, staged.parent, stem)
        return self.out_dir / staged.name

    def tensor_target(self, path: str | os.PathLike) -> Path:
        """A staged path for the attention file ``path`` (``--save-attn``); moved into place on commit."""
        final = check_tensor_path(path)
        self._lock()
        self._lock_tensor(final)
        self._check_target(final, is_attnviz_tensor_file(final), "attention to")
        if os.path.abspath(final.parent) == os.path.abspath(self.out_dir):
            self._tensor = (final, self._place)
            return self.path(final.name)
        inside = self._place.staged(final.parent)  # a folder this run creates anyway: moved in with it
        if inside is not None:
            self._tensor = (final, self._place)
            return inside / final.name
        place = _Place(final.parent)
        self._tensor = (final, place)
        return place.stage() / final.name

    # -- commit / abort ---------------------------------------------------

    def commit(self) -> list[Path]:
        """Move every staged file into place, write the manifest, remove the previous run's leftovers.

        What was removed is in :attr:`removed` (with the previous run's command in
        :attr:`previous_command`; :func:`describe_removed` says it in one line). Releases the claims.
        """
        self._lock()
        for name in self._names:
            self._check_target(self.out_dir / name, self._owned(name), "a report to")
        if self._tensor is not None and self._tensor[1] is not self._place:
            final, place = self._tensor
            self._check_target(final, is_attnviz_tensor_file(final), "attention to")
        staged = self._place.stage() if self._names or (self._place.exists and self._previous) or self._place._stage else None
        record = {}
        if staged is not None:
            for name in self._names:
                record[name] = _fingerprint(staged / name)
        previous = self._previous.get("files", {})
        manifest = {
            "attnviz": _version(),
            "command": self.command,
            "settings": self.settings,
            "files": record,
        }
        try:
            if staged is not None:
                (staged / MANIFEST).write_text(json.dumps(manifest, indent=1, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
                for p in staged.iterdir():
                    os.chmod(p, 0o666 & ~_umask())
            if self._tensor is not None and self._tensor[1] is not self._place:
                final, place = self._tensor
                self._move_in(place, [final.name])
                self.tensor = final
            if staged is not None:
                self._move_in(self._place, self._names + [MANIFEST])
        except OSError as exc:
            self.abort()
            raise OutputError(f"cannot move the outputs into '{self.out_dir}': {exc.strerror or exc}") from exc
        if self._tensor is not None and self._tensor[1] is self._place:
            self.tensor = self._tensor[0]
        for name, recorded in previous.items():
            if name in record or name == MANIFEST or "/" in name or name.startswith("."):
                continue
            old = self.out_dir / name
            if _same_file(old, recorded):
                old.unlink(missing_ok=True)
                self.removed.append(old)
            elif old.exists() or old.is_symlink():
                self.left_alone.append(old)
        if self.removed:
            command = self._previous.get("command")
            self.previous_command = command if isinstance(command, str) else None
        self.files = [self.out_dir / n for n in self._names if self._tensor is None or self.out_dir / n != self._tensor[0]]
        self.release()
        return self.files

    @staticmethod
    def _move_in(place: _Place, names: list[str]) -> None:
        stage = place.stage()
        if place.exists:
            for name in names:
                os.replace(stage / name, place.folder / name)
            place.discard()
        else:
            root = place._stage
            os.rename(root, place.first_missing)
            place._stage = None

    def abort(self) -> None:
        """Remove everything staged and drop the claims (idempotent)."""
        self._place.discard()
        if self._tensor is not None:
            self._tensor[1].discard()
        self.release()

    def __enter__(self) -> "RunOutput":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
            return
        try:
            self.commit()
        except BaseException:
            self.abort()
            raise


def describe_removed(output: RunOutput, limit: int = 6) -> str | None:
    """One line saying which of the previous run's outputs ``output``'s commit removed, or None when none.

    E.g. ``removed 4 files of the previous 'text' run in attnviz-out: head-view.png, matrix.png,
    model-view.png, focus-view.png``; more than ``limit`` names end in "and N more". Pipelines pass it
    to :func:`attnviz.pipelines.common.notify` after the commit.
    """
    if not output.removed:
        return None
    n = len(output.removed)
    names = [p.name for p in output.removed[:limit]]
    if n > limit:
        names.append(f"and {n - limit} more")
    run = f"the previous '{output.previous_command}' run" if output.previous_command else "the previous run"
    return f"removed {n} file{'s' if n != 1 else ''} of {run} in {output.out_dir}: {', '.join(names)}"


def _version() -> str:
    from attnviz.version import __version__

    return __version__


def model_files(location: str | os.PathLike) -> frozenset[str]:
    """Real paths of every file in a model folder (and what its links point to), never to be written."""
    found: set[str] = set()
    root = Path(location)
    if not root.is_dir():
        return frozenset()
    for dirpath, _dirs, names in os.walk(root, followlinks=False):
        for name in names:
            p = Path(dirpath, name)
            found.add(os.path.realpath(p))
            found.add(os.path.abspath(p))
    return frozenset(found)


def is_attnviz_tensor_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is an attention file attnviz wrote: a safetensors file (not a link) whose metadata says
    ``"format": "attnviz-attention"`` (:func:`save_tensors`, :class:`AttentionWriter`). Nothing else is guessed to be
    one: a file with attention-like tensor names but other metadata is the user's."""
    p = Path(path)
    if p.is_symlink() or not p.is_file():
        return False
    try:
        with open(p, "rb") as fh:
            size = int.from_bytes(fh.read(8), "little")
            if not 2 <= size <= 1 << 26:
                return False
            header = json.loads(fh.read(size))
    except (OSError, ValueError):
        return False
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return isinstance(meta, dict) and meta.get("format") == "attnviz-attention"


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

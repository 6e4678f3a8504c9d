"""Read any attention file attnviz writes (``--save-attn``): ``attnviz.load_attention(path)``.

::

    import attnviz

    f = attnviz.load_attention("attn.safetensors")
    f.kinds                      # ('self',) or ('encoder', 'decoder', 'cross')
    f.metadata["tokens"]         # what each position is (text files)
    a = f.dense(layers=[0, 11])  # float32 [2, H, N, N]: compare with a dense reference

Every command's file holds one tensor per attention kind, ``attentions`` (single stack) or ``<kind>_attentions``
(``encoder``, ``decoder``, ``cross``), ``[layers, heads, query, key]``, float32 or float16 (``attnviz text --half``),
with JSON metadata. Two layouts:

- ``dense``: every query row (``attnviz text``, ``image``, ``audio``, ``detect``);
- ``rows``: ``attnviz generate``'s ``attentions [L, H, generated, keys]`` (and, for encoder-decoder models,
  ``cross_attentions [L, H, generated, source]``; the self-attention is then the ``decoder`` kind), the rows of the
  generated positions only (metadata ``context_length``: generated token ``i`` is query position
  ``context_length + i``).

A YOLOS ``attnviz detect`` file holds ``attentions`` (the whole sequence) and, cut from it, ``encoder`` (patches over
patches), ``decoder`` (detection tokens over detection tokens) and ``cross`` (detection tokens over patches) blocks,
whose rows sum to less than 1.

:meth:`AttentionFile.dense` returns float32 ``[L, H, Q, K]`` for any of them (zeros where the file holds no row), read
layer by layer from the file, so a slice of layers of a large file costs only those layers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from attnviz.errors import InputError, UsageError

if TYPE_CHECKING:  # pragma: no cover
    import torch

#: Largest dense copy :meth:`AttentionFile.dense` makes of a sparse (long-document) file, in bytes.
DENSE_LIMIT = 8 << 30
#: Attention kinds by tensor name.
KINDS = {"attentions": "self", "encoder_attentions": "encoder", "decoder_attentions": "decoder",
         "cross_attentions": "cross"}


@dataclass(frozen=True)
class AttentionFile:
    """An attnviz attention file: its ``path``, ``metadata`` (JSON values decoded), the attention tensors' ``shapes``
    by kind (``[layers, heads, query, key]``) and every tensor ``names`` (also non-attention ones such as ``rollout``
    or ``method/relevance``)."""

    path: Path
    metadata: dict[str, Any]
    shapes: dict[str, tuple[int, ...]]
    names: tuple[str, ...] = field(default_factory=tuple)

    @property
    def kinds(self) -> tuple[str, ...]:
        """The attention kinds in the file: ``("self",)``, or some of ``("encoder", "decoder", "cross")``."""
        return tuple(self.shapes)

    def layout(self, kind: str | None = None) -> str:
        """``"band"`` or ``"blocks"`` for a long document's sparse file (``layout`` metadata), ``"rows"`` for a
        generation file's self-attention (generated rows only), else ``"dense"``."""
        kind = self._kind(kind)
        sparse = self.metadata.get("layout")
        if sparse in ("band", "blocks") and self.metadata.get(f"{sparse}_kind") == kind:
            return sparse
        return "rows" if "context_length" in self.metadata and kind in ("self", "decoder", "cross") else "dense"

    def _kind(self, kind: str | None) -> str:
        if kind is None:
            if len(self.shapes) == 1:
                return next(iter(self.shapes))
            if "self" in self.shapes:
                return "self"
            if set(self.shapes) == {"decoder", "cross"}:
                return "decoder"
            raise UsageError(f"'{self.path}' holds {', '.join(self.kinds)} attention: pass kind= one of them")
        if kind not in self.shapes:
            raise UsageError(f"'{self.path}' has no {kind} attention; it has {', '.join(self.kinds)}")
        return kind

    def dense(self, kind: str | None = None, layers: Iterable[int] | slice | None = None) -> "torch.Tensor":
        """float32 ``[len(layers), H, Q, K]`` attention probabilities of ``kind`` (None: the file's only kind, or
        ``"self"``), zeros where the file holds no row (a generation file's prompt rows); ``layers``: 0-based indices
        (negative from the end) or a slice, default every layer.

        Raises:
            UsageError: no such kind, a layer out of range, ``kind`` None on an encoder-decoder file.
        """
        import torch
        from safetensors import safe_open

        kind = self._kind(kind)
        n_layers, heads, q, k = self.shapes[kind]
        if isinstance(layers, int):
            layers = [layers]
        if layers is None:
            picked = list(range(n_layers))
        elif isinstance(layers, slice):
            picked = list(range(n_layers))[layers]
        else:
            picked = []
            for layer in layers:
                if not -n_layers <= int(layer) < n_layers:
                    raise UsageError(f"layer {layer} is out of range: the file has {n_layers} {kind} layers (0..{n_layers - 1})")
                picked.append(int(layer) % n_layers)
        if self.layout(kind) in ("band", "blocks"):
            need = 4 * len(picked) * heads * q * k
            if need > DENSE_LIMIT:
                raise UsageError(f"{len(picked)} dense layers of '{self.path.name}' would take {need / 2**30:.1f} GiB "
                                 f"({heads} heads x {q} x {k}); read fewer layers, or the sparse layout with .sparse()")
            return self._sparse(kind, picked)
        name = next(n for n, kd in KINDS.items() if kd == kind)
        if kind == "decoder" and name not in self.names:
            name = "attentions"  # a generation file's decoder self-attention
        rows = self.layout(kind) == "rows"
        start = int(self.metadata.get("context_length", 0))
        size = ((start + q, k) if kind == "cross" else (start + q, start + q)) if rows else (q, k)
        out = torch.zeros((len(picked), heads, *size), dtype=torch.float32)
        with safe_open(str(self.path), "pt") as fh:
            part = fh.get_slice(name)
            for i, layer in enumerate(picked):
                t = part[layer:layer + 1][0].float()  # [H, Q, K]
                if rows:
                    out[i, :, start:start + q] = t
                else:
                    out[i] = t
        return out


    def sparse(self, kind: str | None = None):
        """A long document's file as it is stored: :class:`attnviz.sparse.BandAttention` (``layout`` "band") or
        :class:`attnviz.blocksparse.BlockAttention` ("blocks"), every layer, float32.

        Raises:
            UsageError: the file (or ``kind``) holds dense maps or generated rows, not a sparse layout.
        """
        from safetensors import safe_open

        kind = self._kind(kind)
        layout = self.layout(kind)
        if layout not in ("band", "blocks"):
            raise UsageError(f"'{self.path}' holds {layout} {kind} attention, not a sparse layout: use .dense()")
        with safe_open(str(self.path), "pt") as fh:
            tensors = {name: fh.get_tensor(name) for name in fh.keys() if name.startswith(f"{layout}/")}
        if layout == "band":
            from attnviz.sparse import BandAttention

            return BandAttention.from_tensors(tensors, self.metadata)
        from attnviz.blocksparse import BlockAttention

        return BlockAttention.from_tensors(tensors, self.metadata)

    def _sparse(self, kind: str, picked: list[int]) -> "torch.Tensor":
        """A long document's sparse file as dense maps of the ``picked`` layers."""
        import torch
        from safetensors import safe_open

        layout = self.metadata["layout"]
        with safe_open(str(self.path), "pt") as fh:
            if layout == "band":  # every band tensor is per layer: read only the picked ones
                from attnviz.sparse import BandAttention

                tensors = {}
                for name in fh.keys():
                    if name.startswith("band/"):
                        part = fh.get_slice(name)
                        tensors[name] = torch.stack([part[l:l + 1][0] for l in picked])
                meta = {**self.metadata, "window": [self.metadata["window"][l] for l in picked]}
                return BandAttention.from_tensors(tensors, meta).dense()
            from attnviz.blocksparse import BlockAttention

            tensors = {name: fh.get_tensor(name) for name in fh.keys() if name.startswith("blocks/")}
        return BlockAttention.from_tensors(tensors, self.metadata).dense(picked)


def load_attention(path: str | Path) -> AttentionFile:
    """Open an attention file written by any attnviz command (``--save-attn``); the tensors stay on disk until
    :meth:`AttentionFile.dense` reads them.

    Raises:
        InputError: missing, not a safetensors file, or no attention tensor in it.
    """
    from safetensors import SafetensorError, safe_open

    p = Path(path).expanduser()
    if not p.is_file():
        raise InputError(f"attention file '{p}' does not exist" if not p.exists() else f"'{p}' is not a file")
    try:
        with safe_open(str(p), "pt") as fh:
            raw = fh.metadata() or {}
            names = tuple(fh.keys())
            shapes = {KINDS[n]: tuple(fh.get_slice(n).get_shape()) for n in names if n in KINDS}
    except (SafetensorError, OSError, ValueError) as exc:
        raise InputError(f"'{p}' is not a safetensors file: {str(exc).splitlines()[0][:160]}") from None
    shapes = {k: s for k, s in shapes.items() if len(s) == 4}
    sparse = raw.get("layout")
    if sparse in ("band", "blocks"):  # a long document's sparse layout: its logical dense shape [L, H, N, N (+ S)]
        with safe_open(str(p), "pt") as fh:
            first = tuple(fh.get_slice(f"{sparse}/{'local' if sparse == 'band' else 'values'}").get_shape())
        n = int(raw["n"])
        extra = len(json.loads(raw.get("side_spans", "[]")))
        shapes[raw[f"{sparse}_kind"]] = (first[0], first[1], n, n + extra)
    if not shapes:
        raise InputError(f"'{p}' holds no attention tensor ({', '.join(KINDS)})")
    metadata: dict[str, Any] = {}
    try:
        encoded = set(json.loads(raw["json_keys"])) if "json_keys" in raw else None
    except ValueError:
        encoded = None
    for key, value in raw.items():
        if key == "json_keys" or (encoded is not None and key not in encoded):
            metadata[key] = value
            continue
        try:  # files from before json_keys: every value that parses as JSON
            metadata[key] = json.loads(value)
        except ValueError:
            metadata[key] = value
    metadata.pop("json_keys", None)
    if "context_length" in metadata and "cross" in shapes and "self" in shapes:
        shapes["decoder"] = shapes.pop("self")  # an encoder-decoder generation: its self-attention is the decoder's
    ordered = {k: shapes[k] for k in ("self", "encoder", "decoder", "cross") if k in shapes}
    return AttentionFile(p, metadata, ordered, names)

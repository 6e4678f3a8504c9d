"""Long documents with sliding-window + global attention: what the long-document views show, as pure functions of a
:class:`attnviz.sparse.BandAttention` (never an ``[N, N]`` map).

Every value is an attention probability the model computed (or a mean of them over heads, which the caller names).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch

from attnviz.sparse import BandAttention

if TYPE_CHECKING:  # pragma: no cover
    from attnviz.blocksparse import BlockAttention


@dataclass(frozen=True)
class Link:
    """One key position a row gives weight to: ``position`` (0-based token), its ``token`` text, ``weight``
    (probability, head mean unless said otherwise)."""

    position: int
    token: str
    weight: float


def band_overview(band: BandAttention, layer: int, head: int | None = None) -> np.ndarray:
    """Float32 ``[2W+1, N]``: row ``o`` is every query's weight on the key at offset ``o - W`` (head ``head``, or
    the mean over heads); NaN where there is no such key for the view (before the start, past the end, outside the
    layer's own window when it is narrower than the band), where the key is global (its weight is in
    :func:`global_strip`) and in a global query's column (its row is in :func:`global_panels`)."""
    local = band.local[layer]  # [H, N, 2W+1]
    values = (local.mean(0) if head is None else local[head]).T.contiguous().numpy().astype(np.float32)
    W, n = band.half_width, band.n
    offsets = np.arange(-W, W + 1)[:, None]
    keys = np.arange(n)[None, :] + offsets
    missing = (keys < 0) | (keys >= n) | np.isin(keys, list(band.global_index))
    missing[:, list(band.global_index)] = True
    w = band.window[layer] if layer < len(band.window) else W
    missing |= np.abs(offsets) > w
    values[missing] = np.nan
    return values


def global_strip(band: BandAttention, layer: int, head: int | None = None) -> np.ndarray:
    """Float32 ``[G, N]``: every query's weight on each global key (head ``head`` or the head mean); empty ``[0, N]``
    without global tokens."""
    if band.global_keys is None or not band.global_index:
        return np.zeros((0, band.n), dtype=np.float32)
    keys = band.global_keys[layer]  # [H, N, G]
    values = keys.mean(0) if head is None else keys[head]
    return values.T.contiguous().numpy().astype(np.float32, copy=False)


def focus_profile(rows: torch.Tensor, n: int, head: int | None = None) -> np.ndarray:
    """Float32 ``[L, N]``: the focus token's attention along the document's ``n`` tokens per layer, from its dense
    rows ``[L, H, R, N (+ S)]`` (``R`` pieces of one word: their mean), head mean or one head. With LongT5's
    transient-global keys (the ``S`` columns after the tokens, :func:`side_share`) a row sums to 1 minus their share."""
    values = rows.mean(1) if head is None else rows[:, head]
    return values.mean(1)[:, :n].numpy().astype(np.float32, copy=False)


def side_share(rows: torch.Tensor, n: int, head: int | None = None) -> np.ndarray:
    """Float32 ``[L]``: the focus rows' weight on LongT5's transient-global keys (0 without)."""
    values = rows.mean(1) if head is None else rows[:, head]
    return values.mean(1)[:, n:].sum(-1).numpy().astype(np.float32, copy=False)


def side_strip(band: BandAttention, layer: int, head: int | None = None) -> np.ndarray:
    """Float32 ``[1, N]``: every query's total weight on LongT5's transient-global keys (``[0, N]`` without)."""
    if band.side_keys is None or not band.side_spans:
        return np.zeros((0, band.n), dtype=np.float32)
    keys = band.side_keys[layer]  # [H, N, S]
    values = keys.mean(0) if head is None else keys[head]
    return values.sum(-1)[None].numpy().astype(np.float32, copy=False)


def top_links(values: np.ndarray, tokens: Sequence[str], k: int = 5, exclude: Sequence[int] = ()) -> list[Link]:
    """The ``k`` positions of ``values`` ``[N]`` with the largest weight (ties: the earlier), leaving out ``exclude``
    (e.g. the focus token itself); zero weights never listed."""
    v = np.asarray(values, dtype=np.float64).copy()
    for i in exclude:
        if 0 <= i < v.shape[0]:
            v[i] = -1.0
    order = np.argsort(-v, kind="stable")[:k]
    return [Link(int(i), tokens[int(i)], float(values[int(i)])) for i in order if v[int(i)] > 0]


def window_matrix(band: BandAttention, layer: int, center: int, radius: int, head: int | None = None
                  ) -> tuple[np.ndarray, int, np.ndarray]:
    """The dense ``[R, R]`` attention among the tokens ``[start, start + R)`` around ``center`` (``radius`` tokens
    each side, cut at the document's ends), head mean or one head, plus each query's weight on keys outside that
    range (``[R]``: the rest of its window, the global tokens, LongT5's transient-global keys).

    Returns:
        ``(matrix, start, outside)``.
    """
    n = band.n
    start, stop = max(0, center - radius), min(n, center + radius + 1)
    rows = band.rows(layer, range(start, stop))  # [H, R, N (+ S)]
    values = rows.mean(0) if head is None else rows[head]
    inside = values[:, start:stop]
    outside = (values.sum(-1) - inside.sum(-1)).clamp_min(0.0)
    return inside.numpy().astype(np.float32), start, outside.numpy().astype(np.float32)


@dataclass(frozen=True)
class LongDocument:
    """What the long-document views draw: the captured band and what names its positions.

    ``tokens``: ``N`` token strings; ``band``: every layer's probabilities (:class:`BandAttention`), or None when only
    the focus rows were kept; ``focus_rows``: float32 ``[L, H, R, N]`` dense rows of the focus token's ``R`` pieces
    (``focus_index``), or None; ``focus_text``: the focus as the user named it.
    """

    model_id: str
    model_type: str
    kind: str
    tokens: tuple[str, ...]
    num_layers: int
    num_heads: int
    window: tuple[int, ...]
    global_index: tuple[int, ...]
    band: "BandAttention | BlockAttention | None"
    focus_rows: torch.Tensor | None = None
    focus_index: tuple[int, ...] = ()
    focus_text: str | None = None
    side_spans: tuple[tuple[int, int], ...] = ()

    @property
    def n(self) -> int:
        return len(self.tokens)

    @property
    def half_width(self) -> int:
        return max(self.window) if self.window else 0

    @property
    def block_size(self) -> int | None:
        """BigBird's block size (None for a band layout)."""
        return getattr(self.band, "block_size", None)

    def window_span(self, layer: int, q: int) -> tuple[int, int]:
        """First and last key position of query ``q``'s local window in ``layer``: ``q ± w`` (band), or its block
        and the two next to it (BigBird), cut at the document's ends; the whole document for a global query."""
        if q in self.global_index:
            return 0, self.n - 1
        if self.block_size:
            bs = self.block_size
            b = q // bs
            return max(0, (b - 1) * bs), min(self.n - 1, (b + 2) * bs - 1)
        w = self.window[layer] if layer < len(self.window) else self.half_width
        return max(0, q - w), min(self.n - 1, q + w)

    def random_blocks(self, layer: int, q: int) -> tuple[int, ...]:
        """BigBird: the key blocks query ``q``'s random slots attend in ``layer`` (any head), in order; () otherwise."""
        if not self.block_size or q in self.global_index:
            return ()
        kb = self.band.key_blocks[layer, :, q // self.block_size, 4:4 + self.band.num_random_blocks]
        return tuple(sorted({int(b) for b in kb.flatten() if int(b) >= 0}))


def global_panels(doc: LongDocument, head: int | None = None) -> list[tuple[str, tuple[int, ...], np.ndarray]]:
    """What the global view draws: ``(label, query positions, float32 [L, N])`` per global token (Longformer, LED:
    its row, head mean or ``head``) or per global block (BigBird: the mean of its queries' rows)."""
    band = doc.band
    if band is None or not doc.global_index:
        return []
    rows = band.global_rows  # [L, H, G, N]
    values = rows.mean(1) if head is None else rows[:, head]  # [L, G, N]
    if doc.block_size:
        bs = doc.block_size
        first = [g for g, p in enumerate(doc.global_index) if p < bs]
        last = [g for g, p in enumerate(doc.global_index) if p >= bs]
        out = []
        for name, idx in (("first block", first), ("last block", last)):
            if idx:
                pos = tuple(doc.global_index[g] for g in idx)
                out.append((f"{name} (tokens {pos[0]}..{pos[-1]})", pos,
                            values[:, idx].mean(1).numpy().astype(np.float32)))
        return out
    return [(doc.tokens[p], (p,), values[:, g].numpy().astype(np.float32)) for g, p in enumerate(doc.global_index)]


def block_map(blocks: "BlockAttention", layer: int, head: int | None = None) -> np.ndarray:
    """Float32 ``[nb, nb]``: the mean, over a query block's real queries, of their weight on each key block (row ``i``:
    query block ``i``; rows sum to 1), head mean or ``head``. A key block attended in several slots of a row (BigBird's
    random blocks in eval mode are all block 0) gets their sum, as the model counts it."""
    bs, n, nb = blocks.block_size, blocks.n, blocks.num_blocks
    heads = range(blocks.num_heads) if head is None else [head]
    out = torch.zeros((nb, nb), dtype=torch.float64)
    kb = blocks.key_blocks[layer]  # [H, nb, K]
    vals = blocks.values[layer]  # [H, n, K * bs]
    K = kb.shape[-1]
    for i in range(nb):
        q0, q1 = i * bs, min(n, (i + 1) * bs)
        if q0 >= n:
            continue
        for h in heads:
            if q0 in blocks.global_index:
                g0 = blocks.global_index.index(q0)
                rows = blocks.global_rows[layer, h, g0:g0 + (q1 - q0)].double()  # [R, n]
                padded = torch.nn.functional.pad(rows.mean(0), (0, nb * bs - n))
                out[i] += padded.reshape(nb, bs).sum(-1)
                continue
            mass = vals[h, q0:q1].double().reshape(q1 - q0, K, bs).sum(-1).mean(0)  # [K]
            for k in range(K):
                b = int(kb[h, i, k])
                if b >= 0:
                    out[i, b] += mass[k]
    return (out / len(heads)).numpy().astype(np.float32)

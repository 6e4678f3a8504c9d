"""Sliding-window + global attention (Longformer, LED's encoder), as transformers' eager attention returns it.

Longformer computes each query's attention over its window of ``2w + 1`` keys plus the global tokens, and each
global token's attention over every key (with its own ``query_global``/``key_global`` projections).
``output_attentions=True`` returns exactly those probabilities in two tensors per layer:

- ``attentions`` ``[B, H, N, G + 2w + 1]``: per query, its weights on the ``G`` global keys (in position order), then
  on the keys at offsets ``-w .. w`` (a global key inside the window is 0 there: its weight is in the first ``G``
  columns); a global query's row is all 0 (see the next tensor);
- ``global_attentions`` ``[B, H, N_padded, G]``: global token ``g``'s weights on every key (column ``g``).

:func:`band_to_dense` places them into ``[B, H, N, N]``: every probability the model computed at its (query, key),
0 for a key the query never attends (outside the window, padding). Rows sum to 1.
"""

from __future__ import annotations

from typing import Sequence

import torch


#: Largest dense copy of a sliding-window model's attention (Longformer, LED) attnviz makes, in bytes.
DENSE_BAND_BYTES = 4 << 30


def check_dense_budget(n: int, layers: int, heads: int) -> None:
    """Refuse an input whose dense float32 maps (``layers x heads x n x n``) exceed :data:`DENSE_BAND_BYTES`.

    Raises:
        UsageError: too long; the message names the ``--max-length`` that fits.
    """
    from attnviz.errors import UsageError

    need = layers * heads * n * n * 4
    if need > DENSE_BAND_BYTES:
        fits = int((DENSE_BAND_BYTES / (layers * heads * 4)) ** 0.5)
        raise UsageError(f"{n} tokens of sliding-window attention as dense maps would take {need / 2**30:.1f} GiB "
                         f"({layers} layers x {heads} heads); attnviz's views for long documents are not built yet: "
                         f"use --max-length {fits} or less")


def global_positions(mask: torch.Tensor) -> list[int]:
    """Positions marked global (1) in a ``[1, N]`` ``global_attention_mask``, in order."""
    return [int(i) for i in torch.nonzero(mask[0] > 0).flatten()]


def band_to_dense(local: torch.Tensor, global_rows: torch.Tensor | None, globals_: Sequence[int], n: int) -> torch.Tensor:
    """One layer's Longformer attention as a dense float32 ``[B, H, n, n]`` map.

    Args:
        local: ``[B, H, N, G + 2w + 1]`` (``output_attentions``' ``attentions``; ``N >= n``).
        global_rows: ``[B, H, N_padded, G]`` (``global_attentions``), or None without global tokens.
        globals_: the ``G`` global positions, in order.
        n: the sequence length to keep (the input's, before Longformer's padding to a multiple of the window).
    """
    b, h, _, width = local.shape
    g = len(globals_)
    band = width - g
    w = (band - 1) // 2
    out = torch.zeros((b, h, n, n), dtype=torch.float32)
    local = local[:, :, :n].float()
    rows = torch.arange(n)
    for o in range(band):  # offset o - w from the query
        keys = rows + (o - w)
        ok = (keys >= 0) & (keys < n)
        out[:, :, rows[ok], keys[ok]] += local[:, :, rows[ok], g + o]
    for k, pos in enumerate(globals_):
        if pos < n:
            out[:, :, :, pos] += local[:, :, :, k]
    if global_rows is not None:
        for k, pos in enumerate(globals_):
            if pos < n:
                out[:, :, pos, :] = global_rows[:, :, :n, k].float()
    return out

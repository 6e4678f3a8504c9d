"""Attention sinks: single patches that soak up the [CLS] attention or the rollout.

Vision Transformers without register tokens (DINOv2, DeiT, CLIP...) turn a few
low-information background patches into "high-norm" tokens that the other tokens
attend to as a scratch space (Darcet et al. 2024, "Vision Transformers Need
Registers"). Drawn over the photo, such a patch is one bright square that swamps
the colour scale and can be mistaken for the object. In DINOv2-S without
registers the attention rollout collapses onto one background patch.

Criterion (:func:`find_sinks`). Take a map ``s`` over the ``N`` patches
normalised to sum to 1 (the patch *share*). Sort the shares in decreasing order,
``s(1) >= s(2) >= ...``. The sinks are the top ``j`` patches for the largest ``j``
in ``1..max_sinks`` such that every one of them

1. takes at least ``factor`` times its uniform share (``s >= factor / N``;
   default 10x),
2. is an isolated spike: at least ``isolation`` times the largest share among its
   8 neighbours (default 4x; an object lights up neighbouring patches too), and
3. together they stand apart from the rest: ``s(j) >= gap * s(j + 1)``
   (default 2x; the sinks are what sets the top of the colour scale).

No such ``j``: no sinks. :func:`detect_sinks` applies it to two maps, the
[CLS] -> patch attention (head mean) averaged over the last third of the layers
(:func:`late_layers`) and the rollout [CLS] row, and reports the union.

All functions are pure (tensors in, values out).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import torch

#: A sink takes at least this many times the uniform share 1/N.
FACTOR = 10.0
#: ... and at least this many times the largest share among its 8 neighbours.
ISOLATION = 4.0
#: ... and the smallest sink at least this many times the largest non-sink patch.
GAP = 2.0
#: At most this many patches are called sinks ("one or a few").
MAX_SINKS = 4


@dataclass(frozen=True)
class SinkPatch:
    """One sink patch: ``row``/``col`` in the patch grid, its ``share`` of the map's patch
    mass (0..1), and the map it was found in (``"attention"``: late-layer [CLS]
    attention, or ``"rollout"``)."""

    row: int
    col: int
    share: float
    signal: str

    def to_dict(self) -> dict:
        return {"row": self.row, "col": self.col, "share": round(self.share, 6), "signal": self.signal}


def late_layers(num_layers: int) -> range:
    """The last third of the layers (at least one): ``range(L - ceil(L / 3), L)``."""
    n = max(1, math.ceil(num_layers / 3))
    return range(num_layers - n, num_layers)


def shares(weights: torch.Tensor) -> torch.Tensor:
    """Normalise a non-negative ``[rows, cols]`` map to sum to 1 (a uniform map if it sums to 0)."""
    w = weights.double().clamp(min=0)
    total = w.sum()
    if total <= 0:
        return torch.full_like(w, 1.0 / w.numel())
    return w / total


def neighbour_max(grid: torch.Tensor) -> torch.Tensor:
    """For every cell of a ``[rows, cols]`` map, the largest value among its (up to 8) neighbours.

    Cells outside the grid do not count (0 for a 1x1 grid).
    """
    rows, cols = grid.shape
    padded = torch.nn.functional.pad(grid[None, None].double(), (1, 1, 1, 1), value=float("-inf"))[0, 0]
    out = torch.full((rows, cols), float("-inf"), dtype=torch.float64)
    for dr in (-1, 0, 1):
        for dc in (-1, 0, 1):
            if dr == 0 and dc == 0:
                continue
            out = torch.maximum(out, padded[1 + dr : 1 + dr + rows, 1 + dc : 1 + dc + cols])
    return out.clamp(min=0)


def find_sinks(
    weights: torch.Tensor,
    *,
    factor: float = FACTOR,
    isolation: float = ISOLATION,
    gap: float = GAP,
    max_sinks: int = MAX_SINKS,
    signal: str = "attention",
) -> list[SinkPatch]:
    """The sink patches of one ``[rows, cols]`` map, by the criterion in the module docstring.

    Returns:
        Sinks ordered by decreasing share (possibly empty).
    """
    s = shares(weights)
    rows, cols = s.shape
    n = s.numel()
    if n < 2:
        return []
    near = neighbour_max(s)
    flat = s.flatten()
    order = torch.argsort(flat, descending=True).tolist()
    best = 0
    for j in range(1, min(max_sinks, n - 1) + 1):
        idx = order[j - 1]
        value = float(flat[idx])
        r, c = divmod(idx, cols)
        if value < factor / n or value < isolation * float(near[r, c]):
            break  # every top-j set from here on contains this patch
        if value >= gap * float(flat[order[j]]):
            best = j
    return [
        SinkPatch(idx // cols, idx % cols, float(flat[idx]), signal)
        for idx in order[:best]
    ]


def detect_sinks(
    cls_late: torch.Tensor | None,
    rollout: torch.Tensor | None,
    **criterion,
) -> list[SinkPatch]:
    """Sinks of the late-layer [CLS] attention and of the rollout, merged.

    Args:
        cls_late: ``[layers, heads, rows, cols]`` or ``[layers, rows, cols]`` or
            ``[rows, cols]`` [CLS] -> patch attention of the late layers; heads and
            layers are averaged.
        rollout: ``[rows, cols]`` rollout row over the patches.
        criterion: ``factor``, ``isolation``, ``gap``, ``max_sinks`` for :func:`find_sinks`.

    Returns:
        One entry per patch (the larger share where both maps flag it), by decreasing share.
    """
    found: dict[tuple[int, int], SinkPatch] = {}
    maps: Mapping[str, torch.Tensor | None] = {
        "attention": None if cls_late is None else _mean_to_grid(cls_late),
        "rollout": rollout,
    }
    for signal, grid in maps.items():
        if grid is None:
            continue
        for sink in find_sinks(grid, signal=signal, **criterion):
            key = (sink.row, sink.col)
            if key not in found or sink.share > found[key].share:
                found[key] = sink
    return sorted(found.values(), key=lambda s: -s.share)


def _mean_to_grid(t: torch.Tensor) -> torch.Tensor:
    while t.ndim > 2:
        t = t.double().mean(dim=0)
    return t


def sink_mask(grid: tuple[int, int], sinks) -> torch.Tensor:
    """Boolean ``[rows, cols]``: True at the sink patches."""
    mask = torch.zeros(grid, dtype=torch.bool)
    for s in sinks:
        mask[s.row, s.col] = True
    return mask


def without_sinks(weights: torch.Tensor, sinks) -> torch.Tensor:
    """A float copy of a ``[rows, cols]`` map with the sink patches set to NaN (drawn as "left out")."""
    out = weights.double().clone()
    out[sink_mask(tuple(weights.shape), sinks)] = float("nan")
    return out

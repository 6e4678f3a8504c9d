"""How tightly a detector's object query looks: spatial spread of its attention in photo pixels (pure functions).

The spread of a head is the attention-weighted root-mean-square distance from the weighted centroid,
``sqrt(sum_i p_i |x_i - mean|^2)``, over cell centres (dense maps) or sampling points (deformable attention),
in photo pixels. A small spread is a head that looks at one place; the DETR paper (Carion et al. 2020, Fig. 6)
shows such heads on object extremities.
"""

from __future__ import annotations

import numpy as np


def cell_centres(grid: tuple[int, int], extent: tuple[float, float, float, float]) -> np.ndarray:
    """``[rows * cols, 2]`` (x, y) centres, in photo pixels, of the cells of a ``grid`` spanning ``extent``
    (left, top, right, bottom), row-major."""
    rows, cols = grid
    left, top, right, bottom = extent
    xs = left + (np.arange(cols) + 0.5) * (right - left) / cols
    ys = top + (np.arange(rows) + 0.5) * (bottom - top) / rows
    gx, gy = np.meshgrid(xs, ys)
    return np.stack([gx.ravel(), gy.ravel()], -1)


def spread(points: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted RMS distance from the weighted centroid.

    Args:
        points: ``[..., N, 2]`` positions (photo pixels).
        weights: ``[..., N]`` non-negative weights (renormalised to sum 1 along N).

    Returns:
        ``[...]`` spreads in the units of ``points`` (float64).
    """
    w = np.asarray(weights, dtype=np.float64)
    w = w / np.clip(w.sum(-1, keepdims=True), 1e-30, None)
    p = np.asarray(points, dtype=np.float64)
    if p.ndim == w.ndim:  # shared points: [N, 2]
        p = np.broadcast_to(p, w.shape + (2,))
    mean = (w[..., None] * p).sum(-2, keepdims=True)
    return np.sqrt((w * ((p - mean) ** 2).sum(-1)).sum(-1))


def tightest(spreads: np.ndarray) -> tuple[int, float]:
    """``(head, spread)`` of the smallest spread of a ``[H]`` array (the first of ties)."""
    h = int(np.argmin(spreads))
    return h, float(spreads[h])

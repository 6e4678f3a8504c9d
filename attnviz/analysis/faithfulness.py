"""Perturbation tests of an explanation's faithfulness: remove input units in the order a method ranks them.

Following the positive/negative perturbation test of Chefer et al. 2021 (CVPR, "Transformer
Interpretability Beyond Attention Visualization", section 4) and SaCo's caution (Wu et al. 2024) that such
metrics must be read against a random order: for a ranking of the input units (patches, tokens), the
units are replaced by a baseline in ``steps`` equal slices -- most relevant first (*positive*: a faithful
method makes the target's probability fall fast, so a **low** area under the curve is better) and least
relevant first (*negative*: a **high** area is better) -- and the target's probability is recorded after
each slice. The area is the trapezoid rule over the fraction removed, 0 to 1 (so it is a mean probability).

Pure functions: the model is reached only through the ``predict`` callable the caller passes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

POSITIVE, NEGATIVE, RANDOM = "positive", "negative", "random"


@dataclass(frozen=True)
class Curve:
    """One perturbation curve: ``order`` (positive / negative / random), ``seed`` (random orders), the
    ``fractions`` of units removed (0..1, ``steps + 1`` values), the target ``probabilities`` after each, and
    their ``auc`` (trapezoid over the fractions)."""

    method: str
    order: str
    seed: int | None
    fractions: tuple[float, ...]
    probabilities: tuple[float, ...]

    @property
    def auc(self) -> float:
        return area(self.fractions, self.probabilities)


def area(fractions: Sequence[float], values: Sequence[float]) -> float:
    """Trapezoid-rule area under ``values`` over ``fractions`` (increasing, 0 to 1)."""
    total = 0.0
    for i in range(1, len(fractions)):
        total += (fractions[i] - fractions[i - 1]) * (values[i] + values[i - 1]) / 2
    return total


def ranking(scores: torch.Tensor) -> torch.Tensor:
    """Unit indices from the highest score to the lowest (ties: lower index first): int64 ``[U]`` from ``[U]`` or ``[rows, cols]``."""
    flat = scores.reshape(-1).double()
    return torch.sort(-flat, stable=True).indices


def removed_counts(units: int, steps: int) -> list[int]:
    """How many units are removed after each step: ``round(k / steps * units)`` for k = 0..steps."""
    return [round(k * units / steps) for k in range(steps + 1)]


def perturbation_curves(
    orders: Sequence[tuple[str, str, int | None, torch.Tensor]],
    units: int,
    steps: int,
    predict: Callable[[list[torch.Tensor]], Sequence[float]],
    base: float,
    batch_size: int = 16,
) -> tuple[list[Curve], int]:
    """The curves of every order, with the perturbed inputs batched across orders.

    Args:
        orders: ``(method, order, seed, unit indices from first removed to last)`` each.
        units: number of input units.
        steps: slices (``steps + 1`` points per curve, the first the unperturbed input).
        predict: ``masks -> probabilities``: for boolean ``[U]`` masks (True = unit removed), the target's
            probability of each perturbed input (one batched forward pass per call).
        base: the target's probability on the unperturbed input (the first point of every curve).
        batch_size: masks per ``predict`` call.

    Returns:
        ``(curves, forward passes)``: one :class:`Curve` per order; the number of inputs ``predict`` saw.
    """
    counts = removed_counts(units, steps)
    fractions = tuple(c / units for c in counts)
    jobs: list[tuple[int, int, torch.Tensor]] = []
    for i, (_, _, _, order) in enumerate(orders):
        for k, c in enumerate(counts):
            if k == 0:
                continue
            mask = torch.zeros(units, dtype=torch.bool)
            mask[order[:c]] = True
            jobs.append((i, k, mask))
    probs: dict[tuple[int, int], float] = {}
    # identical masks (every order ends with all units removed) are forwarded once
    unique: dict[bytes, list[tuple[int, int]]] = {}
    masks: dict[bytes, torch.Tensor] = {}
    for i, k, mask in jobs:
        key = mask.numpy().tobytes()
        unique.setdefault(key, []).append((i, k))
        masks[key] = mask
    keys = list(unique)
    for b in range(0, len(keys), batch_size):
        chunk = keys[b:b + batch_size]
        for key, p in zip(chunk, predict([masks[k] for k in chunk])):
            for pos in unique[key]:
                probs[pos] = float(p)
    curves = []
    for i, (method, order_name, seed, _) in enumerate(orders):
        values = (base,) + tuple(probs[(i, k)] for k in range(1, steps + 1))
        curves.append(Curve(method, order_name, seed, fractions, values))
    return curves, len(keys)


def apply_patch_mask(pixel_values: torch.Tensor, baseline: torch.Tensor, masks: Sequence[torch.Tensor],
                     grid: tuple[int, int]) -> torch.Tensor:
    """Perturbed model inputs: ``[B, C, H, W]`` where each masked patch of ``pixel_values`` ``[1, C, H, W]`` is
    replaced by ``baseline`` (same shape). ``grid`` ``(rows, cols)`` divides ``H``, ``W`` into equal patches;
    mask index ``r * cols + c`` is patch ``(r, c)``, as the model's token order."""
    rows, cols = grid
    _, _, h, w = pixel_values.shape
    ph, pw = h // rows, w // cols
    out = pixel_values.repeat(len(masks), 1, 1, 1)
    for b, mask in enumerate(masks):
        cell = mask.view(rows, cols).repeat_interleave(ph, 0).repeat_interleave(pw, 1)  # [H, W]
        out[b][:, cell] = baseline[0][:, cell]
    return out

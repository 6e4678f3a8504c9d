"""Rank heads by where one focus token's attention goes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch


@dataclass(frozen=True)
class HeadLink:
    """In ``layer``/``head`` (0-based), the focus unit sends ``weight`` (a probability) to unit ``target``."""

    layer: int
    head: int
    target: int
    target_label: str
    weight: float


def strongest_targets(
    rows: torch.Tensor, exclude: Sequence[int] = ()
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per layer and head, the key with the largest weight, skipping ``exclude``.

    Args:
        rows: float32 ``[layers, heads, keys]``: one query's attention probabilities.
        exclude: key indices never chosen (special tokens, the focus token itself).

    Returns:
        ``(weights [layers, heads] float32, targets [layers, heads] int64)``.
    """
    masked = rows.clone()
    if exclude:
        masked[..., list(exclude)] = -1.0
    weights, targets = masked.max(dim=-1)
    return weights.clamp_min(0.0), targets


def rank_heads(
    rows: torch.Tensor, labels: Sequence[str], exclude: Sequence[int] = (), top: int | None = 10
) -> list[HeadLink]:
    """Heads sorted by the weight on the focus token's strongest allowed target, descending.

    ``rows`` is float32 ``[layers, heads, keys]`` (one query's probabilities),
    ``labels`` names each key. Ties keep (layer, head) order.
    """
    weights, targets = strongest_targets(rows, exclude)
    L, H = weights.shape
    order = sorted(range(L * H), key=lambda i: (-float(weights.view(-1)[i]), i))
    links = [
        HeadLink(i // H, i % H, int(targets.view(-1)[i]), labels[int(targets.view(-1)[i])], float(weights.view(-1)[i]))
        for i in order
    ]
    return links if top is None else links[:top]

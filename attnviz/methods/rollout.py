"""Attention rollout (Abnar & Zuidema 2020, "Quantifying Attention Flow in Transformers").

Per layer the heads are fused (mean, max or min), optionally the lowest weights are
discarded (as in Gildenblat's vit-explain, but never a token's attention to a
protected token such as [CLS]), the identity is mixed in for the residual
connection and rows are renormalised: ``A' = norm(0.5 A + 0.5 I)``. The rollout is
the product from the first layer to the last, ``R = A'_L ... A'_1``; row ``i`` of
``R`` says how much of token ``i``'s final representation flows from each input
token.
"""

from __future__ import annotations

from typing import Sequence

import torch

from attnviz.errors import UsageError

HEAD_FUSIONS = ("mean", "max", "min")


def fuse_heads(attn: torch.Tensor, head_fusion: str = "mean") -> torch.Tensor:
    """Fuse the heads of one layer: ``[heads, Q, K]`` -> ``[Q, K]`` (float32 probabilities).

    Raises:
        UsageError: unknown ``head_fusion`` (not mean/max/min).
    """
    if head_fusion == "mean":
        return attn.mean(dim=0)
    if head_fusion == "max":
        return attn.amax(dim=0)
    if head_fusion == "min":
        return attn.amin(dim=0)
    raise UsageError(f"--head-fusion must be one of {', '.join(HEAD_FUSIONS)}, not '{head_fusion}'")


def rollout_step(
    fused: torch.Tensor, discard_ratio: float = 0.0, protect: Sequence[int] = (), inplace: bool = False
) -> torch.Tensor:
    """One layer's rollout factor ``A'`` from its head-fused map ``fused`` (``[N, N]``).

    ``discard_ratio`` r in [0, 1): the ``floor(r * N * N)`` smallest weights of
    ``fused`` are set to 0, except in the key columns listed in ``protect`` (e.g.
    the [CLS] position). Then ``A' = 0.5 * A + 0.5 * I`` with rows renormalised to
    sum to 1. Returns a new float32 ``[N, N]`` tensor; ``fused`` is not modified
    unless ``inplace`` (then ``fused`` must be float32 and is returned, to save
    one ``[N, N]`` buffer).

    Raises:
        UsageError: ``discard_ratio`` outside [0, 1).
    """
    if not 0.0 <= discard_ratio < 1.0:
        raise UsageError(f"--discard-ratio must be in [0, 1), not {discard_ratio}")
    n = fused.shape[-1]
    out = fused if inplace else fused.float().clone()
    out.mul_(0.5)
    if discard_ratio > 0:
        k = int(discard_ratio * out.numel())
        if k:
            flat = out.view(-1)
            idx = torch.topk(flat, k, largest=False).indices
            if protect:
                cols = idx % n
                keep = torch.isin(cols, torch.as_tensor(list(protect), device=idx.device))
                idx = idx[~keep]
            flat[idx] = 0
            del idx
    out.diagonal().add_(0.5)
    out.div_(out.sum(dim=-1, keepdim=True))
    return out


def attention_rollout(
    attentions: torch.Tensor, head_fusion: str = "mean", discard_ratio: float = 0.0, protect: Sequence[int] = ()
) -> torch.Tensor:
    """Attention rollout from full maps: float32 ``[layers, heads, N, N]`` -> ``[N, N]``.

    Computes ``R = A'_L ... A'_1`` with ``A'_l = rollout_step(fuse_heads(A_l))``
    (see module docstring). ``R`` rows sum to 1.

    Raises:
        UsageError: bad ``head_fusion`` or ``discard_ratio``.
    """
    result = None
    for layer in range(attentions.shape[0]):
        step = rollout_step(fuse_heads(attentions[layer], head_fusion), discard_ratio, protect)
        result = step if result is None else step @ result
    return result

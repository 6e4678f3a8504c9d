"""Gradient-weighted and value-weighted attention: the per-layer reductions and the relevance product.

- :func:`grad_weighted` -- one layer's ``mean_h (dy/dA_h ⊙ A_h)^+`` (Chefer et al. 2021, "Generic
  Attention-model Explainability for Interpreting Bi-Modal and Encoder-Decoder Transformers", ICCV, eq. 5:
  ``Ā = E_h((∇A ⊙ A)^+)``). Per layer it is the ``grad-attention`` map.
- :func:`relevance` -- their relevance propagation for self-attention: ``R = I``, then for every layer in
  order ``R = R + Ā R`` (eq. 6), as in the authors' reference code (``Transformer-MM-Explainability``,
  ``R += torch.matmul(cam, R)``). Row ``i`` of ``R`` is token ``i``'s relevance over the input tokens;
  for a ViT the [CLS] row over the patches is the explanation.
- :func:`value_weighted` -- Kobayashi et al. 2020, "Attention is Not Only a Weight: Analyzing Transformers
  with Vector Norms" (EMNLP): ``||alpha_ij f_h(x_j)|| = alpha_ij ||f_h(x_j)||`` per head (``alpha >= 0``),
  fused by the mean over heads.

Pure functions over float tensors; no model here (the signals come from :mod:`attnviz.signals`).
"""

from __future__ import annotations

from typing import Sequence

import torch


def grad_weighted(probs: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """``mean_h (grads ⊙ probs)^+``: ``[H, Q, K]`` probabilities and their gradients -> float32 ``[Q, K]``."""
    return (grads.float() * probs.float()).clamp_(min=0).mean(dim=0)


def value_weighted(probs: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
    """``mean_h probs[h, i, j] * norms[h, j]``: ``[H, Q, K]`` probabilities, ``[H, K]`` value norms -> float32 ``[Q, K]``."""
    return (probs.float() * norms.float()[:, None, :]).mean(dim=0)


def relevance(layers: Sequence[torch.Tensor]) -> torch.Tensor:
    """Chefer et al.'s self-attention relevance: ``R = I; R = R + Ā_l R`` for l = 0..L-1; float32 ``[N, N]``.

    ``layers``: the per-layer ``Ā_l = mean_h (∇A ⊙ A)^+`` (:func:`grad_weighted`), float ``[N, N]`` each.
    """
    n = layers[0].shape[-1]
    r = torch.eye(n, dtype=torch.float32)
    for a in layers:
        r = r + a.float() @ r
    return r

"""Gradient-weighted and value-weighted attention: the per-layer reductions and the relevance product.

- :func:`grad_weighted` -- one layer's ``mean_h (dy/dA_h ⊙ A_h)^+`` (Chefer et al. 2021, "Generic
  Attention-model Explainability for Interpreting Bi-Modal and Encoder-Decoder Transformers", ICCV, eq. 5:
  ``Ā = E_h((∇A ⊙ A)^+)``). Per layer it is the ``grad-attention`` map.
- :func:`relevance` -- their relevance propagation for self-attention: ``R = I``, then for every layer in
  order ``R = R + Ā R`` (eq. 6), as in the authors' reference code (``Transformer-MM-Explainability``,
  ``R += torch.matmul(cam, R)``). Row ``i`` of ``R`` is token ``i``'s relevance over the input tokens;
  for a ViT the [CLS] row over the patches is the explanation.
- :func:`encoder_decoder_relevance` -- their rules for encoder-decoder models (eqs. 6-11): self-attention
  updates ``R^ss`` (encoder), ``R^qq`` and ``R^qs`` (decoder); each cross-attention adds
  ``norm(R^qq)^T Ā norm(R^ss)`` to ``R^qs``, with ``norm(R) = rownorm(R - I) + I`` (eqs. 8-9), as the
  authors' code does (``Transformer-MM-Explainability``, ``DETR/modules/ExplanationGenerator.py``,
  ``generate_ours`` without LRP) -- except for a row of ``R - I`` that is all 0 (a token that received no
  relevance: in a causal decoder every position after the explained one, whose attention the target never
  reads): it stays 0, where the authors' code divides by 0 and its NaNs, spread through the product and then
  set to 0, drop the whole cross-attention update (so their code explains only a decoder's last position).
  Without such rows the two agree (tests: T5 and BART at their last position, DETR).
- :func:`value_weighted` -- Kobayashi et al. 2020, "Attention is Not Only a Weight: Analyzing Transformers
  with Vector Norms" (EMNLP): ``||alpha_ij f_h(x_j)|| = alpha_ij ||f_h(x_j)||`` per head (``alpha >= 0``),
  fused by the mean over heads.

Pure functions over float tensors; no model here (the signals come from :mod:`attnviz.signals`).
"""

from __future__ import annotations

from typing import Sequence

import torch


def grad_weighted(probs: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """``mean_h (grads ⊙ probs)^+``: ``[H, Q, K]`` probabilities and their gradients -> float32 ``[Q, K]``.

    Accumulated head by head, so the scratch is one ``[Q, K]``, never another ``[H, Q, K]``.
    """
    out = torch.zeros(probs.shape[-2:], dtype=torch.float32, device=probs.device)
    for h in range(probs.shape[0]):
        out += (grads[h].float() * probs[h].float()).clamp_(min=0)
    return out.div_(probs.shape[0])


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


def _normalised_residual(r: torch.Tensor) -> torch.Tensor:
    """Eqs. 8-9: ``R - I`` with rows normalised to sum to 1, plus ``I``; a row of ``R - I`` that sums to 0 stays 0."""
    eye = torch.eye(r.shape[-1], dtype=r.dtype)
    s = r - eye
    sums = s.sum(dim=-1, keepdim=True)
    return torch.where(sums > 0, s / torch.where(sums > 0, sums, torch.ones_like(sums)), torch.zeros_like(s)) + eye


def encoder_decoder_relevance(encoder: Sequence[torch.Tensor], decoder: Sequence[torch.Tensor],
                              cross: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Chefer et al. 2021's relevance for an encoder-decoder model: ``(R^ss [S, S], R^qq [T, T], R^qs [T, S])``.

    ``encoder``: per encoder layer ``Ā`` ``[S, S]``; ``decoder``/``cross``: per decoder layer the self-attention
    ``Ā`` ``[T, T]`` and the cross-attention ``Ā`` ``[T, S]`` (each :func:`grad_weighted`). Row ``t`` of ``R^qs`` is
    decoder position ``t``'s relevance over the source tokens.
    """
    s = encoder[0].shape[-1]
    t = decoder[0].shape[-1]
    r_ss = torch.eye(s)
    for a in encoder:
        r_ss = r_ss + a.float() @ r_ss
    r_qq = torch.eye(t)
    r_qs = torch.zeros(t, s)
    for a_self, a_cross in zip(decoder, cross):
        a_self = a_self.float()
        r_qq, r_qs = r_qq + a_self @ r_qq, r_qs + a_self @ r_qs
        r_qs = r_qs + _normalised_residual(r_qq).t() @ (a_cross.float() @ _normalised_residual(r_ss))
    return r_ss, r_qq, r_qs

"""Choose what a text view shows: words or word pieces, with or without special tokens, and the focus token."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from attnviz.analysis.match import match_labels, occurrence, same_token, token_key  # noqa: F401 (the one matcher)
from attnviz.analysis.words import Units, merge_matrix, token_units, word_units
from attnviz.errors import UsageError
from attnviz.types import TokenInfo


@dataclass(frozen=True)
class ViewSpec:
    """``words``: merge word pieces into words (Clark et al. 2019); ``hide_special``:
    drop special tokens ([CLS], [SEP], BOS, EOS...) and renormalise every row to sum to 1."""

    words: bool = False
    hide_special: bool = False

    def describe(self) -> str:
        parts = ["words (pieces merged: to = sum, from = mean)" if self.words else "word pieces"]
        if self.hide_special:
            parts.append("special tokens hidden, rows renormalised")
        return "; ".join(parts)


def units_for(info: TokenInfo, spec: ViewSpec) -> Units:
    """The units (words or tokens) a view shows for ``info``, before hiding special ones."""
    return word_units(info) if spec.words else token_units(info)


@dataclass(frozen=True)
class ViewMaps:
    """Attention ready to draw: ``attn`` float32 ``[..., Q_units, K_units]`` with its labels.

    ``query_units``/``key_units`` hold the visible units (special ones removed when
    hidden); ``renormalised`` says rows were renormalised after dropping keys.
    """

    attn: torch.Tensor
    query_units: Units
    key_units: Units
    renormalised: bool


def _subset(units: Units, keep: list[int]) -> Units:
    return Units(tuple(units.labels[i] for i in keep), tuple(units.groups[i] for i in keep), tuple(units.special[i] for i in keep))


def prepare(attn: torch.Tensor, query_info: TokenInfo, key_info: TokenInfo, spec: ViewSpec) -> ViewMaps:
    """Merge pieces and/or hide special tokens on ``[..., Q_tokens, K_tokens]`` probabilities.

    Works on full maps ``[L, H, Q, K]``, one layer ``[H, Q, K]``, a head ``[Q, K]``
    or query rows (pass a ``query_info`` restricted accordingly). Rows that summed
    to 1 still do. Raises UsageError if hiding special tokens leaves nothing.
    """
    qu, ku = units_for(query_info, spec), units_for(key_info, spec)
    a = attn.float()
    if spec.words:  # word pieces -> words; without --words every unit is one token
        mq = merge_matrix(qu.groups, a.shape[-2])
        mq = mq / mq.sum(dim=1, keepdim=True)
        mk = merge_matrix(ku.groups, a.shape[-1])
        a = mq @ a @ mk.T
    if spec.hide_special:
        qk = [i for i, s in enumerate(qu.special) if not s]
        kk = [i for i, s in enumerate(ku.special) if not s]
        if not qk or not kk:
            raise UsageError("--hide-special leaves no tokens to show")
        a = a[..., qk, :][..., kk]
        total = a.sum(dim=-1, keepdim=True)
        a = torch.where(total > 0, a / total.clamp_min(1e-30), a)
        qu, ku = _subset(qu, qk), _subset(ku, kk)
    return ViewMaps(a, qu, ku, spec.hide_special)


def prepare_rows(rows: torch.Tensor, query_tokens: list[int], key_info: TokenInfo, spec: ViewSpec, key_special_hidden=True):
    """Rows of one focus unit: ``rows`` float32 ``[L, H, R, K_tokens]`` for the query
    tokens ``query_tokens`` (the pieces of the focus word) -> ``([L, H, K_units], key_units)``.

    FROM a word = mean over its pieces; TO a word = sum over pieces; with
    ``hide_special`` special keys are dropped and rows renormalised.
    """
    ku = units_for(key_info, spec)
    r = rows.float().mean(dim=-2)  # [L, H, K_tokens]
    if spec.words:
        r = r @ merge_matrix(ku.groups, r.shape[-1]).T
    if spec.hide_special:
        kk = [i for i, s in enumerate(ku.special) if not s]
        r = r[..., kk]
        total = r.sum(dim=-1, keepdim=True)
        r = torch.where(total > 0, r / total.clamp_min(1e-30), r)
        ku = _subset(ku, kk)
    return r, ku


def find_focus(info: TokenInfo, token: str, index: int | None, spec: ViewSpec) -> tuple[int, ...]:
    """Token positions of the focus: the token (or, with ``spec.words``, the word) equal to
    ``token`` (:func:`token_key`: case-insensitive, typographic apostrophes as typed ones, ``##`` ignored),
    the ``index``-th (0-based) of several.

    Returns the token indices the focus covers (several pieces for a word).

    Raises:
        UsageError: not found, or found more than once and no ``index`` given, or
        ``index`` out of range; the message lists the tokens (or words).
    """
    units = units_for(info, spec)
    return units.groups[match_labels(units.labels, token, index, "word" if spec.words else "token")]

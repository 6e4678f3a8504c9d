"""Merge word pieces into words and drop special tokens (attention sinks).

Word merging follows Clark et al. 2019 ("What Does BERT Look At?"): attention
TO a word is the sum of the attention to its pieces, attention FROM a word is the
mean of its pieces' rows, so every row still sums to 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch

from attnviz.types import TokenInfo


@dataclass(frozen=True)
class Units:
    """The positions a view shows: words or tokens, with a label and whether each is special.

    ``groups[i]`` lists the token indices that unit ``i`` covers.
    """

    labels: tuple[str, ...]
    groups: tuple[tuple[int, ...], ...]
    special: tuple[bool, ...]

    def __len__(self) -> int:
        return len(self.labels)

    @cached_property
    def _unit_of_token(self) -> dict[int, int]:
        return {t: u for u, g in enumerate(self.groups) for t in g}

    def unit_of(self, token: int) -> int:
        """Index of the unit that holds token position ``token``. Raises KeyError if none does."""
        return self._unit_of_token[token]


def token_units(info: TokenInfo) -> Units:
    """One unit per token."""
    return Units(tuple(info.tokens), tuple((i,) for i in range(len(info))), tuple(info.special))


def word_units(info: TokenInfo) -> Units:
    """One unit per word (special tokens stay units of their own), in token order."""
    words = info.words()
    labels, groups, special = [], [], []
    seen: dict[int, int] = {}
    for i, wid in enumerate(info.word_ids):
        if wid is None:
            labels.append(info.tokens[i])
            groups.append([i])
            special.append(True)
        elif wid in seen:
            groups[seen[wid]].append(i)
        else:
            seen[wid] = len(labels)
            labels.append(words[wid])
            groups.append([i])
            special.append(False)
    return Units(tuple(labels), tuple(tuple(g) for g in groups), tuple(special))


def merge_matrix(groups: tuple[tuple[int, ...], ...], num_tokens: int) -> torch.Tensor:
    """float32 ``[units, tokens]`` 0/1 membership matrix."""
    m = torch.zeros(len(groups), num_tokens)
    for u, g in enumerate(groups):
        m[u, list(g)] = 1.0
    return m


def merge_attention(attn: torch.Tensor, query_units: Units, key_units: Units | None = None) -> torch.Tensor:
    """Merge word pieces: ``[..., Q_tokens, K_tokens]`` -> ``[..., Q_units, K_units]`` (float32).

    TO a unit: sum over its key tokens. FROM a unit: mean over its query tokens.
    Rows that summed to 1 still sum to 1.
    """
    key_units = key_units or query_units
    mq = merge_matrix(query_units.groups, attn.shape[-2])
    mq = mq / mq.sum(dim=1, keepdim=True)
    mk = merge_matrix(key_units.groups, attn.shape[-1])
    return mq @ attn.float() @ mk.T


def merge_rows(rows: torch.Tensor, key_units: Units) -> torch.Tensor:
    """Merge the key side only: ``[..., K_tokens]`` -> ``[..., K_units]`` (sum over pieces)."""
    mk = merge_matrix(key_units.groups, rows.shape[-1])
    return rows.float() @ mk.T


def drop_special(attn: torch.Tensor, query_special, key_special=None) -> tuple[torch.Tensor, list[int], list[int]]:
    """Remove special units (e.g. [CLS], [SEP], BOS) from both axes and renormalise rows to sum to 1.

    Args:
        attn: ``[..., Q, K]`` probabilities.
        query_special / key_special: booleans per query / key unit.

    Returns:
        ``(attn_kept [..., Q', K'], kept_query_indices, kept_key_indices)``. A row
        whose kept weights sum to 0 stays 0.
    """
    key_special = query_special if key_special is None else key_special
    qk = [i for i, s in enumerate(query_special) if not s]
    kk = [i for i, s in enumerate(key_special) if not s]
    sub = attn[..., qk, :][..., kk]
    total = sub.sum(dim=-1, keepdim=True)
    return torch.where(total > 0, sub / total.clamp_min(1e-30), sub), qk, kk


def renormalise_rows(rows: torch.Tensor, keep: list[int]) -> torch.Tensor:
    """Keep the key positions ``keep`` of ``[..., K]`` rows and renormalise each row to sum to 1."""
    sub = rows[..., keep]
    total = sub.sum(dim=-1, keepdim=True)
    return torch.where(total > 0, sub / total.clamp_min(1e-30), sub)

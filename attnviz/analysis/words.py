"""Group word pieces into words: the units a text view shows.

Word merging follows Clark et al. 2019 ("What Does BERT Look At?"): attention
TO a word is the sum of the attention to its pieces, attention FROM a word is the
mean of its pieces' rows, so every row still sums to 1 (applied in
:mod:`attnviz.analysis.select`).
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

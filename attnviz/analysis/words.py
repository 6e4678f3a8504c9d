"""Group word pieces into words: the units a text view shows.

Words are what readers count: contractions, hyphenated and apostrophe words are
one word ("didn't", "state-of-the-art"), punctuation stands alone
(:func:`reader_words`). Word merging follows Clark et al. 2019 ("What Does BERT Look At?"): attention
TO a word is the sum of the attention to its pieces, attention FROM a word is the
mean of its pieces' rows, so every row still sums to 1 (applied in
:mod:`attnviz.analysis.select`).
"""

from __future__ import annotations

import re
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


#: A word as readers count it: letters/digits, joined by apostrophes or hyphens inside the word
#: ("didn't", "state-of-the-art", "O'Neill", "rock'n'roll"). Anything else that is not a space is
#: punctuation and stands alone, one character per unit ("...", tokenised as one token, stays one unit).
READER_WORD = re.compile(r"\w+(?:['’‘\-‐‑]\w+)*", re.UNICODE)


def reader_words(text: str) -> list[tuple[int, int]]:
    """Character spans ``(start, end)`` of the words and punctuation marks of ``text``, in order.

    Words follow :data:`READER_WORD` (contractions and hyphenated words are one
    word); every other non-space character is a unit of its own.
    """
    spans: list[tuple[int, int]] = []
    pos = 0
    for m in READER_WORD.finditer(text):
        spans.extend((i, i + 1) for i in range(pos, m.start()) if not text[i].isspace())
        spans.append((m.start(), m.end()))
        pos = m.end()
    spans.extend((i, i + 1) for i in range(pos, len(text)) if not text[i].isspace())
    return spans


def word_units(info: TokenInfo) -> Units:
    """One unit per word as readers count it (special tokens stay units of their own), in token order.

    A token belongs to the reader word (:func:`reader_words`) that holds the first
    non-space character of its span in ``info.text``: "didn't" (BERT: ``didn``,
    ``'``, ``t``) and "state-of-the-art" are one word each; punctuation stands
    alone. Tokens without a character span (offsets ``(0, 0)``) fall back to the
    tokenizer's own word ids. A unit's label is the word's text.
    """
    text = info.text
    spans = reader_words(text)
    owner = [-1] * (len(text) + 1)
    for j, (a, b) in enumerate(spans):
        for c in range(a, b):
            owner[c] = j
    words = info.words()

    def reader_of(i: int) -> int | None:
        start, end = info.offsets[i] if i < len(info.offsets) else (0, 0)
        while start < end and start < len(text) and text[start].isspace():
            start += 1
        return owner[start] if start < end and start < len(text) and owner[start] >= 0 else None

    # a token with no characters of its own (e.g. a lone "Ġ") joins the reader word of its tokenizer word
    by_word: dict[int, int] = {}
    for i, wid in enumerate(info.word_ids):
        j = reader_of(i) if wid is not None and not info.special[i] else None
        if j is not None:
            by_word.setdefault(wid, j)
    labels, groups, special = [], [], []
    seen: dict[tuple[str, int], int] = {}
    for i, wid in enumerate(info.word_ids):
        if wid is None or info.special[i]:
            labels.append(info.tokens[i])
            groups.append([i])
            special.append(True)
            continue
        j = reader_of(i)
        j = by_word.get(wid) if j is None else j
        if j is not None:
            key = ("r", j)
            a, b = spans[j]
            label = text[a:b]
        else:
            key = ("w", wid)
            label = words[wid] if wid < len(words) else info.tokens[i]
        if key in seen:
            groups[seen[key]].append(i)
        else:
            seen[key] = len(labels)
            labels.append(label)
            groups.append([i])
            special.append(False)
    return Units(tuple(labels), tuple(tuple(g) for g in groups), tuple(special))


def merge_matrix(groups: tuple[tuple[int, ...], ...], num_tokens: int) -> torch.Tensor:
    """float32 ``[units, tokens]`` 0/1 membership matrix."""
    m = torch.zeros(len(groups), num_tokens)
    for u, g in enumerate(groups):
        m[u, list(g)] = 1.0
    return m

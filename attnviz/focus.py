"""Focus-token analysis for text: which heads link one token to which other token.

Each head's *link* for the focus token is its strongest eligible target. Eligible
targets are not special tokens, not the focus itself and, by default
(``adjacent=False``), not the token right before or after it: previous- and
next-token heads are positional patterns that say nothing about this token. With
``direction="back"`` (the default) only earlier tokens count, as for antecedents
(coreference) and as decoders see it; ``"forward"`` and ``"both"`` widen it.
Cross-attention (target -> source) has no direction or adjacency: every
non-special source token is eligible.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from attnviz.analysis.heads import HeadLink, rank_heads, strongest_targets
from attnviz.analysis.select import ViewSpec, find_focus, prepare_rows, units_for
from attnviz.errors import UsageError
from attnviz.types import CROSS, TextAttention

DIRECTIONS = ("back", "forward", "both")


def focus_kind(result: TextAttention) -> str:
    """Where ``--token`` looks: cross-attention (target side) when there is a target, else the main self-attention."""
    if CROSS in result.attention and result.target_tokens is not None and len(result.target_tokens) > 1:
        return CROSS
    return result.main.kind


@dataclass(frozen=True)
class Focus:
    """A resolved focus token and, per layer and head, its link.

    - ``text``: the focus token (or word); ``kind``: the attention kind searched;
    - ``token_indices``: token positions it covers (several pieces for a word);
    - ``unit``: its index among the view's units (words with ``--words``, else tokens);
    - ``weights``: float32 ``[layers, heads]``, the probability the focus puts on
      its link target (renormalised if special tokens are hidden);
    - ``targets``: int64 ``[layers, heads]`` key-unit index of each link target
      (in the unit space before hiding special tokens); ``labels``: every key unit's label;
    - ``top``: the heads sorted by weight, descending;
    - ``direction``/``adjacent``: the eligibility rules used.
    """

    text: str
    kind: str
    token_indices: tuple[int, ...]
    unit: int
    weights: torch.Tensor
    targets: torch.Tensor
    labels: tuple[str, ...]
    top: tuple[HeadLink, ...]
    direction: str
    adjacent: bool

    def describe(self) -> str:
        if self.kind == CROSS:
            return "strongest non-special source token"
        where = {"back": "earlier", "forward": "later", "both": "other"}[self.direction]
        return f"strongest {where} non-special token" + ("" if self.adjacent else ", neighbours excluded")


def analyse_focus(
    result: TextAttention,
    token: str,
    index: int | None,
    spec: ViewSpec,
    top: int | None = 10,
    kind: str | None = None,
    direction: str = "back",
    adjacent: bool = False,
) -> Focus:
    """Find ``token`` (see :func:`attnviz.analysis.select.find_focus`) and each head's link.

    Raises:
        UsageError: token missing or ambiguous (the message lists the tokens), bad
        ``direction``, or no eligible target at all.
    """
    if direction not in DIRECTIONS:
        raise UsageError(f"--direction must be one of {', '.join(DIRECTIONS)}, not '{direction}'")
    kind = kind or focus_kind(result)
    maps, query_info, key_info = result.sides(kind)
    positions = find_focus(query_info, token, index, spec)
    rows = torch.stack([maps.query_row(p) for p in positions], dim=-2)  # [L, H, R, K_tokens]
    r, key_units = prepare_rows(rows, list(positions), key_info, spec)  # [L, H, K_units]
    query_units = units_for(query_info, spec)
    unit = query_units.unit_of(positions[0])
    all_keys = units_for(key_info, spec)
    full_index = [all_keys.unit_of(g[0]) for g in key_units.groups]  # visible unit -> unit before hiding
    exclude = []
    for i, g in enumerate(key_units.groups):
        if key_units.special[i]:
            exclude.append(i)
            continue
        if kind == CROSS:
            continue
        d = full_index[i] - unit
        if d == 0 or (not adjacent and abs(d) == 1) or (direction == "back" and d > 0) or (direction == "forward" and d < 0):
            exclude.append(i)
    if len(exclude) == len(key_units.labels):
        raise UsageError(
            f"'{query_units.labels[unit]}' has no eligible target ({direction} of it, not special"
            + ("" if adjacent else ", not adjacent") + "); try --direction both"
            + ("" if adjacent else " or --adjacent")
        )
    weights, targets = strongest_targets(r, exclude)
    links = rank_heads(r, key_units.labels, exclude, top)
    links = [HeadLink(l.layer, l.head, full_index[l.target], l.target_label, l.weight) for l in links]
    full_targets = torch.tensor(full_index)[targets]
    return Focus(
        query_units.labels[unit], kind, tuple(positions), unit, weights, full_targets, all_keys.labels,
        tuple(links), direction, adjacent,
    )

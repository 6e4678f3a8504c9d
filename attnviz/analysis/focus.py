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
from typing import Sequence

import torch

from attnviz.analysis.select import ViewSpec, find_focus, prepare_rows, units_for
from attnviz.analysis.words import Units
from attnviz.errors import UsageError
from attnviz.types import CROSS, TextAttention, TokenInfo

DIRECTIONS = ("back", "forward", "both")


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
    - ``direction``/``adjacent``: the eligibility rules used;
    - ``fallback``: why they differ from the ones asked for (e.g. the first word
      has no earlier token, so its links look at later ones), else None.
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
    fallback: str | None = None

    def grid(self) -> list[dict]:
        """Every layer and head's link, layer-major: ``{"layer", "head", "target", "target_index", "weight"}``
        (the data the focus view draws; ``target_index`` indexes :attr:`labels`)."""
        L, H = self.weights.shape
        return [
            {"layer": l, "head": h, "target": self.labels[int(self.targets[l, h])], "target_index": int(self.targets[l, h]),
             "weight": float(self.weights[l, h])}
            for l in range(L) for h in range(H)
        ]

    def describe(self) -> str:
        if self.kind == CROSS:
            return "strongest non-special source token"
        where = {"back": "earlier", "forward": "later", "both": "other"}[self.direction]
        return f"strongest {where} non-special token" + ("" if self.adjacent else ", neighbours excluded")


@dataclass(frozen=True)
class FocusRule:
    """Where one focus unit may link, resolved before any attention is captured.

    ``positions``: the focus token positions (query side); ``unit``: its index
    among the query units; ``query_units``/``all_keys``: units before hiding;
    ``key_units``: the visible key units; ``full_index``: visible key unit -> unit
    before hiding; ``exclude``: visible key units that are never a link target.
    """

    kind: str
    positions: tuple[int, ...]
    unit: int
    query_units: Units
    all_keys: Units
    key_units: Units
    full_index: tuple[int, ...]
    exclude: tuple[int, ...]
    key_info: TokenInfo
    spec: ViewSpec
    direction: str = "back"
    adjacent: bool = False
    fallback: str | None = None

    def unit_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """float32 ``[..., H, R, K_tokens]`` rows of the focus positions -> ``[..., H, K_units]`` (Clark et al. 2019)."""
        r, _ = prepare_rows(rows, list(self.positions), self.key_info, self.spec)
        return r

    def links(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(weights, targets)`` ``[..., H]`` of each head's link, from ``rows`` ``[..., H, R, K_tokens]``
        (targets index the visible key units)."""
        return strongest_targets(self.unit_rows(rows), list(self.exclude))

    def follow(self, layer: int | None = None, head: int | None = None):
        """A :class:`~attnviz.capture.CapturePlan` ``follow`` callback: per layer, the head whose link weighs most
        (or ``head``), scored by that weight; only ``layer`` when given; only this rule's kind."""

        def pick(kind: str, at: int, rows: torch.Tensor):
            if kind != self.kind or (layer is not None and at != layer):
                return None
            w, _ = self.links(rows.float())
            h = int(torch.argmax(w)) if head is None else head
            return h, float(w[h])

        return pick


_OPPOSITE = {"back": "forward", "forward": "back", "both": "both"}
_WHERE = {"back": "earlier", "forward": "later", "both": "other"}


def _excluded(kind: str, key_units: Units, full_index: tuple[int, ...], unit: int, direction: str, adjacent: bool) -> list[int]:
    """Visible key units that are never a link target under these rules (special, itself, neighbours, wrong side)."""
    exclude = []
    for i in range(len(key_units)):
        if key_units.special[i]:
            exclude.append(i)
            continue
        if kind == CROSS:
            continue
        d = full_index[i] - unit
        if d == 0 or (not adjacent and abs(d) == 1) or (direction == "back" and d > 0) or (direction == "forward" and d < 0):
            exclude.append(i)
    return exclude


def focus_rule(query_info: TokenInfo, key_info: TokenInfo, kind: str, token: str, index: int | None, spec: ViewSpec,
               direction: str = "back", adjacent: bool = False) -> FocusRule:
    """Resolve ``token`` and the link eligibility rules (see :func:`analyse_focus`) from the tokens alone.

    When no key is eligible under the rules asked for (the first word of a sentence has no earlier
    token; a two-word text has only a neighbour), the rules widen, in this order, until one is: the
    other direction, then neighbours allowed (same direction), then both directions with neighbours.
    ``FocusRule.fallback`` then says what was done (the figure, the terminal and JSON repeat it).

    Raises:
        UsageError: token missing or ambiguous, bad ``direction``, or no other non-special token at all.
    """
    if direction not in DIRECTIONS:
        raise UsageError(f"--direction must be one of {', '.join(DIRECTIONS)}, not '{direction}'")
    positions = find_focus(query_info, token, index, spec)
    all_keys = units_for(key_info, spec)
    query_units = units_for(query_info, spec)
    unit = query_units.unit_of(positions[0])
    if spec.hide_special and query_units.special[unit]:
        raise UsageError(f"'{query_units.labels[unit]}' is a special token, which --hide-special hides; pick another token")
    keep = [i for i, sp in enumerate(all_keys.special) if not (spec.hide_special and sp)]
    key_units = Units(tuple(all_keys.labels[i] for i in keep), tuple(all_keys.groups[i] for i in keep),
                      tuple(all_keys.special[i] for i in keep))
    full_index = tuple(keep)
    tries = list(dict.fromkeys([(direction, adjacent), (_OPPOSITE[direction], adjacent), (direction, True), ("both", True)]))
    label = query_units.labels[unit]
    for used, adj in tries:
        exclude = _excluded(kind, key_units, full_index, unit, used, adj)
        if len(exclude) < len(key_units.labels):
            break
    else:
        raise UsageError(f"'{label}' has no other non-special token to link to; give a longer text")
    fallback = None
    if (used, adj) != (direction, adjacent):
        asked = f"{_WHERE[direction]} non-special token" + ("" if adjacent else " that is not a neighbour")
        now = f"{_WHERE[used]} tokens" + (", neighbours included" if adj and not adjacent else "")
        flag = f"--direction {used}" + (" --adjacent" if adj and not adjacent else "")
        fallback = f"'{label}' has no {asked}: its links go to {now} (as with {flag})"
    return FocusRule(kind, tuple(positions), unit, query_units, all_keys, key_units, full_index, tuple(exclude), key_info,
                     spec, used, adj, fallback)


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
    kind = kind or focus_kind(result)
    maps, query_info, key_info = result.sides(kind)
    rule = focus_rule(query_info, key_info, kind, token, index, spec, direction, adjacent)  # may widen the rules
    rows = torch.stack([maps.query_row(p) for p in rule.positions], dim=-2)  # [L, H, R, K_tokens]
    r = rule.unit_rows(rows)  # [L, H, K_units]
    weights, targets = strongest_targets(r, list(rule.exclude))
    links = rank_heads(r, rule.key_units.labels, list(rule.exclude), top)
    links = [HeadLink(l.layer, l.head, rule.full_index[l.target], l.target_label, l.weight) for l in links]
    full_targets = torch.tensor(rule.full_index)[targets]
    fallback = rule.fallback
    if fallback and maps.causal and rule.direction != "back" and kind != CROSS:
        fallback += "; the attention is causal, so a token gives later tokens no weight"
    return Focus(
        rule.query_units.labels[rule.unit], kind, rule.positions, rule.unit, weights, full_targets, rule.all_keys.labels,
        tuple(links), rule.direction, rule.adjacent, fallback,
    )


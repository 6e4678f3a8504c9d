"""Per-head statistics over a corpus, accumulated as sums one layer of one padded batch at a time.

The statistics follow Clark et al. 2019 ("What Does BERT Look At? An Analysis of
BERT's Attention", sections 3-6 and Figure 6). Every one is a mean over the
*query units* of the corpus: all non-padding positions of all examples (tokens,
or words with ``words=True``, merged as in :mod:`attnviz.analysis.words`: TO a
word = sum over its pieces, FROM a word = mean of its pieces' rows). For a head
``h`` and a query unit ``q`` of an example with attention row ``p = P[h, q, :]``
(probabilities over that example's units; padding gets exactly 0):

``first``      ``p[0]``: attention to the first unit ([CLS] / BOS / the first token).
``sep_eos``    ``sum p[k]`` over special units other than the first ([SEP], EOS).
``punct``      ``sum p[k]`` over non-special units made only of punctuation (Unicode category P*).
``entropy``    ``-sum p[k] ln p[k]`` in nats.
``entropy_ratio``  (sum of ``entropy``) / (sum of ``ln n_q``): the corpus' row entropy relative to that
               of uniform attention over the same keys; ``n_q`` = keys the query may attend to
               (non-padding; in causal models not later than ``q``). A ratio of sums, so rows
               with a single key (``ln 1 = 0``) need no special case.
``prev`` / ``same`` / ``next``  share of queries whose highest-attended key (``argmax p``, the first
               of ties) is ``q - 1`` / ``q`` / ``q + 1``.
``distance``   ``sum p[k] |q - k|`` in units (tokens or words).

Head distances (the head map): for a fixed sample of query units (in one example of
every ``cluster_every`` E, chosen by content: ``crc32(utf-8 text) % E == 0``, the
``cluster_queries`` R positions ``floor((i + 0.5) n / k)``, ``i < k = min(n, R)``),
the Jensen–Shannon distance ``sqrt(JSD(p_i, p_j))`` (JSD in nats, so at most
``sqrt(ln 2)``) between the rows of every pair of heads ``i, j`` (all layers), averaged
over the sampled queries. :func:`embed_heads` places the heads in 2-D by metric MDS
on those distances (scikit-learn), as in Clark et al.'s Figure 6.

Everything is summed in float64: a batch's sums, a worker's sums and a corpus'
sums add up (:meth:`HeadSums.add`), so the order of batches does not matter
beyond float rounding.
"""

from __future__ import annotations

import unicodedata
import zlib
from dataclasses import dataclass, field
from functools import cached_property
from typing import Sequence

import numpy as np
import torch

from attnviz.analysis.words import Units, merge_matrix, token_units, word_units
from attnviz.types import TokenInfo

#: The per-head statistics, in the order reports show them.
STATISTICS = ("first", "sep_eos", "punct", "entropy", "entropy_ratio", "prev", "same", "next", "distance")

#: Exact definitions, as written into heads.json. ``q``: a query unit; ``p``: its attention row.
DEFINITIONS = {
    "first": "mean over query units of p[0], the attention to the first unit ([CLS] / BOS / first token)",
    "sep_eos": "mean over query units of the sum of p[k] over special units other than the first ([SEP], EOS)",
    "punct": "mean over query units of the sum of p[k] over non-special units made only of punctuation (Unicode P*)",
    "entropy": "mean over query units of -sum_k p[k] ln p[k] (nats)",
    "entropy_ratio": "sum over query units of the entropy / sum over query units of ln(n_q), n_q = keys the query may "
                     "attend to (non-padding; in causal models not later than q): entropy relative to uniform attention",
    "prev": "share of query units whose argmax key (first of ties) is q - 1",
    "same": "share of query units whose argmax key (first of ties) is q itself",
    "next": "share of query units whose argmax key (first of ties) is q + 1",
    "distance": "mean over query units of sum_k p[k] |q - k| (in units: tokens, or words with --words)",
    "head_distance": "the mean over sampled query units of the Jensen-Shannon distance sqrt(JSD(p_i, p_j)) (JSD in nats) "
                     "between two heads' rows; sampled: in examples with crc32(utf-8 text) % E == 0, the positions "
                     "floor((i + 0.5) n / k), i < k = min(n, R) (n units; R = cluster_queries, E = cluster_every)",
    "probe_accuracy": "share of probes for which the head's link for the probe token (its strongest earlier, "
                      "non-special, non-adjacent unit: the focus view's rule) is the target word",
}

# sums kept per head; "uniform" is sum ln(n_q), the denominator of entropy_ratio
_SUMS = ("first", "sep_eos", "punct", "entropy", "uniform", "prev", "same", "next", "distance")


def is_punctuation(label: str) -> bool:
    """True if ``label`` (a token or word, ``##`` ignored) is non-empty and every character is Unicode punctuation (P*)."""
    s = label.removeprefix("##").strip()
    return bool(s) and all(unicodedata.category(c).startswith("P") for c in s)


@dataclass(frozen=True)
class BatchLayout:
    """What each position of a padded batch is, and how tokens become the units the statistics count.

    - ``num_tokens``: padded token length ``N``; ``lengths``: real tokens per example;
    - ``valid``: bool ``[B, U]`` real units (``U`` = most units in an example);
    - ``special``: bool ``[B, U]`` special units other than the first ([SEP], EOS...);
    - ``punct``: bool ``[B, U]`` punctuation units;
    - ``causal``: queries may not attend to later units;
    - ``merge_q``/``merge_k``: float32 ``[B, U, N]`` (words: FROM = mean, TO = sum), None for tokens;
    - ``samples``: ``(example, unit)`` pairs whose rows the head distances use.
    """

    num_tokens: int
    lengths: tuple[int, ...]
    valid: torch.Tensor
    special: torch.Tensor
    punct: torch.Tensor
    causal: bool
    merge_q: torch.Tensor | None
    merge_k: torch.Tensor | None
    samples: tuple[torch.Tensor, torch.Tensor]

    @property
    def num_units(self) -> int:
        return int(self.valid.sum())

    @cached_property
    def weights(self) -> torch.Tensor:
        """float32 ``[B, U]``: 1 for real query units, 0 for padding."""
        return self.valid.float()

    @cached_property
    def key_sets(self) -> torch.Tensor:
        """float32 ``[B, U, 2]``: special units other than the first, punctuation units."""
        return torch.stack([self.special, self.punct], dim=-1).float()

    @cached_property
    def positions(self) -> torch.Tensor:
        """int64 ``[U]``: 0 .. U-1."""
        return torch.arange(self.valid.shape[1])

    @cached_property
    def distance(self) -> torch.Tensor:
        """float32 ``[U, U]``: ``|q - k|``."""
        pos = self.positions
        return (pos[:, None] - pos[None, :]).abs().float()

    shifts = torch.tensor([-1, 0, 1])

    @cached_property
    def uniform(self) -> float:
        """Sum over real query units of ``ln n_q`` (``n_q``: non-padding keys, in causal models at most ``q + 1``)."""
        n = self.valid.sum(dim=1, keepdim=True).double().expand(self.valid.shape)
        if self.causal:
            n = torch.minimum(n, torch.arange(1, self.valid.shape[1] + 1, dtype=torch.float64)[None, :])
        return float((torch.log(n) * self.valid).sum())


def sample_positions(n: int, count: int) -> list[int]:
    """The query units the head distances use in a sampled example of ``n`` units: ``floor((i + 0.5) n / k)``, ``i < k = min(n, count)``.

    Evenly spread midpoints (for ``count`` 4 and ``n`` 20: 2, 7, 12, 17), so the
    first and last units ([CLS], [SEP]) are not favoured.
    """
    if n <= 0 or count <= 0:
        return []
    k = min(n, count)
    return [int((i + 0.5) * n / k) for i in range(k)]


def sampled_example(text: str, every: int) -> bool:
    """True if the head distances use this example: ``crc32(utf-8 text) % every == 0`` (deterministic, order-free)."""
    return every <= 1 or zlib.crc32(text.encode("utf-8")) % every == 0


def batch_layout(infos: Sequence[TokenInfo], num_tokens: int, words: bool, causal: bool, cluster_queries: int = 4,
                 cluster_every: int = 8) -> BatchLayout:
    """The :class:`BatchLayout` of examples ``infos`` padded (on the right) to ``num_tokens`` tokens."""
    units: list[Units] = [word_units(i) if words else token_units(i) for i in infos]
    b, u = len(infos), max(len(x) for x in units)
    valid, special, punct = ([[False] * u for _ in range(b)] for _ in range(3))
    mq = torch.zeros(b, u, num_tokens) if words else None
    mk = torch.zeros(b, u, num_tokens) if words else None
    sb, sq = [], []
    for i, x in enumerate(units):
        n = len(x)
        valid[i][:n] = [True] * n
        special[i][1:n] = list(x.special[1:])
        punct[i][:n] = [not sp and is_punctuation(lab) for sp, lab in zip(x.special, x.labels)]
        if words:
            m = merge_matrix(x.groups, len(infos[i]))
            mk[i, :n, : m.shape[1]] = m
            mq[i, :n, : m.shape[1]] = m / m.sum(dim=1, keepdim=True)
        pos = sample_positions(n, cluster_queries) if sampled_example(infos[i].text, cluster_every) else []
        sb += [i] * len(pos)
        sq += pos
    valid, special, punct = (torch.tensor(v, dtype=torch.bool) for v in (valid, special, punct))
    return BatchLayout(
        num_tokens, tuple(len(i) for i in infos), valid, special, punct, causal, mq, mk,
        (torch.tensor(sb, dtype=torch.long), torch.tensor(sq, dtype=torch.long)),
    )


def to_units(probs: torch.Tensor, layout: BatchLayout) -> torch.Tensor:
    """Token-level ``[B, H, N, N]`` probabilities -> unit-level float32 ``[B, H, U, U]`` (padding rows/keys 0 or ignored)."""
    if layout.merge_q is None:
        u = layout.valid.shape[1]
        return probs[:, :, :u, :u].float()
    p = torch.matmul(layout.merge_q[:, None], probs.float())
    return torch.matmul(p, layout.merge_k[:, None].transpose(-1, -2))


def layer_sums(p: torch.Tensor, layout: BatchLayout) -> dict[str, torch.Tensor]:
    """Sums over the valid query units of one layer of one batch, per head.

    Args:
        p: float32 ``[B, H, U, U]`` unit-level probabilities (from :func:`to_units`).
        layout: the batch's layout.

    Returns:
        ``{name: float64 [H]}`` for ``first, sep_eos, punct, entropy, uniform, prev,
        same, next, distance`` (``uniform`` = sum of ``ln n_q``; see the module docstring).
    """
    b, h, u, _ = p.shape
    # few, large tensor ops (each costs a pass over [B, H, U, U]); the per-row values are stacked and reduced at once
    to_keys = torch.bmm(p.reshape(b, h * u, u), layout.key_sets).view(b, h, u, 2)  # [SEP]/EOS, punctuation
    entropy = torch.linalg.vecdot(p, p.clamp_min(1e-30).log_()).neg_()  # -sum p ln p (p ln p -> 0 where p = 0)
    distance = torch.linalg.vecdot(p, layout.distance)  # sum_k p[k] |q - k|
    rel = p.argmax(dim=-1) - layout.positions  # argmax key (first of ties) relative to the query
    rows = torch.cat([
        torch.stack([p[..., 0], to_keys[..., 0], to_keys[..., 1], entropy, distance], dim=-1),
        (rel.unsqueeze(-1) == layout.shifts).to(p.dtype),  # prev, same, next
    ], dim=-1)  # [B, H, U, 8]
    sums = torch.einsum("bhus,bu->hs", rows, layout.weights).double()  # over valid queries
    out = {name: sums[:, i] for i, name in enumerate(("first", "sep_eos", "punct", "entropy", "distance", "prev", "same", "next"))}
    out["uniform"] = torch.full((h,), layout.uniform, dtype=torch.float64)
    return out


def js_distance_sums(rows: torch.Tensor) -> torch.Tensor:
    """Pairwise Jensen–Shannon distances between heads, summed over rows.

    Args:
        rows: float32 ``[M, R, K]``: ``M`` heads' attention rows for the same ``R``
            queries (each row sums to 1; zeros allowed).

    Returns:
        float64 ``[M, M]`` symmetric, zero diagonal: ``sum_r sqrt(JSD(rows[i, r], rows[j, r]))``,
        JSD in nats (Lin 1991), clamped at 0 against rounding.
    """
    m = rows.shape[0]
    out = torch.zeros(m, m, dtype=torch.float64)
    if rows.shape[1] == 0:
        return out
    rows = rows.double()  # JSD = H(mix) - mean H: a difference of similar entropies, float32 would cancel badly
    ent = -torch.special.xlogy(rows, rows).sum(dim=-1)  # [M, R]
    step = max(1, (1 << 21) // max(1, m * rows.shape[1] * rows.shape[2]))  # heads i per chunk: ~16 MiB of mixtures
    for i0 in range(0, m, step):
        i1 = min(m, i0 + step)
        mix = (rows[i0:i1, None] + rows[None]) * 0.5  # [i, M, R, K]
        jsd = -torch.special.xlogy(mix, mix).sum(dim=-1) - 0.5 * (ent[i0:i1, None] + ent[None])  # [i, M, R]
        out[i0:i1] = jsd.clamp_min(0).sqrt().sum(dim=-1)
    out.fill_diagonal_(0.0)
    return out


@dataclass
class HeadSums:
    """Running sums of every statistic, per head (``[layers, heads]`` float64), and the counts they divide by.

    ``queries``: query units counted; ``examples``/``tokens``: corpus size (tokens
    are real, non-padding tokens); ``truncated``: examples cut to ``max_length``;
    ``js``: ``[L*H, L*H]`` head-distance sums over ``js_rows`` sampled queries
    (head ``i`` is layer ``i // H``, head ``i % H``).
    """

    num_layers: int
    num_heads: int
    sums: dict[str, np.ndarray] = field(default_factory=dict)
    queries: int = 0
    examples: int = 0
    tokens: int = 0
    truncated: int = 0
    js: np.ndarray | None = None
    js_rows: int = 0

    def __post_init__(self):
        for name in _SUMS:
            self.sums.setdefault(name, np.zeros((self.num_layers, self.num_heads)))
        if self.js is None:
            n = self.num_layers * self.num_heads
            self.js = np.zeros((n, n))

    def add(self, other: "HeadSums") -> "HeadSums":
        """Add ``other``'s sums and counts into this one (in place); returns self."""
        if (other.num_layers, other.num_heads) != (self.num_layers, self.num_heads):
            raise ValueError("cannot add head sums of different models")
        for name in _SUMS:
            self.sums[name] += other.sums[name]
        self.js += other.js
        for name in ("queries", "examples", "tokens", "truncated", "js_rows"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        return self

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Plain numpy arrays (for shipping between processes, e.g. Ray workers)."""
        out = {f"sum_{k}": v for k, v in self.sums.items()}
        out["js"] = self.js
        out["counts"] = np.array([self.num_layers, self.num_heads, self.queries, self.examples, self.tokens, self.truncated, self.js_rows],
                                 dtype=np.int64)
        return out

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> "HeadSums":
        """Inverse of :meth:`to_arrays`."""
        c = [int(x) for x in arrays["counts"]]
        sums = {k.removeprefix("sum_"): np.asarray(v, dtype=np.float64) for k, v in arrays.items() if k.startswith("sum_")}
        return cls(c[0], c[1], sums, c[2], c[3], c[4], c[5], np.asarray(arrays["js"], dtype=np.float64), c[6])

    def means(self) -> dict[str, np.ndarray]:
        """Every statistic of :data:`STATISTICS` as float64 ``[layers, heads]`` (NaN before any query)."""
        n = self.queries if self.queries else float("nan")
        out = {name: self.sums[name] / n for name in STATISTICS if name != "entropy_ratio"}
        u = self.sums["uniform"]
        out["entropy_ratio"] = np.where(u > 0, self.sums["entropy"] / np.where(u > 0, u, 1.0), np.nan)
        return {name: out[name] for name in STATISTICS}

    def head_distances(self) -> np.ndarray:
        """float64 ``[L*H, L*H]`` mean Jensen–Shannon distances (zeros before any sampled query)."""
        return self.js / self.js_rows if self.js_rows else np.zeros_like(self.js)


class BatchAccumulator:
    """The ``on_layer`` callback of a batch capture: folds each layer into :class:`HeadSums`.

    Create one per batch with the batch's :class:`BatchLayout`; pass :meth:`on_layer`
    as ``CapturePlan(batch=True, on_layer=...)``; after the forward, :meth:`finish`
    adds the head distances and returns the batch's sums. Memory: one layer's
    ``[B, H, N, N]`` (the capture's) plus the sampled rows ``[L, H, R, U]``.
    """

    def __init__(self, layout: BatchLayout, num_layers: int, num_heads: int):
        self.layout = layout
        self.sums = HeadSums(num_layers, num_heads)
        self.rows: dict[int, torch.Tensor] = {}

    def on_layer(self, kind: str, layer: int, probs: torch.Tensor) -> None:
        """Fold one layer's ``[B, H, N, N]`` probabilities in (signature of ``CapturePlan.on_layer``)."""
        if kind not in ("self", "encoder"):
            return
        p = to_units(probs, self.layout)
        for name, value in layer_sums(p, self.layout).items():
            self.sums.sums[name][layer] += value.numpy()
        b, q = self.layout.samples
        self.rows[layer] = p[b, :, q].transpose(0, 1).contiguous()  # [H, R, U]

    def finish(self) -> HeadSums:
        """The batch's sums, head distances included."""
        s = self.sums
        if len(self.rows) == s.num_layers:
            rows = torch.cat([self.rows[l] for l in range(s.num_layers)])  # [L*H, R, U]
            s.js += js_distance_sums(rows).numpy()
            s.js_rows += rows.shape[1]
        self.rows.clear()
        s.queries += self.layout.num_units
        s.examples += len(self.layout.lengths)
        s.tokens += sum(self.layout.lengths)
        return s


def embed_heads(distances: np.ndarray, seed: int = 0) -> np.ndarray:
    """2-D coordinates ``[M, 2]`` of heads from their distance matrix ``[M, M]`` by metric MDS (scikit-learn).

    Deterministic for a given ``seed``. Clark et al. 2019, Figure 6.
    """
    from sklearn.manifold import MDS

    d = np.asarray(distances, dtype=np.float64)
    d = 0.5 * (d + d.T)
    np.fill_diagonal(d, 0.0)
    if d.shape[0] < 2 or not np.any(d > 0):
        return np.zeros((d.shape[0], 2))
    try:
        mds = MDS(n_components=2, metric="precomputed", metric_mds=True, random_state=seed, n_init=4, init="random")
    except TypeError:  # older scikit-learn
        mds = MDS(n_components=2, dissimilarity="precomputed", random_state=seed, n_init=4)
    return mds.fit_transform(d)


#: Display label and unit (None: a probability or share) of each statistic, for figures, pages and tables.
LABELS = {
    "first": ("attention to the first token ([CLS]/BOS)", None),
    "sep_eos": ("attention to [SEP]/EOS", None),
    "punct": ("attention to punctuation", None),
    "entropy": ("row entropy", "nats"),
    "entropy_ratio": ("row entropy / uniform entropy", None),
    "prev": ("share of queries attending most to the previous token", None),
    "same": ("share of queries attending most to themselves", None),
    "next": ("share of queries attending most to the next token", None),
    "distance": ("mean attention distance", "tokens"),
    "probe_accuracy": ("probe accuracy of the head's link", None),
}

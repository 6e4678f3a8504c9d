"""The method registry: every way attnviz turns what a forward pass computes into a map, looked up by name.

A :class:`Method` is a pure function over captured *signals* -- the attention probabilities of each
layer (``"probabilities"``, float32 ``[heads, query, key]`` per layer, as :mod:`attnviz.capture` keeps
them), and, for the methods planned next (issue "Beyond raw attention"), the value states and output
projection (``"values"``) or the gradient of a target with respect to the probabilities
(``"gradients"``). It declares the signals it needs, so a capture plan can ask for exactly those, and
returns one result type, :class:`MethodResult`.

Registered here (``attnviz.methods.names()``):

- ``attention`` -- the raw attention probabilities of one layer: one head, or the heads fused.
- ``head-fusion`` -- one layer's heads fused by mean, max or min (the rollout's per-layer step).
- ``rollout`` -- attention rollout, Abnar & Zuidema (2020), "Quantifying Attention Flow in
  Transformers": ``R = A'_L ... A'_1`` with ``A' = norm(0.5 A + 0.5 I)`` (:mod:`attnviz.methods.rollout`).

New methods register with :func:`register`; pipelines and views look them up with :func:`get`.
Nothing here imports torch at module level.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from attnviz.errors import UsageError

if TYPE_CHECKING:  # pragma: no cover
    import torch

#: The signals a capture can provide to a method.
SIGNALS = ("probabilities", "values", "gradients")


@dataclass(frozen=True)
class MethodResult:
    """What a method returns: ``values`` (float32 tensor; ``[query, key]`` for a map over one layer or the
    whole stack), the ``method`` name, the ``layer``/``head`` it describes (None: all layers / heads fused),
    and the ``settings`` it ran with (JSON-ready)."""

    method: str
    values: "torch.Tensor"
    layer: int | None = None
    head: int | None = None
    settings: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Method:
    """A registered method: ``name`` (as on the command line), a ``title`` for figures, the ``source``
    (paper) it follows, the ``signals`` it needs (subset of :data:`SIGNALS`), whether it ``aggregates``
    every layer (rollout) or reads one, and ``compute(layers, **settings) -> MethodResult`` where
    ``layers`` is a sequence of per-layer float32 ``[heads, query, key]`` probability tensors."""

    name: str
    title: str
    source: str
    signals: frozenset[str]
    aggregates: bool
    compute: Callable[..., MethodResult]

    def __call__(self, layers: Sequence["torch.Tensor"], **settings) -> MethodResult:
        return self.compute(layers, **settings)


_REGISTRY: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Add ``method`` to the registry (a later registration under the same name replaces it).

    Raises:
        ValueError: a signal outside :data:`SIGNALS`.
    """
    unknown = set(method.signals) - set(SIGNALS)
    if unknown:
        raise ValueError(f"method '{method.name}' needs unknown signals {sorted(unknown)}")
    _REGISTRY[method.name] = method
    return method


def get(name: str) -> Method:
    """The method registered as ``name``.

    Raises:
        UsageError: no such method (the message lists the registered ones).
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UsageError(f"unknown method '{name}'; attnviz has: {', '.join(names())}") from None


def names() -> tuple[str, ...]:
    """Names of the registered methods, in registration order."""
    return tuple(_REGISTRY)


def _attention(layers, layer: int = -1, head: int | None = None, head_fusion: str = "mean") -> MethodResult:
    """One layer's raw probabilities: head ``head`` (``[query, key]``), or the heads fused (head None)."""
    from attnviz.methods.rollout import fuse_heads

    layer = layer % len(layers)
    probs = layers[layer]
    values = probs[head] if head is not None else fuse_heads(probs, head_fusion)
    return MethodResult("attention", values, layer, head, {"head_fusion": None if head is not None else head_fusion})


def _head_fusion(layers, layer: int = -1, head_fusion: str = "mean") -> MethodResult:
    from attnviz.methods.rollout import fuse_heads

    layer = layer % len(layers)
    return MethodResult("head-fusion", fuse_heads(layers[layer], head_fusion), layer, None, {"head_fusion": head_fusion})


def _rollout(layers, head_fusion: str = "mean", discard_ratio: float = 0.0, protect: Sequence[int] = ()) -> MethodResult:
    import torch

    from attnviz.methods.rollout import attention_rollout

    full = torch.stack(list(layers))  # [L, H, Q, K]
    values = attention_rollout(full, head_fusion, discard_ratio, protect)
    return MethodResult("rollout", values, None, None, {"head_fusion": head_fusion, "discard_ratio": discard_ratio})


register(Method("attention", "attention", "the model's own attention probabilities (softmax(QK^T/sqrt(d) + mask))",
                frozenset({"probabilities"}), False, _attention))
register(Method("head-fusion", "heads fused", "mean/max/min over a layer's heads (Abnar & Zuidema 2020, as in rollout)",
                frozenset({"probabilities"}), False, _head_fusion))
register(Method("rollout", "attention rollout", "Abnar & Zuidema 2020, Quantifying Attention Flow in Transformers",
                frozenset({"probabilities"}), True, _rollout))

"""The method registry: every way attnviz turns what a forward pass computes into a map, looked up by name.

A :class:`Method` is a pure function over captured *signals* -- the attention probabilities of each
layer (``"probabilities"``, float32 ``[heads, query, key]`` per layer, as :mod:`attnviz.capture` keeps
them), the value states through the output projection (``"values"``) or the gradient of a target with
respect to the probabilities (``"gradients"``), both from :mod:`attnviz.signals`. It declares the signals
it needs, so a capture plan can ask for exactly those, and what its ``compute`` reads per layer
(``reads``): ``"probabilities"`` (``[heads, query, key]``), ``"grad-weighted"`` (float32 ``[query, key]``
``mean_h (dy/dA ⊙ A)^+``, reduced while the gradient arrives so no per-head gradient is kept) or
``"value-weighted"`` (float32 ``[query, key]`` ``mean_h alpha_ij ||f_h(x_j)||``). It returns one result
type, :class:`MethodResult`.

Registered here (``attnviz.methods.names()``):

- ``attention`` -- the raw attention probabilities of one layer: one head, or the heads fused.
- ``head-fusion`` -- one layer's heads fused by mean, max or min (the rollout's per-layer step).
- ``rollout`` -- attention rollout, Abnar & Zuidema (2020), "Quantifying Attention Flow in
  Transformers": ``R = A'_L ... A'_1`` with ``A' = norm(0.5 A + 0.5 I)`` (:mod:`attnviz.methods.rollout`).
- ``grad-attention`` -- one layer's ``mean_h (dy/dA ⊙ A)^+`` for a target ``y`` (attention x gradient,
  as in Chefer et al. 2021's per-layer step).
- ``relevance`` -- Chefer et al. 2021 (ICCV), generic attention-model explainability: ``R = I``,
  ``R += Ā R`` per layer with ``Ā = mean_h (∇A ⊙ A)^+`` (:mod:`attnviz.methods.gradients`).
- ``value-norm`` -- Kobayashi et al. 2020 (EMNLP): one layer's ``mean_h ||alpha_ij f_h(x_j)||``, the
  attention weight times the norm of the key's value vector through the head's output projection.

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
    ``layers`` is a sequence of per-layer tensors of what the method ``reads`` (see the module docstring);
    ``unit`` names its values for colour bars."""

    name: str
    title: str
    source: str
    signals: frozenset[str]
    aggregates: bool
    compute: Callable[..., MethodResult]
    reads: str = "probabilities"
    unit: str = "attention probability"

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


def _grad_attention(layers, layer: int = -1) -> MethodResult:
    layer = layer % len(layers)
    return MethodResult("grad-attention", layers[layer].float(), layer, None, {"head_fusion": "mean of positive part"})


def _relevance(layers, decoder=None, cross=None) -> MethodResult:
    """Single stack: ``R`` ``[N, N]``. With ``decoder`` and ``cross`` (per-layer ``Ā`` of an encoder-decoder model;
    ``layers`` then are the encoder's): ``R^qs`` ``[T, S]``, the decoder positions' relevance over the source."""
    from attnviz.methods.gradients import encoder_decoder_relevance, relevance

    if decoder is not None:
        return MethodResult("relevance", encoder_decoder_relevance(layers, decoder, cross)[2], None, None,
                            {"rule": "encoder-decoder: R^qs += norm(R^qq)^T mean_h((dA*A)^+) norm(R^ss)"})
    return MethodResult("relevance", relevance(layers), None, None, {"rule": "R = I; R += mean_h((dA*A)^+) R"})


def _value_norm(layers, layer: int = -1) -> MethodResult:
    layer = layer % len(layers)
    return MethodResult("value-norm", layers[layer].float(), layer, None, {"head_fusion": "mean"})


register(Method("grad-attention", "attention x gradient",
                "Chefer et al. 2021 (ICCV), per layer: mean_h (dy/dA * A)^+",
                frozenset({"probabilities", "gradients"}), False, _grad_attention, "grad-weighted", "mean_h (dy/dA·A)⁺"))
register(Method("relevance", "relevance (Chefer et al. 2021)",
                "Chefer, Gur & Wolf 2021 (ICCV): R = I; R += mean_h((dy/dA*A)^+) R",
                frozenset({"probabilities", "gradients"}), True, _relevance, "grad-weighted", "relevance"))
register(Method("value-norm", "value-norm attention",
                "Kobayashi et al. 2020, Attention is Not Only a Weight (EMNLP): mean_h ||alpha_ij f_h(x_j)||",
                frozenset({"probabilities", "values"}), False, _value_norm, "value-weighted", "‖α f(x)‖"))

"""Analyses of attention during generation: what each generated token attends to most, and the sink share per step.

Pure functions on :class:`attnviz.types.GenerationAttention` (tensors in, values out).

*Sinks.* Decoders park much of their attention on the first token (BOS, or the
first prompt token when there is no BOS) whatever it is: an "attention sink"
(Xiao et al. 2024, "Efficient Streaming Language Models with Attention Sinks").
The strongest earlier token of a step therefore skips position 0 and every
special token (as the text views' focus analysis skips special tokens), and
:func:`sink_share` reports how much goes there instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from attnviz.errors import UsageError
from attnviz.types import AttentionMaps, GenerationAttention

#: How the rule for "earlier token" is described to the user.
SELF_RULE = "strongest earlier token, excluding the first token (attention sink) and special tokens"
CROSS_RULE = "strongest source token, excluding special tokens"


@dataclass(frozen=True)
class Link:
    """Generated token ``step`` puts ``weight`` on key position ``target`` (label ``target_label``)
    in ``layer``/``head`` (0-based; ``head`` None: the mean of the layer's heads)."""

    step: int
    target: int
    target_label: str
    weight: float
    layer: int
    head: int | None

    def source(self) -> str:
        """``"L3 H1"`` or ``"L3 mean"``."""
        return f"L{self.layer} {'mean' if self.head is None else f'H{self.head}'}"

    def to_dict(self) -> dict:
        return {"target": self.target, "target_token": self.target_label, "weight": round(self.weight, 6),
                "layer": self.layer, "head": "mean" if self.head is None else self.head}


def candidates(result: GenerationAttention, layer: int | None, head: int | None, cross: bool = False):
    """The attention a step's strongest link is chosen from: ``(weights [C, T, K], sources [(layer, head)] * C)``.

    - no ``layer``, no ``head``: every layer's every head (C = L * H);
    - ``layer`` only: that layer's head mean (C = 1);
    - ``head`` only: that head in every layer (C = L);
    - both: that head (C = 1).

    Raises:
        UsageError: layer or head out of range, or ``cross`` without cross-attention.
    """
    attn = checked(result, layer, head, cross)
    L, H = attn.shape[:2]
    layers = range(L) if layer is None else [layer % L]
    if head is None and layer is not None:
        return attn[layers[0]].mean(dim=0, keepdim=True), [(layers[0], None)]
    heads = range(H) if head is None else [head % H]
    w = attn[list(layers)][:, list(heads)]
    return w.reshape(-1, *attn.shape[2:]), [(l, h) for l in layers for h in heads]


def checked(result: GenerationAttention, layer: int | None, head: int | None, cross: bool = False) -> torch.Tensor:
    """The self- (or cross-) attention ``[L, H, T, K]`` of ``result`` after checking ``layer`` and ``head`` (None: not given).

    Raises:
        UsageError: layer or head out of range, or ``cross`` without cross-attention.
    """
    attn = result.cross_attentions if cross else result.attentions
    if attn is None:
        raise UsageError("this result has no cross-attention (not an encoder-decoder model)")
    maps = AttentionMaps("cross" if cross else "self", *attn.shape)
    if layer is not None:
        maps.check_layer(layer)
    if head is not None:
        maps.check_head(head)
    return attn


def eligible(result: GenerationAttention, cross: bool = False) -> torch.Tensor:
    """bool ``[T, K]``: keys each step's strongest link may go to (see the module docstring)."""
    T = result.num_generated
    if cross:
        special = torch.tensor(result.prompt.special, dtype=torch.bool)
        return (~special)[None, :].expand(T, -1).clone()
    K = result.context_length + T
    special = torch.tensor(result.key_special, dtype=torch.bool)
    keys = torch.arange(K)
    queries = torch.arange(T)[:, None] + result.context_length
    ok = (keys[None, :] < queries) & ~special[None, :]
    ok[:, 0] = False
    return ok


def strongest_links(
    result: GenerationAttention, layer: int | None = None, head: int | None = None, top: int = 3, cross: bool = False
) -> list[list[Link]]:
    """For every generated token, its ``top`` strongest eligible keys, each from the layer/head where it is strongest.

    Args:
        result: from :func:`attnviz.generate.attend_generation`.
        layer, head: where to look (see :func:`candidates`); default every layer and head.
        top: keys per step (distinct keys, by decreasing weight).
        cross: cross-attention (source keys) instead of self-attention.

    Returns:
        One list per generated token (empty where no key is eligible, e.g. the
        first step of an encoder-decoder model's self-attention).
    """
    w, sources = candidates(result, layer, head, cross)  # [C, T, K]
    ok = eligible(result, cross)
    masked = torch.where(ok[None], w, torch.full_like(w, -1.0))
    best, where = masked.max(dim=0)  # [T, K]: best weight per key and the candidate it came from
    labels = result.prompt.tokens if cross else result.key_labels
    out: list[list[Link]] = []
    for step in range(result.num_generated):
        k = min(top, int(ok[step].sum()))
        links = []
        if k > 0:
            vals, keys = best[step].topk(k)
            for v, key in zip(vals.tolist(), keys.tolist()):
                l, h = sources[int(where[step, key])]
                links.append(Link(step, int(key), labels[int(key)], float(v), l, h))
        out.append(links)
    return out


def sink_share(result: GenerationAttention) -> torch.Tensor:
    """float32 ``[layers, generated]``: each step's attention to the first key position (BOS / first prompt
    token; the decoder start token for encoder-decoder models), mean over the layer's heads."""
    return result.attentions[:, :, :, 0].mean(dim=1)

"""The typed results that flow from capture to analyses, views and reports.

Nothing here imports torch at run time (tensors are only annotated), so the CLI's
``--help`` path stays light.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping

from attnviz.errors import UsageError

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from PIL import Image

#: Names of the attention kinds a capture can hold.
SELF, ENCODER, DECODER, CROSS = "self", "encoder", "decoder", "cross"


#: The notebook display of results (``_repr_html_``): registered by the HTML layer, never imported from here.
_HTML_DISPLAY: Callable[[Any], str | None] | None = None


def register_html_display(fn: Callable[[Any], str | None] | None) -> Callable[[Any], str | None] | None:
    """Register ``fn(result) -> str | None`` as the ``_repr_html_`` of :class:`TextAttention` and
    :class:`ImageAttention` (``None`` removes it); returns the hook it replaces.

    This module is the bottom layer and imports no view: :mod:`attnviz.html` registers its
    :func:`~attnviz.html.repr_html` here when it is imported (and ``import attnviz`` registers a
    lazy wrapper that imports it on the first display). Without a hook ``_repr_html_`` returns None.
    """
    global _HTML_DISPLAY
    previous, _HTML_DISPLAY = _HTML_DISPLAY, fn
    return previous


def _display_html(obj) -> str | None:
    return None if _HTML_DISPLAY is None else _HTML_DISPLAY(obj)


@dataclass(frozen=True)
class AttentionMaps:
    """Attention probabilities of one attention kind, as far as a capture plan kept them.

    All tensors are float32 on the CPU and hold softmax probabilities (each full
    row sums to 1 over the keys the query may attend to).

    - ``full``: ``[layers, heads, query, key]``, every layer and head (plan "full").
    - ``layers``: layer index -> ``[heads, query, key]`` for the layers a plan kept.
    - ``rows``: ``[layers, heads, len(row_index), key]``, the rows of the query
      positions ``row_index`` in every layer and head (plan "focus").
    - ``rollout``: ``[query, key]`` attention rollout (Abnar & Zuidema 2020) with
      the settings in ``rollout_settings`` (plan "aggregate").
    - ``kv_heads``: for grouped-query / multi-query attention, the key/value head
      each query head reads (``None`` when every head has its own).
    - ``head_maps``: ``(layer, head)`` -> ``[query, key]`` for single heads a plan
      kept (head ``None``: the mean of the layer's heads), O(N^2) each.

    ``kind`` is ``"self"`` for single-stack models, or ``"encoder"``,
    ``"decoder"`` and ``"cross"`` (queries: target tokens, keys: source tokens)
    for encoder-decoder models. Layers and heads are 0-based, as in transformers.
    """

    kind: str
    num_layers: int
    num_heads: int
    num_queries: int
    num_keys: int
    causal: bool = False
    full: torch.Tensor | None = None
    layers: Mapping[int, torch.Tensor] = field(default_factory=dict)
    rows: torch.Tensor | None = None
    row_index: tuple[int, ...] = ()
    rollout: torch.Tensor | None = None
    rollout_settings: Mapping[str, object] = field(default_factory=dict)
    kv_heads: tuple[int, ...] | None = None
    head_maps: Mapping[tuple[int, int | None], torch.Tensor] = field(default_factory=dict)

    def check_layer(self, layer: int) -> int:
        """Return ``layer`` if it is a valid 0-based index (negative counts from the end).

        Raises:
            UsageError: the layer is out of range.
        """
        if not -self.num_layers <= layer < self.num_layers:
            raise UsageError(
                f"--layer {layer} is out of range: this model has {self.num_layers} layers (0..{self.num_layers - 1})"
            )
        return layer % self.num_layers

    def check_head(self, head: int) -> int:
        """Return ``head`` if it is a valid 0-based head index. Raises UsageError otherwise."""
        if not -self.num_heads <= head < self.num_heads:
            raise UsageError(
                f"--head {head} is out of range: this model has {self.num_heads} heads per layer (0..{self.num_heads - 1})"
            )
        return head % self.num_heads

    def has_layer(self, layer: int) -> bool:
        """True if :meth:`layer` can return this layer's ``[heads, query, key]`` maps."""
        return self.full is not None or (layer % self.num_layers) in self.layers

    def layer(self, layer: int) -> torch.Tensor:
        """Attention of every head of one layer: float32 ``[heads, query, key]``.

        Raises:
            UsageError: out of range. KeyError: the capture plan did not keep this layer.
        """
        layer = self.check_layer(layer)
        if self.full is not None:
            return self.full[layer]
        if layer in self.layers:
            return self.layers[layer]
        raise KeyError(f"layer {layer} was not captured by this plan")

    def has_head_map(self, layer: int, head: int | None) -> bool:
        """True if :meth:`head_map` can return this head's (or the head mean's) ``[query, key]`` map."""
        layer = layer % self.num_layers
        return (layer, head) in self.head_maps or self.has_layer(layer)

    def head_map(self, layer: int, head: int | None) -> torch.Tensor:
        """One head's float32 ``[query, key]`` map (``head`` None: the mean of the layer's heads).

        Raises:
            UsageError: out of range. KeyError: neither that map nor its layer was captured.
        """
        layer = self.check_layer(layer)
        head = None if head is None else self.check_head(head)
        if (layer, head) in self.head_maps:
            return self.head_maps[(layer, head)]
        lt = self.layer(layer)
        return lt.mean(dim=0) if head is None else lt[head]

    def has_row(self, query: int) -> bool:
        """True if :meth:`query_row` can return this query position's ``[layers, heads, key]`` rows."""
        return self.full is not None or query in self.row_index

    def query_row(self, query: int) -> torch.Tensor:
        """Where one query position attends, in every layer and head: float32 ``[layers, heads, key]``.

        Raises:
            KeyError: the capture plan kept neither the full maps nor this row.
        """
        if self.full is not None:
            return self.full[:, :, query, :]
        if query in self.row_index:
            return self.rows[:, :, self.row_index.index(query), :]
        raise KeyError(f"query row {query} was not captured by this plan")


@dataclass(frozen=True)
class TokenInfo:
    """The tokens of one text, as the tokenizer split it.

    ``tokens`` are display strings (word-piece markers such as ``##`` or ``Ġ``
    are kept only where they carry meaning: ``##`` marks a continuation piece);
    ``word_ids[i]`` is the index of the word token ``i`` belongs to, or ``None``
    for special tokens; ``offsets[i]`` the ``(start, end)`` character span in
    ``text`` (``(0, 0)`` for special tokens); ``special[i]`` is True for
    [CLS]/[SEP]/BOS/EOS/padding and the like.
    """

    text: str
    tokens: tuple[str, ...]
    word_ids: tuple[int | None, ...]
    offsets: tuple[tuple[int, int], ...]
    special: tuple[bool, ...]

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def num_words(self) -> int:
        ids = [w for w in self.word_ids if w is not None]
        return max(ids) + 1 if ids else 0

    def words(self) -> tuple[str, ...]:
        """Each word's text, taken from ``text`` through the character offsets."""
        spans: dict[int, list[int]] = {}
        for wid, (start, end) in zip(self.word_ids, self.offsets):
            if wid is None:
                continue
            span = spans.setdefault(wid, [start, end])
            span[0], span[1] = min(span[0], start), max(span[1], end)
        return tuple(self.text[spans[w][0] : spans[w][1]].strip() for w in range(self.num_words))


@dataclass(frozen=True)
class TextAttention:
    """Result of :func:`attnviz.attend_text`: the tokens and their captured attention.

    ``attention`` maps each attention kind (``"self"``, or ``"encoder"``,
    ``"decoder"``, ``"cross"``) to its :class:`AttentionMaps`. ``tokens`` are the
    input (source) tokens; ``target_tokens`` the decoder-side tokens of an
    encoder-decoder model. ``backend`` names how attention was captured
    (``"sdpa+attnviz"`` or ``"eager"``); ``notice`` says why when it fell back to
    eager; ``dropped_tokens`` counts tokens cut off by truncation (None: the text was so long that
    only its beginning was tokenized, so the tokens cut off were not counted).
    """

    model_id: str
    model_type: str
    backend: str
    tokens: TokenInfo
    attention: Mapping[str, AttentionMaps]
    target_tokens: TokenInfo | None = None
    dropped_tokens: int | None = 0
    notice: str | None = None
    verification: Any = None  # attnviz.verify.Verification: how far the capture is checked against eager

    def sides(self, kind: str = SELF) -> tuple[AttentionMaps, TokenInfo, TokenInfo]:
        """The attention of ``kind`` with its query-side and key-side tokens: ``(maps, query_info, key_info)``.

        Query side: ``target_tokens`` for ``"decoder"``/``"cross"``, else ``tokens``;
        key side: ``target_tokens`` for ``"decoder"``, else ``tokens``. ``"self"``
        on an encoder-decoder result means ``"encoder"``.

        Raises:
            UsageError: no attention of this kind (the message lists those there are), or no target tokens.
        """
        if kind == SELF and SELF not in self.attention and ENCODER in self.attention:
            kind = ENCODER
        if kind not in self.attention:
            have = ", ".join(self.attention) or "none"
            raise UsageError(f"this result has no {kind} attention (it has: {have})")
        query_info = self.target_tokens if kind in (DECODER, CROSS) else self.tokens
        key_info = self.target_tokens if kind == DECODER else self.tokens
        if query_info is None or key_info is None:
            raise UsageError(f"this result has no target (decoder) tokens for {kind} attention")
        return self.attention[kind], query_info, key_info

    def _repr_html_(self) -> str | None:
        """Jupyter: the interactive report inline, as the registered display hook draws it
        (:func:`register_html_display`; :mod:`attnviz.html` registers an iframe ``srcdoc``, no CDN);
        None (the plain repr) when no hook is registered or the result lacks the maps a page needs."""
        return _display_html(self)

    @property
    def main(self) -> AttentionMaps:
        """The self-attention of a single-stack model, or the encoder's."""
        return self.attention.get(SELF) or self.attention[ENCODER]

    @property
    def num_layers(self) -> int:
        return self.main.num_layers

    @property
    def num_heads(self) -> int:
        return self.main.num_heads


@dataclass(frozen=True)
class Prediction:
    """One class label of an image classifier with its softmax probability."""

    label: str
    score: float


@dataclass(frozen=True)
class ImageAttention:
    """Result of :func:`attnviz.attend_image`.

    ``image`` is the photo as loaded (RGB, EXIF orientation applied), at its own
    size; ``crop_box`` the ``(left, top, right, bottom)`` region of it, in pixels,
    that the patch grid covers (the processor's resize/crop region, less any strip
    that does not fill a whole patch). The model's token
    sequence is ``prefix_tokens`` tokens ([CLS], distillation, registers; 0 for
    SigLIP) followed by ``grid[0] * grid[1]`` patch tokens in row-major order;
    ``cls_index`` is the position of the [CLS] token or ``None``.
    """

    model_id: str
    model_type: str
    backend: str
    image: Image.Image
    crop_box: tuple[float, float, float, float]
    grid: tuple[int, int]
    prefix_tokens: int
    cls_index: int | None
    attention: AttentionMaps
    predictions: tuple[Prediction, ...] = ()
    input_size: tuple[int, int] = (0, 0)  # (height, width) of the pixel tensor
    verification: Any = None  # attnviz.verify.Verification: how far the capture is checked against eager

    def _repr_html_(self) -> str | None:
        """Jupyter: the interactive report inline, as the registered display hook draws it
        (:func:`register_html_display`; :mod:`attnviz.html` registers an iframe ``srcdoc``, no CDN);
        None (the plain repr) when no hook is registered or the result lacks the maps a page needs."""
        return _display_html(self)

    @property
    def num_layers(self) -> int:
        return self.attention.num_layers

    @property
    def num_heads(self) -> int:
        return self.attention.num_heads


@dataclass(frozen=True)
class GenerationAttention:
    """Result of :func:`attnviz.attend_generation`: the tokens a model generated and where each one attended.

    Step ``i`` is generated token ``i``: ``attentions[:, :, i]`` is the attention
    row of that token's own query position (the forward pass that read it, with
    the KV cache, and predicted token ``i + 1``), so it sees every earlier token
    and itself; ``probabilities[i]`` is the probability the model gave token ``i``
    when it was chosen (softmax of the raw logits of the step before, no
    temperature).

    - ``attentions``: float32 ``[layers, heads, generated, keys]`` self-attention
      (decoder self-attention for encoder-decoder models); the key axis is
      ``context`` positions followed by the generated tokens
      (:attr:`key_labels`): the prompt for decoder-only models, the decoder start
      token for encoder-decoder models. Keys a step could not see (later tokens,
      or outside a sliding window) are 0.
    - ``cross_attentions``: float32 ``[layers, heads, generated, source]`` for
      encoder-decoder models (keys: the prompt, i.e. the source), else None.
    - ``prompt``: the prompt's tokens (:class:`TokenInfo`); ``prompt_ids``/``generated_ids``
      the token ids; ``generated``: display labels of the generated tokens;
      ``generated_special``: which of them are special (EOS...).
    - ``context``: labels of the key positions before the generated ones (the
      prompt's, or the decoder start token); ``context_special`` likewise.
    - ``sampling``: ``{"do_sample", "temperature", "top_p", "seed"}``;
      ``stopped_at_eos``: the last generated token is an end-of-sequence token.
    - ``backend``: ``"sdpa+attnviz"`` or ``"eager"`` (fallback, ``notice`` says why).
    """

    model_id: str
    model_type: str
    backend: str
    prompt: TokenInfo
    prompt_ids: tuple[int, ...]
    generated_ids: tuple[int, ...]
    generated: tuple[str, ...]
    generated_special: tuple[bool, ...]
    context: tuple[str, ...]
    context_special: tuple[bool, ...]
    attentions: torch.Tensor
    probabilities: tuple[float, ...]
    text: str
    cross_attentions: torch.Tensor | None = None
    encoder_decoder: bool = False
    stopped_at_eos: bool = False
    sampling: Mapping[str, object] = field(default_factory=dict)
    kv_heads: tuple[int, ...] | None = None
    notice: str | None = None

    @property
    def num_layers(self) -> int:
        return int(self.attentions.shape[0])

    @property
    def num_heads(self) -> int:
        return int(self.attentions.shape[1])

    @property
    def num_generated(self) -> int:
        return len(self.generated_ids)

    @property
    def prompt_length(self) -> int:
        """Tokens in the prompt (the source of an encoder-decoder model)."""
        return len(self.prompt_ids)

    @property
    def context_length(self) -> int:
        """Key positions before the first generated token (prompt, or decoder start token)."""
        return len(self.context)

    @property
    def key_labels(self) -> tuple[str, ...]:
        """Label of every key position of :attr:`attentions`: context, then generated tokens."""
        return self.context + self.generated

    @property
    def key_special(self) -> tuple[bool, ...]:
        return self.context_special + self.generated_special

    def query_position(self, step: int) -> int:
        """Key position of generated token ``step`` (its own query position)."""
        return self.context_length + step

    def check_step(self, step: int) -> int:
        """``step`` as a 0-based generated-token index (negative counts from the end). Raises UsageError."""
        n = self.num_generated
        if not -n <= step < n:
            raise UsageError(f"generated token {step} is out of range: {n} tokens were generated (0..{n - 1})")
        return step % n

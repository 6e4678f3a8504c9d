"""Attention capture: run a model once and keep the attention probabilities a plan asks for.

The model keeps a fast attention path (PyTorch SDPA) for its own output. A custom
function registered under the name ``"attnviz"`` in transformers'
``AttentionInterface`` receives each attention call's query/key states, mask and
scaling, and recomputes the probabilities exactly as transformers' eager path does
(``softmax(q @ k^T * scaling [+ position bias] [+ mask])``), in row blocks, only for
what the :class:`CapturePlan` needs. Models that do not dispatch through the
``AttentionInterface`` (e.g. DeBERTa-v2, MPNet) fall back to eager
``output_attentions=True``.

Attention calls are attributed to a layer and kind by module path (e.g.
``decoder.block.3.layer.1.EncDecAttention`` -> cross-attention, layer 3).
"""

from __future__ import annotations

import contextvars
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch

from attnviz.analysis.rollout import fuse_heads, rollout_step
from attnviz.errors import ModelError
from attnviz.types import CROSS, DECODER, ENCODER, SELF, AttentionMaps

IMPLEMENTATION = "attnviz"
#: Bytes of float32 scores one row block may use.
BLOCK_BYTES = 1 << 26


@dataclass(frozen=True)
class CapturePlan:
    """What to keep from one forward pass.

    - ``full``: every layer's ``[heads, query, key]`` map (memory O(L*H*N^2)).
    - ``layers``: keep these layers' maps in full (O(H*N^2) each).
    - ``rows``: keep these query positions in every layer and head (O(L*H*N)).
    - ``rollout``: accumulate attention rollout layer by layer with
      ``head_fusion`` and ``discard_ratio`` (O(N^2)); ``protect`` lists key
      positions (e.g. [CLS]) never discarded.
    - ``on_layer``: called with ``(kind, layer, probs[heads, query, key])`` for
      every layer of every kind, e.g. to stream maps to disk; the maps are not kept.
    - ``kinds``: restrict ``layers``/``rows``/``rollout`` to these kinds (None: all).
    """

    full: bool = False
    layers: frozenset[int] = frozenset()
    rows: tuple[int, ...] = ()
    rollout: bool = False
    head_fusion: str = "mean"
    discard_ratio: float = 0.0
    protect: tuple[int, ...] = ()
    on_layer: Callable[[str, int, torch.Tensor], None] | None = None
    cross_rows: tuple[int, ...] = ()

    @property
    def needs_full_layers(self) -> bool:
        return self.full or self.on_layer is not None


FULL = CapturePlan(full=True)


@dataclass
class Capture:
    """What :func:`capture` returns: the maps per attention kind, the backend used and the model output."""

    attention: dict[str, AttentionMaps]
    backend: str
    outputs: Any


# ---------------------------------------------------------------------------
# naming attention modules by their path


_CROSS_RE = re.compile(r"encdec|encoder_attn|crossattention|cross_attn|cross_attention", re.IGNORECASE)


def attention_kind(path: str, encoder_decoder: bool) -> str:
    """Attention kind of an attention module, from its module path.

    ``"decoder.block.2.layer.1.EncDecAttention"`` -> ``"cross"`` in an
    encoder-decoder model; every module of a single-stack model is ``"self"``.
    The layer index is the call order within the kind (one forward pass runs the
    layers in order), which also serves models that share one layer's weights
    across layers (ALBERT).
    """
    if not encoder_decoder:
        return SELF
    if _CROSS_RE.search(path):
        return CROSS
    return DECODER if "decoder" in path.split(".") else ENCODER


# ---------------------------------------------------------------------------
# probabilities, as eager attention computes them


def eager_probabilities(
    query: torch.Tensor,
    key: torch.Tensor,
    scaling: float,
    mask: torch.Tensor | None,
    causal: bool,
    rows: torch.Tensor,
    position_bias: torch.Tensor | None = None,
    softcap: float | None = None,
    q_offset: int = 0,
) -> torch.Tensor:
    """Attention probabilities of some query rows, the way transformers' eager attention computes them.

    Args:
        query: ``[heads, Q, d]`` query states of one sequence (any float dtype).
        key: ``[kv_heads, K, d]`` key states; ``heads`` must be a multiple of
            ``kv_heads`` (grouped-query attention: query head ``h`` reads kv head
            ``h // (heads // kv_heads)``).
        scaling: factor on the scores (usually ``d ** -0.5``).
        mask: ``[1 or heads, Q, K]`` boolean (True = may attend) or additive
            float mask, or None.
        causal: with ``mask=None``, apply a causal mask (key <= query + q_offset).
        rows: int64 ``[R]`` query indices to compute.
        position_bias: additive ``[1 or heads, Q, K]`` bias (T5 relative positions).
        softcap: Gemma-2 style logit soft-capping ``tanh(s / c) * c``.

    Returns:
        float32 ``[heads, R, K]`` probabilities; each row sums to 1.
    """
    heads, kv_heads = query.shape[0], key.shape[0]
    q = query[:, rows].float()
    k = key.float()
    if kv_heads != heads:
        k = k.repeat_interleave(heads // kv_heads, dim=0)
    scores = torch.matmul(q, k.transpose(-1, -2)) * scaling
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    if position_bias is not None:
        scores = scores + position_bias[:, rows].float()
    if mask is not None:
        m = mask[:, rows]
        if m.dtype == torch.bool:
            scores = scores.masked_fill(~m, torch.finfo(torch.float32).min)
        else:
            scores = scores + m.float()
    elif causal and q.shape[1] > 0:
        kpos = torch.arange(k.shape[1], device=k.device)
        scores = scores.masked_fill(kpos[None, :] > (rows[:, None] + q_offset), torch.finfo(torch.float32).min)
    return torch.softmax(scores, dim=-1)


# ---------------------------------------------------------------------------
# the session that one capture() call runs


_ACTIVE: contextvars.ContextVar["_Session | None"] = contextvars.ContextVar("attnviz_capture", default=None)
_UNSUPPORTED_KWARGS = ("s_aux", "sinks")


class _Session:
    def __init__(self, plan: CapturePlan, names: Mapping[int, str], encoder_decoder: bool, progress=None):
        self.plan = plan
        self.names = names
        self.encoder_decoder = encoder_decoder
        self.progress = progress
        self.full: dict[str, dict[int, torch.Tensor]] = {}
        self.layers: dict[str, dict[int, torch.Tensor]] = {}
        self.rows: dict[str, dict[int, torch.Tensor]] = {}
        self.rollout: dict[str, torch.Tensor] = {}
        self.shape: dict[str, tuple[int, int, int]] = {}
        self.causal: dict[str, bool] = {}
        self.kv_heads: dict[str, int] = {}
        self.calls = 0
        self.counts: dict[str, int] = {}
        self.problem: str | None = None

    def observe(self, module, query, key, attention_mask, scaling, is_causal, kwargs) -> None:
        self.calls += 1
        path = self.names.get(id(module))
        if path is None:
            self.problem = f"an attention call from an unnamed module ({type(module).__name__})"
            return
        for name in _UNSUPPORTED_KWARGS:
            if kwargs.get(name) is not None:
                self.problem = f"attention with '{name}' in {path}"
                return
        kind = attention_kind(path, self.encoder_decoder)
        layer = self.counts.get(kind, 0)
        self.counts[kind] = layer + 1
        if scaling is None:
            scaling = query.shape[-1] ** -0.5
        causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
        causal = bool(causal) and attention_mask is None and query.shape[2] > 1
        if kind == CROSS:
            causal = False
        # query: [B, H, Q, d]; key: [B, Hkv, K, d]; one sequence (B = 1)
        q, k = query[0], key[0]
        heads, nq, nk = q.shape[0], q.shape[1], k.shape[1]
        mask = attention_mask[0] if attention_mask is not None else None  # [1|H, Q, K]
        bias = kwargs.get("position_bias")
        bias = bias[0] if bias is not None else None  # [1|H, Q, K]
        softcap = kwargs.get("softcap")
        self.shape[kind] = (heads, nq, nk)
        self.causal[kind] = self.causal.get(kind, False) or causal or (mask is not None and _looks_causal(mask))
        self.kv_heads[kind] = k.shape[0]

        def probs(rows: torch.Tensor) -> torch.Tensor:
            return eager_probabilities(q, k, scaling, mask, causal, rows, bias, softcap).cpu()

        plan = self.plan
        want_rows = plan.cross_rows if kind == CROSS else plan.rows
        keep_layer = layer in plan.layers
        block = max(1, BLOCK_BYTES // (4 * heads * max(nk, 1)))
        if plan.needs_full_layers or keep_layer:
            # [H, Q, K] float32, built in row blocks
            out = torch.empty((heads, nq, nk), dtype=torch.float32)
            for r0 in range(0, nq, block):
                rows = torch.arange(r0, min(nq, r0 + block), device=q.device)
                out[:, r0 : r0 + len(rows)] = probs(rows)
            if plan.on_layer is not None:
                plan.on_layer(kind, layer, out)
            if plan.full:
                self.full.setdefault(kind, {})[layer] = out
            if keep_layer:
                self.layers.setdefault(kind, {})[layer] = out
            if want_rows:
                self.rows.setdefault(kind, {})[layer] = out[:, list(want_rows)].clone()
            if plan.rollout and kind != CROSS:
                self._roll(kind, fuse_heads(out, plan.head_fusion))
        else:
            if want_rows:
                rows = torch.tensor(want_rows, device=q.device)
                self.rows.setdefault(kind, {})[layer] = probs(rows)  # [H, R, K]
            if plan.rollout and kind != CROSS:
                fused = torch.empty((nq, nk), dtype=torch.float32)  # [Q, K]
                for r0 in range(0, nq, block):
                    rows = torch.arange(r0, min(nq, r0 + block), device=q.device)
                    fused[r0 : r0 + len(rows)] = fuse_heads(probs(rows), plan.head_fusion)
                self._roll(kind, fused)
        if self.progress is not None:
            self.progress(kind, layer)

    def _roll(self, kind: str, fused: torch.Tensor) -> None:
        step = rollout_step(fused, self.plan.discard_ratio, self.plan.protect)  # [N, N], rows sum to 1
        prev = self.rollout.get(kind)
        self.rollout[kind] = step if prev is None else step @ prev

    def result(self) -> dict[str, AttentionMaps]:
        out: dict[str, AttentionMaps] = {}
        for kind, (heads, nq, nk) in self.shape.items():
            full = self.full.get(kind)
            num_layers = self.counts[kind]
            rows = self.rows.get(kind)
            row_index = self.plan.cross_rows if kind == CROSS else self.plan.rows
            kvh = self.kv_heads[kind]
            out[kind] = AttentionMaps(
                kind=kind,
                num_layers=num_layers,
                num_heads=heads,
                num_queries=nq,
                num_keys=nk,
                causal=self.causal.get(kind, False),
                full=torch.stack([full[i] for i in range(num_layers)]) if full else None,
                layers=dict(self.layers.get(kind, {})),
                rows=torch.stack([rows[i] for i in range(num_layers)]) if rows else None,
                row_index=tuple(row_index) if rows else (),
                rollout=self.rollout.get(kind),
                rollout_settings=(
                    {"head_fusion": self.plan.head_fusion, "discard_ratio": self.plan.discard_ratio}
                    if kind in self.rollout
                    else {}
                ),
                kv_heads=tuple(h // (heads // kvh) for h in range(heads)) if kvh != heads else None,
            )
        return out


def _looks_causal(mask: torch.Tensor) -> bool:
    """True if an explicit mask forbids the key just after the diagonal in row 0 (a causal pattern)."""
    if mask.shape[-1] < 2 or mask.shape[-2] < 2:
        return False
    v = mask[0, 0, 1]
    return bool(~v) if mask.dtype == torch.bool else bool(v < -1e30)


def _attnviz_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kwargs):
    """Registered as ``"attnviz"``: SDPA for the output, plus the capture session's bookkeeping."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    session = _ACTIVE.get()
    if session is not None:
        session.observe(module, query, key, attention_mask, scaling, is_causal, kwargs)
    if kwargs.get("softcap") is not None:
        # SDPA has no soft-capping; fall back to the eager formula for the output.
        probs = eager_probabilities(
            query[0], key[0], scaling if scaling is not None else query.shape[-1] ** -0.5,
            attention_mask[0] if attention_mask is not None else None,
            attention_mask is None and (is_causal if is_causal is not None else getattr(module, "is_causal", True)),
            torch.arange(query.shape[2], device=query.device), None, kwargs["softcap"],
        ).to(value.dtype)
        v = value[0]
        if v.shape[0] != probs.shape[0]:
            v = v.repeat_interleave(probs.shape[0] // v.shape[0], dim=0)
        return torch.matmul(probs, v).unsqueeze(0).transpose(1, 2), None
    return sdpa_attention_forward(
        module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs
    )


_REGISTERED = False


def _register() -> None:
    global _REGISTERED
    if _REGISTERED:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(IMPLEMENTATION, _attnviz_attention)
    AttentionMaskInterface.register(IMPLEMENTATION, sdpa_mask)
    _REGISTERED = True


def _set_implementation(model, name: str) -> bool:
    try:
        model.set_attn_implementation(name)
    except (ValueError, KeyError, ImportError, NotImplementedError):
        return False
    return model.config._attn_implementation == name


def is_encoder_decoder(model) -> bool:
    return bool(getattr(model.config, "is_encoder_decoder", False))


def capture(model, inputs: Mapping[str, torch.Tensor], plan: CapturePlan = FULL, progress=None) -> Capture:
    """Run ``model(**inputs)`` once (batch of one) and capture attention as ``plan`` asks.

    Args:
        model: a loaded transformers ``PreTrainedModel`` in eval mode.
        inputs: model inputs for one sequence (``input_ids``/``pixel_values``...).
        plan: what to keep (see :class:`CapturePlan`).
        progress: optional callback ``(kind, layer)`` after each attention call.

    Returns:
        :class:`Capture` with float32 CPU maps per attention kind; probabilities
        equal transformers' eager ``output_attentions`` (fp32: max abs diff <= 1e-5).

    Raises:
        ModelError: the model produced no attention at all.
    """
    _register()
    names = {id(m): name for name, m in model.named_modules()}
    encdec = is_encoder_decoder(model)
    previous = model.config._attn_implementation
    session = _Session(plan, names, encdec, progress)
    if _set_implementation(model, IMPLEMENTATION):
        token = _ACTIVE.set(session)
        try:
            with torch.inference_mode():
                outputs = model(**inputs)
        finally:
            _ACTIVE.reset(token)
            _set_implementation(model, previous)
        if session.calls and session.problem is None:
            return Capture(session.result(), "sdpa+attnviz", outputs)
    return _capture_eager(model, inputs, plan, encdec, previous)


def _capture_eager(model, inputs, plan: CapturePlan, encdec: bool, previous: str) -> Capture:
    """Fallback: eager attention with ``output_attentions=True`` (keeps every map in memory)."""
    switched = previous != "eager" and _set_implementation(model, "eager")
    try:
        with torch.inference_mode():
            outputs = model(**inputs, output_attentions=True)
    finally:
        if switched:
            _set_implementation(model, previous)
    groups: dict[str, tuple] = {}
    if encdec:
        groups = {
            ENCODER: getattr(outputs, "encoder_attentions", None),
            DECODER: getattr(outputs, "decoder_attentions", None),
            CROSS: getattr(outputs, "cross_attentions", None),
        }
    else:
        groups = {SELF: getattr(outputs, "attentions", None)}
    result: dict[str, AttentionMaps] = {}
    for kind, maps in groups.items():
        if not maps or any(m is None for m in maps):
            continue
        full = torch.stack([m[0].float().cpu() for m in maps])  # [L, H, Q, K]
        session = _Session(plan, {}, encdec)
        for layer in range(full.shape[0]):
            if plan.on_layer is not None:
                plan.on_layer(kind, layer, full[layer])
            if plan.rollout and kind != CROSS:
                session._roll(kind, fuse_heads(full[layer], plan.head_fusion))
        rows = plan.cross_rows if kind == CROSS else plan.rows
        L, H, Q, K = full.shape
        result[kind] = AttentionMaps(
            kind=kind, num_layers=L, num_heads=H, num_queries=Q, num_keys=K,
            causal=kind in (DECODER,) or (kind == SELF and bool(getattr(model.config, "is_decoder", False) or _is_causal_lm(model))),
            full=full if plan.full else None,
            layers={l: full[l] for l in plan.layers if l < L},
            rows=full[:, :, list(rows)].clone() if rows else None,
            row_index=tuple(rows),
            rollout=session.rollout.get(kind),
            rollout_settings={"head_fusion": plan.head_fusion, "discard_ratio": plan.discard_ratio} if plan.rollout else {},
        )
    if not result:
        raise ModelError(f"{type(model).__name__} returned no attention probabilities (is it an attention model?)")
    return Capture(result, "eager", outputs)


def _is_causal_lm(model) -> bool:
    return any(a.endswith("ForCausalLM") or a.endswith("LMHeadModel") for a in (model.config.architectures or []))

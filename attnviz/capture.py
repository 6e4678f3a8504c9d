"""Attention capture: run a model once and keep the attention probabilities a plan asks for.

The model keeps a fast attention path (PyTorch SDPA) for its own output. A custom
function registered under the name ``"attnviz"`` in transformers'
``AttentionInterface`` receives each attention call's query/key/value states,
mask and scaling, and recomputes the probabilities exactly as transformers' eager
path does (``softmax(q @ k^T * scaling [softcap] [+ position bias] [+ mask])``),
in row blocks, only for what the :class:`CapturePlan` needs:

- *focus* (``rows``): a few query rows in every layer and head, O(L*H*N) memory;
  the layer's output still comes from SDPA;
- *layer* (``layers``): every head of the chosen layers, O(H*N^2) per chosen layer;
- *aggregate* (``rollout``): head-fused maps and the rollout accumulated layer by
  layer in two ``[N, N]`` buffers, O(N^2); no layer's ``[H, N, N]`` ever exists;
- *full* / ``on_layer``: every layer, either kept (O(L*H*N^2)) or handed to a
  callback one layer at a time (streaming to a file, see
  :class:`attnviz.report.AttentionWriter`).

When a call needs every row of a layer anyway (layer, aggregate, full), the layer's
output is computed from those probabilities (``P @ V``, row block by row block)
instead of a second pass through SDPA. Key columns that the mask rules out for a
whole row block (the causal upper triangle, outside a sliding window) are neither
computed nor written: maps are allocated as zero-filled anonymous memory, so the
pages of a causal model's upper triangle are never touched and cost no RAM.

Models that do not dispatch through the ``AttentionInterface`` (e.g. DeBERTa-v2,
MPNet, Falcon, ALiBi models such as BLOOM and MPT) fall back to eager
``output_attentions=True`` (``Capture.backend == "eager"``, with a one-line
``Capture.notice``). The fallback really is eager: the model is switched (or its
configs forced) to ``"eager"`` for the call, attention modules built for another
implementation are refused in one line (:func:`non_eager_modules`; load such a
model with ``attn_implementation="eager"``, as :func:`attnviz.models.load_model_for_capture`
does), and the returned maps are checked (rows sum to 1, nothing above the
diagonal of a causal model). :mod:`attnviz.verify` compares the capture with
this eager reference at run time for model types the tests do not cover.

Attention calls are attributed to a kind by module path
(``decoder.block.3.layer.1.EncDecAttention`` is cross-attention) and to a layer
by call order within that kind (which also serves ALBERT's shared layers).
Captured maps are float32 on the CPU; they move there row block by row block as
they are produced.
"""

from __future__ import annotations

import contextvars
import math
import mmap
import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch

from attnviz.methods.rollout import HEAD_FUSIONS, fuse_heads, rollout_step
from attnviz.errors import AttentionRefused, ModelError, UsageError
from attnviz.types import CROSS, DECODER, ENCODER, SELF, AttentionMaps

IMPLEMENTATION = "attnviz"
#: Bytes of float32 scores one row block may use (``heads * rows * keys * 4``).
BLOCK_BYTES = 1 << 24
#: Rows per block of the rollout's matrix product.
PRODUCT_ROWS = 512
#: Tensors at least this large are allocated as zero-filled anonymous memory
#: (pages the capture never writes, e.g. a causal map's upper triangle, stay unbacked).
LAZY_ZERO_BYTES = 1 << 22
_MIN32 = torch.finfo(torch.float32).min


@dataclass(frozen=True)
class CapturePlan:
    """What to keep from one forward pass.

    - ``full``: every layer's ``[heads, query, key]`` map (memory O(L*H*N^2)).
    - ``layers``: keep these layers' maps in full (O(H*N^2) each); 0-based,
      non-negative; applies to every attention kind.
    - ``rows``: keep these query positions in every layer and head (O(L*H*N));
      ``cross_rows`` does the same for cross-attention (decoder positions).
      Negative positions count from the end; a kind keeps the rows it has
      (``AttentionMaps.row_index``), e.g. a short decoder keeps fewer.
    - ``rollout``: accumulate attention rollout layer by layer with
      ``head_fusion`` and ``discard_ratio`` (O(N^2)); ``protect`` lists key
      positions (e.g. [CLS]) never discarded. Not for cross-attention.
    - ``on_layer``: called with ``(kind, layer, probs[heads, query, key])`` for
      every layer of every kind, in order within a kind, e.g. to stream maps to
      disk (:class:`attnviz.report.AttentionWriter`); the maps are not kept
      unless ``full`` or ``layers`` asks for them.
    - ``head_maps``: keep one head's ``[query, key]`` map, or the mean of the
      layer's heads (head ``None``), for these ``(layer, head)`` pairs: O(N^2)
      each, never the layer's ``[heads, query, key]`` (``AttentionMaps.head_maps``).
      Applies to every attention kind.
    - ``follow``: called after each layer with ``(kind, layer, rows[heads, R, key])``
      (the ``rows``/``cross_rows`` of that layer); it returns ``(head, score)`` or
      None. Per kind, the ``[query, key]`` map of the best-scoring ``(layer, head)``
      so far (first wins ties) is kept in ``head_maps``, the previous one dropped:
      a view of "the focus token's top head" in one pass and O(N^2) memory.
    - ``need_outputs``: set False when the caller does not use the model's
      output (``Capture.outputs``). For a single-stack model whose plan only
      keeps ``layers``, the forward pass then stops right after the last
      requested layer (``Capture.outputs`` is None).
    - ``batch``: accept a padded batch of sequences (``input_ids`` ``[B, N]``
      with an ``attention_mask``). Only ``on_layer`` may be used with it; it then
      receives ``(kind, layer, probs[B, heads, query, key])`` per layer and the
      returned maps hold shapes only. Padding keys get probability exactly 0;
      padding query rows are computed but mean nothing (callers drop them).
      Used by the corpus statistics of ``attnviz heads``.
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
    need_outputs: bool = True
    head_maps: frozenset = frozenset()
    follow: Callable[[str, int, torch.Tensor], tuple[int | None, float] | None] | None = None
    batch: bool = False

    @property
    def needs_full_layers(self) -> bool:
        return self.full or self.on_layer is not None


FULL = CapturePlan(full=True)


@dataclass
class Capture:
    """What :func:`capture` returns.

    ``attention``: the maps per attention kind; ``backend``: ``"sdpa+attnviz"``
    or ``"eager"`` (the fallback); ``outputs``: the model output (None when the
    forward stopped early, see ``CapturePlan.need_outputs``); ``notice``: one
    line for the user when the eager fallback was used (else None);
    ``stopped_early``: the forward stopped after the last needed layer.
    """

    attention: dict[str, AttentionMaps]
    backend: str
    outputs: Any
    notice: str | None = None
    stopped_early: bool = False


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
    call = _Call(query, key, None, scaling, mask, causal, position_bias, softcap, q_offset)
    rows = torch.as_tensor(rows, dtype=torch.long, device=query.device)
    return call.probs(rows, 0, call.nk)


def _lazy_zeros(shape: tuple[int, ...]) -> torch.Tensor:
    """A zero-filled float32 CPU tensor; large ones are anonymous memory the OS backs only where written."""
    numel = math.prod(shape)
    if numel * 4 < LAZY_ZERO_BYTES:
        return torch.zeros(shape, dtype=torch.float32)
    buf = mmap.mmap(-1, numel * 4)  # zero-filled by the OS, pages allocated on first write
    return torch.frombuffer(buf, dtype=torch.float32, count=numel).view(shape)


class _Call:
    """One attention call on one sequence: the states and how eager attention scores them.

    ``query``: ``[H, Q, d]``; ``key``/``value``: ``[Hkv, K, d]``; ``mask``:
    ``[1|H, Q, K]`` boolean (True = attend) or additive float; ``bias``:
    ``[1|H, Q, K]`` additive position bias.
    """

    def __init__(self, query, key, value, scaling, mask, causal, bias=None, softcap=None, q_offset=0):
        self.q = query
        self.heads, self.nq, self.dim = query.shape
        self.kv_heads, self.nk = key.shape[0], key.shape[1]
        if self.heads % self.kv_heads:
            raise ModelError(f"{self.heads} query heads are not a multiple of {self.kv_heads} key/value heads")
        self.group = self.heads // self.kv_heads
        self.key = key
        self.v = value
        self.scaling = scaling
        if mask is not None and mask.shape[-1] > self.nk:
            mask = mask[..., : self.nk]
        self.mask = mask
        self.causal = causal and mask is None
        self.bias = bias[..., : self.nk] if bias is not None and bias.shape[-1] > self.nk else bias
        self.softcap = softcap
        self.q_offset = q_offset
        self._k32: torch.Tensor | None = None
        self._v32: torch.Tensor | None = None

    @property
    def k(self) -> torch.Tensor:
        """float32 contiguous keys ``[Hkv, K, d]``, made once per call."""
        if self._k32 is None:
            self._k32 = self.key.float().contiguous()
        return self._k32

    def head(self, h: int) -> "_Call":
        """The same call restricted to query head ``h`` (and the key/value head it reads)."""
        kv = h // self.group

        def pick(t):
            return t[h : h + 1] if t is not None and t.shape[0] == self.heads and self.heads > 1 else t

        one = _Call(self.q[h : h + 1], self.key[kv : kv + 1], self.v[kv : kv + 1], self.scaling, pick(self.mask), self.causal,
                    pick(self.bias), self.softcap, self.q_offset)
        if self._k32 is not None:
            one._k32 = self._k32[kv : kv + 1]
        return one

    # -- rows and key ranges ------------------------------------------------

    def block_rows(self, r0: int) -> int:
        """Rows of the block starting at ``r0``: as many as keep ``heads * rows * keys`` floats within BLOCK_BYTES."""
        cap = max(1, BLOCK_BYTES // (4 * self.heads))
        if self.mask is None and self.causal:  # keys [0, r0 + rows): rows * (r0 + rows) <= cap
            rows = int((math.sqrt(r0 * r0 + 4 * cap) - r0) / 2)
        else:
            rows = cap // max(self.nk, 1)
        return max(1, min(self.nq - r0, rows))

    def blocks(self):
        """``(r0, r1, lo, hi)`` for every row block: rows ``[r0, r1)`` attend only to keys ``[lo, hi)``."""
        r0 = 0
        while r0 < self.nq:
            r1 = r0 + self.block_rows(r0)
            lo, hi = self.key_range(r0, r1)
            yield r0, r1, lo, hi
            r0 = r1

    def key_range(self, r0: int, r1: int) -> tuple[int, int]:
        """Key columns ``[lo, hi)`` outside of which every query row in ``[r0, r1)`` has probability exactly 0."""
        if self.mask is None:
            if self.causal:
                return 0, max(1, min(self.nk, r1 + self.q_offset))
            return 0, self.nk
        m = self.mask[:, r0:r1]
        allowed = m if m.dtype == torch.bool else m > torch.finfo(m.dtype).min / 2
        if not bool(allowed.any(dim=-1).all()):
            return 0, self.nk  # a fully masked row: eager spreads it uniformly over every key
        cols = allowed.any(dim=-2).any(dim=0).nonzero()
        return int(cols[0]), int(cols[-1]) + 1

    # -- probabilities --------------------------------------------------------

    def probs(self, rows, lo: int, hi: int, scratch: "_Scratch | None" = None) -> torch.Tensor:
        """float32 ``[H, R, hi - lo]`` probabilities of query ``rows`` (a slice or an index tensor) over keys ``[lo, hi)``.

        Columns outside ``[lo, hi)`` must have probability exactly 0 (see :meth:`key_range`).
        With ``scratch`` the result lives in a reused buffer, valid until the next call.
        """
        q = self.q[:, rows]  # [H, R, d]
        r, kr = q.shape[1], hi - lo
        qg = q.reshape(self.kv_heads, self.group * r, self.dim)  # query head h reads kv head h // group
        if qg.dtype != torch.float32:
            qg = qg.float()
        kt = self.k[:, lo:hi].transpose(-1, -2)
        if scratch is not None:
            s = torch.matmul(qg, kt, out=scratch.get("scores", (self.kv_heads, self.group * r, kr), qg.device))
        else:
            s = torch.matmul(qg, kt)
        s = s.view(self.heads, r, kr)
        s.mul_(self.scaling)
        if self.softcap is not None:
            s.div_(self.softcap).tanh_().mul_(self.softcap)
        if self.bias is not None:
            s.add_(self.bias[:, rows, lo:hi])
        if self.mask is not None:
            m = self.mask[:, rows, lo:hi]
            if m.dtype == torch.bool:
                s.masked_fill_(~m, _MIN32)
            else:
                s.add_(m)
        elif self.causal and r > 0:
            if isinstance(rows, slice):
                # row r0 + a may not see key lo + c when c > a + delta: only columns > delta need masking
                delta = (rows.start or 0) + self.q_offset - lo
                c0 = max(0, delta + 1)
                if c0 < kr:
                    future = (torch.arange(c0, kr, device=s.device)[None, :]
                              > torch.arange(r, device=s.device)[:, None] + delta)
                    s[:, :, c0:].masked_fill_(future, _MIN32)
            else:
                qpos = torch.arange(self.nq, device=s.device)[rows]
                kpos = torch.arange(lo, hi, device=s.device)
                s.masked_fill_(kpos[None, :] > (qpos[:, None] + self.q_offset), _MIN32)
        if scratch is not None:
            return torch._softmax(s, -1, False, out=scratch.get("probs", (self.heads, r, kr), s.device))
        return torch.softmax(s, dim=-1)

    def output(self, p: torch.Tensor, lo: int, hi: int, scratch: "_Scratch | None" = None) -> torch.Tensor:
        """``P @ V`` of a row block: ``[H, R, hi - lo]`` -> ``[H, R, dv]`` (float32)."""
        if self._v32 is None:
            self._v32 = self.v.float().contiguous()
        r = p.shape[1]
        pg = p.view(self.kv_heads, self.group * r, hi - lo)
        vs = self._v32[:, lo:hi]
        if scratch is not None:
            o = torch.matmul(pg, vs, out=scratch.get("output", (self.kv_heads, self.group * r, vs.shape[-1]), p.device))
        else:
            o = torch.matmul(pg, vs)
        return o.view(self.heads, r, -1)


class _Scratch:
    """Reusable float32 work buffers (scores, probabilities, ...) so that row blocks allocate nothing."""

    def __init__(self):
        self._bufs: dict[str, torch.Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...], device=None) -> torch.Tensor:
        n = math.prod(shape)
        buf = self._bufs.get(name)
        if buf is None or buf.numel() < n or buf.device != torch.device(device or "cpu"):
            buf = torch.empty(max(n, 1), dtype=torch.float32, device=device)
            self._bufs[name] = buf
        return buf[:n].view(shape)

    def clear(self) -> None:
        self._bufs.clear()


def _fuse_into(p: torch.Tensor, head_fusion: str, out: torch.Tensor) -> torch.Tensor:
    """:func:`attnviz.methods.rollout.fuse_heads` of ``p`` (contiguous ``[H, R, K]``) written into ``out`` (``[R, K]``).

    The mean is a matrix-vector product (a reduction over the outer dimension is
    many times slower in PyTorch on CPU); it equals ``p.mean(0)`` up to float
    rounding (~1e-7).
    """
    heads = p.shape[0]
    if head_fusion == "mean":
        ones = torch.ones((1, heads), dtype=p.dtype, device=p.device)
        torch.matmul(ones, p.reshape(heads, -1), out=out.view(1, -1))
        return out.div_(heads)
    if head_fusion == "max":
        return torch.amax(p, 0, out=out)
    return torch.amin(p, 0, out=out)


# ---------------------------------------------------------------------------
# rollout, accumulated in place


def _check_rollout_settings(plan: CapturePlan) -> None:
    if plan.rollout:
        if plan.head_fusion not in HEAD_FUSIONS:
            raise UsageError(f"--head-fusion must be one of {', '.join(HEAD_FUSIONS)}, not '{plan.head_fusion}'")
        if not 0.0 <= plan.discard_ratio < 1.0:
            raise UsageError(f"--discard-ratio must be in [0, 1), not {plan.discard_ratio}")


def _is_lower(a: torch.Tensor) -> bool:
    """True if the square ``a`` is lower triangular (no nonzero above the diagonal), checked block by block."""
    n = a.shape[0]
    for r0 in range(0, n, PRODUCT_ROWS):
        r1 = min(n, r0 + PRODUCT_ROWS)
        if r1 < n and bool(a[r0:r1, r1:].any()):
            return False
        if bool(torch.triu(a[r0:r1, r0:r1], diagonal=1).any()):
            return False
    return True


def _left_multiply_(s: torch.Tensor, r: torch.Tensor, s_lower: bool, r_lower: bool, scratch=None) -> torch.Tensor:
    """``s <- s @ r`` row block by row block, skipping the zero triangles of lower-triangular factors."""
    n = s.shape[0]
    for r0 in range(0, n, PRODUCT_ROWS):
        r1 = min(n, r0 + PRODUCT_ROWS)
        inner = r1 if s_lower else n  # s[r0:r1, r1:] == 0
        cols = inner if r_lower else r.shape[1]  # r[:inner, inner:] == 0
        tmp = scratch.get("product", (r1 - r0, cols)) if scratch is not None else None
        s[r0:r1, :cols] = torch.matmul(s[r0:r1, :inner], r[:inner, :cols], out=tmp)
    return s


# ---------------------------------------------------------------------------
# the session that one capture() call runs


_ACTIVE: contextvars.ContextVar["_Session | None"] = contextvars.ContextVar("attnviz_capture", default=None)
_UNSUPPORTED_KWARGS = ("s_aux", "sinks")


class _StopForward(Exception):
    """Raised from the attention function after the last layer a ``need_outputs=False`` plan needs."""


class _Session:
    def __init__(self, plan: CapturePlan, names: Mapping[int, str], encoder_decoder: bool, progress=None,
                 stop_after: int | None = None):
        self.plan = plan
        self.names = names
        self.encoder_decoder = encoder_decoder
        self.progress = progress
        self.stop_after = stop_after
        self.full: dict[str, dict[int, tuple[torch.Tensor, list]]] = {}
        self.layers: dict[str, dict[int, torch.Tensor]] = {}
        self.rows: dict[str, dict[int, torch.Tensor]] = {}
        self.rollout: dict[str, torch.Tensor] = {}
        self.rollout_lower: dict[str, bool] = {}
        self.shape: dict[str, tuple[int, int, int]] = {}
        self.causal: dict[str, bool] = {}
        self.kv_heads: dict[str, int] = {}
        self.row_index: dict[str, tuple[int, ...]] = {}
        self.head_maps: dict[str, dict[tuple[int, int | None], torch.Tensor]] = {}
        self.followed: dict[str, tuple[float, tuple[int, int | None], torch.Tensor]] = {}
        self.scratch = _Scratch()
        self.calls = 0
        self.counts: dict[str, int] = {}
        self.problem: str | None = None
        self.causal_skipped = False  # transformers skipped building a causal mask in this forward (see _attnviz_mask)

    def eager_causal(self, module, attention_mask, is_causal) -> bool | None:
        """Whether a call is causal *as eager attention computes it*; ``is_causal`` as given where that is not in doubt.

        Eager attention applies exactly the mask it is given. Under SDPA, transformers hands a ``None`` mask
        either when it skipped a causal mask (then SDPA relies on ``is_causal``) or for full attention; SDPA then
        reads the module's ``is_causal`` and defaults to causal where a module has none. That default is
        wrong for some models (Splinter's encoder has no ``is_causal``: SDPA runs it causally, eager not)
        and the module's flag for others (NLLB-MoE's decoder self-attention says ``False`` while its causal
        mask was skipped). So, with no mask and no explicit ``is_causal``: causal exactly when a causal
        mask was skipped in this forward (never for encoder or cross-attention), else the module's flag, else not.
        """
        if attention_mask is not None or is_causal is not None:
            return is_causal
        path = self.names.get(id(module))
        kind = attention_kind(path, self.encoder_decoder) if path is not None else None
        if kind in (ENCODER, CROSS):
            return False
        if self.causal_skipped:
            return True
        own = getattr(module, "is_causal", None)
        return own if isinstance(own, bool) else False

    def attend(self, module, query, key, value, attention_mask, dropout, scaling, is_causal, kwargs):
        """Capture what the plan needs from one attention call; return the call's output if computed here, else None."""
        self.calls += 1
        path = self.names.get(id(module))
        if path is None:
            self.problem = f"an attention call from an unnamed module ({type(module).__name__})"
            return None
        for name in _UNSUPPORTED_KWARGS:
            if kwargs.get(name) is not None:
                self.problem = f"attention with '{name}' in {path}"
                return None
        if query.shape[0] != 1 and not self.plan.batch:
            self.problem = f"a batch of {query.shape[0]} sequences in {path}"
            return None
        kind = attention_kind(path, self.encoder_decoder)
        layer = self.counts.get(kind, 0)
        self.counts[kind] = layer + 1
        if scaling is None:
            scaling = query.shape[-1] ** -0.5
        causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
        causal = bool(causal) and attention_mask is None and query.shape[2] > 1 and kind != CROSS
        mask = attention_mask[0] if attention_mask is not None else None  # [1|H, Q, K]
        bias = kwargs.get("position_bias")
        bias = bias[0] if bias is not None else None  # [1|H, Q, K]
        softcap = kwargs.get("softcap")
        if self.plan.batch:
            return self._attend_batch(kind, layer, query, key, value, attention_mask, causal, scaling,
                                      kwargs.get("position_bias"), softcap)
        # query: [B, H, Q, d]; key/value: [B, Hkv, K, d]; one sequence (B = 1)
        call = _Call(query[0], key[0], value[0], scaling, mask, causal, bias, softcap)
        heads, nq, nk = call.heads, call.nq, call.nk
        self.shape[kind] = (heads, nq, nk)
        self.causal[kind] = self.causal.get(kind, False) or causal or (mask is not None and _looks_causal(mask))
        self.kv_heads[kind] = call.kv_heads

        plan = self.plan
        want_rows = plan.cross_rows if kind == CROSS else plan.rows
        keep = plan.needs_full_layers or layer in plan.layers
        roll = plan.rollout and kind != CROSS
        heads_here = [h for l, h in plan.head_maps if l == layer and (h is None or h < heads)]
        mean = None in heads_here
        stopping = self.stop_after is not None and kind == SELF and layer >= self.stop_after
        own_output = (keep or roll or mean or softcap is not None) and not (dropout and module.training) and not stopping
        result = None
        if keep or roll or own_output or mean:
            result = self._all_rows(call, kind, layer, keep, roll, own_output, value.dtype, mean)
        for h in heads_here:
            if h is not None:
                self.head_maps.setdefault(kind, {})[(layer, h)] = self._one_head(call, h)
        want_rows = tuple(r for r in want_rows if -nq <= r < nq)  # rows this kind has (decoders may be shorter)
        self.row_index[kind] = want_rows
        if want_rows:
            rows = torch.tensor([r % nq for r in want_rows], dtype=torch.long)
            full = self.layers.get(kind, {}).get(layer)
            if full is None and kind in self.full and layer in self.full[kind]:
                full = self.full[kind][layer][0]
            if full is not None:
                self.rows.setdefault(kind, {})[layer] = full[:, rows].clone()
            elif result is None and set(rows.tolist()) == set(range(nq)) and not (dropout and module.training) and not stopping:
                # the plan wants every query row (one new token of a KV-cached decoding step): the layer's
                # output is P @ V from these probabilities, instead of a second pass through SDPA
                p = call.probs(slice(0, nq), 0, nk)  # [H, Q, K]
                self.rows.setdefault(kind, {})[layer] = (p if rows.tolist() == list(range(nq)) else p[:, rows.to(p.device)]).cpu()
                result = call.output(p, 0, nk).transpose(0, 1).to(value.dtype)
            else:
                self.rows.setdefault(kind, {})[layer] = call.probs(rows.to(query.device), 0, nk).cpu()  # [H, R, K]
            if plan.follow is not None:
                self._follow(call, kind, layer, self.rows[kind][layer])
        if self.progress is not None:
            self.progress(kind, layer)
        if stopping:
            raise _StopForward()
        if result is not None:
            return result.unsqueeze(0)  # [1, Q, H, dv], as SDPA returns it
        return None

    def _one_head(self, call: _Call, head: int) -> torch.Tensor:
        """float32 ``[Q, K]`` probabilities of one head, row block by row block (never the layer's ``[H, Q, K]``)."""
        one = call.head(head)
        out = _lazy_zeros((one.nq, one.nk))
        for r0, r1, lo, hi in one.blocks():
            out[r0:r1, lo:hi] = one.probs(slice(r0, r1), lo, hi, self.scratch)[0]
        return out

    def _follow(self, call: _Call, kind: str, layer: int, rows: torch.Tensor) -> None:
        """Ask ``plan.follow`` about this layer; keep its head's map if it scores best so far for ``kind``."""
        pick = self.plan.follow(kind, layer, rows)
        if pick is None:
            return
        head, score = pick
        best = self.followed.get(kind)
        if best is not None and not score > best[0]:
            return
        self.followed.pop(kind, None)  # free the old map before making the new one
        if head is None:
            m = self._one_head(call, 0)
            for h in range(1, call.heads):
                m.add_(self._one_head(call, h))
            m.div_(call.heads)
        else:
            m = self._one_head(call, head)
        self.followed[kind] = (float(score), (layer, head), m)

    def _attend_batch(self, kind, layer, query, key, value, mask, causal, scaling, bias, softcap):
        """A batch plan's attention call: eager probabilities of every sequence at once, ``on_layer``, ``P @ V``.

        ``query``: ``[B, H, Q, d]``; ``key``/``value``: ``[B, Hkv, K, d]``; ``mask``:
        ``[B, 1|H, Q, K]`` boolean (True = attend) or additive float, or None.
        Returns the layer output ``[B, Q, H, dv]`` (as SDPA returns it) in ``value``'s dtype.
        """
        b, heads, nq, dim = query.shape
        kv_heads, nk = key.shape[1], key.shape[2]
        if heads % kv_heads:
            raise ModelError(f"{heads} query heads are not a multiple of {kv_heads} key/value heads")
        group = heads // kv_heads
        s = torch.matmul(query.float().reshape(b, kv_heads, group * nq, dim), key.float().transpose(-1, -2))
        s = s.view(b, heads, nq, nk).mul_(scaling)
        if softcap is not None:
            s.div_(softcap).tanh_().mul_(softcap)
        if bias is not None:
            s.add_(bias[..., :nk])
        if mask is not None:
            mask = mask[..., :nk]
            if mask.dtype == torch.bool:
                s.masked_fill_(~mask, _MIN32)
            else:
                s.add_(mask)
        elif causal:
            s.masked_fill_(torch.ones(nq, nk, dtype=torch.bool, device=s.device).triu_(1), _MIN32)
        p = torch.softmax(s, dim=-1)  # [B, H, Q, K] float32
        self.shape[kind] = (heads, nq, nk)
        self.causal[kind] = self.causal.get(kind, False) or causal or (mask is not None and _looks_causal(mask[0]))
        self.kv_heads[kind] = kv_heads
        self.plan.on_layer(kind, layer, p if p.device.type == "cpu" else p.cpu())
        out = torch.matmul(p.view(b, kv_heads, group * nq, nk), value.float()).view(b, heads, nq, -1)
        if self.progress is not None:
            self.progress(kind, layer)
        return out.transpose(1, 2).to(value.dtype)

    def _all_rows(self, call: _Call, kind: str, layer: int, keep: bool, roll: bool, own_output: bool, dtype, mean: bool = False):
        """Every row of one call, block by block: the kept layer map, the head-fused rollout map, the head mean, the output."""
        heads, nq, nk = call.heads, call.nq, call.nk
        out = _lazy_zeros((heads, nq, nk)) if keep else None
        fused = _lazy_zeros((nq, nk)) if roll else None
        head_mean = _lazy_zeros((nq, nk)) if mean else None
        extents: list[tuple[int, int, int, int]] = []
        result = None
        if own_output:
            result = torch.empty((nq, heads, call.v.shape[-1]), dtype=dtype, device=call.v.device)
        scratch = self.scratch
        for r0, r1, lo, hi in call.blocks():
            p = call.probs(slice(r0, r1), lo, hi, scratch)  # [H, b, hi - lo] float32, in scratch
            extents.append((r0, r1, lo, hi))
            if result is not None:
                result[r0:r1] = call.output(p, lo, hi, scratch).transpose(0, 1)
            if out is not None:
                out[:, r0:r1, lo:hi] = p  # to the CPU as it is produced
            if fused is not None:
                fused[r0:r1, lo:hi] = _fuse_into(p, self.plan.head_fusion, scratch.get("fused", (r1 - r0, hi - lo), p.device))
            if head_mean is not None:
                head_mean[r0:r1, lo:hi] = _fuse_into(p, "mean", scratch.get("mean", (r1 - r0, hi - lo), p.device))
        plan = self.plan
        if out is not None:
            if plan.on_layer is not None:
                plan.on_layer(kind, layer, out)
            if plan.full:
                self.full.setdefault(kind, {})[layer] = (out, extents)
            if layer in plan.layers:
                self.layers.setdefault(kind, {})[layer] = out
        if fused is not None:
            self._roll(kind, fused)
        if head_mean is not None:
            self.head_maps.setdefault(kind, {})[(layer, None)] = head_mean
        return result

    def _roll(self, kind: str, fused: torch.Tensor) -> None:
        """Fold one layer's head-fused map (float32 ``[N, N]``, consumed) into the rollout of ``kind``."""
        step = rollout_step(fused, self.plan.discard_ratio, self.plan.protect, inplace=True)  # rows sum to 1
        lower = _is_lower(step)
        prev = self.rollout.get(kind)
        if prev is not None:
            step = _left_multiply_(step, prev, lower, self.rollout_lower[kind], self.scratch)
            lower = lower and self.rollout_lower[kind]
        self.rollout[kind] = step
        self.rollout_lower[kind] = lower

    def result(self, num_layers: Mapping[str, int] | None = None) -> dict[str, AttentionMaps]:
        self.scratch.clear()
        out: dict[str, AttentionMaps] = {}
        for kind, (heads, nq, nk) in self.shape.items():
            count = (num_layers or {}).get(kind, self.counts[kind])
            rows = self.rows.get(kind)
            row_index = self.row_index.get(kind, ())
            kvh = self.kv_heads[kind]
            out[kind] = AttentionMaps(
                kind=kind,
                num_layers=count,
                num_heads=heads,
                num_queries=nq,
                num_keys=nk,
                causal=self.causal.get(kind, False),
                full=self._stack_full(kind),
                layers=dict(self.layers.get(kind, {})),
                rows=torch.stack([rows[i] for i in range(len(rows))]) if rows else None,
                row_index=tuple(row_index) if rows else (),
                rollout=self.rollout.get(kind),
                rollout_settings=(
                    {"head_fusion": self.plan.head_fusion, "discard_ratio": self.plan.discard_ratio}
                    if kind in self.rollout
                    else {}
                ),
                kv_heads=tuple(h // (heads // kvh) for h in range(heads)) if kvh != heads else None,
                head_maps={**self.head_maps.get(kind, {}),
                           **({self.followed[kind][1]: self.followed[kind][2]} if kind in self.followed else {})},
            )
        return out

    def _stack_full(self, kind: str) -> torch.Tensor | None:
        """``[L, H, Q, K]`` from the per-layer maps, copying only their written extents (then freeing each layer)."""
        layers = self.full.get(kind)
        if not layers:
            return None
        n = len(layers)
        first = layers[0][0]
        full = _lazy_zeros((n, *first.shape))
        for i in range(n):
            src, extents = layers[i]
            for r0, r1, lo, hi in extents:
                full[i, :, r0:r1, lo:hi] = src[:, r0:r1, lo:hi]
            kept = self.layers.get(kind, {})
            if i in kept:
                kept[i] = full[i]
            layers[i] = None  # free the layer as soon as it is copied
        self.full.pop(kind)
        return full


def _looks_causal(mask: torch.Tensor) -> bool:
    """True if an explicit mask forbids the key just after the diagonal in row 0 (a causal pattern)."""
    if mask.shape[-1] < 2 or mask.shape[-2] < 2:
        return False
    v = mask[0, 0, 1]
    return bool(~v) if mask.dtype == torch.bool else bool(v < -1e30)


def _attnviz_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kwargs):
    """Registered as ``"attnviz"``: SDPA for the output (unless the capture computed it), plus the capture's bookkeeping."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    session = _ACTIVE.get()
    if session is not None:
        is_causal = session.eager_causal(module, attention_mask, is_causal)
        out = session.attend(module, query, key, value, attention_mask, dropout, scaling, is_causal, kwargs)
        if out is not None:
            return out, None
    if kwargs.get("softcap") is not None:
        # SDPA has no soft-capping: the eager formula, row block by row block.
        causal = attention_mask is None and query.shape[2] > 1 and bool(
            is_causal if is_causal is not None else getattr(module, "is_causal", True)
        )
        bias = kwargs.get("position_bias")
        call = _Call(
            query[0], key[0], value[0], scaling if scaling is not None else query.shape[-1] ** -0.5,
            attention_mask[0] if attention_mask is not None else None, causal,
            bias[0] if bias is not None else None, kwargs["softcap"],
        )
        out = torch.empty((call.nq, call.heads, value.shape[-1]), dtype=value.dtype, device=value.device)
        scratch = _Scratch()
        for r0, r1, lo, hi in call.blocks():
            out[r0:r1] = call.output(call.probs(slice(r0, r1), lo, hi, scratch), lo, hi, scratch).transpose(0, 1)
        return out.unsqueeze(0), None
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

    def _attnviz_mask(*args, **kwargs):
        """SDPA's mask; notes in the active capture when a causal mask was skipped (``None``: "rely on is_causal")."""
        mask = sdpa_mask(*args, **kwargs)
        session = _ACTIVE.get()
        if mask is None and session is not None and kwargs.get("allow_is_causal_skip", True):
            session.causal_skipped = True
        return mask

    AttentionInterface.register(IMPLEMENTATION, _attnviz_attention)
    AttentionMaskInterface.register(IMPLEMENTATION, _attnviz_mask)
    _REGISTERED = True


def _set_implementation(model, name: str) -> bool:
    try:
        model.set_attn_implementation(name)
    except (ValueError, KeyError, ImportError, NotImplementedError):
        return False
    return model.config._attn_implementation == name


def takes_attnviz(model) -> bool:
    """True if ``model`` accepts attnviz's attention function (it dispatches through transformers' AttentionInterface).

    The model's attention implementation is left as it was. A model that takes it
    may still route some calls elsewhere; the run-time check in
    :mod:`attnviz.verify` catches that.
    """
    _register()
    previous = model.config._attn_implementation
    ok = _set_implementation(model, IMPLEMENTATION)
    if model.config._attn_implementation != previous:
        _set_implementation(model, previous)
    return ok


def needs_eager_load(model) -> bool:
    """True if ``model`` must be (re)loaded with ``attn_implementation="eager"`` for attnviz to capture it.

    That is: it does not take attnviz's function, and its attention modules were
    built for another implementation (see :func:`non_eager_modules`), so neither
    the capture nor the eager fallback could see its attention probabilities.
    """
    return not takes_attnviz(model) and bool(non_eager_modules(model))


def is_encoder_decoder(model) -> bool:
    """True for encoder-decoder models (T5, BART, Marian...), whose attention comes in three kinds."""
    return bool(getattr(model.config, "is_encoder_decoder", False))


_ATTENTION_LAYER_TYPES = {"full_attention", "sliding_attention", "chunked_attention", "attention"}


def _early_stop_layer(model, plan: CapturePlan, encdec: bool) -> tuple[int | None, int | None]:
    """``(last layer needed, number of layers)`` when the forward may stop early, else ``(None, None)``.

    Only for single-stack models whose every decoder layer is an attention layer
    and whose plan keeps nothing but ``layers`` and does not need the outputs.
    """
    if plan.need_outputs or encdec or not (plan.layers or plan.head_maps) or plan.full or plan.on_layer or plan.rows or plan.rollout \
            or plan.follow is not None:
        return None, None
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    n = getattr(config, "num_hidden_layers", None)
    if not isinstance(n, int) or n <= 0:
        return None, None
    types = getattr(config, "layer_types", None)
    if types is not None and (len(types) != n or any(t not in _ATTENTION_LAYER_TYPES for t in types)):
        return None, None
    last = max([*plan.layers, *(l for l, _ in plan.head_maps)])
    if last >= n:
        return None, None
    return last, n


def capture(model, inputs: Mapping[str, torch.Tensor], plan: CapturePlan = FULL, progress=None, backend: str = "auto") -> Capture:
    """Run ``model(**inputs)`` once (batch of one; a padded batch with ``plan.batch``) and capture attention as ``plan`` asks.

    Args:
        model: a loaded transformers ``PreTrainedModel`` in eval mode.
        inputs: model inputs for one sequence (``input_ids``/``pixel_values``...).
        plan: what to keep (see :class:`CapturePlan`).
        progress: optional callback ``(kind, layer)`` after each attention call.
        backend: ``"auto"`` (attnviz's function where the model takes it, else
            eager) or ``"eager"`` (always the model's own eager attention with
            ``output_attentions=True``; see :func:`capture_eager`).

    Returns:
        :class:`Capture` with float32 CPU maps per attention kind; probabilities
        equal transformers' eager ``output_attentions`` (fp32: max abs diff <= 1e-5).
        ``model.config._attn_implementation`` is restored afterwards, also when
        the forward raises.

    Raises:
        ModelError: the model produced no attention at all, or it does not take
        attnviz's function and cannot run eager attention either; or the attnviz pass failed after filling a KV
        cache in ``inputs`` that cannot be cut back for the eager pass (the prompt would be cached twice).
        UsageError: bad rollout settings (head fusion, discard ratio).
    """
    _check_rollout_settings(plan)
    _refuse_sparse_layouts(model, inputs)
    if plan.batch and (plan.on_layer is None or plan.full or plan.layers or plan.rows or plan.cross_rows or plan.rollout):
        raise UsageError("a batch capture plan streams layers to on_layer and keeps nothing else")
    _register()
    if backend == "eager":
        return capture_eager(model, inputs, plan)
    if backend != "auto":
        raise UsageError(f"capture backend must be 'auto' or 'eager', not '{backend}'")
    names = {id(m): name for name, m in model.named_modules()}
    encdec = is_encoder_decoder(model)
    previous = model.config._attn_implementation
    stop_after, num_layers = _early_stop_layer(model, plan, encdec)
    session = _Session(plan, names, encdec, progress, stop_after)
    problem = "it does not support setting its attention implementation"
    cache = inputs.get("past_key_values", inputs.get("cache"))
    cached = cache.get_seq_length() if hasattr(cache, "get_seq_length") else None
    if _set_implementation(model, IMPLEMENTATION):
        token = _ACTIVE.set(session)
        stopped = False
        outputs = None
        try:
            with torch.inference_mode():
                outputs = model(**_without_cache(model, inputs))
        except _StopForward:
            stopped = True
        finally:
            _ACTIVE.reset(token)
            _set_implementation(model, previous)
        if session.calls and session.problem is None:
            counts = {SELF: num_layers} if stopped else None
            return Capture(session.result(counts), "sdpa+attnviz", outputs, None, stopped)
        problem = session.problem or "no attention call went through transformers' AttentionInterface"
        if cached is not None and cache.get_seq_length() != cached:
            # the failed pass already wrote into the KV cache: cut it back, so the eager pass below appends once
            extra = cache.get_seq_length() - cached
            try:
                cache.crop(-extra)  # transformers 5: a negative count removes that many positions
            except (AttributeError, ValueError, RuntimeError, TypeError):
                pass
            if cache.get_seq_length() != cached:
                raise ModelError(f"{type(model).__name__}: {problem}, after the forward pass had already filled its KV "
                                 "cache, which cannot be cut back for an eager pass")
    return _capture_eager(model, inputs, plan, encdec, previous, problem)


#: Attention modules whose probabilities are a band or block layout that never goes through the AttentionInterface:
#: :func:`capture` would silently leave their layers out (LongT5's encoder) or mislabel them, so it refuses them;
#: :func:`attnviz.bands.capture_band` captures them exactly (``attnviz text`` shows them).
SPARSE_LAYOUT_MODULES = {
    "LongT5LocalAttention": "local", "LongT5TransientGlobalAttention": "transient-global",
    "BigBirdBlockSparseAttention": "block-sparse", "BigBirdPegasusBlockSparseAttention": "block-sparse",
}


def _refuse_sparse_layouts(model, inputs: Mapping[str, Any]) -> None:
    """Refuse a model whose (encoder) attention modules compute a band or block layout (:data:`SPARSE_LAYOUT_MODULES`),
    unless ``encoder_outputs`` are given (those encoder modules then do not run).

    Raises:
        AttentionRefused: one line naming the layout and :func:`attnviz.bands.capture_band`.
    """
    if "encoder_outputs" in inputs:
        return
    found = sorted({SPARSE_LAYOUT_MODULES[type(m).__name__] for m in model.modules()
                    if type(m).__name__ in SPARSE_LAYOUT_MODULES})
    if found:
        raise AttentionRefused(f"{type(model).__name__}: its {' / '.join(found)} attention is a band or block layout, not "
                               "a [query, key] map of the input; capture it with attnviz.bands.capture_band "
                               "(attnviz text shows it)")


def _without_cache(model, inputs: Mapping[str, Any]) -> dict[str, Any]:
    """``inputs`` plus ``use_cache=False`` where the model takes it: a capture never generates, so a KV cache is waste."""
    inputs = dict(inputs)
    if "use_cache" not in inputs:
        try:
            import inspect

            if "use_cache" in inspect.signature(model.forward).parameters:
                inputs["use_cache"] = False
        except (TypeError, ValueError):  # pragma: no cover - exotic forward signatures
            pass
    return inputs


def capture_eager(model, inputs: Mapping[str, torch.Tensor], plan: CapturePlan = FULL) -> Capture:
    """The reference: the model's own eager attention with ``output_attentions=True``, checked to be eager.

    The model is switched to ``attn_implementation="eager"`` for the call (forced
    on the config where transformers refuses to switch it, as for Falcon, whose
    attention reads the config at run time) and restored afterwards. Every
    returned map is checked: ``[1, heads, query, key]``, finite, rows summing to 1,
    and nothing above the diagonal where the attention module is causal.

    Returns:
        :class:`Capture` with ``backend == "eager"`` and float32 CPU maps.

    Raises:
        ModelError: one line naming the architecture when its attention modules
        were built for another implementation (e.g. Data2VecVision's SDPA class:
        load it with ``attn_implementation="eager"``) or when the maps fail the checks.
    """
    _check_rollout_settings(plan)
    return _capture_eager(model, inputs, plan, is_encoder_decoder(model), model.config._attn_implementation, None)


def _capture_eager(model, inputs, plan: CapturePlan, encdec: bool, previous: str, problem: str | None = "") -> Capture:
    """Fallback: eager attention with ``output_attentions=True`` (keeps every map in memory)."""
    with _eager(model):
        with torch.inference_mode():
            outputs = model(**_without_cache(model, inputs), output_attentions=True)
    groups: dict[str, tuple] = {}
    if encdec:
        groups = {
            ENCODER: getattr(outputs, "encoder_attentions", None),
            DECODER: getattr(outputs, "decoder_attentions", None),
            CROSS: getattr(outputs, "cross_attentions", None),
        }
    else:
        groups = {SELF: getattr(outputs, "attentions", None)}
    groups = _sliding_window_to_dense(outputs, groups, inputs)
    mask = inputs.get("attention_mask")
    padded = isinstance(mask, torch.Tensor) and bool((mask == 0).any())  # fully masked rows spread over every key
    causal_modules = _causal_attention(model) and not padded
    result: dict[str, AttentionMaps] = {}
    for kind, maps in groups.items():
        if not maps or any(m is None for m in maps):
            continue
        if plan.batch:  # stream [B, H, Q, K] per layer, keep nothing
            for layer, m in enumerate(maps):
                plan.on_layer(kind, layer, m.float().cpu())
            _, H, Q, K = maps[0].shape
            result[kind] = AttentionMaps(kind=kind, num_layers=len(maps), num_heads=H, num_queries=Q, num_keys=K,
                                         causal=kind == DECODER or (kind == SELF and _is_causal_lm(model)))
            continue
        shapes = sorted({tuple(int(d) for d in m.shape[-2:]) for m in maps}, reverse=True)
        if len(shapes) > 1:  # Funnel: pooling shortens the sequence from block to block
            raise AttentionRefused(
                f"{type(model).__name__}: its layers' attention maps differ in shape "
                f"({', '.join(f'{q}x{k}' for q, k in shapes)}): later layers attend over pooled positions (means of "
                "tokens), not tokens, so attnviz cannot show them as [query, key] maps of the input")
        _check_layout(model, kind, maps[0].shape, inputs)
        full = torch.stack([m[0].float().cpu() for m in maps])  # [L, H, Q, K]
        causal = _check_eager_maps(model, kind, maps, full, causal_modules and kind != CROSS)
        session = _Session(plan, {}, encdec)
        for layer in range(full.shape[0]):
            if plan.on_layer is not None:
                plan.on_layer(kind, layer, full[layer])
            if plan.rollout and kind != CROSS:
                session._roll(kind, fuse_heads(full[layer], plan.head_fusion))
        L, H, Q, K = full.shape
        rows = tuple(r for r in (plan.cross_rows if kind == CROSS else plan.rows) if -Q <= r < Q)
        head_maps = {(l, h): (full[l].mean(dim=0) if h is None else full[l, h].clone())
                     for l, h in plan.head_maps if l < L and (h is None or h < H)}
        if plan.follow is not None and rows:
            best = None
            for l in range(L):
                pick = plan.follow(kind, l, full[l][:, [r % Q for r in rows]])
                if pick is not None and (best is None or pick[1] > best[0]):
                    best = (pick[1], l, pick[0])
            if best is not None:
                _, l, h = best
                head_maps[(l, h)] = full[l].mean(dim=0) if h is None else full[l, h].clone()
        result[kind] = AttentionMaps(
            kind=kind, num_layers=L, num_heads=H, num_queries=Q, num_keys=K,
            causal=kind in (DECODER,) or (kind == SELF and bool(getattr(model.config, "is_decoder", False) or _is_causal_lm(model) or causal)),
            full=full if plan.full else None,
            layers={l: full[l] for l in plan.layers if l < L},
            rows=full[:, :, list(rows)].clone() if rows else None,
            row_index=tuple(rows),
            rollout=session.rollout.get(kind),
            rollout_settings={"head_fusion": plan.head_fusion, "discard_ratio": plan.discard_ratio} if plan.rollout else {},
            head_maps=head_maps,
        )
    if not result:
        raise ModelError(f"{type(model).__name__} returned no attention probabilities (is it an attention model?)")
    if problem is None:
        notice = None
    else:
        notice = (
            f"{type(model).__name__} cannot use attnviz's attention capture ({problem}); captured with backend 'eager' "
            "(output_attentions=True), which keeps every layer's maps in memory"
        )
    return Capture(result, "eager", outputs, notice)


def _sliding_window_to_dense(outputs, groups: dict, inputs) -> dict:
    """Longformer / LED's encoder: their ``output_attentions`` are a band plus global columns and rows
    (:mod:`attnviz.sparse`); placed into dense ``[B, H, N, N]`` maps here, so every view and check reads them as any
    other model's (0 where a query never attends)."""
    from attnviz.sparse import band_to_dense, check_dense_budget, global_positions

    kind, name = (SELF, "global_attentions") if SELF in groups else (ENCODER, "encoder_global_attentions")
    if not hasattr(outputs, name) or not groups.get(kind):
        return groups
    extra = getattr(outputs, name) or [None] * len(groups[kind])
    ids = inputs.get("input_ids")
    n = int(ids.shape[-1]) if ids is not None else int(groups[kind][0].shape[2])
    check_dense_budget(n, len(groups[kind]), int(groups[kind][0].shape[1]))
    mask = inputs.get("global_attention_mask")
    globals_ = global_positions(mask) if mask is not None else []
    dense = tuple(band_to_dense(a.cpu(), g.cpu() if globals_ and g is not None else None, globals_, n)
                  for a, g in zip(groups[kind], extra))
    return {**groups, kind: dense}


#: Attention modules that are not eager, by class name, where the architecture has no ``*_ATTENTION_CLASSES`` table.
_NOT_EAGER_NAME = re.compile(r"sdpa|flash|flex", re.IGNORECASE)


def non_eager_modules(model) -> list[tuple[str, str]]:
    """``[(module path, class name)]`` of attention modules that were built for a non-eager implementation.

    transformers picks some architectures' attention class when the model is
    built (``DATA2VEC_VISION_SELF_ATTENTION_CLASSES[config._attn_implementation]``);
    such a module ignores a later switch to eager and returns no (or wrong)
    weights. Found from those tables in the model's own module, else by class name.
    """
    import sys

    eager: set[type] = set()
    other: set[type] = set()
    for cls in {type(m) for m in model.modules()} | {type(model)}:
        module = sys.modules.get(cls.__module__)
        for name, table in vars(module).items() if module is not None else ():
            if name.endswith("ATTENTION_CLASSES") and isinstance(table, dict):
                for impl, klass in table.items():
                    if isinstance(klass, type):
                        (eager if impl == "eager" else other).add(klass)
    found = []
    for path, m in model.named_modules():
        cls = type(m)
        if cls in eager:
            continue
        if cls in other or ("attention" in cls.__name__.lower() and _NOT_EAGER_NAME.search(cls.__name__)):
            found.append((path, cls.__name__))
    return found


class _eager:
    """Context manager: the model runs eager attention inside (switched, or forced on its configs), restored after.

    Raises ModelError (one line naming the architecture) where attention modules
    were built for another implementation and cannot be switched.
    """

    def __init__(self, model):
        self.model = model
        self.saved: list[tuple[Any, Any]] = []

    def __enter__(self):
        model = self.model
        previous = model.config._attn_implementation
        if previous != "eager" and not _set_implementation(model, "eager"):
            _set_implementation(model, previous)
            # transformers would not switch it (not AttentionInterface-based): set every config it reads
            configs = {id(model.config): model.config}
            for m in model.modules():
                cfg = getattr(m, "config", None)
                if cfg is not None and hasattr(cfg, "_attn_implementation_internal"):
                    configs[id(cfg)] = cfg
            for cfg in configs.values():
                self.saved.append((cfg, cfg._attn_implementation_internal))
                cfg._attn_implementation_internal = "eager"
        else:
            self.saved.append((model, previous))
        bad = non_eager_modules(model)
        if bad:
            self._restore()
            path, cls = bad[0]
            arch = type(model).__name__
            mt = getattr(model.config, "model_type", "?")
            raise ModelError(
                f"{arch} ({mt}) cannot run eager attention: its attention modules were built for "
                f"'{previous}' ({cls}, e.g. {path or 'the model'}); load it with attn_implementation=\"eager\""
            )
        return model

    def _restore(self):
        for obj, value in reversed(self.saved):
            if obj is self.model:
                if value != "eager":
                    _set_implementation(obj, value)
            else:
                obj._attn_implementation_internal = value
        self.saved.clear()

    def __exit__(self, *exc):
        self._restore()
        return False


def _causal_attention(model) -> bool:
    """True if the model's self-attention modules say they are causal (``is_causal = True``)."""
    flags = [m.is_causal for m in model.modules() if isinstance(getattr(m, "is_causal", None), bool) and m is not model]
    return bool(flags) and all(flags)


def _check_layout(model, kind: str, shape, inputs) -> None:
    """Refuse eager maps that are not ``[query, key]`` maps over the input's positions.

    Self-attention (``self``, ``encoder``, ``decoder``) must be square (unless ``past_key_values`` is
    given: a decoding step's keys are the cache plus its queries), and for token inputs as long as
    ``input_ids`` (``decoder_input_ids`` for the decoder); cross-attention has the decoder's queries.
    Longformer and LED return a band layout ``[N, window + 1]`` (and pad N to a window multiple),
    which drawn as ``[query, key]`` would label band offsets as the first tokens.

    Raises:
        AttentionRefused: (exit 3) one line naming the layout found and the one expected.
    """
    arch = type(model).__name__
    *_, Q, K = shape
    ids = inputs.get("decoder_input_ids" if kind in (DECODER, CROSS) else "input_ids")
    n = int(ids.shape[-1]) if isinstance(ids, torch.Tensor) else None
    cached = inputs.get("past_key_values") is not None  # a decoding step: keys are the cache plus the new queries
    if kind != CROSS and Q != K and not cached:
        raise AttentionRefused(
            f"{arch}: eager output_attentions are [{Q}, {K}] per head, not a [query, key] map of the input"
            f"{f' ({n} positions)' if n else ''} (a band, block or landmark layout); attnviz cannot show them exactly"
        )
    if n is not None and Q != n:
        raise AttentionRefused(
            f"{arch}: eager output_attentions have {Q} query positions for an input of {n}; "
            "attnviz cannot map them to the input's tokens"
        )


def _check_eager_maps(model, kind: str, maps, full: torch.Tensor, causal_modules: bool) -> bool:
    """Check eager maps ``full`` ``[L, H, Q, K]`` (float32); return True if they are causal (nothing above the diagonal).

    Raises ModelError when a map has the wrong rank, is not finite, has rows that
    do not sum to 1, or puts weight above the diagonal though the model's
    attention is causal (a mask that eager attention ignored).
    """
    arch = type(model).__name__
    if any(m.dim() != 4 or m.shape[0] != 1 for m in maps) or len({tuple(m.shape) for m in maps}) != 1:
        raise ModelError(f"{arch}: eager output_attentions are not [1, heads, query, key] maps of one shape")
    if not bool(torch.isfinite(full).all()):
            raise AttentionRefused(f"{arch}: eager output_attentions contain NaN or infinite values; refusing to show them")
    half = maps[0].dtype in (torch.float16, torch.bfloat16)
    tol = 2e-2 if half else 1e-4
    sums = full.sum(-1)
    if any(isinstance(getattr(m, "sinks", None), torch.Tensor) for m in model.modules()):
        worst = float((sums - 1).clamp(min=0).max()) if sums.numel() else 0.0  # attention sinks take the rest of a row
    else:
        worst = float((sums - 1).abs().max()) if sums.numel() else 0.0
    if worst > tol:
        raise ModelError(f"{arch}: eager output_attentions rows do not sum to 1 (off by up to {worst:.3g}); attnviz cannot trust them")
    L, H, Q, K = full.shape
    if Q < 2 or Q != K:
        return False
    above = float(torch.triu(full, diagonal=1).sum(-1).amax()) if Q > 1 else 0.0
    if causal_modules and above > 1e-6:
        raise ModelError(
            f"{arch} ({getattr(model.config, 'model_type', '?')}): its attention is causal, but eager output_attentions put "
            f"{above:.3g} of a row's probability above the diagonal (the mask was not applied); refusing"
        )
    return above == 0.0


def _is_causal_lm(model) -> bool:
    return any(a.endswith("ForCausalLM") or a.endswith("LMHeadModel") for a in (model.config.architectures or []))


# ---------------------------------------------------------------------------
# shapes before capturing (for streaming to a file)


def attention_shapes(model, inputs: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, int, int, int]]:
    """``{kind: (layers, heads, queries, keys)}`` that :func:`capture` will produce for ``inputs``.

    Runs a probe forward on the first two positions of every sequence input
    (``input_ids``, ``attention_mask``, ``decoder_input_ids``...; the full inputs
    when there is no ``input_ids``/``inputs_embeds``) and scales the query/key
    lengths to the real inputs. Use it to size a streamed ``--save-attn`` file
    before the real capture starts.
    """
    probe, lengths = _probe_inputs(inputs)
    cap = capture(model, probe, CapturePlan(need_outputs=False))
    shapes = {}
    for kind, maps in cap.attention.items():
        q_side = "decoder" if kind in (DECODER, CROSS) else "encoder"
        k_side = "decoder" if kind == DECODER else "encoder"
        nq = maps.num_queries + lengths.get(q_side, (0, 0))[0] - lengths.get(q_side, (0, 0))[1]
        nk = maps.num_keys + lengths.get(k_side, (0, 0))[0] - lengths.get(k_side, (0, 0))[1]
        shapes[kind] = (maps.num_layers, maps.num_heads, nq, nk)
    return shapes


_DECODER_KEYS = ("decoder_input_ids", "decoder_attention_mask", "decoder_inputs_embeds")


def _probe_inputs(inputs: Mapping[str, torch.Tensor], positions: int = 2):
    """Inputs cut to at most ``positions`` positions, and ``{side: (real length, probe length)}``."""
    lengths: dict[str, tuple[int, int]] = {}
    for side, key_names in (("encoder", ("input_ids", "inputs_embeds")), ("decoder", ("decoder_input_ids", "decoder_inputs_embeds"))):
        for name in key_names:
            if name in inputs and inputs[name] is not None:
                n = inputs[name].shape[1]
                lengths[side] = (n, min(n, positions))
                break
    if "encoder" not in lengths:
        return dict(inputs), {}
    probe = {}
    for name, value in inputs.items():
        side = "decoder" if name in _DECODER_KEYS else "encoder"
        if isinstance(value, torch.Tensor) and value.dim() >= 2 and side in lengths and value.shape[1] == lengths[side][0]:
            probe[name] = value[:, : lengths[side][1]]
        else:
            probe[name] = value
    return probe, lengths


def eager_attention(model) -> _eager:
    """Context manager: ``model`` runs eager attention inside and its implementation is restored after.

    For checks that read the model's own ``output_attentions`` where :func:`capture_eager` cannot (deformable
    attention returns ``[Q, H, levels, points]`` weights, not ``[query, key]`` maps).

    Raises:
        ModelError: its attention modules were built for another implementation and cannot be switched.
    """
    return _eager(model)

"""LongT5's encoder attention (``local`` and ``transient-global``), captured exactly and stored sparsely.

What transformers' LongT5 encoder computes (``modeling_longt5``: ``LongT5LocalAttention`` and
``LongT5TransientGlobalAttention``; the decoder is ordinary T5 attention, which :func:`attnviz.capture.capture` already
captures exactly):

- **Blocks.** With ``R = config.local_radius`` the block length is ``bl = R + 1``. Queries, keys and the attention mask
  are cut into ``nb = ceil(N / bl)`` blocks; the last block is padded at the end with zero hidden states and mask 0
  (``_split_into_blocks`` / ``_pad_to_multiple``), so the padded length is ``nb * bl``. Each query block attends
  to the keys of 3 blocks (previous, own, next; ``_concatenate_3_blocks`` adds an all-zero block, mask 0, before the
  first and after the last). A query at ``q = b * bl + j`` sees key column ``c`` (``0 <= c < 3 * bl``) = position
  ``(b - 1) * bl + c``, i.e. offset ``c - bl - j`` from the query.
- **Window.** A key counts iff ``|offset| < bl`` (so ``|offset| <= R``, ``_mask_local_attention_mask``) and both the
  query's and the key's attention mask are 1; every other column gets ``-1e10`` added to its score, so after the
  float32 softmax its probability is exactly 0. Padding (block padding past ``N``, the zero blocks at either end,
  tokens with ``attention_mask == 0``) therefore never receives any probability. The window is always exactly
  ``[q - R, q + R]`` (3 blocks of ``R + 1`` cover it wherever the query sits in its block), whatever ``N``.
- **Scores.** ``q . k`` (T5: no ``1/sqrt(d)``) plus the relative position bias of layer 0 (bidirectional T5 buckets of
  the offset; only layer 0 has ``relative_attention_bias``, later layers reuse its bias).
- **Transient-global side keys** (``transient-global`` only). Tokens are grouped in fixed blocks of
  ``g = config.global_block_size`` (``_make_global_fixed_block_ids``): token ``i`` (mask 1) has block id
  ``floor(i / g)``, clipped to the last *full* block (the "orphan" tokens of a last, partial block join the block
  before; a sequence shorter than ``g`` has no block at all); masked tokens have id -1. ``S_all = N // g`` summary keys
  are built per layer as ``k(LayerNorm_global(sum of the layer's normed hidden states of the block's tokens))``; a query
  with mask 1 may attend summary ``s`` iff ``s <= max(block id)`` (the first ``S`` of them, :func:`side_spans`), with
  the layer-0 ``global_relative_attention_bias`` of ``s - block_id(query)``. Local and side scores share one softmax.

``output_attentions=True`` returns, per encoder layer, the very tensor the model multiplied the values with
("blocked layout"): ``[B, nb, H, bl, 3 * bl]`` (local) or ``[B, nb, H, bl, 3 * bl + S_all]`` (transient-global: the
``S_all`` side columns after the ``3 * bl`` local ones). A row is block ``b``'s query ``j``; rows of padded queries
(past ``N``, or ``attention_mask == 0``) are not distributions over anything real (all their scores are ``-1e10``).

attnviz stores it as :class:`attnviz.sparse.BandAttention` (``local`` band ``[L, H, N, 2R + 1]``: column ``o`` is
key ``q + o - R``; transient-global summary weights in ``side_keys`` ``[L, H, N, S]`` with ``side_spans``; no
``global_index``): every probability the model computed for a real query on a real key or summary is stored once,
everything else (keys outside the window or outside ``[0, N)``, masked keys, rows of masked queries, summaries a
query may not attend) is 0, and no ``[N, N]`` tensor is ever formed.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from attnviz.sparse import BandAttention, hooked_forward

LOCAL = "local"
TRANSIENT_GLOBAL = "transient-global"

#: The encoder attention module classes, by name (transformers' ``modeling_longt5``).
ENCODER_MODULES = ("LongT5LocalAttention", "LongT5TransientGlobalAttention")

#: Largest probability mass (per row) the band may lose against the model's blocked row without refusing: the
#: dropped columns are exact zeros (scores ``-1e10``), so only float32 summation rounding remains.
LOST_MASS_TOLERANCE = 1e-4


def is_longt5(model) -> bool:
    """True for a LongT5 model (``config.model_type == "longt5"``)."""
    return getattr(getattr(model, "config", None), "model_type", None) == "longt5"


def encoder_attention_modules(model) -> list[tuple[str, torch.nn.Module]]:
    """``[(module path, module)]`` of the LongT5 encoder's attention modules (``LongT5LocalAttention`` or
    ``LongT5TransientGlobalAttention``), in layer order. Empty for any other model."""
    return [(name, m) for name, m in model.named_modules() if type(m).__name__ in ENCODER_MODULES]


def side_spans(attention_mask: torch.Tensor, global_block_size: int) -> tuple[tuple[int, int], ...]:
    """The transient-global summary keys a real query attends, as token spans ``(start, end)`` (end exclusive).

    ``attention_mask``: ``[N]`` or ``[1, N]`` as the encoder's attention module receives it (all ones when the caller
    gave none). Uses transformers' own ``_make_global_fixed_block_ids`` so the grouping (orphan tokens joining the last
    full block; masked tokens in none) is the model's. Summary ``s`` is valid iff ``s <= max(block id)``; the result
    has one span per valid summary, in order (``S = len(result)``, at most ``N // global_block_size``). A valid summary
    with no token (possible only with a left-padded mask) is ``(0, 0)``: its key is ``k(LayerNorm(0)) = 0``.

    Raises:
        AttentionRefused: a summary's tokens are not contiguous (an attention mask with holes).
    """
    from transformers.models.longt5.modeling_longt5 import _make_global_fixed_block_ids

    from attnviz.errors import AttentionRefused

    mask = attention_mask.reshape(1, -1)
    block_ids, segment_ids = _make_global_fixed_block_ids(mask, global_block_size)
    ids = block_ids[0].cpu()
    valid = int(segment_ids[0].sum()) if segment_ids.numel() else 0
    spans = []
    for s in range(valid):
        where = torch.nonzero(ids == s).flatten()
        if where.numel() == 0:
            spans.append((0, 0))
            continue
        start, end = int(where[0]), int(where[-1]) + 1
        if end - start != where.numel():
            raise AttentionRefused(f"LongT5 transient-global block {s} sums tokens that are not contiguous "
                                   f"({where.numel()} tokens within [{start}, {end})): an attention mask with holes")
        spans.append((start, end))
    return tuple(spans)


def blocked_to_band(blocked: torch.Tensor, n: int, local_radius: int, num_side: int = 0,
                    attention_mask: torch.Tensor | None = None, out_local: torch.Tensor | None = None,
                    out_side: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One layer's LongT5 blocked probabilities as a band (plus transient-global summary weights).

    Args:
        blocked: ``[nb, H, bl, 3 * bl + S_all]`` (or ``[1, nb, H, bl, ...]``): what the encoder attention module
            returns with ``output_attentions`` (``bl = local_radius + 1``, ``nb = ceil(n / bl)``; ``S_all = 0`` for
            ``local`` attention). Any dtype.
        n: the input's length (before the padding to a block multiple).
        local_radius: ``R``.
        num_side: ``S``, how many summary columns to keep (the valid ones, ``len(side_spans(...))``; the rest must
            hold no probability for a real query).
        attention_mask: ``[n]`` / ``[1, n]``, 0 for a masked token (default: all ones). Masked queries' rows and
            masked keys are 0 in the result.
        out_local, out_side: where to write (float32 ``[H, n, 2R + 1]`` / ``[H, n, S]``), e.g. one layer of a
            preallocated :class:`~attnviz.sparse.BandAttention`; fresh zeros otherwise.

    Returns:
        ``(local, side)``: float32 ``local[h, q, o]`` = probability of query ``q`` on key ``q + o - R`` (0 outside
        ``[0, n)``, for masked keys and masked queries); ``side[h, q, s]`` on summary ``s`` (None when
        ``num_side == 0`` and no ``out_side`` was given). Scratch beyond the outputs: ``O(n * (2R + 1))``
        indices and ``O(H * n)`` row sums; the blocked tensor is only read.

    Raises:
        AttentionRefused: the layout does not match (``bl``, ``nb``, side columns), or a real query's row holds
            probability (more than :data:`LOST_MASS_TOLERANCE`) on anything the band does not store.
    """
    from attnviz.errors import AttentionRefused

    if blocked.dim() == 5:
        if blocked.shape[0] != 1:
            raise AttentionRefused(f"LongT5 blocked attention for a batch of {blocked.shape[0]}; "
                                   "attnviz takes one sequence")
        blocked = blocked[0]
    nb, H, bl, width = (int(s) for s in blocked.shape)
    R = int(local_radius)
    W = 2 * R + 1
    s_all = width - 3 * bl
    if bl != R + 1 or nb != -(-n // bl) or s_all < 0 or not 0 <= num_side <= s_all:
        raise AttentionRefused(f"LongT5 blocked attention {list(blocked.shape)} does not match {n} tokens, "
                               f"local radius {R} and {num_side} summary keys (expected [{-(-n // bl)}, H, {R + 1}, "
                               f"{3 * (R + 1)} + summaries])")
    local = torch.zeros((H, n, W), dtype=torch.float32) if out_local is None else out_local
    side = out_side
    if side is None and num_side:
        side = torch.zeros((H, n, num_side), dtype=torch.float32)
    # query q = b * bl + j: key column c is offset c - bl - j, band column o = offset + R = c - j - 1
    for j in range(min(bl, n)):
        count = len(range(j, n, bl))
        local[:, j::bl].copy_(blocked[:count, :, j, j + 1:j + 1 + W].permute(1, 0, 2))
        if side is not None:
            side[:, j::bl].copy_(blocked[:count, :, j, 3 * bl:3 * bl + num_side].permute(1, 0, 2))
    real = torch.ones(n, dtype=torch.bool) if attention_mask is None else attention_mask.reshape(-1)[:n].cpu() != 0
    q = torch.arange(n)
    keys = q[:, None] + torch.arange(W)[None, :] - R  # [n, 2R+1]
    ok = (keys >= 0) & (keys < n)
    ok &= real[keys.clamp(0, n - 1)] & real[:, None]
    local.mul_(ok.to(local.device))
    if side is not None:
        side.mul_(real[:, None].to(side.device))
    # nothing dropped: every real row keeps what the model's row holds (dropped columns are exact zeros)
    total = blocked.sum(-1, dtype=torch.float32).permute(1, 0, 2).reshape(H, nb * bl)[:, :n]
    kept = local.sum(-1) + (side.sum(-1) if side is not None else 0)
    if bool(real.any()):
        lost = float((total - kept.to(total.device))[:, real.to(total.device)].abs().max())
        if lost > LOST_MASS_TOLERANCE:
            raise AttentionRefused(f"LongT5 attention puts {lost:.3g} of a row's probability outside the window "
                                   f"of radius {R} and the {num_side} summary keys; attnviz cannot store it exactly")
    return local, side


def band_from_blocked(attentions, n: int, local_radius: int, global_block_size: int | None = None,
                      attention_mask: torch.Tensor | None = None, kind: str = "encoder") -> BandAttention:
    """Eager ``output_attentions``' LongT5 encoder maps (one ``[1, nb, H, bl, 3 * bl (+ S_all)]`` tensor per layer,
    e.g. ``outputs.encoder_attentions``) as a :class:`~attnviz.sparse.BandAttention`.

    ``global_block_size``: the config's, for transient-global attention (None: local). Memory: what eager already
    returned plus the band; :func:`capture_longt5_encoder` avoids keeping eager's maps.
    """
    L = len(attentions)
    H = int(attentions[0].shape[-3])
    R = int(local_radius)
    mask = torch.ones(n) if attention_mask is None else attention_mask.reshape(-1)
    spans = side_spans(mask, global_block_size) if global_block_size is not None else ()
    local = torch.zeros((L, H, n, 2 * R + 1), dtype=torch.float32)
    side = torch.zeros((L, H, n, len(spans)), dtype=torch.float32) if global_block_size is not None else None
    for layer, a in enumerate(attentions):
        blocked_to_band(a, n, R, len(spans), mask, local[layer], side[layer] if side is not None else None)
    return BandAttention(kind=kind, n=n, window=(R,) * L, local=local, side_spans=spans, side_keys=side)


def _input_length(inputs: Mapping[str, Any]) -> tuple[int, int]:
    from attnviz.errors import UsageError

    for name in ("input_ids", "inputs_embeds"):
        value = inputs.get(name)
        if isinstance(value, torch.Tensor):
            return int(value.shape[0]), int(value.shape[1])
    raise UsageError("LongT5 capture needs input_ids or inputs_embeds")


def capture_longt5_encoder(model, inputs: Mapping[str, Any]) -> tuple[BandAttention, Any]:
    """One forward of a LongT5 model, keeping every probability its encoder computes, sparsely.

    A forward pre-hook on each encoder attention module (``LongT5LocalAttention`` / ``LongT5TransientGlobalAttention``)
    asks it for ``output_attentions`` (only that module: the stack and the caller see what they asked for); a forward
    hook copies the blocked probabilities it returns (the tensor the module multiplied its values with, which exists
    during its forward anyway) into the preallocated band with :func:`blocked_to_band` and hands the layer nothing
    more than it would get without the hook. Hooks are removed in ``finally``. No ``[N, N]`` tensor, and no layer's
    blocked maps outlive its forward.

    Memory kept: float32 ``L * H * N * (2R + 1 + S)`` (``S = N // global_block_size`` at most, transient-global
    only); per layer while it runs: the model's own blocked tensor ``H * nb * bl * (3 * bl + S_all)`` (computed by the
    model regardless) plus ``O(N * (2R + 1))`` index scratch.

    Args:
        model: ``LongT5ForConditionalGeneration``, ``LongT5Model`` or ``LongT5EncoderModel`` (eval mode; in training
            mode the stored weights are the dropped-out ones the model used).
        inputs: one sequence: ``input_ids`` (or ``inputs_embeds``) ``[1, N]``, optional ``attention_mask``, and for
            the encoder-decoder models ``decoder_input_ids`` (anything ``model(**inputs)`` takes).

    Returns:
        ``(band, outputs)``: :class:`~attnviz.sparse.BandAttention` (``kind="encoder"``, ``n = N``,
        ``window = (R,) * L``; ``local`` ``[L, H, N, 2R + 1]``; for transient-global ``side_spans`` (``S`` spans) and
        ``side_keys`` ``[L, H, N, S]`` (``S`` may be 0: a sequence shorter than a global block); for local
        ``side_keys`` is None) and ``model(**inputs)``'s outputs, unchanged by the capture.

    Raises:
        ModelError: not a LongT5 model, or an encoder layer did not run (e.g. ``encoder_outputs`` given).
        UsageError: a batch of more than one sequence.
        AttentionRefused: the blocked layout or the probabilities do not match LongT5's documented semantics.
    """
    from attnviz.errors import ModelError, UsageError
    from attnviz.types import ENCODER

    modules = encoder_attention_modules(model)
    if not modules:
        raise ModelError(f"{type(model).__name__} has no LongT5 local / transient-global encoder attention to capture")
    batch, n = _input_length(inputs)
    if batch != 1:
        raise UsageError(f"LongT5 capture takes one sequence, not a batch of {batch}")
    transient = type(modules[0][1]).__name__ == "LongT5TransientGlobalAttention"
    if any((type(m).__name__ == "LongT5TransientGlobalAttention") != transient for _, m in modules):
        raise ModelError(f"{type(model).__name__} mixes local and transient-global encoder layers")
    L = len(modules)
    H = int(modules[0][1].n_heads)
    R = int(modules[0][1].local_radius)
    if any(int(m.local_radius) != R for _, m in modules):
        raise ModelError(f"{type(model).__name__}: encoder layers with different local radii")
    mask = inputs.get("attention_mask")
    mask = torch.ones(n) if mask is None else mask.reshape(-1).cpu()
    spans = side_spans(mask, int(modules[0][1].global_block_size)) if transient else ()
    S = len(spans)
    local = torch.zeros((L, H, n, 2 * R + 1), dtype=torch.float32)
    side = torch.zeros((L, H, n, S), dtype=torch.float32) if transient else None
    order = {id(m): i for i, (_, m) in enumerate(modules)}
    asked: dict[int, bool] = {}
    seen: list[int] = []

    def pre(module, args, kwargs):
        if len(args) >= 4:  # forward(hidden_states, mask, position_bias, output_attentions)
            asked[id(module)] = bool(args[3])
            args = (*args[:3], True, *args[4:])
        else:
            asked[id(module)] = bool(kwargs.get("output_attentions", False))
            kwargs["output_attentions"] = True
        return args, kwargs

    def post(module, args, kwargs, output):
        layer = order[id(module)]
        if len(output) < 3:
            raise ModelError(f"{type(module).__name__} returned no attention probabilities")
        blocked = output[2]
        if transient and int(blocked.shape[-1]) - 3 * (R + 1) != n // int(module.global_block_size):
            raise ModelError(f"{type(module).__name__} returned {int(blocked.shape[-1]) - 3 * (R + 1)} summary columns "
                             f"for {n} tokens in blocks of {module.global_block_size}")
        blocked_to_band(blocked, n, R, S, mask, local[layer], side[layer] if side is not None else None)
        seen.append(layer)
        return tuple(output) if asked.pop(id(module), False) else tuple(output[:2])

    outputs = hooked_forward(model, [m for _, m in modules], pre, post, inputs)
    if sorted(seen) != list(range(L)):
        raise ModelError(f"{type(model).__name__}: {L - len(set(seen))} of {L} LongT5 encoder layers did not run "
                         f"({len(seen)} calls; was encoder_outputs given?)")
    band = BandAttention(kind=ENCODER, n=n, window=(R,) * L, local=local, side_spans=spans, side_keys=side)
    return band, outputs

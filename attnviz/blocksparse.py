"""BigBird's ``block_sparse`` attention (BigBird, BigBirdPegasus's encoder), captured exactly and stored sparsely.

Source followed: Zaheer et al. 2020, "Big Bird: Transformers for Longer Sequences" (ITC variant: global, window and
random key blocks), as implemented by transformers' ``modeling_big_bird.BigBirdBlockSparseAttention`` (5.x);
``modeling_bigbird_pegasus.BigBirdPegasusBlockSparseAttention`` is a verbatim copy ("Copied from ..."), so everything
below holds for BigBirdPegasus's encoder too (its decoder is ordinary dense attention).

What the model computes (one sequence, ``bs = config.block_size``, ``r = config.num_random_blocks``):

- **Padding.** ``BigBirdModel`` / ``BigBirdPegasusEncoder`` pad the ``n`` input tokens at the end to
  ``N_pad = nb * bs`` (``nb = ceil(n / bs)``) with the pad token and attention mask 0 (``_pad_to_block_size``); the
  padding is fewer than ``bs`` tokens, so it only ever sits in the last block.
- **Global query blocks** (block ``0``: positions ``0 .. bs-1``, block ``nb-1``: ``N_pad-bs .. n-1``) attend every key
  (one softmax over ``N_pad`` keys).
- **Every other query block** ``i`` (``1 <= i <= nb-2``) attends, in one softmax over the concatenation, the key
  blocks: ``0`` (global), its window ``i-1, i, i+1`` (for ``i = 1`` the window's left block is block 0 itself and is
  not repeated; for ``i = nb-2`` the right block is block ``nb-1`` itself), ``r`` random blocks ``rand_attn[h, i-1]``,
  and ``nb-1`` (global). The score is ``(q . k) / sqrt(d)``, plus ``-10000`` for a key whose attention mask is 0
  (and, on window slots of blocks ``2 .. nb-3`` and on random slots, for a query whose mask is 0).
- **The random layout** ``rand_attn`` (``[H, nb-2, r]`` per layer) is drawn with NumPy in
  ``_bigbird_block_rand_mask_with_head`` (``_bigbird_block_rand_mask`` when ``N_pad`` is 1024, 3072 or 4096):

  * **eval mode** (``model.eval()``, what attnviz uses): no randomness at all. Both helpers return all zeros, so every
    "random" block of every layer, head and query block is **block 0**, the first global block. Block 0 then
    appears ``1 + r`` times in the softmax of every query block ``1 .. nb-2`` and the model really counts it
    ``1 + r`` times: it multiplies each copy's weight with block 0's values and adds them up, so a key ``j < bs``
    receives ``(1 + r) * p_j`` of the row's mass (``p_j`` the weight of one copy). The eval layout is identical in
    every layer and head and does not depend on the input.
  * **training mode**: ``np.random.seed(layer_index)`` before every draw (the module's ``seed`` is its layer index;
    this also resets NumPy's global RNG), so the layout is fixed per layer (the same in every training forward),
    differs from head to head and layer to layer. The default plan avoids the window and the global blocks; the plan
    used when ``N_pad`` is 1024, 3072 or 4096 does not always (measured at ``N_pad = 1024``, ``bs = 16``, ``r = 3``:
    11 of 124 head x query-block rows repeat the last global block 63). Any block repeated in a row is counted once
    per appearance, as in eval.

  :func:`capture_block_sparse` records the layout each module actually used in the forward (a temporary wrapper of
  ``_create_rand_mask_from_inputs``, which receives the final ``rand_attn`` tensor) instead of assuming either.

What transformers' eager ``output_attentions=True`` returns instead (per layer ``[B, H, N_pad, N_pad]``, padding
included; 5.25 builds this map in every block-sparse forward, asked or not) is **incomplete**: it scatter-assigns
each slot's probability into a zero map, first block 0 (global), window and last block, then the random blocks. Where
a block appears more than once in a row, the later write overwrites the earlier one instead of adding to it. In eval
mode that is every row of query blocks ``1 .. nb-2``: block 0's keys show the weight of one copy, ``p_j``, not
``(1 + r) p_j``; the ``r * sum_{j < bs} p_j`` the model also gave block 0 is missing, so those rows sum to less than
1. Measured on a tiny random BigBird (hidden 32, 2 layers, 2 heads, ``bs = 4``, ``r = 2``, ``n = 45`` padded to 48,
``nb = 12``; default init, scores near 0, so each attended key has weight near ``1 / (real keys attended)``): query
blocks 2..9 attend ``(5 + r) * bs = 28`` slots, 3 of them padding (weight 0), so 25 real ones; eager shows 17 of them
(block 0 once, 3 window blocks, the last block's one real key) and its rows sum to 0.678 .. 0.683 (17/25 = 0.68);
blocks 1 and 10 attend ``(4 + r) * bs = 24`` slots (21 real), eager shows 13 and its rows sum to 0.617 .. 0.621
(13/21 = 0.619); blocks 0 and 11 (global) sum to 1. Where the eager map is complete (global rows, and every key
outside block 0 in the other rows) it equals the model's probabilities within float32 rounding (~1e-7), and on
block 0's keys it holds exactly one copy's weight (``eager * (1 + r)`` = the model's weight). With less uniform
weights (same model, ``initializer_range = 0.2``) those rows sum to 0.47 .. 0.92, depending on the input. It is
worse for a query whose ``attention_mask`` is 0 inside the input: its random copies of block 0 are penalised
(weight 0) while its global copy is not, and the eager map keeps the penalised copy, so block 0 shows 0 where the
model gave it most of the row (measured: a masked middle query, eager row sums 0.056 and 0.498, block 0 holding the
rest). In training mode with the
default plan no block repeats in a row, and the eager map is complete (it equals the model's weights within 1e-5).

Padding: the ``N_pad - n`` padding keys get ``-10000`` added to their scores, so their weight is exactly 0.0 in
float32 (``exp(-10000 + ...)`` underflows); measured 0.0 for every row of every layer and head.
:func:`capture_block_sparse` checks it (and refuses otherwise) and drops padding keys and padding queries: nothing
past ``n`` is stored.

attnviz stores it as :class:`BlockAttention`: per layer, head and query block the key blocks of its softmax (in a fixed
slot order, random blocks as drawn, repeats kept), each query's weights on those slots, and the global query rows
densely. Memory O(L*H*n*(5+r)*bs), never ``[N, N]``.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch

#: Block-sparse attention modules, by class name (transformers' ``modeling_big_bird`` / ``modeling_bigbird_pegasus``).
BLOCK_SPARSE_MODULES = ("BigBirdBlockSparseAttention", "BigBirdPegasusBlockSparseAttention")

#: The score transformers adds for a masked key (``attn_mask_penalty``).
MASK_PENALTY = -10000.0

#: Largest weight a padding key may receive before the capture refuses (measured: exactly 0.0).
PADDING_TOLERANCE = 1e-6

#: Fixed slot kinds of :attr:`BlockAttention.key_blocks` (``r`` random slots between the window and the last block).
SLOT_FIRST, SLOT_LEFT, SLOT_SELF, SLOT_RIGHT = 0, 1, 2, 3


def slot_kinds(num_random_blocks: int) -> tuple[str, ...]:
    """What each of the ``K = 5 + r`` slots of a query block is: ``("global", "window", "window", "window",
    "random" * r, "global")`` (key blocks ``0``, ``i-1``, ``i``, ``i+1``, the random ones, ``nb-1``)."""
    return ("global", "window", "window", "window") + ("random",) * num_random_blocks + ("global",)


def min_block_sparse_length(config) -> int:
    """Fewest tokens ``n`` for which transformers runs ``block_sparse`` attention: ``(5 + 2r) * bs + 1``.

    At ``n <= (5 + 2 * num_random_blocks) * block_size`` ``BigBirdModel.forward`` (and ``BigBirdPegasusEncoder``)
    warn and switch the model to ``original_full`` for good (``set_attention_type``: later, longer inputs stay dense).
    """
    return (5 + 2 * int(config.num_random_blocks)) * int(config.block_size) + 1


def block_sparse_modules(model) -> list[tuple[str, torch.nn.Module]]:
    """``[(module path, module)]`` of the model's block-sparse attention modules, in layer order (empty when the model
    is in ``original_full`` mode)."""
    return [(name, m) for name, m in model.named_modules() if type(m).__name__ in BLOCK_SPARSE_MODULES]


def key_block_table(rand_attn: torch.Tensor, num_blocks: int) -> torch.Tensor:
    """Each query block's key blocks, in slot order, as transformers' block-sparse attention attends them.

    Args:
        rand_attn: int ``[H, nb-2, r]``: the random key blocks of query blocks ``1 .. nb-2`` (transformers'
            ``rand_attn`` of one sequence).
        num_blocks: ``nb`` (``N_pad / block_size``).

    Returns:
        int64 ``[H, nb, 5 + r]``: slot ``k`` of query block ``i`` is key block ``0`` (k = 0), ``i-1, i, i+1``
        (k = 1, 2, 3), ``rand_attn[:, i-1]`` (k = 4 .. 3+r), ``nb-1`` (k = 4+r); -1 where the slot is not attended
        (block 1's left and block ``nb-2``'s right window slot, which are the global blocks themselves) and for the
        global query blocks ``0`` and ``nb-1`` (they attend every key; see :attr:`BlockAttention.global_rows`).
    """
    H, rows, r = (int(s) for s in rand_attn.shape)
    nb = int(num_blocks)
    if rows != nb - 2:
        raise ValueError(f"rand_attn has {rows} query blocks, expected nb - 2 = {nb - 2}")
    table = torch.full((H, nb, 5 + r), -1, dtype=torch.long)
    mid = torch.arange(1, nb - 1)
    table[:, 1:nb - 1, SLOT_FIRST] = 0
    table[:, 1:nb - 1, SLOT_LEFT] = mid - 1
    table[:, 1:nb - 1, SLOT_SELF] = mid
    table[:, 1:nb - 1, SLOT_RIGHT] = mid + 1
    table[:, 1:nb - 1, 4:4 + r] = rand_attn.to(torch.long).cpu()
    table[:, 1:nb - 1, 4 + r] = nb - 1
    table[:, 1, SLOT_LEFT] = -1  # block 1's left neighbour is global block 0 (slot 0)
    table[:, nb - 2, SLOT_RIGHT] = -1  # block nb-2's right neighbour is global block nb-1 (last slot)
    return table


def global_positions(n: int, block_size: int) -> tuple[int, ...]:
    """The real query positions of the two global blocks: ``0 .. bs-1`` and ``N_pad-bs .. n-1``."""
    bs = int(block_size)
    n_pad = -(-n // bs) * bs
    return tuple(range(bs)) + tuple(range(n_pad - bs, n))


@dataclass
class BlockAttention:
    """BigBird block-sparse attention of one stack (BigBird, BigBirdPegasus's encoder), stored sparsely.

    Memory O(L*H*n*(5+r)*bs + L*H*2bs*n), never ``[N, N]``. Every probability the model computed for a real query on
    a real key (one per slot of its softmax) is at one place (``bs = block_size``, ``nb = ceil(n / bs)``,
    ``K = 5 + r``):

    - ``key_blocks`` int64 ``[L, H, nb, K]``: query block ``i``'s key blocks, slot ``k`` (:func:`key_block_table`):
      ``0``, the window ``i-1, i, i+1``, the ``r`` random blocks the layer drew, ``nb-1``; -1 where the slot is not
      attended (block 1's left and block ``nb-2``'s right window slot; every slot of the global query blocks ``0``
      and ``nb-1``). A key block may appear in several slots of a row (eval mode: every random slot is block 0):
      the model counts it once per slot.
    - ``values`` float32 ``[L, H, n, K * bs]``: query ``q``'s weight on key ``key_blocks[l, h, q // bs, c // bs] * bs
      + c % bs`` (column ``c``); 0 in unattended slots, on padding keys (``>= n``; the model's weight there is 0) and in
      the rows of the global queries (see ``global_rows``).
    - ``global_index``: the global queries' positions (blocks ``0`` and ``nb-1``, real positions only);
      ``global_rows`` float32 ``[L, H, G, n]``: their weights over every key.

    For every real query row ``values.sum(-1) == 1`` (a global query's ``global_rows`` row sums to 1); :meth:`rows`
    adds up the slots that hold the same key.
    """

    kind: str
    n: int
    block_size: int
    key_blocks: torch.Tensor
    values: torch.Tensor
    global_index: tuple[int, ...]
    global_rows: torch.Tensor

    format = "blocks"

    @property
    def num_layers(self) -> int:
        return int(self.values.shape[0])

    @property
    def num_heads(self) -> int:
        return int(self.values.shape[1])

    @property
    def num_blocks(self) -> int:
        """``nb``: blocks of the padded sequence (``ceil(n / block_size)``)."""
        return int(self.key_blocks.shape[2])

    @property
    def num_random_blocks(self) -> int:
        """``r``: random key blocks per query block."""
        return int(self.key_blocks.shape[3]) - 5

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.key_blocks, self.values, self.global_rows))

    def rows(self, layer: int, positions: Sequence[int]) -> torch.Tensor:
        """Dense rows: float32 ``[H, R, n]``, query ``positions[r]``'s weight on every key of ``layer`` (a key held in
        several slots gets their sum, as the model counts it; 0 for keys the query does not attend)."""
        positions = [int(p) % self.n for p in positions]
        H, R, n, bs = self.num_heads, len(positions), self.n, self.block_size
        out = torch.zeros((H, R, n + 1), dtype=torch.float32)  # column n: sink for unattended / padding slots
        if not R:
            return out[:, :, :n]
        pos = torch.tensor(positions, dtype=torch.long)
        blocks = self.key_blocks[layer][:, pos // bs].long()  # [H, R, K]
        keys = (blocks[..., None] * bs + torch.arange(bs)).flatten(2)  # [H, R, K * bs]
        keys = torch.where((blocks[..., None] >= 0).expand(-1, -1, -1, bs).flatten(2) & (keys < n), keys,
                           torch.full_like(keys, n))
        out.scatter_add_(2, keys, self.values[layer][:, pos].float())
        gpos = {p: g for g, p in enumerate(self.global_index)}
        for r, q in enumerate(positions):
            if q in gpos:
                out[:, r, :n] = self.global_rows[layer, :, gpos[q]].float()
        return out[:, :, :n]

    def dense(self, layers: Sequence[int] | None = None) -> torch.Tensor:
        """Float32 ``[L', H, n, n]`` for ``layers`` (default all): every stored probability at its (query, key), 0
        elsewhere. Memory O(L'*H*n^2): for tests and short inputs."""
        layers = range(self.num_layers) if layers is None else list(layers)
        return torch.stack([self.rows(l, range(self.n)) for l in layers]) if len(layers) else torch.zeros(0)

    def row_sums(self) -> torch.Tensor:
        """Float32 ``[L, H, n]``: each query's total probability (1 up to rounding for every real query)."""
        total = self.values.float().sum(-1)
        for g, p in enumerate(self.global_index):
            total[:, :, p] = self.global_rows[:, :, g].float().sum(-1)
        return total

    #: Tensor names in an attention file (``--save-attn``), after the ``blocks/`` prefix.
    TENSORS = ("values", "key_blocks", "global_rows")

    def to_tensors(self, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
        """The tensors of an attention file: ``blocks/values``, ``blocks/global_rows`` (in ``dtype``) and
        ``blocks/key_blocks`` (int32), shapes as the fields."""
        out = {}
        for name in self.TENSORS:
            t = getattr(self, name)
            want = torch.int32 if name == "key_blocks" else dtype
            out[f"blocks/{name}"] = (t if t.dtype == want else t.to(want)).contiguous()
        return out

    def metadata(self) -> dict:
        """JSON-able description of the layout (file metadata): ``layout`` "blocks", ``blocks_kind``, ``n``,
        ``block_size``, ``num_blocks``, ``num_random_blocks``, ``global_index``, ``slots`` (:func:`slot_kinds`)."""
        return {"layout": "blocks", "blocks_kind": self.kind, "n": self.n, "block_size": self.block_size,
                "num_blocks": self.num_blocks, "num_random_blocks": self.num_random_blocks,
                "global_index": list(self.global_index), "slots": list(slot_kinds(self.num_random_blocks))}

    @classmethod
    def from_tensors(cls, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, Any]) -> "BlockAttention":
        """Rebuild from :meth:`to_tensors` / :meth:`metadata` (``blocks/`` names; other tensors are ignored; values
        as float32, key blocks as int64)."""
        return cls(kind=str(metadata["blocks_kind"]), n=int(metadata["n"]), block_size=int(metadata["block_size"]),
                   key_blocks=tensors["blocks/key_blocks"].long(), values=tensors["blocks/values"].float(),
                   global_index=tuple(int(i) for i in metadata["global_index"]),
                   global_rows=tensors["blocks/global_rows"].float())


# ---------------------------------------------------------------------------
# the probabilities of one layer, recomputed block by block from its own query / key states


def block_sparse_probs(query: torch.Tensor, key: torch.Tensor, rand_attn: torch.Tensor, block_size: int,
                       key_mask: torch.Tensor | None = None, query_mask: torch.Tensor | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One layer's block-sparse probabilities of one sequence, as ``bigbird_block_sparse_attention`` computes them.

    Scores ``(q . k) * (1 / sqrt(d))`` in the dtype of ``query``, ``-10000`` added for masked keys (and, on window
    slots of query blocks ``2 .. nb-3`` and on random slots, for masked queries), softmax over each query's slots
    (global query blocks: over all ``N_pad`` keys). Never forms ``[N_pad, N_pad]``: the largest temporary is
    ``[H, nb-2, bs, K, bs]``.

    Args:
        query, key: ``[H, N_pad, d]`` (the module's own ``query`` / ``key`` projections, heads split).
        rand_attn: int ``[H, nb-2, r]``, the random layout the module used.
        block_size: ``bs`` (``N_pad`` is a multiple of it).
        key_mask, query_mask: ``[N_pad]`` 0/1 (the padded attention mask; default all ones).

    Returns:
        ``(table, probs, global_probs)``: int64 ``[H, nb, K]`` (:func:`key_block_table`); ``[H, nb-2, bs, K * bs]``
        the weights of query blocks ``1 .. nb-2`` on their slots (0 on unattended slots); ``[H, 2 * bs, N_pad]`` the
        rows of query blocks ``0`` and ``nb-1``. The last two in the dtype of ``query``.
    """
    H, n_pad, d = (int(s) for s in query.shape)
    bs = int(block_size)
    nb = n_pad // bs
    dev, dt = query.device, query.dtype
    scale = 1 / math.sqrt(d)
    key_mask = torch.ones(n_pad, device=dev) if key_mask is None else key_mask.reshape(-1).to(dev)
    query_mask = torch.ones(n_pad, device=dev) if query_mask is None else query_mask.reshape(-1).to(dev)
    key_mask, query_mask = key_mask.to(dt), query_mask.to(dt)
    table = key_block_table(rand_attn, nb)
    K = int(table.shape[-1])
    r = K - 5

    gq = torch.cat([query[:, :bs], query[:, n_pad - bs:]], dim=1)  # [H, 2bs, d]
    gs = torch.matmul(gq, key.transpose(-1, -2)) * scale + (1.0 - key_mask) * MASK_PENALTY
    global_probs = torch.softmax(gs, dim=-1)

    mid = table[:, 1:nb - 1].to(dev)  # [H, nb-2, K]
    used = mid >= 0
    idx = mid.clamp(min=0)
    kb = key.reshape(H, nb, bs, d)
    gathered = kb[torch.arange(H, device=dev)[:, None, None], idx]  # [H, nb-2, K, bs, d]
    qb = query.reshape(H, nb, bs, d)[:, 1:nb - 1]  # [H, nb-2, bs, d]
    scores = torch.einsum("hiqd,hikjd->hiqkj", qb, gathered) * scale  # [H, nb-2, bs, K, bs]
    kmask = key_mask.reshape(nb, bs)[idx]  # [H, nb-2, K, bs]
    needs_query = torch.zeros((nb - 2, K), dtype=torch.bool, device=dev)  # slots masked by the query's mask too
    needs_query[:, 4:4 + r] = True
    needs_query[1:nb - 3, SLOT_LEFT:SLOT_RIGHT + 1] = True  # window of blocks 2 .. nb-3 (band_mask)
    qmask = query_mask.reshape(nb, bs)[1:nb - 1]  # [nb-2, bs]
    factor = torch.where(needs_query[:, None, :, None], qmask[:, :, None, None], torch.ones((), dtype=dt, device=dev))
    mask = kmask[:, :, None] * factor[None]  # [H, nb-2, bs, K, bs]
    scores = scores + (1.0 - mask) * MASK_PENALTY
    scores = scores.masked_fill(~used[:, :, None, :, None], float("-inf"))
    probs = torch.softmax(scores.flatten(-2), dim=-1)  # [H, nb-2, bs, K * bs]
    return table, probs, global_probs


def _eager_disagreement(table: torch.Tensor, probs: torch.Tensor, global_probs: torch.Tensor,
                        eager: torch.Tensor, block_size: int, query_mask: torch.Tensor | None = None) -> float:
    """Largest difference between the recomputed probabilities and transformers' own ``[H, N_pad, N_pad]`` map at the
    same (query, key), over the global rows and every slot whose key the eager map holds: a key held by one slot of
    the row, or by several slots of a query whose mask is 1 (then the slots have the same score and penalty, hence
    the same weight, and the eager map holds one of them). A masked query's repeated block 0 (global slot unpenalised,
    random slots penalised) is skipped: the eager map holds whichever copy was written last."""
    H, nbm2, bs, Kbs = (int(s) for s in probs.shape)
    n_pad = (nbm2 + 2) * bs
    dev = probs.device
    mid = table[:, 1:-1].to(dev)  # [H, nb-2, K]
    keys = (mid.clamp(min=0)[..., None] * bs + torch.arange(bs, device=dev)).flatten(2)  # [H, nb-2, K*bs]
    keys = keys[:, :, None].expand(-1, -1, bs, -1).reshape(H, nbm2 * bs, Kbs)
    got = torch.gather(eager[:, bs:n_pad - bs], 2, keys).reshape(H, nbm2, bs, Kbs)
    single = (mid[..., :, None] == mid[..., None, :]).sum(-1) == 1  # [H, nb-2, K]
    real = torch.ones(nbm2, bs, dtype=torch.bool, device=dev) if query_mask is None else \
        query_mask.reshape(-1).to(dev)[bs:n_pad - bs].reshape(nbm2, bs) > 0
    check = (mid >= 0)[:, :, None, :] & (single[:, :, None, :] | real[None, :, :, None])  # [H, nb-2, bs, K]
    check = check[..., None].expand(-1, -1, -1, -1, bs).reshape(H, nbm2, bs, Kbs)
    diff = ((got.float() - probs.float()).abs() * check).max()
    glob = torch.cat([eager[:, :bs], eager[:, n_pad - bs:]], dim=1)
    return max(float(diff), float((glob.float() - global_probs.float()).abs().max()))


# ---------------------------------------------------------------------------
# capture


def _input_shape(inputs: Mapping[str, Any]) -> tuple[int, int]:
    from attnviz.errors import UsageError

    for name in ("input_ids", "inputs_embeds"):
        value = inputs.get(name)
        if isinstance(value, torch.Tensor):
            return int(value.shape[0]), int(value.shape[1])
    raise UsageError("block-sparse capture needs input_ids or inputs_embeds")


def capture_block_sparse(model, inputs: Mapping[str, Any], report: dict | None = None
                         ) -> tuple[dict[str, BlockAttention], Any]:
    """One forward of a BigBird / BigBirdPegasus model, keeping every block-sparse probability it computes, sparsely.

    Hooks on each block-sparse attention module (``BigBirdBlockSparseAttention``,
    ``BigBirdPegasusBlockSparseAttention``): forward hooks on its ``query`` and ``key`` projections keep their outputs;
    a temporary instance attribute wrapping ``_create_rand_mask_from_inputs`` records the random layout
    (``rand_attn`` ``[1, H, nb-2, r]``) the module draws in this forward; a forward hook on the module then recomputes
    that layer's probabilities block by block from those states, the layout and the masks it received
    (:func:`block_sparse_probs`, the model's own formula), checks them against the dense map transformers builds
    anyway, wherever that map holds them (every global row, every slot of a real query; 1e-4 in float32, 2e-2 in
    half precision), checks that padding keys got 0, and copies the real rows into :class:`BlockAttention`. Nothing
    the model returns is changed; hooks and wrappers are removed in ``finally``. The capture forms no ``[N, N]``
    tensor (transformers 5.25 itself allocates a ``[1, H, N_pad, N_pad]`` map per layer, transiently, in every
    block-sparse forward, asked or not).

    Memory kept, per layer: ``values`` ``H*n*(5+r)*bs*4`` bytes, ``global_rows`` at most ``H*2bs*n*4``,
    ``key_blocks`` ``H*nb*(5+r)*8`` (BigBird-base, ``n = 4096``: 12 heads, ``bs = 64``, ``r = 3``: 96 MiB + 24 MiB
    per layer, against 768 MiB for a dense float32 map); scratch while a layer runs ``O(H * N_pad * (5+r) * (bs + d))``.

    Args:
        model: ``BigBirdModel``, ``BigBirdForMaskedLM``, ``BigBirdForSequenceClassification`` (any BigBird head) or a
            BigBirdPegasus model, with ``attention_type == "block_sparse"``. Eval mode: the random blocks are all block
            0 (module docstring); training mode: the layout drawn (seeded by layer) is recorded as used.
        inputs: one sequence, ``model(**inputs)``'s arguments: ``input_ids`` (or ``inputs_embeds``) ``[1, n]``,
            optional ``attention_mask``, BigBirdPegasus's decoder inputs.
        report: a dict that receives ``eager_max_abs_diff``: the largest difference, over every layer, between the
            recomputed probabilities and the model's own map wherever that map holds them.

    Returns:
        ``({kind: BlockAttention}, outputs)``: ``kind`` is ``"self"`` (BigBird) or ``"encoder"`` (BigBirdPegasus);
        ``outputs`` are ``model(**inputs)``'s, identical to a plain forward's.

    Raises:
        AttentionRefused: the model would not run block-sparse attention: it is (or was switched to)
            ``original_full`` (no block-sparse module), or ``n <= (5 + 2r) * bs`` (transformers would switch it to
            ``original_full`` for good; refused before the forward, the model is left unchanged: capture it densely);
            or the recomputed probabilities disagree with the model's map, or a padding key got weight.
        UsageError: a batch of more than one sequence, or no ``input_ids`` / ``inputs_embeds``.
        ModelError: a block-sparse layer did not run exactly once, or its states / layout were not seen.
    """
    from attnviz.errors import AttentionRefused, ModelError, UsageError
    from attnviz.types import ENCODER, SELF

    modules = block_sparse_modules(model)
    config = model.config
    if not modules:
        raise AttentionRefused(f"{type(model).__name__} runs no block-sparse attention (attention_type "
                               f"{getattr(config, 'attention_type', None)!r}): its attention is dense; "
                               "capture it as such")
    batch, n = _input_shape(inputs)
    if batch != 1:
        raise UsageError(f"block-sparse capture takes one sequence, not a batch of {batch}")
    bs = int(modules[0][1].block_size)
    r = int(modules[0][1].num_random_blocks)
    shortest = (5 + 2 * r) * bs + 1
    if n < shortest:
        raise AttentionRefused(f"{n} tokens are too few for BigBird block-sparse attention (block_size {bs}, "
                               f"{r} random blocks: at least {shortest}); transformers would switch the model to "
                               f"'original_full' (dense) for good: capture it densely")
    kind = ENCODER if getattr(config, "is_encoder_decoder", False) else SELF
    L = len(modules)
    H = int(modules[0][1].num_attention_heads)
    nb = -(-n // bs)
    K = 5 + r
    gidx = global_positions(n, bs)
    G = len(gidx)
    key_blocks = torch.full((L, H, nb, K), -1, dtype=torch.long)
    values = torch.zeros((L, H, n, K * bs), dtype=torch.float32)
    global_rows = torch.zeros((L, H, G, n), dtype=torch.float32)
    order = {id(m): i for i, (_, m) in enumerate(modules)}
    states: dict[tuple[int, str], torch.Tensor] = {}
    layouts: dict[int, torch.Tensor] = {}
    seen: list[int] = []

    def keep(mod_id: int, name: str):
        def hook(linear, args, output):
            states[(mod_id, name)] = output

        return hook

    def wrap(module):
        original = module._create_rand_mask_from_inputs  # a staticmethod: called without self

        def recorded(*args, **kwargs):
            bound = inspect.signature(original).bind(*args, **kwargs)
            layouts[id(module)] = bound.arguments["rand_attn"].detach()
            return original(*args, **kwargs)

        return recorded

    def post(module, args, kwargs, output):
        mid = id(module)
        layer = order[mid]
        bound = inspect.signature(module.forward).bind(*args, **kwargs).arguments
        hidden = bound["hidden_states"]
        n_pad = int(hidden.shape[1])
        if n_pad != nb * bs:
            raise ModelError(f"{type(module).__name__} ran on {n_pad} positions, expected {nb * bs} ({n} padded to "
                             f"blocks of {bs})")
        try:
            q, k, rand = states.pop((mid, "query")), states.pop((mid, "key")), layouts.pop(mid)
        except KeyError:
            raise ModelError(f"{type(module).__name__} (layer {layer}): its query/key states or random layout "
                             "were not seen; this transformers version computes block-sparse attention "
                             "differently") from None
        d = int(module.attention_head_size)
        q = q[0].reshape(n_pad, H, d).transpose(0, 1)
        k = k[0].reshape(n_pad, H, d).transpose(0, 1)
        to_mask = bound.get("to_mask")
        from_mask = bound.get("from_blocked_mask")
        key_mask = None if to_mask is None else to_mask[0].reshape(-1)
        query_mask = None if from_mask is None else from_mask[0].reshape(-1)
        table, probs, gprobs = block_sparse_probs(q, k, rand[0], bs, key_mask, query_mask)
        eager = output[1] if isinstance(output, tuple) and len(output) > 1 else None
        if isinstance(eager, torch.Tensor) and tuple(eager.shape) == (1, H, n_pad, n_pad):
            tol = 1e-4 if probs.dtype == torch.float32 else 2e-2
            worst = _eager_disagreement(table, probs, gprobs, eager[0], bs, query_mask)
            if report is not None:
                report["eager_max_abs_diff"] = max(report.get("eager_max_abs_diff", 0.0), float(worst))
            if not worst <= tol:
                raise AttentionRefused(f"{type(module).__name__} (layer {layer}): recomputed block-sparse "
                                       f"probabilities differ from the model's by {worst:.2g}")
        probs = probs.float().reshape(H, (nb - 2) * bs, K * bs)
        gprobs = gprobs.float()
        # padding keys (>= n) must have weight 0; then they are dropped
        slot_keys = (table[:, 1:nb - 1, :, None] * bs + torch.arange(bs)).flatten(2)  # [H, nb-2, K*bs]
        pad_slot = ((table[:, 1:nb - 1, :, None] >= 0) & (slot_keys.reshape(H, nb - 2, K, bs) >= n)).flatten(2)
        pad_slot = pad_slot[:, :, None].expand(-1, -1, bs, -1).reshape(H, (nb - 2) * bs, K * bs).to(probs.device)
        lost = max(float((probs * pad_slot).sum(-1).max()), float(gprobs[..., n:].sum(-1).max()) if n_pad > n else 0.0)
        if lost > PADDING_TOLERANCE:
            raise AttentionRefused(f"{type(module).__name__} (layer {layer}): padding keys got weight {lost:.2g}")
        probs = probs.masked_fill(pad_slot, 0.0)
        key_blocks[layer] = table
        values[layer, :, bs:(nb - 1) * bs] = probs.cpu()
        g_last = n - (nb - 1) * bs  # real queries in the last block
        global_rows[layer, :, :bs] = gprobs[:, :bs, :n].cpu()
        global_rows[layer, :, bs:] = gprobs[:, bs:bs + g_last, :n].cpu()
        seen.append(layer)
        return None

    handles = []
    wrapped = []
    try:
        for _, m in modules:
            handles.append(m.query.register_forward_hook(keep(id(m), "query")))
            handles.append(m.key.register_forward_hook(keep(id(m), "key")))
            handles.append(m.register_forward_hook(post, with_kwargs=True))
            previous = m.__dict__.get("_create_rand_mask_from_inputs")
            m._create_rand_mask_from_inputs = wrap(m)
            wrapped.append((m, previous))
        with torch.inference_mode():
            outputs = model(**inputs)
    finally:
        for h in handles:
            h.remove()
        for m, previous in wrapped:
            if previous is None:
                m.__dict__.pop("_create_rand_mask_from_inputs", None)
            else:
                m._create_rand_mask_from_inputs = previous
        states.clear()
        layouts.clear()
    if sorted(seen) != list(range(L)):
        raise ModelError(f"{type(model).__name__}: {L - len(set(seen))} of {L} block-sparse layers did not run "
                         f"({len(seen)} calls; did the model switch to 'original_full' or drop layers?)")
    return {kind: BlockAttention(kind=kind, n=n, block_size=bs, key_blocks=key_blocks, values=values,
                                 global_index=gidx, global_rows=global_rows)}, outputs

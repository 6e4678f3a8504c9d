"""Sliding-window + global attention (Longformer, LED's encoder), as transformers' eager attention returns it.

Longformer computes each query's attention over its window of ``2w + 1`` keys plus the global tokens, and each
global token's attention over every key (with its own ``query_global``/``key_global`` projections).
``output_attentions=True`` returns exactly those probabilities in two tensors per layer:

- ``attentions`` ``[B, H, N, G + 2w + 1]``: per query, its weights on the ``G`` global keys (in position order), then
  on the keys at offsets ``-w .. w`` (a global key inside the window is 0 there: its weight is in the first ``G``
  columns); a global query's row is all 0 (see the next tensor);
- ``global_attentions`` ``[B, H, N_padded, G]``: global token ``g``'s weights on every key (column ``g``).

:func:`band_to_dense` places them into ``[B, H, N, N]``: every probability the model computed at its (query, key),
0 for a key the query never attends (outside the window, padding). Rows sum to 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch


#: Largest dense copy of a sliding-window model's attention (Longformer, LED) attnviz makes, in bytes.
DENSE_BAND_BYTES = 4 << 30


def check_dense_budget(n: int, layers: int, heads: int) -> None:
    """Refuse an input whose dense float32 maps (``layers x heads x n x n``) exceed :data:`DENSE_BAND_BYTES`.

    Raises:
        UsageError: too long; the message names the ``--max-length`` that fits.
    """
    from attnviz.errors import UsageError

    need = layers * heads * n * n * 4
    if need > DENSE_BAND_BYTES:
        fits = int((DENSE_BAND_BYTES / (layers * heads * 4)) ** 0.5)
        raise UsageError(f"{n} tokens of sliding-window attention as dense maps would take {need / 2**30:.1f} GiB "
                         f"({layers} layers x {heads} heads); use --max-length {fits} or less")


def global_positions(mask: torch.Tensor) -> list[int]:
    """Positions marked global (1) in a ``[1, N]`` ``global_attention_mask``, in order."""
    return [int(i) for i in torch.nonzero(mask[0] > 0).flatten()]


def band_to_dense(local: torch.Tensor, global_rows: torch.Tensor | None, globals_: Sequence[int], n: int) -> torch.Tensor:
    """One layer's Longformer attention as a dense float32 ``[B, H, n, n]`` map.

    Args:
        local: ``[B, H, N, G + 2w + 1]`` (``output_attentions``' ``attentions``; ``N >= n``).
        global_rows: ``[B, H, N_padded, G]`` (``global_attentions``), or None without global tokens.
        globals_: the ``G`` global positions, in order.
        n: the sequence length to keep (the input's, before Longformer's padding to a multiple of the window).
    """
    b, h, _, width = local.shape
    g = len(globals_)
    band = width - g
    w = (band - 1) // 2
    out = torch.zeros((b, h, n, n), dtype=torch.float32)
    local = local[:, :, :n].float()
    rows = torch.arange(n)
    for o in range(band):  # offset o - w from the query
        keys = rows + (o - w)
        ok = (keys >= 0) & (keys < n)
        out[:, :, rows[ok], keys[ok]] += local[:, :, rows[ok], g + o]
    for k, pos in enumerate(globals_):
        if pos < n:
            out[:, :, :, pos] += local[:, :, :, k]
    if global_rows is not None:
        for k, pos in enumerate(globals_):
            if pos < n:
                out[:, :, pos, :] = global_rows[:, :, :n, k].float()
    return out


# ---------------------------------------------------------------------------
# sparse layouts: what attnviz keeps for long documents (never [N, N])


@dataclass
class BandAttention:
    """Sliding-window attention of one stack (Longformer, LED's encoder, LongT5's encoder), stored sparsely.

    Memory O(L*H*N*(2W+1+G+S)), never ``[N, N]``. Every probability the model computed is at one place:

    - ``local`` float32 ``[L, H, N, 2W+1]``: query ``q``'s weight on key ``q + o - W`` (column ``o``); 0 where that
      key is outside ``[0, N)``, outside the layer's own window (``window[l] < W``), padding, a global key (its weight
      is in ``global_keys``) or where the query is global (its row is in ``global_rows``).
    - ``global_index``: the ``G`` global token positions (Longformer's ``global_attention_mask``), in order;
      ``global_keys`` float32 ``[L, H, N, G]``: every query's weight on each global key (0 in a global query's row);
      ``global_rows`` float32 ``[L, H, G, N]``: each global query's weights over every key.
    - ``side_spans``: LongT5 transient-global keys, which are not tokens but per-block summaries; key ``s`` sums the
      tokens ``side_spans[s] = (start, end)`` (end exclusive); ``side_keys`` float32 ``[L, H, N, S]`` their weights.

    For every real query row ``sum(local) + sum(global_keys) + sum(side_keys) == 1`` (a global query's
    ``global_rows`` row sums to 1).
    """

    kind: str
    n: int
    window: tuple[int, ...]
    local: torch.Tensor
    global_index: tuple[int, ...] = ()
    global_keys: torch.Tensor | None = None
    global_rows: torch.Tensor | None = None
    side_spans: tuple[tuple[int, int], ...] = ()
    side_keys: torch.Tensor | None = None

    format = "band"

    @property
    def num_layers(self) -> int:
        return int(self.local.shape[0])

    @property
    def num_heads(self) -> int:
        return int(self.local.shape[1])

    @property
    def half_width(self) -> int:
        """``W``: the largest one-sided window; ``local``'s column ``W`` is the query itself."""
        return (int(self.local.shape[-1]) - 1) // 2

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.local, self.global_keys, self.global_rows,
                                                            self.side_keys) if t is not None)

    def rows(self, layer: int, positions: Sequence[int]) -> torch.Tensor:
        """Dense rows: float32 ``[H, R, N (+ S)]``, query ``positions[r]``'s weight on every key of ``layer``
        (side keys, if any, appended after the ``N`` tokens)."""
        positions = list(positions)
        return dense_rows(self.local[layer, :, positions], self.half_width, positions, self.n, self.global_index,
                          None if self.global_keys is None else self.global_keys[layer, :, positions],
                          None if self.global_rows is None else self.global_rows[layer],
                          None if self.side_keys is None else self.side_keys[layer, :, positions])

    def dense(self, layers: Sequence[int] | None = None) -> torch.Tensor:
        """Float32 ``[L', H, N, N (+ S)]`` for ``layers`` (default all): every stored probability at its (query, key),
        0 elsewhere. Memory O(L'*H*N^2): for tests and short inputs."""
        layers = range(self.num_layers) if layers is None else list(layers)
        return torch.stack([self.rows(l, range(self.n)) for l in layers]) if len(layers) else torch.zeros(0)

    #: Tensor names in an attention file (``--save-attn``), after the kind's prefix.
    TENSORS = ("local", "global_keys", "global_rows", "side_keys")

    def to_tensors(self, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
        """The tensors of an attention file: ``band/local``, and where present ``band/global_keys``,
        ``band/global_rows``, ``band/side_keys`` (shapes as the fields), in ``dtype``."""
        out = {}
        for name in self.TENSORS:
            t = getattr(self, name)
            if t is not None:
                out[f"band/{name}"] = t if t.dtype == dtype else t.to(dtype)
        return out

    def metadata(self) -> dict:
        """JSON-able description of the layout (file metadata): ``layout`` "band", ``band_kind``, ``n``, ``window``
        (one-sided, per layer), ``half_width``, ``global_index``, ``side_spans``."""
        return {"layout": "band", "band_kind": self.kind, "n": self.n, "window": list(self.window),
                "half_width": self.half_width, "global_index": list(self.global_index),
                "side_spans": [list(s) for s in self.side_spans]}

    @classmethod
    def from_tensors(cls, tensors: dict, metadata: dict) -> "BandAttention":
        """Rebuild from :meth:`to_tensors` / :meth:`metadata` (tensors as float32; ``band/`` names)."""
        get = lambda name: tensors[f"band/{name}"].float() if f"band/{name}" in tensors else None  # noqa: E731
        return cls(kind=metadata["band_kind"], n=int(metadata["n"]), window=tuple(int(w) for w in metadata["window"]),
                   local=get("local"), global_index=tuple(int(i) for i in metadata.get("global_index", ())),
                   global_keys=get("global_keys"), global_rows=get("global_rows"),
                   side_spans=tuple(tuple(int(v) for v in s) for s in metadata.get("side_spans", ())),
                   side_keys=get("side_keys"))

    def row_sums(self) -> torch.Tensor:
        """Float32 ``[L, H, N]``: each query's total probability (1 up to rounding for every real query)."""
        total = self.local.float().sum(-1)
        if self.global_keys is not None:
            total = total + self.global_keys.float().sum(-1)
        if self.side_keys is not None:
            total = total + self.side_keys.float().sum(-1)
        if self.global_rows is not None:
            for k, p in enumerate(self.global_index):
                total[:, :, p] = self.global_rows[:, :, k].float().sum(-1)
        return total


def dense_rows(local: torch.Tensor, half_width: int, positions: Sequence[int], n: int, global_index: Sequence[int] = (),
               global_keys: torch.Tensor | None = None, global_rows: torch.Tensor | None = None,
               side_keys: torch.Tensor | None = None) -> torch.Tensor:
    """Some queries' rows of one layer's band layout as dense float32 ``[H, R, n (+ S)]``.

    Args:
        local: ``[H, R, 2W+1]`` the queries' band rows (column ``o``: key ``q + o - W``).
        half_width: ``W``.
        positions: the ``R`` query positions.
        n: tokens.
        global_index: the ``G`` global positions; ``global_keys`` ``[H, R, G]`` the queries' weights on them;
            ``global_rows`` ``[H, G, >= n]`` the global queries' rows.
        side_keys: ``[H, R, S]`` weights on LongT5's transient-global keys, appended after the ``n`` tokens.
    """
    H, R = int(local.shape[0]), len(positions)
    s = 0 if side_keys is None else int(side_keys.shape[-1])
    out = torch.zeros((H, R, n + s), dtype=torch.float32)
    gpos = {p: k for k, p in enumerate(global_index)}
    gkeep = torch.tensor([k for k, p in enumerate(global_index) if p < n], dtype=torch.long)
    gidx = torch.tensor([p for p in global_index if p < n], dtype=torch.long)
    W = half_width
    for r, q in enumerate(positions):
        if q in gpos and global_rows is not None:
            out[:, r, :n] = global_rows[:, gpos[q], :n].float()
            continue
        lo, hi = max(0, q - W), min(n, q + W + 1)
        out[:, r, lo:hi] = local[:, r, lo - q + W:hi - q + W].float()
        if global_keys is not None and len(gidx):
            out[:, r, gidx] += global_keys[:, r, gkeep].float()
        if s:
            out[:, r, n:] = side_keys[:, r].float()
    return out


# ---------------------------------------------------------------------------
# capture: Longformer and LED's encoder, hooked layer by layer


def hooked_forward(model, modules, pre, post, inputs):
    """``model(**inputs)`` under ``torch.inference_mode()`` with a forward pre-hook ``pre`` and a forward hook ``post``
    (both ``with_kwargs``) on each of ``modules``; the hooks are removed in ``finally``. Returns the outputs."""
    handles = []
    try:
        for m in modules:
            handles.append(m.register_forward_pre_hook(pre, with_kwargs=True))
            handles.append(m.register_forward_hook(post, with_kwargs=True))
        with torch.inference_mode():
            return model(**inputs)
    finally:
        for h in handles:
            h.remove()


#: Attention modules with a sliding window + global tokens, by class name.
SLIDING_WINDOW_MODULES = ("LongformerSelfAttention", "LEDEncoderSelfAttention")


def sliding_window_modules(model) -> list[tuple[str, torch.nn.Module]]:
    """``[(module path, module)]`` of the model's sliding-window attention modules, in layer order."""
    return [(name, m) for name, m in model.named_modules() if type(m).__name__ in SLIDING_WINDOW_MODULES]


@dataclass
class SlidingCapture:
    """What :func:`capture_sliding_window` returns.

    ``kind``: ``"self"`` (Longformer) or ``"encoder"`` (LED); ``band``: every layer's probabilities
    (:class:`BandAttention`), or None when only ``rows`` were asked for; ``rows``: float32 ``[L, H, R, N]`` dense rows
    of the queries ``row_index`` (None without); ``global_index``: the global token positions; ``outputs``: the
    model's output (unchanged by the capture).
    """

    kind: str
    n: int
    num_layers: int
    num_heads: int
    window: tuple[int, ...]
    global_index: tuple[int, ...]
    band: BandAttention | None
    rows: torch.Tensor | None
    row_index: tuple[int, ...]
    outputs: object


def capture_sliding_window(model, inputs, rows: Sequence[int] | None = None, keep_band: bool = True) -> SlidingCapture:
    """One forward pass of a Longformer or LED model, keeping every sliding-window attention probability sparsely.

    Each ``LongformerSelfAttention`` / ``LEDEncoderSelfAttention`` is asked for its probabilities (the
    ``output_attentions`` its eager code returns: the band ``[B, N_padded, H, G + 2w + 1]`` and the global tokens'
    rows ``[B, H, G, N_padded]``); a forward hook copies them into :class:`BandAttention` as each layer produces
    them (or only the rows of ``rows``) and hands the layer nothing else, so no layer's probabilities outlive it and
    no ``[N, N]`` map ever exists. Memory: the band, O(L*H*N*(2W+1+2G)) float32 (``keep_band``), or
    O(L*H*R*N) for ``rows``. Hooks are removed in ``finally``; the model's outputs are those of a plain forward.
    Window padding (Longformer pads ``N`` to a multiple of the window) is cut: nothing past the input's ``N``.

    Args:
        model: a Longformer or LED model in eval mode.
        inputs: ``input_ids`` ``[1, N]`` (+ ``attention_mask``, ``global_attention_mask``, LED's decoder inputs).
        rows: query positions whose dense rows to keep in every layer and head (negative from the end).
        keep_band: keep every layer's band (False: only ``rows``).

    Raises:
        ModelError: the model has no sliding-window attention module, or a module returned no probabilities.
    """
    from attnviz.errors import ModelError
    from attnviz.types import ENCODER, SELF

    modules = sliding_window_modules(model)
    if not modules:
        raise ModelError(f"{type(model).__name__} has no sliding-window attention (Longformer / LED) to capture")
    ids = inputs.get("input_ids")
    n = int(ids.shape[-1])
    L = len(modules)
    H = int(modules[0][1].num_heads)
    windows = tuple(int(m.one_sided_attn_window_size) for _, m in modules)
    W = max(windows)
    kind = ENCODER if getattr(model.config, "is_encoder_decoder", False) else SELF
    row_index = tuple(sorted({r % n for r in rows})) if rows else ()
    order = {id(m): i for i, (_, m) in enumerate(modules)}
    state: dict = {"global": None, "seen": set()}
    local = torch.empty((L, H, n, 2 * W + 1), dtype=torch.float32) if keep_band else None  # every layer writes all of it
    kept_rows = torch.zeros((L, H, len(row_index), n), dtype=torch.float32) if row_index else None
    store: dict = {}

    def pre(module, args, kwargs):
        kwargs["output_attentions"] = True
        return args, kwargs

    def post(module, args, kwargs, output):
        layer = order[id(module)]
        w = int(module.one_sided_attn_window_size)
        probs = output[1]  # [B, N_padded, H, G + 2w + 1]
        is_global = kwargs.get("is_index_global_attn")
        globals_ = tuple(int(i) for i in torch.nonzero(is_global[0]).flatten()) if is_global is not None else ()
        globals_ = tuple(p for p in globals_ if p < n)
        g = int(probs.shape[-1]) - (2 * w + 1)
        if g != len(globals_):
            raise ModelError(f"{type(module).__name__} returned {g} global columns for {len(globals_)} global tokens")
        state["global"] = globals_
        grows = output[2][0, :, :, :n].cpu() if g and len(output) > 2 else None  # [H, G, N]
        band = probs[0, :n].permute(1, 0, 2).cpu()  # [H, N, G + 2w + 1] (on the CPU: a model on an accelerator)
        if local is not None:
            local[layer, :, :, :W - w] = 0.0  # a narrower layer's window inside the band
            local[layer, :, :, W + w + 1:] = 0.0
            local[layer, :, :, W - w:W + w + 1] = band[:, :, g:].float()
            if g:
                if "gk" not in store:
                    store["gk"] = torch.zeros((L, H, n, g), dtype=torch.float32)
                    store["gr"] = torch.zeros((L, H, g, n), dtype=torch.float32)
                store["gk"][layer] = band[:, :, :g].float()
                store["gr"][layer] = grows.float()
        if kept_rows is not None:
            sel = list(row_index)
            kept_rows[layer] = dense_rows(band[:, sel, g:], w, sel, n, globals_, band[:, sel, :g] if g else None, grows)
        state["seen"].add(layer)
        return (output[0],)

    outputs = hooked_forward(model, [m for _, m in modules], pre, post, inputs)
    if len(state["seen"]) != L:
        raise ModelError(f"{type(model).__name__}: {L - len(state['seen'])} of {L} sliding-window layers did not run")
    globals_ = state["global"] or ()
    band = None
    if local is not None:
        band = BandAttention(kind=kind, n=n, window=windows, local=local, global_index=globals_,
                             global_keys=store.get("gk"), global_rows=store.get("gr"))
    return SlidingCapture(kind=kind, n=n, num_layers=L, num_heads=H, window=windows, global_index=globals_, band=band,
                          rows=kept_rows, row_index=row_index, outputs=outputs)

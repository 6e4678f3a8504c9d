"""Every sparse-attention capture behind one call (the long-document route of ``attnviz text``, ``attnviz check``):
Longformer / LED (:func:`attnviz.sparse.capture_sliding_window`), LongT5 (:mod:`attnviz.longt5`) and BigBird
(:mod:`attnviz.blocksparse`), and the reference the run-time check compares them with."""

from __future__ import annotations

from typing import Sequence

import torch

from attnviz.sparse import BandAttention, SlidingCapture, capture_sliding_window, global_positions

#: Model types whose encoder (or only stack) attention is sparse: a band for Longformer / LED (sliding window + global
#: tokens) and LongT5 (local / transient-global), blocks for BigBird / BigBirdPegasus (block-sparse mode).
BAND_TYPES = ("longformer", "led", "longt5", "big_bird", "bigbird_pegasus")
BLOCK_TYPES = ("big_bird", "bigbird_pegasus")


def capture_band(model, inputs, rows: Sequence[int] | None = None, report: dict | None = None) -> SlidingCapture:
    """Every sparse attention layer of ``model`` (see :data:`BAND_TYPES`) in one forward pass: Longformer / LED through
    :func:`capture_sliding_window`, LongT5's encoder through :func:`attnviz.longt5.capture_longt5_encoder`, BigBird's
    block-sparse layers through :func:`attnviz.blocksparse.capture_block_sparse` (``SlidingCapture.band`` is then a
    :class:`~attnviz.blocksparse.BlockAttention`; ``report`` receives its ``eager_max_abs_diff``); ``rows``: query
    positions whose dense rows ``[L, H, R, N (+ S)]`` to keep too.

    Raises:
        ModelError: not a sparse-attention model (or as the captures raise).
    """
    from attnviz.errors import ModelError

    model_type = getattr(model.config, "model_type", None)
    if model_type in ("longformer", "led"):
        return capture_sliding_window(model, inputs, rows)
    if model_type in BLOCK_TYPES:
        from attnviz.blocksparse import capture_block_sparse

        found, outputs = capture_block_sparse(model, inputs, report)
        (kind, band), = found.items()
    elif model_type == "longt5":
        from attnviz.longt5 import capture_longt5_encoder

        band, outputs = capture_longt5_encoder(model, inputs)
    else:
        raise ModelError(f"{type(model).__name__} ({model_type}) has no sparse attention to capture")
    row_index = tuple(sorted({r % band.n for r in rows})) if rows else ()
    kept = torch.stack([band.rows(l, row_index) for l in range(band.num_layers)]) if row_index else None
    return SlidingCapture(kind=band.kind, n=band.n, num_layers=band.num_layers, num_heads=band.num_heads,
                          window=getattr(band, "window", ()), global_index=tuple(getattr(band, "global_index", ())),
                          band=band, rows=kept, row_index=row_index, outputs=outputs)


def eager_band(model, inputs) -> BandAttention:
    """The reference for the run-time check: the model's own eager ``output_attentions`` (Longformer / LED: the band
    ``[1, H, N, G + 2w + 1]`` and global rows ``[1, H, N_padded, G]`` per layer; LongT5: the encoder's blocked maps) as
    a float32 :class:`BandAttention` (``[L, H, N, 2W+1]`` ...), built from the returned outputs only; one forward.

    Args:
        model: a Longformer, LED or LongT5 model (BigBird's eager map is incomplete: see :mod:`attnviz.blocksparse`).
        inputs: one sequence, ``input_ids`` ``[1, N]`` and what the model takes besides.
    """
    model_type = getattr(model.config, "model_type", None)
    with torch.inference_mode():
        out = model(**inputs, output_attentions=True)
    n = int(inputs["input_ids"].shape[-1])
    if model_type == "longt5":
        from attnviz.longt5 import band_from_blocked

        cfg = model.config
        transient = getattr(cfg, "encoder_attention_type", "local") == "transient-global"
        return band_from_blocked(out.encoder_attentions, n, int(cfg.local_radius),
                                 int(cfg.global_block_size) if transient else None, inputs.get("attention_mask"))
    from attnviz.types import ENCODER, SELF

    encdec = bool(getattr(model.config, "is_encoder_decoder", False))
    local = out.encoder_attentions if encdec else out.attentions
    glob = (out.encoder_global_attentions if encdec else out.global_attentions) or [None] * len(local)
    mask = inputs.get("global_attention_mask")
    globals_ = global_positions(mask) if mask is not None else []
    globals_ = [p for p in globals_ if p < n]
    g = len(globals_)
    W = max((int(a.shape[-1]) - g - 1) // 2 for a in local)
    L, H = len(local), int(local[0].shape[1])
    band = torch.zeros((L, H, n, 2 * W + 1))
    gk = torch.zeros((L, H, n, g)) if g else None
    gr = torch.zeros((L, H, g, n)) if g else None
    windows = []
    for l, (a, gl) in enumerate(zip(local, glob)):  # a: [1, H, N, G + 2w + 1]; gl: [1, H, N_padded, G]
        w = (int(a.shape[-1]) - g - 1) // 2
        windows.append(w)
        band[l, :, :, W - w:W + w + 1] = a[0, :, :n, g:].float()
        if g:
            gk[l] = a[0, :, :n, :g].float()
            gr[l] = gl[0, :, :n].transpose(-1, -2).float()
    return BandAttention(kind=ENCODER if encdec else SELF, n=n, window=tuple(windows), local=band,
                         global_index=tuple(globals_), global_keys=gk, global_rows=gr)

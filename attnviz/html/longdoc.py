"""The HTML report of a long document (``attnviz text --format html`` on the long-document route): one offline page
that pans and zooms along the document and decodes each layer's data only when that layer is shown.

Payload (drawn by ``assets/longdoc.js``; numbers are attention probabilities, head means):

- ``tokens`` (``N`` strings), ``layout`` (``"band"`` or ``"blocks"``), ``window``, ``global_index``, ``side_spans``,
  ``checks`` and the model's labels;
- per layer, base64 blocks the page decodes on demand: ``top_idx`` uint32 ``[N, k]`` and ``top_w`` float32 ``[N, k]``,
  each query's ``k`` strongest keys and their exact weights (a LongT5 transient-global key ``s`` is index ``N + s``),
  and the overview: the band ``[offsets, columns]`` (mean over groups of ``pool`` queries and ``offset_pool`` offsets)
  or BigBird's block map ``[blocks, blocks]``, uint8 on a square-root scale of the layer's ``vmax`` (255: no key).

The page shows exact weights for each query's ``k`` strongest keys and says how much of the row they hold; the
overview is a reduced-resolution picture of every probability and says by how much it is reduced.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from attnviz.html.page import render_page
from attnviz.html.payload import b64

#: Strongest keys per query kept for the page.
TOP_KEYS = 16
#: Largest overview, in cells (queries / offsets are averaged in groups beyond it).
MAX_COLUMNS, MAX_OFFSETS = 2048, 128
#: Queries per chunk when finding each row's strongest keys (a ``[H, chunk, N]`` scratch).
CHUNK = 256


def top_keys(sparse, layer: int, k: int = TOP_KEYS) -> tuple[np.ndarray, np.ndarray]:
    """Each query's ``k`` strongest keys in ``layer`` (head mean): uint32 ``[N, k]`` indices (``N + s`` for a LongT5
    transient-global key ``s``) and their float32 weights, strongest first; zero weights come last.

    A band is searched in its own layout (the ``2W + 1`` band columns, the global keys, the summary keys; a global
    query's row over every key): O(N * (2W + 1 + G + S)), never ``[N, N]``. BigBird's rows are built densely
    :data:`CHUNK` queries at a time (its documents are at most a few thousand tokens).
    """
    n = sparse.n
    if getattr(sparse, "format", "") != "band":
        k = min(k, n)
        idx = np.zeros((n, k), dtype=np.uint32)
        w = np.zeros((n, k), dtype=np.float32)
        for q0 in range(0, n, CHUNK):
            q1 = min(n, q0 + CHUNK)
            top = torch.topk(sparse.rows(layer, range(q0, q1)).mean(0), k, dim=-1)
            idx[q0:q1] = top.indices.numpy().astype(np.uint32)
            w[q0:q1] = top.values.numpy()
        return idx, w
    W = sparse.half_width
    local = sparse.local[layer].float().mean(0)  # [N, 2W+1]
    keys = torch.arange(n)[:, None] + torch.arange(-W, W + 1)[None, :]  # [N, 2W+1]
    local = torch.where((keys >= 0) & (keys < n), local, torch.zeros(()))  # (0 there already; never an index < 0)
    keys = keys.clamp(0, n - 1)
    cand_w, cand_k = [local], [keys]
    G = len(sparse.global_index)
    if G and sparse.global_keys is not None:
        cand_w.append(sparse.global_keys[layer].float().mean(0))  # [N, G]
        cand_k.append(torch.tensor(sparse.global_index)[None, :].expand(n, G))
    S = len(sparse.side_spans)
    if S and sparse.side_keys is not None:
        cand_w.append(sparse.side_keys[layer].float().mean(0))  # [N, S]
        cand_k.append((n + torch.arange(S))[None, :].expand(n, S))
    weights, indices = torch.cat(cand_w, 1), torch.cat(cand_k, 1)
    k = min(k, weights.shape[1], n + S)
    top = torch.topk(weights, k, dim=-1)
    idx = torch.gather(indices, 1, top.indices).numpy().astype(np.uint32)
    w = top.values.numpy().astype(np.float32)
    if G and sparse.global_rows is not None:  # a global query's row covers every key
        rows = sparse.global_rows[layer].float().mean(0)  # [G, N]
        gtop = torch.topk(rows, min(k, n), dim=-1)
        for g, p in enumerate(sparse.global_index):
            idx[p], w[p] = 0, 0.0
            idx[p, :gtop.indices.shape[1]] = gtop.indices[g].numpy()
            w[p, :gtop.values.shape[1]] = gtop.values[g].numpy()
    return idx, w


def _quantise(values: np.ndarray) -> tuple[np.ndarray, float]:
    """float ``[R, C]`` (NaN: no key) -> uint8 on a square-root scale of its maximum (255: no key), and that maximum."""
    vmax = float(np.nanmax(values)) if np.isfinite(values).any() else 0.0
    scaled = np.sqrt(np.clip(values, 0, None) / vmax) if vmax > 0 else np.zeros_like(values)
    q = np.round(np.nan_to_num(scaled, nan=0.0) * 254).astype(np.uint8)
    q[np.isnan(values)] = 255
    return q, vmax


def _band_overview(doc, layer: int) -> tuple[np.ndarray, int, int]:
    """The band view's picture of ``layer`` (head mean): ``[offsets, columns]`` averaged in groups of ``fo`` offsets
    and ``fq`` queries; NaN where :func:`attnviz.analysis.longdoc.band_overview` has no key."""
    from attnviz.analysis.longdoc import band_overview

    band = doc.band
    W, n = band.half_width, doc.n
    img = band_overview(band, layer).astype(np.float64)  # NaN where there is no key for this view
    fo, fq = max(1, math.ceil((2 * W + 1) / MAX_OFFSETS)), max(1, math.ceil(n / MAX_COLUMNS))
    R, C = math.ceil((2 * W + 1) / fo), math.ceil(n / fq)
    padded = np.full((R * fo, C * fq), np.nan)
    padded[: 2 * W + 1, :n] = img
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(padded.reshape(R, fo, C, fq), axis=(1, 3)), fo, fq


def longdoc_payload(run) -> dict:
    """The data ``longdoc.js`` draws, from a :class:`attnviz.pipelines.longdoc.LongDocRun`."""
    from attnviz.analysis.longdoc import block_map

    doc = run.doc
    meta = run.to_json()
    layers = []
    pool = offset_pool = k = 1
    for l in range(doc.num_layers):
        idx, w = top_keys(doc.band, l)
        k = int(idx.shape[1])
        if doc.block_size:
            picture = block_map(doc.band, l).astype(np.float64)
            picture[picture == 0] = np.nan
        else:
            picture, offset_pool, pool = _band_overview(doc, l)
        q, vmax = _quantise(picture)
        layers.append({"top_idx": b64(idx), "top_w": b64(w), "overview": b64(q), "vmax": vmax,
                       "rows": int(q.shape[0]), "cols": int(q.shape[1])})
    return {
        "type": "longdoc", "model": meta["model"], "label": meta["label"], "model_type": doc.model_type,
        "random_weights": run.random_weights, "tokens": list(doc.tokens), "n": doc.n, "layout": meta["layout"],
        "num_layers": doc.num_layers, "num_heads": doc.num_heads, "window": list(doc.window),
        "block_size": doc.block_size, "global_index": list(doc.global_index),
        "side_spans": [list(s) for s in doc.side_spans], "checks": run.checks, "k": k,
        "pool": pool, "offset_pool": offset_pool, "half_width": doc.half_width,
        "focus": list(doc.focus_index), "layer": run.window_layer, "layers": layers,
    }


def longdoc_page(run, label: str | None = None) -> str:
    """The HTML report of a long document (see the module docstring)."""
    label = label or run.doc.model_id
    return render_page(longdoc_payload(run), f"attnviz · {label} · long document", script="longdoc.js",
                       styles=("attnviz.css", "longdoc.css"))

"""``attnviz text`` on a long document with sparse attention: the sparse capture and the long-document views, instead
of dense ``[N, N]`` maps.

The text pipeline (:func:`attnviz.pipelines.text.run`) hands over here (:func:`wants_long_document`) for Longformer and
LED past :data:`LONG_DOCUMENT_TOKENS` tokens (or with ``--window-at``), LongT5 always, and BigBird / BigBirdPegasus in
block-sparse mode from the length that mode needs. One forward pass keeps every layer's sparse layout
(:func:`attnviz.bands.capture_band`: a band O(L*H*N*(2W+1+2G+S)), or BigBird's blocks); the views are ``band``
(banded overview) or ``blocks`` (BigBird's block map), ``profile`` (the ``--token``'s attention along the document, per
layer), ``global`` (the global tokens' rows) and ``window-POS`` (``--window-at POS``: the matrix around one position),
and with ``--format html`` an offline page (:mod:`attnviz.html.longdoc`). ``--save-attn`` writes the sparse layout
(README "Long documents"), read back by :func:`attnviz.load_attention`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from attnviz.errors import ModelError, UsageError
from attnviz.pipelines.common import mark_random_weights, notify, notify_left_alone, notify_provenance, provenance

#: Model types whose attention has a sliding window plus global tokens (``global_attention_mask``).
GLOBAL_ATTENTION_TYPES = ("longformer", "led")
#: Above this many tokens, a sliding-window model's text gets the long-document views.
LONG_DOCUMENT_TOKENS = 1024
#: Largest band (bytes, float32) attnviz keeps in memory.
BAND_BUDGET = 12 * 2**30
#: Tokens each side of ``--window-at`` in the window view.
WINDOW_RADIUS = 24
#: Fewest tokens of the run-time check's prefix (the band capture against eager ``output_attentions``).
PROBE_TOKENS = 256
#: Largest difference the run-time check accepts.
PROBE_TOLERANCE = 1e-5


@dataclass(frozen=True)
class LongDocRun:
    """What ``attnviz text`` produced for a long document; ``to_json()`` is ``--json``."""

    doc: object  # attnviz.analysis.longdoc.LongDocument
    layer: int | None
    window_at: int | None
    window_layer: int
    files: tuple[Path, ...]
    save_attn: Path | None
    random_weights: str | None
    style: object
    checks: dict
    top: int = 5
    provenance: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        """The ``--json`` document: the layout, the global tokens and, per layer, the focus token's strongest keys
        and each global token's (head means), the run-time checks, the files."""
        from attnviz.analysis.longdoc import focus_profile, global_panels, side_share, top_links
        from attnviz.render.layout import model_reference

        d = self.doc
        band = d.band
        doc = {
            "model": model_reference(d.model_id),
            "label": self.style.model_label(d.model_id),
            "model_type": d.model_type,
            "backend": band.format if band is not None else "band",
            "layout": band.format if band is not None else "band",
            "random_weights": self.random_weights,
            "num_layers": d.num_layers,
            "num_heads": d.num_heads,
            "num_tokens": d.n,
            "tokens": list(d.tokens),
            "kind": d.kind,
            "window": list(d.window),
            "global_tokens": [{"index": i, "token": d.tokens[i]} for i in d.global_index],
            "side_keys": [list(sp) for sp in d.side_spans],
            "band_bytes": band.nbytes if band is not None else 0,
            "block_size": getattr(band, "block_size", None),
            "num_random_blocks": getattr(band, "num_random_blocks", None),
            "checks": self.checks,
            "style": self.style.describe(),
        }
        if d.focus_rows is not None:
            prof = focus_profile(d.focus_rows, d.n)
            side = side_share(d.focus_rows, d.n)
            doc["focus"] = {
                "token": d.focus_text,
                "token_indices": list(d.focus_index),
                "layers": [{"layer": l, "window": list(d.window_span(l, d.focus_index[0])),
                            "on_global": float(sum(prof[l, g] for g in d.global_index)),
                            "on_side_keys": float(side[l]),
                            "top": [{"index": k.position, "token": k.token, "weight": k.weight}
                                    for k in top_links(prof[l], d.tokens, self.top, exclude=d.focus_index)]}
                           for l in range(d.num_layers)],
            }
        if band is not None and d.global_index:
            doc["global_rows"] = [
                {"index": positions[0], "positions": list(positions), "token": label,
                 "top": [[{"index": k.position, "token": k.token, "weight": k.weight}
                          for k in top_links(rows[l], d.tokens, self.top, exclude=positions)] for l in range(d.num_layers)]}
                for label, positions, rows in global_panels(d)]
        if self.window_at is not None:
            from attnviz.render.longdoc import window_radius

            doc["window_view"] = {"center": self.window_at, "layer": self.window_layer,
                                  "radius": window_radius(self.style, WINDOW_RADIUS)}
        doc["files"] = [str(p) for p in self.files]
        doc["save_attn"] = str(self.save_attn) if self.save_attn else None
        return doc


def block_sparse(tm) -> bool:
    """True for BigBird / BigBirdPegasus configured for ``block_sparse`` attention."""
    from attnviz.bands import BLOCK_TYPES

    return tm.model_type in BLOCK_TYPES and getattr(tm.config, "attention_type", "block_sparse") == "block_sparse"


def wants_long_document(tm, n: int, window_at: int | None) -> bool:
    """True for LongT5 (its encoder's local attention has no dense view), BigBird in block-sparse mode on at least
    :func:`attnviz.blocksparse.min_block_sparse_length` tokens (shorter inputs run full attention), and a
    sliding-window model (Longformer, LED) on more than :data:`LONG_DOCUMENT_TOKENS` tokens or with ``--window-at``."""
    if tm.model_type == "longt5":
        return True
    if block_sparse(tm):
        from attnviz.blocksparse import min_block_sparse_length

        return n >= min_block_sparse_length(tm.config)
    return tm.model_type in GLOBAL_ATTENTION_TYPES and (n > LONG_DOCUMENT_TOKENS or window_at is not None)


def short_block_sparse(tm, n: int) -> None:
    """BigBird / BigBirdPegasus in block-sparse mode on an input too short for it: transformers runs (and switches the
    model to) full attention for it; do that before the capture, say so."""
    if not block_sparse(tm):
        return
    from attnviz.blocksparse import min_block_sparse_length

    for module in tm.model.modules():
        if type(module).__name__ in ("BigBirdModel", "BigBirdPegasusEncoder"):
            module.set_attention_type("original_full")
    notify(f"{tm.model_type}: {n} tokens are fewer than block-sparse attention needs "
           f"({min_block_sparse_length(tm.config)}); the model runs full attention on them, as shown")


def run_long(request, tm, prepared, content: str, globals_: tuple[int, ...], figure_formats, html: bool, style,
             tensor_path, progress=None) -> LongDocRun:
    """The long-document run (see the module docstring); ``request`` is the text pipeline's ``TextRequest``.

    Raises:
        UsageError: an option that needs dense maps (``--method``), ``--window-at``/``--layer``/``--head`` out of
            range, a band over :data:`BAND_BUDGET`. ModelError: the run-time check failed.
    """
    from attnviz.analysis.longdoc import LongDocument
    from attnviz.analysis.select import ViewSpec, find_focus
    from attnviz.report import RunOutput, model_files

    if request.method:
        if tm.model_type == "longt5":
            raise UsageError("--method needs dense attention maps, and LongT5's encoder has none at any length")
        if block_sparse(tm):
            from attnviz.blocksparse import min_block_sparse_length

            fits = min_block_sparse_length(tm.config) - 1  # shorter inputs run full attention
        else:
            fits = LONG_DOCUMENT_TOKENS
        raise UsageError(f"--method needs dense attention maps; on a long document with sparse attention use "
                         f"--max-length {fits} or less (without --window-at)")
    n = len(prepared.tokens)
    tokens = tuple(prepared.tokens.tokens)
    spec = ViewSpec(words=False, hide_special=False)
    if request.words or request.hide_special:
        notify("--words and --hide-special are not used by the long-document views (they show tokens)")
    from attnviz.pipelines.common import TEXT_VIEWS

    ignored = [name for name, on in (("--views", tuple(request.views) != TEXT_VIEWS and request.views != ",".join(TEXT_VIEWS)),
                                     ("--top", request.top != 10), ("--direction", request.direction != "back"),
                                     ("--adjacent", request.adjacent), ("--target-class", request.target_class is not None),
                                     ("--target", request.target is not None))
               if on]
    if ignored:
        notify(f"{', '.join(ignored)}: not used by the long-document views (band, profile, global, window)")
    focus: tuple[int, ...] = ()
    if request.token is not None:
        focus = tuple(find_focus(prepared.tokens, request.token, request.token_index, spec))
    window_at = request.window_at
    if window_at is not None:
        if not -n <= window_at < n:
            raise UsageError(f"--window-at {window_at} is out of range: the text has {n} tokens (0..{n - 1})")
        window_at %= n
    L, H = tm.num_layers, tm.num_heads
    layer = request.layer
    if layer is not None:
        if not -L <= layer < L:
            raise UsageError(f"--layer {layer} is out of range: this model's encoder has {L} layers (0..{L - 1})")
        layer %= L
    head = request.head
    if head is not None:
        if not -H <= head < H:
            raise UsageError(f"--head {head} is out of range: this model has {H} heads per layer (0..{H - 1})")
        head %= H
    per_token = _bytes_per_token(tm.config, L, H, n, len(globals_ or ()))
    need = per_token * n
    if block_sparse(tm):  # transformers builds a dense [H, N, N] float32 map in every block-sparse layer, one at a time
        need += 4 * H * n * n
    if need > BAND_BUDGET:
        fits = int(BAND_BUDGET / per_token)
        if block_sparse(tm):
            fits = int((-per_token + math.sqrt(per_token ** 2 + 16 * H * BAND_BUDGET)) / (8 * H))
        raise UsageError(f"the sparse attention of {n} tokens ({L} layers x {H} heads) would take "
                         f"{need / 2**30:.1f} GiB; use --max-length {fits} or less")
    out = request.output
    output = RunOutput(out.out, command="text", force=out.force, protect=model_files(tm.source.location),
                       settings={"model": tm.source.model_id, "text": content[:200],
                                 "token": request.token, "layer": layer, "head": head, "window_at": window_at,
                                 "format": out.format, "size": request.style.size, "views": "long-document",
                                 "save_attn": str(tensor_path) if tensor_path else None})
    globals_ = globals_ or ()
    blocks = block_sparse(tm)
    if blocks:
        globals_ = ()  # BigBird's global blocks are fixed: the first and last block
    stems = ["blocks" if blocks else "band"] + (["profile"] if focus else []) + (["global"] if globals_ or blocks else []) \
        + ([f"window-{window_at}"] if window_at is not None else [])
    output.check([f"{s}.{fmt}" for fmt in figure_formats for s in stems] + (["report.html"] if html else []),
                 tensor=tensor_path)
    tm = tm.with_weights()
    note = mark_random_weights(output, tm.model)
    notify_provenance(tm.model, tm.tokenizer)
    from attnviz.inputs.tokens import model_inputs
    from attnviz.bands import capture_band

    inputs = model_inputs(tm, prepared)
    if tm.encoder_decoder:
        dense = ("" if tm.model_type == "longt5" else
                 f"; decoder and cross-attention are shown for inputs up to {LONG_DOCUMENT_TOKENS} tokens without "
                 "--window-at" if tm.model_type == "led" else
                 "; decoder and cross-attention are shown for inputs too short for block-sparse attention")
        notify(f"{tm.model_type}: the long-document views show the encoder's attention over the document, not the "
               f"decoder's{dense}")
    with output:
        report: dict = {}
        cap = capture_band(tm.model, inputs, rows=focus or None, report=report)
        if progress is not None:
            for l in range(cap.num_layers):
                progress(cap.kind, l)
        checks = _checks(tm.model, inputs, cap, report)
        doc = LongDocument(model_id=tm.source.model_id, model_type=tm.model_type, kind=cap.kind, tokens=tokens,
                           num_layers=cap.num_layers, num_heads=cap.num_heads, window=cap.window,
                           global_index=cap.global_index, band=cap.band, focus_rows=cap.rows, focus_index=focus,
                           focus_text=request.token, side_spans=getattr(cap.band, "side_spans", ()))
        from attnviz.render.longdoc import band_view, blocks_view, global_view, profile_view, window_view

        window_layer = layer if layer is not None else L - 1
        for fmt in figure_formats:
            if blocks:
                output.figure(blocks_view(doc, layer, style=style), "blocks", fmt)
            else:
                output.figure(band_view(doc, layer, style=style), "band", fmt)
            if focus:
                output.figure(profile_view(doc, head, style=style), "profile", fmt)
            if doc.global_index:
                output.figure(global_view(doc, head, style=style), "global", fmt)
            if window_at is not None:
                output.figure(window_view(doc, window_at, window_layer, WINDOW_RADIUS, head, style=style),
                              f"window-{window_at}", fmt)
        if tensor_path is not None:
            import torch

            from attnviz.report import save_tensors

            meta = {**cap.band.metadata(), "model": tm.source.model_id, "tokens": list(tokens), "backend": cap.band.format}
            save_tensors(output.tensor_target(tensor_path), cap.band.to_tensors(torch.float16 if request.half else torch.float32),
                         meta)
        if html:
            from attnviz.html.longdoc import longdoc_page

            draft = LongDocRun(doc, layer, window_at, window_layer, (), None, note, style, checks)
            output.page(longdoc_page(draft, label=style.model_label(tm.source.model_id)), "report")
    notify_left_alone(output)
    return LongDocRun(doc, layer, window_at, window_layer, tuple(output.files), output.tensor, note, style, checks,
                      provenance=provenance(tm.model, tm.tokenizer))


def _bytes_per_token(config, layers: int, heads: int, n: int, globals_: int) -> int:
    """Float32 bytes per token of the sparse capture: band ``2W+1`` + ``2G`` global + ``S`` summary columns
    (Longformer, LED, LongT5), or BigBird's ``(5+r) * bs`` slots + ``2 bs`` global columns, per layer and head."""
    if getattr(config, "model_type", None) in ("big_bird", "bigbird_pegasus"):
        bs, r = int(config.block_size), int(config.num_random_blocks)
        return 4 * layers * heads * ((5 + r) * bs + 2 * bs) + 8 * layers * heads * (5 + r)
    side = n // int(config.global_block_size) if getattr(config, "encoder_attention_type", None) == "transient-global" else 0
    return 4 * layers * heads * (2 * max(_windows(config, layers)) + 1 + 2 * globals_ + side)


def _windows(config, layers: int) -> tuple[int, ...]:
    """One-sided window per layer: LongT5's ``local_radius``, else from ``config.attention_window`` (an int or one per
    layer)."""
    if getattr(config, "model_type", None) == "longt5":
        return (int(config.local_radius),) * layers
    w = getattr(config, "attention_window", 512)
    ws = list(w) if isinstance(w, (list, tuple)) else [w] * layers
    return tuple(int(x) // 2 for x in ws[:layers])


def _checks(model, inputs, cap, report: dict | None = None) -> dict:
    """The run-time checks: every stored row sums to 1 (largest error), and the capture equals the model's own eager
    ``output_attentions``: Longformer, LED and LongT5 on a prefix of at least :data:`PROBE_TOKENS` tokens and two
    windows (so that some windows lie clear of both ends), every stored
    probability (:func:`attnviz.bands.eager_band`); BigBird on the whole input, in every layer, wherever the model's
    own dense map holds the probability (it keeps one copy of a key block that a row attends several times; the
    capture checked it layer by layer, ``report``).

    Raises:
        ModelError: a difference above :data:`PROBE_TOLERANCE` or a row sum off by more than 1e-4.
    """
    from attnviz.bands import capture_band, eager_band
    from attnviz.verify import tolerance_for

    tolerance = tolerance_for(model)  # 1e-5 in float32; half precision rounds every probability (attnviz.verify)
    checks: dict = {"tolerance": tolerance}
    sums = cap.band.row_sums()
    real = _real_rows(inputs, cap.n)
    err = float((sums[:, :, real] - 1).abs().max()) if bool(real.any()) else 0.0
    checks["row_sum_max_error"] = err
    if err > max(1e-4, tolerance):
        raise ModelError(f"{type(model).__name__}: a captured row sums to 1 ± {err:.1e}; refusing to show it")
    if cap.band.format == "blocks":
        if "eager_max_abs_diff" not in (report or {}):
            raise ModelError(f"{type(model).__name__}: the model built no dense block map to check the block-sparse "
                             "capture against; refusing to show it")
        diff = float(report["eager_max_abs_diff"])
        checks.update({"probe_tokens": cap.n, "probe_max_abs_diff": diff,
                       "reference": "the model's own dense block map where it holds the probability"})
    else:
        # a prefix long enough for windows clear of both ends: 2 x (2W + 1) tokens at least
        p = min(cap.n, max(PROBE_TOKENS, 2 * (2 * max(cap.window or (0,)) + 1)))
        source = ("input_ids", "attention_mask", "global_attention_mask", "token_type_ids")
        probe = {k: (v[:, :p] if k in source else v) for k, v in inputs.items()}
        ours = capture_band(model, probe).band
        theirs = eager_band(model, probe)
        diff = 0.0
        for name in ("local", "global_keys", "global_rows", "side_keys"):
            a, b = getattr(ours, name), getattr(theirs, name)
            if (a is None) != (b is None) or (a is not None and a.shape != b.shape):
                raise ModelError(f"{type(model).__name__}: the capture's {name} layout differs from eager's on the first "
                                 f"{p} tokens; refusing to show it")
            if a is not None and a.numel():
                diff = max(diff, float((a - b).abs().max()))
        checks.update({"probe_tokens": p, "probe_max_abs_diff": diff, "reference": "eager output_attentions"})
    if not diff <= max(PROBE_TOLERANCE, tolerance):
        raise ModelError(f"{type(model).__name__}: the sparse capture differs from eager attention by {diff:.1e} on the "
                         f"first {checks['probe_tokens']} tokens; refusing to show it")
    return checks


def _real_rows(inputs, n: int):
    """Bool ``[N]``: positions that are real tokens (``attention_mask`` 1)."""
    import torch

    mask = inputs.get("attention_mask")
    return torch.ones(n, dtype=torch.bool) if mask is None else mask.reshape(-1)[:n].bool().cpu()

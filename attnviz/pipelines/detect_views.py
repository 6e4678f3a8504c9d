"""The data and figures of each ``attnviz detect`` view, and its ``--save-attn`` file (used by
:mod:`attnviz.pipelines.detect`). Each ``*_data`` function returns the view's JSON and a function drawing its Figure."""

from __future__ import annotations

from typing import Callable

import numpy as np

from attnviz.analysis.detect import cell_centres, spread, tightest


def _r(a, nd: int = 6):
    return np.round(np.asarray(a, dtype=np.float64), nd).tolist()


def detections_figure(pixels, found_list, label: str, det, found: bool, threshold: float, style):
    """``detections.png``: every box with its index, label and score."""
    from attnviz.render.detect import detections_view

    if not det.head:
        sub = "base model without a detection head: no boxes"
    elif found:
        sub = f"{len(found_list)} detections with score >= {threshold:g} (post_process_object_detection)"
    else:
        sub = f"nothing scored >= {threshold:g}: the {len(found_list)} top-scoring queries (dashed)"
    return detections_view(pixels, found_list, title=f"{label}: detections", subtitle=sub, style=style, model=det.source.model_id)


def _dense_maps(rows_of_keys, grid, geometry):
    """``[H, S]`` -> (``[H+1, rows, cols]`` with the head mean last, spreads ``[H]``)."""
    maps = rows_of_keys.reshape(rows_of_keys.shape[0], *grid).numpy().astype(np.float64)
    spreads = spread(cell_centres(grid, geometry.extent), maps.reshape(maps.shape[0], -1))
    return np.concatenate([maps, maps.mean(0, keepdims=True)]), spreads


def _deformable_points(calls, kind: str, layer: int, query: int, geometry):
    """(points ``[H, N, 2]`` photo pixels, weights ``[H, N]``, levels ``[N]``, reference (x, y) or None)."""
    w = calls.weights[kind][layer][query]  # [H, Lv, P]
    loc = geometry.to_photo(calls.locations[kind][layer][query])  # [H, Lv, P, 2]
    H, Lv, P = w.shape
    levels = np.repeat(np.arange(Lv), P)
    ref = None
    refs = calls.references.get(kind)
    if refs and layer < len(refs):
        ref = tuple(float(v) for v in geometry.to_photo(refs[layer][query][0]))
    return loc.reshape(H, Lv * P, 2).numpy(), w.reshape(H, Lv * P).numpy(), levels, ref


def _head_json(spreads) -> dict:
    h, s = tightest(spreads)
    return {"tightest_head": h, "tightest_spread_px": round(s, 3), "spread_px": _r(spreads, 3)}


def object_data(captured, d, layer: int, geometry, strides, pixels, label: str, style) -> tuple[dict, Callable]:
    """One detection's view: its query's cross-attention (dense) or sampling points (deformable) in ``layer``."""
    from attnviz.render.detect import dense_view, points_view

    doc = {**d.to_json(), "layer": layer}
    title = f"{label}: object {d.index} ({d.label} {d.score:.2f}), query {d.query}"
    if captured.deformable is not None:
        pts, wts, levels, ref = _deformable_points(captured.deformable, "cross", layer, d.query, geometry)
        spreads = spread(pts, wts)
        doc.update(_head_json(spreads), points=_r(pts, 2), weights=_r(wts), levels=levels.tolist(),
                   reference=list(ref) if ref else None)
        names = [f"head {h}" for h in range(len(pts))]
        sub = f"decoder layer {layer}: deformable cross-attention sampling points, all {len(strides)} feature levels"
        return doc, lambda: points_view(pixels, pts, wts, levels, names=names, title=title, subtitle=sub, reference=ref,
                                        box=d.box, strides=strides, style=style, model=label)
    grid = captured.levels[0]
    maps, spreads = _dense_maps(captured.cross[layer, :, d.query, :], grid, geometry)
    what = "detection token's attention over the patches" if captured.yolos else "cross-attention"
    doc.update(_head_json(spreads), grid=list(grid), heads=_r(maps[:-1]), mean=_r(maps[-1]))
    names = [f"head {h}" for h in range(len(maps) - 1)] + ["mean"]
    sub = f"layer {layer} {what} over the {grid[0]}x{grid[1]} feature map"
    return doc, lambda: dense_view(pixels, maps, geometry.extent, names=names, title=title, subtitle=sub, box=d.box,
                                   style=style, model=label)


def methods_figure(pixels, explanation, d, geometry, label: str, style):
    """``object-I-methods``: one detection's map by each method side by side, each panel scaled to its own maximum
    (the methods' units differ; the raw values are in the JSON)."""
    from dataclasses import replace

    from attnviz.render.detect import dense_view

    maps = np.stack([m.values.numpy() for m in explanation.maps]).astype(np.float64)
    names = [f"{m.method}" + ("" if m.layer is None else f" · layer {m.layer}") + f"\nmax {float(m.values.max()):.2g}"
             for m in explanation.maps]
    target = explanation.target
    sub = ("each panel scaled from 0 to its own maximum (the methods' units differ); "
           + (f"gradient methods explain {target.describe()}" if target is not None else "no gradient method"))
    title = f"{label}: object {d.index} ({d.label} {d.score:.2f}), query {d.query}, by method"
    return dense_view(pixels, maps, geometry.extent, names=names, title=title, subtitle=sub, box=d.box,
                      style=replace(style, scale="per-head"), model=label, view="methods")


def point_data(captured, point, geometry, strides, pixels, label: str, style) -> tuple[dict, Callable]:
    """The encoder's (last layer's) attention of the feature-map cell under photo pixel ``point``."""
    from attnviz.render.detect import dense_view, points_view

    x, y = point
    title = f"{label}: encoder attention of pixel ({x:g}, {y:g})"
    if captured.encoder is not None:
        grid = captured.encoder_grid
        r, c = geometry.cell_at(grid, x, y)
        layer = captured.encoder_layers[-1]
        maps, spreads = _dense_maps(captured.encoder[-1, :, r * grid[1] + c, :], grid, geometry)
        doc = {"x": x, "y": y, "cell": [r, c], "grid": list(grid), "layer": layer, **_head_json(spreads),
               "heads": _r(maps[:-1]), "mean": _r(maps[-1])}
        names = [f"head {h}" for h in range(len(maps) - 1)] + ["mean"]
        sub = f"encoder layer {layer} self-attention of cell ({r}, {c}) of the {grid[0]}x{grid[1]} feature map"
        return doc, lambda: dense_view(pixels, maps, geometry.extent, names=names, title=title, subtitle=sub,
                                       point=point, style=style, model=label, view="point")
    calls = captured.deformable
    if calls is None or "encoder" not in calls.weights:
        from attnviz.errors import UsageError

        raise UsageError("--point: this model has no encoder attention over the photo's pixels")
    grid = calls.shapes["encoder"][0]
    r, c = geometry.cell_at(grid, x, y)
    layer = len(calls.weights["encoder"]) - 1
    pts, wts, levels, ref = _deformable_points(calls, "encoder", layer, r * grid[1] + c, geometry)
    spreads = spread(pts, wts)
    doc = {"x": x, "y": y, "cell": [r, c], "grid": list(grid), "layer": layer, **_head_json(spreads),
           "points": _r(pts, 2), "weights": _r(wts), "levels": levels.tolist(), "reference": list(ref) if ref else None}
    names = [f"head {h}" for h in range(len(pts))]
    sub = f"encoder layer {layer}: deformable sampling points of cell ({r}, {c}) of the finest level"
    return doc, lambda: points_view(pixels, pts, wts, levels, names=names, title=title, subtitle=sub, reference=ref,
                                    strides=strides, style=style, model=label, view="point")


def save_attention(captured, path, det, geometry, levels_json) -> None:
    """Write :func:`attention_tensors` with metadata ``model``, ``image``, ``geometry`` and ``feature_levels``."""
    from attnviz.report import save_tensors

    from attnviz.inputs.detection import attention_tensors

    save_tensors(path, attention_tensors(captured), {
        "model": det.source.model_id, "image": list(geometry.photo), "geometry": geometry.to_json(),
        "feature_levels": levels_json, "attention": captured.attention,
    })

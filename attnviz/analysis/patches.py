"""Patch analyses of an image capture: [CLS] (or mean-row) attention on the patch grid, one patch's
attention, rollout over the patches and attention-sink patches.

Pure functions over :class:`~attnviz.types.ImageAttention` (the result of
:func:`attnviz.inputs.patches.attend_image`); the patch grid comes from the model's config, never from
``sqrt`` of a sequence length, and the prefix tokens ([CLS], distillation, registers) are skipped by
count (``result.prefix_tokens``), never assumed to be one token at index 0.
"""

from __future__ import annotations

import math
from typing import Any

from attnviz.analysis.sinks import late_layers
from attnviz.capture import CapturePlan
from attnviz.errors import UsageError
from attnviz.inputs.patches import ImageModel, patch_at
from attnviz.types import ImageAttention


def image_plan(
    im: ImageModel,
    layers: tuple[int, ...] = (-1,),
    *,
    full: bool = False,
    rollout: bool = True,
    head_fusion: str = "mean",
    discard_ratio: float = 0.0,
) -> CapturePlan:
    """The lightest :class:`CapturePlan` that serves every image view.

    Keeps ``layers`` (0-based, negative from the end) in full, the [CLS] row in
    every layer (for sink detection; for a model without [CLS] the last third of
    the layers in full instead), and the rollout with [CLS] protected from
    discarding. ``full`` keeps everything (needed for ``--save-attn``).

    Raises:
        UsageError: a layer out of range, a bad head fusion or discard ratio.
    """
    from attnviz.methods.rollout import HEAD_FUSIONS

    n = im.info.num_layers
    keep = set()
    for layer in layers:
        if not -n <= layer < n:
            raise UsageError(f"--layer {layer} is out of range: this model has {n} layers (0..{n - 1})")
        keep.add(layer % n)
    if head_fusion not in HEAD_FUSIONS:
        raise UsageError(f"--head-fusion must be one of {', '.join(HEAD_FUSIONS)}, not '{head_fusion}'")
    if not 0.0 <= discard_ratio < 1.0:
        raise UsageError(f"--discard-ratio must be in [0, 1), not {discard_ratio}")
    cls = im.info.cls_index
    if cls is None:
        keep.update(late_layers(n))
    return CapturePlan(
        full=full,
        layers=frozenset(keep),
        rows=(cls,) if cls is not None else (),
        rollout=rollout,
        head_fusion=head_fusion,
        discard_ratio=discard_ratio,
        protect=(cls,) if cls is not None else (),
    )


def _grid(result: ImageAttention, weights):
    """``[..., T]`` weights over all tokens -> ``[..., rows, cols]`` over the patches."""
    rows, cols = result.grid
    return weights[..., result.prefix_tokens :].reshape(*weights.shape[:-1], rows, cols)


def query_label(result: ImageAttention) -> str:
    """How the views name the query whose attention they show: ``[CLS]``, or ``mean query`` (the mean row over all tokens)."""
    return "[CLS]" if result.cls_index is not None else "mean query"


def cls_attention(result: ImageAttention, layer: int):
    """Where [CLS] looks in one layer, every head: float32 ``[heads, rows, cols]``.

    For a model without [CLS] (SigLIP) it is the mean attention row over all
    tokens instead (see :func:`query_label`).

    Raises:
        UsageError: layer out of range. KeyError: the capture plan did not keep it.
    """
    maps = result.attention
    layer = maps.check_layer(layer)
    if result.cls_index is not None:
        if maps.has_row(result.cls_index):
            return _grid(result, maps.query_row(result.cls_index)[layer])
        return _grid(result, maps.layer(layer)[:, result.cls_index, :])
    return _grid(result, maps.layer(layer).mean(dim=1))


def cls_attention_all_layers(result: ImageAttention, layers) -> Any:
    """[CLS] (or mean-row) attention of the given layers: float32 ``[len(layers), heads, rows, cols]``."""
    import torch

    return torch.stack([cls_attention(result, layer) for layer in layers])


def prefix_share(result: ImageAttention, layer: int):
    """Per head, the part of the query's attention that goes to prefix tokens (not drawn on the photo): ``[heads]``."""
    grid = cls_attention(result, layer)
    return 1.0 - grid.flatten(1).sum(dim=1)


def point_to_patch(result: ImageAttention, x: float, y: float) -> tuple[int, int]:
    """The patch ``(row, col)`` that covers pixel ``(x, y)`` of the photo (after EXIF rotation).

    Raises:
        UsageError: the point lies outside the region the model saw (the crop).
    """
    return patch_at(result.crop_box, result.grid, (result.image.width, result.image.height), x, y)


def patch_box(result: ImageAttention, row: int, col: int) -> tuple[float, float, float, float]:
    """``(left, top, right, bottom)`` of one patch in photo pixels."""
    left, top, right, bottom = result.crop_box
    rows, cols = result.grid
    w, h = (right - left) / cols, (bottom - top) / rows
    return (left + col * w, top + row * h, left + (col + 1) * w, top + (row + 1) * h)


def query_attention(result: ImageAttention, layer: int, row: int, col: int):
    """Where the patch at ``(row, col)`` looks in one layer, every head: ``[heads, rows, cols]``.

    Raises:
        KeyError: the capture plan did not keep this layer in full.
    """
    rows, cols = result.grid
    if not (0 <= row < rows and 0 <= col < cols):
        raise UsageError(f"patch ({row}, {col}) is outside the {rows}x{cols} grid")
    token = result.prefix_tokens + row * cols + col
    maps = result.attention
    layer = maps.check_layer(layer)
    if maps.has_row(token):
        return _grid(result, maps.query_row(token)[layer])
    return _grid(result, maps.layer(layer)[:, token, :])


def rollout_matrix(result: ImageAttention, head_fusion: str = "mean", discard_ratio: float = 0.0):
    """The ``[T, T]`` rollout: the captured one if its settings match, else computed from full maps.

    Raises:
        KeyError: neither a matching captured rollout nor full maps.
    """
    from attnviz.methods.rollout import attention_rollout

    maps = result.attention
    settings = dict(maps.rollout_settings)
    if maps.rollout is not None and settings.get("head_fusion") == head_fusion and math.isclose(
        float(settings.get("discard_ratio", -1)), float(discard_ratio)
    ):
        return maps.rollout
    if maps.full is None:
        raise KeyError("the capture plan kept neither this rollout nor the full attention maps")
    protect = (result.cls_index,) if result.cls_index is not None else ()
    return attention_rollout(maps.full, head_fusion, discard_ratio, protect)


def rollout_map(result: ImageAttention, head_fusion: str = "mean", discard_ratio: float = 0.0):
    """The rollout row of [CLS] over the patches, raw: float32 ``[rows, cols]``.

    For a model without [CLS] (SigLIP) the mean row over all tokens.
    """
    r = rollout_matrix(result, head_fusion, discard_ratio)
    row = r[result.cls_index] if result.cls_index is not None else r.mean(dim=0)
    return _grid(result, row).float().contiguous()


def image_sinks(result: ImageAttention, rollout=None, **criterion):
    """Attention-sink patches of a capture: :func:`attnviz.analysis.sinks.detect_sinks` applied to the
    [CLS] attention of the last third of the layers (head mean) and to the rollout map ``rollout``.

    Returns:
        A list of :class:`~attnviz.analysis.sinks.SinkPatch`, by decreasing share.
    """
    from attnviz.analysis.sinks import detect_sinks, late_layers

    try:
        late = cls_attention_all_layers(result, late_layers(result.num_layers))
    except KeyError:
        late = None
    return detect_sinks(late, rollout, **criterion)

"""Where a vision-language model's generated tokens look: shares of attention on the image, the prompt text, the
answer and the first token; the image part of a row as weights per image token, per tile and over the photo.

All functions are pure: a :class:`attnviz.vlm.VLMGeneration` (or its arrays) in, numbers out.

Definitions (said in the JSON and the figures):

- a step's **share** on a group of keys, in one layer: the mean over that layer's heads of the sum of the row's
  attention probabilities over those keys (0-1); the four groups partition the keys, so their shares sum to 1;
- ``image_share`` of a step: that share on the image tokens, averaged over the layers (each layer counts once);
- the **first token** (key 0) is its own group (it is often an attention sink, Xiao et al. 2024) and the other groups
  leave it out -- unless it is an image token (PaliGemma puts the image first): then it counts with the image, so that
  ``image_share`` is always the whole weight on the image tokens, and the first-token group is empty.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

#: What each view of a photo is called in figures and pages.
VIEW_TITLES = {"image": "photo", "global": "global view (whole photo)", "tiles": "high-resolution tiles"}

#: Key groups, in the order of :attr:`Shares.values`'s last axis.
GROUPS = ("image", "prompt", "generated", "first")
SHARE_RULE = ("share of a step on a group of keys: in each layer, the mean over heads of the sum of the row's attention "
              "probabilities over those keys; image_share: that share on the image tokens, averaged over layers. Groups: "
              "image tokens, prompt text (the other prompt tokens), generated tokens, and the first token (key 0) on its own "
              "(where key 0 is an image token, as in PaliGemma, it counts with the image and the first-token group is empty)")


def key_groups(num_keys: int, context_length: int, image_positions) -> np.ndarray:
    """Int8 ``[num_keys]``: each key's group as an index into :data:`GROUPS` (key 0 is ``"first"`` unless it is an
    image token)."""
    g = np.full(num_keys, GROUPS.index("generated"), dtype=np.int8)
    g[:context_length] = GROUPS.index("prompt")
    g[0] = GROUPS.index("first")
    g[np.asarray(image_positions, dtype=np.int64)] = GROUPS.index("image")
    return g


@dataclass(frozen=True)
class Shares:
    """``values``: float64 ``[steps, layers, 4]``, a step's share on each of :data:`GROUPS` per layer (head mean)."""

    values: np.ndarray

    def group(self, name: str) -> np.ndarray:
        """Float64 ``[steps, layers]``: the share on one group."""
        return self.values[..., GROUPS.index(name)]

    @property
    def image_share(self) -> np.ndarray:
        """Float64 ``[steps]``: the share on the image tokens, averaged over layers (0-1)."""
        return self.group("image").mean(axis=1)

    def step(self, i: int) -> dict[str, float]:
        """Step ``i``'s shares averaged over layers, by group name."""
        m = self.values[i].mean(axis=0)
        return {name: float(m[k]) for k, name in enumerate(GROUPS)}


def shares(vgen) -> Shares:
    """The shares of every step (see the module docstring) of a :class:`attnviz.vlm.VLMGeneration`."""
    g = vgen.generation
    att = g.attentions.mean(dim=1, dtype=torch.float64).numpy()  # [L, T, K]: head mean (no float64 copy of all heads)
    groups = key_groups(att.shape[-1], g.context_length, vgen.image_positions)
    out = np.zeros((att.shape[1], att.shape[0], len(GROUPS)))
    for k in range(len(GROUPS)):
        out[..., k] = att[..., groups == k].sum(axis=-1).T
    return Shares(out)


def image_weights(vgen, step: int, layer: int | None = None, head: int | None = None) -> np.ndarray:
    """Float64 ``[image tokens]``: step ``step``'s attention probabilities on the image tokens (layout order), in
    ``layer`` (None: the mean over layers) and ``head`` (None: the mean over heads)."""
    a = vgen.generation.attentions[:, :, step][:, :, list(vgen.image_positions)].double()  # [L, H, n]
    a = a.mean(dim=1) if head is None else a[:, head]
    a = a.mean(dim=0) if layer is None else a[layer]
    return a.numpy()


def layer_image_weights(vgen, step: int) -> np.ndarray:
    """Float64 ``[layers, image tokens]``: the head mean of step ``step``'s row on the image tokens, per layer."""
    a = vgen.generation.attentions[:, :, step][:, :, list(vgen.image_positions)].double()
    return a.mean(dim=1).numpy()


@dataclass(frozen=True)
class HeadShare:
    """Head ``head`` of layer ``layer`` puts ``share`` (0-1) of step's row on the image tokens."""

    layer: int
    head: int
    share: float

    def to_dict(self) -> dict:
        return {"layer": self.layer, "head": self.head, "share": round(self.share, 6)}


def top_image_heads(vgen, step: int, k: int = 4) -> list[HeadShare]:
    """The ``k`` (layer, head) pairs whose row at ``step`` puts the most probability on the image tokens."""
    a = vgen.generation.attentions[:, :, step][:, :, list(vgen.image_positions)].double().sum(dim=-1)  # [L, H]
    order = np.argsort(-a.flatten().numpy(), kind="stable")[:k]
    H = a.shape[1]
    return [HeadShare(int(i // H), int(i % H), float(a.flatten()[i])) for i in order]


@dataclass(frozen=True)
class Region:
    """Image token ``token`` (0-based, layout order) of tile ``tile`` covers ``box`` ``(x0, y0, x1, y1)`` in the
    photo's pixels and takes ``weight`` (an attention probability)."""

    token: int
    tile: str
    box: tuple[float, float, float, float]
    weight: float

    def to_dict(self) -> dict:
        return {"token": self.token, "tile": self.tile, "box": [round(v, 1) for v in self.box],
                "weight": round(self.weight, 6)}


def tile_of(layout) -> list[str]:
    """Each image token's tile name (layout order)."""
    names: list[str] = []
    for tile in layout.tiles:
        names += [tile.name] * (tile.token_range[1] - tile.token_range[0])
    return names


#: Image regions per step in the JSON and the HTML page.
TOP_REGIONS = 5


def top_regions(weights: np.ndarray, layout, k: int = TOP_REGIONS) -> list[Region]:
    """The ``k`` image tokens with the largest ``weights`` (``[image tokens]``) that cover pixels, as regions."""
    boxes = layout.token_boxes()
    tiles = tile_of(layout)
    ok = np.isfinite(boxes).all(axis=1)
    order = [int(i) for i in np.argsort(-np.where(ok, weights, -np.inf), kind="stable") if ok[i]][:k]
    return [Region(i, tiles[i], tuple(float(v) for v in boxes[i]), float(weights[i])) for i in order]


def unplaced_weight(weights: np.ndarray, layout) -> float:
    """The part of ``weights`` on image tokens that cover no pixels (LLaVA-NeXT's row-end ``image_newline``)."""
    boxes = layout.token_boxes()
    return float(np.asarray(weights)[~np.isfinite(boxes).all(axis=1)].sum())


#: Label of the one key that stands for the image tokens in :func:`collapse_image`'s result: ``"<image ×N>"``.
COLLAPSED_LABEL = "<image ×{n}>"


def collapsed_image_tokens(generation) -> int:
    """How many image tokens :func:`collapse_image` summed into one key of ``generation`` (0 where none were)."""
    import re

    for label in generation.context:
        m = re.fullmatch(r"<image ×(\d+)>", label)
        if m:
            return int(m.group(1))
    return 0


def collapse_image(generation, image_positions):
    """``generation`` (:class:`attnviz.types.GenerationAttention`) with its image-token keys summed into one key
    labelled ``"<image ×N>"`` at the first image position, for the generation map: each row still sums to 1.

    Returns:
        A new :class:`GenerationAttention` whose ``attentions`` are ``[L, H, T, K - N + 1]``.
    """
    from dataclasses import replace

    from attnviz.types import TokenInfo

    positions = list(image_positions)
    n = len(positions)
    if n == 0:
        return generation
    K = generation.attentions.shape[-1]
    first = positions[0]
    image = set(positions)
    keep = [i for i in range(K) if i not in image or i == first]
    att = generation.attentions[..., keep]  # a copy (advanced indexing)
    att[..., keep.index(first)] = generation.attentions[..., positions].sum(dim=-1)
    C = generation.context_length
    context_keep = [i for i in keep if i < C]
    label = COLLAPSED_LABEL.format(n=n)
    context = tuple(label if i == first else generation.context[i] for i in context_keep)
    special = tuple(True if i == first else generation.context_special[i] for i in context_keep)
    prompt = generation.prompt
    m = len(context_keep)
    info = TokenInfo(prompt.text, context, (None,) * m, ((0, 0),) * m, special)
    ids = tuple(generation.prompt_ids[i] for i in context_keep)
    return replace(generation, attentions=att, prompt=info, prompt_ids=ids, context=context, context_special=special)


def view_tokens(layout, view: str) -> np.ndarray:
    """Int64 indices of the image tokens (layout order) of the tiles drawn on panel ``view`` that cover pixels."""
    boxes = layout.token_boxes()
    idx = [i for tile in layout.tiles if tile.view == view for i in range(*tile.token_range)]
    idx = np.asarray(idx, dtype=np.int64)
    return idx[np.isfinite(boxes[idx]).all(axis=1)] if idx.size else idx


def paint(layout, weights: np.ndarray, view: str, max_side: int = 768) -> np.ndarray:
    """Rasterise one view (:meth:`attnviz.inputs.vlm.ImageTokenLayout.raster`): float64 ``[h, w]`` over the whole
    photo (its aspect, the long side ``max_side`` pixels or the photo's own size if smaller), each cell the weight of
    the image token whose box holds the cell's centre, NaN where no token of the view covers it. Draw it with
    ``imshow(extent=(0, W, H, 0))`` over the photo."""
    W, H = layout.image_size
    f = min(1.0, max_side / max(W, H))
    return layout.raster(np.asarray(weights, dtype=np.float64), view, (max(1, round(H * f)), max(1, round(W * f))))


#: Sink criterion, as :mod:`attnviz.analysis.sinks` (over image tokens instead of ViT patches).
SINK_FACTOR, SINK_ISOLATION, SINK_GAP, MAX_SINKS = 10.0, 4.0, 2.0, 4


def image_sinks(weights: np.ndarray, layout, view: str) -> list[int]:
    """Image tokens of ``view`` that soak up the attention like a sink, by the criterion of
    :func:`attnviz.analysis.sinks.find_sinks` (a share of the view's weight at least 10x uniform, at least 4x any of
    its 8 neighbours in its tile's grid, and the sinks together at least 2x the next token), in decreasing weight.
    Cost: O(tokens), also for a photo of many thousand image tokens."""
    idx = view_tokens(layout, view)
    n = idx.size
    if n < 2:
        return []
    w = np.asarray(weights, dtype=np.float64)
    total = w[idx].sum()
    if total <= 0:
        return []
    share = np.zeros_like(w)
    share[idx] = w[idx] / total
    near = np.zeros_like(w)
    for tile_cells in layout.paint(np.arange(w.size), view):  # each tile's grid of token indices, newlines left out
        cells = tile_cells.values.astype(np.int64)
        grid = np.pad(share[cells], 1)
        rows, cols = cells.shape
        best = np.zeros((rows, cols))
        for dr in (-1, 0, 1):
            for dc in (-1, 0, 1):
                if dr or dc:
                    best = np.maximum(best, grid[1 + dr:1 + dr + rows, 1 + dc:1 + dc + cols])
        near[cells] = best
    s = share[idx]
    order = np.argsort(-s, kind="stable")
    best_j = 0
    for j in range(1, min(MAX_SINKS, n - 1) + 1):
        k = order[j - 1]
        if s[k] < SINK_FACTOR / n or s[k] < SINK_ISOLATION * near[idx[k]]:
            break
        if s[k] >= SINK_GAP * s[order[j]]:
            best_j = j
    return [int(idx[k]) for k in order[:best_j]]

"""The HTML report of a vision-language model's answer (``attnviz generate --image ... --format html``).

One self-contained, offline page (drawn by ``assets/vlm.js``): the answer as a row of tokens shaded by their share
of attention on the image (:data:`attnviz.analysis.vlm.SHARE_RULE`); for the selected token (a click, or the left
and right arrow keys) the photo with that step's attention on every image token drawn over it as coloured boxes
(one panel per view of the layout, :meth:`attnviz.inputs.vlm.ImageTokenLayout.views`), the mean over layers or one layer (head
mean), the step's shares on the four key groups, its strongest image regions and the strongest keys outside the
image.

Payload (``vlm_payload``; ``T`` generated tokens, ``L`` layers, ``n`` image tokens):

- ``maps``: uint8 ``[T, L + 1, n]`` (base64), for each step and each layer the head mean of the row on the image
  tokens (:func:`attnviz.analysis.vlm.layer_image_weights`), and at index ``L`` the mean over layers
  (:func:`attnviz.analysis.vlm.image_weights`); every row quantised to 8 bits relative to its own maximum
  (:data:`attnviz.html.payload.QUANTISATION`: read back within ``max(row) / 510``), ``peaks`` float32 ``[T, L + 1]``
  the row maxima. ``(L + 1) * T * n`` bytes (a third more in base64): e.g. 25 x 40 x 2000 = 2 MB for a 24-layer
  model answering in 40 tokens about a photo of 2000 image tokens. Single heads are not embedded
  (``L * H * T * n`` bytes would be too many for real models);
- ``boxes``: float32 ``[n, 4]`` (base64), each image token's ``(x0, y0, x1, y1)`` in the photo's pixels
  (``layout.token_boxes()``; NaN for tokens that cover no pixels), ``token_view``: uint8 ``[n]`` (base64), the index
  into ``views`` of each token's tile; ``tiles``: the layout's tiles (name, view, grid, box, token range);
- ``shares``: ``[T][L][4]`` (:class:`attnviz.analysis.vlm.Shares` ``values``, groups :data:`~attnviz.analysis.vlm.GROUPS`),
  ``image_share`` ``[T]``;
- ``regions``: per step the :data:`attnviz.analysis.vlm.TOP_REGIONS` strongest image regions of the mean over layers, exact
  (:func:`attnviz.analysis.vlm.top_regions`, the numbers of ``--json``); for a single layer the page finds them in
  the 8-bit data;
- ``other_keys``: per step the :data:`TOP_OTHER` strongest keys outside the image (head mean, mean over layers, over
  the keys the step could see, itself included), with their labels and groups;
- ``photo``: the photo as a JPEG data URI (longest side at most :data:`attnviz.html.payload.PHOTO_MAX_SIDE`), drawn
  over the photo's own pixel frame; ``cmap``: the colour map of the figures (``inferno``) as 16 RGB stops, ``opacity``:
  a box's fill opacity at weight 0 and at the step's maximum (:data:`OPACITY`).
"""

from __future__ import annotations

import numpy as np
import torch

from attnviz.html.generation import generation_header
from attnviz.html.page import page_title, render_page
from attnviz.html.payload import QUANTISATION, _photo_data_uri, b64, quantise_rows

#: The figures' colour map (``attnviz.render.layout.IMAGE_CMAP``; pages never import the views, and
#: tests/test_vlm_html.py checks that the two agree).
VLM_CMAP = "inferno"

#: Strongest keys outside the image listed per step.
TOP_OTHER = 8
#: Stops of the colour map embedded for the page.
CMAP_STOPS = 16
#: Fill opacity of a box at weight 0 and at the step's largest weight (linear in between).
OPACITY = (0.08, 0.7)

BOX_RULE = ("Boxes: each image token's pixel rectangle in the photo, coloured and made opaque by its weight, on one "
            "scale from 0 to the step's largest image-token weight in the layer shown (both panels alike)")


def _maps(vgen) -> tuple[np.ndarray, np.ndarray]:
    """uint8 ``[T, L + 1, n]`` and float32 ``[T, L + 1]``: per step the head-mean rows on the image tokens of every
    layer, then their mean over layers, quantised per row."""
    g = vgen.generation
    pos = torch.as_tensor(list(vgen.image_positions), dtype=torch.long)
    a = g.attentions.index_select(-1, pos).mean(dim=1, dtype=torch.float64)  # [L, T, n] head mean
    a = torch.cat([a, a.mean(dim=0, keepdim=True)], dim=0)  # [L + 1, T, n]
    return quantise_rows(a.transpose(0, 1).contiguous())  # [T, L + 1, n], [T, L + 1]


def _other_keys(vgen, k: int = TOP_OTHER) -> list[list[dict]]:
    """Per step the ``k`` strongest keys that are not image tokens (head mean, mean over layers; keys the step could
    see, the step's own position included), strongest first (ties: the earlier key)."""
    from attnviz.analysis.vlm import GROUPS, key_groups

    g = vgen.generation
    C, K = g.context_length, int(g.attentions.shape[-1])
    rows = g.attentions.mean(dim=1, dtype=torch.float64).mean(dim=0).numpy()  # [T, K] (no float64 copy of all heads)
    groups = key_groups(K, C, vgen.image_positions)
    labels = g.key_labels
    image = GROUPS.index("image")
    out = []
    for step in range(rows.shape[0]):
        visible = min(K, C + step + 1)
        keys = np.flatnonzero(groups[:visible] != image)
        order = keys[np.argsort(-rows[step, keys], kind="stable")][:k]
        out.append([{"key": int(j), "label": labels[j], "group": GROUPS[int(groups[j])], "self": bool(j == C + step),
                     "weight": round(float(rows[step, j]), 6)} for j in order])
    return out


def _cmap_stops(name: str) -> list[list[int]]:
    from matplotlib import colormaps

    cm = colormaps[name]
    return [[int(round(255 * c)) for c in cm(i / (CMAP_STOPS - 1))[:3]] for i in range(CMAP_STOPS)]


def vlm_payload(vgen, shares, label: str | None = None) -> dict:
    """The JSON-ready data of the page (see the module docstring for the layout and its size).

    ``vgen``: :class:`attnviz.vlm.VLMGeneration`; ``shares``: :func:`attnviz.analysis.vlm.shares` of it;
    ``label``: the model's display name (default the model id).
    """
    from attnviz.analysis import vlm as A
    from attnviz.analysis.vlm import VIEW_TITLES

    g, layout = vgen.generation, vgen.layout
    T, n = g.num_generated, vgen.num_image_tokens
    views = list(layout.views())
    q, peaks = _maps(vgen)
    boxes = np.asarray(layout.token_boxes(), dtype=np.float32).reshape(n, 4)
    token_view = np.zeros(n, dtype=np.uint8)
    for tile in layout.tiles:
        token_view[tile.token_range[0]:tile.token_range[1]] = views.index(tile.view)
    photo, _scale = _photo_data_uri(vgen.photo)
    W, H = (int(v) for v in layout.image_size)
    regions = [[r.to_dict() for r in A.top_regions(A.image_weights(vgen, i), layout)] for i in range(T)]
    return {
        "type": "vlm",
        **generation_header(g, label),
        "photo_name": vgen.photo_name,
        "num_image_tokens": n,
        "notice": g.notice,
        "quantisation": QUANTISATION,
        "share_rule": A.SHARE_RULE,
        "box_rule": BOX_RULE,
        "groups": list(A.GROUPS),
        "shares": np.round(np.asarray(shares.values, dtype=np.float64), 6).tolist(),
        "image_share": [round(float(v), 6) for v in shares.image_share],
        "maps": b64(q),
        "peaks": b64(peaks),
        "boxes": b64(boxes),
        "token_view": b64(token_view),
        "views": views,
        "view_titles": {v: VIEW_TITLES.get(v, v) for v in views},
        "tiles": [{"name": t.name, "view": getattr(t, "view", "image"), "grid": list(t.grid),
                   "box": [round(float(v), 3) for v in t.box], "token_range": list(t.token_range)} for t in layout.tiles],
        "image_size": [W, H],
        "photo": photo,
        "regions": regions,
        "top_regions": A.TOP_REGIONS,
        "other_keys": _other_keys(vgen),
        "cmap": _cmap_stops(VLM_CMAP),
        "cmap_name": VLM_CMAP,
        "opacity": list(OPACITY),
        "initial": {"step": int(np.argmax(shares.image_share)) if T else None, "layer": None},
    }


def vlm_page(vgen, shares, label: str | None = None) -> str:
    """The self-contained offline HTML report of a :class:`attnviz.vlm.VLMGeneration` (see the module docstring).

    ``shares``: :func:`attnviz.analysis.vlm.shares` of it; ``label``: the model's display name in the title and
    heading (default the model id).
    """
    payload = vlm_payload(vgen, shares, label)
    return render_page(payload, page_title(vgen.generation.model_id, label, "image answer"), script="vlm.js",
                       styles=("attnviz.css", "vlm.css"))

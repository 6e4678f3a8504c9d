"""The data an HTML report embeds, built from captured attention and the existing analyses.

Encoding (stated on the page): every attention row is quantised to 8 bits
*relative to its own maximum*: ``byte = round(255 * p / max(row))`` with the row
maximum kept as float32, so a weight is read back as ``byte / 255 * max(row)``
with an error of at most ``max(row) / 510`` (<= 0.00196). Arrays are
little-endian and base64-encoded.

Text inputs of up to :data:`FULL_TOKENS` tokens embed every layer's and head's
full map; longer inputs embed only the strongest :data:`TOP_K` links of every
query row, plus the focus token's full rows. Each of the four views the CLI can
draw (word pieces or words, with or without special tokens) is computed here
with :func:`attnviz.analysis.select.prepare` — exactly what ``--words`` and
``--hide-special`` do — and embedded, unless it equals another (no word is split,
no token is special).
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import torch

from attnviz.analysis.match import occurrence
from attnviz.analysis.select import ViewSpec, prepare, prepare_rows, units_for
from attnviz.errors import UsageError
from attnviz.types import CROSS, DECODER, ENCODER, SELF, TokenInfo

#: Inputs up to this many tokens (query or key side) embed full maps; longer ones the top-k links per row.
FULL_TOKENS = 128
#: Links kept per query row, layer and head beyond FULL_TOKENS.
TOP_K = 8
#: Image reports embed every layer in full up to this many values (layers x heads x T x T), else the chosen layer only.
IMAGE_FULL_VALUES = 24_000_000
#: Longest side of the photo embedded in an image report, in pixels.
PHOTO_MAX_SIDE = 640

VARIANTS = (ViewSpec(False, False), ViewSpec(True, False), ViewSpec(False, True), ViewSpec(True, True))
QUANTISATION = (
    "8-bit per row: each row of weights is stored as round(255 * w / max(row)) with the row maximum in float32; "
    "a weight is read back within max(row)/510 (at most 0.002)"
)


def variant_key(spec: ViewSpec) -> str:
    """``"wh"`` flags of a view: ``"00"`` word pieces, ``"10"`` words, ``"01"`` pieces without specials, ``"11"`` both."""
    return f"{int(spec.words)}{int(spec.hide_special)}"


def b64(array: np.ndarray) -> str:
    """Base64 of a numpy array's little-endian bytes."""
    a = np.ascontiguousarray(array)
    if a.dtype.byteorder == ">" or (a.dtype.byteorder == "=" and np.little_endian is False):  # pragma: no cover
        a = a.byteswap().view(a.dtype.newbyteorder("<"))
    return base64.b64encode(a.tobytes()).decode("ascii")


def quantise_rows(attn: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """``attn`` float ``[..., K]`` -> (uint8 ``[..., K]``, float32 ``[...]`` row maxima)."""
    a = attn.float()
    peak = a.amax(dim=-1).clamp_min(0)
    scale = torch.where(peak > 0, 255.0 / peak.clamp_min(1e-30), torch.zeros_like(peak))
    q = torch.round(a.clamp_min(0) * scale.unsqueeze(-1)).clamp(0, 255).to(torch.uint8)
    return q.numpy(), peak.numpy().astype(np.float32)


def dequantise(q: np.ndarray, peak: np.ndarray) -> np.ndarray:
    """Inverse of :func:`quantise_rows` (float32), as the page computes it."""
    return q.astype(np.float32) / np.float32(255.0) * peak[..., None].astype(np.float32)


@lru_cache(maxsize=16)
def _merge_plan(query_info: TokenInfo, key_info: TokenInfo, spec: ViewSpec):
    """Per token its unit (query and key side), the query units' sizes, and the visible units (long inputs: computed once)."""
    qu, ku = units_for(query_info, spec), units_for(key_info, spec)

    def unit_index(units, n):
        idx = [0] * n
        for u, g in enumerate(units.groups):
            for t in g:
                idx[t] = u
        return torch.tensor(idx, dtype=torch.long)

    counts = torch.tensor([len(g) for g in qu.groups], dtype=torch.float32)
    qk = [i for i, sp in enumerate(qu.special) if not sp]
    kk = [i for i, sp in enumerate(ku.special) if not sp]
    return unit_index(qu, len(query_info)), unit_index(ku, len(key_info)), counts, len(qu), len(ku), qk, kk


def prepare_sparse(attn: torch.Tensor, query_info: TokenInfo, key_info: TokenInfo, spec: ViewSpec) -> torch.Tensor:
    """What :func:`attnviz.analysis.select.prepare` computes (``.attn``), in O(Q*K) for long inputs.

    ``prepare`` merges word pieces with dense membership matrices (``M_q A M_k^T``,
    O(N^3)); here attention TO a word is an ``index_add`` over its pieces and FROM a
    word the mean of its pieces' rows, then special tokens are dropped and rows
    renormalised exactly as ``prepare`` does. Equal to it within float32 rounding
    (tested). ``attn``: float ``[..., Q_tokens, K_tokens]``.

    Raises:
        UsageError: hiding special tokens leaves nothing.
    """
    a = attn.float()
    if not spec.words and not spec.hide_special:
        return a
    qidx, kidx, counts, nq, nk, qk, kk = _merge_plan(query_info, key_info, spec)
    if spec.words:
        a = torch.zeros(*a.shape[:-1], nk, dtype=a.dtype).index_add_(-1, kidx, a)
        a = torch.zeros(*a.shape[:-2], nq, nk, dtype=a.dtype).index_add_(-2, qidx, a) / counts[:, None]
    if spec.hide_special:
        if not qk or not kk:
            raise UsageError("--hide-special leaves no tokens to show")
        a = a[..., qk, :][..., kk]
        total = a.sum(dim=-1, keepdim=True)
        a = torch.where(total > 0, a / total.clamp_min(1e-30), a)
    return a


def kind_infos(kind: str, tokens: TokenInfo, target_tokens: TokenInfo | None) -> tuple[TokenInfo, TokenInfo]:
    """(query-side, key-side) tokens of an attention kind (as :meth:`TextAttention.sides`)."""
    query = target_tokens if kind in (DECODER, CROSS) else tokens
    key = target_tokens if kind == DECODER else tokens
    return query, key


@dataclass
class _KindData:
    num_layers: int
    num_heads: int
    causal: bool
    variants: dict = field(default_factory=dict)  # key -> dict (json) or alias str
    layers: dict = field(default_factory=dict)  # key -> {layer: (arrays)}
    focus_rows: dict = field(default_factory=dict)  # key -> {layer: (q, peak)}


class TextCollector:
    """Turns attention layers into the page's compact data, one layer at a time.

    Call it as ``CapturePlan.on_layer`` (``(kind, layer, probs[heads, query, key])``)
    so long inputs never need their full maps in memory, or let
    :func:`text_payload` feed it from a result's full maps. Memory: the compact
    data (O(L*H*N*k) beyond :data:`FULL_TOKENS`) plus one layer in flight.

    ``focus_tokens``: token positions (query side of ``focus_kind``) whose full rows are
    kept in top-k mode.
    """

    def __init__(
        self,
        tokens: TokenInfo,
        target_tokens: TokenInfo | None = None,
        focus_tokens: tuple[int, ...] = (),
        focus_kind: str | None = None,
        full_tokens: int | None = None,
        k: int | None = None,
    ):
        full_tokens = FULL_TOKENS if full_tokens is None else full_tokens
        k = TOP_K if k is None else k
        self.tokens, self.target_tokens = tokens, target_tokens
        self.focus_tokens, self.focus_kind = tuple(focus_tokens), focus_kind
        self.full_tokens, self.k = full_tokens, k
        self.kinds: dict[str, _KindData] = {}
        n = max(len(tokens), len(target_tokens) if target_tokens is not None else 0)
        self.mode = "full" if n <= full_tokens else "topk"

    def _setup(self, kind: str, probs: torch.Tensor) -> _KindData:
        q_info, k_info = kind_infos(kind, self.tokens, self.target_tokens)
        data = _KindData(0, probs.shape[0], False)
        canonical: dict[tuple, str] = {}
        for spec in VARIANTS:
            key = variant_key(spec)
            qu, ku = units_for(q_info, spec), units_for(k_info, spec)
            if spec.hide_special:
                qk = [i for i, s in enumerate(qu.special) if not s]
                kk = [i for i, s in enumerate(ku.special) if not s]
                if not qk or not kk:
                    data.variants[key] = {"error": "hiding special tokens leaves no tokens to show"}
                    continue
            else:
                qk, kk = list(range(len(qu))), list(range(len(ku)))
            sig = (tuple(qu.groups[i] for i in qk), tuple(ku.groups[i] for i in kk))
            if sig in canonical:
                data.variants[key] = canonical[sig]  # the same view as another: alias
                continue
            canonical[sig] = key
            data.variants[key] = {
                "spec": spec,
                "query": {"labels": [qu.labels[i] for i in qk], "groups": [list(qu.groups[i]) for i in qk], "special": [qu.special[i] for i in qk]},
                "key": {"labels": [ku.labels[i] for i in kk], "groups": [list(ku.groups[i]) for i in kk], "special": [ku.special[i] for i in kk]},
                "describe": spec.describe(),
            }
            data.layers[key] = {}
            data.focus_rows[key] = {}
        self.kinds[kind] = data
        return data

    def __call__(self, kind: str, layer: int, probs: torch.Tensor) -> None:
        probs = probs.detach().to("cpu", torch.float32)
        data = self.kinds.get(kind) or self._setup(kind, probs)
        data.num_layers = max(data.num_layers, layer + 1)
        q_info, k_info = kind_infos(kind, self.tokens, self.target_tokens)
        for key, v in data.variants.items():
            if not isinstance(v, dict) or "error" in v:
                continue
            if self.mode == "full":
                attn = prepare(probs, q_info, k_info, v["spec"]).attn  # [H, Qu, Ku]
                data.layers[key][layer] = quantise_rows(attn)
            else:  # one head at a time: the extra memory stays one head's map, however long the input
                k = min(self.k, len(v["key"]["labels"]))
                vals, idx = zip(*(prepare_sparse(head, q_info, k_info, v["spec"]).topk(k, dim=-1) for head in probs))
                q, peak = quantise_rows(torch.stack(vals))
                data.layers[key][layer] = (q, peak, torch.stack(idx).to(torch.int32).numpy().astype(np.uint16))
                if kind == self.focus_kind and self.focus_tokens:
                    unit = _visible_unit(v["query"]["groups"], self.focus_tokens[0])
                    if unit is not None:
                        group = v["query"]["groups"][unit]
                        if all(t < probs.shape[1] for t in group):
                            rows, _ = prepare_rows(probs[None][:, :, group, :], list(group), k_info, v["spec"])  # [1, H, Ku]
                            data.focus_rows[key][layer] = quantise_rows(rows[0]) + (unit,)

    def to_json(self) -> dict:
        """The ``kinds`` part of the payload."""
        out = {}
        for kind, data in self.kinds.items():
            variants = {}
            for key, v in data.variants.items():
                if not isinstance(v, dict) or "error" in v:
                    variants[key] = v
                    continue
                layers = [data.layers[key][l] for l in range(data.num_layers)]
                entry = {k2: v[k2] for k2 in ("query", "key", "describe")}
                entry["q"] = b64(np.stack([x[0] for x in layers]))
                entry["peak"] = b64(np.stack([x[1] for x in layers]))
                if self.mode == "topk":
                    entry["idx"] = b64(np.stack([x[2] for x in layers]))
                    entry["k"] = int(layers[0][0].shape[-1])
                rows = data.focus_rows.get(key) or {}
                if len(rows) == data.num_layers:
                    entry["focus_rows"] = {
                        "unit": rows[0][2],
                        "q": b64(np.stack([rows[l][0] for l in range(data.num_layers)])),
                        "peak": b64(np.stack([rows[l][1] for l in range(data.num_layers)])),
                    }
                variants[key] = entry
            out[kind] = {"num_layers": data.num_layers, "num_heads": data.num_heads, "variants": variants}
        return out


def _visible_unit(groups: list[list[int]], token: int) -> int | None:
    for i, g in enumerate(groups):
        if token in g:
            return i
    return None


def _focus_grid(result, focus, spec: ViewSpec, collector: TextCollector) -> dict | None:
    """The focus view's data for one variant: weights/targets [L, H] from :func:`attnviz.analysis.focus.analyse_focus`."""
    from attnviz.analysis.focus import analyse_focus

    _, q_info, _ = result.sides(focus.kind)
    units = units_for(q_info, spec)
    try:
        unit = units.unit_of(focus.token_indices[0])
    except KeyError:
        return None
    label = units.labels[unit]
    try:  # the same unit again, named as --token/--token-index name it (the one matcher: analysis.match.token_key)
        f = analyse_focus(result, label, occurrence(units.labels, unit), spec, top=None, kind=focus.kind,
                          direction=focus.direction, adjacent=focus.adjacent)
    except (UsageError, KeyError):
        return None
    key_groups = units_for(result.sides(focus.kind)[2], spec).groups
    return {
        "text": f.text,
        "weights": [[float(w) for w in row] for row in f.weights],  # as computed (float32): the page writes them as the PNG does
        "targets": [[f.labels[int(t)] for t in row] for row in f.targets],
        "target_tokens": [[list(key_groups[int(t)]) for t in row] for row in f.targets],
        "rule": f.describe(),
        "top": [{"layer": l.layer, "head": l.head, "target": l.target_label, "weight": round(l.weight, 5)} for l in f.top[:10]],
    }


def text_payload(
    result,
    focus=None,
    spec: ViewSpec | None = None,
    layer: int | None = None,
    head: int | None = None,
    collector: TextCollector | None = None,
    label: str | None = None,
) -> dict:
    """The JSON-ready payload of a text report.

    ``result``: :class:`~attnviz.types.TextAttention`; ``focus``: a
    :class:`~attnviz.analysis.focus.Focus` (its token is pre-selected, its grid shown);
    ``spec``: the view the page opens with; ``layer``/``head``: the head view's
    start (default: the focus token's top head, else the last layer, every head).
    ``collector``: a :class:`TextCollector` already fed by the capture (long
    inputs); without it the result's full maps are used. ``label``: the model's
    display name (``"label"``, drawn as the heading; default ``result.model_id``).

    Raises:
        UsageError: the result holds neither full maps nor a fed collector.
    """
    spec = spec or ViewSpec()
    if collector is None or not collector.kinds:
        focus_tokens = tuple(focus.token_indices) if focus is not None else ()
        collector = TextCollector(result.tokens, result.target_tokens, focus_tokens, focus.kind if focus else None)
        for kind, maps in result.attention.items():
            if maps.full is None:
                raise UsageError(
                    "the HTML report needs every layer's attention: capture with CapturePlan(full=True) "
                    "or feed a TextCollector as on_layer"
                )
            for l in range(maps.num_layers):
                collector(kind, l, maps.full[l])
    kinds = collector.to_json()
    main = result.main.kind
    if focus is not None and focus.top and layer is None:
        layer, head = focus.top[0].layer, focus.top[0].head if head is None else head
    if layer is None:
        layer = result.num_layers - 1
    focus_json = None
    if focus is not None:
        grids = {}
        for v in VARIANTS:
            key = variant_key(v)
            g = _focus_grid(result, focus, v, collector)
            if g is not None:
                grids[key] = g
        focus_json = {"kind": focus.kind, "token_indices": list(focus.token_indices), "text": focus.text, "grids": grids,
                      "fallback": getattr(focus, "fallback", None)}  # why the link rules differ from those asked for
    return {
        "type": "text",
        "model": result.model_id,
        "label": label or result.model_id,
        "model_type": result.model_type,
        "backend": result.backend,
        "text": result.tokens.text,
        "target": result.target_tokens.text if result.target_tokens is not None else None,
        "dropped_tokens": result.dropped_tokens,
        "mode": collector.mode,
        "full_tokens": collector.full_tokens,
        "top_k": collector.k,
        "quantisation": QUANTISATION,
        "kinds": kinds,
        "kind_order": [k for k in (SELF, ENCODER, DECODER, CROSS) if k in kinds],
        "focus": focus_json,
        "initial": {
            "kind": focus.kind if focus is not None else main,
            "layer": int(layer),
            "heads": [int(head)] if head is not None else list(range(result.num_heads)),
            "words": spec.words,
            "hide_special": spec.hide_special,
        },
    }


def _photo_data_uri(image) -> tuple[str, float]:
    """The photo as a JPEG data URI, longest side at most PHOTO_MAX_SIDE; and the scale applied."""
    img = image.convert("RGB")
    scale = min(1.0, PHOTO_MAX_SIDE / max(img.width, img.height))
    if scale < 1.0:
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=88)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii"), scale


def image_payload(result, rollout=None, settings: dict | None = None, sinks=(), layer: int = -1, head: int | None = None,
                  label: str | None = None) -> dict:
    """The JSON-ready payload of an image report.

    ``result``: :class:`~attnviz.types.ImageAttention` with full maps (or at least
    ``layer``); ``rollout``: raw ``[rows, cols]`` rollout (default: computed with
    ``settings``); ``sinks``: :class:`~attnviz.analysis.sinks.SinkPatch` list.
    Every layer embeds in full up to :data:`IMAGE_FULL_VALUES` values, else only
    the layers the result holds in full. ``label``: the model's display name
    (``"label"``, drawn as the heading; default ``result.model_id``). The page
    colours the attention panel from 0 and the rollout from its min to its max,
    as :func:`attnviz.render.image.rollout_view` does.

    Raises:
        UsageError: the result holds no full layer at all.
    """
    from attnviz.analysis.patches import query_label, rollout_map

    settings = dict(settings or {"head_fusion": "mean", "discard_ratio": 0.0})
    maps = result.attention
    layer %= maps.num_layers
    if rollout is None:
        rollout = rollout_map(result, settings.get("head_fusion", "mean"), settings.get("discard_ratio", 0.0))
    T = maps.num_keys
    if maps.full is not None and maps.num_layers * maps.num_heads * T * T <= IMAGE_FULL_VALUES:
        layers = list(range(maps.num_layers))
    else:
        layers = sorted(l for l in range(maps.num_layers) if maps.has_layer(l) and (maps.full is not None or l in maps.layers))
        if maps.full is not None:
            layers = [layer]
    if not layers:
        raise UsageError("the HTML report needs at least one layer's full attention")
    q, peak = zip(*(quantise_rows(maps.layer(l)) for l in layers))
    photo, scale = _photo_data_uri(result.image)
    return {
        "type": "image",
        "model": result.model_id,
        "label": label or result.model_id,
        "model_type": result.model_type,
        "backend": result.backend,
        "photo": photo,
        "photo_size": [result.image.width, result.image.height],
        "crop_box": [float(v) for v in result.crop_box],
        "grid": list(result.grid),
        "prefix_tokens": result.prefix_tokens,
        "cls_index": result.cls_index,
        "query_label": query_label(result),
        "num_layers": maps.num_layers,
        "num_heads": maps.num_heads,
        "layers": layers,
        "tokens": T,
        "q": b64(np.stack(q)),
        "peak": b64(np.stack(peak)),
        "quantisation": QUANTISATION,
        "rollout": [[float(f"{v:.6g}") for v in row] for row in rollout.double().tolist()],
        "rollout_settings": {**settings, "row": query_label(result)},
        "sinks": [s.to_dict() for s in sinks],
        "predictions": [{"label": p.label, "score": round(p.score, 6)} for p in result.predictions],
        "initial": {"layer": layer if layer in layers else layers[-1], "head": head},
    }

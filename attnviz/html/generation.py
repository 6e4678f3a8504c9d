"""The HTML report of a generation run (:class:`~attnviz.types.GenerationAttention`).

The page shows the generated text, a generation map (generated tokens x every
earlier key token, one layer and head or the head mean) and, for a clicked
generated token, its strongest earlier tokens: the keys
:func:`attnviz.analysis.generation.eligible` allows (not the token itself, not
the first token, not special tokens; the rule :data:`~attnviz.analysis.generation.SELF_RULE`
is written on the page). Encoder-decoder runs add the cross-attention
(generated tokens x source tokens, :data:`~attnviz.analysis.generation.CROSS_RULE`).

Encoding: as the text report (:data:`attnviz.html.payload.QUANTISATION`): every
row (layer, head, step) is quantised to 8 bits relative to its own maximum, the
maxima kept as float32. The head mean is embedded as one more "head" (index
``num_heads``), quantised the same way from the float32 mean, so it is read back
within the same bound.
"""

from __future__ import annotations

import torch

from attnviz.analysis.generation import CROSS_RULE, SELF_RULE
from attnviz.html.page import page_title, render_page
from attnviz.html.payload import QUANTISATION, b64, quantise_rows


def _kind(attn: torch.Tensor, keys, special, boundary: int | None) -> dict:
    """One attention kind: ``attn`` float ``[L, H, G, K]`` with the head mean appended as head ``H``."""
    a = attn.detach().float().cpu()
    a = torch.cat([a, a.mean(dim=1, keepdim=True)], dim=1)
    q, peak = quantise_rows(a)
    return {
        "keys": list(keys),
        "key_special": [bool(s) for s in special],
        "boundary": boundary,
        "num_keys": int(a.shape[-1]),
        "q": b64(q),
        "peak": b64(peak),
    }


def generation_header(result, label: str | None = None) -> dict:
    """The fields every page of a generation shares: model, label, backend, prompt, the generated tokens with
    their probabilities, lengths, layers and heads, and whether it stopped at EOS."""
    return {
        "model": result.model_id,
        "label": label or result.model_id,
        "model_type": result.model_type,
        "backend": result.backend,
        "prompt": result.prompt.text,
        "text": result.text,
        "generated": list(result.generated),
        "generated_special": [bool(s) for s in result.generated_special],
        "probabilities": [round(float(p), 6) for p in result.probabilities],
        "context_length": result.context_length,
        "prompt_length": result.prompt_length,
        "num_layers": result.num_layers,
        "num_heads": result.num_heads,
        "num_generated": result.num_generated,
        "stopped_at_eos": bool(result.stopped_at_eos),
    }


def generation_payload(result, layer: int | None = None, head: int | None = None, label: str | None = None) -> dict:
    """The JSON-ready payload of a generation report.

    ``layer``: the layer the page opens with (default: the last); ``head``: the
    head (default: the head mean). Negative indices count from the end.
    ``label``: the model's display name (default ``result.model_id``).
    """
    L, H = result.num_layers, result.num_heads
    layer = (L - 1 if layer is None else int(layer)) % L
    head = None if head is None else int(head) % H
    kinds = {"self": _kind(result.attentions, result.key_labels, result.key_special, result.context_length)}
    if result.cross_attentions is not None:
        kinds["cross"] = _kind(result.cross_attentions, result.prompt.tokens, result.prompt.special, None)
    return {
        "type": "generation",
        **generation_header(result, label),
        "encoder_decoder": bool(result.encoder_decoder),
        "sampling": {k: v for k, v in dict(result.sampling).items() if isinstance(v, (int, float, str, bool, type(None)))},
        "notice": result.notice,
        "quantisation": QUANTISATION,
        "kinds": kinds,
        # what the "strongest earlier tokens" table may list (analysis.generation.eligible): self-attention
        # skips the step itself, the first key position (attention sink) and special keys; cross skips special keys
        "rules": {"self": SELF_RULE, "cross": CROSS_RULE},
        "initial": {"kind": "self", "layer": layer, "head": head, "step": 0 if result.num_generated else None},
    }


def generation_page(result, layer: int | None = None, head: int | None = None, label: str | None = None) -> str:
    """The self-contained offline HTML report of a :class:`~attnviz.types.GenerationAttention`.

    ``label``: the model's display name in the title and heading (default ``result.model_id``).
    """
    payload = generation_payload(result, layer, head, label)
    return render_page(payload, page_title(result.model_id, label, "generate"), script="generation.js",
                       styles=("attnviz.css", "generation.css"))

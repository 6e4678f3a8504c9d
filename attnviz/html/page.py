"""Assemble the one-file HTML page: template + inline CSS + hand-written JS + the JSON payload.

The page carries a Content-Security-Policy of ``default-src 'none'`` (inline
scripts and styles, ``data:`` images only), so it cannot make a request to the
network or read another file even if some code tried.
"""

from __future__ import annotations

import html
import json
from importlib import resources

from attnviz.html.payload import image_payload, text_payload


def _asset(name: str) -> str:
    return resources.files("attnviz.html").joinpath("assets", name).read_text(encoding="utf-8")


#: Characters written as ``\\uXXXX`` escapes in the embedded JSON: with no ``<`` the HTML parser cannot see
#: ``</script>`` or ``<!--`` in it (both would end or break the data block), ``>`` and ``&`` for good measure,
#: U+2028/U+2029 because older JavaScript parsers read them as line ends. Every one of them can only occur
#: inside a JSON string, where the escape means the same character.
_JSON_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def embed_json(payload: dict) -> str:
    """``payload`` as JSON that is safe inside ``<script type="application/json">`` and still valid JSON
    (``json.loads`` of it returns ``payload``): see :data:`_JSON_ESCAPES`."""
    data = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
    for char, escape in _JSON_ESCAPES.items():
        data = data.replace(char, escape)
    return data


def render_page(payload: dict, title: str, script: str = "attnviz.js", styles: tuple[str, ...] = ("attnviz.css",)) -> str:
    """The complete HTML document for ``payload`` (from :mod:`attnviz.html.payload`), drawn by the asset ``script``
    and styled by the assets ``styles`` (concatenated). ``title``: the page title, as text (escaped here)."""
    page = _asset("page.html")
    for key, value in (
        ("{{TITLE}}", html.escape(title)),
        ("{{CSS}}", "\n".join(_asset(name) for name in styles)),
        ("{{JS}}", _asset("common.js") + "\n" + _asset(script)),
        ("{{DATA}}", embed_json(payload)),
    ):
        page = page.replace(key, value, 1)
    return page


def page_title(model_id: str, label: str | None, what: str) -> str:
    """``"attnviz · <label> · <what>"``; ``label``: the model's display name (the pipelines pass
    ``Style.model_label(model_id)``: ``--label``, else the folder name of a local model), default ``model_id``."""
    return f"attnviz · {label or model_id} · {what}"


def text_page(result, focus=None, spec=None, layer=None, head=None, collector=None, label: str | None = None) -> str:
    """The HTML report of a :class:`~attnviz.types.TextAttention` (see :func:`attnviz.html.payload.text_payload`).

    ``label``: the model's display name in the title and heading (default ``result.model_id``).
    """
    payload = text_payload(result, focus, spec, layer, head, collector, label=label)
    return render_page(payload, page_title(result.model_id, label, "text"))


def image_page(result, rollout=None, settings=None, sinks=(), layer: int = -1, head=None, label: str | None = None) -> str:
    """The HTML report of an :class:`~attnviz.types.ImageAttention` (see :func:`attnviz.html.payload.image_payload`).

    ``label``: the model's display name in the title and heading (default ``result.model_id``).
    """
    payload = image_payload(result, rollout, settings, sinks, layer, head, label=label)
    return render_page(payload, page_title(result.model_id, label, "image"))


def missing_maps(obj) -> str | None:
    """Why a page of ``obj`` (Text- or ImageAttention) cannot be drawn from what its capture plan kept, or None.

    A text page needs every layer's full maps of every attention kind; an image page at least one full
    layer and, for the rollout, the full maps or a captured rollout with the default settings (head
    fusion mean, discard ratio 0).
    """
    from attnviz.types import ImageAttention

    if isinstance(obj, ImageAttention):
        maps = obj.attention
        if maps.full is not None:
            return None
        if not maps.layers:
            return "no layer's full attention was captured"
        settings = dict(maps.rollout_settings)
        if maps.rollout is None or settings.get("head_fusion") != "mean" or float(settings.get("discard_ratio", -1)) != 0.0:
            return "neither the full maps nor the default rollout was captured"
        return None
    lacking = [kind for kind, maps in obj.attention.items() if maps.full is None]
    return f"the full maps of {', '.join(lacking)} attention were not captured" if lacking else None


def repr_html(obj) -> str | None:
    """``_repr_html_`` of Text-/ImageAttention: :func:`notebook_html`, or None (plain repr) when the result
    lacks the maps a page needs (:func:`missing_maps`, e.g. captured with a light plan). Any other error
    is raised: it is a bug, not a missing map."""
    if missing_maps(obj) is not None:
        return None
    return notebook_html(obj)


def register_display() -> None:
    """Make :func:`repr_html` the notebook display of results (:func:`attnviz.types.register_html_display`).
    Done when :mod:`attnviz.html` is imported; call it again after registering another hook to restore it."""
    from attnviz.types import register_html_display

    register_html_display(repr_html)


def notebook_html(obj, height: int = 860) -> str:
    """An ``<iframe srcdoc>`` holding the report of ``obj`` (Text- or ImageAttention), for ``_repr_html_``.

    The iframe keeps the page's scripts and styles apart from the notebook's; nothing is loaded from a CDN.
    """
    from attnviz.types import ImageAttention

    page = image_page(obj) if isinstance(obj, ImageAttention) else text_page(obj)
    return (
        f'<iframe srcdoc="{html.escape(page, quote=True)}" style="width:100%;height:{height}px;border:1px solid #ddd" '
        'sandbox="allow-scripts"></iframe>'
    )

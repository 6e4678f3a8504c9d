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


def render_page(payload: dict, title: str, script: str = "attnviz.js", styles: tuple[str, ...] = ("attnviz.css",)) -> str:
    """The complete HTML document for ``payload`` (from :mod:`attnviz.html.payload`), drawn by the asset ``script``
    and styled by the assets ``styles`` (concatenated)."""
    data = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
    data = data.replace("</", "<\\/").replace("<!--", "<\\!--")  # safe inside <script>
    page = _asset("page.html")
    for key, value in (
        ("{{TITLE}}", html.escape(title)),
        ("{{CSS}}", "\n".join(_asset(name) for name in styles)),
        ("{{JS}}", _asset("common.js") + "\n" + _asset(script)),
        ("{{DATA}}", data),
    ):
        page = page.replace(key, value, 1)
    return page


def text_page(result, focus=None, spec=None, layer=None, head=None, collector=None) -> str:
    """The HTML report of a :class:`~attnviz.types.TextAttention` (see :func:`attnviz.html.payload.text_payload`)."""
    payload = text_payload(result, focus, spec, layer, head, collector)
    return render_page(payload, f"attnviz · {result.model_id} · text")


def image_page(result, rollout=None, settings=None, sinks=(), layer: int = -1, head=None) -> str:
    """The HTML report of an :class:`~attnviz.types.ImageAttention` (see :func:`attnviz.html.payload.image_payload`)."""
    payload = image_payload(result, rollout, settings, sinks, layer, head)
    return render_page(payload, f"attnviz · {result.model_id} · image")


def repr_html(obj) -> str | None:
    """``_repr_html_`` of Text-/ImageAttention: :func:`notebook_html`, or None (plain repr) when the result
    lacks the maps a page needs (e.g. captured with a light plan)."""
    from attnviz.errors import AttnvizError

    try:
        return notebook_html(obj)
    except (AttnvizError, KeyError):
        return None


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

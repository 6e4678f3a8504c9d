"""The HTML report of ``attnviz detect``: one self-contained, offline page.

The photo with every detection's box (an SVG over the embedded JPEG, in photo pixels); clicking a box or a row of
the detections table shows that object's attention figure (the very Figure ``object-{i}.png`` holds, embedded as
a PNG) and its numbers (query, label, score, box, the tightest head and every head's spread). ``--point`` adds the
encoder pixel's figure. Drawn by ``assets/detect.js`` under the pages' Content-Security-Policy (no network).
"""

from __future__ import annotations

import base64
import io
from typing import Mapping

from attnviz.html.page import page_title, render_page
from attnviz.html.payload import _photo_data_uri


def figure_data_uri(fig, dpi: int = 110) -> str:
    """A matplotlib Figure as a ``data:image/png`` URI (in memory; nothing is written)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def detect_payload(document: Mapping, photo, figures: Mapping[str, object]) -> dict:
    """The data ``detect.js`` draws.

    Args:
        document: the run's ``--json`` document (:meth:`attnviz.pipelines.detect.DetectRun.to_json` fields:
            ``detections``, ``objects``, ``point``, ``feature_levels``...).
        photo: the photo (PIL, RGB), embedded as a JPEG of at most 1600 pixels a side.
        figures: ``{"object-{i}" | "point": Figure}`` to embed as PNGs.
    """
    uri, _scale = _photo_data_uri(photo)
    doc = {k: v for k, v in document.items() if k not in ("files", "save_attn")}
    objects = []
    for obj in document.get("objects", []):
        slim = {k: v for k, v in obj.items() if k not in ("heads", "mean", "points", "weights", "levels")}
        slim["figure"] = figure_data_uri(figures[f"object-{obj['index']}"]) if f"object-{obj['index']}" in figures else None
        objects.append(slim)
    doc["objects"] = objects
    if document.get("point") is not None:
        point = {k: v for k, v in document["point"].items() if k not in ("heads", "mean", "points", "weights", "levels")}
        point["figure"] = figure_data_uri(figures["point"]) if "point" in figures else None
        doc["point"] = point
    doc["type"] = "detect"
    doc["photo"] = uri
    doc["photo_size"] = [photo.width, photo.height]
    return doc


def detect_page(document: Mapping, photo, figures: Mapping[str, object], label: str | None = None) -> str:
    """The HTML report of an ``attnviz detect`` run (see :func:`detect_payload`)."""
    return render_page(detect_payload(document, photo, figures), page_title(document["model"], label, "detect"),
                       script="detect.js", styles=("attnviz.css", "detect.css"))

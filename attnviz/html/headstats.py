"""The HTML report of ``attnviz heads``: the corpus head statistics as one self-contained, offline page.

The payload is :meth:`attnviz.pipelines.headstats_engine.HeadsResult.to_json` (every statistic as a
``[layers][heads]`` grid, definitions, corpus size, settings, probes, the head
map's 2-D coordinates) without the ``[L*H, L*H]`` distance matrix, plus the
statistics' display labels. It is drawn by ``assets/heads.js`` (the text and
image pages' ``attnviz.js`` is not loaded) under the same Content-Security-Policy.
"""

from __future__ import annotations

from attnviz.html.page import render_page


def heads_payload(result, style=None) -> dict:
    """The data ``heads.js`` draws, from a :class:`attnviz.pipelines.headstats_engine.HeadsResult` (numbers as in ``heads.json``)."""
    from attnviz.analysis.headstats import LABELS, STATISTICS

    doc = result.to_json((), style)
    doc.pop("files", None)
    doc["head_map"].pop("distances", None)  # [L*H]^2 numbers the page does not draw
    names = list(STATISTICS) + (["probe_accuracy"] if result.probes is not None else [])
    doc["type"] = "heads"
    doc["order"] = names
    doc["labels"] = {n: {"label": LABELS[n][0], "unit": LABELS[n][1]} for n in names}
    doc["lowest"] = ["entropy", "entropy_ratio"]  # statistics whose distinctive heads are the lowest
    return doc


def heads_page(result, style=None, label: str | None = None) -> str:
    """The HTML report of a :class:`attnviz.pipelines.headstats_engine.HeadsResult` (see :func:`heads_payload`);
    ``label``: the model's display label in the title (default: its id)."""
    label = label or result.model_id
    return render_page(heads_payload(result, style), f"attnviz · {label} · heads", script="heads.js",
                       styles=("attnviz.css", "heads.css"))

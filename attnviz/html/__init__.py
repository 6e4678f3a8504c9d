"""The interactive HTML report: one self-contained, offline page per result.

- :mod:`attnviz.html.payload`: the data the page embeds (compact, quantised) built
  from :class:`~attnviz.types.TextAttention` / :class:`~attnviz.types.ImageAttention`
  and the analyses in :mod:`attnviz.analysis` and :mod:`attnviz.analysis.focus`;
- :mod:`attnviz.html.generation`: the page of a :class:`~attnviz.types.GenerationAttention`
  (its own script, ``assets/generation.js``);
- :mod:`attnviz.html.headstats`: the page of ``attnviz heads`` (corpus statistics, drawn by ``assets/heads.js``);
- :mod:`attnviz.html.page`: the page itself (template, hand-written JS and CSS
  shipped as package data, inlined; no network, no other file).

Writing the page to disk is :func:`attnviz.report.write_html`'s job.

Importing this package registers :func:`repr_html` as the notebook display of
results (:func:`attnviz.types.register_html_display`; :func:`register_display`
does it again), so the bottom layer never imports this one.
"""

from attnviz.html.generation import generation_page
from attnviz.html.headstats import heads_page
from attnviz.html.page import image_page, missing_maps, notebook_html, register_display, repr_html, text_page

__all__ = ["text_page", "image_page", "generation_page", "heads_page", "notebook_html", "repr_html", "register_display",
           "missing_maps"]

register_display()

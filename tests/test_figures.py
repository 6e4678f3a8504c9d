"""Figures measured as printed: sizes, fonts, overlaps, vector text, fonts in PDF, metadata, honest scales.

Every view is drawn at ``column`` (3.3 in) and ``page`` (6.9 in) width and measured
after drawing: the smallest font at printed size is at least 6 pt, no two visible
texts overlap and none sticks out of the figure (inputs up to 64 tokens).
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from PIL import Image

from attnviz.analysis.select import ViewSpec
from attnviz.errors import UsageError
from attnviz.focus import analyse_focus
from attnviz.render.layout import (
    COLUMN_IN, PAGE_IN, Style, display_label, overlapping_texts, parse_size, smallest_font, texts_outside,
)
from attnviz.render.text import focus_view, head_view, matrix_view, model_view
from attnviz.report import write_figure

TEXT = "The animal didn't cross the street because it was too tired."
#: 64 tokens with [CLS] and [SEP] on the default model (word pieces, an apostrophe, hyphens, punctuation).
LONG = ("The state-of-the-art animal didn't cross the busy street, because it was far too tired; "
        "the old dog's owner said: \"it won't move until tomorrow morning.\" Then everyone left quietly, and the "
        "street was empty again until the late evening bus came by.")


@pytest.fixture(scope="module")
def default_model():
    from attnviz.text import load_text_model

    return load_text_model()


@pytest.fixture(scope="module")
def short(default_model):
    from attnviz.text import attend_text

    return attend_text(TEXT, default_model)


@pytest.fixture(scope="module")
def long64(default_model):
    from attnviz.text import attend_text

    r = attend_text(LONG, default_model)
    assert len(r.tokens) == 64
    return r


def assert_printable(fig, width_in: float) -> None:
    w, _ = fig.get_size_inches()
    assert w == pytest.approx(width_in)
    assert smallest_font(fig) >= 6.0
    assert overlapping_texts(fig) == []
    assert texts_outside(fig) == []


def text_figures(result, size: str, words: bool = False):
    spec = ViewSpec(words=words)
    style = Style.from_options(size, dpi=100)
    f = analyse_focus(result, "it", 0, spec)
    return {
        "head": head_view(result, 3, 1, spec, focus=f.token_indices, style=style),
        "matrix": matrix_view(result, 3, 1, spec, focus=f.token_indices, style=style),
        "model": model_view(result, spec, style=style),
        "focus": focus_view(result, f, spec, style=style),
    }


@pytest.mark.parametrize("size,width", [("column", COLUMN_IN), ("page", PAGE_IN)])
@pytest.mark.parametrize("which", ["short", "long64"])
def test_text_views_print_legibly(request, size, width, which):
    result = request.getfixturevalue(which)
    for name, fig in text_figures(result, size, words=which == "long64").items():
        assert_printable(fig, width), name


def test_long_token_lists_are_thinned_not_crushed(long64):
    fig = text_figures(long64, "column")["head"]
    labels = [t for t in fig.axes[0].texts if (t.get_gid() or "")[:1] == "q"]
    assert 4 <= len(labels) < 64  # every n-th label, at a legible size
    assert any(t.get_gid() == "q" + str(long64.tokens.tokens.index("it")) for t in labels)  # the focus is always labelled
    assert min(t.get_fontsize() for t in labels) >= 6


def test_saved_files_have_exact_width_vector_text_truetype_and_metadata(short, tmp_path):
    spec = ViewSpec()
    style = Style.from_options("column", dpi=200, label="MiniLM")
    fig = matrix_view(short, 3, 1, spec, style=style)
    png = write_figure(fig, tmp_path, "m", "png")
    with Image.open(png) as im:
        assert im.size[0] == round(COLUMN_IN * 200)
        assert im.text["Title"].startswith("Attention matrix · MiniLM")
        assert im.text["Software"].startswith("attnviz ")
        assert json.loads(im.text["Settings"])["size"] == "column"
    svg = write_figure(fig, tmp_path, "m", "svg").read_text()
    assert len(re.findall(r"<text\b", svg)) > 10 and "MiniLM" in svg
    assert "<dc:title>Attention matrix" in svg
    pdf = write_figure(fig, tmp_path, "m", "pdf").read_bytes()
    assert b"/Type3" not in pdf and b"/FontFile2" in pdf  # TrueType (Type 42) fonts embedded
    assert b"attnviz" in pdf


def test_wxh_size_is_exact(short, tmp_path):
    fig = focus_view(short, analyse_focus(short, "it", None, ViewSpec()), ViewSpec(), style=Style.from_options("5x4", dpi=100))
    assert tuple(fig.get_size_inches()) == (5.0, 4.0)
    assert_printable(fig, 5.0)
    with Image.open(write_figure(fig, tmp_path, "f", "png")) as im:
        assert im.size == (500, 400)


def test_style_options_are_checked():
    assert parse_size("column") == ("column", COLUMN_IN, None)
    assert parse_size("5x4") == ("5x4", 5.0, 4.0)
    for bad in ("wide", "0x3", "5x"):
        with pytest.raises(UsageError):
            parse_size(bad)
    with pytest.raises(UsageError, match="colour map"):
        Style.from_options(cmap="no-such-map")
    with pytest.raises(UsageError, match="--scale"):
        Style.from_options(scale="per-layer")
    with pytest.raises(UsageError, match="--dpi"):
        Style.from_options(dpi=5)
    assert Style.from_options("page").resolution == 300 and Style().resolution == 150


def test_display_label_is_never_a_relative_path(tmp_path):
    folder = tmp_path / "models" / "deit-tiny"
    folder.mkdir(parents=True)
    assert display_label(str(folder)) == "deit-tiny"
    assert display_label("../models/deit-tiny/") == "deit-tiny"
    assert display_label("facebook/deit-tiny-patch16-224") == "facebook/deit-tiny-patch16-224"


def test_model_view_scale_is_shared_and_said_or_per_head(short):
    fig = model_view(short, ViewSpec(), style=Style.from_options("page", dpi=100))
    cax = next(a for a in fig.axes if a.get_gid() == "colorbar")
    assert "one scale, all heads" in " ".join(cax.get_ylabel().split())
    per = model_view(short, ViewSpec(), style=Style.from_options("page", dpi=100, scale="per-head"))
    cax = next(a for a in per.axes if a.get_gid() == "colorbar")
    assert "per-head" in cax.get_ylabel()
    img = next(i for i in per.axes[0].get_images() if i.get_gid() == "L3 H1")
    assert float(np.ma.max(img.get_array())) == pytest.approx(1.0)  # each head on its own 0..max scale


def test_matrix_states_threshold_and_marks_focus_row(short):
    from attnviz.render.common import figure_text

    f = analyse_focus(short, "it", None, ViewSpec())
    fig = matrix_view(short, 3, 1, ViewSpec(), focus=f.token_indices, style=Style.from_options("page", dpi=100))
    text = " ".join(figure_text(fig).split())
    assert "weights ≥ .10" in text and "row of 'it'" in text
    row = next(p for p in fig.axes[0].patches if p.get_gid() == "focus-row")
    assert row.get_y() == pytest.approx(f.token_indices[0] - 0.5)


# ---------------------------------------------------------------------------
# image views


@pytest.fixture(scope="module")
def vit(tmp_path_factory):
    from vision_tiny import make_photo, make_vision_model

    from attnviz.image import attend_image, image_plan, image_sinks, load_image_model, rollout_map
    from attnviz.images import load_image
    from attnviz.models import LoadOptions

    root = tmp_path_factory.mktemp("vis")
    im = load_image_model(str(make_vision_model(root, "vit")), LoadOptions())
    res = attend_image(load_image(make_photo(root / "p.png", (64, 48))), im,
                       plan=image_plan(im, (1,), full=False, head_fusion="mean", discard_ratio=0.0))
    ro = rollout_map(res, "mean", 0.0)
    return res, ro, image_sinks(res, ro)


@pytest.mark.parametrize("size,width", [("column", COLUMN_IN), ("page", PAGE_IN)])
def test_image_views_print_legibly(vit, size, width):
    from attnviz.render.image import heads_view, patch_view, predictions_view, report_view, rollout_view

    res, ro, sinks = vit
    style = Style.from_options(size, dpi=100)
    figs = {
        "heads": heads_view(res, 1, sinks=sinks, style=style),
        "patch": patch_view(res, 1, 1, 2, point=(20, 10), style=style),
        "rollout": rollout_view(res, ro, {}, sinks=sinks, style=style),
        "predictions": predictions_view(res, style=style),
        "report": report_view(res, layer=1, head=None, rollout=ro, sinks=sinks, files=["attention-layer1.png"], style=style),
    }
    for name, fig in figs.items():
        assert_printable(fig, width), name


def test_image_heads_share_one_scale_by_default(vit):
    from attnviz.render.image import heads_view

    res, _, _ = vit
    fig = heads_view(res, 1, style=Style.from_options("page", dpi=100))
    heats = [i for a in fig.axes for i in a.get_images() if i.get_gid() == "heatmap"]
    assert len(heats) == res.num_heads + 1
    assert len({i.norm.vmax for i in heats}) == 1 and all(i.norm.vmin == 0 for i in heats)
    assert sum(1 for a in fig.axes if a.get_gid() == "colorbar") == 1
    per = heads_view(res, 1, style=Style.from_options("page", dpi=100, scale="per-head"))
    assert "own scale" in per.texts[1].get_text().replace("\n", " ")


def test_sink_caption_states_what_was_measured():
    from attnviz.analysis.sinks import SinkPatch
    from attnviz.render.image import sinks_note

    note = sinks_note([SinkPatch(6, 8, 0.41, "attention")], (16, 16))
    assert "41%" in note and "uniform share (1/256)" in note and "not what the patch shows" in note
    assert "not the object" not in note

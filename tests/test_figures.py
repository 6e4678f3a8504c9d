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
from attnviz.analysis.focus import analyse_focus
from attnviz.render.layout import (
    COLUMN_IN, PAGE_IN, Style, display_label, overlapping_texts, parse_size, smallest_font, texts_outside,
)
from attnviz.render.text import focus_view, head_view, matrix_view, model_view
from attnviz.report import write_figure

pytestmark = pytest.mark.slow  # the fast tier is pytest -m 'not slow' (README, Tests)

TEXT = "The animal didn't cross the street because it was too tired."
#: 64 tokens with [CLS] and [SEP] on the default model (word pieces, an apostrophe, hyphens, punctuation).
LONG = ("The state-of-the-art animal didn't cross the busy street, because it was far too tired; "
        "the old dog's owner said: \"it won't move until tomorrow morning.\" Then everyone left quietly, and the "
        "street was empty again until the late evening bus came by.")


@pytest.fixture(scope="module")
def default_model():
    from attnviz.inputs.tokens import load_text_model

    return load_text_model()


@pytest.fixture(scope="module")
def short(default_model):
    from attnviz.inputs.tokens import attend_text

    return attend_text(TEXT, default_model)


@pytest.fixture(scope="module")
def long64(default_model):
    from attnviz.inputs.tokens import attend_text

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

    from attnviz.inputs.patches import attend_image, load_image_model

    from attnviz.analysis.patches import image_plan, image_sinks, rollout_map
    from attnviz.inputs.imagefile import load_image
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


def test_a_very_wide_photo_is_drawn_stretched_and_says_so(vit, tmp_path):
    """A 3000x20 photo: panels at most 4:1 (not hairlines), colour-bar labels within the figure, a caption."""
    import dataclasses

    from PIL import Image as PILImage

    from attnviz.render.image import MAX_ASPECT, report_view, rollout_view

    res, ro, sinks = vit
    wide = dataclasses.replace(res, image=PILImage.new("RGB", (3000, 20), (90, 120, 150)), crop_box=(0.0, 0.0, 3000.0, 20.0))
    for fig in (rollout_view(wide, ro, {}, sinks=sinks), report_view(wide, layer=1, head=None, rollout=ro, sinks=sinks)):
        fig.canvas.draw()
        heat_axes = [a for a in fig.axes if any(i.get_gid() == "heatmap" for i in a.get_images())]
        assert heat_axes
        for ax in heat_axes:
            box = ax.get_window_extent()
            assert box.width / box.height <= MAX_ASPECT + 0.05 and box.height > 30  # pixels at 100 dpi
        text = " ".join(t.get_text() for t in fig.findobj(match=lambda o: hasattr(o, "get_text")))
        assert "drawn stretched to 4:1" in text.replace("\n", " ")
        fig_box = fig.bbox
        for cb in (a for a in fig.axes if a.get_gid() == "colorbar"):
            label = cb.yaxis.label.get_window_extent()
            assert label.x1 <= fig_box.x1 + 1 and label.height <= cb.get_window_extent().height + 2


def test_sink_caption_states_what_was_measured():
    from attnviz.analysis.sinks import SinkPatch
    from attnviz.render.image import sinks_note

    note = sinks_note([SinkPatch(6, 8, 0.41, "attention")], (16, 16))
    assert "41%" in note and "uniform share (1/256)" in note and "not what the patch shows" in note
    assert "not the object" not in note


# ---------------------------------------------------------------------------
# generate and heads views


def assert_saved_exactly(fig, width_in: float, tmp_path, stem: str, label: str) -> None:
    """The PNG is exactly ``width x dpi`` pixels wide and names the display label in its metadata."""
    with Image.open(write_figure(fig, tmp_path, stem, "png")) as im:
        assert im.size[0] == round(width_in * 100), stem
        assert label in im.text["Title"] and im.text["Model"] == label, stem
        assert json.loads(im.text["Settings"])["dpi"] == 100, stem


@pytest.fixture(scope="module")
def generations(lm_models):
    """A tiny Llama's generation after a short prompt, and after a long one (over 100 keys: the split map)."""
    from tiny import TEXT

    from attnviz.generate import attend_generation, load_generation_model

    tm = load_generation_model(str(lm_models("llama")))
    short = attend_generation(TEXT, tm, max_new_tokens=6, stop_at_eos=False)
    long = attend_generation(" ".join([TEXT] * 8), tm, max_new_tokens=8, stop_at_eos=False)
    assert long.context_length + long.num_generated > 100
    return short, long


@pytest.mark.parametrize("size,width", [("column", COLUMN_IN), ("page", PAGE_IN)])
def test_generate_views_print_legibly(generations, size, width, tmp_path):
    from attnviz.render.generate import generation_head_view, generation_map, sink_view

    short, long = generations
    style = Style.from_options(size, dpi=100, label="tiny-llama")
    figs = {
        "map": generation_map(short, style=style),
        "map-head": generation_map(short, layer=1, head=2, style=style),
        "map-long": generation_map(long, fusion="max", style=style),
        "sink": sink_view(short, style=style),
        "sink-long": sink_view(long, style=style),
        "head": generation_head_view(short, 2, style=style),
        "head-long": generation_head_view(long, -1, layer=0, head=1, style=style),
    }
    split = figs["map-long"]
    assert {a.get_gid() for a in split.axes} >= {"panel0", "panel1"}  # the long prompt in a panel of its own
    for name, fig in figs.items():
        assert_printable(fig, width)
        assert fig.texts[0].get_text().replace("\n", " ").count("tiny-llama") == 1, name
    for name in ("map", "sink", "head"):
        assert_saved_exactly(figs[name], width, tmp_path, name, "tiny-llama")


def test_generate_map_uses_the_style_colour_map(generations):
    from attnviz.render.generate import generation_map

    fig = generation_map(generations[0], style=Style.from_options("column", dpi=100, cmap="magma"))
    img = next(i for a in fig.axes for i in a.get_images() if i.get_gid() == "attention")
    assert img.get_cmap().name.startswith("magma")


@pytest.fixture(scope="module")
def heads_results(tiny_models):
    """A HeadsResult of a tiny BERT over a small corpus (with probes), and the same with 12 x 12 made-up heads."""
    import dataclasses

    from tiny import CORPUS

    from attnviz.pipelines.headstats_engine import BatchRunner, HeadsResult, HeadsSettings, Probe, run_local, run_probes
    from attnviz.inputs.tokens import load_text_model

    tm = load_text_model(str(tiny_models("bert")))
    runner = BatchRunner(tm, HeadsSettings(batch_size=4, cluster_every=1))
    sums = run_local(runner, [CORPUS[i : i + 4] for i in range(0, len(CORPUS), 4)])
    probes = run_probes(tm, [Probe(CORPUS[0], "it", "animal")], words=False)
    small = HeadsResult.build(runner, sums, "corpus.txt", "local", probes)
    rng = np.random.default_rng(0)
    big = dataclasses.replace(
        small, num_layers=12, num_heads=12, probes=None, coords=rng.normal(size=(144, 2)),
        stats={k: rng.random((12, 12)) * (5.0 if k in ("entropy", "distance") else 1.0) for k in small.stats},
    )
    return small, big


@pytest.mark.parametrize("size,width", [("column", COLUMN_IN), ("page", PAGE_IN)])
def test_heads_views_print_legibly(heads_results, size, width, tmp_path):
    from attnviz.render.headstats import head_map_view, statistic_view

    small, big = heads_results
    style = Style.from_options(size, dpi=100, label="tiny-bert")
    # one statistic of each kind: a probability, nats, a ratio, a share of queries, tokens, the probes
    figs = {name: statistic_view(small, name, style=style) for name in ("first", "entropy", "entropy_ratio", "prev", "distance",
                                                                         "probe_accuracy")}
    figs["map"] = head_map_view(small, style=style)
    figs["big-entropy"] = statistic_view(big, "entropy", style=style)
    figs["big-prev"] = statistic_view(big, "prev", style=style)
    figs["big-map"] = head_map_view(big, style=style)
    for name, fig in figs.items():
        assert_printable(fig, width)
        assert "tiny-bert" in fig.texts[0].get_text(), name
    for name in ("first", "map"):
        assert_saved_exactly(figs[name], width, tmp_path, name, "tiny-bert")
    # every head's value printed where the cells hold it; else the three outlined heads carry their rank
    cells = [t.get_text() for t in figs["first"].axes[0].texts]
    assert len(cells) == small.num_layers * small.num_heads
    ranks = sorted(t.get_text() for t in figs["big-entropy"].axes[0].texts)
    if size == "column":
        assert ranks == ["1", "2", "3"]
    labels = [t for t in figs["big-map"].axes[0].texts]
    assert 0 < len(labels) <= 144  # crowded labels left out, never overlapping (assert_printable)


def test_heads_and_generate_cli_take_the_style_options(tiny_models, lm_models, tmp_path):
    from typer.testing import CliRunner

    from tiny import CORPUS, TEXT

    from attnviz.cli import app

    runner = CliRunner()
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(CORPUS[:4]) + "\n", encoding="utf-8")
    res = runner.invoke(app, ["heads", str(corpus), "--model", str(tiny_models("bert")), "--out", str(tmp_path / "h"),
                              "--size", "column", "--dpi", "120", "--label", "Tiny BERT", "--cmap", "cividis", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["label"] == "Tiny BERT" and doc["style"]["size"] == "column" and doc["style"]["dpi"] == 120
    assert doc["style"]["cmap"] == "cividis"
    with Image.open(tmp_path / "h" / "heads-first.png") as im:
        assert im.size[0] == round(COLUMN_IN * 120) and "Tiny BERT" in im.text["Title"]
    res = runner.invoke(app, ["generate", TEXT, "-m", str(lm_models("llama")), "-n", 3, "--step", 1,
                              "--out", str(tmp_path / "g"), "--size", "page", "--dpi", "80", "--label", "Tiny Llama", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["label"] == "Tiny Llama" and doc["style"]["size"] == "page" and doc["style"]["dpi"] == 80
    for name in ("generation-map", "sink-share", "focus-view", "head-view"):
        with Image.open(tmp_path / "g" / f"{name}.png") as im:
            assert im.size[0] == round(PAGE_IN * 80) and "Tiny Llama" in im.text["Title"], name
    bad = runner.invoke(app, ["generate", TEXT, "-m", str(lm_models("llama")), "--size", "wide", "--out", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "--size" in bad.output

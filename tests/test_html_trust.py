"""The HTML pages against hostile or unusual text (issue 21) and the one token matcher (issue 15).

- a ``<!--`` (or ``</script>``, ``&``, U+2028) anywhere in a page's text leaves valid, parseable JSON and a working page;
- the focus grid is the grid of the focus the user chose, also for typographic apostrophes;
- a right-to-left override inside a token does not reorder the text around it;
- titles use the display label; the rollout is coloured from its min to its max; weights are written as the PNGs write them;
- the generate page's "strongest earlier tokens" follow :data:`attnviz.analysis.generation.SELF_RULE`;
- the notebook display is registered by the html layer (``types.py`` imports no view).
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import browser

pytestmark = pytest.mark.slow  # the fast tier is pytest -m 'not slow' (README, Tests)

HOSTILE = "Say <!-- not a comment --> and </script><script>alert(1)</script> & \u2028 \u2029 ok."
RLO = "ab\u202ecd"
needs_browser = pytest.mark.skipif(browser.why_no_browser() is not None, reason=browser.why_no_browser() or "")


def embedded(page: str) -> dict:
    """The page's JSON payload, parsed as a strict JSON parser would (no unescaping of our own)."""
    m = re.search(r'<script type="application/json" id="attnviz-data">(.*?)</script>', page, re.S)
    assert m, "no data block (a '</script>' in the data would end it early)"
    assert "<" not in m.group(1) and "&" not in m.group(1)
    return json.loads(m.group(1))


def write(page: str, folder: Path) -> str:
    """Write ``page`` as ``folder/report.html`` (attnviz.report.write_html) and return its file:// URL."""
    from attnviz.report import write_html

    folder.mkdir(parents=True, exist_ok=True)
    return write_html(page, folder).resolve().as_uri()


def softmax_maps(L, H, Q, K, seed=0, causal=False) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(L, H, Q, K, generator=g) * 2
    if causal:
        x = x.masked_fill(torch.ones(Q, K, dtype=torch.bool).triu(1), float("-inf"))
    return torch.softmax(x, dim=-1)


def text_result(text: str, words: list[str], model_id: str = "tiny/model", seed: int = 0):
    """A TextAttention over ``[CLS] words... [SEP]`` with random (row-stochastic) full maps, 2 layers x 3 heads."""
    from attnviz.types import AttentionMaps, TextAttention, TokenInfo

    offsets, at = [(0, 0)], 0
    for w in words:
        start = text.index(w, at)
        offsets.append((start, start + len(w)))
        at = start + len(w)
    offsets.append((0, 0))
    tokens = TokenInfo(text, ("[CLS]", *words, "[SEP]"), (None, *range(len(words)), None), tuple(offsets),
                       (True, *([False] * len(words)), True))
    n = len(tokens)
    maps = AttentionMaps("self", 2, 3, n, n, full=softmax_maps(2, 3, n, n, seed))
    return TextAttention(model_id, "bert", "sdpa+attnviz", tokens, {"self": maps})


def generation_result(prompt: str = "The cat", generated=("x", "yz", "w", "v"), own_weight: float = 0.4):
    """A GenerationAttention, 2 layers x 2 heads, context ``<s> The cat``, where every step puts ``own_weight`` on
    itself (so the strongest visible key is always the token itself) and the rest on the earlier keys, in
    well-separated shares (their order survives the page's 8-bit quantisation)."""
    from attnviz.types import GenerationAttention, TokenInfo

    words = prompt.split()
    offsets, at = [(0, 0)], 0
    for w in words:
        start = prompt.index(w, at)
        offsets.append((start, start + len(w)))
        at = start + len(w)
    info = TokenInfo(prompt, ("<s>", *words), (None, *range(len(words))), tuple(offsets), (True, *([False] * len(words))))
    C, G = len(info), len(generated)
    K = C + G
    g = torch.Generator().manual_seed(1)
    attn = torch.zeros(2, 2, G, K)
    for step in range(G):
        own = C + step
        rest = torch.stack([torch.randperm(own, generator=g) + 1.0 for _ in range(4)]).view(2, 2, own)
        attn[:, :, step, :own] = rest / rest.sum(-1, keepdim=True) * (1 - own_weight)
        attn[:, :, step, own] = own_weight
    return GenerationAttention(
        "tiny/lm", "gpt2", "sdpa+attnviz", info, tuple(range(C)), tuple(range(100, 100 + G)), tuple(generated),
        (False,) * G, info.tokens, info.special, attn, (0.5,) * G, prompt + " " + " ".join(generated),
    )


# ------------------------------------------------------------------ issue 21 #4: "<!--" in the text


def test_comment_opener_in_any_text_keeps_valid_json():
    """A '<!--' in a sentence, a generate prompt or a label: the embedded data is strict JSON and says what it said."""
    from attnviz.html import generation_page, text_page
    from attnviz.html.page import render_page

    r = text_result(HOSTILE, ["Say", "not", "ok"])
    assert embedded(text_page(r))["text"] == HOSTILE
    p = embedded(text_page(r, label="my <!-- label"))
    assert p["text"] == HOSTILE and p["label"] == "my <!-- label"
    g = generation_result(prompt="The <!-- cat")
    p = embedded(generation_page(g))
    assert p["prompt"] == "The <!-- cat" and p["kinds"]["self"]["keys"][2] == "<!--"
    doc = {"label": HOSTILE, "nested": [{"t": "<!--"}, "-->"]}
    assert embedded(render_page(doc, "t")) == doc


@needs_browser
def test_comment_opener_page_renders(tmp_path):
    """In a browser: the page with '<!--' in its sentence, label and tokens draws and answers its API."""
    from attnviz.html import generation_page, text_page

    r = text_result(HOSTILE, ["Say", "<!--", "not", "ok"])
    d = browser.start()
    try:
        for name, page in (("t", text_page(r)), ("g", generation_page(generation_result(prompt="The <!-- cat")))):
            d.get(write(page, tmp_path / name))
            assert d.execute_script("return !!window.attnviz"), "the page's script did not run"
            st = d.execute_script("return attnviz.state()")
            assert st["layer"] == 1
            assert browser.console_errors(d) == []
            h1 = d.find_element("tag name", "h1").text
            if name == "t":
                assert h1 == "attnviz · tiny/model" and st["query_labels"][2] == "<!--"
                assert HOSTILE.split(" \u2028")[0] in d.find_element("tag name", "body").text
                assert not d.execute_script("return window.alertCalled || false")
            else:
                assert h1 == "attnviz · tiny/lm · generation"
                assert "The <!-- cat" in d.find_element("css selector", ".gentext").text
    finally:
        d.quit()


# ------------------------------------------------------------------ issue 15: the apostrophe bug


@pytest.fixture(scope="module")
def apostrophes():
    from attnviz import attend_text

    return attend_text("I didn't go home. You didn\u2019t go either.")


@pytest.mark.parametrize("words", [True, False])
def test_focus_grid_is_the_chosen_occurrence(apostrophes, words):
    """--token "didn't" --token-index 1 (the typographic "didn’t"): every grid on the page is that token's, as
    analysis.focus.analyse_focus computes it for the same unit, in every view."""
    from attnviz.analysis.focus import analyse_focus
    from attnviz.analysis.match import occurrence
    from attnviz.analysis.select import ViewSpec, units_for
    from attnviz.html import text_page
    from attnviz.html.payload import VARIANTS, variant_key

    r = apostrophes
    token = "didn't" if words else "didn"
    focus = analyse_focus(r, token, 1, ViewSpec(words=words))
    assert r.tokens.text[r.tokens.offsets[focus.token_indices[0]][0]:].startswith("didn\u2019t")  # the second one
    p = embedded(text_page(r, focus, ViewSpec(words=words)))
    grids = p["focus"]["grids"]
    for spec in VARIANTS:
        units = units_for(r.tokens, spec)
        unit = units.unit_of(focus.token_indices[0])
        want = analyse_focus(r, units.labels[unit], occurrence(units.labels, unit), spec, top=None)
        assert want.token_indices[0] <= focus.token_indices[0] <= want.token_indices[-1]
        got = grids[variant_key(spec)]
        assert got["text"] == want.text
        assert np.allclose(np.array(got["weights"]), want.weights.numpy(), rtol=0, atol=1e-5), spec
        assert got["targets"] == [[want.labels[int(t)] for t in row] for row in want.targets], spec


# ------------------------------------------------------------------ issue 15: the notebook display hook


def test_types_import_no_view():
    """types.py (the bottom layer) imports neither the html layer nor render, report, pipelines or cli."""
    import attnviz.types

    tree = ast.parse(Path(attnviz.types.__file__).read_text(encoding="utf-8"))
    names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    bad = [m for m in names if m.split(".")[:2] in (["attnviz", x] for x in ("html", "render", "report", "pipelines", "cli"))]
    assert bad == []


def test_display_hook_registry():
    """_repr_html_ is whatever the html layer registered: nothing -> None; attnviz.html's -> the iframe."""
    from attnviz import html as html_layer
    from attnviz.types import register_html_display

    r = text_result("ab cd", ["ab", "cd"])
    previous = register_html_display(None)
    try:
        assert previous is html_layer.repr_html  # importing attnviz.html registered it
        assert r._repr_html_() is None
        seen = []
        register_html_display(lambda obj: seen.append(obj) or "<b>x</b>")
        assert r._repr_html_() == "<b>x</b>" and seen == [r]
        html_layer.register_display()
        assert r._repr_html_().startswith("<iframe srcdoc=")
    finally:
        register_html_display(previous)


def test_repr_html_raises_what_is_not_a_missing_map(monkeypatch):
    """Only missing maps give the plain repr: a KeyError from a bug in the page is not swallowed."""
    import attnviz.html.page as page

    r = text_result("ab cd", ["ab", "cd"])

    def broken(*a, **k):
        raise KeyError("a bug")

    monkeypatch.setattr(page, "text_payload", broken)
    with pytest.raises(KeyError, match="a bug"):
        page.repr_html(r)


def test_missing_maps_explicit():
    from dataclasses import replace

    from attnviz.html import missing_maps

    r = text_result("ab cd", ["ab", "cd"])
    assert missing_maps(r) is None
    light = replace(r, attention={"self": replace(r.main, full=None, layers={0: r.main.full[0]})})
    assert "self" in missing_maps(light)


# ------------------------------------------------------------------ issue 21 (low): labels, bidi, rollout, weights


def test_title_uses_display_label():
    """Pages take the display label (the pipelines pass Style.model_label(model_id)); image: test_rollout_colour_min_to_max."""
    from attnviz.html import generation_page, text_page

    r = text_result("ab cd", ["ab", "cd"], model_id="../models/tiny-bert")
    assert "<title>attnviz · ../models/tiny-bert · text</title>" in text_page(r)  # default: as before
    page = text_page(r, label="tiny-bert")
    assert "<title>attnviz · tiny-bert · text</title>" in page and embedded(page)["label"] == "tiny-bert"
    assert embedded(page)["model"] == "../models/tiny-bert"
    page = generation_page(generation_result(), label="My LM <b>")
    assert "<title>attnviz · My LM &lt;b&gt; · generate</title>" in page and embedded(page)["label"] == "My LM <b>"


JS_POS = """
var root = arguments[0], needle = arguments[1];
var w = document.createTreeWalker(root, NodeFilter.SHOW_TEXT), n;
while ((n = w.nextNode())) {
  var i = n.data.indexOf(needle);
  if (i >= 0) { var r = document.createRange(); r.setStart(n, i); r.setEnd(n, i + needle.length);
                var b = r.getBoundingClientRect(); return [b.left, b.right]; }
}
return null;
"""


@needs_browser
def test_right_to_left_override_stays_in_its_token(tmp_path):
    """A U+202E in a token reverses that token only: the status line, heading and generated text keep their order."""
    from attnviz.html import generation_page, text_page

    r = text_result(RLO + " ef gh", [RLO, "ef", "gh"])
    d = browser.start()
    try:
        d.get(write(text_page(r), tmp_path / "t"))
        d.execute_script("attnviz.select({layer: 0, heads: [0], token: 1})")
        status = d.find_element("id", "av-status")
        label, looks = d.execute_script(JS_POS, status, "cd"), d.execute_script(JS_POS, status, "looks at")
        assert label[1] <= looks[0] + 0.5, "the text after the token was reordered"
        readout_parts = d.execute_script("return Array.from(document.querySelectorAll('#av-status bdi')).map(function (b) { return b.textContent; })")
        assert RLO in readout_parts  # the token is its own isolate
        for css in ("#av-headview .tok", ".xlab", ".ylab"):
            els = d.find_elements("css selector", css)
            assert els and all(e.value_of_css_property("unicode-bidi") == "isolate" for e in els), css

        g = generation_result(generated=("x", "\u202eyz", "w", "v"))
        d.get(write(generation_page(g), tmp_path / "g"))
        lefts = [c.rect["x"] for c in d.find_elements("css selector", ".gentext .tok")]
        assert len(lefts) == 4 and lefts == sorted(lefts), f"generated tokens out of order: {lefts}"
        assert browser.console_errors(d) == []
    finally:
        d.quit()


@needs_browser
def test_short_weight_same_rule_as_figures(tmp_path):
    """The page writes a weight as attnviz.render.common.short_weight does, for every input (ties, edges, random)."""
    from attnviz.html import text_page
    from attnviz.render.common import short_weight

    rng = np.random.default_rng(0)
    values = [0.0, -0.0, 1e-9, 0.0049999, 0.005, 0.00500001, 0.0149, 0.015, 0.125, 0.375, 0.625, 0.875, 0.994999,
              0.995, 1.0, 7.5, float("inf"), float("nan"), -0.001, -0.125, -1.125, 0.1 + 0.2, 0.045, 0.055, 0.285]
    values += [float(v) for v in rng.random(300)] + [float(v) for v in rng.random(100) * 0.02]
    values += [float(np.float32(v)) for v in rng.random(100)]
    d = browser.start()
    try:
        d.get(write(text_page(text_result("ab cd", ["ab", "cd"])), tmp_path))
        got = d.execute_script(
            "return arguments[0].map(function (v) { return attnvizKit.shortWeight(v === 'nan' ? NaN : v === 'inf' ? Infinity : v); })",
            ["nan" if v != v else ("inf" if v == float("inf") else v) for v in values])
    finally:
        d.quit()
    assert got == [short_weight(v) for v in values]


@needs_browser
def test_focus_grid_writes_weights_as_the_png(tmp_path):
    """Every focus-grid cell holds short_weight of the focus weight (a weight below 0.005 reads "<.01", not "0.000")."""
    from attnviz.analysis.focus import analyse_focus
    from attnviz.analysis.select import ViewSpec
    from attnviz.html import text_page
    from attnviz.render.common import short_weight

    words = ["one", "two", "three", "four", "five", "six"]
    r = text_result(" ".join(words), words, seed=3)
    full = r.main.full.clone()
    full[0, 0, 6] = torch.tensor([0.0, 0.002, 0.001, 0.0005, 0.0015, 0.0, 0.995, 0.0])  # "six": its link weighs 0.002
    from dataclasses import replace

    r = replace(r, attention={"self": replace(r.main, full=full)})
    focus = analyse_focus(r, "six", None, ViewSpec())
    assert 0 < float(focus.weights[0, 0]) < 0.005
    d = browser.start()
    try:
        d.get(write(text_page(r, focus, ViewSpec()), tmp_path))
        cells = d.find_elements("css selector", "#av-focus-grid td")
        assert len(cells) == 6
        for c in cells:
            l, h = int(c.get_attribute("data-layer")), int(c.get_attribute("data-head"))
            target, weight = c.text.split("\n")
            assert weight == short_weight(float(focus.weights[l, h])), (l, h)
            assert target == focus.labels[int(focus.targets[l, h])]
        assert d.find_element("css selector", '#av-focus-grid td[data-layer="0"][data-head="0"]').text.split("\n")[1] == "<.01"
    finally:
        d.quit()


@needs_browser
def test_rollout_colour_min_to_max(tmp_path):
    """The rollout runs its colour scale from its min to its max (as the PNG): the weakest patch has the colour map's
    first colour, the strongest its last; the attention panel still starts at 0."""
    from attnviz import attend_image
    from attnviz.html import image_page
    from attnviz.analysis.patches import rollout_map
    from vision_tiny import make_photo, make_vision_model

    r = attend_image(make_photo(tmp_path / "p.png", (48, 40)), str(make_vision_model(tmp_path, "deit-distilled")))
    roll = rollout_map(r)
    page = image_page(r, roll)
    d = browser.start()
    try:
        d.get(write(page, tmp_path / "o"))
        st = d.execute_script("return attnviz.state()")
        lo, hi = float(roll.min()), float(roll.max())
        assert lo > 0 and abs(st["rollout_scale"][0] - lo) < 1e-5 * hi and abs(st["rollout_scale"][1] - hi) < 1e-5 * hi
        cols = r.grid[1]
        pix = d.execute_script(
            "var c = document.querySelector('#av-rollout canvas').getContext('2d'), n = arguments[2];"
            "return [arguments[0], arguments[1]].map(function (i) { return Array.from(c.getImageData(i % n, Math.floor(i / n), 1, 1).data); });",
            int(roll.argmin()), int(roll.argmax()), cols)
        assert pix[0][:3] == [0, 0, 4] and pix[1][:3] == [252, 255, 164]
        assert "min to max" in d.find_element("id", "av-rollout-cap").text
        assert browser.console_errors(d) == []
        d.get(write(image_page(r, roll, label="tiny-deit"), tmp_path / "l"))
        assert d.find_element("tag name", "h1").text == "attnviz · tiny-deit"
    finally:
        d.quit()
    assert "<title>attnviz · tiny-deit · image</title>" in image_page(r, roll, label="tiny-deit")


# ------------------------------------------------------------------ issue 21 (low): generate's "strongest earlier tokens"


@needs_browser
def test_generate_top_table_excludes_the_token_itself(tmp_path):
    """Each step attends most to itself here: the table lists only earlier, non-special keys after the first,
    as analysis.generation.eligible allows, and states SELF_RULE."""
    from attnviz.analysis.generation import SELF_RULE, eligible
    from attnviz.html import generation_page

    g = generation_result()
    ok = eligible(g)
    d = browser.start()
    try:
        d.get(write(generation_page(g, layer=0, head=1), tmp_path))
        for step in range(g.num_generated):
            d.execute_script("attnviz.select({step: %d})" % step)
            rows = d.find_elements("css selector", "table.top tr")
            keys = [int(tr.find_elements("tag name", "td")[0].text) for tr in rows]
            want = [int(k) for k in torch.argsort(-torch.where(ok[step], g.attentions[0, 1, step], -1.0))[: int(ok[step].sum())]]
            assert keys == want[:10], step
            assert g.context_length + step not in keys and 0 not in keys
            top = d.execute_script("return attnviz.top()")
            assert [t["to"] for t in top] == keys
            assert SELF_RULE in d.find_element("id", "top-rule").text
        assert browser.console_errors(d) == []
    finally:
        d.quit()


def test_first_word_focus_fallback_on_the_page():
    """The first word has no earlier token: the focus falls back to later ones (issue 15); the page carries the
    same grid and says why, as the figure, terminal and JSON do."""
    from attnviz.analysis.focus import analyse_focus
    from attnviz.analysis.select import ViewSpec
    from attnviz.html import text_page

    r = text_result("Cats sleep most of the day", ["Cats", "sleep", "most", "of", "the", "day"])
    focus = analyse_focus(r, "Cats", None, ViewSpec())
    assert focus.fallback
    p = embedded(text_page(r, focus, ViewSpec()))
    assert p["focus"]["fallback"] == focus.fallback
    grid = p["focus"]["grids"]["00"]
    assert np.array_equal(np.array(grid["weights"], dtype=np.float32), focus.weights.numpy())
    assert grid["targets"] == [[focus.labels[int(t)] for t in row] for row in focus.targets]

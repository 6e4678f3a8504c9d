"""The HTML report's data (no browser): every embedded number equals the analyses' within the stated quantisation."""

from __future__ import annotations

import base64
import json
import re

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from attnviz.analysis.select import ViewSpec, prepare
from attnviz.cli import app
from attnviz.html.payload import TextCollector, dequantise, text_payload, image_payload, VARIANTS, variant_key
from attnviz.html.page import render_page

runner = CliRunner()
SENTENCE = "The animal didn't cross the street because it was too tired."


def arr(b64: str, dtype) -> np.ndarray:
    return np.frombuffer(base64.b64decode(b64), dtype=dtype)


def payload_of(page: str) -> dict:
    m = re.search(r'<script type="application/json" id="attnviz-data">(.*?)</script>', page, re.S)
    return json.loads(m.group(1).replace("<\\/", "</"))


@pytest.fixture(scope="module")
def readme():
    from attnviz import attend_text
    from attnviz.analysis.focus import analyse_focus

    r = attend_text(SENTENCE)
    return r, analyse_focus(r, "it", None, ViewSpec())


def resolve(variants: dict, key: str) -> dict:
    v = variants[key]
    while isinstance(v, str):
        v = variants[v]
    return v


def test_readme_page_small_offline_and_exact(readme):
    from attnviz.html import text_page

    r, focus = readme
    page = text_page(r, focus, ViewSpec())
    assert len(page.encode()) < 1_000_000
    assert "default-src 'none'" in page
    assert not re.search(r"""(src|href)\s*=\s*["'](https?:)?//""", page), "no remote resource"
    p = payload_of(page)
    assert p["mode"] == "full" and p["initial"]["layer"] == 3 and p["initial"]["heads"] == [1]
    L, H, N = 6, 12, len(r.tokens)
    for spec in VARIANTS:
        v = resolve(p["kinds"]["self"]["variants"], variant_key(spec))
        want = prepare(r.main.full, r.tokens, r.tokens, spec).attn.numpy()  # what --words/--hide-special compute
        q, peak = arr(v["q"], np.uint8), arr(v["peak"], np.float32)
        Q, K = len(v["query"]["labels"]), len(v["key"]["labels"])
        assert want.shape == (L, H, Q, K)
        got = dequantise(q.reshape(L, H, Q, K), peak.reshape(L, H, Q))
        bound = want.max(axis=-1, keepdims=True) / 510 + 1e-6
        assert (np.abs(got - want) <= bound).all(), spec
    # the strongest link of "it" in layer 3 head 1 as embedded
    v = resolve(p["kinds"]["self"]["variants"], "00")
    q = arr(v["q"], np.uint8).reshape(L, H, N, N)
    peak = arr(v["peak"], np.float32).reshape(L, H, N)
    it = r.tokens.tokens.index("it")
    row = q[3, 1, it].astype(np.float32) / 255 * peak[3, 1, it]
    assert v["key"]["labels"][int(row.argmax())] == "animal"
    assert abs(row.max() - 0.677) < 0.0025
    grid = p["focus"]["grids"]["00"]
    assert grid["targets"][3][1] == "animal" and abs(grid["weights"][3][1] - focus.weights[3, 1].item()) < 1e-5


def test_words_variant_when_words_split(readme):
    from attnviz import attend_text

    r, focus = readme
    variants = text_payload(r, focus)["kinds"]["self"]["variants"]
    assert resolve(variants, "10")["query"]["labels"][3] == "didn't"  # reader words: one word, as in --words
    assert resolve(variants, "01")["query"]["labels"][0] == "The"  # [CLS] hidden
    r = attend_text("Tokenization is unbelievably subtle.")
    variants = text_payload(r)["kinds"]["self"]["variants"]
    words = resolve(variants, "10")
    assert "Tokenization" in words["query"]["labels"] and len(words["query"]["labels"]) < len(r.tokens)


def test_topk_mode_keeps_strongest_links_and_focus_rows(readme):
    """Beyond the full-map token count: top-k per row, exact indices, plus the focus token's full rows."""
    r, focus = readme
    col = TextCollector(r.tokens, None, focus.token_indices, "self", full_tokens=8, k=3)
    for l in range(r.num_layers):
        col("self", l, r.main.full[l])
    p = text_payload(r, focus, collector=col)
    assert p["mode"] == "topk" and p["top_k"] == 3
    v = resolve(p["kinds"]["self"]["variants"], "00")
    L, H, N = 6, 12, len(r.tokens)
    idx = arr(v["idx"], np.uint16).reshape(L, H, N, 3)
    vals, want_idx = r.main.full.topk(3, dim=-1)
    assert (idx == want_idx.numpy()).all()
    got = dequantise(arr(v["q"], np.uint8).reshape(L, H, N, 3), arr(v["peak"], np.float32).reshape(L, H, N))
    assert np.abs(got - vals.numpy()).max() <= 1 / 510 + 1e-6
    fr = v["focus_rows"]
    it = r.tokens.tokens.index("it")
    assert fr["unit"] == it
    rows = dequantise(arr(fr["q"], np.uint8).reshape(L, H, N), arr(fr["peak"], np.float32).reshape(L, H))
    assert np.abs(rows - r.main.full[:, :, it].numpy()).max() <= 1 / 510 + 1e-6
    # the words view's focus rows: the word's mean row, merged keys, as prepare() computes
    w = resolve(p["kinds"]["self"]["variants"], "10")
    assert "focus_rows" in w


def test_encoder_decoder_kinds(tiny_models):
    from attnviz import attend_text
    from attnviz.analysis.focus import analyse_focus

    r = attend_text("the cat sat on the mat", str(tiny_models("t5")), target="le chat")
    p = text_payload(r)
    assert p["kind_order"] == ["encoder", "decoder", "cross"]
    cross = resolve(p["kinds"]["cross"]["variants"], "00")
    assert cross["query"]["labels"] == list(r.target_tokens.tokens)
    assert cross["key"]["labels"] == list(r.tokens.tokens)


def test_image_payload_matches_capture(tmp_path):
    from attnviz import attend_image
    from vision_tiny import make_photo, make_vision_model

    folder = make_vision_model(tmp_path, "deit-distilled")
    photo = make_photo(tmp_path / "p.png", (48, 40))
    r = attend_image(photo, str(folder))
    p = image_payload(r, layer=-1)
    L, H, T = r.num_layers, r.num_heads, r.attention.num_keys
    assert p["layers"] == list(range(L)) and p["prefix_tokens"] == 2 and p["photo"].startswith("data:image/jpeg;base64,")
    got = dequantise(arr(p["q"], np.uint8).reshape(L, H, T, T), arr(p["peak"], np.float32).reshape(L, H, T))
    want = r.attention.full.numpy()
    assert (np.abs(got - want) <= want.max(axis=-1, keepdims=True) / 510 + 1e-6).all()
    assert len(p["rollout"]) == r.grid[0] and len(p["rollout"][0]) == r.grid[1]
    page = render_page(p, "x")
    assert "default-src 'none'" in page


def test_cli_writes_html_with_other_formats(tmp_path):
    out = tmp_path / "o"
    res = runner.invoke(app, ["text", SENTENCE, "--token", "it", "--format", "png,html", "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    names = sorted(p.split("/")[-1] for p in doc["files"])
    assert "report.html" in names and "head-view.png" in names
    p = payload_of((out / "report.html").read_text())
    assert p["focus"]["text"] == "it" and p["initial"]["layer"] == 3


def test_cli_bad_format_one_line(tmp_path):
    res = runner.invoke(app, ["text", "hello", "--format", "png,gif", "--out", str(tmp_path)])
    assert res.exit_code != 0
    assert res.stderr.strip().startswith("attnviz: error: --format must be one or more of png, svg, pdf, html")


def test_repr_html_is_an_iframe_without_cdn(readme):
    r, _ = readme
    html = r._repr_html_()
    assert html.startswith("<iframe srcdoc=") and "&lt;script&gt;" not in html[:50]
    # no address of anything outside the page (base64 data may contain any letters, so look for URLs)
    assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}/", html.replace("http://www.w3.org/2000/svg", ""), re.I)


def test_cli_long_input_path_streams_layers(tmp_path, monkeypatch, tiny_models):
    """Beyond FULL_BUDGET the CLI keeps no full maps: the page's data comes from the capture's on_layer callback."""
    import attnviz.pipelines.text as cli_text
    import attnviz.html.payload as payload

    monkeypatch.setattr(cli_text, "FULL_BUDGET", 1)
    monkeypatch.setattr(payload, "FULL_TOKENS", 4)
    folder = tiny_models("gpt2")
    out = tmp_path / "o"
    res = runner.invoke(app, ["text", "the cat sat on the mat because it was tired", "--model", str(folder), "--token", "it",
                              "--format", "html", "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert [p.split("/")[-1] for p in doc["files"]] == ["report.html"]
    p = payload_of((out / "report.html").read_text())
    assert p["mode"] == "topk" and p["full_tokens"] == 4
    v = resolve(p["kinds"]["self"]["variants"], "00")
    assert "idx" in v and v["focus_rows"]["unit"] == doc["focus"]["index"]


def test_repr_html_none_without_full_maps(readme, monkeypatch):
    """None (the plain repr) because the maps are missing, decided before any page is built: a page builder that
    fails is never reached for the light result, and is reached (its error raised, not swallowed) for the full one."""
    from dataclasses import replace

    import attnviz.html.page as page

    r, _ = readme
    light = replace(r, attention={"self": replace(r.main, full=None, layers={0: r.main.full[0]})})

    def must_not_build(*args, **kwargs):
        raise AssertionError("a page was built")

    monkeypatch.setattr(page, "notebook_html", must_not_build)
    assert light._repr_html_() is None
    with pytest.raises(AssertionError, match="a page was built"):
        r._repr_html_()


def test_prepare_sparse_equals_prepare():
    """The O(N^2) merge used for long inputs equals the analysis' prepare() (what --words/--hide-special draw)."""
    from attnviz import attend_text
    from attnviz.html.payload import prepare_sparse

    r = attend_text("Tokenization is unbelievably subtle, isn't it?")
    for spec in VARIANTS:
        want = prepare(r.main.full, r.tokens, r.tokens, spec).attn
        got = prepare_sparse(r.main.full, r.tokens, r.tokens, spec)
        assert got.shape == want.shape and torch.allclose(got, want, atol=1e-6), spec


@pytest.mark.slow
def test_cli_focus_grid_second_typographic_occurrence(tmp_path):
    """attnviz text "I didn't go home. You didn’t go either." --words --token "didn't" --token-index 1 --format html:
    the page's focus grid is that of the second, typographic "didn’t", equal to analyse_focus on the same input."""
    from attnviz import attend_text
    from attnviz.analysis.focus import analyse_focus

    sentence = "I didn't go home. You didn\u2019t go either."
    out = tmp_path / "o"
    res = runner.invoke(app, ["text", sentence, "--words", "--token", "didn't", "--token-index", "1", "--format", "html",
                              "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    p = payload_of((out / "report.html").read_text(encoding="utf-8"))
    want = analyse_focus(attend_text(sentence), "didn't", 1, ViewSpec(words=True))
    assert p["focus"]["token_indices"] == list(want.token_indices)
    grid = p["focus"]["grids"]["10"]
    assert grid["text"] == "didn\u2019t"
    assert np.allclose(np.array(grid["weights"]), want.weights.numpy(), rtol=0, atol=1e-5)
    assert grid["targets"] == [[want.labels[int(t)] for t in row] for row in want.targets]

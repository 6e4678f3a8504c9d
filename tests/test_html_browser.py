"""The HTML report in a real browser (headless Chromium via Selenium): offline, no errors, and it responds.

Every test opens the page from file:// and fails on any request other than the
page itself (DevTools network log) and on any console error.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

import browser
from vision_tiny import DEIT, SAMPLES

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(browser.why_no_browser() is not None, reason=browser.why_no_browser() or "")]

SENTENCE = "The animal didn't cross the street because it was too tired."
QUANT = 1 / 510  # the stated bound: a weight is read back within max(row)/510


@pytest.fixture(scope="module")
def driver():
    d = browser.start()
    yield d
    d.quit()


def open_page(driver, path):
    driver.get("about:blank")
    browser.requests(driver), driver.get_log("browser")  # drop what came before
    url = path.resolve().as_uri()
    t0 = time.perf_counter()
    driver.get(url)
    assert driver.execute_script("return !!window.attnviz")
    seconds = time.perf_counter() - t0
    assert browser.requests(driver) == [url], "the page must request nothing but itself"
    assert browser.console_errors(driver) == []
    return seconds


def seen(driver, element):
    """Scroll ``element`` to the middle of the window (the mouse can only reach what is on screen)."""
    driver.execute_script("arguments[0].scrollIntoView({block: 'center', inline: 'center'})", element)
    return element


def check_clean(driver):
    assert browser.requests(driver) == [], "no request after interaction"
    assert browser.console_errors(driver) == []


@pytest.fixture(scope="module")
def readme_page(tmp_path_factory):
    from attnviz import attend_text
    from attnviz.analysis.select import ViewSpec
    from attnviz.analysis.focus import analyse_focus
    from attnviz.html import text_page
    from attnviz.report import write_html

    r = attend_text(SENTENCE)
    spec = ViewSpec()
    focus = analyse_focus(r, "it", None, spec)
    return write_html(text_page(r, focus, spec), tmp_path_factory.mktemp("html")), r


def test_text_report_head_view(driver, readme_page):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    path, r = readme_page
    seconds = open_page(driver, path)
    assert seconds < 5
    it, animal = r.tokens.tokens.index("it"), r.tokens.tokens.index("animal")
    st = driver.execute_script("return attnviz.state()")
    assert st["pinned"] == it and st["layer"] == 3 and st["heads"] == [1]  # the focus token's top head, pre-selected
    st = driver.execute_script("return attnviz.select({kind: 'self', layer: 3, head: 1, token: %d})" % it)
    assert (st["layer"], st["head"], st["token"]) == (3, 1, it)
    links = driver.execute_script("return attnviz.links()")
    assert {l["from"] for l in links} == {it}
    best = max(links, key=lambda l: l["weight"])
    exact = r.main.full[3, 1, it].numpy()
    assert best["to"] == animal
    assert abs(best["weight"] - 0.677) < 0.0005 + QUANT and abs(best["weight"] - exact[animal]) <= exact.max() * QUANT + 1e-6
    assert "'it' looks at: 'animal' 0.677" in driver.find_element(By.ID, "av-status").text

    # the real mouse: hover another query token -> its links; leave -> back to the pinned token
    tired = seen(driver, driver.find_element(By.CSS_SELECTOR, '#av-headview .col.q .tok[data-index="%d"]' % r.tokens.tokens.index("tired")))
    ActionChains(driver).move_to_element(tired).perform()
    hovered = driver.execute_script("return attnviz.links()")
    assert hovered != links and {l["from"] for l in hovered} == {r.tokens.tokens.index("tired")}
    assert driver.execute_script("return attnviz.state().token") == r.tokens.tokens.index("tired")
    # hover a key token: who looks at it
    key = driver.find_element(By.CSS_SELECTOR, '#av-headview .col.k .tok[data-index="%d"]' % animal)
    ActionChains(driver).move_to_element(key).perform()
    to_animal = driver.execute_script("return attnviz.links()")
    assert to_animal and {l["to"] for l in to_animal} == {animal}
    # click pins
    ActionChains(driver).move_to_element(tired).click().perform()
    ActionChains(driver).move_to_element(driver.find_element(By.TAG_NAME, "h1")).perform()
    assert driver.execute_script("return attnviz.state().pinned") == r.tokens.tokens.index("tired")
    # several heads: links of both, each tagged with its head
    driver.execute_script("attnviz.select({heads: [1, 7], token: %d})" % it)
    assert {l["head"] for l in driver.execute_script("return attnviz.links()")} == {1, 7}
    check_clean(driver)


def test_text_report_views_and_toggles(driver, readme_page):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    from attnviz.analysis.select import ViewSpec, prepare

    path, r = readme_page
    open_page(driver, path)
    # model view: click a thumbnail -> that layer and head in the head view
    thumb = seen(driver, driver.find_element(By.CSS_SELECTOR, '#av-modelview canvas[data-layer="5"][data-head="11"]'))
    ActionChains(driver).move_to_element(thumb).click().perform()
    st = driver.execute_script("return attnviz.state()")
    assert (st["layer"], st["heads"]) == (5, [11])
    # focus grid: click a cell
    cell = seen(driver, driver.find_element(By.CSS_SELECTOR, '#av-focus-grid td[data-layer="3"][data-head="1"]'))
    assert cell.text.split() == ["animal", ".68"]  # as the PNG focus grid writes it (render.common.short_weight)
    assert cell.get_attribute("title").endswith("'animal' 0.677")
    ActionChains(driver).move_to_element(cell).click().perform()
    st = driver.execute_script("return attnviz.state()")
    assert (st["layer"], st["heads"], st["pinned"]) == (3, [1], r.tokens.tokens.index("it"))
    # matrix: the value under the pointer
    canvas = seen(driver, driver.find_element(By.CSS_SELECTOR, "#av-matrix canvas"))
    n = len(r.tokens)
    cell_px = canvas.size["width"] / n
    it, animal = r.tokens.tokens.index("it"), r.tokens.tokens.index("animal")
    ActionChains(driver).move_to_element_with_offset(
        canvas, int((animal + 0.5) * cell_px - canvas.size["width"] / 2), int((it + 0.5) * cell_px - canvas.size["height"] / 2)
    ).perform()
    assert driver.find_element(By.ID, "av-readout").text == "query %d 'it' → key %d 'animal': 0.677" % (it, animal)
    # hide special tokens: the same numbers as --hide-special (rows renormalised), stated on screen
    seen(driver, driver.find_element(By.ID, "av-hide")).click()
    st = driver.execute_script("return attnviz.state()")
    assert st["hide_special"] and "[CLS]" not in st["query_labels"]
    assert "special tokens hidden, rows renormalised" in driver.find_element(By.ID, "av-view-note").text
    want = prepare(r.main.full[3, 1], r.tokens, r.tokens, ViewSpec(hide_special=True)).attn.numpy()
    u = st["query_labels"].index("it")
    assert st["pinned"] == u
    got = np.zeros(want.shape[1])
    for l in driver.execute_script("return attnviz.links()"):
        got[l["to"]] = l["weight"]
    assert np.abs(got - want[u]).max() <= want[u].max() * QUANT + 1e-6
    check_clean(driver)


def test_page_catches_a_request(driver, readme_page):
    """The network check can fail: a script that tries to load a remote image is seen (and blocked)."""
    path, _ = readme_page
    open_page(driver, path)
    driver.execute_script("var i = new Image(); i.src = 'http://example.com/x.png'; document.body.appendChild(i);")
    time.sleep(0.3)
    errors = browser.console_errors(driver)
    assert any("Content Security Policy" in e or "example.com" in e for e in errors)


def test_encoder_decoder_report(driver, tiny_models, tmp_path):
    from attnviz import attend_text
    from attnviz.html import text_page
    from attnviz.report import write_html

    r = attend_text("the cat sat on the mat", str(tiny_models("t5")), target="le chat")
    path = write_html(text_page(r), tmp_path)
    open_page(driver, path)
    st = driver.execute_script("return attnviz.select({kind: 'cross', layer: 0, head: 0, token: 0})")
    assert st["kind"] == "cross" and st["query_labels"] == list(r.target_tokens.tokens) and st["key_labels"] == list(r.tokens.tokens)
    links = driver.execute_script("return attnviz.links()")
    exact = r.attention["cross"].full[0, 0, 0].numpy()
    got = np.zeros(len(exact))
    for l in links:
        got[l["to"]] = l["weight"]
    assert np.abs(got - exact).max() <= exact.max() * QUANT + 1e-6
    check_clean(driver)


@pytest.mark.skipif(not DEIT.exists(), reason=f"no {DEIT}")
def test_image_report(driver, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    from attnviz import attend_image
    from attnviz.html import image_page
    from attnviz.analysis.patches import rollout_map
    from attnviz.report import write_html

    from attnviz.analysis.sinks import SinkPatch

    r = attend_image(SAMPLES / "coffee.png", str(DEIT))
    sink = SinkPatch(0, 13, 0.2, "rollout")  # deit-tiny has none: one given, to drive the toggles
    path = write_html(image_page(r, rollout_map(r), sinks=[sink]), tmp_path)
    open_page(driver, path)
    st = driver.execute_script("return attnviz.state()")
    assert st["layer"] == r.num_layers - 1 and st["head"] is None and st["token"] is None
    cls_links = driver.execute_script("return attnviz.links()")
    # hover a patch with the real mouse: its own attention, head mean
    canvas = seen(driver, driver.find_element(By.CSS_SELECTOR, "#av-attn canvas"))
    rows, cols = r.grid
    dx, dy = canvas.size["width"] / cols / 2, canvas.size["height"] / rows / 2
    ActionChains(driver).move_to_element_with_offset(canvas, int(dx), int(dy)).perform()  # patch (7, 7), below right of the centre
    st = driver.execute_script("return attnviz.state()")
    assert st["token"] == 1 + (rows // 2) * cols + cols // 2
    links = driver.execute_script("return attnviz.links()")
    assert links != cls_links and {l["from"] for l in links} == {st["token"]}
    exact = r.attention.full[-1, :, st["token"]].numpy()  # [H, T]
    got = np.zeros(exact.shape[1])
    for l in links:
        got[l["to"]] = l["weight"]
    assert np.abs(got - exact.mean(0)).max() <= exact.max() * QUANT + 1e-6
    # click pins; one head; layer 0
    ActionChains(driver).click().perform()
    st = driver.execute_script("return attnviz.select({layer: 0, head: 2})")
    assert (st["layer"], st["head"], st["pinned"]) == (0, 2, 1 + (rows // 2) * cols + cols // 2)
    assert "layer 0, head 2" in driver.find_element(By.ID, "av-attn-cap").text
    assert "head fusion mean" in driver.find_element(By.ID, "av-rollout-cap").text
    assert "espresso" in driver.find_element(By.ID, "av-preds").text
    # sink patches: outlined, then left out of the colour scale with the real mouse on the checkbox
    assert "(row 0, col 13) 20% of the rollout" in driver.find_element(By.ID, "av-rollout-cap").text
    seen(driver, driver.find_element(By.ID, "av-leave-out")).click()
    assert driver.execute_script("return attnviz.state().leave_out_sinks") is True
    assert "sink patches left out" in driver.find_element(By.ID, "av-rollout-cap").text
    grey = driver.execute_script(
        "var c = document.querySelector('#av-rollout canvas'); return Array.from(c.getContext('2d').getImageData(13, 0, 1, 1).data)")
    assert grey[:3] == [128, 128, 128]
    check_clean(driver)


def test_notebook_iframe(driver, readme_page, tmp_path):
    """``_repr_html_``: the same page inside an iframe srcdoc works offline too."""
    _, r = readme_page
    host = tmp_path / "notebook.html"
    host.write_text("<!DOCTYPE html><html><body>" + r._repr_html_() + "</body></html>", encoding="utf-8")
    open_page_without_api = host.resolve().as_uri()
    driver.get("about:blank")
    browser.requests(driver), driver.get_log("browser")
    driver.get(open_page_without_api)
    frame = driver.find_element("css selector", "iframe")
    driver.switch_to.frame(frame)
    try:
        st = driver.execute_script("return attnviz.select({layer: 3, head: 1, token: %d})" % r.tokens.tokens.index("it"))
        assert st["layer"] == 3
        best = max(driver.execute_script("return attnviz.links()"), key=lambda l: l["weight"])
        assert r.tokens.tokens[best["to"]] == "animal"
    finally:
        driver.switch_to.default_content()
    assert [u for u in browser.requests(driver) if u != open_page_without_api and u != "about:srcdoc"] == []
    assert browser.console_errors(driver) == []


def test_topk_report(driver, readme_page, tmp_path):
    """Beyond the full-map token count the page draws the strongest k links per row and the focus token's full rows."""
    from attnviz.analysis.select import ViewSpec
    from attnviz.analysis.focus import analyse_focus
    from attnviz.html import text_page
    from attnviz.html.payload import TextCollector
    from attnviz.report import write_html

    _, r = readme_page
    focus = analyse_focus(r, "it", None, ViewSpec())
    col = TextCollector(r.tokens, None, focus.token_indices, "self", full_tokens=8, k=3)
    for l in range(r.num_layers):
        col("self", l, r.main.full[l])
    path = write_html(text_page(r, focus, ViewSpec(), collector=col), tmp_path)
    open_page(driver, path)
    assert "strongest 3 links" in driver.find_element("id", "av-data-note").text
    it, tired = r.tokens.tokens.index("it"), r.tokens.tokens.index("tired")
    driver.execute_script("attnviz.select({layer: 3, head: 1, token: %d})" % it)
    full = driver.execute_script("return attnviz.links()")
    assert len(full) > 3  # the focus token's full row
    assert r.tokens.tokens[max(full, key=lambda l: l["weight"])["to"]] == "animal"
    driver.execute_script("attnviz.select({token: %d})" % tired)
    top = driver.execute_script("return attnviz.links()")
    want = r.main.full[3, 1, tired].topk(3)
    assert sorted(l["to"] for l in top) == sorted(want.indices.tolist())
    check_clean(driver)


@pytest.mark.parametrize("kind", ["longformer", "bigbird"])
def test_long_document_report(driver, tmp_path, monkeypatch, kind):
    """The long-document page: offline, no errors; a layer's data is decoded only when shown; clicking a token shows
    its row: the k strongest keys with exactly the weights of the sparse capture; the wheel zooms along the document
    and a drag pans it."""
    import torch
    from selenium.webdriver.common.action_chains import ActionChains
    from typer.testing import CliRunner

    from attnviz.cli import app
    from test_longdoc import TEXT, _bigbird, _model

    model, tok = (_model if kind == "longformer" else _bigbird)(tmp_path / "m")
    r = CliRunner().invoke(app, ["text", TEXT, "-m", str(tmp_path / "m"), "--window-at", "30", "--token", "it",
                                 "--token-index", "3", "-o", str(tmp_path / "o"), "--format", "html",
                                 "--save-attn", str(tmp_path / "a.safetensors")])
    assert r.exit_code == 0, r.output
    open_page(driver, tmp_path / "o" / "report.html")
    state = driver.execute_script("return window.attnviz.state()")
    assert state["decoded"] == [1] and state["layer"] == 1  # only the shown layer (the last) was decoded
    import attnviz

    dense = attnviz.load_attention(tmp_path / "a.safetensors").dense()  # [L, H, N, N]
    spans = driver.find_elements("css selector", ".ld-doc span.t")
    assert len(spans) == dense.shape[-1]
    seen(driver, spans[40]).click()
    driver.find_elements("css selector", ".ld-controls button")[0].click()
    state = driver.execute_script("return window.attnviz.state()")
    assert state["token"] == 40 and state["layer"] == 0 and state["decoded"] == [1, 0]
    shown = driver.execute_script("return window.attnviz.row()")
    row = dense[0, :, 40].mean(0)
    expected = torch.topk(row, len(shown)).indices.tolist()
    assert [k["index"] for k in shown] == expected
    assert np.allclose([k["weight"] for k in shown], row[expected].numpy(), atol=1e-7)
    assert len(driver.find_elements("css selector", "table.ld-top tr")) == len(shown) + 1
    canvas = driver.find_elements("css selector", "canvas.ld-canvas")[1]  # the profile: zoom and pan along the document
    driver.execute_script("arguments[0].dispatchEvent(new WheelEvent('wheel', {deltaY: -100, clientX: "
                          "arguments[0].getBoundingClientRect().left + 300, bubbles: true, cancelable: true}))", canvas)
    zoomed = driver.execute_script("return window.attnviz.state()")
    assert zoomed["x1"] - zoomed["x0"] < dense.shape[-1]
    ActionChains(driver).move_to_element(seen(driver, canvas)).click_and_hold().move_by_offset(-80, 0).release().perform()
    panned = driver.execute_script("return window.attnviz.state()")
    assert panned["x0"] > zoomed["x0"] and abs((panned["x1"] - panned["x0"]) - (zoomed["x1"] - zoomed["x0"])) < 1e-6
    check_clean(driver)


def test_long_document_report_zoomed_overview_matches_the_profile(driver, tmp_path, monkeypatch):
    """More than 2,048 tokens: the overview averages groups of queries (pool > 1); zoomed in, it still shows the
    token range the profile, the red line and clicks use (within one group)."""
    import json

    import torch
    import transformers as tf
    from typer.testing import CliRunner

    from attnviz.cli import app
    from test_longdoc import TEXT
    from tiny import bpe_tokenizer

    tok = bpe_tokenizer()
    torch.manual_seed(0)
    model = tf.LongformerModel(tf.LongformerConfig(
        vocab_size=len(tok), hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=20,
        attention_window=8, max_position_embeddings=2600, pad_token_id=tok.pad_token_id, initializer_range=0.5)).eval()
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    r = CliRunner().invoke(app, ["text", " ".join([TEXT] * 16), "-m", str(tmp_path / "m"), "--max-length", "2400",
                                 "-o", str(tmp_path / "o"), "--format", "html", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout[r.stdout.index("{"):])["num_tokens"] > 2048
    open_page(driver, tmp_path / "o" / "report.html")
    canvas = driver.find_elements("css selector", "canvas.ld-canvas")[0]
    for _ in range(12):
        driver.execute_script("arguments[0].dispatchEvent(new WheelEvent('wheel', {deltaY: -100, clientX: "
                              "arguments[0].getBoundingClientRect().left + 500, bubbles: true, cancelable: true}))", canvas)
    state = driver.execute_script("return window.attnviz.state()")
    pool = driver.execute_script("return JSON.parse(document.getElementById('attnviz-data').textContent).pool")
    assert pool == 2 and state["x1"] - state["x0"] < 200
    lo, hi = state["overview"]
    assert lo <= state["x0"] < lo + pool and hi - pool <= state["x1"] <= hi
    check_clean(driver)

"""The HTML report of a vision-language model's answer (attnviz.html.vlm): the embedded weights are the analysis'
numbers within the stated 8-bit bound, the page is self-contained, and in a real browser (headless Chromium) a
click on an answer token draws that step's weights over the photo, with the colour and opacity the weights give."""

from __future__ import annotations

import base64
import json
import re

import numpy as np
import pytest

import browser
from vlm_tiny import make_vlm

QUANT = 1 / 510  # the stated bound: a weight is read back within max(row)/510
PROMPT = "What is on the table?"
#: LLaVA-1.5 (one view) and LLaVA-OneVision (a global view and high-resolution tiles)
KINDS = ("llava", "llava_onevision")


def _photo():
    """A 320 x 200 gradient with a dark square (not square, so the processors resize and crop it)."""
    from PIL import Image

    x = np.linspace(0, 255, 320)[None, :]
    y = np.linspace(0, 255, 200)[:, None]
    rgb = np.stack([np.broadcast_to(x, (200, 320)), np.broadcast_to(y, (200, 320)), np.full((200, 320), 90.0)], -1)
    rgb[60:120, 100:180] = 20
    return Image.fromarray(rgb.astype(np.uint8))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """kind -> (VLMGeneration, Shares), or the reason the kind cannot run here."""
    import attnviz.vlm as V
    from attnviz.analysis.vlm import shares
    from attnviz.errors import ModelError

    root = tmp_path_factory.mktemp("vlm-html")
    out = {}
    for kind in KINDS:
        try:
            vgen = V.attend_vlm_generation(PROMPT, _photo(), V.load_vlm(str(make_vlm(root, kind))), chat=True,
                                           max_new_tokens=5)
        except (ModelError, ImportError, NotImplementedError) as exc:  # a layout not supported yet
            out[kind] = f"{kind}: {exc}"
            continue
        out[kind] = (vgen, shares(vgen))
    return out


def _run(runs, kind):
    r = runs[kind]
    if isinstance(r, str):
        pytest.skip(r)
    if kind != "llava":

        if len(r[0].layout.views()) < 2:
            pytest.skip(f"{kind}: the layout has a single view")
    return r


def _decode(payload):
    T, L, n = payload["num_generated"], payload["num_layers"], payload["num_image_tokens"]
    q = np.frombuffer(base64.b64decode(payload["maps"]), dtype=np.uint8)
    peaks = np.frombuffer(base64.b64decode(payload["peaks"]), dtype="<f4")
    assert q.size == (L + 1) * T * n and peaks.size == (L + 1) * T  # the size the docstring states
    return q.reshape(T, L + 1, n), peaks.reshape(T, L + 1)


@pytest.mark.parametrize("kind", KINDS)
def test_payload_equals_analysis(runs, kind):
    from attnviz.analysis import vlm as A
    from attnviz.html.payload import dequantise
    from attnviz.html.vlm import TOP_OTHER, vlm_payload

    vgen, s = _run(runs, kind)
    g, layout = vgen.generation, vgen.layout
    p = vlm_payload(vgen, s, label="tiny")
    json.dumps(p)  # plain JSON
    T, L, n = g.num_generated, g.num_layers, vgen.num_image_tokens
    assert (p["num_generated"], p["num_layers"], p["num_image_tokens"]) == (T, L, n) == (5, 2, len(vgen.image_positions))
    q, peaks = _decode(p)
    w = dequantise(q, peaks)  # as the page reads it back
    worst = 0.0
    for step in range(T):
        exact = np.concatenate([A.layer_image_weights(vgen, step), A.image_weights(vgen, step)[None]])  # [L + 1, n]
        assert np.allclose(exact[L], exact[:L].mean(0), atol=1e-12)
        top = exact.max(axis=1)
        assert np.allclose(peaks[step], top, rtol=1e-6, atol=1e-9)
        err = np.abs(w[step] - exact)
        assert (err <= top[:, None] * QUANT + 1e-7).all(), (step, err.max())
        worst = max(worst, float((err / top[:, None]).max()))
        # the argmax of each row is stored as 255: the strongest region is drawn with the top colour
        assert (q[step][np.arange(L + 1), exact.argmax(axis=1)] == 255).all()
    assert 0 < worst <= QUANT + 1e-6
    # boxes, views, shares and regions: the layout's and the analysis' numbers
    boxes = np.frombuffer(base64.b64decode(p["boxes"]), dtype="<f4").reshape(n, 4)
    assert np.allclose(boxes, layout.token_boxes(), equal_nan=True, atol=1e-3)
    views = list(layout.views())
    assert p["views"] == views
    token_view = np.frombuffer(base64.b64decode(p["token_view"]), dtype=np.uint8)
    for view in views:
        placed = set(A.view_tokens(layout, view).tolist())
        assert placed <= set(np.flatnonzero(token_view == views.index(view)).tolist())
    assert np.allclose(p["shares"], s.values, atol=1e-6) and np.allclose(p["image_share"], s.image_share, atol=1e-6)
    for step in range(T):
        assert p["regions"][step] == [r.to_dict() for r in A.top_regions(A.image_weights(vgen, step), layout, 5)]
    # the strongest keys outside the image: the head-and-layer mean row, image tokens left out
    rows = g.attentions.double().mean(dim=1).mean(dim=0).numpy()  # [T, K]
    image = set(vgen.image_positions)
    for step, keys in enumerate(p["other_keys"]):
        visible = g.context_length + step + 1
        others = [j for j in range(visible) if j not in image]
        assert len(keys) == min(TOP_OTHER, len(others))
        listed = [k["key"] for k in keys]
        assert not set(listed) & image and all(j < visible for j in listed)
        weights = [k["weight"] for k in keys]
        assert weights == sorted(weights, reverse=True)
        for k in keys:
            assert abs(k["weight"] - rows[step, k["key"]]) < 1e-6 and k["label"] == g.key_labels[k["key"]]
        rest = [rows[step, j] for j in others if j not in listed]
        assert not rest or max(rest) <= min(weights) + 1e-6
    if kind == "llava_onevision":
        assert views == ["global", "tiles"]


def test_page_is_self_contained(runs):
    from attnviz.analysis.vlm import SHARE_RULE
    from attnviz.html.page import embed_json
    from attnviz.html.payload import QUANTISATION
    from attnviz.html.vlm import vlm_page, vlm_payload

    vgen, s = _run(runs, "llava")
    page = vlm_page(vgen, s, label="tiny-llava")
    assert page.startswith("<!DOCTYPE html>") and "default-src 'none'" in page
    assert "<title>attnviz · tiny-llava · image answer</title>" in page
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", page, re.I), "nothing may be loaded"
    assert set(re.findall(r"https?://[^\s\"'<>)]*", page)) <= {"http://www.w3.org/2000/svg"}
    assert "<link" not in page and "@import" not in page and "url(http" not in page
    data = re.search(r'id="attnviz-data">(.*?)</script>', page, re.S).group(1)
    assert json.loads(data) == json.loads(embed_json(vlm_payload(vgen, s, label="tiny-llava")))
    payload = json.loads(data)
    assert payload["share_rule"] == SHARE_RULE and payload["quantisation"] == QUANTISATION
    assert payload["photo"].startswith("data:image/jpeg;base64,")


# ------------------------------------------------------------------------------------------------------ browser


def _drawn(d):
    """Every box drawn: view, token, fill colour, fill opacity."""
    return d.execute_script(
        "return Array.prototype.map.call(document.querySelectorAll('svg.vphoto rect[data-token]'), function (r) {"
        " return {view: r.closest('svg').getAttribute('data-view'), token: +r.getAttribute('data-token'),"
        " fill: r.getAttribute('fill'), opacity: +r.getAttribute('fill-opacity')}; })")


def _check_boxes(drawn, exact, payload):
    """The boxes' opacity is linear in the weight on one scale from 0 to the step's largest drawn weight (within the
    8-bit bound), and the strongest box has the top colour of the colour map at full opacity."""
    lo, hi = payload["opacity"]
    tokens = [b["token"] for b in drawn]
    top = float(exact[tokens].max())
    for b in drawn:
        want = lo + (hi - lo) * exact[b["token"]] / top
        assert abs(b["opacity"] - want) <= (hi - lo) * 2 * QUANT + 6e-4, (b, want)
    best = max(drawn, key=lambda b: exact[b["token"]])
    assert best["fill"] == "rgb(%d, %d, %d)" % tuple(payload["cmap"][-1]) and abs(best["opacity"] - hi) < 1e-3
    weakest = min(drawn, key=lambda b: exact[b["token"]])
    assert weakest["opacity"] < best["opacity"] or np.isclose(exact[weakest["token"]], top, rtol=2 * QUANT)


@pytest.fixture(scope="module")
def driver():
    reason = browser.why_no_browser()
    if reason is not None:
        pytest.skip(reason)
    d = browser.start()
    yield d
    d.quit()


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_page_in_browser(runs, driver, kind, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    from attnviz.analysis import vlm as A
    from attnviz.html.vlm import vlm_page
    from attnviz.report import write_html

    vgen, s = _run(runs, kind)
    layout, d = vgen.layout, driver
    path = write_html(vlm_page(vgen, s, label="tiny"), tmp_path)
    url = path.resolve().as_uri()
    d.get("about:blank")
    browser.requests(d), d.get_log("browser")  # drop what came before
    d.get(url)
    assert d.execute_script("return !!window.attnviz")
    assert browser.requests(d) == [url], "the page must request nothing but itself"
    assert browser.console_errors(d) == []
    payload = d.execute_script("return attnviz.data")

    # one panel per view, each with the boxes of its image tokens that cover pixels
    views = list(layout.views())
    panels = d.find_elements(By.CSS_SELECTOR, "figure.vview")
    assert [p.get_attribute("data-view") for p in panels] == views
    drawn = _drawn(d)
    for view in views:
        assert sorted(b["token"] for b in drawn if b["view"] == view) == sorted(A.view_tokens(layout, view).tolist())

    # a real click on the third answer token selects step 2
    chip = d.find_element(By.CSS_SELECTOR, '#answer .vtok[data-step="2"]')
    d.execute_script("arguments[0].scrollIntoView({block: 'center'})", chip)
    ActionChains(d).move_to_element(chip).click().perform()
    st = d.execute_script("return attnviz.state()")
    assert st["step"] == 2 and st["layer"] is None
    assert "Step 2" in d.find_element(By.ID, "step-title").text
    assert "step 2 of 5" in d.find_element(By.ID, "step-label").text
    assert "on" in chip.get_attribute("class").split()
    shares_text = d.find_element(By.ID, "shares").text
    for group, name in (("image", "image"), ("prompt", "prompt text"), ("generated", "answer"), ("first", "first token")):
        assert f"{name} {s.step(2)[group]:.3f}" in shares_text, (group, shares_text)
    mean = A.image_weights(vgen, 2)
    drawn = _drawn(d)
    _check_boxes(drawn, mean, payload)
    regions = d.find_element(By.ID, "regions").text
    for r in A.top_regions(mean, layout, 5):
        assert f"{r.weight:.4f}" in regions
    # the regions drawn numbered are the strongest ones
    assert d.execute_script("return document.querySelectorAll('svg.vphoto rect.top').length") >= 5
    others = d.find_element(By.ID, "others").text
    assert all(k["label"] not in ("<image>",) for k in payload["other_keys"][2])
    assert f"{payload['other_keys'][2][0]['weight']:.4f}" in others

    # the layer selector: layer 0's head mean is drawn, on its own scale
    Select(d.find_element(By.ID, "layer")).select_by_value("0")
    st = d.execute_script("return attnviz.state()")
    assert st["step"] == 2 and st["layer"] == 0
    assert "layer 0" in d.find_element(By.ID, "step-title").text
    layer0 = A.layer_image_weights(vgen, 2)[0]
    drawn0 = _drawn(d)
    _check_boxes(drawn0, layer0, payload)
    assert [b["opacity"] for b in drawn0] != [b["opacity"] for b in drawn]
    assert f"image {s.values[2, 0, 0]:.3f}" in d.find_element(By.ID, "shares").text
    got = np.array(d.execute_script("return attnviz.weights()"))
    assert np.abs(got - layer0).max() <= layer0.max() * QUANT + 1e-7

    # the arrow keys move along the answer (the layer stays)
    d.find_element(By.TAG_NAME, "h1").click()
    ActionChains(d).send_keys(Keys.ARROW_RIGHT).perform()
    assert d.execute_script("return attnviz.state()")["step"] == 3
    ActionChains(d).send_keys(Keys.ARROW_LEFT).send_keys(Keys.ARROW_LEFT).perform()
    st = d.execute_script("return attnviz.state()")
    assert st["step"] == 1 and st["layer"] == 0
    assert browser.requests(d) == [] and browser.console_errors(d) == []


def test_page_colours_are_the_figures():
    from attnviz.html.vlm import VLM_CMAP as page
    from attnviz.render.vlm import VLM_CMAP as figures

    assert page == figures

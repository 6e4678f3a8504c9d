"""attnviz generate --format html: the generation report's payload, the CLI, and the page in a browser."""

from __future__ import annotations

import base64
import json
import re

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import browser
from tiny import TEXT

QUANT = 1 / 510  # the stated bound: a weight is read back within max(row)/510


@pytest.fixture(scope="module")
def results(lm_models):
    from attnviz.generate import attend_generation, load_generation_model

    def run(kind):
        return attend_generation(TEXT, load_generation_model(str(lm_models(kind))), max_new_tokens=4, stop_at_eos=False)

    return {"gpt2": run("gpt2"), "t5": run("t5")}


def _decode(kind: dict, L: int, H: int, G: int) -> tuple[np.ndarray, np.ndarray]:
    q = np.frombuffer(base64.b64decode(kind["q"]), np.uint8).reshape(L, H + 1, G, kind["num_keys"])
    peak = np.frombuffer(base64.b64decode(kind["peak"]), "<f4").reshape(L, H + 1, G)
    return q.astype(np.float32) / 255 * peak[..., None], peak


@pytest.mark.parametrize("model", ["gpt2", "t5"])
def test_payload_equals_attentions(results, model):
    from attnviz.html.generation import generation_payload

    r = results[model]
    p = generation_payload(r, layer=-1, head=1)
    L, H, G = r.num_layers, r.num_heads, r.num_generated
    assert p["type"] == "generation" and p["initial"] == {"kind": "self", "layer": L - 1, "head": 1, "step": 0}
    assert p["generated"] == list(r.generated) and p["kinds"]["self"]["keys"] == list(r.key_labels)
    assert p["kinds"]["self"]["boundary"] == r.context_length and "8-bit per row" in p["quantisation"]
    pairs = [("self", r.attentions)] + ([("cross", r.cross_attentions)] if r.cross_attentions is not None else [])
    assert ("cross" in p["kinds"]) == (model == "t5")
    for name, attn in pairs:
        w, peak = _decode(p["kinds"][name], L, H, G)
        full = torch.cat([attn, attn.mean(1, keepdim=True)], 1).numpy()  # the head mean is head H
        assert np.all(np.abs(w - full) <= peak[..., None] * QUANT + 1e-7)


def test_cli_png_and_html(lm_models, tmp_path):
    from attnviz.cli import app

    out = tmp_path / "o"
    res = CliRunner().invoke(app, ["generate", "The cat", "--model", str(lm_models("gpt2")), "-n", "3", "--out", str(out),
                                   "--format", "png,html", "--head", "0", "--layer", "0"])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "generation-map.png", "report.html", "sink-share.png"]
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "default-src 'none'" in page
    assert set(re.findall(r"https?://[^\s\"'<>)]*", page)) <= {"http://www.w3.org/2000/svg"}
    data = json.loads(re.search(r'id="attnviz-data">(.*?)</script>', page, re.S).group(1).replace("<\\/", "</"))
    assert data["initial"]["layer"] == 0 and data["initial"]["head"] == 0


@pytest.mark.skipif(browser.why_no_browser() is not None, reason=browser.why_no_browser() or "")
def test_page_in_browser(results, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    from attnviz.html import generation_page
    from attnviz.report import write_html

    r = results["t5"]
    path = write_html(generation_page(r), tmp_path)
    d = browser.start()
    try:
        url = path.resolve().as_uri()
        browser.requests(d), d.get_log("browser")
        d.get(url)
        assert d.execute_script("return !!window.attnviz")
        assert browser.requests(d) == [url], "the page must request nothing but itself"
        assert browser.console_errors(d) == []
        st = d.execute_script("return attnviz.select({layer: 0, head: 0, step: 1})")
        assert st == {"kind": "self", "layer": 0, "head": 0, "step": 1}
        links = d.execute_script("return attnviz.links()")
        row = r.attentions[0, 0, 1]
        assert len(links) == r.context_length + 2 and all(l["from"] == 1 for l in links)
        assert sorted(l["to"] for l in links) == list(range(r.context_length + 2))
        peak = float(row.max())
        for l in links:
            assert abs(l["weight"] - float(row[l["to"]])) <= peak * QUANT + 1e-6
        # cross-attention: the source tokens
        d.execute_script("return attnviz.select({kind: 'cross'})")
        links = d.execute_script("return attnviz.links()")
        assert len(links) == r.prompt_length
        crow = r.cross_attentions[0, 0, 1]
        for l in links:
            assert abs(l["weight"] - float(crow[l["to"]])) <= float(crow.max()) * QUANT + 1e-6
        # a real click on a generated token in the text selects its step
        chip = d.find_element(By.CSS_SELECTOR, '.gentext .tok[data-step="3"]')
        d.execute_script("arguments[0].scrollIntoView({block: 'center'})", chip)
        ActionChains(d).move_to_element(chip).click().perform()
        assert d.execute_script("return attnviz.state()")["step"] == 3
        assert "step 3" in d.find_element(By.ID, "top-title").text
        # the pointer over the map writes the weight out
        canvas = d.find_element(By.CSS_SELECTOR, ".gmap canvas")
        d.execute_script("arguments[0].scrollIntoView({block: 'center'})", canvas)
        ActionChains(d).move_to_element_with_offset(canvas, 0, 0).perform()
        assert "→ key" in d.find_element(By.CSS_SELECTOR, ".status").text
        assert browser.requests(d) == [] and browser.console_errors(d) == []
    finally:
        d.quit()


@pytest.mark.skipif(browser.why_no_browser() is not None, reason=browser.why_no_browser() or "")
def test_top_table_follows_the_rule(results, tmp_path):
    """The "strongest earlier tokens" of every step: the keys analysis.generation.eligible allows (not the token
    itself, not the first token, not special ones), strongest first, as strongest_links finds the best; SELF_RULE shown."""
    from selenium.webdriver.common.by import By

    from attnviz.analysis.generation import SELF_RULE, eligible, strongest_links
    from attnviz.html import generation_page
    from attnviz.report import write_html

    r = results["gpt2"]
    ok = eligible(r)
    d = browser.start()
    try:
        d.get(write_html(generation_page(r, layer=0, head=0), tmp_path).resolve().as_uri())
        for step in range(r.num_generated):
            d.execute_script("attnviz.select({step: %d})" % step)
            top = d.execute_script("return attnviz.top()")
            keys = [t["to"] for t in top]
            assert len(keys) == min(10, int(ok[step].sum())) and all(ok[step, k] for k in keys)
            assert r.query_position(step) not in keys and 0 not in keys
            row = r.attentions[0, 0, step]
            best = strongest_links(r, 0, 0, top=1)[step][0]
            assert abs(top[0]["weight"] - best.weight) <= float(row.max()) * QUANT + 1e-6
            assert [int(tr.find_elements(By.TAG_NAME, "td")[0].text) for tr in d.find_elements(By.CSS_SELECTOR, "table.top tr")] == keys
            assert SELF_RULE in d.find_element(By.ID, "top-rule").text
        assert browser.console_errors(d) == []
    finally:
        d.quit()

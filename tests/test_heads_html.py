"""attnviz heads --format html: the report page of the corpus statistics (payload, CLI, and a real browser)."""

from __future__ import annotations

import json
import re
import time

import numpy as np
import pytest
from typer.testing import CliRunner

import browser
from attnviz.analysis.headstats import STATISTICS
from attnviz.cli import app
from tiny import CORPUS

TEXTS = CORPUS + ["Short one.", "Heads, tails; and more punctuation!"]


@pytest.fixture(scope="module")
def run(tiny_models, tmp_path_factory):
    """One CLI run on the tiny BERT with probes and --format png,html: (output folder, heads.json, CLI result)."""
    tmp = tmp_path_factory.mktemp("heads-html")
    corpus = tmp / "corpus.txt"
    corpus.write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    probes = tmp / "probes.jsonl"
    probes.write_text(json.dumps({"text": TEXTS[0], "token": "it", "target": "animal"}) + "\n", encoding="utf-8")
    out = tmp / "out"
    res = CliRunner().invoke(app, ["heads", str(corpus), "--model", str(tiny_models("bert")), "--batch-size", "2",
                                   "--probes", str(probes), "--cluster-every", "1", "--format", "png,html", "--out", str(out)])
    assert res.exit_code == 0, res.output
    return out, json.loads((out / "heads.json").read_text(encoding="utf-8")), res


def payload(page: str) -> dict:
    m = re.search(r'<script type="application/json" id="attnviz-data">(.*?)</script>', page, re.S)
    return json.loads(m.group(1).replace("<\\/", "</"))


def test_cli_writes_figures_and_page(run):
    out, doc, res = run
    page = (out / "report.html").read_text(encoding="utf-8")
    assert str(out / "report.html") in doc["files"] and "report.html" in res.output
    for name in [*STATISTICS, "probe_accuracy"]:
        assert (out / f"heads-{name.replace('_', '-')}.png").stat().st_size > 5000
    assert (out / "head-map.png").exists()
    assert "default-src 'none'" in page
    urls = set(re.findall(r"https?://[^\s\"'<>)]+", page))
    assert urls <= {"http://www.w3.org/2000/svg"}, urls
    assert "window.attnviz" in page and "DATA.type === \"text\"" not in page  # heads.js, not the text/image script


def test_payload_equals_heads_json(run):
    out, doc, _ = run
    data = payload((out / "report.html").read_text(encoding="utf-8"))
    assert data["type"] == "heads" and data["order"] == [*STATISTICS, "probe_accuracy"]
    assert (data["num_layers"], data["num_heads"]) == (3, 4) and data["corpus"] == doc["corpus"]
    assert data["settings"] == doc["settings"] and data["definitions"] == doc["definitions"]
    for name in STATISTICS:
        np.testing.assert_allclose(np.array(data["statistics"][name], dtype=float), np.array(doc["statistics"][name], dtype=float),
                                   rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(data["probes"]["accuracy"], doc["probes"]["accuracy"])
    assert data["probes"]["baselines"] == doc["probes"]["baselines"]
    np.testing.assert_allclose(data["head_map"]["mds"], doc["head_map"]["mds"])
    assert data["head_map"]["heads"] == doc["head_map"]["heads"] and "distances" not in data["head_map"]


def test_html_alone(tiny_models, tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(TEXTS[:3]) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["heads", str(corpus), "--model", str(tiny_models("gpt2")), "--format", "html", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["heads.json", "heads.parquet", "report.html"]
    assert "probe_accuracy" not in payload((out / "report.html").read_text(encoding="utf-8"))["order"]


@pytest.mark.skipif(browser.why_no_browser() is not None, reason=browser.why_no_browser() or "")
def test_page_in_browser(run):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    out, doc, _ = run
    d = browser.start()
    try:
        url = (out / "report.html").resolve().as_uri()
        d.get("about:blank")
        browser.requests(d), d.get_log("browser")
        d.get(url)
        assert d.execute_script("return !!window.attnviz")
        assert browser.requests(d) == [url], "the page must request nothing but itself"
        assert browser.console_errors(d) == []
        st = d.execute_script("return attnviz.select({statistic: 'entropy', layer: 0, head: 1})")
        assert st == {"statistic": "entropy", "layer": 0, "head": 1}
        assert d.execute_script("return attnviz.value()") == pytest.approx(doc["statistics"]["entropy"][0][1], abs=1e-12)
        assert "entropy" in d.find_element(By.ID, "definition").text
        cell = d.find_element(By.CSS_SELECTOR, '#heatmap td[data-layer="2"][data-head="3"]')
        d.execute_script("arguments[0].scrollIntoView({block: 'center', inline: 'center'})", cell)
        ActionChains(d).move_to_element(cell).perform()
        assert "layer 2, head 3" in d.find_element(By.ID, "hover").text
        ActionChains(d).click(cell).perform()
        time.sleep(0.1)
        assert d.execute_script("return attnviz.state()") == {"statistic": "entropy", "layer": 2, "head": 3}
        assert d.execute_script("return attnviz.value()") == pytest.approx(doc["statistics"]["entropy"][2][3], abs=1e-12)
        assert "layer 2, head 3" in d.find_element(By.ID, "headtitle").text
        assert d.find_elements(By.CSS_SELECTOR, "#headstats tr.pick") and len(d.find_elements(By.CSS_SELECTOR, "#probes tr.pick")) > 0
        assert browser.requests(d) == [] and browser.console_errors(d) == []
    finally:
        d.quit()

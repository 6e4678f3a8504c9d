"""Size and speed of the interactive HTML report (``--format html``), measured in headless Chromium.

    python benchmarks/html.py                      # the three reports below, table on stdout
    python benchmarks/html.py --screenshots docs   # also write docs/html-text-report.png and docs/html-image-report.png

Reports (default model ``sentence-transformers/all-MiniLM-L6-v2``, 6 layers x 12 heads):

- ``readme``: README's sentence with ``--token it`` (16 tokens: full maps);
- ``512``: a 512-token text (the model's maximum) with a focus token (beyond
  ``FULL_TOKENS``: the strongest ``TOP_K`` links per query row + the focus token's full rows);
- ``image``: ``samples/coffee.png`` on ``../shared/models/deit-tiny-patch16-224`` (skipped if absent).

For each: the page's size; the Python time to build it from the captured
result (capture not included); in Chromium (Selenium + chromium-driver, from
``file://``), the time from navigation until ``window.attnviz`` exists
(``load``), and the in-page time of ``attnviz.select()`` to another layer and
head (``select``) and of a token hover (``hover``, a ``mouseenter`` on a
token, or the mouse over a patch), each including the redraw. Needs
``apt-get install chromium chromium-driver`` and ``pip install selenium``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# this file is named html.py: keep its folder off the path so the standard library's html module wins
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

SENTENCE = "The animal didn't cross the street because it was too tired."
LONG = (
    "Attention maps show which tokens each head looks at, layer by layer, and the animal did not cross the street "
    "because it was too tired. A quick brown fox jumps over the lazy dog while the cat sleeps in the sun. "
)
DEIT = ROOT.parent / "shared" / "models" / "deit-tiny-patch16-224"


def build_text(text: str, token: str, index: int | None):
    from attnviz import attend_text
    from attnviz.analysis.select import ViewSpec
    from attnviz.analysis.focus import analyse_focus
    from attnviz.html import text_page

    r = attend_text(text, max_length=512)
    spec = ViewSpec()
    t0 = time.perf_counter()
    focus = analyse_focus(r, token, index, spec)
    page = text_page(r, focus, spec)
    return page, time.perf_counter() - t0, len(r.tokens)


def build_image():
    from attnviz import attend_image
    from attnviz.analysis.sinks import detect_sinks  # noqa: F401 (import cost outside the timing)
    from attnviz.html import image_page
    from attnviz.inputs.patches import image_sinks, rollout_map

    r = attend_image(ROOT / "samples" / "coffee.png", str(DEIT))
    t0 = time.perf_counter()
    roll = rollout_map(r)
    page = image_page(r, roll, {"head_fusion": "mean", "discard_ratio": 0.0}, image_sinks(r, roll))
    return page, time.perf_counter() - t0, r.attention.num_keys


SELECT_JS = """
const t0 = performance.now(); attnviz.select(arguments[0]); const links = attnviz.links();
return [performance.now() - t0, links.length];
"""
HOVER_TEXT_JS = """
const el = document.querySelector('#av-headview .col.q .tok[data-index="' + arguments[0] + '"]');
const t0 = performance.now(); el.dispatchEvent(new MouseEvent('mouseenter')); const n = attnviz.links().length;
const dt = performance.now() - t0; el.dispatchEvent(new MouseEvent('mouseleave')); return [dt, n];
"""
HOVER_IMAGE_JS = """
const c = document.querySelector('#av-attn canvas'), r = c.getBoundingClientRect();
const t0 = performance.now();
c.dispatchEvent(new MouseEvent('mousemove', {clientX: r.left + r.width * 0.3, clientY: r.top + r.height * 0.6}));
const n = attnviz.links().length; return [performance.now() - t0, n];
"""


def measure(driver, path: Path, kind: str, screenshot: Path | None):
    import browser

    driver.get("about:blank")
    browser.requests(driver), driver.get_log("browser")
    t0 = time.perf_counter()
    driver.get(path.resolve().as_uri())
    ok = driver.execute_script("return !!window.attnviz")
    load = time.perf_counter() - t0
    errors = browser.console_errors(driver)
    extra = [u for u in browser.requests(driver) if u != path.resolve().as_uri()]
    if kind == "text":
        select_ms, _ = driver.execute_script(SELECT_JS, {"layer": 2, "head": 5})
        n = len(driver.execute_script("return attnviz.state().query_labels"))
        hover_ms, _ = driver.execute_script(HOVER_TEXT_JS, n // 2)
    else:
        select_ms, _ = driver.execute_script(SELECT_JS, {"layer": 3, "head": 1})
        hover_ms, _ = driver.execute_script(HOVER_IMAGE_JS)
    if screenshot is not None:
        if kind == "text":
            driver.execute_script("attnviz.select({layer: 3, head: 1})")
        else:  # a patch on the cup's rim, pinned: its own attention (head mean)
            driver.execute_script("attnviz.select({layer: 11, head: 'mean', patch: [4, 7]})")
        size = driver.get_window_size()
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(size["width"], min(height + 20, 4000))  # the whole page
        driver.execute_script("window.scrollTo(0, 0)")
        driver.save_screenshot(str(screenshot))
        driver.set_window_size(size["width"], size["height"])
    return {"ok": ok and not errors and not extra, "load_s": load, "select_ms": select_ms, "hover_ms": hover_ms, "errors": errors + extra}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--screenshots", type=Path, help="folder for html-text-report.png and html-image-report.png")
    args = ap.parse_args()
    import browser

    reason = browser.why_no_browser()
    if reason:
        print(f"no browser: {reason}")
        return 1
    from attnviz.html.payload import FULL_TOKENS, TOP_K

    cases = [("readme", "text", lambda: build_text(SENTENCE, "it", None)), ("512", "text", lambda: build_text(LONG * 12, "it", 0))]
    if DEIT.exists():
        cases.append(("image", "image", build_image))
    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="attnviz-html-bench-"))
    driver = browser.start(1300, 1000)
    try:
        for name, kind, build in cases:
            page, build_s, tokens = build()
            path = tmp / f"{name}.html"
            path.write_text(page, encoding="utf-8")
            shot = None
            if args.screenshots is not None and name in ("readme", "image"):
                args.screenshots.mkdir(parents=True, exist_ok=True)
                shot = args.screenshots / ("html-text-report.png" if kind == "text" else "html-image-report.png")
            m = measure(driver, path, kind, shot)
            rows.append((name, tokens, path.stat().st_size, build_s, m))
    finally:
        driver.quit()
    print(f"HTML report: 8-bit per-row quantisation; full maps up to {FULL_TOKENS} tokens, beyond: top {TOP_K} links per row")
    print(f"load average: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f} on {os.cpu_count()} CPUs")
    print()
    print("| report | tokens | size (MB) | build (s) | open in Chromium (s) | select() (ms) | hover (ms) | offline, no errors |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for name, tokens, size, build_s, m in rows:
        print(f"| {name} | {tokens} | {size / 1e6:.2f} | {build_s:.2f} | {m['load_s']:.2f} | {m['select_ms']:.0f} | {m['hover_ms']:.0f} | "
              f"{'yes' if m['ok'] else 'NO: ' + '; '.join(m['errors'])[:200]} |")
    return 0 if all(m["ok"] for *_, m in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())

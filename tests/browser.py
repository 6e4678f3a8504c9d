"""Headless Chromium for the HTML report tests, screenshots and the benchmark (Selenium + chromium-driver).

Every network request fails the page: the page carries a ``default-src 'none'``
Content-Security-Policy, the browser runs with a proxy that points nowhere, and
:func:`requests` reads the DevTools performance log so tests can assert that the
only request was the page's own ``file://`` URL.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

CHROMIUM = next((p for p in ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome") if Path(p).exists()), None)
DRIVER = shutil.which("chromedriver") or next((p for p in ("/usr/bin/chromedriver",) if Path(p).exists()), None)


def why_no_browser() -> str | None:
    """None when a headless browser can run here, else the reason."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    if CHROMIUM is None:
        return "no Chromium (apt-get install chromium chromium-driver)"
    if DRIVER is None:
        return "no chromedriver (apt-get install chromium-driver)"
    return None


def start(width: int = 1300, height: int = 1000):
    """A headless Chromium WebDriver with console and network logging, no network."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", f"--window-size={width},{height}",
        "--proxy-server=http://127.0.0.1:9", "--proxy-bypass-list=<-loopback>", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
        "--force-device-scale-factor=1",
    ):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    return webdriver.Chrome(service=Service(DRIVER), options=opts)


def requests(driver) -> list[str]:
    """URLs the page requested since the last call (DevTools Network.requestWillBeSent), ``data:`` URIs left out."""
    urls = []
    for entry in driver.get_log("performance"):
        msg = json.loads(entry["message"])["message"]
        if msg.get("method") == "Network.requestWillBeSent":
            url = msg["params"]["request"]["url"]
            if not url.startswith("data:"):  # inline data (the embedded photo) is no request to anything
                urls.append(url)
    return urls


def console_errors(driver) -> list[str]:
    """Console messages of level SEVERE (errors, CSP violations, failed loads)."""
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]

"""report.html of a smoke study, rendered in a real browser: headless Chromium (Debian's chromium
and chromium-driver) driven by selenium, at a desktop width and a 375 px phone width.

Without a browser these tests skip with a reason, except under CI (`CI` set, as `.ci/run` does),
where a missing browser is a failure: the check must not silently stop running.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import pytest

ROOT = Path(__file__).resolve().parents[2]
STUDY = ROOT / "configs" / "studies" / "smoke" / "gn_paper_replicas.yaml"
CHROMEDRIVER = Path("/usr/bin/chromedriver")
LOCAL_SCHEMES = {"file", "data", "about", "blob", "chrome", "devtools"}


def _missing_browser() -> str | None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    if not CHROMEDRIVER.exists() or not (shutil.which("chromium") or shutil.which("chromium-browser")):
        return "no headless browser: apt-get install chromium chromium-driver"
    return None


def _need_browser() -> None:
    reason = _missing_browser()
    if reason is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"CI is set, and the browser checks cannot run: {reason}")
    pytest.skip(reason)


def cli(*args):
    done = subprocess.run([sys.executable, "-m", "normbench", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    pytest.importorskip("matplotlib")  # the report's figures; a stack without it has no report
    _need_browser()
    results = tmp_path_factory.mktemp("browser")
    cli("run", STUDY, "--smoke", "-q", "-j", "2", "--results", results)
    cli("report", STUDY, "--smoke", "--results", results, "--out", results / "report")
    rows = json.loads(cli("compare", "--results", results, "-f", "json").stdout)
    return results / "report" / "report.html", rows


@pytest.fixture(scope="module")
def browser():
    _need_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-background-networking",
                 "--disable-component-update", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1280,900"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    yield driver
    driver.quit()


def _open(driver, page: Path, width: int):
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
        "width": width, "height": 900, "deviceScaleFactor": 2, "mobile": width < 600})
    driver.get_log("performance")  # drop what came before
    driver.get_log("browser")
    driver.get(page.as_uri())
    driver.execute_script("return document.readyState")


def _requests(driver) -> list[str]:
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message.get("method") == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


@pytest.mark.slow
@pytest.mark.parametrize("width", [1280, 375])
def test_report_renders_in_chromium(report, browser, width):
    page, _ = report
    _open(browser, page, width)
    assert browser.execute_script("return window.innerWidth") == width
    # not blank: the title, the summary and the headline table are there and visible
    assert browser.find_element("tag name", "h1").text == "gn_paper_replicas_smoke"
    text = browser.execute_script("return document.body.innerText")
    assert len(text) > 1000 and "Summary" in text and "How this was run" in text
    assert browser.find_element("id", "headline").is_displayed()
    # every image loaded (inlined: natural width > 0)
    images = browser.execute_script(
        "return Array.from(document.images).map(i => [i.complete, i.naturalWidth])")
    assert len(images) >= 2 and all(done and w > 0 for done, w in images), images
    # fits the width: nothing makes the page scroll sideways (tables scroll inside their box)
    assert browser.execute_script("return document.documentElement.scrollWidth") <= width
    # no console errors
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors
    # no request leaves the machine
    leaving = [u for u in _requests(browser) if urlparse(u).scheme not in LOCAL_SCHEMES]
    assert not leaving, leaving


@pytest.mark.slow
def test_the_headline_table_shows_compares_numbers(report, browser):
    page, rows = report
    _open(browser, page, 1280)
    table = browser.execute_script("""
        const t = document.getElementById('headline');
        const head = Array.from(t.querySelectorAll('th')).map(c => c.innerText.trim());
        const body = Array.from(t.querySelectorAll('tbody tr')).map(
            r => Array.from(r.querySelectorAll('td')).map(c => c.innerText.trim()));
        return [head, body];""")
    head, body = table
    shown = {}
    for row in body:
        for x, cell in zip(head[1:], row[1:]):
            match = re.fullmatch(r"([0-9.]+)(?: ± ([0-9.]+))? \(n=(\d+)\)", cell)
            if match:
                shown[(row[0], x)] = match.groups()
    mine = [r for r in rows if r["name"] == "gn_paper_replicas_smoke"]
    assert len(shown) == len(mine) == 4
    batch_of = lambda r: re.search(r"train.batch_size=(\d+)", r["config"]).group(1)  # noqa: E731
    v_of_batch = {batch_of(r): re.search(r"virtual_batch_size=(\d+)", r["config"]).group(1)
                  for r in mine if r["norm"] == "batch"}
    for r in mine:  # one smoke epoch: the median of the last 5 evaluations is the final one
        mean, half, n = shown[(r["norm"], v_of_batch[batch_of(r)])]  # GN: the v of its batch
        assert mean == f"{100 * r['test_err_mean']:.2f}", (r, mean)
        assert half == f"{100 * r['test_err_ci95']:.2f}", (r, half)
        assert int(n) == r["runs"]


def test_the_page_template_fills_every_placeholder():
    """What the browser loads is report.py's template with nothing left unfilled (quick)."""
    from normbench import report

    page = report.page_template().substitute(title="t", context="c", metric="m", nav="<nav>",
                                             body="<h2 id=summary>s</h2>")
    assert "$" not in page.split("<style>")[0] and "${" not in page
    assert page.startswith("<!doctype html>") and "<style>" in page and "</html>" in page

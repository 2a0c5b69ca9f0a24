"""The report as a person reads it, in headless chromium at 1280 px and at 390 px (a phone), measured through the
DOM: every claims table keeps each column at least 6em wide and each row at most 4 lines tall, and every other
table keeps its columns at least 6em wide (a wide table scrolls sideways instead of squeezing).

Chromium's window is never narrower than 500 px, so the page is driven over the DevTools protocol on a pipe
(``--remote-debugging-pipe``: no port, no extra package) with the viewport set to the width measured.
Screenshots are kept in ``$ESA_ARTIFACTS`` (default ``results/artifacts/report-layout/``); skipped without
chromium.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from reports.build import build_store
from reports.load import load_run
from reports.sample import FAILING_CLAIM, replay_run, sample_store

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)),
                None)
ARTIFACTS = Path(os.environ.get("ESA_ARTIFACTS") or ROOT / "results" / "artifacts" / "report-layout")
WIDTHS = (1280, 390)
MIN_COLUMN_EM, MAX_ROW_LINES = 6.0, 4.0

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium installed (apt-get install -y chromium)")


class Browser:
    """A headless chromium driven over the DevTools protocol on a pipe (fds 3 and 4 of the child)."""

    def __init__(self, profile: Path) -> None:
        to_child, self._w = os.pipe()
        self._r, from_child = os.pipe()

        def fds() -> None:  # in the child: its ends of the pipes become fds 3 (read) and 4 (write)
            a, b = os.dup(to_child), os.dup(from_child)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-dev-shm-usage", "--remote-debugging-pipe", f"--user-data-dir={profile}", "about:blank"],
            preexec_fn=fds, close_fds=False,  # noqa: PLW1509 (the test starts no threads)
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_child)
        os.close(from_child)
        self._buf, self._id = b"", 0
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + 60
        while True:
            while b"\0" not in self._buf:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"chromium did not answer {method}")
                chunk = os.read(self._r, 1 << 16)
                if not chunk:
                    raise RuntimeError(f"chromium closed the pipe during {method}")
                self._buf += chunk
            raw, self._buf = self._buf.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    def page(self, method: str, params: dict | None = None) -> dict:
        return self.send(method, params, self.session)

    def open(self, url: str, width: int, height: int = 900) -> None:
        self.page("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 500})
        self.page("Page.navigate", {"url": "about:blank"})  # a fresh document, also when only the #hash differs
        self.page("Page.navigate", {"url": url})
        for _ in range(300):
            if self.js(f"location.href === {json.dumps(url)} && document.readyState === 'complete' && "
                       "(document.body.dataset.loaded !== undefined || !document.querySelector('script'))"):
                return
            time.sleep(0.05)
        raise TimeoutError(f"{url} did not load")

    def js(self, expression: str):
        result = self.page("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression[:60]}...: {result['exceptionDetails']}")
        return result["result"].get("value")

    def screenshot(self, path: Path, selector: str | None = None, max_height: int = 6000) -> Path:
        """A PNG of the page (or of ``selector``'s box) as laid out at the current width: the viewport is made
        as tall as the page first (capturing beyond the viewport would lay the page out again, wider)."""
        width = self.js("innerWidth")
        height = min(self.js("document.documentElement.scrollHeight"), 16_000)
        self.page("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 500})
        self.js("window.scrollTo(0, 0)")
        box = self.js(f"(() => {{ const r = document.querySelector({json.dumps(selector)}).getBoundingClientRect();"
                      "return [r.left + scrollX, r.top + scrollY, r.width, r.height]; })()") if selector else \
            [0, 0, width, height]
        clip = {"x": box[0], "y": box[1], "width": box[2], "height": min(box[3], max_height), "scale": 1}
        shot = self.page("Page.captureScreenshot", {"format": "png", "clip": clip})
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(shot["data"]))
        return path

    def close(self) -> None:
        try:
            self.send("Browser.close")
        except (RuntimeError, OSError, TimeoutError):
            pass
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        os.close(self._w)
        os.close(self._r)


# Measured in the page: every table shown (suites unfolded, with all other <details> too when called with
# true; the claims' own details stay folded), its rendered columns
# (header cells) in em of the cell's font size, and each row of a claims table in lines of its line height.
MEASURE = """((all) => {
  document.querySelectorAll(all ? 'details.suite, section details' : 'details.suite')
    .forEach(d => { d.open = true; });
  const out = [];
  document.querySelectorAll('table').forEach((t, i) => {
    if (!t.offsetParent) return;
    const claims = t.classList.contains('claims');
    const cols = [...t.querySelectorAll('thead th')].filter(th => th.getClientRects().length).map(th => {
      const fs = parseFloat(getComputedStyle(th).fontSize);
      return {name: th.textContent, em: th.getBoundingClientRect().width / fs};
    });
    const rows = claims ? [...t.querySelectorAll('tbody tr:not(.why)')].map(tr => {
      const td = tr.querySelector('td'), s = getComputedStyle(td);
      const inner = tr.getBoundingClientRect().height - parseFloat(s.paddingTop) - parseFloat(s.paddingBottom)
        - parseFloat(s.borderTopWidth);
      return {claim: td.textContent, lines: inner / parseFloat(s.lineHeight)};
    }) : [];
    const where = t.closest('[id]');
    out.push({table: i, claims: claims, where: where ? where.id : '', cols: cols, rows: rows});
  });
  return {width: innerWidth, scrollWidth: document.documentElement.scrollWidth, tables: out};
})"""


@pytest.fixture(scope="module")
def store(tmp_path_factory, sample_base) -> dict[str, Path]:
    """The sample run (a failing robustness bound, ten not-applicable bit-flip claims) at seed 0, the same run at seed 5
    and a worsened replay at seed 0, built with ``python -m reports``' own entry: run pages, latest view, index."""
    sample, first = sample_store(sample_base)
    d = tmp_path_factory.mktemp("layout") / "results"
    shutil.copytree(sample, d, ignore=shutil.ignore_patterns("report*", "root"))
    replay_run(d, first, info={"seed": 5, "git_commit": "5555555"})
    last = replay_run(d, first, scale={FAILING_CLAIM: 1.5}, info={"git_commit": "2222222"})
    built = build_store(d, last)
    assert load_run(d).run_id == last
    return {"run": built.run_page / "index.html", "index": built.index,
            "latest": built.latest["tiny-llama"] / "index.html"}


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    b = Browser(tmp_path_factory.mktemp("chromium-profile"))
    yield b
    b.close()


def _problems(measured: dict) -> list[str]:
    out = []
    for t in measured["tables"]:
        for c in t["cols"]:
            if c["em"] < MIN_COLUMN_EM - 0.05:
                out.append(f"table {t['table']} in #{t['where']}: column {c['name']!r} is {c['em']:.1f}em wide")
        for r in t["rows"]:
            if r["lines"] > MAX_ROW_LINES + 0.05:
                out.append(f"claims table in #{t['where']}: row {r['claim'][:40]!r} is {r['lines']:.1f} lines tall")
    return out


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("name", ["run", "latest", "index"])
def test_tables_are_readable(store, browser, name, width):
    browser.open(store[name].as_uri(), width)
    measured = browser.js(MEASURE + "(false)")  # the suites unfolded: the claims tables as a reader meets them
    assert measured["width"] == width
    claims = [t for t in measured["tables"] if t["claims"]]
    every = browser.js(MEASURE + "(true)")  # then every folded table too (measurements, every claim over time)
    measured["tables"] = claims + [t for t in every["tables"] if not t["claims"]]
    assert len(measured["tables"]) > len(claims)
    if name != "index":
        assert claims and sum(len(t["rows"]) for t in claims) >= 30, "the suites' claims tables were not measured"
    assert not _problems(measured), "\n".join(_problems(measured))
    assert measured["scrollWidth"] <= width + 1, "the page itself scrolls sideways (only wide tables may)"
    shot = ARTIFACTS / f"{name}_{width}px.png"
    browser.screenshot(shot)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000


@pytest.mark.parametrize("width", WIDTHS)
def test_bitflip_claims_at_a_glance(store, browser, width):
    """The bit-flip section (its not-applicable rows were 40 lines tall): one line per claim at 1280 px, the
    reason folded beneath the row and shown when the claim is opened."""
    browser.open(store["run"].as_uri() + "#suite-bitflip", width)
    rows = browser.js("""(() => {
      const t = document.querySelector('#suite-bitflip table.claims');
      return [...t.querySelectorAll('tbody tr:not(.why)')].map(tr => {
        const td = tr.querySelector('td'), s = getComputedStyle(td);
        return {na: tr.classList.contains('o-not_applicable'), h: tr.getBoundingClientRect().height,
                line: parseFloat(s.lineHeight), pad: parseFloat(s.paddingTop) + parseFloat(s.paddingBottom)};
      });
    })()""")
    na = [r for r in rows if r["na"]]
    assert len(na) >= 5, rows
    if width == 1280:
        assert all(r["h"] - r["pad"] <= 1.05 * r["line"] + 1 for r in rows), rows  # one line each
    hidden = browser.js("getComputedStyle(document.querySelector('#suite-bitflip tr.o-not_applicable + tr.why'))"
                        ".display")
    assert hidden == "none"
    browser.screenshot(ARTIFACTS / f"run_bitflip_{width}px.png", "#suite-bitflip")
    shown = browser.js("""(() => {
      const row = document.querySelector('#suite-bitflip tr.o-not_applicable');
      row.querySelector('details').open = true;
      const why = row.nextElementSibling;
      return [getComputedStyle(why).display, why.textContent];
    })()""")
    assert shown[0] == "table-row" and "not applicable" in shown[1]
    width_open = browser.js("document.querySelector('#suite-bitflip table.claims').getBoundingClientRect().width")
    assert width_open <= width, "the opened reason widened the table"
    browser.screenshot(ARTIFACTS / f"run_bitflip_reason_open_{width}px.png", "#suite-bitflip")


def test_index_reaches_the_whole_analysis(store, browser):
    """The first page lists every run newest first and links the latest-per-suite page and each run page."""
    browser.open(store["index"].as_uri(), 1280)
    links = browser.js("[...document.querySelectorAll('a')].map(a => a.getAttribute('href'))")
    assert "latest-tiny-llama/index.html" in links
    runs = [h for h in links if h.endswith("/index.html") and not h.startswith("latest-")]
    assert len(runs) == 3 and all((store["index"].parent / h).is_file() for h in runs)
    newest_first = list(load_run(store["index"].parent.parent).runs["run_id"])[::-1]  # by start time (ms)
    assert runs == [f"{rid}/index.html" for rid in newest_first]
    browser.open(store["latest"].as_uri(), 1280)
    suites = browser.js("[...document.querySelectorAll('details.suite')].map(d => d.id)")
    assert {"suite-smoke", "suite-bitflip", "suite-ablation", "suite-attack"} <= set(suites)
    page = browser.js("document.body.dataset.brokenImages")
    assert page == "0"

"""The built documentation, opened in a real browser (headless Chromium), as a reader sees it.

For every page of both languages that carries formulas (the LARS / THOR API pages, the
``ms_optim.ops`` pages, the guide pages), at a 1280 px wide window:

* MathJax finishes (``MathJax.startup.promise``) without a TeX error (no ``mjx-merror``);
* every formula (``mjx-container``) rendered with a non-zero size and lies inside the content
  column (``[role=main]``): its rendered math does not stick out to the right or the left;
* no rendered text (outside code blocks) contains a literal backslash, inside formulas neither
  (e.g. ``\\text{lars\\_filter}`` shows ``lars\\_filter`` in MathJax 3).

A full-page PNG screenshot of each page is kept in ``docs/_build/screenshots/<lang>/``.

Chromium is driven through its DevTools protocol over a websocket (package ``websocket-client``,
extras ``test``/``docs``). The test is skipped when ``/usr/bin/chromium`` is absent: install it with
``make docs-browser`` (Debian's package ``chromium``). The html is built (incrementally) into
``docs/_build/<lang>/html``, the place ``make docs`` builds it.
"""
import base64
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(REPO, "docs")
BUILD = os.path.join(DOCS, "_build")
SHOTS = os.path.join(BUILD, "screenshots")
CHROMIUM = os.environ.get("MS_OPTIM_CHROMIUM", "/usr/bin/chromium")
WIDTH, HEIGHT = 1280, 900
LANGS = ("en", "zh_cn")

pytestmark = [
    pytest.mark.skipif(
        not os.path.isfile(CHROMIUM),
        reason=f"{CHROMIUM} is absent: install Debian's chromium with `make docs-browser` "
               f"(apt-get install chromium) to run the browser rendering checks"),
]

websocket = pytest.importorskip(
    "websocket", reason="package websocket-client missing: pip install -e '.[test]'")


# ------------------------------------------------------------------------------------------
# A minimal DevTools-protocol client
# ------------------------------------------------------------------------------------------
class Browser:
    """One headless Chromium with one page, driven over the DevTools protocol."""

    def __init__(self, binary=CHROMIUM):
        self.profile = tempfile.mkdtemp(prefix="ms_optim_chromium_")
        self.proc = subprocess.Popen(
            [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--no-first-run", "--no-default-browser-check", "--hide-scrollbars",
             "--allow-file-access-from-files", f"--user-data-dir={self.profile}",
             f"--window-size={WIDTH},{HEIGHT}", "--remote-debugging-port=0", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        port_file = os.path.join(self.profile, "DevToolsActivePort")
        deadline = time.time() + 60
        while not os.path.isfile(port_file) or not open(port_file).read().strip():
            if self.proc.poll() is not None or time.time() > deadline:
                err = self.proc.stderr.read() if self.proc.poll() is not None else ""
                self.close()
                raise RuntimeError(f"chromium did not start its DevTools endpoint: {err[-2000:]}")
            time.sleep(0.1)
        port = int(open(port_file).read().split()[0])
        targets = []
        while not targets:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
                targets = [t for t in json.load(r) if t.get("type") == "page"]
            if not targets:
                time.sleep(0.1)
        self.ws = websocket.create_connection(targets[0]["webSocketDebuggerUrl"], timeout=60,
                                              suppress_origin=True)
        self._id = 0
        self.events = []
        self.call("Page.enable")
        self.call("Runtime.enable")
        self.call("Emulation.setDeviceMetricsOverride", width=WIDTH, height=HEIGHT,
                  deviceScaleFactor=1, mobile=False)

    def call(self, method, **params):
        self._id += 1
        my_id = self._id
        self.ws.send(json.dumps({"id": my_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == my_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self.events.append(msg)

    def wait_event(self, name, timeout=60):
        deadline = time.time() + timeout
        while time.time() < deadline:
            for i, ev in enumerate(self.events):
                if ev.get("method") == name:
                    return self.events.pop(i)
            self.events.append(json.loads(self.ws.recv()))
        raise TimeoutError(name)

    def evaluate(self, expression):
        res = self.call("Runtime.evaluate", expression=expression, awaitPromise=True,
                        returnByValue=True, timeout=60000)
        if "exceptionDetails" in res:
            raise RuntimeError(f"JS error: {res['exceptionDetails']}")
        return res["result"].get("value")

    def open(self, url):
        self.events = [e for e in self.events if e.get("method") != "Page.loadEventFired"]
        self.call("Page.navigate", url=url)
        self.wait_event("Page.loadEventFired")

    def screenshot(self, path):
        height = self.evaluate("Math.ceil(document.documentElement.scrollHeight)")
        data = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True,
                         clip={"x": 0, "y": 0, "width": WIDTH, "height": min(height, 16000),
                               "scale": 1})["data"]
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))

    def close(self):
        try:
            if getattr(self, "ws", None):
                self.ws.close()
        finally:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            shutil.rmtree(self.profile, ignore_errors=True)


# Waits for MathJax, then measures every formula against the content column.
MEASURE_JS = r"""
(async () => {
  const t0 = Date.now();
  while (!(window.MathJax && MathJax.startup && MathJax.startup.promise)) {
    if (Date.now() - t0 > 30000) return {error: "MathJax never started"};
    await new Promise(r => setTimeout(r, 50));
  }
  await MathJax.startup.promise;
  await document.fonts.ready;
  const main = document.querySelector('[role="main"]');
  if (!main) return {error: "no [role=main] content column"};
  const col = main.getBoundingClientRect();
  const out = [];
  for (const c of document.querySelectorAll("mjx-container")) {
    const m = c.querySelector("mjx-math") || c;
    const rc = c.getBoundingClientRect(), rm = m.getBoundingClientRect();
    const mml = c.querySelector("mjx-assistive-mml");
    out.push({
      display: c.getAttribute("display") === "true",
      width: rm.width, height: rm.height,
      left: Math.min(rc.left, rm.left), right: Math.max(rc.right, rm.right),
      backslash_glyphs: c.querySelectorAll("mjx-c.mjx-c5C").length,
      text: mml ? mml.textContent : "",
      tex: (c.previousSibling && c.previousSibling.nodeType === 3) ? "" : "",
      errors: c.querySelectorAll("mjx-merror").length,
      html: c.outerHTML.length > 400 ? "" : c.outerHTML,
    });
  }
  // Text a reader sees, without code blocks and without the formulas' hidden MathML.
  const clone = main.cloneNode(true);
  for (const n of clone.querySelectorAll("pre, code, mjx-assistive-mml, script, style"))
    n.remove();
  return {column: {left: col.left, right: col.right, width: col.width},
          formulas: out, text: clone.innerText,
          title: document.title, scrollWidth: document.documentElement.scrollWidth};
})()
"""


# ------------------------------------------------------------------------------------------
# Build (or reuse) both languages, then open every page with formulas
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def built_html():
    env = dict(os.environ, GLOG_v="3", PYTHONWARNINGS="ignore",
               PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    procs = {}
    for lang in LANGS:
        out = os.path.join(BUILD, lang, "html")
        cmd = [sys.executable, "-m", "sphinx", "-b", "html", "-W", "--keep-going", "-q",
               f"source_{lang}", out]
        procs[lang] = (out, subprocess.Popen(cmd, cwd=DOCS, env=env, stdout=subprocess.PIPE,
                                             stderr=subprocess.STDOUT))
    outs = {}
    for lang, (out, proc) in procs.items():
        log, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, f"sphinx -W ({lang}) failed:\n{log.decode()[-6000:]}"
        outs[lang] = out
    return outs


def math_pages(root):
    pages = []
    for dirpath, _, files in os.walk(root):
        if "_static" in dirpath or "_sources" in dirpath:
            continue
        for f in files:
            if f.endswith(".html"):
                path = os.path.join(dirpath, f)
                with open(path, encoding="utf-8") as fh:
                    if 'class="math' in fh.read():
                        pages.append(os.path.relpath(path, root))
    return sorted(pages)


@pytest.fixture(scope="module")
def rendered(built_html):
    browser = Browser()
    results = {}
    try:
        for lang, root in built_html.items():
            shot_dir = os.path.join(SHOTS, lang)
            shutil.rmtree(shot_dir, ignore_errors=True)
            os.makedirs(shot_dir)
            for page in math_pages(root):
                browser.open("file://" + os.path.join(root, page))
                res = browser.evaluate(MEASURE_JS)
                shot = os.path.join(shot_dir, page.replace(os.sep, "__")[:-len(".html")] + ".png")
                browser.screenshot(shot)
                res["screenshot"] = shot
                results[(lang, page)] = res
    finally:
        browser.close()
    return results


REQUIRED = {
    "en": ["generated/ms_optim.LARS.html", "generated/ms_optim.thor.html",
           "generated/ms_optim.ops.lars_trust_ratio.html",
           "generated/ms_optim.ops.lars_gradient.html"],
    "zh_cn": ["api_python/ms_optim.LARS.html", "api_python/ms_optim.thor.html"],
}


@pytest.mark.parametrize("lang", LANGS)
def test_formula_pages_were_opened(rendered, lang):
    opened = {page for (lg, page) in rendered if lg == lang}
    missing = [p for p in REQUIRED[lang] if p not in opened]
    assert not missing, f"{lang}: pages with formulas not found/opened: {missing}"
    for (lg, page), res in rendered.items():
        if lg == lang:
            assert os.path.getsize(res["screenshot"]) > 10000, res["screenshot"]


@pytest.mark.parametrize("lang", LANGS)
def test_formulas_render_inside_the_column(rendered, lang):
    problems = []
    n = 0
    for (lg, page), res in sorted(rendered.items()):
        if lg != lang:
            continue
        if "error" in res:
            problems.append(f"{page}: {res['error']}")
            continue
        col = res["column"]
        assert col["width"] > 300, f"{page}: content column only {col['width']} px wide"
        if not res["formulas"]:
            problems.append(f"{page}: has math markup but MathJax rendered no mjx-container")
        for f in res["formulas"]:
            n += 1
            what = f"{page}: formula {f['text'][:70]!r}"
            if f["errors"]:
                problems.append(f"{what}: MathJax TeX error")
            if f["width"] <= 0 or f["height"] <= 0:
                problems.append(f"{what}: rendered with size {f['width']}x{f['height']}")
            if f["right"] > col["right"] + 0.5:
                problems.append(f"{what}: right edge {f['right']:.0f} px > column's "
                                f"{col['right']:.0f} px (overflows by {f['right'] - col['right']:.0f} px)")
            if f["left"] < col["left"] - 0.5:
                problems.append(f"{what}: left edge {f['left']:.0f} px < column's {col['left']:.0f}")
        if res["scrollWidth"] > WIDTH:
            problems.append(f"{page}: the page scrolls sideways ({res['scrollWidth']} px)")
    assert n > 0, f"{lang}: no formula measured"
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("lang", LANGS)
def test_no_literal_backslash_in_rendered_text(rendered, lang):
    problems = []
    for (lg, page), res in sorted(rendered.items()):
        if lg != lang or "error" in res:
            continue
        for f in res["formulas"]:
            if f["backslash_glyphs"] or "\\" in f["text"]:
                problems.append(f"{page}: a formula shows a backslash: {f['text'][:120]!r}")
        for line in res["text"].splitlines():
            if "\\" in line:
                problems.append(f"{page}: text shows a backslash: {line.strip()[:160]!r}")
    assert not problems, "\n".join(problems)


def test_measurement_catches_overflow_and_backslashes(built_html, tmp_path):
    """The checks themselves: a too-wide formula and ``\\text{a\\_b}`` must be reported."""
    root = built_html["en"]
    page = tmp_path / "bad.html"
    rel = os.path.relpath(os.path.join(root, "_static", "mathjax", "tex-chtml.js"), tmp_path)
    wide = " + ".join(f"x_{{{i}}}" for i in range(120))
    page.write_text(
        "<html><body><div role='main' style='width:600px'>"
        f"<div class='math'>\\[{wide}\\]</div><p>\\(\\text{{lars\\_filter}}\\)</p>"
        f"<p>\\(\\mathtt{{lars\\_filter}}\\)</p></div>"
        f"<script async src='{rel}'></script></body></html>", encoding="utf-8")
    browser = Browser()
    try:
        browser.open(page.as_uri())
        res = browser.evaluate(MEASURE_JS)
    finally:
        browser.close()
    wide_f, text_f, tt_f = res["formulas"]
    assert wide_f["right"] > res["column"]["right"] + 100, wide_f
    assert "\\" in text_f["text"] or text_f["backslash_glyphs"], text_f
    assert "\\" not in tt_f["text"] and not tt_f["backslash_glyphs"], tt_f
    assert "lars_filter" in tt_f["text"], tt_f

"""The attention explorer in a real browser: headless Chromium from the system's packages.

One Chromium serves every test. It is driven over the DevTools protocol on a pipe (commands in on
file descriptor 3, events out on 4, JSON messages ended by a NUL byte): no driver, no download.
Every request the page makes is recorded and anything but the page's own file is failed; console
errors, exceptions and Content-Security-Policy violations are recorded too.

Without Chromium these tests are skipped with one line saying how to install it; with CI=true they
must run.
"""
import base64
import io
import json
import os
import select
import shutil
import subprocess
import tempfile
import time

import pytest
import torch

from common import load_lesson
from lesson05_plumbing import checkpoints as C
from lesson05_plumbing import explorer
from test_explorer import expected_maps, lesson_run

L5 = load_lesson(5)
NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
CHROMIUM = next((path for path in map(shutil.which, NAMES) if path), None)
INSTALL = ("no Chromium found: install it to run the browser tests (sudo apt-get install chromium, "
           "or your system's chromium package)")
if os.name == "nt":                   # file descriptors 3 and 4 for a child: Linux and macOS only
    pytest.skip("the browser tests drive Chromium over a pipe, which needs Linux or macOS",
                allow_module_level=True)
if CHROMIUM is None and os.environ.get("CI") != "true":
    pytest.skip(INSTALL, allow_module_level=True)

MASKED_RGB = (200, 200, 200)          # explorer.js: a masked cell in a small map
ZERO_RGB = (68, 1, 84)                # viridis at weight 0


class Chromium:
    """Headless Chromium with one page, spoken to over --remote-debugging-pipe."""

    def __init__(self, executable):
        import fcntl                                     # (not on Windows, where this file is skipped)

        self.profile = tempfile.mkdtemp(prefix="explorer-chromium-")
        commands_in, self.commands = os.pipe()           # we write, Chromium reads fd 3
        self.events, events_out = os.pipe()              # Chromium writes fd 4, we read
        # Copies above 9, so that moving them to 3 and 4 in the child cannot overwrite each other.
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (commands_in, events_out)]
        os.close(commands_in)
        os.close(events_out)
        flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--no-default-browser-check",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-extensions", "--mute-audio", f"--user-data-dir={self.profile}",
                 "--remote-debugging-pipe", "about:blank"]
        self.process = subprocess.Popen([executable, *flags], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL, close_fds=False,
                                        preexec_fn=lambda: (os.dup2(high[0], 3), os.dup2(high[1], 4)))
        for fd in high:
            os.close(fd)
        self.buffer, self.last_id, self.waiting = b"", 0, []
        self.requests, self.problems, self.loads = [], [], 0
        target = self.send("Target.createTarget", {"url": "about:blank"}, session=None)["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True},
                                 session=None)["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.send(f"{domain}.enable")
        self.send("Fetch.enable", {"patterns": [{"urlPattern": "*"}]})     # every request stops here first
        self.send("Emulation.setDeviceMetricsOverride", {"width": 1280, "height": 900, "deviceScaleFactor": 1,
                                                         "mobile": False})

    def post(self, method, params, session):
        self.last_id += 1
        message = {"id": self.last_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self.commands, json.dumps(message).encode() + b"\0")
        return self.last_id

    def send(self, method, params=None, session="page", timeout=10.0):
        """A command; returns its result (the events that arrive meanwhile are handled)."""
        wanted = self.post(method, params or {}, self.session if session == "page" else session)
        deadline = time.monotonic() + timeout
        while True:
            message = self.receive(deadline, method)
            if message.get("id") == wanted:
                assert "error" not in message, f"{method}: {message['error']}"
                return message.get("result", {})

    def receive(self, deadline, waiting_for):
        while b"\0" not in self.buffer:
            ready, _, _ = select.select([self.events], [], [], max(0.0, deadline - time.monotonic()))
            assert ready, f"Chromium did not answer {waiting_for} in time"
            chunk = os.read(self.events, 1 << 20)
            assert chunk, "Chromium closed the pipe (it exited)"
            self.buffer += chunk
        raw, self.buffer = self.buffer.split(b"\0", 1)
        message = json.loads(raw)
        self.handle(message.get("method"), message.get("params", {}))
        return message

    def handle(self, event, params):
        if event == "Fetch.requestPaused":                 # only the page's own file may load
            url = params["request"]["url"]
            self.requests.append(url)
            if url.startswith("file://"):
                self.post("Fetch.continueRequest", {"requestId": params["requestId"]}, self.session)
            else:
                self.post("Fetch.failRequest", {"requestId": params["requestId"], "errorReason": "BlockedByClient"},
                          self.session)
        elif event == "Network.requestWillBeSent":
            self.requests.append(params["request"]["url"])
        elif event == "Page.loadEventFired":
            self.loads += 1
        elif event == "Log.entryAdded" and params["entry"]["level"] == "error":
            self.problems.append(params["entry"]["text"])
        elif event == "Runtime.exceptionThrown":
            self.problems.append(params["exceptionDetails"].get("exception", {}).get("description", "exception"))
        elif event == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
            self.problems.append(" ".join(str(a.get("value", a.get("description"))) for a in params["args"]))

    def load(self, url, timeout=10.0):
        """Open url (a new document, not a jump within the page) and wait for its load event."""
        for step in ("about:blank", url):
            before = self.loads
            self.send("Page.navigate", {"url": step})
            deadline = time.monotonic() + timeout
            while self.loads == before:
                self.receive(deadline, f"the load of {step}")

    def js(self, expression, timeout=10.0):
        """The value of a JavaScript expression in the page (promises awaited)."""
        reply = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                               "awaitPromise": True}, timeout=timeout)
        assert "exceptionDetails" not in reply, reply["exceptionDetails"]
        return reply["result"].get("value")

    def until(self, condition):
        """Wait (up to 3 s) until a JavaScript condition holds in the page: a click redraws on hashchange."""
        assert self.js(f"(async () => {{ for (let i = 0; i < 300; i++) {{ if ({condition}) return true; "
                       "await new Promise((r) => setTimeout(r, 10)); } return false; })()"), condition

    def close(self):
        try:
            self.send("Browser.close", session=None, timeout=3)
            self.process.wait(timeout=5)
        except (AssertionError, OSError, subprocess.TimeoutExpired):
            self.process.kill()
            self.process.wait()
        for fd in (self.commands, self.events):
            os.close(fd)
        shutil.rmtree(self.profile, ignore_errors=True)


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.fail(f"CI=true but {INSTALL}")
    chromium = Chromium(CHROMIUM)
    yield chromium
    chromium.close()


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    """(file:// URL of lesson 05's page, its data, the saved model, its config)."""
    out, data, config = lesson_run(tmp_path_factory)
    return (out / explorer.PAGE_NAME).as_uri(), data, L5.load_checkpoint(out / C.CHECKPOINT_NAME), config


def view(browser):
    """What the large view shows: its kind, layer, head, example, and every cell's weight (data-w)."""
    return browser.js("""(() => { const m = document.getElementById("matrix");
        const rows = [...m.querySelectorAll("tbody tr")].map((tr) => [...tr.querySelectorAll("td")].map(
            (td) => td.dataset.w));
        return {kind: m.dataset.kind, layer: +m.dataset.layer, head: +m.dataset.head, example: +m.dataset.example,
                rows, title: document.getElementById("detail-title").textContent, hash: location.hash}; })()""")


def wrong_example(data):
    return next(n for n, ex in enumerate(data["examples"]) if not ex["right"])


def point(browser, selector):
    """Move the pointer onto an element of the page; returns the readout's text."""
    return browser.js(f"""(() => {{ document.querySelector({json.dumps(selector)}).dispatchEvent(
        new MouseEvent("mouseover", {{bubbles: true}}));
        return document.getElementById("readout").textContent; }})()""")


def lit_cells(browser):
    """(query, key) of the large view's lit cells."""
    return [tuple(c) for c in browser.js('[...document.querySelectorAll("#matrix td.on")].map((td) => '
                                         '[+td.dataset.q, +td.dataset.k])')]


# %% the tests
def test_the_overview_draws_every_layer_and_head_of_every_kind(browser, page):
    url, data, _, _ = page
    browser.load(url)
    drawn = browser.js("""[...document.querySelectorAll("#grids canvas")].map((c) => {
        const pixels = c.getContext("2d").getImageData(0, 0, c.width, c.height).data, seen = new Set();
        for (let i = 0; i < pixels.length; i += 4) seen.add(pixels[i] + "," + pixels[i + 1] + "," + pixels[i + 2]);
        return [c.dataset.kind, +c.dataset.layer, +c.dataset.head, seen.size]; })""")
    wanted = {(kind, layer, head) for kind in ("encoder_self", "decoder_self", "cross")
              for layer in range(data["layers"]) for head in range(data["heads"])}
    assert {(k, layer, head) for k, layer, head, _ in drawn} == wanted and len(drawn) == len(wanted)
    assert all(colours > 2 for *_, colours in drawn)                       # a map, not a blank square


def test_choosing_a_head_shows_the_models_own_weights(browser, page):
    url, data, model, config = page
    n = wrong_example(data)
    browser.load(url)
    browser.js(f'document.querySelector(\'#examples tr[data-example="{n}"]\').click()')
    answer, maps = expected_maps(model, config, data["examples"][n]["test_index"])
    for kind, weights in maps.items():
        for layer in range(data["layers"]):
            for head in range(data["heads"]):
                browser.js(f'document.querySelector(\'canvas[data-kind="{kind}"][data-layer="{layer}"]'
                           f'[data-head="{head}"]\').parentElement.click()')
                browser.until(f'location.hash === "#example={n + 1}&kind={kind}&layer={layer + 1}&head={head + 1}" '
                              f'&& document.getElementById("matrix").dataset.kind === "{kind}" && '
                              f'+document.getElementById("matrix").dataset.head === {head} && '
                              f'+document.getElementById("matrix").dataset.layer === {layer}')
                shown = view(browser)
                assert shown["example"] == n and f"layer {layer + 1}, head {head + 1}" in shown["title"]
                torch.testing.assert_close(torch.tensor([[float(w) for w in row] for row in shown["rows"]]),
                                           weights[layer, head].float(), atol=0.5e-4 + 1e-6, rtol=0)


def test_pointing_shows_the_cell_and_lights_what_a_token_attends_to(browser, page):
    url, data, _, _ = page
    n = wrong_example(data)
    ex = data["examples"][n]
    k_wrong = ex["first_wrong"]
    browser.load(f"{url}#example={n + 1}&kind=cross&layer=1&head=1")
    w = ex["weights"]["cross"][0][0][k_wrong][1]
    readout = point(browser, f'#matrix td[data-q="{k_wrong}"][data-k="1"]')
    assert f"answer position {k_wrong} (writes {ex['answer'][k_wrong]})" in readout
    assert f"input position 1 ({ex['input'][1]})" in readout and f"weight {w:.4f}" in readout
    assert browser.js(f'document.querySelector(\'#matrix th.row[data-q="{k_wrong}"]\').classList.contains("wrong")')
    readout = point(browser, f'#matrix th.row[data-q="{k_wrong}"]')          # a query token: what it attends to
    assert "attends most to" in readout and browser.js('document.getElementById("matrix").classList.contains("focus")')
    assert sorted(lit_cells(browser)) == [(k_wrong, k) for k in range(len(ex["input"]))]
    browser.load(f"{url}#example={n + 1}&kind=encoder_self&layer=1&head=1")
    readout = point(browser, '#matrix th.col[data-k="2"]')                  # self-attention: its column and row
    assert "is attended most by" in readout and "; it attends most to" in readout
    T = len(ex["input"])
    assert sorted(lit_cells(browser)) == sorted({(q, k) for q in range(T) for k in range(T) if q == 2 or k == 2})


def test_masked_cells_are_drawn_masked_not_as_zero(browser, page):
    url, data, _, _ = page
    n = next(i for i, ex in enumerate(data["examples"]) if "." in ex["input"])   # with PAD keys
    ex = data["examples"][n]
    browser.load(f"{url}#example={n + 1}&kind=decoder_self&layer=1&head=1")
    cells = browser.js("""[...document.querySelectorAll("#matrix td")].map((td) => [+td.dataset.q,
        +td.dataset.k, td.classList.contains("masked"), getComputedStyle(td).backgroundImage,
        getComputedStyle(td).backgroundColor])""")
    for q, k, masked, image, colour in cells:
        assert masked == (k > q), (q, k)                                     # above the diagonal
        assert ("repeating-linear-gradient" in image) == masked              # hatched
        assert (colour == "rgba(0, 0, 0, 0)") == masked                     # no weight colour on a masked cell
    T = len(ex["answer"])
    pixel = browser.js(f"""(() => {{ const c = document.querySelector(
        'canvas[data-kind="decoder_self"][data-layer="0"][data-head="0"]');   // query 0, the last key
        return [...c.getContext("2d").getImageData(Math.floor(({T} - 1) * c.width / {T}) + 1, 1, 1, 1).data]
            .slice(0, 3); }})()""")
    assert tuple(pixel) == MASKED_RGB != ZERO_RGB                            # the small map: grey, not weight 0
    pad_keys = [k for k, t in enumerate(ex["input"]) if t == "."]
    browser.load(f"{url}#example={n + 1}&kind=cross&layer=1&head=1")
    masked = browser.js('[...document.querySelectorAll("#matrix td.masked")].map((td) => +td.dataset.k)')
    assert set(masked) == set(pad_keys) and len(masked) == len(pad_keys) * len(ex["answer"])
    assert "masked: the mask forbids this key" in browser.js('document.querySelector(".legend").textContent')


def test_the_address_keeps_the_view_and_restores_it(browser, page):
    url, data, _, _ = page
    browser.load(url)
    browser.js('document.querySelector(\'#examples tr[data-example="2"]\').click()')
    browser.until('location.hash.startsWith("#example=3&")')
    browser.js('document.querySelector(\'canvas[data-kind="decoder_self"][data-layer="1"][data-head="1"]\').'
               'parentElement.click()')
    browser.until('location.hash === "#example=3&kind=decoder_self&layer=2&head=2"')
    linked = view(browser)
    browser.load(url + linked["hash"])                                      # a fresh load of the link
    restored = view(browser)
    assert (restored["kind"], restored["layer"], restored["head"], restored["example"]) == ("decoder_self", 1, 1, 2)
    assert restored["rows"] == linked["rows"] and restored["title"] == linked["title"]
    browser.load(url + "#example=99&kind=nonsense&layer=-1&head=x")        # a bad link: the first view
    assert view(browser)["hash"] == "#example=99&kind=nonsense&layer=-1&head=x"
    assert (view(browser)["kind"], view(browser)["example"]) == ("cross", 0)


def test_nothing_leaves_the_page_and_nothing_goes_wrong_in_it(browser, page):
    url, data, _, _ = page
    browser.requests.clear()
    browser.problems.clear()
    browser.load(url)
    browser.js("""(async () => {
        for (const row of document.querySelectorAll("#examples tbody tr")) {
            row.click(); await new Promise((r) => setTimeout(r, 0));
            for (const b of document.querySelectorAll("button.thumb")) {
                b.click(); await new Promise((r) => setTimeout(r, 0));
            }
            for (const node of document.querySelectorAll("#matrix td, #matrix th"))
                node.dispatchEvent(new MouseEvent("mouseover", {bubbles: true}));
        }
        document.getElementById("numbers").click(); })()""", timeout=30)
    assert set(browser.requests) == {url}                                   # the page's own file, nothing else
    assert browser.problems == []                                           # no error, exception, CSP violation


def test_a_screenshot_is_not_blank(browser, page):
    import matplotlib.image

    url, _, _, _ = page
    browser.load(url)
    png = base64.b64decode(browser.send("Page.captureScreenshot", {"format": "png"})["data"])
    pixels = matplotlib.image.imread(io.BytesIO(png), format="png")[..., :3]
    colours = {tuple(p) for p in (pixels[::4, ::4].reshape(-1, 3) * 255).round().astype(int).tolist()}
    assert pixels.shape[:2] == (900, 1280) and len(colours) > 20


def test_without_javascript_the_first_examples_cross_attention_shows_as_tables(browser, page):
    url, data, _, _ = page
    browser.send("Emulation.setScriptExecutionDisabled", {"value": True})
    try:
        browser.load(url)
        shown = browser.js("""(() => { const s = document.getElementById("static");
            return {visible: !s.hidden && s.offsetHeight > 0, app: document.getElementById("app").hidden,
                    why: document.body.innerText.includes("Scripts are off"),
                    tables: [...s.querySelectorAll("table")].map((t) => [...t.querySelectorAll("tbody tr")].map(
                        (tr) => [...tr.querySelectorAll("td")].map((td) => td.textContent)))}; })()""")
    finally:
        browser.send("Emulation.setScriptExecutionDisabled", {"value": False})
    assert shown["visible"] and shown["app"] and shown["why"]
    cross = data["examples"][0]["weights"]["cross"][0]                      # layer 1, every head
    assert shown["tables"] == [[[f"{w:.2f}" for w in row] for row in head] for head in cross]

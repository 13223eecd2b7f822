"""The report page as a browser shows it: a headless Chromium driven over the DevTools protocol.

Owned by the tests (the browser test, and ``benchmarks/report_screenshot.py`` imports it from
here); not part of the package, which never drives a browser.
The protocol runs over a pipe (``--remote-debugging-pipe``: the browser reads commands on its fd 3
and answers on fd 4), so no port is opened and nothing beyond the standard library is needed.
The browser is Debian's ``chromium`` package (no browser is downloaded at run time).
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

from tsearch.errors import TsearchError

EXECUTABLES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
INSTALL_HINT = ("Chromium is not installed: `apt-get install -y chromium` (Debian; CI's .ci/run "
                "does it), or set TSEARCH_CHROMIUM to a Chromium/Chrome executable")
FLAGS = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe",
    "--no-first-run", "--no-default-browser-check", "--disable-extensions",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-default-apps", "--mute-audio", "--hide-scrollbars", "--force-color-profile=srgb",
)

# What the page shows once loaded: every <img> (decoded, size, box, visibility) and every table's
# rendered cell texts. Boxes are in page coordinates (CSS px from the top left of the document).
INSPECT_JS = """
(async () => {
  const imgs = Array.from(document.images);
  const decoded = await Promise.all(imgs.map(i => i.decode().then(() => true, () => false)));
  const doc = document.documentElement;
  const box = el => {
    const r = el.getBoundingClientRect();
    return {x: r.left + scrollX, y: r.top + scrollY, width: r.width, height: r.height};
  };
  const style = el => {
    const s = getComputedStyle(el);
    return {display: s.display, visibility: s.visibility, opacity: s.opacity,
            shown: el.checkVisibility({checkOpacity: true, checkVisibilityCSS: true})};
  };
  const headings = t => {
    let h2 = null, h3 = null;
    for (let e = t.previousElementSibling; e; e = e.previousElementSibling) {
      if (!h3 && e.tagName === 'H3') h3 = e.innerText.trim();
      if (e.tagName === 'H2') { h2 = e.innerText.trim(); break; }
    }
    return {section: h2, heading: h3};
  };
  return {
    page: {width: doc.scrollWidth, height: doc.scrollHeight, viewport: innerWidth,
           title: document.title},
    images: imgs.map((img, i) => ({
      index: i, alt: img.alt, complete: img.complete, decoded: decoded[i],
      naturalWidth: img.naturalWidth, naturalHeight: img.naturalHeight,
      ...box(img), ...style(img)})),
    tables: Array.from(document.querySelectorAll('table')).map(t => ({
      className: t.className, ...headings(t), ...box(t), ...style(t),
      rows: Array.from(t.rows).map(r => Array.from(r.cells).map(c => ({
        text: c.innerText.trim(), bold: c.querySelector('b') !== null,
        shown: c.checkVisibility({checkOpacity: true, checkVisibilityCSS: true}),
        width: c.getBoundingClientRect().width, height: c.getBoundingClientRect().height})))})),
  };
})()
"""


class BrowserError(TsearchError):
    """Chromium is missing, did not start, or a DevTools command failed."""


def find_chromium() -> str | None:
    """The browser to drive: ``$TSEARCH_CHROMIUM`` if set, else the first one on PATH."""
    if os.environ.get("TSEARCH_CHROMIUM"):
        return shutil.which(os.environ["TSEARCH_CHROMIUM"])
    return next((p for p in map(shutil.which, EXECUTABLES) if p), None)


def _high_fd(fd: int) -> int:
    """``fd`` moved to 10 or above, so mapping two of them onto fds 3 and 4 cannot clobber one."""
    new = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return new


class Chromium:
    """One headless Chromium with one page, as a context manager.

    The browser runs in its own session; :meth:`close` ends its whole process group (the
    renderer and helper processes too) by the launch PID and removes its temporary profile.
    """

    def __init__(self, executable: str | None = None, *, width: int = 1200, height: int = 900,
                 timeout: float = 60.0) -> None:
        self.executable = executable or find_chromium()
        if self.executable is None:
            raise BrowserError(INSTALL_HINT)
        self.width, self.height, self.timeout = width, height, timeout
        self.pid: int | None = None
        self._next_id = 0
        self._buffer = b""
        self._events: list[dict[str, Any]] = []
        self._session: str | None = None

    def __enter__(self) -> Chromium:
        try:
            self.start()
        except BaseException:  # a browser that started but did not answer is stopped too
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        self.profile = tempfile.mkdtemp(prefix="tsearch-chromium-")
        self.log = Path(self.profile) / "chromium.log"
        cmd_r, self._cmd_w = os.pipe()
        self._out_r, out_w = os.pipe()
        cmd_r, out_w = _high_fd(cmd_r), _high_fd(out_w)
        argv = [self.executable, *FLAGS, f"--user-data-dir={self.profile}",
                f"--window-size={self.width},{self.height}", "about:blank"]
        actions = [(os.POSIX_SPAWN_DUP2, cmd_r, 3), (os.POSIX_SPAWN_DUP2, out_w, 4),
                   (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                   (os.POSIX_SPAWN_OPEN, 1, str(self.log), os.O_WRONLY | os.O_CREAT, 0o644),
                   (os.POSIX_SPAWN_DUP2, 1, 2)]
        try:
            self.pid = os.posix_spawn(self.executable, argv, os.environ, file_actions=actions,
                                      setsid=True)
        finally:
            os.close(cmd_r)
            os.close(out_w)
        targets = self.call("Target.getTargets", session=False)["targetInfos"]
        page = next((t["targetId"] for t in targets if t["type"] == "page"), None)
        if page is None:
            page = self.call("Target.createTarget", {"url": "about:blank"},
                             session=False)["targetId"]
        self._session = self.call("Target.attachToTarget", {"targetId": page, "flatten": True},
                                  session=False)["sessionId"]
        self.call("Page.enable")
        self.call("Emulation.setDeviceMetricsOverride",
                  {"width": self.width, "height": self.height, "deviceScaleFactor": 1,
                   "mobile": False})

    def close(self) -> None:
        """Ask the browser to quit, then end its process group whatever it answered."""
        if self.pid is not None:
            try:
                self.call("Browser.close", session=False, timeout=5)
            except (BrowserError, OSError):
                pass
            self._stop_group()
        for fd in ("_cmd_w", "_out_r"):
            if getattr(self, fd, None) is not None:
                os.close(getattr(self, fd))
                setattr(self, fd, None)
        if getattr(self, "profile", None):
            shutil.rmtree(self.profile, ignore_errors=True)

    def _stop_group(self) -> None:
        """Wait for the main process to quit, then TERM, then KILL its group; reap it."""
        assert self.pid is not None
        for sig in (None, signal.SIGTERM, signal.SIGKILL):
            if sig is not None:
                try:
                    os.killpg(self.pid, sig)
                except ProcessLookupError:
                    pass
            if self._exited(within=5.0):
                break
        try:  # helpers that outlived the main process share its group
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.pid = None

    def _exited(self, within: float) -> bool:
        assert self.pid is not None
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            try:
                if os.waitpid(self.pid, os.WNOHANG)[0]:
                    return True
            except ChildProcessError:
                return True
            time.sleep(0.05)
        return False

    # --- the protocol ----------------------------------------------------------------------

    def _failure(self, what: str) -> BrowserError:
        tail = ""
        if self.log.is_file():
            lines = [x for x in self.log.read_text(errors="replace").splitlines() if x.strip()]
            tail = " | ".join(lines[-3:])
        return BrowserError(f"Chromium ({self.executable}) {what}" + (f": {tail}" if tail else ""))

    def _read_message(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._out_r], [], [], left)[0]:
                raise self._failure(f"did not answer within {self.timeout:g} s")
            chunk = os.read(self._out_r, 1 << 20)
            if not chunk:
                raise self._failure("exited")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)

    def call(self, method: str, params: dict[str, Any] | None = None, *, session: bool = True,
             timeout: float | None = None) -> dict[str, Any]:
        """One DevTools command (to the page unless ``session=False``); returns its result."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = self._session
        data = json.dumps(message).encode() + b"\0"
        try:
            while data:
                data = data[os.write(self._cmd_w, data):]
        except BrokenPipeError:
            raise self._failure("exited") from None
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") != self._next_id:
                if "method" in reply:
                    self._events.append(reply)
                continue
            if "error" in reply:
                raise BrowserError(f"{method}: {reply['error'].get('message', reply['error'])}")
            return reply.get("result", {})

    def wait_event(self, method: str) -> dict[str, Any]:
        deadline = time.monotonic() + self.timeout
        while True:
            for event in self._events:
                if event["method"] == method and event.get("sessionId") == self._session:
                    self._events.remove(event)
                    return event.get("params", {})
            message = self._read_message(deadline)
            if "method" in message:
                self._events.append(message)

    # --- what a test or a script asks of the page --------------------------------------------

    def open(self, path_or_url: str | Path) -> None:
        """Load a page (a file path or a URL) and wait for its load event (images included)."""
        url = str(path_or_url)
        if "://" not in url:
            url = Path(url).resolve().as_uri()
        self._events.clear()
        result = self.call("Page.navigate", {"url": url})
        if result.get("errorText"):
            raise BrowserError(f"cannot open {url}: {result['errorText']}")
        self.wait_event("Page.loadEventFired")

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (promises are awaited)."""
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": True})
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise BrowserError(f"JavaScript error: {text}")
        return result["result"].get("value")

    def screenshot(self, path: str | Path, *, max_height: int | None = None) -> Path:
        """The whole page (or its top ``max_height`` CSS px) as a PNG at ``self.width`` px wide."""
        size = self.call("Page.getLayoutMetrics")["cssContentSize"]
        height = size["height"] if max_height is None else min(size["height"], max_height)
        shot = self.call("Page.captureScreenshot", {
            "format": "png", "captureBeyondViewport": True, "fromSurface": True,
            "clip": {"x": 0, "y": 0, "width": self.width, "height": height, "scale": 1}})
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(base64.b64decode(shot["data"]))
        return out


def inspect_page(page: str | Path, *, screenshot: str | Path | None = None, width: int = 1200,
                 max_height: int | None = None, executable: str | None = None) -> dict[str, Any]:
    """Open a report page in headless Chromium and return what it shows (:data:`INSPECT_JS`):
    ``page`` (scroll size, viewport width, title), ``images`` and ``tables``; with
    ``screenshot``, also save the page as a PNG there."""
    with Chromium(executable, width=width) as browser:
        browser.open(page)
        shown = browser.evaluate(INSPECT_JS)
        if screenshot is not None:
            browser.screenshot(screenshot, max_height=max_height)
    return shown

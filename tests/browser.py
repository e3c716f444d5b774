"""Headless Chromium for browser tests: Debian's ``/usr/bin/chromium`` driven by Playwright.

Playwright's own browser downloads need a download site the project's machines do not reach, so
tests launch the system Chromium through ``executable_path``. Use::

    from tests.browser import launch_chromium, static_server

    @pytest.fixture(scope="module")
    def browser():
        with launch_chromium() as b:
            yield b

A missing Chromium or Playwright skips the test with the reason, or fails it when
``REQUIRE_SERVICES=1`` (as CI runs), through ``conftest.unavailable``.

``WorkerPage`` drives the hashing worker (registry/web/static/js/hash/worker.js) the way the
submit page does: a file is picked in an ``<input type=file>`` (from bytes in memory, never
from disk) and posted to the worker; every message the worker sends back is returned.

``static_server()`` serves ``registry/web/static`` under ``/static/`` (the path the Flask app
serves it from) plus, optionally, the files of one test folder under ``/files/``, on a
loopback port, from a thread of the test process. Module workers need a same-origin page: ``/``
answers a blank HTML page.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from registry.config import Settings
from registry.web.site import CSP, WORKER_CSP, WORKER_SCRIPT
from tests.conftest import unavailable

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page, Request

ROOT = Path(__file__).resolve().parent.parent
STATIC = ROOT / "registry" / "web" / "static"
DEFAULT_CHROMIUM = "/usr/bin/chromium"
# A closed network refuses Chromium's background connections many at a time: turn them off.
CHROMIUM_ARGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--no-first-run",
    "--disable-component-update",
    "--disable-sync",
)
BLANK_PAGE = b"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>test</title>" \
             b"</head><body></body></html>"


def chromium_path() -> str | None:
    """The Chromium executable tests use (``CHROMIUM_PATH`` overrides), or None if absent."""
    wanted = os.environ.get("CHROMIUM_PATH")
    for path in [wanted] if wanted else [DEFAULT_CHROMIUM, shutil.which("chromium")]:
        if path and os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


def require_chromium() -> str:
    """The Chromium path; skips (or fails under REQUIRE_SERVICES=1) when Chromium or the
    Playwright package is missing."""
    path = chromium_path()
    if path is None:
        where = os.environ.get("CHROMIUM_PATH") or DEFAULT_CHROMIUM
        unavailable("Chromium", f"{where} is missing; `make test` installs the Debian packages "
                    "chromium and fonts-nanum when run as root")
    if importlib.util.find_spec("playwright") is None:
        unavailable("Playwright", "the playwright package is not installed (pip install -e "
                    "'.[dev]')")
    assert path is not None
    return path


@contextmanager
def launch_chromium(**launch_options: Any) -> Iterator[Browser]:
    """A headless Chromium for the duration of the block (a fresh profile each time)."""
    path = require_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        # Playwright gives every launch() a new temporary --user-data-dir of its own.
        browser = pw.chromium.launch(executable_path=path, headless=True,
                                     args=list(CHROMIUM_ARGS), **launch_options)
        try:
            yield browser
        finally:
            browser.close()


class _Handler(SimpleHTTPRequestHandler):
    extensions_map: ClassVar[dict[str, str]] = {
        **SimpleHTTPRequestHandler.extensions_map, ".js": "text/javascript",
        ".mjs": "text/javascript"}

    def __init__(self, *args: Any, files: Path | None, log: list[str] | None,
                 **kwargs: Any) -> None:
        self.files = files
        self.log = log
        super().__init__(*args, **kwargs)

    def translate_path(self, path: str) -> str:
        route = path.split("?", 1)[0].split("#", 1)[0]
        if route.startswith("/static/"):
            return str(_inside(STATIC, route[len("/static/"):]))
        if route.startswith("/files/") and self.files is not None:
            return str(_inside(self.files, route[len("/files/"):]))
        return str(STATIC / "__missing__")

    def do_GET(self) -> None:
        if self.path in ("/", "/index.html"):
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(BLANK_PAGE)))
            self.end_headers()
            self.wfile.write(BLANK_PAGE)
            return
        super().do_GET()

    def end_headers(self) -> None:
        self.send_header("Cache-Control", "no-store")
        if self.path.startswith("/static/"):  # the policies the app gives its static files
            worker = self.path.split("?", 1)[0] == "/static/" + WORKER_SCRIPT
            self.send_header("Content-Security-Policy", WORKER_CSP if worker else CSP)
        super().end_headers()

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        if self.log is not None:
            self.log.append(f"{self.command} {self.path}")

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _inside(base: Path, rel: str) -> Path:
    target = (base / rel).resolve()
    return target if target.is_relative_to(base.resolve()) else base / "__missing__"


@contextmanager
def static_server(files: Path | None = None, log: list[str] | None = None) -> Iterator[str]:
    """Serve the static folder (and ``files`` under /files/) on loopback; yields the base URL
    (``http://127.0.0.1:PORT``). Every request answered is appended to ``log`` as
    ``"METHOD /path"`` when a list is given."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Handler, files=files, log=log))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="static-server", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


# Runs in the test page: one worker, one file input, and window.hashPicked() -> {messages, ms};
# the worker is given `limits` with every file, as the submit page gives it the server's.
_WORKER_PAGE = """(limits) => {
  const input = document.createElement('input');
  input.type = 'file';
  input.id = 'picked';
  document.body.append(input);
  const worker = new Worker('/static/js/hash/worker.js', {type: 'module'});
  const pending = new Map();
  let next = 0;
  worker.onmessage = (event) => {
    const job = pending.get(event.data.id);
    if (!job) return;
    job.messages.push(event.data);
    if (event.data.type !== 'progress') {
      pending.delete(event.data.id);
      job.resolve({messages: job.messages, ms: performance.now() - job.started});
    }
  };
  worker.onerror = (event) => {
    for (const job of pending.values()) job.reject(new Error('worker failed: ' + event.message));
    pending.clear();
  };
  window.hashPicked = () => new Promise((resolve, reject) => {
    const id = 'job-' + (++next);
    pending.set(id, {messages: [], resolve, reject, started: performance.now()});
    worker.postMessage({id, file: input.files[0], limits});
  });
}"""


class WorkerPage:
    """A page of ``base_url``'s origin running the hashing worker; records every request the
    page and its worker make (``requests``). ``limits`` ({maxBytes, maxPixels}) default to the
    settings' defaults, as the submit page would give them; ``None`` values are sent as such."""

    def __init__(self, browser: Browser, base_url: str,
                 limits: dict[str, int | None] | None = None) -> None:
        if limits is None:
            defaults = Settings()
            limits = {"maxBytes": defaults.max_upload_bytes,
                      "maxPixels": defaults.max_image_pixels}
        self.page: Page = browser.new_page()
        self.requests: list[str] = []
        self.page.on("request", self._record)
        self.page.goto(base_url + "/")
        self.page.evaluate(_WORKER_PAGE, limits)

    def _record(self, request: Request) -> None:
        self.requests.append(request.url)

    def hash(self, name: str, data: bytes, mime: str = "application/octet-stream"
             ) -> tuple[list[dict[str, Any]], float]:
        """Pick ``data`` as a file named ``name`` and hash it in the worker: (messages, ms)."""
        self.page.set_input_files("#picked", files=[{"name": name, "mimeType": mime,
                                                     "buffer": data}])
        out = self.page.evaluate("() => window.hashPicked()")
        return list(out["messages"]), float(out["ms"])

    def close(self) -> None:
        self.page.close()

"""One source for every limit: each edge run with settings other than the defaults.

The query count, the body and image sizes and the decode options are settings
(``registry.config``); the API, its OpenAPI document, the CLI client, the submit page (which
hands them to the browser worker, tests/test_browser_hashing.py) and the decoder all read them.
An edge that kept a copy of a default would fail here: every value below differs from it.
"""

from __future__ import annotations

import io
import json
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest
from werkzeug.serving import make_server

from cli import client
from registry.bootstrap import build_registry
from registry.config import Settings, default
from registry.domain import Scope
from registry.errors import FileTooLarge, ImageTooLarge
from registry.hashing import DecodeOptions, compute_signals
from registry.hashing.decode import decode_image
from registry.web import create_app
from tests.conftest import FAST_KDF, encode, photo

ROOT = Path(__file__).resolve().parent.parent
PDQ = "f" * 32 + "0" * 32


@pytest.fixture
def odd(tmp_path: Path) -> Iterator[tuple[Settings, object, str]]:
    """An app whose limits are all off their defaults: 1,500 queries, 300 KB, 400,000 pixels,
    JPEG drafts to 256 px."""
    settings = Settings.from_env({}, data_dir=str(tmp_path / "data"), pin_kdf_n=FAST_KDF,
                                 max_queries=1500, max_upload_bytes=300_000,
                                 max_image_pixels=400_000, jpeg_draft_size=256)
    registry = build_registry(settings)
    key = registry.add_platform("alpha", [Scope.MATCH])[1]
    yield settings, create_app(registry), key
    registry.close()


def test_the_odd_settings_differ_from_every_default():
    for name, value in (("max_queries", 1500), ("max_upload_bytes", 300_000),
                        ("max_image_pixels", 400_000), ("jpeg_draft_size", 256)):
        assert default(name) != value, name


def _queries(n: int) -> dict[str, object]:
    return {"queries": [{"id": str(i), "signals": {"pdq": PDQ}} for i in range(n)]}


def test_the_api_takes_as_many_queries_as_the_setting_says(odd):
    # The bug this issue found: TAKEDOWN_MAX_QUERIES=1500 still answered 422 to 1,200 queries.
    _, app, key = odd
    http = app.test_client()
    headers = {"Authorization": f"Bearer {key}"}
    ok = http.post("/api/v1/match", json=_queries(1200), headers=headers)
    assert ok.status_code == 200, ok.get_json()
    assert len(ok.get_json()["results"]) == 1200
    edge = http.post("/api/v1/match", json=_queries(1500), headers=headers)
    assert edge.status_code == 200
    over = http.post("/api/v1/match", json=_queries(1501), headers=headers)
    assert over.status_code == 422
    assert "between 1 and 1500" in over.get_json()["error"]["message"]


def test_the_openapi_document_states_the_setting(odd):
    settings, app, _ = odd
    spec = app.test_client().get("/api/openapi.json").get_json()
    queries = spec["components"]["schemas"]["MatchRequest"]["properties"]["queries"]
    assert queries["maxItems"] == settings.max_queries == 1500
    assert queries["minItems"] == 1


def test_the_api_refuses_a_body_past_the_upload_setting(odd):
    settings, app, key = odd
    body = b"{" + b" " * (settings.max_upload_bytes + 128 * 1024) + b"}"
    answer = app.test_client().post("/api/v1/match", data=body, headers={
        "Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    assert answer.status_code == 413


def test_the_api_decodes_with_the_pixel_setting(odd):
    settings, app, key = odd
    big = encode(photo(3, (800, 600)))  # 480,000 pixels: over 400,000, in under 300 KB
    assert len(big) < settings.max_upload_bytes
    answer = app.test_client().post(
        "/api/v1/match/image", data={"file": (io.BytesIO(big), "big.jpg")},
        headers={"Authorization": f"Bearer {key}"}, content_type="multipart/form-data")
    assert answer.status_code == 413, answer.get_json()
    assert answer.get_json()["error"]["code"] == "image_too_large"
    assert "400000 pixels" in answer.get_json()["error"]["message"]


def test_decode_options_come_from_the_settings(odd):
    settings, _, _ = odd
    options = DecodeOptions.of(settings)
    assert (options.max_pixels, options.max_bytes, options.draft_size) == (400_000, 300_000, 256)
    plain = DecodeOptions()
    assert (plain.max_pixels, plain.max_bytes, plain.draft_size) == (
        default("max_image_pixels"), default("max_upload_bytes"), default("jpeg_draft_size"))
    with pytest.raises(ImageTooLarge):
        decode_image(encode(photo(4, (800, 600))), options)
    with pytest.raises(FileTooLarge):
        decode_image(b"\x89PNG" + bytes(300_001), options)
    assert compute_signals(encode(photo(4, (640, 480))), options).pdq_quality >= 50


def test_the_submit_page_hands_the_worker_the_settings(odd):
    settings, app, _ = odd
    page = app.test_client().get("/submit?lang=en").get_data(as_text=True)
    form = re.search(r'<form id="submit-form"[^>]*>', page, re.S)
    assert form is not None
    assert f'data-max-bytes="{settings.max_upload_bytes}"' in form.group(0)
    assert f'data-max-pixels="{settings.max_image_pixels}"' in form.group(0)
    # and submit.js passes them with every file it asks the worker to hash
    script = (ROOT / "registry/web/static/js/submit.js").read_text()
    assert "Number(form.dataset.maxBytes)" in script and "Number(form.dataset.maxPixels)" in script
    assert "worker.postMessage({ id, file, limits })" in script


class _Registry(BaseHTTPRequestHandler):
    """A stand-in registry: its OpenAPI document says ``most`` queries; /match echoes ids."""

    most: ClassVar[int | None] = 3
    seen: ClassVar[list[int]] = []

    def do_GET(self) -> None:
        if self.path != "/api/openapi.json" or _Registry.most is None:
            self.send_error(404)
            return
        spec = {"components": {"schemas": {"MatchRequest": {"properties": {
            "queries": {"maxItems": _Registry.most}}}}}}
        self._send(spec)

    def do_POST(self) -> None:
        ids = [q["id"] for q in json.loads(self.rfile.read(
            int(self.headers["Content-Length"])))["queries"]]
        _Registry.seen.append(len(ids))
        self._send({"results": [{"id": i, "matched": False, "matches": []} for i in ids]})

    def _send(self, payload: object) -> None:
        data = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def stand_in() -> Iterator[str]:
    _Registry.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Registry)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_the_cli_client_batches_by_what_the_registry_says(stand_in):
    _Registry.most = 3
    most = client.most_queries(stand_in, fallback=1000)
    assert most == 3
    queries = [{"id": str(i), "signals": {"pdq": PDQ}} for i in range(7)]
    out = client.match(stand_in, "trk_x", queries, most=most)
    assert [r["id"] for r in out] == [str(i) for i in range(7)]
    assert _Registry.seen == [3, 3, 1]


def test_the_cli_client_falls_back_to_this_machines_setting(stand_in):
    _Registry.most = None  # no OpenAPI document
    assert client.most_queries(stand_in, fallback=1500) == 1500
    assert client.most_queries("http://127.0.0.1:9", fallback=7) == 7  # nothing listening


def test_the_cli_client_cuts_batches_at_the_body_limit(stand_in):
    _Registry.most = 1000
    queries = [{"id": str(i), "signals": {"local": "A" * 40_000}} for i in range(10)]
    client.match(stand_in, "trk_x", queries, most=1000, max_bytes=100_000)
    assert _Registry.seen and max(_Registry.seen) <= 2 and sum(_Registry.seen) == 10


def test_the_cli_client_reads_the_real_registrys_setting(odd):
    _, app, _ = odd
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        assert client.most_queries(f"http://127.0.0.1:{server.port}", fallback=1000) == 1500
    finally:
        server.shutdown()

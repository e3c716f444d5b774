"""``takedown match --url``'s client on its own: retries on 429/503, numbered queries, and what
it leaves out of a query (against a stand-in HTTP server; tests/test_api_live.py runs the real
one)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest

from cli import client
from registry.domain import Signal, SignalKind
from registry.errors import DegenerateHash
from registry.hashing import compute_signals
from tests.conftest import encode, photo
from tests.images import png_bytes


class Scripted(BaseHTTPRequestHandler):
    """Answers POST /api/v1/match with the next scripted status; 200 echoes the query ids."""

    script: ClassVar[list[tuple[int, dict[str, str]]]] = []
    seen: ClassVar[list[list[str]]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        ids = [q["id"] for q in body["queries"]]
        Scripted.seen.append(ids)
        status, headers = Scripted.script.pop(0) if Scripted.script else (200, {})
        payload = ({"results": [{"id": i, "matched": False, "matches": []} for i in ids]}
                   if status == 200 else
                   {"error": {"code": "rate_limited", "message": "slow down"}})
        data = json.dumps(payload).encode()
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def stand_in() -> Iterator[str]:
    Scripted.script, Scripted.seen = [], []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Scripted)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_429_and_503_are_retried_after_retry_after(stand_in):
    Scripted.script = [(429, {"Retry-After": "3"}), (503, {}), (200, {})]
    waits: list[float] = []
    out = client.match(stand_in, "trk_x", [{"id": "0", "signals": {}}], most=1000,
                       sleep=waits.append)
    assert [r["id"] for r in out] == ["0"]
    assert waits == [3.0, 2.0]  # Retry-After, then backoff 2**1
    assert len(Scripted.seen) == 3


def test_retries_are_bounded_and_then_a_clear_error(stand_in):
    Scripted.script = [(503, {"Retry-After": "999"})] * (client.RETRIES + 1)
    waits: list[float] = []
    with pytest.raises(client.ApiError, match="503"):
        client.match(stand_in, "trk_x", [{"id": "0", "signals": {}}], most=1000, sleep=waits.append)
    assert waits == [client.MAX_WAIT_S] * client.RETRIES


def test_other_errors_are_not_retried(stand_in):
    Scripted.script = [(422, {})]
    with pytest.raises(client.ApiError, match="422"):
        client.match(stand_in, "trk_x", [{"id": "0", "signals": {}}], most=1000,
                     sleep=lambda s: None)
    assert len(Scripted.seen) == 1


def test_a_query_leaves_out_hashes_the_registry_would_refuse():
    from PIL import Image

    tiny = compute_signals(png_bytes(Image.new("RGB", (1, 1), (200, 10, 10))))
    q = client.query_json("0", tiny, 50)
    assert set(q["signals"]) == {"md5", "sha256"}  # its PDQ and pHash are degenerate
    good = client.query_json("1", compute_signals(encode(photo(5))), 50)
    assert {"pdq", "phash", "md5", "sha256"} <= set(good["signals"])


def test_a_query_with_nothing_usable_is_refused_for_that_file_alone():
    from PIL import Image

    tiny = compute_signals(png_bytes(Image.new("RGB", (1, 1), (200, 10, 10))))
    # Digests the registry refuses too (all zero bytes) leave nothing to send.
    object.__setattr__(tiny, "md5", Signal(SignalKind.MD5, bytes(16)))
    object.__setattr__(tiny, "sha256", Signal(SignalKind.SHA256, bytes(32)))
    with pytest.raises(DegenerateHash):
        client.query_json("0", tiny, 50)

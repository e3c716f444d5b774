"""The uploaded image never touches the disk (SPEC promise 1).

Werkzeug spools multipart files over 500 KB to temporary files; the app's request class keeps
them in memory. While a large upload is handled, the temporary directory must stay empty and no
new descriptor to a regular file may be open. The watch is proved able to see a spooled file by
running it once against Flask's stock request class.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import tempfile
from pathlib import Path

import flask
import pytest

from registry.domain import Scope
from registry.service import Registry, SubmittedImage
from registry.web import InMemoryRequest, create_app
from tests.conftest import encode, photo

BOUNDARY = "takedown-test-7c3f0e"


def multipart_body(data: bytes, filename: str = "big.png", content_type: str = "image/png"
                   ) -> bytes:
    """A multipart body built by hand: the test client's own encoder spools large bodies to a
    temporary file, which would hide (or fake) what the app does."""
    head = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; "
            f"filename=\"{filename}\"\r\nContent-Type: {content_type}\r\n\r\n").encode()
    return head + data + f"\r\n--{BOUNDARY}--\r\n".encode()


def regular_file_fds() -> dict[int, str]:
    """This process' open descriptors that point at regular files (deleted ones included)."""
    found = {}
    for name in os.listdir("/proc/self/fd"):
        path = f"/proc/self/fd/{name}"
        try:
            target = os.readlink(path)
            mode = os.stat(path).st_mode
        except OSError:  # closed meanwhile (e.g. the listing's own descriptor)
            continue
        if stat.S_ISREG(mode):
            found[int(name)] = target
    return found


@pytest.fixture
def big_png() -> bytes:
    data = encode(photo(21, (1200, 800)), "PNG", compress_level=0)
    assert len(data) > 2 * 1024 * 1024  # far above Werkzeug's 500 KB spooling threshold
    return data


@pytest.fixture
def empty_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setenv("TMPDIR", str(folder))
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    assert tempfile.gettempdir() == str(folder)
    return folder


class Watch:
    """Snapshots of the temp folder and regular-file descriptors around and inside a request;
    ``inside`` is taken while the image is being hashed, after the form has been parsed."""

    def __init__(self, registry: Registry, folder: Path, monkeypatch: pytest.MonkeyPatch
                 ) -> None:
        self.folder = folder
        self.inside: list[tuple[list[str], dict[int, str], str]] = []
        original = registry.hash_image

        def hashing(data: bytes, **kwargs: object):
            stream = flask.request.files["file"].stream
            self.inside.append((sorted(os.listdir(folder)), regular_file_fds(),
                                type(stream).__name__))
            return original(data, **kwargs)

        monkeypatch.setattr(registry, "hash_image", hashing)

    def new_fds(self, before: dict[int, str]) -> dict[int, str]:
        (_, during, _) = self.inside[-1]
        return {fd: target for fd, target in during.items() if before.get(fd) != target}


def post(client, key: str, body: bytes):
    return client.post("/api/v1/match/image", data=body, headers={
        "Authorization": f"Bearer {key}",
        "Content-Type": f"multipart/form-data; boundary={BOUNDARY}"})


def test_a_large_upload_creates_no_temporary_file(registry, big_png, empty_tmp, monkeypatch):
    registry.submit_case([SubmittedImage.from_image(registry.hash_image(big_png,
                                                                        registration=True))])
    expected = registry.hash_image(big_png)
    _, key = registry.add_platform("alpha", [Scope.MATCH])
    app = create_app(registry)
    assert app.request_class is InMemoryRequest
    client = app.test_client()
    watch = Watch(registry, empty_tmp, monkeypatch)
    body = multipart_body(big_png)
    post(client, key, body)  # warm up: database connections, lazy imports

    before = regular_file_fds()
    response = post(client, key, body)
    after = regular_file_fds()

    assert response.status_code == 200, response.data
    listing, _, stream_type = watch.inside[-1]
    assert listing == [], f"files appeared in the temp folder during the upload: {listing}"
    assert watch.new_fds(before) == {}, "a regular file was opened during the upload"
    assert stream_type == "BytesIO"
    assert os.listdir(empty_tmp) == []
    assert {fd: t for fd, t in after.items() if before.get(fd) != t} == {}

    # ...and the bytes were hashed as they are.
    result = response.get_json()
    assert result["signals"]["sha256"] == hashlib.sha256(big_png).hexdigest()
    assert result["signals"]["md5"] == hashlib.md5(big_png).hexdigest()
    assert result["signals"]["pdq"] == expected.pdq.hex
    assert result["signals"]["phash"] == expected.phash.hex
    tiers = {m["signal"]: (m["tier"], m["distance"]) for m in result["matches"]}
    assert tiers == {"pdq": ("strong", 0), "phash": ("strong", 0), "md5": ("exact", 0),
                     "sha256": ("exact", 0)}


def test_the_watch_sees_werkzeugs_default_spooling(registry, big_png, empty_tmp, monkeypatch):
    """Control: with Flask's stock request class the same upload is spooled to a temporary
    file, and the watch above reports it (so its silence means something)."""
    _, key = registry.add_platform("alpha", [Scope.MATCH])
    app = create_app(registry)
    app.request_class = flask.Request
    client = app.test_client()
    watch = Watch(registry, empty_tmp, monkeypatch)
    body = multipart_body(big_png)
    post(client, key, body)

    before = regular_file_fds()
    response = post(client, key, body)
    assert response.status_code == 200
    listing, _, stream_type = watch.inside[-1]
    spooled = watch.new_fds(before)
    assert stream_type != "BytesIO"
    # An unnamed (O_TMPFILE) or deleted file in the temp folder: the listing may stay empty,
    # the descriptor shows it.
    assert listing or any(target.startswith(str(empty_tmp)) for target in spooled.values()), (
        listing, spooled)


def test_small_and_large_uploads_hash_alike(registry, empty_tmp, monkeypatch):
    """The in-memory stream is the whole file whatever its size (no truncation at a chunk or
    spooling boundary)."""
    _, key = registry.add_platform("alpha", [Scope.MATCH])
    client = create_app(registry).test_client()
    for size in [(64, 48), (700, 500), (1100, 800)]:
        data = encode(photo(22, size), "PNG", compress_level=0)
        response = post(client, key, multipart_body(data))
        assert response.status_code == 200, (size, response.data)
        assert response.get_json()["signals"]["sha256"] == hashlib.sha256(data).hexdigest()
    assert os.listdir(empty_tmp) == []


def test_in_memory_request_streams_are_bytesio() -> None:
    environ = {"REQUEST_METHOD": "POST", "wsgi.input": io.BytesIO(b"")}
    request = InMemoryRequest(environ)
    stream = request._get_file_stream(10_000_000, "image/png", "a.png", 10_000_000)
    assert isinstance(stream, io.BytesIO)

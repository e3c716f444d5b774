"""A served registry end to end: ``takedown serve`` in a subprocess, a key from ``takedown
platform add``, an image from ``takedown submit``, then ``takedown match --url`` (hashing locally)
finds a transformed copy, finds nothing for an unrelated image, and fails cleanly on a bad key."""

from __future__ import annotations

import hashlib
import io
import json
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.main import cli
from tests.conftest import FAST_KDF, encode, photo
from tests.test_serve import free_port, serve, stop, wait_for


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    # The CLI in this process and the server share one data folder (serve() uses tmp/data).
    monkeypatch.setenv("TAKEDOWN_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("TAKEDOWN_PIN_KDF_N", str(FAST_KDF))
    monkeypatch.delenv("TAKEDOWN_DATABASE_URL", raising=False)
    monkeypatch.delenv("TAKEDOWN_API_KEY", raising=False)
    port = free_port()
    proc = serve([sys.executable, "-m", "cli", "serve", "--port", str(port)], tmp_path, port)
    try:
        url = f"http://127.0.0.1:{port}"
        assert wait_for(url + "/readyz", proc)["ready"] is True
        yield url
    finally:
        stop(proc)


def takedown(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_match_url_finds_a_transformed_copy_and_not_an_unrelated_image(server, tmp_path):
    original = tmp_path / "original.jpg"
    original.write_bytes(encode(photo(31, (1000, 750)), quality=92))
    copy = tmp_path / "copy.jpg"  # resized and re-encoded at JPEG quality 50
    copy.write_bytes(encode(photo(31, (1000, 750)).resize((500, 375)), quality=50))
    unrelated = tmp_path / "unrelated.jpg"
    unrelated.write_bytes(encode(photo(32, (800, 600)), quality=85))

    added = takedown("platform", "add", "shop", "--json")
    assert added.exit_code == 0, added.output
    key = json.loads(added.output)["key"]
    submitted = takedown("submit", "--json", str(original))
    assert submitted.exit_code == 0, submitted.output
    assert set(json.loads(submitted.output)) >= {"case", "pin"}

    result = takedown("match", "--url", server, "--key", key, "--json", str(copy),
                      str(unrelated))
    assert result.exit_code == 0, result.output
    found, missed = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    assert found["file"] == str(copy) and found["matched"] is True
    signals = {m["signal"]: m for m in found["matches"]}
    assert "pdq" in signals and signals["pdq"]["tier"] in ("strong", "weak")
    for m in found["matches"]:
        assert set(m) >= {"match_id", "signal", "distance", "tier", "bank", "confidence"}
        assert m["bank"] == "submissions" and "case" not in m  # platforms never see cases
    assert missed == {"file": str(unrelated), "matched": False, "matches": []}

    # The same registry over HTTP with an upload of the copy (hashed in memory there).
    data = copy.read_bytes()
    boundary = "live-boundary-5e1"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
            f"filename=\"copy.jpg\"\r\nContent-Type: image/jpeg\r\n\r\n").encode() + data + (
        f"\r\n--{boundary}--\r\n").encode()
    request = urllib.request.Request(server + "/api/v1/match/image", data=body, method="POST",
                                     headers={"Authorization": f"Bearer {key}",
                                              "Content-Type": "multipart/form-data; "
                                                              f"boundary={boundary}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        answer = json.loads(response.read())
    assert answer["matched"] is True
    assert answer["signals"]["sha256"] == hashlib.sha256(data).hexdigest()

    bad = takedown("match", "--url", server, "--key", "trk_wrong", "--json", str(copy))
    assert bad.exit_code == 1
    assert "401" in bad.stderr and "API key" in bad.stderr and "Traceback" not in bad.output
    assert bad.stdout.strip() == ""


def test_match_url_reports_an_unreachable_registry(tmp_path, monkeypatch):
    monkeypatch.setenv("TAKEDOWN_DATA_DIR", str(tmp_path / "data"))
    image = tmp_path / "a.jpg"
    image.write_bytes(encode(photo(33)))
    url = f"http://127.0.0.1:{free_port()}"
    result = takedown("match", "--url", url, "--key", "trk_x", str(image))
    assert result.exit_code == 1
    assert "Cannot reach the registry" in result.stderr and "Traceback" not in result.output


def test_live_errors_keep_the_json_shape(server):
    request = urllib.request.Request(server + "/api/v1/match", data=b"{}", method="POST",
                                     headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 401
    assert refused.value.headers["WWW-Authenticate"].startswith("Bearer")
    body = json.loads(refused.value.read())
    refused.value.close()
    assert body["error"]["code"] == "unauthenticated"


def test_match_url_matches_every_file_around_a_degenerate_one_and_a_long_path(server, tmp_path):
    from PIL import Image

    original = tmp_path / "original.jpg"
    original.write_bytes(encode(photo(34, (900, 600)), quality=92))
    key = json.loads(takedown("platform", "add", "shop2", "--json").output)["key"]
    assert takedown("submit", "--json", str(original)).exit_code == 0
    folder = tmp_path / ("d" * 120)
    folder.mkdir()
    copy = folder / ("c" * 100 + ".jpg")  # a path far longer than a query id may be
    copy.write_bytes(encode(photo(34, (900, 600)).resize((450, 300)), quality=60))
    dot = tmp_path / "dot.png"
    buf = io.BytesIO()
    Image.new("RGB", (1, 1), (9, 9, 9)).save(buf, "PNG")
    dot.write_bytes(buf.getvalue())
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not a jpeg")
    result = takedown("match", "--url", server, "--key", key, "--json", str(dot), str(copy),
                      str(broken))
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    by_file = {line["file"]: line for line in lines}
    assert by_file[str(copy)]["matched"] is True  # the batch was not refused for the others
    assert by_file[str(dot)]["matched"] is False  # digests only: nothing like it registered
    assert by_file[str(broken)]["error"]["code"] == "not_an_image"
    assert result.exit_code == 1  # one file failed
    assert "Traceback" not in result.output

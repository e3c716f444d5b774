"""The ``takedown`` CLI: contract shapes, the submit/match/withdraw story, every bad input."""

from __future__ import annotations

import json

import imagehash
import numpy as np
import pdqhash
import pytest
from click.testing import CliRunner
from PIL import Image

from cli.main import cli
from registry.hashing import DecodeOptions, decode_image
from tests.conftest import FAST_KDF, encode, photo


@pytest.fixture
def run(tmp_path, monkeypatch):
    monkeypatch.setenv("TAKEDOWN_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("TAKEDOWN_PIN_KDF_N", str(FAST_KDF))
    for var in ("TAKEDOWN_DATABASE_URL", "TAKEDOWN_MAX_UPLOAD_BYTES", "TAKEDOWN_MAX_IMAGE_PIXELS"):
        monkeypatch.delenv(var, raising=False)
    runner = CliRunner()

    def invoke(*args: str, input: str | None = None, env: dict[str, str] | None = None):
        return runner.invoke(cli, list(args), input=input, env=env, catch_exceptions=False)

    return invoke


def lines(output: str) -> list[dict]:
    return [json.loads(line) for line in output.splitlines() if line.strip()]


def test_hash_json_equals_the_reference_libraries_on_the_same_pixels(run, write_image):
    path = write_image("a.jpg", photo(1, (1600, 1200)), quality=90)
    png = write_image("b.png", photo(2), "PNG")
    result = run("hash", "--json", str(path), str(png))
    assert result.exit_code == 0, result.output
    for record, file in zip(lines(result.output), (path, png), strict=True):
        assert set(record) >= {"file", "pdq", "pdq_quality", "phash", "md5", "sha256"}
        assert record["file"] == str(file)
        pixels = decode_image(file.read_bytes(), DecodeOptions())
        bits, quality = pdqhash.compute(np.asarray(pixels))
        assert record["pdq"] == f"{int(''.join(map(str, bits)), 2):064x}"
        assert record["pdq_quality"] == quality
        assert record["phash"] == str(imagehash.phash(pixels))
    plain = run("hash", str(path))
    assert plain.exit_code == 0 and "pdq=" in plain.output


def test_submit_match_withdraw_story(run, write_image):
    a = write_image("a.jpg", photo(1, (1200, 900)), quality=90)
    b = write_image("b.jpg", photo(2, (1200, 900)), quality=90)
    copy = write_image("copy.jpg", photo(1, (1200, 900)).resize((600, 450)), quality=55)
    other = write_image("other.jpg", photo(3))
    submitted = run("submit", "--json", str(a), str(b))
    assert submitted.exit_code == 0, submitted.output
    (receipt,) = lines(submitted.output)
    assert set(receipt) >= {"case", "pin"}
    matched = run("match", "--json", str(copy), str(other))
    assert matched.exit_code == 0, matched.output
    hit, miss = lines(matched.output)
    assert hit["file"] == str(copy) and hit["matched"] is True
    pdq = [m for m in hit["matches"] if m["signal"] == "pdq"]
    assert pdq and pdq[0]["tier"] in ("strong", "weak") and isinstance(pdq[0]["distance"], int)
    assert all(m["case"] == receipt["case"] for m in hit["matches"])
    assert set(pdq[0]) == {"match_id", "signal", "distance", "tier", "bank", "confidence", "case"}
    assert miss == {"file": str(other), "matched": False, "matches": []}
    shown = lines(run("case", "show", receipt["case"], "--json").output)[0]
    assert shown["status"] == "active" and shown["signals"]["pdq"] >= 2  # plus views
    withdrawn = run("case", "withdraw", receipt["case"], "--yes", "--json")
    assert withdrawn.exit_code == 0 and lines(withdrawn.output)[0]["status"] == "withdrawn"
    after = lines(run("match", "--json", str(copy)).output)[0]
    assert after == {"file": str(copy), "matched": False, "matches": []}
    again = run("case", "withdraw", receipt["case"], "--yes")
    assert again.exit_code == 1 and "already been withdrawn" in again.stderr


def test_case_withdraw_asks_for_confirmation(run, write_image):
    a = write_image("a.jpg", photo(1))
    number = lines(run("submit", "--json", str(a)).output)[0]["case"]
    declined = run("case", "withdraw", number, input="n\n")
    assert declined.exit_code == 1 and "Aborted" in declined.stderr
    assert lines(run("case", "show", number, "--json").output)[0]["status"] == "active"
    listed = lines(run("case", "list", "--json", "--status", "active").output)
    assert [c["case"] for c in listed] == [number]


def test_case_unlock_and_reset_pin(run, write_image, tmp_path):
    from registry.bootstrap import build_registry
    from registry.config import Settings
    from registry.errors import CaseLocked, WrongPin

    a = write_image("a.jpg", photo(1))
    receipt = lines(run("submit", "--json", str(a)).output)[0]
    settings = Settings.from_env({}, data_dir=str(tmp_path / "data"), pin_kdf_n=FAST_KDF)
    registry = build_registry(settings)
    try:
        for _ in range(settings.pin_max_failures):
            with pytest.raises((WrongPin, CaseLocked)):
                registry.case_status(receipt["case"], "1111-1111-1111", "198.51.100.7")
        unlocked = run("case", "unlock", receipt["case"], "--json")
        assert unlocked.exit_code == 0 and lines(unlocked.output)[0]["cleared"] == 1
        assert registry.case_status(receipt["case"], receipt["pin"], "198.51.100.7")
        declined = run("case", "reset-pin", receipt["case"], input="n\n")
        assert declined.exit_code == 1
        reset = lines(run("case", "reset-pin", receipt["case"], "--yes", "--json").output)[0]
        assert reset["case"] == receipt["case"] and reset["pin"] != receipt["pin"]
        with pytest.raises(WrongPin):
            registry.case_status(receipt["case"], receipt["pin"])
        assert registry.case_status(receipt["case"], reset["pin"]).number == receipt["case"]
    finally:
        registry.close()
    missing = run("case", "unlock", "0000-0000-0000-0")
    assert missing.exit_code != 0 and "Traceback" not in missing.output


def test_quarantine_hold_list_and_release(run, write_image):
    a = write_image("a.jpg", photo(1))
    run("submit", "--json", str(a))
    assert run("quarantine", "list", "--json").output.strip() == ""
    held = run("quarantine", "hold", "1")
    assert held.exit_code == 0, held.output
    (record,) = lines(run("quarantine", "list", "--json").output)
    assert record["id"] == 1
    assert run("quarantine", "hold", "1").exit_code != 0  # already out of matching
    assert run("quarantine", "release", "1").exit_code == 0
    assert run("quarantine", "list", "--json").output.strip() == ""
    assert run("quarantine", "list", "--reported").exit_code == 0


def test_benign_add_suppresses_matches_of_that_picture(run, write_image):
    a = write_image("a.jpg", photo(1))
    run("submit", "--json", str(a))
    assert lines(run("match", "--json", str(a)).output)[0]["matched"] is True
    added = run("benign", "add", "--json", str(a))
    assert added.exit_code == 0, added.output
    assert lines(added.output)[0]["bank"] == "benign"
    after = lines(run("match", "--json", str(a)).output)[0]
    assert {m["signal"] for m in after["matches"]} <= {"local"}


def test_platform_commands(run):
    added = run("platform", "add", "example", "--scope", "match", "--scope", "feed", "--json")
    assert added.exit_code == 0
    record = lines(added.output)[0]
    assert record["platform"] == "example" and record["key"].startswith("trk_")
    assert record["scopes"] == ["feed", "match"]
    listed = lines(run("platform", "list", "--json").output)
    assert listed[0]["platform"] == "example" and "key" not in listed[0]
    assert record["key"] not in run("platform", "list").output
    rotated = lines(run("platform", "rotate", "example", "--json").output)[0]
    assert rotated["key"] != record["key"]
    revoked = lines(run("platform", "revoke", "example", "--json").output)[0]
    assert revoked["status"] == "revoked"


def test_index_commands(run, write_image):
    run("submit", str(write_image("a.jpg", photo(1))))
    rebuilt = run("index", "rebuild", "--json")
    assert rebuilt.exit_code == 0 and lines(rebuilt.output)[0]["indexed"] >= 2  # + PDQ views
    verified = run("index", "verify", "--json")
    assert verified.exit_code == 0 and lines(verified.output)[0]["ok"] is True
    stats = lines(run("index", "stats", "--json").output)[0]
    assert stats["kinds"]["phash"]["live"] == 1 and stats["loaded_from"] == "snapshot"
    assert stats["kinds"]["local"]["signals"] == 1  # the image's keypoints, one signal
    assert stats["kinds"]["pdq"]["live"] == lines(rebuilt.output)[0]["indexed"] - 2
    assert run("index", "snapshot").exit_code == 0
    assert "OK" in run("index", "verify").output
    upgraded = run("db", "upgrade")
    assert upgraded.exit_code == 0 and "revision" in upgraded.output


BAD_FILES = {
    "empty.jpg": (b"", "The file is empty"),
    "text.jpg": (b"hello, this is not an image\n" * 10, "not an image"),
    "trunc.jpg": (None, "truncated"),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
@pytest.mark.parametrize("command", ["hash", "submit", "match"])
def test_bad_image_files_fail_clearly(run, tmp_path, name, command):
    data, message = BAD_FILES[name]
    if data is None:
        data = encode(photo(1))[:2000]
    path = tmp_path / name
    path.write_bytes(data)
    result = run(command, "--json", str(path))
    assert result.exit_code == 1
    assert message in result.stderr and str(path) in result.stderr
    assert "Traceback" not in result.output + result.stderr


def test_nothing_is_registered_when_one_file_fails(run, write_image, tmp_path):
    good = write_image("a.jpg", photo(1))
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"nope")
    assert run("submit", str(good), str(bad)).exit_code == 1
    assert run("case", "list", "--json").output.strip() == ""


def test_limits_and_quality(run, write_image):
    big = write_image("big.jpg", photo(1, (1000, 1000)))
    small = run("hash", str(big), env={"TAKEDOWN_MAX_UPLOAD_BYTES": "100"})
    assert small.exit_code == 1 and "the limit is 100 bytes" in small.stderr
    pixels = run("hash", str(big), env={"TAKEDOWN_MAX_IMAGE_PIXELS": "10000"})
    assert pixels.exit_code == 1 and "1000x1000 pixels" in pixels.stderr
    flat = write_image("flat.png", Image.new("RGB", (200, 200), (120, 120, 120)), "PNG")
    plain = run("submit", str(flat))
    assert plain.exit_code == 1 and "too plain" in plain.stderr


def test_usage_and_lookup_errors(run, tmp_path):
    assert run("hash").exit_code == 2
    assert run("submit", "--bogus").exit_code == 2
    assert run("platform", "add", "x", "--scope", "admin").exit_code == 2
    assert run("hash", str(tmp_path)).exit_code == 2  # a folder is not a file
    missing = run("hash", str(tmp_path / "nope.jpg"))
    assert missing.exit_code == 1 and "does not exist" in missing.stderr
    bad_number = run("case", "show", "hello")
    assert bad_number.exit_code == 1 and "12 letters or digits" in bad_number.stderr
    unknown = run("case", "show", "0000-0000-0000-0")
    assert unknown.exit_code == 1 and "no case" in unknown.stderr
    run("platform", "add", "dup")
    dup = run("platform", "add", "dup")
    assert dup.exit_code == 1 and "already exists" in dup.stderr
    nobody = run("platform", "revoke", "nobody")
    assert nobody.exit_code == 1 and "no platform" in nobody.stderr
    bad_env = run("case", "list", env={"TAKEDOWN_MAX_QUERIES": "many"})
    assert bad_env.exit_code == 1 and "TAKEDOWN_MAX_QUERIES must be a number" in bad_env.stderr
    bad_url = run("--database-url", "mysql://x/y", "case", "list")
    assert bad_url.exit_code == 1 and "Only SQLite and PostgreSQL" in bad_url.stderr


@pytest.mark.services
def test_postgresql_needs_an_explicit_upgrade(run, pg_url):
    early = run("--database-url", pg_url, "case", "list")
    assert early.exit_code == 1 and "takedown db upgrade" in early.stderr
    assert run("--database-url", pg_url, "db", "upgrade").exit_code == 0
    assert run("--database-url", pg_url, "case", "list").exit_code == 0


def test_stats_shows_cases_signals_platforms_review_and_index(tmp_path, monkeypatch):
    import json as _json

    from registry.bootstrap import build_registry
    from registry.config import Settings
    from registry.domain import Query, Scope
    from registry.service import SubmittedImage
    from tests.conftest import FAST_KDF, encode, photo

    settings = Settings.from_env({}, data_dir=str(tmp_path / "data"), pin_kdf_n=FAST_KDF)
    reg = build_registry(settings)
    try:
        images = [SubmittedImage.from_image(reg.hash_image(encode(photo(s), quality=90)))
                  for s in (3, 4)]
        kept = reg.submit_case([images[0]])
        gone = reg.submit_case([images[1]])
        reg.withdraw_case(gone.number, gone.pin)
        platform, _ = reg.add_platform("clips", [Scope.MATCH])
        pdq = next(s for s in images[0].signals if s.kind.value == "pdq")
        (result,) = reg.match([Query("u1", (pdq,))], platform=platform)
        reg.record_feedback(platform, result.matches[0].match_id, "not_violating")
        assert kept.number
    finally:
        reg.close()
    monkeypatch.setenv("TAKEDOWN_DATA_DIR", settings.data_dir)
    monkeypatch.delenv("TAKEDOWN_DATABASE_URL", raising=False)
    runner = CliRunner()
    out = runner.invoke(cli, ["stats", "--json"])
    assert out.exit_code == 0, out.output
    view = _json.loads(out.output)
    assert view["cases"] == {"active": 1, "withdrawn": 1}
    (bank,) = [b for b in view["signals"] if view["signals"][b].get("pdq")]
    assert view["signals"][bank]["pdq"]["active"] >= 1
    assert view["signals"][bank]["pdq"]["withdrawn"] >= 1
    (clips,) = view["platforms"]
    assert clips["name"] == "clips" and clips["matches"]["all"] >= 1
    assert clips["matches"]["last_day"] == clips["matches"]["all"]
    assert clips["feedback"] == {"not_violating": len(result.matches[:1])}
    assert view["review"]["reported"] == 1 and view["review"]["quarantined"] == 0
    assert view["index"]["lag"] == 0 and view["index"]["live"]["pdq"] >= 1
    text_out = runner.invoke(cli, ["stats"])
    assert text_out.exit_code == 0 and "clips (active, match)" in text_out.output
    assert "1 reported 'not_violating'" in text_out.output


def test_bank_list_shows_every_bank_with_its_signals(tmp_path, monkeypatch):
    import json as _json

    from registry.bootstrap import build_registry
    from registry.config import Settings
    from registry.domain import BankKind, Signal, SignalKind
    from registry.service import SubmittedImage
    from tests.conftest import FAST_KDF

    settings = Settings.from_env({}, data_dir=str(tmp_path / "data"), pin_kdf_n=FAST_KDF)
    reg = build_registry(settings)
    try:
        code = bytes.fromhex("f0" * 16 + "0f" * 16)
        reg.register_bank("ngo-list", BankKind.IMPORTED,
                          [SubmittedImage((Signal(SignalKind.PDQ, code),), 100)])
    finally:
        reg.close()
    monkeypatch.setenv("TAKEDOWN_DATA_DIR", settings.data_dir)
    monkeypatch.delenv("TAKEDOWN_DATABASE_URL", raising=False)
    runner = CliRunner()
    out = runner.invoke(cli, ["bank", "list", "--json"])
    assert out.exit_code == 0, out.output
    banks = {b["name"]: b for b in _json.loads(out.output)}
    assert banks["ngo-list"]["kind"] == "imported"
    assert banks["ngo-list"]["signals"] == {"active": 1}
    text_out = runner.invoke(cli, ["bank", "list"])
    assert text_out.exit_code == 0 and "ngo-list (imported): 1 active" in text_out.output

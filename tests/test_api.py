"""The platform API (``/api/v1``) through Flask's test client, one fresh app per test: response
shapes of SPEC section 5, keys and scopes, every error code, feedback and quarantine, the feed,
audit events, rate limits, metrics, the OpenAPI document and the canary bank."""

from __future__ import annotations

import hashlib
import io
import json
import re
from functools import cache
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from cli.main import cli
from registry.bootstrap import build_registry
from registry.config import Settings
from registry.domain import Scope, Signal, SignalKind
from registry.hashing import DecodeOptions, ImageSignals, compute_signals
from registry.service import Registry, SubmittedImage
from registry.web import create_app
from tests.conftest import FAST_KDF, encode, photo

API_PATHS = {"/api/v1/match", "/api/v1/match/image", "/api/v1/match/video", "/api/v1/feedback",
             "/api/v1/feed"}
MATCH_KEYS = {"match_id", "signal", "distance", "tier", "bank", "confidence"}
FEED_KEYS = {"seq", "status", "id", "signal", "value", "bank", "view", "pipeline_version", "at"}
SNAKE = re.compile(r"[a-z][a-z0-9]*(_[a-z0-9]+)*")


# --- helpers and fixtures ---------------------------------------------------------------------
@cache
def jpeg(seed: int, size: tuple[int, int] = (640, 480), quality: int = 90) -> bytes:
    return encode(photo(seed, size), quality=quality)


@cache
def copy_of(seed: int) -> bytes:
    """A transformed copy: resized to half and re-encoded at JPEG quality 50."""
    return encode(photo(seed).resize((320, 240)), quality=50)


@cache
def registered_signals(seed: int) -> ImageSignals:
    """Registration signals (with views) of ``jpeg(seed)``, as the default settings compute
    them; cached across tests because the registered views are the slow part."""
    return compute_signals(jpeg(seed), DecodeOptions(), registration=True)


def submit(registry: Registry, *seeds: int):
    return registry.submit_case([SubmittedImage.from_image(registered_signals(s))
                                 for s in seeds])


def query_signals(registry: Registry, data: bytes) -> dict[str, str]:
    image = registry.hash_image(data)
    return {"pdq": image.pdq.hex, "phash": image.phash.hex, "md5": image.md5.hex,
            "sha256": image.sha256.hex}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def assert_error(response, status: int, code: str | None = None) -> dict:
    """The SPEC error shape, exactly, with the given status (and code, when given)."""
    assert response.status_code == status, (response.status_code, response.data[:500])
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    assert SNAKE.fullmatch(body["error"]["code"]), body
    message = body["error"]["message"]
    assert isinstance(message, str) and len(message) > 10 and "Traceback" not in message
    if code is not None:
        assert body["error"]["code"] == code, body
    return body["error"]


def multipart(data: bytes, filename: str = "upload.jpg", field: str = "file") -> dict:
    return {field: (io.BytesIO(data), filename)}


def make_app(tmp_path: Path, **overrides):
    settings = Settings.from_env({}, data_dir=str(tmp_path / "data-custom"),
                                 pin_kdf_n=FAST_KDF, **overrides)
    registry = build_registry(settings)
    return registry, create_app(registry)


@pytest.fixture
def app(registry):
    return create_app(registry)


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def key(registry) -> str:
    return registry.add_platform("alpha", [Scope.MATCH])[1]


@pytest.fixture
def feed_key(registry) -> str:
    return registry.add_platform("feeder", [Scope.MATCH, Scope.FEED])[1]


@pytest.fixture
def custom(tmp_path):
    """Build an app over a registry with other settings; closed after the test."""
    made: list[Registry] = []

    def build(**overrides):
        registry, app = make_app(tmp_path / str(len(made)), **overrides)
        made.append(registry)
        return registry, app

    yield build
    for registry in made:
        registry.close()


def match(client, key: str, *queries: dict):
    return client.post("/api/v1/match", json={"queries": list(queries)}, headers=bearer(key))


def audit_events(registry: Registry, limit: int = 1000) -> list[dict]:
    with registry._store.transaction(write=False) as tx:
        return tx.audit.recent(limit)


# --- POST /api/v1/match -----------------------------------------------------------------------
def test_match_answers_in_query_order_with_the_spec_shape(registry, client, key):
    receipt = submit(registry, 1)
    original = registered_signals(1)
    unrelated = query_signals(registry, jpeg(99))
    copy = query_signals(registry, copy_of(1))
    response = match(client, key,
                     {"id": "miss", "signals": unrelated},
                     {"id": "copy", "signals": {"pdq": copy["pdq"], "phash": copy["phash"]}},
                     {"id": "md5", "signals": {"md5": original.md5.hex}},
                     {"id": "sha", "signals": {"sha256": original.sha256.hex}})
    assert response.status_code == 200 and response.mimetype == "application/json"
    body = response.get_json()
    assert set(body) == {"index_version", "results"}
    assert type(body["index_version"]) is int and body["index_version"] == registry.index_version
    assert body["index_version"] >= receipt.signals
    assert [r["id"] for r in body["results"]] == ["miss", "copy", "md5", "sha"]
    for result in body["results"]:
        assert set(result) == {"id", "matched", "matches"}
        assert result["matched"] is bool(result["matches"])
        for m in result["matches"]:
            assert set(m) == MATCH_KEYS
            assert type(m["distance"]) is int and m["distance"] >= 0
            assert type(m["confidence"]) is float and 0 < m["confidence"] <= 1
            assert m["tier"] in ("exact", "strong", "weak") and m["bank"] == "submissions"
            assert m["match_id"].startswith("m_")
    miss, near, md5, sha = body["results"]
    assert miss == {"id": "miss", "matched": False, "matches": []}
    signals = {m["signal"]: m for m in near["matches"]}
    assert set(signals) == {"pdq", "phash"}
    assert signals["pdq"]["tier"] == "strong" and 0 < signals["pdq"]["distance"] <= 31
    assert [(m["signal"], m["distance"], m["tier"], m["confidence"]) for m in md5["matches"]] == [
        ("md5", 0, "exact", 1.0)]
    assert [(m["signal"], m["tier"]) for m in sha["matches"]] == [("sha256", "exact")]
    ids = [m["match_id"] for r in body["results"] for m in r["matches"]]
    assert len(set(ids)) == len(ids)


def test_match_takes_any_subset_of_signals_and_the_content_pdq(registry, client, key):
    submit(registry, 1)
    original = registered_signals(1)
    response = match(client, key,
                     {"id": "phash-only", "signals": {"phash": original.phash.hex}},
                     {"id": "content", "signals": {"pdq_content": original.pdq.hex}},
                     {"id": "phash+md5", "signals": {"phash": original.phash.hex,
                                                      "md5": original.md5.hex}})
    assert response.status_code == 200
    phash_only, content, both = response.get_json()["results"]
    # pHash supports another signal; alone it matches nothing (it would be an oracle that
    # spells out registered pHashes: tests/test_abuse.py).
    assert phash_only == {"id": "phash-only", "matched": False, "matches": []}
    assert sorted(m["signal"] for m in both["matches"]) == ["md5", "phash"]
    # pdq_content is searched as PDQ.
    assert [m["signal"] for m in content["matches"]] == ["pdq"]


def test_match_takes_up_to_a_thousand_queries(registry, client, key):
    submit(registry, 1)
    md5 = registered_signals(1).md5.hex
    queries = [{"id": f"q{n}", "signals": {"md5": md5 if n % 250 == 0 else f"{n + 1:032x}"}}
               for n in range(1000)]
    response = client.post("/api/v1/match", json={"queries": queries}, headers=bearer(key))
    assert response.status_code == 200
    results = response.get_json()["results"]
    assert [r["id"] for r in results] == [q["id"] for q in queries]
    assert [n for n, r in enumerate(results) if r["matched"]] == [0, 250, 500, 750]


def test_index_version_follows_new_registrations(registry, client, key):
    probe = {"id": "p", "signals": {"md5": "0123456789abcdef0123456789abcdef"}}
    before = match(client, key, probe).get_json()["index_version"]
    submit(registry, 2)
    after = match(client, key, probe).get_json()["index_version"]
    assert after > before


# --- POST /api/v1/match/image -----------------------------------------------------------------
def test_match_image_hashes_in_memory_and_returns_the_signals(registry, client, key):
    submit(registry, 1)
    data = copy_of(1)
    response = client.post("/api/v1/match/image", data=multipart(data, "copy.jpg"),
                           headers=bearer(key))
    assert response.status_code == 200, response.data
    body = response.get_json()
    assert {"index_version", "id", "matched", "matches", "signals"} <= set(body)
    assert set(body) <= {"index_version", "id", "matched", "matches", "signals"}
    assert body["id"] == "copy.jpg" and body["matched"] is True
    assert type(body["index_version"]) is int
    assert {m["signal"] for m in body["matches"]} >= {"pdq", "phash"}
    for m in body["matches"]:
        extra = {"inliers", "coverage"} if m["signal"] == "local" else set()
        assert set(m) == MATCH_KEYS | extra and type(m["distance"]) is int
    expected = registry.hash_image(data)
    signals = body["signals"]
    assert signals["pdq"] == expected.pdq.hex and signals["phash"] == expected.phash.hex
    assert signals["md5"] == hashlib.md5(data).hexdigest()
    assert signals["sha256"] == hashlib.sha256(data).hexdigest()
    assert expected.local is not None and signals.pop("local") == expected.local.text
    assert all(re.fullmatch(r"[0-9a-f]+", v) for v in signals.values())

    other = client.post("/api/v1/match/image", data=multipart(jpeg(98), "other.jpg"),
                        headers=bearer(key)).get_json()
    assert other["matched"] is False and other["matches"] == []


def test_match_image_accepts_png_and_an_exact_copy_matches_every_signal(registry, client, key):
    submit(registry, 1)
    response = client.post("/api/v1/match/image", data=multipart(jpeg(1)), headers=bearer(key))
    tiers = {m["signal"]: m["tier"] for m in response.get_json()["matches"]}
    assert tiers == {"pdq": "strong", "phash": "strong", "md5": "exact", "sha256": "exact"}
    png = encode(photo(1), "PNG")
    response = client.post("/api/v1/match/image", data=multipart(png, "a.png"),
                           headers=bearer(key))
    assert response.status_code == 200 and response.get_json()["matched"] is True


# --- POST /api/v1/feedback --------------------------------------------------------------------
def test_a_removed_copy_counts_once_however_many_of_its_matches_are_reported(registry, client,
                                                                               key):
    receipt = submit(registry, 1)
    signals = registered_signals(1)
    both = {"md5": signals.md5.hex, "sha256": signals.sha256.hex, "pdq": signals.pdq.hex}
    (result,) = match(client, key, {"id": "copy-1", "signals": both}).get_json()["results"]
    ids = [m["match_id"] for m in result["matches"]]
    assert len(ids) >= 3  # one match per signal of the one uploaded copy
    for match_id in ids:
        response = client.post("/api/v1/feedback", json={"match_id": match_id,
                                                          "outcome": "removed"},
                               headers=bearer(key))
        assert response.status_code == 200
    assert registry.case_status(receipt.number, receipt.pin).takedowns == 1
    # Another copy (another query) taken down is another takedown.
    (other,) = match(client, key, {"id": "copy-2", "signals": {"md5": signals.md5.hex}}
                     ).get_json()["results"]
    client.post("/api/v1/feedback", json={"match_id": other["matches"][0]["match_id"],
                                          "outcome": "removed"}, headers=bearer(key))
    assert registry.case_status(receipt.number, receipt.pin).takedowns == 2


def first_match_id(client, key: str, signals: dict[str, str]) -> str:
    response = match(client, key, {"id": "q", "signals": signals})
    (result,) = response.get_json()["results"]
    assert result["matched"], result
    return str(result["matches"][0]["match_id"])


@pytest.mark.parametrize("outcome", ["removed", "not_violating", "under_review"])
def test_feedback_is_recorded(registry, client, key, outcome):
    receipt = submit(registry, 1)
    match_id = first_match_id(client, key, {"md5": registered_signals(1).md5.hex})
    response = client.post("/api/v1/feedback", json={"match_id": match_id, "outcome": outcome},
                           headers=bearer(key))
    assert response.status_code == 200, response.data
    assert response.get_json() == {"match_id": match_id, "outcome": outcome, "recorded": True,
                                   "quarantined": False}
    takedowns = registry.case_status(receipt.number, receipt.pin).takedowns
    assert takedowns == (1 if outcome == "removed" else 0)
    feedback = [e for e in audit_events(registry) if e["action"] == "feedback"]
    assert [(e["actor"], e["subject"], e["details"]) for e in feedback] == [
        ("platform:alpha", match_id, {"outcome": outcome})]


def test_only_the_platform_that_received_the_match_may_give_feedback(registry, client, key):
    submit(registry, 1)
    match_id = first_match_id(client, key, {"md5": registered_signals(1).md5.hex})
    _, other = registry.add_platform("beta", [Scope.MATCH])
    stolen = client.post("/api/v1/feedback", json={"match_id": match_id, "outcome": "removed"},
                         headers=bearer(other))
    error = assert_error(stolen, 404, "match_not_found")
    unknown = client.post("/api/v1/feedback",
                          json={"match_id": "m_00000000000000000000", "outcome": "removed"},
                          headers=bearer(other))
    # Another platform's match id answers exactly like one that does not exist.
    assert assert_error(unknown, 404, "match_not_found") == error
    mine = client.post("/api/v1/feedback", json={"match_id": match_id, "outcome": "removed"},
                       headers=bearer(key))
    assert mine.status_code == 200


def test_not_violating_from_two_platforms_quarantines(registry, client, key, feed_key,
                                                      settings):
    """One platform's reports lower the confidence once and never switch a hash off; a second
    platform's report that brings it to the rule's bar quarantines it for everyone."""
    submit(registry, 1)
    md5 = registered_signals(1).md5.hex
    _, other = registry.add_platform("second-platform", [Scope.MATCH])
    feed_start = client.get("/api/v1/feed?limit=1000", headers=bearer(feed_key)).get_json()
    confidences = []
    for _n, sender in enumerate([key] * (settings.quarantine_after + 1) + [other]):
        result = match(client, sender, {"id": "q", "signals": {"md5": md5}}).get_json()
        (m,) = result["results"][0]["matches"]
        confidences.append(m["confidence"])
        response = client.post("/api/v1/feedback",
                               json={"match_id": m["match_id"], "outcome": "not_violating"},
                               headers=bearer(sender))
        assert response.status_code == 200
        assert response.get_json()["quarantined"] is (sender == other)
    # Halved once for the one platform, however many of its matches it reported.
    assert confidences == [1.0] + [0.5] * (settings.quarantine_after + 1)
    # Quarantined: the hash stops matching at once, for every platform...
    after = match(client, key, {"id": "q", "signals": {"md5": md5}}).get_json()
    assert after["results"][0] == {"id": "q", "matched": False, "matches": []}
    # ...it waits for operator review...
    assert [s.signal.hex for s in registry.quarantined()] == [md5]
    # ...and the feed tells local copies to drop it.
    page = client.get(f"/api/v1/feed?cursor={feed_start['next_cursor']}",
                      headers=bearer(feed_key)).get_json()
    assert [(r["status"], r["signal"], r["value"]) for r in page["records"]] == [
        ("withdrawn", "md5", md5)]
    # The other signals of the image still match.
    sha = match(client, key, {"id": "q", "signals": {"sha256": registered_signals(1).sha256.hex}})
    assert sha.get_json()["results"][0]["matched"] is True
    events = [e["action"] for e in audit_events(registry)]
    assert "signal_quarantined" in events


def test_under_review_changes_nothing(registry, client, key, settings):
    submit(registry, 1)
    md5 = registered_signals(1).md5.hex
    for _ in range(settings.quarantine_after + 1):
        m = match(client, key, {"id": "q", "signals": {"md5": md5}}).get_json()
        (found,) = m["results"][0]["matches"]
        assert found["confidence"] == 1.0
        response = client.post("/api/v1/feedback",
                               json={"match_id": found["match_id"], "outcome": "under_review"},
                               headers=bearer(key))
        assert response.get_json()["quarantined"] is False
    assert registry.quarantined() == []


def test_removed_feedback_keeps_confidence_and_never_quarantines(registry, client, key,
                                                                 settings):
    submit(registry, 1)
    md5 = registered_signals(1).md5.hex
    for _ in range(settings.quarantine_after + 1):
        match_id = first_match_id(client, key, {"md5": md5})
        client.post("/api/v1/feedback", json={"match_id": match_id, "outcome": "removed"},
                    headers=bearer(key))
    (m,) = match(client, key, {"id": "q", "signals": {"md5": md5}}).get_json()["results"][0][
        "matches"]
    assert m["confidence"] == 1.0 and registry.quarantined() == []


# --- GET /api/v1/feed -------------------------------------------------------------------------
def read_all(client, key: str, cursor: str = "", limit: int = 3) -> tuple[list[dict], str]:
    records: list[dict] = []
    while True:
        response = client.get(f"/api/v1/feed?cursor={cursor}&limit={limit}", headers=bearer(key))
        assert response.status_code == 200, response.data
        page = response.get_json()
        assert set(page) == {"records", "next_cursor", "has_more"}
        assert isinstance(page["next_cursor"], str) and isinstance(page["has_more"], bool)
        assert len(page["records"]) <= limit
        records += page["records"]
        cursor = page["next_cursor"]
        if not page["has_more"]:
            return records, cursor
        assert len(page["records"]) == limit


def test_feed_pages_through_every_hash_then_publishes_the_withdrawal(registry, client,
                                                                     feed_key):
    receipt = submit(registry, 1, 2)
    records, cursor = read_all(client, feed_key)
    assert len(records) == receipt.signals
    seqs = [r["seq"] for r in records]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    for r in records:
        assert set(r) == FEED_KEYS and r["status"] == "active" and r["bank"] == "submissions"
        assert r["signal"] in ("pdq", "phash", "md5", "sha256", "local")
        if r["signal"] == "local":  # base64 of the packed keypoints, parsed like API input
            assert 16 <= Signal.parse("local", r["value"]).keypoints <= 112
        else:
            assert len(r["value"]) == SignalKind(r["signal"]).bits // 4
        assert type(r["pipeline_version"]) is int and isinstance(r["id"], str)
    assert {r["view"] for r in records if r["signal"] == "pdq"} >= {"full", "mirror"}
    # Nothing new: an empty page that keeps the cursor.
    empty = client.get(f"/api/v1/feed?cursor={cursor}", headers=bearer(feed_key)).get_json()
    assert empty == {"records": [], "next_cursor": cursor, "has_more": False}

    registry.withdraw_case(receipt.number, receipt.pin)
    tombstones, _ = read_all(client, feed_key, cursor, limit=1000)
    assert {r["status"] for r in tombstones} == {"withdrawn"}
    assert sorted(r["id"] for r in tombstones) == sorted(r["id"] for r in records)
    assert all(t["seq"] > seqs[-1] for t in tombstones)
    # Withdrawn hashes no longer match.
    md5 = registered_signals(1).md5.hex
    body = match(client, feed_key, {"id": "q", "signals": {"md5": md5}}).get_json()
    assert body["results"][0]["matched"] is False


def test_a_cursor_past_the_end_of_the_feed_is_refused_not_an_empty_page(registry, client,
                                                                        feed_key):
    submit(registry, 1)
    _, cursor = read_all(client, feed_key)
    at_end = client.get(f"/api/v1/feed?cursor={cursor}", headers=bearer(feed_key))
    assert at_end.status_code == 200 and at_end.get_json()["records"] == []
    # A mirror's cursor from before a restore to an older backup: ahead of this log.
    ahead = client.get(f"/api/v1/feed?cursor={int(cursor) + 5}", headers=bearer(feed_key))
    error = assert_error(ahead, 409, "cursor_ahead")
    assert "from the start" in error["message"]


def test_feed_reads_are_audited_and_the_default_page_is_used(registry, client, feed_key):
    submit(registry, 1)
    page = client.get("/api/v1/feed", headers=bearer(feed_key)).get_json()
    assert page["has_more"] is False and len(page["records"]) > 1
    (event,) = [e for e in audit_events(registry) if e["action"] == "feed_read"]
    assert event["actor"] == "platform:feeder"
    assert event["details"] == {"cursor": 0, "records": len(page["records"])}


@pytest.mark.parametrize("query", ["cursor=abc", "cursor=-1", "cursor=1.5",
                                   "cursor=99999999999999999999", "cursor=9223372036854775808",
                                   "limit=0", "limit=1001", "limit=x"])
def test_feed_rejects_bad_cursor_and_limit(client, feed_key, query):
    assert_error(client.get(f"/api/v1/feed?{query}", headers=bearer(feed_key)), 422)


# --- authentication and scopes ----------------------------------------------------------------
def call(client, endpoint: str, headers: dict[str, str]):
    if endpoint == "match":
        return client.post("/api/v1/match", headers=headers, json={
            "queries": [{"id": "a", "signals": {"md5": "0123456789abcdef0123456789abcdef"}}]})
    if endpoint == "match/image":
        return client.post("/api/v1/match/image", headers=headers,
                           data=multipart(jpeg(5)))
    if endpoint == "feedback":
        return client.post("/api/v1/feedback", headers=headers,
                           json={"match_id": "m_1", "outcome": "removed"})
    return client.get("/api/v1/feed", headers=headers)


ENDPOINTS = ["match", "match/image", "feedback", "feed"]


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("header", [None, "", "Bearer", "Bearer ", "Basic dXNlcjpwYXNz",
                                    "trk_nobearer", "Bearer trk_not-a-real-key",
                                    "Bearer trk_" + "A" * 43])
def test_missing_malformed_or_wrong_key_is_401(client, feed_key, endpoint, header):
    headers = {} if header is None else {"Authorization": header}
    response = call(client, endpoint, headers)
    assert_error(response, 401, "unauthenticated")
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_revoked_key_is_401_at_once(registry, client, feed_key, endpoint):
    assert call(client, endpoint, bearer(feed_key)).status_code != 401
    registry.revoke_platform("feeder")
    response = call(client, endpoint, bearer(feed_key))
    assert_error(response, 401, "unauthenticated")
    assert "WWW-Authenticate" in response.headers


def test_rotated_key_old_is_401_new_is_200(registry, client, key):
    assert call(client, "match", bearer(key)).status_code == 200
    _, new = registry.rotate_platform_key("alpha")
    assert new != key
    assert_error(call(client, "match", bearer(key)), 401, "unauthenticated")
    assert call(client, "match", bearer(new)).status_code == 200


def test_feed_needs_the_feed_scope(registry, client, key):
    assert_error(call(client, "feed", bearer(key)), 403, "forbidden")
    _, feed_only = registry.add_platform("mirror", [Scope.FEED])
    assert call(client, "feed", bearer(feed_only)).status_code == 200
    for endpoint in ("match", "match/image", "feedback"):
        assert_error(call(client, endpoint, bearer(feed_only)), 403, "forbidden")


def test_authentication_comes_before_parsing(client):
    # No key and a wrong content type: the caller learns about the key first.
    response = client.post("/api/v1/match", data="not json", content_type="text/plain")
    assert_error(response, 401, "unauthenticated")


# --- errors: 400, 404, 405, 413, 415, 422 -----------------------------------------------------
@pytest.mark.parametrize("path", ["/api/v1/match", "/api/v1/feedback"])
@pytest.mark.parametrize("body", [b"{", b"{'queries': []}", b"", b"\xff\xfe", b"[1,]"])
def test_malformed_json_is_400(client, key, path, body):
    response = client.post(path, data=body, content_type="application/json",
                           headers=bearer(key))
    assert_error(response, 400, "invalid_json")


@pytest.mark.parametrize("path", ["/api/v1/nope", "/api/v2/match", "/api/v1/match/x",
                                  "/api/v1/feed/1"])
def test_unknown_address_is_404(client, key, path):
    assert_error(client.get(path, headers=bearer(key)), 404, "not_found")


@pytest.mark.parametrize("method, path", [("GET", "/api/v1/match"), ("PUT", "/api/v1/match"),
                                          ("GET", "/api/v1/match/image"),
                                          ("DELETE", "/api/v1/feedback"),
                                          ("POST", "/api/v1/feed")])
def test_wrong_method_is_405(client, key, method, path):
    assert_error(client.open(path, method=method, headers=bearer(key)), 405,
                 "method_not_allowed")


def test_bodies_over_the_limits_are_413(custom):
    registry, app = custom(max_upload_bytes=200_000)
    client = app.test_client()
    _, key = registry.add_platform("alpha", [Scope.MATCH])
    limit = app.config["MAX_CONTENT_LENGTH"]
    big_json = b'{"queries": [' + b" " * limit + b"]}"
    assert_error(client.post("/api/v1/match", data=big_json, content_type="application/json",
                             headers=bearer(key)), 413)
    assert_error(client.post("/api/v1/feedback", data=big_json,
                             content_type="application/json", headers=bearer(key)), 413)
    # An upload over MAX_CONTENT_LENGTH is refused before it is read...
    huge = b"\xff\xd8\xff" + b"\0" * limit
    assert_error(client.post("/api/v1/match/image", data=multipart(huge),
                             headers=bearer(key)), 413)
    # ...and a file over max_upload_bytes that still fits the request limit, when hashed.
    over = b"\xff\xd8\xff" + b"\0" * 200_000
    assert len(over) < limit
    assert_error(client.post("/api/v1/match/image", data=multipart(over),
                             headers=bearer(key)), 413, "file_too_large")


@pytest.mark.parametrize("path, content_type", [
    ("/api/v1/match", "text/plain"), ("/api/v1/match", "application/x-www-form-urlencoded"),
    ("/api/v1/match", "multipart/form-data; boundary=x"), ("/api/v1/match", None),
    ("/api/v1/feedback", "text/plain"), ("/api/v1/feedback", "application/xml"),
    ("/api/v1/feedback", None),
    ("/api/v1/match/image", "application/json"), ("/api/v1/match/image", "image/jpeg"),
    ("/api/v1/match/image", "application/octet-stream"), ("/api/v1/match/image", None),
])
def test_wrong_content_type_is_415(client, key, path, content_type):
    body = b'{"queries": [{"id": "a", "signals": {"md5": "0123456789abcdef0123456789abcdef"}}]}'
    if path.endswith("image"):
        body = jpeg(5)
    response = client.post(path, data=body, content_type=content_type, headers=bearer(key))
    assert_error(response, 415, "unsupported_media_type")


PDQ = "c3b54a59d2a7a4e63a4f4d3c62bb0c59a2b6d2e40c9d7e1b55e0a4a3a9f1f026"
BAD_MATCH_BODIES = {
    "not an object": [1, 2],
    "a string": "queries",
    "missing queries": {},
    "queries not a list": {"queries": {"id": "a"}},
    "no queries": {"queries": []},
    "too many queries": {"queries": [{"id": str(n), "signals": {"pdq": PDQ}}
                                     for n in range(1001)]},
    "query without id": {"queries": [{"signals": {"pdq": PDQ}}]},
    "query without signals": {"queries": [{"id": "a"}]},
    "empty signals": {"queries": [{"id": "a", "signals": {}}]},
    "empty id": {"queries": [{"id": "", "signals": {"pdq": PDQ}}]},
    "long id": {"queries": [{"id": "x" * 129, "signals": {"pdq": PDQ}}]},
    "unknown signal": {"queries": [{"id": "a", "signals": {"sha1": "ab" * 20}}]},
    "unknown top-level field": {"queries": [{"id": "a", "signals": {"pdq": PDQ}}], "x": 1},
    "bad hex": {"queries": [{"id": "a", "signals": {"pdq": "g" * 64}}]},
    "uppercase hex": {"queries": [{"id": "a", "signals": {"pdq": PDQ.upper()}}]},
    "short hex": {"queries": [{"id": "a", "signals": {"pdq": PDQ[:-1]}}]},
    "long hex": {"queries": [{"id": "a", "signals": {"phash": "0123456789abcdef0"}}]},
    "hex with 0x": {"queries": [{"id": "a", "signals": {"md5": "0x" + "1" * 30}}]},
    "hex with spaces": {"queries": [{"id": "a", "signals": {"md5": " " + "1" * 31}}]},
    "number for hex": {"queries": [{"id": "a", "signals": {"md5": 12345}}]},
    "null signal": {"queries": [{"id": "a", "signals": {"md5": None}}]},
    "degenerate pdq": {"queries": [{"id": "a", "signals": {"pdq": "0" * 64}}]},
    "empty-file md5": {"queries": [{"id": "a", "signals": {
        "md5": "d41d8cd98f00b204e9800998ecf8427e"}}]},
    "one bad query among good": {"queries": [{"id": "a", "signals": {"pdq": PDQ}},
                                             {"id": "b", "signals": {"pdq": "zz"}}]},
}


@pytest.mark.parametrize("body", BAD_MATCH_BODIES.values(), ids=BAD_MATCH_BODIES.keys())
def test_schema_errors_in_match_are_422(registry, client, key, body):
    before = len(audit_events(registry))
    response = client.post("/api/v1/match", json=body, headers=bearer(key))
    assert_error(response, 422)
    assert len(audit_events(registry)) == before  # a refused request matched nothing


def test_422_messages_name_the_problem(client, key):
    def message(body: dict) -> dict:
        return assert_error(client.post("/api/v1/match", json=body, headers=bearer(key)), 422)

    assert "queries" in message({})["message"]
    assert "sha1" in message(BAD_MATCH_BODIES["unknown signal"])["message"]
    upper = message(BAD_MATCH_BODIES["uppercase hex"])
    assert upper["code"] == "invalid_hash" and "lowercase" in upper["message"]
    assert message(BAD_MATCH_BODIES["short hex"])["code"] == "invalid_hash"
    assert message(BAD_MATCH_BODIES["degenerate pdq"])["code"] == "degenerate_hash"
    # In a batch, the message names the query that is wrong.
    assert "'b'" in message(BAD_MATCH_BODIES["one bad query among good"])["message"]
    assert message(BAD_MATCH_BODIES["number for hex"])["code"] == "validation_error"


BAD_FEEDBACK_BODIES = {
    "missing outcome": {"match_id": "m_1"},
    "missing match_id": {"outcome": "removed"},
    "unknown outcome": {"match_id": "m_1", "outcome": "deleted"},
    "empty match_id": {"match_id": "", "outcome": "removed"},
    "long match_id": {"match_id": "m" * 65, "outcome": "removed"},
    "not an object": ["m_1", "removed"],
    "number match_id": {"match_id": 5, "outcome": "removed"},
}


@pytest.mark.parametrize("body", BAD_FEEDBACK_BODIES.values(), ids=BAD_FEEDBACK_BODIES.keys())
def test_schema_errors_in_feedback_are_422(client, key, body):
    assert_error(client.post("/api/v1/feedback", json=body, headers=bearer(key)), 422)


def truncated_jpeg() -> bytes:
    data = jpeg(7)
    return data[: len(data) // 2]


BAD_UPLOADS = {
    "text file": lambda: multipart(b"hello, this is not an image\n" * 10, "a.txt"),
    "pdf": lambda: multipart(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n", "a.pdf"),
    "empty file": lambda: multipart(b"", "empty.jpg"),
    "truncated jpeg": lambda: multipart(truncated_jpeg(), "cut.jpg"),
    "jpeg header only": lambda: multipart(jpeg(7)[:200], "head.jpg"),
    "no file field": lambda: {"other": (io.BytesIO(jpeg(7)), "a.jpg")},
    "file as a text field": lambda: {"file": "not a file"},
}


@pytest.mark.parametrize("make", BAD_UPLOADS.values(), ids=BAD_UPLOADS.keys())
def test_bad_uploads_are_422(registry, client, key, make):
    response = client.post("/api/v1/match/image", data=make(), headers=bearer(key),
                           content_type="multipart/form-data")
    assert_error(response, 422)


def test_decompression_bomb_is_refused_cleanly(custom):
    registry, app = custom(max_image_pixels=1_000_000)
    _, key = registry.add_platform("alpha", [Scope.MATCH])
    bomb = encode(Image.new("L", (2000, 2000)), "PNG")  # tiny file, 4 MP
    response = app.test_client().post("/api/v1/match/image", data=multipart(bomb, "b.png"),
                                      headers=bearer(key))
    assert "2000x2000" in assert_error(response, 413, "image_too_large")["message"]


# --- 429 --------------------------------------------------------------------------------------
def test_rate_limit_is_per_key_with_retry_after(custom):
    registry, app = custom(rate_limit="3 per minute")
    client = app.test_client()
    _, key = registry.add_platform("alpha", [Scope.MATCH])
    _, other = registry.add_platform("beta", [Scope.MATCH])
    for _ in range(3):
        assert call(client, "match", bearer(key)).status_code == 200
    for endpoint in ENDPOINTS:
        response = call(client, endpoint, bearer(key))
        assert_error(response, 429, "rate_limited")
        assert int(response.headers["Retry-After"]) > 0
    # Another key has its own budget.
    assert call(client, "match", bearer(other)).status_code == 200
    metrics = client.get("/metrics").get_data(as_text=True)
    assert sample(metrics, "takedown_rate_limited_total") == 4
    # A fresh app (another worker) keeps its own in-memory counters.
    fresh = create_app(registry).test_client()
    assert call(fresh, "match", bearer(key)).status_code == 200


def test_a_rate_limited_key_never_reaches_the_service(custom):
    registry, app = custom(rate_limit="1 per minute")
    client = app.test_client()
    _, key = registry.add_platform("alpha", [Scope.MATCH])
    assert call(client, "match", bearer(key)).status_code == 200
    before = len(audit_events(registry))
    assert call(client, "match", bearer(key)).status_code == 429
    assert len(audit_events(registry)) == before


# --- never a 500 for bad input ----------------------------------------------------------------
@pytest.mark.parametrize("headers", [
    {"Authorization": "Bearer \x00"}, {"Authorization": "Bearer " + "k" * 10_000},
    {"Authorization": "Bearer trk_ü"}, {"Content-Type": "application/json; charset=latin-1"},
    {"Content-Type": "multipart/form-data"}, {"Content-Length": "5"},
])
def test_odd_headers_never_give_500(client, key, headers):
    for path in ("/api/v1/match", "/api/v1/match/image", "/api/v1/feedback"):
        response = client.post(path, data=b'{"queries": []}', headers={**bearer(key), **headers})
        assert 400 <= response.status_code < 500
        assert_error(response, response.status_code)


def test_multipart_with_a_bad_boundary_never_gives_500(client, key):
    body = b"--wrong\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\nabc\r\n--wrong--"
    response = client.post("/api/v1/match/image", data=body, headers=bearer(key),
                           content_type="multipart/form-data; boundary=other")
    assert 400 <= response.status_code < 500
    assert_error(response, response.status_code)


# --- audit ------------------------------------------------------------------------------------
def test_audit_records_matches_feedback_feed_reads_and_key_changes(registry, client, feed_key):
    submit(registry, 1)
    original = registered_signals(1)
    misses = query_signals(registry, jpeg(50))
    misses2 = query_signals(registry, copy_of(51))
    response = match(client, feed_key,
                     {"id": "miss", "signals": misses},
                     {"id": "hit", "signals": {"md5": original.md5.hex}},
                     {"id": "miss-2", "signals": misses2})
    match_ids = [m["match_id"] for r in response.get_json()["results"] for m in r["matches"]]
    assert len(match_ids) == 1
    client.post("/api/v1/match/image", data=multipart(jpeg(52)), headers=bearer(feed_key))
    client.post("/api/v1/feedback", json={"match_id": match_ids[0], "outcome": "removed"},
                headers=bearer(feed_key))
    client.get("/api/v1/feed?limit=2", headers=bearer(feed_key))
    _, key = registry.add_platform("gamma", [Scope.MATCH])
    registry.rotate_platform_key("gamma")
    registry.revoke_platform("gamma")

    events = audit_events(registry)
    by_action: dict[str, list[dict]] = {}
    for e in reversed(events):
        by_action.setdefault(e["action"], []).append(e)
    hashes_match, image_match = by_action["match"]
    assert hashes_match["actor"] == "platform:feeder"
    assert hashes_match["details"] == {"queries": 3, "match_ids": match_ids}
    assert image_match["details"] == {"queries": 1, "match_ids": []}
    assert by_action["feedback"][0]["subject"] == match_ids[0]
    assert by_action["feed_read"][0]["details"] == {"cursor": 0, "records": 2}
    assert [e["subject"] for e in by_action["platform_added"]] == ["feeder", "gamma"]
    assert [e["subject"] for e in by_action["platform_key_rotated"]] == ["gamma"]
    assert [e["subject"] for e in by_action["platform_revoked"]] == ["gamma"]
    # Never a query hash that did not match, never an image, never a key.
    dump = json.dumps(events)
    uploaded = registry.hash_image(jpeg(52))
    for value in [*misses.values(), *misses2.values(), uploaded.pdq.hex, uploaded.phash.hex,
                  uploaded.md5.hex, uploaded.sha256.hex]:
        assert value not in dump
    assert feed_key not in dump and key not in dump
    with registry._store.transaction(write=False) as tx:
        checked, broken = tx.audit.verify()
    assert checked == len(events) and broken is None


def test_refused_requests_leave_no_hash_in_the_audit_log(registry, client, key):
    pdq = query_signals(registry, jpeg(60))["pdq"]
    client.post("/api/v1/match", json={"queries": [{"id": "a", "signals": {"pdq": pdq}},
                                                   {"id": "b", "signals": {"bogus": pdq}}]},
                headers=bearer(key))
    client.post("/api/v1/match", json={"queries": [{"id": "a", "signals": {"pdq": pdq}}]},
                headers={"Authorization": "Bearer nope"})
    assert pdq not in json.dumps(audit_events(registry))


# --- metrics ----------------------------------------------------------------------------------
def sample(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    raise AssertionError(f"no sample {name} {labels}")


def test_metrics_are_prometheus_text(registry, client, key):
    submit(registry, 1)
    original = registered_signals(1)
    match(client, key, {"id": "a", "signals": {"md5": original.md5.hex,
                                               "pdq": original.pdq.hex}})
    match(client, key, {"id": "b", "signals": {"sha256": original.sha256.hex}})
    call(client, "match", {})  # 401
    client.post("/api/v1/match", json={}, headers=bearer(key))  # 422
    client.get("/api/v1/nowhere")

    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.mimetype == "text/plain" and "version=0.0.4" in response.content_type
    text = response.get_data(as_text=True)
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["takedown_http_requests"].type == "counter"
    assert families["takedown_http_request_seconds"].type == "histogram"
    assert sample(text, "takedown_http_requests_total", endpoint="/api/v1/match",
                  method="POST", status="200") == 2
    assert sample(text, "takedown_http_requests_total", endpoint="/api/v1/match",
                  method="POST", status="401") == 1
    assert sample(text, "takedown_http_requests_total", endpoint="/api/v1/match",
                  method="POST", status="422") == 1
    assert sample(text, "takedown_http_requests_total", endpoint="unmatched", method="GET",
                  status="404") == 1
    assert sample(text, "takedown_http_request_seconds_count", endpoint="/api/v1/match") == 4
    assert sample(text, "takedown_http_request_seconds_bucket", endpoint="/api/v1/match",
                  le="+Inf") == 4
    assert sample(text, "takedown_matches_total", tier="exact", bank="submissions") == 2
    assert sample(text, "takedown_matches_total", tier="strong", bank="submissions") == 1
    assert sample(text, "takedown_match_queries_total") == 2
    pdq_count = len(registry._keeper.indexes.indexes[SignalKind.PDQ])
    assert pdq_count > 1
    assert sample(text, "takedown_index_hashes", kind="pdq") == pdq_count
    assert sample(text, "takedown_index_hashes", kind="phash") == 1
    assert sample(text, "takedown_index_position") == registry.index_version
    assert sample(text, "takedown_index_age_seconds") >= 0
    assert sample(text, "takedown_rate_limited_total") == 0
    # No hash and no key ever becomes a label.
    assert original.md5.hex not in text and key not in text


def test_metrics_are_per_app(registry, key):
    first = create_app(registry).test_client()
    second = create_app(registry).test_client()
    call(first, "match", bearer(key))
    text = second.get("/metrics").get_data(as_text=True)
    assert "takedown_http_requests_total{" not in text


# --- OpenAPI and docs -------------------------------------------------------------------------
def test_openapi_document_covers_the_api_and_nothing_else(client):
    response = client.get("/api/openapi.json")
    assert response.status_code == 200
    spec = response.get_json()
    assert spec["openapi"].startswith("3.1")
    assert set(spec["paths"]) == API_PATHS
    assert "/metrics" not in json.dumps(spec["paths"])
    assert spec["components"]["securitySchemes"]["ApiKey"] == {
        "type": "http", "scheme": "bearer",
        "description": spec["components"]["securitySchemes"]["ApiKey"]["description"]}
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            assert op["security"] == [{"ApiKey": []}], (path, method)
            assert {"401", "403", "422", "429"} <= set(op["responses"]), (path, method)
            if method == "post":
                assert op["requestBody"]["required"] is True
                assert {"400", "415"} <= set(op["responses"])
            for status, resp in op["responses"].items():
                if status.startswith("4"):
                    assert resp["content"]["application/json"]["schema"] == {
                        "$ref": "#/components/schemas/Error"}, (path, method, status)
    body = spec["paths"]["/api/v1/match/image"]["post"]["requestBody"]["content"]
    assert "multipart/form-data" in body


def test_docs_page_uses_no_third_party_origin(client):
    response = client.get("/api/docs")
    assert response.status_code == 200 and response.mimetype == "text/html"
    page = response.get_data(as_text=True)
    for path in API_PATHS:
        assert path in page
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "<script" not in page.lower()


def test_health_and_readiness(client):
    assert client.get("/healthz").get_json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.get_json()["ready"] is True


# --- canary -----------------------------------------------------------------------------------
def test_canary_images_match_through_the_api_in_bank_canary(tmp_path, monkeypatch):
    data_dir = tmp_path / "canary-data"
    monkeypatch.setenv("TAKEDOWN_DATA_DIR", str(data_dir))
    monkeypatch.setenv("TAKEDOWN_PIN_KDF_N", str(FAST_KDF))
    monkeypatch.delenv("TAKEDOWN_DATABASE_URL", raising=False)
    out = tmp_path / "canary"
    runner = CliRunner()
    result = runner.invoke(cli, ["canary", "--out", str(out), "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    written = json.loads(result.output)
    assert written["registered_images"] == len(written["files"]) > 0
    again = runner.invoke(cli, ["canary", "--out", str(out), "--json"], catch_exceptions=False)
    assert json.loads(again.output)["registered_images"] == 0  # registered once

    registry = build_registry(Settings.from_env({}, data_dir=str(data_dir), pin_kdf_n=FAST_KDF))
    try:
        client = create_app(registry).test_client()
        _, key = registry.add_platform("integrator", [Scope.MATCH])
        for file in written["files"]:
            data = Path(file).read_bytes()
            response = client.post("/api/v1/match/image", data=multipart(data, Path(file).name),
                                   headers=bearer(key))
            body = response.get_json()
            assert response.status_code == 200 and body["matched"] is True, body
            assert {m["bank"] for m in body["matches"]} == {"canary"}
            assert {m["signal"] for m in body["matches"]} >= {"pdq", "sha256"}
            # The hashes alone (what `takedown match --url` sends) match too.
            hashes = match(client, key, {"id": "c", "signals": {
                "pdq": body["signals"]["pdq"], "md5": body["signals"]["md5"]}}).get_json()
            assert {m["bank"] for m in hashes["results"][0]["matches"]} == {"canary"}
        # A transformed canary still matches, in the same bank.
        first = Image.open(io.BytesIO(Path(written["files"][0]).read_bytes())).convert("RGB")
        copy = encode(first.resize((first.width // 2, first.height // 2)), quality=60)
        body = client.post("/api/v1/match/image", data=multipart(copy), headers=bearer(key)
                           ).get_json()
        assert body["matched"] and {m["bank"] for m in body["matches"]} == {"canary"}
    finally:
        registry.close()


def test_failed_authentications_are_limited_per_address(custom):
    registry, app = custom(auth_failure_limit="3 per minute")
    client = app.test_client()
    _, key = registry.add_platform("alpha", [Scope.MATCH])
    for n in range(3):
        assert call(client, "match", bearer(f"trk_guess{n}")).status_code == 401
    blocked = call(client, "match", bearer(key))  # the right key, from the same address
    assert_error(blocked, 429, "rate_limited")
    assert int(blocked.headers["Retry-After"]) >= 1


def test_retry_after_only_on_429_and_never_zero(custom):
    registry, app = custom(rate_limit="2 per minute")
    client = app.test_client()
    _, key = registry.add_platform("alpha", [Scope.MATCH])
    answers = [call(client, "match", bearer(key)) for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 429]
    assert all("Retry-After" not in a.headers for a in answers[:2])
    assert 1 <= int(answers[2].headers["Retry-After"]) <= 61

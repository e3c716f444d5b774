"""Schemathesis against the app, loaded from its own /api/openapi.json: every operation, with
schema-valid (positive) and schema-violating (negative) requests, authenticated with a real key
over a registry that holds data (on SQLite, and on PostgreSQL where a server runs), answers
without a 500 and as the document says (status codes, content types, headers, response bodies).

Two of schemathesis' checks are left out on purpose: ``positive_data_acceptance`` (a hash can be
well-formed hex and still be refused as degenerate, 422 ``degenerate_hash``, which a JSON schema
cannot express) and ``negative_data_rejection`` (unknown query parameters are ignored, as usual
for GET). Hypothesis examples are bounded so the run stays short.
"""

from __future__ import annotations

import contextlib
import os
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from registry.bootstrap import build_registry
from registry.config import Settings
from registry.domain import Scope
from registry.hashing import DecodeOptions, compute_signals
from registry.service import Registry, SubmittedImage
from registry.web import create_app
from tests.conftest import FAST_KDF, encode, photo

CHECKS = [not_a_server_error, response_schema_conformance, status_code_conformance,
          content_type_conformance, response_headers_conformance]
OPERATIONS = [("POST", "/api/v1/match"), ("POST", "/api/v1/match/image"),
              ("POST", "/api/v1/match/video"), ("POST", "/api/v1/feedback"),
              ("GET", "/api/v1/feed")]
MAX_EXAMPLES = int(os.environ.get("TAKEDOWN_FUZZ_EXAMPLES", "25"))  # more in a deep run


@dataclass
class Api:
    registry: Registry
    schema: Any
    headers: dict[str, str]
    image: bytes

    def case(self, operation: Any, **kwargs: Any) -> Any:
        return self.schema.make_case(operation=operation, **kwargs)


@cache
def registered(seed: int) -> SubmittedImage:
    return SubmittedImage.from_image(
        compute_signals(encode(photo(seed), quality=90), DecodeOptions(), registration=True))


def build_api(data_dir: Path, **settings: Any) -> Api:
    """A registry that holds data (active and withdrawn hashes, an image's own), a key with
    both scopes, and the schema loaded from the app's own document. ``settings``: e.g. a
    ``database_url`` (then the schema is migrated first)."""
    s = Settings.from_env({}, data_dir=str(data_dir), pin_kdf_n=FAST_KDF,
                          rate_limit="1000000 per minute",
                          auth_failure_limit="1000000 per minute", **settings)
    registry = build_registry(s, migrate=True)
    image = encode(photo(41), quality=90)
    receipt = registry.submit_case([registered(41)])
    registry.submit_case([registered(42)])
    registry.withdraw_case(receipt.number, receipt.pin)  # the feed holds tombstones too
    registry.submit_case([SubmittedImage.from_image(registry.hash_image(image))])
    _, key = registry.add_platform("fuzzer", [Scope.MATCH, Scope.FEED])
    app = create_app(registry)
    schema = schemathesis.openapi.from_wsgi("/api/openapi.json", app)
    return Api(registry, schema, {"Authorization": f"Bearer {key}"}, image)


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def api(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
        ) -> Iterator[Api]:
    """The same API over SQLite and over PostgreSQL (skipped where no server runs): some input
    only one of them refuses (PostgreSQL cannot hold a NUL character in text). One per module:
    what the requests leave behind accumulates, as on a server up for a while."""
    from tests.test_web_fuzz import postgres_database

    data_dir = tmp_path_factory.mktemp("api-fuzz") / "data"
    with contextlib.ExitStack() as stack:
        extra = {"database_url": stack.enter_context(postgres_database())} \
            if request.param == "postgres" else {}
        built = build_api(data_dir, **extra)
        yield built
        built.registry.close()


def test_the_document_lists_every_operation(api):
    found = set()
    for result in api.schema.get_all_operations():
        operation = result.ok()
        found.add((operation.method.upper(), operation.path))
    assert found == set(OPERATIONS)


def fuzz_api(api: Api, method: str, path: str, mode: GenerationMode, examples: int,
             on_failure: Callable[[BaseException], None] | None = None) -> Counter[str]:
    """``examples`` generated requests to one operation: a count of ``"- <status>"`` (and
    ``"failure"``). A failed check raises, unless ``on_failure`` takes it."""
    from tests.test_web_fuzz import call_checked

    operation = api.schema[path][method]
    seen: Counter[str] = Counter()

    @given(case=operation.as_strategy(mode))
    @settings(max_examples=examples, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    def run(case: Any) -> None:
        call_checked(case, seen, "-", on_failure, CHECKS, headers=api.headers)

    run()
    return seen


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
                         ids=["positive", "negative"])
@pytest.mark.parametrize("method, path", OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_generated_requests_get_documented_answers(api, method, path, mode):
    seen = fuzz_api(api, method, path, mode, MAX_EXAMPLES)
    assert "- 500" not in seen and sum(seen.values()) > 0


def test_real_answers_conform(api):
    """Answers with matches, feedback on a real match and a feed page with both statuses are
    validated against the document too (random inputs rarely reach them)."""
    match = api.schema["/api/v1/match"]["POST"]
    image = api.registry.hash_image(api.image)
    body = {"queries": [{"id": "hit", "signals": {"pdq": image.pdq.hex, "md5": image.md5.hex}},
                        {"id": "miss", "signals": {"md5": "0123456789abcdef0123456789abcdef"}}]}
    response = api.case(match, body=body, media_type="application/json").call_and_validate(
        headers=api.headers, checks=CHECKS)
    results = response.json()["results"]
    assert results[0]["matched"] and not results[1]["matched"]

    feedback = api.schema["/api/v1/feedback"]["POST"]
    match_id = results[0]["matches"][0]["match_id"]
    answer = api.case(feedback, body={"match_id": match_id, "outcome": "removed"},
                                media_type="application/json").call_and_validate(
        headers=api.headers, checks=CHECKS)
    assert answer.json()["recorded"] is True

    upload = api.schema["/api/v1/match/image"]["POST"]
    answer = api.case(upload, body={"file": api.image},
                              media_type="multipart/form-data").call_and_validate(
        headers=api.headers, checks=CHECKS)
    assert answer.json()["matched"] is True

    feed = api.schema["/api/v1/feed"]["GET"]
    page = api.case(feed, query={"limit": 1000}).call_and_validate(headers=api.headers,
                                                                  checks=CHECKS)
    assert {r["status"] for r in page.json()["records"]} == {"active", "withdrawn"}


ODD_TEXT = {"nul": "a\\u0000b", "lone surrogate": "a\\ud800b", "lone low surrogate": "\\udfff"}


@pytest.mark.parametrize("odd", sorted(ODD_TEXT))
@pytest.mark.parametrize("where", ["query id", "match_id"])
def test_text_no_database_can_hold_is_refused_as_invalid_json(api, where, odd):
    """Regression (found by fuzzing): a query id or match_id holding U+0000 or a lone
    surrogate (JSON allows both as escapes) reached the database, which cannot store or compare
    it (SQLite: no UTF-8 for a surrogate; PostgreSQL: neither, nor NUL): 500. Such text is
    refused with the JSON it came in, 400 invalid_json, on every backend alike."""
    image = api.registry.hash_image(api.image)
    text = ODD_TEXT[odd]
    path, body = ("/api/v1/match", '{"queries": [{"id": "' + text + '", "signals": {"pdq": "'
                  + image.pdq.hex + '"}}]}') if where == "query id" else (
        "/api/v1/feedback", '{"match_id": "m_' + text + '", "outcome": "removed"}')
    client = api.schema.app.test_client()
    answer = client.post(path, data=body,
                         headers={**api.headers, "Content-Type": "application/json"})
    assert answer.status_code == 400, answer.get_data()
    assert answer.get_json()["error"]["code"] == "invalid_json"


def test_paired_surrogates_are_ordinary_text(api):
    """An escaped pair (what json.dumps writes for an emoji) is one character, and works."""
    image = api.registry.hash_image(api.image)
    body = '{"queries": [{"id": "\\ud83d\\ude00", "signals": {"pdq": "' + image.pdq.hex + '"}}]}'
    answer = api.schema.app.test_client().post(
        "/api/v1/match", data=body, headers={**api.headers, "Content-Type": "application/json"})
    assert answer.status_code == 200 and answer.get_json()["results"][0]["id"] == "\U0001f600"

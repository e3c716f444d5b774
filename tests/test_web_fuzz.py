"""Web input fuzzing beyond the platform API (tests/test_api_schemathesis.py covers that one):

* schemathesis, positive and negative, over the submitter pages and their forms (``/``,
  ``/submit``, ``/case``, the no-JavaScript upload, status, withdrawal, ``/submit/signals``),
  the operational endpoints, the API document and docs page, static files, unknown addresses and
  wrong methods. None of these is in ``/api/openapi.json`` (the pages blueprint has
  ``enable_openapi=False``), so :func:`site_document` describes them here, as the pages answer
  them: every error a page is a page in the reader's language, ``/submit/signals`` answers the
  JSON error shape ``{"error": {"code", "message"}}``.
* every POST carries a real CSRF token (cookie and ``X-CSRF-Token``, fetched from a page with
  the same app) in most generated cases, and a broken one (no cookie, forged token, another
  browser's cookie, a cross-site fetch, a foreign Origin) in the rest: those must all be refused
  with 400, and most of the others must get past the gate to the handler.
* raw requests, any method at any address with any body, and hypothesis over the JSON parsers
  the web edge uses (submission, match queries, signals of every kind, feedback outcomes, feed
  cursors, case numbers and PINs): each either parses or raises a RegistryError.

Examples are bounded so ``make test`` stays short; ``TAKEDOWN_FUZZ_EXAMPLES`` raises them, and
bench/webfuzz.py runs all of it long and counts the requests and statuses.
"""

from __future__ import annotations

import base64
import dataclasses
import inspect
import json
import os
import random
import re
import secrets
import struct
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from registry.bootstrap import build_registry
from registry.config import Settings, default
from registry.domain import (
    LOCAL_HEADER,
    LOCAL_KEYPOINT_BYTES,
    QUERY_SIGNALS,
    VPDQ_FRAME,
    VPDQ_HEADER,
    CaseNumber,
    Scope,
    Signal,
    SignalKind,
    normalise_pin,
)
from registry.errors import RegistryError
from registry.hashing import PIPELINE_VERSION
from registry.service import Registry, SubmittedImage
from registry.service.cases import MAX_IMAGES_PER_CASE
from registry.service.feed import parse_cursor
from registry.service.feedback import parse_outcome
from registry.web import create_app, csrf
from registry.web.api import match_queries, parse_query
from registry.web.submission import parse_submission
from tests.conftest import FAST_KDF, encode, photo, postgres_database

MAX_EXAMPLES = int(os.environ.get("TAKEDOWN_FUZZ_EXAMPLES", "20"))  # more in a deep run
MODES = {"positive": GenerationMode.POSITIVE, "negative": GenerationMode.NEGATIVE}
HEX_DIGITS = {"pdq": 64, "phash": 16, "md5": 32, "sha256": 64}
CSRF_FAILED = 400  # what every POST without a valid token gets
CASE_PATTERN = r"^([0-9A-HJKMNP-TV-Z]{4}-){3}[0-9A-HJKMNP-TV-Z*~$=U]$"  # 7K3M-Q9ZT-W2AB-C


# --- the document: what the pages and the other non-API addresses accept and answer ----------
def _hex(kind: str) -> dict[str, Any]:
    return {"type": "string", "pattern": f"^[0-9a-f]{{{HEX_DIGITS[kind]}}}$"}


def _html(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"text/html": {"schema": {"type": "string"}}}}


ERROR_SCHEMA: dict[str, Any] = {
    "type": "object", "additionalProperties": False, "required": ["error"],
    "properties": {"error": {
        "type": "object", "additionalProperties": False, "required": ["code", "message"],
        "properties": {"code": {"type": "string", "pattern": "^[a-z_]+$"},
                       "message": {"type": "string", "minLength": 1}}}},
}


def _json_error(description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": ERROR_SCHEMA}}}


def _either_error(description: str) -> dict[str, Any]:
    """A missing address or wrong method: a page for a browser, the JSON shape otherwise."""
    return {"description": description,
            "content": {"text/html": {"schema": {"type": "string"}},
                        "application/json": {"schema": ERROR_SCHEMA}}}


LANG = {"name": "lang", "in": "query", "required": False,
        "schema": {"type": "string", "enum": ["ko", "en"]}}
ACCEPT_LANGUAGE = {"name": "Accept-Language", "in": "header", "required": False,
                   "schema": {"type": "string", "maxLength": 64}}
PAGE_PARAMS = [LANG, ACCEPT_LANGUAGE]


def _page_responses(*statuses: int) -> dict[str, Any]:
    out = {"200": _html("the page")}
    out.update({str(s): _html("an error, as a page in the reader's language") for s in statuses})
    return out


def _credentials(number: str, pin: str) -> dict[str, Any]:
    """Positive: a real case's number and PIN as people type them, or near misses, so status
    pages, confirmations, wrong PINs, unknown cases and withdrawals are all reached. Negative:
    anything else (mistyped, too long, not text), which the case-number parser must refuse."""
    digits = pin.replace("-", "")
    return {
        "case": {"type": "string", "enum": [
            number, number.lower(), number.replace("-", ""), f" {number.replace('-', ' ')} ",
            number.replace("0", "O").replace("1", "I"), "7K3M-Q9ZT-W2AB-C"]},
        "pin": {"type": "string", "enum": [
            pin, digits, f"{digits[:4]} {digits[4:8]} {digits[8:]}", "0000-0000-0000",
            digits[:-1], digits.translate(str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩"))]},
    }


def image_schema(labels: list[str]) -> dict[str, Any]:
    """One image of a /submit/signals body (registry/web/submission.py), as the page's worker
    sends it: PDQ with its quality, both digests, pHash and local features, labelled views."""
    signals = {k: _hex(k) for k in HEX_DIGITS}
    signals["local"] = {"type": "string", "pattern": "^[A-Za-z0-9+/]{4,400}={0,2}$"}
    return {
        "type": "object", "additionalProperties": False, "required": ["signals", "pdq_quality"],
        "properties": {
            "signals": {"type": "object", "additionalProperties": False,
                        "required": ["pdq", "md5", "sha256"], "properties": signals},
            "pdq_quality": {"type": "integer", "minimum": 0, "maximum": 100},
            "views": {"type": "array", "maxItems": 8, "uniqueItems": True, "items": {
                "type": "object", "additionalProperties": False,
                "required": ["label", "pdq", "quality"],
                "properties": {"label": {"type": "string", "enum": labels},
                               "pdq": _hex("pdq"),
                               "quality": {"type": "integer", "minimum": 0, "maximum": 100}}}},
            "pipeline_version": {"type": "integer", "enum": [PIPELINE_VERSION]},
        },
    }


def site_document(case_number: str, pin: str, labels: list[str]) -> dict[str, Any]:
    """An OpenAPI 3.1 document of every address outside /api/v1, as this test expects it to
    answer. ``case_number`` and ``pin`` are a real case's, offered among the generated values;
    ``labels`` those of a real registration's views."""
    post_page = [LANG]
    case_form = {"type": "object", "additionalProperties": False, "required": ["case", "pin"],
                 "properties": {"csrf_token": {"type": "string"},
                                **_credentials(case_number, pin)}}
    withdraw_form = {**case_form, "properties": {
        **case_form["properties"], "confirm": {"type": "string", "enum": ["yes", "no"]}}}
    upload_form = {"type": "object", "additionalProperties": False,
                   "required": ["consent", "images"],
                   "properties": {"csrf_token": {"type": "string"},
                                  "consent": {"type": "string", "enum": ["yes"]},
                                  "images": {"type": "array", "minItems": 1, "maxItems": 3,
                                             "items": {"type": "string", "format": "binary"}}}}
    signals_body = {"type": "object", "additionalProperties": False, "required": ["images"],
                    "properties": {"images": {"type": "array", "minItems": 1,
                                              "maxItems": MAX_IMAGES_PER_CASE,
                                              "items": image_schema(labels)}}}
    receipt = {"type": "object", "additionalProperties": False,
               "required": ["case", "pin", "signals"],
               "properties": {"case": {"type": "string", "pattern": CASE_PATTERN},
                              "pin": {"type": "string", "pattern": r"^\d{4}-\d{4}-\d{4}$"},
                              "signals": {"type": "integer", "minimum": 1}}}
    # A query parameter every address ignores, so that a negative mode has something to break
    # even where an address takes no input.
    probe = [{"name": "q", "in": "query", "required": False,
              "schema": {"type": "string", "maxLength": 20}}]
    wrong = {"parameters": probe,
             "requestBody": {"required": False, "content": {"application/json": {
                 "schema": {"type": "object"}}}},
             "responses": {"405": _either_error("this address does not take that method")}}
    json_ok = {"200": {"description": "ok", "content": {"application/json": {
        "schema": {"type": "object"}}}}}
    paths: dict[str, Any] = {
        "/": {"get": {"parameters": PAGE_PARAMS, "responses": _page_responses()},
              "post": wrong, "put": wrong, "delete": wrong},
        "/submit": {
            "get": {"parameters": PAGE_PARAMS, "responses": _page_responses()},
            "post": {"parameters": post_page,
                     "requestBody": {"required": True, "content": {
                         "multipart/form-data": {"schema": upload_form},
                         "application/x-www-form-urlencoded": {"schema": {
                             "type": "object", "properties": {"consent": {"type": "string"}}}}}},
                     "responses": _page_responses(400, 413, 422, 429)},
            "put": wrong, "patch": wrong},
        "/submit/signals": {
            "post": {"parameters": post_page,
                     "requestBody": {"required": True, "content": {
                         "application/json": {"schema": signals_body},
                         "text/plain": {"schema": {"type": "string"}}}},
                     "responses": {
                         "201": {"description": "the case's receipt", "content": {
                             "application/json": {"schema": receipt}}},
                         **{str(s): _json_error("refused") for s in (400, 413, 415, 422, 429)}}},
            "get": wrong, "delete": wrong},
        "/case": {
            "get": {"parameters": PAGE_PARAMS, "responses": _page_responses()},
            "post": {"parameters": post_page,
                     "requestBody": {"required": True, "content": {
                         "application/x-www-form-urlencoded": {"schema": case_form}}},
                     "responses": _page_responses(400, 401, 404, 413, 422, 429)},
            "delete": wrong},
        "/case/withdraw": {
            "post": {"parameters": post_page,
                     "requestBody": {"required": True, "content": {
                         "application/x-www-form-urlencoded": {"schema": withdraw_form}}},
                     "responses": _page_responses(400, 401, 404, 413, 422, 429)},
            "get": wrong, "put": wrong},
        "/healthz": {"get": {"parameters": probe, "responses": json_ok}, "post": wrong},
        "/readyz": {"get": {"parameters": probe, "responses": {**json_ok, "503": {
            "description": "not ready", "content": {"application/json": {
                "schema": {"type": "object"}}}}}}, "delete": wrong},
        "/metrics": {"get": {"parameters": probe, "responses": {"200": {
            "description": "Prometheus exposition",
            "content": {"text/plain": {"schema": {"type": "string"}}}}}}, "post": wrong},
        "/api/openapi.json": {"get": {"parameters": probe, "responses": json_ok}, "post": wrong},
        "/api/docs": {"get": {"parameters": probe,
                              "responses": {"200": _html("the API reference")}},
                      "put": wrong},
        "/static/{filename}": {
            "get": {"parameters": [{"name": "filename", "in": "path", "required": True,
                                    "schema": {"type": "string", "enum": [
                                        "css/site.css", "js/site.js", "js/hash/worker.js",
                                        "js/hash/pdq.js", "../pages.py", "js/../css/site.css",
                                        "css", "css/", "nothing.js"]}}],
                    "responses": {"200": {"description": "a file", "content": {
                        "*/*": {"schema": {}}}},
                                  "404": _either_error("no such file")}},
            # 404 where the generated name makes an address no rule matches (".", "a/../..")
            "post": {**wrong, "parameters": [{"name": "filename", "in": "path",
                                              "required": True,
                                              "schema": {"type": "string", "minLength": 1}}],
                     "responses": {**wrong["responses"],
                                   "404": _either_error("no such address")}}},
        "/nowhere/{rest}": {
            "get": {"parameters": [*probe, {"name": "rest", "in": "path", "required": True,
                                               "schema": {"type": "string", "minLength": 1}}],
                    "responses": {"404": _either_error("nothing here")}}},
        "/api/v1/{rest}": {
            "get": {"parameters": [{"name": "rest", "in": "path", "required": True,
                                    "schema": {"type": "string", "pattern": "^x[a-z0-9]*$"}}],
                    "responses": {"404": _json_error("nothing here")}}},
    }
    return {"openapi": "3.1.0", "info": {"title": "Takedown Registry pages (test)",
                                         "version": "1"}, "paths": paths}


# --- the app under test -------------------------------------------------------------------
@dataclass
class Site:
    registry: Registry
    app: Any
    schema: Any
    number: str
    pin: str
    cookie: str
    token: str
    key: str  # an API key with both scopes
    pdq: str  # the registered image's PDQ hash: a query with it matches


def fuzz_settings(data_dir: Path, **extra: Any) -> Settings:
    """Limits out of the way (every request must reach its handler), a fast PIN KDF, and a
    lockout far off so a real case's status and withdrawal pages are reached again and again."""
    unlimited = "1000000 per minute"
    far = {"pin_max_failures": 1_000_000, "pin_client_max_failures": 1_000_000,
           "pin_case_max_failures": 1_000_000}
    known = {k: v for k, v in far.items() if k in fields_of(Settings)}
    return Settings.from_env({}, data_dir=str(data_dir), pin_kdf_n=FAST_KDF,
                             rate_limit=unlimited, submit_limit=unlimited, case_limit=unlimited,
                             auth_failure_limit=unlimited, **{**known, **extra})


def fields_of(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def fresh_token(app: Any) -> tuple[str, str]:
    """The CSRF cookie and a form's token, as a browser gets them from the submit page."""
    client = app.test_client()
    response = client.get("/submit?lang=en")
    found = re.search(r'name="csrf_token" value="([^"]+)"', response.get_data(as_text=True))
    cookie = client.get_cookie(csrf.COOKIE)
    assert found and cookie is not None, "the submit page issues no CSRF token"
    return cookie.value, found.group(1)


def build_site(data_dir: Path, **extra: Any) -> Site:
    registry = build_registry(fuzz_settings(data_dir, **extra), migrate=True)
    image = SubmittedImage.from_image(
        registry.hash_image(encode(photo(61), quality=90), registration=True))
    receipt = registry.submit_case([image])
    app = create_app(registry)
    labels = sorted({label for label, _, _ in image.views})
    schema = schemathesis.openapi.from_dict(site_document(receipt.number, receipt.pin, labels))
    schema.app = app
    cookie, token = fresh_token(app)
    _, key = registry.add_platform("site-fuzzer", [Scope.MATCH, Scope.FEED])
    pdq = next(s.hex for s in image.signals if s.kind is SignalKind.PDQ)
    return Site(registry, app, schema, receipt.number, receipt.pin, cookie, token, key, pdq)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """One site for the module: what the fuzzing registers and withdraws accumulates, as on a
    server that has been up a while."""
    built = build_site(tmp_path_factory.mktemp("web-fuzz") / "data")
    yield built
    built.registry.close()


def page_body(registry: Registry, seed: int) -> dict[str, Any]:
    """What the submit page's worker sends for one generated picture (hashed here)."""
    image = registry.hash_image(encode(photo(seed), quality=90), registration=True)
    signals = {"pdq": image.pdq.hex, "phash": image.phash.hex, "md5": image.md5.hex,
               "sha256": image.sha256.hex}
    if image.local is not None:
        signals["local"] = image.local.text
    return {"signals": signals, "pdq_quality": image.pdq_quality,
            "pipeline_version": PIPELINE_VERSION,
            "views": [{"label": v.label, "pdq": v.pdq.hex, "quality": v.quality}
                      for v in image.variants]}


@cache
def real_jpeg() -> bytes:
    return encode(photo(64, (320, 240)), quality=90)


@pytest.fixture(scope="module")
def pg_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """The same site over PostgreSQL, which refuses some text SQLite holds (a NUL)."""
    with postgres_database() as url:
        built = build_site(tmp_path_factory.mktemp("web-fuzz-pg") / "data", database_url=url)
        yield built
        built.registry.close()


# --- CSRF: most cases pass the gate, the rest are each refused -----------------------------
CSRF_VARIANTS = ["valid"] * 10 + ["no_cookie", "forged", "other_browser", "cross_site",
                                  "foreign_origin", "no_token"]


def csrf_for(site: Site, variant: str) -> tuple[dict[str, str], dict[str, str]]:
    """Headers and cookies one POST carries under a CSRF variant."""
    valid_headers = {csrf.HEADER: site.token}
    valid_cookies = {csrf.COOKIE: site.cookie}
    if variant == "valid":
        return valid_headers, valid_cookies
    if variant == "no_cookie":
        return valid_headers, {}
    if variant == "forged":
        return {csrf.HEADER: site.token[:-6] + "AAAAAA"}, valid_cookies
    if variant == "other_browser":
        return valid_headers, {csrf.COOKIE: secrets.token_urlsafe(32)}
    if variant == "cross_site":
        return {**valid_headers, "Sec-Fetch-Site": "cross-site"}, valid_cookies
    if variant == "foreign_origin":
        return {**valid_headers, "Origin": "https://elsewhere.example"}, valid_cookies
    if variant == "no_token":
        return {}, valid_cookies
    raise ValueError(variant)


# --- checks beyond schemathesis' own --------------------------------------------------------
def _body_kind(response: Any) -> str:
    return (response.headers.get("content-type") or [""])[0].split(";")[0].strip()


HTML_LANG = re.compile(r'^<!doctype html>\s*<html lang="(ko|en)">', re.IGNORECASE)


def check_error_shape(response: Any, path: str) -> None:
    """An error is a page in the reader's language (with a heading or an alert) or the JSON
    shape, never a traceback, never an empty body."""
    if response.status_code < 400:
        return
    kind = _body_kind(response)
    text = response.content.decode("utf-8", "replace")
    assert "Traceback" not in text
    if kind == "text/html":
        assert HTML_LANG.match(text), text[:200]
        assert re.search(r"<h1>[^<]+</h1>|role=\"alert\"[^>]*>\s*<p id=\"alert-text\">[^<]+",
                         text), text[:2000]
    else:
        assert kind == "application/json", (path, kind)
        body = response.json()
        assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
        assert body["error"]["code"] and body["error"]["message"], body


CHECKS = [not_a_server_error, response_schema_conformance, status_code_conformance,
          content_type_conformance, response_headers_conformance]


def site_operations(site: Site) -> list[tuple[str, str]]:
    found = []
    for result in site.schema.get_all_operations():
        operation = result.ok()
        found.append((operation.method.upper(), operation.path))
    return sorted(found)


SITE_OPERATIONS = sorted((m.upper(), p) for p, ops in site_document(
    "X", "Y", ["mirror"])["paths"].items() for m in ops)
POSTED_FORMS = {("POST", "/submit"), ("POST", "/submit/signals"), ("POST", "/case"),
                ("POST", "/case/withdraw")}


OnFailure = Callable[[BaseException], None]


def call_checked(case: Any, seen: Counter[str], label: str, on_failure: OnFailure | None,
                 checks: list[Any], extra: Callable[[Any], None] | None = None,
                 **kwargs: Any) -> Any:
    """Send one generated case; count ``"<label> <status>"`` in ``seen`` (``"<label>
    exception"`` when the app raised), then check the answer. A failure is counted under
    ``"failure"`` and raised, unless ``on_failure`` takes it."""
    try:
        # buffered: the test client closes each response (a file it sends) as a server does
        response = case.call(buffered=True, **kwargs)
    except BaseException as e:  # the app itself raised: as bad as a 500
        seen[f"{label} exception"] += 1
        seen["failure"] += 1
        if on_failure is None:
            raise
        on_failure(e)
        return None
    seen[f"{label} {response.status_code}"] += 1
    try:
        case.validate_response(response, checks=checks)
        if extra is not None:
            extra(response)
    except BaseException as e:  # a check failed: count it, then report it
        seen["failure"] += 1
        if on_failure is None:
            raise
        on_failure(e)
    return response


def fuzz_operation(site: Site, method: str, path: str, mode: str, examples: int,
                   on_failure: OnFailure | None = None) -> Counter[str]:
    """Run ``examples`` generated cases of one operation; return a count of outcomes
    (``"<variant> <status>"`` keys, ``"failure"``). A failed check raises, unless
    ``on_failure`` takes it."""
    operation = site.schema[path][method]
    seen: Counter[str] = Counter()
    gated = (method, path) in POSTED_FORMS

    @given(case=operation.as_strategy(MODES[mode]), variant=st.sampled_from(CSRF_VARIANTS),
           real=st.integers(0, 3))
    @settings(max_examples=examples, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    def run(case: Any, variant: str, real: int) -> None:
        if (method, path) == ("POST", "/submit") and real == 0 and isinstance(
                case.body, dict) and isinstance(case.body.get("images"), list) and case.body[
                "images"]:
            case.body["images"][0] = real_jpeg()  # generated files are rarely pictures
        if not gated:
            variant = "-"
        headers, cookies = csrf_for(site, variant) if gated else ({}, {})

        def extra(response: Any) -> None:
            check_error_shape(response, path)
            if gated and variant != "valid":
                # Refused at the gate, whatever the body (413: too large to read the token).
                assert response.status_code in (CSRF_FAILED, 413), (variant, response.status_code)

        call_checked(case, seen, variant, on_failure, CHECKS, extra, headers=headers,
                     cookies=cookies)

    run()
    return seen


def reached_handler(seen: Counter[str]) -> tuple[int, int]:
    """(valid-token cases answered by the handler, valid-token cases) of one run."""
    valid = {k: n for k, n in seen.items() if k.startswith("valid ")}
    past = sum(n for k, n in valid.items() if k != f"valid {CSRF_FAILED}")
    return past, sum(valid.values())


# --- tests: schemathesis over the site --------------------------------------------------------
def test_the_document_lists_every_operation(site):
    assert site_operations(site) == SITE_OPERATIONS
    assert set(SITE_OPERATIONS) >= POSTED_FORMS


@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize("method, path", SITE_OPERATIONS,
                         ids=[f"{m} {p}" for m, p in SITE_OPERATIONS])
def test_generated_requests_get_documented_answers(site, method, path, mode):
    seen = fuzz_operation(site, method, path, mode, MAX_EXAMPLES)
    assert sum(seen.values()) > 0 and not any(k.endswith(" 500") for k in seen), seen
    if (method, path) in POSTED_FORMS:
        past, valid = reached_handler(seen)
        # Most valid-token cases reach the handler (a 400 there is a refused CSRF token, or
        # for a multipart body Werkzeug's own refusal of a malformed one).
        assert valid and past >= valid // 2, seen


@pytest.mark.parametrize("path", ["/case", "/case/withdraw"])
def test_lockouts_under_fuzzing_are_pages_too(tmp_path, path):
    """With tight lockout settings, wrong PINs soon lock this client out: those answers (429,
    Retry-After) conform too, and nothing else breaks."""
    site = build_site(tmp_path / "data", pin_max_failures=2, pin_client_max_failures=3,
                      pin_case_max_failures=4)
    try:
        seen = fuzz_operation(site, "POST", path, "positive", max(MAX_EXAMPLES, 30))
    finally:
        site.registry.close()
    assert seen["valid 429"] > 0, seen


@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize("method, path", sorted(POSTED_FORMS),
                         ids=[f"{m} {p}" for m, p in sorted(POSTED_FORMS)])
def test_the_forms_over_postgresql_too(pg_site, method, path, mode):
    seen = fuzz_operation(pg_site, method, path, mode, MAX_EXAMPLES)
    assert not any(k.endswith(" 500") for k in seen), seen


def test_a_real_submission_through_the_fuzzed_operation_conforms(site):
    """Generated bodies rarely pass every rule of a case (PDQ quality, no degenerate hash):
    a real one, through the same operation and checks, is registered and conforms."""
    operation = site.schema["/submit/signals"]["POST"]
    body = {"images": [page_body(site.registry, 62)]}
    headers, cookies = csrf_for(site, "valid")
    case = site.schema.make_case(operation=operation, body=body, media_type="application/json")
    response = case.call_and_validate(headers=headers, cookies=cookies, checks=CHECKS)
    assert response.status_code == 201, response.text
    number = response.json()["case"]

    status = site.schema["/case"]["POST"]
    form = {"case": number, "pin": response.json()["pin"]}
    case = site.schema.make_case(operation=status, body=form,
                                 media_type="application/x-www-form-urlencoded")
    answer = case.call_and_validate(headers=headers, cookies=cookies, checks=CHECKS)
    assert answer.status_code == 200 and number in answer.text


def test_every_csrf_variant_but_the_valid_one_is_refused(site):
    operation = site.schema["/case"]["POST"]
    form = {"case": site.number, "pin": site.pin}
    for variant in sorted(set(CSRF_VARIANTS)):
        headers, cookies = csrf_for(site, variant)
        case = site.schema.make_case(operation=operation, body=form,
                                     media_type="application/x-www-form-urlencoded")
        response = case.call_and_validate(headers=headers, cookies=cookies, checks=CHECKS)
        assert response.status_code == (200 if variant == "valid" else CSRF_FAILED), variant


# --- raw requests: any method, any address, any body ------------------------------------------
METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE", "PROPFIND"]
PREFIXES = ["", "/", "/submit", "/submit/signals", "/case", "/case/withdraw", "/static/",
            "/static/js/", "/api", "/api/", "/api/v1/", "/api/v1/match", "/api/v1/match/image",
            "/api/v1/match/video", "/api/v1/feedback", "/api/v1/feed", "/api/openapi.json",
            "/api/docs", "/healthz", "/readyz", "/metrics", "/favicon.ico", "/%2e%2e/",
            "/submit//", "//"]
CONTENT_TYPES = ["application/json", "multipart/form-data; boundary=xyz",
                 "multipart/form-data", "application/x-www-form-urlencoded", "text/plain",
                 "application/octet-stream", "image/jpeg", "", "application/json; charset=utf-16",
                 "multipart/form-data; boundary="]
ACCEPTS = ["text/html", "application/json", "*/*", "", "text/html;q=0.1, application/json",
           "image/*"]
segment = st.text(min_size=0, max_size=24).map(lambda s: urllib.parse.quote(s, safe="/=&?.%"))
header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7e), max_size=40)


@st.composite
def chaos_requests(draw: Any) -> dict[str, Any]:
    path = draw(st.sampled_from(PREFIXES)) + draw(segment)
    if not path.startswith("/"):
        path = "/" + path
    if path.startswith("//"):  # the test client would read what follows as a host name
        path = "/x" + path
    headers = {"Accept": draw(st.sampled_from(ACCEPTS))}
    kind = draw(st.sampled_from(CONTENT_TYPES))
    if kind:
        headers["Content-Type"] = kind
    for name in draw(st.lists(st.sampled_from(
            ["Authorization", "Accept-Language", "Origin", "Sec-Fetch-Site", csrf.HEADER,
             "X-Forwarded-For", "Range", "If-None-Match"]), max_size=3, unique=True)):
        headers[name] = draw(header_text)
    body = draw(st.one_of(st.binary(max_size=300), st.sampled_from([
        b"{", b"[]", b'{"images": []}', b'{"queries": [{"id": "a", "signals": {}}]}',
        b"--xyz\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a\"\r\n\r\nab\r\n"
        b"--xyz--\r\n", b"\xff\xd8\xff", "\u00e9".encode("utf-16")])))
    return {"method": draw(st.sampled_from(METHODS)), "path": path, "headers": headers,
            "data": body, "query_string": draw(st.sampled_from(["", "lang=ko", "lang=xx",
                                                                "limit=0", "cursor=-1",
                                                                "lang=en&lang=ko"]))}


# Text no client should send but any can: lone surrogates (JSON's "\ud800"), NUL, controls.
# (st.text never draws surrogates, whatever its alphabet: joined lists of characters do.)
odd_text = st.lists(st.characters() | st.characters(categories=["Cs", "Cc"]), max_size=12).map(
    "".join)
odd_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | odd_text,
                          lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
                              odd_text, inner, max_size=3), max_leaves=10)
PDQ, KEY, TOKEN = "@PDQ@", "@KEY@", "@TOKEN@"  # the site's own, filled in by send_raw
JSON_ENDPOINTS = ["/api/v1/match", "/api/v1/feedback", "/submit/signals"]


@st.composite
def json_documents(draw: Any, path: str) -> bytes:
    """A body for one of the JSON endpoints: near valid (a query that matches, a real-looking
    image) with odd text where a client's own text goes, or anything at all."""
    image = {"signals": {"pdq": PDQ, "md5": "0f" * 16, "sha256": "1e" * 32},
             "pdq_quality": 90, "views": [{"label": draw(odd_text), "pdq": PDQ, "quality": 90}]}
    near = {
        "/api/v1/match": [{"queries": [{"id": draw(odd_text), "signals": {"pdq": PDQ}}]},
                          {"queries": [{"id": "q", "signals": {draw(odd_text): PDQ}}]}],
        "/api/v1/feedback": [{"match_id": draw(odd_text), "outcome": "removed"},
                             {"match_id": "m_0", "outcome": draw(odd_text)}],
        "/submit/signals": [{"images": [image]}, {"images": [{**image, "signals": {
            **image["signals"], "local": draw(odd_text)}}]}],
    }[path]
    doc = draw(st.sampled_from(near)) if draw(st.integers(0, 3)) else draw(odd_values)
    text = json.dumps(doc, ensure_ascii=draw(st.booleans()))
    return text.encode("utf-8", "surrogatepass")  # not UTF-8 where a surrogate is raw


@st.composite
def json_requests(draw: Any) -> dict[str, Any]:
    headers = {"Content-Type": "application/json", "Accept": draw(st.sampled_from(ACCEPTS))}
    if draw(st.integers(0, 9)):
        headers["Authorization"] = f"Bearer {KEY}"
        headers[csrf.HEADER] = TOKEN
    path = draw(st.sampled_from(JSON_ENDPOINTS))
    return {"method": "POST", "path": path, "headers": headers,
            "data": draw(json_documents(path)),
            "query_string": draw(st.sampled_from(["", "lang=en"]))}


raw_requests = st.one_of(json_requests(), chaos_requests())


def send_raw(site: Site, request: dict[str, Any]) -> Any:
    client = site.app.test_client()
    client.set_cookie(csrf.COOKIE, site.cookie)
    path, query = request["path"], request["query_string"]
    if query:
        path += ("&" if "?" in path else "?") + query
    fill = {KEY: site.key, TOKEN: site.token, PDQ: site.pdq}
    headers = {k: fill.get(v, v).replace(KEY, site.key) for k, v in request["headers"].items()}
    data = request["data"].replace(PDQ.encode(), site.pdq.encode())
    return client.open(path, method=request["method"], headers=headers, data=data)


def check_raw(method: str, response: Any) -> None:
    assert response.status_code < 500 or response.status_code == 503, response.status_code
    if method == "HEAD":
        assert not response.get_data()
    elif response.status_code >= 400 and response.mimetype in ("text/html", "application/json"):
        text = response.get_data(as_text=True)
        assert "Traceback" not in text
        if response.mimetype == "application/json":
            body = response.get_json()
            assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body


def fuzz_raw(site: Site, examples: int, on_failure: OnFailure | None = None) -> Counter[str]:
    """``examples`` raw requests; a count of ``"<method> <status>"`` (and ``"failure"``)."""
    seen: Counter[str] = Counter()

    @given(request=raw_requests)
    @settings(max_examples=examples, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    def run(request: dict[str, Any]) -> None:
        method = request["method"]
        try:
            response = send_raw(site, request)
            seen[f"{method} {response.status_code}"] += 1
            check_raw(method, response)
        except BaseException as e:  # a 500, an exception out of the app, a broken shape
            seen["failure"] += 1
            if on_failure is None:
                raise
            on_failure(e)

    run()
    return seen


def test_raw_requests_never_get_a_server_error(site):
    seen = fuzz_raw(site, MAX_EXAMPLES * 10)
    assert sum(seen.values()) > 0 and not seen["failure"]


@pytest.mark.parametrize("depth", [200, 500, 900, 1000, 100_000])
@pytest.mark.parametrize("where", ["body", "inside"])
def test_deeply_nested_json_is_refused_not_a_server_error(site, depth, where):
    """Regression: JSON nested deeper than Python's recursion limit made the JSON decoder raise
    RecursionError, which is no ValueError: a 500 on every JSON endpoint. Nesting it can decode
    must not break anything after it either (messages quote values)."""
    nested = "[" * depth + "]" * depth
    bodies = {
        "/submit/signals": nested if where == "body" else
        f'{{"images": [{{"signals": {{"pdq": "a5"}}, "pipeline_version": {nested}}}]}}',
        "/api/v1/match": nested if where == "body" else
        f'{{"queries": [{{"id": "a", "signals": {{"md5": {nested}}}}}]}}',
        "/api/v1/feedback": nested if where == "body" else
        f'{{"match_id": "m_1", "outcome": {nested}}}',
    }
    client = site.app.test_client()
    client.set_cookie(csrf.COOKIE, site.cookie)
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {site.key}",
               csrf.HEADER: site.token}
    for path, body in bodies.items():
        response = client.post(path, data=body, headers=headers)
        assert response.status_code in (400, 422), (path, response.status_code)
        error = response.get_json()["error"]
        assert set(error) == {"code", "message"}, error


# --- the parsers, directly ----------------------------------------------------------------
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20) | odd_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                max_size=4),
    max_leaves=20)


def hex_of(kind: str) -> st.SearchStrategy[str]:
    return st.binary(min_size=HEX_DIGITS[kind] // 2, max_size=HEX_DIGITS[kind] // 2).map(
        bytes.hex)


@st.composite
def local_text(draw: Any) -> str:
    """A local signal, well formed or nearly: header fields and length drawn near the rules."""
    version = draw(st.sampled_from([1, 1, 1, 0, 2, 255]))
    n = draw(st.sampled_from([0, 1, 15, 16, 17, 112, 113, 4096, 4097, 65535]))
    width, height = draw(st.sampled_from([(2, 2), (640, 480), (1, 5), (0, 0), (65535, 65535)]))
    keypoints = min(n, 130) + draw(st.sampled_from([0, 0, 0, -1, 1]))
    blob = LOCAL_HEADER.pack(version, n, width, height) + draw(
        st.binary(min_size=max(0, keypoints) * LOCAL_KEYPOINT_BYTES,
                  max_size=max(0, keypoints) * LOCAL_KEYPOINT_BYTES))
    text = base64.b64encode(blob).decode()
    return draw(st.sampled_from([text, text, text.rstrip("="), text + "=", text[:-1],
                                 text.replace("+", "-")]))


@st.composite
def vpdq_text(draw: Any, near: bool = True) -> str:
    """A vpdq signal, well formed or (``near``) nearly: at most one rule broken (version, frame
    count, length, time order, quality, padding), none half of the time."""
    defect = draw(st.sampled_from([None] * 6 + ["version", "count", "length", "order",
                                                "quality", "padding"])) if near else None
    frames = draw(st.integers(1, 30))
    times = sorted(draw(st.lists(st.integers(0, 2**32 - 1), min_size=frames, max_size=frames)))
    if defect == "order" and frames > 1 and times[0] != times[-1]:
        times = times[::-1]
    qualities = [draw(st.integers(0, 100)) for _ in times]
    if defect == "quality":
        qualities[-1] = draw(st.integers(101, 255))
    version = draw(st.sampled_from([0, 2, 255])) if defect == "version" else 1
    count = draw(st.sampled_from([0, frames + 1, 1025, 65535])) if defect == "count" else frames
    blob = VPDQ_HEADER.pack(version, 16, count, 10_000) + b"".join(
        VPDQ_FRAME.pack(t, q, bytes.fromhex(draw(_good("pdq"))))
        for t, q in zip(times, qualities, strict=True))
    if defect == "length":
        blob = blob[:-draw(st.integers(1, VPDQ_FRAME.size))]
    text = base64.b64encode(blob).decode()
    if defect == "padding":
        text = draw(st.sampled_from([text.rstrip("=") + "A", text[:-1], text + "="]))
    return text


def signal_value(kind: str) -> st.SearchStrategy[Any]:
    """A value for a signal of ``kind``: valid about half the time (a random hash, seldom
    degenerate), else a near miss (case, length, degenerate, padding) or anything at all."""
    if kind not in HEX_DIGITS and kind not in ("local", "vpdq"):
        return json_values
    if kind == "local":
        return local_text() | json_values
    if kind == "vpdq":
        return vpdq_text() | json_values
    good = st.sampled_from(GOOD_HEX[kind])
    near = good.flatmap(lambda h: st.sampled_from(
        [h.upper(), h[:-1], h + "0", "0" * len(h), "f" * len(h), " " + h[1:]]))
    return st.one_of(good, good, good, hex_of(kind), near, json_values)


def _balanced(bits: int, rng: random.Random) -> str:
    """A hash with about half its bits set: never refused as degenerate."""
    while True:
        value = rng.getrandbits(bits)
        if bits // 4 < value.bit_count() < bits - bits // 4:
            return f"{value:0{bits // 4}x}"


# (Hypothesis favours zero bytes, and a zero hash is degenerate: valid values come from here.)
GOOD_HEX = {kind: [_balanced(digits * 4, random.Random(digits + n)) for n in range(16)]
            for kind, digits in HEX_DIGITS.items()}


def _view_labels() -> list[str]:
    from registry.hashing import variants

    labels = getattr(variants, "view_labels", None)
    return list(labels()) if labels else ["mirror"]


VIEW_LABELS = _view_labels()


@st.composite
def mutated(draw: Any, valid: st.SearchStrategy[Any]) -> Any:
    """A valid document, as is half the time, else with one thing wrong: one value anywhere
    replaced (by anything, or a near miss of a string), one field dropped or one added."""
    doc = draw(valid)
    if draw(st.booleans()):
        return doc
    places: list[tuple[Any, Any]] = []  # (container, key or index)
    stack = [doc]
    while stack:
        item = stack.pop()
        pairs = item.items() if isinstance(item, dict) else enumerate(item) \
            if isinstance(item, list) else ()
        for key, value in pairs:
            places.append((item, key))
            stack.append(value)
    if not places:
        return draw(json_values)
    container, key = draw(st.sampled_from(places))
    value = container[key]
    action = draw(st.sampled_from(["replace", "near", "drop", "add"]))
    if action == "near" and isinstance(value, str):
        container[key] = draw(st.sampled_from(
            [value.upper(), value[:-1], value + "0", " " + value, value * 2, ""]))
    elif action == "drop" and isinstance(container, dict):
        del container[key]
    elif action == "add" and isinstance(container, dict):
        container[draw(st.text(max_size=8).filter(lambda k: k not in container))] = draw(
            json_values)
    else:
        container[key] = draw(json_values)
    return doc


def _good(kind: str) -> st.SearchStrategy[str]:
    return st.sampled_from(GOOD_HEX[kind])


@st.composite
def valid_image(draw: Any) -> dict[str, Any]:
    """An image as the submit page sends it (random values of the right shape)."""
    signals = {"pdq": draw(_good("pdq")), "md5": draw(_good("md5")),
               "sha256": draw(_good("sha256"))}
    if draw(st.booleans()):
        signals["phash"] = draw(_good("phash"))
    labels = draw(st.lists(st.sampled_from(VIEW_LABELS), max_size=4, unique=True))
    return {"signals": signals, "pdq_quality": draw(st.integers(50, 100)),
            "pipeline_version": PIPELINE_VERSION,
            "views": [{"label": label, "pdq": draw(_good("pdq")),
                       "quality": draw(st.integers(50, 100))} for label in labels]}


submission_bodies = st.one_of(
    mutated(st.builds(lambda images: {"images": images},
                      st.lists(valid_image(), min_size=1, max_size=3))),
    valid_image().map(lambda image: {"images": [image] * (MAX_IMAGES_PER_CASE + 1)}),
    json_values)


@st.composite
def valid_match(draw: Any) -> dict[str, Any]:
    queries = []
    for n in range(draw(st.integers(1, 4))):
        names = draw(st.lists(st.sampled_from(sorted(QUERY_SIGNALS)), min_size=1, max_size=3,
                              unique=True))
        queries.append({"id": f"q{n}", "signals": {
            name: draw(local_text() if name == "local" else vpdq_text(near=False)
                       if QUERY_SIGNALS[name] == "vpdq" else _good(QUERY_SIGNALS[name]))
            for name in names}})
    return {"queries": queries}


def validate_pipeline(strict: bool) -> Callable[[Any], None]:
    """What /submit/signals does with a body before it writes anything (``strict``: the rules
    for what anyone on the web sends, where this registry has them)."""
    from registry.service.cases import validate_submission

    settings_ = Settings.from_env({})
    extra = {"strict": True} if strict and "strict" in inspect.signature(
        validate_submission).parameters else {}

    def run(body: Any) -> None:
        validate_submission(parse_submission(body), settings_, **extra)

    return run


def match_pipeline(body: Any) -> None:
    """What /api/v1/match does with a body before it looks anything up (at the default limit
    of queries; tests/test_limits.py runs other limits)."""
    for raw in match_queries(body, default("max_queries")):
        parse_query(raw)


def pin_digits(text: str) -> None:
    assert re.fullmatch("[0-9]*", normalise_pin(text))


signal_inputs = st.sampled_from([k.value for k in SignalKind]).flatmap(
    lambda kind: st.tuples(st.just(kind), signal_value(kind))) | st.tuples(
    st.text(max_size=10), json_values)
case_numbers = st.text(max_size=40) | st.builds(str, st.builds(
    CaseNumber, st.integers(0, 2**60 - 1))).flatmap(lambda s: st.sampled_from(
        [s, s.lower(), s.replace("-", " "), s[:-1] + "0", s + "-", s.replace("0", "O")]))
digits = st.text(st.characters(categories=["Nd"]), max_size=25)
# Each parser the web edge runs on what a client sends, and inputs for it: each must parse or
# raise a RegistryError, never anything else.
PARSERS: dict[str, tuple[st.SearchStrategy[Any], Callable[[Any], Any]]] = {
    "submission (parse_submission + validate_submission)": (
        submission_bodies, validate_pipeline(strict=False)),
    "submission, strict (the pages' rules)": (submission_bodies, validate_pipeline(strict=True)),
    "match body (match_queries + parse_query)": (mutated(valid_match()) | json_values,
                                                 match_pipeline),
    "Signal.parse, every kind": (signal_inputs, lambda kv: Signal.parse(*kv)),
    "feedback outcome (parse_outcome)": (json_values | st.sampled_from(
        ["removed", "not_violating", "under_review", "Removed", " removed"]), parse_outcome),
    "feed cursor (parse_cursor)": (st.none() | st.text(max_size=25) | digits | st.integers(
        -1, 2**64).map(str), parse_cursor),
    "case number (CaseNumber.parse)": (case_numbers, CaseNumber.parse),
    "PIN (normalise_pin)": (st.text(max_size=40) | digits, pin_digits),
}


def fuzz_parser(name: str, examples: int, on_failure: OnFailure | None = None) -> Counter[str]:
    """``examples`` inputs for one parser: a count of ``parsed``, ``refused`` (a
    RegistryError) and ``failure`` (anything else)."""
    strategy, parse = PARSERS[name]
    seen: Counter[str] = Counter()

    @given(value=strategy)
    @settings(max_examples=examples, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    def run(value: Any) -> None:
        try:
            parse(value)
            seen["parsed"] += 1
        except RegistryError:
            seen["refused"] += 1
        except BaseException as e:
            seen["failure"] += 1
            if on_failure is None:
                raise
            on_failure(e)

    run()
    return seen


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_each_parser_parses_or_refuses_with_a_registry_error(name):
    seen = fuzz_parser(name, MAX_EXAMPLES * 10)
    assert not seen["failure"] and (seen["refused"] > 0 or name.startswith("PIN")), seen
    assert seen["parsed"] > 0 or name.startswith("feedback"), seen  # near-valid input passes


# A smoke of the strategies themselves: a near-valid body does sometimes parse.
def test_near_valid_bodies_sometimes_parse():
    image = {"signals": {"pdq": "a5" * 32, "md5": "0f" * 16}, "pdq_quality": 90,
             "views": [{"label": "mirror", "pdq": "c3" * 32, "quality": 80}],
             "pipeline_version": PIPELINE_VERSION}
    assert len(parse_submission({"images": [image]})) == 1
    blob = LOCAL_HEADER.pack(1, 16, 640, 480) + bytes(range(256))[:36] * 16
    assert Signal.parse("local", base64.b64encode(blob).decode()).keypoints == 16
    assert struct.calcsize("<BHHH") == LOCAL_HEADER.size

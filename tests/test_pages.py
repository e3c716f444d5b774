"""The submitter pages through Flask's test client: every page in both languages, language
choice, security headers, CSRF, the JSON submission, the no-JavaScript upload, case status,
withdrawal, PIN lockout, rate limits and friendly error pages."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from typing import Any

import pytest
from PIL import Image

from registry.bootstrap import build_registry
from registry.config import Settings
from registry.domain import CaseStatus, Query, Scope, Signal
from registry.errors import StorageUnavailable
from registry.hashing import PIPELINE_VERSION
from registry.service import Registry
from registry.web import create_app
from registry.web.site import CSP, WORKER_CSP
from tests.conftest import FAST_KDF, encode, photo

PAGES = ["/", "/submit", "/case"]
HTML = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}


# --- helpers ----------------------------------------------------------------------------------
class Page(HTMLParser):
    """The parts of a page the tests look at: tags with attributes, and visible text."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.text: list[str] = []
        self._skip = 0
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, {k: v or "" for k, v in attrs}))
        if tag in ("script", "style"):
            self._skip += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style"):
            self._skip -= 1

    def handle_data(self, data: str) -> None:
        if not self._skip and data.strip():
            self.text.append(" ".join(data.split()))

    def find(self, tag: str, **attrs: str) -> list[dict[str, str]]:
        return [a for t, a in self.tags
                if t == tag and all(a.get(k.rstrip("_")) == v for k, v in attrs.items())]

    def by_id(self, ident: str) -> dict[str, str]:
        (found,) = [a for _, a in self.tags if a.get("id") == ident]
        return found

    @property
    def all_text(self) -> str:
        return " ".join(self.text)


def page(response: Any) -> Page:
    return Page(response.get_data(as_text=True))


def token_of(response: Any) -> str:
    fields = page(response).find("input", name="csrf_token")
    assert fields and len({f["value"] for f in fields}) == 1  # one token per page
    return fields[0]["value"]


def make_app(registry: Registry, **config: object) -> Any:
    return create_app(registry, {"TESTING": True, **config})


@pytest.fixture
def app(registry: Registry) -> Any:
    return make_app(registry)


@pytest.fixture
def client(app: Any) -> Any:
    return app.test_client()


def form_token(client: Any, path: str = "/case") -> str:
    return token_of(client.get(path))


def jpeg(seed: int, size: tuple[int, int] = (640, 480)) -> bytes:
    return encode(photo(seed, size), quality=90)


def submit_files(client: Any, files: list[tuple[bytes, str]], consent: bool = True,
                 lang: str = "en") -> Any:
    import io

    data: dict[str, Any] = {"csrf_token": form_token(client, "/submit"),
                            "images": [(io.BytesIO(b), name) for b, name in files]}
    if consent:
        data["consent"] = "yes"
    return client.post(f"/submit?lang={lang}", data=data, content_type="multipart/form-data")


def receipt_of(response: Any) -> tuple[str, str]:
    html = page(response)
    number = re.search(r'id="case-number"[^>]*>([^<]+)<', response.get_data(as_text=True))
    pin = re.search(r'id="case-pin"[^>]*>([^<]+)<', response.get_data(as_text=True))
    assert number and pin, html.all_text
    return number.group(1).strip(), pin.group(1).strip()


def signals_body(registry: Registry, *seeds: int) -> dict[str, Any]:
    """What the page's worker would send: the signals of generated images (hashed here)."""
    images = []
    for seed in seeds:
        image = registry.hash_image(jpeg(seed), registration=True)
        views = [{"label": v.label, "pdq": v.pdq.hex, "quality": v.quality}
                 for v in image.variants]
        signals = {"pdq": image.pdq.hex, "phash": image.phash.hex, "md5": image.md5.hex,
                   "sha256": image.sha256.hex}
        if image.local is not None:
            signals["local"] = image.local.text
        images.append({"signals": signals, "pdq_quality": image.pdq_quality, "views": views,
                       "pipeline_version": PIPELINE_VERSION})
    return {"images": images}


def post_signals(client: Any, body: object, lang: str = "en", token: str | None = None) -> Any:
    token = form_token(client, "/submit") if token is None else token
    return client.post(f"/submit/signals?lang={lang}", data=json.dumps(body),
                       headers={"Content-Type": "application/json", "X-CSRF-Token": token})


def new_case(registry: Registry, seed: int = 1) -> tuple[str, str]:
    from registry.service import SubmittedImage

    receipt = registry.submit_case(
        [SubmittedImage.from_image(registry.hash_image(jpeg(seed), registration=True))])
    return receipt.number, receipt.pin


def post_case(client: Any, number: str, pin: str, path: str = "/case", lang: str = "en",
              **extra: str) -> Any:
    return client.post(f"{path}?lang={lang}", data={"csrf_token": form_token(client),
                                                    "case": number, "pin": pin, **extra})


# --- pages and languages ----------------------------------------------------------------------
@pytest.mark.parametrize("path", PAGES)
@pytest.mark.parametrize("lang, marker, other", [("ko", "빠른 나가기", "en"),
                                                 ("en", "Quick exit", "ko")])
def test_every_page_renders_in_both_languages(client, path, lang, marker, other):
    response = client.get(f"{path}?lang={lang}")
    assert response.status_code == 200
    assert response.mimetype == "text/html"
    html = page(response)
    assert html.find("html")[0]["lang"] == lang
    assert marker in html.all_text
    switch = [a for a in html.find("a") if a.get("hreflang") == other]
    assert len(switch) == 1 and f"lang={other}" in switch[0]["href"]
    assert switch[0]["lang"] == other
    assert html.by_id("quick-exit")["href"] == "https://www.naver.com/"
    # Support contacts are on every page, as tel: links.
    for number in ("027358994", "1366", "117", "112"):
        assert html.find("a", href=f"tel:{number}")
    # One h1, a main landmark the skip link points at.
    assert len(html.find("h1")) == 1 and html.find("main", id="main")
    assert html.find("a", href="#main")


def test_home_says_what_happens_to_the_image_in_both_languages(client):
    en = page(client.get("/?lang=en")).all_text
    for phrase in ("never leaves your device", "Who sees the hashes", "A person reviews each match",
                   "Who can use this", "02-735-8994", "Digital Sex Crime Victim Support Center"):
        assert phrase in en
    ko = page(client.get("/?lang=ko")).all_text
    for phrase in ("디지털성범죄피해자지원센터", "해시는 누가 보나요",
                   "일치 항목마다 사람이 검토합니다"):
        assert phrase in ko
    assert "never leaves your device" not in ko


@pytest.mark.parametrize("header, expected", [
    ("ko-KR,ko;q=0.9,en;q=0.8", "ko"), ("en-US,en;q=0.9", "en"), ("en-GB", "en"),
    ("fr-FR,fr;q=0.9", "ko"), ("fr-FR,en;q=0.5,ko;q=0.4", "en"), (None, "ko")])
def test_accept_language_picks_the_language(client, header, expected):
    headers = {"Accept-Language": header} if header else {}
    assert page(client.get("/", headers=headers)).find("html")[0]["lang"] == expected


def test_lang_parameter_wins_and_is_carried_by_links_and_forms(client):
    response = client.get("/case?lang=en", headers={"Accept-Language": "ko"})
    html = page(response)
    assert html.find("html")[0]["lang"] == "en"
    menu = [a["href"] for a in html.find("a") if "data-leave" in a and "hreflang" not in a]
    assert menu and all(href.endswith("lang=en") for href in menu)
    assert html.find("form")[0]["action"] == "/case?lang=en"
    # Without ?lang= links stay plain (the header decides again on the next page).
    plain = page(client.get("/case", headers={"Accept-Language": "en"}))
    assert plain.find("html")[0]["lang"] == "en"
    assert plain.find("form")[0]["action"] == "/case"
    # An unknown value is ignored, not an error.
    odd = client.get("/?lang=xx", headers={"Accept-Language": "en"})
    assert odd.status_code == 200 and page(odd).find("html")[0]["lang"] == "en"


def test_the_current_section_is_marked_in_the_menu(client):
    html = page(client.get("/case?lang=en"))
    current = [a for a in html.find("a") if a.get("aria-current") == "page"]
    assert len(current) == 1 and current[0]["href"].startswith("/case")


# --- security headers, scripts and cookies ----------------------------------------------------
def test_pages_send_strict_security_headers(client):
    for path in [*PAGES, "/nope"]:
        response = client.get(path, headers=HTML)
        csp = response.headers["Content-Security-Policy"]
        assert csp == CSP
        directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
        assert directives["default-src"] == "'self'"
        assert directives["script-src"] == "'self'" and directives["style-src"] == "'self'"
        assert directives["worker-src"] == "'self'"
        # A chosen video plays from a local object URL (the submit page hashes its frames).
        assert directives["media-src"] == "blob:"
        assert directives["frame-ancestors"] == "'none'"
        assert "unsafe" not in csp and "http" not in csp and "*" not in csp
        assert response.headers["Referrer-Policy"] == "no-referrer"
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Cache-Control"] == "no-store"


def test_static_scripts_carry_the_policy_and_the_api_keeps_its_own(client):
    script = client.get("/static/js/submit.js")
    assert script.status_code == 200 and "javascript" in script.mimetype
    assert script.headers["Content-Security-Policy"] == CSP
    script.close()
    # The hashing worker alone may compile opencv.js's WebAssembly and embind's functions;
    # everything else of its policy is the pages' (no other origin, no network but ours).
    worker = client.get("/static/js/hash/worker.js")
    assert worker.headers["Content-Security-Policy"] == WORKER_CSP
    assert WORKER_CSP.replace(" 'wasm-unsafe-eval' 'unsafe-eval'", "") == CSP
    worker.close()
    module = client.get("/static/js/hash/local.js")  # imported by the worker: runs under its policy
    assert module.headers["Content-Security-Policy"] == CSP
    module.close()
    health = client.get("/healthz")
    assert health.headers["Referrer-Policy"] == "no-referrer"
    assert "Content-Security-Policy" not in health.headers
    docs = client.get("/api/docs")  # its own inline style: no page policy there
    assert docs.status_code == 200 and "Content-Security-Policy" not in docs.headers


@pytest.mark.parametrize("path", [*PAGES, "/submit?lang=en"])
def test_pages_have_no_inline_script_style_or_third_party_origin(client, path):
    html = page(client.get(path))
    scripts = html.find("script")
    assert scripts and all(s.get("src", "").startswith("/static/js/") for s in scripts)
    assert all(s.get("type") == "module" for s in scripts)
    assert not html.find("style")
    for tag, attrs in html.tags:
        assert "style" not in attrs, tag
        assert not [a for a in attrs if a.startswith("on")], (tag, attrs)
        for name in ("src", "href", "action"):
            value = attrs.get(name, "")
            if value.startswith(("http:", "https:", "//")):
                assert attrs.get("id") == "quick-exit", (tag, attrs)
    for sheet in html.find("link", rel="stylesheet"):
        assert sheet["href"].startswith("/static/css/")


def test_only_pages_with_forms_set_a_cookie_and_only_the_csrf_one(client):
    home = client.get("/")
    assert "Set-Cookie" not in home.headers
    form = client.get("/submit")
    cookies = form.headers.getlist("Set-Cookie")
    assert len(cookies) == 1
    cookie = cookies[0]
    assert cookie.startswith("takedown_csrf=")
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
    assert "Expires" not in cookie and "Max-Age" not in cookie  # ends with the browser session
    again = client.get("/case")  # the browser already has it: not set again
    assert "Set-Cookie" not in again.headers


# --- CSRF -------------------------------------------------------------------------------------
def test_a_form_post_without_a_valid_token_is_refused(client, registry):
    number, pin = new_case(registry)
    token = form_token(client)
    cases = [
        {"case": number, "pin": pin},  # no token
        {"case": number, "pin": pin, "csrf_token": "forged"},
        {"case": number, "pin": pin, "csrf_token": token[:-2] + "xx"},
    ]
    for data in cases:
        response = client.post("/case?lang=en", data=data)
        assert response.status_code == 400
        assert "This page had expired" in page(response).all_text
        assert response.headers["Content-Security-Policy"] == CSP
    # A token issued to another browser (another cookie) does not fit this one.
    other = make_app(registry).test_client()
    response = other.post("/case", data={"case": number, "pin": pin,
                                         "csrf_token": form_token(client)})
    other_token = form_token(other)
    assert response.status_code == 400
    assert client.post("/case", data={"case": number, "pin": pin,
                                      "csrf_token": other_token}).status_code == 400
    # With the right token it works, and a cross-site request is refused even with it.
    assert client.post("/case", data={"case": number, "pin": pin,
                                      "csrf_token": token}).status_code == 200
    for headers in ({"Sec-Fetch-Site": "cross-site"}, {"Origin": "https://evil.example"}):
        refused = client.post("/case", data={"case": number, "pin": pin, "csrf_token": token},
                              headers=headers)
        assert refused.status_code == 400
    # Browsers send Origin: null on our own posts (Referrer-Policy: no-referrer).
    assert client.post("/case", data={"case": number, "pin": pin, "csrf_token": token},
                       headers={"Origin": "null", "Sec-Fetch-Site": "same-origin"}
                       ).status_code == 200


def test_the_json_endpoint_needs_the_token_header(client, registry):
    body = signals_body(registry, 5)
    form_token(client, "/submit")
    response = client.post("/submit/signals", data=json.dumps(body),
                           headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "csrf_failed"
    assert registry.list_cases() == []


def test_with_no_secret_setting_each_app_makes_its_own(registry):
    a = make_app(registry)
    b = make_app(registry)
    assert a.config["SECRET_KEY"] and a.config["SECRET_KEY"] != b.config["SECRET_KEY"]


def test_the_secret_setting_is_used(tmp_path):
    settings = Settings.from_env({}, data_dir=str(tmp_path / "d"), pin_kdf_n=FAST_KDF,
                                 secret_key="s3cret-for-tests")
    reg = build_registry(settings)
    try:
        assert create_app(reg).config["SECRET_KEY"] == "s3cret-for-tests"
    finally:
        reg.close()


# --- submission: JSON of signals (the JavaScript path) ----------------------------------------
def test_signals_register_a_case_that_matches(client, registry):
    body = signals_body(registry, 11, 12)
    response = post_signals(client, body)
    assert response.status_code == 201
    answer = response.get_json()
    assert set(answer) == {"case", "pin", "signals"}
    assert re.fullmatch(r"\d{4}-\d{4}-\d{4}", answer["pin"])
    view = registry.case_status(answer["case"], answer["pin"])
    assert view.status is CaseStatus.ACTIVE and view.signals["md5"] == 2
    assert answer["signals"] == sum(view.signals.values())
    # The views were stored too: a mirrored copy matches through them.
    mirrored = registry.hash_image(encode(photo(11).transpose(Image.Transpose.FLIP_LEFT_RIGHT)))
    (result,) = registry.match([registry.query_of_image("m", mirrored)])
    assert result.matched and {m.case for m in result.matches} == {answer["case"]}


def test_submission_errors_use_the_json_error_shape_in_the_page_language(client, registry):
    good = signals_body(registry, 21)["images"][0]
    low = {**good, "pdq_quality": 20}
    cases = [
        ({"images": [{**good, "signals": {**good["signals"], "pdq": "zz" * 32}}]},
         422, "invalid_hash"),
        ({"images": [{**good, "signals": {**good["signals"], "sha1": "ab" * 20}}]},
         422, "unknown_signal"),
        ({"images": [{**good, "width": 640}]}, 422, "invalid_input"),
        ({"images": [{**good, "pipeline_version": 1}]}, 422, "invalid_input"),
        ({"images": [{**good, "views": [{"label": "x", "pdq": good["signals"]["pdq"]}]}]},
         422, "invalid_input"),
        ({"images": [{**good, "pdq_quality": 101}]}, 422, "invalid_input"),
        ({"images": []}, 422, "invalid_input"),
        ({"images": [good] * 51}, 422, "invalid_input"),
        ({"images": [good], "extra": 1}, 422, "invalid_input"),
        ([good], 422, "invalid_input"),
        ({"images": [good, low]}, 422, "low_quality_hash"),
        ({"images": [{**good, "signals": {**good["signals"], "phash": "0" * 16}}]},
         422, "degenerate_hash"),
    ]
    for body, status, code in cases:
        response = post_signals(client, body, lang="en")
        assert response.status_code == status, (body, response.get_json())
        error = response.get_json()["error"]
        assert set(error) == {"code", "message"} and error["code"] == code, error
        assert error["message"] and "Traceback" not in error["message"]
    named = post_signals(client, {"images": [good, low]}, lang="en").get_json()["error"]
    assert named["message"].startswith("Image 2 is too plain")
    korean = post_signals(client, {"images": [good, low]}, lang="ko").get_json()["error"]
    assert "2번째 이미지" in korean["message"]
    assert registry.list_cases() == []


def test_the_json_endpoint_refuses_other_media_types_and_broken_json(client):
    token = form_token(client, "/submit")
    response = client.post("/submit/signals", data="images=1",
                           headers={"X-CSRF-Token": token,
                                    "Content-Type": "application/x-www-form-urlencoded"})
    assert response.status_code == 415
    assert response.get_json()["error"]["code"] == "unsupported_media_type"
    broken = client.post("/submit/signals", data="{not json",
                         headers={"X-CSRF-Token": token, "Content-Type": "application/json"})
    assert broken.status_code == 422 and broken.get_json()["error"]["code"] == "invalid_input"


def test_the_json_endpoint_refuses_bare_digests_and_unknown_views(client, registry):
    (good,) = signals_body(registry, 71)["images"]
    digests_only = {"signals": {k: good["signals"][k] for k in ("md5", "sha256")}}
    lone_pdq = {"signals": {"pdq": good["signals"]["pdq"]}, "pdq_quality": good["pdq_quality"]}
    poster = dict(good, views=[*good["views"][:2],
                               {"label": "poster", "pdq": good["views"][0]["pdq"],
                                "quality": 90}])
    for image in (digests_only, lone_pdq, poster):
        response = post_signals(client, {"images": [image]})
        assert response.status_code == 422, response.data
        assert response.get_json()["error"]["code"] == "invalid_input"
    assert registry.list_cases() == []
    assert post_signals(client, {"images": [good]}).status_code == 201


# --- submission: the no-JavaScript upload -----------------------------------------------------
def test_upload_without_javascript_registers_and_shows_the_receipt_once(client, registry):
    response = submit_files(client, [(jpeg(31), "a.jpg"), (jpeg(32), "b.jpg")])
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    number, pin = receipt_of(response)
    view = registry.case_status(number, pin)
    assert view.signals["md5"] == 2 and view.status is CaseStatus.ACTIVE
    html = page(response)
    assert not html.by_id("result").get("hidden")
    assert "Save your case number and PIN now" in html.all_text
    # A resized, re-encoded copy matches this case.
    copy = registry.hash_image(encode(photo(31, (640, 480)).resize((320, 240)), quality=60))
    (result,) = registry.match([registry.query_of_image("c", copy)])
    assert {m.case for m in result.matches} == {number}


def test_upload_in_korean_shows_a_korean_receipt(client):
    response = submit_files(client, [(jpeg(33), "사진.jpg")], lang="ko")
    assert response.status_code == 200
    assert "지금 접수 번호와 PIN을 저장하세요" in page(response).all_text


def test_upload_problems_are_explained_and_nothing_is_registered(client, registry):
    blank = encode(Image.new("RGB", (400, 300), (200, 200, 200)))
    cases = [
        ([(jpeg(41), "a.jpg")], False, "Please confirm"),
        ([], True, "Please choose at least one image"),
        ([(jpeg(41), "a.jpg"), (b"%PDF-1.4 not an image", "letter.pdf")], True,
         "letter.pdf is not an image this page can read"),
        ([(jpeg(41)[:3000], "cut.jpg")], True, "cut.jpg"),
        ([(b"", "empty.jpg")], True, "empty.jpg is empty."),
        ([(blank, "grey.jpg")], True, "grey.jpg is too plain"),
        ([(b"x", f"{n}.jpg") for n in range(51)], True, "Choose at most 50 images"),
    ]
    for files, consent, message in cases:
        response = submit_files(client, files, consent=consent)
        assert response.status_code == 422, message
        html = page(response)
        assert message in html.all_text
        assert html.by_id("alert").get("role") == "alert"
        assert "hidden" not in html.by_id("alert")
    assert registry.list_cases() == []


def test_upload_is_hashed_in_memory_and_never_written(client, registry, tmp_path, monkeypatch):
    import tempfile

    spool = tmp_path / "spool"
    spool.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spool))
    data = jpeg(51, (1600, 1200))  # over Werkzeug's 500 KB in-memory threshold
    assert len(data) > 500 * 1024 or len(data) > 100_000
    response = submit_files(client, [(data, "big.jpg")])
    assert response.status_code == 200
    assert list(spool.iterdir()) == []
    chunks = [data[i:i + 64] for i in range(1000, len(data) - 64, len(data) // 8)]
    for path in (tmp_path / "data").rglob("*"):
        if path.is_file():
            stored = path.read_bytes()
            assert not any(chunk in stored for chunk in chunks), path


def test_a_too_large_upload_gets_a_friendly_page(registry, tmp_path):
    settings = Settings.from_env({}, data_dir=str(tmp_path / "small"), pin_kdf_n=FAST_KDF,
                                 max_upload_bytes=200_000)
    small = build_registry(settings)
    try:
        client = make_app(small).test_client()
        response = submit_files(client, [(jpeg(52, (1600, 1200)) * 2, "huge.jpg")])
        assert response.status_code == 413
        assert "can be at most 0.2 MB together" in page(response).all_text
        assert "Choose fewer or smaller images" in page(response).all_text
    finally:
        small.close()


# --- case status and withdrawal ---------------------------------------------------------------
def test_status_shows_state_counts_and_takedowns(client, registry):
    number, pin = new_case(registry, 61)
    response = post_case(client, number, pin)
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    text = page(response).all_text
    assert number in text and "Active" in text and "Confirmed takedowns" in text
    view = registry.case_status(number, pin)
    facts = dict(re.findall(r"<dt>([^<]+)</dt><dd>\s*(\d+)", response.get_data(as_text=True)))
    assert facts == {"Images": "1", "Hashes": str(sum(view.signals.values())),
                     "Confirmed takedowns": "0"}
    # A platform reports a removal: the status counts it.
    platform, _key = registry.add_platform("shop", [Scope.MATCH])
    image = registry.hash_image(jpeg(61))
    (result,) = registry.match([Query("q", (Signal.parse("pdq", image.pdq.hex),))],
                               platform=platform)
    registry.record_feedback(platform, result.matches[0].match_id, "removed")
    again = post_case(client, number, pin)
    assert re.search(r"<dt>Confirmed takedowns</dt><dd>\s*1", again.get_data(as_text=True))
    korean = post_case(client, number, pin, lang="ko")
    assert "진행 중" in page(korean).all_text and "확인된 삭제" in page(korean).all_text


def test_withdrawal_asks_first_then_withdraws(client, registry):
    number, pin = new_case(registry, 71)
    asked = post_case(client, number, pin, path="/case/withdraw")
    assert asked.status_code == 200
    assert "Withdraw this case?" in page(asked).all_text
    assert page(asked).find("input", name="confirm", value="yes")
    assert registry.case_status(number, pin).status is CaseStatus.ACTIVE  # not yet
    done = post_case(client, number, pin, path="/case/withdraw", confirm="yes")
    assert done.status_code == 200
    text = page(done).all_text
    assert "The case is withdrawn" in text and "Withdrawn" in text
    assert not page(done).find("form", action="/case/withdraw?lang=en")
    assert registry.case_status(number, pin).status is CaseStatus.WITHDRAWN
    image = registry.hash_image(jpeg(71))
    (result,) = registry.match([registry.query_of_image("q", image)])
    assert not result.matched
    twice = post_case(client, number, pin, path="/case/withdraw", confirm="yes")
    assert twice.status_code == 200
    assert "This case has already been withdrawn." in page(twice).all_text
    status = post_case(client, number, pin)
    assert "Withdrawn on" in page(status).all_text


def test_wrong_details_get_clear_messages(client, registry):
    number, pin = new_case(registry, 81)
    wrong = post_case(client, number, "0000-0000-0000")
    assert wrong.status_code == 401
    html = page(wrong)
    assert "The case number or PIN is not right" in html.all_text
    assert html.by_id("pin").get("aria-invalid") == "true"
    assert html.by_id("case")["value"] == number  # kept; the PIN is never echoed
    assert "0000-0000-0000" not in wrong.get_data(as_text=True)
    mistyped = post_case(client, number[:-1] + ("A" if number[-1] != "A" else "B"), pin)
    assert mistyped.status_code == 422
    assert page(mistyped).by_id("case").get("aria-invalid") == "true"
    assert "Check the case number" in page(mistyped).all_text
    unknown = post_case(client, "0000-0000-0000-0", pin)
    assert unknown.status_code == 401  # same answer as a wrong PIN
    korean = post_case(client, number, "0000-0000-0000", lang="ko")
    assert "접수 번호나 PIN이 맞지 않습니다" in page(korean).all_text


def test_lockout_after_repeated_wrong_pins_is_explained(client, registry):
    number, pin = new_case(registry, 91)
    for _ in range(registry.settings.pin_max_failures - 1):
        assert post_case(client, number, "1111-1111-1111").status_code == 401
    locked = post_case(client, number, "1111-1111-1111")
    assert locked.status_code == 429
    text = page(locked).all_text
    assert "can try this case again in 15 minutes" in text and "The case is not locked" in text
    right = post_case(client, number, pin)  # even the right PIN waits, from this address
    assert right.status_code == 429
    korean = post_case(client, number, pin, lang="ko")
    assert "15분 뒤에" in page(korean).all_text
    # The case's owner, on another device, still gets in.
    elsewhere = client.post("/case?lang=en", data={
        "csrf_token": form_token(client), "case": number, "pin": pin},
        environ_base={"REMOTE_ADDR": "203.0.113.77"})
    assert elsewhere.status_code == 200 and number in page(elsewhere).all_text


# --- rate limits ------------------------------------------------------------------------------
def test_submissions_are_rate_limited_per_address(tmp_path):
    settings = Settings.from_env({}, data_dir=str(tmp_path / "rl"), pin_kdf_n=FAST_KDF,
                                 submit_limit="2 per hour", case_limit="3 per hour")
    reg = build_registry(settings)
    try:
        client = make_app(reg).test_client()
        assert post_signals(client, signals_body(reg, 101)).status_code == 201
        assert submit_files(client, [(jpeg(102), "b.jpg")]).status_code == 200
        refused = post_signals(client, signals_body(reg, 103), lang="ko")
        assert refused.status_code == 429
        assert refused.get_json()["error"]["code"] == "rate_limited"
        assert "너무 많이 시도했습니다" in refused.get_json()["error"]["message"]
        assert int(refused.headers["Retry-After"]) >= 1
        page_refused = submit_files(client, [(jpeg(104), "c.jpg")])
        assert page_refused.status_code == 429
        assert "Too many tries" in page(page_refused).all_text
        assert page_refused.headers["Content-Security-Policy"] == CSP
        assert len(reg.list_cases()) == 2
        # Another address has its own budget; GET pages are never limited.
        other = client.post("/submit/signals", data=json.dumps(signals_body(reg, 105)),
                            environ_base={"REMOTE_ADDR": "10.0.0.9"},
                            headers={"Content-Type": "application/json",
                                     "X-CSRF-Token": form_token(client, "/submit")})
        assert other.status_code == 201
        assert client.get("/submit").status_code == 200
        # Case lookups have their own budget.
        for _ in range(3):
            assert post_case(client, "0000-0000-0000-0", "1").status_code in (401, 422)
        assert post_case(client, "0000-0000-0000-0", "1").status_code == 429
    finally:
        reg.close()


# --- friendly errors --------------------------------------------------------------------------
def test_missing_pages_are_pages_for_browsers_and_json_for_clients(client):
    browser = client.get("/nowhere?lang=en", headers=HTML)
    assert browser.status_code == 404 and browser.mimetype == "text/html"
    assert "This page does not exist" in page(browser).all_text
    tool = client.get("/nowhere")
    assert tool.status_code == 404 and tool.get_json()["error"]["code"] == "not_found"
    api = client.get("/api/v1/nowhere", headers=HTML)
    assert api.status_code == 404 and api.get_json()["error"]["code"] == "not_found"
    reloaded = client.get("/case/withdraw?lang=en", headers=HTML)  # a POST-only page
    assert reloaded.status_code == 405 and "Please start again" in page(reloaded).all_text
    json_405 = client.get("/case/withdraw")
    assert json_405.status_code == 405
    assert json_405.get_json()["error"]["code"] == "method_not_allowed"
    assert json_405.mimetype == "application/json" and "POST" in json_405.headers["Allow"]


def test_an_unexpected_failure_is_a_friendly_page_without_a_traceback(client, registry,
                                                                        monkeypatch):
    number, pin = new_case(registry, 111)

    def broken(*args: object) -> None:
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(registry, "case_status", broken)
    response = post_case(client, number, pin)
    assert response.status_code == 500
    body = response.get_data(as_text=True)
    assert "Something went wrong on our side" in body
    assert "secret internal detail" not in body and "Traceback" not in body
    monkeypatch.setattr(registry, "submit_case", broken)
    json_failure = post_signals(client, signals_body(registry, 112))
    assert json_failure.status_code == 500
    assert json_failure.get_json()["error"]["code"] == "internal_error"
    assert "secret" not in json_failure.get_data(as_text=True)


def test_an_unavailable_database_is_explained(client, registry, monkeypatch):
    number, pin = new_case(registry, 121)

    def down(*args: object) -> None:
        raise StorageUnavailable("database is down")

    monkeypatch.setattr(registry, "case_status", down)
    response = post_case(client, number, pin, lang="ko")
    assert response.status_code == 503
    assert "지금은 등록소에 연결할 수 없어서" in page(response).all_text


# --- colour contrast (WCAG 2.2 AA) ------------------------------------------------------------
def _luminance(hex_colour: str) -> float:
    channels = [int(hex_colour[i:i + 2], 16) / 255 for i in (1, 3, 5)]
    linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def contrast(a: str, b: str) -> float:
    la, lb = sorted((_luminance(a), _luminance(b)), reverse=True)
    return (la + 0.05) / (lb + 0.05)


def test_colours_meet_aa_contrast():
    from pathlib import Path

    css = (Path(__file__).resolve().parent.parent / "registry/web/static/css/site.css"
           ).read_text()
    colour = dict(re.findall(r"--([a-z-]+):\s*(#[0-9a-f]{6})", css))
    colour["white"] = "#ffffff"
    text_pairs = [  # (foreground, background): body text, links, buttons, alerts, badges
        ("ink", "paper"), ("ink", "card"), ("muted", "paper"), ("muted", "card"),
        ("accent", "paper"), ("accent", "card"), ("white", "accent"), ("white", "accent-dark"),
        ("accent-dark", "accent-soft"), ("white", "exit"), ("white", "danger"),
        ("ink", "error-bg"), ("ink", "warn-bg"), ("ink", "ok-bg"), ("ok", "ok-bg"),
        ("ink", "accent-soft"),
    ]
    for fg, bg in text_pairs:
        assert contrast(colour[fg], colour[bg]) >= 4.5, (fg, bg)
    for fg, bg in [("focus", "paper"), ("focus", "card"), ("muted", "card"),
                   ("exit", "card"), ("accent", "card")]:  # rings, borders, buttons: 3:1
        assert contrast(colour[fg], colour[bg]) >= 3.0, (fg, bg)


@pytest.mark.parametrize("path", PAGES)
def test_ids_are_unique_and_every_reference_resolves(client, path):
    html = page(client.get(f"{path}?lang=en"))
    ids = [a["id"] for _, a in html.tags if "id" in a]
    assert len(ids) == len(set(ids))
    for _, attrs in html.tags:
        for name in ("for", "aria-describedby", "aria-labelledby"):
            for ref in attrs.get(name, "").split():
                assert ref in ids, (name, ref)


def test_an_unavailable_database_gives_the_apis_code_on_the_json_endpoint(client, registry,
                                                                          monkeypatch, caplog):
    body = signals_body(registry, 131)

    def down(*args: object, **kwargs: object) -> None:
        raise StorageUnavailable("database server db.internal refused the connection")

    monkeypatch.setattr(registry, "submit_case", down)
    response = post_signals(client, body)
    assert response.status_code == 503
    error = response.get_json()["error"]
    assert error["code"] == "unavailable" and "db.internal" not in error["message"]
    assert "db.internal" in caplog.text  # the operator's log has the detail


def test_the_readme_links_every_screenshot_and_each_link_exists():
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    readme = (root / "README.md").read_text()
    linked = set(re.findall(r"\((docs/screenshots/[\w-]+\.png)\)", readme))
    expected = {f"docs/screenshots/{name}-{lang}-{device}.png"
                for name in ("home", "submit", "submitted", "case")
                for lang in ("ko", "en") for device in ("desktop", "phone")}
    assert linked == expected
    for rel in linked:
        with Image.open(root / rel) as shot:
            width = shot.size[0]
        assert width == (1280 if "desktop" in rel else 390), rel
        assert (root / rel).stat().st_size < 200_000, rel

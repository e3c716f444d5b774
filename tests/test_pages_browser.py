"""The submitter pages in Debian's Chromium against a real ``takedown serve``: submit -> case
number and PIN -> status -> withdraw -> status in both languages; every request the page makes
is recorded to prove that no image byte leaves the browser; a case submitted in the browser is
found by ``takedown match`` (operator mode, same database) on a transformed copy, and not after
withdrawal; the quick exit; the no-JavaScript upload; keyboard and labels."""

from __future__ import annotations

import hashlib
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from cli.main import cli
from registry.domain import Signal
from registry.hashing import compute_signals, compute_video_signals
from tests.browser import launch_chromium
from tests.conftest import FAST_KDF, encode, photo
from tests.images import boxed, clip, pan
from tests.test_local import crop, textured
from tests.test_serve import free_port, serve, stop, wait_for

pytestmark = pytest.mark.slow

ENV = {"TAKEDOWN_PIN_KDF_N": str(FAST_KDF), "TAKEDOWN_SUBMIT_LIMIT": "1000 per hour",
       "TAKEDOWN_CASE_LIMIT": "1000 per hour", "TAKEDOWN_QUICK_EXIT_URL": "https://neutral.test/"}
TEXT = {
    "ko": {"registered": "등록했습니다. 아래에 접수 번호와 PIN이 있습니다.",
           "copied": "복사했습니다.",
           "active": "진행 중", "withdrawn": "철회됨", "confirm": "이 접수를 철회할까요?",
           "done": "접수를 철회했습니다.", "leave": "접수 번호와 PIN을 저장하셨나요?"},
    "en": {"registered": "Registered. Your case number and PIN are shown below.",
           "copied": "Copied.", "active": "Active", "withdrawn": "Withdrawn",
           "confirm": "Withdraw this case?", "done": "The case is withdrawn.",
           "leave": "Have you saved your case number and PIN?"},
}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("served")


@pytest.fixture(scope="module")
def base(data_dir: Path) -> Iterator[str]:
    """``takedown serve`` in a subprocess, on its own database under ``data_dir/data``."""
    port = free_port()
    with pytest.MonkeyPatch.context() as mp:
        for name, value in ENV.items():
            mp.setenv(name, value)
        mp.delenv("TAKEDOWN_DATABASE_URL", raising=False)
        proc = serve([sys.executable, "-m", "cli", "serve", "--port", str(port)], data_dir, port)
    try:
        url = f"http://127.0.0.1:{port}"
        assert wait_for(url + "/readyz", proc)["ready"] is True
        yield url
    finally:
        stop(proc)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with launch_chromium() as b:
        yield b


@pytest.fixture
def context(browser: Any, base: str) -> Iterator[Any]:
    ctx = browser.new_context(locale="en-US", accept_downloads=True)
    ctx.set_default_timeout(60_000)
    ctx.route("https://neutral.test/**", lambda route: route.fulfill(
        status=200, content_type="text/html", body="<title>neutral</title><p>weather</p>"))
    yield ctx
    ctx.close()


def image_file(seed: int, size: tuple[int, int] = (1000, 750), name: str | None = None
               ) -> dict[str, Any]:
    return {"name": name or f"photo-{seed}.jpg", "mimeType": "image/jpeg",
            "buffer": encode(photo(seed, size), quality=92)}


def submit_in_browser(page: Any, base: str, files: list[dict[str, Any]], lang: str | None = None
                      ) -> tuple[str, str]:
    page.goto(f"{base}/submit" + (f"?lang={lang}" if lang else ""))
    page.set_input_files("#images", files=files)
    page.check("#consent")
    page.click("#submit-button")
    page.wait_for_selector("#result:not([hidden])")
    return page.inner_text("#case-number").strip(), page.inner_text("#case-pin").strip()


def open_case(page: Any, base: str, number: str, pin: str, lang: str) -> None:
    page.goto(f"{base}/case?lang={lang}")
    page.fill("#case", number)
    page.fill("#pin", pin)
    page.click(".case-form button[type=submit]")
    page.wait_for_selector(".facts")


def takedown_match(data_dir: Path, path: Path) -> dict[str, Any]:
    env = {"TAKEDOWN_DATA_DIR": str(data_dir / "data"), "TAKEDOWN_DATABASE_URL": ""}
    result = CliRunner().invoke(cli, ["match", "--json", str(path)], env=env,
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    answer: dict[str, Any] = json.loads(result.stdout)
    return answer


# --- the whole flow, in both languages --------------------------------------------------------
@pytest.mark.parametrize("lang", ["ko", "en"])
def test_submit_status_withdraw_status(browser, base, lang):
    context = browser.new_context(locale={"ko": "ko-KR", "en": "en-US"}[lang],
                                  accept_downloads=True)
    context.set_default_timeout(60_000)
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=base)
    page = context.new_page()
    text = TEXT[lang]
    try:
        # No ?lang=: the browser's Accept-Language picks the language.
        page.goto(f"{base}/submit")
        assert page.get_attribute("html", "lang") == lang
        page.set_input_files("#images", files=[image_file(1), image_file(2, (700, 900))])
        previews = page.locator("#preview-list img")
        assert previews.count() == 2
        assert all(src.startswith("blob:") for src in
                   previews.evaluate_all("els => els.map(e => e.src)"))
        page.check("#consent")
        page.click("#submit-button")
        page.wait_for_selector("#result:not([hidden])")
        assert page.inner_text("#status") == text["registered"]  # the live region
        assert page.evaluate("document.activeElement.id") == "result-title"
        assert page.is_hidden("#start")
        number = page.inner_text("#case-number").strip()
        pin = page.inner_text("#case-pin").strip()
        assert re.fullmatch(r"[0-9A-Z]{4}-[0-9A-Z]{4}-[0-9A-Z]{4}-.", number)
        assert re.fullmatch(r"\d{4}-\d{4}-\d{4}", pin)

        page.click("[data-copy=case-number]")
        page.wait_for_function("() => document.getElementById('copy-status').textContent !== ''")
        assert page.inner_text("#copy-status") == text["copied"]
        assert page.evaluate("navigator.clipboard.readText()") == number
        with page.expect_download() as download:
            page.click("#save-file")
        saved = Path(download.value.path()).read_text(encoding="utf-8-sig")
        assert number in saved and pin in saved and "/case" in saved
        assert download.value.suggested_filename.endswith(".txt")

        # Status through the case page (paste-able fields, password-manager hints).
        page.goto(f"{base}/case")
        assert page.get_attribute("#case", "autocomplete") == "username"
        assert page.get_attribute("#pin", "autocomplete") == "current-password"
        assert page.get_attribute("#pin", "type") == "password"
        page.fill("#case", number.lower().replace("-", " "))  # typed loosely: still found
        page.fill("#pin", pin.replace("-", ""))
        page.click(".case-form button[type=submit]")
        page.wait_for_selector(".facts")
        facts = page.inner_text(".facts")
        assert text["active"] in facts and number in facts
        assert re.search(r"\n2\n", facts)  # two images

        page.click(".withdraw button[type=submit]")
        assert page.inner_text("h1") == text["confirm"]
        page.click("button.danger")
        page.wait_for_selector(".alert.success")
        assert text["done"] in page.inner_text(".alert.success")
        assert text["withdrawn"] in page.inner_text(".facts")
        assert page.locator(".withdraw").count() == 0

        open_case(page, base, number, pin, lang)
        assert text["withdrawn"] in page.inner_text(".facts")
    finally:
        context.close()


# --- privacy: what leaves the browser ---------------------------------------------------------
def test_no_image_byte_leaves_the_browser(context, base):
    files = [image_file(11, (1200, 900)), image_file(12, (640, 640)),
             {"name": "textured.jpg", "mimeType": "image/jpeg",  # plenty of keypoints
              "buffer": encode(textured(13, (900, 600)), quality=92)}]
    page = context.new_page()
    requests: list[Any] = []

    def record(request: Any) -> None:
        if all(request is not seen for seen in requests):
            requests.append(request)

    # The page's requests and, through the context, its worker's too.
    page.on("request", record)
    context.on("request", record)
    number, _pin = submit_in_browser(page, base, files, lang="en")
    assert number

    assert requests and all(r.url.startswith(base) for r in requests), \
        [r.url for r in requests if not r.url.startswith(base)]
    posts = [r for r in requests if r.method != "GET"]
    assert [r.url.split("?")[0] for r in posts] == [base + "/submit/signals"]
    (post,) = posts
    assert post.headers["content-type"] == "application/json"
    body = post.post_data_buffer
    for r in requests:  # no request of any kind carries any piece of any file
        data = (r.post_data_buffer or b"") + r.url.encode()
        for f in files:
            content = f["buffer"]
            for start in range(0, len(content) - 32, 997):
                assert content[start:start + 32] not in data, r.url
    sent = json.loads(body)
    assert set(sent) == {"images"} and len(sent["images"]) == 3
    for image, f in zip(sent["images"], files, strict=True):
        assert set(image) == {"signals", "pdq_quality", "views", "pipeline_version"}
        # A local signal exactly when the Python pipeline computes one (the textured one does).
        local = image["signals"].pop("local", None)
        python = compute_signals(f["buffer"], registration=True).local
        assert (local is not None) == (python is not None), f["name"]
        assert local is not None or f["name"] != "textured.jpg"
        if local is not None:  # keypoints (positions, descriptors), no pixels: a few KiB
            assert re.fullmatch(r"[A-Za-z0-9+/]+=*", local) and len(local) < 6000
        assert set(image["signals"]) == {"pdq", "phash", "md5", "sha256"}
        assert image["signals"]["sha256"] == hashlib.sha256(f["buffer"]).hexdigest()
        assert all(re.fullmatch(r"[0-9a-f]+", v) for v in image["signals"].values())
        for view in image["views"]:
            assert set(view) == {"label", "pdq", "quality"}
            assert re.fullmatch(r"[0-9a-f]{64}", view["pdq"])
    # Nothing but hashes, keypoints, numbers and short labels: far smaller than the images.
    assert len(body) < 30_000 < min(len(f["buffer"]) for f in files)


# --- the registry finds what the browser registered -------------------------------------------
def test_a_crop_of_a_browser_submission_is_matched_by_its_local_signal(context, base, data_dir,
                                                                       tmp_path):
    # The browser's local signal reaches the case: a 70% crop off the centre, beyond every
    # whole-picture hash, is found, and found only through `local`.
    img = textured(41, (900, 600))
    page = context.new_page()
    number, _pin = submit_in_browser(page, base, [{"name": "t.jpg", "mimeType": "image/jpeg",
                                                   "buffer": encode(img, quality=92)}], lang="en")
    copy = tmp_path / "crop.jpg"
    copy.write_bytes(encode(crop(img, 0.7, 0.85, 0.2), quality=85))
    found = takedown_match(data_dir, copy)
    assert found["matched"] is True, found
    assert {m["case"] for m in found["matches"]} == {number}
    assert {m["signal"] for m in found["matches"]} == {"local"}, found["matches"]


def test_a_browser_submission_is_matched_by_takedown_match_until_withdrawn(context, base,
                                                                           data_dir, tmp_path):
    page = context.new_page()
    number, pin = submit_in_browser(page, base, [image_file(21)], lang="en")
    copy = tmp_path / "copy.jpg"  # resized to half and re-encoded at quality 60
    copy.write_bytes(encode(photo(21, (1000, 750)).resize((500, 375), Image.Resampling.BILINEAR),
                            quality=60))
    found = takedown_match(data_dir, copy)
    assert found["matched"] is True
    assert {m["case"] for m in found["matches"]} == {number}
    assert {m["tier"] for m in found["matches"]} <= {"strong", "weak"}
    mirrored = tmp_path / "mirrored.jpg"
    mirrored.write_bytes(encode(photo(21, (1000, 750)).transpose(
        Image.Transpose.FLIP_LEFT_RIGHT), quality=80))
    assert takedown_match(data_dir, mirrored)["matched"] is True  # through a browser view

    open_case(page, base, number, pin, "en")
    page.click(".withdraw button[type=submit]")
    page.click("button.danger")
    page.wait_for_selector(".alert.success")
    assert takedown_match(data_dir, copy) == {"file": str(copy), "matched": False,
                                              "matches": []}
    assert takedown_match(data_dir, mirrored)["matched"] is False


# --- the page's own safety and error handling -------------------------------------------------
def test_quick_exit_leaves_at_once_and_is_not_in_the_history(context, base):
    page = context.new_page()
    page.goto(f"{base}/?lang=en")
    page.goto(f"{base}/submit?lang=en")
    page.click("#quick-exit")
    page.wait_for_url("https://neutral.test/")
    page.go_back()
    assert page.url == f"{base}/?lang=en"  # the page that was left is gone from the history
    page.goto(f"{base}/case?lang=en")
    page.keyboard.press("Escape")
    page.keyboard.press("Escape")
    page.wait_for_url("https://neutral.test/")


def test_quick_exit_and_upload_work_without_javascript(browser, base):
    context = browser.new_context(java_script_enabled=False, locale="ko-KR")
    context.route("https://neutral.test/**", lambda route: route.fulfill(
        status=200, content_type="text/html", body="<title>neutral</title>"))
    page = context.new_page()
    try:
        page.goto(f"{base}/submit")
        assert "자바스크립트가 꺼져 있어서" in page.inner_text("main")
        page.set_input_files("#images", files=[image_file(31)])
        page.check("#consent")
        page.click("#submit-button")
        page.wait_for_selector("#case-number")
        assert re.fullmatch(r"[0-9A-Z]{4}-[0-9A-Z]{4}-[0-9A-Z]{4}-.",
                            page.inner_text("#case-number").strip())
        assert page.is_hidden("[data-copy=case-number]")  # buttons need JavaScript
        page.click("#quick-exit")
        page.wait_for_url("https://neutral.test/")
    finally:
        context.close()


def test_leaving_before_saving_the_pin_asks_first(context, base):
    page = context.new_page()
    submit_in_browser(page, base, [image_file(41)], lang="en")
    messages: list[str] = []

    def dismiss(dialog: Any) -> None:
        messages.append(dialog.message)
        dialog.dismiss()

    page.once("dialog", dismiss)
    page.click("nav.menu a[href^='/case']")
    assert messages and messages[0].startswith(TEXT["en"]["leave"])
    assert page.is_visible("#result") and page.url.startswith(f"{base}/submit")
    page.once("dialog", lambda dialog: dialog.accept())
    with page.expect_navigation():
        page.click("nav.menu a[href^='/case']")
    assert page.url.startswith(f"{base}/case")


def test_files_the_browser_cannot_use_are_refused_before_anything_is_sent(context, base):
    page = context.new_page()
    posts: list[str] = []
    page.on("request", lambda r: r.method == "POST" and posts.append(r.url))
    page.goto(f"{base}/submit?lang=en")
    page.set_input_files("#images", files=[
        image_file(51), {"name": "notes.jpg", "mimeType": "image/jpeg",
                         "buffer": b"these are not the pixels you are looking for" * 20}])
    page.check("#consent")
    page.click("#submit-button")
    page.wait_for_selector("#alert:not([hidden])")
    assert "notes.jpg could not be read as an image" in page.inner_text("#alert-text")
    assert page.evaluate("document.activeElement.id") == "alert"
    assert page.locator("#preview-list li.bad").count() == 1
    grey = encode(Image.new("RGB", (600, 400), (128, 128, 128)))
    page.set_input_files("#images", files=[{"name": "grey.jpg", "mimeType": "image/jpeg",
                                            "buffer": grey}])
    page.click("#submit-button")
    page.wait_for_selector("#alert:not([hidden])")
    assert "grey.jpg is too plain" in page.inner_text("#alert-text")
    assert posts == []


def test_keyboard_and_labels(context, base):
    page = context.new_page()
    page.goto(f"{base}/submit?lang=en")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.className") == "skip"
    page.keyboard.press("Enter")
    assert page.evaluate("location.hash") == "#main"
    order = []
    page.goto(f"{base}/submit?lang=en")
    for _ in range(8):
        page.keyboard.press("Tab")
        order.append(page.evaluate("document.activeElement.id || "
                                   "document.activeElement.textContent.trim()"))
    assert order[:4] == ["Skip to main content", "Takedown Registry", "한국어", "quick-exit"]
    assert "images" in order
    for path in ("/submit", "/case"):
        page.goto(f"{base}{path}?lang=en")
        unlabelled = page.evaluate("""[...document.querySelectorAll('input, button, select')]
            .filter(e => e.type !== 'hidden' && !e.closest('[hidden]'))
            .filter(e => !(e.labels && e.labels.length) && !e.textContent.trim()
                         && !e.getAttribute('aria-label'))
            .map(e => e.outerHTML)""")
        assert unlabelled == []


def test_a_heic_photo_is_offered_the_server_path_and_registers_there(context, base):
    """Chromium cannot decode HEIC (iPhone photos): the page says so, sends nothing, and offers
    the server's in-memory hashing, which registers it."""
    page = context.new_page()
    posts: list[str] = []
    page.on("request", lambda r: r.method == "POST" and posts.append(r.url))
    page.goto(f"{base}/submit?lang=en")
    heic = {"name": "IMG_0042.HEIC", "mimeType": "image/heic",
            "buffer": boxed(photo(62, (1000, 750)), "HEIF")}
    page.set_input_files("#images", files=[heic])
    page.check("#consent")
    page.click("#submit-button")
    page.wait_for_selector("#fallback:not([hidden])")
    assert "cannot open IMG_0042.HEIC" in page.inner_text("#alert-text")
    assert posts == []
    with page.expect_navigation():
        page.click("#fallback-button")
    assert [p.split("?")[0] for p in posts] == [base + "/submit"]
    assert re.fullmatch(r"[0-9A-Z]{4}-[0-9A-Z]{4}-[0-9A-Z]{4}-.",
                        page.inner_text("#case-number").strip())


def test_a_browser_that_cannot_hash_offers_the_server_as_a_second_choice(context, base):
    page = context.new_page()
    page.route("**/static/js/hash/worker.js", lambda route: route.fulfill(status=404))
    posts: list[str] = []
    page.on("request", lambda r: r.method == "POST" and posts.append(r.url))
    page.goto(f"{base}/submit?lang=en")
    page.set_input_files("#images", files=[image_file(61)])
    page.check("#consent")
    page.click("#submit-button")
    page.wait_for_selector("#fallback:not([hidden])")
    assert "cannot make the hashes itself" in page.inner_text("#alert-text")
    assert posts == []  # nothing was sent without the second choice
    with page.expect_navigation():
        page.click("#fallback-button")
    assert [p.split("?")[0] for p in posts] == [base + "/submit"]
    assert re.fullmatch(r"[0-9A-Z]{4}-[0-9A-Z]{4}-[0-9A-Z]{4}-.",
                        page.inner_text("#case-number").strip())
    assert page.is_visible("[data-copy=case-number]")  # the receipt's buttons work here too


# --- videos: hashed on the device, only frame hashes sent --------------------------------------
def video_frames_of(vpdq: str) -> list[tuple[int, int, bytes]]:
    return [(ms, quality, signal.value) for ms, quality, signal in
            Signal.parse("vpdq", vpdq).frames()]


@pytest.mark.parametrize("fmt,codec", [("webm", "libvpx-vp9"), ("mp4", "libx264")])
def test_a_video_is_hashed_on_the_device_and_its_copies_are_matched(context, base, data_dir,
                                                                   tmp_path, fmt, codec):
    frames = pan(31 if fmt == "webm" else 32, 6, travel=0.25)
    data = clip(frames, fmt=fmt, codec=codec)
    page = context.new_page()
    requests: list[Any] = []
    context.on("request", lambda r: requests.append(r))
    number, _pin = submit_in_browser(page, base, [{"name": f"clip.{fmt}",
                                                   "mimeType": f"video/{fmt}", "buffer": data}],
                                     lang="en")
    posts = [r for r in requests if r.method != "GET"]
    assert [r.url.split("?")[0] for r in posts] == [base + "/submit/signals"]
    for r in requests:  # no piece of the video in any request
        sent_bytes = (r.post_data_buffer or b"") + r.url.encode()
        for start in range(0, len(data) - 32, 499):
            assert data[start:start + 32] not in sent_bytes
    (image,) = json.loads(posts[0].post_data_buffer)["images"]
    assert set(image) == {"signals", "pipeline_version"}
    assert set(image["signals"]) == {"vpdq", "md5", "sha256"}
    assert image["signals"]["sha256"] == hashlib.sha256(data).hexdigest()
    assert image["signals"]["md5"] == hashlib.md5(data).hexdigest()
    # Parity: the browser's kept frames against Python's registration of the same file.
    browser_frames = video_frames_of(image["signals"]["vpdq"])
    python = compute_video_signals(data, registration=True).frames
    assert 4 <= len(browser_frames) <= 5 and len(python.frames) >= 4
    near = [min(bin(int.from_bytes(b, "big") ^ int.from_bytes(f.pdq, "big")).count("1")
                for f in python.frames) for _ms, _q, b in browser_frames]
    assert sum(d <= 31 for d in near) >= len(near) - 1, near
    # A smaller, re-encoded, trimmed copy made in Python is matched as this video.
    copy = tmp_path / "copy.mp4"
    small = [np.asarray(Image.fromarray(f).resize((426, 240))) for f in frames[12:130]]
    copy.write_bytes(clip(small, crf=32))
    found = takedown_match(data_dir, copy)
    assert found["matched"] is True, found
    assert {m["case"] for m in found["matches"]} == {number}
    assert "vpdq" in {m["signal"] for m in found["matches"]}


def test_a_file_the_browser_cannot_play_is_offered_to_the_server(context, base, data_dir):
    # AVI with MPEG-4 part 2: the server's FFmpeg reads it, Chromium does not play it.
    frames = pan(33, 3, travel=0.2)
    data = clip(frames, fmt="avi", codec="mpeg4")
    page = context.new_page()
    page.goto(f"{base}/submit?lang=en")
    page.set_input_files("#images", files=[{"name": "old.avi", "mimeType": "video/x-msvideo",
                                            "buffer": data}])
    page.check("#consent")
    page.click("#submit-button")
    page.wait_for_selector("#alert:not([hidden])")
    assert "cannot play old.avi" in page.inner_text("#alert-text")
    assert page.is_visible("#fallback-button")
    page.click("#fallback-button")  # the explicit second choice: hashed in memory there
    page.wait_for_selector("#result:not([hidden])")
    number = page.inner_text("#case-number").strip()
    copy = data_dir / "old-copy.mp4"  # and the server's frame hashes find a copy of it
    copy.write_bytes(clip(frames[6:60], crf=30))
    found = takedown_match(data_dir, copy)
    assert {m["case"] for m in found["matches"]} == {number}

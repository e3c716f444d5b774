"""Screenshots of the submitter pages, in Korean and English, at desktop and phone width.

    .venv/bin/python bench/screenshots.py [--out docs/screenshots]

Serves the app from a thread over a fresh temporary database, drives Debian's Chromium with
Playwright (the same launcher as the browser tests), goes through / -> /submit -> the receipt
-> /case status, and writes ``{page}-{lang}-{desktop|phone}.png``. Images are hashed in the
browser from generated pictures (nothing from disk). PNGs are palette-reduced to stay small.
Korean text needs Debian's fonts-nanum; with chromium-l10n installed too, the browser's own
controls (the file picker's button) are in Korean on the Korean screenshots.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

from PIL import Image  # noqa: E402
from werkzeug.serving import make_server  # noqa: E402

from registry.bootstrap import build_registry  # noqa: E402
from registry.config import Settings  # noqa: E402
from registry.web import create_app  # noqa: E402
from tests.browser import launch_chromium  # noqa: E402
from tests.conftest import encode, photo  # noqa: E402

WIDTHS = {"desktop": 1280, "phone": 390}
LANGS = ("ko", "en")


@contextmanager
def served(data_dir: str) -> Iterator[str]:
    settings = Settings.from_env({}, data_dir=data_dir, pin_kdf_n=1024,
                                 submit_limit="1000 per hour", case_limit="1000 per hour")
    registry = build_registry(settings)
    server = make_server("127.0.0.1", 0, create_app(registry), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=10)
        registry.close()


def save(png: bytes, path: Path) -> None:
    """Palette-reduce a screenshot: ~4x smaller, and the pages' flat colours survive."""
    image = Image.open(io.BytesIO(png)).convert("RGB")
    image.quantize(colors=96, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
        path, optimize=True)


def shoot(browser: object, base: str, lang: str, device: str, out: Path) -> list[Path]:
    width = WIDTHS[device]
    context = browser.new_context(  # type: ignore[attr-defined]
        viewport={"width": width, "height": 900 if device == "desktop" else 844},
        device_scale_factor=1, locale=lang)
    page = context.new_page()
    written = []

    def snap(name: str) -> None:
        path = out / f"{name}-{lang}-{device}.png"
        save(page.screenshot(full_page=True), path)
        written.append(path)

    page.goto(f"{base}/?lang={lang}")
    snap("home")
    page.goto(f"{base}/submit?lang={lang}")
    page.set_input_files("#images", files=[
        {"name": "photo-1.jpg", "mimeType": "image/jpeg",
         "buffer": encode(photo(501, (1200, 900)), quality=88)},
        {"name": "photo-2.jpg", "mimeType": "image/jpeg",
         "buffer": encode(photo(502, (900, 1200)), quality=88)}])
    page.wait_for_selector("#preview-list img")
    snap("submit")
    page.check("#consent")
    page.click("#submit-button")
    page.wait_for_selector("#result:not([hidden])", timeout=60_000)
    page.evaluate("document.activeElement && document.activeElement.blur()")
    snap("submitted")
    number = page.inner_text("#case-number").strip()
    pin = page.inner_text("#case-pin").strip()
    page.goto(f"{base}/case?lang={lang}")
    page.fill("#case", number)
    page.fill("#pin", pin)
    page.click("button[type=submit]")
    page.wait_for_selector(".facts")
    snap("case")
    context.close()
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory() as data_dir, served(data_dir) as base:
        for lang in LANGS:
            # The browser's own controls (the file picker's button) in the page's language:
            # Chromium reads LANGUAGE on Linux (Debian's chromium-l10n has the Korean strings).
            with launch_chromium(env={**os.environ, "LANGUAGE": lang}) as browser:
                for device in WIDTHS:
                    for path in shoot(browser, base, lang, device, args.out):
                        print(f"{path}\t{path.stat().st_size // 1024} KB")


if __name__ == "__main__":
    main()

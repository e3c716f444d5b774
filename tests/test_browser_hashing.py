"""In-browser hashing (registry/web/static/js/hash) against the Python pipeline, in Chromium.

Each image is picked in a page and hashed by the worker, as the submit page does, and by
``compute_signals(data, DecodeOptions(draft_size=0), registration=True)``: the browser has no
JPEG draft decoding, so parity is measured against a full decode (the distance to the default
draft decode is reported too). Bars (docs/browser-hashing.md): pHash, MD5 and SHA-256 equal;
PDQ within 4 bits for quality >= 80 (Meta's bar between implementations is 10); PDQ quality
within 1; the same views (the content box present in both or neither) each within 4 bits; the local
signal present in both or neither, at most 5% of Python's keypoints missing and on average at
most one descriptor bit moved per shared keypoint.
Images are generated in code; the evaluation photos in ../shared/data are used when present.
"""

from __future__ import annotations

import base64
import io
import statistics
import struct
import zlib
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageDraw

from registry.config import Settings
from registry.errors import RegistryError
from registry.hashing import PIPELINE_VERSION
from registry.hashing.decode import DecodeOptions, decode_image
from registry.hashing.local import LocalFeatures, unpack
from registry.hashing.signals import compute_signals
from registry.service.cases import SubmittedImage
from tests.browser import WorkerPage, launch_chromium, static_server
from tests.images import (
    blurred_checkerboard,
    boxed,
    gradient,
    photo_like,
    png_header_only,
    rings,
    with_ispe,
)

PHOTOS = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "originals"
PHOTO_SAMPLE = 60
PDQ_BAR = 4  # bits, for images (and views) of quality >= QUALITY_BAR
QUALITY_BAR = 80
QUALITY_TOLERANCE = 1
LOCAL_LOST_BAR = 0.05  # of Python's keypoints missing from the browser's, per image
LOCAL_BITS_BAR = 1.0  # descriptor bits moved per shared keypoint, on average per image

pytestmark = pytest.mark.slow


def distance(a: str, b: str) -> int:
    return bin(int(a, 16) ^ int(b, 16)).count("1")


def family(label: str) -> str:
    """The view family a label belongs to: content, mirror, crop90, crop80, rot4, rot8."""
    if label.startswith("crop"):
        return label.split("-")[0]
    if label.startswith("rot"):
        return "rot" + label.lstrip("rot+-")
    return label


def compare(image: dict[str, Any], data: bytes) -> dict[str, Any]:
    """The browser's result for ``data`` against Python's full decode (and the draft decode)."""
    full = compute_signals(data, DecodeOptions(draft_size=0), registration=True)
    draft = compute_signals(data, registration=True)
    ref = SubmittedImage.from_image(full)
    ref_views = {label: (signal.hex, quality) for label, signal, quality in ref.views}
    draft_views = {label: signal.hex
                   for label, signal, _ in SubmittedImage.from_image(draft).views}
    js_views = {v["label"]: (v["pdq"], v["quality"]) for v in image["views"]}
    signals = image["signals"]
    views = {}
    for label, (pdq, quality) in js_views.items():
        if label in ref_views:
            views[label] = {"distance": distance(pdq, ref_views[label][0]),
                            "quality": quality, "quality_delta": quality - ref_views[label][1],
                            "draft_distance": (distance(pdq, draft_views[label])
                                               if label in draft_views else None)}
    return {
        "labels": [v["label"] for v in image["views"]],
        "ref_labels": [label for label, _, _ in ref.views],
        "phash_equal": signals["phash"] == full.phash.hex,
        "pdq": distance(signals["pdq"], full.pdq.hex),
        "pdq_draft": distance(signals["pdq"], draft.pdq.hex),
        "phash_draft": distance(signals["phash"], draft.phash.hex),
        "quality": image["pdq_quality"],
        "quality_delta": image["pdq_quality"] - full.pdq_quality,
        "md5_equal": signals["md5"] == full.md5.hex,
        "sha256_equal": signals["sha256"] == full.sha256.hex,
        "size_equal": (image["width"], image["height"]) == (full.width, full.height),
        "pipeline_version": image["pipeline_version"],
        "views": views,
        "local": compare_local(signals.get("local"),
                               None if full.local is None else unpack(full.local.value)),
    }


def compare_local(text: str | None, ref: LocalFeatures | None) -> dict[str, Any]:
    """The browser's local signal against Python's: both present (or both absent), keypoints
    of Python's not found in the browser's (same quantised position and level), descriptor bits
    moved on the shared ones, and whether the packed bytes are identical."""
    if text is None or ref is None:
        return {"present": (text is not None, ref is not None)}
    mine = unpack(base64.b64decode(text))

    def keys(f: LocalFeatures) -> dict[tuple[int, int, int], int]:
        return {(round(float(x) * 100), round(float(y) * 100), int(o)): i
                for i, ((x, y), o) in enumerate(zip(f.xy, f.octave, strict=True))}

    theirs, ours = keys(ref), keys(mine)
    shared = [(i, ours[k]) for k, i in theirs.items() if k in ours]
    bits = sum(int(np.unpackbits(ref.descriptors[i] ^ mine.descriptors[j]).sum())
               for i, j in shared)
    return {"present": (True, True), "n": len(ref), "n_browser": len(mine),
            "lost": len(ref) - len(shared), "bits": bits, "shared": len(shared),
            "identical": mine.pack() == ref.pack()}


def failures(name: str, c: dict[str, Any]) -> list[str]:
    """Every bar ``c`` misses, as readable lines."""
    out = []
    if not c["phash_equal"]:
        out.append(f"{name}: pHash differs")
    if c["quality"] >= QUALITY_BAR and c["pdq"] > PDQ_BAR:
        out.append(f"{name}: PDQ {c['pdq']} bits from Python (quality {c['quality']})")
    if abs(c["quality_delta"]) > QUALITY_TOLERANCE:
        out.append(f"{name}: PDQ quality differs by {c['quality_delta']}")
    if not (c["md5_equal"] and c["sha256_equal"]):
        out.append(f"{name}: digests differ")
    if not c["size_equal"]:
        out.append(f"{name}: size differs")
    if c["pipeline_version"] != PIPELINE_VERSION:
        out.append(f"{name}: pipeline_version {c['pipeline_version']}")
    if c["labels"] != c["ref_labels"]:
        out.append(f"{name}: views {c['labels']} != Python's {c['ref_labels']}")
    for label, v in c["views"].items():
        if v["quality"] >= QUALITY_BAR and v["distance"] > PDQ_BAR:
            out.append(f"{name}: view {label} {v['distance']} bits from Python")
    local = c["local"]
    if local["present"][0] != local["present"][1]:
        out.append(f"{name}: local signal present in browser/Python: {local['present']}")
    elif "n" in local:
        if local["lost"] > LOCAL_LOST_BAR * local["n"]:
            out.append(f"{name}: local: {local['lost']} of {local['n']} keypoints lost")
        if local["bits"] > LOCAL_BITS_BAR * max(1, local["shared"]):
            out.append(f"{name}: local: {local['bits']} descriptor bits moved on "
                       f"{local['shared']} keypoints")
    return out


def summary(results: dict[str, dict[str, Any]], times: list[float]) -> list[str]:
    """The figures: PDQ distance per view family (mean/max), timing, draft-decode drift."""
    fams: dict[str, list[int]] = defaultdict(list)
    drafts: dict[str, list[int]] = defaultdict(list)
    for c in results.values():
        fams["full"].append(c["pdq"])
        drafts["full"].append(c["pdq_draft"])
        for label, v in c["views"].items():
            fams[family(label)].append(v["distance"])
            if v["draft_distance"] is not None:
                drafts[family(label)].append(v["draft_distance"])
    moved = sorted(f"{name} ({label} {v['distance']})" for name, c in results.items()
                   for label, v in [("full", {"distance": c["pdq"]}), *c["views"].items()]
                   if v["distance"])
    lines = [f"{len(results)} images; pHash equal on "
             f"{sum(c['phash_equal'] for c in results.values())}; time per image in the "
             f"browser: mean {statistics.fmean(times):.0f} ms, max {max(times):.0f} ms"]
    lines.append("  PDQ views that differ from Python's: " + (", ".join(moved) or "none"))
    local = [c["local"] for c in results.values() if "n" in c["local"]]
    if local:
        lines.append(
            f"  local: {len(local)} images with the signal, packed bytes identical on "
            f"{sum(x['identical'] for x in local)}; keypoints lost "
            f"{sum(x['lost'] for x in local)} of {sum(x['n'] for x in local)}; descriptor "
            f"bits moved {sum(x['bits'] for x in local)} on "
            f"{sum(x['shared'] for x in local)} shared keypoints")
    for name, values in fams.items():
        d = drafts[name]
        lines.append(f"  PDQ {name:7} n={len(values):4} vs full decode mean "
                     f"{statistics.fmean(values):.2f} max {max(values)}; vs draft decode mean "
                     f"{statistics.fmean(d) if d else 0:.2f} max {max(d) if d else 0}")
    return lines


def _encode(img: Image.Image, fmt: str, **params: Any) -> bytes:
    out = io.BytesIO()
    img.save(out, fmt, **params)
    return out.getvalue()


def _framed(img: Image.Image, pad: int, colour: tuple[int, int, int]) -> Image.Image:
    out = Image.new("RGB", (img.width + 2 * pad, img.height + 2 * pad), colour)
    out.paste(img, (pad, pad))
    return out


def _captioned(img: Image.Image, bar: int) -> Image.Image:
    out = Image.new("RGB", (img.width, img.height + bar), (255, 255, 255))
    out.paste(img, (0, 0))
    draw = ImageDraw.Draw(out)
    draw.text((12, img.height + bar // 3), "who is this lol send to group", fill=(0, 0, 0))
    return out


def _letterboxed(img: Image.Image) -> Image.Image:
    side = max(img.size)
    out = Image.new("RGB", (side, side), (0, 0, 0))
    out.paste(img, ((side - img.width) // 2, (side - img.height) // 2))
    return out


def _with_alpha(img: Image.Image) -> Image.Image:
    w, h = img.size
    _, xs = np.mgrid[0:h, 0:w]
    alpha = (255 * xs / (w - 1)).astype(np.uint8)
    alpha[h // 3: h // 2, w // 4: w // 2] = 0  # a fully transparent hole
    rgba = np.dstack([np.asarray(img), alpha])
    return Image.fromarray(rgba, "RGBA")


def _exif_rotated(img: Image.Image, orientation: int, fmt: str = "JPEG") -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return _encode(img, fmt, quality=90, exif=exif)


def _icc_swapped_primaries() -> bytes:
    """An ICC v2 RGB matrix/TRC profile whose red and blue primaries are swapped: a browser that
    colour-manages the JPEG it is embedded in swaps the channels (Pillow ignores profiles)."""
    def s15(v: float) -> bytes:
        return struct.pack(">i", round(v * 65536))

    def xyz(x: float, y: float, z: float) -> bytes:
        return b"XYZ " + bytes(4) + s15(x) + s15(y) + s15(z)

    red, green, blue = (0.4361, 0.2225, 0.0139), (0.3851, 0.7169, 0.0971), (0.1431, 0.0606, 0.7141)
    curve = b"curv" + bytes(4) + struct.pack(">IH", 1, 0x0233) + bytes(2)  # gamma 2.2
    name = b"swapped\x00"
    desc = b"desc" + bytes(4) + struct.pack(">I", len(name)) + name + bytes(4 + 4 + 2 + 1 + 67)
    tags = [(b"desc", desc), (b"wtpt", xyz(0.9642, 1.0, 0.8249)), (b"rXYZ", xyz(*blue)),
            (b"gXYZ", xyz(*green)), (b"bXYZ", xyz(*red)), (b"rTRC", curve), (b"gTRC", curve),
            (b"bTRC", curve), (b"cprt", b"text" + bytes(4) + b"none" + bytes(4))]
    start = 128 + 4 + 12 * len(tags)
    table, body = b"", b""
    for sig, data in tags:
        data += bytes(-len(data) % 4)
        table += sig + struct.pack(">II", start + len(body), len(data))
        body += data
    header = (struct.pack(">I", start + len(body)) + bytes(4) + struct.pack(">I", 0x02100000)
              + b"mntrRGB XYZ " + bytes(12) + b"acsp" + bytes(28) + s15(0.9642) + s15(1.0)
              + s15(0.8249) + bytes(48))
    return header + struct.pack(">I", len(tags)) + table + body


def _png_rgb16(img: Image.Image, seed: int) -> bytes:
    """A 16-bit-per-channel RGB PNG (Pillow cannot write one): the image's 8-bit values as the
    high bytes, random low bytes."""
    rng = np.random.default_rng(seed)
    a = np.asarray(img).astype(np.uint16) * 257 + rng.integers(0, 257, (img.height, img.width, 3),
                                                               dtype=np.uint16)

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (struct.pack(">I", len(payload)) + kind + payload
                + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF))

    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in a)
    ihdr = struct.pack(">IIBBBBB", img.width, img.height, 16, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows))
            + chunk(b"IEND", b""))


def _grey16(img: Image.Image, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    wide = np.asarray(img.convert("L")).astype(np.uint16) * 257
    return Image.fromarray(wide + rng.integers(0, 257, wide.shape, dtype=np.uint16))


def _colour_keyed(img: Image.Image, grey: bool) -> bytes:
    """A PNG whose tRNS chunk makes one colour transparent (a block of it is painted in)."""
    a = np.asarray(img.convert("L") if grey else img).copy()
    key: int | tuple[int, int, int] = 77 if grey else (10, 200, 30)
    a[40:120, 60:160] = key
    return _encode(Image.fromarray(a), "PNG", transparency=key)


def _animated(fmt: str, seed: int) -> bytes:
    first, second = photo_like(seed, (200, 150)), photo_like(seed + 1, (200, 150))
    out = io.BytesIO()
    first.save(out, fmt, save_all=True, append_images=[second], duration=100, loop=0)
    return out.getvalue()


def generated_images() -> list[tuple[str, bytes, str]]:
    """(name, file bytes, MIME type) of every generated test image."""
    jpeg, png = "image/jpeg", "image/png"
    images = [
        ("photo-640x480.jpg", _encode(photo_like(1, (640, 480)), "JPEG", quality=90), jpeg),
        ("photo-333x517.png", _encode(photo_like(2, (333, 517)), "PNG"), png),
        ("photo-1600x1200.jpg", _encode(photo_like(3, (1600, 1200)), "JPEG", quality=85), jpeg),
        ("tall-120x1500.jpg", _encode(photo_like(4, (120, 1500)), "JPEG", quality=90), jpeg),
        ("wide-1400x110.png", _encode(photo_like(5, (1400, 110)), "PNG"), png),
        ("small-48x40.png", _encode(photo_like(6, (48, 40)), "PNG"), png),
        ("alpha-300x200.png", _encode(_with_alpha(photo_like(7, (300, 200))), "PNG"), png),
        ("exif6-320x240.jpg", _exif_rotated(photo_like(8, (320, 240)), 6), jpeg),
        ("exif3-320x240.jpg", _exif_rotated(photo_like(9, (320, 240)), 3), jpeg),
        ("exif8-200x300.jpg", _exif_rotated(photo_like(10, (200, 300)), 8), jpeg),
        ("grey-400x300.jpg", _encode(photo_like(11, (400, 300)).convert("L"), "JPEG"), jpeg),
        ("grey-300x400.png", _encode(photo_like(12, (300, 400)).convert("L"), "PNG"), png),
        ("frame-white.png", _encode(_framed(photo_like(13, (400, 300)), 30, (255, 255, 255)),
                                    "PNG"), png),
        ("caption-bar.jpg", _encode(_captioned(photo_like(14, (480, 360)), 70), "JPEG",
                                    quality=92), jpeg),
        ("letterbox.jpg", _encode(_letterboxed(photo_like(15, (480, 270))), "JPEG",
                                  quality=90), jpeg),
        ("frame-big.jpg", _encode(_framed(photo_like(16, (2000, 1400)), 120, (20, 20, 20)),
                                  "JPEG", quality=88), jpeg),
        ("palette.gif", _encode(photo_like(17, (320, 240)).quantize(64), "GIF"), "image/gif"),
        ("photo.bmp", _encode(photo_like(18, (256, 192)), "BMP"), "image/bmp"),
        ("rings.png", _encode(rings((300, 300)), "PNG"), png),
        ("gradient.jpg", _encode(gradient((320, 200)), "JPEG", quality=95), jpeg),
        ("checkerboard.png", _encode(blurred_checkerboard((256, 256)), "PNG"), png),
        ("icc-swapped.jpg", _encode(photo_like(24, (300, 200)), "JPEG", quality=92,
                                    icc_profile=_icc_swapped_primaries()), jpeg),
        ("rgb16.png", _png_rgb16(photo_like(25, (240, 180)), 25), png),
        ("grey16.png", _encode(_grey16(photo_like(26, (240, 180)), 26), "PNG"), png),
        ("animated.gif", _animated("GIF", 27), "image/gif"),
        ("palette-trns.png", _encode(photo_like(29, (200, 150)).convert("P"), "PNG",
                                     transparency=0), png),
        ("rgb-colour-key.png", _colour_keyed(photo_like(32, (240, 180)), grey=False), png),
        ("grey-colour-key.png", _colour_keyed(photo_like(33, (240, 180)), grey=True), png),
    ]
    from PIL import features

    if features.check("avif"):  # Chromium decodes AVIF itself (HEIC it cannot: refused below)
        images += [
            ("photo.avif", _encode(photo_like(34, (320, 240)), "AVIF", quality=90), "image/avif"),
            ("exif6.avif", _exif_rotated(photo_like(35, (320, 240)), 6, "AVIF"), "image/avif"),
        ]
    if features.check("webp"):
        images += [
            ("lossless.webp", _encode(photo_like(19, (300, 220)), "WEBP", lossless=True),
             "image/webp"),
            ("lossy.webp", _encode(photo_like(30, (300, 220)), "WEBP", quality=80), "image/webp"),
            ("animated.webp", _animated("WEBP", 31), "image/webp"),
        ]
    return images


def photo_paths() -> list[Path]:
    return sorted(p for p in PHOTOS.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))


SERVER_LOG: list[str] = []  # every request the test server answered


@pytest.fixture(scope="module")
def chromium() -> Iterator[tuple[Any, str]]:
    """One Chromium for the module (Playwright's sync API allows one) and the static server."""
    with static_server(log=SERVER_LOG) as base, launch_chromium() as browser:
        yield browser, base


@pytest.fixture(scope="module")
def worker_page(chromium: tuple[Any, str]) -> Iterator[WorkerPage]:
    page = WorkerPage(*chromium)
    yield page
    page.close()


def _result(messages: list[dict[str, Any]]) -> dict[str, Any]:
    final = messages[-1]
    assert final["type"] == "result", final
    return dict(final["image"])


def _check_all(worker_page: WorkerPage, images: list[tuple[str, bytes, str]],
               capsys: pytest.CaptureFixture[str], title: str) -> None:
    results: dict[str, dict[str, Any]] = {}
    times = []
    for name, data, mime in images:
        messages, ms = worker_page.hash(name, data, mime)
        results[name] = compare(_result(messages), data)
        times.append(ms)
    problems = [line for name, c in results.items() for line in failures(name, c)]
    with capsys.disabled():
        print(f"\n{title}:")
        for line in summary(results, times):
            print("  " + line)
    assert not problems, "\n".join(problems)


def test_generated_images_hash_as_in_python(worker_page: WorkerPage,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    images = generated_images()
    _check_all(worker_page, images, capsys, "browser vs Python, generated images")
    # The set must exercise the content box (frames, bars) and leave it out elsewhere.
    with_content = [name for name, data, _ in images
                    if compute_signals(data, DecodeOptions(draft_size=0)).content is not None]
    assert {"frame-white.png", "caption-bar.jpg", "letterbox.jpg"} <= set(with_content)
    assert "photo-640x480.jpg" not in with_content


def test_photos_hash_as_in_python(worker_page: WorkerPage,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    paths = photo_paths()
    if not paths:
        pytest.skip(f"no evaluation photos in {PHOTOS} (see ../shared/data/README.md)")
    step = max(1, len(paths) // PHOTO_SAMPLE)
    sample = paths[::step][:PHOTO_SAMPLE]
    images = [(p.name, p.read_bytes(), "image/jpeg") for p in sample]
    _check_all(worker_page, images, capsys,
               f"browser vs Python, {len(images)} of {len(paths)} photos")


def test_worker_protocol(worker_page: WorkerPage) -> None:
    data = _encode(_framed(photo_like(20, (320, 240)), 24, (255, 255, 255)), "PNG")
    worker_page.hash("warm-up.png", data, "image/png")  # the worker's modules are loaded
    assert any("/static/js/hash/worker.js" in url for url in worker_page.requests)
    assert any("/static/js/hash/pdq.js" in url for url in worker_page.requests)
    before, served = len(worker_page.requests), len(SERVER_LOG)
    messages, _ = worker_page.hash("framed.png", data, "image/png")
    # Hashing makes no request at all (as the browser reports requests, the worker's included,
    # and as the server saw them): the image leaves the worker only as hashes.
    assert worker_page.requests[before:] == []
    assert SERVER_LOG[served:] == []
    *progress, final = messages
    assert progress and all(m["type"] == "progress" for m in progress)
    assert [m["done"] for m in progress] == list(range(1, len(progress) + 1))
    assert {m["total"] for m in progress} == {len(progress)}
    assert all(isinstance(m["stage"], str) and m["stage"] for m in progress)
    assert len({m["id"] for m in messages}) == 1
    assert final["type"] == "result"
    image = final["image"]
    assert set(image) == {"signals", "pdq_quality", "views", "pipeline_version", "width",
                          "height"}
    assert set(image["signals"]) == {"pdq", "phash", "md5", "sha256", "local"}
    assert image["pipeline_version"] == PIPELINE_VERSION
    assert (image["width"], image["height"]) == (368, 288)
    labels = [v["label"] for v in image["views"]]
    assert labels[0] == "content" and labels[1] == "mirror" and labels[-1] == "rot-8"
    assert all(set(v) == {"label", "pdq", "quality"} for v in image["views"])
    signals = image["signals"]
    local = base64.b64decode(signals.pop("local"), validate=True)
    assert len(local) == 7 + 36 * 112  # the registration keypoints, packed
    lengths = {k: len(v) for k, v in signals.items()}
    assert lengths == {"pdq": 64, "phash": 16, "md5": 32, "sha256": 64}
    assert all(v == v.lower() for v in signals.values())


def test_a_flat_picture_has_no_local_signal(worker_page: WorkerPage) -> None:
    """As in Python: too few keypoints (a flat picture) leaves the signal out, no error."""
    data = _encode(Image.new("RGB", (320, 240), (90, 120, 150)), "PNG")
    messages, _ = worker_page.hash("flat.png", data, "image/png")
    image = _result(messages)
    assert "local" not in image["signals"]
    assert compute_signals(data, registration=True).local is None


def _truncated_jpeg() -> bytes:
    data = _encode(photo_like(21, (320, 240)), "JPEG", quality=90)
    return data[: len(data) * 2 // 3]


@pytest.mark.parametrize(("name", "data", "code"), [
    ("empty.jpg", b"", "empty_file"),
    ("notes.txt", "사진이 아닙니다 — not a picture\n".encode() * 20, "not_an_image"),
    ("cut.jpg", _truncated_jpeg(), "truncated_image"),
    ("bomb.png", png_header_only(10_000, 10_000), "image_too_large"),
    ("scan.tiff", _encode(photo_like(22, (64, 48)), "TIFF"), "unsupported_format"),
    ("huge.jpg", b"\xff\xd8\xff" + bytes(21 * 1024 * 1024), "file_too_large"),
])
def test_worker_refuses_what_the_server_refuses(worker_page: WorkerPage, name: str, data: bytes,
                                                code: str) -> None:
    messages, _ = worker_page.hash(name, data)
    final = messages[-1]
    assert [m["type"] for m in messages].count("error") == 1
    assert final["type"] == "error" and final["code"] == code, final
    assert final["message"].endswith(".") and final["message"][0].isupper()


def test_heif_and_avif_boxes_are_read_as_the_server_reads_them(worker_page: WorkerPage) -> None:
    """HEIC (Chromium cannot decode it) is refused as unsupported, for the page to offer the
    server's in-memory path; a damaged or bomb AVIF is refused from its boxes with the server's
    error code and message (registry/hashing/isobmff.py and its port in decode.js)."""
    final = worker_page.hash("IMG_0001.HEIC", boxed(photo_like(36, (256, 192)), "HEIF"))[0][-1]
    assert final["type"] == "error" and final["code"] == "unsupported_format", final
    assert "HEIC" in final["message"]
    avif = boxed(photo_like(37, (256, 192)), "AVIF")
    bad = {"bomb.avif": with_ispe(avif, 30_000, 30_000), "cut.avif": avif[: len(avif) // 2],
           "cut-ftyp.avif": avif[:20], "no-size.avif": avif.replace(b"ispe", b"free")}
    for name, data in bad.items():
        with pytest.raises(RegistryError) as refused:
            decode_image(data)
        final = worker_page.hash(name, data)[0][-1]
        assert final["type"] == "error", (name, final)
        assert (final["code"], final["message"]) == (refused.value.code, refused.value.message)


def test_the_worker_applies_the_limits_the_page_gives_it(chromium: tuple[Any, str]) -> None:
    """The size limits are the server's settings, handed over by the page: with non-default
    ones the worker refuses what the server (decode_image with the same settings) refuses, with
    the same message; given none, it hashes nothing."""
    settings = Settings.from_env({}, max_upload_bytes=150_000, max_image_pixels=200_000)
    options = DecodeOptions.of(settings)
    wide = _encode(photo_like(24, (600, 400)), "JPEG", quality=80)  # 240,000 pixels
    big = _encode(Image.effect_noise((300, 300), 60).convert("RGB"), "PNG")
    small = _encode(photo_like(25, (400, 300)), "JPEG", quality=90)  # 120,000 pixels
    assert len(big) > 150_000 > len(small) and len(wide) < 150_000
    browser, base = chromium
    page = WorkerPage(browser, base, {"maxBytes": settings.max_upload_bytes,
                                      "maxPixels": settings.max_image_pixels})
    for name, data, code in (("wide.jpg", wide, "image_too_large"),
                             ("big.png", big, "file_too_large")):
        final = page.hash(name, data)[0][-1]
        assert final["type"] == "error" and final["code"] == code, final
        with pytest.raises(RegistryError) as refused:
            decode_image(data, options)
        assert refused.value.code == code and refused.value.message == final["message"]
    assert _result(page.hash("small.jpg", small)[0])["signals"]["pdq"]
    page.close()
    bare = WorkerPage(browser, base, {"maxBytes": None, "maxPixels": None})
    final = bare.hash("small.jpg", small)[0][-1]
    assert final["type"] == "error" and final["code"] == "hashing_failed", final
    bare.close()


def test_hash_pixels_is_the_pipeline_on_raw_pixels(worker_page: WorkerPage) -> None:
    """signals.js hashPixels on un-premultiplied RGBA equals Python on the same RGBA image."""
    rng = np.random.default_rng(5)
    rgba = np.dstack([np.asarray(photo_like(23, (200, 150))),
                      rng.integers(0, 256, (150, 200), dtype=np.uint8)])
    js = worker_page.page.evaluate(
        """async ([bytes, w, h]) => {
            const m = await import('/static/js/hash/signals.js');
            return m.hashPixels(new Uint8ClampedArray(bytes), w, h);
        }""", [rgba.reshape(-1).tolist(), 200, 150])
    ref = compute_signals(_encode(Image.fromarray(rgba, "RGBA"), "PNG"), registration=True)
    assert js["phash"] == ref.phash.hex
    assert js["pdq"] == ref.pdq.hex and js["pdq_quality"] == ref.pdq_quality
    assert [v["pdq"] for v in js["views"]] == [v.pdq.hex for v in ref.variants]

"""Signals of images: pinned golden values, parity with the reference packages, Meta's hex
convention, digests and the ImageSignals value object."""

from __future__ import annotations

import hashlib
import io

import imagehash
import numpy as np
import pdqhash
import pytest
from PIL import Image, ImageEnhance

from registry.domain import Signal, SignalKind
from registry.hashing import PIPELINE_VERSION, DecodeOptions, compute_signals, decode_image
from tests.images import (
    blurred_checkerboard,
    encode,
    gradient,
    jpeg_bytes,
    photo_like,
    png_bytes,
    rings,
)

FULL = DecodeOptions(draft_size=0)


def meta_pdq_hex(bits: object) -> str:
    """Meta's PDQ hex (StopNCII, HMA): the 256 bits in order, read as one big-endian number."""
    vector = [int(b) for b in np.asarray(bits).ravel()]
    assert len(vector) == 256 and set(vector) <= {0, 1}
    return f"{int(''.join(map(str, vector)), 2):064x}"


# --- golden values ------------------------------------------------------------------------------
# Computed once with Pillow 13.0, imagehash 4.3.2, pdqhash 0.2.8, numpy 2.4 and pinned: a library
# upgrade that moves a single bit of a registered hash breaks matching against every stored hash,
# so it must fail here first and be handled as a pipeline version change (PIPELINE_VERSION).
GOLDEN_PNG = [
    (
        "photo_like(1)",
        lambda: photo_like(1),
        "350228c92d32c2c2fff9b47dc2c717b40afd0071102d71bcc6783b5bd87d3d8b",
        100,
        "8068dee99b9ad247",
    ),
    (
        "photo_like(2, 320x240)",
        lambda: photo_like(2, (320, 240)),
        "34ad097f71db8c67939932b88e24f382cb3235ccf8ea97f50025278566aae1ce",
        100,
        "95b92ad07247ab99",
    ),
    (
        # A pure gradient has no texture: PDQ scores it quality 0, which the registry rejects.
        "gradient()",
        gradient,
        "aaab5555aaaa5555aaab5554aaaa5555aaaa5554aaaa5555aaab5754aa2967b0",
        0,
        "a230c6157768776b",
    ),
    (
        "blurred_checkerboard()",
        blurred_checkerboard,
        "147f147f147feb80147fef80147f106f147feb80eb80ef80eb80ef80eb80ef80",
        100,
        "d4ff54fe54fe0000",
    ),
    (
        "rings()",
        rings,
        "d52ae736e72a551619ee18c6552ae73646265dd008b9553aaac5f7c8f6d1a829",
        100,
        "b24ac589d12eceb5",
    ),
]


@pytest.mark.parametrize(
    ("make", "pdq_hex", "quality", "phash_hex"),
    [g[1:] for g in GOLDEN_PNG],
    ids=[g[0] for g in GOLDEN_PNG],
)
def test_golden_png(make, pdq_hex, quality, phash_hex):
    s = compute_signals(png_bytes(make()))
    assert s.pdq.hex == pdq_hex
    assert s.pdq_quality == quality
    assert s.phash.hex == phash_hex


@pytest.mark.parametrize("options", [DecodeOptions(), FULL], ids=["draft512", "full"])
def test_golden_jpeg(options):
    # Also pins the JPEG decoder (libjpeg-turbo 3 via Pillow): a 1600x1200 JPEG decodes to
    # 800x600 with the default draft, and this smooth image hashes the same either way.
    s = compute_signals(jpeg_bytes(photo_like(7, (1600, 1200)), quality=85), options)
    assert s.pdq.hex == "faf5c2d5be370b1b6513f46649ca4d2ba61a30459ab5d01170ded9cf92839662"
    assert s.pdq_quality == 100
    assert s.phash.hex == "cb2360f9bd44d651"
    assert (s.width, s.height) == ((800, 600) if options.draft_size else (1600, 1200))


def test_golden_hashes_are_valid_signals():
    """Every golden perceptual hash parses strictly and is far from degenerate."""
    for _, _, pdq_hex, _, phash_hex in GOLDEN_PNG:
        assert Signal.parse("pdq", pdq_hex).hex == pdq_hex
        assert Signal.parse("phash", phash_hex).hex == phash_hex


# --- parity with the reference packages -------------------------------------------------------
IMAGES = {
    "photo_like(3)": lambda: photo_like(3, (400, 300)),
    "photo_like(4, 1400x1000)": lambda: photo_like(4, (1400, 1000)),
    "rings": lambda: rings((300, 220)),
    "checkerboard (L)": lambda: blurred_checkerboard((260, 200)),
}
ENCODINGS = {
    "jpeg-draft512": (lambda img: jpeg_bytes(img, 88), DecodeOptions()),
    "jpeg-full": (lambda img: jpeg_bytes(img, 88), FULL),
    "jpeg-draft256": (lambda img: jpeg_bytes(img, 75), DecodeOptions(draft_size=256)),
    "png": (png_bytes, DecodeOptions()),
    "webp": (lambda img: encode(img, "WEBP", quality=90), DecodeOptions()),
    "gif": (lambda img: encode(img, "GIF"), DecodeOptions()),
}


@pytest.mark.parametrize("encoding", ENCODINGS, ids=list(ENCODINGS))
@pytest.mark.parametrize("image", IMAGES, ids=list(IMAGES))
def test_parity_with_reference_packages(image, encoding):
    """compute_signals == pdqhash.compute / imagehash.phash on the same decoded pixels."""
    encode_fn, options = ENCODINGS[encoding]
    data = encode_fn(IMAGES[image]())
    s = compute_signals(data, options)

    pixels = decode_image(data, options)
    assert pixels.mode == "RGB"
    bits, quality = pdqhash.compute(np.asarray(pixels))
    assert s.pdq.hex == meta_pdq_hex(bits)
    assert s.pdq_quality == int(quality)
    reference_phash = imagehash.phash(pixels)
    assert s.phash.hex == str(reference_phash)
    assert imagehash.hex_to_hash(s.phash.hex) == reference_phash
    assert (s.width, s.height) == pixels.size


@pytest.mark.parametrize("image", IMAGES, ids=list(IMAGES))
def test_phash_is_imagehash_on_the_plain_pillow_image(image):
    """For an RGB PNG without EXIF the pipeline is the identity: pHash equals imagehash.phash of
    the image as Pillow alone opens it, bit for bit."""
    img = IMAGES[image]().convert("RGB")
    data = png_bytes(img)
    opened = Image.open(io.BytesIO(data))
    assert compute_signals(data).phash.hex == str(imagehash.phash(opened))
    bits, _ = pdqhash.compute(np.asarray(opened.convert("RGB")))
    assert compute_signals(data).pdq.hex == meta_pdq_hex(bits)


def test_meta_hex_convention_bit_order():
    """Bit 0 of pdqhash's vector is the most significant bit of the first hex digit."""
    s = compute_signals(png_bytes(photo_like(12)))
    bits, _ = pdqhash.compute(np.asarray(decode_image(png_bytes(photo_like(12)))))
    value = int(s.pdq.hex, 16)
    for i, bit in enumerate(bits):
        assert (value >> (255 - i)) & 1 == int(bit)
    assert s.pdq.value == np.packbits(np.asarray(bits, dtype=np.uint8)).tobytes()
    assert s.pdq.hex == s.pdq.hex.lower() and len(s.pdq.hex) == 64
    assert len(s.phash.hex) == 16


def test_distances_agree_with_reference_packages():
    a_img = photo_like(20)
    b_img = ImageEnhance.Brightness(a_img).enhance(1.3)
    a, b = compute_signals(png_bytes(a_img)), compute_signals(png_bytes(b_img))
    bits_a, _ = pdqhash.compute(np.asarray(a_img))
    bits_b, _ = pdqhash.compute(np.asarray(b_img))
    assert a.pdq - b.pdq == int(np.count_nonzero(bits_a != bits_b))
    assert a.phash - b.phash == imagehash.phash(a_img) - imagehash.phash(b_img)
    assert 0 < a.pdq - b.pdq < 32  # brighter: near, not equal


def test_unrelated_images_are_far_apart():
    signals = [compute_signals(png_bytes(photo_like(seed))) for seed in range(30, 36)]
    for i, a in enumerate(signals):
        for b in signals[i + 1 :]:
            assert a.pdq - b.pdq > 64
            assert a.phash - b.phash > 10


def test_reencoding_moves_hashes_little():
    img = photo_like(21, (640, 480))
    ref = compute_signals(png_bytes(img))
    for quality in (95, 75, 50):
        s = compute_signals(jpeg_bytes(img, quality))
        assert ref.pdq - s.pdq <= 16, quality
        assert ref.phash - s.phash <= 4, quality


# --- digests and the value object -------------------------------------------------------------
def test_digests_are_of_the_bytes_as_received():
    data = jpeg_bytes(photo_like(5))
    s = compute_signals(data)
    assert s.md5.hex == hashlib.md5(data).hexdigest()
    assert s.sha256.hex == hashlib.sha256(data).hexdigest()
    # Same pixels in another container: same perceptual hashes, different digests.
    other = compute_signals(png_bytes(decode_image(data, FULL)), FULL)
    full = compute_signals(data, FULL)
    assert (other.pdq, other.phash) == (full.pdq, full.phash)
    assert other.md5 != full.md5 and other.sha256 != full.sha256


def test_image_signals_value_object():
    data = png_bytes(rings())
    s = compute_signals(data)
    assert [x.kind for x in s.signals()] == [
        SignalKind.PDQ,
        SignalKind.PHASH,
        SignalKind.MD5,
        SignalKind.SHA256,
    ]
    assert s.to_json() == {
        "pdq": s.pdq.hex,
        "pdq_quality": s.pdq_quality,
        "phash": s.phash.hex,
        "md5": s.md5.hex,
        "sha256": s.sha256.hex,
        "pipeline_version": PIPELINE_VERSION,
    }
    assert (s.width, s.height) == (256, 256)
    for signal in s.signals():
        assert len(signal.value) * 8 == signal.kind.bits
        assert Signal.parse(signal.kind, signal.hex) == signal
    with pytest.raises(AttributeError):
        s.pdq_quality = 0  # type: ignore[misc]


def test_signals_are_deterministic():
    data = jpeg_bytes(photo_like(8, (900, 700)))
    assert compute_signals(data) == compute_signals(data)


def test_registration_views_of_a_large_picture_are_cut_from_its_reduced_copy():
    """Views of a picture with a short side of 1024 px or more come from Image.reduce of it (the
    browser does the same, docs/browser-hashing.md); the whole-image PDQ stays full size."""
    from registry.hashing.signals import pdq_of
    from registry.hashing.variants import registration_views, view_source

    big = photo_like(31, (1300, 1100))
    assert view_source(big).size == (650, 550)
    assert view_source(photo_like(32, (481, 321))).size == (481, 321)
    views = dict(registration_views(big))
    assert views["mirror"].size == (650, 550) and views["rot90"].size == (550, 650)
    data = io.BytesIO()
    big.save(data, "PNG")
    image = compute_signals(data.getvalue(), registration=True)
    by_label = {v.label: v.pdq for v in image.variants}
    assert by_label["crop90-c"] == pdq_of(views["crop90-c"])[0]
    assert image.pdq == pdq_of(big)[0]


def test_a_large_querys_trimmed_views_are_hashed_from_its_reduced_copy():
    """A query's content and frame views are cut from its reduced copy (as registered views
    are): the same box, within a few bits of the full-size cut; a registration's content view
    stays full size, and a registration computes no frame view."""
    from registry.hashing.content import FRAME_RULES, content_box
    from registry.hashing.signals import pdq_of

    picture = photo_like(33, (1800, 1200))
    page = Image.new("RGB", (1800, 1700), (250, 250, 250))  # a tall bar above and below
    page.paste(picture, (0, 250))
    data = io.BytesIO()
    page.save(data, "PNG")
    query = compute_signals(data.getvalue())
    box = content_box(page)
    assert box != (0, 0, 1800, 1700) and query.content is not None
    full = pdq_of(page.crop(box))[0]
    assert query.content.pdq != full  # hashed from the reduced copy, not the full-size cut
    assert query.content.pdq - full <= 8
    assert content_box(page, FRAME_RULES) == box and query.frame is None  # same box: no frame
    registered = compute_signals(data.getvalue(), registration=True)
    assert registered.content is not None and registered.content.pdq == full
    assert registered.frame is None

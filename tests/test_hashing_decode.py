"""Decoding untrusted bytes: orientation, alpha, modes, animations, JPEG draft and bad input."""

from __future__ import annotations

import io
import time
import warnings

import numpy as np
import pytest
from PIL import Image, features

from registry import errors
from registry.hashing import DecodeOptions, compute_signals, decode_image
from registry.hashing.decode import FORMATS
from tests.images import (
    blurred_checkerboard,
    encode,
    jpeg_bytes,
    photo_like,
    png_bomb,
    png_bytes,
    png_header_only,
    rings,
)

FULL = DecodeOptions(draft_size=0)
ORIENTATION = 0x0112


def exif_with_orientation(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    return exif.tobytes()


def pixels(img: Image.Image) -> np.ndarray:
    return np.asarray(img).astype(np.int64)


def assert_clear_message(exc: errors.RegistryError) -> None:
    """A message for the person who sent the file: one plain sentence, no internals."""
    message = exc.message
    assert str(exc) == message
    assert 10 < len(message) < 200, message
    assert message[0].isupper() and message.endswith("."), message
    assert "\n" not in message
    for internal in ("b'", "\\x", "Errno", "Traceback", "PIL", "cannot identify", "<"):
        assert internal not in message, message


# --- EXIF orientation -------------------------------------------------------------------------
# The photo as it should be displayed is ``shown``; the camera stored ``stored`` and an
# orientation tag saying how to turn it. Orientation 6: turn the stored pixels 90 degrees
# clockwise to display them (the stored pixels are the shown ones turned counter-clockwise).
STORED = {
    1: lambda shown: shown,
    2: lambda shown: shown.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
    3: lambda shown: shown.rotate(180),
    4: lambda shown: shown.transpose(Image.Transpose.FLIP_TOP_BOTTOM),
    5: lambda shown: shown.transpose(Image.Transpose.TRANSPOSE),
    6: lambda shown: shown.rotate(90, expand=True),
    7: lambda shown: shown.transpose(Image.Transpose.TRANSVERSE),
    8: lambda shown: shown.rotate(-90, expand=True),
}


@pytest.mark.parametrize("orientation", sorted(STORED))
def test_exif_orientation_png_is_exact(orientation):
    shown = photo_like(40, (160, 100))
    stored = STORED[orientation](shown)
    data = png_bytes(stored, exif=exif_with_orientation(orientation))
    decoded = decode_image(data)
    assert decoded.size == (160, 100)
    assert np.array_equal(pixels(decoded), pixels(shown))
    s = compute_signals(data)
    reference = compute_signals(png_bytes(shown))
    assert (s.pdq, s.phash) == (reference.pdq, reference.phash)


@pytest.mark.parametrize("orientation", [6, 8])
@pytest.mark.parametrize("options", [FULL, DecodeOptions()], ids=["full", "draft512"])
def test_exif_orientation_jpeg(orientation, options):
    shown = photo_like(41, (1600, 1100))
    stored = STORED[orientation](shown)  # 1100 x 1600 as stored
    tagged = jpeg_bytes(stored, 92, exif=exif_with_orientation(orientation))
    untagged = jpeg_bytes(stored, 92)

    decoded = decode_image(tagged, options)
    expected_size = (1600, 1100) if options.draft_size == 0 else (800, 550)
    assert decoded.size == expected_size  # transposed: width and height swapped back
    # Same JPEG scan, so the tagged decode is exactly the untagged one turned as the tag says.
    # Orientation 6: turn 90 degrees clockwise (rotate(-90)); 8: counter-clockwise.
    turned = decode_image(untagged, options).rotate(-90 if orientation == 6 else 90, expand=True)
    assert np.array_equal(pixels(decoded), pixels(turned))

    s = compute_signals(tagged, options)
    reference = compute_signals(png_bytes(shown))
    assert s.pdq - reference.pdq <= 10
    assert s.phash - reference.phash <= 2
    # Without applying the tag the hash would be of a turned picture: far away.
    assert compute_signals(untagged, options).pdq - reference.pdq > 64


def test_malformed_exif_does_not_reject_the_image_in_production():
    # With Python's default warning filters (as in production) a corrupt EXIF block only warns.
    data = jpeg_with_corrupt_exif()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s = compute_signals(data)
        assert s.pdq == compute_signals(jpeg_bytes(photo_like(3, (200, 150)))).pdq


def test_malformed_exif_does_not_reject_the_image_whatever_the_warning_filters():
    # The project's pytest configuration turns warnings into errors.
    s = compute_signals(jpeg_with_corrupt_exif())
    assert s.pdq == compute_signals(jpeg_bytes(photo_like(3, (200, 150)))).pdq


def jpeg_with_corrupt_exif() -> bytes:
    """A good JPEG with an APP1 EXIF segment whose IFD claims more entries than it holds."""
    good = jpeg_bytes(photo_like(3, (200, 150)))
    payload = b"Exif\x00\x00" + b"II*\x00\x08\x00\x00\x00\x05\x00" + b"\xff" * 30
    segment = b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload
    return good[:2] + segment + good[2:]


# --- alpha and modes --------------------------------------------------------------------------
def flatten(colour: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """The documented rule, in plain integers: c' = (c * a + 127) // 255."""
    return (colour.astype(np.int64) * alpha.astype(np.int64) + 127) // 255


def test_rgba_flattened_onto_black_for_every_alpha():
    # Column x has alpha x; rows sweep the colours, so every (c, a) pair of a channel appears.
    ys, xs = np.mgrid[0:256, 0:256]
    rgba = np.stack([ys, 255 - ys, (ys * 7) % 256, xs], axis=-1).astype(np.uint8)
    decoded = pixels(decode_image(png_bytes(Image.fromarray(rgba, "RGBA"))))
    assert np.array_equal(decoded, flatten(rgba[..., :3], rgba[..., 3:4]))
    assert not decoded[:, 0].any()  # fully transparent -> black, whatever the colour
    assert np.array_equal(decoded[:, 255], rgba[:, 255, :3])  # opaque -> unchanged
    # Half alpha: white becomes 128 (255 * 128 + 127) // 255, not 127 or 129.
    assert decoded[255, 128, 0] == 128 and decoded[0, 128, 1] == 128


def test_transparent_pixels_are_black_not_their_hidden_colour():
    colour = np.asarray(photo_like(42, (200, 150)))
    alpha = np.zeros((150, 200, 1), np.uint8)
    alpha[30:120, 40:160] = 255
    hidden = np.concatenate([colour, alpha], axis=-1)
    other = hidden.copy()
    other[..., :3] = np.where(alpha == 0, 255 - colour, colour)  # different hidden pixels
    a = compute_signals(png_bytes(Image.fromarray(hidden, "RGBA")))
    b = compute_signals(png_bytes(Image.fromarray(other, "RGBA")))
    assert (a.pdq, a.phash) == (b.pdq, b.phash)
    black = colour * (alpha > 0)
    c = compute_signals(png_bytes(Image.fromarray(black.astype(np.uint8), "RGB")))
    assert (a.pdq, a.phash) == (c.pdq, c.phash)


def test_la_flattened_onto_black():
    ys, xs = np.mgrid[0:256, 0:256]
    la = np.stack([ys, xs], axis=-1).astype(np.uint8)
    decoded = pixels(decode_image(png_bytes(Image.fromarray(la, "LA"))))
    expected = flatten(la[..., 0:1], la[..., 1:2])
    assert np.array_equal(decoded, np.repeat(expected, 3, axis=-1))


def palette_image() -> Image.Image:
    indices = (np.arange(64 * 48).reshape(48, 64) // 37 % 16).astype(np.uint8)
    img = Image.fromarray(indices, "L").convert("P")
    palette = []
    for i in range(256):
        palette += [(i * 53) % 256, (i * 101) % 256, (i * 29 + 90) % 256]
    img.putpalette(palette)
    return img


def test_palette_with_transparent_index():
    img = palette_image()
    decoded = pixels(decode_image(png_bytes(img, transparency=3)))
    indices = np.asarray(img)
    colours = np.asarray(img.convert("RGB")).astype(np.int64)
    assert not decoded[indices == 3].any()
    assert np.array_equal(decoded[indices != 3], colours[indices != 3])


def test_palette_with_alpha_per_entry():
    img = palette_image()
    alphas = bytes((i * 17) % 256 for i in range(16))
    data = png_bytes(img, transparency=alphas)
    decoded = pixels(decode_image(data))
    indices = np.asarray(img)
    alpha = np.frombuffer(alphas, np.uint8)[indices][..., None]
    assert np.array_equal(decoded, flatten(np.asarray(img.convert("RGB")), alpha))


def test_gif_transparent_index_is_black():
    img = palette_image()
    decoded = pixels(decode_image(encode(img, "GIF", transparency=5)))
    indices = np.asarray(img)
    assert not decoded[indices == 5].any()
    assert decoded[indices != 5].any()


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_trns_colour_key_is_flattened_onto_black(mode):
    rgb = np.zeros((20, 20, 3), np.uint8)
    rgb[:10] = (200, 100, 50)
    rgb[10:] = (10, 20, 30)
    img = Image.fromarray(rgb, "RGB").convert(mode)
    key = img.getpixel((0, 0))
    decoded = pixels(decode_image(png_bytes(img, transparency=key)))
    assert not decoded[:10].any()  # the keyed colour is fully transparent: black
    assert decoded[10:].any()


def test_cmyk_jpeg():
    rgb = photo_like(43, (240, 180))
    data = jpeg_bytes(rgb.convert("CMYK"), 95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    decoded = decode_image(data)
    assert decoded.mode == "RGB" and decoded.size == (240, 180)
    assert np.abs(pixels(decoded) - pixels(rgb)).mean() < 4
    assert compute_signals(data).pdq - compute_signals(png_bytes(rgb)).pdq <= 10


def test_16_bit_greyscale_keeps_its_high_byte_as_browsers_do():
    wide = (np.arange(128 * 512).reshape(128, 512) % 65536).astype(np.uint16)
    wide[0, :5] = [0, 255, 256, 32895, 65535]
    data = png_bytes(Image.fromarray(wide))
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    decoded = pixels(decode_image(data))
    expected = (wide >> 8).astype(np.int64)
    assert np.array_equal(decoded, np.repeat(expected[..., None], 3, axis=-1))
    assert list(decoded[0, :5, 0]) == [0, 0, 1, 128, 255]


def test_16_bit_photo_hashes_like_its_8_bit_version():
    grey = np.asarray(photo_like(44, (300, 200)).convert("L")).astype(np.uint16)
    wide = Image.fromarray(grey * 257)  # exact 16-bit version of the 8-bit picture
    a = compute_signals(png_bytes(wide))
    b = compute_signals(png_bytes(Image.fromarray(grey.astype(np.uint8), "L")))
    assert (a.pdq, a.phash) == (b.pdq, b.phash)


def test_one_bit_image():
    img = blurred_checkerboard((120, 80)).convert("1")
    data = png_bytes(img)
    assert Image.open(io.BytesIO(data)).mode == "1"
    decoded = pixels(decode_image(data))
    assert set(np.unique(decoded)) <= {0, 255}
    assert np.array_equal(decoded, pixels(img.convert("RGB")))


def test_greyscale_hashes_as_its_rgb_conversion():
    grey = photo_like(45, (300, 220)).convert("L")
    decoded = pixels(decode_image(png_bytes(grey)))
    assert np.array_equal(decoded[..., 0], decoded[..., 1])
    assert np.array_equal(decoded[..., 0], decoded[..., 2])
    a = compute_signals(png_bytes(grey))
    b = compute_signals(png_bytes(grey.convert("RGB")))
    assert (a.pdq, a.pdq_quality, a.phash) == (b.pdq, b.pdq_quality, b.phash)


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_supported_format_decodes_to_rgb(fmt):
    img = photo_like(46, (150, 100))
    decoded = decode_image(encode(img, fmt))
    assert decoded.mode == "RGB" and decoded.size == (150, 100)
    assert compute_signals(encode(img, fmt)).pdq - compute_signals(png_bytes(img)).pdq <= 24


@pytest.mark.parametrize("fmt", ["ICO", "PPM", "PCX", "TGA", "SGI", "QOI"])
def test_formats_outside_the_list_are_refused(fmt):
    data = encode(photo_like(47, (64, 48)), fmt)
    with pytest.raises(errors.NotAnImage) as info:
        decode_image(data)
    assert info.value.code == "not_an_image"


# --- animations: first frame ------------------------------------------------------------------
def two_frames() -> tuple[Image.Image, Image.Image]:
    first = photo_like(48, (160, 120))
    second = Image.fromarray(255 - np.asarray(rings((160, 120))), "RGB")
    return first, second


ANIMATED = {
    "GIF": {"duration": 100, "loop": 0},
    "PNG": {"duration": 100},  # APNG
    "WEBP": {"duration": 100, "lossless": True},
}


@pytest.mark.parametrize("fmt", ANIMATED)
def test_animation_hashed_on_its_first_frame(fmt):
    if fmt == "WEBP" and not features.check("webp"):
        pytest.skip("Pillow built without WebP")
    first, second = two_frames()
    data = encode(first, fmt, save_all=True, append_images=[second], **ANIMATED[fmt])
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 2
    single = encode(first, fmt, **{k: v for k, v in ANIMATED[fmt].items() if k != "loop"})

    decoded = decode_image(data)
    assert np.array_equal(pixels(decoded), pixels(decode_image(single)))
    s, s_first = compute_signals(data), compute_signals(single)
    assert (s.pdq, s.phash) == (s_first.pdq, s_first.phash)
    s_second = compute_signals(png_bytes(second))
    assert s.pdq - s_second.pdq > 64


# --- JPEG draft (DCT scaling) -----------------------------------------------------------------
@pytest.fixture(scope="module")
def big_jpegs() -> list[bytes]:
    return [jpeg_bytes(photo_like(seed, (2000, 1500)), 90) for seed in (50, 51, 52)]


def test_draft_decodes_at_least_draft_size_but_smaller(big_jpegs):
    decoded = decode_image(big_jpegs[0], DecodeOptions(draft_size=512))
    assert decoded.size == (1000, 750)  # scale 1/2; 1/4 would give 375 < 512
    assert min(decoded.size) >= 512
    assert decode_image(big_jpegs[0], DecodeOptions(draft_size=256)).size == (500, 375)
    assert decode_image(big_jpegs[0], FULL).size == (2000, 1500)
    assert decode_image(big_jpegs[0], DecodeOptions(draft_size=4000)).size == (2000, 1500)


def test_draft_is_the_default():
    assert DecodeOptions().draft_size == 512
    data = jpeg_bytes(photo_like(53, (2400, 1800)))
    assert decode_image(data).size == (1200, 900)  # 1/4 would give 600x450: under 512


def test_draft_moves_hashes_little(big_jpegs):
    for data in big_jpegs:
        draft = compute_signals(data, DecodeOptions(draft_size=512))
        full = compute_signals(data, FULL)
        assert draft.pdq - full.pdq <= 30
        assert draft.phash - full.phash <= 8
        assert (draft.md5, draft.sha256) == (full.md5, full.sha256)
        assert (full.width, full.height) == (2000, 1500)


def test_draft_applies_to_jpeg_only():
    img = photo_like(54, (1100, 800))
    for fmt in ("PNG", "WEBP", "GIF"):
        assert decode_image(encode(img, fmt), DecodeOptions(draft_size=256)).size == (1100, 800)
    assert decode_image(jpeg_bytes(img), DecodeOptions(draft_size=256)).size == (550, 400)


def test_draft_greyscale_jpeg():
    data = jpeg_bytes(photo_like(55, (1600, 1200)).convert("L"))
    decoded = decode_image(data)
    assert decoded.mode == "RGB" and decoded.size == (800, 600)


# --- bad input --------------------------------------------------------------------------------
DEFAULT = DecodeOptions()


def expect(error: type[errors.ImageError], code: str, data: bytes, options=DEFAULT):
    with pytest.raises(error) as info:
        decode_image(data, options)
    assert type(info.value) is error
    assert info.value.code == code
    assert isinstance(info.value, errors.ImageError)
    assert isinstance(info.value, errors.InvalidInput)
    assert_clear_message(info.value)
    # compute_signals reports the same error
    with pytest.raises(error):
        compute_signals(data, options)
    return info.value


def test_empty_file():
    e = expect(errors.EmptyImage, "empty_image", b"")
    assert "empty" in e.message


@pytest.mark.parametrize(
    "data",
    [
        np.random.default_rng(0).bytes(5000),
        b"Hello, this is a text file.\n" * 20,
        b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\n" * 3,
        b"<!DOCTYPE html><html><body><img src=x></body></html>",
        b"PK\x03\x04" + bytes(200),
        b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n",
        b"<svg xmlns='http://www.w3.org/2000/svg' width='10' height='10'/>",
        b"\xff\xd8",  # a JPEG signature and nothing else
    ],
    ids=["random", "text", "pdf", "html", "zip", "eps", "svg", "soi-only"],
)
def test_not_an_image(data):
    e = expect(errors.NotAnImage, "not_an_image", data)
    for fmt in FORMATS:
        assert fmt in e.message


@pytest.mark.parametrize("fraction", [0.05, 0.3, 0.6, 0.9, 0.99])
@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF"])
def test_truncated(fmt, fraction):
    data = encode(photo_like(56, (300, 200)), fmt)
    cut = data[: max(int(len(data) * fraction), 40)]
    expect(errors.TruncatedImage, "truncated_image", cut)


@pytest.mark.parametrize("options", [DecodeOptions(), FULL], ids=["draft512", "full"])
def test_truncated_large_jpeg(big_jpegs, options):
    data = big_jpegs[1]
    e = expect(errors.TruncatedImage, "truncated_image", data[: len(data) // 2], options)
    assert "truncated" in e.message


def test_corrupt_marker_run_in_the_middle_of_a_jpeg():
    data = bytearray(jpeg_bytes(photo_like(57, (400, 300))))
    middle = len(data) // 2
    data[middle : middle + 200] = b"\xff" * 200
    e = expect(errors.TruncatedImage, "truncated_image", bytes(data))
    assert "corrupt" in e.message


def truncated_with_end_marker() -> bytes:
    data = jpeg_bytes(photo_like(57, (400, 300)))
    return data[: len(data) // 2] + b"\xff\xd9"


def end_marker_in_the_middle() -> bytes:
    data = bytearray(jpeg_bytes(photo_like(57, (400, 300))))
    middle = len(data) // 2
    data[middle : middle + 2] = b"\xff\xd9"
    return bytes(data)


@pytest.mark.xfail(
    strict=True,
    reason="bug: a JPEG whose scan stops early at an EOI marker decodes without error "
    "(libjpeg only warns 'Premature end of JPEG file' and fills the rest with grey), so "
    "half an image is hashed",
)
@pytest.mark.parametrize(
    "make", [truncated_with_end_marker, end_marker_in_the_middle], ids=["cut+eoi", "eoi-mid"]
)
def test_jpeg_that_stops_early_is_refused(make):
    expect(errors.TruncatedImage, "truncated_image", make())


def test_half_grey_jpeg_is_what_gets_hashed_today():
    """Documents the consequence of the bug above: the bottom half is filled with grey 128."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            decoded = pixels(decode_image(truncated_with_end_marker(), FULL))
        except errors.TruncatedImage:
            return  # fixed
    assert (decoded[-20:] == 128).all()


def test_image_over_max_pixels():
    data = png_bytes(photo_like(58, (100, 100)))
    assert decode_image(data, DecodeOptions(max_pixels=10_000)).size == (100, 100)
    e = expect(errors.ImageTooLarge, "image_too_large", data, DecodeOptions(max_pixels=9_999))
    assert "100x100" in e.message and "9999" in e.message


def test_jpeg_over_max_pixels_even_with_draft():
    # The limit is on the declared size, not on what draft decoding would produce.
    data = jpeg_bytes(photo_like(59, (2000, 1500)))
    expect(errors.ImageTooLarge, "image_too_large", data, DecodeOptions(max_pixels=2_000_000))


@pytest.mark.parametrize(
    "data",
    [
        png_header_only(30000, 30000),  # 900 MP declared in 68 bytes
        png_header_only(8000, 8000, bit_depth=1, colour=0),  # 64 MP: over our 50 MP limit
        png_bomb(30000, 30000),  # a real bomb: ~110 KB decompressing to 900 MP
    ],
    ids=["header-30000^2", "header-8000^2", "bomb-30000^2"],
)
def test_decompression_bombs_are_refused_before_decoding(data):
    assert len(data) < 200_000
    start = time.perf_counter()
    expect(errors.ImageTooLarge, "image_too_large", data)
    assert time.perf_counter() - start < 1.0  # refused from the header, no pixels decoded


def test_bomb_under_a_small_limit():
    expect(
        errors.ImageTooLarge,
        "image_too_large",
        png_bomb(4000, 4000),
        DecodeOptions(max_pixels=1_000_000),
    )


def test_jpeg_header_declaring_huge_size():
    data = bytearray(jpeg_bytes(photo_like(60, (64, 48))))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = (60000).to_bytes(2, "big") + (60000).to_bytes(2, "big")
    expect(errors.ImageTooLarge, "image_too_large", bytes(data))


def test_max_pixels_above_pillows_default_is_honoured():
    # 9500 x 9500 = 90.25 MP: under the configured 200 MP, over Pillow's default. The header
    # has no pixel data, so the right outcome is TruncatedImage, not ImageTooLarge.
    data = png_header_only(9500, 9500, bit_depth=1, colour=0)
    expect(errors.TruncatedImage, "truncated_image", data, DecodeOptions(max_pixels=200_000_000))


def test_file_over_max_bytes():
    data = png_bytes(photo_like(61, (80, 60)))
    assert decode_image(data, DecodeOptions(max_bytes=len(data))).size == (80, 60)
    e = expect(errors.FileTooLarge, "file_too_large", data, DecodeOptions(max_bytes=len(data) - 1))
    assert str(len(data)) in e.message and str(len(data) - 1) in e.message


def test_size_checked_before_anything_else():
    # Over max_bytes and not an image at all: the size check answers without parsing.
    expect(errors.FileTooLarge, "file_too_large", b"x" * 101, DecodeOptions(max_bytes=100))


def test_zero_sized_image():
    expect(errors.NotAnImage, "not_an_image", png_header_only(0, 10))


@pytest.mark.filterwarnings("ignore")  # Pillow warns about corrupt TIFF tags; only errors count
def test_mutated_files_fail_only_with_image_errors():
    """Random byte changes in every format: each file decodes to RGB or raises an ImageError,
    never another exception."""
    rng = np.random.default_rng(7)
    base = photo_like(62, (64, 48))
    seeds = [encode(base, fmt) for fmt in FORMATS] + [
        png_bytes(base.convert("RGBA")),
        encode(base, "GIF", save_all=True, append_images=[rings((64, 48))]),
        encode(base, "TIFF", compression="tiff_lzw"),
    ]
    outcomes = {"ok": 0, "error": 0}
    for seed in seeds:
        for _ in range(40):
            data = bytearray(seed)
            for _ in range(int(rng.integers(1, 6))):
                data[int(rng.integers(0, len(data)))] = int(rng.integers(0, 256))
            if rng.random() < 0.2:
                data = data[: int(rng.integers(1, len(data)))]
            try:
                decoded = decode_image(bytes(data))
            except errors.ImageError as e:
                assert e.code in {"not_an_image", "truncated_image", "image_too_large"}
                assert_clear_message(e)
                outcomes["error"] += 1
            else:
                assert decoded.mode == "RGB"
                outcomes["ok"] += 1
    assert outcomes["ok"] and outcomes["error"]

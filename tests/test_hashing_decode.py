"""Decoding untrusted bytes: orientation, alpha, modes, animations, JPEG draft and bad input."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import simplejpeg
from PIL import Image, ImageFile, ImageOps, features

from registry import errors
from registry.hashing import DecodeOptions, compute_signals, decode_image
from registry.hashing.decode import FORMATS, MAX_SCANS, MAX_SEGMENTS, to_rgb
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


def cut_with_end_marker(data: bytes, at: int) -> bytes:
    """The first ``at`` bytes and an end marker: what a repaired partial download looks like."""
    return data[:at] + b"\xff\xd9"


def truncated_with_end_marker() -> bytes:
    data = jpeg_bytes(photo_like(57, (400, 300)))
    return cut_with_end_marker(data, len(data) // 2)


def end_marker_in_the_middle() -> bytes:
    data = bytearray(jpeg_bytes(photo_like(57, (400, 300))))
    middle = len(data) // 2
    data[middle : middle + 2] = b"\xff\xd9"
    return bytes(data)


@pytest.mark.parametrize(
    "make", [truncated_with_end_marker, end_marker_in_the_middle], ids=["cut+eoi", "eoi-mid"]
)
@pytest.mark.parametrize("options", [DEFAULT, FULL], ids=["draft512", "full"])
def test_jpeg_that_stops_early_is_refused(make, options):
    e = expect(errors.TruncatedImage, "truncated_image", make(), options)
    assert "truncated" in e.message


def test_half_grey_jpeg_is_no_longer_hashed():
    """Regression: libjpeg decodes every block after an early end marker as zero coefficients
    (exact grey 128) and only warns; Pillow swallows the warning, so half an image was hashed."""
    data = truncated_with_end_marker()
    alone = pillow_alone(data)  # what decode_image returned before the fix
    assert (alone[-20:] == 128).all() and not (alone[:20] == 128).all()
    expect(errors.TruncatedImage, "truncated_image", data, FULL)


def scan_starts(data: bytes) -> list[int]:
    """Where each scan header (SOS) of a JPEG written by Pillow begins."""
    return [i for i in range(len(data) - 1) if data[i] == 0xFF and data[i + 1] == 0xDA]


@pytest.fixture(scope="module")
def progressive() -> bytes:
    return jpeg_bytes(photo_like(63, (1100, 1030)), 90, progressive=True)


@pytest.mark.parametrize("fraction", [0.03, 0.2, 0.5, 0.8, 0.95, 0.995])
@pytest.mark.parametrize("options", [DEFAULT, FULL], ids=["draft512", "full"])
def test_progressive_jpeg_cut_early_with_end_marker(progressive, fraction, options):
    cut = cut_with_end_marker(progressive, int(len(progressive) * fraction))
    expect(errors.TruncatedImage, "truncated_image", cut, options)


def test_progressive_jpeg_cut_inside_its_last_scan(progressive):
    # libjpeg's last scan refines the lowest bit of the luma AC coefficients: a cut there changes
    # the picture little, but the file is still short of its data.
    last = scan_starts(progressive)[-1]
    assert len(progressive) - last > len(progressive) // 10
    for at in (last + 40, (last + len(progressive)) // 2, len(progressive) - 40):
        expect(errors.TruncatedImage, "truncated_image", cut_with_end_marker(progressive, at))


def test_progressive_jpeg_cut_between_scans(progressive):
    # Cut exactly before a scan, libjpeg has nothing to warn about: the scans it read are whole.
    # The marker walk sees coefficients never sent.
    starts = scan_starts(progressive)
    assert len(starts) >= 8  # libjpeg's standard script: 10 scans
    for at in starts[1:]:
        e = expect(errors.TruncatedImage, "truncated_image", cut_with_end_marker(progressive, at))
        assert "truncated" in e.message


@pytest.fixture
def no_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any pixel decoding fails the test: what is refused must be refused from the headers,
    before a single block is decoded (the cost a bomb would impose)."""
    def decoded(*args: object, **kwargs: object) -> None:
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", decoded)
    monkeypatch.setattr(Image.Image, "load", decoded)


def test_the_no_decoding_fixture_does_catch_a_decode(no_decoding):
    with pytest.raises(AssertionError, match="pixels were decoded"):
        decode_image(png_bytes(photo_like(65, (64, 48))))
    with pytest.raises(AssertionError, match="pixels were decoded"):
        decode_image(jpeg_bytes(photo_like(66, (1200, 900)), 90))  # the draft path too


@pytest.fixture(scope="module")
def flat_progressive() -> bytes:
    return jpeg_bytes(Image.new("RGB", (2000, 1500), (90, 120, 200)), 90, progressive=True)


def test_jpeg_with_too_many_scans_is_refused_before_decoding(flat_progressive, no_decoding):
    # Each scan is a pass over every block: its last scan repeated (26 bytes each here) made
    # this 3 MP JPEG of under 100 KB take seconds to decode.
    last = flat_progressive[scan_starts(flat_progressive)[-1] : -2]
    data = flat_progressive[:-2] + last * MAX_SCANS + b"\xff\xd9"
    assert len(data) < 100_000
    e = expect(errors.ImageTooLarge, "image_too_large", data)
    assert str(MAX_SCANS) in e.message


def test_jpeg_with_a_few_repeated_scans_still_decodes(flat_progressive):
    # libjpeg warns 'Inconsistent progression sequence', a harmless warning: decoded in full.
    last = flat_progressive[scan_starts(flat_progressive)[-1] : -2]
    data = flat_progressive[:-2] + last * 5 + b"\xff\xd9"
    assert np.array_equal(pixels(decode_image(data)), pillow_alone(data))


def test_jpeg_with_too_many_marker_segments_is_refused(flat_progressive, no_decoding):
    second = scan_starts(flat_progressive)[1]
    comments = b"\xff\xfe\x00\x02" * MAX_SEGMENTS  # empty COM segments between two scans
    data = flat_progressive[:second] + comments + flat_progressive[second:]
    expect(errors.ImageTooLarge, "image_too_large", data)


@pytest.fixture(scope="module")
def with_restarts() -> bytes:
    data = jpeg_bytes(photo_like(64, (640, 480)), 90, restart_marker_blocks=6)
    assert b"\xff\xdd" in data and data.count(b"\xff\xd3") > 10  # DRI, and RST markers
    return data


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9])
def test_jpeg_with_restart_markers_cut_early(with_restarts, fraction):
    cut = cut_with_end_marker(with_restarts, int(len(with_restarts) * fraction))
    expect(errors.TruncatedImage, "truncated_image", cut)


def test_jpeg_with_a_wrong_restart_marker_is_damaged(with_restarts):
    # libjpeg resynchronises at the next restart marker and leaves a grey gap where it lost one.
    data = bytearray(with_restarts)
    at = data.index(b"\xff\xd3", len(data) // 2)
    data[at + 1] = 0xD5
    e = expect(errors.TruncatedImage, "truncated_image", bytes(data))
    assert "corrupt" in e.message


def test_jpeg_with_a_bad_huffman_code_is_damaged():
    data = bytearray(jpeg_bytes(photo_like(57, (400, 300))))
    at = len(data) - 40  # all ones: no Huffman code of the standard tables is 16 ones
    data[at : at + 16] = b"\xff\x00" * 8
    e = expect(errors.TruncatedImage, "truncated_image", bytes(data))
    assert "corrupt" in e.message


def with_extraneous_byte(data: bytes) -> bytes:
    """A stray byte before the first quantisation table, as some cameras write: libjpeg warns
    'Corrupt JPEG data: 1 extraneous bytes before marker 0xdb', skips it and decodes in full."""
    at = data.index(b"\xff\xdb")
    return data[:at] + b"\x00" + data[at:]


def test_jpeg_with_a_harmless_libjpeg_warning_still_decodes():
    data = jpeg_bytes(photo_like(65, (400, 300)))
    odd = with_extraneous_byte(data)
    assert np.array_equal(pixels(decode_image(odd)), pillow_alone(data))


def test_jpeg_with_a_harmless_warning_and_cut_early_is_refused():
    # libjpeg-turbo reports only its first warning, so the harmless one hides the early end; the
    # grey last block Pillow's decode then shows gives it away.
    data = with_extraneous_byte(jpeg_bytes(photo_like(65, (400, 300))))
    expect(errors.TruncatedImage, "truncated_image", cut_with_end_marker(data, len(data) // 2))


def flat_grey_corner(seed: int, size: tuple[int, int]) -> Image.Image:
    rgb = np.asarray(photo_like(seed, size)).copy()
    width, height = size
    rgb[height // 2 :, width // 2 :] = 128  # mid-grey: JPEG codes it as all-zero blocks
    return Image.fromarray(rgb, "RGB")


@pytest.mark.parametrize(
    "params",
    [{}, {"progressive": True}, {"subsampling": 0}],
    ids=["baseline", "progressive", "444"],
)
@pytest.mark.parametrize("options", [DEFAULT, FULL], ids=["draft512", "full"])
def test_real_picture_with_a_flat_grey_corner_is_not_refused(params, options):
    data = jpeg_bytes(flat_grey_corner(66, (1200, 1040)), 90, **params)
    decoded = pixels(decode_image(data, options))
    # exactly what a cut file decodes to, so no look at the pixels alone could tell them apart
    assert (decoded[-40:, -40:] == 128).all()
    assert np.array_equal(decoded, pillow_alone(data, options))


def test_flat_grey_corner_with_a_harmless_warning_is_refused_a_known_limit():
    """The one case that refuses a whole picture: a libjpeg warning hides what follows it, and a
    last block of exact mid-grey is then taken for data that never came."""
    data = with_extraneous_byte(jpeg_bytes(flat_grey_corner(67, (400, 300))))
    expect(errors.TruncatedImage, "truncated_image", data)


# --- every kind of valid JPEG decodes exactly as Pillow decodes it ----------------------------
def pillow_alone(data: bytes, options: DecodeOptions = DEFAULT) -> np.ndarray:
    """What decode_image returned before it decoded JPEGs strictly: Pillow's own decode."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        img = Image.open(io.BytesIO(data))
        if img.format == "JPEG" and options.draft_size > 0:
            img.draft(img.mode, (options.draft_size, options.draft_size))
        img.load()
        return pixels(to_rgb(ImageOps.exif_transpose(img)))


def ycck_jpeg(img: Image.Image) -> bytes:
    """libjpeg-turbo writes CMYK as YCCK (Adobe transform 2); Pillow cannot."""
    return simplejpeg.encode_jpeg(np.asarray(img.convert("CMYK")), 90, "CMYK", "420")


VALID_JPEGS = {
    "baseline-420": lambda img: jpeg_bytes(img, 90),
    "baseline-444": lambda img: jpeg_bytes(img, 90, subsampling=0),
    "baseline-422": lambda img: jpeg_bytes(img, 90, subsampling=1),
    "quality-30": lambda img: jpeg_bytes(img, 30),
    "optimized-tables": lambda img: jpeg_bytes(img, 85, optimize=True),
    "progressive-420": lambda img: jpeg_bytes(img, 90, progressive=True),
    "progressive-444": lambda img: jpeg_bytes(img, 90, progressive=True, subsampling=0),
    "greyscale": lambda img: jpeg_bytes(img.convert("L"), 90),
    "greyscale-progressive": lambda img: jpeg_bytes(img.convert("L"), 90, progressive=True),
    "cmyk": lambda img: jpeg_bytes(img.convert("CMYK"), 90),
    "ycck": ycck_jpeg,
    "rgb-untransformed": lambda img: jpeg_bytes(img, 90, keep_rgb=True),
    "restart-blocks": lambda img: jpeg_bytes(img, 90, restart_marker_blocks=3),
    "restart-rows-progressive": lambda img: jpeg_bytes(
        img, 90, restart_marker_rows=1, progressive=True
    ),
    "exif-orientation-6": lambda img: jpeg_bytes(img, 90, exif=exif_with_orientation(6)),
    "mpo": lambda img: encode(img, "MPO", save_all=True, append_images=[rings(img.size)]),
    "trailing-garbage": lambda img: jpeg_bytes(img, 90) + np.random.default_rng(1).bytes(3000),
    "trailing-jpeg": lambda img: jpeg_bytes(img, 90) + jpeg_bytes(rings(img.size), 80),
    "trailing-zeros": lambda img: jpeg_bytes(img, 90) + bytes(5000),
}
SCALES = {
    "full": FULL,
    "1/2": DEFAULT,
    "1/4": DecodeOptions(draft_size=256),
    "1/8": DecodeOptions(draft_size=128),
}


@pytest.fixture(scope="module")
def valid_jpegs() -> dict[str, bytes]:
    img = photo_like(68, (1101, 1031))  # odd sizes: partial blocks on the right and bottom
    return {kind: make(img) for kind, make in VALID_JPEGS.items()}


@pytest.mark.parametrize("scale", sorted(SCALES))
@pytest.mark.parametrize("kind", sorted(VALID_JPEGS))
def test_valid_jpeg_decodes_exactly_as_pillow_alone(valid_jpegs, kind, scale):
    data = valid_jpegs[kind]
    decoded = decode_image(data, SCALES[scale])
    expected = pillow_alone(data, SCALES[scale])
    assert decoded.mode == "RGB" and decoded.size == (expected.shape[1], expected.shape[0])
    assert np.array_equal(pixels(decoded), expected)


@pytest.mark.parametrize("size", [(1, 1), (7, 5), (8, 8), (17, 9), (1030, 3), (3, 1030)])
@pytest.mark.parametrize("scale", ["full", "1/8"])
def test_tiny_and_thin_jpegs_decode_exactly_as_pillow_alone(size, scale):
    options = DecodeOptions(draft_size=1) if scale == "1/8" else FULL
    for params in ({}, {"progressive": True}):
        data = jpeg_bytes(photo_like(69, size), 90, **params)
        assert np.array_equal(pixels(decode_image(data, options)), pillow_alone(data, options))


@pytest.mark.parametrize("kind", sorted(VALID_JPEGS))
def test_every_kind_of_jpeg_cut_early_is_refused(valid_jpegs, kind):
    data = valid_jpegs[kind]
    picture = data.index(b"\xff\xd9")  # the first picture's EOI; what follows is not hashed
    for fraction in (0.3, 0.7):
        cut = cut_with_end_marker(data, int(picture * fraction))
        expect(errors.TruncatedImage, "truncated_image", cut)


def test_trailing_data_after_the_end_marker_is_ignored(valid_jpegs):
    # Cameras and phones append data after the picture's EOI (MPF pictures, maker trailers,
    # motion-photo video); libjpeg and browsers stop at the EOI, and so do the hashes.
    clean = compute_signals(valid_jpegs["baseline-420"])
    for kind in ("trailing-garbage", "trailing-jpeg", "trailing-zeros"):
        s = compute_signals(valid_jpegs[kind])
        assert (s.pdq, s.phash) == (clean.pdq, clean.phash)


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
def test_decompression_bombs_are_refused_before_decoding(data, no_decoding):
    assert len(data) < 200_000
    expect(errors.ImageTooLarge, "image_too_large", data)  # from the header: no pixel decoded


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
    before = Image.MAX_IMAGE_PIXELS
    expect(errors.TruncatedImage, "truncated_image", data, DecodeOptions(max_pixels=200_000_000))
    assert before == Image.MAX_IMAGE_PIXELS  # Pillow's process-wide limit is left alone


def test_past_pillows_own_ceiling_is_refused_with_the_ceiling_named():
    # Pillow refuses past twice its MAX_IMAGE_PIXELS whatever max_pixels says: a clear error.
    assert Image.MAX_IMAGE_PIXELS is not None
    side = int((2 * Image.MAX_IMAGE_PIXELS) ** 0.5) + 10
    data = png_header_only(side, side, bit_depth=1, colour=0)
    e = expect(errors.ImageTooLarge, "image_too_large", data,
               DecodeOptions(max_pixels=side * side + 1))
    assert str(2 * Image.MAX_IMAGE_PIXELS) in e.message


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

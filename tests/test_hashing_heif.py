"""HEIC/HEIF (iPhone photos, through pillow-heif's libheif) and AVIF (Pillow's libavif): decoded
in memory like every other format, oriented once, their picture sizes checked from the boxes
before anything is decoded, and every damaged file refused with a clear error."""

from __future__ import annotations

import io
import json
import struct

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from cli.main import cli
from registry import errors
from registry.domain import Scope
from registry.hashing import DecodeOptions, compute_signals, decode_image, isobmff
from registry.hashing.decode import FORMATS
from registry.service import SubmittedImage
from registry.web import create_app
from tests.conftest import encode, photo
from tests.images import boxed, with_ispe

BOXED = ("HEIF", "AVIF")


def pdq_distance(a: bytes, b: bytes) -> int:
    x, y = compute_signals(a).pdq, compute_signals(b).pdq
    return bin(int(x.hex, 16) ^ int(y.hex, 16)).count("1")


def test_heif_and_avif_are_supported_formats():
    assert set(BOXED) <= set(FORMATS)
    with pytest.raises(errors.NotAnImage) as e:
        decode_image(b"not an image at all, just some bytes")
    assert "HEIF" in e.value.message and "AVIF" in e.value.message


@pytest.mark.parametrize("fmt", BOXED)
def test_a_photo_decodes_and_hashes_as_its_jpeg_does(fmt):
    img = photo(11, (800, 600))
    data = boxed(img, fmt)
    assert isobmff.family(data) == fmt
    assert isobmff.largest_picture(data) == (800, 600)
    picture = decode_image(data)
    assert picture.mode == "RGB" and picture.size == (800, 600)
    # Lossy at quality 90 like the JPEG: each within a few bits of the lossless picture's PDQ.
    png = encode(img, "PNG")
    assert pdq_distance(data, png) <= 12
    assert pdq_distance(encode(img, quality=90), png) <= 12
    assert np.abs(np.asarray(picture, np.int16) - np.asarray(img, np.int16)).mean() < 6


@pytest.mark.parametrize("fmt", BOXED)
def test_the_exif_orientation_turns_the_picture_once(fmt):
    img = photo(12, (320, 200))
    exif = Image.Exif()
    exif[0x0112] = 6  # turned 90 degrees clockwise for display
    data = boxed(img, fmt, exif=exif.tobytes())
    # pillow-heif writes HEIF's orientation as an irot box and reads it back as orientation 1;
    # Pillow keeps AVIF's EXIF. Either way the picture is turned once, never twice or not at all.
    picture = decode_image(data)
    assert picture.size == (200, 320)
    turned = np.asarray(img.transpose(Image.Transpose.ROTATE_270), np.int16)
    assert np.abs(np.asarray(picture, np.int16) - turned).mean() < 6


def test_heif_alpha_is_flattened_onto_black():
    rgba = np.zeros((64, 96, 4), np.uint8)
    rgba[..., :3] = (250, 240, 40)
    rgba[:, :48, 3] = 255  # the right half transparent
    data = boxed(Image.fromarray(rgba, "RGBA"), "HEIF", quality=-1)  # lossless
    picture = np.asarray(decode_image(data), np.int16)
    assert np.abs(picture[:, :40] - (250, 240, 40)).max() <= 3
    assert picture[:, 56:].max() <= 3


@pytest.fixture
def nothing_opened(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fails the test if Pillow (or libheif through it) is even asked to open the file."""
    def opened(*args: object, **kwargs: object) -> None:
        raise AssertionError("the file was opened")

    monkeypatch.setattr("registry.hashing.decode.Image.open", opened)


@pytest.mark.parametrize("fmt", BOXED)
def test_a_bomb_is_refused_from_its_boxes_before_anything_is_opened(fmt, nothing_opened):
    data = boxed(photo(13, (256, 192)), fmt)
    for width, height in ((30_000, 30_000), (8_000, 8_000), (65_535, 1_000)):
        bomb = with_ispe(data, width, height)
        with pytest.raises(errors.ImageTooLarge) as e:
            decode_image(bomb)
        assert f"{width}x{height}" in e.value.message
    with pytest.raises(errors.ImageTooLarge):
        decode_image(data, DecodeOptions(max_pixels=256 * 192 - 1))


@pytest.mark.parametrize("fmt", BOXED)
def test_a_truncated_or_damaged_file_is_refused_clearly(fmt):
    data = boxed(photo(14, (256, 192)), fmt)
    for cut in (24, 100, len(data) // 2, len(data) - 1):
        with pytest.raises(errors.TruncatedImage) as e:
            decode_image(data[:cut])
        assert "truncated" in e.value.message
    # A box claiming more than its parent holds, or no picture size at all: corrupt.
    meta = data.find(b"meta") - 4
    overrun = bytearray(data)
    overrun[meta + 12:meta + 16] = struct.pack(">I", 1 << 30)  # meta's first child box
    with pytest.raises(errors.TruncatedImage):
        decode_image(bytes(overrun))
    no_size = data.replace(b"ispe", b"free")
    with pytest.raises(errors.TruncatedImage) as e:
        decode_image(no_size)
    assert "no picture size" in e.value.message


def test_avif_picture_data_that_its_decoder_rejects_is_refused_not_a_crash():
    data = boxed(photo(15, (256, 192)), "AVIF")
    middle = len(data) // 2
    flipped = bytes(255 - x for x in data[middle:middle + 300])
    damaged = data[:middle] + flipped + data[middle + 300:]
    with pytest.raises(errors.TruncatedImage) as e:
        decode_image(damaged)
    assert "corrupt" in e.value.message


def test_too_many_boxes_and_unknown_brands():
    head = struct.pack(">I4s4sI4s", 20, b"ftyp", b"heic", 0, b"mif1")
    with pytest.raises(errors.TruncatedImage):
        decode_image(head + struct.pack(">I4s", 8, b"free") * (isobmff.MAX_BOXES + 1))
    other = struct.pack(">I4s4sI", 16, b"ftyp", b"isom", 0) + b"\0" * 64  # an MP4, not a still
    assert isobmff.family(other) is None
    with pytest.raises(errors.NotAnImage):
        decode_image(other)


@pytest.mark.parametrize("fmt", BOXED)
def test_a_phone_photo_matches_its_registered_jpeg(registry, fmt):
    """The same recall as JPEG: a HEIC or AVIF copy of a registered picture is caught."""
    img = photo(16, (1024, 768))
    registered = compute_signals(encode(img, quality=92), registration=True)
    case = registry.submit_case([SubmittedImage.from_image(registered)])
    found = {}
    for name, data in (("jpeg", encode(img.resize((800, 600)), quality=60)),
                       (fmt, boxed(img.resize((800, 600)), fmt, quality=60))):
        (result,) = registry.match([registry.query_of_image(name, registry.hash_image(data))])
        assert {m.case for m in result.matches} == {case.number}
        found[name] = {m.signal.value for m in result.matches}
    assert "pdq" in found[fmt] and found[fmt] == found["jpeg"], found


def test_the_api_and_the_cli_take_heic(registry, settings, tmp_path):
    data = boxed(photo(17, (640, 480)), "HEIF")
    key = registry.add_platform("alpha", [Scope.MATCH])[1]
    app = create_app(registry)
    answer = app.test_client().post(
        "/api/v1/match/image", data={"file": (io.BytesIO(data), "IMG_0001.HEIC")},
        headers={"Authorization": f"Bearer {key}"})
    assert answer.status_code == 200, answer.data
    assert answer.get_json()["signals"]["pdq"] == compute_signals(data).pdq.hex
    path = tmp_path / "IMG_0001.HEIC"
    path.write_bytes(data)
    out = CliRunner().invoke(cli, ["--data-dir", str(tmp_path / "cli"), "hash", "--json",
                                   str(path)])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["pdq"] == compute_signals(data).pdq.hex
    path.write_bytes(data[:len(data) // 2])
    out = CliRunner().invoke(cli, ["--data-dir", str(tmp_path / "cli"), "hash", str(path)])
    assert out.exit_code != 0 and "truncated" in out.output and "Traceback" not in out.output

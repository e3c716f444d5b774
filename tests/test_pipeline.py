"""The matching pipeline's steps on generated images: trimming (borders, caption bars,
screenshot chrome), registered views (mirror, crops, rotations), and matching through them."""

from __future__ import annotations

import pytest
from PIL import Image, ImageDraw, ImageFont, ImageOps

from registry.domain import Signal, SignalKind
from registry.errors import InvalidInput
from registry.hashing import compute_signals
from registry.hashing.content import content_box
from registry.hashing.signals import pdq_of
from registry.hashing.variants import (
    CROPS,
    ORIENTATIONS,
    ROTATIONS,
    crop_window,
    registration_views,
    rotated,
)
from registry.service import SubmittedImage
from tests.conftest import encode, photo


def close(box, want, tol=2):
    return all(abs(a - b) <= tol for a, b in zip(box, want, strict=True))


def framed(img, border, colour):
    return ImageOps.expand(img, border=border, fill=colour)


def captioned(img, bar, where="top"):
    out = Image.new("RGB", (img.width, img.height + bar), (255, 255, 255))
    draw = ImageDraw.Draw(out)
    font = ImageFont.load_default(size=bar // 2)
    y_text = bar // 4 if where == "top" else img.height + bar // 4
    draw.text((10, y_text), "look who this is lol", fill=(0, 0, 0), font=font)
    out.paste(img, (0, bar if where == "top" else 0))
    return out


def screenshot_like(img):
    screen = Image.new("RGB", (600, 1200), (250, 250, 250))
    draw = ImageDraw.Draw(screen)
    draw.text((20, 10), "9:41", fill=(0, 0, 0), font=ImageFont.load_default(size=22))
    draw.rectangle((500, 14, 580, 30), fill=(0, 0, 0))
    draw.rectangle((0, 50, 600, 130), fill=(30, 60, 200))
    title = ImageFont.load_default(size=28)
    draw.text((80, 75), "Class 2-3 chat", fill=(255, 255, 255), font=title)
    pic = img.resize((560, 420))
    screen.paste(pic, (20, 160))
    for n in range(4):
        draw.text((20, 610 + 40 * n), "haha send this to the group", fill=(20, 20, 20),
                  font=ImageFont.load_default(size=22))
    return screen, (20, 160, 580, 580)


def test_plain_photo_is_not_trimmed():
    img = photo(1)
    assert content_box(img) == (0, 0, img.width, img.height)


@pytest.mark.parametrize("colour", [(0, 0, 0), (255, 255, 255), (200, 30, 30)])
def test_uniform_frames_are_trimmed(colour):
    img = photo(2)
    assert close(content_box(framed(img, 37, colour)), (37, 37, 37 + img.width, 37 + img.height))


def test_letterbox_is_trimmed():
    img = photo(3, (400, 300))
    box = Image.new("RGB", (712, 400), (0, 0, 0))
    box.paste(img, (156, 50))
    assert close(content_box(box), (156, 50, 556, 350))


@pytest.mark.parametrize("where", ["top", "bottom"])
def test_caption_bar_with_text_is_trimmed(where):
    img = photo(4)
    out = captioned(img, 80, where)
    top = 80 if where == "top" else 0
    assert close(content_box(out), (0, top, img.width, top + img.height))


def test_screenshot_chrome_is_trimmed_to_the_picture():
    shot, where = screenshot_like(photo(5))
    assert close(content_box(shot), where, tol=3)


def test_blank_and_tiny_images_keep_their_box():
    blank = Image.new("RGB", (300, 200), (128, 128, 128))
    assert content_box(blank) == (0, 0, 300, 200)
    tiny = photo(6, (3, 2))
    assert content_box(tiny) == (0, 0, 3, 2)


def test_trimmed_copy_hashes_like_the_original():
    img = photo(7)
    original = compute_signals(encode(img, "PNG"))
    assert original.content is None  # nothing to trim
    for copy in (framed(img, 30, (0, 0, 0)), captioned(img, 70), screenshot_like(img)[0]):
        signals = compute_signals(encode(copy, "PNG"))
        assert signals.content is not None
        assert signals.content.pdq - original.pdq <= 16
        assert signals.pdq - original.pdq > 40  # the untrimmed hash would have missed


def test_registration_views():
    img = photo(8)
    views = dict(registration_views(img))
    assert len(views) == 1 + len(ORIENTATIONS) + len(CROPS) + len(ROTATIONS) == 21
    assert next(iter(views)) == "mirror"
    assert views["mirror"].tobytes() == ImageOps.mirror(img).tobytes()
    # The other orientations of the dihedral group, each its own PIL transpose.
    assert views["rot90"].size == (480, 640) and views["transpose"].size == (480, 640)
    assert views["rot180"].tobytes() == img.rotate(180).tobytes()
    assert views["flip-v"].tobytes() == ImageOps.flip(img).tobytes()
    assert len({views[label].tobytes() for label, _ in ORIENTATIONS}) == 6
    assert views["crop90-c"].size == (576, 432)
    assert views["crop80-tl"].tobytes() == img.crop((0, 0, 512, 384)).tobytes()
    assert views["crop80-br"].tobytes() == img.crop((128, 96, 640, 480)).tobytes()
    assert views["rot+4"].size == img.size
    assert views["rot+4"].getpixel((0, 0)) == (0, 0, 0)  # corners filled black


def test_crop_window_geometry():
    img = photo(9, (200, 100))
    assert crop_window(img, 0.5, 0.5, 0.5).size == (100, 50)
    assert crop_window(img, 0.5, 1.0, 0.0).getbbox() == (0, 0, 100, 50)
    assert rotated(img, 0).tobytes() == img.tobytes()


def test_registration_signals_carry_labelled_views():
    signals = compute_signals(encode(photo(10)), registration=True)
    labels = [v.label for v in signals.variants]
    assert labels[0] == "mirror" and "crop90-c" in labels and "rot-8" in labels
    assert all(v.pdq.kind is SignalKind.PDQ and 0 <= v.quality <= 100 for v in signals.variants)
    mirrored = pdq_of(ImageOps.mirror(photo(10)))[0]
    assert signals.variants[0].pdq - mirrored <= 8
    assert "pdq_variants" in signals.to_json()


def _register(registry, img):
    return registry.submit_case([SubmittedImage.from_image(
        registry.hash_image(encode(img), registration=True))])


@pytest.mark.parametrize("name, alter", [
    ("mirror", lambda im: ImageOps.mirror(im)),
    ("crop90 corner", lambda im: im.crop((0, 0, 576, 432))),
    ("crop80 centre", lambda im: crop_window(im, 0.8, 0.5, 0.5)),
    ("rotate 5", lambda im: rotated(im, 5)),
    ("black frame", lambda im: framed(im, 40, (0, 0, 0))),
    ("caption", lambda im: captioned(im, 90)),
    ("screenshot", lambda im: screenshot_like(im)[0]),
])
def test_altered_copies_match_their_case(registry, name, alter):
    receipt = _register(registry, photo(11))
    _register(registry, photo(12))  # an unrelated case that must not match
    copy = registry.hash_image(encode(alter(photo(11)), quality=85))
    (result,) = registry.match([registry.query_of_image(name, copy)])
    cases = {m.case for m in result.matches}
    assert cases == {receipt.number}, f"{name}: {result.matches}"


def test_one_match_per_case_and_signal(registry):
    receipt = _register(registry, photo(13))
    copy = registry.hash_image(encode(photo(13)))
    (result,) = registry.match([registry.query_of_image("same", copy)])
    keys = [(m.case, m.signal, m.tier) for m in result.matches]
    assert len({(c, s) for c, s, _ in keys if s is SignalKind.PDQ}) == 1
    assert all(c == receipt.number for c, *_ in keys)


def test_views_are_validated(registry):
    good = registry.hash_image(encode(photo(14)), registration=True)
    image = SubmittedImage.from_image(good)
    too_many = SubmittedImage(image.signals, image.pdq_quality, image.views * 3)
    with pytest.raises(InvalidInput, match="more than 32"):
        registry.submit_case([too_many])
    wrong_kind = SubmittedImage(image.signals, image.pdq_quality,
                                (("mirror", good.phash, 100),))
    with pytest.raises(InvalidInput, match="labelled PDQ"):
        registry.submit_case([wrong_kind])
    blank = Signal(SignalKind.PDQ, bytes(32))
    low = SubmittedImage(image.signals, image.pdq_quality, (("crop80-c", good.pdq, 10),))
    receipt = registry.submit_case([low])  # a featureless view is dropped, not refused
    assert registry.show_case(receipt.number).signals["pdq"] == 1
    with pytest.raises(InvalidInput):
        registry.submit_case([SubmittedImage(image.signals, image.pdq_quality,
                                             (("x", blank, 100),))])


def test_bank_images_match_once_per_image(registry):
    from registry.domain import BankKind

    signals = registry.hash_image(encode(photo(15)), registration=True)
    registry.register_bank("canary", BankKind.CANARY, [SubmittedImage.from_image(signals)])
    (result,) = registry.match([registry.query_of_image("q", registry.hash_image(
        encode(photo(15))))])
    pdq = [m for m in result.matches if m.signal is SignalKind.PDQ]
    assert len(pdq) == 1 and pdq[0].bank == "canary" and pdq[0].distance == 0


def test_frame_box_stops_where_the_picture_has_its_own_flat_edge():
    from registry.hashing.content import FRAME_RULES

    img = photo(16)
    img.paste((20, 20, 20), (0, 0, img.width, 40))  # the picture's own dark, flat top
    out = captioned(img, 80)  # a white caption bar above it
    full = content_box(out)
    frame = content_box(out, FRAME_RULES)
    assert full[1] >= 80 + 38  # the full trimmer peels the bar and the dark strip
    assert close(frame, (0, 80, img.width, 80 + img.height))  # the frame box only the bar
    signals = compute_signals(encode(out, "PNG"))
    original = compute_signals(encode(img, "PNG"))
    assert signals.frame is not None and signals.frame.pdq - original.pdq <= 16

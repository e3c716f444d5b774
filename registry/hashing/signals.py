"""Signals of one image: PDQ (256-bit, with quality), pHash (64-bit), MD5 and SHA-256, plus the
views the matching pipeline adds (docs/accuracy.md):

- ``content``: PDQ of the picture found inside borders, caption bars or screenshot chrome
  (:mod:`registry.hashing.content`), when that differs from the whole image; queries and
  registrations both carry it;
- ``frame``: for queries only, PDQ of the conservative box (only the edge-coloured frame or bar
  peeled), when it differs from ``content``: it catches copies whose picture has flat regions
  next to the chrome (a dark ground, a sky) that the full trimmer peels too;
- ``variants``: for registration only, PDQ of mirrored, cropped and rotated views of the
  (trimmed) original and of its other seven orientations (:mod:`registry.hashing.variants`);
- ``local``: keypoints with ORB descriptors (:mod:`registry.hashing.local`), 112 of them for a
  registration and up to 1,000 for a query; absent for a picture too flat to have them.

PDQ uses the ``pdqhash`` package with Meta's hex convention (the 256 bits in order read as one
big-endian number). pHash is ``imagehash.phash`` itself on the same decoded image, so it is
bit-identical by construction. Digests are of the file bytes as received.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import imagehash
import numpy as np
import pdqhash
from PIL import Image

from registry.domain import Signal, SignalKind
from registry.hashing.content import FRAME_RULES, content_box, work_array
from registry.hashing.decode import DecodeOptions, decode_image
from registry.hashing.local import extract
from registry.hashing.variants import registration_views, view_source

# Stored with every registered signal, so a later pipeline change can re-hash or migrate.
# 1: PDQ/pHash/digests of the whole image. 2: + content box and registration variants.
# 3: + local features, and PDQ of all eight orientations registered.
# 4: registered local keypoints from ORB's five finest levels, spread over a 6 x 6 grid.
PIPELINE_VERSION = 4
_MIN_TRIM = 0.01  # a content box must shave at least this fraction to count as different


@dataclass(frozen=True, slots=True)
class Variant:
    label: str
    pdq: Signal
    quality: int


@dataclass(frozen=True, slots=True)
class ImageSignals:
    pdq: Signal
    pdq_quality: int
    phash: Signal
    md5: Signal
    sha256: Signal
    width: int
    height: int
    content: Variant | None = None
    frame: Variant | None = None
    variants: tuple[Variant, ...] = ()
    local: Signal | None = None

    def signals(self) -> tuple[Signal, ...]:
        base = (self.pdq, self.phash, self.md5, self.sha256)
        return base if self.local is None else (*base, self.local)

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {
            "pdq": self.pdq.hex,
            "pdq_quality": self.pdq_quality,
            "phash": self.phash.hex,
            "md5": self.md5.hex,
            "sha256": self.sha256.hex,
            "pipeline_version": PIPELINE_VERSION,
        }
        if self.content is not None:
            out["pdq_content"] = self.content.pdq.hex
            out["pdq_content_quality"] = self.content.quality
        if self.frame is not None:
            out["pdq_frame"] = self.frame.pdq.hex
            out["pdq_frame_quality"] = self.frame.quality
        if self.variants:
            out["pdq_variants"] = {v.label: v.pdq.hex for v in self.variants}
        if self.local is not None:
            out["local"] = self.local.text
        return out


def pdq_of(img: Image.Image) -> tuple[Signal, int]:
    """PDQ hash and quality (0-100) of an RGB image."""
    bits, quality = pdqhash.compute(np.asarray(img))
    packed = np.packbits(np.asarray(bits, dtype=np.uint8))  # big-endian within each byte
    return Signal(SignalKind.PDQ, packed.tobytes()), int(quality)


def phash_of(img: Image.Image) -> Signal:
    """``imagehash.phash`` of the image, as a 64-bit signal."""
    return Signal(SignalKind.PHASH, bytes.fromhex(str(imagehash.phash(img))))


def digests_of(data: bytes) -> tuple[Signal, Signal]:
    return (
        Signal(SignalKind.MD5, hashlib.md5(data, usedforsecurity=False).digest()),
        Signal(SignalKind.SHA256, hashlib.sha256(data).digest()),
    )


def _variant(label: str, img: Image.Image) -> Variant:
    pdq, quality = pdq_of(img)
    return Variant(label, pdq, quality)


def compute_signals(data: bytes, options: DecodeOptions | None = None, *,
                    registration: bool = False) -> ImageSignals:
    """Decode in memory and compute every signal; the bytes are not kept. With
    ``registration`` the variants of the original are computed too."""
    img = decode_image(data, options or DecodeOptions())
    pdq, quality = pdq_of(img)
    md5, sha256 = digests_of(data)
    work = work_array(img)
    box = content_box(img, work=work)
    trimmed = shaved(box, img)
    content = frame = None
    if trimmed and registration:
        content = _variant("content", img.crop(box))
    elif trimmed:
        # A query's trimmed views are cut from its reduced copy (variants.view_source, as the
        # registered views are): PDQ sees 64 x 64 of either, and a 2 MP copy's two views cost
        # ~4 ms instead of ~15.
        small = view_source(img)
        content = _variant("content", _cut(img, small, box))
        frame_box = content_box(img, FRAME_RULES, work=work)  # the conservative box
        if frame_box != box and shaved(frame_box, img):
            frame = _variant("frame", _cut(img, small, frame_box))
    variants: tuple[Variant, ...] = ()
    if registration:
        # Views of the original as it is: copies are cut and flipped from what was posted, not
        # from our trimmed version of it (measured: views of the trimmed base missed 6% of
        # centred 90% crops of photos whose sky or frame the trimmer peels).
        variants = tuple(_variant(label, view) for label, view in registration_views(img))
    features = extract(img, registration=registration)
    return ImageSignals(
        pdq=pdq,
        pdq_quality=quality,
        phash=phash_of(img),
        md5=md5,
        sha256=sha256,
        width=img.width,
        height=img.height,
        content=content,
        frame=frame,
        variants=variants,
        local=None if features is None else features.signal(),
    )


def _cut(img: Image.Image, small: Image.Image, box: tuple[int, int, int, int]) -> Image.Image:
    """``box`` of ``img``, cut from ``small`` (``img`` reduced)."""
    if small is img:
        return img.crop(box)
    sx, sy = small.width / img.width, small.height / img.height
    return small.crop((round(box[0] * sx), round(box[1] * sy), round(box[2] * sx),
                       round(box[3] * sy)))


def shaved(box: tuple[int, int, int, int], img: Image.Image) -> bool:
    area = (box[2] - box[0]) * (box[3] - box[1])
    return area < (1 - _MIN_TRIM) * img.width * img.height

"""Signals of one image: PDQ (256-bit, with quality), pHash (64-bit), MD5 and SHA-256.

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
from registry.hashing.decode import DecodeOptions, decode_image

# Stored with every registered signal, so a later pipeline change can re-hash or migrate.
PIPELINE_VERSION = 1


@dataclass(frozen=True, slots=True)
class ImageSignals:
    pdq: Signal
    pdq_quality: int
    phash: Signal
    md5: Signal
    sha256: Signal
    width: int
    height: int

    def signals(self) -> tuple[Signal, ...]:
        return (self.pdq, self.phash, self.md5, self.sha256)

    def to_json(self) -> dict[str, object]:
        return {
            "pdq": self.pdq.hex,
            "pdq_quality": self.pdq_quality,
            "phash": self.phash.hex,
            "md5": self.md5.hex,
            "sha256": self.sha256.hex,
            "pipeline_version": PIPELINE_VERSION,
        }


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


def compute_signals(data: bytes, options: DecodeOptions | None = None) -> ImageSignals:
    """Decode in memory and compute every signal; the bytes are not kept."""
    img = decode_image(data, options or DecodeOptions())
    pdq, quality = pdq_of(img)
    md5, sha256 = digests_of(data)
    return ImageSignals(
        pdq=pdq,
        pdq_quality=quality,
        phash=phash_of(img),
        md5=md5,
        sha256=sha256,
        width=img.width,
        height=img.height,
    )

"""What the boxes of a HEIF or AVIF file say before anything is decoded: the family, whether the
file holds every box it declares, and the largest picture it declares.

HEIC (iPhone photos), HEIF and AVIF are ISO base media files: a sequence of boxes (a 32-bit
size, a four-letter type, a body; size 1 means a 64-bit size follows, size 0 runs to the end of
the file). The ``ftyp`` box names the brands; the pictures' sizes are ``ispe`` properties in
``meta`` > ``iprp`` > ``ipco``. A grid picture (how phones store 12 MP photos, as 512x512 tiles)
declares its full size there too, so the largest ``ispe`` is at least the primary picture's:
checking it against the pixel limit refuses a bomb before libheif or libavif allocates anything.
The browser port (``static/js/hash/decode.js``) reads the same boxes.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

HEIF_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1",
                         b"msf1"})
AVIF_BRANDS = frozenset({b"avif", b"avis"})
MAX_BOXES = 4096  # a real file has a few dozen; a file of millions of empty boxes is refused
_CONTAINERS = {b"meta": 4, b"iprp": 0, b"ipco": 0}  # children start after this many bytes


class BoxError(ValueError):
    """The boxes are inconsistent: one runs past its parent, or (``truncated``) past the end of
    the file."""

    def __init__(self, message: str, truncated: bool = False) -> None:
        super().__init__(message)
        self.truncated = truncated


def family(data: bytes) -> str | None:
    """``"AVIF"``, ``"HEIF"`` or None, from the ``ftyp`` box that must open the file."""
    if len(data) < 16 or data[4:8] != b"ftyp":
        return None
    size = struct.unpack(">I", data[:4])[0]
    if size < 16 or size > 4096:
        return None
    end = min(size, len(data))  # a file cut inside its ftyp box is still known (as truncated)
    brands = {data[8:12]} | {data[i:i + 4] for i in range(16, end - 3, 4)}
    if brands & AVIF_BRANDS:
        return "AVIF"
    if brands & HEIF_BRANDS:
        return "HEIF"
    return None


def _boxes(data: bytes, start: int, end: int, count: list[int]) -> Iterator[tuple[bytes, int, int]]:
    """(type, body start, box end) of each box in data[start:end]."""
    at = start
    while at < end:
        count[0] += 1
        if count[0] > MAX_BOXES:
            raise BoxError(f"more than {MAX_BOXES} boxes")
        if end - at < 8:
            raise BoxError("a box header runs past its parent", end == len(data))
        size, kind = struct.unpack(">I4s", data[at:at + 8])
        body = at + 8
        if size == 1:
            if end - at < 16:
                raise BoxError("a box header runs past its parent", end == len(data))
            size = struct.unpack(">Q", data[at + 8:at + 16])[0]
            body = at + 16
        elif size == 0:
            size = end - at
        if size < body - at or at + size > end:
            raise BoxError(f"the {kind!r} box runs past its parent", at + size > len(data))
        yield kind, body, at + size
        at += size


def largest_picture(data: bytes) -> tuple[int, int] | None:
    """The largest (width, height) any ``ispe`` property declares; None when there is none.
    Raises :class:`BoxError` when a box runs past the end of the file or the file ends before a
    ``meta`` box (a truncated file), or a box runs past its parent."""
    count = [0]
    largest: tuple[int, int] | None = None
    found_meta = False

    def walk(start: int, end: int) -> None:
        nonlocal largest, found_meta
        for kind, body, stop in _boxes(data, start, end, count):
            found_meta = found_meta or kind == b"meta"
            if kind in _CONTAINERS:
                walk(body + _CONTAINERS[kind], stop)
            elif kind == b"ispe" and stop - body >= 12:
                width, height = struct.unpack(">II", data[body + 4:body + 12])
                if largest is None or width * height > largest[0] * largest[1]:
                    largest = (width, height)

    walk(0, len(data))
    if largest is None and not found_meta:
        raise BoxError("the file ends before its meta box", truncated=True)
    return largest

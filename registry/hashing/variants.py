"""Registration variants: the altered views of an original whose PDQ hashes are registered.

PDQ moves ~38 bits for a 1% shift and ~20 bits for a 1° rotation (docs/accuracy.md), so a copy
that was cropped, mirrored or rotated is caught only if a view close to it was registered. Each
view below is justified by the recall it buys in bench/accuracy.py; the list is part of the
pipeline version.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
from PIL import Image, ImageOps

# The other six orientations of the dihedral group (the horizontal mirror is "mirror"): a copy
# flipped upside down, turned a quarter or half turn, or transposed, as phone editors do.
ORIENTATIONS: tuple[tuple[str, Image.Transpose], ...] = (
    ("flip-v", Image.Transpose.FLIP_TOP_BOTTOM),
    ("rot90", Image.Transpose.ROTATE_90),
    ("rot180", Image.Transpose.ROTATE_180),
    ("rot270", Image.Transpose.ROTATE_270),
    ("transpose", Image.Transpose.TRANSPOSE),
    ("transverse", Image.Transpose.TRANSVERSE),
)

# (label, fraction kept per side, horizontal and vertical placement of the window: 0 = left/top)
CROPS: tuple[tuple[str, float, float, float], ...] = tuple(
    (f"crop{round(keep * 100)}-{name}", keep, fx, fy)
    for keep in (0.9, 0.8)
    for name, fx, fy in (("c", 0.5, 0.5), ("tl", 0.0, 0.0), ("tr", 1.0, 0.0), ("bl", 0.0, 1.0),
                         ("br", 1.0, 1.0))
)
ROTATIONS: tuple[float, ...] = (4.0, -4.0, 8.0, -8.0)


def crop_window(img: Image.Image, keep: float, fx: float, fy: float) -> Image.Image:
    w, h = img.size
    cw, ch = max(1, round(w * keep)), max(1, round(h * keep))
    x, y = round((w - cw) * fx), round((h - ch) * fy)
    return img.crop((x, y, x + cw, y + ch))


def rotated(img: Image.Image, degrees: float) -> Image.Image:
    """Rotated about the centre, same size, corners filled black (as apps rotate a picture)."""
    return img.rotate(degrees, resample=Image.Resampling.BICUBIC, expand=False,
                      fillcolor=(0, 0, 0))


# Views are cut from a copy reduced (Image.reduce, a box mean) by the largest whole factor that
# keeps its short side at VIEW_SIDE pixels or more: PDQ sees a 64 x 64 summary of any view, so a
# 12 MP photo's 21 views hashed at full size cost ~25x the time for the same hashes within a few
# bits (the browser registers in seconds, not tens of seconds). Photos under 1024 px are as is.
VIEW_SIDE = 512


def view_source(img: Image.Image) -> Image.Image:
    factor = max(1, min(img.size) // VIEW_SIDE)
    return img if factor == 1 else img.reduce(factor)


def registration_views(img: Image.Image) -> Iterator[tuple[str, Image.Image]]:
    """Every view of the original that gets a registered PDQ hash, except ``full`` and
    ``content``: cut from :func:`view_source` of it."""
    base = view_source(img)
    yield "mirror", ImageOps.mirror(base)
    for label, method in ORIENTATIONS:
        yield label, base.transpose(method)
    for label, keep, fx, fy in CROPS:
        yield label, crop_window(base, keep, fx, fy)
    for degrees in ROTATIONS:
        yield f"rot{degrees:+g}", rotated(base, degrees)


# --- what a view's hash must agree with ---------------------------------------------------------
# PDQ thresholds the 16 x 16 low-frequency DCT coefficients of a 64 x 64 summary of the picture
# at their median; bit ``k`` is coefficient (k // 16, k % 16). Turning or flipping the picture
# permutes and negates those coefficients exactly (a flip negates the odd frequencies along its
# axis, a transpose swaps the two frequencies), and negating a coefficient near a median near
# zero flips its bit. So an orientation's hash is predicted by the original's, bits permuted and
# flipped: within a few bits for a real view (bench/view_consistency.py), ~128 for any other
# hash. A submission's orientation views are checked against it; crops and small rotations
# cannot be predicted without the picture (they sit as far from the original as an unrelated
# image).
_ROW, _COL = np.divmod(np.arange(256), 16)
_SWAP = _COL * 16 + _ROW
# label: (swap the two frequencies first, coefficients negated after that)
DIHEDRAL: dict[str, tuple[bool, np.ndarray[Any, np.dtype[np.bool_]]]] = {
    "mirror": (False, _COL % 2 == 1),
    "flip-v": (False, _ROW % 2 == 1),
    "rot180": (False, (_ROW + _COL) % 2 == 1),
    "transpose": (True, np.zeros(256, dtype=bool)),
    "rot90": (True, _ROW % 2 == 1),
    "rot270": (True, _COL % 2 == 1),
    "transverse": (True, (_ROW + _COL) % 2 == 1),
}
# Most bits a registered orientation view may differ from its prediction: the largest seen over
# every evaluation photo is well below it, an unrelated hash sits ~128 away (sd ~8).
DIHEDRAL_MAX_BITS = 64


def predicted_pdq(label: str, pdq: bytes) -> bytes | None:
    """The PDQ hash an orientation view ``label`` of a picture whose PDQ hash is ``pdq`` has,
    up to a few bits; None for a view that cannot be predicted."""
    if label not in DIHEDRAL:
        return None
    swap, negate = DIHEDRAL[label]
    bits = np.unpackbits(np.frombuffer(pdq, dtype=np.uint8))
    if swap:
        bits = bits[_SWAP]
    return np.packbits(bits ^ negate.astype(np.uint8)).tobytes()


def view_labels() -> tuple[str, ...]:
    """Every label a registration view may carry (besides ``full``), in the order it is made."""
    return ("content", "mirror", *(label for label, _ in ORIENTATIONS),
            *(label for label, *_ in CROPS), *(f"rot{d:+g}" for d in ROTATIONS))

"""Registration variants: the altered views of an original whose PDQ hashes are registered.

PDQ moves ~38 bits for a 1% shift and ~20 bits for a 1° rotation (docs/accuracy.md), so a copy
that was cropped, mirrored or rotated is caught only if a view close to it was registered. Each
view below is justified by the recall it buys in bench/accuracy.py; the list is part of the
pipeline version.
"""

from __future__ import annotations

from collections.abc import Iterator

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

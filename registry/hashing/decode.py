"""Decoding untrusted image bytes, in memory, into the RGB image every signal is computed from.

Rules (the same for registration and queries, and ported to the browser):
- only still-image formats we support are opened; animated images use their first frame;
- a pixel limit checked from the header, before any pixel is decoded, stops decompression bombs;
- JPEGs may be decoded by DCT scaling (``draft``) to at least ``draft_size`` per side, which is
  5-10x faster than a full decode and moves PDQ a few bits (docs/hashing.md);
- EXIF orientation is applied, as browsers do;
- alpha is flattened onto black: ``c' = (c * a + 127) // 255`` per channel;
- 16-bit greyscale keeps its high byte (as browsers do); palette, CMYK, LAB, YCbCr and 1-bit
  become RGB.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from registry.errors import EmptyImage, FileTooLarge, ImageTooLarge, NotAnImage, TruncatedImage

FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF")


@dataclass(frozen=True, slots=True)
class DecodeOptions:
    max_pixels: int = 50_000_000
    max_bytes: int = 20 * 1024 * 1024
    draft_size: int = 512  # 0 disables JPEG draft decoding


def decode_image(data: bytes, options: DecodeOptions = DecodeOptions()) -> Image.Image:
    """Decode ``data`` into an 8-bit RGB image, or raise an :class:`ImageError` subclass."""
    if not data:
        raise EmptyImage("The file is empty.")
    if len(data) > options.max_bytes:
        raise FileTooLarge(
            f"The file is {len(data)} bytes; the limit is {options.max_bytes} bytes."
        )
    # Truncated files must fail, never be half-hashed; this is Pillow's default, asserted here.
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    if Image.MAX_IMAGE_PIXELS is not None and options.max_pixels > Image.MAX_IMAGE_PIXELS:
        # Our own limit, checked from the header below, replaces Pillow's lower default.
        Image.MAX_IMAGE_PIXELS = options.max_pixels
    try:
        with warnings.catch_warnings():
            # Pillow warns about oddities it recovers from (corrupt EXIF, bomb-sized images we
            # check ourselves); none of them is the caller's business.
            warnings.simplefilter("ignore")
            img = Image.open(io.BytesIO(data), formats=FORMATS)
            _check_pixels(img.size, options.max_pixels)
            if img.format == "JPEG" and options.draft_size > 0:
                img.draft(img.mode, (options.draft_size, options.draft_size))
            img.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageTooLarge(
            f"The image has more than {options.max_pixels} pixels; the limit stops "
            "decompression bombs."
        ) from None
    except UnidentifiedImageError:
        raise NotAnImage(
            f"The file is not an image in a supported format ({', '.join(FORMATS)})."
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError) as e:
        # Pillow reports truncation and corrupt streams as OSError/SyntaxError and friends.
        if "truncated" in str(e).lower() or isinstance(e, EOFError):
            raise TruncatedImage("The image file is truncated: it ends before its data.") from None
        raise TruncatedImage("The image file is corrupt and cannot be decoded.") from None
    return to_rgb(_oriented(img))


def _check_pixels(size: tuple[int, int], max_pixels: int) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise NotAnImage("The image has no pixels.")
    if width * height > max_pixels:
        raise ImageTooLarge(
            f"The image is {width}x{height} pixels; the limit is {max_pixels} pixels "
            "(it stops decompression bombs)."
        )


def _oriented(img: Image.Image) -> Image.Image:
    try:
        transposed = ImageOps.exif_transpose(img)
    except Exception:  # a malformed EXIF block must not reject an otherwise good image
        return img
    return transposed if transposed is not None else img


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB with alpha flattened onto black."""
    mode = img.mode
    keyed = "transparency" in img.info and mode in ("P", "L", "RGB")  # a tRNS colour key
    if mode == "RGB" and not keyed:
        return img
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        # The high byte, as browsers decode 16-bit PNGs (docs/browser-hashing.md): rounding
        # v / 257 instead differs by one level on a quarter of values.
        wide = np.asarray(img, dtype=np.float64)
        grey = np.clip(np.floor(wide / 256.0), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if keyed or mode in ("PA", "LA", "La", "RGBa"):
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode == "RGBA":
        rgba = np.asarray(img, dtype=np.uint16)
        alpha = rgba[..., 3:4]
        flat = ((rgba[..., :3] * alpha + 127) // 255).astype(np.uint8)
        return Image.fromarray(flat, "RGB")
    return img.convert("RGB")

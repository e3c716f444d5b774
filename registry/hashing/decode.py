"""Decoding untrusted image bytes, in memory, into the RGB image every signal is computed from.

Rules (the same for registration and queries, and ported to the browser):
- only still-image formats we support are opened; animated images use their first frame;
  HEIC/HEIF (iPhone photos) through pillow-heif's libheif, AVIF through Pillow's libavif, each
  its primary picture only (no thumbnails, depth maps or burst frames);
- a pixel limit checked from the header, before any pixel is decoded, stops decompression bombs;
- JPEGs may be decoded by DCT scaling (``draft``) to at least ``draft_size`` per side, which is
  5-10x faster than a full decode and moves PDQ a few bits (docs/hashing.md);
- a file that ends before its picture data does is refused (``TruncatedImage``), a JPEG too when
  an end marker was written early; data after a JPEG's end marker (EOI) is ignored;
- EXIF orientation is applied, as browsers do; a HEIF picture's rotation and mirroring boxes
  (irot/imir, where iPhones record the orientation) are applied by libheif, which then reports
  orientation 1, so a picture is never turned twice;
- alpha is flattened onto black: ``c' = (c * a + 127) // 255`` per channel;
- 16-bit greyscale keeps its high byte (as browsers do); palette, CMYK, LAB, YCbCr and 1-bit
  become RGB.

JPEGs that stop early. libjpeg treats picture data that stops early (an end marker inside a
scan, the bytes running out, a bad Huffman code, a lost restart interval) as a warning: it
decodes the missing blocks as zero coefficients, exact grey 128, and Pillow drops its warnings
(python-pillow/Pillow#9106), so a JPEG cut in half with FF D9 appended hashed as half a picture.
Options measured (2-core machine; a 12 MP q92 photo of 3.1 MB, draft-decoded to 1000x750):
(a) simplejpeg (libjpeg-turbo 3.1.2, ``strict=True``) as a validator beside Pillow: a second
    decode, as slow as the first even at 1/8 scale (entropy decoding dominates): about +100%;
(b) a look at Pillow's pixels (a last block of exact mid-grey) plus a marker walk: free, but it
    cannot decide: a picture with a flat mid-grey corner decodes to the very same pixels, and a
    progressive JPEG cut in a later scan shows no grey at all (its blocks keep the coefficients
    of the scans before the cut);
(c, chosen) simplejpeg as the decoder of JPEG pixels: TurboJPEG finishes the decode and then
    reports its first warning, and its pixels are bit for bit Pillow's at every draft scale (the
    same libjpeg-turbo code paths: accurate integer IDCT, smooth chroma upsampling; 28,560
    decodes equal: the 3,808 photos of ../shared/data, progressive and 4:4:4 re-encodes of a
    quarter of them, at 5 draft sizes; and every JPEG kind in tests/test_hashing_decode.py), so
    no hash changes and the cost is the one decode there was. CPU time per decode_image, before ->
    after, interleaved in one run, medians of 41: 12 MP baseline 42.9 -> 42.1 ms, 12 MP
    progressive 143.6 -> 139.4 ms, 2 MP baseline 9.9 -> 9.5 ms, 2 MP progressive 29.9 -> 29.0 ms
    (wall-clock paired medians on the loaded machine: -3 to +11 ms, noise).
Pillow still opens the file (format, the size the pixel limit is checked on, EXIF) and picks
the draft scale; it decodes itself where simplejpeg cannot vouch for its pixels. Missing scans
raise no warning at all (a multi-scan JPEG cut exactly at a scan boundary): a marker walk
checks that every coefficient of every component was sent (0.01 ms for a baseline JPEG, where
it stops at the first scan; 1.9 ms for a 12 MP progressive one), and refuses more than
``MAX_SCANS`` scans, each of which costs a pass over every block.

Known limits: TurboJPEG reports only its first warning, so a harmless one (stray bytes before a
header marker) hides a later early end; Pillow then decodes, and a last 2x2 block of exact
mid-grey is refused, which refuses a whole picture that has both a harmless warning and a flat
mid-grey corner. libjpeg treats a marker inside arithmetic-coded data as legal (jdarith.c), so
a cut single-scan arithmetic-coded JPEG (rare in practice) still decodes without a word.
Data after the EOI is the camera's (MPF pictures, maker trailers, motion-photo video): libjpeg
and browsers stop at the EOI, and so do we.
"""

from __future__ import annotations

import functools
import io
import re
import warnings
from dataclasses import dataclass

import numpy as np
import pillow_heif
import simplejpeg  # type: ignore[import-untyped]
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from registry.config import Settings, default
from registry.errors import EmptyImage, FileTooLarge, ImageTooLarge, NotAnImage, TruncatedImage
from registry.hashing import isobmff

FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF", "HEIF", "AVIF")
_JPEG_FORMATS = ("JPEG", "MPO")  # MPO: a camera JPEG with more pictures after the first's EOI
TRUNCATED = "The image file is truncated: it ends before its data."
DAMAGED = "The image file is corrupt: part of its picture data is damaged."


@dataclass(frozen=True, slots=True)
class DecodeOptions:
    """The limits and the draft size of a decode: the settings ``max_image_pixels``,
    ``max_upload_bytes`` and ``jpeg_draft_size`` (:meth:`of`); the defaults are theirs."""

    max_pixels: int = default("max_image_pixels")
    max_bytes: int = default("max_upload_bytes")
    draft_size: int = default("jpeg_draft_size")  # 0 disables JPEG draft decoding

    @classmethod
    def of(cls, settings: Settings) -> DecodeOptions:
        return cls(settings.max_image_pixels, settings.max_upload_bytes, settings.jpeg_draft_size)


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
    _open_heif()
    boxed = isobmff.family(data)  # HEIF or AVIF: sizes and completeness from the boxes
    if boxed is not None:
        _check_boxes(data, boxed, options.max_pixels)
    # Pillow's own bomb limit is process-wide and left alone: our limit is checked from the
    # header below; Pillow warns past its MAX_IMAGE_PIXELS (ignored) and refuses past twice it
    # (~179 MP), which caps a max_pixels set higher than that.
    try:
        with warnings.catch_warnings():
            # Pillow warns about oddities it recovers from (corrupt EXIF, bomb-sized images we
            # check ourselves); none of them is the caller's business.
            warnings.simplefilter("ignore")
            img = Image.open(io.BytesIO(data), formats=FORMATS)
            _check_pixels(img.size, options.max_pixels)
            if img.format in _JPEG_FORMATS:
                picture = _decode_jpeg(data, img, options.draft_size)
            else:
                img.load()
                picture = img
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        ceiling = min(options.max_pixels, 2 * (Image.MAX_IMAGE_PIXELS or options.max_pixels))
        raise ImageTooLarge(
            f"The image has more than {ceiling} pixels; the limit stops decompression bombs."
        ) from None
    except UnidentifiedImageError:
        if boxed is not None:  # its boxes are whole, but the decoder cannot read them
            raise TruncatedImage(f"The {boxed} file is corrupt and cannot be decoded.") from None
        raise NotAnImage(
            f"The file is not an image in a supported format ({', '.join(FORMATS)})."
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, RuntimeError) as e:
        # Pillow reports truncation and corrupt streams as OSError/SyntaxError and friends;
        # libheif and libavif as RuntimeError.
        if "truncated" in str(e).lower() or isinstance(e, EOFError):
            raise TruncatedImage(TRUNCATED) from None
        raise TruncatedImage("The image file is corrupt and cannot be decoded.") from None
    return to_rgb(_oriented(picture))


def _check_boxes(data: bytes, family: str, max_pixels: int) -> None:
    try:
        largest = isobmff.largest_picture(data)
    except isobmff.BoxError as e:
        if e.truncated:
            raise TruncatedImage(TRUNCATED) from None
        raise TruncatedImage(f"The {family} file is corrupt and cannot be decoded.") from None
    if largest is None:
        raise TruncatedImage(f"The {family} file declares no picture size; it is corrupt.")
    _check_pixels(largest, max_pixels)


@functools.cache
def _open_heif() -> None:
    """Let Pillow open HEIF files (once per process, on first use: nothing at import): only
    the primary picture is read; its size comes from the header before anything is decoded."""
    pillow_heif.register_heif_opener(thumbnails=False, depth_images=False, aux_images=False)


def _check_pixels(size: tuple[int, int], max_pixels: int) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise NotAnImage("The image has no pixels.")
    if width * height > max_pixels:
        raise ImageTooLarge(
            f"The image is {width}x{height} pixels; the limit is {max_pixels} pixels "
            "(it stops decompression bombs)."
        )


# --- JPEG: libjpeg's warnings are errors -------------------------------------------------------
# Pillow -> libjpeg mode: what simplejpeg is asked for, and Pillow's raw mode for its output
# (Pillow reads every 4-channel JPEG as Adobe's inverted CMYK, "CMYK;I").
_LIBJPEG_MODES = {"RGB": ("RGB", "RGB"), "L": ("GRAY", "L"), "CMYK": ("CMYK", "CMYK;I")}
# libjpeg's warnings (jerror.h) that mean picture data is missing or damaged; the others
# (extraneous bytes between segments, a bad ICC chunk, an unknown JFIF revision, odd SOS
# parameters) leave every pixel decoded.
_DATA_LOST = (
    ("premature end of data segment", TRUNCATED),  # JWRN_HIT_MARKER: a marker inside a scan
    ("Premature end of JPEG file", TRUNCATED),  # JWRN_JPEG_EOF: the bytes ran out
    ("bad Huffman code", DAMAGED),  # JWRN_HUFF_BAD_CODE
    ("bad arithmetic code", DAMAGED),  # JWRN_ARITH_BAD_CODE
    ("instead of RST", DAMAGED),  # JWRN_MUST_RESYNC: a restart interval lost
)


def _decode_jpeg(data: bytes, img: Image.Image, draft_size: int) -> Image.Image:
    """The pixels of an opened JPEG, refusing one whose picture data is incomplete."""
    _check_scans(data)
    full_size, scale = img.size, 1
    if img.format == "JPEG" and draft_size > 0:
        drafted = img.draft(img.mode, (draft_size, draft_size))
        if drafted is not None:  # box = (0, 0, width / scale, height / scale)
            scale = round(full_size[0] / drafted[1][2])
    decoded = _decode_strictly(data, img, full_size, scale)
    if decoded is not None:
        decoded.info = dict(img.info)  # EXIF and XMP, for the orientation
        return decoded
    img.load()
    if _grey_corner(img):
        # libjpeg-turbo could not vouch for these pixels (it reports only its first warning),
        # and a last block of exact mid-grey is what it decodes where data is missing.
        raise TruncatedImage(TRUNCATED)
    return img


def _decode_strictly(
    data: bytes, img: Image.Image, full_size: tuple[int, int], scale: int
) -> Image.Image | None:
    """libjpeg-turbo's decode at 1/``scale`` (bit for bit what Pillow's draft decodes), with
    data-losing warnings raised as errors; None where Pillow should decode instead."""
    modes = _LIBJPEG_MODES.get(img.mode)
    width, height = img.size
    # simplejpeg takes the smallest libjpeg-turbo factor (n/8) giving at least the size asked
    # for: exactly 1/scale once a side has 8 pixels (1/scale - 1/8 of it is a whole pixel).
    if modes is None or (scale > 1 and max(full_size) < 8):
        return None
    try:
        pixels = simplejpeg.decode_jpeg(
            data,
            modes[0],
            min_factor=scale,
            min_width=width if scale > 1 else 0,
            min_height=height if scale > 1 else 0,
            strict=True,
        )
    except ValueError as e:  # a warning (after a whole decode) or a fatal error
        for fragment, message in _DATA_LOST:
            if fragment in str(e):
                raise TruncatedImage(message) from None
        return None  # a harmless warning, or an error Pillow will report its own way
    if pixels.shape[:2] != (height, width):
        return None
    return Image.frombuffer(img.mode, (width, height), pixels, "raw", modes[1], 0, 1)


def _grey_corner(img: Image.Image) -> bool:
    width, height = img.size
    corner = img.crop((max(0, width - 2), max(0, height - 2), width, height)).tobytes()
    return set(corner) <= {127, 128}  # 128 in every channel; 127 once CMYK is inverted


# The next marker: 0xFF and a byte that is not a stuffed zero, a restart marker or more fill.
_NEXT_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
# Start-of-frame markers libjpeg decodes -> whether the frame is progressive.
_FRAMES = {0xC0: False, 0xC1: False, 0xC2: True, 0xC3: False, 0xC9: False, 0xCA: True, 0xCB: False}
_ALL_COEFFICIENTS = (1 << 64) - 1
# Each scan is a pass over every block of the picture: 1,000 repeats of a 26-byte scan kept a
# 12 MP JPEG of 97 KB decoding for 7 s (measured). Encoders write 10 or so (libjpeg's
# progressive script: 10); libjpeg-turbo's own fuzzers stop at 500.
MAX_SCANS = 100
MAX_SEGMENTS = 10_000  # the walk below is Python: 4-byte segments would cost ~1 s per MB


def _check_scans(data: bytes) -> None:
    """Refuse a JPEG that reaches its end marker (EOI) before its scans have sent every colour
    component in full, a multi-scan JPEG cut at a scan boundary, which libjpeg decodes without a
    warning (the missing scans' coefficients stay zero); and one with absurdly many scans.

    Walks the marker segments and, past each scan header, the entropy-coded data to the next
    marker. Sequential frames need each component in some scan; progressive ones need every
    coefficient of every component down to its last bit (Al = 0). What the walk cannot follow
    is left to libjpeg to judge."""
    pos, frame, sent, scans = 2, None, dict[int, int](), 0
    for _ in range(MAX_SEGMENTS):
        found = _NEXT_MARKER.search(data, pos)
        if found is None:
            return  # no EOI: libjpeg reports the premature end
        marker, pos = data[found.start() + 1], found.end()
        if marker == 0xD9:
            if frame is not None and any(sent.get(c, 0) != _ALL_COEFFICIENTS for c in frame[1]):
                raise TruncatedImage(TRUNCATED)
            return
        if marker < 0xC0 or marker == 0xD8:
            return  # a reserved marker or a second SOI: libjpeg refuses the file itself
        end = pos + int.from_bytes(data[pos : pos + 2], "big")
        if end < pos + 2 or end > len(data):
            return
        body, pos = data[pos + 2 : end], end
        if marker in _FRAMES:
            if frame is not None or len(body) < 6:
                return
            frame = (_FRAMES[marker], set(body[6 : 6 + 3 * body[5] : 3]))
        elif marker == 0xDA:
            if frame is None or not body or len(body) < 4 + 2 * body[0]:
                return
            scans += 1
            if scans > MAX_SCANS:
                raise ImageTooLarge(
                    f"The JPEG has more than {MAX_SCANS} scans; the limit stops decompression "
                    "bombs."
                )
            count = body[0]
            first, last, low_bit = body[1 + 2 * count], body[2 + 2 * count], body[3 + 2 * count]
            if not frame[0]:  # sequential: a scan sends all of its components' coefficients
                bits = _ALL_COEFFICIENTS
            elif low_bit & 0x0F == 0 and first <= last <= 63:
                bits = (1 << (last + 1)) - (1 << first)
            else:
                bits = 0
            for component in body[1 : 1 + 2 * count : 2]:
                sent[component] = sent.get(component, 0) | bits
            if not frame[0] and all(sent.get(c) == _ALL_COEFFICIENTS for c in frame[1]):
                return  # complete; libjpeg warns itself if the scan stops early
    raise ImageTooLarge(
        f"The JPEG has more than {MAX_SEGMENTS} marker segments; the limit stops decompression "
        "bombs."
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

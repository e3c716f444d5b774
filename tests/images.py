"""Test images generated in code, so tests need no binary fixtures and are reproducible.

Every generator is deterministic: the same arguments give the same pixels on every machine
(numpy's PCG64 generator and Pillow's resampling are both platform independent).
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image, ImageFilter


def photo_like(seed: int, size: tuple[int, int] = (256, 192)) -> Image.Image:
    """A smooth random RGB image, like a photo's low frequencies: coarse noise upscaled + blur.

    Large structures give PDQ a high quality score and make hashes stable under re-encoding.
    """
    rng = np.random.default_rng(seed)
    width, height = size
    coarse = rng.integers(0, 256, size=(12, 16, 3), dtype=np.uint8)
    img = Image.fromarray(coarse, "RGB").resize((width, height), Image.Resampling.BICUBIC)
    # A second, finer layer of detail, so the image is not only a few blobs.
    fine = rng.integers(0, 256, size=(48, 64, 3), dtype=np.uint8)
    detail = Image.fromarray(fine, "RGB").resize((width, height), Image.Resampling.BILINEAR)
    img = Image.blend(img, detail, 0.3)
    return img.filter(ImageFilter.GaussianBlur(radius=max(1, min(width, height) // 150)))


def gradient(size: tuple[int, int] = (256, 256)) -> Image.Image:
    """A diagonal RGB gradient: red grows left to right, green top to bottom, blue crosswise."""
    width, height = size
    x = np.linspace(0, 255, width)[None, :].repeat(height, axis=0)
    y = np.linspace(0, 255, height)[:, None].repeat(width, axis=1)
    rgb = np.stack([x, y, (x + 255 - y) / 2], axis=-1)
    return Image.fromarray(np.rint(rgb).astype(np.uint8), "RGB")


def blurred_checkerboard(size: tuple[int, int] = (256, 256), cells: int = 7) -> Image.Image:
    """A greyscale checkerboard of ``cells`` x ``cells`` squares shifted off the image grid
    (a board aligned with the image is so symmetric its pHash is almost all zeros), softened by
    a Gaussian blur."""
    width, height = size
    ys, xs = np.mgrid[0:height, 0:width]
    cx = (xs + width // (3 * cells)) * cells // width
    cy = (ys + height // (5 * cells)) * cells // height
    board = ((cx + cy) % 2 * 255).astype(np.uint8)
    return Image.fromarray(board, "L").filter(ImageFilter.GaussianBlur(radius=3))


def rings(size: tuple[int, int] = (256, 256)) -> Image.Image:
    """Concentric colour rings, off centre (so the image is not symmetric)."""
    width, height = size
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    r = np.hypot(xs - width * 0.4, ys - height * 0.35)
    rgb = np.stack(
        [127.5 + 127.5 * np.sin(r / 9), 127.5 + 127.5 * np.cos(r / 13), 255 * xs / width],
        axis=-1,
    )
    return Image.fromarray(np.rint(rgb).astype(np.uint8), "RGB")


def encode(img: Image.Image, fmt: str, **params: object) -> bytes:
    out = io.BytesIO()
    img.save(out, format=fmt, **params)
    return out.getvalue()


def jpeg_bytes(img: Image.Image, quality: int = 90, **params: object) -> bytes:
    return encode(img, "JPEG", quality=quality, **params)


def png_bytes(img: Image.Image, **params: object) -> bytes:
    return encode(img, "PNG", **params)


def png_header_only(width: int, height: int, *, bit_depth: int = 8, colour: int = 2) -> bytes:
    """A valid PNG signature and IHDR chunk declaring ``width`` x ``height``, with one tiny IDAT
    and IEND: a 'decompression bomb' header costing under 100 bytes."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + chunk(b"IEND", b"")
    )


def png_bomb(width: int, height: int) -> bytes:
    """A real decompression bomb: an all-zero 1-bit greyscale PNG of ``width`` x ``height``,
    compressed to a few kilobytes per hundred megapixels (streamed, never held uncompressed)."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)

    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed 1-bit pixels
    comp = zlib.compressobj(9)
    parts = [comp.compress(row * min(height, 1024)) for _ in range(height // 1024)]
    parts.append(comp.compress(row * (height % 1024)))
    parts.append(comp.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", b"".join(parts))
        + chunk(b"IEND", b"")
    )


def boxed(img: Image.Image, fmt: str, quality: int = 90, **params: object) -> bytes:
    """``img`` as a HEIF (pillow-heif, HEVC) or AVIF (Pillow, AV1) file, made in memory."""
    out = io.BytesIO()
    if fmt == "HEIF":
        import pillow_heif

        pillow_heif.from_pillow(img).save(out, quality=quality, **params)
    else:
        img.save(out, fmt, quality=quality, **params)
    return out.getvalue()


def with_ispe(data: bytes, width: int, height: int) -> bytes:
    """A HEIF/AVIF file with every ``ispe`` property declaring ``width`` x ``height``."""
    out, at = bytearray(data), 0
    while (at := data.find(b"ispe", at + 1)) > 0:
        out[at + 8:at + 16] = struct.pack(">II", width, height)
    return bytes(out)


def clip(frames: list[np.ndarray], fps: int = 24, fmt: str = "mp4", codec: str = "libx264",
         crf: int = 23, audio: bool = False) -> bytes:
    """A video of ``frames`` (H x W x 3 uint8, even sizes for 4:2:0), made in memory by PyAV."""
    import av

    out = io.BytesIO()
    with av.open(out, "w", format=fmt) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        if codec == "libx264":
            stream.options = {"preset": "ultrafast", "crf": str(crf)}
        sound = container.add_stream("aac", rate=16_000) if audio else None
        for i, pixels in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(pixels), format="rgb24")
            container.mux(stream.encode(frame))
            if sound is not None and i % max(1, fps // 10) == 0:
                tone = av.AudioFrame.from_ndarray(np.zeros((1, 1600), np.float32), format="fltp",
                                                  layout="mono")
                tone.sample_rate = 16_000
                container.mux(sound.encode(tone))
        container.mux(stream.encode())
        if sound is not None:
            container.mux(sound.encode())
    return out.getvalue()


def pan(seed: int, seconds: float, fps: int = 24, size: tuple[int, int] = (640, 360),
        travel: float = 0.3) -> list[np.ndarray]:
    """Frames of a camera panning across a photo-like picture ``travel`` of its width."""
    width, height = size
    wide = np.asarray(photo_like(seed, (int(width * (1 + travel)) + 2, height)))
    count = max(1, round(seconds * fps))
    shift = [round(i * width * travel / max(1, count - 1)) for i in range(count)]
    return [wide[:, s:s + width] for s in shift]


def slideshow(seeds: list[int], seconds_each: float, fps: int = 24,
              size: tuple[int, int] = (640, 360)) -> list[np.ndarray]:
    """Frames of still pictures shown one after another."""
    out = []
    for seed in seeds:
        picture = np.asarray(photo_like(seed, size))
        out += [picture] * max(1, round(seconds_each * fps))
    return out

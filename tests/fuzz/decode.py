"""Coverage-guided fuzzing of image decoding and hashing with atheris (libFuzzer for Python).

The target feeds arbitrary bytes to :func:`registry.hashing.compute_signals`, the one entry
point every upload goes through (decode with the JPEG draft fast path or without it, orientation,
mode conversion, PDQ, pHash, content box, local features). An :class:`ImageError` is the right
answer to a bad file; anything else escaping is a bug, and so is a hang (libFuzzer ``-timeout``)
or a memory blow-up (one input over :data:`INPUT_MB`, measured by :func:`bounded`). Pillow's
own Python plugins are instrumented, so the fuzzer is guided through the format parsers
written in Python (PNG chunks, GIF blocks, TIFF tags, EXIF); the C decoders run uninstrumented.

Run: ``python -m tests.fuzz.decode CORPUS_DIR [libFuzzer flags]`` (``bench/fuzz.py`` runs it for
long and reports; ``tests/test_fuzz.py`` for a bounded time in ``make test``). ``--seeds DIR``
writes the generated seed corpus (every mode, every accepted format, animations, EXIF and ICC
variants) into DIR first.

The pixel limit is lowered to :data:`FUZZ_MAX_PIXELS` while fuzzing: a legitimate 50 MP photo
needs more than the 512 MiB the fuzzer allows a run; bombs and huge headers are refused at any
limit before a pixel is decoded (tests/test_hashing_decode.py checks that at the real one).
"""

from __future__ import annotations

import contextlib
import io
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from PIL import Image

# PIL is imported inside the functions: under the fuzzer it must first be imported inside
# atheris.instrument_imports (main), or its plugins get no coverage feedback.
FUZZ_MAX_PIXELS = 4_000_000
INPUT_MB = 512  # the memory one input may take above what the process held before it
MODES = ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "CMYK", "YCbCr", "I", "I;16", "F")


def _picture(seed: int, size: tuple[int, int]) -> Image.Image:
    from PIL import Image

    rng = np.random.default_rng(seed)
    w, h = size
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([(x * 255 // max(1, w - 1)), (y * 255 // max(1, h - 1)),
                     ((x + y) * 127 // max(1, w + h - 2))], axis=2)
    noise = rng.integers(0, 40, (h, w, 3))
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8), "RGB")


def _save(img: Image.Image, fmt: str, **params: object) -> bytes | None:
    out = io.BytesIO()
    try:
        img.save(out, fmt, **params)
    except (OSError, ValueError, KeyError, TypeError):
        return None  # this mode cannot be written in this format
    return out.getvalue()


def seeds() -> dict[str, bytes]:
    """Small valid files of every mode in every accepted format, plus the shapes bugs hide in:
    animations, EXIF orientations, ICC profiles, progressive and CMYK JPEGs, 16-bit PNGs, and
    JPEGs that stop early."""
    from PIL import Image

    out: dict[str, bytes] = {}
    rgb = _picture(1, (48, 32))
    for mode in MODES:
        img = rgb.convert(mode) if mode not in ("I;16", "PA") else (
            Image.fromarray(np.asarray(rgb.convert("L"), np.uint16) * 257)
            if mode == "I;16" else rgb.convert("P").convert("PA"))
        for fmt in ("PNG", "JPEG", "GIF", "WEBP", "BMP", "TIFF", "AVIF"):
            data = _save(img, fmt)
            if data is not None:
                out[f"{mode.replace(';', '')}.{fmt.lower()}"] = data
    frames = [_picture(i, (40, 30)) for i in range(3)]
    for fmt, params in (("GIF", {"duration": 50, "loop": 0}), ("PNG", {"duration": 50}),
                        ("WEBP", {"duration": 50})):
        data = _save(frames[0], fmt, save_all=True, append_images=frames[1:], **params)
        if data is not None:
            out[f"animated.{fmt.lower()}"] = data
    for orientation in (3, 6, 8):
        exif = Image.Exif()
        exif[0x0112] = orientation
        data = _save(rgb, "JPEG", exif=exif.tobytes())
        if data is not None:
            out[f"exif{orientation}.jpeg"] = data
    icc = bytes(128) + b"acspfuzz" + bytes(120)
    for fmt in ("JPEG", "PNG"):
        data = _save(rgb, fmt, icc_profile=icc)
        if data is not None:
            out[f"icc.{fmt.lower()}"] = data
    for name, data in (("progressive.jpeg", _save(rgb, "JPEG", progressive=True)),
                       ("cmyk.jpeg", _save(rgb.convert("CMYK"), "JPEG")),
                       ("big-draft.jpeg", _save(_picture(2, (1100, 1030)), "JPEG", quality=40)),
                       ("lzw.tiff", _save(rgb, "TIFF", compression="tiff_lzw")),
                       ("lossless.webp", _save(rgb, "WEBP", lossless=True))):
        if data is not None:
            out[name] = data
    out.update(_jpeg_edge_seeds(rgb))
    import pillow_heif

    heif = io.BytesIO()
    pillow_heif.from_pillow(rgb).save(heif, quality=80)
    out["photo.heic"] = heif.getvalue()
    return out


def _jpeg_edge_seeds(rgb: Image.Image) -> dict[str, bytes]:
    """JPEGs that stop early, whole or not: an end marker (EOI) after a cut, over the middle,
    or at a scan boundary; restart markers; data after the EOI; stray bytes; YCCK; MPO."""
    import simplejpeg
    from PIL import Image

    out: dict[str, bytes] = {}
    base = _save(rgb, "JPEG")
    progressive = _save(rgb, "JPEG", progressive=True)
    restarts = _save(rgb, "JPEG", restart_marker_blocks=2)
    mpo = _save(rgb, "MPO", save_all=True, append_images=[_picture(4, rgb.size)])
    assert base and progressive and restarts and mpo
    out["cut-eoi.jpeg"] = base[: len(base) // 2] + b"\xff\xd9"
    out["eoi-mid.jpeg"] = base[: len(base) // 2] + b"\xff\xd9" + base[len(base) // 2 + 2 :]
    out["progressive-cut-eoi.jpeg"] = progressive[: len(progressive) * 2 // 3] + b"\xff\xd9"
    scans = [i for i in range(len(progressive) - 1) if progressive[i : i + 2] == b"\xff\xda"]
    out["progressive-scan-cut.jpeg"] = progressive[: scans[len(scans) // 2]] + b"\xff\xd9"
    out["restarts.jpeg"] = restarts
    out["restarts-cut-eoi.jpeg"] = restarts[: len(restarts) // 2] + b"\xff\xd9"
    out["trailing.jpeg"] = base + b"\x00" * 16 + base
    at = base.index(b"\xff\xdb")
    out["stray-byte.jpeg"] = base[:at] + b"\x00" + base[at:]
    out["ycck.jpeg"] = simplejpeg.encode_jpeg(np.asarray(rgb.convert("CMYK")), 90, "CMYK", "420")
    out["mpo.jpeg"] = mpo
    grey = np.asarray(rgb).copy()
    grey[16:, 24:] = 128
    out["grey-corner.jpeg"] = _save(Image.fromarray(grey, "RGB"), "JPEG") or base
    return out


def target(data: bytes) -> None:
    """One fuzz input: a bad file may raise an ImageError, nothing else."""
    from registry.errors import ImageError
    from registry.hashing import DecodeOptions, compute_signals

    for options in (DecodeOptions(max_pixels=FUZZ_MAX_PIXELS),
                    DecodeOptions(max_pixels=FUZZ_MAX_PIXELS, draft_size=0)):
        with contextlib.suppress(ImageError):
            compute_signals(data, options)
        if not data.startswith(b"\xff\xd8"):
            return  # the draft option matters only to JPEGs


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def bounded(data: bytes) -> None:
    """:func:`target`, failing when one input takes more than :data:`INPUT_MB` of memory: the
    process's peak RSS is reset before it (Linux ``clear_refs`` 5) and read after it.
    libFuzzer's own ``-rss_limit_mb`` caps the whole process instead, which grows with the
    fuzzer's in-memory corpus (measured: 207 MB to 800 MB in 8,000 inputs while the same inputs
    replayed in a loop hold 89 MB flat)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        target(data)
        return
    before = _status_kb("VmRSS")
    target(data)
    grew = (_status_kb("VmHWM") - before) / 1024
    if grew > INPUT_MB:
        raise MemoryError(f"one input took {grew:.0f} MB (limit {INPUT_MB} MB)")


def main(argv: list[str]) -> int:
    import atheris

    with atheris.instrument_imports(include=["PIL", "registry.hashing"]):
        import PIL.BmpImagePlugin
        import PIL.GifImagePlugin
        import PIL.JpegImagePlugin
        import PIL.PngImagePlugin
        import PIL.TiffImagePlugin
        import PIL.WebPImagePlugin

        import registry.hashing  # noqa: F401
    del PIL
    if "--seeds" in argv:
        at = argv.index("--seeds")
        folder = Path(argv[at + 1])
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in seeds().items():
            (folder / name).write_bytes(data)
        del argv[at:at + 2]
    for data in seeds().values():  # warm up: lazy imports (scipy's FFT for pHash) and caches
        target(data)
    atheris.Setup(argv, bounded)
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main(list(sys.argv)))

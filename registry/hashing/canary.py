"""Canary images: benign, generated test pictures whose hashes sit in the ``canary`` bank, so a
platform can check its integration end to end without touching real abuse material."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

COUNT = 4


def canary_image(n: int, size: tuple[int, int] = (800, 600)) -> bytes:
    """Canary ``n`` as PNG bytes: a seeded smooth colour field with a label, deterministic."""
    rng = np.random.default_rng(1000 + n)
    field = Image.fromarray((rng.random((9, 12, 3)) * 255).astype(np.uint8))
    img = field.resize(size, Image.Resampling.BICUBIC).filter(ImageFilter.GaussianBlur(3))
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=42)
    draw.rectangle((40, 40, 560, 110), fill=(255, 255, 255))
    draw.text((56, 52), f"TAKEDOWN CANARY {n + 1}", fill=(0, 0, 0), font=font)
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()

"""Altered copies of an image, as they circulate: the transform families of bench/accuracy.py.

Every transform is a pure function ``(image, rng) -> image`` (PIL RGB in, PIL RGB out), so a
copy can be regenerated from the seed alone. The copies are made in memory and never saved.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont, ImageOps

Transform = Callable[[Image.Image, np.random.Generator], Image.Image]

WORDS = ("omg", "look", "who", "is", "this", "lol", "class", "2-3", "teacher", "wow", "send",
         "to", "group", "haha", "real?", "ㅋㅋㅋ")


def jpeg(img: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def resize(img: Image.Image, scale: float) -> Image.Image:
    w, h = img.size
    return img.resize((max(8, round(w * scale)), max(8, round(h * scale))),
                      Image.Resampling.BILINEAR)


def crop(img: Image.Image, keep: float, fx: float, fy: float) -> Image.Image:
    """Keep ``keep`` of each side; (fx, fy) in [0, 1] place the window (0.5 = centred)."""
    w, h = img.size
    cw, ch = round(w * keep), round(h * keep)
    x, y = round((w - cw) * fx), round((h - ch) * fy)
    return img.crop((x, y, x + cw, y + ch))


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # very old Pillow
        return ImageFont.load_default()


def _text(rng: np.random.Generator, n: int) -> str:
    return " ".join(str(rng.choice(WORDS)) for _ in range(n))


def caption(img: Image.Image, rng: np.random.Generator, where: str, overlay: bool) -> Image.Image:
    """A meme caption: a solid bar with text added above/below (or laid over the picture)."""
    w, h = img.size
    bar = max(12, round(h * rng.uniform(0.12, 0.2)))
    bg, fg = ((255, 255, 255), (0, 0, 0)) if rng.random() < 0.6 else ((0, 0, 0), (255, 255, 255))
    strip = Image.new("RGB", (w, bar), bg)
    draw = ImageDraw.Draw(strip)
    font = _font(max(8, round(bar * 0.45)))
    draw.text((round(w * 0.04), round(bar * 0.25)), _text(rng, 4), fill=fg, font=font)
    if overlay:
        out = img.copy()
        out.paste(strip, (0, 0 if where == "top" else h - bar))
        return out
    out = Image.new("RGB", (w, h + bar), bg)
    out.paste(strip, (0, 0 if where == "top" else h))
    out.paste(img, (0, bar if where == "top" else 0))
    return out


def frame(img: Image.Image, fraction: float, colour: tuple[int, int, int]) -> Image.Image:
    w, h = img.size
    return ImageOps.expand(img, border=max(2, round(max(w, h) * fraction)), fill=colour)


def letterbox(img: Image.Image, aspect: float, colour: tuple[int, int, int]) -> Image.Image:
    """Pad to ``aspect`` (width / height), as a video frame or a square post would."""
    w, h = img.size
    if w / h < aspect:
        W, H = round(h * aspect), h
    else:
        W, H = w, round(w / aspect)
    out = Image.new("RGB", (W, H), colour)
    out.paste(img, ((W - w) // 2, (H - h) // 2))
    return out


def screenshot(img: Image.Image, rng: np.random.Generator,
               truth: list[tuple[int, int, int, int]] | None = None) -> Image.Image:
    """A phone screenshot of a chat or feed: status bar, app header, the picture scaled to the
    screen width (sometimes with margins), text below, then downscaled and re-encoded."""
    W, H = 1170, 2532
    dark = rng.random() < 0.4
    bg = (0, 0, 0) if dark else (255, 255, 255)
    ink = (235, 235, 235) if dark else (20, 20, 20)
    screen = Image.new("RGB", (W, H), bg)
    draw = ImageDraw.Draw(screen)
    draw.text((60, 40), f"{rng.integers(1, 12)}:{rng.integers(10, 59)}", fill=ink, font=_font(44))
    for i in range(3):  # signal, wifi, battery icons
        draw.rectangle((W - 260 + i * 70, 50, W - 215 + i * 70, 85), fill=ink)
    header = tuple(int(c) for c in rng.integers(0, 255, 3)) if rng.random() < 0.5 else bg
    draw.rectangle((0, 130, W, 300), fill=header)
    draw.text((150, 185), _text(rng, 2), fill=ink if header == bg else (255, 255, 255),
              font=_font(56))
    margin = int(rng.choice([0, 0, 40, 120]))
    pw = W - 2 * margin
    ph = round(img.height * pw / img.width)
    ph = min(ph, H - 700)
    pw2 = round(img.width * ph / img.height)
    top = 300 + int(rng.integers(0, 60))
    screen.paste(img.resize((pw2, ph), Image.Resampling.BICUBIC), ((W - pw2) // 2, top))
    if truth is not None:  # where the picture landed, in the downscaled screenshot
        x = (W - pw2) // 2
        truth.append(tuple(round(v * 2 / 5) for v in (x, top, x + pw2, top + ph)))
    y = top + ph + 40
    for _ in range(3):
        if y > H - 150:
            break
        draw.text((60, y), _text(rng, 5), fill=ink, font=_font(44))
        y += 70
    shot = screen.resize((W * 2 // 5, H * 2 // 5), Image.Resampling.BILINEAR)
    return jpeg(shot, 80)


def rotate(img: Image.Image, degrees: float) -> Image.Image:
    return img.rotate(degrees, resample=Image.Resampling.BICUBIC, expand=False, fillcolor=(0, 0, 0))


def photometric(img: Image.Image, kind: str) -> Image.Image:
    if kind == "brighter":
        return ImageEnhance.Brightness(img).enhance(1.25)
    if kind == "darker":
        return ImageEnhance.Brightness(img).enhance(0.75)
    if kind == "contrast+":
        return ImageEnhance.Contrast(img).enhance(1.3)
    if kind == "contrast-":
        return ImageEnhance.Contrast(img).enhance(0.7)
    if kind in ("gamma0.7", "gamma1.4"):
        g = float(kind[5:])
        lut = [round(255 * (i / 255) ** g) for i in range(256)] * 3
        return img.point(lut)
    if kind == "saturate":
        return ImageEnhance.Color(img).enhance(1.6)
    if kind == "blur":
        return img.filter(ImageFilter.GaussianBlur(1.5))
    if kind == "grey":
        return ImageOps.grayscale(img).convert("RGB")
    raise ValueError(kind)


def chat_chain(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Re-shared through chat apps: downscale, JPEG, slight crop, downscale again, JPEG again."""
    first = jpeg(resize(img, min(1.0, 1280 / max(img.size))), 85)
    cropped = crop(first, 0.97, rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7))
    return jpeg(resize(cropped, 0.8), 70)


@dataclass(frozen=True)
class Variant:
    family: str
    name: str
    apply: Transform


def _v(family: str, name: str, fn: Transform) -> Variant:
    return Variant(family, name, fn)


def variants() -> list[Variant]:
    out = []
    for q in (90, 70, 50, 30):
        out.append(_v("reencode", f"jpeg{q}", lambda im, r, q=q: jpeg(im, q)))
    for s in (0.25, 0.5, 0.75, 1.5):
        out.append(_v("resize", f"scale{s}", lambda im, r, s=s: jpeg(resize(im, s), 90)))
    for k in ("brighter", "darker", "contrast+", "contrast-", "gamma0.7", "gamma1.4",
              "saturate", "blur", "grey"):
        out.append(_v("photometric", k, lambda im, r, k=k: jpeg(photometric(im, k), 90)))
    out.append(_v("mirror", "flip", lambda im, r: jpeg(ImageOps.mirror(im), 90)))
    out.append(_v("mirror", "flip+scale0.5",
                  lambda im, r: jpeg(resize(ImageOps.mirror(im), 0.5), 80)))
    for keep in (0.9, 0.8, 0.7):
        fam = f"crop{round(keep * 100)}"
        out.append(_v(fam, "centre", lambda im, r, k=keep: jpeg(crop(im, k, .5, .5), 90)))
        out.append(_v(fam, "corner", lambda im, r, k=keep: jpeg(crop(im, k, 0, 0), 90)))
        out.append(_v(fam, "random", lambda im, r, k=keep: jpeg(
            crop(im, k, r.uniform(0, 1), r.uniform(0, 1)), 90)))
    for where in ("top", "bottom"):
        out.append(_v("caption", f"bar-{where}", lambda im, r, w=where: jpeg(
            caption(im, r, w, overlay=False), 85)))
        out.append(_v("caption", f"overlay-{where}", lambda im, r, w=where: jpeg(
            caption(im, r, w, overlay=True), 85)))
    for colour, cname in (((0, 0, 0), "black"), ((255, 255, 255), "white")):
        out.append(_v("border", f"frame-{cname}", lambda im, r, c=colour: jpeg(
            frame(im, r.uniform(0.03, 0.1), c), 90)))
        out.append(_v("border", f"letterbox16:9-{cname}", lambda im, r, c=colour: jpeg(
            letterbox(im, 16 / 9, c), 90)))
        out.append(_v("border", f"square-{cname}", lambda im, r, c=colour: jpeg(
            letterbox(im, 1.0, c), 90)))
    for i in range(3):
        out.append(_v("screenshot", f"phone{i}", lambda im, r: screenshot(im, r)))
    for deg in (3, 5, 10):
        fam = f"rotate{deg}"
        out.append(_v(fam, f"+{deg}", lambda im, r, d=deg: jpeg(rotate(im, d), 90)))
        out.append(_v(fam, f"-{deg}", lambda im, r, d=deg: jpeg(rotate(im, -d), 90)))
    out.append(_v("chat", "chain", chat_chain))
    return out

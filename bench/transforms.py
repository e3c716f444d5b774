"""Altered copies of an image, as they circulate: the transform families of bench/accuracy.py.

Every transform is a pure function ``(image, rng) -> image`` (PIL RGB in, PIL RGB out), so a
copy can be regenerated from the seed alone. The copies are made in memory and never saved.
"""

from __future__ import annotations

import colorsys
import io
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont, ImageOps

Transform = Callable[[Image.Image, np.random.Generator], Image.Image]

WORDS = ("omg", "look", "who", "is", "this", "lol", "class", "2-3", "teacher", "wow", "send",
         "to", "group", "haha", "real?", "ㅋㅋㅋ")
PLACES = ("top", "middle", "bottom")  # where caption-over text goes


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
               truth: list[tuple[int, int, int, int]] | None = None, *,
               dark: bool | None = None) -> Image.Image:
    """A phone screenshot of a chat or feed: status bar, app header, the picture scaled to the
    screen width (sometimes with margins), text below, then downscaled and re-encoded.

    ``dark`` forces the dark (True) or light (False) theme; None draws it (40% dark). The draw
    is made either way, so the rest of the random stream is the same in all three cases."""
    W, H = 1170, 2532
    drawn_dark = rng.random() < 0.4
    if dark is None:
        dark = drawn_dark
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


def _side(v: float, limit: int) -> int:
    """A length in pixels: rounded, at least 1, at most ``limit``."""
    return max(1, min(limit, round(v)))


def _bright(rng: np.random.Generator) -> tuple[int, int, int]:
    """A saturated, light colour (random hue), as stickers are."""
    r, g, b = colorsys.hsv_to_rgb(rng.uniform(0, 1), rng.uniform(0.7, 1.0), rng.uniform(0.85, 1.0))
    return round(r * 255), round(g * 255), round(b * 255)


def _mask_of(size: tuple[int, int],
             paint: Callable[[ImageDraw.ImageDraw], None]) -> npt.NDArray[np.bool_]:
    """The pixels ``paint`` touches when it draws with ink 255 on a black canvas of ``size``
    (an RGB one: shapes with wide outlines are rasterised differently in mode L)."""
    canvas = Image.new("RGB", size)
    paint(ImageDraw.Draw(canvas))
    return np.asarray(np.asarray(canvas).any(axis=2), bool)


@dataclass(frozen=True)
class _Caption:
    """Text laid straight over a picture: one line per entry, each at its (x, y)."""

    lines: tuple[str, ...]
    xy: tuple[tuple[float, float], ...]
    font: ImageFont.FreeTypeFont | ImageFont.ImageFont
    stroke: int
    white: bool

    def draw(self, draw: ImageDraw.ImageDraw, mask: bool = False) -> None:
        fill, edge = ((255, 255, 255), (0, 0, 0)) if self.white else ((0, 0, 0), (255, 255, 255))
        for line, xy in zip(self.lines, self.xy, strict=True):
            draw.text(xy, line, fill=255 if mask else fill, font=self.font,
                      stroke_width=self.stroke, stroke_fill=255 if mask else edge)


def _plan_caption(size: tuple[int, int], rng: np.random.Generator, where: str) -> _Caption:
    """One or two lines of 3-5 words, 8-12% of the height high (smaller when they would not fit
    the width), centred, at the top, middle or bottom; white text outlined in black or the
    reverse."""
    w, h = size
    white = bool(rng.random() < 0.7)
    lines = tuple(_text(rng, int(rng.integers(3, 6))) for _ in range(int(rng.integers(1, 3))))
    px = max(4, round(h * rng.uniform(0.08, 0.12)))
    measure = ImageDraw.Draw(Image.new("L", (1, 1)))
    for _ in range(3):  # shrink the font until the widest line fits 92% of the width
        font = _font(px)
        stroke = max(1, round(px * 0.08))
        boxes = [measure.textbbox((0, 0), line, font=font, stroke_width=stroke) for line in lines]
        widest = max(b[2] - b[0] for b in boxes)
        if widest <= 0.92 * w or px == 4:
            break
        px = max(4, int(px * 0.92 * w / widest))
    step = round(px * 1.2) + 2 * stroke
    block = step * len(lines)
    margin = round(h * 0.04)
    top = {"top": margin, "middle": (h - block) // 2, "bottom": h - block - margin}[where]
    xy = tuple((max(0, (w - (b[2] - b[0])) // 2) - b[0], max(0, top) + i * step - b[1])
               for i, b in enumerate(boxes))
    return _Caption(lines, xy, font, stroke, white)


def caption_over(img: Image.Image, rng: np.random.Generator, where: str) -> Image.Image:
    """Meme text drawn over the picture itself, without a bar (``where``: top, middle, bottom)."""
    out = img.copy()
    _plan_caption(out.size, rng, where).draw(ImageDraw.Draw(out))
    return out


@dataclass(frozen=True)
class _Sticker:
    """A flat overlay: ``kind`` circle, rounded (rectangle), star or emoji, centred on (cx, cy);
    ``rx``, ``ry`` are half its width and height (star, circle, emoji: rx == ry)."""

    kind: str
    cx: float
    cy: float
    rx: float
    ry: float
    fill: tuple[int, int, int]
    outline: tuple[int, int, int] | None
    turn: float  # star: rotation in radians; emoji: 0 = smile, 1 = open mouth

    def scaled(self, f: float) -> _Sticker:
        return _Sticker(self.kind, self.cx, self.cy, self.rx * f, self.ry * f, self.fill,
                        self.outline, self.turn)

    def draw(self, draw: ImageDraw.ImageDraw, mask: bool = False) -> None:
        box = (self.cx - self.rx, self.cy - self.ry, self.cx + self.rx, self.cy + self.ry)
        width = max(1, round(min(self.rx, self.ry) * 0.08))
        fill: int | tuple[int, int, int] = 255 if mask else self.fill
        # (the mask's outline ink differs from its fill: Pillow skips an outline of the same ink)
        edge = None if self.outline is None else (254 if mask else self.outline)
        if self.kind == "rounded":
            draw.rounded_rectangle(box, radius=max(1, round(min(self.rx, self.ry) * 0.35)),
                                   fill=fill, outline=edge, width=width)
        elif self.kind == "star":
            pts = [(self.cx + r * np.sin(self.turn + i * np.pi / 5),
                    self.cy - r * np.cos(self.turn + i * np.pi / 5))
                   for i, r in enumerate([self.rx, self.rx * 0.5] * 5)]
            draw.polygon([(float(x), float(y)) for x, y in pts], fill=fill, outline=edge,
                         width=width)
        else:  # circle, emoji
            draw.ellipse(box, fill=fill, outline=edge, width=width)
        if self.kind != "emoji" or mask:
            return
        r, ink = self.rx, (70, 40, 10)
        for side in (-1, 1):  # eyes
            ex, ey = self.cx + side * 0.35 * r, self.cy - 0.25 * r
            draw.ellipse((ex - 0.12 * r, ey - 0.16 * r, ex + 0.12 * r, ey + 0.16 * r), fill=ink)
        mouth = (self.cx - 0.55 * r, self.cy - 0.3 * r, self.cx + 0.55 * r, self.cy + 0.6 * r)
        if self.turn:
            draw.chord(mouth, 15, 165, fill=(150, 30, 30), outline=ink, width=width)
        else:
            draw.arc(mouth, 25, 155, fill=ink, width=max(1, round(r * 0.1)))


def _new_sticker(size: tuple[int, int], rng: np.random.Generator, emoji: bool) -> _Sticker:
    """A sticker at a random place, of 5-12% of the picture's area (emoji: 6-10%), inside it."""
    w, h = size
    area = w * h * (rng.uniform(0.06, 0.10) if emoji else rng.uniform(0.05, 0.12))
    kind = "emoji" if emoji else str(rng.choice(["circle", "rounded", "star"]))
    if kind == "rounded":
        aspect = rng.uniform(0.6, 1.6)
        rx, ry = np.sqrt(area * aspect) / 2, np.sqrt(area / aspect) / 2
    else:  # a 5-point star with inner radius r/2 covers about 1.47 r^2
        rx = ry = np.sqrt(area / (1.47 if kind == "star" else np.pi))
    rx, ry = min(float(rx), w / 2), min(float(ry), h / 2)
    if kind != "rounded":
        rx = ry = min(rx, ry)
    cx, cy = rng.uniform(rx, w - rx), rng.uniform(ry, h - ry)
    if emoji:
        return _Sticker(kind, cx, cy, rx, ry, (255, 204, 40), (190, 120, 0), float(rng.integers(2)))
    outline = (None, (255, 255, 255), (0, 0, 0))[int(rng.integers(3))]
    return _Sticker(kind, cx, cy, rx, ry, _bright(rng), outline, rng.uniform(0, 2 * np.pi))


def stickers(img: Image.Image, rng: np.random.Generator, emoji: bool = False,
             text: bool = False, budget: float = 0.25) -> Image.Image:
    """2-4 flat stickers (emoji: 2-3 smiley faces) at random places, with a stroked caption when
    ``text``; together they cover at most ``budget`` of the picture (a sticker that would take
    the union over it is shrunk, or left out)."""
    out = img.copy()
    draw = ImageDraw.Draw(out)
    cap = None
    covered: npt.NDArray[np.bool_] = np.zeros((out.height, out.width), bool)
    if text:
        cap = _plan_caption(out.size, rng, str(rng.choice(PLACES)))
        covered = _mask_of(out.size, partial(cap.draw, mask=True))
    limit = budget * covered.size
    placed = 0
    for _ in range(int(rng.integers(2, 4 if emoji else 5))):
        sticker = _new_sticker(out.size, rng, emoji)
        for f in (1.0, 0.8, 0.64, 0.5, 0.4):  # shrink it until the union fits, else leave it out
            union = covered | _mask_of(out.size, partial(sticker.scaled(f).draw, mask=True))
            if union.sum() <= limit:
                sticker.scaled(f).draw(draw)
                covered, placed = union, placed + 1
                break
    if cap is not None:
        cap.draw(draw)
    # the caption alone may take more than the budget on a tiny picture: then no sticker goes on
    assert covered.sum() <= limit or not placed, "the overlays cover more than the budget"
    return out


def synthetic_picture(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """A made-up picture with texture: smooth colour gradients, a finer colour pattern, random
    shapes and lines, then noise. Stands in for the other photo of a collage."""
    w, h = max(1, w), max(1, h)
    coarse = rng.integers(0, 256, (int(rng.integers(2, 5)), int(rng.integers(2, 5)), 3))
    fine = rng.integers(0, 256, (int(rng.integers(8, 17)), int(rng.integers(8, 17)), 3))
    up = [np.asarray(Image.fromarray(g.astype(np.uint8)).resize((w, h), Image.Resampling.BICUBIC),
                     np.float64) for g in (coarse, fine)]
    pic = Image.fromarray(np.clip(0.75 * up[0] + 0.25 * up[1], 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(pic)
    for _ in range(int(rng.integers(5, 12))):
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        x0, y0 = rng.uniform(-0.1, 0.9) * w, rng.uniform(-0.1, 0.9) * h
        x1, y1 = x0 + rng.uniform(0.05, 0.45) * w, y0 + rng.uniform(0.05, 0.45) * h
        kind = int(rng.integers(4))
        if kind == 0:
            draw.ellipse((x0, y0, x1, y1), fill=colour)
        elif kind == 1:
            draw.rectangle((x0, y0, x1, y1), fill=colour)
        elif kind == 2:
            draw.polygon([(x0, y1), ((x0 + x1) / 2, y0), (x1, y1)], fill=colour)
        else:
            draw.line((x0, y0, x1, y1), fill=colour, width=max(1, round(min(w, h) * 0.02)))
    noisy = np.asarray(pic, np.float64) + rng.normal(0, 8, (h, w, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def collage(img: Image.Image, rng: np.random.Generator, layout: str) -> Image.Image:
    """The picture combined with a synthetic one: ``two-up-h`` (side by side, each half the
    width), ``two-up-v`` (stacked), ``pip-large`` / ``pip-small`` (the picture as an inset of
    about 50% / 42% of a synthetic background's area). The long side stays within 1.2 times the
    picture's; the picture always covers at least 40% of the result."""
    w, h = img.size
    longest = int(1.2 * max(w, h))
    if layout in ("two-up-h", "two-up-v"):
        across = layout == "two-up-h"
        s = min(1.0, longest / (max(2 * w, h) if across else max(w, 2 * h)))
        pw, ph = max(1, round(w * s)), max(1, round(h * s))
        W, H = (2 * pw, ph) if across else (pw, 2 * ph)
        first = rng.random() < 0.5  # the registered picture on the left / top
        other = synthetic_picture(rng, pw, ph)
        out = Image.new("RGB", (W, H))
        slots = ((0, 0), (pw, 0) if across else (0, ph))
        out.paste(other, slots[int(first)])
        x, y = slots[1 - int(first)]
    elif layout in ("pip-large", "pip-small"):
        frac = rng.uniform(0.48, 0.54) if layout == "pip-large" else rng.uniform(0.41, 0.45)
        grow, stretch = rng.uniform(0.95, 1.1), rng.uniform(0.9, 1.1)
        W, H = _side(w * grow * stretch, longest), _side(h * grow, longest)
        pw = min(W, int(np.ceil(np.sqrt(frac * W * H * w / h))))
        ph = min(H, int(np.ceil(pw * h / w)))
        out = synthetic_picture(rng, W, H)
        x, y = int(rng.integers(0, W - pw + 1)), int(rng.integers(0, H - ph + 1))
    else:
        raise ValueError(layout)
    out.paste(img.resize((pw, ph), Image.Resampling.BICUBIC) if (pw, ph) != img.size else img,
              (x, y))
    assert pw * ph >= 0.4 * W * H, f"{layout}: the picture covers {pw * ph / (W * H):.0%}"
    return out


def random_crop(img: Image.Image, rng: np.random.Generator, keep: float) -> Image.Image:
    """Keep ``keep`` of each side, the window at a random place (at least 1 x 1 pixels)."""
    w, h = img.size
    cw, ch = _side(w * keep, w), _side(h * keep, h)
    fx, fy = rng.uniform(0, 1), rng.uniform(0, 1)
    x, y = round((w - cw) * fx), round((h - ch) * fy)
    return img.crop((x, y, x + cw, y + ch))


def orient(img: Image.Image, rng: np.random.Generator, op: Image.Transpose) -> Image.Image:
    """One of the dihedral transforms: a mirror, a flip, a quarter turn, a transposition."""
    return img.transpose(op)


def _then_jpeg(fn: Transform, quality: int) -> Transform:
    """``fn`` followed by a JPEG re-encode at ``quality``."""
    def apply(img: Image.Image, rng: np.random.Generator) -> Image.Image:
        return jpeg(fn(img, rng), quality)
    return apply


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
    # Added families: their seeds in bench/accuracy.py come from their positions, so the
    # families above keep their copies.
    for keep in (0.9, 0.8, 0.7):
        for i in range(1, 6):
            out.append(_v(f"crop{round(keep * 100)}r", f"r{i}",
                          _then_jpeg(partial(random_crop, keep=keep), 90)))
    for where in PLACES:
        out.append(_v("caption-over", f"over-{where}",
                      _then_jpeg(partial(caption_over, where=where), 85)))
    out.append(_v("sticker", "stickers", _then_jpeg(stickers, 85)))
    out.append(_v("sticker", "stickers+text", _then_jpeg(partial(stickers, text=True), 85)))
    out.append(_v("sticker", "emoji", _then_jpeg(partial(stickers, emoji=True), 85)))
    for layout in ("two-up-h", "two-up-v", "pip-large", "pip-small"):
        out.append(_v("collage", layout, _then_jpeg(partial(collage, layout=layout), 85)))
    for theme, dark in (("light", False), ("dark", True)):
        for i in range(3):
            out.append(_v(f"screenshot-{theme}", f"phone{i}", partial(screenshot, dark=dark)))
    out.append(_v("rotate15", "+15", lambda im, r: jpeg(rotate(im, 15), 90)))
    out.append(_v("rotate15", "-15", lambda im, r: jpeg(rotate(im, -15), 90)))
    out.append(_v("combo", "crop80+caption+jpeg60", lambda im, r: jpeg(
        caption_over(random_crop(im, r, 0.8), r, str(r.choice(PLACES))), 60)))
    out.append(_v("combo", "crop90+sticker+jpeg60", lambda im, r: jpeg(
        stickers(random_crop(im, r, 0.9), r), 60)))
    out.append(_v("combo", "screenshot+crop90", lambda im, r: jpeg(
        random_crop(screenshot(im, r), r, 0.9), 80)))
    out.append(_v("combo", "collage+jpeg60", lambda im, r: jpeg(collage(im, r, "two-up-h"), 60)))
    for name, op in (("mirror", Image.Transpose.FLIP_LEFT_RIGHT),
                     ("flip-v", Image.Transpose.FLIP_TOP_BOTTOM),
                     ("rot90", Image.Transpose.ROTATE_90),
                     ("rot180", Image.Transpose.ROTATE_180),
                     ("rot270", Image.Transpose.ROTATE_270),
                     ("transpose", Image.Transpose.TRANSPOSE),
                     ("transverse", Image.Transpose.TRANSVERSE)):
        out.append(_v("orientation", name, _then_jpeg(partial(orient, op=op), 90)))
    return out

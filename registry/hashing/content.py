"""Finding the picture inside a copy: trimming borders, caption bars and screenshot chrome.

Copies circulate framed: letterboxed, with a uniform border, with a caption bar added above or
below, or as a phone screenshot (status bar, app header, margins, text under the picture). PDQ
moves ~38 bits for a 1% shift (docs/accuracy.md), so the picture must be found to within a
pixel or two. We peel rows and columns from each side while they look like chrome:

- a *flat* row: at least ``flat`` of its pixels within ``tol`` of the row's median colour (a
  border, a bar, the screen background); it sets the current background colour;
- a *text* row, right after flat ones: at least ``text_alone`` of its pixels within ``tol`` of
  that background, or at least ``text`` of them and few mid-tones (``mid``): background plus
  high-contrast ink.

The same function runs on registered originals and on queries, so whatever it peels from an
original (a uniform sky, say) it peels from the copy too.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from PIL import Image

Box = tuple[int, int, int, int]  # left, top, right, bottom (exclusive), as PIL's crop takes

_WORK_SIDE = 1280  # analyse at most this many pixels per side (keeps it to a few ms)


@dataclass(frozen=True, slots=True)
class TrimRules:
    tol: int = 24
    flat: float = 0.93
    text: float = 0.4
    text_alone: float = 0.75
    min_ink: float = 0.02
    specks: float = 0.8
    max_run: float = 0.25
    mid: float = 0.15
    ink: int = 70
    max_side: float = 0.7  # never peel more than this fraction from one side
    min_keep: float = 0.1  # a box smaller than this fraction per axis is not trusted
    # Conservative: peel only the chrome whose colour is the edge's own (a frame, a caption
    # bar), stopping where another flat colour begins: that may be the picture's own sky.
    conservative: bool = False


FRAME_RULES = TrimRules(conservative=True)


def work_array(img: Image.Image) -> npt.NDArray[np.int16]:
    """What :func:`content_box` analyses: ``img`` reduced to at most :data:`_WORK_SIDE` px a
    side, channels first (3, h, w), so every per-line reduction runs over contiguous pixels.
    Computed once, it serves both rule sets of a query."""
    factor = max(1, -(-max(img.size) // _WORK_SIDE))
    small = img.reduce(factor) if factor > 1 else img
    return np.ascontiguousarray(np.asarray(small, dtype=np.int16).transpose(2, 0, 1))


def content_box(img: Image.Image, rules: TrimRules | None = None, *,
                work: npt.NDArray[np.int16] | None = None) -> Box:
    """The box of ``img`` that holds the picture (the whole image when nothing is peeled);
    ``work``: its :func:`work_array`, when already made."""
    rules = rules or TrimRules()
    a = work_array(img) if work is None else work
    h, w = a.shape[1:]
    top, bottom, left, right = 0, h, 0, w
    # A second pass starts its peel afresh at the new edge; the conservative box must not, or
    # it would peel the picture's own flat edge once the bar is gone.
    for _ in range(1 if rules.conservative else 3):
        before = (top, bottom, left, right)
        top = _peel(a[:, :, left:right], top, bottom, 1, rules)
        if top >= bottom:
            break  # nothing but chrome: a blank image
        bottom = _peel(a[:, :, left:right], bottom - 1, top - 1, -1, rules) + 1
        cols = a[:, top:bottom].transpose(0, 2, 1)
        left = _peel(cols, left, right, 1, rules)
        if left >= right:
            break
        right = _peel(cols, right - 1, left - 1, -1, rules) + 1
        if (top, bottom, left, right) == before:
            break
    if bottom - top < rules.min_keep * h or right - left < rules.min_keep * w:
        return (0, 0, img.width, img.height)
    scale_x, scale_y = img.width / w, img.height / h
    return (round(left * scale_x), round(top * scale_y), round(right * scale_x),
            round(bottom * scale_y))


def _peel(a: npt.NDArray[np.int16], start: int, stop: int, step: int, rules: TrimRules) -> int:
    """Walk lines ``a[:, start], a[:, start+step], ...`` (``a`` is channels, lines, pixels)
    while they are chrome; return the first line that is picture. Lines are measured in blocks
    (8, 16, 32, ... at a time: one numpy call per block, not per line); the walk over them is
    line by line."""
    n = abs(stop - start)
    count = min(n, int(rules.max_side * a.shape[1]))
    bg: npt.NDArray[np.int16] | None = None
    line = start
    if a.shape[2] == 0:
        return start
    done, block = 0, 8
    while done < count:
        k = min(block, count - done)
        rows = a[:, line + step * np.arange(k)]  # (3, k, pixels)
        medians = np.median(rows, axis=2).astype(np.int16)  # (3, k)
        within = (np.abs(rows - medians[:, :, None]) <= rules.tol).all(axis=0)
        flat = within.mean(axis=1)
        for j in range(k):
            median = medians[:, j]
            if flat[j] >= rules.flat:
                if rules.conservative and bg is not None and \
                        int(np.abs(median - bg).max()) > rules.tol:
                    return line
                if bg is None or not rules.conservative:
                    bg = median
            elif bg is None or not _is_text(rows[:, j], bg, rules):
                return line
            line += step
        done += k
        block *= 2
    return line


def _is_text(row: npt.NDArray[np.int16], bg: npt.NDArray[np.int16], rules: TrimRules) -> bool:
    """``row``: (3, pixels); ``bg``: (3,)."""
    diff = np.abs(row - bg[:, None]).max(axis=0)
    near = float((diff <= rules.tol).mean())
    mid = float(((diff > rules.tol) & (diff < rules.ink)).mean())
    if near >= rules.specks:  # background with a few specks (the tops of letters, an icon)
        return True
    ink = float((diff >= rules.ink).mean())
    if ink < rules.min_ink:  # no high-contrast ink: a dark or pale part of the picture
        return False
    if _longest_run(diff > rules.tol) > rules.max_run * len(diff):
        return False  # one long stretch of non-background: a picture between margins, not text
    return near >= rules.text_alone or (near >= rules.text and mid <= rules.mid)


def _longest_run(mask: npt.NDArray[np.bool_]) -> int:
    if not mask.any():
        return 0
    edges = np.flatnonzero(np.diff(np.concatenate(([0], mask.view(np.int8), [0]))))
    return int((edges[1::2] - edges[::2]).max())

"""The local-feature signal: keypoints with ORB binary descriptors, for copies PDQ cannot catch.

PDQ describes the whole frame, so a copy cut at another place, captioned, stickered or pasted
into a collage hashes far away (docs/accuracy.md). Local features describe small patches around
corners of the picture; a copy keeps most of its patches, and matching them with a consistent
geometric transform (:mod:`registry.index.local`) finds the registered picture inside the copy.

Definition (part of pipeline version 4; the browser port in ``static/js/hash/local.js`` follows
it step by step):

1. grey = Pillow ``convert("L")`` of the decoded RGB image (ITU-R 601 luma, as pHash uses);
2. resized with Pillow's LANCZOS so its area is :data:`REGISTER_AREA` pixels (registration) or
   :data:`QUERY_AREA` (queries; a copy may hold the picture at a smaller scale), aspect kept,
   in two passes: the width first, then the height;
3. OpenCV 4.12 ORB (the parameters of :func:`_orb`) finds up to 8x the wanted keypoints over
   its five finest pyramid levels (registration; when they hold fewer than the 112 wanted, a
   smooth picture, 4x over all eight levels; a query: 2x over all eight levels);
4. they are spread over a grid (``GRID`` cells a side, 6 x 6): each cell's strongest first,
   round by round, so a textured corner cannot take them all; the chosen ones are kept
   strongest first;
5. each keypoint is stored as 12-bit x and y (fractions of the analysed image's size), its
   orientation in 32 steps and its pyramid level, plus its 256-bit descriptor.

The packed layout (:func:`pack`): ``version u8, count u16, width u16, height u16``, then per
keypoint ``x:12 y:12 | angle:5 octave:3`` (4 bytes) and the 32-byte descriptor. 112 registered
keypoints take 4,039 bytes. No pixel data is kept; what an attacker could still recover from
descriptors and positions is measured in docs/accuracy.md ("Privacy").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt
from PIL import Image

from registry.domain import (
    LOCAL_HEADER,
    LOCAL_KEYPOINT_BYTES,
    LOCAL_MAX_KEYPOINTS,
    LOCAL_MIN_KEYPOINTS,
    Signal,
    SignalKind,
)
from registry.errors import InvalidHash

FORMAT_VERSION = 1
REGISTER_AREA = 180_000  # ~520 x 346: the evaluation photos at about their own size
QUERY_AREA = 400_000  # a copy may show the picture at ~0.6x: a collage half, a screenshot
REGISTER_KEYPOINTS = 112  # 4,039 bytes stored per registered image
QUERY_KEYPOINTS = 3000  # the first 1,000 (spread over the copy) are looked up in the index
REGISTER_GRID = 6
QUERY_GRID = 6
REGISTER_LEVELS = 5  # a registration keeps ORB's five finest pyramid levels (patches <= 64 px)
REGISTER_FOUND = 8  # ORB finds this many times the 112 kept, so the grid has cells to fill
FALLBACK_FOUND = 4  # ... or, with fewer than 112 on those levels, 4x over all eight levels
QUERY_FOUND = 2
MIN_KEYPOINTS = LOCAL_MIN_KEYPOINTS  # fewer (a flat or tiny picture): no local signal
MAX_KEYPOINTS = LOCAL_MAX_KEYPOINTS  # the most a query may send
_HEADER = LOCAL_HEADER
DESCRIPTOR_BYTES = 32
_META_BYTES = LOCAL_KEYPOINT_BYTES - DESCRIPTOR_BYTES
ANGLE_STEPS = 32


@dataclass(frozen=True, slots=True)
class LocalFeatures:
    """Keypoints of one analysed image. ``xy`` are pixel positions in the analysed image
    (after the 12-bit quantisation), ``angle`` in 0..31 steps of 11.25 degrees, ``octave`` the
    ORB pyramid level (0..7), ``descriptors`` (n, 32) bytes."""

    width: int
    height: int
    xy: npt.NDArray[np.float32]
    angle: npt.NDArray[np.uint8]
    octave: npt.NDArray[np.uint8]
    descriptors: npt.NDArray[np.uint8]

    def __len__(self) -> int:
        return int(self.descriptors.shape[0])

    def pack(self) -> bytes:
        n = len(self)
        qx = _quantise(self.xy[:, 0], self.width)
        qy = _quantise(self.xy[:, 1], self.height)
        meta = ((qx.astype(np.uint32) << 20) | (qy.astype(np.uint32) << 8)
                | (self.angle.astype(np.uint32) << 3) | self.octave.astype(np.uint32))
        return (_HEADER.pack(FORMAT_VERSION, n, self.width, self.height)
                + meta.astype(">u4").tobytes() + np.ascontiguousarray(self.descriptors).tobytes())

    def signal(self) -> Signal:
        return Signal(SignalKind.LOCAL, self.pack())


def _quantise(v: npt.NDArray[np.float32], size: int) -> npt.NDArray[np.int64]:
    # In float64, as the browser port computes it (float32 would round some halves otherwise).
    return np.clip(np.rint(v.astype(np.float64) / max(1, size - 1) * 4095), 0,
                   4095).astype(np.int64)


def unpack(blob: bytes) -> LocalFeatures:
    """The features of a packed local signal; :class:`InvalidHash` if it is malformed."""
    if len(blob) < _HEADER.size:
        raise InvalidHash("A local signal is too short to hold its header.")
    version, n, width, height = _HEADER.unpack_from(blob)
    if version != FORMAT_VERSION:
        raise InvalidHash(f"A local signal of format {version} is not understood (expected "
                          f"{FORMAT_VERSION}).")
    if not 1 <= n <= MAX_KEYPOINTS or width < 2 or height < 2:
        raise InvalidHash(f"A local signal holds 1-{MAX_KEYPOINTS} keypoints of an image at "
                          "least 2x2; this one does not.")
    want = _HEADER.size + n * (_META_BYTES + DESCRIPTOR_BYTES)
    if len(blob) != want:
        raise InvalidHash(f"A local signal with {n} keypoints is {want} bytes; this one is "
                          f"{len(blob)}.")
    o = _HEADER.size
    meta = np.frombuffer(blob, dtype=">u4", count=n, offset=o).astype(np.uint32)
    desc = np.frombuffer(blob, dtype=np.uint8, count=n * DESCRIPTOR_BYTES,
                         offset=o + n * _META_BYTES).reshape(n, DESCRIPTOR_BYTES)
    xy = np.empty((n, 2), dtype=np.float32)
    xy[:, 0] = (meta >> 20).astype(np.float32) / 4095 * (width - 1)
    xy[:, 1] = ((meta >> 8) & 0xFFF).astype(np.float32) / 4095 * (height - 1)
    return LocalFeatures(width, height, xy, ((meta >> 3) & 0x1F).astype(np.uint8),
                         (meta & 0x7).astype(np.uint8), desc)


def analysed(img: Image.Image, area: int, *, fast: bool = False) -> npt.NDArray[np.uint8]:
    """Step 1-2: the grey picture ORB sees, scaled to ``area`` pixels (up or down). ``fast``
    (a query, never a registration: the browser must make the same registration): a picture
    over twice the size is first reduced by a whole factor (a box mean), then LANCZOS."""
    grey = img.convert("L")
    scale = math.sqrt(area / (grey.width * grey.height))  # correctly rounded, as Math.sqrt
    w, h = max(1, round(grey.width * scale)), max(1, round(grey.height * scale))
    factor = int(1 / scale) if fast and scale < 0.5 else 1
    if factor > 1:
        grey = grey.reduce(factor)
    # Two explicit passes, horizontal then vertical (each rounded to 8 bits): one resize()
    # picks its pass order by a rule that changed between Pillow releases.
    if w != grey.width:
        grey = grey.resize((w, grey.height), Image.Resampling.LANCZOS)
    if h != grey.height:
        grey = grey.resize((w, h), Image.Resampling.LANCZOS)
    return np.asarray(grey, dtype=np.uint8)


def _orb(found: int, levels: int = 8) -> cv2.ORB:
    return cv2.ORB.create(nfeatures=found, scaleFactor=1.2, nlevels=levels, edgeThreshold=16,
                          firstLevel=0, WTA_K=2, scoreType=cv2.ORB_HARRIS_SCORE, patchSize=31,
                          fastThreshold=12)


def canonical_order(responses: npt.NDArray[np.float32], xy: npt.NDArray[np.float32],
                    octaves: npt.NDArray[np.uint8]) -> npt.NDArray[np.int64]:
    """Keypoints strongest first, ties by pyramid level, then y, then x (ORB never returns two
    keypoints at one position and level)."""
    order: npt.NDArray[np.int64] = np.lexsort((xy[:, 0], xy[:, 1], octaves, -responses))
    return order.astype(np.int64)


def spread(responses: npt.NDArray[np.float32], xy: npt.NDArray[np.float32], width: int,
           height: int, wanted: int, grid: int, by_round: bool = False) -> npt.NDArray[np.int64]:
    """Step 4: indices of the keypoints kept, strongest first (``by_round``: in the order they
    were taken). Round r takes the r-th strongest of every grid cell (ties by index); rounds
    are taken whole until ``wanted``."""
    n = len(responses)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    x, y = xy[:, 0].astype(np.float64), xy[:, 1].astype(np.float64)
    cx = np.minimum(grid - 1, (x * grid / width).astype(np.int64))
    cy = np.minimum(grid - 1, (y * grid / height).astype(np.int64))
    cell = cy * grid + cx
    index = np.arange(n)
    # Rank within the cell: cell first, then strongest first, ties by index.
    by_cell = np.lexsort((index, -responses, cell))
    sorted_cell = cell[by_cell]
    rank = np.empty(n, dtype=np.int64)
    rank[by_cell] = index - np.searchsorted(sorted_cell, sorted_cell, side="left")
    # Round first, then strength within the round: the first `wanted` of this order.
    chosen: npt.NDArray[np.int64] = np.lexsort((index, -responses, rank))[:wanted]
    if by_round:
        return chosen
    ordered: npt.NDArray[np.int64] = chosen[np.lexsort((chosen, -responses[chosen]))]
    return ordered


def extract(img: Image.Image, *, registration: bool) -> LocalFeatures | None:
    """The local features of an RGB image, or None when it has fewer than
    :data:`MIN_KEYPOINTS` (a flat, tiny or blank picture: no local signal, never an error).
    A registration's keypoints are strongest first; a query's in the order the spread took
    them (round by round), so that its first 1,000 cover the picture."""
    area = REGISTER_AREA if registration else QUERY_AREA
    wanted = REGISTER_KEYPOINTS if registration else QUERY_KEYPOINTS
    grid = REGISTER_GRID if registration else QUERY_GRID
    grey = analysed(img, area, fast=not registration)
    h, w = grey.shape
    if min(w, h) < 2 * 16 + 1:  # ORB needs its edge margin on both sides of the picture
        return None
    # ORB keeps its `found` strongest (Harris) over the pyramid: 8x the registration's 112 over
    # the five finest levels, 2x the query's 3,000 over all eight (measured on stickered copies:
    # the coarse levels' patches, up to 111 px, are the ones a sticker or a caption spoils, and
    # they are the generic blobs that two photos of one person share; for the query, 2x found
    # as many as 4x, at less cost). The query keeps all levels: a registered picture may be
    # shown zoomed in (a crop) or out (a collage) by up to the pyramid's range.
    orb = (_orb(REGISTER_FOUND * wanted, REGISTER_LEVELS) if registration
           else _orb(QUERY_FOUND * wanted))
    if registration:
        keypoints, descriptors = orb.detectAndCompute(grey, None)  # type: ignore[call-overload]
        if len(keypoints) < wanted:
            # A smooth picture has its corners on the coarse levels only (3 of the 2,808
            # evaluation photos): then all eight levels, as pipeline 3 registered them.
            orb = _orb(FALLBACK_FOUND * wanted)
            keypoints, descriptors = orb.detectAndCompute(  # type: ignore[call-overload]
                grey, None)
        if descriptors is None:
            return None
    else:  # descriptors only for the keypoints kept: 3,000 of up to 6,000 found
        keypoints = orb.detect(grey, None)
        descriptors = None
    if len(keypoints) < MIN_KEYPOINTS:
        return None
    xy: npt.NDArray[np.float32] = np.asarray(cv2.KeyPoint.convert(keypoints),
                                             dtype=np.float32).reshape(-1, 2)
    responses = np.array([k.response for k in keypoints], dtype=np.float32)
    octaves = np.array([k.octave & 7 for k in keypoints], dtype=np.uint8)
    angles = np.array([k.angle for k in keypoints], dtype=np.float32)
    # ORB returns its keypoints in an order its sort leaves unspecified (it differs between
    # builds, e.g. opencv.js); a canonical order first makes "ties by index" mean the same.
    order = canonical_order(responses, xy, octaves)
    keep = order[spread(responses[order], xy[order], w, h, wanted, grid,
                        by_round=not registration)]
    if descriptors is None:
        # ORB.compute keeps the detected positions and angles; given them in detection order
        # (level by level, as ORB groups them) it returns them in that order, each with the
        # descriptor detectAndCompute gives it.
        ascending = np.sort(keep)
        kept, computed = orb.compute(grey, tuple(keypoints[i] for i in ascending.tolist()))
        if computed is None or len(kept) != len(ascending):
            return None
        descriptors = np.empty((len(keypoints), DESCRIPTOR_BYTES), dtype=np.uint8)
        descriptors[ascending] = computed
    angle = (np.rint(angles[keep].astype(np.float64) / 360 * ANGLE_STEPS).astype(np.int64)
             % ANGLE_STEPS).astype(np.uint8)
    features = LocalFeatures(w, h, xy[keep], angle, octaves[keep],
                             np.ascontiguousarray(descriptors[keep], dtype=np.uint8))
    # Round-trip through the packed form, so the positions used here are the stored ones.
    return unpack(features.pack())

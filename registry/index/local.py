"""LocalIndex: registered local features, found by descriptor votes and verified by geometry.

Every registered image's strongest :data:`RETRIEVAL_KEYPOINTS` keypoints
(:mod:`registry.hashing.local`) go into one Hamming index of 256-bit ORB descriptors (the
bit-sampling :class:`~registry.index.sampled.SampledIndex`, approximate, or an exact one) under
composite ids ``signal_id * 128 + keypoint``; all its keypoints stay here by signal id. A query
image's descriptors are looked up to ``radius`` bits; each registered image gathers the
distinct keypoints of its own that were hit closely (its votes); the images with the most votes
are then compared with the query keypoint by keypoint (every pair within ``radius``, exactly)
and verified (:func:`verify`): one-to-one correspondences, a vote on the rotation between them
(ORB orientations), and a RANSAC similarity transform. The inliers of that transform, and the
fraction of the registered picture they span, are the evidence a tier is given on.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import faiss
import numpy as np
import numpy.typing as npt

from registry.domain import LOCAL_HEADER, LOCAL_KEYPOINT_BYTES, Signal, SignalKind
from registry.index.base import Codes, Ids
from registry.index.flat import FlatIndex
from registry.index.multi import MultiIndex
from registry.index.sampled import SampledIndex

KEYPOINT_SLOTS = 128  # composite id = signal_id * 128 + keypoint index
STORED_BYTES = 4040  # a registered signal's packed bytes, padded in snapshots (>= 7 + 112 * 36)
RANSAC_PX = 3.0  # reprojection error of an inlier, in pixels of the analysed query image
MIN_PAIRS = 6  # correspondences below this are not worth a RANSAC
MAX_SCALE = 6.0  # a copy shows the registered picture at 1/6 to 6 times its analysed size
VOTE_MARGIN = 16  # votes count hits this many bits inside the search radius
MIN_VOTES = 3  # a candidate needs this many of its keypoints hit before it is compared
MAX_CANDIDATES = 16  # the most-voted images compared and verified per query
RETRIEVAL_KEYPOINTS = 64  # the strongest keypoints of each image in the descriptor index
QUERY_LOOKUPS = 1000  # a query's first keypoints (spread over it) looked up in that index


ANGLE_STEPS = 32  # ORB orientation is stored in 32 steps (registry.hashing.local)


@dataclass(frozen=True, slots=True)
class Keypoints:
    """A local signal read back for matching: positions in the analysed image's pixels, the
    orientation steps and the (n, 32) descriptors. The layout is defined with the extraction in
    :mod:`registry.hashing.local`; this reader needs only the domain's layout constants."""

    width: int
    height: int
    xy: npt.NDArray[np.float32]
    angle: npt.NDArray[np.uint8]  # one byte each: a million images are held in memory
    descriptors: npt.NDArray[np.uint8]

    def __len__(self) -> int:
        return int(self.descriptors.shape[0])

    @classmethod
    def of(cls, signal: Signal | bytes) -> Keypoints:
        """Parse a local signal (already checked by :meth:`Signal.check_not_degenerate` or
        read from the store); ``ValueError`` if its size does not add up."""
        blob = signal.value if isinstance(signal, Signal) else signal
        if isinstance(signal, Signal) and signal.kind is not SignalKind.LOCAL:
            raise ValueError(f"a {signal.kind.value} signal has no keypoints")
        _, n, width, height = LOCAL_HEADER.unpack_from(blob)
        o = LOCAL_HEADER.size
        if len(blob) != o + n * LOCAL_KEYPOINT_BYTES or width < 2 or height < 2:
            raise ValueError("a local signal whose size does not match its keypoint count")
        meta = np.frombuffer(blob, dtype=">u4", count=n, offset=o).astype(np.int64)
        desc = np.frombuffer(blob, dtype=np.uint8, count=n * 32, offset=o + 4 * n)
        xy = np.empty((n, 2), dtype=np.float32)
        xy[:, 0] = (meta >> 20) / 4095 * (width - 1)
        xy[:, 1] = ((meta >> 8) & 0xFFF) / 4095 * (height - 1)
        return cls(width, height, xy, ((meta >> 3) & 0x1F).astype(np.uint8), desc.reshape(n, 32))


@dataclass(frozen=True, slots=True)
class Verified:
    """A registered image found in a query: its signal id, the inliers of the transform, the
    fraction of the registered picture their hull covers, and their median descriptor
    distance."""

    signal_id: int
    inliers: int
    coverage: float
    distance: int


class LocalIndex:
    """Implements the index side of local matching; ``inner`` holds the descriptors."""

    def __init__(self, inner: FlatIndex | MultiIndex | SampledIndex) -> None:
        self.inner = inner
        self.features: dict[int, Keypoints] = {}
        self.blobs: dict[int, bytes] = {}

    @property
    def bits(self) -> int:
        return STORED_BYTES * 8

    def __len__(self) -> int:
        return len(self.features)

    def add(self, ids: Ids, blobs: list[bytes]) -> None:
        keep_ids, codes = [], []
        for sid, blob in zip(ids.tolist(), blobs, strict=True):
            if sid in self.features:
                continue
            f = Keypoints.of(blob)
            if len(f) > KEYPOINT_SLOTS or len(blob) > STORED_BYTES:
                raise ValueError(f"local signal {sid}: {len(f)} keypoints, at most 112 stored")
            self.features[sid] = f
            self.blobs[sid] = blob
            n = min(len(f), RETRIEVAL_KEYPOINTS)  # stored strongest first
            keep_ids.append(sid * KEYPOINT_SLOTS + np.arange(n, dtype=np.int64))
            codes.append(f.descriptors[:n])
        if keep_ids:
            self.inner.add(np.concatenate(keep_ids), np.concatenate(codes))

    def remove(self, ids: Ids) -> int:
        gone = []
        for sid in ids.tolist():
            f = self.features.pop(sid, None)
            if f is not None:
                del self.blobs[sid]
                n = min(len(f), RETRIEVAL_KEYPOINTS)
                gone.append(sid * KEYPOINT_SLOTS + np.arange(n, dtype=np.int64))
        if gone:
            self.inner.remove(np.concatenate(gone))
        return len(gone)

    def _hits(self, query: Keypoints, radius: int) -> tuple[Ids, npt.NDArray[np.int64]]:
        """Registered keypoint ids hit by the query's descriptors, and their distances."""
        wanted = np.ascontiguousarray(query.descriptors[:QUERY_LOOKUPS])
        if isinstance(self.inner, SampledIndex):
            _, ids, dist = self.inner.pairs(wanted, radius)
            return ids, dist
        results = self.inner.search(wanted, radius)
        if not results:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        return (np.concatenate([r.ids for r in results]),
                np.concatenate([r.distances for r in results]).astype(np.int64))

    def candidates(self, query: Keypoints, radius: int,
                   max_candidates: int = MAX_CANDIDATES) -> list[int]:
        """Signal ids of the registered images with the most votes, most first."""
        if not self.features or len(query) == 0:
            return []
        rid, dist = self._hits(query, radius)
        # Votes: distinct registered keypoints hit closely. Counting query keypoints instead
        # lets a registered picture with generic texture outvote the right one (measured on
        # screenshots: the right picture was 20th-40th by query keypoints, 1st by these).
        close = np.unique(rid[dist <= radius - VOTE_MARGIN])
        owners, votes = np.unique(close // KEYPOINT_SLOTS, return_counts=True)
        ok = votes >= MIN_VOTES
        owners, votes = owners[ok], votes[ok]
        return [int(s) for s in owners[np.lexsort((owners, -votes))[:max_candidates]]]

    def search(self, query: Keypoints, radius: int, min_inliers: int,
               max_candidates: int = MAX_CANDIDATES) -> list[Verified]:
        """Registered images verified in ``query`` with at least ``min_inliers`` inliers,
        most inliers first (ties by signal id)."""
        chosen = self.candidates(query, radius, max_candidates)
        if not chosen:
            return []
        # Every keypoint of each candidate against every query keypoint, exactly: one range
        # search for all the candidates' keypoints, then each candidate's slice of it.
        regs = [(sid, f) for sid in chosen if (f := self.features.get(sid)) is not None]
        if not regs:
            return []
        flat = faiss.IndexBinaryFlat(256)
        flat.add(np.ascontiguousarray(query.descriptors))
        lims, d, qi = flat.range_search(
            np.ascontiguousarray(np.concatenate([f.descriptors for _, f in regs])), radius + 1)
        lims = lims.astype(np.int64)
        out = []
        row = 0
        for sid, registered in regs:
            n = len(registered)
            lo, hi = int(lims[row]), int(lims[row + n])
            ri = np.repeat(np.arange(n, dtype=np.int64), np.diff(lims[row:row + n + 1]))
            row += n
            v = verify(query, registered, qi[lo:hi].astype(np.int64), ri,
                       d[lo:hi].astype(np.int64))
            if v is not None and v[0] >= min_inliers:
                out.append(Verified(sid, v[0], v[1], v[2]))
        out.sort(key=lambda v: (-v.inliers, v.signal_id))
        return out

    def export(self) -> tuple[Ids, Codes]:
        """Every live signal id and its packed bytes, zero-padded to :data:`STORED_BYTES`."""
        ids = np.array(sorted(self.blobs), dtype=np.int64)
        codes = np.zeros((len(ids), STORED_BYTES), dtype=np.uint8)
        for row, sid in enumerate(ids.tolist()):
            blob = self.blobs[sid]
            codes[row, :len(blob)] = np.frombuffer(blob, dtype=np.uint8)
        return ids, codes

    @staticmethod
    def blob_of_row(row: npt.NDArray[np.uint8]) -> bytes:
        """A packed signal back from a padded snapshot row."""
        n = int(row[1]) | int(row[2]) << 8
        return bytes(row[: 7 + 36 * n])

    @property
    def stats(self) -> dict[str, int]:
        """The descriptor index's figures (``live`` counts descriptors), the signals they
        belong to, and the bytes of both (packed keypoints kept for verification)."""
        inner = dict(self.inner.stats)
        kept = sum(len(b) for b in self.blobs.values())
        # Parsed positions/angles per keypoint (8 + 1 bytes) besides the packed bytes.
        parsed = sum(9 * len(f) for f in self.features.values())
        return {**inner, "signals": len(self), "bytes": inner["bytes"] + kept + parsed}


def verify(query: Keypoints, registered: Keypoints, q_idx: npt.NDArray[np.int64],
           r_idx: npt.NDArray[np.int64], dist: npt.NDArray[np.int64]
           ) -> tuple[int, float, int] | None:
    """Geometric verification of candidate correspondences ``(q_idx[i], r_idx[i])`` at
    descriptor distance ``dist[i]``: ``(inliers, coverage, median distance)``, or None.

    1. one-to-one: the closest pairs first, each keypoint used once on either side;
    2. rotation vote: a similarity turns every patch by the same angle, so only pairs whose ORB
       orientations differ by the most common difference (+-1 step of 11.25 degrees) stay;
    3. RANSAC similarity (rotation, uniform scale, shift) from registered to query positions,
       :data:`RANSAC_PX` pixels; a transform outside 1/:data:`MAX_SCALE`..MAX_SCALE is refused;
    4. coverage: the inliers' convex hull over the registered picture's area.
    """
    order = np.lexsort((r_idx, q_idx, dist))
    used_q: set[int] = set()
    used_r: set[int] = set()
    pq, pr, pd = [], [], []
    for i in order.tolist():
        a, b = int(q_idx[i]), int(r_idx[i])
        if a in used_q or b in used_r:
            continue
        used_q.add(a)
        used_r.add(b)
        pq.append(a)
        pr.append(b)
        pd.append(int(dist[i]))
    if len(pq) < MIN_PAIRS:
        return None
    qa = np.array(pq, dtype=np.int64)
    ra = np.array(pr, dtype=np.int64)
    da = np.array(pd, dtype=np.int64)
    turn = (query.angle[qa].astype(np.int64) - registered.angle[ra]) % ANGLE_STEPS
    hist = np.bincount(turn, minlength=ANGLE_STEPS)
    smooth = hist + np.roll(hist, 1) + np.roll(hist, -1)
    mode = int(np.argmax(smooth))
    near = (turn - mode + 1) % ANGLE_STEPS <= 2
    if int(near.sum()) < MIN_PAIRS:
        return None
    qa, ra, da = qa[near], ra[near], da[near]
    src = registered.xy[ra].astype(np.float32)
    dst = query.xy[qa].astype(np.float32)
    transform, mask = cv2.estimateAffinePartial2D(
        src, dst, method=cv2.RANSAC, ransacReprojThreshold=RANSAC_PX, maxIters=1000,
        confidence=0.995, refineIters=10)
    if transform is None or mask is None:
        return None
    scale = float(np.hypot(transform[0, 0], transform[1, 0]))
    if not 1 / MAX_SCALE <= scale <= MAX_SCALE:
        return None
    inlier = mask.ravel().astype(bool)
    n = int(inlier.sum())
    if n < MIN_PAIRS:
        return None
    pts = src[inlier]
    hull = cv2.convexHull(pts.reshape(-1, 1, 2))
    coverage = float(cv2.contourArea(hull)) / float(registered.width * registered.height)
    return n, round(min(1.0, coverage), 4), int(np.median(da[inlier]))

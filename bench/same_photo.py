"""Is a pair of dataset images two copies of one photograph?

The evaluation sets hold such pairs under different names: Labeled Faces in the Wild crops
each face of a news photograph into its own file, so two people who stood side by side in one
picture give two files that share pixels (and the registry is right to match them). A pair
like that is not an unrelated pair, so ``bench/accuracy.py`` asks this module about every
unrelated pair that came near a threshold, lists the ones it finds and leaves them out of the
false-positive counts, as it already does with byte-identical files.

The rule is independent of the registry's own local signal: ORB keypoints (OpenCV) matched
across the two images, a similarity transform fitted by RANSAC, the first image warped onto
the second, and the aligned pixels compared. Two copies of one photograph agree pixel for pixel
where they overlap (correlation ≥ 0.9 after a light blur that evens out resampling and JPEG
noise); two photographs of one scene taken moments apart do not, because people move.

    .venv/bin/python bench/same_photo.py A.jpg B.jpg     # prints the verdict and its figures
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
from PIL import Image, ImageOps

MAX_SIDE = 512  # both images are compared at most this large
MIN_INLIERS = 8  # keypoint pairs the transform must explain
MIN_OVERLAP_PX = 2500  # aligned pixels the comparison needs (50 x 50)
MIN_TEXTURE = 8.0  # grey-level spread the overlap needs: flat areas agree trivially
SAME_NCC = 0.9  # correlation of the aligned pixels at which two files are one photograph


@dataclass(frozen=True)
class Verdict:
    same: bool
    ncc: float  # correlation of the aligned pixels (0 when no transform was found)
    overlap: float  # share of the second image covered by the first under the transform
    inliers: int
    scale: float  # the transform's scale (first image to second)

    def as_json(self) -> dict[str, object]:
        return {"same": self.same, "ncc": round(self.ncc, 4), "overlap": round(self.overlap, 4),
                "inliers": self.inliers, "scale": round(self.scale, 3)}


NOT_SAME = Verdict(False, 0.0, 0.0, 0, 0.0)


def grey(img: Image.Image) -> npt.NDArray[np.uint8]:
    img = ImageOps.exif_transpose(img).convert("L")
    if max(img.size) > MAX_SIDE:
        img.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
    return np.asarray(img, dtype=np.uint8)


def same_photograph(a: npt.NDArray[np.uint8], b: npt.NDArray[np.uint8]) -> Verdict:
    """Whether grey images ``a`` and ``b`` (from :func:`grey`) are copies of one photograph."""
    orb = cv2.ORB_create(nfeatures=2000)
    ka, da = orb.detectAndCompute(a, None)
    kb, db = orb.detectAndCompute(b, None)
    if da is None or db is None or len(ka) < MIN_INLIERS or len(kb) < MIN_INLIERS:
        return NOT_SAME
    pairs = cv2.BFMatcher(cv2.NORM_HAMMING, crossCheck=True).match(da, db)
    if len(pairs) < MIN_INLIERS:
        return NOT_SAME
    pa = np.float32([ka[m.queryIdx].pt for m in pairs])
    pb = np.float32([kb[m.trainIdx].pt for m in pairs])
    m, kept = cv2.estimateAffinePartial2D(pa, pb, method=cv2.RANSAC, ransacReprojThreshold=3.0,
                                          maxIters=5000, confidence=0.999)
    inliers = int(kept.sum()) if kept is not None else 0
    if m is None or inliers < MIN_INLIERS:
        return Verdict(False, 0.0, 0.0, inliers, 0.0)
    scale = float(np.hypot(m[0, 0], m[1, 0]))
    h, w = b.shape
    warped = cv2.warpAffine(a, m, (w, h), flags=cv2.INTER_LINEAR)
    inside = cv2.warpAffine(np.full(a.shape, 255, np.uint8), m, (w, h), flags=cv2.INTER_NEAREST)
    inside = cv2.erode(inside, np.ones((7, 7), np.uint8)) > 0
    # Rotated LFW crops are filled with black: those pixels are no one's picture.
    inside &= (warped > 2) & (b > 2)
    n = int(inside.sum())
    overlap = n / (w * h)
    if n < MIN_OVERLAP_PX:
        return Verdict(False, 0.0, overlap, inliers, scale)
    x = cv2.GaussianBlur(warped.astype(np.float32), (0, 0), 1.5)[inside]
    y = cv2.GaussianBlur(b.astype(np.float32), (0, 0), 1.5)[inside]
    if min(float(x.std()), float(y.std())) < MIN_TEXTURE:
        return Verdict(False, 0.0, overlap, inliers, scale)
    ncc = float(np.corrcoef(x, y)[0, 1])
    return Verdict(ncc >= SAME_NCC, ncc, overlap, inliers, scale)


def same_files(a: str | Path, b: str | Path) -> Verdict:
    with Image.open(a) as ia, Image.open(b) as ib:
        return same_photograph(grey(ia), grey(ib))


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    print(same_files(sys.argv[1], sys.argv[2]).as_json())

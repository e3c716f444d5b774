#!/usr/bin/env python3
"""What the local signal gives away: a patch-retrieval attack on registered keypoints.

The local signal of a registered image (registry/hashing/local.py) holds no pixels, only up to
112 keypoints: position, orientation (32 steps), pyramid octave and a 256-bit ORB descriptor.
An attacker who holds it (a leaked database, a curious operator) could try to picture the image
by retrieval: for each stored descriptor, take the patch of the nearest descriptor in a public
corpus of other photos and paste it at the stored position, orientation and scale. This script
runs that attack and measures what it recovers.

Corpus: ImageNet (negatives/imagenet-sample) and people-humanseg, never the targets. Each
corpus photo is analysed as a registration is (the same grey, area and ORB parameters), with up
to 500 keypoints unspread; every keypoint keeps its descriptor and its grey patch resampled to a
canonical 32x32 frame (the ORB patch at the keypoint's own pyramid level, rotated by its angle),
in memory only. Targets: a spread sample of originals/bsds500, each taken through the registry's
own signal computation (``compute_signals(registration=True)``) and its packed local signal
unpacked. Nothing is written but the figures.

Reconstructions, each on a canvas of the analysed size, patches pasted as discs and blended by
averaging, unfilled pixels at the mean of the pasted ones:

- ``attack``: the nearest corpus descriptor's patch (Hamming, faiss ``IndexBinaryFlat``);
- ``random``: a random corpus patch of the same octave, at the stored position and angle (what
  positions, scales and orientations give without the descriptors: ORB's orientation points
  at the patch's intensity centroid, so it alone says which side of each corner is brighter);
- ``random_angle``: a random patch at a random angle (what positions and scales alone give);
- ``oracle``: the target's own patch at each keypoint. Not an attack (it uses the target's
  pixels): the ceiling of any patch-pasting attack, a perfect descriptor inverter included.

Measured per target: covered area; normalised cross-correlation (NCC) with the true grey image
over the covered pixels and the whole picture, raw and after a Gaussian blur (sigma 4 px);
PDQ distance from the reconstruction (RGB, analysed size) to the registered PDQ of the whole
image and to the nearest of all its registered PDQ hashes (content box and views), with the
fractions within 31 and 55 (the weak tier); the Hamming distance of each keypoint's nearest
corpus descriptor; and how well the 8x8 keypoint density map follows the picture's gradient
energy (Pearson r, against the same with another target's picture as chance).

    OMP_NUM_THREADS=1 .venv/bin/python bench/privacy_local.py    # 60 targets, ~1 min on one core
    .venv/bin/python bench/privacy_local.py --targets 10 --corpus-limit 200   # a quick look
    .venv/bin/python bench/privacy_local.py --look /tmp/privacy-look  # + PNGs of 3 targets

Writes docs/privacy-local.json. ``--look`` writes reconstructions outside the repository only.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import shlex  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import faiss  # noqa: E402
import numpy as np  # noqa: E402
import numpy.typing as npt  # noqa: E402
from PIL import Image  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from registry.hashing import DecodeOptions, compute_signals  # noqa: E402
from registry.hashing.decode import decode_image  # noqa: E402
from registry.hashing.local import REGISTER_AREA, _orb, analysed, unpack  # noqa: E402
from registry.hashing.signals import pdq_of  # noqa: E402

cv2.setNumThreads(1)
faiss.omp_set_num_threads(1)

N = 32  # canonical patch side, in samples
PATCH = 31  # ORB's patch size at the keypoint's own pyramid level
SCALE = 1.2  # ORB's pyramid scale factor
LEVELS = 8
CORPUS_KEYPOINTS = 500
STRICT, WEAK = 31, 55  # PDQ thresholds: the customary one and the registry's weak tier
BLUR_SIGMA = 4.0
GRID = 8
VARIANTS = ("attack", "random", "random_angle", "oracle")
OPTIONS = DecodeOptions()

Float = npt.NDArray[np.float32]


def _disc() -> Float:
    c = (N - 1) / 2
    yy, xx = np.mgrid[0:N, 0:N]
    r = np.hypot(xx - c, yy - c)
    return np.clip(N / 2 - r, 0, 1).astype(np.float32)  # the ORB patch is a disc


DISC = _disc()


def pyramid(grey: npt.NDArray[np.uint8]) -> list[Float]:
    h, w = grey.shape
    out = []
    for o in range(LEVELS):
        s = SCALE**o
        size = (max(1, round(w / s)), max(1, round(h / s)))
        level = grey if o == 0 else cv2.resize(grey, size, interpolation=cv2.INTER_AREA)
        out.append(level.astype(np.float32))
    return out


def _frame(cx: float, cy: float, degrees: float, step: float) -> npt.NDArray[np.float64]:
    """The affine map from canonical patch samples to picture pixels: ORB's own rotation (a
    pattern offset (u, v) reads the picture at (u cos - v sin, u sin + v cos))."""
    a, b = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    c0 = (N - 1) / 2
    return np.array([[a * step, -b * step, cx - step * (a - b) * c0],
                     [b * step, a * step, cy - step * (a + b) * c0]])


def canonical_patches(levels: list[Float], xy: Float, degrees: Float,
                      octaves: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    out = np.empty((len(xy), N, N), dtype=np.uint8)
    for i, ((x, y), d, o) in enumerate(zip(xy, degrees, octaves, strict=True)):
        s = SCALE ** int(o)
        m = _frame(float(x) / s, float(y) / s, float(d), PATCH / N)
        p = cv2.warpAffine(levels[int(o)], m, (N, N), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                           borderMode=cv2.BORDER_REFLECT_101)
        out[i] = np.clip(np.rint(p), 0, 255).astype(np.uint8)
    return out


def corpus_photo(path: Path) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8],
                                      npt.NDArray[np.uint8]] | None:
    """Descriptors, canonical patches and octaves of one corpus photo's keypoints."""
    try:
        img = decode_image(path.read_bytes(), OPTIONS)
    except Exception:  # an undecodable corpus file is skipped
        return None
    grey = analysed(img, REGISTER_AREA)
    if min(grey.shape) < 2 * 16 + 1:
        return None
    keypoints, desc = _orb(CORPUS_KEYPOINTS).detectAndCompute(grey, None)  # type: ignore[call-overload]
    if desc is None or not keypoints:
        return None
    xy = np.array([k.pt for k in keypoints], dtype=np.float32)
    degrees = np.array([k.angle for k in keypoints], dtype=np.float32)
    octaves = np.array([k.octave & 7 for k in keypoints], dtype=np.uint8)
    return desc, canonical_patches(pyramid(grey), xy, degrees, octaves), octaves


def paste(width: int, height: int, xy: Float, degrees: Float, octaves: npt.NDArray[np.uint8],
          patches: npt.NDArray[np.uint8]) -> tuple[Float, npt.NDArray[np.bool_]]:
    """Patches pasted as discs at the keypoints, blended by averaging; the canvas and the
    covered pixels (unfilled ones at the mean of the pasted ones)."""
    acc = np.zeros((height, width), dtype=np.float32)
    weight = np.zeros((height, width), dtype=np.float32)
    for (x, y), d, o, p in zip(xy, degrees, octaves, patches, strict=True):
        step = PATCH * SCALE ** int(o) / N
        m = _frame(float(x), float(y), float(d), step)
        half = step * N / math.sqrt(2) + 2
        x0, x1 = max(0, math.floor(x - half)), min(width, math.ceil(x + half))
        y0, y1 = max(0, math.floor(y - half)), min(height, math.ceil(y + half))
        if x1 <= x0 or y1 <= y0:
            continue
        m[:, 2] -= (x0, y0)
        size = (x1 - x0, y1 - y0)
        acc[y0:y1, x0:x1] += cv2.warpAffine(p.astype(np.float32) * DISC, m, size,
                                            flags=cv2.INTER_LINEAR, borderValue=0)
        weight[y0:y1, x0:x1] += cv2.warpAffine(DISC, m, size, flags=cv2.INTER_LINEAR,
                                               borderValue=0)
    covered = weight > 1e-3
    canvas = np.zeros_like(acc)
    canvas[covered] = acc[covered] / weight[covered]
    canvas[~covered] = canvas[covered].mean() if covered.any() else 128.0
    return canvas, covered


def ncc(a: Float, b: Float, mask: npt.NDArray[np.bool_] | None = None) -> float:
    if mask is not None:
        a, b = a[mask], b[mask]
    a = a.astype(np.float64).ravel() - a.mean()
    b = b.astype(np.float64).ravel() - b.mean()
    den = math.sqrt(float(a @ a) * float(b @ b))
    return float(a @ b / den) if den > 0 else 0.0


def blur(x: Float) -> Float:
    return cv2.GaussianBlur(x, (0, 0), BLUR_SIGMA)


def grid_map(values: Float, xs: Float, ys: Float, width: int, height: int) -> Float:
    cx = np.minimum(GRID - 1, (xs * GRID / width).astype(np.int64))
    cy = np.minimum(GRID - 1, (ys * GRID / height).astype(np.int64))
    out = np.zeros(GRID * GRID, dtype=np.float64)
    np.add.at(out, cy * GRID + cx, values)
    return out.astype(np.float32)


def gradient_map(grey: npt.NDArray[np.uint8]) -> Float:
    g = grey.astype(np.float32)
    energy = cv2.Sobel(g, cv2.CV_32F, 1, 0) ** 2 + cv2.Sobel(g, cv2.CV_32F, 0, 1) ** 2
    h, w = grey.shape
    ys, xs = np.mgrid[0:h, 0:w]
    return grid_map(energy.ravel(), xs.ravel().astype(np.float32),
                    ys.ravel().astype(np.float32), w, h)


def summary(values: list[float]) -> dict[str, float]:
    v = np.asarray(values, dtype=np.float64)
    return {"mean": round(float(v.mean()), 4), "median": round(float(np.median(v)), 4),
            "p10": round(float(np.percentile(v, 10)), 4),
            "p90": round(float(np.percentile(v, 90)), 4)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--originals", type=Path,
                    default=ROOT.parent / "shared/data/originals/bsds500")
    ap.add_argument("--negatives", type=Path, default=ROOT.parent / "shared/data/negatives")
    ap.add_argument("--targets", type=int, default=60, help="originals attacked, spread evenly")
    ap.add_argument("--corpus-limit", type=int, default=None,
                    help="corpus photos per folder (quick runs)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "privacy-local.json")
    ap.add_argument("--look", type=Path, default=None,
                    help="write side-by-side PNGs of 3 targets here (outside the repository)")
    args = ap.parse_args()
    folders = [args.negatives / "imagenet-sample", args.negatives / "people-humanseg"]
    for folder in (args.originals, *folders):
        if not folder.is_dir():
            print(f"skipped: {folder} is absent (evaluation photos are not in the repository; "
                  "see ../shared/data/README.md)")
            return 0
    if args.look is not None and args.look.resolve().is_relative_to(ROOT):
        ap.error("--look must be outside the repository: reconstructions are not kept in it")
    started = time.time()
    rng = np.random.default_rng(args.seed)

    # The attacker's corpus: other photos only.
    descs, patches, octs, sizes = [], [], [], {}
    for folder in folders:
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        files = files[:args.corpus_limit] if args.corpus_limit else files
        used = 0
        for path in files:
            got = corpus_photo(path)
            if got is None:
                continue
            descs.append(got[0])
            patches.append(got[1])
            octs.append(got[2])
            used += 1
        sizes[folder.name] = used
    corpus_desc = np.ascontiguousarray(np.concatenate(descs))
    corpus_patch = np.concatenate(patches)
    corpus_oct = np.concatenate(octs)
    del descs, patches, octs
    index = faiss.IndexBinaryFlat(256)
    index.add(corpus_desc)
    by_octave = {o: np.flatnonzero(corpus_oct == o) for o in range(LEVELS)}
    corpus_seconds = time.time() - started
    print(f"corpus: {sum(sizes.values())} photos {sizes}, {len(corpus_desc)} keypoints "
          f"({corpus_patch.nbytes / 2**20:.0f} MiB of patches) in {corpus_seconds:.0f} s",
          flush=True)

    # The targets: registered originals, through the registry's own signal computation.
    originals = sorted(p for p in args.originals.iterdir() if p.suffix.lower() == ".jpg")
    take = np.linspace(0, len(originals) - 1, min(args.targets, len(originals)))
    chosen = [originals[i] for i in np.unique(np.rint(take).astype(int))]
    targets = []
    for path in chosen:
        data = path.read_bytes()
        signals = compute_signals(data, OPTIONS, registration=True)
        if signals.local is None:
            continue
        img = decode_image(data, OPTIONS)
        feats = unpack(signals.local.value)
        registered = [signals.pdq] + ([signals.content.pdq] if signals.content else []) + [
            v.pdq for v in signals.variants]
        targets.append((path.name, analysed(img, REGISTER_AREA), feats, registered))
    all_desc = np.ascontiguousarray(np.concatenate([t[2].descriptors for t in targets]))
    dist, nearest = index.search(all_desc, 1)
    random_pair = [int(np.unpackbits(all_desc[i] ^ corpus_desc[j]).sum())
                   for i, j in zip(range(len(all_desc)),
                                   rng.integers(0, len(corpus_desc), len(all_desc)), strict=True)]

    per: dict[str, dict[str, list[float]]] = {v: {} for v in VARIANTS}
    hamming, density_r, density_chance = [], [], []
    grad_maps = [gradient_map(t[1]) for t in targets]
    looks = set(np.linspace(0, len(targets) - 1, 3).round().astype(int).tolist())
    start = 0
    for ti, (name, grey, feats, registered) in enumerate(targets):
        n = len(feats)
        nn = nearest[start:start + n, 0]
        hamming.append(float(dist[start:start + n, 0].mean()))
        start += n
        degrees = feats.angle.astype(np.float32) * (360 / 32)
        random_idx = np.array([rng.choice(by_octave[int(o)]) if len(by_octave[int(o)])
                               else rng.integers(len(corpus_oct)) for o in feats.octave])
        levels = pyramid(grey)
        choice = {
            "attack": (degrees, corpus_patch[nn]),
            "random": (degrees, corpus_patch[random_idx]),
            "random_angle": (rng.uniform(0, 360, n).astype(np.float32),
                             corpus_patch[random_idx]),
            "oracle": (degrees, canonical_patches(levels, feats.xy, degrees, feats.octave)),
        }
        truth = grey.astype(np.float32)
        truth_blur = blur(truth)
        shown = [truth]
        for variant, (angles, chosen_patches) in choice.items():
            canvas, covered = paste(feats.width, feats.height, feats.xy, angles, feats.octave,
                                    chosen_patches)
            rgb = Image.fromarray(np.clip(np.rint(canvas), 0, 255).astype(np.uint8),
                                  "L").convert("RGB")
            pdq, quality = pdq_of(rgb)
            row = {
                "coverage": float(covered.mean()),
                "ncc_covered": ncc(canvas, truth, covered),
                "ncc_whole": ncc(canvas, truth),
                "ncc_blur_covered": ncc(blur(canvas), truth_blur, covered),
                "ncc_blur_whole": ncc(blur(canvas), truth_blur),
                "pdq_distance": float(pdq - registered[0]),
                "pdq_distance_any_view": float(min(pdq - r for r in registered)),
                "pdq_quality": float(quality),
            }
            for k, v in row.items():
                per[variant].setdefault(k, []).append(v)
            shown.append(canvas)
        if args.look is not None and ti in looks:
            args.look.mkdir(parents=True, exist_ok=True)
            strip = np.concatenate([np.pad(s, ((0, 0), (0, 4)), constant_values=255)
                                    for s in shown], axis=1)
            Image.fromarray(np.clip(strip, 0, 255).astype(np.uint8), "L").save(
                args.look / f"{Path(name).stem}.png")
        xs, ys = feats.xy[:, 0], feats.xy[:, 1]
        density = grid_map(np.ones(n, dtype=np.float32), xs, ys, feats.width, feats.height)
        density_r.append(ncc(density, grad_maps[ti]))
        density_chance.append(ncc(density, grad_maps[(ti + 1) % len(targets)]))

    seconds = time.time() - started
    figures: dict[str, object] = {}
    for variant, rows in per.items():
        out: dict[str, object] = {k: summary(v) for k, v in rows.items()}
        for key in ("pdq_distance", "pdq_distance_any_view"):
            d = np.asarray(rows[key])
            out[f"{key}_within_{STRICT}"] = round(float((d <= STRICT).mean()), 4)
            out[f"{key}_within_{WEAK}"] = round(float((d <= WEAK).mean()), 4)
            out[f"{key}_min"] = int(d.min())
        figures[variant] = out
    result = {
        "command": ("python bench/privacy_local.py " + shlex.join(sys.argv[1:])).strip(),
        "started": time.strftime("%Y-%m-%d %H:%M", time.gmtime(started)),
        "seconds": round(seconds),
        "corpus_seconds": round(corpus_seconds),
        "corpus_photos": sizes,
        "corpus_keypoints": len(corpus_desc),
        "corpus_keypoints_per_photo": CORPUS_KEYPOINTS,
        "targets": len(targets),
        "target_set": "originals/bsds500, evenly spread",
        "target_keypoints": summary([float(len(t[2])) for t in targets]),
        "patch": f"{N}x{N} canonical samples of the {PATCH}-px ORB patch at the keypoint's "
                 "level, pasted as discs, averaged; unfilled pixels at the pasted mean",
        "blur_sigma_px": BLUR_SIGMA,
        "nearest_descriptor_hamming": summary(hamming),
        "random_descriptor_hamming": summary([float(v) for v in random_pair]),
        "density_vs_gradient_energy_r": summary(density_r),
        "density_vs_other_picture_r": summary(density_chance),
        "variants": {
            "attack": "nearest corpus descriptor's patch at the stored position, angle, scale",
            "random": "random corpus patch of the same octave at the stored position and angle",
            "random_angle": "random corpus patch of the same octave at a random angle",
            "oracle": "the target's own patch (not an attack: the ceiling of patch pasting)",
        },
        "figures": figures,
    }
    args.out.write_text(json.dumps(result, indent=1) + "\n")

    keys = ("coverage", "ncc_covered", "ncc_whole", "ncc_blur_covered", "ncc_blur_whole",
            "pdq_distance", "pdq_distance_any_view", "pdq_quality")
    print(f"{len(targets)} targets, {seconds:.0f} s; mean / median per target")
    print(f"{'':24}" + "".join(f"{v:>16}" for v in VARIANTS))
    for k in keys:
        cells = "".join(f"{figures[v][k]['mean']:>8.3f}/{figures[v][k]['median']:<7.3f}"  # type: ignore[index]
                        for v in VARIANTS)
        print(f"{k:24}{cells}")
    for k in ("pdq_distance", "pdq_distance_any_view"):
        for t in (STRICT, WEAK):
            cells = "".join(f"{figures[v][f'{k}_within_{t}']:>16.3f}" for v in VARIANTS)  # type: ignore[index]
            print(f"{(k + ' <= ' + str(t)):24}{cells}")
    print(f"nearest corpus descriptor: {summary(hamming)['mean']:.1f} bits mean per target "
          f"(random pair {np.mean(random_pair):.1f})")
    print(f"keypoint density vs gradient energy ({GRID}x{GRID}): r = "
          f"{summary(density_r)['mean']:.3f} mean, {summary(density_r)['median']:.3f} median "
          f"(another picture's: {summary(density_chance)['mean']:.3f})")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

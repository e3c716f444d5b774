#!/usr/bin/env python3
"""Matching at a million registered images: one 2 MP JPEG end to end (decode, every signal,
every index look-up, local verification) against an index of ``--images`` registered images.

Registered images: ``--real`` evaluation photos registered as the registry does
(``compute_signals(registration=True)``: PDQ of the photo and its 21 views, pHash, local
keypoints), plus synthetic images up to ``--images``. A synthetic image takes a real photo's
local signal with each descriptor bit flipped with probability 1/4 (about 64 bits from its
source, about 96 from another synthetic copy of it: a crowd of near-misses, harder than
unrelated photos, which sit ~125 bits apart), and 22 random PDQ hashes and a random pHash
(the index costs of an average registered image). Everything goes into one ``IndexSet`` with
the default options, as a serving process holds it.

Queries: for each of ``--queries`` real photos, a 2 MP JPEG (the photo upscaled to 1732x1155 or
the like, then altered as bench/transforms.py does: a random 80% crop, text over the picture, a
phone screenshot, a collage, each JPEG-encoded) is matched as the service matches it:
``compute_signals`` (default draft decoding), ``query_of_image``, the PDQ and pHash searches at
the weak thresholds and the local search with verification. Single thread (OMP and BLAS set to
one), one query at a time; the wall time of each is recorded, split into hashing and look-ups.
Case resolution and the digest look-up are SQL (not here; ~1 ms in bench/api_overhead.py).

    .venv/bin/python bench/local_scale.py                   # 1M images, ~25 min, ~16 GB
    .venv/bin/python bench/local_scale.py --images 100000   # a quick look

Writes ``bench/results/local_scale.json`` and prints the figures.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))
sys.path.append(str(ROOT / "bench"))

from transforms import variants  # noqa: E402

from registry.config import Settings  # noqa: E402
from registry.domain import SignalKind  # noqa: E402
from registry.hashing import compute_signals  # noqa: E402
from registry.index.catalog import IndexSet  # noqa: E402
from registry.index.local import Keypoints  # noqa: E402
from registry.service.cases import SubmittedImage  # noqa: E402
from registry.service.matching import query_of_image  # noqa: E402

FAMILIES = ("crop80r", "caption-over", "screenshot", "collage")
VIEWS_PER_IMAGE = 22  # PDQ hashes of an average registered image: full + 21 views
TWO_MP = {"landscape": (1732, 1155), "portrait": (1155, 1732), "square": (1414, 1414)}


def two_mp(img: Image.Image) -> Image.Image:
    ratio = img.width / img.height
    shape = "landscape" if ratio > 1.2 else "portrait" if ratio < 1 / 1.2 else "square"
    return img.resize(TWO_MP[shape], Image.Resampling.BICUBIC)


def jpeg(img: Image.Image, quality: int = 85) -> bytes:
    out = io.BytesIO()
    img.save(out, "JPEG", quality=quality)
    return out.getvalue()


def rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=1_000_000)
    ap.add_argument("--real", type=int, default=200, help="real photos registered")
    ap.add_argument("--queries", type=int, default=50, help="photos whose copies are queried")
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "local_scale.json")
    args = ap.parse_args()
    folder = args.data / "originals"
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))
    if not paths:
        print(f"skipped: no photos under {folder} (see ../shared/data/README.md)")
        return 0
    cv2.setNumThreads(1)
    settings = Settings.from_env({})
    rng = np.random.default_rng(7)
    started = time.time()
    step = max(1, len(paths) // args.real)
    real_paths = paths[::step][: args.real]

    # --- registered: real photos, then synthetic ones ------------------------------------
    indexes = IndexSet()
    indexes.local.inner.auto_compact = False  # one build once everything is in, as rebuild does
    pdq_ids, pdq_codes, ph_ids, ph_codes = [], [], [], []
    real_blobs: list[bytes] = []
    originals: list[Image.Image] = []
    t = time.time()
    for sid, p in enumerate(real_paths):
        data = p.read_bytes()
        image = compute_signals(data, registration=True)
        rows = SubmittedImage.from_image(image).rows(settings.pdq_min_quality)
        for signal, _, _ in rows:
            if signal.kind is SignalKind.PDQ:
                pdq_ids.append(sid)
                pdq_codes.append(signal.value)
            elif signal.kind is SignalKind.PHASH:
                ph_ids.append(sid)
                ph_codes.append(signal.value)
        if image.local is not None:
            real_blobs.append(image.local.value)
            indexes.local.add(np.array([sid], dtype=np.int64), [image.local.value])
        originals.append(Image.open(io.BytesIO(data)).convert("RGB"))
    n_real = len(real_paths)
    print(f"{n_real} real photos registered in {time.time() - t:.0f} s", flush=True)

    t = time.time()
    synthetic = args.images - n_real
    block = 20_000
    for start in range(0, synthetic, block):
        n = min(block, synthetic - start)
        sids = np.arange(n_real + start, n_real + start + n, dtype=np.int64)
        blobs = []
        for k in range(n):
            src = real_blobs[(start + k) % len(real_blobs)]
            count = int(src[1]) | int(src[2]) << 8
            head = 7 + 4 * count
            desc = np.frombuffer(src, dtype=np.uint8, offset=head)
            flips = (rng.integers(0, 256, len(desc), dtype=np.uint8)
                     & rng.integers(0, 256, len(desc), dtype=np.uint8))
            blobs.append(src[:head] + (desc ^ flips).tobytes())
        indexes.local.add(sids, blobs)
        if (start // block) % 10 == 0:
            print(f"  {start + n} synthetic local signals ({rss_gb():.1f} GB)", flush=True)
    local_add_s = time.time() - t
    t = time.time()
    indexes.local.inner.compact()
    local_build_s = time.time() - t
    print(f"local index: {len(indexes.local)} images, built in {local_build_s:.0f} s "
          f"(added in {local_add_s:.0f} s), {indexes.local.inner.stats}", flush=True)

    t = time.time()
    n_syn_pdq = synthetic * VIEWS_PER_IMAGE
    pdq = np.concatenate([np.frombuffer(b"".join(pdq_codes), np.uint8).reshape(-1, 32),
                          rng.integers(0, 256, (n_syn_pdq, 32), dtype=np.uint8)])
    pids = np.concatenate([np.array(pdq_ids, dtype=np.int64),
                           np.repeat(np.arange(n_real, args.images, dtype=np.int64),
                                     VIEWS_PER_IMAGE)])
    # Signal ids of views: image id * 32 + view (unique, as the store gives each its own id).
    pids = pids * 32 + np.concatenate([np.arange(len(pdq_ids)) % 32,
                                       np.tile(np.arange(VIEWS_PER_IMAGE), synthetic)])
    indexes.indexes[SignalKind.PDQ] = indexes.options.of_arrays(SignalKind.PDQ, pids, pdq)
    ph = np.concatenate([np.frombuffer(b"".join(ph_codes), np.uint8).reshape(-1, 8),
                         rng.integers(0, 256, (synthetic, 8), dtype=np.uint8)])
    phids = np.concatenate([np.array(ph_ids, dtype=np.int64),
                            np.arange(n_real, args.images, dtype=np.int64)])
    indexes.indexes[SignalKind.PHASH] = indexes.options.of_arrays(SignalKind.PHASH, phids, ph)
    del pdq, ph
    perceptual_build_s = time.time() - t
    print(f"PDQ index: {len(pids)} hashes, pHash {len(phids)}, built in "
          f"{perceptual_build_s:.0f} s; peak RSS {rss_gb():.1f} GB", flush=True)

    # --- queries ---------------------------------------------------------------------------
    chosen, seen = [], set()
    for v in variants():  # the first variant of each family
        if v.family in FAMILIES and v.family not in seen:
            seen.add(v.family)
            chosen.append(v)
    qstep = max(1, n_real // args.queries)
    rows = []
    for n, sid in enumerate(range(0, n_real, qstep)):
        if n >= args.queries:
            break
        v = chosen[n % len(chosen)]
        data = jpeg(v.apply(two_mp(originals[sid]), np.random.default_rng(sid)))
        t0 = time.perf_counter()
        image = compute_signals(data)
        query = query_of_image(str(sid), image, settings)
        t1 = time.perf_counter()
        found = set()
        for s in query.signals:
            if s.kind is SignalKind.PDQ:
                r = indexes.search(SignalKind.PDQ, [s.value], settings.pdq_weak)[0]
                found |= {int(i) // 32 for i in r.ids.tolist()}
            elif s.kind is SignalKind.PHASH:
                r = indexes.search(SignalKind.PHASH, [s.value], settings.phash_weak)[0]
                found |= set(r.ids.tolist())
        t2 = time.perf_counter()
        local = []
        for s in query.signals:
            if s.kind is SignalKind.LOCAL:
                local = indexes.search_local(Keypoints.of(s.value), settings.local_radius,
                                             settings.local_weak)
        t3 = time.perf_counter()
        rows.append({"family": v.family, "hash_ms": (t1 - t0) * 1000,
                     "perceptual_ms": (t2 - t1) * 1000, "local_ms": (t3 - t2) * 1000,
                     "total_ms": (t3 - t0) * 1000, "pdq_or_phash_found": sid in found,
                     "local_found": any(h.signal_id == sid for h in local),
                     "local_false": sum(1 for h in local if h.signal_id != sid),
                     "width": image.width, "height": image.height})
    wall = time.time() - started

    def med(key: str) -> float:
        return round(statistics.median(r[key] for r in rows), 2)

    def p90(key: str) -> float:
        return round(float(np.percentile([r[key] for r in rows], 90)), 2)

    fams = sorted({r["family"] for r in rows})
    out = {
        "benchmark": "end-to-end matching at scale (local signal)",
        "command": "python " + " ".join(sys.argv),
        "machine": f"{os.cpu_count()} vCPU, {os.uname().machine}",
        "registered_images": len(indexes.local), "real_photos": n_real,
        "pdq_hashes": len(pids), "local_index": indexes.local.inner.stats,
        "local_build_s": round(local_build_s, 1), "local_add_s": round(local_add_s, 1),
        "perceptual_build_s": round(perceptual_build_s, 1),
        "peak_rss_gb": round(rss_gb(), 2), "queries": len(rows),
        "median_ms": {k: med(k) for k in ("hash_ms", "perceptual_ms", "local_ms", "total_ms")},
        "p90_ms": {k: p90(k) for k in ("hash_ms", "perceptual_ms", "local_ms", "total_ms")},
        "found_local": {f: f"{sum(r['local_found'] for r in rows if r['family'] == f)}/"
                           f"{sum(1 for r in rows if r['family'] == f)}" for f in fams},
        "found_pdq_or_phash": sum(r["pdq_or_phash_found"] for r in rows),
        "local_false_matches": sum(r["local_false"] for r in rows),
        "wall_s": round(wall),
        "rows": rows,
    }
    print(json.dumps({k: v for k, v in out.items() if k != "rows"}, indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

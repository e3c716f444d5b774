#!/usr/bin/env python3
"""JPEG draft benchmark: how many bits DCT-scaled decoding moves PDQ and pHash, and what it saves.

The registry decodes JPEGs with Pillow's ``draft()`` (libjpeg DCT scaling) to at least
``draft_size`` pixels per side (512 by default) instead of decoding every pixel. This script
measures, on real photos, the Hamming distance between the signals of a draft decode and of a
full decode (``draft_size=0``) of the same bytes, and the time per image of each, on one core.

For each photo under ``<data>/originals/**/*.jpg`` it makes a ~2 MP JPEG the way a phone upload
would look: the photo upscaled (bicubic) to 1732x1155 (landscape), 1155x1732 (portrait) or
1414x1414 (square) and saved as JPEG quality 90 (4:2:0), in memory. Then, for both decodes:

* ``registry.hashing.compute_signals(data, DecodeOptions(draft_size=...))`` -> PDQ, PDQ quality,
  pHash; the distances draft vs full are the figures reported (mean, median, p95, max);
* the wall time of ``compute_signals`` (decode + all signals) and of ``decode_image`` alone,
  best of ``--repeat`` runs, with one thread pinned to one CPU.

    .venv/bin/python bench/draft_drift.py                      # all photos, ~6 minutes
    .venv/bin/python bench/draft_drift.py --limit 50           # quick look
    .venv/bin/python bench/draft_drift.py --data ../shared/data --out /tmp/drift.json

Writes ``bench/results/draft_drift.json``. Exits 0 with a message, writing nothing, when the
photo folder is absent (the evaluation photos are not part of the repository).
"""

from __future__ import annotations

import os

# One core: no thread pools anywhere (numpy/scipy BLAS and FFT, OpenMP). Set before imports.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import shlex  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import imagehash  # noqa: E402
import numpy as np  # noqa: E402
import PIL  # noqa: E402
from PIL import Image, features  # noqa: E402

from registry.hashing import DecodeOptions, compute_signals, decode_image  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data"
DEFAULT_OUT = ROOT / "bench" / "results" / "draft_drift.json"
LANDSCAPE = (1732, 1155)  # 2.0 MP, 3:2
SQUARE = (1414, 1414)  # 2.0 MP


def target_size(size: tuple[int, int]) -> tuple[int, int]:
    width, height = size
    if width > height:
        return LANDSCAPE
    if height > width:
        return LANDSCAPE[::-1]
    return SQUARE


def two_megapixel_jpeg(path: Path, quality: int) -> bytes:
    with Image.open(path) as img:
        rgb = img.convert("RGB")
    big = rgb.resize(target_size(rgb.size), Image.Resampling.BICUBIC)
    out = io.BytesIO()
    big.save(out, "JPEG", quality=quality)
    return out.getvalue()


def best_time(fn: Callable[[], object], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def summary(values: Sequence[float]) -> dict[str, float]:
    a = np.asarray(values, dtype=np.float64)
    return {
        "mean": round(float(a.mean()), 3),
        "median": round(float(np.median(a)), 3),
        "p95": round(float(np.percentile(a, 95)), 3),
        "max": round(float(a.max()), 3),
    }


def measure(
    index: int, path: Path, draft: DecodeOptions, full: DecodeOptions, args: Any
) -> dict[str, Any]:
    data = two_megapixel_jpeg(path, args.quality)
    d = compute_signals(data, draft)
    f = compute_signals(data, full)
    record: dict[str, Any] = {
        "photo": str(path.relative_to(args.data / "originals")),
        "bytes": len(data),
        "full_size": [f.width, f.height],
        "draft_size": [d.width, d.height],
        "pdq_bits": d.pdq - f.pdq,
        "phash_bits": d.phash - f.phash,
        "pdq_quality_full": f.pdq_quality,
        "pdq_quality_draft": d.pdq_quality,
    }
    # Alternate which decode runs first, so neither profits from a warm cache more often.
    order = [("draft", draft), ("full", full)]
    if index % 2:
        order.reverse()
    for name, options in order:
        record[f"{name}_signals_ms"] = round(
            1000 * best_time(lambda o=options: compute_signals(data, o), args.repeat), 3
        )
        record[f"{name}_decode_ms"] = round(
            1000 * best_time(lambda o=options: decode_image(data, o), args.repeat), 3
        )
    return record


def aggregate(records: list[dict[str, Any]], min_quality: int) -> dict[str, Any]:
    pdq = [r["pdq_bits"] for r in records]
    phash = [r["phash_bits"] for r in records]
    quality_delta = [abs(r["pdq_quality_draft"] - r["pdq_quality_full"]) for r in records]
    crossing = sum(
        (r["pdq_quality_draft"] >= min_quality) != (r["pdq_quality_full"] >= min_quality)
        for r in records
    )
    out: dict[str, Any] = {
        "images": len(records),
        "pdq_bits": summary(pdq)
        | {
            "within_10": sum(b <= 10 for b in pdq),
            "over_31": sum(b > 31 for b in pdq),
        },
        "phash_bits": summary(phash)
        | {
            "zero": sum(b == 0 for b in phash),
            "over_4": sum(b > 4 for b in phash),
        },
        "pdq_quality_abs_change": summary(quality_delta),
        "pdq_quality_crossing_min": crossing,
    }
    for name in ("draft", "full"):
        signals_ms = [r[f"{name}_signals_ms"] for r in records]
        decode_ms = [r[f"{name}_decode_ms"] for r in records]
        out[f"{name}_ms"] = {
            "signals": summary(signals_ms),
            "decode": summary(decode_ms),
            "images_per_s": round(1000 / statistics.fmean(signals_ms), 1),
        }
    out["speedup_signals"] = round(
        statistics.fmean(r["full_signals_ms"] for r in records)
        / statistics.fmean(r["draft_signals_ms"] for r in records),
        2,
    )
    return out


def environment(args: Any, cpu: int | None) -> dict[str, Any]:
    import pdqhash

    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "command": shlex.join([sys.executable.replace(str(ROOT) + "/", ""), *sys.argv]),
        "python": platform.python_version(),
        "pillow": PIL.__version__,
        "libjpeg": features.version("jpg"),
        "libjpeg_turbo": bool(features.check_feature("libjpeg_turbo")),
        "imagehash": imagehash.__version__,
        "pdqhash": getattr(pdqhash, "__version__", _dist_version("pdqhash")),
        "numpy": np.__version__,
        "cpu": model,
        "pinned_cpu": cpu,
        "threads": 1,
        "upload": {
            "sizes": {"landscape": LANDSCAPE, "portrait": LANDSCAPE[::-1], "square": SQUARE},
            "resample": "bicubic",
            "jpeg_quality": args.quality,
        },
        "draft_size": args.draft_size,
        "repeat": args.repeat,
    }


def _dist_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "unknown"


def to_json(result: dict[str, Any]) -> str:
    """Indented JSON, with one line per image record so the file stays short and diffable."""
    head = {k: v for k, v in result.items() if k != "per_image"}
    text = json.dumps(head, indent=1)[:-2]
    rows = ",\n  ".join(json.dumps(r, separators=(",", ":")) for r in result["per_image"])
    return f'{text},\n "per_image": [\n  {rows}\n ]\n}}\n'


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data", type=Path, default=DEFAULT_DATA, help=f"data folder (default {DEFAULT_DATA})"
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results file")
    parser.add_argument("--draft-size", type=int, default=DecodeOptions().draft_size)
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality of the uploads")
    parser.add_argument("--repeat", type=int, default=3, help="timing runs per image (best of)")
    parser.add_argument("--limit", type=int, default=0, help="use only the first N photos")
    args = parser.parse_args(argv)
    args.data = args.data.resolve()

    photos = sorted((args.data / "originals").glob("**/*.jpg"))
    if args.limit:
        photos = photos[: args.limit]
    if not photos:
        print(
            f"skipped: no photos under {args.data / 'originals'} (the evaluation photos are not "
            "in the repository; pass --data DIR pointing at a folder with originals/**/*.jpg)"
        )
        return 0

    cpu = None
    if hasattr(os, "sched_setaffinity"):
        cpu = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpu})

    draft = DecodeOptions(draft_size=args.draft_size)
    full = DecodeOptions(draft_size=0)
    compute_signals(two_megapixel_jpeg(photos[0], args.quality), full)  # warm-up
    records = []
    start = time.perf_counter()
    for i, path in enumerate(photos, 1):
        records.append(measure(i, path, draft, full, args))
        if i % 50 == 0 or i == len(photos):
            print(f"{i}/{len(photos)} photos, {time.perf_counter() - start:.0f} s", flush=True)

    by_folder: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        by_folder.setdefault(r["photo"].split("/")[0], []).append(r)
    result = {
        "benchmark": "jpeg draft drift",
        "environment": environment(args, cpu),
        "all": aggregate(records, min_quality=50),
        "by_folder": {k: aggregate(v, min_quality=50) for k, v in sorted(by_folder.items())},
        "per_image": records,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(to_json(result))

    a = result["all"]
    print(json.dumps(a, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

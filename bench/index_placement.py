#!/usr/bin/env python3
"""Buffer-placement check for bench/index.py: same codes, same faiss call, different buffers.

Builds FlatIndex and two bare ``IndexBinaryFlat`` copies of the same 10M PDQ codes, in the order
given by ``--order``, and times ``range_search`` on each buffer (alternating order per query).
If latency follows build order rather than the wrapper, a FlatIndex-vs-separate-faiss comparison
measures memory placement, not FlatIndex.

    .venv/bin/python bench/index_placement.py --order flat-first
    .venv/bin/python bench/index_placement.py --order copy-first
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import faiss  # noqa: E402
import numpy as np  # noqa: E402

from registry.index import FlatIndex  # noqa: E402


def anon_huge_kib() -> int:
    """Transparent huge pages backing this process's anonymous memory, in KiB."""
    with open("/proc/self/smaps_rollup") as f:
        for line in f:
            if line.startswith("AnonHugePages:"):
                return int(line.split()[1])
    return -1


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--order", choices=["flat-first", "copy-first"], default="flat-first")
    p.add_argument("--n", type=int, default=10_000_000)
    p.add_argument("--queries", type=int, default=40)
    args = p.parse_args()
    faiss.omp_set_num_threads(1)
    rng = np.random.default_rng(5)
    codes = rng.integers(0, 256, size=(args.n, 32), dtype=np.uint8)
    ids = np.arange(args.n, dtype=np.int64)
    thp_before = anon_huge_kib()  # numpy's own arrays ask for huge pages

    def bare() -> faiss.IndexBinaryFlat:
        index = faiss.IndexBinaryFlat(256)
        index.add(codes)
        return index

    if args.order == "copy-first":
        copy1 = bare()
        flat = FlatIndex.from_arrays(256, ids, codes)
    else:
        flat = FlatIndex.from_arrays(256, ids, codes)
        copy1 = bare()
    copy2 = bare()
    thp_after = anon_huge_kib()
    targets = {"flat_buffer": flat._base, "copy1": copy1, "copy2": copy2}
    queries = [rng.integers(0, 256, size=(1, 32), dtype=np.uint8) for _ in range(args.queries)]
    times: dict[str, list[float]] = {k: [] for k in targets}
    for i, q in enumerate(queries):
        names = list(targets) if i % 2 == 0 else list(reversed(targets))
        for name in names:
            t = time.perf_counter()
            targets[name].range_search(q, 32)
            times[name].append(time.perf_counter() - t)
    p50 = {k: round(float(np.median(v[3:])) * 1e3, 2) for k, v in times.items()}
    print(json.dumps({"order": args.order, "n": args.n, "p50_ms": p50,
                      "faiss_buffers_mib": round(3 * codes.nbytes / 2**20),
                      "thp_kib_before_buffers": thp_before,
                      "thp_kib_after_buffers": thp_after}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

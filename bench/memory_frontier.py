#!/usr/bin/env python3
"""Memory against speed for exact strong-tier search (issue 6's 48-byte bar), measured.

An exact index for "every code within 31 bits" by the pigeonhole principle probes some 16-bit
chunks of the query to a radius ``t`` with ``sum(t + 1) >= 32`` over the probed chunks; each
probed chunk needs a table listing the rows of each chunk value (18 bits a row in
``MultiIndex``), and every candidate's full code must be read to get its distance. Fewer tables
mean less memory per hash but deeper probes and many more candidates. This script measures, on
``--hashes`` uniform random PDQ codes (one query per call, one thread), every schedule from 16
tables down to 8, against faiss ``IndexBinaryFlat``:

- ``tables``: chunks probed (the others' tables need not exist);
- ``bytes_per_hash``: what an index holding only those tables would hold: code 32 + id 4 +
  tables x the measured bucket bytes per row of one ``MultiIndex`` table at this N (about 2.3),
  without the directories;
- strong-tier p50 / p99 latency, the candidates read per query, and exactness against faiss.

    .venv/bin/python bench/memory_frontier.py                 # 10M codes, about 4 minutes

Writes ``bench/results/memory_frontier.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from registry.index.catalog import single_thread  # noqa: E402
from registry.index.multi import MultiIndex  # noqa: E402

STRONG = 31
SKIP = 0xFF


def schedule(tables: int) -> bytes:
    """Probe ``tables`` of the 16 chunks with radii spread evenly, ``sum(r + 1) == 32``."""
    per, rest = divmod(STRONG + 1, tables)
    radii = [per - 1 + (1 if c < rest else 0) for c in range(tables)]
    return bytes(radii + [SKIP] * (16 - tables))


def pct(xs: list[float], p: float) -> float:
    return float(np.percentile(np.array(xs) * 1e3, p))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hashes", type=int, default=10_000_000)
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--seed", type=int, default=20261126)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "memory_frontier.json"))
    args = p.parse_args(argv)
    single_thread()
    rng = np.random.default_rng(args.seed)
    n = args.hashes
    codes = rng.integers(0, 256, size=(n, 32), dtype=np.uint8)
    ids = np.arange(1, n + 1, dtype=np.int64)
    # Queries: stored codes with 0..31 random bits flipped (a strong-tier neighbour each).
    queries = codes[rng.integers(0, n, args.queries)].copy()
    for q, d in zip(queries, rng.integers(0, STRONG + 1, args.queries), strict=True):
        for bit in rng.choice(256, size=int(d), replace=False):
            q[bit // 8] ^= np.uint8(1 << (bit % 8))

    flat = faiss.IndexBinaryFlat(256)
    flat.add(codes)
    truth, flat_t = [], []
    for q in queries:
        t = time.perf_counter()
        _lims, dist, rows = flat.range_search(q[None, :], STRONG + 1)
        flat_t.append(time.perf_counter() - t)
        truth.append(sorted(zip((ids[rows]).tolist(), dist.tolist(), strict=True)))
    del flat
    flat_p50 = pct(flat_t, 50)
    print(f"faiss IndexBinaryFlat: p50 {flat_p50:.2f} ms", flush=True)

    index = MultiIndex.from_arrays(256, ids, codes, STRONG)
    parts = index.memory_parts
    per_table = parts["buckets"] / 16 / n
    rows: list[dict[str, Any]] = []
    for tables in (16, 14, 12, 10, 8):
        index.schedule = schedule(tables)
        times, exact = [], True
        before = index.examined
        for q, want in zip(queries, truth, strict=True):
            t = time.perf_counter()
            got = index.search(q[None, :], STRONG)[0]
            times.append(time.perf_counter() - t)
            exact &= sorted(zip(got.ids.tolist(), got.distances.tolist(), strict=True)) == want
        row = {"tables": tables, "radii": sorted({r for r in index.schedule if r != SKIP}),
               "bytes_per_hash": round(32 + 4 + tables * per_table, 1),
               "p50_ms": round(pct(times, 50), 3), "p99_ms": round(pct(times, 99), 3),
               "x_faiss_p50": round(flat_p50 / pct(times, 50), 1),
               "candidates_per_query": (index.examined - before) // len(queries),
               "exact": exact}
        rows.append(row)
        print(json.dumps(row), flush=True)
    report = {"machine": {"cpu": platform.processor() or platform.machine(),
                          "nproc": os.cpu_count(), "faiss": faiss.__version__},
              "started": time.strftime("%Y-%m-%d %H:%M:%S"), "hashes": n,
              "queries": len(queries), "table_bytes_per_hash": round(per_table, 3),
              "faiss_flat": {"p50_ms": round(flat_p50, 3), "p99_ms": round(pct(flat_t, 99), 3),
                             "bytes_per_hash": 32},
              "schedules": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

#!/usr/bin/env python3
"""The multi-index search path alone, at the batched API's shape: 1000 PDQ and 1000 pHash
queries per call over ``--n`` uniform codes, at the service's radii and probe schedules.

Times (this thread's CPU, best of ``--repeats``) the C kernel (``_Tables.search``), the whole
``MultiIndex.search`` (kernel + per-query results) and, for a sample of queries, checks the
hits against a brute-force scan (exact within the exact radius; beyond it the same or fewer).

    .venv/bin/python bench/mih_search.py --n 1000000
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from registry.config import Settings  # noqa: E402
from registry.domain import SignalKind  # noqa: E402
from registry.index.multi import MultiIndex  # noqa: E402


def balanced(rng: np.random.Generator, n: int, nbytes: int) -> np.ndarray[Any, Any]:
    bits = nbytes * 8
    codes = rng.integers(0, 256, size=(n, nbytes), dtype=np.uint8)
    ones = np.unpackbits(codes, axis=1).sum(axis=1)
    bad = (ones <= bits // 4) | (ones >= bits - bits // 4)
    codes[bad] = rng.integers(0, 256, size=(int(bad.sum()), nbytes), dtype=np.uint8)
    return codes


def near(rng: np.random.Generator, codes: np.ndarray[Any, Any], k: int, hi: int
         ) -> np.ndarray[Any, Any]:
    out = codes[rng.integers(len(codes), size=k)].copy()
    bits = np.unpackbits(out, axis=1)
    for row in bits:
        row[rng.choice(len(row), int(rng.integers(1, hi + 1)), replace=False)] ^= 1
    return np.packbits(bits, axis=1)


def cpu_best(fn: Any, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.thread_time()
        fn()
        best = min(best, time.thread_time() - t0)
    return best


def brute(codes: np.ndarray[Any, Any], q: np.ndarray[Any, Any], radius: int) -> dict[int, int]:
    x = np.bitwise_xor(codes, q[None, :])
    d = np.unpackbits(x, axis=1).sum(axis=1)
    rows = np.flatnonzero(d <= radius)
    return {int(r): int(d[r]) for r in rows}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--check", type=int, default=20, help="queries checked by brute force")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--out", default="")
    args = p.parse_args(argv)
    settings = Settings.from_env({})
    rng = np.random.default_rng(args.seed)
    report: dict[str, Any] = {"n": args.n, "queries": args.queries}
    for kind, near_bits in ((SignalKind.PDQ, 16), (SignalKind.PHASH, 2)):
        t = settings.thresholds(kind)
        extra = settings.index_extra_probes if kind is SignalKind.PDQ else 0
        codes = balanced(rng, args.n, kind.bits // 8)
        ids = np.arange(1, args.n + 1, dtype=np.int64) * 3
        t0 = time.perf_counter()
        index = MultiIndex.from_arrays(kind.bits, ids, codes, t.strong, extra_probes=extra)
        build_s = time.perf_counter() - t0
        for case, qs in (("random", balanced(rng, args.queries, kind.bits // 8)),
                         ("half_near", np.concatenate([
                             near(rng, codes, args.queries // 2, near_bits),
                             balanced(rng, args.queries - args.queries // 2, kind.bits // 8)]))):
            kernel = cpu_best(functools.partial(index._base.search, qs, t.weak, index.schedule),
                              args.repeats)
            whole = cpu_best(functools.partial(index.search, qs, t.weak), args.repeats)
            index.examined = 0
            results = index.search(qs, t.weak)
            hits = sum(len(r.ids) for r in results)
            # The batched kernel and one query at a time must agree exactly (order included).
            for i in range(0, len(qs), max(1, len(qs) // (4 * args.check))):
                (one,) = index.search(qs[i:i + 1], t.weak)
                assert one.ids.tolist() == results[i].ids.tolist()
                assert one.distances.tolist() == results[i].distances.tolist()
            lims, rows, dist, _ = index._base.search(qs, t.weak, index.schedule)
            for i in range(0, len(qs), max(1, len(qs) // (4 * args.check))):
                _, r1, d1, _ = index._base.search(qs[i:i + 1], t.weak, index.schedule)
                assert r1.tolist() == rows[lims[i]:lims[i + 1]].tolist()
                assert d1.tolist() == dist[lims[i]:lims[i + 1]].tolist()
            checked = 0
            for i in range(0, len(qs), max(1, len(qs) // args.check)):
                want = brute(codes, qs[i], t.weak)
                got = {int(a) // 3 - 1: int(b) for a, b in
                       zip(results[i].ids, results[i].distances, strict=True)}
                exact_want = {r: d for r, d in want.items() if d <= index.exact_radius}
                assert {r: d for r, d in got.items() if d <= index.exact_radius} == exact_want
                assert all(want.get(r) == d for r, d in got.items())
                checked += 1
            row = {"kernel_ms": round(kernel * 1000, 2), "search_ms": round(whole * 1000, 2),
                   "examined_per_query": round(index.examined / len(qs)), "hits": hits,
                   "checked_against_brute_force": checked}
            report[f"{kind.value}_{case}"] = row
            print(f"{kind.value:5} {case:9}: kernel {row['kernel_ms']:7.2f} ms, search "
                  f"{row['search_ms']:7.2f} ms CPU per {len(qs)} queries; "
                  f"{row['examined_per_query']:,} candidates/query, {hits} hits "
                  f"(build {build_s:.1f} s)", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""MilvusIndex (Milvus Lite, BIN_FLAT) beside MultiIndex and faiss IndexBinaryFlat, in one run.

``--hashes`` uniform random 256-bit PDQ-like codes (seeded); ``--queries`` queries, half stored
codes with ``d`` random bits flipped (``d`` uniform in 0..55), half fresh random codes. For each
engine: insert rate (MultiIndex: ``from_arrays``, its bulk path; Milvus: ``add`` in batches of
100,000, i.e. upserts), one query per call at radius 31 and 52 (p50/p99), batched throughput
(batches of 100 and 1000 queries, 1000 queries of the same mix; the first search after loading
is timed apart), and agreement with faiss flat
(the brute force): queries answered exactly, and recall of faiss's (id, distance) pairs. For
Milvus also: the resident memory and CPU time of the Milvus Lite server process (a child of this
one), the size of its files, and the time from reopening the file to the first answer.

faiss and MultiIndex run single-threaded (as the registry's server processes run them); the
Milvus Lite server uses what threads it likes, and its CPU seconds per wall second are reported.

    .venv/bin/python bench/milvus_index.py --hashes 1000000 --queries 200 \\
        --out bench/results/milvus_index.json

``measure`` is importable (bench/scale.py uses it) and does nothing at import time.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import faiss  # noqa: E402

from bench.common import machine_info  # noqa: E402
from registry.index import MultiIndex  # noqa: E402
from registry.index.base import SearchResult  # noqa: E402

RADII = (31, 52)
PLANT_MAX = 55
BATCHES = (100, 1000)
INSERT_BATCH = 100_000
Search = Callable[[np.ndarray, int], list[SearchResult]]
Truth = list[set[tuple[int, int]]]


# --- inputs -----------------------------------------------------------------------------------
def make_queries(codes: np.ndarray, rng: np.random.Generator, n: int) -> np.ndarray:
    """Even rows: a stored code with 0..55 random bits flipped; odd rows: random codes."""
    out = rng.integers(0, 256, size=(n, 32), dtype=np.uint8)
    for i in range(0, n, 2):
        q = codes[int(rng.integers(len(codes)))].copy()
        for p in rng.choice(256, size=int(rng.integers(0, PLANT_MAX + 1)), replace=False):
            q[p // 8] ^= np.uint8(1 << (p % 8))
        out[i] = q
    return out


# --- measuring ----------------------------------------------------------------------------------
def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def single(search: Search, queries: np.ndarray, radius: int) -> dict[str, float]:
    """One query per call: p50/p99/mean in ms."""
    times = []
    for q in queries:
        t = time.perf_counter()
        search(q[None, :], radius)
        times.append((time.perf_counter() - t) * 1e3)
    return {"p50_ms": round(pct(times, 50), 3), "p99_ms": round(pct(times, 99), 3),
            "mean_ms": round(float(np.mean(times)), 3)}


def batched(search: Search, queries: np.ndarray) -> dict[str, float]:
    """Queries per second, for each batch size and radius."""
    out = {}
    for radius in RADII:
        for size in BATCHES:
            t = time.perf_counter()
            for start in range(0, len(queries), size):
                search(queries[start:start + size], radius)
            out[f"r{radius}_batch{size}_qps"] = round(len(queries) / (time.perf_counter() - t), 1)
    return out


def agreement(search: Search, queries: np.ndarray, truth: dict[int, Truth]) -> dict[str, Any]:
    """Per radius: queries whose hits equal faiss's exactly, and recall of faiss's pairs."""
    out: dict[str, Any] = {}
    for radius in RADII:
        got = [set(zip(r.ids.tolist(), r.distances.tolist(), strict=True))
               for r in search(queries, radius)]
        want = truth[radius]
        pairs = sum(len(w) for w in want)
        found = sum(len(g & w) for g, w in zip(got, want, strict=True))
        out[str(radius)] = {
            "queries": len(queries),
            "exact_queries": sum(g == w for g, w in zip(got, want, strict=True)),
            "pairs": pairs, "found": found, "extra": sum(len(g - w) for g, w in
                                                         zip(got, want, strict=True)),
            "recall": round(found / pairs, 6) if pairs else 1.0}
    return out


def engine_row(search: Search, queries: np.ndarray, batch_queries: np.ndarray,
               truth: dict[int, Truth], insert_rows_per_s: float) -> dict[str, Any]:
    t = time.perf_counter()
    search(queries[:1], RADII[0])  # the first search after loading, timed apart
    row: dict[str, Any] = {"insert_rows_per_s": round(insert_rows_per_s),
                           "first_query_ms": round((time.perf_counter() - t) * 1e3, 2)}
    for radius in RADII:
        row[f"single_r{radius}"] = single(search, queries, radius)
    row["batched"] = batched(search, batch_queries)
    row["correct"] = agreement(search, queries, truth)
    return row


# --- the Milvus Lite server process --------------------------------------------------------------
def server_pid(db_path: Path) -> int | None:
    """The Milvus Lite server serving ``db_path``: a child of this process."""
    me = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == me and str(db_path).encode() in cmdline:
            return int(entry.name)
    return None


def proc_rss(pid: int | None) -> int:
    if pid is None:
        return 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def proc_cpu_s(pid: int | None) -> float:
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def own_rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def disk_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


# --- the engines -------------------------------------------------------------------------------
def faiss_search(index: faiss.IndexBinaryFlat, ids: np.ndarray) -> Search:
    def search(queries: np.ndarray, radius: int) -> list[SearchResult]:
        lims, dist, rows = index.range_search(queries, radius + 1)  # exclusive radius
        return [SearchResult.of(ids[rows[lims[q]:lims[q + 1]]], dist[lims[q]:lims[q + 1]])
                for q in range(len(queries))]
    return search


def run_faiss(ids: np.ndarray, codes: np.ndarray, queries: np.ndarray,
              batch_queries: np.ndarray) -> tuple[dict[str, Any], dict[int, Truth]]:
    t = time.perf_counter()
    index = faiss.IndexBinaryFlat(256)
    index.add(codes)
    rate = len(codes) / (time.perf_counter() - t)
    search = faiss_search(index, ids)
    truth = {r: [set(zip(x.ids.tolist(), x.distances.tolist(), strict=True))
                 for x in search(queries, r)] for r in RADII}
    row = engine_row(search, queries, batch_queries, truth, rate)
    print(f"faiss flat: {row['single_r31']['p50_ms']} ms p50 at 31", flush=True)
    return row, truth


def run_multi(ids: np.ndarray, codes: np.ndarray, queries: np.ndarray,
              batch_queries: np.ndarray, truth: dict[int, Truth]) -> dict[str, Any]:
    gc.collect()
    before = own_rss()
    t = time.perf_counter()
    index = MultiIndex.from_arrays(256, ids, codes, 31, extra_probes=1)
    build_s = time.perf_counter() - t
    row = engine_row(index.search, queries, batch_queries, truth, len(codes) / build_s)
    row.update({"exact_radius": index.exact_radius, "extra_probes": 1,
                "build_s": round(build_s, 2), "rss_growth_bytes": own_rss() - before,
                "memory_bytes": int(index.memory_bytes)})
    print(f"multi: {row['single_r31']['p50_ms']} ms p50 at 31", flush=True)
    return row


def run_milvus(ids: np.ndarray, codes: np.ndarray, queries: np.ndarray,
               batch_queries: np.ndarray, truth: dict[int, Truth], folder: Path
               ) -> dict[str, Any]:
    from registry.index.milvus import MilvusIndex  # pymilvus only when measured

    db = folder / "milvus_bench.db"
    index = MilvusIndex(256, str(db), "bench_pdq")
    index.reset()
    pid = server_pid(db.resolve())
    idle_rss = proc_rss(pid)
    t = time.perf_counter()
    for start in range(0, len(codes), INSERT_BATCH):
        index.add(ids[start:start + INSERT_BATCH], codes[start:start + INSERT_BATCH])
    insert_s = time.perf_counter() - t
    assert len(index) == len(codes)
    cpu0, wall0 = proc_cpu_s(pid), time.perf_counter()
    row = engine_row(index.search, queries, batch_queries, truth, len(codes) / insert_s)
    row["server"] = {"pid_found": pid is not None, "rss_idle_bytes": idle_rss,
                     "rss_loaded_bytes": proc_rss(pid),
                     "cpu_s_per_wall_s_while_searching": round(
                         (proc_cpu_s(pid) - cpu0) / (time.perf_counter() - wall0), 2)}
    index.close()  # stops the server: its files are complete
    row["disk_bytes"] = disk_bytes(folder)
    t = time.perf_counter()
    with MilvusIndex(256, str(db), "bench_pdq") as reopened:
        reopened.search(queries[:1], 31)
        row["reopen_to_first_answer_s"] = round(time.perf_counter() - t, 2)
        reopened.reset()
    print(f"milvus: {row['single_r31']['p50_ms']} ms p50 at 31", flush=True)
    return row


def measure(n: int, queries: int, seed: int, uri_dir: Path) -> dict[str, Any]:
    """The three engines on ``n`` codes and ``queries`` queries; Milvus Lite's file lives in
    ``uri_dir``. Returns the report (``correct.exact``: Milvus equals faiss on every query)."""
    faiss.omp_set_num_threads(1)
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 256, size=(n, 32), dtype=np.uint8)
    ids = np.arange(1, n + 1, dtype=np.int64)
    q = make_queries(codes, rng, queries)
    batch_q = make_queries(codes, rng, max(BATCHES))
    uri_dir.mkdir(parents=True, exist_ok=True)
    flat, truth = run_faiss(ids, codes, q, batch_q)
    multi = run_multi(ids, codes, q, batch_q, truth)
    gc.collect()
    milvus = run_milvus(ids, codes, q, batch_q, truth, uri_dir)
    exact = all(c["exact_queries"] == c["queries"] and c["extra"] == 0
                for c in milvus["correct"].values())
    return {"hashes": n, "queries": queries, "batch_queries": len(batch_q), "seed": seed,
            "radii": list(RADII), "engines": {"milvus_lite_bin_flat": milvus,
                                              "multi": multi, "faiss_flat": flat},
            "correct": {"exact": exact, "milvus": milvus["correct"],
                        "multi": multi["correct"]}}


# --- report ------------------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    return machine_info("pymilvus", "milvus-lite")


def table(report: dict[str, Any]) -> str:
    head = (f"{'engine':<22}{'insert/s':>10}{'r31 p50':>9}{'r31 p99':>9}{'r52 p50':>9}"
            f"{'r52 p99':>9}{'31 b100':>9}{'31 b1k':>8}{'52 b100':>9}{'52 b1k':>8}"
            f"{'exact31':>9}{'rec52':>8}")
    lines = [head, "-" * len(head)]
    for name, row in report["engines"].items():
        b, c = row["batched"], row["correct"]
        lines.append(
            f"{name:<22}{row['insert_rows_per_s']:>10,}"
            f"{row['single_r31']['p50_ms']:>9.2f}{row['single_r31']['p99_ms']:>9.2f}"
            f"{row['single_r52']['p50_ms']:>9.2f}{row['single_r52']['p99_ms']:>9.2f}"
            f"{b['r31_batch100_qps']:>9,.0f}{b['r31_batch1000_qps']:>8,.0f}"
            f"{b['r52_batch100_qps']:>9,.0f}{b['r52_batch1000_qps']:>8,.0f}"
            f"{c['31']['exact_queries']:>5}/{c['31']['queries']:<3}{c['52']['recall']:>8.4f}")
    mil = report["engines"]["milvus_lite_bin_flat"]
    lines.append(f"latencies in ms, batched in queries/s; Milvus server RSS "
                 f"{mil['server']['rss_loaded_bytes'] / 2**20:.0f} MiB loaded "
                 f"({mil['server']['rss_idle_bytes'] / 2**20:.0f} MiB empty), "
                 f"{mil['server']['cpu_s_per_wall_s_while_searching']} CPU s per s searching, "
                 f"files {mil['disk_bytes'] / 2**20:.0f} MiB, reopen to first answer "
                 f"{mil['reopen_to_first_answer_s']} s; Milvus exact vs faiss: "
                 f"{report['correct']['exact']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--hashes", type=int, default=1_000_000)
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--seed", type=int, default=20261207)
    p.add_argument("--dir", default="", help="folder for the Milvus Lite file (default: a "
                                              "temporary folder, removed afterwards)")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "milvus_index.json"))
    args = p.parse_args(argv)
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    with tempfile.TemporaryDirectory(prefix="takedown-milvus-") as tmp:
        report = measure(args.hashes, args.queries, args.seed, Path(args.dir or tmp))
    report.update({"machine": machine(), "started": started, "args": vars(args)})
    print(table(report))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return 0 if report["correct"]["exact"] else 1


if __name__ == "__main__":
    raise SystemExit(main())

#!/usr/bin/env python3
"""Index benchmark: per-query latency, memory and snapshot cost of the registry's FlatIndex.

For each signal kind (PDQ, 256-bit; pHash, 64-bit) and each registry size it generates seeded
uniform random codes, then measures, one query per call with one OpenMP thread:

* ``flat``  – ``registry.index.FlatIndex.search`` (what the service calls),
* ``faiss`` – raw ``faiss.IndexBinaryFlat.range_search`` (radius + 1: faiss' radius is exclusive),
* ``numpy`` – a numpy brute-force scan (xor + ``np.bitwise_count`` on uint64 views + sum),

at the registry's thresholds (PDQ 31 and 52, pHash 8, all inclusive). Half of the queries are
near-duplicates of stored codes (a few bits flipped), half uniform random. Every query's id set
is compared between FlatIndex, faiss and the numpy scan; the script exits 1 if any differ.

It also measures the single-thread streaming-read bandwidth of the machine (the lower bound for
an exhaustive scan is ``bytes of codes / bandwidth``), memory per stored hash (FlatIndex's own
accounting and the VmRSS delta of building it) and the save/load time of an ``IndexSet``
snapshot holding the codes.

    .venv/bin/python bench/index.py                       # 1M and 10M (several minutes)
    .venv/bin/python bench/index.py --quick               # 100k smoke run
    .venv/bin/python bench/index.py --sizes 1000000 --queries 100 --out /tmp/x.json
"""

from __future__ import annotations

import argparse
import functools
import gc
import hashlib
import json
import multiprocessing as mp
import os
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import faiss  # noqa: E402
import numpy as np  # noqa: E402

from registry.domain import SignalKind  # noqa: E402
from registry.index import FlatIndex  # noqa: E402
from registry.index.catalog import IndexSet  # noqa: E402

# kind -> (signal kind, radii to measure, max bits flipped in a near-duplicate query)
KINDS: dict[str, tuple[SignalKind, tuple[int, ...], int]] = {
    "pdq": (SignalKind.PDQ, (31, 52), 16),
    "phash": (SignalKind.PHASH, (8,), 6),
}
LARGE = 2_000_000  # above this many codes the numpy scan runs on fewer queries


# --- helpers --------------------------------------------------------------------------------
def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def machine_info() -> dict[str, Any]:
    from bench.common import machine_info as common_info

    return {**common_info(), "registry_index": _code_state(), "caches": _caches(),
            "faiss_compile_options": faiss.get_compile_options()}


def _code_state() -> dict[str, Any]:
    """Which registry/index code was measured: uncommitted changes and file digests."""
    folder = ROOT / "registry" / "index"
    try:
        dirty = subprocess.run(["git", "status", "--porcelain", "--", str(folder)], cwd=ROOT,
                               capture_output=True, text=True, check=False).stdout.splitlines()
    except OSError:
        dirty = []
    return {
        "uncommitted": [line.strip() for line in dirty],
        "sha256": {f.name: hashlib.sha256(f.read_bytes()).hexdigest()[:16]
                   for f in sorted(folder.glob("*.py"))},
    }


def _caches() -> dict[str, str]:
    """Cache sizes as the (virtual) CPU reports them, from sysfs."""
    out: dict[str, str] = {}
    base = Path("/sys/devices/system/cpu/cpu0/cache")
    for d in sorted(base.glob("index*")):
        try:
            level = (d / "level").read_text().strip()
            kind = (d / "type").read_text().strip()
            out[f"L{level} {kind}"] = (d / "size").read_text().strip()
        except OSError:
            continue
    return out


def summarize(seconds: Sequence[float]) -> dict[str, float | int]:
    ms = np.asarray(seconds) * 1e3
    return {
        "n": len(ms),
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": float(ms.mean()),
        "min_ms": float(ms.min()),
        "max_ms": float(ms.max()),
    }


def random_codes(rng: np.random.Generator, n: int, nbytes: int) -> np.ndarray:
    return rng.integers(0, 256, size=(n, nbytes), dtype=np.uint8)


def make_queries(rng: np.random.Generator, codes: np.ndarray, count: int,
                 max_flip: int) -> tuple[np.ndarray, list[str]]:
    """Even positions: a stored code with 1..max_flip bits flipped; odd positions: random."""
    n, nbytes = codes.shape
    bits = nbytes * 8
    out = np.empty((count, nbytes), dtype=np.uint8)
    kinds = []
    for i in range(count):
        if i % 2 == 0:
            q = codes[int(rng.integers(n))].copy()
            flip = rng.choice(bits, size=int(rng.integers(1, max_flip + 1)), replace=False)
            for b in flip:
                q[b // 8] ^= np.uint8(1 << (b % 8))
            out[i] = q
            kinds.append("near")
        else:
            out[i] = random_codes(rng, 1, nbytes)[0]
            kinds.append("random")
    return out, kinds


def bandwidth(gib: float = 1.0, repeats: int = 5) -> dict[str, Any]:
    """Single-thread streaming read: reduce a ~1 GiB uint64 array, best of ``repeats``."""
    n = int(gib * (1 << 30)) // 8
    arr = np.ones(n, dtype=np.uint64)  # written, so every page is resident
    out: dict[str, Any] = {"array_bytes": int(arr.nbytes), "repeats": repeats}
    best = 0.0
    for name, fn in (("add.reduce", np.add.reduce), ("bitwise_or.reduce", np.bitwise_or.reduce)):
        fn(arr)  # warm
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn(arr)
            times.append(time.perf_counter() - t)
        gbs = arr.nbytes / min(times) / 1e9
        out[name] = {"best_s": min(times), "median_s": float(np.median(times)), "gb_per_s": gbs}
        best = max(best, gbs)
    out["gb_per_s"] = best
    del arr
    gc.collect()
    return out


def time_interleaved(fns: dict[str, Callable[[np.ndarray], Any]], queries: np.ndarray,
                     warmup: int = 3) -> tuple[dict[str, list[float]], dict[str, list[Any]]]:
    """Time each function on each query, alternating the order per query so that load from
    other processes on this shared machine falls on every method alike."""
    names = list(fns)
    rows = [queries[i : i + 1].copy() for i in range(len(queries))]
    for q in rows[:warmup]:
        for name in names:
            fns[name](q)
    times: dict[str, list[float]] = {k: [] for k in names}
    outs: dict[str, list[Any]] = {k: [] for k in names}
    for i, q in enumerate(rows):
        for name in names if i % 2 == 0 else reversed(names):
            t = time.perf_counter()
            r = fns[name](q)
            times[name].append(time.perf_counter() - t)
            outs[name].append(r)
    return times, outs


def brute_distances(words: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Hamming distance from one query (shape (1, nbytes)) to every row of ``words``."""
    c: np.ndarray = np.bitwise_count(np.bitwise_xor(words, q.view(np.uint64)))
    if c.shape[1] == 1:
        return c[:, 0]
    out: np.ndarray = c.sum(axis=1, dtype=np.uint16)
    return out


# --- one (kind, size) cell --------------------------------------------------------------------
def bench_cell(kind_name: str, n: int, n_queries: int, brute_queries: int, seed: int,
               bw_gbs: float, snapshot_dir: str | None) -> dict[str, Any]:
    faiss.omp_set_num_threads(1)
    kind, radii, max_flip = KINDS[kind_name]
    bits = kind.bits
    nbytes = bits // 8
    rng = np.random.default_rng([seed, bits, n])
    cell: dict[str, Any] = {"kind": kind_name, "bits": bits, "n": n,
                            "loadavg_at_start": list(os.getloadavg())}

    t = time.perf_counter()
    codes = random_codes(rng, n, nbytes)
    ids = np.arange(n, dtype=np.int64) * 3 + 1_000  # not row numbers, so the id map is tested
    cell["generate_s"] = time.perf_counter() - t
    queries, qkinds = make_queries(rng, codes, n_queries, max_flip)

    # FlatIndex and its memory.
    gc.collect()
    rss0 = rss_bytes()
    t = time.perf_counter()
    flat = FlatIndex.from_arrays(bits, ids, codes)
    build_s = time.perf_counter() - t
    rss1 = rss_bytes()
    cell["flat_build_s"] = build_s
    cell["memory"] = {
        "code_bytes": int(codes.nbytes),
        "flat_memory_bytes": int(flat.memory_bytes),
        "flat_bytes_per_hash": flat.memory_bytes / len(flat),
        "flat_rss_delta_bytes": rss1 - rss0,
        "flat_rss_delta_per_hash": (rss1 - rss0) / n,
    }

    # Raw faiss over the same codes.
    rss0 = rss_bytes()
    raw = faiss.IndexBinaryFlat(bits)
    raw.add(codes)
    cell["memory"]["faiss_rss_delta_bytes"] = rss_bytes() - rss0
    cell["memory"]["faiss_rss_delta_per_hash"] = (rss_bytes() - rss0) / n

    cell["bound_ms"] = codes.nbytes / (bw_gbs * 1e9) * 1e3
    cell["radii"] = {}
    all_agree = True
    for radius in radii:
        fns: dict[str, Callable[[np.ndarray], Any]] = {
            "flat": functools.partial(flat.search, radius=radius),
            "faiss": functools.partial(raw.range_search, thresh=radius + 1),
        }
        # Diagnostic: the same faiss call on FlatIndex's own buffer (a private attribute). In a
        # process, the first large faiss buffer scanned measurably slower than later ones with
        # the same contents, so flat - faiss mixes wrapper cost with buffer placement; flat -
        # base is the wrapper's cost alone.
        own = getattr(flat, "_base", None)
        if isinstance(own, faiss.IndexBinaryFlat):
            fns["base"] = functools.partial(own.range_search, thresh=radius + 1)
        times, outs = time_interleaved(fns, queries)
        flat_sets = [set(res[0].ids.tolist()) for res in outs["flat"]]
        faiss_sets = [set(ids[rows].tolist()) for (_lims, _d, rows) in outs["faiss"]]
        flat_dists = [sorted(res[0].distances.tolist()) for res in outs["flat"]]
        faiss_dists = [sorted(d.tolist()) for (_lims, d, _rows) in outs["faiss"]]
        mismatches = [i for i in range(n_queries)
                      if flat_sets[i] != faiss_sets[i] or flat_dists[i] != faiss_dists[i]]
        agree = not mismatches
        all_agree &= agree
        hits = [len(s) for s in flat_sets]
        near_hits = [h for h, k in zip(hits, qkinds, strict=True) if k == "near"]
        rnd_hits = [h for h, k in zip(hits, qkinds, strict=True) if k == "random"]
        cell["radii"][str(radius)] = {
            "flat": summarize(times["flat"]),
            "faiss": summarize(times["faiss"]),
            "base": summarize(times["base"]) if "base" in times else None,
            "flat_equals_faiss": agree,
            "mismatched_queries": mismatches[:20],
            "mean_hits_near": float(np.mean(near_hits)) if near_hits else 0.0,
            "mean_hits_random": float(np.mean(rnd_hits)) if rnd_hits else 0.0,
            "near_queries_found": int(sum(h > 0 for h in near_hits)),
            "random_queries_with_hits": int(sum(h > 0 for h in rnd_hits)),
            "_flat_sets": flat_sets,  # removed before writing JSON
        }
    raw.reset()
    gc.collect()

    # numpy brute force: distances to everything; time is independent of the radius.
    brute = functools.partial(brute_distances, codes.view(np.uint64))  # (n, nbytes // 8)
    nb = min(brute_queries, n_queries)
    btimes, bouts = time_interleaved({"numpy": brute}, queries[:nb], warmup=1)
    cell["numpy"] = summarize(btimes["numpy"])
    brute_agree = True
    for radius in radii:
        rec = cell["radii"][str(radius)]
        sets = [set(ids[np.flatnonzero(d <= radius)].tolist()) for d in bouts["numpy"]]
        ok = all(sets[i] == rec["_flat_sets"][i] for i in range(nb))
        rec["numpy_equals_flat"] = ok
        brute_agree &= ok
    del bouts, brute
    for rec in cell["radii"].values():
        del rec["_flat_sets"]
    cell["flat_equals_faiss"] = all_agree
    cell["numpy_equals_flat"] = brute_agree
    gc.collect()

    # Snapshot save/load through IndexSet.
    iset = IndexSet()
    iset.indexes[kind] = flat
    iset.position = 12345
    with tempfile.TemporaryDirectory(dir=snapshot_dir, prefix="bench-index-") as tmp:
        path = Path(tmp) / "index.snapshot"
        t = time.perf_counter()
        iset.save(path)
        save_s = time.perf_counter() - t
        size = path.stat().st_size
        gc.collect()
        rss0 = rss_bytes()
        t = time.perf_counter()
        loaded = IndexSet.load(path)
        load_s = time.perf_counter() - t
        load_rss = rss_bytes() - rss0
        q = queries[:1]
        same = (len(loaded.indexes[kind]) == n and loaded.position == 12345
                and np.array_equal(loaded.indexes[kind].search(q, radii[0])[0].ids,
                                   flat.search(q, radii[0])[0].ids))
        cell["snapshot"] = {
            "save_s": save_s,
            "load_s": load_s,
            "file_bytes": size,
            "load_rss_delta_bytes": load_rss,
            "roundtrip_ok": bool(same),
            "dir": tmp,
            "note": "load right after save: the file is in the page cache",
        }
        del loaded
    del iset, flat, codes, ids
    gc.collect()
    cell["peak_rss_bytes"] = _peak_rss()
    return cell


# --- output ---------------------------------------------------------------------------------
def print_tables(report: dict[str, Any]) -> None:
    bw = report["bandwidth"]["gb_per_s"]
    print(f"\nSingle-thread streaming read: {bw:.1f} GB/s (best of np.add.reduce / "
          f"np.bitwise_or.reduce over {report['bandwidth']['array_bytes'] / 2**30:.0f} GiB)")
    hdr = (f"{'kind':<6}{'N':>11}{'T':>4}  {'method':<6}{'p50 ms':>9}{'p99 ms':>9}"
           f"{'mean ms':>9}{'bound ms':>9}{'mean/bnd':>9}  {'same':<5}{'hits near/rand':>15}")
    print("\nLatency, one query per call, 1 thread")
    print(hdr)
    print("-" * len(hdr))
    for c in report["cells"]:
        bound = c["bound_ms"]
        for r, rec in c["radii"].items():
            rows = [("flat", rec["flat"]), ("base", rec["base"]), ("faiss", rec["faiss"])]
            rows = [(m, s) for m, s in rows if s is not None]
            if r == next(iter(c["radii"])):
                rows.append(("numpy", c["numpy"]))
            for m, s in rows:
                same = {"flat": "yes" if rec["flat_equals_faiss"] else "NO",
                        "numpy": "yes" if c["numpy_equals_flat"] else "NO"}.get(m, "")
                hits = (f"{rec['mean_hits_near']:.1f}/{rec['mean_hits_random']:.2f}"
                        if m == "flat" else "")
                tr = r if m != "numpy" else "*"
                print(f"{c['kind']:<6}{c['n']:>11,}{tr:>4}  {m:<6}{s['p50_ms']:>9.2f}"
                      f"{s['p99_ms']:>9.2f}{s['mean_ms']:>9.2f}{bound:>9.2f}"
                      f"{s['mean_ms'] / bound:>9.2f}  {same:<5}{hits:>15}")
    print("  base: raw faiss range_search on FlatIndex's own buffer; faiss: on a separate copy.")
    print("  (* numpy computes all distances; its time does not depend on T.)")
    print("\nMemory and snapshots")
    hdr2 = (f"{'kind':<6}{'N':>11}  {'B/hash':>7}{'RSS B/hash':>11}{'faiss RSS':>10}"
            f"{'build s':>8}{'file MB':>9}{'save s':>8}{'load s':>8}")
    print(hdr2)
    print("-" * len(hdr2))
    for c in report["cells"]:
        m, s = c["memory"], c["snapshot"]
        print(f"{c['kind']:<6}{c['n']:>11,}  {m['flat_bytes_per_hash']:>7.1f}"
              f"{m['flat_rss_delta_per_hash']:>11.1f}{m['faiss_rss_delta_per_hash']:>10.1f}"
              f"{c['flat_build_s']:>8.2f}{s['file_bytes'] / 1e6:>9.1f}{s['save_s']:>8.2f}"
              f"{s['load_s']:>8.2f}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="1000000,10000000",
                   help="comma-separated registry sizes (default 1000000,10000000)")
    p.add_argument("--queries", type=int, default=50, help="queries per (kind, size, radius)")
    p.add_argument("--brute-queries", type=int, default=None,
                   help=f"queries for the numpy scan (default: --queries up to {LARGE:,} "
                        "codes, 5 above)")
    p.add_argument("--kinds", default="pdq,phash")
    p.add_argument("--seed", type=int, default=20240601)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "index.json"))
    p.add_argument("--snapshot-dir", default=None, help="where snapshot files go (default: TMPDIR)")
    p.add_argument("--quick", action="store_true", help="smoke run: 100k codes only")
    args = p.parse_args(argv)

    sizes = [100_000] if args.quick else [int(s) for s in args.sizes.split(",") if s]
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    for k in kinds:
        if k not in KINDS:
            p.error(f"unknown kind {k!r}; choose from {', '.join(KINDS)}")

    faiss.omp_set_num_threads(1)
    started = time.time()
    report: dict[str, Any] = {
        "command": shlex.join([sys.executable, *sys.argv]),
        "argv": sys.argv,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "machine": machine_info(),
        "settings": {"sizes": sizes, "kinds": kinds, "queries": args.queries,
                     "seed": args.seed, "omp_threads": 1,
                     "radii": {k: list(KINDS[k][1]) for k in kinds},
                     "near_dup_max_flipped_bits": {k: KINDS[k][2] for k in kinds},
                     "query_mix": "even: stored code with 1..max bits flipped; odd: uniform"},
    }
    print(f"machine: {report['machine']['cpu_model']}, nproc {report['machine']['nproc']}, "
          f"numpy {np.__version__}, faiss {faiss.__version__}", flush=True)
    report["bandwidth"] = bandwidth()
    # numpy asks for transparent huge pages on large arrays; faiss' own buffers get them only
    # where the kernel gives them unasked. The bound above uses numpy's default; this is the
    # same read on 4 KiB pages, for reference.
    set_hp = getattr(getattr(np, "_core", np.core).multiarray, "_set_madvise_hugepage", None)
    if set_hp is not None:
        previous = set_hp(False)
        report["bandwidth"]["huge_pages_off"] = bandwidth()
        set_hp(previous)
    bw = report["bandwidth"]["gb_per_s"]
    off = report["bandwidth"].get("huge_pages_off", {}).get("gb_per_s")
    print(f"bandwidth: {bw:.2f} GB/s (4 KiB pages: {off or float('nan'):.2f} GB/s)", flush=True)

    report["cells"] = []
    for n in sizes:
        for k in kinds:
            nbq = args.brute_queries if args.brute_queries is not None else (
                args.queries if n <= LARGE else 5)
            t = time.perf_counter()
            # A fresh interpreter per cell: RSS deltas are not hidden by pages the allocator
            # kept from the previous cell, and one cell's garbage does not slow the next.
            with mp.get_context("spawn").Pool(1) as pool:
                cell = pool.apply(bench_cell, (k, n, args.queries, nbq, args.seed, bw,
                                               args.snapshot_dir))
            cell["cell_s"] = time.perf_counter() - t
            report["cells"].append(cell)
            first = next(iter(cell["radii"].values()))
            print(f"{k} n={n:,}: flat p50 {first['flat']['p50_ms']:.2f} ms, faiss p50 "
                  f"{first['faiss']['p50_ms']:.2f} ms, numpy p50 {cell['numpy']['p50_ms']:.1f} "
                  f"ms, flat==faiss {cell['flat_equals_faiss']}, numpy==flat "
                  f"{cell['numpy_equals_flat']} ({cell['cell_s']:.0f} s)", flush=True)

    report["flat_equals_faiss"] = all(c["flat_equals_faiss"] for c in report["cells"])
    report["numpy_equals_flat"] = all(c["numpy_equals_flat"] for c in report["cells"])
    report["elapsed_s"] = time.time() - started
    report["machine"]["loadavg_at_end"] = list(os.getloadavg())
    report["peak_rss_bytes"] = max(c["peak_rss_bytes"] or 0 for c in report["cells"])

    print_tables(report)
    print(f"\nFlatIndex == faiss for every query: {report['flat_equals_faiss']}; "
          f"numpy == FlatIndex: {report['numpy_equals_flat']}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return 0 if report["flat_equals_faiss"] and report["numpy_equals_flat"] else 1


def _peak_rss() -> int | None:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return None


if __name__ == "__main__":
    sys.exit(main())

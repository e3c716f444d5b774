#!/usr/bin/env python3
"""Scale benchmark (issues 6 and 13): the registry's index against faiss at 10M PDQ hashes,
mapped from its snapshot; restart time; index memory per machine with 1 and 4 processes; a
compaction while others serve; change visibility across gunicorn workers on PostgreSQL; batched
HTTP throughput on PostgreSQL; and the Milvus backend beside the multi-index at 1M. Everything is
measured in one run on this machine.

Phases (each can be skipped with ``--skip``):

1. **index**: ``--hashes`` uniform random 256-bit codes (seeded). Queries: half are stored codes
   with ``d`` random bits flipped, ``d`` uniform in 0..55 (so true neighbours sit at every
   distance up to the weak threshold), half are fresh random codes (no neighbour). One query per
   call, single thread, for both: faiss ``IndexBinaryFlat.range_search`` and ``MultiIndex``.
   The default configuration (the first ``--extra-probes``) is written to a snapshot and
   searched *mapped from it*, as a server does. The strong tier (radius 31) must return exactly
   faiss's hits; the weak tier (radius 55) reports recall against faiss's hits, overall and per
   distance band. As those queries give only a few hundred true pairs, ``--planted`` more are
   planted the same way and each checked for its own neighbour.
2. **restart**: fresh Python processes import the registry and load that snapshot until their
   first search answers: mapped (what a server does), copied into private memory (as every
   worker did before snapshot format 3), and mapped after emptying the page cache (root only).
3. **memory** (with **compaction**): 1 and ``--workers`` processes load the snapshot at once,
   mapped and copied; the machine's index memory is every process' anonymous growth plus the
   mapped file's resident pages once (``/proc/<pid>/smaps``). Then one process folds 40,000
   adds and 10,000 removals into a new snapshot of the same file while ``--workers - 1`` others
   map the old one and search: build and write time, the writer's peak private memory, the
   readers' latency before and during.
4. **visibility**: ``gunicorn registry.web.wsgi:create() -w 4`` on a fresh PostgreSQL database;
   the benchmark submits a case (through the service, to PostgreSQL), then polls ``/readyz``
   from 4 client threads until each of the 4 worker processes has reported an index position at
   or past the commit: add-to-visible; then the same for a withdrawal. ``--rounds`` times. Also
   which snapshot file (inode) each worker maps.
5. **throughput**: ``bench/http_throughput.py`` run against PostgreSQL (``--database-url``), 1M
   hashes, as its own process; its JSON is included.
6. **milvus**: ``bench/milvus_index.py``'s ``measure``: Milvus Lite (BIN_FLAT), MultiIndex and
   faiss flat on the same ``--milvus-hashes`` codes: insert rate, latency, batched throughput,
   agreement with brute force, the Milvus server's memory and file size.

    .venv/bin/python bench/scale.py                       # 10M, all phases (~30 min)
    .venv/bin/python bench/scale.py --hashes 1000000 --skip throughput --skip milvus

Results: ``bench/results/scale.json`` (``--out``) and a printed table of the goals.
"""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent

import argparse  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import signal  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import urllib.request  # noqa: E402
import uuid  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import faiss  # noqa: E402

from bench.common import free_port  # noqa: E402
from registry.domain import SignalKind  # noqa: E402
from registry.index import MultiIndex  # noqa: E402
from registry.index.catalog import IndexOptions, IndexSet  # noqa: E402

STRONG, WEAK = 31, 55
PG_ADMIN = os.environ.get("TEST_POSTGRES_URL",
                          "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def lat(values: list[float]) -> dict[str, float]:
    ms = [v * 1e3 for v in values]
    return {"p50_ms": round(pct(ms, 50), 3), "p99_ms": round(pct(ms, 99), 3),
            "mean_ms": round(statistics.fmean(ms), 3)}


# --- phase 1: index ---------------------------------------------------------------------------
def make_queries(codes: np.ndarray, rng: np.random.Generator, n: int) -> np.ndarray:
    out = rng.integers(0, 256, size=(n, 32), dtype=np.uint8)
    for i in range(0, n, 2):
        q = codes[int(rng.integers(len(codes)))].copy()
        for p in rng.choice(256, size=int(rng.integers(0, WEAK + 1)), replace=False):
            q[p // 8] ^= np.uint8(1 << (p % 8))
        out[i] = q
    return out


def measure_multi(index: MultiIndex, queries: np.ndarray, truth: list[dict[int, int]]
                  ) -> dict[str, Any]:
    """Strong tier: exactly faiss's hits? Weak tier: recall against faiss, per distance band."""
    strong_t: list[float] = []
    strong_exact = True
    for q, want in zip(queries, truth, strict=True):
        t = time.perf_counter()
        got = index.search(q[None, :], STRONG)[0]
        strong_t.append(time.perf_counter() - t)
        expect = {i: d for i, d in want.items() if d <= STRONG}
        strong_exact &= dict(zip(got.ids.tolist(), got.distances.tolist(), strict=True)) == expect
    weak_t: list[float] = []
    found = total = wrong = 0
    bands: dict[str, list[int]] = {}
    before_examined = index.examined
    for q, want in zip(queries, truth, strict=True):
        t = time.perf_counter()
        got = index.search(q[None, :], WEAK)[0]
        weak_t.append(time.perf_counter() - t)
        hits = dict(zip(got.ids.tolist(), got.distances.tolist(), strict=True))
        wrong += sum(1 for i, d in hits.items() if want.get(i) != d)
        for i, d in want.items():
            band = "0-31" if d <= 31 else "32-40" if d <= 40 else "41-47" if d <= 47 else "48-55"
            b = bands.setdefault(band, [0, 0])
            b[1] += 1
            b[0] += i in hits
            total += 1
            found += i in hits
    return {"strong": lat(strong_t), "weak": lat(weak_t), "strong_exact": strong_exact,
            "weak_recall": round(found / total, 5) if total else None,
            "weak_true_pairs": total,
            "weak_recall_by_distance": {k: {"pairs": v[1], "recall": round(v[0] / v[1], 4)}
                                        for k, v in sorted(bands.items())},
            "wrong_distances": wrong,
            "candidates_per_weak_query": round((index.examined - before_examined)
                                               / len(queries))}


def planted_recall(index: MultiIndex, codes: np.ndarray, ids: np.ndarray, n: int,
                   rng: np.random.Generator) -> dict[str, Any]:
    """Many more near neighbours than the brute-force queries can afford: stored codes with d
    random bits flipped (d uniform in 0..55), each checked for its own planted neighbour (its
    distance is d, verified by popcount)."""
    per_d: dict[int, list[int]] = {}
    for _ in range(n):
        row = int(rng.integers(len(codes)))
        d = int(rng.integers(0, WEAK + 1))
        q = codes[row].copy()
        for p in rng.choice(256, size=d, replace=False):
            q[p // 8] ^= np.uint8(1 << (p % 8))
        assert int(np.unpackbits(q ^ codes[row]).sum()) == d
        got = index.search(q[None, :], WEAK)[0]
        hit = ids[row] in set(got.ids.tolist())
        per_d.setdefault(d, [0, 0])
        per_d[d][0] += hit
        per_d[d][1] += 1
    found = sum(v[0] for v in per_d.values())
    band = {name: [sum(per_d.get(d, [0, 0])[i] for d in range(lo, hi + 1)) for i in (0, 1)]
            for name, lo, hi in (("0-31", 0, 31), ("32-40", 32, 40), ("41-47", 41, 47),
                                 ("48-55", 48, 55))}
    return {"pairs": n, "recall": round(found / n, 5),
            "by_distance": {k: {"pairs": v[1], "recall": round(v[0] / v[1], 4) if v[1] else None}
                            for k, v in band.items()},
            "recall_at_55": round(per_d[55][0] / per_d[55][1], 4) if 55 in per_d else None}


def phase_index(n: int, queries_n: int, seed: int, snapshot: Path | None,
                extras: list[int], planted: int) -> dict[str, Any]:
    faiss.omp_set_num_threads(1)
    rng = np.random.default_rng(seed)
    t = time.perf_counter()
    codes = rng.integers(0, 256, size=(n, 32), dtype=np.uint8)
    ids = np.arange(1, n + 1, dtype=np.int64)
    print(f"index: {n:,} codes generated in {time.perf_counter() - t:.1f} s", flush=True)
    queries = make_queries(codes, rng, queries_n)

    flat = faiss.IndexBinaryFlat(256)
    flat.add(codes)
    truth: list[dict[int, int]] = []
    flat_strong: list[float] = []
    for q in queries:
        t = time.perf_counter()
        flat.range_search(q[None, :], STRONG + 1)
        flat_strong.append(time.perf_counter() - t)
    flat_weak: list[float] = []
    for q in queries:
        t = time.perf_counter()
        _lims, dist, rows = flat.range_search(q[None, :], WEAK + 1)
        flat_weak.append(time.perf_counter() - t)
        truth.append({int(ids[r]): int(d) for r, d in zip(rows, dist, strict=True)})
    print(f"index: faiss flat p50 {pct(flat_strong, 50) * 1e3:.2f} ms (strong), "
          f"{pct(flat_weak, 50) * 1e3:.2f} ms (weak)", flush=True)
    del flat
    gc.collect()

    out: dict[str, Any] = {
        "hashes": n, "queries": len(queries),
        "faiss_flat": {"strong": lat(flat_strong), "weak": lat(flat_weak)},
        "multi": {}}
    index = None
    for extra in extras:
        index = None
        gc.collect()
        before = rss_bytes()
        t = time.perf_counter()
        index = MultiIndex.from_arrays(256, ids, codes, STRONG, extra_probes=extra)
        build_s = time.perf_counter() - t
        grown = rss_bytes() - before  # tables only: the codes and ids arrays already existed
        parts = index.memory_parts
        searched = "built in this process"
        if extra == extras[0] and snapshot is not None:
            # The default configuration is measured as a server uses it: written to a snapshot
            # and mapped from it (the restart and memory phases map the same file).
            iset = IndexSet(IndexOptions())
            iset.indexes[SignalKind.PDQ] = index
            t = time.perf_counter()
            iset.save(snapshot)
            out["snapshot_save_s"] = round(time.perf_counter() - t, 2)
            out["snapshot_bytes"] = snapshot.stat().st_size
            del iset
            index = None
            gc.collect()
            t = time.perf_counter()
            loaded = IndexSet.load(snapshot, IndexOptions(extra_probes=extra))
            out["snapshot_map_s"] = round(time.perf_counter() - t, 3)
            mapped = loaded.indexes[SignalKind.PDQ]
            assert isinstance(mapped, MultiIndex) and mapped.mapped
            index = mapped
            searched = "mapped from the snapshot"
        row = measure_multi(index, queries, truth)
        row["planted"] = planted_recall(index, codes, ids, planted,
                                        np.random.default_rng(seed + 1))
        row.update({"extra_probes": extra, "exact_radius": index.exact_radius,
                    "searched": searched, "build_s": round(build_s, 2),
                    "speedup_strong_p50": round(pct(flat_strong, 50)
                                                / row["strong"]["p50_ms"] * 1e3, 1),
                    "speedup_weak_p50": round(pct(flat_weak, 50)
                                              / row["weak"]["p50_ms"] * 1e3, 1),
                    "memory_bytes_per_hash": round(sum(parts.values()) / n, 1),
                    "memory_bytes_per_hash_by_part": {
                        k: round(v / n, 2) for k, v in parts.items()}})
        if extra == extras[0]:  # later builds reuse freed memory: RSS growth says nothing
            row["tables_rss_bytes_per_hash"] = round(grown / n, 1)
        out["multi"][str(extra)] = row
        print(f"index: extra probes {extra} ({searched}): strong p50 "
              f"{row['strong']['p50_ms']} ms (x{row['speedup_strong_p50']}), weak recall "
              f"{row['weak_recall']} (planted: {row['planted']['recall']})", flush=True)
        index = None
    return out


# --- phase 2: restart -------------------------------------------------------------------------
RESTART_CHILD = """
import os, sys, time, resource
t0 = float(sys.argv[2])
sys.path.insert(0, sys.argv[3])
mapped = sys.argv[4] == "mapped"
def rss():
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')
from registry.index.catalog import IndexSet, IndexOptions, single_thread
import numpy as np
single_thread()
imported = time.time()
base = rss()
from pathlib import Path
iset = IndexSet.load(Path(sys.argv[1]), IndexOptions(), mapped=mapped)
loaded = time.time()
from registry.domain import SignalKind
iset.search(SignalKind.PDQ, [bytes(32)], 31)
ready = time.time()
import json
print(json.dumps({"import_s": imported - t0, "load_s": loaded - imported, "ready_s": ready - t0,
                  "rss": rss(), "rss_after_import": base, "hashes": len(iset)}))
"""


def _drop_page_cache() -> bool:
    """Empty the kernel's page cache (root only), for a cold-start run; False if not allowed."""
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def _restart_runs(snapshot: Path, repeats: int, mode: str, cold: bool = False
                  ) -> list[dict[str, Any]]:
    runs = []
    for _ in range(repeats):
        if cold and not _drop_page_cache():
            return []
        t0 = time.time()
        out = subprocess.run([sys.executable, "-c", RESTART_CHILD, str(snapshot), repr(t0),
                              str(ROOT), mode], capture_output=True, text=True)
        if out.returncode:
            raise RuntimeError(f"restart child failed: {out.stderr[-2000:]}")
        run = json.loads(out.stdout.strip().splitlines()[-1])
        runs.append({k: round(v, 3) if isinstance(v, float) else v for k, v in run.items()})
    return runs


def phase_restart(snapshot: Path, repeats: int) -> dict[str, Any]:
    """A fresh process until it answers a search: mapping the snapshot (what a server does) and,
    side by side, reading it into private memory (what every worker did before format 3,
    without the table build that came on top). Warm: the file is in the page cache, as it is
    when a worker restarts beside others; cold: after emptying the page cache, if allowed."""
    out: dict[str, Any] = {}
    for mode in ("mapped", "copy"):
        runs = _restart_runs(snapshot, repeats, mode)
        n = runs[0]["hashes"]
        out[mode] = {
            "runs": runs,
            "ready_s_median": round(statistics.median(r["ready_s"] for r in runs), 3),
            "ready_s_max": round(max(r["ready_s"] for r in runs), 3),
            "load_s_median": round(statistics.median(r["load_s"] for r in runs), 3),
            "rss_bytes_per_hash": round(statistics.median(
                (r["rss"] - r["rss_after_import"]) / n for r in runs), 1)}
    cold = _restart_runs(snapshot, 1, "mapped", cold=True)
    out["mapped_cold"] = ({"runs": cold, "ready_s": cold[0]["ready_s"]} if cold else
                          {"skipped": "the page cache cannot be emptied here (not root)"})
    out["note"] = ("process start (python -c) -> imports -> snapshot header, sizes, xxh3 of "
                   "every array -> tables used as they are (mapped) or read (copy) -> first "
                   "search answered; warm page cache unless marked cold")
    return out


# --- phase 2b: memory per machine -------------------------------------------------------------
# What every child process of the memory and compaction phases starts with: the registry on
# sys.path (argv[2]), the index imports, one thread, and its anonymous resident bytes.
CHILD_PRELUDE = """
import os, sys, json, time, threading
sys.path.insert(0, sys.argv[2])
import numpy as np
from pathlib import Path
from registry.index.catalog import IndexSet, IndexOptions, single_thread
from registry.index import snapshot
from registry.domain import SignalKind
def anon():
    for line in open('/proc/self/status'):
        if line.startswith('RssAnon:'):
            return int(line.split()[1]) * 1024
single_thread()
"""

MEMORY_CHILD = CHILD_PRELUDE + """
before = anon()
iset = IndexSet.load(Path(sys.argv[1]), IndexOptions(), mapped=sys.argv[3] == "mapped")
iset.search(SignalKind.PDQ, [bytes(32)], 31)
print(json.dumps({"anon_after_import": before, "hashes": len(iset)}), flush=True)
sys.stdin.read()  # stay alive, holding the index, until the benchmark has measured every worker
"""


def _smaps_of(pid: int, path: Path) -> dict[str, int]:
    """Rss and Pss (bytes) of ``pid``'s mappings of ``path``, and its anonymous resident bytes."""
    out = {"mapped_rss": 0, "mapped_pss": 0, "anon": 0}
    target, current = str(path), False
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            head = line.split()
            if head and "-" in head[0] and len(head) >= 5 and not head[0].endswith(":"):
                current = len(head) >= 6 and head[5] == target
            elif current and head[0] in ("Rss:", "Pss:"):
                out["mapped_rss" if head[0] == "Rss:" else "mapped_pss"] += int(head[1]) * 1024
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                out["anon"] = int(line.split()[1]) * 1024
    return out


def _memory_run(snapshot: Path, workers: int, mode: str) -> dict[str, Any]:
    procs = [subprocess.Popen([sys.executable, "-c", MEMORY_CHILD, str(snapshot), str(ROOT),
                               mode], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
             for _ in range(workers)]
    try:
        reports = [json.loads(p.stdout.readline()) for p in procs]  # type: ignore[union-attr]
        per = []
        for p, r in zip(procs, reports, strict=True):
            m = _smaps_of(p.pid, snapshot)
            per.append({**m, "private_growth": m["anon"] - r["anon_after_import"]})
    finally:
        for p in procs:
            p.stdin.close()  # type: ignore[union-attr]
            p.wait(60)
    n = reports[0]["hashes"]
    # The machine holds each worker's private growth, plus the mapped file's pages once (they
    # are the page cache's, shared by every mapping; each worker maps all of it).
    shared = max(w["mapped_rss"] for w in per)
    machine = sum(w["private_growth"] for w in per) + shared
    return {"workers": workers, "mode": mode, "hashes": n, "per_worker": per,
            "shared_bytes": shared, "machine_bytes": machine,
            "machine_bytes_per_hash": round(machine / n, 1),
            "pss_of_mapping_summed": sum(w["mapped_pss"] for w in per)}


def phase_memory(snapshot: Path, workers: int) -> dict[str, Any]:
    """Index memory of one machine with 1 and ``workers`` processes serving the same snapshot,
    mapped (format 3) and, side by side, copied into each process (as before)."""
    out: dict[str, Any] = {"snapshot_bytes": snapshot.stat().st_size}
    for mode in ("mapped", "copy"):
        one = _memory_run(snapshot, 1, mode)
        many = _memory_run(snapshot, workers, mode)
        out[mode] = {"one": one, "many": many,
                     "ratio": round(many["machine_bytes"] / one["machine_bytes"], 3)}
        print(f"memory: {mode}: 1 worker {one['machine_bytes'] / 2**20:.0f} MiB, {workers} "
              f"workers {many['machine_bytes'] / 2**20:.0f} MiB (x{out[mode]['ratio']})",
              flush=True)
    n = out["mapped"]["one"]["hashes"]
    out["shared_bytes_per_hash"] = round(out["mapped"]["many"]["shared_bytes"] / n, 1)
    out["note"] = ("machine bytes = sum over workers of anonymous memory grown by loading, plus "
                   "the mapped snapshot's resident pages once (shared page cache); measured with "
                   "every worker alive at once, from /proc/<pid>/smaps and status")
    return out


# --- phase 2c: a compaction while others serve -----------------------------------------------
COMPACT_READER = CHILD_PRELUDE + """
iset = IndexSet.load(Path(sys.argv[1]), IndexOptions())
rng = np.random.default_rng(int(sys.argv[3]))
print(json.dumps({"ready": True}), flush=True)
stop = Path(sys.argv[4])
times = []
while not stop.exists():
    q = [rng.integers(0, 256, 32, dtype=np.uint8).tobytes()]
    t = time.time()
    iset.search(SignalKind.PDQ, q, 31)
    times.append((t, time.time() - t))
    time.sleep(0.002)
print(json.dumps({"times": times}), flush=True)
"""

COMPACT_WRITER = CHILD_PRELUDE + """
path = Path(sys.argv[1])
iset = IndexSet.load(path, IndexOptions())
index = iset.indexes[SignalKind.PDQ]
n = len(index)
rng = np.random.default_rng(7)
index.add(np.arange(n + 1, n + 1 + int(sys.argv[3])), rng.integers(0, 256, (int(sys.argv[3]), 32),
          dtype=np.uint8))
index.remove(np.arange(1, 1 + int(sys.argv[3]) // 4))
base = anon()
peak = [base]
done = threading.Event()
def watch():
    while not done.is_set():
        peak[0] = max(peak[0], anon())
        time.sleep(0.02)
threading.Thread(target=watch, daemon=True).start()
t0 = time.time()
plan = iset.snapshot_plan()
sections = plan.sections()
t1 = time.time()
snapshot.save(path, iset.position + 1, sections)
t2 = time.time()
fresh = IndexSet.load(path, IndexOptions())
t3 = time.time()
done.set()
print(json.dumps({"start": t0, "built": t1, "written": t2, "mapped": t3, "hashes": len(fresh),
                  "peak_anon_growth": peak[0] - base, "file_bytes": path.stat().st_size}),
      flush=True)
"""


def phase_compaction(snapshot: Path, readers: int, changes: int) -> dict[str, Any]:
    """One process folds ``changes`` adds (and a quarter as many removals) into a new snapshot of
    the same file while ``readers`` others map the old one and search: its time, the writer's
    peak private memory, and the readers' search latency before and during it (they share the
    machine's 2 cores with the build, which uses 2 threads)."""
    work = snapshot.with_name("compaction.tridx")
    work.write_bytes(snapshot.read_bytes())
    stop = snapshot.with_name("stop")
    stop.unlink(missing_ok=True)
    procs = [subprocess.Popen([sys.executable, "-c", COMPACT_READER, str(work), str(ROOT), str(i),
                               str(stop)], stdout=subprocess.PIPE, text=True)
             for i in range(readers)]
    try:
        for p in procs:
            p.stdout.readline()  # type: ignore[union-attr]
        time.sleep(3.0)
        writer = subprocess.run([sys.executable, "-c", COMPACT_WRITER, str(work), str(ROOT),
                                 str(changes)], capture_output=True, text=True, check=True)
        w = json.loads(writer.stdout.strip().splitlines()[-1])
        time.sleep(1.0)
    finally:
        stop.touch()
    times = [t for p in procs for t in json.loads(p.communicate(timeout=60)[0].strip()
                                                     .splitlines()[-1])["times"]]
    work.unlink(missing_ok=True)
    stop.unlink(missing_ok=True)
    before = [d for t, d in times if t < w["start"]]
    during = [d for t, d in times if w["start"] <= t <= w["written"]]
    n = w["hashes"]
    return {"changes": changes, "removals": changes // 4, "readers": readers, "hashes": n,
            "build_s": round(w["built"] - w["start"], 2),
            "write_s": round(w["written"] - w["built"], 2),
            "map_new_s": round(w["mapped"] - w["written"], 3),
            "writer_peak_private_bytes_per_hash": round(w["peak_anon_growth"] / n, 1),
            "reader_search_before": lat(before) | {"n": len(before)},
            "reader_search_during": lat(during) | {"n": len(during),
                                                   "max_ms": round(max(during) * 1e3, 2)}
            if during else None,
            "note": "readers keep their mapping of the old file (its inode lives on); the "
                    "machine holds old and new file pages until the last reader switches"}


# --- phase 5: Milvus beside the multi-index --------------------------------------------------
def phase_milvus(hashes: int, queries: int, seed: int) -> dict[str, Any]:
    """``bench/milvus_index.py``'s measurement (Milvus Lite BIN_FLAT, MultiIndex, faiss flat on
    the same codes and queries), run inside this one."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("milvus_index", _HERE / "milvus_index.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    folder = Path(tempfile.mkdtemp(prefix="takedown-scale-milvus-"))
    try:
        return module.measure(hashes, queries, seed, folder)  # type: ignore[no-any-return]
    finally:
        import shutil

        shutil.rmtree(folder, ignore_errors=True)


# --- phase 3: visibility across gunicorn workers ---------------------------------------------
def make_pg_database() -> str:
    from sqlalchemy import create_engine, text

    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    name = f"takedown_bench_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return PG_ADMIN.rsplit("/", 1)[0] + "/" + name


def drop_pg_database(url: str) -> None:
    from sqlalchemy import create_engine, text

    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)'))
    admin.dispose()


def readyz(base: str) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(base + "/readyz", timeout=5) as r:
            return json.loads(r.read())  # type: ignore[no-any-return]
    except urllib.error.HTTPError as e:
        return json.loads(e.read())  # type: ignore[no-any-return]
    except OSError:  # not listening yet, or a worker restarting
        time.sleep(0.05)
        return {}


def wait_all_workers(base: str, workers: int, target: int, timeout: float) -> float | None:
    """Poll /readyz from several threads until ``workers`` distinct processes reported an index
    position >= target; the elapsed time, or None on timeout."""
    seen: set[int] = set()
    done = threading.Event()
    start = time.perf_counter()
    finished: list[float] = []

    def poll() -> None:
        while not done.is_set() and time.perf_counter() - start < timeout:
            state = readyz(base)
            if state.get("index_position", -1) >= target:
                seen.add(int(state["process"]))
                if len(seen) >= workers and not done.is_set():
                    finished.append(time.perf_counter() - start)
                    done.set()

    threads = [threading.Thread(target=poll) for _ in range(workers)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return finished[0] if finished else None


def phase_visibility(workers: int, rounds: int, background: int) -> dict[str, Any]:
    from registry.bootstrap import build_registry, upgrade_database
    from registry.config import Settings
    from registry.domain import BankKind, Signal
    from registry.service import SubmittedImage

    url = make_pg_database()
    tmp = Path(tempfile.mkdtemp(prefix="takedown-scale-"))
    settings = Settings.from_env({}, database_url=url, data_dir=str(tmp), pin_kdf_n=1024)
    upgrade_database(settings)
    registry = build_registry(settings)
    rng = np.random.default_rng(5)

    def image() -> SubmittedImage:
        code = rng.integers(0, 256, size=32, dtype=np.uint8).tobytes()
        return SubmittedImage((Signal(SignalKind.PDQ, code),), 100)

    for _ in range(0, background, 50):
        registry.register_bank("bench", BankKind.IMPORTED, [image() for _ in range(50)])
    port = free_port()
    env = dict(os.environ, TAKEDOWN_DATABASE_URL=url, TAKEDOWN_DATA_DIR=str(tmp),
               TAKEDOWN_SECRET_KEY="bench", TAKEDOWN_RATE_LIMIT="1000000 per minute")
    proc = subprocess.Popen([str(Path(sys.executable).parent / "gunicorn"),
                             "registry.web.wsgi:create()", "-w", str(workers), "--bind",
                             f"127.0.0.1:{port}", "--timeout", "120"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    adds: list[float] = []
    withdraws: list[float] = []
    misses = 0
    try:
        head = _head(registry)
        if wait_all_workers(base, workers, head, 120) is None:
            raise RuntimeError("gunicorn workers did not become current")
        mapping = _workers_mapping(proc.pid, settings.snapshot_dir)
        for _ in range(rounds):
            receipt = registry.submit_case([image()])
            seen = wait_all_workers(base, workers, _head(registry), 10)
            if seen is None:
                misses += 1
            else:
                adds.append(seen)
            registry.operator_withdraw_case(receipt.number)
            seen = wait_all_workers(base, workers, _head(registry), 10)
            if seen is None:
                misses += 1
            else:
                withdraws.append(seen)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
        registry.close()
        drop_pg_database(url)
    return {"workers": workers, "rounds": rounds, "background_hashes": background,
            "add_to_visible": lat(adds) if adds else None,
            "withdraw_to_invisible": lat(withdraws) if withdraws else None,
            "timeouts": misses, "snapshot_mappings": mapping,
            "note": "time from the commit returning in the submitting process until every "
                    "worker's /readyz reported an index position at or past it (includes the "
                    "polling granularity of 4 client threads)"}


def _workers_mapping(master: int, folder: Path) -> dict[str, Any]:
    """Which snapshot file (inode) each gunicorn worker maps: one file for all is one copy."""
    try:
        children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    except OSError:
        return {"error": "cannot list the workers"}
    files: dict[str, list[str]] = {}
    for pid in children:
        try:
            lines = Path(f"/proc/{pid}/maps").read_text().splitlines()
        except OSError:
            continue
        files[pid] = sorted({line.split()[4] for line in lines if str(folder) in line})
    inodes = {i for v in files.values() for i in v}
    return {"workers": len(files), "inodes_by_worker": files, "distinct_files": len(inodes)}


def _head(registry: Any) -> int:
    with registry._store.transaction(write=False) as tx:
        return int(tx.changes.head())




# --- phase 4: throughput on PostgreSQL --------------------------------------------------------
def phase_throughput(hashes: int, seconds: float) -> dict[str, Any]:
    url = make_pg_database()
    out_path = Path(tempfile.mkdtemp(prefix="takedown-scale-http-")) / "http.json"
    try:
        subprocess.run([sys.executable, str(ROOT / "bench" / "http_throughput.py"),
                        "--hashes", str(hashes), "--database-url", url, "--seconds",
                        str(seconds), "--no-breakdown", "--out", str(out_path)], check=True)
        return json.loads(out_path.read_text())  # type: ignore[no-any-return]
    finally:
        drop_pg_database(url)


def goals(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 13's goals against what this run measured (phases skipped are left out)."""
    out: list[dict[str, Any]] = []

    def add(goal: str, measured: str, met: bool) -> None:
        out.append({"goal": goal, "measured": measured, "met": bool(met)})

    mem = report.get("memory")
    if mem:
        m, c = mem["mapped"], mem["copy"]
        workers = m["many"]["workers"]
        add(f"index memory per machine, {workers} workers <= 1.25x one worker's",
            f"x{m['ratio']} mapped ({m['many']['machine_bytes'] / 2**20:.0f} vs "
            f"{m['one']['machine_bytes'] / 2**20:.0f} MiB); copied per worker x{c['ratio']}",
            m["ratio"] <= 1.25)
        add("<= 80 B per hash for the shared part", f"{mem['shared_bytes_per_hash']} B",
            mem["shared_bytes_per_hash"] <= 80)
    if "restart" in report:
        r = report["restart"]["mapped"]
        add("restart to ready <= 1 s (map, don't rebuild)",
            f"{r['ready_s_max']} s slowest of {len(r['runs'])} (median {r['ready_s_median']} s)",
            r["ready_s_max"] <= 1)
    if "index" in report:
        first = next(iter(report["index"]["multi"].values()))
        add("strong tier exact, >= 10x faster than faiss IndexBinaryFlat (p50)",
            f"exact={first['strong_exact']}, x{first['speedup_strong_p50']} "
            f"({first['strong']['p50_ms']} vs {report['index']['faiss_flat']['strong']['p50_ms']}"
            f" ms, {first['searched']})", first["strong_exact"]
            and first["speedup_strong_p50"] >= 10)
        add("weak tier recall >= 0.99 against brute force",
            f"{first['weak_recall']} on the queries' pairs, {first['planted']['recall']} on "
            f"{first['planted']['pairs']} planted", min(first["weak_recall"],
                                                         first["planted"]["recall"]) >= 0.99)
    vis = report.get("visibility") or {}
    for key, name in (("add_to_visible", "add"), ("withdraw_to_invisible", "withdraw")):
        if key in vis:
            lat_ = vis[key]
            add(f"{name} visible in all {vis['workers']} workers, p99 <= 1 s",
                f"p99 {lat_['p99_ms']} ms" if lat_ else "never",
                bool(lat_) and lat_["p99_ms"] <= 1000 and vis["timeouts"] == 0)
    if "throughput" in report:
        res = report["throughput"]["results"]
        for key, share, bar in (("batch_full_random", "no match", 50_000),
                                ("batch_full", "half matching", 30_000)):
            if res.get(key):
                add(f">= {bar:,} hashes/s batched on PostgreSQL (4 signals a query, {share})",
                    f"{res[key]['hashes_per_s']:,.0f} hashes/s", res[key]["hashes_per_s"] >= bar)
    mil = report.get("milvus")
    if mil and "correct" in mil:
        got = mil["correct"]["milvus"]
        add(f"Milvus backend (Milvus Lite, BIN_FLAT, {mil['hashes']:,} hashes) returns exactly "
            "the brute-force hits",
            ", ".join(f"radius {r}: {v['exact_queries']}/{v['queries']} queries exact"
                      for r, v in got.items()), bool(mil["correct"]["exact"]))
    return out
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hashes", type=int, default=10_000_000)
    p.add_argument("--queries", type=int, default=400)
    p.add_argument("--restarts", type=int, default=3)
    p.add_argument("--planted", type=int, default=20_000,
                   help="near neighbours planted for the weak-tier recall (d uniform 0..55)")
    p.add_argument("--extra-probes", default="1,0,2",
                   help="MultiIndex extra_probes settings to measure; the first is the default "
                        "one, used for the snapshot and restart")
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--rounds", type=int, default=40)
    p.add_argument("--background", type=int, default=20_000,
                   help="hashes registered before the visibility rounds")
    p.add_argument("--http-hashes", type=int, default=1_000_000)
    p.add_argument("--http-seconds", type=float, default=30.0)
    p.add_argument("--milvus-hashes", type=int, default=1_000_000)
    p.add_argument("--milvus-queries", type=int, default=200)
    p.add_argument("--skip", action="append", default=[],
                   choices=["index", "restart", "memory", "visibility", "throughput",
                            "milvus"])
    p.add_argument("--seed", type=int, default=20261126)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "scale.json"))
    args = p.parse_args(argv)
    report: dict[str, Any] = {
        "machine": {"cpu": platform.processor() or platform.machine(), "nproc": os.cpu_count(),
                    "python": platform.python_version(), "faiss": faiss.__version__,
                    "max_rss_limit": resource.getrlimit(resource.RLIMIT_AS)[0]},
        "started": time.strftime("%Y-%m-%d %H:%M:%S"), "args": vars(args)}
    tmp = Path(tempfile.mkdtemp(prefix="takedown-scale-"))
    snapshot = tmp / "snapshot.tridx"
    try:
        if "index" not in args.skip:
            keep = not {"restart", "memory"} <= set(args.skip)
            report["index"] = phase_index(args.hashes, args.queries, args.seed,
                                          snapshot if keep else None,
                                          [int(x) for x in args.extra_probes.split(",")],
                                          args.planted)
            print(json.dumps(report["index"], indent=1), flush=True)
            gc.collect()
        if "restart" not in args.skip and snapshot.exists():
            report["restart"] = phase_restart(snapshot, args.restarts)
            print(json.dumps(report["restart"], indent=1), flush=True)
        if "memory" not in args.skip and snapshot.exists():
            report["memory"] = phase_memory(snapshot, args.workers)
            report["compaction"] = phase_compaction(snapshot, args.workers - 1, 40_000)
            print(json.dumps(report["compaction"], indent=1), flush=True)
    finally:
        snapshot.unlink(missing_ok=True)
    if "visibility" not in args.skip:
        report["visibility"] = phase_visibility(args.workers, args.rounds, args.background)
        print(json.dumps(report["visibility"], indent=1), flush=True)
    if "throughput" not in args.skip:
        report["throughput"] = phase_throughput(args.http_hashes, args.http_seconds)
    if "milvus" not in args.skip:
        report["milvus"] = phase_milvus(args.milvus_hashes, args.milvus_queries, args.seed)
        print(json.dumps({k: v for k, v in report["milvus"].items() if k != "args"}, indent=1),
              flush=True)
    report["goals"] = goals(report)
    for g in report["goals"]:
        print(f"{'met' if g['met'] else 'NOT MET':>8}  {g['goal']}: {g['measured']}")
    report["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

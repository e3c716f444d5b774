#!/usr/bin/env python3
"""Why a worker's memory steps up once in the soak (bench/soak.py): writing the index snapshot.

(Measured with snapshot format 2, which copied every code and id; since format 3 (issue 13)
``IndexSet.sections()`` writes a multi-index's tables as they are and builds new ones only when
it has a delta or tombstones, so the copies below are now those of a compaction.)

``IndexSet.sections()`` copied the codes and ids (so the file is written outside the index
lock); the follower does that in its own thread, whose glibc arena keeps the ~56 MB of scratch
space after the copies are freed, and reuses it for the next snapshot. This script builds a
1M PDQ + 1M pHash index and writes six snapshots, from the main thread and then from a second
thread as the follower does, printing the process's RSS after each: a single step, then flat, is
an allocator keeping its space, not a leak (a leak would grow with every snapshot).

    .venv/bin/python bench/snapshot_memory.py        # ~30 s

Writes bench/results/snapshot_memory.json.
"""

from __future__ import annotations

import json
import platform
import tempfile
import threading
from pathlib import Path

import numpy as np

from registry.domain import SignalKind
from registry.index import snapshot
from registry.index.catalog import IndexSet

ROOT = Path(__file__).resolve().parent.parent


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> int:
    rng = np.random.default_rng(1)
    n = 1_000_000
    index = IndexSet()
    index.indexes[SignalKind.PDQ].add(np.arange(n, dtype=np.int64),
                                      rng.integers(0, 256, (n, 32), dtype=np.uint8))
    index.indexes[SignalKind.PHASH].add(np.arange(n, 2 * n, dtype=np.int64),
                                        rng.integers(0, 256, (n, 8), dtype=np.uint8))
    index.search(SignalKind.PDQ, [bytes(32)], 10)
    folder = Path(tempfile.mkdtemp(prefix="takedown-snapmem-"))
    report: dict[str, object] = {"machine": platform.processor() or platform.machine(),
                                 "hashes": 2 * n}
    for where in ("main thread", "follower thread"):
        after = [round(rss_mb(), 1)]
        for i in range(6):
            def write(i: int = i) -> None:
                snapshot.save(folder / "s.bin", i, index.sections())
            if where == "main thread":
                write()
            else:
                t = threading.Thread(target=write)
                t.start()
                t.join()
            after.append(round(rss_mb(), 1))
        report[where] = {"rss_mb_before_and_after_each": after,
                         "step_mb": round(after[1] - after[0], 1),
                         "growth_after_the_first_mb": round(after[-1] - after[1], 1)}
        print(f"{where}: RSS MB before and after each of 6 snapshots: {after}")
    (folder / "s.bin").unlink(missing_ok=True)
    folder.rmdir()
    out = ROOT / "bench" / "results" / "snapshot_memory.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

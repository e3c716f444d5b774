#!/usr/bin/env python3
"""Hash-list import and export at scale, through the real CLI on a fresh SQLite registry.

Writes a list of ``--rows`` records (PDQ with quality, a fifth MD5, some grouped) in each
``--formats`` format into a temporary folder, then times, each as its own ``takedown`` process:
the import, a dry run of it on the filled bank, the same import again (idempotent: every record
unchanged), and an export of the bank. Prints a table and writes bench/results/import.json
(with each process' peak RSS).

    .venv/bin/python bench/import_list.py --rows 1000000
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from bench.common import machine_info  # noqa: E402
from registry.domain import Signal, SignalKind  # noqa: E402
from registry.interop import ExportRecord, write  # noqa: E402


def records(n: int, seed: int = 14) -> list[ExportRecord]:
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 256, size=(n, 32), dtype=np.uint8)
    at = datetime.now(UTC)
    out = []
    for i in range(n):
        if i % 5 == 4:
            sig = Signal(SignalKind.MD5, hashlib.md5(i.to_bytes(8, "little")).digest())
            quality = None
        else:
            sig = Signal(SignalKind.PDQ, codes[i].tobytes())
            quality = 90
        out.append(ExportRecord(signal=sig, withdrawn=False, quality=quality, ref=str(i + 1),
                                group=f"case-{i // 3}" if i % 2 else "", seq=i + 1, at=at,
                                bank="source"))
    return out


def takedown(data: Path, *args: str) -> tuple[float, float, dict[str, Any] | str]:
    """(wall seconds, this child's peak RSS in MiB, its JSON output or stderr on failure)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "cli", *args], cwd=ROOT, stdout=out,
                                stderr=err, env={**os.environ, "TAKEDOWN_DATA_DIR": str(data)})
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode != 0:
        return wall, usage.ru_maxrss / 1024, stderr[-2000:]
    try:
        result: dict[str, Any] | str = json.loads(stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        result = stdout[-500:]
    return wall, usage.ru_maxrss / 1024, result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--formats", default="csv,stopncii,hma,threatexchange")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "import.json"))
    args = p.parse_args(argv)
    recs = records(args.rows)
    results: dict[str, Any] = {"rows": args.rows, "machine": machine_info(),
                               "when": datetime.now(UTC).isoformat(timespec="seconds"),
                               "command": "bench/import_list.py " + " ".join(argv or sys.argv[1:]),
                               "formats": {}}
    print(f"{'format':<15}{'MB':>7}{'import s':>10}{'rows/s':>10}{'dry s':>8}{'again s':>9}"
          f"{'export s':>10}{'RSS MiB':>9}")
    for fmt in args.formats.split(","):
        with tempfile.TemporaryDirectory(prefix="takedown-import-") as tmp:
            folder = Path(tmp)
            path = folder / f"list.{fmt}"
            with open(path, "w", encoding="utf-8", newline="") as f:
                written = write(fmt, recs, f)
            data = folder / "data"
            takedown(data, "db", "upgrade")
            size = path.stat().st_size / 1e6
            run = takedown(data, "import", str(path), "--format", fmt, "--bank", "bench",
                           "--json")
            dry = takedown(data, "import", str(path), "--format", fmt, "--bank", "bench",
                           "--dry-run", "--json")
            again = takedown(data, "import", str(path), "--format", fmt, "--bank", "bench",
                             "--json")
            export = takedown(data, "export", "--bank", "bench", "--format", fmt, "--out",
                              str(folder / f"out.{fmt}"), "--json")
            entry = {"records_written": written, "file_mb": round(size, 1),
                     "import_s": round(run[0], 2), "rows_per_s": round(written / run[0]),
                     "import_report": run[2], "import_peak_rss_mib": round(run[1]),
                     "dry_run_s": round(dry[0], 2), "dry_run_report": dry[2],
                     "reimport_s": round(again[0], 2), "reimport_report": again[2],
                     "export_s": round(export[0], 2), "export_report": export[2]}
            results["formats"][fmt] = entry
            print(f"{fmt:<15}{size:>7.1f}{run[0]:>10.1f}{written / run[0]:>10.0f}"
                  f"{dry[0]:>8.1f}{again[0]:>9.1f}{export[0]:>10.1f}{run[1]:>9.0f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

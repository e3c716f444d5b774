"""Long decoder fuzzing run: tests/fuzz/decode.py under atheris for --seconds, reported.

    python bench/fuzz.py --seconds 1800 [--corpus DIR] [--workers 1]

Prints and writes (bench/results/fuzz.json) the inputs tried, the corpus grown, the peak memory
and every crash, hang or memory blow-up libFuzzer saved (a file under --artifacts): each one is a
bug to fix with a regression test. The corpus persists between runs in --corpus.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=600)
    ap.add_argument("--corpus", type=Path, default=Path("/tmp/takedown-fuzz/corpus"))
    ap.add_argument("--artifacts", type=Path, default=Path("/tmp/takedown-fuzz/artifacts"))
    ap.add_argument("--timeout", type=int, default=2, help="seconds one input may take")
    ap.add_argument("--rss-mb", type=int, default=3072,
                    help="memory the whole process may reach (its corpus grows in memory; one "
                         "input is held to 512 MB by the harness itself)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "fuzz.json")
    args = ap.parse_args()
    args.corpus.mkdir(parents=True, exist_ok=True)
    args.artifacts.mkdir(parents=True, exist_ok=True)
    before = {p.name for p in args.artifacts.iterdir()}
    started = time.time()
    proc = subprocess.run(
        [sys.executable, "-m", "tests.fuzz.decode", str(args.corpus), "--seeds", str(args.corpus),
         f"-max_total_time={args.seconds}", f"-timeout={args.timeout}",
         f"-rss_limit_mb={args.rss_mb}", f"-artifact_prefix={args.artifacts}/",
         "-print_final_stats=1"],
        cwd=ROOT, capture_output=True, text=True)
    wall = time.time() - started
    stats = {k: int(v) for k, v in re.findall(r"stat::(\w+):\s*(\d+)", proc.stderr)}
    found = sorted(p.name for p in args.artifacts.iterdir() if p.name not in before)
    out = {
        "benchmark": "decoder fuzzing (atheris over registry.hashing.compute_signals)",
        "command": "python " + " ".join(sys.argv),
        "seconds": round(wall),
        "inputs_tried": stats.get("number_of_executed_units"),
        "inputs_per_second": stats.get("average_exec_per_sec"),
        "peak_rss_mb": stats.get("peak_rss_mb"),
        "corpus_files": sum(1 for _ in args.corpus.iterdir()),
        "exit_code": proc.returncode,
        "findings": found,
        "log_tail": proc.stderr[-4000:] if proc.returncode else "",
    }
    print(json.dumps({k: v for k, v in out.items() if k != "log_tail"}, indent=1))
    if out["log_tail"]:
        print(out["log_tail"], file=sys.stderr)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    return 0 if not found and proc.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""What a /api/v1/match request costs outside the index: 1000-query requests through Flask's
test client against an empty registry (so the index costs nothing), in one process.

    .venv/bin/python bench/api_overhead.py [--requests 20]
Prints ms per request and µs per query; writes bench/results/api_overhead.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from registry.bootstrap import build_registry  # noqa: E402
from registry.config import Settings  # noqa: E402
from registry.web import create_app  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--requests", type=int, default=20)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "api_overhead.json")
    args = ap.parse_args()
    registry = build_registry(Settings.from_env({}, data_dir=tempfile.mkdtemp(), pin_kdf_n=1024,
                                                rate_limit="1000000 per minute"))
    client = create_app(registry).test_client()
    _, key = registry.add_platform("bench", [])
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 256, (1000, 32), dtype=np.uint8)
    body = {"queries": [{"id": str(i), "signals": {"pdq": c.tobytes().hex()}}
                        for i, c in enumerate(codes)]}
    headers = {"Authorization": f"Bearer {key}"}
    for _ in range(3):  # warm up
        assert client.post("/api/v1/match", json=body, headers=headers).status_code == 200
    times = []
    for _ in range(args.requests):
        t = time.perf_counter()
        assert client.post("/api/v1/match", json=body, headers=headers).status_code == 200
        times.append(time.perf_counter() - t)
    ms = 1000 * float(np.median(times))
    result = {"command": "python bench/api_overhead.py " + " ".join(sys.argv[1:]),
              "queries_per_request": 1000, "requests": args.requests,
              "median_ms_per_request": round(ms, 2), "us_per_query": round(ms, 2)}
    print(f"1000-query /api/v1/match, empty index: median {ms:.1f} ms per request "
          f"({ms:.1f} µs per query) over {args.requests} requests")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    registry.close()


if __name__ == "__main__":
    main()

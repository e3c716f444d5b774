#!/usr/bin/env python3
"""How far a registered orientation view's PDQ hash sits from the one predicted from the
original's hash (``registry.hashing.variants.predicted_pdq``), for real views and for hashes of
other pictures: the margin behind ``DIHEDRAL_MAX_BITS``, the check that a submission's
orientation views belong to its image.

Every original and every people photo of ../shared/data is hashed for registration (the views
the submit page registers); for each orientation label: the distance of the real view to its
prediction, and of the same view to the prediction from the *next* photo's hash (an unrelated
hash that a submitter might try to pass off as a view).

    .venv/bin/python bench/view_consistency.py        # ~4 min on a 2-vCPU EPYC

Writes bench/results/view_consistency.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

from registry.hashing import DecodeOptions, compute_signals
from registry.hashing.variants import DIHEDRAL, DIHEDRAL_MAX_BITS, predicted_pdq

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
SETS = ("originals/bsds500", "originals/mcmaster", "negatives/people-humanseg",
        "negatives/people-lfw")


def distance(a: bytes, b: bytes) -> int:
    return int(np.unpackbits(np.frombuffer(bytes(x ^ y for x, y in zip(a, b, strict=True)),
                                           dtype=np.uint8)).sum())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--limit", type=int, default=400, help="photos per folder at most")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "view_consistency.json"))
    args = p.parse_args()
    if not DATA.exists():
        print(f"skipped: {DATA} is absent")
        return 0
    started = time.time()
    hashes: list[tuple[bytes, dict[str, bytes]]] = []
    for folder in SETS:
        for path in sorted((DATA / folder).glob("*"))[: args.limit]:
            image = compute_signals(path.read_bytes(), DecodeOptions(), registration=True)
            hashes.append((image.pdq.value, {v.label: v.pdq.value for v in image.variants}))
    report: dict[str, object] = {
        "machine": platform.processor() or platform.machine(), "photos": len(hashes),
        "folders": list(SETS), "limit_per_folder": args.limit, "max_bits": DIHEDRAL_MAX_BITS}
    labels: dict[str, object] = {}
    print(f"{len(hashes)} photos; distance to the predicted hash (bits)")
    print(f"{'view':<11} {'real max':>8} {'real p99':>8} {'real med':>8} {'other min':>9} "
          f"{'other med':>9}")
    for label in DIHEDRAL:
        real = [distance(views[label], predicted_pdq(label, main) or b"")
                for main, views in hashes if label in views]
        other = [distance(hashes[i][1][label],
                          predicted_pdq(label, hashes[(i + 1) % len(hashes)][0]) or b"")
                 for i in range(len(hashes)) if label in hashes[i][1]]
        labels[label] = {"real": {"n": len(real), "max": max(real),
                                  "p99": float(np.percentile(real, 99)),
                                  "median": float(np.median(real))},
                         "other": {"n": len(other), "min": min(other),
                                   "p1": float(np.percentile(other, 1)),
                                   "median": float(np.median(other))},
                         "real_over_max": sum(d > DIHEDRAL_MAX_BITS for d in real),
                         "other_within_max": sum(d <= DIHEDRAL_MAX_BITS for d in other)}
        print(f"{label:<11} {max(real):>8} {np.percentile(real, 99):>8.0f} "
              f"{np.median(real):>8.0f} {min(other):>9} {np.median(other):>9.0f}")
    report["labels"] = labels
    report["seconds"] = round(time.time() - started, 1)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out} ({report['seconds']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

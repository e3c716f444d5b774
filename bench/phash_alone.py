#!/usr/bin/env python3
"""What the pHash corroboration rule costs in recall (registry.service.matching: a pHash hit is
returned only beside another signal matching the same picture). Originals of ../shared/data are
registered as cases; every transform of bench/transforms.py is applied to each; a copy counts as
*lost to the rule* when the registry does not match it to its case now but its pHash is within
the weak radius of the registered one (so before the rule it was matched through pHash alone).

    .venv/bin/python bench/phash_alone.py --originals 40     # ~20 min on a 2-vCPU EPYC

Writes bench/results/phash_alone.json.
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
import transforms  # noqa: E402

from registry.bootstrap import build_registry  # noqa: E402
from registry.config import Settings  # noqa: E402
from registry.domain import SignalKind  # noqa: E402
from registry.service import SubmittedImage  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "originals" / "bsds500"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--originals", type=int, default=40)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "phash_alone.json"))
    args = p.parse_args()
    if not DATA.exists():
        print(f"skipped: {DATA} is absent")
        return 0
    started = time.time()
    files = sorted(DATA.glob("*.jpg"))[::12][: args.originals]
    with tempfile.TemporaryDirectory(prefix="takedown-phash-") as tmp:
        registry = build_registry(Settings.from_env({}, data_dir=tmp, pin_kdf_n=16))
        cases = {}
        for path in files:
            image = registry.hash_image(path.read_bytes(), registration=True)
            cases[path] = (registry.submit_case([SubmittedImage.from_image(image)]).number,
                           image.phash)
        registry.rebuild_index(snapshot=False)
        weak = registry.settings.thresholds(SignalKind.PHASH).weak
        rng = np.random.default_rng(5)
        copies = matched = 0
        lost: dict[str, int] = {}
        for path in files:
            original = Image.open(path).convert("RGB")
            number, registered = cases[path]
            for variant in transforms.variants():
                buf = io.BytesIO()
                variant.apply(original, rng).save(buf, "JPEG", quality=92)
                query = registry.query_of_image("q", registry.hash_image(buf.getvalue()))
                (result,) = registry.match([query])
                found = any(m.case == number for m in result.matches)
                phash = next(s for s in query.signals if s.kind is SignalKind.PHASH)
                copies += 1
                matched += found
                if not found and phash - registered <= weak:
                    lost[variant.family] = lost.get(variant.family, 0) + 1
        registry.close()
    report = {"machine": platform.processor() or platform.machine(), "originals": len(files),
              "copies": copies, "matched": matched, "recall": round(matched / copies, 4),
              "lost_to_the_rule": sum(lost.values()), "lost_by_family": lost,
              "seconds": round(time.time() - started, 1)}
    print(json.dumps(report, indent=2))
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

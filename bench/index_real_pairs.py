#!/usr/bin/env python3
"""Which real copy/original pairs the multi-index's probing finds, without the rest of the
registry: the chunk arithmetic of ``registry.index.multi`` applied to real PDQ pairs.

For ``--originals`` photos of ``../shared/data/originals/bsds500`` the registration signals are
computed (the whole image, the content box, the 14 registered views); every altered copy from
``bench/transforms.py`` gets its query signals (whole, content box, frame box). Each (query view,
registered view) pair within the weak threshold (55) is a *true pair*: an exhaustive search finds
it. The multi-index finds it when some 16-bit chunk differs by at most that chunk's probe radius
(the schedule of ``probe_schedule(16, 31, extra)``). Reported: pair recall by distance band, and
copy recall (a copy counts as found when any of its true pairs is), for extra probes 0, 1 and 2.

    .venv/bin/python bench/index_real_pairs.py            # 60 originals, about 3 minutes

Writes ``bench/results/index_real_pairs.json``.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from transforms import variants  # noqa: E402

from registry.hashing import compute_signals  # noqa: E402
from registry.index.multi import probe_schedule  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "originals" / "bsds500"
WEAK = 55
EXTRAS = (0, 1, 2)
BANDS = (("0-31", 0, 31), ("32-40", 32, 40), ("41-47", 41, 47), ("48-55", 48, 55))


def bits(hex_: str) -> np.ndarray:
    return np.unpackbits(np.frombuffer(bytes.fromhex(hex_), dtype=np.uint8))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--originals", type=int, default=60)
    p.add_argument("--seed", type=int, default=5)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "index_real_pairs.json"))
    args = p.parse_args(argv)
    files = sorted(DATA.glob("*.jpg"))[: args.originals]
    if not files:
        print(f"no photos under {DATA}: this benchmark needs ../shared/data", file=sys.stderr)
        return 1
    schedules = {e: np.array([r if r != 0xFF else -1 for r in probe_schedule(16, 31, e)])
                 for e in EXTRAS}
    rng = np.random.default_rng(args.seed)
    pairs: list[tuple[int, dict[int, bool]]] = []
    copies = {e: [0, 0] for e in EXTRAS}  # found, true copies
    t0 = time.time()
    for path in files:
        data = path.read_bytes()
        reg = compute_signals(data, registration=True)
        registered = [bits(reg.pdq.hex)] + [bits(v.pdq.hex) for v in
                                             ([reg.content] if reg.content else []) + list(
                                                 reg.variants)]
        img = Image.open(io.BytesIO(data)).convert("RGB")
        for v in variants():
            out = v.apply(img, rng)
            if isinstance(out, Image.Image):
                buf = io.BytesIO()
                out.save(buf, "JPEG", quality=92)
                out = buf.getvalue()
            q = compute_signals(out)
            views = [q.pdq] + [x.pdq for x in (q.content, q.frame) if x is not None]
            found = dict.fromkeys(EXTRAS, False)
            true_copy = False
            for view in views:
                qb = bits(view.hex)
                for rb in registered:
                    diff = qb != rb
                    d = int(diff.sum())
                    if d > WEAK:
                        continue
                    true_copy = True
                    per_chunk = diff.reshape(16, 16).sum(axis=1)
                    hit = {e: bool((per_chunk <= s).any()) for e, s in schedules.items()}
                    pairs.append((d, hit))
                    for e in EXTRAS:
                        found[e] |= hit[e]
            if true_copy:
                for e in EXTRAS:
                    copies[e][1] += 1
                    copies[e][0] += found[e]
    report: dict[str, object] = {
        "originals": len(files), "transforms": len(variants()), "true_pairs": len(pairs),
        "seconds": round(time.time() - t0, 1), "by_extra_probes": {}}
    for e in EXTRAS:
        bands = {}
        for name, lo, hi in BANDS:
            sel = [h[e] for d, h in pairs if lo <= d <= hi]
            bands[name] = {"pairs": len(sel),
                           "recall": round(sum(sel) / len(sel), 4) if sel else None}
        report["by_extra_probes"][str(e)] = {  # type: ignore[index]
            "pair_recall": round(sum(h[e] for _, h in pairs) / len(pairs), 5),
            "pair_recall_by_distance": bands,
            "copies_found": copies[e][0], "true_copies": copies[e][1]}
        print(f"extra probes {e}: pairs {report['by_extra_probes'][str(e)]['pair_recall']}"  # type: ignore[index]
              f" ({bands}), copies {copies[e][0]}/{copies[e][1]}")
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

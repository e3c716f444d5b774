#!/usr/bin/env python3
"""The "against the goals" table of docs/accuracy.md (issue 11), from a report that
``bench/accuracy.py`` wrote: each goal's families, their recall with the whole-image hashes alone
and with the local signal (weak tier), and whether the goal is met.

    .venv/bin/python bench/accuracy_goals.py                    # docs/accuracy.json
    .venv/bin/python bench/accuracy_goals.py /path/accuracy.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
GOALS: list[tuple[str, float, str, list[str]]] = [
    ("≥ 95%", 0.95, "crops keeping 90%, random positions", ["crop90r"]),
    ("≥ 95%", 0.95, "caption bars above/below; text laid over the picture",
     ["caption", "caption-over"]),
    ("≥ 95%", 0.95, "borders / letterboxing", ["border"]),
    ("≥ 95%", 0.95, "phone screenshots (mixed; light; dark)",
     ["screenshot", "screenshot-light", "screenshot-dark"]),
    ("≥ 95%", 0.95, "stickers, emoji and stickers with text", ["sticker"]),
    ("≥ 95%", 0.95, "rotations to 10° (and 15°)", ["rotate10", "rotate15"]),
    ("≥ 85%", 0.85, "crops keeping 80%, random positions", ["crop80r"]),
    ("≥ 60%", 0.60, "crops keeping 70%, random positions", ["crop70r"]),
    ("≥ 80%", 0.80, "two-up collages and picture-in-picture", ["collage"]),
    ("≥ 99%", 0.99, "all seven other orientations", ["orientation"]),
    ("stays ≥ 99%", 0.99, "re-encode, resize, photometric, mirror, chat re-share",
     ["reencode", "resize", "photometric", "mirror", "chat"]),
]


def pc(x: float) -> str:
    return "100%" if x >= 0.9995 else f"{x * 100:.1f}%"


def table(report: dict[str, Any]) -> str:
    fam = report["families"]
    th = report["thresholds"]
    local = th["local"]
    lines = [
        f"Thresholds derived: PDQ {th['pdq']['strong']} / {th['pdq']['weak']}, pHash "
        f"{th['phash']['strong']} / {th['phash']['weak']}, local {local['weak']} / "
        f"{local['strong']} inliers (nearest unrelated local pair: "
        f"{local['nearest_unrelated']}). False positives (weak): "
        f"{report['false_positives']['all']['weak']} of {report['pairs']['all']:,} pairs, "
        f"{report['false_positives']['people']['weak']} of {report['pairs']['people']:,} "
        "people pairs.", "",
        "| goal | families | measured (whole-image hashes alone → with local) | met |",
        "|---|---|---|---|"]
    for goal, bar, name, families in GOALS:
        measured = "; ".join(f"{pc(fam[f]['hashes_only_weak'])} → **{pc(fam[f]['weak_all'])}**"
                             for f in families)
        if families == ["sticker"]:
            v = fam["sticker"]["by_variant"]
            measured += (f" (stickers {pc(v['stickers'])}, with text {pc(v['stickers+text'])}, "
                         f"emoji {pc(v['emoji'])})")
        met = min(fam[f]["weak_all"] for f in families) >= bar
        lines.append(f"| {goal} | {name} | {measured} | {'yes' if met else '**no**'} |")
    size = report["local_bytes_per_image"]["max"]
    lines.append(f"| ≤ 4 KiB | local signal stored per registered image | {size:,} bytes at "
                 f"most | {'yes' if size <= 4096 else '**no**'} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("report", nargs="?", type=Path, default=ROOT / "docs" / "accuracy.json")
    args = ap.parse_args()
    print(table(json.loads(args.report.read_text())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

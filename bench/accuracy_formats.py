"""HEIC and AVIF against JPEG on the evaluation photos: the same pictures, re-encoded as a phone
or a messenger would (resized to 80%, quality 80), queried against their registrations; recall
and distances per format, and decoding time.

Registered: every original of ../shared/data/originals, through ``Registry.submit_case``.
Queries: each original resized to 80% and saved as JPEG, HEIC (pillow-heif, HEVC) and AVIF
(Pillow, AV1) at quality 80, hashed by ``Registry.hash_image`` (in memory) and matched by
``Registry.match``. A copy is caught when a match names its own case.

    .venv/bin/python bench/accuracy_formats.py            # ~4 min on 2 cores
Writes bench/results/accuracy_formats.json.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import machine_info  # noqa: E402
from registry.bootstrap import build_registry  # noqa: E402
from registry.config import Settings  # noqa: E402
from registry.service import SubmittedImage  # noqa: E402

FORMATS = ("JPEG", "HEIF", "AVIF")


def copy_as(img: Image.Image, fmt: str) -> bytes:
    small = img.resize((round(img.width * 0.8), round(img.height * 0.8)), Image.LANCZOS)
    out = io.BytesIO()
    if fmt == "HEIF":
        import pillow_heif

        pillow_heif.from_pillow(small).save(out, quality=80)
    else:
        small.save(out, fmt, quality=80)
    return out.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--originals", type=Path, default=ROOT.parent / "shared/data/originals")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results/accuracy_formats.json")
    args = ap.parse_args()
    if not args.originals.is_dir():
        print(f"skipped: {args.originals} is absent (see ../shared/data/README.md)")
        return
    paths = sorted(p for p in args.originals.rglob("*") if p.suffix.lower() in (".jpg", ".png"))
    paths = paths[:args.limit]
    started = time.time()
    caught = {f: 0 for f in FORMATS}
    tried = {f: 0 for f in FORMATS}
    distances: dict[str, list[int]] = {f: [] for f in FORMATS}
    decode_ms: dict[str, list[float]] = {f: [] for f in FORMATS}
    sizes: dict[str, list[int]] = {f: [] for f in FORMATS}
    with tempfile.TemporaryDirectory() as scratch:
        registry = build_registry(Settings.from_env({}, data_dir=scratch, pin_kdf_n=2 ** 4))
        for path in paths:
            data = path.read_bytes()
            try:
                receipt = registry.submit_case(
                    [SubmittedImage.from_image(registry.hash_image(data, registration=True))])
            except Exception as e:
                print(f"  {path.name}: not registered ({e})")
                continue
            img = Image.open(io.BytesIO(data)).convert("RGB")
            for fmt in FORMATS:
                copy = copy_as(img, fmt)
                sizes[fmt].append(len(copy))
                t = time.perf_counter()
                signals = registry.hash_image(copy)
                decode_ms[fmt].append((time.perf_counter() - t) * 1000)
                (result,) = registry.match([registry.query_of_image(path.name, signals)])
                tried[fmt] += 1
                mine = [m for m in result.matches if m.case == receipt.number]
                caught[fmt] += bool(mine)
                pdq = [m.distance for m in mine if m.signal.value == "pdq"]
                if pdq:
                    distances[fmt].append(min(pdq))
        registry.close()
    report = {
        "machine": machine_info("pillow", "pillow-heif"),
        "command": "python bench/accuracy_formats.py " + " ".join(sys.argv[1:]),
        "seconds": round(time.time() - started),
        "formats": {f: {"copies": tried[f], "caught": caught[f],
                        "recall": round(caught[f] / max(1, tried[f]), 4),
                        "pdq_median": statistics.median(distances[f]) if distances[f] else None,
                        "hash_ms_median": round(statistics.median(decode_ms[f]), 1),
                        "bytes_median": statistics.median(sizes[f])} for f in FORMATS},
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    for f, r in report["formats"].items():
        print(f"{f:5} {r['caught']}/{r['copies']} caught ({r['recall']:.1%}), PDQ median "
              f"{r['pdq_median']}, hashing {r['hash_ms_median']} ms, {r['bytes_median']} bytes")
    print(f"wrote {args.out} ({report['seconds']} s)")


if __name__ == "__main__":
    main()

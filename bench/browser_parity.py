#!/usr/bin/env python3
"""In-browser hashing parity: every evaluation photo hashed by the hashing worker in Chromium and
by the Python pipeline, with the distances and the time per image in the browser.

For each photo under ``<data>/originals`` (JPEG bytes as stored), for a ~2 MP upload made from
each of the first ``--uploads`` photos (upscaled bicubic to 1732x1155, 1155x1732 or 1414x1414
and saved as JPEG quality 90, in memory, as bench/draft_drift.py makes them) and for a 12 MP
phone-sized upload (4032x3024) made the same way from each of the first ``--phone`` photos:

* the worker (registry/web/static/js/hash/worker.js) hashes the file in headless Chromium, picked
  through an ``<input type=file>`` as the submit page does; the time from posting the file to the
  result is the browser's time per image (decode + every registration signal);
* Python computes ``compute_signals(data, DecodeOptions(draft_size=0), registration=True)`` (the
  full decode the browser also does) and the default draft decode;
* reported per view family (full, content, mirror, crop90, crop80, rot4, rot8): mean and max PDQ
  distance to both, pHash equality, quality deltas, and which images miss a parity bar
  (tests/test_browser_hashing.py: pHash equal; PDQ <= 4 bits at quality >= 80; quality within 1;
  same views); for the local signal: present in both or neither, Python's keypoints missing from
  the browser's, descriptor bits moved on the shared ones, packed bytes identical;
* what matters, matches: the photos' browser-made local signals and their Python-made ones are
  registered in two local indexes, altered copies of each photo (bench/transforms.py: random
  80% and 70% crops, text over the picture, stickers, a collage, a phone screenshot; made and
  hashed in Python, as a platform would) are searched in both, and the copies found at the
  registry's weak local threshold are counted for each.

    .venv/bin/python bench/browser_parity.py              # 518 photos + 100 + 5 uploads, ~30 min
    .venv/bin/python bench/browser_parity.py --limit 50 --uploads 10 --phone 1

Writes ``bench/results/browser_parity.json``. Exits 0 with a message, writing nothing, when the
photo folder or Chromium is absent.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from PIL import Image  # noqa: E402

from tests.browser import WorkerPage, chromium_path, launch_chromium, static_server  # noqa: E402
from tests.test_browser_hashing import compare, failures, family  # noqa: E402

UPLOAD_SIZES = {"landscape": (1732, 1155), "portrait": (1155, 1732), "square": (1414, 1414)}
PHONE_SIZES = {"landscape": (4032, 3024), "portrait": (3024, 4032), "square": (3024, 3024)}


def upload(data: bytes, sizes: dict[str, tuple[int, int]] = UPLOAD_SIZES) -> bytes:
    img = Image.open(io.BytesIO(data)).convert("RGB")
    ratio = img.width / img.height
    shape = "landscape" if ratio > 1.2 else "portrait" if ratio < 1 / 1.2 else "square"
    out = io.BytesIO()
    img.resize(sizes[shape], Image.Resampling.BICUBIC).save(out, "JPEG", quality=90)
    return out.getvalue()


def stats(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    ordered = sorted(values)
    return {"n": len(values), "mean": round(statistics.fmean(values), 3),
            "median": ordered[len(ordered) // 2],
            "p95": ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))],
            "max": ordered[-1]}


def run(page: WorkerPage, images: list[tuple[str, bytes]],
        locals_out: dict[str, str | None] | None = None) -> dict[str, Any]:
    by_family: dict[str, list[float]] = defaultdict(list)
    by_family_draft: dict[str, list[float]] = defaultdict(list)
    times, quality_deltas, phash_draft = [], [], []
    problems: list[str] = []
    phash_equal = content_agree = 0
    local_present_agree = local_n = local_lost = local_bits = local_shared = local_same = 0
    for n, (name, data) in enumerate(images, 1):
        messages, ms = page.hash(name, data, "image/jpeg")
        final = messages[-1]
        if final["type"] != "result":
            problems.append(f"{name}: {final}")
            continue
        c = compare(final["image"], data)
        times.append(ms)
        phash_equal += c["phash_equal"]
        content_agree += (("content" in c["labels"]) == ("content" in c["ref_labels"]))
        quality_deltas.append(c["quality_delta"])
        phash_draft.append(c["phash_draft"])
        by_family["full"].append(c["pdq"])
        by_family_draft["full"].append(c["pdq_draft"])
        for label, v in c["views"].items():
            by_family[family(label)].append(v["distance"])
            quality_deltas.append(v["quality_delta"])
            if v["draft_distance"] is not None:
                by_family_draft[family(label)].append(v["draft_distance"])
        problems += failures(name, c)
        loc = c["local"]
        local_present_agree += loc["present"][0] == loc["present"][1]
        if "n" in loc:
            local_n += loc["n"]
            local_lost += loc["lost"]
            local_bits += loc["bits"]
            local_shared += loc["shared"]
            local_same += loc["identical"]
        if locals_out is not None:
            locals_out[name] = final["image"]["signals"].get("local")
        if n % 50 == 0:
            print(f"  {n}/{len(images)}", flush=True)
    return {
        "images": len(images),
        "phash_equal": phash_equal,
        "content_box_agrees": content_agree,
        "max_abs_quality_delta": max((abs(d) for d in quality_deltas), default=0),
        "pdq_vs_full_decode": {k: stats(v) for k, v in by_family.items()},
        "pdq_vs_draft_decode": {k: stats(v) for k, v in by_family_draft.items()},
        "phash_vs_draft_decode": stats(phash_draft),
        "browser_ms_per_image": stats(times),
        "local": {"present_agrees": local_present_agree, "keypoints": local_n,
                  "keypoints_lost": local_lost, "descriptor_bits_moved": local_bits,
                  "shared_keypoints": local_shared, "packed_identical": local_same},
        "misses": problems,
    }


MATCH_FAMILIES = ("crop80r", "crop70r", "caption-over", "sticker", "collage", "screenshot")


def local_matches(photos: list[tuple[str, bytes]], browser: dict[str, str | None]
                  ) -> dict[str, Any]:
    """Copies found among browser-made vs Python-made registrations (module docstring)."""
    import base64

    import numpy as np
    from transforms import variants

    from registry.config import Settings
    from registry.hashing.decode import DecodeOptions
    from registry.hashing.signals import compute_signals, decode_image
    from registry.index.catalog import IndexOptions
    from registry.index.local import Keypoints

    settings = Settings.from_env({})
    weak, radius = settings.local_weak, settings.local_radius
    chosen = [(i, v) for i, v in enumerate(variants()) if v.family in MATCH_FAMILIES]
    indexes = {"browser": IndexOptions().new_local(), "python": IndexOptions().new_local()}
    names = []
    for sid, (name, data) in enumerate(photos):
        ref = compute_signals(data, DecodeOptions(draft_size=0), registration=True).local
        text = browser.get(name)
        names.append(name)
        if ref is not None:
            indexes["python"].add(np.array([sid], dtype=np.int64), [ref.value])
        if text is not None:
            indexes["browser"].add(np.array([sid], dtype=np.int64), [base64.b64decode(text)])
    found = {"browser": set(), "python": set()}
    inliers: dict[str, list[int]] = {"browser": [], "python": []}
    copies = 0
    for sid, (_, data) in enumerate(photos):
        img = decode_image(data, DecodeOptions())
        for n, v in chosen:
            rng = np.random.default_rng(1000 * sid + n)
            query = compute_signals(_jpeg(v.apply(img, rng))).local
            copies += 1
            if query is None:
                continue
            keypoints = Keypoints.of(query.value)
            for side, index in indexes.items():
                hits = {h.signal_id: h.inliers for h in index.search(keypoints, radius, weak)}
                if sid in hits:
                    found[side].add((sid, n))
                    inliers[side].append(hits[sid])
    return {"photos": len(photos), "families": list(MATCH_FAMILIES), "copies": copies,
            "min_inliers": weak, "radius": radius,
            "found_browser": len(found["browser"]), "found_python": len(found["python"]),
            "only_browser": len(found["browser"] - found["python"]),
            "only_python": len(found["python"] - found["browser"]),
            "median_inliers_browser": statistics.median(inliers["browser"] or [0]),
            "median_inliers_python": statistics.median(inliers["python"] or [0])}


def _jpeg(img: Image.Image) -> bytes:
    out = io.BytesIO()
    img.save(out, "JPEG", quality=95)
    return out.getvalue()


def print_table(title: str, r: dict[str, Any]) -> None:
    t = r["browser_ms_per_image"]
    print(f"\n{title}: {r['images']} images, pHash equal on {r['phash_equal']}, content box "
          f"agrees on {r['content_box_agrees']}, max |quality delta| "
          f"{r['max_abs_quality_delta']}, {len(r['misses'])} misses")
    if t["n"]:
        print(f"  browser ms/image: mean {t['mean']:.0f}, median {t['median']:.0f}, "
              f"p95 {t['p95']:.0f}, max {t['max']:.0f}")
    print(f"  {'PDQ':8} {'n':>5} {'vs full: mean':>14} {'max':>4} {'vs draft: mean':>15} "
          f"{'max':>4}")
    loc = r["local"]
    print(f"  local: present in both or neither on {loc['present_agrees']}, packed bytes "
          f"identical on {loc['packed_identical']}, keypoints lost {loc['keypoints_lost']} of "
          f"{loc['keypoints']}, descriptor bits moved {loc['descriptor_bits_moved']} on "
          f"{loc['shared_keypoints']} shared keypoints")
    for fam, s in r["pdq_vs_full_decode"].items():
        d = r["pdq_vs_draft_decode"].get(fam, {"n": 0})
        print(f"  {fam:8} {s['n']:5} {s['mean']:14.2f} {s['max']:4} "
              f"{d.get('mean', 0):15.2f} {d.get('max', 0):4}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--limit", type=int, default=None, help="photos to use (default all)")
    parser.add_argument("--uploads", type=int, default=100, help="2 MP uploads to make")
    parser.add_argument("--phone", type=int, default=5, help="12 MP (4032x3024) uploads to make")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" /
                        "browser_parity.json")
    args = parser.parse_args()
    paths = sorted(p for p in (args.data / "originals").rglob("*")
                   if p.suffix.lower() in (".jpg", ".jpeg"))[: args.limit]
    if not paths:
        print(f"no photos under {args.data / 'originals'}; nothing measured")
        return 0
    if chromium_path() is None:
        print("Chromium is not installed (make installs it as root); nothing measured")
        return 0
    photos = [(p.name, p.read_bytes()) for p in paths]
    uploads = [(f"{name}-2mp.jpg", upload(data)) for name, data in photos[: args.uploads]]
    phone = [(f"{name}-12mp.jpg", upload(data, PHONE_SIZES)) for name, data in photos[: args.phone]]
    started = time.time()
    with static_server() as base, launch_chromium() as browser:
        page = WorkerPage(browser, base)
        version = browser.version
        print(f"Chromium {version}: {len(photos)} photos, {len(uploads)} 2 MP and {len(phone)} "
              "12 MP uploads")
        browser_local: dict[str, str | None] = {}
        result = {"photos": run(page, photos, browser_local), "uploads_2mp": run(page, uploads),
                  "uploads_12mp": run(page, phone)}
        requests = [u for u in page.requests if "/static/js/hash/" not in u and not
                    u.rstrip("/").endswith(base.split("//")[1])]
        page.close()
    import imagehash
    import PIL

    out = {
        "benchmark": "browser hashing parity",
        "environment": {
            "command": "python " + " ".join(sys.argv),
            "chromium": version,
            "pillow": PIL.__version__,
            "imagehash": imagehash.__version__,
            "pdqhash": __import__("pdqhash").__version__,
            "wall_s": round(time.time() - started, 1),
        },
        "requests_besides_scripts": requests,
        **result,
    }
    result["local_matches"] = out["local_matches"] = local_matches(photos, browser_local)
    print_table("photos as stored", result["photos"])
    print_table("2 MP uploads", result["uploads_2mp"])
    print_table("12 MP uploads", result["uploads_12mp"])
    m = result["local_matches"]
    print(f"\nlocal matches of {m['copies']} altered copies of {m['photos']} photos at "
          f"{m['min_inliers']} inliers: found with browser registrations {m['found_browser']}, "
          f"with Python registrations {m['found_python']} (found by only one: browser "
          f"{m['only_browser']}, Python {m['only_python']}); median inliers browser "
          f"{m['median_inliers_browser']}, Python {m['median_inliers_python']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

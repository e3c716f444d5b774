#!/usr/bin/env python3
"""In-browser video hashing parity: clips registered by the submit page's video hasher in
Chromium (registry/web/static/js/hash/video.js) against the same clips registered by Python
(``compute_video_signals(registration=True)``), and what matters, the copies each finds.

Clips: ``--clips`` made from ../shared/data/originals as bench/accuracy_video.py makes them
(pans, zooms, slideshows; 10 s, 640x360, H.264 CRF 18), and generated ones from tests/images.py
(a pan over a synthetic picture as MP4 and WebM/VP9). For each:

* frame parity: kept frames in each, and for every browser frame the nearest Python frame (PDQ
  bits, and the time between them);
* matches: the browser-made and the Python-made registrations go into two registries; every
  copy of bench/accuracy_video.py (re-encoded, resized, trimmed, cropped, captioned,
  screen-recorded; a frame screenshot, a phone screenshot), made and hashed in Python as a
  platform would, is matched in both, and the copies found are counted per family for each;
* time: the browser's time per clip, and for one 60 s 720p H.264 clip (the goal: <= 30 s).

    .venv/bin/python bench/browser_parity_video.py             # 30 clips, ~10 min
    .venv/bin/python bench/browser_parity_video.py --clips 6   # a look

Writes ``bench/results/browser_parity_video.json``. Exits 0 with a message, writing nothing,
when the photo folder or Chromium is absent.
"""

from __future__ import annotations

import argparse
import base64
import json
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import accuracy_video as av_bench  # noqa: E402

from bench.common import machine_info  # noqa: E402
from registry.bootstrap import build_registry  # noqa: E402
from registry.config import Settings  # noqa: E402
from registry.domain import Signal, SignalKind  # noqa: E402
from registry.hashing import VideoSignals, compute_video_signals  # noqa: E402
from registry.service import SubmittedImage  # noqa: E402
from tests.browser import chromium_path, launch_chromium, static_server  # noqa: E402
from tests.images import clip, pan  # noqa: E402

# In the page: a file input and window.hashVideo() -> {result | error, ms}, with the settings'
# video limits, as the submit page gives them.
_PAGE = """(limits) => {
  const input = document.createElement('input');
  input.type = 'file';
  input.id = 'picked';
  document.body.append(input);
  window.hashVideo = async () => {
    const { hashVideo } = await import('/static/js/hash/video.js');
    const started = performance.now();
    try {
      const result = await hashVideo(input.files[0], { limits });
      return { result, ms: performance.now() - started };
    } catch (error) {
      const ms = performance.now() - started;
      return { error: `${error.code || 'error'}: ${error.message}`, ms };
    }
  };
}"""


def frames_of(vpdq: bytes) -> list[tuple[int, int, int]]:
    """(ms, quality, PDQ as an int) of each frame of a packed vpdq value."""
    return [(ms, q, int.from_bytes(s.value, "big"))
            for ms, q, s in Signal(SignalKind.VPDQ, vpdq).frames()]


def parity(browser: bytes, python: bytes) -> dict[str, Any]:
    b, p = frames_of(browser), frames_of(python)
    nearest = [min(((x ^ y).bit_count(), abs(ms - pms)) for pms, _q, y in p) for ms, _q, x in b]
    return {"browser_frames": len(b), "python_frames": len(p),
            "nearest_bits": [n[0] for n in nearest], "nearest_ms": [n[1] for n in nearest]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--originals", type=Path, default=ROOT.parent / "shared/data/originals")
    ap.add_argument("--clips", type=int, default=30)
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results/browser_parity_video.json")
    args = ap.parse_args()
    if not args.originals.is_dir():
        print(f"skipped: {args.originals} is absent (see ../shared/data/README.md)")
        return 0
    if chromium_path() is None:
        print("skipped: Chromium is absent (make installs Debian's chromium)")
        return 0
    started = time.time()
    originals = av_bench.images(args.originals)
    step = max(1, len(originals) // args.clips)
    picks = originals[::step][:args.clips]
    clips: list[tuple[str, bytes, list[Any] | None]] = []
    for i, p in enumerate(picks):
        kind = av_bench.KINDS[i % len(av_bench.KINDS)]
        others = [originals[(originals.index(p) + k * 37) % len(originals)] for k in (1, 2)]
        frames = av_bench.scenes(kind, [Image.open(x) for x in [p, *others]])
        clips.append((f"{p.stem}-{kind}", av_bench.encode(frames, 18), frames))
    generated = pan(5, 8, travel=0.3)
    clips.append(("generated-pan-mp4", clip(generated), None))
    clips.append(("generated-pan-webm", clip(generated, fmt="webm", codec="libvpx-vp9"), None))
    defaults = Settings()
    limits = {"maxBytes": defaults.max_video_bytes, "maxPixels": defaults.max_video_pixels,
              "maxSeconds": defaults.max_video_seconds}

    hashed: dict[str, dict[str, Any]] = {}
    with static_server() as base, launch_chromium() as browser:
        page = browser.new_page()
        page.goto(base + "/")
        page.evaluate(_PAGE, limits)

        def in_browser(name: str, data: bytes, mime: str) -> dict[str, Any]:
            page.set_input_files("#picked", files=[{"name": name, "mimeType": mime,
                                                    "buffer": data}])
            out: dict[str, Any] = page.evaluate("() => window.hashVideo()")
            return out

        for name, data, _frames in clips:
            mime = "video/webm" if name.endswith("webm") else "video/mp4"
            out = in_browser(name, data, mime)
            if "error" in out:
                print(f"  {name}: the browser refused it: {out['error']}")
                continue
            python = compute_video_signals(data, registration=True)
            vpdq = base64.b64decode(out["result"]["signals"]["vpdq"])
            hashed[name] = {"browser": vpdq, "python": python, "ms": out["ms"],
                            "digests_equal": out["result"]["signals"]["sha256"]
                            == python.sha256.hex and out["result"]["signals"]["md5"]
                            == python.md5.hex}
            p = parity(vpdq, python.frames.pack())
            print(f"  {name}: {out['ms']:.0f} ms in Chromium; frames {p['browser_frames']} / "
                  f"{p['python_frames']}; nearest Python frame: median "
                  f"{statistics.median(p['nearest_bits'])} bits", flush=True)
            hashed[name]["parity"] = p
        long = av_bench.long_clip(originals[0])
        long_runs = [in_browser("long.mp4", long, "video/mp4") for _ in range(2)]
    long_python = compute_video_signals(long, registration=True)
    long_parity = (parity(base64.b64decode(long_runs[0]["result"]["signals"]["vpdq"]),
                          long_python.frames.pack()) if "result" in long_runs[0] else None)
    print(f"60 s 720p H.264 ({len(long):,} bytes) in Chromium: "
          f"{[round(r['ms'] / 1000, 1) for r in long_runs]} s", flush=True)

    # Matches: the same copies against browser-made and Python-made registrations.
    caught: dict[str, dict[str, list[bool]]] = {"browser": defaultdict(list),
                                                "python": defaultdict(list)}
    with tempfile.TemporaryDirectory() as scratch:
        registries = {side: build_registry(Settings.from_env({}, data_dir=f"{scratch}/{side}",
                                                             pin_kdf_n=2 ** 4))
                      for side in ("browser", "python")}
        cases: dict[str, dict[str, str]] = {"browser": {}, "python": {}}
        for name, h in hashed.items():
            py: VideoSignals = h["python"]
            digests = tuple(s for s in py.signals() if s.kind is not SignalKind.VPDQ)
            made = {"browser": SubmittedImage((Signal(SignalKind.VPDQ, h["browser"]), *digests)),
                    "python": SubmittedImage.from_video(py)}
            for side, image in made.items():
                cases[side][registries[side].submit_case([image], strict=True).number] = name
        for name, _data, frames in clips:
            if frames is None or name not in hashed:
                continue
            for family, data in av_bench.copies(name, frames).items():
                copy = av_bench._hash(data)
                if isinstance(copy, str):
                    for side in caught:
                        caught[side][family].append(False)
                    continue
                for side, registry in registries.items():
                    query = (registry.query_of_video(f"{name}/{family}", copy)
                             if isinstance(copy, VideoSignals)
                             else registry.query_of_image(f"{name}/{family}", copy))
                    (result,) = registry.match([query])
                    found = {cases[side].get(m.case or "") for m in result.matches}
                    caught[side][family].append(name in found)
        for registry in registries.values():
            registry.close()

    bits = [b for h in hashed.values() for b in h["parity"]["nearest_bits"]]
    report = {
        "machine": machine_info("av", "playwright"),
        "command": "python bench/browser_parity_video.py " + " ".join(sys.argv[1:]),
        "seconds": round(time.time() - started),
        "clips": len(clips), "hashed_in_browser": len(hashed),
        "digests_equal": sum(h["digests_equal"] for h in hashed.values()),
        "frames": {"browser": sum(h["parity"]["browser_frames"] for h in hashed.values()),
                   "python": sum(h["parity"]["python_frames"] for h in hashed.values()),
                   "nearest_bits_median": statistics.median(bits) if bits else None,
                   "within_16_bits": sum(b <= 16 for b in bits),
                   "within_31_bits": sum(b <= 31 for b in bits), "of": len(bits)},
        "browser_ms_per_10s_clip": {"median": statistics.median(
            h["ms"] for n, h in hashed.items() if not n.startswith("generated"))},
        "long_60s_720p": {"bytes": len(long), "browser_s": [round(r["ms"] / 1000, 2)
                                                            for r in long_runs],
                          "errors": [r.get("error") for r in long_runs if "error" in r],
                          "parity": long_parity and {
                              "browser_frames": long_parity["browser_frames"],
                              "python_frames": long_parity["python_frames"],
                              "nearest_bits_median": statistics.median(
                                  long_parity["nearest_bits"])}},
        "caught": {side: {f: {"caught": sum(v), "of": len(v)} for f, v in fams.items()}
                   for side, fams in caught.items()},
        "per_clip": {n: h["parity"] | {"ms": round(h["ms"])} for n, h in hashed.items()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"frames: browser {report['frames']['browser']}, Python {report['frames']['python']}; "
          f"nearest Python frame median {report['frames']['nearest_bits_median']} bits, "
          f"{report['frames']['within_31_bits']}/{len(bits)} within 31")
    for family in caught["python"]:
        b, p = caught["browser"][family], caught["python"][family]
        print(f"  {family:18} browser-made {sum(b):3}/{len(b):<3}  Python-made {sum(p):3}/{len(p)}")
    print(f"wrote {args.out} ({report['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Accuracy of video matching on clips made from the evaluation photos: recall per family of
re-shared copy, false positives against unrelated clips and stills with the frame pairs behind
them, hashing time of a 60 s 720p clip, and the bytes stored per minute.

Registered: ``--clips`` clips made from ../shared/data/originals, cycling three kinds (a pan
across the photo, a slow zoom into it, a slideshow of it and two other originals), 10 s at 24
fps, 640x360, H.264 CRF 18, each its own case through ``Registry.submit_case`` (the frames
``takedown submit`` registers). Copies of each, made in memory as a messenger or a re-poster
would (every one decoded and hashed by ``Registry.hash_video``, queried by ``Registry.match``):

- ``reencode``: H.264 CRF 38 (low bitrate); ``resized``: 320x180, CRF 30; ``trimmed``: seconds
  3-7 only, CRF 30; ``cropped``: the centre 90% of each side, CRF 30; ``captioned``: a caption
  bar above the picture (bench/transforms.py), CRF 30; ``screen-recorded``: every frame inside
  phone chrome (bench/transforms.py's screenshot, one layout per clip), CRF 30;
- ``frame-screenshot``: one frame at a random time as a JPEG (q80), a still query;
  ``phone-screenshot``: that frame inside phone chrome, a still query.

Unrelated: ``--unrelated`` clips of the same kinds made from ../shared/data/negatives (people
and ImageNet photos), and every negative photo as a still, each against every registered
clip. A match there is a false positive; the frame pairs it rests on are the query's usable
frames times the registered frames.

    .venv/bin/python bench/accuracy_video.py              # ~10 min on 2 cores
    .venv/bin/python bench/accuracy_video.py --clips 6 --unrelated 6 --stills 50   # a look
Writes docs/accuracy-video.json.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import zlib  # noqa: E402
from collections import defaultdict  # noqa: E402
from multiprocessing import Pool  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import transforms  # noqa: E402

from bench.common import machine_info  # noqa: E402
from registry.bootstrap import build_registry  # noqa: E402
from registry.config import Settings  # noqa: E402
from registry.errors import RegistryError  # noqa: E402
from registry.hashing import (  # noqa: E402
    DecodeOptions,
    ImageSignals,
    VideoOptions,
    VideoSignals,
    compute_signals,
    compute_video_signals,
)
from registry.service import SubmittedImage  # noqa: E402

EXTS = {".jpg", ".jpeg", ".png"}
SIZE = (640, 360)
FPS = 24
SECONDS = 10
KINDS = ("pan", "zoom", "slideshow")
VIDEO_FAMILIES = ("reencode", "resized", "trimmed", "cropped", "captioned", "screen-recorded")
STILL_FAMILIES = ("frame-screenshot", "phone-screenshot")
GOALS = {"reencode": 0.95, "resized": 0.95, "trimmed": 0.95, "captioned": 0.90,
         "screen-recorded": 0.90, "cropped": None, "frame-screenshot": 0.95,
         "phone-screenshot": None}


def images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in EXTS)


def _even(img: Image.Image) -> np.ndarray:
    w, h = img.size
    return np.ascontiguousarray(np.asarray(img.convert("RGB").crop((0, 0, w - w % 2, h - h % 2))))


def scenes(kind: str, pictures: list[Image.Image]) -> list[np.ndarray]:
    """The frames of a clip of ``kind`` made from ``pictures`` (the first is the subject)."""
    w, h = SIZE
    count = SECONDS * FPS
    if kind == "slideshow":
        out = []
        for p in pictures[:3]:
            still = _even(transforms.letterbox(p, w / h, (0, 0, 0)).resize(SIZE, Image.LANCZOS))
            out += [still] * (count // 3)
        return out
    base = pictures[0].convert("RGB")
    scale = max(w * 1.25 / base.width, h * 1.25 / base.height)
    big = base.resize((round(base.width * scale), round(base.height * scale)), Image.LANCZOS)
    out = []
    for i in range(count):
        t = i / (count - 1)
        if kind == "pan":  # across 20% of the width, a little down
            x = round(t * (big.width - w))
            y = round(t * 0.3 * (big.height - h))
            box = (x, y, x + w, y + h)
        else:  # zoom from the whole picture into its centre 75%
            keep = 1 - 0.25 * t
            bw, bh = big.width * keep, big.width * keep * h / w
            bh = min(bh, big.height)
            x0, y0 = (big.width - bw) / 2, (big.height - bh) / 2
            box = (round(x0), round(y0), round(x0 + bw), round(y0 + bh))
        out.append(_even(big.crop(box).resize(SIZE, Image.BILINEAR)))
    return out


def encode(frames: list[np.ndarray], crf: int, fps: int = FPS) -> bytes:
    import av

    out = io.BytesIO()
    with av.open(out, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        stream.options = {"preset": "veryfast", "crf": str(crf)}
        for pixels in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
        container.mux(stream.encode())
    return out.getvalue()


def _rng(*parts: object) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32("/".join(map(str, parts)).encode()))


def copies(name: str, frames: list[np.ndarray]) -> dict[str, bytes]:
    """Every family's copy of one registered clip (videos as MP4 bytes, stills as JPEG)."""
    out: dict[str, bytes] = {}
    pil = [Image.fromarray(f) for f in frames]
    out["reencode"] = encode(frames, 38)
    out["resized"] = encode([_even(p.resize((320, 180), Image.BILINEAR)) for p in pil], 30)
    out["trimmed"] = encode(frames[3 * FPS:7 * FPS], 30)
    w, h = SIZE
    box = (round(w * 0.05), round(h * 0.05), round(w * 0.95), round(h * 0.95))
    out["cropped"] = encode([_even(p.crop(box)) for p in pil], 30)
    out["captioned"] = encode([_even(transforms.caption(p, _rng(name, "caption"), "top", False))
                               for p in pil], 30)
    out["screen-recorded"] = encode(
        [_even(transforms.screenshot(p, _rng(name, "screen"), dark=False)) for p in pil], 30,)
    at = int(_rng(name, "shot").integers(0, len(frames)))
    buf = io.BytesIO()
    pil[at].save(buf, "JPEG", quality=80)
    out["frame-screenshot"] = buf.getvalue()
    buf = io.BytesIO()
    transforms.screenshot(pil[at], _rng(name, "phone")).save(buf, "JPEG", quality=85)
    out["phone-screenshot"] = buf.getvalue()
    return out


def _hash(data: bytes, registration: bool = False) -> VideoSignals | ImageSignals | str:
    try:
        if data[4:8] == b"ftyp":
            return compute_video_signals(data, VideoOptions(), registration=registration)
        return compute_signals(data, DecodeOptions())
    except RegistryError as e:
        return f"{e.code}: {e.message}"


def make_registered(job: tuple[int, list[str]]) -> tuple[str, object, dict[str, object]]:
    """One registered clip's signals and every copy's, hashed in this worker."""
    i, paths = job
    kind = KINDS[i % len(KINDS)]
    frames = scenes(kind, [Image.open(p) for p in paths])
    name = f"{Path(paths[0]).stem}-{kind}"
    original = _hash(encode(frames, 18), registration=True)
    return name, original, {family: _hash(data) for family, data in copies(name, frames).items()}


def make_unrelated(job: tuple[int, list[str]]) -> tuple[str, object]:
    i, paths = job
    kind = KINDS[i % len(KINDS)]
    return f"{Path(paths[0]).stem}-{kind}", _hash(encode(scenes(kind, [Image.open(p) for p in
                                                                     paths]), 28))


def hash_still(path: str) -> tuple[str, object]:
    return path, _hash(Path(path).read_bytes())


def long_clip(path: Path) -> bytes:
    """A 60 s 720p (1280x720, 30 fps) H.264 clip panning across the photo at ``path``."""
    import av

    base = Image.open(path).convert("RGB")
    big = base.resize((1700, round(1700 * base.height / base.width)), Image.LANCZOS)
    if big.height < 760:
        big = big.resize((round(big.width * 760 / big.height), 760), Image.LANCZOS)
    out = io.BytesIO()
    with av.open(out, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 1280, 720, "yuv420p"
        stream.options = {"preset": "veryfast", "crf": "26"}
        for i in range(60 * 30):
            t = i / (60 * 30 - 1)
            x, y = round(t * (big.width - 1280)), round(t * (big.height - 720))
            frame = np.ascontiguousarray(np.asarray(big.crop((x, y, x + 1280, y + 720))))
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return out.getvalue()


def long_clip_timing(path: Path) -> dict[str, float]:
    """Hashing one 60 s 720p clip (:func:`long_clip`): CPU seconds (all threads) and wall."""
    data = long_clip(path)
    runs = []
    for _ in range(3):
        cpu, wall = time.process_time(), time.perf_counter()
        video = compute_video_signals(data, VideoOptions(), registration=True)
        runs.append((time.process_time() - cpu, time.perf_counter() - wall))
    cpu_s = sorted(r[0] for r in runs)[1]
    wall_s = sorted(r[1] for r in runs)[1]
    return {"bytes": len(data), "cpu_s_median_of_3": round(cpu_s, 2),
            "wall_s_median_of_3": round(wall_s, 2), "frames_kept": len(video.frames.frames),
            "vpdq_bytes": len(video.frames.pack())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--originals", type=Path, default=ROOT.parent / "shared/data/originals")
    ap.add_argument("--negatives", type=Path, default=ROOT.parent / "shared/data/negatives")
    ap.add_argument("--clips", type=int, default=60, help="registered clips")
    ap.add_argument("--unrelated", type=int, default=120, help="unrelated clips")
    ap.add_argument("--stills", type=int, default=1000, help="unrelated stills")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--out", type=Path, default=ROOT / "docs/accuracy-video.json")
    args = ap.parse_args()
    for folder in (args.originals, args.negatives):
        if not folder.is_dir():
            print(f"skipped: {folder} is absent (see ../shared/data/README.md)")
            return
    started = time.time()
    originals = images(args.originals)
    negatives = images(args.negatives)
    step = max(1, len(originals) // args.clips)
    picks = originals[::step][:args.clips]
    jobs = [(i, [str(p)] + [str(originals[(originals.index(p) + k * 37) % len(originals)])
                             for k in (1, 2)]) for i, p in enumerate(picks)]
    others = negatives[::max(1, len(negatives) // (3 * args.unrelated))]
    unrelated_jobs = [(i, [str(p) for p in others[3 * i:3 * i + 3]])
                      for i in range(min(args.unrelated, len(others) // 3))]
    stills = [str(p) for p in negatives[1::max(1, len(negatives) // args.stills)][:args.stills]]
    with Pool(args.workers) as pool:
        made = pool.map(make_registered, jobs)
        print(f"made and hashed {len(made)} registered clips and their copies in "
              f"{time.time() - started:.0f} s", flush=True)
        unrelated = pool.map(make_unrelated, unrelated_jobs)
        unrelated_stills = pool.map(hash_still, stills, chunksize=20)
    print(f"hashed {len(unrelated)} unrelated clips and {len(unrelated_stills)} stills "
          f"({time.time() - started:.0f} s)", flush=True)

    with tempfile.TemporaryDirectory() as scratch:
        registry = build_registry(Settings.from_env({}, data_dir=scratch, pin_kdf_n=2 ** 4))
        cases: dict[str, str] = {}
        frames_of: dict[str, int] = {}
        per_minute = []
        for name, original, _ in made:
            if not isinstance(original, VideoSignals):
                print(f"  {name}: not registered ({original})")
                continue
            cases[registry.submit_case([SubmittedImage.from_video(original)]).number] = name
            frames_of[name] = len(original.frames.frames)
            per_minute.append(len(original.frames.pack()) * 60_000
                              / max(1, original.frames.duration_ms))
        registered_frames = sum(frames_of.values())

        def query(ref: str, hashed: object):
            if isinstance(hashed, VideoSignals):
                return registry.query_of_video(ref, hashed)
            assert isinstance(hashed, ImageSignals)
            return registry.query_of_image(ref, hashed)

        caught: dict[str, list[bool]] = defaultdict(list)
        refused: dict[str, int] = defaultdict(int)
        missed: dict[str, list[str]] = defaultdict(list)
        wrong_case: list[dict[str, object]] = []
        for name, _, family_copies in made:
            if name not in frames_of:
                continue
            for family, hashed in family_copies.items():
                if isinstance(hashed, str):
                    refused[family] += 1
                    caught[family].append(False)
                    continue
                (result,) = registry.match([query(f"{name}/{family}", hashed)])
                found = {cases.get(m.case or "") for m in result.matches}
                caught[family].append(name in found)
                if name not in found:
                    missed[family].append(name)
                wrong_case += [{"query": f"{name}/{family}", "matched": other}
                               for other in found - {name, None}]

        false_positives: list[dict[str, object]] = []
        pairs = {"clips": 0, "stills": 0}
        for ref, hashed in [*unrelated, *unrelated_stills]:
            if isinstance(hashed, str):
                continue
            usable = (len([f for f in hashed.frames.frames if f.quality >= 50])
                      if isinstance(hashed, VideoSignals) else 1)
            pairs["clips" if isinstance(hashed, VideoSignals) else "stills"] += (
                usable * registered_frames)
            (result,) = registry.match([query(ref, hashed)])
            false_positives += [{"query": ref, "matched": cases.get(m.case or ""),
                                 "signal": m.signal.value, "distance": m.distance,
                                 "tier": m.tier.value, "frames": m.frames}
                                for m in result.matches]
        registry.close()

    timing = long_clip_timing(originals[0])
    recall = {f: {"caught": sum(v), "of": len(v), "recall": round(sum(v) / max(1, len(v)), 4),
                  "refused": refused.get(f, 0), "goal": GOALS.get(f),
                  "missed": missed.get(f, [])[:20]} for f, v in caught.items()}
    report = {
        "machine": machine_info("av"),
        "command": "python bench/accuracy_video.py " + " ".join(sys.argv[1:]),
        "seconds": round(time.time() - started),
        "registered_clips": len(frames_of), "registered_frames": registered_frames,
        "unrelated_clips": len(unrelated), "unrelated_stills": len(unrelated_stills),
        "unrelated_frame_pairs": pairs, "false_positives": false_positives,
        "copies_matching_another_case": wrong_case,
        "recall": recall,
        "stored_bytes_per_minute": {"max": round(max(per_minute, default=0)),
                                    "mean": round(float(np.mean(per_minute or [0])))},
        "hash_60s_720p": timing,
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"registered {len(frames_of)} clips ({registered_frames} frames)")
    for family, r in recall.items():
        goal = f" (goal {r['goal']:.0%})" if r["goal"] else ""
        print(f"  {family:18} {r['caught']:4}/{r['of']:<4} {r['recall']:7.1%}{goal}"
              + (f", {r['refused']} refused" if r["refused"] else ""))
    print(f"false positives: {len(false_positives)} in {pairs['clips']:,} clip frame pairs and "
          f"{pairs['stills']:,} still-frame pairs; copies matching another case: "
          f"{len(wrong_case)}")
    print(f"stored per minute: max {report['stored_bytes_per_minute']['max']} bytes")
    print(f"60 s 720p clip: {timing['cpu_s_median_of_3']} s CPU, {timing['wall_s_median_of_3']} s "
          f"wall, {timing['frames_kept']} frames kept ({timing['vpdq_bytes']} bytes)")
    print(f"wrote {args.out} ({report['seconds']} s)")


if __name__ == "__main__":
    main()

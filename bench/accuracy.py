#!/usr/bin/env python3
"""Accuracy of the matching pipeline on real photos: recall per transform family, false
positives with the number of unrelated pairs behind them, distance distributions, thresholds.

Everything goes through the service layer: each registered image becomes its own case with
``Registry.submit_case`` (the same signals ``takedown submit`` registers), and every query is
answered by ``Registry.match`` (the same call the CLI and API make). The first pass matches
with generous thresholds (PDQ 90, pHash 16) so the best distance of every (query, case, signal)
triple is known; thresholds are derived from the unrelated pairs of the dev split; a second pass
with the derived thresholds confirms the figures.

Registered images: every original (../shared/data/originals) plus every other people photo
(even positions of people-lfw and people-humanseg), because the images this registry protects
are people-centred and photos of people sharing a composition are the near misses. Unrelated
queries: ImageNet and the other half of the people photos, each against every registered
image, and every registered image against every other one. Altered copies of every original
(bench/transforms.py) are generated in memory and queried; nothing is written to disk.

    .venv/bin/python bench/accuracy.py                 # everything (~95 min on 2 idle cores)
    .venv/bin/python bench/accuracy.py --limit 40      # a quick look
Writes docs/accuracy.json, docs/accuracy-*.png and the generated section of docs/accuracy.md.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import pickle  # noqa: E402
import shlex  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import zlib  # noqa: E402
from collections import defaultdict  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from multiprocessing import Pool  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this tree's registry, also when run from a copy of it

from same_photo import SAME_NCC, same_files  # noqa: E402
from transforms import variants  # noqa: E402

from registry.bootstrap import build_registry  # noqa: E402
from registry.config import Settings  # noqa: E402
from registry.domain import Query, Signal  # noqa: E402
from registry.errors import LowQualityHash  # noqa: E402
from registry.hashing import DecodeOptions, ImageSignals, compute_signals  # noqa: E402
from registry.service import SubmittedImage  # noqa: E402

EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
FP_BUDGET = 1e-6  # false positives per unrelated pair: split between PDQ, pHash and local
STRONG_CAP = {"pdq": 31}
WIDE = {"pdq": 90, "phash": 16}  # first-pass thresholds: wide enough to see the distributions
LOCAL_WIDE = 6  # first pass: every verified local match with at least this many inliers
LOCAL_STRONG_MARGIN = 8  # strong local tier: this many inliers above the nearest unrelated pair
# Unrelated pairs this near in any signal are checked for being one photograph (bench/same_photo.py)
SAME_CHECK = {"local": 10, "pdq": 70, "phash": 10}
SIGNALS = ("pdq", "phash", "local")
VARIANTS = variants()
OPTIONS = DecodeOptions()


@dataclass(frozen=True)
class Item:
    path: str
    group: str  # originals | people | imagenet
    split: str  # dev | holdout
    role: str  # registered | query


def images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in EXTS)


def collect(originals: Path, negatives: Path, limit: int | None) -> list[Item]:
    items: list[Item] = []
    orig = images(originals)[:limit]
    items += [Item(str(p), "originals", "dev" if i % 2 == 0 else "holdout", "registered")
              for i, p in enumerate(orig)]
    for sub in sorted(d for d in negatives.iterdir() if d.is_dir()):
        files = images(sub)[: (limit * 4 if limit else None)]
        people = sub.name.startswith("people")
        for i, p in enumerate(files):
            split = "dev" if (i // 2) % 2 == 0 else "holdout"
            role = "registered" if people and i % 2 == 0 else "query"
            items.append(Item(str(p), "people" if people else "imagenet", split, role))
    return items


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG", compress_level=1)
    return buf.getvalue()


def _signals_json(s: ImageSignals) -> dict[str, object]:
    return {**s.to_json(), "content_quality": s.content.quality if s.content else None,
            "views": [(v.label, v.pdq.hex, v.quality) for v in s.variants]}


def hash_registered(path: str) -> tuple[str, dict[str, object], float]:
    data = Path(path).read_bytes()
    t = time.perf_counter()
    signals = compute_signals(data, OPTIONS, registration=True)
    return path, _signals_json(signals), time.perf_counter() - t


def hash_query(job: tuple[str, int | None]) -> tuple[str, int | None, dict[str, object], float]:
    path, variant = job
    data = Path(path).read_bytes()
    if variant is not None:
        v = VARIANTS[variant]
        # A seed from the file name and transform alone: every run makes the same copies.
        rng = np.random.default_rng(zlib.crc32(f"{Path(path).name}/{variant}".encode()))
        data = png(v.apply(Image.open(io.BytesIO(data)).convert("RGB"), rng))
    t = time.perf_counter()
    signals = compute_signals(data, OPTIONS)
    return path, variant, _signals_json(signals), time.perf_counter() - t


def submitted(j: dict) -> SubmittedImage:  # type: ignore[type-arg]
    core = tuple(Signal.parse(k, j[k]) for k in ("pdq", "phash", "md5", "sha256", "local")
                 if k in j)
    views = []
    if "pdq_content" in j:
        views.append(("content", Signal.parse("pdq", j["pdq_content"]), j["content_quality"]))
    views += [(label, Signal.parse("pdq", h), q) for label, h, q in j["views"]]
    return SubmittedImage(core, j["pdq_quality"], tuple(views))


def query_of(ref: str, j: dict, min_quality: int) -> Query:  # type: ignore[type-arg]
    signals = []
    for key, kind in (("pdq", "pdq"), ("pdq_content", "pdq"), ("pdq_frame", "pdq"),
                      ("phash", "phash"), ("md5", "md5"), ("sha256", "sha256"),
                      ("local", "local")):
        if key not in j:
            continue
        quality = {"pdq": j["pdq_quality"], "pdq_content": j.get("content_quality"),
                   "pdq_frame": j.get("pdq_frame_quality")}.get(key, 100)
        if quality is not None and quality < min_quality:
            continue
        try:
            signals.append(Signal.parse(kind, j[key]))
        except Exception:  # degenerate (blank) hashes are not queried, as in the service
            continue
    return Query(ref, tuple(signals))


def best_distances(registry, queries: list[Query]) -> list[dict[tuple[str, str], float]]:  # type: ignore[no-untyped-def]
    """For each query: {(case, signal): best distance} (exact digests as distance 0); for the
    local signal the most inliers (``local``) and their coverage (``local_cov``)."""
    out = []
    for i in range(0, len(queries), 500):
        for result in registry.match(queries[i : i + 500]):
            best: dict[tuple[str, str], float] = {}
            for m in result.matches:
                case = m.case or ""
                if m.inliers is not None:
                    if m.inliers > best.get((case, "local"), 0):
                        best[(case, "local")] = m.inliers
                        best[(case, "local_cov")] = m.coverage or 0.0
                    continue
                signal = "exact" if m.tier.value == "exact" else m.signal.value
                key = (case, signal)
                best[key] = min(best.get(key, 999), m.distance)
            out.append(best)
    return out


def local_caught(d: dict, th: dict, tier: str) -> bool:  # type: ignore[type-arg]
    n = d.get("local") or 0
    if tier == "weak":
        return n >= th["weak"]
    return n >= th["strong"] and (d.get("local_cov") or 0) >= th["strong_coverage"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--originals", type=Path, default=ROOT.parent / "shared/data/originals")
    ap.add_argument("--negatives", type=Path, default=ROOT.parent / "shared/data/negatives")
    ap.add_argument("--limit", type=int, default=None, help="originals to use (quick runs)")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "accuracy.json")
    ap.add_argument("--cache", type=Path, default=None,
                    help="reuse (or write) the computed signals, a pickle this script wrote: "
                    "for re-running the analysis")
    args = ap.parse_args()
    for folder in (args.originals, args.negatives):
        if not folder.is_dir():
            print(f"skipped: {folder} is absent (evaluation photos are not in the repository; "
                  "see ../shared/data/README.md)")
            return 0
    started = time.time()
    items = collect(args.originals, args.negatives, args.limit)
    by_path = {it.path: it for it in items}
    registered = [it for it in items if it.role == "registered"]
    originals = [it for it in items if it.group == "originals"]
    negatives = [it for it in items if it.role == "query"]
    print(f"{len(registered)} registered ({len(originals)} originals), {len(negatives)} unrelated "
          f"queries, {len(VARIANTS)} transforms per original", flush=True)

    if args.cache and args.cache.exists():
        with args.cache.open("rb") as f:  # this script's own file (see --cache)
            reg, answers = pickle.load(f)
        print(f"signals from {args.cache}", flush=True)
    else:
        with Pool(args.workers) as pool:
            t = time.time()
            reg = pool.map(hash_registered, [it.path for it in registered], chunksize=8)
            print(f"hashed registered images in {time.time() - t:.0f} s", flush=True)
            jobs: list[tuple[str, int | None]] = [(it.path, None)
                                                  for it in registered + negatives]
            jobs += [(it.path, v) for it in originals for v in range(len(VARIANTS))]
            t = time.time()
            answers = pool.map(hash_query, jobs, chunksize=16)
            print(f"hashed {len(jobs)} queries in {time.time() - t:.0f} s", flush=True)
        if args.cache:
            # Streamed to the file: the queries' signals are ~8 GB as text, and a JSON string
            # of them beside the lists took the run past 24 GiB (killed by the OOM killer).
            with args.cache.open("wb") as f:
                pickle.dump((reg, answers), f, protocol=pickle.HIGHEST_PROTOCOL)

    tmp = tempfile.mkdtemp(prefix="takedown-accuracy-")
    # The first pass sees every distance up to the wide thresholds: an exhaustive (flat) index.
    # The confirmation pass below runs the default multi-index at the derived thresholds.
    settings = Settings.from_env({}, data_dir=tmp, pin_kdf_n=1024, pdq_strong=WIDE["pdq"],
                                 pdq_weak=WIDE["pdq"], phash_strong=WIDE["phash"],
                                 phash_weak=WIDE["phash"], local_weak=LOCAL_WIDE,
                                 local_strong=LOCAL_WIDE, index="flat")
    registry = build_registry(settings)
    case_of: dict[str, str] = {}
    stored: list[int] = []
    local_bytes: list[int] = []
    t = time.time()
    too_plain: list[str] = []
    for path, j, _ in reg:
        try:
            receipt = registry.submit_case([submitted(j)])
        except LowQualityHash:  # the registry refuses it, as it would refuse a submitter
            too_plain.append(path)
            continue
        case_of[path] = receipt.number
        stored.append(receipt.signals)
        if "local" in j:
            local_bytes.append(len(Signal.parse("local", j["local"]).value))
    if too_plain:
        print(f"{len(too_plain)} registered images refused as too plain (PDQ quality < 50)")
        registered = [it for it in registered if it.path not in too_plain]
        originals = [it for it in originals if it.path not in too_plain]
    register_s = time.time() - t
    path_of = {c: p for p, c in case_of.items()}
    queries = [query_of(str(n), j, settings.pdq_min_quality)
               for n, (_, _, j, _) in enumerate(answers)]
    t = time.time()
    best = best_distances(registry, queries)
    match_s = time.time() - t
    print(f"registered in {register_s:.0f} s, matched {len(queries)} queries in {match_s:.0f} s",
          flush=True)

    # --- true distances of altered copies, unrelated distances of everything else --------------
    true_d: dict[str, list[dict[str, float | str | None]]] = defaultdict(list)  # per copy
    # (query image, registered image, split, distances, altered copy?)
    unrelated: list[tuple[str, str, str, dict[str, float]]] = []
    for (path, variant, _j, _t), b in zip(answers, best, strict=True):
        own = case_of.get(path) if variant is not None or path in case_of else None
        per_case: dict[str, dict[str, float]] = defaultdict(dict)
        for (case, signal), d in b.items():
            per_case[case][signal] = d
        if variant is not None and path in too_plain:
            continue  # copies of an original the registry refused: nothing to find
        if variant is not None:
            v = VARIANTS[variant]
            hit = per_case.get(own or "", {})
            true_d[v.family].append({"pdq": hit.get("pdq"), "phash": hit.get("phash"),
                                     "exact": hit.get("exact"), "local": hit.get("local"),
                                     "local_cov": hit.get("local_cov"),
                                     "split": by_path[path].split, "name": v.name})
        for case, d in per_case.items():
            if case == own:
                continue
            other = by_path[path_of[case]]
            split = "dev" if by_path[path].split == other.split == "dev" else (
                "holdout" if by_path[path].split == other.split == "holdout" else "mixed")
            unrelated.append((path, path_of[case], split, d))
    n_reg = len(registered)
    pairs = {"all": 0, "dev": 0, "holdout": 0, "people": 0, "people_dev": 0}
    reg_split = defaultdict(int)
    for it in registered:
        reg_split[it.split] += 1
    reg_people = sum(1 for it in registered if it.group == "people")
    reg_people_dev = sum(1 for it in registered if it.group == "people" and it.split == "dev")
    copies_of = len(VARIANTS)
    refused = [by_path[p] for p in too_plain]  # still queried, as unrelated images
    for it in registered + negatives + refused + originals * copies_of:
        own = it.role == "registered" and it.path not in too_plain
        others = n_reg - (1 if own else 0)
        pairs["all"] += others
        same = reg_split[it.split] - (1 if own else 0)
        pairs[it.split] += same
        if it.group == "people":
            pairs["people"] += reg_people - (1 if own else 0)
            if it.split == "dev":
                pairs["people_dev"] += reg_people_dev - (1 if own else 0)

    # Exact duplicates inside the datasets are not unrelated pairs: list them, leave them out.
    duplicates = [(q, c, d) for q, c, _s, d in unrelated if d.get("exact") == 0]
    unrelated = [u for u in unrelated if u[3].get("exact") != 0]
    # Nor are two files cut from one photograph (LFW crops each face of a news photo into its
    # own file): every pair that came near a threshold is checked, by its source images (an
    # altered copy of A against B is A against B), and the pairs found are listed and left out,
    # of the counts and of the pairs behind them.
    near = {(q, c) for q, c, _s, d in unrelated
            if (d.get("local") or 0) >= SAME_CHECK["local"]
            or d.get("pdq", 999) <= SAME_CHECK["pdq"] or d.get("phash", 999) <= SAME_CHECK["phash"]}
    verdicts: dict[frozenset[str], dict[str, object]] = {}
    t = time.time()
    for q, c in sorted(near):
        key = frozenset((q, c))
        if key not in verdicts:
            verdicts[key] = same_files(q, c).as_json()
    same_keys = {k for k, v in verdicts.items() if v["same"]}  # both ways round
    print(f"checked {len(verdicts)} near image pairs for being one photograph in "
          f"{time.time() - t:.0f} s: {sum(1 for v in verdicts.values() if v['same'])} are",
          flush=True)
    same_photograph = sorted(
        ({"query": Path(q).name, "case_image": Path(c).name, **verdicts[frozenset((q, c))],
          **{k: v for k, v in d.items() if k in ("local", "local_cov", "pdq", "phash")}}
         for q, c, _s, d in unrelated if frozenset((q, c)) in same_keys),
        key=lambda e: (-(e.get("local") or 0), e.get("pdq", 999)))
    unrelated = [u for u in unrelated if frozenset((u[0], u[1])) not in same_keys]
    queries_of: dict[str, int] = defaultdict(int)  # how many queries each source image makes
    for path, _variant, _j, _t in answers:
        queries_of[path] += 1
    same_pairs = {(q, c) for k in same_keys for q, c in (tuple(k), tuple(k)[::-1])
                  if c in case_of}
    for q, c in same_pairs:  # those pairs are not among the unrelated pairs counted above
        a, b = by_path[q], by_path[c]
        pairs["all"] -= queries_of[q]
        if a.split == b.split:
            pairs[a.split] -= queries_of[q]
        if a.group == b.group == "people":
            pairs["people"] -= queries_of[q]
            if a.split == b.split == "dev":
                pairs["people_dev"] -= queries_of[q]
    nearest_different = sorted(
        ({"images": sorted(Path(p).name for p in k), **v} for k, v in verdicts.items()
         if not v["same"]), key=lambda e: -float(e["ncc"]))[:10]  # type: ignore[arg-type]

    def people_pair(q: str, c: str) -> bool:
        return by_path[q].group == "people" and by_path[c].group == "people"

    def fp_count(signal: str, threshold: int, split: str) -> int:
        if split == "people":
            return sum(1 for q, c, _s, d in unrelated if people_pair(q, c)
                       and d.get(signal, 999) <= threshold)
        return sum(1 for _q, _c, s, d in unrelated
                   if (split == "all" or s == split) and d.get(signal, 999) <= threshold)

    thresholds = {}
    curves: dict[str, dict[str, list[int]]] = {}
    for signal in ("pdq", "phash"):
        # Half the budget each, so the union stays within it; and it must hold on the people
        # pairs on their own, where unrelated photos come closest. The people pairs of one split
        # (~0.65M) are too few to resolve 1e-6, so false positives are counted on all pairs;
        # recall is what the dev/holdout split checks (no threshold looks at recall).
        curves[signal] = {split: [fp_count(signal, t, split) for t in range(WIDE[signal] + 1)]
                          for split in ("all", "dev", "holdout", "people")}
        ok = [t for t in range(WIDE[signal] + 1)
              if curves[signal]["all"][t] <= FP_BUDGET * pairs["all"] / len(SIGNALS)
              and curves[signal]["people"][t] <= FP_BUDGET * pairs["people"] / len(SIGNALS)]
        weak = max(ok, default=0)
        nearest = min((d[signal] for *_x, d in unrelated if signal in d), default=WIDE[signal])
        margin = 10 if signal == "pdq" else 3
        # PDQ's strong tier also stays at the customary 31: the radius the index is exact to at
        # 16-bit chunks (docs/performance.md); the weak tier above it is searched with measured
        # recall (bench/scale.py).
        cap = STRONG_CAP.get(signal, weak)
        strong = max(0, min(weak, nearest - margin, cap))
        thresholds[signal] = {"strong": strong, "weak": weak, "nearest_unrelated": nearest,
                              "fp_at_weak": curves[signal]["all"][weak],
                              "fp_people_at_weak": curves[signal]["people"][weak]}

    # Local: false positives are unrelated pairs verified with at least k inliers. PDQ and
    # pHash are fixed first (a third of the budget each); the local weak tier is the smallest k
    # at which the union of all three signals' false positives stays within the whole budget,
    # overall and among people pairs: the goal is on what a platform sees, the union.
    def local_fp(k: int, split: str) -> int:
        return sum(1 for q, c, s, d in unrelated if (d.get("local") or 0) >= k and (
            split == "all" or s == split or (split == "people" and people_pair(q, c))))

    def hashes_hit(d: dict) -> bool:  # type: ignore[type-arg]
        return any(d.get(sig, 999) <= thresholds[sig]["weak"] for sig in ("pdq", "phash"))

    def union_fp(k: int, split: str) -> int:
        return sum(1 for q, c, _s, d in unrelated
                   if (split == "all" or people_pair(q, c))
                   and (hashes_hit(d) or (d.get("local") or 0) >= k))

    top = int(max([LOCAL_WIDE, *[d.get("local") or 0 for *_x, d in unrelated]])) + 2
    curves["local"] = {split: [local_fp(k, split) for k in range(top + 1)]
                       for split in ("all", "dev", "holdout", "people")}
    local_ok = [k for k in range(LOCAL_WIDE, top + 1)
                if union_fp(k, "all") <= FP_BUDGET * pairs["all"]
                and union_fp(k, "people") <= FP_BUDGET * pairs["people"]]
    local_weak = min(local_ok)
    nearest_local = int(max([0, *[d.get("local") or 0 for *_x, d in unrelated]]))
    thresholds["local"] = {
        "weak": local_weak, "strong": max(local_weak, nearest_local + LOCAL_STRONG_MARGIN),
        "strong_coverage": Settings().local_strong_coverage,
        "nearest_unrelated": nearest_local,
        "fp_at_weak": curves["local"]["all"][local_weak],
        "fp_people_at_weak": curves["local"]["people"][local_weak]}

    def caught_by(d: dict, signal: str, tier: str) -> bool:  # type: ignore[type-arg]
        if signal == "local":
            return local_caught(d, thresholds["local"], tier)
        return d.get(signal) is not None and d[signal] <= thresholds[signal][tier]

    def caught(d: dict, tier: str, signals: tuple[str, ...] = SIGNALS) -> bool:  # type: ignore[type-arg]
        if d.get("exact") == 0:
            return True
        return any(caught_by(d, s, tier) for s in signals)

    families = {}
    for family, copies in true_d.items():
        row = {"copies": len(copies)}
        for split in ("all", "dev", "holdout"):
            sel = [c for c in copies if split == "all" or c["split"] == split]
            if sel:
                row[f"weak_{split}"] = sum(caught(c, "weak") for c in sel) / len(sel)
                row[f"strong_{split}"] = sum(caught(c, "strong") for c in sel) / len(sel)
        row["pdq_median"] = float(np.median([c["pdq"] if c["pdq"] is not None else 999
                                             for c in copies]))
        row["hashes_only_weak"] = sum(caught(c, "weak", ("pdq", "phash"))
                                      for c in copies) / len(copies)
        row["local_only_weak"] = sum(caught_by(c, "local", "weak") for c in copies) / len(copies)
        row["local_median_inliers"] = float(np.median([c["local"] or 0 for c in copies]))
        by_name: dict[str, list[bool]] = defaultdict(list)
        for c in copies:
            by_name[c["name"]].append(caught(c, "weak"))
        row["by_variant"] = {k: sum(v) / len(v) for k, v in by_name.items()}
        families[family] = row

    def fp_union(split: str, tier: str) -> int:
        return sum(1 for _q, _c, s, d in unrelated if (split == "all" or s == split)
                   and caught(d, tier))

    fp = {split: {"pairs": pairs[split], "weak": fp_union(split, "weak"),
                  "strong": fp_union(split, "strong")} for split in ("all", "dev", "holdout")}
    people_fp = sum(1 for q, c, _s, d in unrelated if by_path[q].group == "people"
                    and by_path[c].group == "people" and caught(d, "weak"))
    fp["people"] = {"pairs": pairs["people"], "weak": people_fp}
    fp["by_signal"] = {sig: {"weak": sum(1 for *_x, d in unrelated if caught_by(d, sig, "weak")),
                             "strong": sum(1 for *_x, d in unrelated
                                           if caught_by(d, sig, "strong"))}
                       for sig in SIGNALS}

    # --- confirm through the service with the derived thresholds ------------------------------
    final = Settings.from_env({}, data_dir=tmp, pin_kdf_n=1024,
                              pdq_strong=thresholds["pdq"]["strong"],
                              pdq_weak=thresholds["pdq"]["weak"],
                              phash_strong=thresholds["phash"]["strong"],
                              phash_weak=thresholds["phash"]["weak"],
                              local_weak=thresholds["local"]["weak"],
                              local_strong=thresholds["local"]["strong"])
    registry.close()
    confirm = build_registry(final)
    confirmed_caught = confirmed_fp = 0
    dup_pairs = {(q, c) for q, c, _ in duplicates} | same_pairs
    for i in range(0, len(queries), 500):
        for (path, variant, _j, _t), result in zip(answers[i : i + 500],
                                                   confirm.match(queries[i : i + 500]),
                                                   strict=True):
            own = case_of.get(path)
            cases = {m.case for m in result.matches}
            if variant is not None:
                confirmed_caught += own in cases
            confirmed_fp += sum(1 for c in cases if c != own
                                and (path, path_of[c]) not in dup_pairs)
    upload_ms = end_to_end(confirm, [it.path for it in originals[:40]])
    confirm.close()

    hash_times = {"register_ms": 1000 * float(np.median([t for *_x, t in reg])),
                  "query_ms": 1000 * float(np.median([t for *_x, t in answers]))}
    result = {
        "command": "python bench/accuracy.py " + shlex.join(sys.argv[1:]),
        "started": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(started)),
        "seconds": round(time.time() - started),
        "registered_images": n_reg, "originals": len(originals),
        "unrelated_queries": len(negatives),
        "refused_too_plain": [Path(p).name for p in too_plain],
        "altered_copies": sum(r["copies"] for r in families.values()),
        "stored_signals_per_image": {"mean": float(np.mean(stored)), "max": int(max(stored))},
        "local_bytes_per_image": {"mean": float(np.mean(local_bytes)) if local_bytes else 0.0,
                                  "max": int(max(local_bytes, default=0)),
                                  "images_with_local": len(local_bytes)},
        "thresholds": thresholds, "fp_budget_per_pair": FP_BUDGET,
        "fp_curves": curves, "pairs": pairs,
        "nearest_unrelated": sorted(
            ({"query": Path(q).name, "case_image": Path(c).name, "groups": [by_path[q].group,
              by_path[c].group], **d} for q, c, _s, d in unrelated),
            key=lambda e: e.get("pdq", 999))[:15],
        "nearest_unrelated_local": sorted(
            ({"query": Path(q).name, "case_image": Path(c).name, "groups": [by_path[q].group,
              by_path[c].group], **d} for q, c, _s, d in unrelated if d.get("local")),
            key=lambda e: -e.get("local", 0))[:15],
        "false_positives": fp, "families": families,
        "dataset_duplicates": [(Path(q).name, Path(c).name) for q, c, _ in duplicates],
        "same_photograph": {"rule": f"bench/same_photo.py: aligned pixels correlate >= {SAME_NCC}",
                            "checked_image_pairs": len(verdicts), "near": SAME_CHECK,
                            "pairs": same_photograph, "nearest_different": nearest_different},
        "confirmed": {"copies_caught": confirmed_caught,
                      "copies": sum(r["copies"] for r in families.values()),
                      "false_positive_pairs": confirmed_fp},
        "timing": {**hash_times, "match_ms_per_query": 1000 * match_s / max(1, len(queries)),
                   "upload_2mp_ms": upload_ms},
        "distances": {
            "true_pdq": {f: [c["pdq"] for c in cs] for f, cs in true_d.items()},
            "unrelated_pdq": [d["pdq"] for *_x, d in unrelated if "pdq" in d],
            "unrelated_phash": [d["phash"] for *_x, d in unrelated if "phash" in d],
            "true_local": {f: [c["local"] or 0 for c in cs] for f, cs in true_d.items()},
            "unrelated_local": [d["local"] for *_x, d in unrelated if d.get("local")],
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    report(result, args.out)
    return 0


def end_to_end(registry, paths: list[str]) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """One uploaded ~2 MP JPEG, end to end on one core: decode, signals, index lookups and the
    database re-check (``Registry.hash_image`` + ``Registry.match``)."""
    times = []
    for path in paths:
        img = Image.open(path).convert("RGB")
        scale = (2_000_000 / (img.width * img.height)) ** 0.5
        big = img.resize((round(img.width * scale), round(img.height * scale)),
                         Image.Resampling.BICUBIC)
        buf = io.BytesIO()
        big.save(buf, "JPEG", quality=90)
        data = buf.getvalue()
        for _ in range(3):
            t = time.perf_counter()
            registry.match([registry.query_of_image("upload", registry.hash_image(data))])
            times.append(1000 * (time.perf_counter() - t))
    return {"median": float(np.median(times)), "p95": float(np.percentile(times, 95)),
            "images": len(paths)}


def report(r: dict, out: Path) -> None:  # type: ignore[type-arg]
    th = r["thresholds"]
    lines = [
        f"Command: `{r['command']}` ({r['seconds']} s, {r['started']} UTC)",
        "",
        f"Registered images: {r['registered_images']} ({r['originals']} originals + people "
        f"photos); unrelated queries: {r['unrelated_queries']}; altered copies: "
        f"{r['altered_copies']}; stored signals per image: mean "
        f"{r['stored_signals_per_image']['mean']:.1f}, max {r['stored_signals_per_image']['max']}.",
        "",
        "| signal | strong ≤ | weak ≤ | nearest unrelated pair | FP pairs at weak (all) | "
        "(people) |",
        "|---|---|---|---|---|---|",
    ]
    for s, t in th.items():
        if s == "local":
            lines.append(f"| local (inliers) | ≥ {t['strong']} and coverage ≥ "
                         f"{t['strong_coverage']} | ≥ {t['weak']} | {t['nearest_unrelated']} "
                         f"inliers | {t['fp_at_weak']} | {t['fp_people_at_weak']} |")
            continue
        lines.append(f"| {s} | {t['strong']} | {t['weak']} | {t['nearest_unrelated']} | "
                     f"{t['fp_at_weak']} | {t['fp_people_at_weak']} |")
    lb = r["local_bytes_per_image"]
    lines += ["", f"Local signal stored per registered image: mean {lb['mean']:,.0f} bytes, max "
              f"{lb['max']:,} ({lb['images_with_local']} of {r['registered_images']} images "
              "have one)."]
    lines += ["", "| family | copies | recall weak (all) | dev | holdout | recall strong | "
              "PDQ/pHash alone | local alone | median PDQ distance | median local inliers |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for fam, row in r["families"].items():
        lines.append(f"| {fam} | {row['copies']} | {row['weak_all']:.1%} | "
                     f"{row.get('weak_dev', 0):.1%} | {row.get('weak_holdout', 0):.1%} | "
                     f"{row['strong_all']:.1%} | {row['hashes_only_weak']:.1%} | "
                     f"{row['local_only_weak']:.1%} | {row['pdq_median']:.0f} | "
                     f"{row['local_median_inliers']:.0f} |")
    fp = r["false_positives"]
    lines += ["", "| unrelated pairs | pairs | false positives (weak) | (strong) |",
              "|---|---|---|---|"]
    for split in ("all", "dev", "holdout"):
        lines.append(f"| {split} | {fp[split]['pairs']:,} | {fp[split]['weak']} | "
                     f"{fp[split]['strong']} |")
    lines.append(f"| people vs people | {fp['people']['pairs']:,} | {fp['people']['weak']} | |")
    lines += ["", "False positives by signal (all pairs): " + ", ".join(
        f"{sig} {v['weak']} weak / {v['strong']} strong" for sig, v in fp["by_signal"].items())
        + "."]
    c = r["confirmed"]
    lines += ["", f"Confirmed through `Registry.match` with the derived thresholds: "
              f"{c['copies_caught']} of {c['copies']} copies matched their case; "
              f"{c['false_positive_pairs']} unrelated (query, case) matches.",
              f"Dataset duplicates left out (same file bytes): {len(r['dataset_duplicates'])}.",
              same_photo_line(r["same_photograph"]),
              "", f"Hashing (median, one core): registration {r['timing']['register_ms']:.1f} ms, "
              f"query {r['timing']['query_ms']:.1f} ms per image; matching "
              f"{r['timing']['match_ms_per_query']:.2f} ms per query (batches of 500).",
              "", f"One uploaded ~2 MP JPEG end to end (decode, signals, index lookups, database "
              f"re-check; one core, {r['timing']['upload_2mp_ms']['images']} photos x 3): median "
              f"{r['timing']['upload_2mp_ms']['median']:.1f} ms, p95 "
              f"{r['timing']['upload_2mp_ms']['p95']:.1f} ms."]
    text = "\n".join(lines)
    print(text)
    md = out.with_suffix(".md")
    begin, end = "<!-- generated by bench/accuracy.py -->", "<!-- end generated -->"
    doc = md.read_text() if md.exists() else f"# Accuracy\n\n{begin}\n{end}\n"
    if begin in doc and end in doc:
        head, rest = doc.split(begin, 1)
        doc = head + begin + "\n" + text + "\n" + end + rest.split(end, 1)[1]
    md.write_text(doc)
    plots(r, out)


def same_photo_line(s: dict) -> str:  # type: ignore[type-arg]
    names = sorted({" / ".join(sorted((p["query"], p["case_image"]))) for p in s["pairs"]})
    nearest = s["nearest_different"][0]["ncc"] if s["nearest_different"] else None
    return (f"Two files of one photograph left out ({s['rule']}; {s['checked_image_pairs']} near "
            f"image pairs checked): {len(s['pairs'])} (query, case) pairs from {len(names)} image "
            f"pairs ({'; '.join(names) or 'none'}); the most alike pair that is not one "
            f"photograph correlates {nearest}.")


def plots(r: dict, out: Path) -> None:  # type: ignore[type-arg]
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plots")
        return
    fams = list(r["families"])
    fig, ax = plt.subplots(figsize=(9, 4))
    fig.set_size_inches(12, 4.5)
    ax.bar(fams, [r["families"][f]["weak_all"] * 100 for f in fams], label="weak tier, all signals")
    ax.bar(fams, [r["families"][f]["strong_all"] * 100 for f in fams], alpha=0.6, label="strong")
    ax.plot(fams, [r["families"][f]["hashes_only_weak"] * 100 for f in fams], "k_",
            markersize=14, label="PDQ/pHash alone (weak)")
    ax.set_ylabel("recall %")
    ax.set_ylim(0, 100)
    ax.tick_params(axis="x", rotation=45)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out.with_name("accuracy-recall.png"), dpi=110)
    fig, ax = plt.subplots(figsize=(9, 4))
    bins = np.arange(0, 92, 2)
    unrel = [d for d in r["distances"]["unrelated_pdq"] if d is not None]
    ax.hist(unrel, bins=bins, alpha=0.6, label=f"unrelated (query, case) pairs within 90 bits "
            f"(n={len(unrel)})", log=True)
    true_all = [d for ds in r["distances"]["true_pdq"].values() for d in ds if d is not None]
    ax.hist(true_all, bins=bins, alpha=0.6, label=f"altered copies (n={len(true_all)})", log=True)
    for tier in ("strong", "weak"):
        ax.axvline(r["thresholds"]["pdq"][tier], linestyle="--", color="k")
    ax.set_xlabel("best PDQ distance over views (bits)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out.with_name("accuracy-pdq-distances.png"), dpi=110)
    fig, ax = plt.subplots(figsize=(9, 4))
    unrel_l = r["distances"]["unrelated_local"]
    true_l = [n for ns in r["distances"]["true_local"].values() for n in ns]
    top = max([40, *unrel_l])
    bins = np.arange(0, min(top, 120) + 2, 2)
    ax.hist(np.clip(true_l, 0, bins[-1]), bins=bins, alpha=0.6, log=True,
            label=f"altered copies (n={len(true_l)}; 0 = not verified)")
    ax.hist(unrel_l, bins=bins, alpha=0.6, log=True,
            label=f"unrelated (query, case) pairs verified with >= 6 inliers (n={len(unrel_l)})")
    for tier in ("weak", "strong"):
        ax.axvline(r["thresholds"]["local"][tier], linestyle="--", color="k")
    ax.set_xlabel("local-feature inliers of the best verified transform")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out.with_name("accuracy-local-inliers.png"), dpi=110)


if __name__ == "__main__":
    sys.exit(main())

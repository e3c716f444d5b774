#!/usr/bin/env python3
"""Where one batched ``POST /api/v1/match`` spends its time, stage by stage.

Runs batches of ``--batch`` four-signal queries (PDQ, pHash, MD5, SHA-256, built as
``bench/http_throughput.py`` builds them: no near copies, and half near copies) through
``create_app(registry).test_client()`` in this process, over a registry that
``bench/http_throughput.py`` set up (same ``--data-dir``, ``--hashes`` and ``--database-url``).
Two views of the same request:

* **stage timer**: the functions each stage is made of are wrapped with a timer that records
  wall time and this thread's CPU time, *exclusive* of the nested stages (so the stages add up
  to the request; "rest" is Flask, Werkzeug, the limiter and the test client). The wrappers
  cost about a microsecond a call, a few ms per batch in the per-query stages.
* **cProfile**: the cumulative time of the same functions, the time by library (the categories
  of ``bench/http_throughput.py --breakdown``) and the functions with the most exclusive time.

Database time shows as wall time with little CPU in this process: the rest is PostgreSQL's own
CPU and the round trips, which the benchmark's ``server_cpu_ms_per_hash`` does not count.

    .venv/bin/python bench/match_profile.py --hashes 1000000 --data-dir /tmp/tdm-1m-pg \\
        --database-url postgresql+psycopg://postgres@127.0.0.1:5432/takedown_match_perf \\
        --label before

Results are merged into ``bench/results/match_profile.json`` (``--out``) under ``--label``.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import functools
import gc
import json
import os
import pstats
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402


def _bench_http() -> Any:
    """bench/http_throughput.py, whose corpus and queries this profile reuses."""
    from bench import http_throughput

    return http_throughput


class StageTimer:
    """Exclusive wall and CPU time per stage: a nested stage's time is taken off its parent."""

    def __init__(self) -> None:
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self._stack: list[list[float]] = []  # per open stage: time its children took
        self.thread = threading.get_ident()

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self._stack.append([0.0, 0.0])
        w0, c0 = time.perf_counter(), time.thread_time()
        try:
            yield
        finally:
            dw, dc = time.perf_counter() - w0, time.thread_time() - c0
            child_w, child_c = self._stack.pop()
            self.wall[name] = self.wall.get(name, 0.0) + dw - child_w
            self.cpu[name] = self.cpu.get(name, 0.0) + dc - child_c
            self.calls[name] = self.calls.get(name, 0) + 1
            if self._stack:
                self._stack[-1][0] += dw
                self._stack[-1][1] += dc

    def wrap(self, owner: Any, attr: str, name: str | Callable[..., str]) -> None:
        original = getattr(owner, attr)
        timer = self

        @functools.wraps(original)
        def timed(*args: Any, **kwargs: Any) -> Any:
            if threading.get_ident() != timer.thread:  # e.g. the change-log follower
                return original(*args, **kwargs)
            label = name(*args, **kwargs) if callable(name) else name
            with timer.stage(label):
                return original(*args, **kwargs)

        setattr(owner, attr, timed)

    def reset(self) -> None:
        self.wall.clear()
        self.cpu.clear()
        self.calls.clear()


# (owner, attribute, stage) of everything timed; owners are resolved after the imports.
def stages() -> list[tuple[Any, str, str | Callable[..., str]]]:
    import flask.wrappers

    from registry.service import Registry, matching
    from registry.service.indexing import IndexKeeper
    from registry.store import uow
    from registry.web import api

    def search_stage(_keeper: Any, kind: Any, *_a: Any, **_k: Any) -> str:
        return f"index search: {kind.value}"

    return [
        (flask.wrappers.Request, "get_json", "JSON decode of the body"),
        (Registry, "authenticate", "authentication (platform key look-up)"),
        (api, "match_queries", "request validation (match_queries)"),
        (api, "parse_query", "Query objects (parse_query, Signal.parse)"),
        (Registry, "match", "matching: the rest (filters, Match objects, commit)"),
        (IndexKeeper, "sync", "change-log sync"),
        (matching, "_perceptual_hits", "hit objects (perceptual)"),
        (IndexKeeper, "search", search_stage),
        (matching, "_local_hits", "local signals"),
        (matching, "_exact_hits", "digest look-ups: the rest"),
        (uow.SignalRepository, "find_exact", "digest look-ups: queries"),
        (uow.SignalRepository, "get_many", "get_many of hits"),
        (uow.MatchRepository, "add_many", "match records insert"),
        (uow.AuditLog, "record", "audit record"),
        (api, "record_matches", "metrics"),
        (api, "result_json", "response: result_json"),
        (api, "jsonify", "response: jsonify"),
    ]


def run(args: argparse.Namespace) -> dict[str, Any]:
    bench = _bench_http()
    bench.DATABASE_URL = args.database_url
    data_dir = Path(args.data_dir).resolve()
    bench.setup_data(data_dir, args.hashes, args.seed)
    codes = np.load(data_dir / "codes.npy")
    phashes = np.load(data_dir / "phashes.npy")
    rng = np.random.default_rng(args.seed + 11)

    from registry.bootstrap import build_registry
    from registry.domain import Scope
    from registry.web import create_app

    settings = bench.bench_settings(data_dir, rate_limit="1000000 per second")
    registry = build_registry(settings)
    timer = StageTimer()
    report: dict[str, Any] = {}
    try:
        _, key = registry.add_platform(f"bench-{uuid.uuid4().hex[:8]}", [Scope.MATCH])
        client = create_app(registry).test_client()
        if args.freeze:  # as registry.web.wsgi.create() leaves a serving process
            from registry.web.wsgi import settle_heap

            settle_heap()
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        cases = {"no_match": 0, "half_matching": 2}
        for case, near_every in cases.items():
            bodies = [json.dumps({"queries": bench.queries(codes, rng, args.batch, f"p{b}",
                                                           near_every, phashes)}).encode()
                      for b in range(args.repeats)]

            def post(body: bytes) -> None:
                response = client.post("/api/v1/match", data=body, headers=headers)
                if response.status_code != 200:
                    raise RuntimeError(f"answered {response.status_code}: {response.data[:200]!r}")

            for body in bodies[:2]:  # warm-up
                post(body)
            # Plain: the request as it runs, no timers; garbage collections timed by callback.
            gc_time, gc_runs = _watch_collections()
            w0, c0 = time.perf_counter(), time.thread_time()
            for body in bodies:
                post(body)
            plain_wall = (time.perf_counter() - w0) / len(bodies)
            plain_cpu = (time.thread_time() - c0) / len(bodies)
            gc.callbacks.pop()
            gc_ms = gc_time[0] / len(bodies) * 1000
            # Stage timer.
            originals = [(o, a, getattr(o, a)) for o, a, _ in stages()]
            for owner, attr, name in stages():
                timer.wrap(owner, attr, name)
            timer.reset()
            try:
                for body in bodies:
                    with timer.stage("rest (Flask, Werkzeug, limiter, test client)"):
                        post(body)
            finally:
                for owner, attr, original in originals:
                    setattr(owner, attr, original)
            n = len(bodies)
            total_wall, total_cpu = sum(timer.wall.values()), sum(timer.cpu.values())
            order = sorted(timer.wall, key=lambda k: -timer.wall[k])
            per_stage = {k: {"wall_ms": round(timer.wall[k] / n * 1000, 2),
                             "cpu_ms": round(timer.cpu[k] / n * 1000, 2),
                             "wall_share": round(timer.wall[k] / total_wall, 4),
                             "calls_per_request": timer.calls[k] / n} for k in order}
            # cProfile.
            profile = cProfile.Profile()
            profile.enable()
            for body in bodies:
                post(body)
            profile.disable()
            stats = pstats.Stats(profile)
            report[case] = {
                "queries_per_request": args.batch, "signals_per_query": 4,
                "near_duplicate_share": 0.5 if near_every else 0.0, "requests": n,
                "garbage_collection_ms_per_request": round(gc_ms, 2),
                "garbage_collections_per_request": round(gc_runs[0] / len(bodies), 1),
                "unprofiled_ms_per_request": {"wall": round(plain_wall * 1000, 2),
                                              "cpu": round(plain_cpu * 1000, 2)},
                "stage_timer": {"total_wall_ms": round(total_wall / n * 1000, 2),
                                "total_cpu_ms": round(total_cpu / n * 1000, 2),
                                "stages": per_stage},
                "cprofile": {"cumulative_ms": _cumulative(stats, n),
                             **bench._attribute(stats, n)},
            }
    finally:
        registry.close()
    return report


_CUMULATIVE = ("get_json", "authenticate", "match_queries", "parse_query", "match", "sync",
               "_perceptual_hits", "search", "_local_hits", "_exact_hits", "find_exact",
               "get_many", "add_many", "record", "record_matches", "result_json", "jsonify",
               "merge_hits", "commit")


def _cumulative(stats: pstats.Stats, n: int) -> dict[str, float]:
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    out: dict[str, float] = {}
    for (filename, line, name), (_cc, _nc, _tt, cumulative, _callers) in raw.items():
        if name in _CUMULATIVE and ("registry/" in filename or name in ("get_json", "jsonify",
                                                                          "commit")):
            label = f"{_short(filename)}:{line}:{name}"
            out[label] = round(cumulative / n * 1000, 2)
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def _short(filename: str) -> str:
    for marker in ("site-packages/", str(ROOT) + "/"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return filename


def print_report(report: dict[str, Any]) -> None:
    for case, d in report.items():
        st = d["stage_timer"]
        print(f"\n{case}: {d['queries_per_request']} queries x 4 signals; unprofiled "
              f"{d['unprofiled_ms_per_request']['wall']} ms wall, "
              f"{d['unprofiled_ms_per_request']['cpu']} ms CPU per request; stage timer total "
              f"{st['total_wall_ms']} ms wall / {st['total_cpu_ms']} ms CPU")
        for k, v in st["stages"].items():
            print(f"  {v['wall_ms']:>8.2f} ms wall {v['cpu_ms']:>8.2f} ms CPU "
                  f"{100 * v['wall_share']:5.1f}%  {k}")


def _watch_collections() -> tuple[list[float], list[int]]:
    """Registers a gc callback adding up the time collections take (removed by the caller)."""
    total, runs, started = [0.0], [0], [0.0]

    def callback(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            total[0] += time.perf_counter() - started[0]
            runs[0] += 1

    gc.callbacks.append(callback)
    return total, runs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hashes", type=int, default=1_000_000)
    p.add_argument("--data-dir", required=True)
    p.add_argument("--database-url", default="")
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=6, help="requests per case and view")
    p.add_argument("--seed", type=int, default=20240611)
    p.add_argument("--label", default="run", help="key of this run in the output file")
    p.add_argument("--note", default="", help="free text stored with the run")
    p.add_argument("--no-freeze", dest="freeze", action="store_false",
                   help="leave the start-up heap to the garbage collector (before gc.freeze)")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "match_profile.json"))
    args = p.parse_args(argv)
    bench = _bench_http()
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    report = run(args)
    print_report(report)
    out = Path(args.out)
    existing = json.loads(out.read_text()) if out.exists() else {}
    existing[args.label] = {"started": started, "machine": bench.machine_info(),
                            "loadavg_at_end": list(os.getloadavg()), "note": args.note,
                            "command": " ".join(sys.argv), "cases": report}
    out.write_text(json.dumps(existing, indent=1) + "\n")
    print(f"\nwrote {out} [{args.label}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())

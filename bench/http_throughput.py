#!/usr/bin/env python3
"""HTTP benchmark: the platform API under gunicorn on loopback, over 1M registered PDQ hashes.

What it does, in order:

1. **Data** (skipped when ``--data-dir`` already holds the same set-up, see ``setup.json``):
   registers ``--hashes`` images *through the service* (``Registry.register_bank``, 2000 images
   per call), each with four signals: a seeded random PDQ code (uniform 256-bit; popcount kept
   within 96..160, i.e. near 128), a random pHash (popcount 16..48), and MD5/SHA-256 of a
   per-image string; ``pdq_quality=100``, bank ``bench``. So ``--hashes`` is the number of
   registered PDQ hashes (and of pHash, MD5 and SHA-256 hashes). Two ~2 MP JPEGs are made; the
   first one's hashes (with its registered views) go into bank ``bench-images``, the second
   stays unregistered. Then the index is built from the database and a snapshot written.
2. **Server**: ``gunicorn 'registry.web.wsgi:create()' -w WORKERS --bind 127.0.0.1:PORT`` with
   ``TAKEDOWN_DATA_DIR`` pointing at that data and ``TAKEDOWN_RATE_LIMIT`` set far above what
   the benchmark can send. A fresh platform key (scope ``match``) is made for each run.
3. **Measurements** (every loop bounded in count *and* time; only 127.0.0.1):
   (a) batched ``POST /api/v1/match``: bodies of ``--batch`` queries (half stored codes with
       1..16 bits flipped, which must match strong; half uniform random codes), ``--clients``
       concurrent client threads for ``--seconds`` → hashes/s; then the same with no
       near-duplicates; then both again with queries of four signals each (PDQ, pHash, MD5,
       SHA-256: what ``takedown hash`` computes for one upload), counting every signal;
   (b) single-query ``POST /api/v1/match`` latency (one client, sequential) and the same
       single-query requests from ``--clients`` threads (requests/s);
   (c) ``POST /api/v1/match/image`` with a ~2 MP JPEG (registered and unregistered in turn):
       sequential latency, then images/s from ``--clients`` threads.
   The server workers' CPU time (from /proc) is recorded per phase, so the cost per hash on the
   server side is known apart from the client's (which shares the same cores).
4. **Breakdown** (``--breakdown``, on by default): one batch of the same queries run in this
   process through ``create_app(registry).test_client()`` under cProfile, with the time split
   into the index search (faiss), database work (SQLAlchemy), request/response schemas
   (marshmallow), JSON and the rest.

    .venv/bin/python bench/http_throughput.py             # 1M hashes; ~4 min set-up the 1st time
    .venv/bin/python bench/http_throughput.py --quick     # 20k hashes, short phases (smoke run)
    .venv/bin/python bench/http_throughput.py --hashes 1000000 --seconds 60 --clients 4

Results go to ``bench/results/http.json`` (``--out``); the table is printed. The benchmark client
runs on the same machine as the server, so it takes some of the same CPU.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import argparse  # noqa: E402
import contextlib  # noqa: E402
import cProfile  # noqa: E402
import hashlib  # noqa: E402
import http.client  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import pstats  # noqa: E402
import shlex  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
from PIL import Image, ImageFilter  # noqa: E402

from bench.common import free_port, machine_info, worker_pids  # noqa: E402

SETUP_VERSION = 2
PHASES = ("batch", "batch_random", "batch_full", "batch_full_random", "single",
          "single_concurrent", "image", "image_concurrent")
REGISTER_BATCH = 2000  # images per Registry.register_bank call (imports take up to 10,000)
NEAR_DUP_MAX_BITS = 16
HOST = "127.0.0.1"


# --- data -------------------------------------------------------------------------------------
def random_codes(rng: np.random.Generator, n: int, nbytes: int = 32,
                 ones: tuple[int, int] = (96, 160)) -> np.ndarray:
    """``n`` uniform codes of ``nbytes`` whose popcount lies in ``ones`` (default: PDQ, near
    128; a uniform code is outside 96..160 with probability ~6e-5, and the service refuses
    <= 32 or >= 224)."""
    out = np.empty((0, nbytes), dtype=np.uint8)
    while len(out) < n:
        codes = rng.integers(0, 256, size=(n - len(out) + 1024, nbytes), dtype=np.uint8)
        count = np.unpackbits(codes, axis=1).sum(axis=1)
        out = np.concatenate([out, codes[(count >= ones[0]) & (count <= ones[1])]])
    return out[:n]


def random_phashes(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` uniform 64-bit codes with popcount in 16..48 (never degenerate)."""
    return random_codes(rng, n, 8, (16, 48))


def digests(i: int) -> tuple[bytes, bytes]:
    """MD5 and SHA-256 standing in for registered image ``i``'s file digests."""
    data = f"bench-image-{i}".encode()
    return hashlib.md5(data, usedforsecurity=False).digest(), hashlib.sha256(data).digest()


def photo_jpeg(seed: int, size: tuple[int, int] = (1632, 1224), quality: int = 90) -> bytes:
    """A photo-like ~2 MP JPEG (smooth colour field with texture), the same for a seed."""
    rng = np.random.default_rng(seed)
    small = Image.fromarray((rng.random((18, 24, 3)) * 255).astype(np.uint8))
    img = small.resize(size, Image.Resampling.BICUBIC).filter(ImageFilter.GaussianBlur(3))
    noise = rng.normal(0, 6, (size[1], size[0], 3))
    arr = np.clip(np.asarray(img, dtype=np.float64) + noise, 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


DATABASE_URL = ""  # --database-url: PostgreSQL instead of SQLite in the data dir


def bench_settings(data_dir: Path, **overrides: Any) -> Any:
    from registry.config import Settings

    return Settings.from_env({}, data_dir=str(data_dir), database_url=DATABASE_URL or None,
                             **overrides)


def setup_data(data_dir: Path, n: int, seed: int) -> dict[str, Any]:
    """Register ``n`` PDQ codes through the service, two images, build and snapshot the index.
    Reused when ``setup.json`` in ``data_dir`` says the same (n, seed, version)."""
    from registry.bootstrap import build_registry
    from registry.domain import BankKind, Signal, SignalKind
    from registry.service import SubmittedImage

    marker = data_dir / "setup.json"
    wanted = {"hashes": n, "seed": seed, "version": SETUP_VERSION, "database": DATABASE_URL}
    if marker.exists():
        info: dict[str, Any] = json.loads(marker.read_text())
        if {k: info.get(k) for k in wanted} == wanted and (data_dir / "codes.npy").exists():
            if DATABASE_URL and change_head(data_dir) != info.get("change_head"):
                raise SystemExit(f"data: {DATABASE_URL} is not the database {data_dir} was set "
                                 "up in (its change log differs); name a fresh database")
            info["reused"] = True
            print(f"data: reusing {data_dir} ({n:,} hashes registered earlier)", flush=True)
            return info
    if data_dir.exists():
        shutil.rmtree(data_dir)
    data_dir.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    codes = random_codes(rng, n)
    phashes = random_phashes(rng, n)
    np.save(data_dir / "codes.npy", codes)
    np.save(data_dir / "phashes.npy", phashes)
    images = [photo_jpeg(seed + 1), photo_jpeg(seed + 2)]
    for i, data in enumerate(images):
        (data_dir / f"image-{i}.jpg").write_bytes(data)

    settings = bench_settings(data_dir)
    registry = build_registry(settings, migrate=True, load_index=False)
    t0 = time.perf_counter()
    registered = 0
    try:
        for start in range(0, n, REGISTER_BATCH):
            batch = []
            for i in range(start, min(n, start + REGISTER_BATCH)):
                md5, sha256 = digests(i)
                batch.append(SubmittedImage((
                    Signal(SignalKind.PDQ, bytes(codes[i])),
                    Signal(SignalKind.PHASH, bytes(phashes[i])),
                    Signal(SignalKind.MD5, md5), Signal(SignalKind.SHA256, sha256)), 100))
            registered += registry.register_bank("bench", BankKind.IMPORTED, batch)
            if (start // REGISTER_BATCH) % 50 == 49:
                rate = registered / (time.perf_counter() - t0)
                print(f"data: {registered:,} hashes registered ({rate:,.0f}/s)", flush=True)
        register_s = time.perf_counter() - t0
        image_signals = registry.register_bank(
            "bench-images", BankKind.IMPORTED,
            [SubmittedImage.from_image(registry.hash_image(images[0], registration=True))])
    finally:
        registry.close()
    t1 = time.perf_counter()
    registry = build_registry(settings)  # no snapshot yet: rebuilds the index from the database
    try:
        build_s = time.perf_counter() - t1
        t2 = time.perf_counter()
        snapshot = registry.save_snapshot()
        snapshot_s = time.perf_counter() - t2
        indexed = len(registry._keeper.indexes)
    finally:
        registry.close()
    info = {**wanted, "change_head": change_head(data_dir),
            "registered_through": "Registry.register_bank (service layer), "
                                  f"{REGISTER_BATCH} images per call, each with PDQ, pHash, "
                                  "MD5 and SHA-256",
            "register_s": round(register_s, 1), "registered": registered,
            "image_signals_registered": image_signals, "index_build_s": round(build_s, 1),
            "snapshot_s": round(snapshot_s, 2), "snapshot_bytes": Path(snapshot).stat().st_size,
            "indexed": indexed,
            "images": [{"file": f"image-{i}.jpg", "bytes": len(d), "size": [1632, 1224],
                        "registered": i == 0} for i, d in enumerate(images)]}
    marker.write_text(json.dumps(info, indent=1))
    info["reused"] = False
    print(f"data: {registered:,} hashes registered in {register_s:.0f} s "
          f"({registered / register_s:,.0f}/s); index built in {build_s:.1f} s, snapshot "
          f"{info['snapshot_bytes'] / 1e6:.1f} MB in {snapshot_s:.2f} s", flush=True)
    return info


def change_head(data_dir: Path) -> int:
    """The database's change-log head: a reused PostgreSQL set-up must still be the same one."""
    from registry.bootstrap import build_registry

    registry = build_registry(bench_settings(data_dir), load_index=False)
    try:
        with registry._store.transaction(write=False) as tx:
            return tx.changes.head()
    finally:
        registry.close()


def new_key(data_dir: Path) -> str:
    from registry.bootstrap import build_registry
    from registry.domain import Scope

    registry = build_registry(bench_settings(data_dir), load_index=False)
    try:
        _, key = registry.add_platform(f"bench-{uuid.uuid4().hex[:8]}", [Scope.MATCH])
    finally:
        registry.close()
    return key


def is_near(i: int, near_every: int) -> bool:
    return near_every > 0 and i % near_every == 0


def _flipped(code: np.ndarray, rng: np.random.Generator, lo: int, hi: int) -> np.ndarray:
    bits = np.unpackbits(code)
    bits[rng.choice(len(bits), int(rng.integers(lo, hi + 1)), replace=False)] ^= 1
    return np.packbits(bits)


def queries(codes: np.ndarray, rng: np.random.Generator, n: int, tag: str, near_every: int = 2,
            phashes: np.ndarray | None = None) -> list[dict[str, Any]]:
    """Query ``i`` is a stored code with 1..16 bits flipped (a strong match) when
    ``i % near_every == 0``, otherwise a uniform random code (``near_every=0``: all random).
    With ``phashes`` every query carries all four signals a platform computes for an upload,
    as a re-encoded copy would: PDQ as above, pHash (the stored one with 0..2 bits flipped, or
    random), and MD5/SHA-256 of other bytes (registered nowhere)."""
    out = []
    randoms = random_codes(rng, n)
    random_ph = random_phashes(rng, n) if phashes is not None else None
    for i in range(n):
        j = int(rng.integers(len(codes)))
        near = is_near(i, near_every)
        code = _flipped(codes[j].copy(), rng, 1, NEAR_DUP_MAX_BITS) if near else randoms[i]
        signals = {"pdq": bytes(code).hex()}
        if phashes is not None and random_ph is not None:
            ph = _flipped(phashes[j].copy(), rng, 0, 2) if near else random_ph[i]
            signals["phash"] = bytes(ph).hex()
            signals["md5"] = rng.bytes(16).hex()
            signals["sha256"] = rng.bytes(32).hex()
        out.append({"id": f"{tag}-{i}", "signals": signals})
    return out


# --- server -----------------------------------------------------------------------------------




def cpu_seconds(pids: list[int]) -> float:
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick  # utime + stime
    return total


def postgres_cpu_seconds() -> float | None:
    """CPU time of the PostgreSQL server behind ``--database-url`` so far: its postmaster's own
    and its reaped children's, plus its live backends' (from /proc, so only for a server on
    this machine; it counts every client's work on that server, not only this benchmark's)."""
    if not DATABASE_URL:
        return None
    import sqlalchemy

    engine = sqlalchemy.create_engine(DATABASE_URL, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.connect() as conn:
            backend = int(conn.execute(sqlalchemy.text("select pg_backend_pid()")).scalar_one())
        stat = Path(f"/proc/{backend}/stat").read_text().rsplit(")", 1)[1].split()
        postmaster = int(stat[1])
        fields = Path(f"/proc/{postmaster}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, sqlalchemy.exc.SQLAlchemyError):
        return None
    finally:
        engine.dispose()
    tick = os.sysconf("SC_CLK_TCK")
    own = sum(int(f) for f in fields[11:15]) / tick  # utime, stime, cutime, cstime
    return own + cpu_seconds(worker_pids(postmaster))


class Server:
    def __init__(self, data_dir: Path, workers: int, timeout_s: int) -> None:
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.log = data_dir / "gunicorn.log"
        self.cmd = [str(Path(sys.executable).parent / "gunicorn"), "registry.web.wsgi:create()",
                    "-w", str(workers), "--bind", f"{HOST}:{self.port}",
                    "--timeout", str(timeout_s), "--error-logfile", str(self.log)]
        self.env = {**os.environ, "TAKEDOWN_DATA_DIR": str(data_dir),
                    "TAKEDOWN_RATE_LIMIT": "1000000 per second"}
        self.env.pop("TAKEDOWN_DATABASE_URL", None)
        self.env.pop("TAKEDOWN_REDIS_URL", None)
        if DATABASE_URL:
            self.env["TAKEDOWN_DATABASE_URL"] = DATABASE_URL
        self.workers = workers
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 120.0) -> float:
        """Start gunicorn; return seconds until /readyz answers ready and every worker has
        finished loading (gunicorn's master listens at once; each worker builds its app, i.e.
        loads the index snapshot, before it accepts, and is idle once done)."""
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(self.cmd, cwd=ROOT, env=self.env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gunicorn exited with {self.proc.returncode}; see {self.log}")
            with contextlib.suppress(OSError, ValueError):
                status, body, _ = request(self.url, "GET", "/readyz", timeout=30)
                if status == 200 and json.loads(body).get("ready") and self._idle(deadline):
                    return time.perf_counter() - t0
            time.sleep(0.1)
        raise RuntimeError(f"gunicorn not ready within {timeout:.0f} s; see {self.log}")

    def _idle(self, deadline: float) -> bool:
        """Every worker forked and none used CPU over the last 0.5 s."""
        quiet, last = 0, None
        while time.monotonic() < deadline:
            pids = self.worker_pids()
            now = [cpu_seconds([pid]) for pid in pids]
            if len(pids) >= self.workers and last is not None and now == last:
                quiet += 1
                if quiet >= 2:
                    return True
            else:
                quiet = 0
            last = now
            time.sleep(0.25)
        return False

    def worker_pids(self) -> list[int]:
        return worker_pids(self.proc.pid) if self.proc else []

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


# --- client -----------------------------------------------------------------------------------
def request(base: str, method: str, path: str, body: bytes | None = None,
            headers: dict[str, str] | None = None, timeout: float = 300.0
            ) -> tuple[int, bytes, float]:
    """One request on a fresh connection (gunicorn's sync workers close after each answer);
    returns (status, body, seconds)."""
    host, port = base.removeprefix("http://").split(":")
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        data = response.read()
        return response.status, data, time.perf_counter() - t0
    finally:
        conn.close()


def multipart(field: str, filename: str, data: bytes, content_type: str) -> tuple[bytes, str]:
    boundary = "bench" + uuid.uuid4().hex
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; "
            f"filename=\"{filename}\"\r\nContent-Type: {content_type}\r\n\r\n").encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    return head + data + tail, f"multipart/form-data; boundary={boundary}"


Check = Callable[[int, bytes], dict[str, Any]]


def run_load(server: Server, bodies: list[tuple[str, bytes, dict[str, str]]], check: Check,
             clients: int, seconds: float, max_requests: int) -> dict[str, Any]:
    """``clients`` threads send the bodies round-robin until ``seconds`` pass or
    ``max_requests`` are sent; every answer is checked. Returns counts, latencies, rates."""
    lock = threading.Lock()
    counter = iter(range(max_requests))
    latencies: list[float] = []
    outcomes: list[dict[str, Any]] = []
    errors: list[str] = []
    deadline = time.monotonic() + seconds

    def client() -> None:
        while time.monotonic() < deadline:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            path, body, headers = bodies[i % len(bodies)]
            try:
                status, data, dt = request(server.url, "POST", path, body, headers)
                outcome = check(status, data)
            except Exception as e:  # a failed request is counted and reported, not fatal
                with lock:
                    errors.append(f"{type(e).__name__}: {e}"[:200])
                continue
            with lock:
                latencies.append(dt)
                outcomes.append(outcome)
                if not outcome.get("ok"):
                    errors.append(outcome.get("error", f"status {status}"))

    cpu0 = cpu_seconds(server.worker_pids())
    pg0 = postgres_cpu_seconds()
    own0 = time.process_time()
    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 600)
    elapsed = time.perf_counter() - t0
    server_cpu = cpu_seconds(server.worker_pids()) - cpu0
    pg1 = postgres_cpu_seconds()
    postgres_cpu = round(pg1 - pg0, 2) if pg0 is not None and pg1 is not None else None
    ok = [o for o in outcomes if o.get("ok")]
    return {"clients": clients, "requests": len(outcomes), "ok": len(ok), "errors": len(errors),
            "error_samples": errors[:5], "elapsed_s": round(elapsed, 3),
            "requests_per_s": round(len(ok) / elapsed, 2),
            "latency_ms": summary(latencies), "server_cpu_s": round(server_cpu, 2),
            "postgres_cpu_s": postgres_cpu,
            "client_cpu_s": round(time.process_time() - own0, 2),
            "outcomes": ok}


def summary(seconds: list[float]) -> dict[str, float | None]:
    if not seconds:
        return {"p50": None, "p90": None, "p99": None, "mean": None, "max": None, "n": 0}
    ms = np.array(seconds) * 1000
    return {"p50": round(float(np.percentile(ms, 50)), 2),
            "p90": round(float(np.percentile(ms, 90)), 2),
            "p99": round(float(np.percentile(ms, 99)), 2),
            "mean": round(float(ms.mean()), 2), "max": round(float(ms.max()), 2),
            "n": len(seconds)}


def check_match(expect: list[bool]) -> Check:
    """A 200 with one result per query in order; near-duplicates matched, and how many of the
    random queries matched (expected: none)."""

    def check(status: int, data: bytes) -> dict[str, Any]:
        if status != 200:
            return {"ok": False, "error": f"status {status}: {data[:200]!r}"}
        results = json.loads(data)["results"]
        if len(results) != len(expect):
            return {"ok": False, "error": f"{len(results)} results for {len(expect)} queries"}
        near_hit = sum(1 for r, e in zip(results, expect, strict=True) if e and r["matched"])
        random_hit = sum(1 for r, e in zip(results, expect, strict=True)
                         if not e and r["matched"])
        return {"ok": True, "queries": len(results), "near_dups": sum(expect),
                "near_dups_matched": near_hit, "randoms_matched": random_hit}

    return check


def check_image(status: int, data: bytes) -> dict[str, Any]:
    if status != 200:
        return {"ok": False, "error": f"status {status}: {data[:200]!r}"}
    answer = json.loads(data)
    return {"ok": True, "matched": answer["matched"], "id": answer["id"]}


# --- breakdown --------------------------------------------------------------------------------
CATEGORIES: list[tuple[str, Callable[[str, str], bool]]] = [  # the first that holds wins
    ("index search (MultiIndex and its C kernel, faiss for the delta, numpy)",
     lambda f, n: "/faiss/" in f or "faiss" in n or "registry/index/" in f or "_mih" in n
     or "numpy" in f or "numpy" in n),
    ("database (SQLAlchemy + sqlite3: platform lookup, audit, match records, re-reads)",
     lambda f, n: "/sqlalchemy/" in f or "sqlite3" in n or "registry/store/" in f),
    ("request/response schemas (marshmallow, webargs, apiflask)",
     lambda f, n: "/marshmallow/" in f or "/webargs/" in f or "/apiflask/" in f),
    ("JSON encode/decode", lambda f, n: "/json/" in f or "_json" in n),
    ("rate limiter (Flask-Limiter, limits)",
     lambda f, n: "/flask_limiter/" in f or "/limits/" in f),
    ("signals and results in Python (registry.domain, service.matching, web.api)",
     lambda f, n: "registry/domain" in f or "registry/service/" in f or "registry/web/" in f),
]
OTHER = "everything else (Flask/Werkzeug, limiter, metrics, test client)"


def breakdown(data_dir: Path, cases: dict[str, tuple[bytes, int]]) -> dict[str, Any]:
    """Run each case's body ``repeats`` times through the app in this process (Flask test
    client) under cProfile and sum every function's exclusive time by the module it is in."""
    from registry.bootstrap import build_registry
    from registry.domain import Scope
    from registry.web import create_app

    settings = bench_settings(data_dir, rate_limit="1000000 per second")
    registry = build_registry(settings)
    out: dict[str, Any] = {}
    try:
        _, key = registry.add_platform(f"bench-{uuid.uuid4().hex[:8]}", [Scope.MATCH])
        client = create_app(registry).test_client()
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        for case, (body, repeats) in cases.items():
            status = client.post("/api/v1/match", data=body, headers=headers).status_code
            if status != 200:
                raise RuntimeError(f"breakdown warm-up answered {status}")
            t0 = time.perf_counter()
            for _ in range(repeats):
                client.post("/api/v1/match", data=body, headers=headers)
            unprofiled = (time.perf_counter() - t0) / repeats
            profile = cProfile.Profile()
            profile.enable()
            for _ in range(repeats):
                client.post("/api/v1/match", data=body, headers=headers)
            profile.disable()
            out[case] = _attribute(pstats.Stats(profile), repeats)
            out[case]["queries_per_request"] = len(json.loads(body)["queries"])
            out[case]["unprofiled_ms_per_request"] = round(unprofiled * 1000, 2)
    finally:
        registry.close()
    return out


def _attribute(stats: pstats.Stats, repeats: int) -> dict[str, Any]:
    buckets: dict[str, float] = {label: 0.0 for label, _ in CATEGORIES} | {OTHER: 0.0}
    top: list[tuple[float, str]] = []
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    for (filename, _line, name), (_cc, _nc, exclusive, _inclusive, _callers) in raw.items():
        top.append((exclusive, f"{_short(filename)}:{name}"))
        label = next((lab for lab, pred in CATEGORIES if pred(filename, name)), OTHER)
        buckets[label] += exclusive
    total = sum(buckets.values())
    top.sort(reverse=True)
    return {"repeats": repeats,
            "profiled_ms_per_request": round(total / repeats * 1000, 2),
            "ms_per_request": {k: round(v / repeats * 1000, 2) for k, v in buckets.items()},
            "share": {k: round(v / total, 4) for k, v in buckets.items()},
            "top_exclusive_ms": [[n, round(t / repeats * 1000, 2)] for t, n in top[:15]]}


def _short(filename: str) -> str:
    for marker in ("site-packages/", str(ROOT) + "/"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return filename


# --- main -------------------------------------------------------------------------------------
def phase_batch(server: Server, key: str, codes: np.ndarray, rng: np.random.Generator,
                args: argparse.Namespace, near_every: int, seconds: float,
                phashes: np.ndarray | None = None) -> dict[str, Any]:
    bodies = []
    expect = [is_near(i, near_every) for i in range(args.batch)]
    per_query = 1 if phashes is None else 4
    for b in range(args.bodies):
        qs = queries(codes, rng, args.batch, f"b{b}", near_every, phashes)
        body = json.dumps({"queries": qs}).encode()
        bodies.append(("/api/v1/match", body, _json_headers(key)))
    check = check_match(expect)
    for path, body, headers in bodies[: args.workers]:  # warm every worker once
        request(server.url, "POST", path, body, headers)
    out = run_load(server, bodies, check, args.clients, seconds, args.max_requests)
    oks = out.pop("outcomes")
    hashes = sum(o["queries"] for o in oks) * per_query
    out.update({
        "batch": args.batch, "near_duplicate_share": round(sum(expect) / len(expect), 3),
        "signals_per_query": per_query, "hashes": hashes,
        "hashes_per_s": round(hashes / out["elapsed_s"], 1),
        "server_cpu_ms_per_hash": round(out["server_cpu_s"] * 1000 / hashes, 3) if hashes else None,
        "postgres_cpu_ms_per_hash": (round(out["postgres_cpu_s"] * 1000 / hashes, 3)
                                     if hashes and out["postgres_cpu_s"] is not None else None),
        "near_dups_matched": f"{sum(o['near_dups_matched'] for o in oks)}/"
                             f"{sum(o['near_dups'] for o in oks)}",
        "randoms_matched": f"{sum(o['randoms_matched'] for o in oks)}/"
                           f"{sum(o['queries'] - o['near_dups'] for o in oks)}",
        "body_bytes": len(bodies[0][1]),
    })
    return out


def phase_single(server: Server, key: str, codes: np.ndarray, rng: np.random.Generator,
                 args: argparse.Namespace, clients: int) -> dict[str, Any]:
    n = args.single
    bodies = []
    for i in range(n):
        q = queries(codes, rng, 2, f"s{i}")[i % 2]
        bodies.append(("/api/v1/match", json.dumps({"queries": [q]}).encode(),
                       _json_headers(key)))
    expect_near = [i % 2 == 0 for i in range(n)]

    def check(status: int, data: bytes) -> dict[str, Any]:
        if status != 200:
            return {"ok": False, "error": f"status {status}: {data[:200]!r}"}
        (result,) = json.loads(data)["results"]
        near = expect_near[int(result["id"].split("-")[0][1:])]
        return {"ok": True, "matched": result["matched"], "near": near}

    for path, body, headers in bodies[: args.workers]:
        request(server.url, "POST", path, body, headers)
    seconds = args.seconds if clients > 1 else args.single_seconds
    out = run_load(server, bodies, check, clients, seconds, n)
    oks = out.pop("outcomes")
    out["hashes_per_s"] = out["requests_per_s"]
    out["near_dups_matched"] = (f"{sum(1 for o in oks if o['near'] and o['matched'])}/"
                                f"{sum(1 for o in oks if o['near'])}")
    out["randoms_matched"] = (f"{sum(1 for o in oks if not o['near'] and o['matched'])}/"
                              f"{sum(1 for o in oks if not o['near'])}")
    return out


def phase_image(server: Server, key: str, data_dir: Path, info: dict[str, Any],
                args: argparse.Namespace, clients: int) -> dict[str, Any]:
    bodies = []
    for spec in info["images"]:
        data = (data_dir / spec["file"]).read_bytes()
        body, ctype = multipart("file", spec["file"], data, "image/jpeg")
        bodies.append(("/api/v1/match/image", body,
                       {"Authorization": f"Bearer {key}", "Content-Type": ctype}))
    request(server.url, "POST", bodies[0][0], bodies[0][1], bodies[0][2])  # warm-up
    seconds = args.image_seconds
    count = args.images if clients == 1 else args.max_requests
    out = run_load(server, bodies, check_image, clients, seconds, count)
    oks = out.pop("outcomes")
    out["images_per_s"] = out["requests_per_s"]
    for label, name in (("registered_image_matched", "image-0.jpg"),
                        ("unregistered_image_matched", "image-1.jpg")):
        mine = [o for o in oks if o["id"] == name]
        out[label] = f"{sum(1 for o in mine if o['matched'])}/{len(mine)}"
    out["server_cpu_ms_per_image"] = (round(out["server_cpu_s"] * 1000 / out["ok"], 1)
                                      if out["ok"] else None)
    out["jpeg_bytes"] = [s["bytes"] for s in info["images"]]
    return out


def _json_headers(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}


LABELS = {
    "batch": "batched /match ({batch} queries, {clients} clients)",
    "batch_random": "  same, random codes only (no matches)",
    "batch_full": "batched, 4 signals per query (PDQ, pHash, MD5, SHA-256)",
    "batch_full_random": "  same, random codes only (no matches)",
    "single": "single-query /match (1 client)",
    "single_concurrent": "single-query /match ({clients} clients)",
    "image": "/match/image 2 MP JPEG (1 client)",
    "image_concurrent": "/match/image 2 MP JPEG ({clients} clients)",
}


def print_table(report: dict[str, Any]) -> None:
    r = report["results"]
    print()
    print(f"{'phase':<46}{'throughput':>20}  {'latency p50 / p99 ms':>22}{'errors':>8}")
    for name in PHASES:
        if name not in r:
            continue
        d = r[name]
        if "images_per_s" in d:
            rate = f"{d['images_per_s']:,.1f} images/s"
        elif name.startswith("single"):
            rate = f"{d['requests_per_s']:,.1f} req/s"
        else:
            rate = f"{d['hashes_per_s']:,.0f} hashes/s"
        label = LABELS[name].format(batch=d.get("batch"), clients=d.get("clients"))
        print(f"{label:<46}{rate:>20}  {_lat(d['latency_ms']):>22}{d['errors']:>8}")
    print()
    for name in ("batch", "batch_random", "batch_full", "batch_full_random"):
        if name not in r:
            continue
        b = r[name]
        print(f"{name}: {b['hashes']:,} hashes ({b['signals_per_query']} per query, "
              f"{b['near_duplicate_share']:.0%} near copies) in {b['elapsed_s']:.1f} s; near "
              f"copies matched {b['near_dups_matched']}, random codes matched "
              f"{b['randoms_matched']}; server CPU {b['server_cpu_ms_per_hash']} ms per hash; "
              f"50,000 hashes/s: {'met' if b['hashes_per_s'] >= 50_000 else 'NOT met'}")
    for case, d in report.get("breakdown", {}).items():
        print(f"\nwhere a {d['queries_per_request']}-query request ({case}) spends its time "
              f"(in-process, cProfile; {d['unprofiled_ms_per_request']} ms per request "
              "unprofiled):")
        for k, v in d["ms_per_request"].items():
            print(f"  {v:>9.2f} ms  {100 * d['share'][k]:5.1f}%  {k}")


def _headline(phase: dict[str, Any]) -> str:
    if "hashes_per_s" in phase and "server_cpu_ms_per_hash" in phase:
        return (f"{phase['hashes_per_s']:,.0f} hashes/s, server CPU "
                f"{phase['server_cpu_ms_per_hash']} ms per hash (PostgreSQL "
                f"{phase.get('postgres_cpu_ms_per_hash')}, client {phase['client_cpu_s']} s)")
    if "images_per_s" in phase:
        return f"{phase['images_per_s']:,.1f} images/s, p50 {phase['latency_ms']['p50']} ms"
    return f"{phase['requests_per_s']:,.1f} requests/s, p50 {phase['latency_ms']['p50']} ms"


def _lat(lat: dict[str, Any]) -> str:
    if not lat.get("n"):
        return "-"
    return f"{lat['p50']:.1f} / {lat['p99']:.1f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hashes", type=int, default=1_000_000)
    p.add_argument("--data-dir", default=None,
                   help="where the benchmark registry lives, reused when it holds the same "
                        "set-up (default: TMPDIR/takedown-bench-http-N)")
    p.add_argument("--database-url", default="",
                   help="PostgreSQL URL (a fresh database) instead of SQLite in the data dir")
    p.add_argument("--workers", type=int, default=2, help="gunicorn worker processes")
    p.add_argument("--clients", type=int, default=4, help="concurrent client threads")
    p.add_argument("--batch", type=int, default=1000, help="queries per batched request")
    p.add_argument("--bodies", type=int, default=4, help="distinct batch bodies to cycle")
    p.add_argument("--seconds", type=float, default=45.0, help="length of each load phase")
    p.add_argument("--max-requests", type=int, default=2000, help="cap per load phase")
    p.add_argument("--single", type=int, default=300, help="single-query requests")
    p.add_argument("--single-seconds", type=float, default=60.0)
    p.add_argument("--images", type=int, default=40, help="sequential image requests")
    p.add_argument("--image-seconds", type=float, default=30.0)
    p.add_argument("--phases", type=lambda v: v.split(","), default=list(PHASES),
                   help=f"comma-separated phases to run, in order (default: {','.join(PHASES)})")
    p.add_argument("--no-breakdown", dest="breakdown", action="store_false")
    p.add_argument("--breakdown-repeats", type=int, default=2,
                   help="profiled batch requests (single-query requests: 50 times as many)")
    p.add_argument("--seed", type=int, default=20240611)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "http.json"))
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 20k hashes, 5 s phases, 50 single queries, 6 images")
    args = p.parse_args(argv)
    if unknown := set(args.phases) - set(PHASES):
        p.error(f"unknown phases: {', '.join(sorted(unknown))}")
    if args.quick:
        args.hashes, args.seconds, args.single, args.single_seconds = 20_000, 5.0, 50, 10.0
        args.images, args.image_seconds, args.breakdown_repeats = 6, 10.0, 1
    global DATABASE_URL
    DATABASE_URL = args.database_url
    if args.data_dir is None:
        suffix = "-pg" if DATABASE_URL else ""
        args.data_dir = str(Path(tempfile.gettempdir())
                            / f"takedown-bench-http-{args.hashes}{suffix}")
    data_dir = Path(args.data_dir).resolve()

    started = time.time()
    report: dict[str, Any] = {
        "command": shlex.join([os.path.relpath(sys.executable, ROOT)
                               if sys.executable.startswith(str(ROOT)) else sys.executable,
                               *sys.argv]),
        "argv": sys.argv,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "machine": machine_info("gunicorn"),
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "notes": [
            "Client and server share the machine: the benchmark's client threads use some of "
            "the same CPU (client_cpu_s per phase).",
            "Batched queries: even = stored code with 1..16 bits flipped (strong tier); odd = "
            "uniform random code (popcount 96..160). Every query is searched to the weak "
            "threshold (PDQ 52) as the service does.",
            "gunicorn sync workers; one fresh TCP connection per request (sync workers do not "
            "keep connections alive).",
        ],
    }
    m = report["machine"]
    print(f"machine: {m['cpu_model']}, nproc {m['nproc']}, python {m['python']}, faiss "
          f"{m['faiss']}, gunicorn {m['gunicorn']}", flush=True)
    info = setup_data(data_dir, args.hashes, args.seed)
    report["data"] = info
    codes = np.load(data_dir / "codes.npy")
    phashes = np.load(data_dir / "phashes.npy")
    rng = np.random.default_rng(args.seed + 7)
    key = new_key(data_dir)
    server = Server(data_dir, args.workers, timeout_s=300)
    results: dict[str, Any] = {}
    try:
        report["server"] = {"command": shlex.join(server.cmd), "env": {
            "TAKEDOWN_DATA_DIR": str(data_dir),
            "TAKEDOWN_RATE_LIMIT": server.env["TAKEDOWN_RATE_LIMIT"]}}
        ready_s = server.start()
        report["server"]["ready_s"] = round(ready_s, 2)
        report["server"]["workers"] = server.worker_pids()
        print(f"server: gunicorn with {args.workers} workers ready in {ready_s:.1f} s "
              f"({server.url})", flush=True)
        phases: dict[str, Callable[[], dict[str, Any]]] = {
            "batch": lambda: phase_batch(server, key, codes, rng, args, 2, args.seconds),
            "batch_random": lambda: phase_batch(server, key, codes, rng, args, 0,
                                                args.seconds / 2),
            "batch_full": lambda: phase_batch(server, key, codes, rng, args, 2, args.seconds,
                                              phashes),
            "batch_full_random": lambda: phase_batch(server, key, codes, rng, args, 0,
                                                     args.seconds / 2, phashes),
            "single": lambda: phase_single(server, key, codes, rng, args, 1),
            "single_concurrent": lambda: phase_single(server, key, codes, rng, args,
                                                      args.clients),
            "image": lambda: phase_image(server, key, data_dir, info, args, 1),
            "image_concurrent": lambda: phase_image(server, key, data_dir, info, args,
                                                    args.clients),
        }
        for name in args.phases:
            results[name] = phases[name]()
            print(f"{name}: {_headline(results[name])}", flush=True)
    finally:
        server.stop()
    report["results"] = results
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")  # kept if the rest fails
    if args.breakdown:
        batch = json.dumps({"queries": queries(codes, rng, args.batch, "p")}).encode()
        single = json.dumps({"queries": queries(codes, rng, 1, "p")}).encode()
        report["breakdown"] = breakdown(data_dir, {
            "batch": (batch, args.breakdown_repeats),
            "single": (single, 50 * args.breakdown_repeats)})
    report["loadavg_at_end"] = list(os.getloadavg())
    report["elapsed_s"] = round(time.time() - started, 1)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print_table(report)
    print(f"\nwrote {args.out}")
    errors = sum(r["errors"] for r in results.values())
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Sustained load and faults under load (issue 12, items 3 and 4): gunicorn on PostgreSQL with
Redis, driven by locust, every acknowledged write checked in the database afterwards.

Services. The benchmark starts its **own** PostgreSQL cluster (``initdb`` + ``pg_ctl`` in a
temporary folder, run as the ``postgres`` user when this runs as root) and its **own**
``redis-server``, each on a free port, and stops and deletes them at the end. The machine's
shared PostgreSQL and Redis are never touched: other work on the machine keeps its services
while this one restarts and stops its own. The registry gets a fresh database in that cluster.

Phases:

1. **setup**: ``--hashes`` images registered through the service (``Registry.register_bank``,
   2,000 images per call, as ``bench/http_throughput.py`` does), each with PDQ, pHash, MD5 and
   SHA-256 (seeded random codes), plus one ~2 MP photo (generated in memory) with every view and
   local signal a registration computes; the index is built and a snapshot written; a platform key.
   Then ``gunicorn 'registry.web.wsgi:create()' -w WORKERS`` with ``TAKEDOWN_DATABASE_URL``,
   ``TAKEDOWN_REDIS_URL``, a shared ``TAKEDOWN_SECRET_KEY`` and **generous rate limits**
   (``TAKEDOWN_RATE_LIMIT``, ``TAKEDOWN_SUBMIT_LIMIT`` and ``TAKEDOWN_CASE_LIMIT`` all
   "1000000 per minute": every request comes from 127.0.0.1, so the per-address page limits of
   production, 20 submissions and 60 case checks an hour, would refuse the load generator).
2. **probe** (capacity): closed-loop locust users (no wait) sending the mix below, 1, 2, 3, 4,
   6, 8, ... users for ``--probe-step-s`` each, until the throughput of answered requests stops
   rising (two steps in a row below 1.05x the best): the best step is the capacity.
3. **soak**: the same mix at ``--load-share`` (80%) of that capacity, for ``--duration``
   seconds: users at a constant throughput each (locust ``constant_throughput``). Recorded:
   every request (start, latency, status, error kind, failed checks); the RSS of every gunicorn
   worker every ``--rss-every`` seconds, with a least-squares slope over the second half
   (MB/min); throughput and p50/p99 per request type over time. At the end every acknowledged
   submission and withdrawal in the load generator's own log is looked up with SQL.
4. **faults** (``--faults``): a second gunicorn on the same database whose snapshot folder is a
   small tmpfs (as root; read-only by chmod otherwise, and "full" then skipped), writing a
   snapshot every ``--fault-snapshot-every`` changes. For each fault, load at the same rate
   starts, then the fault, then the time until every worker is ready and caught up:
   (a) ``kill -9`` of one worker, (b) PostgreSQL stopped for ``--pg-down-s`` and started again,
   (c) Redis stopped for ``--redis-down-s`` and started again, (d) the snapshot folder
   read-only, then full, (e) ``LOCK TABLE change_log`` held for 5 s in another session.
   Per fault: requests, statuses seen, 500s, answers missing, /readyz answers during it,
   acknowledged writes checked and missing, time to recover.

The mix (``--weights``): batched ``POST /api/v1/match`` (``--batch`` queries of four signals,
one in ten a stored code with 1..16 bits flipped, plus one query for a case acknowledged earlier
in the run, which must match, and one for a withdrawn case, which must not); ``POST
/api/v1/match/image`` (a registered photo, a re-encoded smaller copy of it, an unregistered
photo: JPEG bytes made in memory); ``POST /submit/signals`` (JSON signals as the submit page's
script sends them, 1-2 images of 4 signals and 21 views each, orientation views consistent
with the image's hash, CSRF token and cookie from ``GET /submit``); ``POST /case`` (status,
with the PIN) and ``POST /case/withdraw`` (``confirm=yes``), each with a case number and PIN
this run's submissions got back.

    .venv/bin/python bench/soak.py                                  # 1M hashes, 10 min soak
    .venv/bin/python bench/soak.py --faults                         # ... then the faults
    .venv/bin/python bench/soak.py --hashes 100000 --duration 60 --faults \\
        --out bench/results/soak-short.json                        # a short run

Results: ``--out`` (``bench/results/soak.json``), plots beside it (``soak.png``, and
``soak-faults.png`` with ``--faults``). The load generator (one locust process) shares the
machine's cores with the server; its CPU time is recorded.
"""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
ROOT = _HERE.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Standard library only at module level: the load-generator child (``--child``) must let gevent
# patch the standard library before anything opens sockets (ssl, http.client come later).
import argparse  # noqa: E402
import contextlib  # noqa: E402
import functools  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import re  # noqa: E402
import shlex  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
import zlib  # noqa: E402
from collections import Counter  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from typing import Any  # noqa: E402

HOST = "127.0.0.1"
GENEROUS = "1000000 per minute"  # rate limits of the bench: far above what it can send
SECRET = "soak-bench-secret-" + "s" * 24
MB = 1024 * 1024
DEFAULT_WEIGHTS = {"match_batch": 12, "match_image": 4, "submit": 2, "case_status": 1,
                   "withdraw": 1}
from bench.common import free_port, worker_pids  # noqa: E402  (standard library only)

FAULTS = ("kill_worker", "restart_postgres", "redis_outage", "snapshot_readonly",
          "snapshot_full", "db_lock")


@functools.cache
def bench_http() -> Any:
    """bench/http_throughput.py (its data helpers: random codes, digests, JPEGs, queries)."""
    from bench import http_throughput

    return http_throughput






def is_root() -> bool:
    return os.geteuid() == 0


class Unsupported(RuntimeError):
    """This machine cannot do it (a tool is missing, or it needs root): skip, with this reason."""


# --- services: a private PostgreSQL cluster and a private Redis -----------------------------
def _pg_bindir() -> Path:
    for name in ("pg_ctl", "initdb"):
        found = shutil.which(name)
        if found:
            return Path(found).resolve().parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    if versions:
        return versions[-1].parent
    raise Unsupported("PostgreSQL server binaries (initdb, pg_ctl) are not installed")


class Postgres:
    """A throwaway cluster: ``init``, ``start``, ``stop``, ``close`` (stops it, deletes it). Its
    folder is a fresh one in the system's temporary folder (run as root, the ``postgres`` user
    must reach it: pytest's and mkdtemp's folders are private to root)."""

    def __init__(self) -> None:
        self.bindir = _pg_bindir()
        self.as_user: list[str] = []
        if is_root():
            if not shutil.which("runuser"):
                raise Unsupported("runuser is missing (initdb refuses to run as root)")
            try:
                import pwd

                pwd.getpwnam("postgres")
            except KeyError:
                raise Unsupported("no 'postgres' user to run a private cluster as") from None
            self.as_user = ["runuser", "-u", "postgres", "--"]
        self.base = Path(tempfile.mkdtemp(prefix="takedown-soak-pg-"))
        self.data = self.base / "data"
        self.log = self.base / "postgres.log"
        self.port = free_port()

    @property
    def admin_url(self) -> str:
        return f"postgresql+psycopg://postgres@{HOST}:{self.port}/postgres"

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://postgres@{HOST}:{self.port}/{database}"

    def _run(self, *args: str, timeout: float = 120) -> None:
        done = subprocess.run([*self.as_user, *args], capture_output=True, text=True,
                              timeout=timeout, check=False)
        if done.returncode:
            raise RuntimeError(f"{' '.join(args[:2])} failed: {done.stderr or done.stdout}")

    def init(self) -> None:
        if self.as_user:
            shutil.chown(self.base, "postgres")
        self._run(str(self.bindir / "initdb"), "-D", str(self.data), "-A", "trust",
                  "-U", "postgres", "-E", "UTF8", "--no-sync")
        self.start()

    def start(self) -> None:
        options = (f"-p {self.port} -k {self.base} -c listen_addresses={HOST} "
                   "-c max_connections=300 -c shared_buffers=256MB")
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.log),
                  "-o", options, "-w", "-t", "120", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w",
                  "-t", "120", "stop")

    def running(self) -> bool:
        done = subprocess.run([*self.as_user, str(self.bindir / "pg_ctl"), "-D",
                               str(self.data), "status"], capture_output=True, check=False)
        return done.returncode == 0

    def ensure_running(self) -> None:
        if not self.running():
            self.start()

    def create_database(self) -> str:
        import psycopg

        name = f"takedown_soak_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(conninfo(self.admin_url), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            if self.running():
                self.stop("immediate")
        shutil.rmtree(self.base, ignore_errors=True)


def conninfo(sqlalchemy_url: str) -> str:
    return sqlalchemy_url.replace("postgresql+psycopg://", "postgresql://", 1)


class Redis:
    """A private ``redis-server`` (no persistence) that can be stopped and started again."""

    def __init__(self, base: Path) -> None:
        exe = shutil.which("redis-server")
        if not exe:
            raise Unsupported("redis-server is not installed")
        self.exe = exe
        self.base = base
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def start(self, timeout: float = 30) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        with open(self.base / "redis.log", "ab") as log:
            self.proc = subprocess.Popen(
                [self.exe, "--port", str(self.port), "--bind", HOST, "--save", "",
                 "--appendonly", "no", "--dir", str(self.base)],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while not self.ping():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start; see {self.base / 'redis.log'}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None and self.ping()

    def ensure_running(self) -> None:
        if not self.running():
            self.stop()
            self.start()

    def client(self) -> Any:
        import redis

        return redis.Redis(host=HOST, port=self.port, socket_connect_timeout=1,
                           socket_timeout=2)

    def ping(self) -> bool:
        try:
            with self.client() as r:
                return bool(r.ping())
        except Exception:
            return False

    def keys(self) -> int:
        try:
            with self.client() as r:
                return int(r.dbsize())
        except Exception:
            return -1

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)


class SnapshotDir:
    """The snapshot folder of the fault server. As root a tmpfs of ``size`` bytes, made
    read-only (remount ro) or full (remount with its size cut to what it holds); otherwise a
    plain folder made read-only by permissions, and no "full"."""

    def __init__(self, path: Path, size: int) -> None:
        self.path = path
        self.size = max(size, 1 * MB)
        self.mounted = False

    def mount(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        if is_root() and shutil.which("mount"):
            self._mount("-t", "tmpfs", "-o", f"size={self.size},mode=0755", "takedown-soak",
                        str(self.path))
            self.mounted = True

    def _mount(self, *args: str, retry_busy_s: float = 15.0) -> None:
        deadline = time.monotonic() + retry_busy_s
        while True:  # a remount read-only waits while a worker has a file open for writing
            done = subprocess.run(["mount", *args], capture_output=True, text=True, check=False)
            if done.returncode == 0:
                return
            if "busy" not in done.stderr.lower() or time.monotonic() > deadline:
                raise RuntimeError(f"mount {' '.join(args)}: {done.stderr.strip()}")
            time.sleep(0.05)

    def readonly(self) -> str:
        if self.mounted:
            self._mount("-o", "remount,ro", str(self.path))
            return "tmpfs remounted read-only"
        for p in [self.path, *self.path.iterdir()]:
            p.chmod(0o555 if p.is_dir() else 0o444)
        return "folder and files chmod a-w (no root: permissions, not a read-only mount)"

    def writable(self) -> None:
        if self.mounted:
            self._mount("-o", "remount,rw", str(self.path))
        else:
            for p in [self.path, *self.path.iterdir()]:
                p.chmod(0o755 if p.is_dir() else 0o644)

    def full(self) -> str:
        if not self.mounted:
            raise Unsupported("a full snapshot folder needs root (a size-limited tmpfs)")
        used = self.used()
        self._mount("-o", f"remount,size={max(used, 4096)}", str(self.path))
        filler = self.path / ".filler"
        with contextlib.suppress(OSError), open(filler, "wb") as f:  # whatever page is left
            while True:
                f.write(b"\0" * 4096)
                f.flush()
        return f"tmpfs cut to the {used:,} bytes it held, the rest filled"

    def unfull(self) -> None:
        (self.path / ".filler").unlink(missing_ok=True)
        self._mount("-o", f"remount,size={self.size}", str(self.path))

    def used(self) -> int:
        st = os.statvfs(self.path)
        return (st.f_blocks - st.f_bfree) * st.f_frsize

    def snapshot_mtime(self) -> float:
        try:
            return (self.path / "snapshot.tridx").stat().st_mtime
        except OSError:
            return 0.0

    def close(self) -> None:
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.path)], capture_output=True, check=False)
            self.mounted = False
        else:
            with contextlib.suppress(OSError):
                self.writable()


# --- the registry: data, server ---------------------------------------------------------------
def setup_registry(url: str, data_dir: Path, n: int, seed: int, image_size: tuple[int, int],
                   pin_kdf_n: int, batch: int = 2000) -> dict[str, Any]:
    """Migrate the fresh database, register ``n`` images of four signals (as
    bench/http_throughput.py's setup_data, but nothing but the codes is written to disk: no
    image), one photo with its registered views, build the index and write its snapshot; a
    platform key."""
    import numpy as np

    from registry.bootstrap import build_registry, upgrade_database
    from registry.config import Settings
    from registry.domain import BankKind, Scope, Signal, SignalKind
    from registry.service import SubmittedImage

    bh = bench_http()
    shutil.rmtree(data_dir, ignore_errors=True)
    (data_dir / "load").mkdir(parents=True)
    settings = Settings.from_env({}, database_url=url, data_dir=str(data_dir),
                                 pin_kdf_n=pin_kdf_n)
    upgrade_database(settings)
    rng = np.random.default_rng(seed)
    codes, phashes = bh.random_codes(rng, n), bh.random_phashes(rng, n)
    np.save(data_dir / "load" / "codes.npy", codes)
    np.save(data_dir / "load" / "phashes.npy", phashes)
    registry = build_registry(settings, load_index=False)
    t0 = time.perf_counter()
    registered = 0
    try:
        for start in range(0, n, batch):
            images = []
            for i in range(start, min(n, start + batch)):
                md5, sha256 = bh.digests(i)
                images.append(SubmittedImage((
                    Signal(SignalKind.PDQ, bytes(codes[i])),
                    Signal(SignalKind.PHASH, bytes(phashes[i])),
                    Signal(SignalKind.MD5, md5), Signal(SignalKind.SHA256, sha256)), 100))
            registered += registry.register_bank("bench", BankKind.IMPORTED, images)
            if (start // batch) % 50 == 49:
                print(f"setup: {start + batch:,} images, {registered:,} signals registered "
                      f"({registered / (time.perf_counter() - t0):,.0f} signals/s)", flush=True)
        register_s = time.perf_counter() - t0
        photo = bh.photo_jpeg(seed + 1, image_size)
        photo_signals = registry.register_bank("bench-images", BankKind.IMPORTED, [
            SubmittedImage.from_image(registry.hash_image(photo, registration=True))])
        del photo
        _, key = registry.add_platform(f"soak-{uuid.uuid4().hex[:8]}", [Scope.MATCH])
    finally:
        registry.close()
    t1 = time.perf_counter()
    registry = build_registry(settings)  # no snapshot yet: the index is built from the database
    try:
        build_s = time.perf_counter() - t1
        t2 = time.perf_counter()
        snapshot = Path(registry.save_snapshot())
        snapshot_s = time.perf_counter() - t2
    finally:
        registry.close()
    return {"hashes": n, "registered_signals": registered, "photo_signals": photo_signals,
            "register_s": round(register_s, 1), "index_build_s": round(build_s, 1),
            "snapshot_s": round(snapshot_s, 2), "snapshot_bytes": snapshot.stat().st_size,
            "snapshot": str(snapshot), "key": key, "seed": seed,
            "setup_s": round(time.perf_counter() - t0, 1)}


class Gunicorn:
    def __init__(self, data_dir: Path, env: dict[str, str], workers: int, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.workers = workers
        self.log = log
        self.cmd = [str(Path(sys.executable).parent / "gunicorn"), "registry.web.wsgi:create()",
                    "-w", str(workers), "--bind", f"{HOST}:{self.port}", "--timeout", "120",
                    "--graceful-timeout", "10", "--error-logfile", str(log)]
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith("TAKEDOWN_") and k != "GUNICORN_CMD_ARGS"}
        self.env.update(env, TAKEDOWN_DATA_DIR=str(data_dir))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def master(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, head: Callable[[], int], timeout: float = 600) -> float:
        t0 = time.monotonic()
        # The app's own warnings (follower, snapshots) go to the workers' stderr: keep them.
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.cmd, cwd=ROOT, env=self.env, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        caught = wait_caught_up(self, head, timeout)
        if caught["s"] is None:
            raise RuntimeError(f"gunicorn workers not ready within {timeout:.0f} s: "
                               f"{caught['last']}; see {self.log}")
        return time.monotonic() - t0

    def worker_pids(self) -> list[int]:
        if self.proc is None or self.proc.poll() is not None:
            return []
        return worker_pids(self.proc.pid)

    def log_size(self) -> int:
        try:
            return self.log.stat().st_size
        except OSError:
            return 0

    def log_since(self, offset: int) -> str:
        try:
            with open(self.log, "rb") as f:
                f.seek(offset)
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # workers orphaned by a dead master
        self.proc = None


def server_env(db_url: str, redis_url: str, pin_kdf_n: int, snapshot_every: int,
               **extra: str) -> dict[str, str]:
    """The server's TAKEDOWN_* settings; ``extra`` adds more (``max_sync_age_s="2"``)."""
    return {**{f"TAKEDOWN_{k.upper()}": v for k, v in extra.items()},
            "TAKEDOWN_DATABASE_URL": db_url, "TAKEDOWN_REDIS_URL": redis_url,
            "TAKEDOWN_SECRET_KEY": SECRET, "TAKEDOWN_RATE_LIMIT": GENEROUS,
            "TAKEDOWN_SUBMIT_LIMIT": GENEROUS, "TAKEDOWN_CASE_LIMIT": GENEROUS,
            "TAKEDOWN_PIN_KDF_N": str(pin_kdf_n), "TAKEDOWN_SNAPSHOT_EVERY": str(snapshot_every)}


# --- database checks ----------------------------------------------------------------------------
def db_head(url: str) -> int:
    import psycopg

    with psycopg.connect(conninfo(url), connect_timeout=3) as conn:
        row = conn.execute("SELECT coalesce(max(seq), 0) FROM change_log").fetchone()
    return int(row[0]) if row else 0


def head_when_up(url: str, timeout: float = 120) -> int:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return db_head(url)
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def check_ledger(url: str, ledger: list[dict[str, Any]]) -> dict[str, Any]:
    """Every acknowledged submission is a case with as many signals as its receipt said; every
    acknowledged withdrawal is a withdrawn case with no active signal."""
    import psycopg

    submits = {e["case"]: e for e in ledger if e["op"] == "submit"}
    withdrawals = {e["case"] for e in ledger if e["op"] == "withdraw"}
    rows: dict[str, tuple[str, int, int]] = {}
    numbers = sorted(set(submits) | withdrawals)
    with psycopg.connect(conninfo(url), connect_timeout=10) as conn:
        for start in range(0, len(numbers), 5000):
            for number, status, total, active in conn.execute(
                    "SELECT c.number, c.status, count(s.id), "
                    "count(s.id) FILTER (WHERE s.status = 'active') FROM cases c "
                    "LEFT JOIN signals s ON s.case_id = c.id WHERE c.number = ANY(%s) "
                    "GROUP BY c.number, c.status", (numbers[start:start + 5000],)):
                rows[number] = (status, int(total), int(active))
    missing = sorted(n for n in submits if n not in rows)
    wrong_signals = sorted(n for n, e in submits.items()
                           if n in rows and rows[n][1] != e["signals"])
    not_withdrawn = sorted(n for n in withdrawals
                           if n not in rows or rows[n][0] != "withdrawn" or rows[n][2] != 0)
    return {"submissions": len(submits), "withdrawals": len(withdrawals),
            "checked": len(submits) + len(withdrawals),
            "missing": len(missing) + len(wrong_signals) + len(not_withdrawn),
            "submissions_missing": missing[:20], "submissions_wrong_signal_count":
            wrong_signals[:20], "withdrawals_not_in_database": not_withdrawn[:20]}


# --- /readyz ---------------------------------------------------------------------------------
def readyz(port: int, timeout: float = 10) -> tuple[int, dict[str, Any]]:
    """(status, body); status 0 when nothing answered."""
    import http.client

    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("GET", "/readyz")
        response = conn.getresponse()
        raw = response.read()
        try:
            body = json.loads(raw)
        except ValueError:
            body = {}
        return response.status, body if isinstance(body, dict) else {}
    except (OSError, http.client.HTTPException):
        return 0, {}
    finally:
        conn.close()


def wait_caught_up(server: Gunicorn, head: Callable[[], int], timeout: float) -> dict[str, Any]:
    """Poll /readyz from several threads until every current worker of the master has answered
    ready with an index position >= the database head (read once, when the wait starts)."""
    start = time.monotonic()
    target = head()
    done: dict[int, float] = {}
    last: dict[int, dict[str, Any]] = {}
    lock = threading.Lock()
    finished = threading.Event()

    def poll() -> None:
        while not finished.is_set() and time.monotonic() - start < timeout:
            status, body = readyz(server.port, timeout=5)
            if "process" not in body:
                time.sleep(0.05)
                continue
            pid = int(body["process"])
            with lock:
                last[pid] = {"status": status, "ready": body.get("ready"),
                             "index_position": body.get("index_position"),
                             "index_lag": body.get("index_lag")}
                if status == 200 and body.get("ready") and body["index_position"] >= target:
                    done.setdefault(pid, time.monotonic() - start)
            time.sleep(0.02)

    threads = [threading.Thread(target=poll, daemon=True) for _ in range(2 * server.workers)]
    for t in threads:
        t.start()
    result: dict[str, Any] = {"s": None, "head": target}
    try:
        while time.monotonic() - start < timeout:
            current = server.worker_pids()
            with lock:
                ok = len(current) == server.workers and all(p in done for p in current)
            if ok:
                result.update(s=round(time.monotonic() - start, 3), workers=current)
                break
            time.sleep(0.05)
    finally:
        finished.set()
        for t in threads:
            t.join(10)
    if result["s"] is None:
        result["last"] = last
        result["workers"] = server.worker_pids()
    return result


class ReadyMonitor:
    """/readyz asked every ``every`` seconds from two threads; every answer kept."""

    def __init__(self, port: int, every: float = 0.1) -> None:
        self.port = port
        self.every = every
        self.seen: list[tuple[float, int, int, bool, bool]] = []  # t, status, pid, ready, db
        self.stop_event = threading.Event()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(2)]

    def _run(self) -> None:
        while not self.stop_event.is_set():
            t = time.time()
            status, body = readyz(self.port, timeout=10)
            self.seen.append((t, status, int(body.get("process", 0)), bool(body.get("ready")),
                              bool(body.get("database"))))
            self.stop_event.wait(self.every)

    def __enter__(self) -> ReadyMonitor:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_event.set()
        for t in self.threads:
            t.join(15)

    def between(self, t0: float, t1: float) -> dict[str, Any]:
        rows = [r for r in self.seen if t0 <= r[0] <= t1]
        return {"answers": len(rows), "statuses": dict(Counter(str(r[1]) for r in rows)),
                "not_ready": sum(1 for r in rows if r[1] != 200),
                "database_down_answers": sum(1 for r in rows if r[1] and not r[4])}


# --- memory ----------------------------------------------------------------------------------
def proc_memory(pid: int) -> dict[str, int] | None:
    """VmRSS, RssAnon, RssFile, RssShmem of a process, in kB."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
            out[key] = int(value.split()[0])
    return out


class RssSampler:
    def __init__(self, server: Gunicorn, every: float) -> None:
        self.server = server
        self.every = every
        self.samples: list[tuple[float, int, int, int]] = []  # t, pid, rss kB, anon kB
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop_event.is_set():
            t = time.time()
            for pid in self.server.worker_pids():
                mem = proc_memory(pid)
                if mem:
                    self.samples.append((t, pid, mem.get("VmRSS", 0), mem.get("RssAnon", 0)))
            self.stop_event.wait(self.every)

    def __enter__(self) -> RssSampler:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_event.set()
        self.thread.join(15)


def rss_report(samples: list[tuple[float, int, int, int]], t0: float, t1: float
               ) -> dict[str, Any]:
    """Per worker: first, last and peak RSS, and least-squares slopes (MB/min) over the second
    half of [t0, t1] (workers alive through it): of every RSS sample, and of the floor (the
    lowest sample of each of five windows, 30 s at least), which transient peaks (an image
    being decoded, a request's buffers, freed memory the allocator keeps a while) do not move.
    Growth that stays in the floor is memory kept."""
    import numpy as np

    mid = t0 + (t1 - t0) / 2
    per: dict[int, list[tuple[float, int, int]]] = {}
    for t, pid, rss, anon in samples:
        per.setdefault(pid, []).append((t, rss, anon))
    workers = {}
    for pid, rows in sorted(per.items()):
        arr = np.array(rows, dtype=np.float64)
        second = arr[arr[:, 0] >= mid]
        entry: dict[str, Any] = {
            "samples": len(rows), "from_s": round(arr[0, 0] - t0, 1),
            "to_s": round(arr[-1, 0] - t0, 1),
            "rss_first_mb": round(arr[0, 1] / 1024, 1),
            "rss_last_mb": round(arr[-1, 1] / 1024, 1),
            "rss_peak_mb": round(arr[:, 1].max() / 1024, 1),
            "slope_mb_per_min": None, "floor_slope_mb_per_min": None,
            "anon_floor_slope_mb_per_min": None}
        if len(second) >= 4 and second[-1, 0] - second[0, 0] >= (t1 - mid) * 0.8:
            minutes = (second[:, 0] - second[0, 0]) / 60
            entry["slope_mb_per_min"] = round(float(np.polyfit(minutes, second[:, 1] / 1024,
                                                               1)[0]), 3)
            window_min = max(0.5, (t1 - mid) / 60 / 5)
            window = np.floor(minutes / window_min)
            floors = [(minutes[window == w].mean(), second[window == w, 1].min() / 1024,
                       second[window == w, 2].min() / 1024) for w in np.unique(window)]
            if len(floors) >= 3:
                f = np.array(floors)
                entry["floor_slope_mb_per_min"] = round(float(np.polyfit(f[:, 0], f[:, 1],
                                                                         1)[0]), 3)
                entry["anon_floor_slope_mb_per_min"] = round(float(np.polyfit(
                    f[:, 0], f[:, 2], 1)[0]), 3)
                entry["floor_second_half_mb"] = [round(float(f[0, 1]), 1),
                                                 round(float(f[-1, 1]), 1)]
        workers[str(pid)] = entry

    def stat(key: str) -> dict[str, float | None]:
        values = [w[key] for w in workers.values() if w[key] is not None]
        return {"max": max(values) if values else None,
                "mean": round(sum(values) / len(values), 3) if values else None}

    return {"workers": workers, "second_half_s": round(t1 - mid, 1),
            "floor_window_s": round(max(30.0, (t1 - mid) / 5), 1),
            "slope_mb_per_min": stat("slope_mb_per_min"),
            "floor_slope_mb_per_min": stat("floor_slope_mb_per_min")}


# --- the load generator (a child process running locust) -------------------------------------
class LoadRun:
    """``python bench/soak.py --child CONFIG``: locust users in their own process (gevent), which
    write every request to ``records.jsonl`` and every acknowledged write to ``ledger.jsonl``."""

    def __init__(self, out_dir: Path, config: dict[str, Any]) -> None:
        self.dir = out_dir
        shutil.rmtree(out_dir, ignore_errors=True)
        out_dir.mkdir(parents=True)
        self.config = {**config, "out": str(out_dir)}
        (out_dir / "config.json").write_text(json.dumps(self.config, indent=1))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> LoadRun:
        with open(self.dir / "child.log", "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), "--child",
                 str(self.dir / "config.json")], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        return self

    def wait_requests(self, n: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.count() < n:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"load generator exited:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"load generator sent fewer than {n} requests in "
                                   f"{timeout:.0f} s:\n{self.log_tail()}")
            time.sleep(0.2)

    def count(self) -> int:
        try:
            with open(self.dir / "records.jsonl", "rb") as f:
                return sum(1 for _ in f)
        except OSError:
            return 0

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise RuntimeError(f"load generator ran past {timeout:.0f} s") from None

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.returncode not in (0, -signal.SIGTERM):
            raise RuntimeError(f"load generator failed ({self.proc.returncode}):\n"
                               f"{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = (self.dir / "child.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def records(self) -> list[Record]:
        out = []
        with contextlib.suppress(OSError), open(self.dir / "records.jsonl") as f:
            for line in f:
                with contextlib.suppress(ValueError):
                    out.append(Record(*json.loads(line)))
        return out

    def ledger(self) -> list[dict[str, Any]]:
        out = []
        with contextlib.suppress(OSError), open(self.dir / "ledger.jsonl") as f:
            for line in f:
                with contextlib.suppress(ValueError):
                    out.append(json.loads(line))
        return out

    def summary(self) -> dict[str, Any]:
        try:
            found: dict[str, Any] = json.loads((self.dir / "child.json").read_text())
            return found
        except (OSError, ValueError):
            return {}


@dataclass(frozen=True, slots=True)
class Record:
    t: float  # wall-clock start
    d: float  # seconds until the answer (or the error)
    name: str
    status: int  # 0: no HTTP answer
    kind: str  # "" when the status was the expected one, else what came instead
    check: str  # "" or the check that failed on an expected-status answer

    @property
    def ok(self) -> bool:
        return not self.kind and not self.check


def load_config(server: Gunicorn, info: dict[str, Any], data_dir: Path, *, users: int,
                rate_per_user: float, duration_s: float, weights: dict[str, int],
                batch: int, image_size: tuple[int, int], seed: int,
                steps: list[int] | None = None, step_s: float = 0, timeout_s: float = 60
                ) -> dict[str, Any]:
    from registry.hashing import PIPELINE_VERSION

    return {"host": server.url, "key": info["key"], "users": users,
            "rate_per_user": rate_per_user, "duration_s": duration_s, "weights": weights,
            "batch": batch, "image_size": list(image_size), "image_seed": info["seed"] + 1,
            "codes": str(data_dir / "load" / "codes.npy"),
            "phashes": str(data_dir / "load" / "phashes.npy"), "seed": seed,
            "pipeline_version": PIPELINE_VERSION, "steps": steps or [], "step_s": step_s,
            "timeout_s": timeout_s}


def child_main(config_path: str) -> int:
    """The load generator: runs in its own process, gevent-patched (locust)."""
    from gevent import monkey

    monkey.patch_all()
    import gevent
    import gevent.event
    from locust import FastHttpUser, constant, constant_throughput
    from locust.env import Environment
    from locust.log import setup_logging

    setup_logging("WARNING")
    cfg = json.loads(Path(config_path).read_text())
    load = LoadGenerator(cfg)
    rate = float(cfg["rate_per_user"])

    class Mixed(FastHttpUser):
        host = cfg["host"]
        wait_time = constant_throughput(rate) if rate > 0 else constant(0)
        network_timeout = float(cfg["timeout_s"])
        connection_timeout = 10.0
        tasks = {getattr(LoadGenerator, f"task_{name}"): int(w)  # noqa: RUF012
                 for name, w in cfg["weights"].items() if int(w) > 0}

        def on_start(self) -> None:
            self.csrf = ""
            self.load = load

    stop = gevent.event.Event()
    gevent.signal_handler(signal.SIGTERM, stop.set)
    gevent.signal_handler(signal.SIGINT, stop.set)
    env = Environment(user_classes=[Mixed], host=cfg["host"])
    runner = env.create_local_runner()
    flusher = gevent.spawn(load.flush_forever)
    started = time.time()
    out: dict[str, Any] = {"started": started}
    try:
        if cfg["steps"]:
            out["probe"] = load.probe(runner, stop, cfg["steps"], float(cfg["step_s"]))
        else:
            runner.start(int(cfg["users"]), spawn_rate=max(1.0, int(cfg["users"]) / 2))
            stop.wait(float(cfg["duration_s"]) if cfg["duration_s"] else None)
    finally:
        runner.quit()
        flusher.kill()
        load.flush()
        import resource

        usage = resource.getrusage(resource.RUSAGE_SELF)
        out.update(stopped=time.time(), client_cpu_s=round(usage.ru_utime + usage.ru_stime, 2),
                   requests=load.sent, pool={"active": len(load.active),
                                             "withdrawn": len(load.withdrawn)})
        (Path(cfg["out"]) / "child.json").write_text(json.dumps(out, indent=1))
    return 0


class LoadGenerator:
    """What the locust users share (one process, one gevent loop: no locks needed): the request
    bodies, the cases this run submitted (number, PIN, PDQ), the records and the ledger."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        import numpy as np

        bh = bench_http()
        self.cfg = cfg
        self.np = np
        # Each run its own codes (seeded by its folder too): a later run must not submit again
        # what an earlier one submitted, or a withdrawn case's hash is also another's.
        salt = zlib.crc32(str(cfg["out"]).encode())
        self.rng = np.random.default_rng([int(cfg["seed"]), salt])
        self.pick = random.Random(f"{cfg['seed']}-{salt}")
        self.bh = bh
        out = Path(cfg["out"])
        self.records_file = open(out / "records.jsonl", "a")  # noqa: SIM115 (closed in flush)
        self.ledger_file = open(out / "ledger.jsonl", "a")  # noqa: SIM115
        self.pending: list[list[Any]] = []
        self.sent = 0
        codes, phashes = np.load(cfg["codes"]), np.load(cfg["phashes"])
        self.batches: list[tuple[list[str], list[bool]]] = []
        for b in range(16):
            qs = bh.queries(codes, self.rng, int(cfg["batch"]), f"b{b}", 10, phashes)
            self.batches.append(([json.dumps(q) for q in qs],
                                 [bh.is_near(i, 10) for i in range(len(qs))]))
        size = tuple(cfg["image_size"])
        registered = bh.photo_jpeg(int(cfg["image_seed"]), size)
        self.images = [("registered.jpg", registered, True),
                       ("copy.jpg", self._reencoded(registered), True),
                       ("other.jpg", bh.photo_jpeg(int(cfg["image_seed"]) + 1, size), False)]
        self.api = {"Authorization": f"Bearer {cfg['key']}", "Content-Type": "application/json"}
        self.active: list[dict[str, Any]] = []  # acknowledged, withdrawal never attempted
        self.withdrawn: list[dict[str, Any]] = []  # withdrawal acknowledged
        self.attempted: set[str] = set()  # withdrawal attempted (answered or not)

    @staticmethod
    def _reencoded(data: bytes) -> bytes:
        import io

        from PIL import Image

        with Image.open(io.BytesIO(data)) as img:
            small = img.convert("RGB").resize((img.width * 3 // 4, img.height * 3 // 4))
        buf = io.BytesIO()
        small.save(buf, "JPEG", quality=70)
        return buf.getvalue()

    # --- bookkeeping ----------------------------------------------------------------------
    def record(self, t0: float, name: str, status: int, kind: str = "", check: str = "") -> None:
        self.sent += 1
        self.pending.append([round(t0, 4), round(time.time() - t0, 5), name, status, kind,
                             check])

    def acknowledge(self, entry: dict[str, Any]) -> None:
        self.ledger_file.write(json.dumps(entry) + "\n")
        self.ledger_file.flush()  # the log of what the server acknowledged is kept at once

    def flush(self) -> None:
        rows, self.pending = self.pending, []
        for row in rows:
            self.records_file.write(json.dumps(row) + "\n")
        self.records_file.flush()

    def flush_forever(self) -> None:
        import gevent

        while True:
            gevent.sleep(0.5)
            self.flush()

    @staticmethod
    def error_kind(resp: Any) -> str:
        status = int(resp.status_code or 0)
        if status == 0:
            err = getattr(resp, "error", None)
            name = type(err).__name__ if err is not None else "no answer"
            if "timeout" in name.lower() or "timed out" in str(err).lower():
                return "timeout"
            return f"no answer: {name}"
        headers = resp.headers or {}
        ctype = headers.get("Content-Type") or headers.get("content-type") or ""
        if "json" in ctype:
            try:
                body = json.loads(resp.content)
                err = body["error"]
                if set(body) == {"error"} and set(err) == {"code", "message"} and err["message"]:
                    return f"{status} {err['code']}"
            except (ValueError, KeyError, TypeError):
                pass
            return f"{status} bad-json-shape"
        return f"{status} html"

    def guarded(self, name: str, user: Any, fn: Callable[[Any], None]) -> None:
        t0 = time.time()
        try:
            fn(user)
        except Exception as e:  # a client-side failure is recorded, never silently dropped
            self.record(t0, name, 0, f"client error: {type(e).__name__}: {e}"[:200])

    # --- tasks (called with the locust user) -------------------------------------------------
    @staticmethod
    def task_match_batch(user: Any) -> None:
        user.load.guarded("match_batch", user, user.load.match_batch)

    @staticmethod
    def task_match_image(user: Any) -> None:
        user.load.guarded("match_image", user, user.load.match_image)

    @staticmethod
    def task_submit(user: Any) -> None:
        user.load.guarded("submit", user, user.load.submit)

    @staticmethod
    def task_case_status(user: Any) -> None:
        user.load.guarded("case_status", user, user.load.case_status)

    @staticmethod
    def task_withdraw(user: Any) -> None:
        user.load.guarded("withdraw", user, user.load.withdraw)

    def match_batch(self, user: Any) -> None:
        parts, near = self.batches[self.pick.randrange(len(self.batches))]
        extra, live = [], None
        if self.active:
            live = self.pick.choice(self.active[-200:])
            extra.append(json.dumps({"id": "live", "signals": {"pdq": live["pdq"]}}))
        gone = self.pick.choice(self.withdrawn[-200:]) if self.withdrawn else None
        if gone:
            extra.append(json.dumps({"id": "gone", "signals": {"pdq": gone["pdq"]}}))
        body = ('{"queries": [' + ", ".join(parts + extra) + "]}").encode()
        t0 = time.time()
        resp = user.client.request("POST", "/api/v1/match", data=body, headers=self.api,
                                   name="match_batch")
        if resp.status_code != 200:
            return self.record(t0, "match_batch", resp.status_code, self.error_kind(resp))
        results = json.loads(resp.content)["results"]
        check = ""
        if len(results) != len(parts) + len(extra):
            check = "wrong number of results"
        elif any(e and not r["matched"] for r, e in zip(results, near, strict=False)):
            check = "near copy not matched"
        for r in results[len(parts):]:
            if r["id"] == "gone" and r["matched"]:
                check = "withdrawn case matched"
            if (r["id"] == "live" and not r["matched"] and live is not None
                    and live["case"] not in self.attempted):
                check = "acknowledged submission not matched"
        self.record(t0, "match_batch", 200, "", check)

    def match_image(self, user: Any) -> None:
        name, data, registered = self.images[self.pick.randrange(len(self.images))]
        boundary = "soak" + uuid.uuid4().hex
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
                f"filename=\"{name}\"\r\nContent-Type: image/jpeg\r\n\r\n").encode() + data + (
                    f"\r\n--{boundary}--\r\n").encode()
        headers = {"Authorization": self.api["Authorization"],
                   "Content-Type": f"multipart/form-data; boundary={boundary}"}
        t0 = time.time()
        resp = user.client.request("POST", "/api/v1/match/image", data=body, headers=headers,
                                   name="match_image")
        if resp.status_code != 200:
            return self.record(t0, "match_image", resp.status_code, self.error_kind(resp))
        matched = json.loads(resp.content)["matched"]
        self.record(t0, "match_image", 200, "",
                    "" if matched == registered else f"{name}: matched={matched}")

    def csrf(self, user: Any) -> str:
        if not user.csrf:
            t0 = time.time()
            resp = user.client.request("GET", "/submit?lang=en", name="submit_page")
            found = re.search(rb'name="csrf_token" value="([^"]+)"', resp.content or b"")
            if resp.status_code != 200 or not found:
                self.record(t0, "submit_page", resp.status_code,
                            self.error_kind(resp) if resp.status_code != 200 else "",
                            "" if resp.status_code != 200 else "no CSRF token in the page")
                return ""
            self.record(t0, "submit_page", 200)
            user.csrf = found[1].decode()
        return str(user.csrf)

    def new_image(self) -> tuple[dict[str, Any], str]:
        """What the submit page sends for one picture: PDQ with its quality, pHash, both
        digests, and a PDQ hash per registration view. Orientation views are the image's hash
        transformed as the registry predicts them (``variants.predicted_pdq``) with a few bits
        flipped, as real ones are (others would be left out); crops and small rotations are
        codes of their own."""
        from registry.hashing import variants

        bh, rng = self.bh, self.rng
        labels = [label for label in variants.view_labels() if label != "content"]
        codes = bh.random_codes(rng, 1 + len(labels))
        main = bytes(codes[0])
        views = []
        for label, code in zip(labels, codes[1:], strict=True):
            predicted = variants.predicted_pdq(label, main)
            if predicted is not None:
                bits = self.np.unpackbits(self.np.frombuffer(predicted, dtype=self.np.uint8))
                bits[rng.choice(256, int(rng.integers(0, 9)), replace=False)] ^= 1
                code = self.np.packbits(bits)
            views.append({"label": label, "pdq": bytes(code).hex(),
                          "quality": int(rng.integers(55, 101))})
        image = {"signals": {"pdq": main.hex(),
                             "phash": bytes(bh.random_phashes(rng, 1)[0]).hex(),
                             "md5": rng.bytes(16).hex(), "sha256": rng.bytes(32).hex()},
                 "pdq_quality": int(rng.integers(70, 101)), "views": views,
                 "pipeline_version": int(self.cfg["pipeline_version"])}
        return image, main.hex()

    def submit(self, user: Any) -> None:
        token = self.csrf(user)
        if not token:
            return
        images = [self.new_image() for _ in range(self.pick.choice((1, 1, 1, 2)))]
        body = json.dumps({"images": [i for i, _ in images]}).encode()
        headers = {"Content-Type": "application/json", "X-CSRF-Token": token}
        t0 = time.time()
        resp = user.client.request("POST", "/submit/signals?lang=en", data=body, headers=headers,
                                   name="submit")
        if resp.status_code != 201:
            if resp.status_code in (400, 403):
                user.csrf = ""  # a refused token: the next submission fetches a fresh page
            return self.record(t0, "submit", resp.status_code, self.error_kind(resp))
        receipt = json.loads(resp.content)
        if not (isinstance(receipt.get("case"), str) and isinstance(receipt.get("pin"), str)
                and isinstance(receipt.get("signals"), int)):
            return self.record(t0, "submit", 201, "", f"receipt shape: {sorted(receipt)}")
        self.acknowledge({"op": "submit", "t": time.time(), "case": receipt["case"],
                          "pin": receipt["pin"], "signals": receipt["signals"]})
        self.active.append({"case": receipt["case"], "pin": receipt["pin"], "pdq": images[0][1]})
        self.record(t0, "submit", 201)

    def _form(self, user: Any, path: str, name: str, fields: dict[str, str]) -> Any:
        from urllib.parse import urlencode

        token = self.csrf(user)
        if not token:
            return None, 0.0
        t0 = time.time()
        resp = user.client.request(
            "POST", path, data=urlencode({"csrf_token": token, **fields}).encode(), name=name,
            headers={"Content-Type": "application/x-www-form-urlencoded"})
        return resp, t0

    def case_status(self, user: Any) -> None:
        pool = self.active[-300:] + self.withdrawn[-100:]
        if not pool:
            return self.submit(user)
        case = self.pick.choice(pool)
        # What the ledger said when the request left: a withdrawal acknowledged while this
        # check is in flight may land after the server read the case.
        withdrawn_when_sent = case in self.withdrawn
        resp, t0 = self._form(user, "/case?lang=en", "case_status",
                              {"case": case["case"], "pin": case["pin"]})
        if resp is None:
            return None
        if resp.status_code != 200:
            return self.record(t0, "case_status", resp.status_code, self.error_kind(resp))
        page = resp.content or b""
        check = ""
        if case["case"].encode() not in page:
            check = "case number not on the status page"
        elif withdrawn_when_sent and b"badge withdrawn" not in page:
            check = "acknowledged withdrawal shown as active"
        elif (case["case"] not in self.attempted and case not in self.withdrawn
              and b"badge active" not in page):
            check = "active case not shown as active"
        self.record(t0, "case_status", 200, "", check)

    def withdraw(self, user: Any) -> None:
        candidates = [c for c in self.active if c["case"] not in self.attempted]
        if not candidates:
            return self.submit(user)
        case = self.pick.choice(candidates[-300:])
        self.attempted.add(case["case"])
        self.active.remove(case)
        resp, t0 = self._form(user, "/case/withdraw?lang=en", "withdraw",
                              {"case": case["case"], "pin": case["pin"], "confirm": "yes"})
        if resp is None:
            self.active.append(case)
            return None
        if resp.status_code != 200 or b"badge withdrawn" not in (resp.content or b""):
            self.active.append(case)  # tried again later ("already withdrawn" also shows it)
            if resp.status_code != 200:
                return self.record(t0, "withdraw", resp.status_code, self.error_kind(resp))
            return self.record(t0, "withdraw", 200, "", "withdrawal page not showing withdrawn")
        self.acknowledge({"op": "withdraw", "t": time.time(), "case": case["case"]})
        self.withdrawn.append(case)
        self.record(t0, "withdraw", 200)

    # --- capacity probe ---------------------------------------------------------------------
    def probe(self, runner: Any, stop: Any, steps: list[int], step_s: float
              ) -> list[dict[str, Any]]:
        """Closed-loop users, more at each step; stop once two steps in a row did not beat the
        best throughput by 5%."""
        out: list[dict[str, Any]] = []
        best, flat = 0.0, 0
        for users in steps:
            runner.start(users, spawn_rate=max(1, users))
            t0 = time.time()
            stop.wait(step_s)
            t1 = time.time()
            self.flush()
            rows = [r for r in _read_records(Path(self.cfg["out"]) / "records.jsonl")
                    if t0 + step_s * 0.3 <= r.t + r.d <= t1]
            window = t1 - (t0 + step_s * 0.3)
            ok = [r for r in rows if r.ok]
            rps = len(ok) / window if window > 0 else 0.0
            step = {"users": users, "t0": t0, "t1": t1, "answered_per_s": round(rps, 2),
                    "per_type_per_s": {k: round(v / window, 2) for k, v in
                                       sorted(Counter(r.name for r in ok).items())},
                    "errors": len(rows) - len(ok), "latency_ms": latency([r.d for r in ok])}
            out.append(step)
            print(f"probe: {users} users: {rps:.1f} requests/s, p50 "
                  f"{step['latency_ms']['p50']} ms", flush=True)
            if stop.is_set():
                break
            if rps > best * 1.05:
                best, flat = max(best, rps), 0
            else:
                best, flat = max(best, rps), flat + 1
                if flat >= 2 and len(out) >= 3:
                    break
        return out


def _read_records(path: Path) -> list[Record]:
    out = []
    with contextlib.suppress(OSError), open(path) as f:
        for line in f:
            with contextlib.suppress(ValueError):
                out.append(Record(*json.loads(line)))
    return out


# --- analysis --------------------------------------------------------------------------------
def latency(seconds: list[float]) -> dict[str, Any]:
    if not seconds:
        return {"n": 0, "p50": None, "p90": None, "p99": None, "max": None}
    ms = sorted(s * 1000 for s in seconds)

    def q(p: float) -> float:
        return round(ms[min(len(ms) - 1, max(0, math.ceil(p * len(ms)) - 1))], 1)

    return {"n": len(ms), "p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "max": round(ms[-1], 1)}


def summarise(records: list[Record], t0: float | None = None, t1: float | None = None
              ) -> dict[str, Any]:
    """Requests in flight at some time in [t0, t1]: answered at or after t0, sent at or before
    t1 (a request sent before a fault and answered during it is the fault's)."""
    rows = [r for r in records
            if (t0 is None or r.t + r.d >= t0) and (t1 is None or r.t <= t1)]
    per: dict[str, Any] = {}
    for name in sorted({r.name for r in rows}):
        mine = [r for r in rows if r.name == name]
        ok = [r for r in mine if r.ok]
        per[name] = {"requests": len(mine), "ok": len(ok),
                     "statuses": dict(sorted(Counter(str(r.status) for r in mine).items())),
                     "errors": dict(Counter(r.kind for r in mine if r.kind).most_common()),
                     "failed_checks": dict(Counter(r.check for r in mine if r.check)
                                           .most_common()),
                     "latency_ms": latency([r.d for r in ok])}
    span = (max(r.t + r.d for r in rows) - min(r.t for r in rows)) if rows else 0.0
    errors = Counter(f"{r.name}: {r.kind or r.check}" for r in rows if not r.ok)
    return {"requests": len(rows), "ok": sum(1 for r in rows if r.ok),
            "answered_per_s": round(sum(1 for r in rows if r.ok) / span, 2) if span else None,
            "status_500": sum(1 for r in rows if r.status == 500),
            "status_5xx_other_than_503": sum(1 for r in rows if r.status >= 500
                                             and r.status != 503),
            "no_answer": sum(1 for r in rows if r.status == 0),
            "timeouts": sum(1 for r in rows if r.kind == "timeout"),
            "failed_checks": sum(1 for r in rows if r.check),
            "errors_by_kind": dict(errors.most_common()), "per_type": per}


def timeline(records: list[Record], t0: float, bin_s: float) -> list[dict[str, Any]]:
    bins: dict[int, list[Record]] = {}
    for r in records:
        bins.setdefault(int((r.t + r.d - t0) // bin_s), []).append(r)
    out = []
    for b in sorted(bins):
        rows = bins[b]
        entry: dict[str, Any] = {"t": round((b + 0.5) * bin_s, 1),
                                 "answered_per_s": round(sum(r.ok for r in rows) / bin_s, 2),
                                 "errors": sum(not r.ok for r in rows), "types": {}}
        for name in sorted({r.name for r in rows}):
            ok = [r.d for r in rows if r.name == name and r.ok]
            lat = latency(ok)
            entry["types"][name] = {"per_s": round(len(ok) / bin_s, 2), "p50": lat["p50"],
                                    "p99": lat["p99"]}
        out.append(entry)
    return out


# --- faults ----------------------------------------------------------------------------------
@dataclass
class FaultBench:
    """A served registry on private services, for faults under load. Used by main() (--faults)
    and by tests/test_faults.py."""

    pg: Postgres
    redis: Redis
    db_url: str
    data_dir: Path  # setup data (codes for the load generator)
    server: Gunicorn
    snapshots: SnapshotDir
    info: dict[str, Any]
    work: Path
    load: dict[str, Any] = field(default_factory=dict)  # load_config keyword arguments
    hold_s: dict[str, float] = field(default_factory=dict)
    tail_s: dict[str, float] = field(default_factory=dict)
    lead_s: float = 3.0  # load before the fault
    tail_default_s: float = 2.0  # load after every worker caught up
    recover_timeout_s: float = 180.0
    last_records: list[Record] = field(default_factory=list)  # the last run's requests

    def head(self) -> int:
        return head_when_up(self.db_url)

    def run(self, fault: str) -> dict[str, Any]:
        """Load, then the fault (and its end), then every worker caught up, then a tail of
        more load (/readyz still watched); what was seen."""
        lead_s = self.lead_s
        tail_s = self.tail_s.get(fault, self.tail_default_s)
        injector: Callable[[FaultBench], dict[str, Any]] = globals()[f"fault_{fault}"]
        config = load_config(self.server, self.info, self.data_dir,
                             **{**self.load, "duration_s": 0})  # until stopped
        run = LoadRun(self.work / f"load-{fault}", config)
        log_offset = self.server.log_size()
        report: dict[str, Any] = {"fault": fault}
        with ReadyMonitor(self.server.port) as monitor:
            run.start()
            try:
                run.wait_requests(10, 120)
                time.sleep(lead_s)
                t_start = time.time()
                report.update(injector(self))
                t_healed = time.time()
                caught = wait_caught_up(self.server, self.head, self.recover_timeout_s)
                t_recovered = time.time()
                time.sleep(tail_s)
            finally:
                t_end = time.time()
                run.stop()
        records = run.records()
        ledger = run.ledger()
        self.last_records = records
        window = summarise(records, t_start, t_recovered + tail_s)
        during = summarise(records, t_start, t_healed)
        before = summarise([r for r in records if r.t + r.d < t_start])
        log = self.server.log_since(log_offset)
        last_bad = max((r[0] for r in monitor.seen if r[0] >= t_healed and r[1] != 200),
                       default=None)
        report.update({
            "fault_s": round(t_healed - t_start, 2),
            "recover_s": caught["s"], "recovered_to_head": caught["head"],
            # /readyz may still flap after the first all-ready sweep (a follower in its
            # retry pause): until its last 503 after the fault ended, within the tail.
            "ready_stable_s": None if caught["s"] is None else round(max(
                caught["s"], (last_bad - t_healed) if last_bad else 0.0), 2),
            "readyz_503_at_end": bool(last_bad and last_bad > t_end - 1.0),
            "caught_up": caught["s"] is not None, "not_caught_up": caught.get("last"),
            "workers_after": caught.get("workers"),
            "window_s": round(t_recovered + tail_s - t_start, 2),
            "requests": window["requests"], "ok": window["ok"],
            "statuses": {name: t["statuses"] for name, t in window["per_type"].items()},
            "status_500": window["status_500"], "no_answer": window["no_answer"],
            "timeouts": window["timeouts"], "failed_checks": window["failed_checks"],
            "errors_by_kind": window["errors_by_kind"],
            "during_fault": {"requests": during["requests"], "ok": during["ok"],
                             "errors_by_kind": during["errors_by_kind"]},
            "readyz_during_fault": monitor.between(t_start, t_healed),
            "readyz_after_fault": monitor.between(t_healed, t_end),
            "errors_before_fault": before["errors_by_kind"],
            "whole_run": {"requests": len(records),
                          "status_500": sum(1 for r in records if r.status == 500),
                          "from": records[0].t if records else None, "to": t_end},
            "server_log_tracebacks": log.count("Traceback"),
            "server_log_excerpt": _log_excerpt(log),
            "ledger": check_ledger(self.db_url, ledger),
            "acknowledged_in_window": sum(1 for e in ledger
                                          if t_start <= e["t"] <= t_recovered + tail_s),
            "t_start": t_start, "t_healed": t_healed, "t_recovered": t_recovered,
            "load_generator": run.summary()})
        report["missing"] = report["ledger"]["missing"]
        return report

    def close(self) -> None:
        self.server.stop()
        self.snapshots.close()
        with contextlib.suppress(Exception):
            self.redis.ensure_running()


def _log_excerpt(log: str, limit: int = 12) -> list[str]:
    keep = [line for line in log.splitlines()
            if any(w in line for w in ("ERROR", "Traceback", "Error", "WARNING", "warning"))]
    return [line[:300] for line in keep[:limit]]


def fault_kill_worker(bench: FaultBench) -> dict[str, Any]:
    victim = min(bench.server.worker_pids())
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while victim in bench.server.worker_pids() and time.monotonic() < deadline:
        time.sleep(0.05)
    return {"how": f"kill -9 of worker {victim}; gunicorn forks a replacement", "victim": victim}


def fault_restart_postgres(bench: FaultBench) -> dict[str, Any]:
    hold = bench.hold_s.get("restart_postgres", 3.0)
    try:
        bench.pg.stop("fast")
        time.sleep(hold)
    finally:
        bench.pg.start()  # always started again, whatever happened while it was down
    return {"how": f"pg_ctl stop -m fast, {hold:g} s down, pg_ctl start"}


def fault_redis_outage(bench: FaultBench) -> dict[str, Any]:
    hold = bench.hold_s.get("redis_outage", 5.0)
    try:
        bench.redis.stop()
        time.sleep(hold)
    finally:
        bench.redis.start()
    # Back: the rate limiter counts in Redis again (it restarted empty).
    t0, deadline = time.monotonic(), time.monotonic() + 60
    while bench.redis.keys() <= 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    keys = bench.redis.keys()
    return {"how": f"redis-server stopped (SIGTERM), {hold:g} s down, started again (empty)",
            "limiter_writing_to_redis_again_s": round(time.monotonic() - t0, 2) if keys > 0
            else None, "redis_keys_after": keys}


def _snapshot_after(bench: FaultBench, since: float, timeout: float = 90) -> float | None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if bench.snapshots.snapshot_mtime() > since:
            return round(time.monotonic() - t0, 2)
        time.sleep(0.1)
    return None


def fault_snapshot_readonly(bench: FaultBench) -> dict[str, Any]:
    hold = bench.hold_s.get("snapshot_readonly", 15.0)
    before = bench.snapshots.snapshot_mtime()
    how = bench.snapshots.readonly()
    try:
        time.sleep(hold)
    finally:
        bench.snapshots.writable()
    healed = time.time()
    return {"how": f"{how} for {hold:g} s", "snapshot_written_during": (
        bench.snapshots.snapshot_mtime() > before and bench.snapshots.snapshot_mtime() < healed),
        "next_snapshot_after_s": _snapshot_after(bench, healed)}


def fault_snapshot_full(bench: FaultBench) -> dict[str, Any]:
    hold = bench.hold_s.get("snapshot_full", 15.0)
    how = bench.snapshots.full()
    try:
        time.sleep(hold)
    finally:
        bench.snapshots.unfull()
    healed = time.time()
    leftovers = [p.name for p in bench.snapshots.path.iterdir() if p.name.endswith(".tmp")]
    return {"how": f"{how} for {hold:g} s", "temporary_files_left": leftovers,
            "next_snapshot_after_s": _snapshot_after(bench, healed)}


def fault_db_lock(bench: FaultBench) -> dict[str, Any]:
    import psycopg

    hold = bench.hold_s.get("db_lock", 5.0)
    with psycopg.connect(conninfo(bench.db_url), connect_timeout=10) as conn:
        conn.execute("LOCK TABLE change_log IN ACCESS EXCLUSIVE MODE")
        conn.execute("SELECT pg_sleep(%s)", (hold,))
        conn.rollback()
    return {"how": f"BEGIN; LOCK TABLE change_log IN ACCESS EXCLUSIVE MODE; "
                   f"SELECT pg_sleep({hold:g}); ROLLBACK (another session)"}


def fault_server(pg: Postgres, redis: Redis, db_url: str, data_dir: Path, info: dict[str, Any],
                 work: Path, workers: int, pin_kdf_n: int, snapshot_every: int,
                 **extra_env: str) -> FaultBench:
    """A gunicorn whose snapshot folder can be made read-only or full (see SnapshotDir)."""
    fault_data = work / "fault-data"
    snapshots = SnapshotDir(fault_data / "index", 4 * int(info["snapshot_bytes"]) + 16 * MB)
    snapshots.mount()
    try:
        shutil.copy2(info["snapshot"], snapshots.path / "snapshot.tridx")
        server = Gunicorn(fault_data, server_env(db_url, redis.url, pin_kdf_n, snapshot_every,
                                                 **extra_env), workers,
                          work / "gunicorn-faults.log")
        bench = FaultBench(pg, redis, db_url, data_dir, server, snapshots, info, work)
        server.start(bench.head)
    except BaseException:
        snapshots.close()
        raise
    return bench


@contextlib.contextmanager
def small_fault_bench(work: Path, *, hashes: int = 3000, workers: int = 2, pin_kdf_n: int = 1024,
                      snapshot_every: int = 20, image_size: tuple[int, int] = (640, 480),
                      seed: int = 20261207, **extra_env: str) -> Iterator[FaultBench]:
    """Everything a fault needs, small (tests/test_faults.py): a private PostgreSQL cluster and
    Redis, a fresh database of ``hashes`` images, gunicorn; all stopped and deleted after.
    Raises Unsupported when this machine lacks a tool."""
    pg = Postgres()
    redis = Redis(work / "redis")
    bench = None
    try:
        pg.init()
        redis.start()
        db_url = pg.create_database()
        data_dir = work / "data"
        info = setup_registry(db_url, data_dir, hashes, seed, image_size, pin_kdf_n, batch=1000)
        bench = fault_server(pg, redis, db_url, data_dir, info, work, workers, pin_kdf_n,
                             snapshot_every, **extra_env)
        yield bench
    finally:
        try:
            if bench is not None:
                bench.close()
        finally:
            redis.close()
            pg.close()


def verify_index(db_url: str, data_dir: Path, pin_kdf_n: int) -> dict[str, Any]:
    """A fresh process's view (snapshot + log tail) against the database, entry by entry."""
    from registry.bootstrap import build_registry
    from registry.config import Settings

    registry = build_registry(Settings.from_env({}, database_url=db_url, data_dir=str(data_dir),
                                                pin_kdf_n=pin_kdf_n))
    try:
        report = registry.verify_index().to_json()
        report["loaded_from"] = registry._keeper.loaded_from
    finally:
        registry.close()
    return {"ok": report["ok"], "position": report["position"], "checked": report["checked"],
            "loaded_from": report["loaded_from"],
            "problems": {k: report[k] for k in ("missing", "extra", "wrong")
                         if any(report[k].values())}}


# --- plots -------------------------------------------------------------------------------------
def plot(path: Path, title: str, records: list[Record], rss: list[tuple[float, int, int, int]],
         t0: float, bin_s: float, spans: list[tuple[float, float, str]] = ()) -> None:  # type: ignore[assignment]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    line = timeline(records, t0, bin_s)
    fig, axes = plt.subplots(3, 1, figsize=(12, 11), sharex=True)
    names = sorted({n for e in line for n in e["types"]})
    colours = {n: f"C{i}" for i, n in enumerate(names)}
    for name in names:
        pts = [(e["t"], e["types"][name]) for e in line if name in e["types"]]
        xs = [t for t, v in pts if v["p50"] is not None]
        axes[0].plot(xs, [v["p50"] for _, v in pts if v["p50"] is not None], "-",
                     color=colours[name], label=f"{name} p50")
        axes[0].plot(xs, [v["p99"] for _, v in pts if v["p99"] is not None], ":",
                     color=colours[name], label=f"{name} p99")
        axes[1].plot([t for t, _ in pts], [v["per_s"] for _, v in pts], color=colours[name],
                     label=name)
    axes[0].set_yscale("log")
    axes[0].set_ylabel(f"latency, ms ({bin_s:g} s bins)")
    axes[0].legend(fontsize=7, ncol=4)
    axes[1].plot([e["t"] for e in line], [e["answered_per_s"] for e in line], "k-", lw=1.5,
                 label="all answered")
    errs = [(e["t"], e["errors"] / bin_s) for e in line if e["errors"]]
    if errs:
        axes[1].plot([t for t, _ in errs], [v for _, v in errs], "rx", label="errors/s")
    axes[1].set_ylabel("requests/s")
    axes[1].legend(fontsize=7, ncol=4)
    per: dict[int, list[tuple[float, float]]] = {}
    for t, pid, kb, _anon in rss:
        per.setdefault(pid, []).append((t - t0, kb / 1024))
    for i, (pid, pts) in enumerate(sorted(per.items())):
        xs, ys = [t for t, _ in pts], [m for _, m in pts]
        axes[2].plot(xs, ys, color=f"C{i % 10}", alpha=0.3, lw=0.8)
        floor = [min(m for t2, m in pts if t - 30 <= t2 <= t) for t in xs]  # trailing 30 s
        axes[2].plot(xs, floor, color=f"C{i % 10}", lw=1.5, label=f"worker {pid} (floor)")
    axes[2].set_ylabel("RSS, MB (faint: samples; solid: 30 s floor)")
    axes[2].set_xlabel("seconds")
    axes[2].legend(fontsize=7, ncol=4)
    for a, b, label in spans:
        for ax in axes:
            ax.axvspan(a - t0, b - t0, color="orange", alpha=0.2)
        axes[0].text(a - t0, axes[0].get_ylim()[1], label, fontsize=7, rotation=90, va="top")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- main ------------------------------------------------------------------------------------
def parse_weights(text: str) -> dict[str, int]:
    weights = dict(DEFAULT_WEIGHTS)
    for part in filter(None, text.split(",")):
        name, _, value = part.partition("=")
        if name not in DEFAULT_WEIGHTS:
            raise SystemExit(f"--weights: unknown request type {name!r}")
        weights[name] = int(value)
    return weights


def machine() -> dict[str, Any]:
    from bench.common import machine_info

    return machine_info("gunicorn", "locust")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--hashes", type=int, default=1_000_000, help="registered images")
    p.add_argument("--duration", type=float, default=600.0, help="soak seconds (0: no soak)")
    p.add_argument("--faults", action="store_true", help="then the faults, under load")
    p.add_argument("--only-faults", default="", help="comma-separated subset of the faults")
    p.add_argument("--workers", type=int, default=4, help="gunicorn workers")
    p.add_argument("--load-share", type=float, default=0.8, help="share of measured capacity")
    p.add_argument("--capacity", type=float, default=0.0,
                   help="requests/s to take as capacity instead of probing for it")
    p.add_argument("--probe-step-s", type=float, default=20.0)
    p.add_argument("--probe-steps", default="1,2,3,4,6,8,12,16,24,32")
    p.add_argument("--weights", default="", help="e.g. match_batch=12,submit=2 (see the mix)")
    p.add_argument("--batch", type=int, default=100, help="queries per batched match")
    p.add_argument("--rss-every", type=float, default=5.0)
    p.add_argument("--bin-s", type=float, default=0.0, help="plot bins (default: by length)")
    p.add_argument("--pin-kdf-n", type=int, default=2**15,
                   help="scrypt N of case PINs (the production default)")
    p.add_argument("--snapshot-every", type=int, default=10000,
                   help="TAKEDOWN_SNAPSHOT_EVERY of the soak server (its default)")
    p.add_argument("--fault-snapshot-every", type=int, default=200,
                   help="TAKEDOWN_SNAPSHOT_EVERY of the fault server (snapshots during faults)")
    p.add_argument("--pg-down-s", type=float, default=3.0)
    p.add_argument("--pg-tail-s", type=float, default=12.0,
                   help="load and /readyz watched this long after PostgreSQL is back (the "
                        "followers retry with a pause growing to 10 s)")
    p.add_argument("--redis-down-s", type=float, default=5.0)
    p.add_argument("--lock-s", type=float, default=5.0)
    p.add_argument("--snapshot-fault-s", type=float, default=15.0,
                   help="how long the snapshot folder stays read-only, and full")
    p.add_argument("--snapshot-tail-s", type=float, default=12.0,
                   help="load and /readyz watched this long after a snapshot fault ends")
    p.add_argument("--seed", type=int, default=20261207)
    p.add_argument("--work-dir", default=None, help="default: a fresh temporary folder")
    p.add_argument("--keep", action="store_true", help="keep the work folder (logs, records)")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "soak.json"))
    args = p.parse_args(argv)
    weights = parse_weights(args.weights)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="takedown-soak-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.time()
    report: dict[str, Any] = {
        "command": shlex.join([os.path.relpath(sys.executable, ROOT)
                               if sys.executable.startswith(str(ROOT)) else sys.executable,
                               os.path.relpath(__file__, ROOT) if __file__.startswith(str(ROOT))
                               else __file__, *(argv if argv is not None else sys.argv[1:])]),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "machine": machine(), "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "mix": weights,
        "server_env": {k: v for k, v in server_env("<private cluster>", "<private redis>",
                                                   args.pin_kdf_n, args.snapshot_every).items()
                       if k != "TAKEDOWN_SECRET_KEY"},
        "notes": [
            "Private PostgreSQL cluster and private redis-server started by the benchmark on "
            "free ports (the machine's shared services are not touched).",
            "Rate limits raised for the bench: TAKEDOWN_RATE_LIMIT, TAKEDOWN_SUBMIT_LIMIT and "
            "TAKEDOWN_CASE_LIMIT = '1000000 per minute' (all requests come from 127.0.0.1).",
            "Load generator: one locust process (FastHttpUser, gevent) on the same machine.",
        ]}
    image_size = (1632, 1224)
    pg = redis = None
    server = None
    try:
        pg = Postgres()
        pg.init()
        redis = Redis(work / "redis")
        redis.start()
        db_url = pg.create_database()
        data_dir = work / "data"
        print(f"setup: {args.hashes:,} images into a fresh database ({work})", flush=True)
        info = setup_registry(db_url, data_dir, args.hashes, args.seed, image_size,
                              args.pin_kdf_n)
        report["setup"] = {k: v for k, v in info.items() if k not in ("key", "snapshot")}
        print(f"setup: {info['setup_s']} s (register {info['register_s']} s, index "
              f"{info['index_build_s']} s, snapshot {info['snapshot_bytes'] / MB:.0f} MB)",
              flush=True)

        def head() -> int:
            return head_when_up(db_url)

        server = Gunicorn(data_dir, server_env(db_url, redis.url, args.pin_kdf_n,
                                               args.snapshot_every), args.workers,
                          work / "gunicorn.log")
        report["server"] = {"command": shlex.join(server.cmd),
                            "ready_s": round(server.start(head), 2)}
        print(f"server: {args.workers} workers ready in {report['server']['ready_s']} s",
              flush=True)
        common = {"weights": weights, "batch": args.batch, "image_size": image_size,
                  "seed": args.seed + 11}
        # --- capacity
        capacity = args.capacity
        if not capacity:
            steps = [int(s) for s in args.probe_steps.split(",")]
            run = LoadRun(work / "probe", load_config(
                server, info, data_dir, users=0, rate_per_user=0, duration_s=0, steps=steps,
                step_s=args.probe_step_s, **common)).start()
            try:
                run.wait(len(steps) * args.probe_step_s + 300)
            finally:
                run.stop()
            probe = run.summary().get("probe") or []
            if not probe:
                raise RuntimeError(f"capacity probe failed:\n{run.log_tail()}")
            best = max(probe, key=lambda s: s["answered_per_s"])
            capacity = best["answered_per_s"]
            report["probe"] = {"steps": [{k: v for k, v in s.items() if k not in ("t0", "t1")}
                                         for s in probe],
                               "capacity_per_s": capacity, "users_at_capacity": best["users"],
                               "summary": summarise(run.records()),
                               "ledger": check_ledger(db_url, run.ledger())}
            cap_users = int(best["users"])
        else:
            cap_users = max(2, args.workers)
            report["probe"] = {"capacity_per_s": capacity, "given": True}
        target = args.load_share * capacity
        # Twice the users that reached capacity, each at its share of the target: a user
        # whose request took longer than its interval starts the next at once but cannot
        # catch up.
        users = max(4, 2 * cap_users)
        load_kwargs = {"users": users, "rate_per_user": target / users, **common}
        report["load"] = {"target_per_s": round(target, 2), "users": users,
                          "rate_per_user": round(target / users, 4),
                          "share_of_capacity": args.load_share}
        print(f"capacity {capacity:.1f} requests/s; load {target:.1f}/s from {users} users",
              flush=True)
        # --- soak
        if args.duration > 0:
            report["soak"] = soak(server, info, data_dir, db_url, work, args, load_kwargs, out)
            write(out, report)
        # --- faults
        if args.faults:
            server.stop()
            bench = fault_server(pg, redis, db_url, data_dir, info, work, args.workers,
                                 args.pin_kdf_n, args.fault_snapshot_every)
            bench.load = {**load_kwargs, "duration_s": 0}
            bench.hold_s = {"restart_postgres": args.pg_down_s, "redis_outage": args.redis_down_s,
                            "db_lock": args.lock_s, "snapshot_readonly": args.snapshot_fault_s,
                            "snapshot_full": args.snapshot_fault_s}
            # The follower retries with a pause growing to 10 s: watch /readyz that long after.
            bench.tail_s = {"snapshot_readonly": args.snapshot_tail_s,
                            "snapshot_full": args.snapshot_tail_s,
                            "restart_postgres": args.pg_tail_s}
            chosen = [f for f in (args.only_faults.split(",") if args.only_faults else FAULTS)]
            try:
                report["faults"] = faults(bench, chosen, out, args)
                bench.server.stop()
                # A fresh process from the snapshot the workers wrote through the faults (the
                # tmpfs is still mounted) plus the log tail, against the database.
                report["faults"]["index_verify"] = verify_index(
                    db_url, bench.snapshots.path.parent, args.pin_kdf_n)
            finally:
                bench.close()
    finally:
        report["elapsed_s"] = round(time.time() - started, 1)
        write(out, report)
        if server is not None:
            server.stop()
        if redis is not None:
            redis.close()
        if pg is not None:
            pg.close()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print_summary(report)
    print(f"wrote {out}")
    bad = (report.get("soak", {}).get("verdict", {}).get("ok") is False
           or report.get("faults", {}).get("ok") is False)
    return 1 if bad else 0


def write(out: Path, report: dict[str, Any]) -> None:
    out.write_text(json.dumps(report, indent=1, default=str) + "\n")


def soak(server: Gunicorn, info: dict[str, Any], data_dir: Path, db_url: str, work: Path,
         args: argparse.Namespace, load_kwargs: dict[str, Any], out: Path) -> dict[str, Any]:
    """The mix at the target rate for ``--duration`` s; RSS sampled; acknowledged writes checked."""
    bh = bench_http()
    config = load_config(server, info, data_dir, duration_s=args.duration, **load_kwargs)
    run = LoadRun(work / "soak", config)
    pids0 = server.worker_pids()
    cpu0 = bh.cpu_seconds(pids0)
    rate = load_kwargs["users"] * load_kwargs["rate_per_user"]
    print(f"soak: {args.duration:.0f} s at {rate:.1f} requests/s", flush=True)
    with RssSampler(server, args.rss_every) as rss:
        t0 = time.time()
        run.start()
        try:
            run.wait(args.duration + 300)
        finally:
            run.stop()  # (already ended, unless interrupted)
        t1 = time.time()
    pids1 = server.worker_pids()
    server_cpu = bh.cpu_seconds(pids1) - cpu0 if pids1 == pids0 else None
    caught = wait_caught_up(server, lambda: head_when_up(db_url), 300)
    records, ledger = run.records(), run.ledger()
    summary = summarise(records)
    memory = rss_report(rss.samples, t0, t1)
    checked = check_ledger(db_url, ledger)
    mid = t0 + (t1 - t0) / 2
    added = sum(e["signals"] for e in ledger if e["op"] == "submit" and e["t"] >= mid)
    per_min = added / ((t1 - mid) / 60) if t1 > mid else 0.0
    memory["signals_added_per_min_second_half"] = round(per_min, 1)
    memory["expected_index_growth_mb_per_min"] = round(per_min * 72 / MB, 3)
    memory["note"] = ("Every worker holds the whole index, so each grows with the registry: "
                      "expected_index_growth is the signals acknowledged per minute over the "
                      "second half times ~72 bytes (deploy.md: a PDQ hash in the multi-index).")
    elapsed = t1 - t0
    slope = memory["floor_slope_mb_per_min"]["max"]
    # A leak: the RSS floor of some worker rising by more than 1 MB/min beyond what the index
    # growth explains. Judged only on a second half of 2 minutes or more.
    judged = memory["second_half_s"] >= 120 and slope is not None
    verdict = {"errors": summary["requests"] - summary["ok"],
               "status_500": summary["status_500"], "missing_writes": checked["missing"],
               "caught_up_after": caught["s"],
               "max_rss_floor_slope_mb_per_min": slope,
               "leak_suspected": (slope > 1.0 + memory["expected_index_growth_mb_per_min"])
               if judged else None}
    verdict["ok"] = (verdict["errors"] == 0 and checked["missing"] == 0
                     and caught["s"] is not None and verdict["leak_suspected"] is not True)
    bin_s = args.bin_s or max(5.0, round(elapsed / 120))
    png = out.with_suffix(".png")
    plot(png, f"soak: {info['hashes']:,} images, {server.workers} workers, "
         f"{load_kwargs['users']} users at {load_kwargs['rate_per_user']:.2f}/s each, "
         f"{elapsed:.0f} s", records, rss.samples, t0, bin_s)
    child = run.summary()
    return {"duration_s": round(elapsed, 1),
            "target_per_s": round(load_kwargs["users"] * load_kwargs["rate_per_user"], 2),
            "achieved_per_s": summary["answered_per_s"], "summary": summary, "ledger": checked,
            "memory": memory, "verdict": verdict, "caught_up": caught,
            "server_cpu_s": None if server_cpu is None else round(server_cpu, 1),
            "client_cpu_s": child.get("client_cpu_s"),
            "timeline_bin_s": bin_s, "timeline": timeline(records, t0, bin_s),
            "rss_samples": [[round(t - t0, 1), pid, kb, anon] for t, pid, kb, anon in rss.samples],
            "plot": os.path.relpath(png, ROOT) if str(png).startswith(str(ROOT)) else str(png)}


ALLOWED = {  # errors a fault may cause (anything else is unexpected)
    "kill_worker": ("no answer:",),  # the requests the killed worker had taken
    "restart_postgres": ("503 unavailable", "503 html"),  # the documented answers while down
}
SERVES_THROUGH = ("redis_outage", "snapshot_readonly", "snapshot_full")  # must stay ready


def judge(report: dict[str, Any]) -> dict[str, Any]:
    """Which of the fault's observations break the rules (empty: passed)."""
    fault = report["fault"]
    allowed = ALLOWED.get(fault, ())
    unexpected = {k: v for k, v in report["errors_by_kind"].items()
                  if not any(k.split(": ", 1)[1].startswith(a) for a in allowed)}
    problems: dict[str, Any] = {}
    if unexpected:
        problems["unexpected_errors"] = unexpected
    if report["status_500"] or report["whole_run"]["status_500"]:
        problems["status_500"] = report["whole_run"]["status_500"]
    if report["errors_before_fault"]:
        problems["errors_before_the_fault"] = report["errors_before_fault"]
    if report["timeouts"]:
        problems["timeouts"] = report["timeouts"]
    if report["missing"]:
        problems["missing_writes"] = report["missing"]
    if not report["caught_up"]:
        problems["not_caught_up"] = report["not_caught_up"]
    if fault == "restart_postgres" and not report["readyz_during_fault"]["not_ready"]:
        problems["readyz_never_503_while_database_down"] = report["readyz_during_fault"]
    if fault in SERVES_THROUGH and (report["readyz_during_fault"]["not_ready"]
                                    or report["readyz_after_fault"]["not_ready"]):
        problems["readyz_503_while_serving"] = {"during": report["readyz_during_fault"],
                                                "after": report["readyz_after_fault"]}
    return problems


def faults(bench: FaultBench, chosen: list[str], out: Path, args: argparse.Namespace
           ) -> dict[str, Any]:
    reports: list[dict[str, Any]] = []
    records: list[Record] = []
    spans: list[tuple[float, float, str]] = []
    with RssSampler(bench.server, 1.0) as rss:
        t0 = time.time()
        for name in chosen:
            print(f"fault: {name}", flush=True)
            try:
                report = bench.run(name)
            except Unsupported as e:
                reports.append({"fault": name, "skipped": str(e)})
                print(f"  skipped: {e}", flush=True)
                continue
            finally:
                bench.pg.ensure_running()  # whatever happened, the services are up again
                bench.redis.ensure_running()
            report["problems"] = judge(report)
            reports.append(report)
            records += bench.last_records
            spans.append((report["t_start"], report["t_healed"], name))
            print(f"  {report['requests']} requests, 500s {report['status_500']}, no answer "
                  f"{report['no_answer']}, acknowledged {report['ledger']['checked']} checked, "
                  f"missing {report['missing']}, recovered in {report['recover_s']} s; "
                  f"problems: {report['problems'] or 'none'}", flush=True)
        t1 = time.time()
    png = out.with_name(out.stem + "-faults.png")
    plot(png, "faults under load: " + ", ".join(n for *_, n in spans), records, rss.samples,
         t0, 2.0, spans)
    ok = all(not r.get("problems") for r in reports if "skipped" not in r)
    return {"ok": ok, "faults": reports, "elapsed_s": round(t1 - t0, 1),
            "memory": rss_report(rss.samples, t0, t1),
            "plot": os.path.relpath(png, ROOT) if str(png).startswith(str(ROOT)) else str(png)}


def print_summary(report: dict[str, Any]) -> None:
    probe = report.get("probe") or {}
    if probe.get("steps"):
        print("\ncapacity probe (closed-loop users, answered requests/s):")
        for s in probe["steps"]:
            print(f"  {s['users']:>3} users  {s['answered_per_s']:>8.1f}/s  p50 "
                  f"{s['latency_ms']['p50']} ms  p99 {s['latency_ms']['p99']} ms  errors "
                  f"{s['errors']}")
    if "soak" in report:
        s = report["soak"]
        print(f"\nsoak: {s['duration_s']} s, {s['summary']['requests']} requests, "
              f"{s['summary']['answered_per_s']}/s; errors {s['verdict']['errors']}, "
              f"500s {s['verdict']['status_500']}; acknowledged writes {s['ledger']['checked']}, "
              f"missing {s['ledger']['missing']}")
        print(f"{'type':<14}{'requests':>9}{'ok':>8}{'p50 ms':>9}{'p99 ms':>9}  errors")
        for name, t in s["summary"]["per_type"].items():
            lat = t["latency_ms"]
            print(f"{name:<14}{t['requests']:>9}{t['ok']:>8}{lat['p50'] or 0:>9}"
                  f"{lat['p99'] or 0:>9}  {t['errors'] or ''}{t['failed_checks'] or ''}")
        m = s["memory"]
        print(f"RSS over the second half ({m['second_half_s']} s), MB/min: floor slope max "
              f"{m['floor_slope_mb_per_min']['max']}, mean {m['floor_slope_mb_per_min']['mean']}"
              f"; all samples max {m['slope_mb_per_min']['max']} (index growth expected "
              f"{m['expected_index_growth_mb_per_min']}); leak suspected: "
              f"{s['verdict']['leak_suspected']} (None: too short to judge)")
    if "faults" in report:
        print("\nfaults:")
        for r in report["faults"]["faults"]:
            if "skipped" in r:
                print(f"  {r['fault']:<18} skipped: {r['skipped']}")
                continue
            print(f"  {r['fault']:<18} requests {r['requests']:>5}  500s {r['status_500']}  "
                  f"no answer {r['no_answer']}  readyz 503 during "
                  f"{r['readyz_during_fault']['not_ready']}"
                  f"  writes checked {r['ledger']['checked']} missing {r['missing']}  recovered "
                  f"{r['recover_s']} s  {'OK' if not r['problems'] else r['problems']}")
        v = report["faults"].get("index_verify")
        if v:
            print(f"  index verify after the faults: ok={v['ok']} at {v['position']}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        sys.exit(child_main(sys.argv[2]))
    sys.exit(main())

"""The production shape against the real thing: ``takedown serve --workers 4`` (gunicorn) on a
fresh PostgreSQL database, driven from other processes the way operators and platforms drive it.

1. A case submitted with ``takedown submit`` reaches every worker's index (each worker is told
   apart by the ``process`` field of ``/readyz``) and matches through the API; withdrawn with
   ``takedown case withdraw``, it leaves every worker's index and stops matching.
2. ``kill -9`` of a worker in the middle of matching, feedback and submissions loses nothing that
   was acknowledged, and gunicorn's replacement worker becomes ready.
3. A PostgreSQL restart in the middle of matching answers only 200 or the documented JSON 503
   (``unavailable``, no database details), never a 500 or a hang; afterwards every worker is
   ready again, its follower listening again.

The visibility times are printed (``pytest -s``), never asserted: only a generous bound guards
against hangs. Everything runs in temporary folders; every process started here is stopped.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from registry.bootstrap import build_registry
from registry.config import Settings
from registry.domain import Scope
from registry.service import Registry
from tests.conftest import FAST_KDF, encode, photo, unavailable
from tests.test_serve import free_port

ROOT = Path(__file__).resolve().parent.parent
WORKERS = 4
HANG_GUARD_S = 10.0  # a change must reach every worker well within this (goal: 1 s; not asserted)
REQUEST_TIMEOUT_S = 15.0  # no request may take longer, even while PostgreSQL restarts
RECOVERY_S = 30.0  # after a worker kill or a database restart, every worker is ready within this
PG_CLUSTER = ("15", "main")


# --- HTTP ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Answer:
    status: int | None  # None: no HTTP answer (connection refused or reset, or a timeout)
    body: Any = None
    error: str = ""
    seconds: float = 0.0
    timed_out: bool = False
    arrived: float = 0.0  # time.monotonic() when the answer was read


def call(port: int, method: str, path: str, body: object = None, key: str | None = None,
         timeout: float = REQUEST_TIMEOUT_S) -> Answer:
    """One request on a fresh connection; a missing answer is returned, not raised."""
    headers = {"Content-Type": "application/json"} if body is not None else {}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    started = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, None if body is None else json.dumps(body), headers)
        response = conn.getresponse()
        raw = response.read()
    except TimeoutError:
        return Answer(None, error=f"{method} {path}: no answer within {timeout} s",
                      seconds=time.monotonic() - started, timed_out=True)
    except (OSError, http.client.HTTPException) as e:
        return Answer(None, error=repr(e), seconds=time.monotonic() - started)
    finally:
        conn.close()
    try:
        parsed: Any = json.loads(raw)
    except ValueError:
        parsed = raw.decode(errors="replace")
    now = time.monotonic()
    return Answer(response.status, parsed, seconds=now - started, arrived=now)


def is_spec_error(answer: Answer, status: int) -> bool:
    """``{"error": {"code": "<snake_case>", "message": "<sentence>"}}`` with that status."""
    body = answer.body
    return (answer.status == status and isinstance(body, dict) and set(body) == {"error"}
            and isinstance(body["error"], dict) and set(body["error"]) == {"code", "message"}
            and isinstance(body["error"]["code"], str)
            and re.fullmatch(r"[a-z]+(_[a-z]+)*", body["error"]["code"]) is not None
            and isinstance(body["error"]["message"], str) and bool(body["error"]["message"]))


def match_body(pdq: str, ref: str = "copy") -> dict[str, object]:
    return {"queries": [{"id": ref, "signals": {"pdq": pdq}}]}


# --- behind a reverse proxy ----------------------------------------------------------------------
@pytest.mark.parametrize("hops", [0, 1])
def test_per_address_limits_see_the_client_behind_the_proxy(tmp_path: Path, hops: int) -> None:
    """docs/deploy.md: nginx appends the client to X-Forwarded-For; with TAKEDOWN_PROXY_HOPS=1 the
    limits per client address apply per client, with 0 to everyone behind the proxy at once."""
    from registry.web import create_app

    settings = Settings.from_env({}, data_dir=str(tmp_path / "data"), pin_kdf_n=FAST_KDF,
                                 proxy_hops=hops, auth_failure_limit="2 per minute")
    registry = build_registry(settings)
    try:
        client = create_app(registry).test_client()

        def wrong_key(address: str) -> int:
            return client.post("/api/v1/match", json=match_body("a5" * 32),
                               headers={"Authorization": "Bearer trk_wrong",
                                        "X-Forwarded-For": address}).status_code

        assert [wrong_key("203.0.113.7") for _ in range(3)] == [401, 401, 429]
        assert wrong_key("198.51.100.9") == (401 if hops else 429)
    finally:
        registry.close()


def test_rate_limits_survive_a_redis_outage(tmp_path: Path) -> None:
    """Redis holds only rate-limit counters: while it is unreachable, each worker limits in its
    own memory (Flask-Limiter's fallback) instead of answering 500 to every API request."""
    from registry.web import create_app

    down = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    settings = Settings.from_env({}, data_dir=str(tmp_path / "data"), pin_kdf_n=FAST_KDF,
                                 redis_url=down, rate_limit="3 per minute")
    registry = build_registry(settings)
    try:
        _, key = registry.add_platform("shop", [Scope.MATCH])
        client = create_app(registry).test_client()
        answers = [client.post("/api/v1/match", json=match_body("a5" * 32),
                               headers={"Authorization": f"Bearer {key}"}) for _ in range(4)]
        assert [a.status_code for a in answers] == [200, 200, 200, 429]
        assert answers[-1].get_json()["error"]["code"] == "rate_limited"
    finally:
        registry.close()


def test_the_deployment_guide_names_real_settings_commands_and_limits() -> None:
    from registry.config import describe
    from tests.test_docs import COMMANDS

    guide = (ROOT / "docs" / "deploy.md").read_text()
    named = set(re.findall(r"TAKEDOWN_[A-Z_]+[A-Z]", guide))
    assert named <= {env for env, _, _ in describe()}, named
    commands = set(re.findall(r"`takedown ([a-z]+(?: [a-z]+)?)", guide))
    assert commands <= {" ".join(p) for p in COMMANDS} | {p[0] for p in COMMANDS}, commands
    # nginx lets the largest accepted upload through, and keeps it in memory (never a temp file).
    def mebibytes(directive: str) -> int:
        found = re.search(directive + r" (\d+)m;", guide)
        assert found, directive
        return int(found[1]) * 2**20

    body = mebibytes("client_max_body_size")
    assert body >= Settings().max_upload_bytes + 64 * 1024
    assert mebibytes("client_body_buffer_size") >= body


# --- the served registry -------------------------------------------------------------------------
class Cluster:
    """``takedown serve --workers 4`` on one PostgreSQL database, the ``takedown`` CLI on the
    same database (other processes), and an in-process registry for hashing and reading."""

    def __init__(self, pg_url: str, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.port = free_port()
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith("TAKEDOWN_") and k != "GUNICORN_CMD_ARGS"}
        self.env.update(TAKEDOWN_DATABASE_URL=pg_url, TAKEDOWN_DATA_DIR=str(tmp_path / "data"),
                        TAKEDOWN_SECRET_KEY="production-test-secret-" + "x" * 16,
                        TAKEDOWN_RATE_LIMIT="1000000 per minute",
                        TAKEDOWN_PIN_KDF_N=str(FAST_KDF),
                        # Workers write snapshots during the tests (a kill -9 may land mid-write).
                        TAKEDOWN_SNAPSHOT_EVERY="20")
        self.pg_url = pg_url
        self.registry: Registry
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = tmp_path / "gunicorn.log"
        self.key = ""

    # CLI, in its own process, on the same database and data folder as the server.
    def takedown(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "cli", *args], cwd=ROOT, env=self.env,
                              capture_output=True, text=True, timeout=timeout, check=False)

    def takedown_json(self, *args: str) -> dict[str, Any]:
        done = self.takedown(*args)
        assert done.returncode == 0, f"takedown {' '.join(args)}: {done.stderr}"
        result: dict[str, Any] = json.loads(done.stdout)
        return result

    def takedown_timed(self, *args: str) -> tuple[float, dict[str, Any]]:
        """Run a CLI command that prints one JSON line once its transaction has committed;
        return when (monotonic) that line arrived, and the line."""
        proc = subprocess.Popen([sys.executable, "-m", "cli", *args], cwd=ROOT,
                                env={**self.env, "PYTHONUNBUFFERED": "1"},  # printed at once
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            at = time.monotonic()
            _, err = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        assert proc.returncode == 0 and line, f"takedown {' '.join(args)}: {err}"
        return at, json.loads(line)

    def start(self) -> None:
        assert self.takedown_json("db", "upgrade", "--json")["revision"]
        self.registry = build_registry(
            Settings.from_env({}, database_url=self.pg_url, data_dir=str(self.tmp / "reader"),
                              pin_kdf_n=FAST_KDF), load_index=False)
        self.key = self.takedown_json("platform", "add", "shop", "--json")["key"]
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "cli", "serve", "--workers", str(WORKERS),
                 "--port", str(self.port)],
                cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        self.sweep(lambda status, state: status == 200 and state["ready"] is True,
                   60.0, "every worker ready after start")

    def stop(self) -> None:
        """SIGTERM the process group (gunicorn stops its workers), SIGKILL what is left."""
        if self.proc is not None:
            pgid = self.proc.pid
            if self.proc.poll() is None:
                os.killpg(pgid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(pgid, signal.SIGKILL)
                self.proc.wait()
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:  # workers orphaned by a dead master, if any
                try:
                    os.killpg(pgid, signal.SIGKILL)
                except ProcessLookupError:
                    break
                time.sleep(0.05)
            self.proc = None
        if hasattr(self, "registry"):
            self.registry.close()

    def workers(self) -> set[int]:
        """The master's children: the gunicorn workers now running."""
        assert self.proc is not None
        if self.proc.poll() is not None:
            pytest.fail(f"gunicorn exited with {self.proc.returncode}:\n{self.log_tail()}")
        master = self.proc.pid
        try:
            text = Path(f"/proc/{master}/task/{master}/children").read_text()
        except OSError:
            return set()
        return {int(p) for p in text.split()}

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def head(self) -> int:
        with self.registry._store.transaction(write=False) as tx:
            return tx.changes.head()

    def watch(self) -> Watch:
        return Watch(self)

    def sweep(self, done: Done, timeout: float, what: str) -> dict[int, tuple[float, State]]:
        """Poll /readyz until every current worker has answered ``done(status, state)``."""
        with self.watch() as watch:
            return watch.until(done, timeout, what)

    def match_burst(self, pdq: str, n: int = 2 * WORKERS) -> list[Answer]:
        with ThreadPoolExecutor(n) as pool:
            return list(pool.map(lambda _: call(self.port, "POST", "/api/v1/match",
                                                match_body(pdq), self.key), range(n)))


State = dict[str, Any]
Done = Callable[[int, State], bool]


class Watch:
    """/readyz polled from a background thread in back-to-back bursts, every answer kept with
    the time it arrived. Sync workers answer one request at a time, so bursts of concurrent requests
    reach every worker; the ``process`` field says which one answered."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.lock = threading.Lock()
        self.seen: list[tuple[float, int, State]] = []  # (arrived, status, state)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> Watch:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=30)

    def _poll(self) -> None:
        port, n = self.cluster.port, 2 * WORKERS
        with ThreadPoolExecutor(n) as pool:
            while not self.stop.is_set():
                for a in pool.map(lambda _: call(port, "GET", "/readyz", timeout=5), range(n)):
                    if a.status is not None and isinstance(a.body, dict) and "process" in a.body:
                        with self.lock:
                            self.seen.append((a.arrived, a.status, a.body))
                self.stop.wait(0.01)

    def until(self, done: Done, timeout: float, what: str) -> dict[int, tuple[float, State]]:
        """Wait until every current worker has answered with ``done(status, state)`` true;
        per worker pid: when the first such answer arrived (monotonic), and its state."""
        started = time.monotonic()
        while True:
            first: dict[int, tuple[float, State]] = {}
            last: dict[int, State] = {}
            with self.lock:
                seen = list(self.seen)
            for arrived, status, state in seen:
                pid = int(state["process"])
                last[pid] = {**state, "status": status}
                if pid not in first and done(status, state):
                    first[pid] = (arrived, state)
            current = self.cluster.workers()
            if len(current) == WORKERS and current <= first.keys():
                return {pid: first[pid] for pid in current}
            if time.monotonic() - started > timeout:
                pytest.fail(f"{what}: not every worker within {timeout} s; workers "
                            f"{sorted(current)}, done {sorted(first)}, last seen "
                            f"{json.dumps(last, indent=1)}\n{self.cluster.log_tail()}")
            time.sleep(0.02)


@pytest.fixture
def cluster(pg_url: str, tmp_path: Path) -> Iterator[Cluster]:
    served = Cluster(pg_url, tmp_path)
    try:
        served.start()
        yield served
    finally:
        served.stop()  # before pg_url drops the database


def image_pair(folder: Path, seed: int) -> tuple[Path, bytes]:
    """An original written to a file (for ``takedown submit``) and a transformed copy's bytes
    (half size, JPEG quality 50)."""
    picture = photo(seed, (1000, 750))
    original = folder / f"original-{seed}.jpg"
    original.write_bytes(encode(picture, quality=92))
    return original, encode(picture.resize((500, 375)), quality=50)


# --- 1. a change reaches every worker ----------------------------------------------------------
@pytest.mark.services
@pytest.mark.slow
def test_a_submission_and_a_withdrawal_reach_every_worker(cluster: Cluster, tmp_path: Path
                                                          ) -> None:
    original, copy = image_pair(tmp_path, 601)
    pdq = cluster.registry.hash_image(copy).pdq.hex
    before = cluster.head()
    assert all(a.status == 200 and a.body["results"][0]["matched"] is False
               for a in cluster.match_burst(pdq))

    # /readyz is polled all along (it never syncs the index itself: only the follower moves a
    # worker's position while no match request arrives).
    with cluster.watch() as watch:
        added_at, receipt = cluster.takedown_timed("submit", "--json", str(original))
        head = cluster.head()
        assert head >= before + receipt["signals"] > before
        seen = watch.until(lambda _, s: s["index_position"] >= head, HANG_GUARD_S,
                           "the submission in every worker's index")
    add_visible = {pid: at - added_at for pid, (at, _) in seen.items()}

    found = cluster.match_burst(pdq)
    assert all(a.status == 200 for a in found), [a.body for a in found]
    for answer in found:
        (result,) = answer.body["results"]
        assert result["matched"] is True and answer.body["index_version"] >= head
        assert {m["signal"] for m in result["matches"]} == {"pdq"}
        assert result["matches"][0]["tier"] in ("strong", "weak")

    with cluster.watch() as watch:
        withdrawn_at, view = cluster.takedown_timed("case", "withdraw", receipt["case"], "--yes",
                                                    "--json")
        assert view["status"] == "withdrawn"
        head_after = cluster.head()
        assert head_after > head
        seen = watch.until(lambda _, s: s["index_position"] >= head_after, HANG_GUARD_S,
                           "the withdrawal in every worker's index")
    withdraw_invisible = {pid: at - withdrawn_at for pid, (at, _) in seen.items()}

    gone = cluster.match_burst(pdq)
    assert all(a.status == 200 for a in gone), [a.body for a in gone]
    assert all(a.body["results"][0] == {"id": "copy", "matched": False, "matches": []}
               for a in gone)
    print(f"\n{WORKERS} workers; add-to-visible (s, until the first /readyz answer showing it): "
          f"{_times(add_visible)}; withdraw-to-invisible: {_times(withdraw_invisible)}")


def _times(per_worker: dict[int, float]) -> str:
    values = sorted(per_worker.values())
    return f"max {values[-1]:.3f}, per worker " + ", ".join(f"{v:.3f}" for v in values)


# --- 2. kill -9 a worker mid-load ----------------------------------------------------------------
class Ledger:
    """What the server acknowledged (200 answers) and what it answered otherwise."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.matches: list[str] = []  # match ids from 200 answers
        self.feedback: list[str] = []  # match ids whose feedback was answered 200
        self.unanswered: list[Answer] = []  # connection refused or reset: acknowledged nothing
        self.other: list[Answer] = []  # any other HTTP answer
        self.cases: list[dict[str, Any]] = []  # what `takedown submit --json` printed
        self.cli_failures: list[str] = []

    def count(self) -> int:
        with self.lock:
            return len(self.matches)


def match_and_report(cluster: Cluster, pdq: str, ledger: Ledger, stop: threading.Event,
                     client: int) -> None:
    n = 0
    while not stop.is_set():
        n += 1
        answer = call(cluster.port, "POST", "/api/v1/match", match_body(pdq, f"c{client}-{n}"),
                      cluster.key)
        if answer.status is None:
            with ledger.lock:
                ledger.unanswered.append(answer)
            continue
        if answer.status != 200 or not answer.body["results"][0]["matched"]:
            with ledger.lock:
                ledger.other.append(answer)
            continue
        ids = [m["match_id"] for m in answer.body["results"][0]["matches"]]
        with ledger.lock:
            ledger.matches.extend(ids)
        if n % 3 == 0:  # leave some acknowledged matches without feedback, to check afterwards
            continue
        sent = call(cluster.port, "POST", "/api/v1/feedback",
                    {"match_id": ids[0], "outcome": "removed"}, cluster.key)
        with ledger.lock:
            if sent.status == 200 and sent.body.get("recorded") is True:
                ledger.feedback.append(ids[0])
            elif sent.status is None:
                ledger.unanswered.append(sent)
            else:
                ledger.other.append(sent)


def submit_cases(cluster: Cluster, files: list[Path], ledger: Ledger) -> None:
    for path in files:
        done = cluster.takedown("submit", "--json", str(path))
        with ledger.lock:
            if done.returncode == 0:
                ledger.cases.append(json.loads(done.stdout))
            else:
                ledger.cli_failures.append(done.stderr)


@pytest.mark.services
@pytest.mark.slow
def test_kill_9_of_a_worker_mid_load_loses_nothing_acknowledged(cluster: Cluster,
                                                                 tmp_path: Path) -> None:
    original, copy = image_pair(tmp_path, 611)
    pdq = cluster.registry.hash_image(copy).pdq.hex
    cluster.takedown_json("submit", "--json", str(original))
    files = [image_pair(tmp_path, seed)[0] for seed in range(621, 625)]

    ledger, stop = Ledger(), threading.Event()
    clients = [threading.Thread(target=match_and_report, args=(cluster, pdq, ledger, stop, i))
               for i in range(3)]
    submitters = [threading.Thread(target=submit_cases, args=(cluster, files[i::2], ledger))
                  for i in range(2)]
    for t in clients + submitters:
        t.start()
    try:
        _await(lambda: ledger.count() >= 10, 30, "10 acknowledged matches before the kill")
        victim = min(cluster.workers())
        os.kill(victim, signal.SIGKILL)
        killed_at = ledger.count()
        _await(lambda: ledger.count() >= killed_at + 20, 60, "20 more matches after the kill")
        for t in submitters:
            t.join(timeout=180)
    finally:
        stop.set()
        for t in clients + submitters:
            t.join(timeout=60)
    assert not any(t.is_alive() for t in clients + submitters)

    # gunicorn replaced the killed worker, and the replacement is ready.
    seen = cluster.sweep(lambda status, s: status == 200 and s["ready"] is True, RECOVERY_S,
                         "every worker ready after the kill")
    assert victim not in seen and len(seen) == WORKERS

    assert not ledger.cli_failures, ledger.cli_failures
    assert [(a.status, a.body) for a in ledger.other] == [], "answers other than 200"
    assert [a.error for a in ledger.unanswered if a.timed_out] == [], "requests that hung"
    assert len(ledger.cases) == len(files)
    print(f"\nkill -9 of worker {victim} mid-load: {len(ledger.matches)} match ids and "
          f"{len(ledger.feedback)} feedback reports acknowledged, {len(ledger.cases)} cases "
          f"submitted, {len(ledger.unanswered)} requests unanswered")

    # Every acknowledged write is in the database.
    store = cluster.registry._store
    with store.transaction(write=False) as tx:
        for match_id in ledger.feedback:
            assert tx.matches.get(match_id) is not None, match_id
            assert tx.matches.has_feedback(match_id, "removed"), match_id
        for receipt in ledger.cases:
            case = tx.cases.get(receipt["case"])
            assert case is not None and case.status.value == "active", receipt
            counts = tx.signals.count_by_case(case.id)
            assert sum(counts.values()) == receipt["signals"] and counts.get("pdq"), counts
        events, broken = tx.audit.verify()
        assert broken is None and events > len(ledger.feedback)
    # Every acknowledged match id takes feedback (any worker: the match was committed).
    pending = sorted(set(ledger.matches) - set(ledger.feedback))
    assert pending
    with ThreadPoolExecutor(2 * WORKERS) as pool:
        answers = list(pool.map(lambda mid: call(cluster.port, "POST", "/api/v1/feedback",
                                                 {"match_id": mid, "outcome": "removed"},
                                                 cluster.key), pending))
    assert [(mid, a.status, a.body) for mid, a in zip(pending, answers, strict=True)
            if a.status != 200] == []

    # A fresh process (the workers' snapshot in the shared data folder + the log tail) agrees
    # with the database, and every submitted image matches.
    verified = cluster.takedown("index", "verify", "--json")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    report = json.loads(verified.stdout)
    assert report["ok"] is True and report["position"] == cluster.head()
    for path in files:
        copy_pdq = cluster.registry.hash_image(path.read_bytes()).pdq.hex
        answer = call(cluster.port, "POST", "/api/v1/match", match_body(copy_pdq), cluster.key)
        assert answer.status == 200 and answer.body["results"][0]["matched"] is True


def _await(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout} s")
        time.sleep(0.05)


# --- 3. the database goes away ------------------------------------------------------------------
def assert_documented_503(refused: list[Answer]) -> None:
    """docs/api.md: 503 ``unavailable``, retry with backoff; the database's own error (its
    address, its state) is for the operator's log, not for platforms."""
    for answer in refused:
        assert answer.body["error"]["code"] == "unavailable", answer.body
        message = answer.body["error"]["message"]
        assert "5432" not in message and "127.0.0.1" not in message, message


def test_an_unreachable_database_answers_the_documented_503(registry: Registry,
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    """The same answer without a server: what a platform sees while the database is down."""
    from registry.errors import StorageUnavailable
    from registry.web import create_app

    _, key = registry.add_platform("shop", [Scope.MATCH])

    def down(*args: object, **kwargs: object) -> None:
        raise StorageUnavailable("The database is unavailable: connection to server at "
                                 '"127.0.0.1", port 5432 failed: Connection refused')

    monkeypatch.setattr(registry, "match", down)
    client = create_app(registry).test_client()
    response = client.post("/api/v1/match", json=match_body("a5" * 32),
                           headers={"Authorization": f"Bearer {key}"})
    answer = Answer(response.status_code, response.get_json())
    assert is_spec_error(answer, 503)
    assert_documented_503([answer])


def cluster_state() -> str:
    done = subprocess.run(["pg_lsclusters", "--no-header"], capture_output=True, text=True,
                          check=False, timeout=30)
    for line in done.stdout.splitlines():
        fields = line.split()
        if fields[:2] == list(PG_CLUSTER):
            return fields[3]
    return "missing"


@pytest.fixture
def restartable_postgres() -> Iterator[None]:
    """The local cluster can be restarted (root, pg_ctlcluster); it is left running."""
    if os.geteuid() != 0:
        unavailable("PostgreSQL restart", "restarting the cluster needs root")
    if not (shutil.which("pg_ctlcluster") and shutil.which("pg_lsclusters")):
        unavailable("PostgreSQL restart", "pg_ctlcluster is not installed")
    if cluster_state() != "online":
        unavailable("PostgreSQL restart", f"cluster {' '.join(PG_CLUSTER)} is not online here")
    try:
        yield
    finally:
        if cluster_state() != "online":
            subprocess.run(["pg_ctlcluster", *PG_CLUSTER, "start"], check=False, timeout=120)


def match_through_outage(cluster: Cluster, pdq: str, answers: list[Answer],
                         stop: threading.Event) -> None:
    while not stop.is_set():
        answers.append(call(cluster.port, "POST", "/api/v1/match", match_body(pdq), cluster.key))


@pytest.mark.services
@pytest.mark.slow
def test_a_postgresql_restart_mid_load_recovers(restartable_postgres: None, cluster: Cluster,
                                                tmp_path: Path) -> None:
    original, copy = image_pair(tmp_path, 631)
    pdq = cluster.registry.hash_image(copy).pdq.hex
    cluster.takedown_json("submit", "--json", str(original))
    answers: list[list[Answer]] = [[] for _ in range(4)]
    stop = threading.Event()
    clients = [threading.Thread(target=match_through_outage, args=(cluster, pdq, a, stop))
               for a in answers]
    for t in clients:
        t.start()
    try:
        _await(lambda: sum(map(len, answers)) >= 20, 30, "20 answers before the restart")
        restarted = subprocess.run(["pg_ctlcluster", *PG_CLUSTER, "restart"],
                                   capture_output=True, text=True, check=False, timeout=120)
        assert restarted.returncode == 0, restarted.stderr
        after = [len(a) for a in answers]
        # Every client gets matches again (bounded: a client that never recovers fails here).
        _await(lambda: all(len(a) >= n + 5 and all(x.status == 200 for x in a[-5:])
                           for a, n in zip(answers, after, strict=True)),
               RECOVERY_S, "five matches in a row for every client after the restart")
    finally:
        stop.set()
        for t in clients:
            t.join(timeout=60)

    every = [a for client in answers for a in client]
    refused = [a for a in every if a.status != 200]
    wrong = [(a.status, a.body, a.error) for a in refused if not is_spec_error(a, 503)]
    assert wrong == [], "during the restart: answers other than 200 or the JSON 503 error"
    assert refused, "the restart refused nothing: it did not land mid-load"
    assert_documented_503(refused)
    assert all(a.body["results"][0]["matched"] is True for a in every if a.status == 200)
    print(f"\nPostgreSQL restart mid-load: {len(every)} match requests, {len(refused)} answered "
          f"503 ({sorted({a.body['error']['code'] for a in refused})}), slowest "
          f"{max(a.seconds for a in every):.2f} s")

    # Every worker is ready again; its follower saw the outage and syncs again.
    seen = cluster.sweep(lambda status, s: status == 200 and s["ready"] is True
                         and s["follower"]["running"] is True and s["follower"]["errors"] > 0,
                         RECOVERY_S, "every worker ready, its follower recovered")
    for _, state in seen.values():
        assert state["follower"]["last_sync_age_s"] <= 5.0
    notified = {pid: state["follower"]["notifications"] for pid, (_, state) in seen.items()}

    # A change made now reaches every worker by notification: LISTEN was re-established.
    # (Nothing sends matches meanwhile, so only the follower can move a worker's position.)
    later, later_copy = image_pair(tmp_path, 632)
    with cluster.watch() as watch:
        added_at, _ = cluster.takedown_timed("submit", "--json", str(later))
        head = cluster.head()
        seen = watch.until(lambda _, s: s["index_position"] >= head
                           and s["follower"]["notifications"] > notified.get(s["process"], 0),
                           HANG_GUARD_S, "a change after the restart, notified to every worker")
    assert seen.keys() == notified.keys()
    visible = {pid: at - added_at for pid, (at, _) in seen.items()}
    print(f"after the restart, add-to-visible (s): {_times(visible)}")
    later_pdq = cluster.registry.hash_image(later_copy).pdq.hex
    found = cluster.match_burst(later_pdq)
    assert all(a.status == 200 and a.body["results"][0]["matched"] is True for a in found)

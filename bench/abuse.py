#!/usr/bin/env python3
"""Abuse benchmark: oversized and slow clients against gunicorn alone and behind the nginx
configuration of docs/deploy.md, and what a platform's rate limit allows through /match.

What it does, in order:

1. **Data**: a fresh SQLite registry in a temporary folder; one generated photo registered as a
   case (so a legitimate query has something to match), platform keys ``legit`` and
   ``attacker`` (scope ``match``).
2. **Servers**, fresh for every scenario: ``gunicorn 'registry.web.wsgi:create()' --workers 2
   --timeout 120 --graceful-timeout 10`` (what ``takedown serve --workers 2`` runs) with
   ``TAKEDOWN_PROXY_HOPS=1``, and for the ``nginx`` front nginx with the ``nginx`` block of
   docs/deploy.md, taken from the file, with only what a test machine needs changed: plain
   HTTP on a free port instead of TLS on 443, the upstream port, log and temporary paths, and
   the port-80 redirect server left out (each change is listed in the JSON). Its
   ``nginx.conf`` sets what deploy.md recommends (``worker_connections 4096``).
3. **A legitimate client** (source address 127.0.0.2) sends one matching ``POST /api/v1/match``
   every 0.5 s on a fresh connection with a 10 s timeout, before (3 s), during (``--seconds``)
   and after (5 s) each attack; a request counts as served when it answers 200 with the match.
4. **Attacks**, from 127.0.0.3 (a different address, as a real attacker's would be):
   ``oversize_declared`` (25 MB upload bodies with their Content-Length), ``oversize_chunked``
   (the same, chunked, no length), ``slowloris`` (``--slowloris`` connections sending request
   headers one byte every 3 s, reconnecting when closed), ``slow_body`` (``--slow-bodies``
   uploads declaring 20 MiB and sending one byte every 3 s) and ``held_uploads`` (uploads that
   send all but 100 bytes of 20 MiB at once, then one byte every 3 s: what held bodies cost in
   memory). The attacker's answers (status, resets, how long a connection was held) are
   counted; the servers' resident memory is sampled.
5. **Refusals one by one**: single bodies over the limits (just over the app's, and 25 MB;
   declared and chunked) and whether the client reads a JSON 413 or a reset; through nginx,
   /metrics and /readyz asked for in disguise from an address outside the allowed ones.
6. **Enumeration arithmetic** from the settings: queries a platform may send per day and the
   share of PDQ and pHash space they probe (no server involved).

    .venv/bin/python bench/abuse.py                  # ~6 min; needs nginx (apt-get install nginx)
    .venv/bin/python bench/abuse.py --quick          # short attacks (smoke run)
    .venv/bin/python bench/abuse.py --fronts gunicorn --attacks slowloris

Results go to ``bench/results/abuse.json`` (``--out``); the table is printed. Everything runs on
this machine's loopback, so clients and servers share its CPUs.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import argparse  # noqa: E402
import contextlib  # noqa: E402
import errno  # noqa: E402
import http.client  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import selectors  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from collections import Counter  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from typing import Any  # noqa: E402

from bench.common import free_port, worker_pids  # noqa: E402

HOST = "127.0.0.1"
LEGIT_ADDR = "127.0.0.2"
ATTACK_ADDR = "127.0.0.3"
DEPLOY_MD = ROOT / "docs" / "deploy.md"
OVERSIZE = 25_000_000  # the docs' own example of a body over the limit (docs/api.md)
WORKERS = 2


# --- the documented nginx configuration --------------------------------------------------------
def documented_nginx(text: str | None = None) -> str:
    """The ``nginx`` code block of docs/deploy.md that proxies to the app."""
    text = DEPLOY_MD.read_text() if text is None else text
    blocks = re.findall(r"```nginx\n(.*?)```", text, re.S)
    found = [b for b in blocks if "proxy_pass" in b]
    if len(found) != 1:
        raise RuntimeError(f"docs/deploy.md: expected one nginx block with proxy_pass, got "
                           f"{len(found)}")
    return found[0]


def documented_main_context(text: str | None = None) -> str:
    """The nginx.conf lines docs/deploy.md recommends (the block with ``events``)."""
    text = DEPLOY_MD.read_text() if text is None else text
    blocks = [b for b in re.findall(r"```nginx\n(.*?)```", text, re.S) if "events" in b]
    return blocks[0] if blocks else "events { worker_connections 768; }\n"


def _sub(text: str, pattern: str, repl: str, what: str, changes: list[str],
         flags: int = 0) -> str:
    new, n = re.subn(pattern, repl, text, flags=flags)
    if not n:
        raise RuntimeError(f"docs/deploy.md nginx block changed: cannot {what}")
    changes.append(what)
    return new


def local_site(upstream_port: int, listen_port: int, folder: Path,
              tls: tuple[Path, Path] | None = None) -> tuple[str, list[str]]:
    """The documented server block, changed only where a test machine must differ. With
    ``tls`` (certificate, key) the TLS lines stay and only the certificate paths change."""
    site, changes = documented_nginx(), []
    site = _sub(site, r"\nserver \{\s+# plain HTTP only redirects.*?\n\}\n", "\n",
                "leave out the port-80 redirect server", changes, re.S)
    if tls is None:
        site = _sub(site, r"listen 443 ssl[^;]*;[^\n]*\n(\s*#[^\n]*\n)*",
                    f"listen {HOST}:{listen_port};\n",
                    f"listen on plain HTTP {HOST}:{listen_port} instead of TLS on 443", changes)
        site = _sub(site, r"\n\s*ssl_[a-z_]+ [^;]*;", "", "drop the ssl_* lines", changes)
        site = _sub(site, r"\n\s*add_header Strict-Transport-Security[^;]*;", "",
                    "drop the HSTS header (no TLS)", changes)
    else:
        site = _sub(site, r"listen 443 ssl", f"listen {HOST}:{listen_port} ssl",
                    f"listen on {HOST}:{listen_port}", changes)
        site = _sub(site, r"ssl_certificate +\S+;", f"ssl_certificate {tls[0]};",
                    "use a self-signed certificate", changes)
        site = _sub(site, r"ssl_certificate_key +\S+;", f"ssl_certificate_key {tls[1]};",
                    "use its key", changes)
    site = _sub(site, r"proxy_pass http://127\.0\.0\.1:8000;",
                f"proxy_pass http://{HOST}:{upstream_port};",
                f"proxy to gunicorn on port {upstream_port}", changes)
    site = _sub(site, r"access_log /var/log/nginx/takedown\.log",
                f"access_log {folder / 'access.log'}", "write the access log to the test folder",
                changes)
    return site, changes


def nginx_conf(site: str, folder: Path) -> str:
    """A whole nginx.conf around ``site``: the main-context lines deploy.md recommends, temp
    paths in ``folder`` (the body folder must stay empty: bodies are kept in memory)."""
    for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
        (folder / sub).chmod(0o777)
    main = documented_main_context()
    return (f"worker_processes {WORKERS};\npid {folder / 'nginx.pid'};\n"
            f"error_log {folder / 'error.log'} warn;\n{main}\n"
            "http {\n"
            f"    client_body_temp_path {folder / 'client_body'};\n"
            f"    proxy_temp_path {folder / 'proxy'};\n"
            f"    fastcgi_temp_path {folder / 'fastcgi'};\n"
            f"    uwsgi_temp_path {folder / 'uwsgi'};\n"
            f"    scgi_temp_path {folder / 'scgi'};\n"
            f"{site}\n}}\n")


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None)


def nginx_check(conf_path: Path) -> subprocess.CompletedProcess[str]:
    binary = nginx_binary()
    assert binary, "nginx is not installed"
    return subprocess.run([binary, "-t", "-c", str(conf_path), "-p", str(conf_path.parent)],
                          capture_output=True, text=True, check=False)


# --- processes --------------------------------------------------------------------------------
def rss_bytes(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
    return total


class Process:
    """A server started in its own session (so it and its workers stop together)."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str] | None, log: Path) -> None:
        self.name, self.cmd, self.env, self.log = name, cmd, env, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        out = self.log.open("ab")
        self.proc = subprocess.Popen(self.cmd, cwd=ROOT, env=self.env, stdout=out,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        out.close()

    def pids(self) -> list[int]:
        return [self.proc.pid, *worker_pids(self.proc.pid)] if self.proc else []

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def gunicorn(data_dir: Path, port: int) -> Process:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("TAKEDOWN_") and k != "GUNICORN_CMD_ARGS"}
    env.update(TAKEDOWN_DATA_DIR=str(data_dir), TAKEDOWN_PROXY_HOPS="1")
    cmd = [str(Path(sys.executable).parent / "gunicorn"), "registry.web.wsgi:create()",
           "--workers", str(WORKERS), "--bind", f"{HOST}:{port}", "--timeout", "120",
           "--graceful-timeout", "10"]
    return Process("gunicorn", cmd, env, data_dir.parent / "gunicorn.log")


def nginx(conf_path: Path) -> Process:
    binary = nginx_binary()
    assert binary, "nginx is not installed"
    return Process("nginx", [binary, "-c", str(conf_path), "-p", str(conf_path.parent),
                             "-g", "daemon off;"], None, conf_path.parent / "stdout.log")


def wait_ready(port: int, proc: Process, timeout: float = 60.0, path: str = "/readyz") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited; see {proc.log}")
        with contextlib.suppress(OSError, http.client.HTTPException):
            conn = http.client.HTTPConnection(HOST, port, timeout=5)
            conn.request("GET", path)
            if conn.getresponse().status in (200, 403):
                conn.close()
                return
            conn.close()
        time.sleep(0.1)
    raise RuntimeError(f"{proc.name} not ready within {timeout:.0f} s; see {proc.log}")


# --- set-up -----------------------------------------------------------------------------------
@dataclass
class Setup:
    data_dir: Path
    legit_key: str
    attacker_key: str
    legit_body: bytes
    settings: dict[str, Any]


def photo_jpeg(seed: int) -> bytes:
    import numpy as np
    from PIL import Image, ImageFilter

    rng = np.random.default_rng(seed)
    small = Image.fromarray((rng.random((12, 16, 3)) * 255).astype(np.uint8))
    img = small.resize((640, 480), Image.Resampling.BICUBIC).filter(ImageFilter.GaussianBlur(2))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def setup(folder: Path) -> Setup:
    from registry.bootstrap import build_registry
    from registry.config import Settings
    from registry.domain import Scope
    from registry.service import SubmittedImage

    data_dir = folder / "data"
    settings = Settings.from_env({}, data_dir=str(data_dir))
    registry = build_registry(settings)
    try:
        data = photo_jpeg(7)
        registry.submit_case([SubmittedImage.from_image(
            registry.hash_image(data, registration=True))])
        _, legit = registry.add_platform("legit", [Scope.MATCH])
        _, attacker = registry.add_platform("attacker", [Scope.MATCH])
        image = registry.hash_image(data)
        body = json.dumps({"queries": [{"id": "probe", "signals": {
            "pdq": image.pdq.hex, "md5": image.md5.hex}}]}).encode()
    finally:
        registry.close()
    return Setup(data_dir, legit, attacker, body, {
        "max_upload_bytes": settings.max_upload_bytes,
        "max_content_length": settings.max_upload_bytes + 64 * 1024,
        "rate_limit": settings.rate_limit, "max_queries": settings.max_queries,
        "auth_failure_limit": settings.auth_failure_limit})


# --- clients ----------------------------------------------------------------------------------
def connect(port: int, source: str, timeout: float = 10.0) -> socket.socket:
    s = socket.socket()
    s.settimeout(timeout)
    s.bind((source, 0))
    s.connect((HOST, port))
    return s


def status_of(data: bytes) -> int | None:
    m = re.match(rb"HTTP/1\.[01] (\d{3})", data)
    return int(m[1]) if m else None


def read_answer(s: socket.socket, deadline: float) -> tuple[bytes, str | None]:
    """Whatever the server sends until it closes (or the answer is complete)."""
    data, error = b"", None
    while time.monotonic() < deadline:
        s.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            chunk = s.recv(65536)
        except TimeoutError:
            error = "timeout"
            break
        except OSError as e:
            error = errno.errorcode.get(e.errno or 0, str(e))
            break
        if not chunk:
            break
        data += chunk
        head, sep, rest = data.partition(b"\r\n\r\n")
        if sep:
            m = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
            if m and len(rest) >= int(m[1]):
                break
    return data, error


def upload_head(path: str, key: str, length: int | None, content_type: str) -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"Host: {HOST}", f"Authorization: Bearer {key}",
             f"Content-Type: {content_type}", "Connection: close"]
    lines.append(f"Content-Length: {length}" if length is not None
                 else "Transfer-Encoding: chunked")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def multipart_parts(size: int) -> tuple[bytes, bytes, str]:
    boundary = "abuse" + uuid.uuid4().hex
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
            f"filename=\"big.jpg\"\r\nContent-Type: image/jpeg\r\n\r\n").encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    return head, tail, f"multipart/form-data; boundary={boundary}"


def body_chunks(size: int, chunked: bool, piece: int = 256 * 1024) -> Iterator[bytes]:
    """A multipart body of ``size`` bytes in pieces (each framed when ``chunked``)."""
    head, tail, _ = multipart_parts(size)
    filler = b"\xff" * piece
    parts: list[bytes] = [head]
    left = size - len(head) - len(tail)
    while left > 0:
        parts.append(filler[:min(piece, left)])
        left -= piece
    parts.append(tail)
    for p in parts:
        yield (f"{len(p):x}\r\n".encode() + p + b"\r\n") if chunked else p
    if chunked:
        yield b"0\r\n\r\n"


def send_upload(port: int, source: str, path: str, key: str, size: int, chunked: bool,
                content_type: str | None = None, timeout: float = 30.0,
                careful: bool = True) -> dict[str, Any]:
    """One upload of ``size`` bytes. A ``careful`` client checks between pieces whether the
    server already answered (and then stops sending); a naive one (curl's way) sends it all
    before it reads. Returns what the client saw."""
    t0 = time.monotonic()
    deadline = t0 + timeout
    _, _, ctype = multipart_parts(size)
    sent, early = 0, False
    try:
        s = connect(port, source, timeout)
    except OSError as e:
        return {"status": None, "error": "connect: " + errno.errorcode.get(e.errno or 0, str(e)),
                "sent": 0, "seconds": round(time.monotonic() - t0, 3)}
    data, error = b"", None
    try:
        s.sendall(upload_head(path, key, None if chunked else size, content_type or ctype))
        sel = selectors.DefaultSelector()
        sel.register(s, selectors.EVENT_READ)
        for piece in body_chunks(size, chunked):
            if careful and sel.select(0):
                early = True
                break
            s.sendall(piece)
            sent += len(piece)
        sel.close()
        data, error = read_answer(s, deadline)
    except OSError as e:
        error = errno.errorcode.get(e.errno or 0, str(e))
        with contextlib.suppress(OSError):
            more, _ = read_answer(s, min(deadline, time.monotonic() + 2))
            data += more
    finally:
        s.close()
    head, _, body = data.partition(b"\r\n\r\n")
    ctype_seen = re.search(rb"(?i)\r\ncontent-type: *([^\r;]+)", head)
    code = None
    with contextlib.suppress(ValueError, KeyError, TypeError):
        code = json.loads(body)["error"]["code"]
    return {"status": status_of(data), "error": error, "answered_before_body_sent": early,
            "sent": sent, "content_type": ctype_seen[1].decode() if ctype_seen else None,
            "error_code": code, "seconds": round(time.monotonic() - t0, 3)}


@dataclass
class ProbeResult:
    phase: str
    ok: bool
    seconds: float
    outcome: str
    finished: float  # time.monotonic() when the answer (or the failure) came


class Probe:
    """The legitimate client: one matching query every ``interval`` s, each on its own thread
    and connection (so a stuck request does not stop the next one from being tried)."""

    def __init__(self, port: int, key: str, body: bytes, interval: float = 0.5,
                 timeout: float = 10.0) -> None:
        self.port, self.key, self.body = port, key, body
        self.interval, self.timeout = interval, timeout
        self.phase = "baseline"
        self.results: list[ProbeResult] = []
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.threads: list[threading.Thread] = []
        self.runner = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self.runner.start()

    def _run(self) -> None:
        while not self.stopped.is_set():
            t = threading.Thread(target=self._one, args=(self.phase,), daemon=True)
            t.start()
            self.threads.append(t)
            self.stopped.wait(self.interval)

    def _one(self, phase: str) -> None:
        t0 = time.perf_counter()
        outcome, ok = "ok", False
        try:
            conn = http.client.HTTPConnection(HOST, self.port, timeout=self.timeout,
                                              source_address=(LEGIT_ADDR, 0))
            conn.request("POST", "/api/v1/match", body=self.body, headers={
                "Authorization": f"Bearer {self.key}", "Content-Type": "application/json"})
            response = conn.getresponse()
            data = response.read()
            conn.close()
            if response.status == 200 and json.loads(data)["results"][0]["matched"]:
                ok = True
            else:
                outcome = f"status {response.status}"
        except TimeoutError:
            outcome = "timeout"
        except OSError as e:
            outcome = errno.errorcode.get(e.errno or 0, type(e).__name__)
        except http.client.HTTPException as e:
            outcome = type(e).__name__
        with self.lock:
            self.results.append(ProbeResult(phase, ok, time.perf_counter() - t0, outcome,
                                            time.monotonic()))

    def stop(self) -> None:
        self.stopped.set()
        self.runner.join()
        for t in self.threads:
            t.join(self.timeout + 5)

    def first_success_after(self, t: float) -> float | None:
        with self.lock:
            done = [r.finished for r in self.results if r.ok and r.finished > t]
        return min(done) - t if done else None

    def summary(self, attack_end: float) -> dict[str, Any]:
        """Per phase. During the attack, a request only counts as served if its answer came
        while the attack was still on (one answered only once the attacker let go was not)."""
        out = {}
        for phase in ("baseline", "attack", "recovery"):
            rs = [r for r in self.results if r.phase == phase]
            ok = [r for r in rs if r.ok and (phase != "attack" or r.finished <= attack_end)]
            late = [r for r in rs if r.ok and phase == "attack" and r.finished > attack_end]
            failures = Counter(r.outcome for r in rs if not r.ok)
            if late:
                failures["answered only after the attack stopped"] = len(late)
            out[phase] = {"sent": len(rs), "served": len(ok),
                          "served_fraction": round(len(ok) / len(rs), 3) if rs else None,
                          "latency_ms": latency([r.seconds * 1000 for r in ok]),
                          "failures": dict(failures)}
        return out


def latency(ms: list[float]) -> dict[str, float | None]:
    if not ms:
        return {"p50": None, "p90": None, "max": None}
    ms = sorted(ms)
    return {"p50": round(statistics.median(ms), 1),
            "p90": round(ms[min(len(ms) - 1, int(0.9 * len(ms)))], 1), "max": round(ms[-1], 1)}


# --- attacks ----------------------------------------------------------------------------------
@dataclass
class Attack:
    """Bookkeeping shared by the attacks: what the attacker's connections ended with."""

    stop: threading.Event = field(default_factory=threading.Event)
    ended: Counter[str] = field(default_factory=Counter)
    held_s: list[float] = field(default_factory=list)
    opened: int = 0
    refused_connects: int = 0
    uploads: list[dict[str, Any]] = field(default_factory=list)
    open_at_end: int = 0
    open_answered: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def summary(self) -> dict[str, Any]:
        held = sorted(self.held_s)
        out: dict[str, Any] = {"connections_opened": self.opened,
                               "connect_failures": self.refused_connects,
                               "ended_by": dict(self.ended),
                               "still_open_at_end": self.open_at_end,
                               "still_open_by_answer": dict(self.open_answered)}
        if held:
            out["held_s"] = {"p50": round(statistics.median(held), 1), "max": round(held[-1], 1)}
        if self.uploads:
            out["answers"] = dict(Counter(
                f"{u['status']} {u['error_code'] or u['content_type'] or ''}".strip()
                if u["status"] else f"no answer ({u['error']})" for u in self.uploads))
            out["uploads"] = len(self.uploads)
        return out


def trickle(port: int, attack: Attack, conns: int, head: Callable[[], bytes],
            drip: Callable[[int], bytes], interval: float, prefix: bytes = b"") -> None:
    """Keep ``conns`` connections open, each sending ``head()`` and ``prefix`` as fast as the
    server takes them, then one ``drip(n)`` byte every ``interval`` s; reconnect whenever the
    server closes one. Counts how each connection ended (status line, reset, plain close) and
    how long it was held. ``prefix`` is one buffer shared by every connection."""
    sel = selectors.DefaultSelector()
    live: dict[socket.socket, dict[str, Any]] = {}
    shared = memoryview(prefix)

    def open_one() -> bool:
        try:
            s = connect(port, ATTACK_ADDR, timeout=5)
        except OSError:
            with attack.lock:
                attack.refused_connects += 1
            return False
        s.setblocking(False)
        live[s] = {"t": time.monotonic(), "n": 0, "data": b"", "head": head(), "sent": 0}
        sel.register(s, selectors.EVENT_READ | selectors.EVENT_WRITE)
        attack.opened += 1
        return True

    def end(s: socket.socket, how: str) -> None:
        state = live.pop(s)
        sel.unregister(s)
        s.close()
        attack.held_s.append(time.monotonic() - state["t"])
        attack.ended[how] += 1

    def pending(state: dict[str, Any]) -> memoryview | bytes:
        head_left = len(state["head"]) - state["sent"]
        if head_left > 0:
            return state["head"][state["sent"]:]
        return shared[state["sent"] - len(state["head"]):]

    def failed(s: socket.socket, e: OSError) -> None:
        code = status_of(live[s]["data"])
        name = errno.errorcode.get(e.errno or 0, "error")
        end(s, f"{code} then {name}" if code else name)

    for _ in range(conns):
        if attack.stop.is_set() or not open_one():
            break
    next_drip = time.monotonic() + interval
    while not attack.stop.is_set():
        for key, events in sel.select(timeout=0.2):
            s = key.fileobj
            assert isinstance(s, socket.socket)
            if s not in live:
                continue
            state = live[s]
            if events & selectors.EVENT_READ:
                try:
                    chunk = s.recv(65536)
                except BlockingIOError:
                    chunk = None
                except OSError as e:
                    failed(s, e)
                    continue
                if chunk == b"":
                    code = status_of(state["data"])
                    end(s, f"{code} then closed" if code else "closed without an answer")
                    continue
                if chunk:
                    state["data"] += chunk
            if events & selectors.EVENT_WRITE:
                left = pending(state)
                try:
                    state["sent"] += s.send(left) if len(left) else 0
                except BlockingIOError:
                    pass
                except OSError as e:
                    failed(s, e)
                    continue
                if not len(pending(state)):
                    sel.modify(s, selectors.EVENT_READ)
        if time.monotonic() >= next_drip:
            next_drip += interval
            for s, state in list(live.items()):
                if len(pending(state)):
                    continue  # still sending its head or prefix
                try:
                    s.send(drip(state["n"]))
                    state["n"] += 1
                except BlockingIOError:
                    pass
                except OSError as e:
                    failed(s, e)
        while len(live) < conns and not attack.stop.is_set():
            if not open_one():
                attack.stop.wait(0.2)
                break
    attack.open_at_end = len(live)
    for state in live.values():
        code = status_of(state["data"])
        attack.open_answered[f"answered {code}, still open" if code
                             else "no answer, still open"] += 1
    for s in list(live):
        live.pop(s)
        s.close()
    sel.close()


def slowloris(port: int, setup: Setup, attack: Attack, conns: int) -> None:
    header = b"X-Pad: " + b"a" * 4000
    trickle(port, attack, conns,
            head=lambda: f"POST /api/v1/match HTTP/1.1\r\nHost: {HOST}\r\n".encode(),
            drip=lambda n: header[n % len(header):n % len(header) + 1], interval=3.0)


def slow_upload(port: int, setup: Setup, attack: Attack, conns: int, fast_bytes: int) -> None:
    size = setup.settings["max_upload_bytes"]
    _, _, ctype = multipart_parts(size)
    trickle(port, attack, conns,
            head=lambda: upload_head("/api/v1/match/image", setup.attacker_key, size, ctype),
            drip=lambda n: b"\xff", interval=3.0, prefix=b"\xff" * fast_bytes)


def oversize(port: int, setup: Setup, attack: Attack, chunked: bool, threads: int = 2,
             per_s: float = 6.0) -> None:
    """``threads`` clients sending 25 MB uploads, at most ``per_s`` a second in all (below the
    key's rate limit, so the answers show the size checks, not the rate limit)."""
    gap = threads / per_s

    def one_client() -> None:
        while not attack.stop.is_set():
            t0 = time.monotonic()
            answer = send_upload(port, ATTACK_ADDR, "/api/v1/match/image", setup.attacker_key,
                                 OVERSIZE, chunked, timeout=15)
            with attack.lock:
                attack.uploads.append(answer)
                attack.opened += 1
            attack.stop.wait(max(0.0, gap - (time.monotonic() - t0)))

    ts = [threading.Thread(target=one_client, daemon=True) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()


ATTACKS: dict[str, Callable[[int, Setup, Attack, argparse.Namespace], None]] = {
    "oversize_declared": lambda p, s, a, o: oversize(p, s, a, chunked=False),
    "oversize_chunked": lambda p, s, a, o: oversize(p, s, a, chunked=True),
    "slowloris": lambda p, s, a, o: slowloris(p, s, a, o.slowloris),
    "slow_body": lambda p, s, a, o: slow_upload(p, s, a, o.slow_bodies, fast_bytes=0),
    "held_uploads": lambda p, s, a, o: slow_upload(
        p, s, a, o.slow_bodies, fast_bytes=s.settings["max_upload_bytes"] - 100),
}


# --- scenarios --------------------------------------------------------------------------------
class Stack:
    """gunicorn, and nginx in front of it for the ``nginx`` front; started fresh."""

    def __init__(self, front: str, setup: Setup, folder: Path) -> None:
        self.front, self.setup = front, setup
        self.folder = folder
        self.upstream = free_port()
        self.app = gunicorn(setup.data_dir, self.upstream)
        self.proxy: Process | None = None
        self.port = self.upstream
        self.nginx_changes: list[str] = []
        if front == "nginx":
            self.port = free_port()
            conf_dir = folder / f"nginx-{uuid.uuid4().hex[:6]}"
            conf_dir.mkdir(parents=True)
            site, self.nginx_changes = local_site(self.upstream, self.port, conf_dir)
            conf = conf_dir / "nginx.conf"
            conf.write_text(nginx_conf(site, conf_dir))
            checked = nginx_check(conf)
            if checked.returncode:
                raise RuntimeError("nginx -t refused the documented configuration:\n"
                                   + checked.stderr)
            self.proxy = nginx(conf)
            self.body_temp = conf_dir / "client_body"

    def __enter__(self) -> Stack:
        self.app.start()
        wait_ready(self.upstream, self.app)
        if self.proxy:
            self.proxy.start()
            wait_ready(self.port, self.proxy, path="/healthz")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proxy:
            self.proxy.stop()
        self.app.stop()

    def rss(self) -> dict[str, int]:
        out = {"gunicorn": rss_bytes(self.app.pids())}
        if self.proxy:
            out["nginx"] = rss_bytes(self.proxy.pids())
        return out

    def body_temp_files(self) -> int:
        folder = getattr(self, "body_temp", None)
        return sum(1 for _ in folder.rglob("*") if _.is_file()) if folder else 0


def run_scenario(front: str, name: str, setup: Setup, folder: Path,
                 opts: argparse.Namespace) -> dict[str, Any]:
    with Stack(front, setup, folder) as stack:
        probe = Probe(stack.port, setup.legit_key, setup.legit_body)
        attack = Attack()
        rss0 = stack.rss()
        peak = dict(rss0)
        probe.start()
        time.sleep(3.0)
        probe.phase = "attack"
        worker = threading.Thread(target=ATTACKS[name], args=(stack.port, setup, attack, opts),
                                  daemon=True)
        worker.start()
        end = time.monotonic() + opts.seconds
        while time.monotonic() < end:
            for k, v in stack.rss().items():
                peak[k] = max(peak[k], v)
            time.sleep(0.5)
        probe.phase = "recovery"
        attack_end = time.monotonic()
        attack.stop.set()
        worker.join(60)
        # Recovery: until a legitimate request succeeds again (at most 60 s), then 5 s more.
        while probe.first_success_after(attack_end) is None and (
                time.monotonic() - attack_end < 60):
            time.sleep(0.25)
        recovered = probe.first_success_after(attack_end)
        time.sleep(5.0)
        probe.stop()
        workers_alive = len(worker_pids(stack.app.proc.pid)) if stack.app.proc else 0
        log = stack.app.log.read_text(errors="replace") if stack.app.log.exists() else ""
        result = {"front": front, "attack": name, "seconds": opts.seconds,
                  "legit": probe.summary(attack_end), "attacker": attack.summary(),
                  "legit_served_again_after_s": None if recovered is None
                  else round(recovered, 2),
                  "rss_mib": {k: {"before": round(rss0[k] / 2**20, 1),
                                  "peak": round(peak[k] / 2**20, 1)} for k in rss0},
                  "gunicorn_worker_timeouts_logged": log.count("WORKER TIMEOUT"),
                  "gunicorn_workers_alive_after": workers_alive,
                  "nginx_body_temp_files": stack.body_temp_files()}
        stack.app.log.write_text("")  # each scenario counts its own worker timeouts
    return result


def refusals(front: str, setup: Setup, folder: Path) -> dict[str, Any]:
    """Single oversized bodies, and (nginx) the operator endpoints asked for in disguise."""
    limit = setup.settings["max_content_length"]
    out: dict[str, Any] = {"front": front, "bodies": []}
    with Stack(front, setup, folder) as stack:
        for path in ("/api/v1/match/image", "/api/v1/match"):
            for size, careful in ((limit + 1, True), (OVERSIZE, True), (OVERSIZE, False)):
                for chunked in (False, True):
                    ctype = "application/json" if path == "/api/v1/match" else None
                    answer = send_upload(stack.port, ATTACK_ADDR, path, setup.attacker_key,
                                         size, chunked, content_type=ctype, careful=careful)
                    out["bodies"].append({"path": path, "bytes": size,
                                          "framing": "chunked" if chunked else "content-length",
                                          "client": "careful" if careful else "naive",
                                          **answer})
        if front == "nginx":
            out["operator_paths_from_outside"] = {
                p: _get(stack.port, p) for p in (
                    "/metrics", "/readyz", "//metrics", "/%6Detrics", "/metrics?x=1",
                    "/api/../metrics", "/./readyz", "/metrics/", "/METRICS", "/readyz%3F")}
        out["nginx_body_temp_files"] = stack.body_temp_files()
    return out


def _get(port: int, path: str) -> str:
    try:
        s = connect(port, LEGIT_ADDR, 5)
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode())
        data, _ = read_answer(s, time.monotonic() + 5)
        s.close()
    except OSError as e:
        return f"error {e}"
    leaked = b"takedown_" in data or b"index_lag" in data
    return f"{status_of(data)}" + (" LEAKED" if leaked else "")


# --- enumeration arithmetic -------------------------------------------------------------------
def enumeration(settings: dict[str, Any]) -> dict[str, Any]:
    """What one key's rate limit allows through /match per day, and what it covers of PDQ and
    pHash space if the queries are random (uniform codes; real hashes cluster, see the text)."""
    from limits import parse

    from registry.config import Settings

    s = Settings()
    item = parse(settings["rate_limit"])
    per_minute = item.amount * 60 / item.get_expiry()
    per_day = per_minute * settings["max_queries"] * 1440
    pdq_per_query = 3  # pdq, pdq_content and pdq_frame are each searched
    out: dict[str, Any] = {
        "rate_limit": settings["rate_limit"], "requests_per_minute": per_minute,
        "max_queries_per_request": settings["max_queries"],
        "queries_per_day": per_day, "pdq_probes_per_query": pdq_per_query,
        "note": "uniform random probes; each registered code covers the Hamming ball of the "
                "weak (or strong) radius around it, so the share of space a registry covers is "
                "at most N times one ball",
    }
    for name, bits, radius, counts in (
            ("pdq_weak", 256, s.pdq_weak, [1_000_000, 10_000_000]),
            ("pdq_strong", 256, s.pdq_strong, [1_000_000, 10_000_000]),
            ("phash_weak", 64, s.phash_weak, [62_500, 1_000_000]),
            ("phash_strong", 64, s.phash_strong, [62_500, 1_000_000])):
        ball = sum(math.comb(bits, k) for k in range(radius + 1)) / 2**bits
        probes = per_day * (pdq_per_query if name.startswith("pdq") else 1)
        out[name] = {"radius": radius, "ball_fraction_of_space": ball,
                     "probes_per_day": probes,
                     "space_probed_per_day_fraction": min(1.0, probes * ball),
                     "chance_hits_per_day": {str(n): probes * n * ball for n in counts}}
    return out


# --- report -----------------------------------------------------------------------------------
def machine_info() -> dict[str, Any]:
    from bench.common import machine_info as common_info

    binary = nginx_binary()
    nginx = (subprocess.run([binary, "-v"], capture_output=True, text=True).stderr.strip()
             if binary else None)
    return {**common_info("gunicorn"), "nginx": nginx}


def print_table(report: dict[str, Any]) -> None:
    print(f"\n{'front':9} {'attack':18} {'legit served (before/during/after)':35} "
          f"{'during p50/max ms':18} {'again':6} attacker got")
    for r in report["scenarios"]:
        legit = r["legit"]
        frac = "/".join("-" if legit[p]["served_fraction"] is None
                        else f"{legit[p]['served_fraction']:.0%}"
                        for p in ("baseline", "attack", "recovery"))
        lat = legit["attack"]["latency_ms"]
        lat_s = f"{lat['p50']}/{lat['max']}" if lat["p50"] is not None else "-"
        again = r["legit_served_again_after_s"]
        again_s = "-" if again is None else f"{again:.1f}s"
        a = r["attacker"]
        got = Counter(a.get("answers") or {})
        got.update(a.get("ended_by") or {})
        got.update(a.get("still_open_by_answer") or {})
        got_s = ", ".join(f"{k}: {v}" for k, v in got.most_common(3))
        print(f"{r['front']:9} {r['attack']:18} {frac:35} {lat_s:18} {again_s:6} {got_s}")
    for r in report.get("refusals", []):
        print(f"\nsingle oversized bodies, {r['front']}:")
        for b in r["bodies"]:
            seen = (f"{b['status']} {b['content_type']} {b['error_code']}" if b["status"]
                    else f"no answer ({b['error']})")
            print(f"  {b['path']:20} {b['bytes']:>10,} B {b['framing']:15} {b['client']:8} "
                  f"-> {seen}")
        if "operator_paths_from_outside" in r:
            print("  operator paths from 127.0.0.2:",
                  ", ".join(f"{k} {v}" for k, v in r["operator_paths_from_outside"].items()))
    e = report["enumeration"]
    print(f"\nrate limit {e['rate_limit']} x {e['max_queries_per_request']} queries x 1440 = "
          f"{e['queries_per_day']:.3g} queries/day per key")
    for name in ("pdq_weak", "pdq_strong", "phash_weak", "phash_strong"):
        d = e[name]
        hits = ", ".join(f"{int(n):,} hashes: {h:.3g}" for n, h in d["chance_hits_per_day"].items())
        print(f"  {name:13} r={d['radius']:<3} one ball = {d['ball_fraction_of_space']:.3g} of "
              f"space; random-probe hits/day: {hits}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=20.0, help="length of each attack")
    p.add_argument("--slowloris", type=int, default=1000, help="slowloris connections")
    p.add_argument("--slow-bodies", type=int, default=64, help="slow upload connections")
    p.add_argument("--fronts", nargs="+", default=["gunicorn", "nginx"])
    p.add_argument("--attacks", nargs="+", default=list(ATTACKS), choices=list(ATTACKS))
    p.add_argument("--quick", action="store_true", help="5 s attacks, fewer connections")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "abuse.json")
    opts = p.parse_args(argv)
    if opts.quick:
        opts.seconds, opts.slowloris, opts.slow_bodies = 5.0, 100, 16
    if "nginx" in opts.fronts and not nginx_binary():
        print("nginx is not installed (apt-get install -y nginx); running gunicorn alone")
        opts.fronts = [f for f in opts.fronts if f != "nginx"]
    report: dict[str, Any] = {"machine": machine_info(), "options": {
        "seconds": opts.seconds, "slowloris_connections": opts.slowloris,
        "slow_body_connections": opts.slow_bodies, "gunicorn_workers": WORKERS,
        "legit_client": "one matching POST /api/v1/match every 0.5 s, fresh connection, 10 s "
                        f"timeout, from {LEGIT_ADDR}", "attacker_address": ATTACK_ADDR}}
    with tempfile.TemporaryDirectory(prefix="abuse-") as tmp:
        folder = Path(tmp)
        s = setup(folder)
        report["settings"] = s.settings
        if "nginx" in opts.fronts:
            _, changes = local_site(8000, 8080, folder)
            report["nginx_config"] = {"source": "docs/deploy.md", "changes_for_the_test": changes,
                                      "main_context": documented_main_context()}
        report["refusals"] = [refusals(front, s, folder) for front in opts.fronts]
        report["scenarios"] = []
        for name in opts.attacks:
            for front in opts.fronts:
                print(f"{front}: {name} ...", flush=True)
                report["scenarios"].append(run_scenario(front, name, s, folder, opts))
    report["enumeration"] = enumeration(report["settings"])
    report["machine"]["loadavg_at_end"] = list(os.getloadavg())
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    opts.out.write_text(json.dumps(report, indent=1) + "\n")
    print_table(report)
    print(f"\nwrote {opts.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

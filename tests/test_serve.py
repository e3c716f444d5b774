"""The real server: ``takedown serve`` and ``make run`` answer /healthz and /readyz."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(url: str, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out = proc.stdout.read().decode() if proc.stdout else ""
            pytest.fail(f"server exited with {proc.returncode}: {out}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return json.loads(response.read())
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.1)
    pytest.fail(f"{url} did not answer within {timeout} s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop a server started with start_new_session=True, and its children."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    if proc.stdout:
        proc.stdout.close()


def serve(cmd: list[str], tmp_path: Path, port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "TAKEDOWN_DATA_DIR": str(tmp_path / "data"), "PORT": str(port)}
    env.pop("TAKEDOWN_DATABASE_URL", None)
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)


def test_takedown_serve_answers_health_and_readiness(tmp_path):
    port = free_port()
    proc = serve([sys.executable, "-m", "cli", "serve", "--port", str(port)], tmp_path, port)
    try:
        assert wait_for(f"http://127.0.0.1:{port}/healthz", proc) == {"status": "ok"}
        ready = wait_for(f"http://127.0.0.1:{port}/readyz", proc)
        assert ready["ready"] is True and ready["index_lag"] == 0
        assert (tmp_path / "data" / "registry.db").exists()
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/nope", timeout=5)
        assert missing.value.code == 404
        body = json.loads(missing.value.read())
        missing.value.close()
        assert body["error"]["code"] == "not_found" and body["error"]["message"]
    finally:
        stop(proc)


@pytest.mark.skipif(not (ROOT / ".venv" / ".installed").exists(),
                    reason="make run needs the project's .venv (make test creates it)")
def test_make_run_answers_healthz(tmp_path):
    port = free_port()
    proc = serve(["make", "--no-print-directory", "run", f"PORT={port}"], tmp_path, port)
    try:
        assert wait_for(f"http://127.0.0.1:{port}/healthz", proc) == {"status": "ok"}
    finally:
        stop(proc)

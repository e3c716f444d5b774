"""What the benchmarks share: the machine a report ran on, and the two process helpers every
server-starting benchmark needs (a free port, a master's workers).

Figures are only comparable on the same machine (docs/performance.md), so each report opens with
``machine_info()``: CPU model and count, memory, Python and the numeric libraries, the commit
and whether ``registry/`` had uncommitted changes, and the load when the run started.
"""

from __future__ import annotations

import contextlib
import os
import platform
import socket
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def _first(path: str, prefix: str) -> str | None:
    with contextlib.suppress(OSError), open(path) as f:
        for line in f:
            if line.startswith(prefix):
                return line.split(":", 1)[1].strip()
    return None


def _version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def machine_info(*packages: str) -> dict[str, Any]:
    """The machine and software of this run; ``packages`` (distribution names) add their
    versions, e.g. ``machine_info("gunicorn")``."""
    memory = _first("/proc/meminfo", "MemTotal")
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True, check=False).stdout.strip() or None
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "registry"], cwd=ROOT,
                               capture_output=True, text=True, check=False).stdout.splitlines()
    except OSError:
        commit, dirty = None, []
    info: dict[str, Any] = {
        "nproc": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)),
        "cpu_model": _first("/proc/cpuinfo", "model name") or "unknown",
        "mem_total_bytes": int(memory.split()[0]) * 1024 if memory else None,
        "python": platform.python_version(),
        "numpy": _version("numpy"),
        "faiss": _version("faiss-cpu"),
        "platform": platform.platform(),
        "git_commit": commit,
        "registry_uncommitted": [line.strip() for line in dirty],
        "loadavg_at_start": list(os.getloadavg()),
    }
    for package in packages:
        info[package] = _version(package)
    return info


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on now (for a server the benchmark starts)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def worker_pids(master: int) -> list[int]:
    """The child processes of ``master`` (a gunicorn master's workers), sorted; [] if gone."""
    try:
        text = Path(f"/proc/{master}/task/{master}/children").read_text()
    except OSError:
        return []
    return sorted(int(p) for p in text.split())

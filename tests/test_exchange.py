"""Two real registries on this machine (two ``takedown serve`` processes, two databases): B
follows A's hash feed (TAKEDOWN_UPSTREAM_*) into a bank of its own. A case registered on A
matches on B within seconds, its withdrawal stops the match on B within seconds, and B resumes
from its cursor after a restart and after A was down, with nothing applied twice."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

from registry.hashing import compute_signals
from tests.conftest import encode, photo, wait_until
from tests.test_serve import ROOT, free_port, stop, wait_for


def takedown(data: Path, *args: str, env: dict[str, str] | None = None) -> dict:
    out = subprocess.run([sys.executable, "-m", "cli", *args], cwd=ROOT, check=True,
                         capture_output=True, text=True,
                         env={**os.environ, "TAKEDOWN_DATA_DIR": str(data), **(env or {})})
    return json.loads(out.stdout.strip().splitlines()[-1])


def start(data: Path, port: int, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    full = {**os.environ, "TAKEDOWN_DATA_DIR": str(data), **(env or {})}
    full.pop("TAKEDOWN_DATABASE_URL", None)
    proc = subprocess.Popen([sys.executable, "-m", "cli", "serve", "--port", str(port)],
                            cwd=ROOT, env=full, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    wait_for(f"http://127.0.0.1:{port}/readyz", proc)
    return proc


def matches(port: int, key: str, image: bytes) -> list[dict]:
    signals = compute_signals(image)
    body = json.dumps({"queries": [{"id": "q", "signals": {
        "pdq": signals.pdq.hex, "md5": signals.md5.hex}}]}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/api/v1/match", data=body,
                                     headers={"Authorization": f"Bearer {key}",
                                              "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        return list(json.loads(answer.read())["results"][0]["matches"])


def banks(data: Path) -> dict[str, dict]:
    out = subprocess.run([sys.executable, "-m", "cli", "bank", "list", "--json"], cwd=ROOT,
                         check=True, capture_output=True, text=True,
                         env={**os.environ, "TAKEDOWN_DATA_DIR": str(data)})
    return {b["name"]: b for b in json.loads(out.stdout)}


def test_a_registry_follows_another_through_restarts_and_outages(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    port_a, port_b = free_port(), free_port()
    feed_key = takedown(a, "platform", "add", "registry-b", "--scope", "feed", "--json")["key"]
    match_key = takedown(b, "platform", "add", "checker", "--json")["key"]
    first = [tmp_path / f"first{i}.jpg" for i in range(2)]
    for i, path in enumerate(first):
        path.write_bytes(encode(photo(500 + i)))
    case = takedown(a, "submit", "--json", *map(str, first))["case"]
    upstream = {"TAKEDOWN_UPSTREAM_URL": f"http://127.0.0.1:{port_a}",
                "TAKEDOWN_UPSTREAM_KEY": feed_key, "TAKEDOWN_UPSTREAM_BANK": "registry-a",
                "TAKEDOWN_UPSTREAM_INTERVAL_S": "0.5"}
    server_a = start(a, port_a)
    server_b = start(b, port_b, upstream)
    try:
        image = first[0].read_bytes()
        seconds = wait_until(lambda: matches(port_b, match_key, image), 20, "the add on B")
        found = matches(port_b, match_key, image)
        assert {m["bank"] for m in found} == {"registry-a"}, found
        print(f"a case on A matched on B after {seconds:.1f} s")  # a figure, not a bar

        takedown(a, "case", "withdraw", case, "--yes", "--json")
        wait_until(lambda: not matches(port_b, match_key, image), 20, "the withdrawal on B")

        # B restarts; meanwhile A registers another case: B resumes from its cursor.
        stop(server_b)
        second = tmp_path / "second.jpg"
        second.write_bytes(encode(photo(600)))
        takedown(a, "submit", "--json", str(second))
        server_b = start(b, port_b, upstream)
        wait_until(lambda: matches(port_b, match_key, second.read_bytes()), 20, "after restart")

        # A goes down and comes back with a third case: B keeps retrying, then catches up.
        stop(server_a)
        third = tmp_path / "third.jpg"
        third.write_bytes(encode(photo(700)))
        takedown(a, "submit", "--json", str(third))
        server_a = start(a, port_a)
        wait_until(lambda: matches(port_b, match_key, third.read_bytes()), 30, "after outage")
        assert not matches(port_b, match_key, image)  # the withdrawal held

        # Nothing applied twice: B's bank holds exactly A's hashes, by status.
        held = banks(b)["registry-a"]
        assert held["source"] == f"http://127.0.0.1:{port_a}"
        assert held["signals"] == banks(a)["submissions"]["signals"]
    finally:
        stop(server_b)
        stop(server_a)

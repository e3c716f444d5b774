"""docs/api.md is executed: every ```sh and ```python block marked ``run=NAME`` runs against a
live server and its output is checked here.

The server is the real thing (``python -m cli serve`` in a subprocess) on a fresh data dir with
the canary bank registered (``takedown canary``) and a real key (``takedown platform add``); a
second server on the same data, limited to 3 requests per 2 seconds, answers the blocks marked
``server=throttled``. Blocks run in a scratch folder holding ``canary/`` and an unrelated
``photo.jpg`` and ``clip.mp4``, with ``TAKEDOWN_URL`` and ``TAKEDOWN_API_KEY`` set as the guide
tells the reader to set them; ``operator`` blocks also see the server's ``TAKEDOWN_DATA_DIR``.

Block attributes (after the language on the fence line): ``run=NAME`` (checked by
``CHECKS[NAME]``), ``needs=A,B`` (python blocks of the same language are prepended as source,
others are run first), ``server=throttled``, ``operator``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from registry.domain import Signal
from tests.conftest import encode, photo
from tests.images import clip, pan
from tests.test_serve import stop

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "api.md"
FENCE = re.compile(r"^```(?P<lang>[a-z]*)(?P<info>[^\n]*)\n(?P<body>.*?)^```[ \t]*$",
                   re.MULTILINE | re.DOTALL)
THROTTLE = "3 per 2 seconds"
CANARY_COUNT = 4


@dataclass(frozen=True)
class Block:
    lang: str
    body: str
    line: int
    name: str | None
    needs: tuple[str, ...] = ()
    server: str = "main"
    operator: bool = False


def parse_blocks(text: str) -> list[Block]:
    out = []
    for m in FENCE.finditer(text):
        attrs: dict[str, str] = {}
        flags: set[str] = set()
        for token in m["info"].split():
            if "=" in token:
                k, v = token.split("=", 1)
                attrs[k] = v
            else:
                flags.add(token)
        out.append(Block(
            lang=m["lang"], body=m["body"], line=text.count("\n", 0, m.start()) + 1,
            name=attrs.get("run"),
            needs=tuple(n for n in attrs.get("needs", "").split(",") if n),
            server=attrs.get("server", "main"), operator="operator" in flags))
    return out


BLOCKS = parse_blocks(DOC.read_text())
RUNNABLE = [b for b in BLOCKS if b.name]
BY_NAME = {b.name: b for b in RUNNABLE}


# --- the live servers -------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Live:
    work: Path
    data: Path
    env: dict[str, str]
    urls: dict[str, str]
    key: str
    logs: list[Path]
    done: set[str] = field(default_factory=set)

    def get(self, path: str, server: str = "main") -> dict:
        request = urllib.request.Request(self.urls[server] + path,
                                         headers={"Authorization": f"Bearer {self.key}"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())


def _start(env: dict[str, str], port: int, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen([sys.executable, "-m", "cli", "serve", "--port", str(port)],
                                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def _wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"server exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=2) as response:
                if json.loads(response.read()).get("ready"):
                    return
        except (urllib.error.URLError, ConnectionError):
            pass
        time.sleep(0.1)
    pytest.fail(f"{url} was not ready within {timeout} s: {log.read_text()[-2000:]}")


def _cli(env: dict[str, str], cwd: Path, *args: str) -> str:
    result = subprocess.run(["takedown", *args], cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    base = tmp_path_factory.mktemp("api-docs")
    work, data, bin_dir = base / "work", base / "data", base / "bin"
    for d in (work, bin_dir):
        d.mkdir()
    # `takedown` on PATH, whatever interpreter runs the tests
    shim = bin_dir / "takedown"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m cli "$@"\n')
    shim.chmod(0o755)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("TAKEDOWN_") or k == "TAKEDOWN_PIN_KDF_N"}
    env.update({"TAKEDOWN_DATA_DIR": str(data), "PATH": f"{bin_dir}{os.pathsep}{env['PATH']}",
                "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1"})
    _cli(env, work, "canary", "--out", "canary")
    (work / "photo.jpg").write_bytes(encode(photo(4242)))
    (work / "clip.mp4").write_bytes(clip(pan(4243, 3)))
    key = json.loads(_cli(env, work, "platform", "add", "docs-test", "--scope", "match",
                          "--scope", "feed", "--json"))["key"]
    procs, urls, logs = [], {}, []
    try:
        for server, extra in (("main", {}), ("throttled", {"TAKEDOWN_RATE_LIMIT": THROTTLE})):
            port, log = free_port(), base / f"{server}.log"
            proc = _start({**env, **extra}, port, log)
            procs.append(proc)
            logs.append(log)
            urls[server] = f"http://127.0.0.1:{port}"
            _wait_ready(urls[server], proc, log)
        yield Live(work, data, env, urls, key, logs)
    finally:
        for proc in procs:
            stop(proc)


# --- running a block --------------------------------------------------------------------------
def _missing_tool(block: Block) -> str | None:
    bodies = [block.body] + [BY_NAME[n].body for n in block.needs if n in BY_NAME]
    for tool in ("curl", "jq"):
        if any(re.search(rf"(^|[|(\s]){tool}\s", b) for b in bodies if block.lang == "sh") and (
                shutil.which(tool) is None):
            return f"the example uses {tool}, which is not installed"
    return None


def run_block(block: Block, live: Live) -> subprocess.CompletedProcess[str]:
    source = block.body
    for need in block.needs:
        dep = BY_NAME[need]
        if dep.lang == block.lang == "python":
            source = dep.body + "\n" + source
        elif need not in live.done:
            result = run_block(dep, live)
            assert result.returncode == 0, f"{need} (needed by {block.name}) failed"
    env = {k: v for k, v in live.env.items() if block.operator or k != "TAKEDOWN_DATA_DIR"}
    env.update({"TAKEDOWN_URL": live.urls[block.server], "TAKEDOWN_API_KEY": live.key})
    if block.lang == "python":
        script = live.work / f"example_{block.name}.py"
        script.write_text(source)
        cmd = [sys.executable, str(script)]
    else:
        cmd = ["bash", "-eo", "pipefail", "-c", source]
    result = subprocess.run(cmd, cwd=live.work, env=env, capture_output=True, text=True,
                            timeout=180, check=False)
    assert result.returncode == 0, (
        f"docs/api.md line {block.line} ({block.name}) exited {result.returncode}\n"
        f"stdout: {result.stdout[-3000:]}\nstderr: {result.stderr[-3000:]}")
    assert block.name
    live.done.add(block.name)
    return result


# --- what each example must print -------------------------------------------------------------
Check = Callable[[subprocess.CompletedProcess[str], Live], None]
HEX = {"pdq": 64, "phash": 16, "md5": 32, "sha256": 64}


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def canary_matched(result: dict) -> bool:
    return bool(result["matched"]) and all(m["bank"] == "canary" for m in result["matches"])


def check_platform_add(r: subprocess.CompletedProcess[str], live: Live) -> None:
    (out,) = json_lines(r.stdout)
    assert out["platform"] == "acme" and out["scopes"] == ["feed", "match"]
    assert re.fullmatch(r"trk_[A-Za-z0-9_-]{30,}", out["key"])
    request = urllib.request.Request(live.urls["main"] + "/api/v1/feed?limit=1",
                                     headers={"Authorization": f"Bearer {out['key']}"})
    with urllib.request.urlopen(request, timeout=30) as response:  # the new key works at once
        assert response.status == 200


def check_canary(r: subprocess.CompletedProcess[str], live: Live) -> None:
    assert f"Wrote {CANARY_COUNT} canary images to canary/" in r.stdout
    assert "bank 'canary'" in r.stdout
    assert sorted(p.name for p in (live.work / "canary").iterdir()) == [
        f"takedown-canary-{n}.png" for n in range(1, CANARY_COUNT + 1)]


def check_hash(r: subprocess.CompletedProcess[str], live: Live) -> None:
    lines = json_lines(r.stdout)
    assert [x["file"] for x in lines] == ["canary/takedown-canary-1.png", "photo.jpg"]
    for x in lines:
        for name, digits in HEX.items():
            assert re.fullmatch(f"[0-9a-f]{{{digits}}}", x[name]), (name, x[name])
        assert 0 <= x["pdq_quality"] <= 100 and isinstance(x["pipeline_version"], int)
    assert lines[0]["pdq_quality"] >= 50
    assert json_lines((live.work / "hashes.jsonl").read_text()) == lines
    table = "\n".join(x for x in DOC.read_text().splitlines() if x.startswith("| `"))
    undocumented = {k for x in lines for k in x if f"`{k}`" not in table}
    assert not undocumented, f"takedown hash prints fields the guide's table lacks: {undocumented}"


def check_match_curl(r: subprocess.CompletedProcess[str], live: Live) -> None:
    answer = json.loads(r.stdout)
    assert isinstance(answer["index_version"], int)
    first, second = answer["results"]
    assert (first["id"], second["id"]) == ("upload-1", "upload-2")
    assert canary_matched(first)
    assert any(m["signal"] == "pdq" and m["tier"] == "strong" for m in first["matches"])
    assert any(m["signal"] == "phash" and m["tier"] == "strong" for m in first["matches"])
    for m in first["matches"]:
        assert re.fullmatch(r"m_[0-9a-f]+", m["match_id"]) and 0 < m["confidence"] <= 1
    assert second == {"id": "upload-2", "matched": False, "matches": []}


def check_match_jq(r: subprocess.CompletedProcess[str], live: Live) -> None:
    canary, other = json.loads(r.stdout)["results"]
    assert canary["id"] == "canary/takedown-canary-1.png" and canary_matched(canary)
    assert {"md5", "sha256"} <= {m["signal"] for m in canary["matches"] if m["tier"] == "exact"}
    assert other == {"id": "photo.jpg", "matched": False, "matches": []}


def check_client(r: subprocess.CompletedProcess[str], live: Live) -> None:
    assert r.stdout == "" and r.stderr == ""


def check_match_py(r: subprocess.CompletedProcess[str], live: Live) -> None:
    lines = r.stdout.splitlines()
    assert "photo.jpg: no match" in lines
    canary = [x for x in lines if x.startswith("canary/takedown-canary-1.png: ")]
    assert any(" strong pdq distance=" in x for x in canary), lines
    assert all("bank=canary" in x and "match_id=m_" in x for x in canary)


def check_match_image(r: subprocess.CompletedProcess[str], live: Live) -> None:
    answer = json.loads(r.stdout)
    assert answer["id"] == "takedown-canary-2.png" and canary_matched(answer)
    for name, digits in HEX.items():
        assert re.fullmatch(f"[0-9a-f]{{{digits}}}", answer["signals"][name])


def check_match_video(r: subprocess.CompletedProcess[str], live: Live) -> None:
    answer = json.loads(r.stdout)
    assert answer["id"] == "clip.mp4" and answer["matched"] is False  # nothing registered
    assert Signal.parse("vpdq", answer["signals"]["vpdq"]).frames()
    for name in ("md5", "sha256"):
        assert re.fullmatch(f"[0-9a-f]{{{HEX[name]}}}", answer["signals"][name])


def check_feedback_curl(r: subprocess.CompletedProcess[str], live: Live) -> None:
    receipt = json.loads(r.stdout)
    assert receipt["outcome"] == "removed" and receipt["recorded"] is True
    assert receipt["match_id"].startswith("m_") and receipt["quarantined"] is False


def check_feedback_py(r: subprocess.CompletedProcess[str], live: Live) -> None:
    assert "'outcome': 'under_review'" in r.stdout and "'recorded': True" in r.stdout


def _all_feed(live: Live) -> dict[str, dict]:
    active: dict[str, dict] = {}
    cursor = ""
    for _ in range(1000):
        page = live.get("/api/v1/feed?" + urllib.parse.urlencode({"cursor": cursor,
                                                                  "limit": 1000}))
        for rec in page["records"]:
            if rec["status"] == "active":
                active[rec["id"]] = rec
            else:
                active.pop(rec["id"], None)
        cursor = page["next_cursor"]
        if not page["has_more"]:
            return active
    raise AssertionError("the feed did not end")


def check_feed_curl(r: subprocess.CompletedProcess[str], live: Live) -> None:
    page = json.loads(r.stdout)
    assert len(page["records"]) == 2 and page["has_more"] is True
    assert page["next_cursor"] == str(page["records"][-1]["seq"])
    seqs = [rec["seq"] for rec in page["records"]]
    assert seqs == sorted(seqs)
    for rec in page["records"]:
        assert rec["status"] in ("active", "withdrawn") and rec["bank"] == "canary"
        assert set(rec) >= {"id", "signal", "value", "view", "pipeline_version", "at"}


def check_feed_py(r: subprocess.CompletedProcess[str], live: Live) -> None:
    m = re.fullmatch(r"(\d+) active hashes, cursor (\d+)\n", r.stdout)
    assert m, r.stdout
    active = _all_feed(live)
    assert int(m[1]) == len(active) and len(active) >= CANARY_COUNT
    state = json.loads((live.work / "feed-state.json").read_text())
    assert set(state["hashes"]) == set(active) and state["cursor"] == m[2]


def check_cli_match(r: subprocess.CompletedProcess[str], live: Live) -> None:
    canary, other = json_lines(r.stdout)
    assert canary["file"] == "canary/takedown-canary-3.png" and canary_matched(canary)
    assert other == {"file": "photo.jpg", "matched": False, "matches": []}


def check_rate_headers(r: subprocess.CompletedProcess[str], live: Live) -> None:
    headers = dict(line.split(": ", 1) for line in r.stdout.strip().splitlines())
    headers = {k.lower(): v.strip() for k, v in headers.items()}
    assert headers["x-ratelimit-limit"] == "1200"
    assert 0 <= int(headers["x-ratelimit-remaining"]) < 1200
    assert int(headers["x-ratelimit-reset"]) > time.time() - 5


def check_retry_py(r: subprocess.CompletedProcess[str], live: Live) -> None:
    assert [line.split()[0] for line in r.stdout.splitlines()] == [str(n) for n in range(8)]
    retries = re.findall(r"^429 rate_limited: retrying in (\d+(?:\.\d+)?) s$", r.stderr,
                         re.MULTILINE)
    assert retries, r.stderr  # 8 requests at 3 per 2 seconds must have been throttled
    assert all(1 <= float(s) <= 3 for s in retries)  # the 2 s window, rounded up


def check_errors(r: subprocess.CompletedProcess[str], live: Live) -> None:
    got = []
    for line in r.stdout.splitlines():
        status, body = line.split(" ", 1)
        error = json.loads(body)["error"]
        assert error["message"] and re.fullmatch(r"[a-z_]+", error["code"])
        got.append((int(status), error["code"]))
    assert got == [(401, "unauthenticated"), (400, "invalid_json"),
                   (415, "unsupported_media_type"), (422, "invalid_hash"),
                   (404, "match_not_found"), (405, "method_not_allowed")]


def check_too_large(r: subprocess.CompletedProcess[str], live: Live) -> None:
    body, status = r.stdout.rstrip("\n").rsplit(" ", 1)
    assert status == "413"
    assert json.loads(body)["error"]["code"] in ("payload_too_large", "file_too_large")


CHECKS: dict[str, Check] = {
    "platform-add": check_platform_add,
    "canary": check_canary,
    "hash": check_hash,
    "match-curl": check_match_curl,
    "match-jq": check_match_jq,
    "client": check_client,
    "match-py": check_match_py,
    "match-image": check_match_image,
    "match-video": check_match_video,
    "feedback-curl": check_feedback_curl,
    "feedback-py": check_feedback_py,
    "feed-curl": check_feed_curl,
    "feed-py": check_feed_py,
    "cli-match": check_cli_match,
    "rate-headers": check_rate_headers,
    "retry-py": check_retry_py,
    "errors": check_errors,
    "too-large": check_too_large,
}


# --- tests ------------------------------------------------------------------------------------
def test_every_example_runs_and_is_checked():
    names = [b.name for b in RUNNABLE]
    assert len(names) == len(set(names)), "two blocks share a run= name"
    assert set(names) == set(CHECKS), (set(names) ^ set(CHECKS))
    for b in RUNNABLE:
        assert b.lang in ("sh", "python"), f"line {b.line}: run= on a {b.lang!r} block"
        assert all(n in BY_NAME for n in b.needs), f"line {b.line}: unknown needs {b.needs}"
        assert b.server in ("main", "throttled")
    for b in BLOCKS:
        if b.lang in ("sh", "bash", "python", "py") and not b.name:
            # only the reader's own settings may go unexecuted
            lines = [x for x in b.body.splitlines() if x.strip()]
            assert all(x.startswith("export TAKEDOWN_") for x in lines), (
                f"docs/api.md line {b.line}: an example without run=NAME is never tested")


def test_guide_covers_the_api():
    text = DOC.read_text()
    for needle in ("POST /api/v1/match", "/api/v1/match/image", "/api/v1/feedback",
                   "/api/v1/feed", "takedown platform add", "takedown hash --json",
                   "takedown canary", "takedown match --url", "pdq_content", "Retry-After",
                   "429", "evidence for", "withdrawn"):
        assert needle in text, needle
    for status in (400, 401, 403, 404, 405, 413, 415, 422, 429):
        assert re.search(rf"^\| {status} \| `", text, re.MULTILINE), f"{status} not in the table"


@pytest.mark.parametrize("name", [b.name for b in RUNNABLE])
def test_example(name: str, live: Live) -> None:
    block = BY_NAME[name]
    reason = _missing_tool(block)
    if reason:
        pytest.skip(reason)
    result = run_block(block, live)
    CHECKS[name](result, live)

"""Long web input fuzzing run: every endpoint, both schemathesis modes, raw requests and the JSON
parsers, counted.

    python bench/webfuzz.py --examples 2000 [--backends sqlite,postgres] [--only TEXT]

What runs (the machinery is the tests', at a larger example count):

* the platform API from its own /api/openapi.json (tests/test_api_schemathesis.py), positive
  and negative, on each backend;
* the submitter pages, their forms (with a real CSRF token in most cases and a broken one in
  the rest) and every other address outside /api/v1 (tests/test_web_fuzz.py), positive and
  negative on SQLite, the four forms on each other backend;
* raw requests of any method at any address (and JSON bodies with text no database holds), and
  hypothesis over the parsers directly (``--parser-examples`` each, 10 x ``--examples`` unless
  given).

Prints a table and writes bench/results/webfuzz.json: the machine, the duration, per operation
and mode the requests tried, the statuses seen and the check failures (first messages kept);
totals of requests and of 500s. Exit status 1 when any 500 or failure was seen: each is a bug to
fix with a regression test.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from importlib.metadata import version
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# Run as a script, this folder comes first on the path, and its http.py would shadow the
# standard library's; the repository root is what the imports below need.
sys.path[:] = [str(ROOT)] + [p for p in sys.path
                             if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import pytest  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402

from tests import test_api_schemathesis as api_tests  # noqa: E402
from tests import test_web_fuzz as web  # noqa: E402

MODES = {"positive": GenerationMode.POSITIVE, "negative": GenerationMode.NEGATIVE}
KEEP_MESSAGES = 5


class Tally:
    """Counts per (target, operation, mode, backend), and the first messages of failures."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def run(self, target: str, operation: str, mode: str, backend: str,
            fuzz: Callable[[Callable[[BaseException], None]], Counter[str]]) -> dict[str, Any]:
        messages: list[str] = []

        def on_failure(e: BaseException) -> None:
            if len(messages) < KEEP_MESSAGES:
                messages.append(f"{type(e).__name__}: {str(e)[:1500]}")

        started = time.perf_counter()
        seen = fuzz(on_failure)
        seconds = time.perf_counter() - started
        failures = seen.pop("failure", 0)
        statuses: Counter[str] = Counter()
        csrf: Counter[str] = Counter()
        for key, n in seen.items():
            label, _, status = key.rpartition(" ")
            statuses[status] += n
            if target == "site" and label and label != "-" and status.isdigit():
                csrf[label if label == "valid" else "broken"] += n
                if label == "valid" and int(status) != web.CSRF_FAILED:
                    csrf["valid, past the gate"] += n
        row = {"target": target, "operation": operation, "mode": mode, "backend": backend,
               "requests": sum(seen.values()), "seconds": round(seconds, 1),
               "statuses": dict(sorted(statuses.items())),
               "server_errors": sum(n for s, n in statuses.items()
                                    if s == "exception" or (s.isdigit() and int(s) >= 500
                                                             and int(s) != 503)),
               "check_failures": failures, "failure_messages": messages}
        if target == "parser":
            row["requests"] = 0
            row["inputs"] = sum(seen.values())
        if csrf:
            row["csrf"] = dict(csrf)
        self.rows.append(row)
        tried = row.get("inputs", row["requests"])
        print(f"{target:7} {operation:34} {mode:8} {backend:8} {tried:7}"
              f" {row['server_errors']:4} {failures:4}  {row['seconds']:7.1f}s  "
              f"{json.dumps(row['statuses'])}", flush=True)
        return row


@contextmanager
def backend_url(backend: str) -> Iterator[dict[str, Any]]:
    if backend == "sqlite":
        yield {}
    else:
        with web.postgres_database() as url:
            yield {"database_url": url}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int,
                    default=int(os.environ.get("TAKEDOWN_FUZZ_EXAMPLES", "500")),
                    help="hypothesis examples per operation and mode")
    ap.add_argument("--parser-examples", type=int, default=None,
                    help="inputs per parser and raw requests (default: 10 x --examples)")
    ap.add_argument("--backends", default="sqlite,postgres")
    ap.add_argument("--only", default="", help="run only the operations whose name holds this")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "webfuzz.json")
    args = ap.parse_args()
    backends = [b for b in args.backends.split(",") if b]
    many = args.parser_examples or args.examples * 10
    tally = Tally()
    started = time.time()
    skipped: list[str] = []

    def wanted(name: str) -> bool:
        return args.only in name

    with tempfile.TemporaryDirectory(prefix="webfuzz-") as tmp:
        for backend in backends:
            with ExitStack() as stack:
                try:
                    extra = stack.enter_context(backend_url(backend))
                except (Exception, pytest.skip.Exception) as e:  # no server runs
                    skipped.append(f"{backend}: {e}")
                    print(f"skipping {backend}: {e}", flush=True)
                    continue
                api = api_tests.build_api(Path(tmp) / f"api-{backend}", **extra)
                stack.callback(api.registry.close)
                for method, path in api_tests.OPERATIONS:
                    name = f"{method} {path}"
                    for mode, generation in MODES.items():
                        if wanted(name):
                            tally.run("api", name, mode, backend,
                                      lambda f, a=api, m=method, p=path, g=generation:
                                      api_tests.fuzz_api(a, m, p, g, args.examples, f))
                site = web.build_site(Path(tmp) / f"site-{backend}", **extra)
                stack.callback(site.registry.close)
                operations = web.SITE_OPERATIONS if backend == "sqlite" else sorted(
                    web.POSTED_FORMS)
                for method, path in operations:
                    name = f"{method} {path}"
                    for mode in MODES:
                        if wanted(name):
                            tally.run("site", name, mode, backend,
                                      lambda f, s=site, m=method, p=path, mo=mode:
                                      web.fuzz_operation(s, m, p, mo, args.examples, f))
                if backend == "sqlite" and wanted("raw requests"):
                    tally.run("raw", "raw requests (any method, address, body)", "-", backend,
                              lambda f, s=site: web.fuzz_raw(s, many, f))
        for name in sorted(web.PARSERS):
            if wanted(name):
                tally.run("parser", name, "-", "-",
                          lambda f, n=name: web.fuzz_parser(n, many, f))

    rows = tally.rows
    out = {
        "benchmark": "web input fuzzing (schemathesis positive+negative over every endpoint, "
                     "raw requests, hypothesis over the JSON parsers)",
        "command": "python " + " ".join(sys.argv),
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "cpus": os.cpu_count(),
                    "versions": {p: version(p) for p in ("schemathesis", "hypothesis", "flask",
                                                         "apiflask", "werkzeug")}},
        "commit": subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                                 text=True).stdout.strip(),
        "examples_per_operation_and_mode": args.examples,
        "examples_per_parser_and_raw": many,
        "seconds": round(time.time() - started),
        "total_requests": sum(r["requests"] for r in rows),
        "total_parser_inputs": sum(r.get("inputs", 0) for r in rows),
        "total_server_errors": sum(r["server_errors"] for r in rows),
        "total_check_failures": sum(r["check_failures"] for r in rows),
        "by_mode": {mode: sum(r["requests"] for r in rows if r["mode"] == mode)
                    for mode in ("positive", "negative", "-")},
        "by_backend": {b: sum(r["requests"] for r in rows if r["backend"] == b)
                       for b in backends},
        "skipped": skipped,
        "operations": rows,
    }
    print(json.dumps({k: v for k, v in out.items() if k != "operations"}, indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    return 1 if out["total_server_errors"] or out["total_check_failures"] else 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""How many PIN guesses an attacker gets (issue 12, abuse): the lockout policy of
``registry.service.pins`` run for real (the service, its database, its counters) on a virtual
clock, for a day, against an attacker who guesses as fast as the registry lets it and waits out
every lockout.

Scenarios:

1. one address against one case (someone who learned a victim's case number);
2. one address spraying guesses over many case numbers (real ones, known to it);
3. many addresses (a botnet) against one case;

and in each, the case's owner then checks the status from their own device: the owner must get
in (the lockout is not a weapon). The PIN has 12 random digits (10^12); the chance a day's
guesses find it is guesses / 10^12. On top of this policy, the web pages' per-address request
limit (``TAKEDOWN_CASE_LIMIT``, default 60 per hour) caps any one address; the figures below are
the policy's own.

    .venv/bin/python bench/pin_guessing.py        # ~2 min

Writes bench/results/pin_guessing.json.
"""

from __future__ import annotations

import argparse
import heapq
import json
import platform
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from registry.bootstrap import build_registry
from registry.config import Settings
from registry.errors import CaseLocked, WrongPin
from registry.service import SubmittedImage, cases

ROOT = Path(__file__).resolve().parent.parent
DAY = timedelta(hours=24)
PIN_SPACE = 10**12


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def image(n: int) -> SubmittedImage:
    from registry.domain import Signal, SignalKind

    code = n.to_bytes(4, "big") * 8  # distinct, not degenerate
    return SubmittedImage((Signal(SignalKind.PDQ, bytes(b ^ 0x5A for b in code)),), 100)


def attack(registry, clock: Clock, numbers: list[str], addresses: list[str],
           step_s: float) -> dict[str, object]:
    """Every address guesses at every number in turn, as soon as it is allowed to, for a day;
    a refused (locked) attempt costs the attacker nothing but tells it how long to wait."""
    start = clock.now
    before = pin_failures(registry)
    queue = [(start, n, a) for n, a in enumerate(addresses)]
    heapq.heapify(queue)
    turn = {a: 0 for a in addresses}
    attempts = refused = 0
    per_hour = [0] * 24
    while queue:
        at, n, address = heapq.heappop(queue)
        if at - start >= DAY:
            continue
        clock.now = at
        number = numbers[turn[address] % len(numbers)]
        attempts += 1
        checked = pin_failures(registry)
        try:
            registry.case_status(number, "0000-0000-0001", address)
        except WrongPin:
            turn[address] += 1
            heapq.heappush(queue, (at + timedelta(seconds=step_s), n, address))
        except CaseLocked as locked:  # the guess may have been checked, and locked it out
            turn[address] += 1
            heapq.heappush(queue, (at + timedelta(seconds=locked.retry_after_s), n, address))
        if pin_failures(registry) > checked:
            per_hour[int((at - start).total_seconds() // 3600)] += 1
        else:
            refused += 1
    guesses = pin_failures(registry) - before
    return {"guesses_per_day": guesses, "attempts": attempts, "refused_unchecked": refused,
            "guesses_per_hour_max": max(per_hour), "guesses_per_hour_mean": guesses / 24,
            "first_hour": per_hour[0], "chance_of_finding_a_pin_per_day":
            guesses / PIN_SPACE if len(numbers) == 1 else None}


def pin_failures(registry) -> int:
    """Wrong PINs the registry actually checked (each writes one ``pin_failed`` audit event)."""
    from sqlalchemy import text

    with registry._store.engine.connect() as conn:
        return int(conn.execute(text(
            "SELECT count(*) FROM audit_events WHERE action = 'pin_failed'")).scalar() or 0)


def owner_gets_in(registry, number: str, pin: str) -> bool:
    try:
        return registry.case_status(number, pin, "203.0.113.250").number == number
    except (WrongPin, CaseLocked):
        return False


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", type=int, default=200, help="case numbers the sprayer knows")
    p.add_argument("--addresses", type=int, default=200, help="addresses of the botnet")
    p.add_argument("--step", type=float, default=1.0, help="seconds between guesses")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "pin_guessing.json"))
    args = p.parse_args()
    started = time.time()
    clock = Clock()
    cases._now = clock  # the service's clock: a day passes in seconds
    report: dict[str, object] = {"machine": platform.processor() or platform.machine()}
    with tempfile.TemporaryDirectory(prefix="takedown-pins-") as tmp:
        settings = Settings.from_env({}, data_dir=tmp, pin_kdf_n=16)
        report["policy"] = {k: getattr(settings, k) for k in (
            "pin_max_failures", "pin_client_max_failures", "pin_case_max_failures",
            "pin_lockout_s", "case_limit")}
        registry = build_registry(settings)
        receipts = [registry.submit_case([image(n)]) for n in range(args.cases + 2)]
        victim, sprayed, botnet_victim = receipts[0], receipts[2:], receipts[1]
        scenarios = {}
        scenarios["one_address_one_case"] = attack(
            registry, clock, [victim.number], ["198.51.100.1"], args.step)
        scenarios["one_address_one_case"]["owner_gets_in"] = owner_gets_in(
            registry, victim.number, victim.pin)
        scenarios["one_address_many_cases"] = attack(
            registry, clock, [r.number for r in sprayed], ["198.51.100.2"], args.step)
        scenarios["one_address_many_cases"]["cases"] = len(sprayed)
        scenarios["one_address_many_cases"]["owner_gets_in"] = owner_gets_in(
            registry, sprayed[0].number, sprayed[0].pin)
        addresses = [f"10.{n // 250}.{n % 250}.1" for n in range(args.addresses)]
        scenarios["many_addresses_one_case"] = attack(
            registry, clock, [botnet_victim.number], addresses, args.step)
        scenarios["many_addresses_one_case"]["addresses"] = len(addresses)
        scenarios["many_addresses_one_case"]["owner_gets_in"] = owner_gets_in(
            registry, botnet_victim.number, botnet_victim.pin)
        per_address = scenarios["many_addresses_one_case"]["guesses_per_day"] / len(addresses)
        scenarios["many_addresses_one_case"]["guesses_per_address_per_day"] = per_address
        registry.close()
    report["scenarios"] = scenarios
    report["seconds"] = round(time.time() - started, 1)
    print(f"{'scenario':<26} {'guesses/day':>11} {'max/hour':>8} {'owner in':>8}")
    for name, s in scenarios.items():
        print(f"{name:<26} {s['guesses_per_day']:>11} {s['guesses_per_hour_max']:>8} "
              f"{s['owner_gets_in']!s:>8}")
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out} ({report['seconds']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The audit chain's anchors: signed heads that make a cut-off tail or an emptied table visible.

Each audit event's digest covers the previous one's, so editing, deleting or reordering events
breaks the chain where it happened. What the chain alone cannot show is its own end: drop the
last events (or all of them) and what remains is a valid, shorter chain. So the head, ``(id,
digest)`` of the newest event, is published, signed with ``TAKEDOWN_SECRET_KEY`` (HMAC-SHA256):
in ``/readyz`` for anyone watching (a platform or a monitor can keep what it saw), and by each
serving process into ``<data dir>/audit-anchors.jsonl`` as the head advances. ``verify`` walks
the chain and then checks every anchor it is given: the event it names must still be there with
the same digest. A database-only attacker cannot forge an anchor without the key.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass, field
from pathlib import Path

from registry.domain import Case
from registry.errors import InvalidInput
from registry.store import Store

ANCHOR_FILE = "audit-anchors.jsonl"


@dataclass(frozen=True, slots=True)
class Anchor:
    id: int
    digest: str
    signature: str | None = None

    def to_json(self) -> dict[str, object]:
        return {"id": self.id, "digest": self.digest, "signature": self.signature}

    @classmethod
    def parse(cls, raw: object, where: str) -> Anchor:
        if isinstance(raw, str):  # "ID:DIGEST" on the command line
            ident, _, digest = raw.partition(":")
            raw = {"id": int(ident) if ident.isdigit() else ident, "digest": digest}
        if (not isinstance(raw, dict) or not isinstance(raw.get("id"), int)
                or isinstance(raw.get("id"), bool) or not isinstance(raw.get("digest"), str)
                or len(raw["digest"]) != 64):
            raise InvalidInput(f"{where}: an anchor is an event id and its 64-hex-digit digest.")
        signature = raw.get("signature")
        return cls(raw["id"], raw["digest"], signature if isinstance(signature, str) else None)


@dataclass(frozen=True, slots=True)
class AuditReport:
    events: int
    broken_at: int | None  # id of the first event whose digest does not follow
    anchors: int
    problems: tuple[str, ...] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        return self.broken_at is None and not self.problems

    def to_json(self) -> dict[str, object]:
        return {"ok": self.ok, "events": self.events, "broken_at": self.broken_at,
                "anchors": self.anchors, "problems": list(self.problems)}


def sign(key: str, ident: int, digest: str) -> str | None:
    if not key:
        return None
    return hmac.new(key.encode(), f"takedown-audit-head:{ident}:{digest}".encode(),
                    hashlib.sha256).hexdigest()


def head(store: Store, key: str) -> Anchor | None:
    with store.transaction(write=False) as tx:
        found = tx.audit.head()
    if found is None:
        return None
    return Anchor(found[0], found[1], sign(key, *found))


def write_anchor(store: Store, key: str, folder: Path, last: int) -> int:
    """Append the head to the anchor file if it moved past ``last``; the head's id."""
    anchor = head(store, key)
    if anchor is None or anchor.id <= last:
        return last
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ANCHOR_FILE, "a", encoding="utf-8") as out:
        out.write(json.dumps(anchor.to_json(), separators=(",", ":")) + "\n")
    return anchor.id


def read_anchors(path: Path) -> list[Anchor]:
    anchors = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                raw = json.loads(line)
            except ValueError:
                raise InvalidInput(f"{path}:{n}: not a JSON anchor.") from None
            anchors.append(Anchor.parse(raw, f"{path}:{n}"))
    return anchors


def verify(store: Store, key: str, anchors: list[Anchor]) -> AuditReport:
    with store.transaction(write=False) as tx:
        checked, broken = tx.audit.verify()
        digests = tx.audit.digests([a.id for a in anchors])
        newest = tx.audit.head()
    problems: list[str] = []
    for a in sorted(set(anchors), key=lambda a: a.id):
        expected = sign(key, a.id, a.digest)
        if a.signature is not None and expected is not None and not hmac.compare_digest(
                a.signature, expected):
            problems.append(f"anchor of event {a.id} has a signature this registry's key did "
                            "not make: it was not published here")
            continue
        if a.id not in digests:
            end = f"the newest is {newest[0]}" if newest else "the audit log is empty"
            problems.append(f"event {a.id} was published as part of the chain and is gone "
                            f"({end}): events were deleted")
        elif digests[a.id] != a.digest:
            problems.append(f"event {a.id} has another digest than the one published for it")
    return AuditReport(checked, broken, len(anchors), tuple(problems))


def trail(store: Store, case: Case | None = None, platform: str | None = None,
          limit: int = 50) -> dict[str, object]:
    """What the audit log (and the match records) say about one case or one platform, newest
    first; with neither, the newest events. A case's events are those naming it (submitted,
    withdrawn, unlocked, PIN failures and resets) and, separately, the matches of its signals
    with each one's platform and feedback. A platform's are those it did (match requests, feed
    reads, feedback) and those done to it (added, key rotated, revoked). No hash value is in
    any of it: match events hold match ids, not queries."""
    if not 1 <= limit <= 10_000:
        raise InvalidInput("--limit must be between 1 and 10000.")
    with store.transaction(write=False) as tx:
        if case is not None:
            return {"case": case.number,
                    "events": tx.audit.recent(limit, subject=case.number),
                    "matches": tx.matches.of_case(case.id, limit)}
        if platform is not None:
            return {"platform": platform,
                    "events": tx.audit.recent(limit, subject=platform,
                                              actor=f"platform:{platform}")}
        return {"events": tx.audit.recent(limit)}

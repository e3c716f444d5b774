"""The change log (what indexes and feeds follow) and the hash-chained audit log."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import cast

from sqlalchemy import Table, func, insert, or_, select, text
from sqlalchemy.orm import Session

from registry.domain import (
    BankKind,
    Change,
    ChangeAction,
    FeedRecord,
    SignalStatus,
)
from registry.store.models import (
    AuditRow,
    BankRow,
    ChangeRow,
    SignalRow,
)
from registry.store.notify import CHANNEL
from registry.store.values import (
    _aware,
    _chunks,
    _serialise_logs,
    erased_signal,
    loaded_signal,
    now,
)


class ChangeLog:
    def __init__(self, session: Session) -> None:
        self.s = session

    def append(self, action: ChangeAction, signal_ids: Iterable[int]) -> None:
        ts = now()
        _serialise_logs(self.s)
        params = [{"signal_id": i, "action": action.value, "at": ts} for i in signal_ids]
        if params:
            # Core, not the ORM bulk path: 1M log entries of an import in a third of the time.
            self.s.execute(insert(cast(Table, ChangeRow.__table__)), params)
        if self.s.get_bind().dialect.name == "postgresql":
            # Delivered at commit to every worker's listener (registry.store.notify).
            self.s.execute(text("SELECT pg_notify(:channel, '')"), {"channel": CHANNEL})

    def head(self) -> int:
        return int(self.s.scalar(select(func.coalesce(func.max(ChangeRow.seq), 0))) or 0)

    def fingerprint(self, seq: int) -> str:
        """What entry ``seq`` is (""; when pruned or absent): a snapshot taken at ``seq``
        records it, so a restored or different database with another history is noticed."""
        row = self.s.execute(select(ChangeRow.seq, ChangeRow.action, ChangeRow.signal_id,
                                    ChangeRow.at).where(ChangeRow.seq == seq)).first()
        if row is None:
            return ""
        at = _aware(row.at)
        return f"{row.seq}:{row.action}:{row.signal_id}:{at.isoformat() if at else ''}"

    def first(self) -> int:
        """The oldest entry still in the log (0 when empty); entries before it were pruned."""
        return int(self.s.scalar(select(func.coalesce(func.min(ChangeRow.seq), 0))) or 0)

    def feed(self, position: int, limit: int) -> list[FeedRecord]:
        """Change-log entries after ``position`` as feed records (adds are ``active``,
        withdrawals and quarantines ``withdrawn``). Purged hashes are gone from it (``case
        purge`` waits until every reader of the feed has read past their withdrawal). The
        ``benign`` bank's hashes are not in it:
        they suppress matches here, and a mirror reading them as takedowns would remove the
        very images they protect."""
        stmt = (select(ChangeRow.seq, ChangeRow.action, ChangeRow.at, SignalRow, BankRow.name)
                .join(SignalRow, SignalRow.id == ChangeRow.signal_id)
                .join(BankRow, BankRow.id == SignalRow.bank_id)
                .where(ChangeRow.seq > position, BankRow.kind != BankKind.BENIGN.value,
                       SignalRow.status != SignalStatus.PURGED.value)
                .order_by(ChangeRow.seq).limit(limit))
        return [FeedRecord(seq=int(seq),
                           status="active" if action == ChangeAction.ADD.value else "withdrawn",
                           signal_id=row.id,
                           signal=loaded_signal(row.kind, row.value, row.payload),
                           bank=str(bank), label=row.label,
                           pipeline_version=row.pipeline_version, at=_aware(at) or now())
                for seq, action, at, row, bank in self.s.execute(stmt)]

    def since(self, position: int, limit: int = 100_000) -> list[Change]:
        """Change-log entries after ``position``. A purged hash's entries come as withdrawals
        of a zero value: the index drops the id (if it still holds it) and the position moves
        on, with no value left to add back."""
        stmt = (select(ChangeRow.seq, ChangeRow.action, ChangeRow.signal_id, SignalRow.kind,
                       SignalRow.value, SignalRow.payload, SignalRow.status)
                .join(SignalRow, SignalRow.id == ChangeRow.signal_id)
                .where(ChangeRow.seq > position).order_by(ChangeRow.seq).limit(limit))
        return [Change(int(seq), ChangeAction(action), int(sid),
                       loaded_signal(kind, value, payload))
                if status != SignalStatus.PURGED.value else
                Change(int(seq), ChangeAction.WITHDRAW, int(sid), erased_signal(kind))
                for seq, action, sid, kind, value, payload, status in self.s.execute(stmt)]


class AuditLog:
    """Hash-chained audit events; ``verify`` recomputes the chain."""

    def __init__(self, session: Session) -> None:
        self.s = session

    def record(self, actor: str, action: str, subject: str = "",
               details: dict[str, object] | None = None) -> None:
        _serialise_logs(self.s)
        prev = self.s.scalar(select(AuditRow.digest).order_by(AuditRow.id.desc()).limit(1)) or ""
        ts = now()
        body = json.dumps(details or {}, sort_keys=True, separators=(",", ":"))
        digest = _audit_digest(prev, ts, actor, action, subject, body)
        self.s.add(AuditRow(at=ts, actor=actor, action=action, subject=subject, details=body,
                            digest=digest))
        self.s.flush()

    def recent(self, limit: int = 50, subject: str | None = None, actor: str | None = None
               ) -> list[dict[str, object]]:
        """The newest events, newest first; with ``subject`` and/or ``actor``, those whose
        subject or actor is one of them."""
        stmt = select(AuditRow)
        wanted = []
        if subject is not None:
            wanted.append(AuditRow.subject == subject)
        if actor is not None:
            wanted.append(AuditRow.actor == actor)
        if wanted:
            stmt = stmt.where(or_(*wanted))
        rows = self.s.scalars(stmt.order_by(AuditRow.id.desc()).limit(limit))
        return [{"id": r.id, "at": (_aware(r.at) or now()).isoformat(), "actor": r.actor,
                 "action": r.action, "subject": r.subject, "details": json.loads(r.details)}
                for r in rows]

    def head(self) -> tuple[int, str] | None:
        """``(id, digest)`` of the newest event."""
        row = self.s.execute(select(AuditRow.id, AuditRow.digest)
                             .order_by(AuditRow.id.desc()).limit(1)).first()
        return (int(row[0]), str(row[1])) if row else None

    def digests(self, ids: Sequence[int]) -> dict[int, str]:
        out: dict[int, str] = {}
        for chunk in _chunks(sorted(set(ids)), 500):
            out.update((int(i), str(d)) for i, d in self.s.execute(
                select(AuditRow.id, AuditRow.digest).where(AuditRow.id.in_(chunk))))
        return out

    def verify(self) -> tuple[int, int | None]:
        """(events checked, id of the first broken event or None)."""
        prev, checked = "", 0
        for r in self.s.scalars(select(AuditRow).order_by(AuditRow.id)):
            at = _aware(r.at) or now()
            if _audit_digest(prev, at, r.actor, r.action, r.subject, r.details) != r.digest:
                return checked, r.id
            prev, checked = r.digest, checked + 1
        return checked, None


def _audit_digest(prev: str, at: datetime, actor: str, action: str, subject: str,
                  details: str) -> str:
    canonical = "\x1f".join([prev, at.astimezone(UTC).isoformat(), actor, action, subject, details])
    return hashlib.sha256(canonical.encode()).hexdigest()

"""The unit of work and its repositories. Rows in, domain objects out."""

from __future__ import annotations

import builtins
import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, cast

from sqlalchemy import Table, delete, func, insert, or_, select, text, update
from sqlalchemy.orm import Session

from registry.domain import (
    Bank,
    BankKind,
    Case,
    CaseStatus,
    Change,
    ChangeAction,
    FeedRecord,
    Platform,
    RegisteredSignal,
    Scope,
    Signal,
    SignalKind,
    SignalStatus,
    Thresholds,
)
from registry.store.models import (
    AuditRow,
    BankRow,
    CaseRow,
    ChangeRow,
    FeedbackRow,
    MatchRow,
    PinFailureRow,
    PlatformRow,
    SignalRow,
)
from registry.store.notify import CHANNEL

if TYPE_CHECKING:
    from registry.store.lists import ListRepository


def now() -> datetime:
    return datetime.now(UTC)


def _aware(ts: datetime | None) -> datetime | None:
    # SQLite returns naive datetimes; everything we store is UTC.
    if ts is not None and ts.tzinfo is None:
        return ts.replace(tzinfo=UTC)
    return ts


class Transaction:
    """One database transaction and the repositories bound to it."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.banks = BankRepository(session)
        self.cases = CaseRepository(session)
        self.pin_failures = PinFailureRepository(session)
        self.signals = SignalRepository(session)
        self.platforms = PlatformRepository(session)
        self.changes = ChangeLog(session)
        self.audit = AuditLog(session)
        self.matches = MatchRepository(session)

    @property
    def lists(self) -> ListRepository:
        # Imported here: registry.store.lists builds on this module's change log and helpers.
        from registry.store.lists import ListRepository
        return ListRepository(self.session)


class BankRepository:
    def __init__(self, session: Session) -> None:
        self.s = session

    def ensure(self, name: str, kind: BankKind, description: str = "") -> int:
        row = self.s.scalar(select(BankRow).where(BankRow.name == name))
        if row is None:
            row = BankRow(name=name, kind=kind.value, description=description, created_at=now())
            self.s.add(row)
            self.s.flush()
        return row.id

    def names(self) -> dict[int, str]:
        return {r.id: r.name for r in self.s.scalars(select(BankRow))}

    def get(self, name: str, *, for_update: bool = False) -> tuple[int, Bank] | None:
        stmt = select(BankRow).where(BankRow.name == name)
        row = self.s.scalar(stmt.with_for_update() if for_update else stmt)
        return (row.id, _bank(row)) if row is not None else None

    def add(self, bank: Bank) -> int:
        row = BankRow(name=bank.name, kind=bank.kind.value, description=bank.description,
                      created_at=now(), enabled=bank.enabled,
                      thresholds=json.dumps(bank.thresholds_json()), source=bank.source,
                      cursor=bank.cursor)
        self.s.add(row)
        self.s.flush()
        return row.id

    def update(self, bank_id: int, *, enabled: bool | None = None,
               thresholds: dict[str, list[int]] | None = None, description: str | None = None,
               source: str | None = None, cursor: str | None = None) -> None:
        values: dict[str, object] = {}
        if enabled is not None:
            values["enabled"] = enabled
        if thresholds is not None:
            values["thresholds"] = json.dumps(thresholds, sort_keys=True)
        for name, value in (("description", description), ("source", source),
                            ("cursor", cursor)):
            if value is not None:
                values[name] = value
        if values:
            self.s.execute(update(BankRow).where(BankRow.id == bank_id).values(**values))

    def by_id(self) -> dict[int, Bank]:
        """Every bank with its policy, by id (a handful of rows: matching reads them with the
        hits of each request)."""
        return {r.id: _bank(r) for r in self.s.scalars(select(BankRow))}

    def listing(self) -> list[dict[str, object]]:
        """Every bank, by name: its kind, description, creation time and signals by status."""
        counts: dict[int, dict[str, int]] = {}
        for bank_id, status, n in self.s.execute(
                select(SignalRow.bank_id, SignalRow.status, func.count())
                .group_by(SignalRow.bank_id, SignalRow.status)):
            counts.setdefault(int(bank_id), {})[str(status)] = int(n)
        return [{"name": r.name, "kind": r.kind, "description": r.description,
                 "created_at": (_aware(r.created_at) or now()).isoformat(),
                 "enabled": bool(r.enabled), "thresholds": _bank(r).thresholds_json(),
                 "source": r.source, "cursor": r.cursor,
                 "signals": counts.get(r.id, {})}
                for r in self.s.scalars(select(BankRow).order_by(BankRow.name))]


def _bank(row: BankRow) -> Bank:
    thresholds = {}
    for kind, (strong, weak) in json.loads(row.thresholds or "{}").items():
        thresholds[SignalKind(kind)] = Thresholds(int(strong), int(weak))
    return Bank(name=row.name, kind=BankKind(row.kind), description=row.description,
                enabled=bool(row.enabled), thresholds=thresholds, source=row.source,
                cursor=row.cursor)


class CaseRepository:
    def __init__(self, session: Session) -> None:
        self.s = session

    def add(self, number: str, pin_hash: str) -> int:
        ts = now()
        row = CaseRow(number=number, pin_hash=pin_hash, status=CaseStatus.ACTIVE.value,
                      created_at=ts, updated_at=ts)
        self.s.add(row)
        self.s.flush()
        return row.id

    def get(self, number: str, *, for_update: bool = False) -> Case | None:
        stmt = select(CaseRow).where(CaseRow.number == number)
        if for_update:
            stmt = stmt.with_for_update()
        row = self.s.scalar(stmt)
        return _case(row) if row else None

    def list(self, status: CaseStatus | None = None, limit: int = 100, offset: int = 0
             ) -> list[Case]:
        stmt = select(CaseRow).order_by(CaseRow.id.desc()).limit(limit).offset(offset)
        if status is not None:
            stmt = stmt.where(CaseRow.status == status.value)
        return [_case(r) for r in self.s.scalars(stmt)]

    def set_pin_hash(self, case_id: int, pin_hash: str) -> None:
        self.s.execute(update(CaseRow).where(CaseRow.id == case_id).values(
            pin_hash=pin_hash, updated_at=now()))

    def set_withdrawn(self, case_id: int) -> None:
        ts = now()
        self.s.execute(update(CaseRow).where(CaseRow.id == case_id).values(
            status=CaseStatus.WITHDRAWN.value, withdrawn_at=ts, updated_at=ts))

    def count(self) -> dict[str, int]:
        rows = self.s.execute(select(CaseRow.status, func.count()).group_by(CaseRow.status))
        return {str(status): int(n) for status, n in rows}


def _case(row: CaseRow) -> Case:
    return Case(id=row.id, number=row.number, status=CaseStatus(row.status),
                pin_hash=row.pin_hash, created_at=_aware(row.created_at) or now(),
                withdrawn_at=_aware(row.withdrawn_at))


class PinFailureRepository:
    """Wrong-PIN counters per (case, client) and per client (``case_id`` None)."""

    def __init__(self, session: Session) -> None:
        self.s = session

    def _row(self, case_id: int | None, client: str, *, for_update: bool = False
             ) -> PinFailureRow | None:
        stmt = select(PinFailureRow).where(
            PinFailureRow.client == client,
            PinFailureRow.case_id.is_(None) if case_id is None
            else PinFailureRow.case_id == case_id).order_by(PinFailureRow.id).limit(1)
        if for_update:
            stmt = stmt.with_for_update()
        return self.s.scalar(stmt)

    def get(self, case_id: int | None, client: str) -> tuple[int, datetime | None, datetime]:
        """``(failures, locked_until, last_failure_at)``; zeros when there is no record."""
        row = self._row(case_id, client)
        if row is None:
            return 0, None, datetime.min.replace(tzinfo=UTC)
        return row.failures, _aware(row.locked_until), _aware(row.last_failure_at) or now()

    def put(self, case_id: int | None, client: str, failures: int,
            locked_until: datetime | None, at: datetime) -> None:
        row = self._row(case_id, client, for_update=True)
        if row is None:
            self.s.add(PinFailureRow(case_id=case_id, client=client, failures=failures,
                                     locked_until=locked_until, last_failure_at=at))
        else:
            row.failures, row.locked_until, row.last_failure_at = failures, locked_until, at
        self.s.flush()

    def of_case_since(self, case_id: int, since: datetime) -> int:
        """Wrong PINs for this case from every client whose last one came after ``since``."""
        return int(self.s.scalar(select(func.coalesce(func.sum(PinFailureRow.failures), 0))
                                 .where(PinFailureRow.case_id == case_id,
                                        PinFailureRow.last_failure_at > since)) or 0)

    def clear(self, case_id: int, client: str | None = None) -> int:
        stmt = delete(PinFailureRow).where(PinFailureRow.case_id == case_id)
        if client is not None:
            stmt = stmt.where(PinFailureRow.client == client)
        return int(self.s.execute(stmt).rowcount or 0)  # type: ignore[attr-defined]

    def purge(self, before: datetime, at: datetime) -> None:
        """Forget counters whose last failure is older than ``before`` and that lock nothing."""
        self.s.execute(delete(PinFailureRow).where(
            PinFailureRow.last_failure_at < before,
            (PinFailureRow.locked_until.is_(None)) | (PinFailureRow.locked_until < at)))


class SignalRepository:
    def __init__(self, session: Session) -> None:
        self.s = session

    def add_many(self, bank_id: int, case_id: int | None,
                 signals: Sequence[tuple[Signal, str, int | None]], pipeline_version: int,
                 image_key: str = "") -> list[int]:
        """Insert ``(signal, label, quality)`` rows of one image; return their ids."""
        return self.add_images(bank_id, case_id, [(signals, image_key)], pipeline_version)

    def add_images(self, bank_id: int, case_id: int | None,
                   images: Sequence[tuple[Sequence[tuple[Signal, str, int | None]], str]],
                   pipeline_version: int) -> list[int]:
        """Insert the rows of many images (``(rows, image_key)`` each) in bulk statements;
        return the new ids in order (imports register thousands of images per call)."""
        ts = now()
        params = [{"case_id": case_id, "bank_id": bank_id, "kind": sig.kind.value,
                   "value": stored_value(sig), "payload": stored_payload(sig), "label": label,
                   "status": SignalStatus.ACTIVE.value,
                   "quality": quality, "pipeline_version": pipeline_version,
                   "image_key": image_key, "created_at": ts, "updated_at": ts}
                  for rows, image_key in images for sig, label, quality in rows]
        return insert_signals(self.s, params)

    def ids_of_case(self, case_id: int, status: SignalStatus | None = None) -> list[int]:
        stmt = select(SignalRow.id).where(SignalRow.case_id == case_id).order_by(SignalRow.id)
        if status is not None:
            stmt = stmt.where(SignalRow.status == status.value)
        return list(self.s.scalars(stmt))

    def count_by_case(self, case_id: int) -> dict[str, int]:
        rows = self.s.execute(select(SignalRow.kind, func.count())
                              .where(SignalRow.case_id == case_id).group_by(SignalRow.kind))
        return {str(k): int(n) for k, n in rows}

    def set_status(self, ids: Iterable[int], status: SignalStatus) -> None:
        ids = list(ids)
        for chunk in _chunks(ids, 500):
            self.s.execute(update(SignalRow).where(SignalRow.id.in_(chunk))
                           .values(status=status.value, updated_at=now()))

    def get_many(self, ids: Iterable[int], banks: dict[int, Bank] | None = None
                 ) -> dict[int, RegisteredSignal]:
        """The signals of ``ids`` that exist; ``banks`` (``BankRepository.by_id``) when the
        caller has read them already."""
        out: dict[int, RegisteredSignal] = {}
        if banks is None:
            banks = BankRepository(self.s).by_id()
        cols = (SignalRow.id, SignalRow.kind, SignalRow.value, SignalRow.payload,
                SignalRow.bank_id, SignalRow.status, SignalRow.label, SignalRow.removed,
                SignalRow.not_violating, SignalRow.image_key, CaseRow.number)
        for chunk in _chunks(sorted(set(ids)), 500):
            stmt = (select(*cols).outerjoin(CaseRow, CaseRow.id == SignalRow.case_id)
                    .where(SignalRow.id.in_(chunk)))  # plain rows: no ORM identity map
            for (sid, kind, value, payload, bank_id, status, label, removed, not_violating,
                 image_key, number) in self.s.execute(stmt):
                out[sid] = RegisteredSignal(
                    id=sid, signal=loaded_signal(kind, value, payload),
                    bank=banks[bank_id].name, status=SignalStatus(status), case_number=number,
                    label=label, removed=removed, not_violating=not_violating,
                    image_key=image_key, bank_kind=banks[bank_id].kind)
        return out

    def find_exact(self, kind: SignalKind, values: Iterable[str]) -> dict[str, list[int]]:
        """Active signal ids whose value equals one of ``values`` (digests: exact matching)."""
        wanted = sorted(set(values))
        if self.s.get_bind().dialect.name == "postgresql":
            # One array parameter (``= ANY``) instead of an IN list of a bind parameter per
            # value: a batch's 1000 digests cost one statement, not two of 500 parameters each
            # (which SQLAlchemy renders and psycopg binds one by one).
            return self._find_exact_pg(kind, wanted)
        out: dict[str, list[int]] = {}
        for chunk in _chunks(wanted, 500):
            stmt = select(SignalRow.value, SignalRow.id).where(
                SignalRow.kind == kind.value, SignalRow.value.in_(chunk),
                SignalRow.status == SignalStatus.ACTIVE.value)
            for value, sid in self.s.execute(stmt):
                out.setdefault(value, []).append(sid)
        return out

    def _find_exact_pg(self, kind: SignalKind, values: list[str]) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        if not values:
            return out
        rows = self.s.execute(
            text("SELECT value, id FROM signals WHERE kind = :kind AND status = :status "
                 "AND value = ANY(:values)"),
            {"kind": kind.value, "status": SignalStatus.ACTIVE.value, "values": values})
        for value, sid in rows:
            out.setdefault(value, []).append(int(sid))
        return out

    def active(self, kinds: Iterable[SignalKind], batch: int = 100_000
               ) -> Iterable[list[tuple[int, str, str]]]:
        """Every active ``(id, kind, hex)`` of the given kinds, in id order, in batches."""
        names = [k.value for k in kinds]
        last = 0
        while True:
            stmt = (select(SignalRow.id, SignalRow.kind, SignalRow.value)
                    .where(SignalRow.kind.in_(names), SignalRow.status == SignalStatus.ACTIVE.value,
                           SignalRow.id > last)
                    .order_by(SignalRow.id).limit(batch))
            rows = [(int(i), str(k), str(v)) for i, k, v in self.s.execute(stmt)]
            if not rows:
                return
            yield rows
            last = rows[-1][0]

    def active_local(self, batch: int = 10_000) -> Iterable[list[tuple[int, bytes]]]:
        """Every active local signal as ``(id, packed keypoints)``, in id order, in batches."""
        last = 0
        while True:
            stmt = (select(SignalRow.id, SignalRow.payload)
                    .where(SignalRow.kind == SignalKind.LOCAL.value,
                           SignalRow.status == SignalStatus.ACTIVE.value, SignalRow.id > last)
                    .order_by(SignalRow.id).limit(batch))
            rows = [(int(i), bytes(p or b"")) for i, p in self.s.execute(stmt)]
            if not rows:
                return
            yield rows
            last = rows[-1][0]

    def feedback_since_review(self, signal_id: int) -> tuple[int, int, int, bool]:
        """Reports on this signal's matches since an operator last reviewed it: ``(matches
        reported not_violating, platforms that reported not_violating, matches reported
        removed, whether it sits in the canary bank)``; each match counts once per outcome."""
        row = self.s.execute(select(SignalRow.reviewed_at, BankRow.kind)
                             .join(BankRow, BankRow.id == SignalRow.bank_id)
                             .where(SignalRow.id == signal_id)).one()
        reviewed, bank_kind = row
        stmt = (select(FeedbackRow.outcome, func.count(func.distinct(FeedbackRow.match_id)),
                       func.count(func.distinct(FeedbackRow.platform_id)))
                .join(MatchRow, MatchRow.id == FeedbackRow.match_id)
                .where(MatchRow.signal_id == signal_id,
                       FeedbackRow.outcome.in_(("not_violating", "removed")))
                .group_by(FeedbackRow.outcome))
        if reviewed is not None:
            stmt = stmt.where(FeedbackRow.created_at > reviewed)
        counts = {str(o): (int(m), int(p)) for o, m, p in self.s.execute(stmt)}
        nv, platforms = counts.get("not_violating", (0, 0))
        return nv, platforms, counts.get("removed", (0, 0))[0], bank_kind == BankKind.CANARY.value

    def set_feedback_counts(self, signal_id: int, removed: int, not_violating: int) -> None:
        """What matching reads: ``removed`` matches and ``not_violating`` platforms (each
        platform halves a match's confidence once, however often it reports)."""
        self.s.execute(update(SignalRow).where(SignalRow.id == signal_id).values(
            removed=removed, not_violating=not_violating, updated_at=now()))

    def mark_reviewed(self, signal_id: int) -> None:
        """An operator reviewed this hash: the reports so far stop counting."""
        ts = now()
        self.s.execute(update(SignalRow).where(SignalRow.id == signal_id).values(
            reviewed_at=ts, removed=0, not_violating=0, updated_at=ts))

    def reported(self, limit: int = 1000) -> list[RegisteredSignal]:
        """Active hashes with ``not_violating`` reports since their last review: the queue an
        operator looks at before the automatic quarantine would act."""
        ids = self.s.scalars(select(SignalRow.id).where(
            SignalRow.status == SignalStatus.ACTIVE.value, SignalRow.not_violating > 0)
            .order_by(SignalRow.not_violating.desc(), SignalRow.id).limit(limit))
        found = self.get_many(list(ids))
        return [found[i] for i in found]

    def quarantined(self, limit: int = 1000) -> list[RegisteredSignal]:
        ids = self.s.scalars(select(SignalRow.id).where(
            SignalRow.status == SignalStatus.QUARANTINED.value).order_by(SignalRow.id).limit(limit))
        found = self.get_many(list(ids))
        return [found[i] for i in sorted(found)]

    def status_of(self, signal_id: int) -> SignalStatus | None:
        value = self.s.scalar(select(SignalRow.status).where(SignalRow.id == signal_id))
        return SignalStatus(value) if value else None

    def count_by_bank(self) -> dict[str, dict[str, dict[str, int]]]:
        """``{bank: {kind: {status: n}}}`` over every signal."""
        rows = self.s.execute(select(BankRow.name, SignalRow.kind, SignalRow.status, func.count())
                              .join(BankRow, BankRow.id == SignalRow.bank_id)
                              .group_by(BankRow.name, SignalRow.kind, SignalRow.status))
        out: dict[str, dict[str, dict[str, int]]] = {}
        for bank, kind, status, n in rows:
            out.setdefault(str(bank), {}).setdefault(str(kind), {})[str(status)] = int(n)
        return out

    def review_queue(self) -> dict[str, int]:
        """How many active hashes have 'not_violating' reports since their last review, and how
        many are quarantined."""
        reported = self.s.scalar(select(func.count()).select_from(SignalRow).where(
            SignalRow.status == SignalStatus.ACTIVE.value, SignalRow.not_violating > 0))
        held = self.s.scalar(select(func.count()).select_from(SignalRow).where(
            SignalRow.status == SignalStatus.QUARANTINED.value))
        return {"reported": int(reported or 0), "quarantined": int(held or 0)}

    def count(self) -> dict[str, dict[str, int]]:
        rows = self.s.execute(select(SignalRow.kind, SignalRow.status, func.count())
                              .group_by(SignalRow.kind, SignalRow.status))
        out: dict[str, dict[str, int]] = {}
        for kind, status, n in rows:
            out.setdefault(str(kind), {})[str(status)] = int(n)
        return out


class PlatformRepository:
    def __init__(self, session: Session) -> None:
        self.s = session

    def add(self, name: str, key_hash: str, key_prefix: str, scopes: Iterable[Scope]) -> Platform:
        row = PlatformRow(name=name, key_hash=key_hash, key_prefix=key_prefix,
                          scopes=",".join(sorted(s.value for s in scopes)), status="active",
                          created_at=now())
        self.s.add(row)
        self.s.flush()
        return _platform(row)

    def get(self, name: str) -> Platform | None:
        row = self.s.scalar(select(PlatformRow).where(PlatformRow.name == name))
        return _platform(row) if row else None

    def activity(self, windows: dict[str, datetime]) -> list[dict[str, object]]:
        """Every platform with its matches (all time and since each of ``windows``' times) and
        its feedback by outcome."""
        platforms = self.s.execute(select(PlatformRow.id, PlatformRow.name, PlatformRow.status,
                                          PlatformRow.scopes).order_by(PlatformRow.name)).all()
        matches: dict[int, dict[str, int]] = {}
        for label, since in {"all": None, **windows}.items():
            stmt = select(MatchRow.platform_id, func.count()).group_by(MatchRow.platform_id)
            if since is not None:
                stmt = stmt.where(MatchRow.created_at >= since)
            for pid, n in self.s.execute(stmt):
                if pid is not None:
                    matches.setdefault(int(pid), {})[label] = int(n)
        feedback: dict[int, dict[str, int]] = {}
        for pid, outcome, n in self.s.execute(
                select(FeedbackRow.platform_id, FeedbackRow.outcome, func.count())
                .group_by(FeedbackRow.platform_id, FeedbackRow.outcome)):
            feedback.setdefault(int(pid), {})[str(outcome)] = int(n)
        labels = ["all", *windows]
        return [{"name": name, "status": status, "scopes": scopes.split(","),
                 "matches": {label: matches.get(pid, {}).get(label, 0) for label in labels},
                 "feedback": feedback.get(pid, {})}
                for pid, name, status, scopes in platforms]

    def by_key_hash(self, key_hash: str) -> Platform | None:
        row = self.s.scalar(select(PlatformRow).where(PlatformRow.key_hash == key_hash))
        return _platform(row) if row else None

    def list(self) -> list[Platform]:
        rows = self.s.scalars(select(PlatformRow).order_by(PlatformRow.name))
        return [_platform(r) for r in rows]

    def note_feed_read(self, platform_id: int, position: int) -> None:
        """The platform asked for the feed after ``position``: it holds everything up to it."""
        self.s.execute(update(PlatformRow).where(PlatformRow.id == platform_id).values(
            feed_position=func.max(func.coalesce(PlatformRow.feed_position, position),
                                   position) if self.s.get_bind().dialect.name == "sqlite"
            else func.greatest(func.coalesce(PlatformRow.feed_position, position), position)))

    def feed_readers(self) -> builtins.list[tuple[str, int]]:
        """Active platforms that have read the feed, with the furthest cursor each read from."""
        rows = self.s.execute(select(PlatformRow.name, PlatformRow.feed_position).where(
            PlatformRow.status == "active", PlatformRow.feed_position.is_not(None))
            .order_by(PlatformRow.name))
        return [(str(name), int(pos)) for name, pos in rows if pos is not None]

    def revoke(self, platform_id: int) -> None:
        self.s.execute(update(PlatformRow).where(PlatformRow.id == platform_id)
                       .values(status="revoked", revoked_at=now()))

    def set_key(self, platform_id: int, key_hash: str, key_prefix: str) -> None:
        self.s.execute(update(PlatformRow).where(PlatformRow.id == platform_id)
                       .values(key_hash=key_hash, key_prefix=key_prefix))


def _platform(row: PlatformRow) -> Platform:
    return Platform(id=row.id, name=row.name, key_prefix=row.key_prefix,
                    scopes=frozenset(Scope(s) for s in row.scopes.split(",") if s),
                    active=row.status == "active", created_at=_aware(row.created_at) or now(),
                    revoked_at=_aware(row.revoked_at))


# One transaction-scoped advisory lock serialises the writers of both logs on PostgreSQL (SQLite
# writers are serialised by BEGIN IMMEDIATE already). For the change log it makes sequence order
# commit order: without it a follower could read seq 12 while seq 11 is still uncommitted,
# advance past 11 and never see it. For the audit log it keeps the hash chain a chain.
_LOG_LOCK = 0x6C6F6773  # "logs"


def _serialise_logs(session: Session) -> None:
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _LOG_LOCK})


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


class MatchRepository:
    def __init__(self, session: Session) -> None:
        self.s = session

    def add_many(self, rows: Iterable[tuple[str, int | None, int, int, str, str]]) -> None:
        ts = now()
        params = [{"id": mid, "platform_id": pid, "signal_id": sid, "distance": d, "tier": t,
                   "query_ref": ref[:128], "created_at": ts} for mid, pid, sid, d, t, ref in rows]
        if params:  # one executemany: a batch of 1000 queries can make 1000 matches
            self.s.execute(insert(cast(Table, MatchRow.__table__)), params)

    def get(self, match_id: str) -> tuple[int | None, int] | None:
        """(platform id, signal id) of a match, or None."""
        row = self.s.get(MatchRow, match_id)
        return (row.platform_id, row.signal_id) if row else None

    def has_feedback(self, match_id: str, outcome: str) -> bool:
        stmt = select(func.count()).select_from(FeedbackRow).where(
            FeedbackRow.match_id == match_id, FeedbackRow.outcome == outcome)
        return bool(self.s.scalar(stmt))

    def add_feedback(self, match_id: str, platform_id: int, outcome: str) -> None:
        self.s.add(FeedbackRow(match_id=match_id, platform_id=platform_id, outcome=outcome,
                               created_at=now()))
        self.s.flush()

    def of_case(self, case_id: int, limit: int = 50) -> list[dict[str, object]]:
        """The newest matches of a case's signals, newest first: which platform, which signal
        kind, how close, and the feedback each got (never a hash value)."""
        stmt = (select(MatchRow.id, MatchRow.created_at, PlatformRow.name, SignalRow.kind,
                       MatchRow.distance, MatchRow.tier)
                .join(SignalRow, SignalRow.id == MatchRow.signal_id)
                .outerjoin(PlatformRow, PlatformRow.id == MatchRow.platform_id)
                .where(SignalRow.case_id == case_id)
                .order_by(MatchRow.created_at.desc(), MatchRow.id).limit(limit))
        rows = self.s.execute(stmt).all()
        outcomes: dict[str, list[str]] = {}
        if rows:
            for mid, outcome in self.s.execute(
                    select(FeedbackRow.match_id, FeedbackRow.outcome)
                    .where(FeedbackRow.match_id.in_([r[0] for r in rows]))
                    .order_by(FeedbackRow.id)):
                outcomes.setdefault(mid, []).append(outcome)
        return [{"match_id": mid, "at": (_aware(at) or now()).isoformat(),
                 "platform": platform, "signal": kind, "distance": int(distance), "tier": tier,
                 "feedback": outcomes.get(mid, [])}
                for mid, at, platform, kind, distance, tier in rows]

    def takedowns_of_case(self, case_id: int) -> int:
        """Copies of this case's pictures that a platform reported as removed: one per query
        (platform, query id and the request's time), however many of its signals matched and
        were each reported."""
        copies = (select(MatchRow.platform_id, MatchRow.query_ref, MatchRow.created_at)
                  .join(FeedbackRow, FeedbackRow.match_id == MatchRow.id)
                  .join(SignalRow, SignalRow.id == MatchRow.signal_id)
                  .where(SignalRow.case_id == case_id, FeedbackRow.outcome == "removed")
                  .distinct().subquery())
        return int(self.s.scalar(select(func.count()).select_from(copies)) or 0)


def stored_value(sig: Signal) -> str:
    """The ``value`` column: hex, or for a local signal the SHA-256 of its packed keypoints."""
    if sig.kind is SignalKind.LOCAL:
        return hashlib.sha256(sig.value).hexdigest()
    return sig.hex


def stored_payload(sig: Signal) -> bytes | None:
    return sig.value if sig.kind is SignalKind.LOCAL else None


def loaded_signal(kind: str, value: str, payload: bytes | None) -> Signal:
    k = SignalKind(kind)
    if k is SignalKind.LOCAL:
        return Signal(k, bytes(payload or b""))
    return Signal(k, bytes.fromhex(value))


def insert_signals(session: Session, params: Sequence[Mapping[str, object]]) -> list[int]:
    """Insert signal rows in one bulk statement; their new ids, in order."""
    if not params:
        return []
    # One writer at a time (the log lock on PostgreSQL, BEGIN IMMEDIATE on SQLite), so the
    # new rows are exactly those above the highest id before the insert; a plain
    # executemany is ~10x faster than ORM inserts or INSERT ... RETURNING here.
    _serialise_logs(session)
    start = int(session.scalar(select(func.coalesce(func.max(SignalRow.id), 0))) or 0)
    session.execute(insert(cast(Table, SignalRow.__table__)), params)
    ids = [int(i) for i in session.scalars(
        select(SignalRow.id).where(SignalRow.id > start).order_by(SignalRow.id))]
    if len(ids) != len(params):
        raise RuntimeError("signal ids of a bulk insert could not be recovered")
    return ids


def erased_signal(kind: str) -> Signal:
    """A purged signal's stand-in: its kind, all zero bits (never added, only withdrawn)."""
    k = SignalKind(kind)
    return Signal(k, b"" if k is SignalKind.LOCAL else bytes(k.bits // 8))


def _chunks(items: list[int] | list[str], size: int) -> Iterable[list[int] | list[str]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


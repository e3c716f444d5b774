"""Registered signals: adding, finding, changing status, and what matching reads."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from sqlalchemy import func, select, text, update
from sqlalchemy.orm import Session

from registry.domain import (
    FRAME_LABEL,
    Bank,
    BankKind,
    RegisteredSignal,
    Signal,
    SignalKind,
    SignalStatus,
)
from registry.store.banks import BankRepository
from registry.store.models import (
    BankRow,
    CaseRow,
    FeedbackRow,
    MatchRow,
    SignalRow,
)
from registry.store.values import (
    _chunks,
    insert_signals,
    loaded_signal,
    now,
    stored_payload,
    stored_value,
)


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

    def frames_per_image(self, image_keys: Iterable[str]) -> dict[str, int]:
        """How many video frames (PDQ signals labelled ``frame@<ms>``) each image holds."""
        keys = sorted(set(image_keys) - {""})
        if not keys:
            return {}
        rows = self.s.execute(select(SignalRow.image_key, func.count())
                              .where(SignalRow.image_key.in_(keys),
                                     SignalRow.label.like(FRAME_LABEL + "%"))
                              .group_by(SignalRow.image_key))
        return {str(k): int(n) for k, n in rows}

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

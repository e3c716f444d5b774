"""Cases and the wrong-PIN counters that lock them."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from registry.domain import (
    Case,
    CaseStatus,
)
from registry.store.models import (
    CaseRow,
    PinFailureRow,
)
from registry.store.values import _aware, now


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

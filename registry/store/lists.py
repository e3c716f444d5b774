"""Hash lists kept in banks: what an import compares against, the bulk writes it makes, what an
export reads, and the erasure of a withdrawn case's hashes.

An imported hash is known by ``(kind, value, source_ref)``: the value alone is not enough, since
two records of one source (two cases of a followed registry, say) may hold the same hash, and
withdrawing one must not withdraw the other.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from typing import NamedTuple

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from registry.domain import ChangeAction, SignalKind, SignalStatus
from registry.store.logs import ChangeLog
from registry.store.models import ChangeRow, SignalRow
from registry.store.signals import SignalRepository
from registry.store.values import _aware, _chunks, insert_signals, now

Key = tuple[str, str, str]  # (kind, stored value, source_ref)
PURGED = SignalStatus.PURGED.value


class ListedRow(NamedTuple):
    kind: str
    value: str
    label: str
    quality: int | None
    image_key: str
    source_ref: str
    payload: bytes | None = None  # a local signal's keypoints (``value`` is their SHA-256)


class ExportedRow(NamedTuple):
    id: int
    kind: str
    value: str
    status: str
    quality: int | None
    source_ref: str
    image_key: str
    seq: int
    at: datetime


class ListRepository:
    def __init__(self, session: Session) -> None:
        self.s = session

    def state(self, bank_id: int) -> dict[Key, tuple[int, str]]:
        """Each key's newest row in the bank: ``(id, status)``; purged rows are gone."""
        out: dict[Key, tuple[int, str]] = {}
        stmt = (select(SignalRow.kind, SignalRow.value, SignalRow.source_ref, SignalRow.id,
                       SignalRow.status)
                .where(SignalRow.bank_id == bank_id, SignalRow.status != PURGED)
                .order_by(SignalRow.id))
        for kind, value, ref, sid, status in self.s.execute(stmt):
            out[(kind, value, ref)] = (int(sid), str(status))
        return out

    def add(self, bank_id: int, rows: Sequence[ListedRow], pipeline_version: int) -> list[int]:
        """Insert the rows as active signals of the bank and log their adds; their ids."""
        if not rows:
            return []
        ts = now()
        ids = insert_signals(self.s, [
            {"case_id": None, "bank_id": bank_id, "kind": r.kind, "value": r.value,
             "payload": r.payload, "label": r.label, "status": SignalStatus.ACTIVE.value,
             "quality": r.quality, "pipeline_version": pipeline_version,
             "image_key": r.image_key, "source_ref": r.source_ref, "created_at": ts,
             "updated_at": ts} for r in rows])
        ChangeLog(self.s).append(ChangeAction.ADD, ids)
        return ids

    def withdraw(self, ids: Sequence[int]) -> None:
        """Withdraw active or quarantined signals and log it (the index drops them)."""
        if ids:
            SignalRepository(self.s).set_status(ids, SignalStatus.WITHDRAWN)
            ChangeLog(self.s).append(ChangeAction.WITHDRAW, ids)

    def export(self, bank_id: int, since: int, kinds: Iterable[SignalKind]) -> Iterator[
            ExportedRow]:
        """The bank's hashes of ``kinds`` changed after ``since``, each once with its status
        now, in the order of their latest change."""
        latest = (select(ChangeRow.signal_id, func.max(ChangeRow.seq).label("seq"))
                  .where(ChangeRow.seq > since).group_by(ChangeRow.signal_id).subquery())
        stmt = (select(SignalRow.id, SignalRow.kind, SignalRow.value, SignalRow.status,
                       SignalRow.quality, SignalRow.source_ref, SignalRow.image_key,
                       latest.c.seq, ChangeRow.at)
                .join(latest, latest.c.signal_id == SignalRow.id)
                .join(ChangeRow, ChangeRow.seq == latest.c.seq)
                .where(SignalRow.bank_id == bank_id, SignalRow.status != PURGED,
                       SignalRow.kind.in_([k.value for k in kinds]))
                .order_by(latest.c.seq))
        for row in self.s.execute(stmt.execution_options(yield_per=10_000)):
            yield ExportedRow(int(row[0]), str(row[1]), str(row[2]), str(row[3]),
                              None if row[4] is None else int(row[4]), str(row[5]),
                              str(row[6]), int(row[7]), _aware(row[8]) or now())

    def last_change(self, ids: Sequence[int]) -> int:
        """The newest change-log position of any of ``ids`` (0 if none)."""
        return max((int(self.s.scalar(select(func.coalesce(func.max(ChangeRow.seq), 0))
                                      .where(ChangeRow.signal_id.in_(chunk))) or 0)
                    for chunk in _chunks(list(ids), 500)), default=0)

    def purge(self, ids: Sequence[int]) -> None:
        """Erase the values of withdrawn signals for good: the rows stay (matches, feedback
        and the change log point at them) with no hash, no keypoints and no grouping key."""
        for chunk in _chunks(list(ids), 500):
            self.s.execute(update(SignalRow).where(SignalRow.id.in_(chunk))
                           .values(status=PURGED, value="", payload=None, image_key="",
                                   source_ref="", quality=None, updated_at=now()))

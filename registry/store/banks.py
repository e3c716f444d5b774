"""Banks: one per source of hashes, with its policy (enabled, thresholds, source, cursor)."""

from __future__ import annotations

import json

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from registry.domain import (
    Bank,
    BankKind,
    SignalKind,
    Thresholds,
)
from registry.store.models import (
    BankRow,
    SignalRow,
)
from registry.store.values import _aware, now


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

"""Hash lists in and out of banks: ``import_list`` applies a source's records (adds and
withdrawals) to one bank, ``export_list`` writes a bank's hashes in a list format.

An import is one transaction: every record is parsed like API input, checked against the bank
as it stands (a hash is known by kind, value and the source's id for it), and only if no record
was bad are the adds and withdrawals kept; otherwise, and for a dry run, nothing changes. So a
failed import never leaves half a list behind, and importing the same file again changes
nothing. The same ``apply`` serves a followed registry's feed pages (registry.service.exchange).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TextIO

from registry.config import Settings
from registry.domain import Bank, BankKind, SignalKind, SignalStatus
from registry.errors import BankNotFound, InvalidInput
from registry.hashing import PIPELINE_VERSION
from registry.interop import KINDS, Entry, ExportRecord, Problem, carries, write
from registry.service.feed import parse_cursor
from registry.store import Store, Transaction
from registry.store.lists import Key, ListedRow
from registry.store.values import loaded_signal, stored_payload, stored_value

FLUSH_EVERY = 20_000  # rows per bulk statement
MAX_REPORTED = 100  # problems listed in a report (all are counted)
PENDING = -1  # the id of a key added in this import but not yet written
LIVE = (SignalStatus.ACTIVE.value, SignalStatus.QUARANTINED.value)
IMPORTABLE = (BankKind.IMPORTED, BankKind.BENIGN)
# The view label a whole-picture hash is stored with (as a case's are); digests have none.
LABELS = {k: "full" if k.perceptual or k.is_local else "" for k in SignalKind}


@dataclass
class ImportReport:
    bank: str
    format: str
    dry_run: bool
    rows: int = 0
    added: int = 0
    withdrawn: int = 0
    unchanged: int = 0
    duplicates: int = 0
    skipped: int = 0
    errors: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.errors == 0

    @property
    def applied(self) -> bool:
        return self.ok and not self.dry_run

    def note(self, problem: Problem) -> None:
        if problem.skipped:
            self.skipped += 1
        else:
            self.errors += 1
        if len(self.problems) < MAX_REPORTED:
            self.problems.append(problem)

    def to_json(self) -> dict[str, object]:
        return {"bank": self.bank, "format": self.format, "dry_run": self.dry_run,
                "applied": self.applied, "rows": self.rows, "added": self.added,
                "withdrawn": self.withdrawn, "unchanged": self.unchanged,
                "duplicates": self.duplicates, "skipped": self.skipped, "errors": self.errors,
                "problems": [{"line": p.line, "reason": p.reason, "skipped": p.skipped}
                             for p in self.problems]}

    def counts(self) -> dict[str, object]:
        return {k: v for k, v in self.to_json().items() if k not in ("problems", "bank")}


class _Rollback(Exception):
    pass


def group_key(bank: str, group: str) -> str:
    """The stored grouping key of a source's group (case, item): matches on hashes of one
    group count once per query, as a case's do. Namespaced by bank, 32 hex digits."""
    if not group:
        return ""
    return hashlib.blake2b(f"{bank}\0{group}".encode(), digest_size=16).hexdigest()


def import_list(store: Store, settings: Settings, bank: str, fmt: str,
                items: Iterable[Entry | Problem], *, dry_run: bool = False,
                actor: str = "operator") -> ImportReport:
    report = ImportReport(bank, fmt, dry_run)
    try:
        with store.transaction() as tx:
            bank_id = importable_bank(tx, bank)
            apply(tx, bank_id, bank, items, report, settings, kinds=KINDS)
            if not report.applied:
                raise _Rollback
            tx.audit.record(actor, "list_imported", bank, report.counts())
    except _Rollback:
        pass
    return report


def importable_bank(tx: Transaction, name: str, *, source: str = "") -> int:
    """The bank an import writes to, created (kind ``imported``; ``benign`` for the benign
    bank) when new. Cases' and canary banks are never written by a list, and a followed bank
    only by what it follows."""
    found = tx.banks.get(name, for_update=True)
    if found is None:
        kind = BankKind.BENIGN if name == "benign" else BankKind.IMPORTED
        return tx.banks.add(Bank(Bank.check_name(name), kind, source=source))
    bank_id, bank = found
    if bank.kind not in IMPORTABLE:
        raise InvalidInput(f"Bank {name!r} holds {bank.kind.value} hashes; lists are imported "
                           "into banks of their own (one per source).")
    if bank.source != source:
        raise InvalidInput(
            f"Bank {name!r} follows {bank.source}; only what it follows writes to it."
            if bank.source else
            f"Bank {name!r} holds imported lists; follow a registry into a bank of its own.")
    return bank_id


def apply(tx: Transaction, bank_id: int, bank: str, items: Iterable[Entry | Problem],
          report: ImportReport, settings: Settings, *,
          kinds: frozenset[SignalKind] | set[SignalKind] = KINDS) -> None:
    """Compare each record with the bank and write the difference (unless ``report`` is a dry
    run or has met a bad record: then it only goes on counting, and the caller rolls back)."""
    state = tx.lists.state(bank_id)
    seen: dict[Key, bool] = {}
    pending: list[ListedRow] = []
    pending_keys: list[Key] = []
    gone: list[int] = []

    def writing() -> bool:
        return not report.dry_run and report.ok

    def flush() -> None:
        if writing():
            ids = tx.lists.add(bank_id, pending, PIPELINE_VERSION)
            for key, sid in zip(pending_keys, ids, strict=True):
                state[key] = (sid, SignalStatus.ACTIVE.value)
            tx.lists.withdraw(gone)
        pending.clear()
        pending_keys.clear()
        gone.clear()

    for item in items:
        report.rows += 1
        if isinstance(item, Problem):
            report.note(item)
            continue
        sig = item.signal
        if sig.kind not in kinds:
            report.note(Problem(item.line, f"a {sig.kind.value} signal: lists here carry "
                                + ", ".join(sorted(k.value for k in kinds)), skipped=True))
            continue
        if (sig.kind is SignalKind.PDQ and item.quality is not None
                and item.quality < settings.pdq_min_quality):
            report.note(Problem(item.line, f"PDQ quality {item.quality} is below "
                                f"{settings.pdq_min_quality}: too featureless to match",
                                skipped=True))
            continue
        key = (sig.kind.value, stored_value(sig), item.ref)
        if seen.get(key) is item.withdrawn:
            report.duplicates += 1
            continue
        seen[key] = item.withdrawn
        current = state.get(key)
        live = current is not None and current[1] in LIVE
        if not item.withdrawn:
            if live:
                report.unchanged += 1
                continue
            pending.append(ListedRow(sig.kind.value, stored_value(sig), LABELS[sig.kind],
                                     item.quality if sig.kind is SignalKind.PDQ else None,
                                     group_key(bank, item.group), item.ref,
                                     stored_payload(sig)))
            pending_keys.append(key)
            state[key] = (PENDING, SignalStatus.ACTIVE.value)
            report.added += 1
        elif live and current is not None:
            if current[0] == PENDING:
                flush()  # the add goes into the log before its withdrawal
                current = state[key]
            if writing():
                gone.append(current[0])
            state[key] = (current[0], SignalStatus.WITHDRAWN.value)
            report.withdrawn += 1
        else:
            report.unchanged += 1  # nothing here to withdraw
        if len(pending) + len(gone) >= FLUSH_EVERY:
            flush()
    flush()


@dataclass(frozen=True, slots=True)
class ExportReport:
    bank: str
    format: str
    since: int
    records: int
    next_cursor: str

    def to_json(self) -> dict[str, object]:
        return {"bank": self.bank, "format": self.format, "since": str(self.since),
                "records": self.records, "next_cursor": self.next_cursor}


def export_list(store: Store, bank: str, fmt: str, out: TextIO, since: str | None = None,
                actor: str = "operator") -> ExportReport:
    """Write the bank's hashes (active and withdrawn; changed after cursor ``since`` when
    given) to ``out``. The next cursor is the change log's head as read: giving it as
    ``since`` next time exports exactly what changed after this export. Audited."""
    position = parse_cursor(since)
    with store.transaction(write=False) as tx:
        found = tx.banks.get(bank)
        if found is None:
            raise BankNotFound(f"There is no bank {bank!r}; 'takedown bank list' shows them.")
        bank_id, _ = found
        head = tx.changes.head()
        rows = tx.lists.export(bank_id, position, carries(fmt) & KINDS)
        records = (ExportRecord(signal=loaded_signal(r.kind, r.value, None),
                                withdrawn=r.status != SignalStatus.ACTIVE.value,
                                quality=r.quality, ref=r.source_ref or str(r.id),
                                group=r.image_key, seq=r.seq, at=r.at, bank=bank)
                   for r in rows if r.seq <= head)
        written = write(fmt, records, out)
    with store.transaction() as tx:
        tx.audit.record(actor, "list_exported", bank, {"format": fmt, "since": position,
                                                       "records": written, "cursor": head})
    return ExportReport(bank, fmt, position, written, str(max(head, position)))

"""Erasure: ``purge`` removes a withdrawn case's hashes for good.

Withdrawal already stops every match and tells feed readers to drop the hashes; purging then
erases the values themselves (hash, keypoints, grouping key) from the database, leaving rows
with no value so that matches, feedback and the change log stay whole, and an audit event that
names the case and counts the hashes, and holds none of them.

The feed is why it waits: a platform mirroring the feed that has not yet read a hash's
withdrawal would never learn of it once the hash is gone (purged hashes leave the feed). So a
purge goes ahead only when every active platform that reads the feed has asked for it from a
cursor past the case's last withdrawal, which proves it received it; ``force`` purges anyway and
names the platforms left behind in the audit event.
"""

from __future__ import annotations

from dataclasses import dataclass

from registry.domain import CaseStatus, SignalStatus
from registry.errors import InvalidTransition
from registry.service.cases import _find
from registry.store import Store


class PurgeBlocked(InvalidTransition):
    code = "purge_blocked"


@dataclass(frozen=True, slots=True)
class PurgeReport:
    case: str
    signals: int
    withdrawal_seq: int
    behind: tuple[str, ...]  # feed readers that had not read past the withdrawal
    forced: bool

    def to_json(self) -> dict[str, object]:
        return {"case": self.case, "purged_signals": self.signals,
                "withdrawal_seq": self.withdrawal_seq, "behind": list(self.behind),
                "forced": self.forced}


def purge(store: Store, number: str, *, force: bool = False, actor: str = "operator"
          ) -> PurgeReport:
    case = _find(store, number)
    with store.transaction() as tx:
        fresh = tx.cases.get(case.number, for_update=True)
        assert fresh is not None
        if fresh.status is not CaseStatus.WITHDRAWN:
            raise InvalidTransition(
                f"Case {fresh.number} is active: withdraw it first ('takedown case withdraw'); "
                "only a withdrawn case's hashes are purged.")
        ids = sorted(i for status in SignalStatus if status is not SignalStatus.PURGED
                     for i in tx.signals.ids_of_case(fresh.id, status))
        last = tx.lists.last_change(ids)
        behind = tuple(name for name, pos in tx.platforms.feed_readers() if pos < last)
        if behind and not force:
            raise PurgeBlocked(
                f"{len(behind)} platform(s) reading the feed have not yet read past this "
                f"case's withdrawal (change {last}): {', '.join(behind)}. Purge when they have, "
                "or with --force to leave them holding the hashes.")
        tx.lists.purge(ids)
        tx.audit.record(actor, "case_purged", fresh.number,
                        {"signals": len(ids), "withdrawal_seq": last, "forced": bool(behind),
                         "behind": list(behind)})
    return PurgeReport(case.number, len(ids), last, behind, bool(behind))

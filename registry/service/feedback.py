"""Platform feedback on matches: recorded per match, weighed per registered hash.

Quarantine takes a hash out of matching for every platform, so no single platform can cause it
(a platform reporting its own matches ``not_violating`` could otherwise switch off a victim's
hash, or the canary, for everyone). A hash is quarantined only when, since an operator last
reviewed it:

- at least ``quarantine_after`` of its matches were reported ``not_violating``,
- by at least ``quarantine_platforms`` different platforms,
- and they are at least ``quarantine_rate`` of its decided matches (``removed`` counts against);

the canary bank is never quarantined (its matches are benign by design). A quarantine waits
for an operator: ``release`` puts the hash back and starts the count over (reports before the
release no longer count), ``hold`` quarantines by the operator's own decision. Confidence falls
by half per platform that reported ``not_violating``, not per report.
"""

from __future__ import annotations

from dataclasses import dataclass

from registry.config import Settings
from registry.domain import ChangeAction, Outcome, Platform, SignalStatus
from registry.errors import InvalidInput, MatchNotFound
from registry.store import Store, Transaction


@dataclass(frozen=True, slots=True)
class FeedbackReceipt:
    match_id: str
    outcome: Outcome
    quarantined: bool

    def to_json(self) -> dict[str, object]:
        return {"match_id": self.match_id, "outcome": self.outcome.value,
                "recorded": True, "quarantined": self.quarantined}


def parse_outcome(text: object) -> Outcome:
    try:
        return Outcome(str(text))
    except ValueError:
        known = ", ".join(o.value for o in Outcome)
        raise InvalidInput(f"Unknown outcome {text!r}; outcomes are {known}.") from None


def should_quarantine(not_violating: int, platforms: int, removed: int, settings: Settings
                      ) -> bool:
    """The rule above, on the counts since the last review."""
    decided = not_violating + removed
    return (not_violating >= settings.quarantine_after
            and platforms >= settings.quarantine_platforms
            and decided > 0 and not_violating / decided >= settings.quarantine_rate)


def record(store: Store, settings: Settings, platform: Platform, match_id: str,
           outcome: Outcome) -> FeedbackReceipt:
    quarantined = False
    with store.transaction() as tx:
        # No match id holds a NUL (PostgreSQL cannot even compare text that does).
        found = tx.matches.get(match_id) if "\x00" not in match_id else None
        # Another platform's match id answers exactly like an unknown one.
        if found is None or found[0] != platform.id:
            raise MatchNotFound("This API key received no match with that match_id.")
        _, signal_id = found
        repeated = tx.matches.has_feedback(match_id, outcome.value)
        tx.matches.add_feedback(match_id, platform.id, outcome.value)
        if outcome is not Outcome.UNDER_REVIEW and not repeated:
            quarantined = _weigh(tx, settings, signal_id)
        tx.audit.record(f"platform:{platform.name}", "feedback", match_id,
                        {"outcome": outcome.value})
    return FeedbackReceipt(match_id, outcome, quarantined)


def _weigh(tx: Transaction, settings: Settings, signal_id: int) -> bool:
    nv, platforms, removed, canary = tx.signals.feedback_since_review(signal_id)
    tx.signals.set_feedback_counts(signal_id, removed, platforms)
    if (canary or tx.signals.status_of(signal_id) is not SignalStatus.ACTIVE
            or not should_quarantine(nv, platforms, removed, settings)):
        return False
    tx.signals.set_status([signal_id], SignalStatus.QUARANTINED)
    tx.changes.append(ChangeAction.WITHDRAW, [signal_id])
    tx.audit.record("system", "signal_quarantined", str(signal_id),
                    {"not_violating": nv, "platforms": platforms, "removed": removed})
    return True


def release(store: Store, signal_id: int, actor: str = "operator") -> None:
    """An operator reviewed a quarantined hash and puts it back into matching; the reports that
    led to the quarantine stop counting."""
    with store.transaction() as tx:
        if tx.signals.status_of(signal_id) is not SignalStatus.QUARANTINED:
            raise InvalidInput(f"Signal {signal_id} is not quarantined.")
        tx.signals.set_status([signal_id], SignalStatus.ACTIVE)
        tx.signals.mark_reviewed(signal_id)
        tx.changes.append(ChangeAction.ADD, [signal_id])
        tx.audit.record(actor, "signal_released", str(signal_id))


def hold(store: Store, signal_id: int, actor: str = "operator") -> None:
    """An operator quarantines an active hash by their own decision (e.g. one on the reported
    list that the automatic rule has not reached)."""
    with store.transaction() as tx:
        if tx.signals.status_of(signal_id) is not SignalStatus.ACTIVE:
            raise InvalidInput(f"Signal {signal_id} is not an active hash.")
        tx.signals.set_status([signal_id], SignalStatus.QUARANTINED)
        tx.changes.append(ChangeAction.WITHDRAW, [signal_id])
        tx.audit.record(actor, "signal_quarantined", str(signal_id), {"by": "operator"})

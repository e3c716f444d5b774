"""Platform feedback on matches: recorded per match, counted per registered hash; repeated
``not_violating`` reports lower the hash's confidence and then quarantine it for review."""

from __future__ import annotations

from dataclasses import dataclass

from registry.config import Settings
from registry.domain import ChangeAction, Outcome, Platform, SignalStatus
from registry.errors import InvalidInput, MatchNotFound
from registry.store import Store


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


def record(store: Store, settings: Settings, platform: Platform, match_id: str,
           outcome: Outcome) -> FeedbackReceipt:
    quarantined = False
    with store.transaction() as tx:
        found = tx.matches.get(match_id)
        # Another platform's match id answers exactly like an unknown one.
        if found is None or found[0] != platform.id:
            raise MatchNotFound("This API key received no match with that match_id.")
        _, signal_id = found
        repeated = tx.matches.has_feedback(match_id, outcome.value)
        tx.matches.add_feedback(match_id, platform.id, outcome.value)
        # A match counts once per outcome: repeating a report does not add weight to it.
        if outcome is not Outcome.UNDER_REVIEW and not repeated:
            count = tx.signals.count_feedback(signal_id, outcome.value)
            if (outcome is Outcome.NOT_VIOLATING and count >= settings.quarantine_after
                    and tx.signals.status_of(signal_id) is SignalStatus.ACTIVE):
                tx.signals.set_status([signal_id], SignalStatus.QUARANTINED)
                tx.changes.append(ChangeAction.WITHDRAW, [signal_id])
                tx.audit.record("system", "signal_quarantined", str(signal_id),
                                {"not_violating": count})
                quarantined = True
        tx.audit.record(f"platform:{platform.name}", "feedback", match_id,
                        {"outcome": outcome.value})
    return FeedbackReceipt(match_id, outcome, quarantined)


def release(store: Store, signal_id: int, actor: str = "operator") -> None:
    """An operator reviewed a quarantined hash and puts it back into matching."""
    with store.transaction() as tx:
        if tx.signals.status_of(signal_id) is not SignalStatus.QUARANTINED:
            raise InvalidInput(f"Signal {signal_id} is not quarantined.")
        tx.signals.set_status([signal_id], SignalStatus.ACTIVE)
        tx.changes.append(ChangeAction.ADD, [signal_id])
        tx.audit.record(actor, "signal_released", str(signal_id))

"""Banks other than submissions: hashes registered without a case (canary test images, the
benign bank, imported lists), and every bank's policy: enabled or not, and its thresholds. A
canary hash matches like any other, in the ``canary`` bank."""

from __future__ import annotations

from collections.abc import Sequence

from registry.config import Settings
from registry.domain import Bank, BankKind, SignalKind, Thresholds
from registry.errors import BankExists, BankNotFound, InvalidInput
from registry.service.cases import SubmittedImage, register_images, validate_submission
from registry.store import Store

CANARY_BANK = "canary"
BENIGN_BANK = "benign"
# Imported lists arrive by the thousand: one transaction (and one audit event) per call of up to
# this many images, instead of a case's 50.
MAX_IMAGES_PER_CALL = 10_000


def register(store: Store, settings: Settings, bank: str, kind: BankKind,
             images: Sequence[SubmittedImage], actor: str = "operator") -> int:
    validate_submission(images, settings, MAX_IMAGES_PER_CALL)
    with store.transaction() as tx:
        bank_id = tx.banks.ensure(bank, kind)
        ids = register_images(tx, settings, images, bank_id, None,
                              audit=(actor, "bank_registered", bank))
    return len(ids)


def add(store: Store, settings: Settings, name: str, description: str = "",
        thresholds: dict[SignalKind, Thresholds] | None = None, actor: str = "operator") -> Bank:
    """A new bank for an imported list (kind ``imported``; ``benign`` for the benign bank)."""
    bank = Bank(Bank.check_name(name), BankKind.BENIGN if name == BENIGN_BANK else
                BankKind.IMPORTED, description, thresholds=check_thresholds(
                    settings, thresholds or {}))
    with store.transaction() as tx:
        if tx.banks.get(name) is not None:
            raise BankExists(f"There is already a bank {name!r}.")
        tx.banks.add(bank)
        tx.audit.record(actor, "bank_added", name, {"kind": bank.kind.value,
                                                     "thresholds": bank.thresholds_json()})
    return bank


def configure(store: Store, settings: Settings, name: str, *, enabled: bool | None = None,
              thresholds: dict[SignalKind, Thresholds] | None = None,
              description: str | None = None, actor: str = "operator") -> Bank:
    """Enable or disable a bank (a disabled bank's hashes match nothing, at once, in every
    process: matching reads the policy per request), or set its thresholds (an empty dict
    returns it to the registry's). Audited."""
    with store.transaction() as tx:
        found = tx.banks.get(name, for_update=True)
        if found is None:
            raise BankNotFound(f"There is no bank {name!r}; 'takedown bank list' shows them.")
        bank_id, bank = found
        changed: dict[str, object] = {}
        if enabled is not None and enabled != bank.enabled:
            changed["enabled"] = enabled
        limits = None
        if thresholds is not None:
            limits = Bank(name, bank.kind, thresholds=check_thresholds(
                settings, thresholds)).thresholds_json()
            changed["thresholds"] = limits
        if description is not None:
            changed["description"] = description
        tx.banks.update(bank_id, enabled=enabled, description=description, thresholds=limits)
        if changed:
            tx.audit.record(actor, "bank_changed", name, changed)
        found = tx.banks.get(name)
        assert found is not None
        return found[1]


def check_thresholds(settings: Settings, thresholds: dict[SignalKind, Thresholds]
                     ) -> dict[SignalKind, Thresholds]:
    """A bank may be stricter than the registry, never looser: the registry's thresholds are
    the measured false-positive bar and the index's search radius."""
    for kind, t in thresholds.items():
        if not kind.perceptual:
            raise InvalidInput(f"{kind.value} matches exactly; only pdq and phash have "
                               "thresholds.")
        default = settings.thresholds(kind)
        if t.strong > default.strong or t.weak > default.weak:
            raise InvalidInput(
                f"A bank's {kind.value} thresholds can be at most the registry's "
                f"({default.strong}:{default.weak}); {t.strong}:{t.weak} is looser.")
    return dict(thresholds)

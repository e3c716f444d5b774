"""Banks other than submissions: hashes registered without a case (canary test images now;
imported lists later). A canary hash matches like any other, in the ``canary`` bank."""

from __future__ import annotations

import secrets
from collections.abc import Sequence

from registry.config import Settings
from registry.domain import BankKind, ChangeAction
from registry.hashing import PIPELINE_VERSION
from registry.service.cases import SubmittedImage, validate_submission
from registry.store import Store

CANARY_BANK = "canary"
# Imported lists arrive by the thousand: one transaction (and one audit event) per call of up to
# this many images, instead of a case's 50.
MAX_IMAGES_PER_CALL = 10_000


def register(store: Store, settings: Settings, bank: str, kind: BankKind,
             images: Sequence[SubmittedImage], actor: str = "operator") -> int:
    validate_submission(images, settings, MAX_IMAGES_PER_CALL)
    with store.transaction() as tx:
        bank_id = tx.banks.ensure(bank, kind)
        ids = tx.signals.add_images(
            bank_id, None, [(image.rows(settings.pdq_min_quality), secrets.token_hex(8))
                            for image in images], PIPELINE_VERSION)
        tx.changes.append(ChangeAction.ADD, ids)
        tx.audit.record(actor, "bank_registered", bank, {"images": len(images),
                                                          "signals": len(ids)})
    return len(ids)

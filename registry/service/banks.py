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


def register(store: Store, settings: Settings, bank: str, kind: BankKind,
             images: Sequence[SubmittedImage], actor: str = "operator") -> int:
    validate_submission(images, settings)
    with store.transaction() as tx:
        bank_id = tx.banks.ensure(bank, kind)
        ids = [i for image in images for i in tx.signals.add_many(
            bank_id, None, image.rows(settings.pdq_min_quality), PIPELINE_VERSION,
            image_key=secrets.token_hex(8))]
        tx.changes.append(ChangeAction.ADD, ids)
        tx.audit.record(actor, "bank_registered", bank, {"images": len(images),
                                                          "signals": len(ids)})
    return len(ids)

"""The unit of work: one database transaction and the repositories bound to it (one module
per repository beside this one). Rows in, domain objects out."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy.orm import Session

from registry.store.banks import BankRepository
from registry.store.cases import CaseRepository, PinFailureRepository
from registry.store.logs import AuditLog, ChangeLog
from registry.store.platforms import MatchRepository, PlatformRepository
from registry.store.signals import SignalRepository

if TYPE_CHECKING:
    from registry.store.lists import ListRepository


class Transaction:
    """One database transaction and the repositories bound to it."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.banks = BankRepository(session)
        self.cases = CaseRepository(session)
        self.pin_failures = PinFailureRepository(session)
        self.signals = SignalRepository(session)
        self.platforms = PlatformRepository(session)
        self.changes = ChangeLog(session)
        self.audit = AuditLog(session)
        self.matches = MatchRepository(session)

    @property
    def lists(self) -> ListRepository:
        # Imported here: registry.store.lists builds on the change log and the signals' helpers.
        from registry.store.lists import ListRepository
        return ListRepository(self.session)

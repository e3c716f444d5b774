"""Persistence: typed models, repositories returning domain objects, a unit of work, migrations.

Callers outside this package see :class:`Store` (engine + transactions), the repositories'
domain-level methods and :func:`migrate`; ORM rows never leave it.
"""

from registry.store.engine import Store, migrate
from registry.store.uow import Transaction

__all__ = ["Store", "Transaction", "migrate"]

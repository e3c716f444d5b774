"""Store: migrations on SQLite and PostgreSQL match the models; the change log and audit chain."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text

from registry.domain import BankKind, ChangeAction, Signal, SignalKind
from registry.store import Store
from registry.store.engine import head_revision
from registry.store.models import Base

TABLES = {"banks", "cases", "signals", "platforms", "matches", "feedback", "audit_events",
          "pin_failures",
          "change_log", "alembic_version"}
PDQ = Signal.parse("pdq", "87d785bddc8d3a2bfe17cf690fa52208565145aa3ae37a2f0740c64abb2d3249")


def _check_schema(store: Store) -> None:
    assert store.migrate() == head_revision()
    assert set(inspect(store.engine).get_table_names()) == TABLES
    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == [], f"models and migrations disagree: {diff}"
    assert store.is_current()
    store.migrate()  # idempotent


def test_sqlite_migrations_match_models(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'r.db'}")
    _check_schema(store)
    store.close()


@pytest.mark.services
def test_postgresql_migrations_match_models(pg_url):
    store = Store(pg_url)
    assert store.dialect == "postgresql"
    _check_schema(store)
    store.close()


def test_sqlite_pragmas(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'r.db'}")
    with store.engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
        assert conn.execute(text("PRAGMA busy_timeout")).scalar() == 30000
    store.close()


def _add_signal(store: Store) -> int:
    with store.transaction() as tx:
        bank = tx.banks.ensure("submissions", BankKind.SUBMISSIONS)
        (sid,) = tx.signals.add_many(bank, None, [(PDQ, "", 100)], 1)
        tx.changes.append(ChangeAction.ADD, [sid])
    return sid


def test_change_log_is_written_with_the_change_or_not_at_all(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'r.db'}")
    store.migrate()
    sid = _add_signal(store)
    with pytest.raises(RuntimeError), store.transaction() as tx:
        bank = tx.banks.ensure("submissions", BankKind.SUBMISSIONS)
        tx.signals.add_many(bank, None, [(PDQ, "", 100)], 1)
        tx.changes.append(ChangeAction.ADD, [sid + 1])
        raise RuntimeError("crash before commit")
    with store.transaction(write=False) as tx:
        changes = tx.changes.since(0)
        assert [(c.seq, c.action, c.signal_id) for c in changes] == [(1, ChangeAction.ADD, sid)]
        assert tx.signals.count() == {"pdq": {"active": 1}}
    second = _add_signal(store)
    with store.transaction(write=False) as tx:
        assert [c.signal_id for c in tx.changes.since(1)] == [second]
        assert tx.changes.head() == 2
        assert tx.changes.since(0)[0].signal == PDQ
    store.close()


def test_foreign_keys_are_enforced(tmp_path):
    from sqlalchemy.exc import IntegrityError

    store = Store(f"sqlite:///{tmp_path / 'r.db'}")
    store.migrate()
    with pytest.raises(IntegrityError), store.transaction() as tx:
        tx.changes.append(ChangeAction.ADD, [999])
    store.close()


def test_audit_chain_verifies_and_detects_tampering(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'r.db'}")
    store.migrate()
    with store.transaction() as tx:
        for n in range(5):
            tx.audit.record("operator", "test_event", f"s{n}", {"n": n})
    with store.transaction(write=False) as tx:
        assert tx.audit.verify() == (5, None)
        assert [e["subject"] for e in tx.audit.recent(2)] == ["s4", "s3"]
    with store.engine.begin() as conn:
        conn.execute(text("UPDATE audit_events SET details='{\"n\": 99}' WHERE subject='s2'"))
    with store.transaction(write=False) as tx:
        checked, broken = tx.audit.verify()
    assert (checked, broken) == (2, 3)
    store.close()


def test_signal_lookup_helpers(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'r.db'}")
    store.migrate()
    sid = _add_signal(store)
    md5 = Signal.parse("md5", "62ffda02f4fabd4f7a1410866b8adace")
    with store.transaction() as tx:
        bank = tx.banks.ensure("submissions", BankKind.SUBMISSIONS)
        (mid,) = tx.signals.add_many(bank, None, [(md5, "", None)], 1)
    with store.transaction(write=False) as tx:
        assert tx.signals.find_exact(SignalKind.MD5, [md5.hex, "0" * 32]) == {md5.hex: [mid]}
        got = tx.signals.get_many([sid, mid, 12345])
        assert set(got) == {sid, mid}
        assert got[sid].signal == PDQ and got[sid].bank == "submissions"
        batches = list(tx.signals.active([SignalKind.PDQ], batch=1))
        assert batches == [[(sid, "pdq", PDQ.hex)]]
    store.close()


def test_refresh_statistics_is_a_no_op_on_sqlite_and_quiet_when_postgresql_is_down(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'r.db'}")
    store.migrate()
    assert store.refresh_statistics() == []
    down = Store("postgresql://postgres@127.0.0.1:1/nothing")  # nothing listens on port 1
    assert down.refresh_statistics() == []


def test_unsupported_database_url_is_a_config_error():
    from registry.errors import ConfigError

    with pytest.raises(ConfigError, match="Only SQLite and PostgreSQL"):
        Store("mysql://root@localhost/x")
    with pytest.raises(ConfigError, match="not a valid"):
        Store("::not a url::")


def _migrate_in_child(url: str) -> str:
    store = Store(url)
    try:
        return store.migrate()
    finally:
        store.close()


def _migrate_concurrently(url: str) -> list[str]:
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(3) as pool:
        return pool.map(_migrate_in_child, [url] * 3)


def test_concurrent_migrations_on_sqlite_all_succeed(tmp_path):
    url = f"sqlite:///{tmp_path / 'r.db'}"
    assert _migrate_concurrently(url) == [head_revision()] * 3
    assert Store(url).is_current()


@pytest.mark.services
def test_concurrent_migrations_on_postgresql_all_succeed(pg_url):
    assert _migrate_concurrently(pg_url) == [head_revision()] * 3
    store = Store(pg_url)
    assert store.is_current()
    store.close()


@pytest.mark.parametrize("dialect",
                         ["sqlite", pytest.param("postgresql", marks=pytest.mark.services)])
def test_find_exact_finds_active_digests_only_in_any_number(request, tmp_path, dialect):
    """SQLite looks digests up in IN lists of 500; PostgreSQL with one ``= ANY`` array: both
    answer the same, past a chunk's size, without withdrawn signals or other kinds."""
    import hashlib

    from registry.domain import SignalStatus

    url = (f"sqlite:///{tmp_path / 'r.db'}" if dialect == "sqlite"
           else request.getfixturevalue("pg_url"))
    store = Store(url)
    store.migrate()
    digests = [Signal.parse("md5", hashlib.md5(str(n).encode()).hexdigest()) for n in range(1200)]
    with store.transaction() as tx:
        bank = tx.banks.ensure("list", BankKind.IMPORTED)
        ids = [tx.signals.add_many(bank, None, [(d, "", None)], 1)[0] for d in digests]
        tx.signals.set_status(ids[:3], SignalStatus.WITHDRAWN)
        again = tx.signals.add_many(bank, None, [(digests[5], "", None)], 1)[0]  # a duplicate
    wanted = [d.hex for d in digests] + ["0" * 31 + "1"]
    with store.transaction(write=False) as tx:
        found = tx.signals.find_exact(SignalKind.MD5, wanted + wanted[:10])
        assert tx.signals.find_exact(SignalKind.MD5, []) == {}
        assert tx.signals.find_exact(SignalKind.SHA256, wanted) == {}
    assert len(found) == 1197 and digests[0].hex not in found
    assert sorted(found[digests[5].hex]) == sorted([ids[5], again])
    assert found[digests[1199].hex] == [ids[1199]]
    store.close()

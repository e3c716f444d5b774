"""The registry on TAKEDOWN_INDEX=milvus (Milvus Lite, a local file): registrations and
withdrawals reach the engine through the change log, matches equal the in-process index's, the
engine's position survives a restart (no refill), a foreign or stale engine is refilled, and only
the process holding the writer lock feeds it. The index itself is checked against brute force in
tests/test_index_milvus.py."""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

milvus_lite = pytest.importorskip(
    "milvus_lite", reason="milvus-lite is not installed (pip install milvus-lite==2.5.1)") \
    if not os.environ.get("REQUIRE_SERVICES") else __import__("milvus_lite")

from registry.bootstrap import build_registry  # noqa: E402
from registry.config import Settings  # noqa: E402
from registry.domain import BankKind, Query, Signal, SignalKind  # noqa: E402
from registry.service import Registry, SubmittedImage  # noqa: E402


def images(rng: np.random.Generator, n: int) -> list[SubmittedImage]:
    out = []
    for _ in range(n):
        pdq = rng.integers(0, 256, 32, dtype=np.uint8).tobytes()
        phash = rng.integers(0, 256, 8, dtype=np.uint8).tobytes()
        out.append(SubmittedImage((Signal(SignalKind.PDQ, pdq), Signal(SignalKind.PHASH, phash)),
                                  100))
    return out


def flipped(code: bytes, bits: list[int]) -> bytes:
    arr = bytearray(code)
    for b in bits:
        arr[b // 8] ^= 1 << (b % 8)
    return bytes(arr)


def matches(registry: Registry, queries: list[Query]) -> list[list[tuple[str, int, int]]]:
    return [sorted((m.signal.value, m.signal_id, m.distance) for m in r.matches)
            for r in registry.match(queries)]


@pytest.fixture
def milvus_settings(settings: Settings, tmp_path: Path) -> Settings:
    return replace(settings, index="milvus", milvus_uri=str(tmp_path / "engine" / "milvus.db"))


def test_matches_on_milvus_equal_the_in_process_index_and_follow_withdrawals(
        milvus_settings: Settings, settings: Settings) -> None:
    rng = np.random.default_rng(21)
    registered = images(rng, 120)
    engine = build_registry(milvus_settings)
    try:
        engine.register_bank("victims", BankKind.IMPORTED, registered)
        receipt = engine.submit_case(images(rng, 1))  # a case, later withdrawn
        queries = [Query(f"q{i}", (Signal(SignalKind.PDQ, flipped(
            s.signals[0].value, list(rng.choice(256, int(rng.integers(0, 40)), replace=False)))),
            s.signals[1])) for i, s in enumerate(registered[:40])]
        queries += [Query(f"r{i}", (s.signals[0],)) for i, s in enumerate(images(rng, 10))]
        got = matches(engine, queries)
        assert engine._keeper.indexes.indexes[SignalKind.PDQ].stats["live"] == 121
        assert engine.verify_index().ok
        # The same database served by the in-process multi-index answers the same.
        reference = build_registry(replace(settings, data_dir=milvus_settings.data_dir))
        try:
            assert matches(reference, queries) == got
        finally:
            reference.close()
        assert sum(bool(m) for m in got[:40]) >= 35 and not any(got[40:])
        engine.operator_withdraw_case(receipt.number)
        engine._keeper.sync()
        assert engine._keeper.indexes.indexes[SignalKind.PDQ].stats["live"] == 120
        assert engine.verify_index().ok
    finally:
        engine.close()


def test_a_restart_continues_from_the_engines_position_without_refilling(
        milvus_settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    rng = np.random.default_rng(22)
    first = build_registry(milvus_settings)
    try:
        first.register_bank("b", BankKind.IMPORTED, images(rng, 30))
        first._keeper.sync()
    finally:
        first.close()
    writer = build_registry(milvus_settings, load_index=False)  # the database moves on meanwhile
    try:
        writer.register_bank("b", BankKind.IMPORTED, images(rng, 5))
    finally:
        writer.close()
    with caplog.at_level(logging.INFO, logger="registry.service.indexing"):
        second = build_registry(milvus_settings)
    try:
        assert "refilling" not in caplog.text
        pdq = second._keeper.indexes.indexes[SignalKind.PDQ]
        assert pdq.stats["live"] == 35 and second.verify_index().ok
        with second._store.transaction(write=False) as tx:
            assert pdq.stats["position"] == tx.changes.head()
    finally:
        second.close()


def test_an_engine_filled_from_another_database_is_refilled(
        milvus_settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    mine = build_registry(milvus_settings)
    try:
        mine.register_bank("b", BankKind.IMPORTED, images(np.random.default_rng(24), 4))
        mine.rebuild_index()  # engine filled, snapshot written (the local kind's)
    finally:
        mine.close()
    # Another registry (its own database) is pointed at the same engine and fills it.
    other = build_registry(replace(milvus_settings, data_dir=str(tmp_path / "other")))
    try:
        other.register_bank("x", BankKind.IMPORTED, images(np.random.default_rng(23), 15))
        other._keeper.sync()
        assert other._keeper.indexes.indexes[SignalKind.PDQ].stats["live"] == 15
    finally:
        other.close()
    with caplog.at_level(logging.INFO, logger="registry.service.indexing"):
        mine = build_registry(milvus_settings)
    try:
        assert mine._keeper.loaded_from == "snapshot"
        assert "refilling takedown_pdq from the database" in caplog.text
        assert mine._keeper.indexes.indexes[SignalKind.PDQ].stats["live"] == 4
        assert mine.verify_index().ok
    finally:
        mine.close()


def test_only_the_process_holding_the_writer_lock_feeds_the_engine(
        milvus_settings: Settings) -> None:
    registry = build_registry(milvus_settings)
    try:
        assert registry._keeper.external_writer()
        # Another process of the same database cannot take the lock while this one holds it.
        assert registry._store.try_lock(
            f"takedown-index-writer:{milvus_settings.milvus_collection}") is None
        registry._keeper.close()  # lets it go (and closes the engine connections)
        again = registry._store.try_lock(
            f"takedown-index-writer:{milvus_settings.milvus_collection}")
        assert again is not None and again.held()
        again.release()
        assert not again.held()
    finally:
        registry.close()


@pytest.mark.services
def test_the_writer_lock_is_one_per_postgresql_database(pg_url: str, tmp_path: Path) -> None:
    from registry.store import Store

    first, second = Store(pg_url), Store(pg_url)
    try:
        held = first.try_lock("takedown-index-writer:x")
        assert held is not None and held.held()
        assert second.try_lock("takedown-index-writer:x") is None
        assert second.try_lock("takedown-index-writer:y") is not None  # another name is free
        held.release()
        taken = second.try_lock("takedown-index-writer:x")
        assert taken is not None and taken.held()
        taken.release()
    finally:
        first.close()
        second.close()


def test_milvus_settings_are_checked() -> None:
    from registry.errors import ConfigError

    with pytest.raises(ConfigError, match="TAKEDOWN_INDEX must be"):
        Settings.from_env({"TAKEDOWN_INDEX": "elastic"})
    with pytest.raises(ConfigError, match="TAKEDOWN_MILVUS_INDEX_TYPE"):
        Settings.from_env({"TAKEDOWN_INDEX": "milvus", "TAKEDOWN_MILVUS_INDEX_TYPE": "HNSW"})
    s = Settings.from_env({"TAKEDOWN_INDEX": "milvus", "TAKEDOWN_DATA_DIR": "/srv/t"})
    assert s.resolved_milvus_uri == "/srv/t/index/milvus.db"


def test_a_snapshot_written_beside_milvus_is_refused_by_an_in_process_index(
        milvus_settings: Settings, settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    """A Milvus process's snapshot holds no PDQ or pHash tables: a `multi` process loading or
    switching to it must rebuild or keep its own, never serve an empty index."""
    multi_settings = replace(settings, data_dir=milvus_settings.data_dir)
    serving = build_registry(multi_settings)
    try:
        registered = images(np.random.default_rng(25), 20)
        serving.register_bank("b", BankKind.IMPORTED, registered)
        serving._keeper.sync()
        engine = build_registry(milvus_settings, load_index=False)
        try:
            assert engine._keeper.external == {}  # commands that never search never connect
            engine.rebuild_index()  # fills Milvus, writes a snapshot of the local kind only
        finally:
            engine.close()
        with caplog.at_level(logging.WARNING, logger="registry.service.indexing"):
            assert serving._keeper.adopt_snapshot() is False
        assert "external engine" in caplog.text
        (result,) = serving.match([Query("q", (registered[5].signals[0],))])
        assert result.matched
    finally:
        serving.close()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="registry.service.indexing"):
        restarted = build_registry(multi_settings)
    try:
        assert restarted._keeper.loaded_from == "database" and "external engine" in caplog.text
        assert len(restarted._keeper.indexes.indexes[SignalKind.PDQ]) == 20
    finally:
        restarted.close()

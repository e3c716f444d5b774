"""The change-log follower of a serving process, on SQLite here (polling) and on PostgreSQL
(LISTEN/NOTIFY): it applies changes written by other processes without any request, compacts
in the background, and /readyz's view of it. Multi-worker gunicorn runs are in
tests/test_production.py."""

from __future__ import annotations

import time

import numpy as np
import pytest

from registry.bootstrap import build_registry
from registry.config import Settings
from registry.domain import BankKind, Query, SignalKind
from registry.index import MultiIndex
from registry.service import Registry
from tests.conftest import pdq_images


def head(registry: Registry) -> int:
    with registry._store.transaction(write=False) as tx:
        return int(tx.changes.head())


def follow_other_writer(settings: Settings) -> None:
    server = build_registry(settings)
    writer = build_registry(settings, load_index=False)  # another process, as far as the DB knows
    try:
        follower = server.follow_changes()
        assert follower.wait_synced()
        rng = np.random.default_rng(1)
        writer.register_bank("other", BankKind.IMPORTED, pdq_images(rng, 20))
        target = head(writer)
        started = time.perf_counter()
        assert follower.wait_synced(target)
        print(f"applied by the follower {(time.perf_counter() - started) * 1000:.0f} ms after "
              "the commit")
        assert len(server._keeper.indexes.indexes[SignalKind.PDQ]) == 20
        assert server.ready()["ready"] is True
    finally:
        writer.close()
        server.close()
    assert not follower.status.running


def test_follower_applies_changes_from_another_process_on_sqlite(settings: Settings) -> None:
    follow_other_writer(settings)


@pytest.mark.services
def test_follower_is_woken_by_postgresql_notifications(pg_url: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from registry.bootstrap import upgrade_database

    # A poll interval far longer than the hang guard: only a notification can wake it in time.
    settings = Settings.from_env({}, database_url=pg_url, data_dir=str(tmp_path),
                                 pin_kdf_n=1024, follow_poll_s=60.0)
    upgrade_database(settings)
    follow_other_writer(settings)


def test_background_compaction_swaps_in_a_new_base_and_matches_stay_right(
        settings: Settings) -> None:
    registry = build_registry(settings)
    try:
        registry._keeper.compact_in_background()
        index = registry._keeper.indexes.indexes[SignalKind.PDQ]
        assert isinstance(index, MultiIndex) and not index.auto_compact
        rng = np.random.default_rng(2)
        images = pdq_images(rng, 5000)  # past the delta's 4096 bound
        registry.register_bank("bulk", BankKind.IMPORTED, images)
        assert index.stats["delta"] == 5000 and index.needs_compaction  # not rebuilt inline
        assert registry._keeper.compact_pending() == 1
        assert index.stats["base"] == 5000 and index.stats["delta"] == 0
        assert registry.verify_index().ok
        probe = Query("q", (images[123].signals[0],))
        (result,) = registry.match([probe])
        assert result.matched and result.matches[0].distance == 0
        assert registry._keeper.compact_pending() == 0  # nothing left to do
    finally:
        registry.close()


def test_follower_writes_a_snapshot_every_so_many_changes(settings: Settings) -> None:
    from dataclasses import replace

    settings = replace(settings, snapshot_every=10)
    server = build_registry(settings)
    writer = build_registry(settings, load_index=False)
    try:
        path = server._keeper.snapshot_path
        path.unlink(missing_ok=True)
        follower = server.follow_changes()
        assert follower.wait_synced()
        writer.register_bank("other", BankKind.IMPORTED,
                             pdq_images(np.random.default_rng(3), 5))
        assert follower.wait_synced(head(writer))
        assert not path.exists()  # 5 changes: not yet
        writer.register_bank("other", BankKind.IMPORTED,
                             pdq_images(np.random.default_rng(4), 10))
        assert follower.wait_synced(head(writer))  # the round that reached it wrote it
        assert path.exists()
    finally:
        writer.close()
        server.close()
    restarted = build_registry(settings)
    try:
        assert restarted._keeper.loaded_from == "snapshot" and restarted.verify_index().ok
    finally:
        restarted.close()


@pytest.mark.parametrize("bad", [{"follow_poll_s": 0}, {"max_sync_age_s": -1},
                                 {"snapshot_every": -1}, {"max_index_lag": -5}])
def test_follower_settings_are_checked(bad: dict[str, float]) -> None:
    from registry.errors import ConfigError

    with pytest.raises(ConfigError):
        Settings.from_env({}, **bad)

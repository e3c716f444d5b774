"""The composition root: settings -> store -> index -> service. Nothing else builds these."""

from __future__ import annotations

from registry.config import Settings
from registry.domain import SignalKind
from registry.errors import StorageUnavailable
from registry.index.catalog import IndexOptions, single_thread
from registry.service import Registry
from registry.service.indexing import IndexKeeper
from registry.store import Store

SNAPSHOT_NAME = "snapshot.tridx"


def build_registry(settings: Settings, *, migrate: bool | None = None, load_index: bool = True
                   ) -> Registry:
    """A ready Registry. ``migrate`` applies pending migrations (the embedded default does this
    on every start; default: only for SQLite, PostgreSQL is migrated explicitly with
    ``takedown db upgrade``); ``load_index`` loads the snapshot (or rebuilds) and replays the
    log tail."""
    single_thread()
    store = Store(settings.resolved_database_url)
    try:
        if migrate is None:
            migrate = store.dialect == "sqlite"
        if migrate:
            store.migrate()
        elif not store.is_current():
            raise StorageUnavailable(
                "The database schema is not current: run 'takedown db upgrade' first.")
    except BaseException:
        store.close()
        raise
    if load_index:  # a serving process: plans need statistics (see Store.refresh_statistics)
        store.refresh_statistics()
    keeper = IndexKeeper(store, settings.snapshot_dir / SNAPSHOT_NAME, index_options(settings))
    registry = Registry(settings, store, keeper)
    if load_index:
        keeper.load()
    return registry


def index_options(settings: Settings) -> IndexOptions:
    """The index each perceptual kind gets: exact to the kind's strong threshold."""
    return IndexOptions(
        kind=settings.index,
        exact_radius={k: settings.thresholds(k).strong for k in (SignalKind.PDQ, SignalKind.PHASH)},
        compact_ratio=settings.compact_ratio, extra_probes=settings.index_extra_probes,
        milvus_uri=settings.resolved_milvus_uri if settings.index == "milvus" else "",
        milvus_token=settings.milvus_token, milvus_collection=settings.milvus_collection,
        milvus_index_type=settings.milvus_index_type)


def upgrade_database(settings: Settings) -> str:
    """Apply pending migrations to the configured database; return the revision it is at."""
    store = Store(settings.resolved_database_url)
    try:
        return store.migrate()
    finally:
        store.close()

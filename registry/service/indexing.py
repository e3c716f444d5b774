"""Keeping the in-memory index equal to the database: follow the change log, rebuild, verify,
snapshot. The index is a cache of the database; the database is always right."""

from __future__ import annotations

import dataclasses
import fcntl
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np

from registry.domain import SignalKind
from registry.errors import SnapshotError
from registry.index import snapshot
from registry.index.base import Ids, SearchResult
from registry.index.catalog import PERCEPTUAL, IndexOptions, IndexSet
from registry.index.local import Keypoints, Verified
from registry.index.multi import MultiIndex
from registry.index.sampled import SampledIndex
from registry.store import Store

PlanT = TypeVar("PlanT")


class _Compactable(Protocol[PlanT]):
    """What background compaction needs of an index (MultiIndex, SampledIndex)."""

    @property
    def needs_compaction(self) -> bool: ...
    def begin_compaction(self) -> PlanT: ...
    def build(self, plan: PlanT) -> None: ...
    def finish_compaction(self, plan: PlanT) -> bool: ...


log = logging.getLogger(__name__)
Progress = Callable[[int], None]


@dataclass(frozen=True, slots=True)
class VerifyReport:
    position: int
    checked: dict[str, int]
    missing: dict[str, list[int]] = field(default_factory=dict)  # in database, not in index
    extra: dict[str, list[int]] = field(default_factory=dict)  # in index, not active in database
    wrong: dict[str, list[int]] = field(default_factory=dict)  # same id, different code

    @property
    def ok(self) -> bool:
        return not any(self.missing.values()) and not any(self.extra.values()) and not any(
            self.wrong.values())

    def to_json(self) -> dict[str, object]:
        return {"ok": self.ok, "position": self.position, "checked": self.checked,
                "missing": self.missing, "extra": self.extra, "wrong": self.wrong}


class IndexKeeper:
    """Owns the IndexSet of this process and a lock around it (searches and updates)."""

    def __init__(self, store: Store, snapshot_path: Path,
                 options: IndexOptions | None = None) -> None:
        self.store = store
        self.snapshot_path = snapshot_path
        self.options = options or IndexOptions()
        self.indexes = IndexSet(self.options)
        self.lock = threading.RLock()
        self.loaded_at = 0.0
        self.loaded_from = "empty"

    # --- loading -------------------------------------------------------------------------
    def load(self) -> str:
        """Snapshot + log tail when a good snapshot exists, else a rebuild from the database."""
        try:
            indexes = IndexSet.load(self.snapshot_path, self.options)
            with self.store.transaction(write=False) as tx:
                head, first = tx.changes.head(), tx.changes.first()
                fingerprint = tx.changes.fingerprint(indexes.position)
            if indexes.position > head:
                raise SnapshotError("The snapshot is newer than the database's change log.")
            if indexes.fingerprint and fingerprint and fingerprint != indexes.fingerprint:
                raise SnapshotError(
                    f"The snapshot's change {indexes.position} is not the database's: the "
                    "database was restored or replaced since it was written.")
            if first > indexes.position + 1:
                raise SnapshotError(
                    f"The snapshot is at change {indexes.position} but the log now starts at "
                    f"{first}: the entries between were pruned.")
            with self.lock:
                self.indexes = indexes
            self.loaded_from = "snapshot"
        except SnapshotError as e:
            log.info("index: %s; rebuilding from the database", e.message)
            self.rebuild()
            self.loaded_from = "database"
            self._try_save()
        self.sync()
        self.loaded_at = time.time()
        return self.loaded_from

    def rebuild(self, progress: Progress | None = None) -> int:
        """A fresh index from every active signal, consistent with one change-log position."""
        fresh = IndexSet(self.options)
        # One build of the local tables once every signal is in, not one per growth step.
        if isinstance(fresh.local.inner, MultiIndex | SampledIndex):
            fresh.local.inner.auto_compact = False
        with self.store.transaction(write=False) as tx:
            position = tx.changes.head()
            parts: dict[SignalKind, tuple[list[Ids], list[bytes]]] = {
                k: ([], []) for k in PERCEPTUAL}
            for batch in tx.signals.active(PERCEPTUAL):
                for kind_name in {k for _, k, _ in batch}:
                    kind = SignalKind(kind_name)
                    rows = [(i, v) for i, k, v in batch if k == kind_name]
                    parts[kind][0].append(np.array([i for i, _ in rows], dtype=np.int64))
                    parts[kind][1].append(bytes.fromhex("".join(v for _, v in rows)))
                if progress:
                    progress(len(batch))
            for blobs in tx.signals.active_local():
                fresh.local.add(np.array([i for i, _ in blobs], dtype=np.int64),
                                [b for _, b in blobs])
                if progress:
                    progress(len(blobs))
        if isinstance(fresh.local.inner, MultiIndex | SampledIndex):
            fresh.local.inner.compact()
            fresh.local.inner.auto_compact = self.options.auto_compact
        for kind, (ids, codes) in parts.items():
            if ids:
                arr = np.frombuffer(b"".join(codes), dtype=np.uint8).reshape(-1, kind.bits // 8)
                fresh.indexes[kind].add(np.concatenate(ids), arr)
                fresh.indexes[kind].compact()
        fresh.position = position
        with self.lock:
            self.indexes = fresh
        self.loaded_at = time.time()
        return len(fresh)

    def sync(self) -> int:
        """Apply the change-log entries written since the index's position."""
        applied = 0
        while True:
            with self.store.transaction(write=False) as tx:
                changes = tx.changes.since(self.indexes.position)
            if not changes:
                return applied
            with self.lock:
                applied += self.indexes.apply(
                    (c.seq, c.action, c.signal_id, c.signal) for c in changes)

    # --- background compaction (serving processes) ----------------------------------------
    def compact_in_background(self) -> None:
        """From now on multi-indexes do not rebuild inside ``sync`` (under the lock, blocking
        searches); :meth:`compact_pending` does it with the lock held only to start and swap."""
        self.options = dataclasses.replace(self.options, auto_compact=False)
        with self.lock:
            for index in (*self.indexes.indexes.values(), self.indexes.local.inner):
                if isinstance(index, MultiIndex | SampledIndex):
                    index.auto_compact = False

    def compact_pending(self) -> int:
        """Rebuild every multi-index whose delta or tombstones passed their bound; searches
        go on against the old base meanwhile. Returns how many were swapped in."""
        done = 0
        for kind in (*PERCEPTUAL, SignalKind.LOCAL):
            with self.lock:
                index = self._inner(kind)
            if isinstance(index, MultiIndex | SampledIndex):
                done += self._compact_one(kind, index)
        return done

    def _compact_one(self, kind: SignalKind, index: _Compactable[Any]) -> bool:
        with self.lock:
            if self._inner(kind) is not index or not index.needs_compaction:
                return False
            plan = index.begin_compaction()
        index.build(plan)  # the C build (numpy's sorts) releases the GIL: searches run meanwhile
        with self.lock:
            return self._inner(kind) is index and index.finish_compaction(plan)

    def _inner(self, kind: SignalKind) -> object:
        if kind is SignalKind.LOCAL:
            return self.indexes.local.inner
        return self.indexes.indexes.get(kind)

    def _try_save(self) -> None:
        # A snapshot only speeds up the next start; failing to write one must not stop this one.
        try:
            self.save_snapshot()
        except OSError as e:
            log.warning("index: could not write a snapshot to %s: %s", self.snapshot_path, e)

    def save_snapshot(self, *, if_free: bool = False) -> Path | None:
        """Write a snapshot: copies are taken under the lock, the file is written outside it
        (searches go on). With ``if_free``, skip it when another process is writing one (every
        worker follows the same log; one snapshot at a time is enough)."""
        self.snapshot_path.parent.mkdir(parents=True, exist_ok=True)
        lock_path = self.snapshot_path.with_name(self.snapshot_path.name + ".lock")
        with open(lock_path, "a+b") as lock_file:
            try:
                fcntl.flock(lock_file, fcntl.LOCK_EX | (fcntl.LOCK_NB if if_free else 0))
            except BlockingIOError:
                return None
            with self.lock:
                position = self.indexes.position
                sections = self.indexes.sections()
            with self.store.transaction(write=False) as tx:
                fingerprint = tx.changes.fingerprint(position)
            snapshot.save(self.snapshot_path, position, sections, fingerprint)
        return self.snapshot_path

    # --- queries -------------------------------------------------------------------------
    def search(self, kind: SignalKind, codes: list[bytes], radius: int) -> list[SearchResult]:
        with self.lock:
            return self.indexes.search(kind, codes, radius)

    def search_local(self, query: Keypoints, radius: int, min_inliers: int) -> list[Verified]:
        with self.lock:
            return self.indexes.search_local(query, radius, min_inliers)

    def verify(self, attempts: int = 5) -> VerifyReport:
        """Compare every live index entry with the database's active signals, at one change-log
        position (retried if a write lands between reading the index and the database)."""
        for _ in range(attempts):
            self.sync()
            with self.lock:
                exported = {k: i.export() for k, i in self.indexes.indexes.items()}
                local = dict(self.indexes.local.blobs)
                position = self.indexes.position
            with self.store.transaction(write=False) as tx:
                head = tx.changes.head()
                db: dict[str, dict[int, str]] = {k.value: {} for k in (*PERCEPTUAL,
                                                                       SignalKind.LOCAL)}
                for batch in tx.signals.active(PERCEPTUAL):
                    for i, k, v in batch:
                        db[k][i] = v
                for rows in tx.signals.active_local():
                    db[SignalKind.LOCAL.value].update((i, b.hex()) for i, b in rows)
            if head == position:
                break
        report = VerifyReport(position=position, checked={})
        views: dict[SignalKind, dict[int, str]] = {
            kind: {int(i): bytes(c).hex() for i, c in zip(ids, codes, strict=True)}
            for kind, (ids, codes) in exported.items()}
        views[SignalKind.LOCAL] = {i: b.hex() for i, b in local.items()}
        for kind, in_index in views.items():
            in_db = db[kind.value]
            report.checked[kind.value] = len(in_index)
            report.missing[kind.value] = sorted(set(in_db) - set(in_index))[:100]
            report.extra[kind.value] = sorted(set(in_index) - set(in_db))[:100]
            report.wrong[kind.value] = sorted(
                i for i in set(in_db) & set(in_index) if in_db[i] != in_index[i])[:100]
        return report

    def stats(self) -> dict[str, object]:
        with self.lock:
            out = self.indexes.stats()
        out["loaded_from"] = self.loaded_from
        out["loaded_at"] = self.loaded_at
        return out

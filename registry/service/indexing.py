"""Keeping the in-memory index equal to the database: follow the change log, rebuild, verify,
snapshot. The index is a cache of the database; the database is always right."""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from registry.domain import ChangeAction, SignalKind
from registry.errors import SnapshotError
from registry.index import snapshot
from registry.index.base import (
    Compactable,
    EngineIndex,
    Foldable,
    HashIndex,
    Ids,
    SearchResult,
)
from registry.index.catalog import INDEXED, PERCEPTUAL, IndexOptions, IndexSet, close_all
from registry.index.local import Keypoints, Verified
from registry.store import Store
from registry.store.engine import HeldLock

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
        # Engine-backed kinds (TAKEDOWN_INDEX=milvus): opened once, when the index is first
        # loaded or rebuilt (a CLI command that never searches never connects), fed by one
        # process. Until then an empty in-process set stands in.
        self.external: dict[SignalKind, EngineIndex] = {}
        self.indexes = IndexSet(dataclasses.replace(self.options, kind="multi")
                                if self.options.external else self.options)
        self.lock = threading.RLock()
        self._writer_lock: HeldLock | None = None
        self._writer_checked = self._writer_tried = -1e9
        self.loaded_at = 0.0
        self.loaded_from = "empty"
        self._adopted: tuple[int, int, int, int] | None = None  # the snapshot file mapped last
        self.adopted = 0  # snapshots switched to after loading

    # --- loading -------------------------------------------------------------------------
    def load(self) -> str:
        """Snapshot + log tail when a good snapshot exists, else a rebuild from the database.

        The snapshot is mapped, not copied: every process of a machine serving from the same
        file shares one copy of its tables. When none is usable the processes starting together
        take the snapshot lock in turn: the first rebuilds and writes one, the others map it."""
        self._open_external()
        try:
            self._load_snapshot()
        except SnapshotError as first:
            with contextlib.ExitStack() as stack:
                try:
                    held = stack.enter_context(self._writer(blocking=True))
                except OSError as e:  # no lock, so no snapshot to write: rebuild alone
                    log.warning("index: cannot lock the snapshot folder: %s", e)
                    held = False
                try:  # another process may have written one while this one waited
                    if not held:
                        raise first
                    self._load_snapshot()
                except SnapshotError as e:
                    log.info("index: %s; rebuilding from the database", e.message)
                    self.rebuild()
                    self.loaded_from = "database"
                    if held and self._try_save(locked=True) and self.adopt_snapshot():
                        self.adopted -= 1  # share the file just written: part of loading
        if self.external and self.loaded_from == "snapshot":
            self._prepare_external()  # a rebuild filled it already
        self.sync()
        self.loaded_at = time.time()
        return self.loaded_from

    def _load_snapshot(self) -> None:
        identity = snapshot.file_identity(self.snapshot_path)
        indexes = IndexSet.load(self.snapshot_path, self.options, external=self.external)
        self._check_history(indexes)
        with self.lock:
            self.indexes = indexes
        self._adopted = identity
        self.loaded_from = "snapshot"

    def _check_history(self, indexes: IndexSet) -> None:
        """Refuse a snapshot this database's change log cannot continue from."""
        problem = self._history_problem(indexes.position, indexes.fingerprint)
        if problem:
            raise SnapshotError(f"The snapshot {problem}.")

    def _history_problem(self, position: int, fingerprint: str, *, filled: bool = False
                         ) -> str:
        """Why this database's change log cannot be replayed onto an index at ``position``
        (written with ``fingerprint``), or "". With ``filled``, an index at 0 must be empty
        history too: an engine that was never filled is refilled, not replayed from 0."""
        with self.store.transaction(write=False) as tx:
            head, first = tx.changes.head(), tx.changes.first()
            ours = tx.changes.fingerprint(position)
        if filled and position == 0 and head > 0:
            return "has never been filled"
        if position > head:
            return "is newer than the database's change log"
        if fingerprint and ours and fingerprint != ours:
            return (f"is at change {position}, which is not the database's: the database was "
                    "restored or replaced since it was written")
        if first > position + 1:
            return (f"is at change {position} but the log now starts at {first}: the entries "
                    "between were pruned")
        return ""

    @contextlib.contextmanager
    def _writer(self, blocking: bool) -> Iterator[bool]:
        """The machine-wide snapshot writer lock (a ``flock`` beside the snapshot): yields
        whether this process holds it (False: another one does, and ``blocking`` is off).
        Raises OSError when the lock file cannot be made (a read-only or missing folder):
        there is no snapshot to write either."""
        lock_path = self.snapshot_path.with_name(self.snapshot_path.name + ".lock")
        self.snapshot_path.parent.mkdir(parents=True, exist_ok=True)
        with open(lock_path, "a+b") as lock_file:
            try:
                fcntl.flock(lock_file, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            except BlockingIOError:
                yield False
                return
            yield True

    # --- engine-backed kinds (TAKEDOWN_INDEX=milvus) --------------------------------------
    def _open_external(self) -> None:
        if self.options.external and not self.external:
            self.external = self.options.open_external()
            with self.lock:
                self.indexes = IndexSet(self.options, self.external)

    def external_writer(self) -> bool:
        """Whether this process feeds the engine: exactly one process of all that share the
        database does (a PostgreSQL session advisory lock, a file lock on SQLite), and whoever
        holds it when that one stops takes over within a few seconds. The others only search
        (every hit is re-checked against the database, so none is ever stale)."""
        if not self.external:
            return False
        now = time.monotonic()
        if self._writer_lock is not None:
            if now - self._writer_checked < 1.0:
                return True
            self._writer_checked = now
            if self._writer_lock.held():
                return True
            self._writer_lock = None
            log.warning("index: lost the engine writer lock; another process takes over")
        if now - self._writer_tried < 2.0:
            return False
        self._writer_tried = self._writer_checked = now
        self._writer_lock = self.store.try_lock(
            f"takedown-index-writer:{self.options.milvus_collection}")
        if self._writer_lock is not None:
            log.info("index: this process feeds the %s engine", self.options.kind)
        return self._writer_lock is not None

    def _prepare_external(self) -> None:
        """As the writer: refill an engine whose recorded position this database's change log
        cannot continue from (empty, newer, another history, pruned past it)."""
        if not self.external_writer():
            return
        for kind, index in self.external.items():
            problem = self._history_problem(*index.position(), filled=True)
            if problem:
                log.info("index: refilling %s from the database: it %s", index.collection,
                         problem)
                self._fill_external({kind})

    def _fill_external(self, kinds: set[SignalKind]) -> None:
        """Empty the engine's collections of ``kinds`` and load every active signal into them,
        at one change-log position (searches meanwhile see a partial collection)."""
        with self.store.transaction(write=False) as tx:
            position = tx.changes.head()
            fingerprint = tx.changes.fingerprint(position)
            for kind in kinds:
                self.external[kind].reset()
            for batch in tx.signals.active([k for k in PERCEPTUAL if k in kinds]):
                for kind in kinds:
                    rows = [(i, v) for i, k, v in batch if k == kind.value]
                    if rows:
                        codes = np.frombuffer(bytes.fromhex("".join(v for _, v in rows)),
                                              dtype=np.uint8).reshape(-1, kind.bits // 8)
                        self.external[kind].add(np.array([i for i, _ in rows], np.int64), codes)
        for kind in kinds:
            self.external[kind].set_position(position, fingerprint)

    def _feed_external(self) -> int:
        """As the writer: apply the change log to the engine from the position it recorded,
        recording the new one after each batch (a replay after a crash is harmless)."""
        if not self.external_writer():
            return 0
        positions = {k: i.position()[0] for k, i in self.external.items()}
        applied = 0
        while True:
            start = min(positions.values())
            with self.store.transaction(write=False) as tx:
                changes = tx.changes.since(start)
                if not changes:
                    return applied
                last = changes[-1].seq
                fingerprint = tx.changes.fingerprint(last)
            for kind, index in self.external.items():
                adds: tuple[list[int], list[bytes]] = ([], [])
                for c in changes:
                    if c.seq <= positions[kind] or c.signal.kind is not kind:
                        continue
                    if c.action is ChangeAction.ADD:
                        adds[0].append(c.signal_id)
                        adds[1].append(c.signal.value)
                        continue
                    _flush(index, kind, adds)
                    index.remove(np.array([c.signal_id], dtype=np.int64))
                _flush(index, kind, adds)
                index.set_position(last, fingerprint)
                positions[kind] = last
            applied += len(changes)

    def adopt_snapshot(self) -> bool:
        """Switch this process' PDQ and pHash indexes to a snapshot another process (or this
        one) wrote since the last one it mapped: map the new file, replay the change log from
        its position to this index's onto it, swap it in. Searches go on against the old
        indexes meanwhile; the old mapping goes when the last search using it ends. The local
        index stays this process' own. A bad file is logged and skipped (the old indexes go on
        serving), never swapped in. Returns whether a snapshot was adopted."""
        identity = snapshot.file_identity(self.snapshot_path)
        if identity is None or identity == self._adopted or self.external:
            return False
        try:
            fresh = IndexSet.load(self.snapshot_path, self.options, kinds=PERCEPTUAL)
            self._check_history(fresh)
        except SnapshotError as e:
            log.warning("index: not switching to the new snapshot: %s", e.message)
            self._adopted = identity  # the next write makes a new file; this one stays refused
            return False
        except OSError as e:  # unreadable or gone: try again on the next one
            log.warning("index: cannot read the new snapshot: %s", e)
            return False
        if fresh.position > self.indexes.position:
            return False  # written past this process' position: adopt it once caught up
        self._replay(fresh, self.indexes.position)
        with self.lock:
            self._replay(fresh, self.indexes.position)  # what arrived meanwhile (little)
            for kind in PERCEPTUAL:
                self.indexes.indexes[kind] = fresh.indexes[kind]
        self._adopted = identity
        self.adopted += 1
        return True

    def _replay(self, fresh: IndexSet, upto: int) -> None:
        """Apply the change log onto ``fresh``'s PDQ and pHash indexes up to ``upto``."""
        while fresh.position < upto:
            with self.store.transaction(write=False) as tx:
                changes = [c for c in tx.changes.since(fresh.position) if c.seq <= upto]
            if not changes:  # pruned or rolled back under us: the next rebuild sorts it out
                raise SnapshotError(f"The change log has no entries after {fresh.position}.")
            fresh.apply(((c.seq, c.action, c.signal_id, c.signal) for c in changes), PERCEPTUAL)

    def rebuild(self, progress: Progress | None = None) -> int:
        """A fresh index from every active signal, consistent with one change-log position."""
        self._open_external()
        fresh = IndexSet(self.options, self.external)
        if self.external and self.external_writer():
            self._fill_external(set(self.external))
        # One build of the local tables once every signal is in, not one per growth step.
        if isinstance(fresh.local.inner, Compactable):
            fresh.local.inner.auto_compact = False
        with self.store.transaction(write=False) as tx:
            position = tx.changes.head()
            parts: dict[SignalKind, tuple[list[Ids], list[bytes]]] = {
                k: ([], []) for k in PERCEPTUAL}
            for batch in tx.signals.active([k for k in PERCEPTUAL if k not in self.external]
                                           ) if len(self.external) < len(PERCEPTUAL) else ():
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
        if isinstance(fresh.local.inner, Compactable):
            fresh.local.inner.compact()
            fresh.local.inner.auto_compact = self.options.auto_compact
        for kind, (ids, codes) in parts.items():
            if ids:
                arr = np.frombuffer(b"".join(codes), dtype=np.uint8).reshape(-1, kind.bits // 8)
                index = fresh.indexes[kind]
                index.add(np.concatenate(ids), arr)
                if isinstance(index, Foldable):
                    index.compact()
        fresh.position = position
        with self.lock:
            self.indexes = fresh
        self.loaded_at = time.time()
        return len(fresh)

    def sync(self) -> int:
        """Apply the change-log entries written since the index's position (and, in the process
        that feeds an engine, since the engine's)."""
        applied = self._feed_external() if self.external else 0
        while True:
            with self.store.transaction(write=False) as tx:
                changes = tx.changes.since(self.indexes.position)
            if not changes:
                return applied
            with self.lock:
                applied += self.indexes.apply(
                    (c.seq, c.action, c.signal_id, c.signal) for c in changes)

    def close(self) -> None:
        """Let go of the engine writer lock and the engine connections, if any."""
        if self._writer_lock is not None:
            self._writer_lock.release()
            self._writer_lock = None
        close_all(self.external)
        self.external = {}

    # --- background compaction (serving processes) ----------------------------------------
    def compact_in_background(self) -> None:
        """From now on multi-indexes do not rebuild inside ``sync`` (under the lock, blocking
        searches); :meth:`compact_pending` does it with the lock held only to start and swap."""
        self.options = dataclasses.replace(self.options, auto_compact=False)
        with self.lock:
            for index in (*self.indexes.indexes.values(), self.indexes.local.inner):
                if isinstance(index, Compactable):
                    index.auto_compact = False

    def needs_compaction(self, kinds: Iterable[SignalKind] = PERCEPTUAL) -> bool:
        """Whether some multi-index of ``kinds`` passed its delta or tombstone bound."""
        with self.lock:
            return any(isinstance(i, Compactable) and i.needs_compaction
                       for i in (self._inner(k) for k in kinds))

    def compact_pending(self, kinds: Iterable[SignalKind] = INDEXED) -> int:
        """Rebuild, in this process' own memory, every index of ``kinds`` whose delta or
        tombstones passed their bound; searches go on against the old base meanwhile. Returns
        how many were swapped in. (A serving process folds PDQ and pHash into a new shared
        snapshot instead, see :meth:`save_snapshot`; this is for the local index and for when
        no snapshot can be written.)"""
        done = 0
        for kind in kinds:
            with self.lock:
                index = self._inner(kind)
            if isinstance(index, Compactable):
                done += self._compact_one(kind, index)
        return done

    def _compact_one(self, kind: SignalKind, index: Compactable) -> bool:
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

    def _try_save(self, locked: bool = False) -> bool:
        # A snapshot only speeds up the next start; failing to write one must not stop this one.
        try:
            return self.save_snapshot(locked=locked) is not None
        except OSError as e:
            log.warning("index: could not write a snapshot to %s: %s", self.snapshot_path, e)
            return False

    def save_snapshot(self, *, if_free: bool = False, locked: bool = False) -> Path | None:
        """Write a snapshot, PDQ and pHash as new multi-index tables folding in their deltas and
        tombstones: what is frozen is taken under the lock, the tables are built and the file
        written outside it (searches go on). Every serving process of the machine then maps it
        (:meth:`adopt_snapshot`): one build and one copy per machine. With ``if_free``, skip it
        when another process is writing one (returns None); ``locked``: the caller holds the
        writer lock already."""
        if locked:
            return self._save()
        with self._writer(blocking=not if_free) as got:  # OSError: cannot write one at all
            return self._save() if got else None

    def _save(self) -> Path:
        with self.lock:
            plan = self.indexes.snapshot_plan()
        sections = plan.sections()
        with self.store.transaction(write=False) as tx:
            fingerprint = tx.changes.fingerprint(plan.position)
        snapshot.save(self.snapshot_path, plan.position, sections, fingerprint, plan.left_out)
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


def _flush(index: HashIndex, kind: SignalKind, adds: tuple[list[int], list[bytes]]) -> None:
    if adds[0]:
        codes = np.frombuffer(b"".join(adds[1]), dtype=np.uint8).reshape(-1, kind.bits // 8)
        index.add(np.array(adds[0], dtype=np.int64), codes)
        adds[0].clear()
        adds[1].clear()

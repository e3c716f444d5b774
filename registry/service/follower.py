"""The change-log follower: a thread per serving process that keeps its index current.

It waits on the database's change notifications (PostgreSQL LISTEN/NOTIFY; see
:mod:`registry.store.notify`) and also polls every ``poll_s`` as the safety net, and on each
wake-up applies the log entries past the index's position (adds to the delta, withdrawals as
tombstones), then rebuilds any index whose delta or tombstones grew past their bound while
searches go on against the old one. Every match request also syncs first, so this thread is
what keeps idle workers current and takes the catching-up out of the request path. When the
database is unreachable it retries with a growing pause; ``status`` tells /readyz whether it
keeps up.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from registry.domain import SignalKind
from registry.errors import RegistryError
from registry.index.catalog import INDEXED, PERCEPTUAL
from registry.service.indexing import IndexKeeper
from registry.store import Store
from registry.store.notify import Listener

log = logging.getLogger("takedown.follower")


@dataclass(frozen=True, slots=True)
class FollowerStatus:
    running: bool
    last_sync_at: float
    notifications: int
    errors: int
    last_error: str


class Follower:
    def __init__(self, store: Store, keeper: IndexKeeper, poll_s: float = 0.5,
                 snapshot_every: int = 0, anchor: Callable[[], None] | None = None,
                 anchor_every_s: float = 60.0) -> None:
        self.store = store
        self.keeper = keeper
        self.poll_s = poll_s
        self.snapshot_every = snapshot_every  # save a snapshot after this many changes (0: never)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_sync_at = 0.0
        self._notifications = 0
        self._errors = 0
        self._last_error = ""
        self._snapshot_position = keeper.indexes.position
        # Called every anchor_every_s (the audit chain's signed head, registry.service.audit).
        self._anchor = anchor
        self._anchor_every_s = anchor_every_s
        self._anchored_at = 0.0
        self._anchor_failing = False
        self._snapshot_failing = False
        self._synced = threading.Condition()  # notified at the end of every sync round
        self._synced_position = -1  # the index position at the end of the last round

    def start(self) -> None:
        if self._thread is None:
            self.keeper.compact_in_background()
            self._thread = threading.Thread(target=self._run, name="takedown-follower",
                                            daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    @property
    def status(self) -> FollowerStatus:
        alive = self._thread is not None and self._thread.is_alive()
        return FollowerStatus(alive, self._last_sync_at, self._notifications, self._errors,
                              self._last_error)

    def wait_synced(self, position: int = 0, timeout: float = 10.0) -> bool:
        """Block until a sync round has finished with the index at ``position`` or past it
        (any finished round when 0): True, or False after ``timeout`` seconds. A round that
        was due to write a snapshot has written it by then."""
        with self._synced:
            return self._synced.wait_for(lambda: self._synced_position >= position, timeout)

    def _run(self) -> None:
        pause = self.poll_s
        while not self._stop.is_set():
            try:
                with Listener(self.store.url, self._stop) as listener:
                    self._sync()
                    pause = self.poll_s
                    while not self._stop.is_set():
                        if listener.wait(self.poll_s):
                            self._notifications += 1
                        self._sync()
            except Exception as e:  # the database went away, or a bug: keep following
                self._errors += 1
                self._last_error = e.message if isinstance(e, RegistryError) else repr(e)
                log.warning("follower: %s; retrying in %.1f s", self._last_error, pause)
                self._stop.wait(pause)
                pause = min(pause * 2, 10.0)

    def _sync(self) -> None:
        self.keeper.sync()
        self._last_sync_at = time.time()
        # A snapshot written by another process of this machine (its compaction or periodic
        # save): map it and drop this process' own delta, tombstones and old tables.
        self.keeper.adopt_snapshot()
        position = self.keeper.indexes.position
        due = self.snapshot_every and position - self._snapshot_position >= self.snapshot_every
        if due or self.keeper.needs_compaction():
            # PDQ and pHash compact by writing a new shared snapshot (one writer per machine;
            # the others find the lock taken and map the result when it lands).
            try:
                if (self.keeper.save_snapshot(if_free=True) is not None
                        and not self.keeper.adopt_snapshot()):
                    self.keeper.compact_pending(PERCEPTUAL)  # its own file refused: say so, go on
                self._snapshot_failing = False
            except OSError as e:
                # A read-only or full snapshot folder costs memory and a slower restart, not
                # serving: this process compacts in its own memory instead (below) and tries
                # again after the next snapshot_every.
                if not self._snapshot_failing:
                    log.warning("follower: cannot write the index snapshot: %s", e)
                self._snapshot_failing = True
            if due:
                self.store.refresh_statistics()  # where autovacuum is off, keep the plans right
                self._snapshot_position = position
        self.keeper.compact_pending(
            INDEXED if self._snapshot_failing else (SignalKind.LOCAL,))
        if self._anchor is not None and time.time() - self._anchored_at >= self._anchor_every_s:
            self._anchored_at = time.time()
            try:
                self._anchor()
                self._anchor_failing = False
            except OSError as e:  # a read-only or full disk: serving goes on, said once
                if not self._anchor_failing:
                    log.warning("follower: cannot write the audit anchor: %s", e)
                self._anchor_failing = True
        with self._synced:
            self._synced_position = position
            self._synced.notify_all()

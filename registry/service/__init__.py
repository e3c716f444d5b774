"""The service layer: the registry's verbs, over one store and one in-process index.

Edges (web, CLI) call :class:`Registry` methods and never touch the ORM, faiss or settings
sources. Logic lives in the small modules beside this one; this class only holds the parts.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TextIO

from registry.config import Settings
from registry.domain import (
    Bank,
    BankKind,
    CaseStatus,
    Platform,
    Query,
    QueryResult,
    RegisteredSignal,
    Scope,
    SignalKind,
    Thresholds,
)
from registry.errors import InvalidInput, PlatformNotFound, RegistryError
from registry.hashing import (
    DecodeOptions,
    ImageSignals,
    VideoOptions,
    VideoSignals,
    compute_signals,
    compute_video_signals,
)
from registry.interop import Entry, Problem
from registry.service import (
    audit,
    banks,
    cases,
    exchange,
    feed,
    feedback,
    lists,
    matching,
    platforms,
    purge,
)
from registry.service.cases import CaseReceipt, CaseView, SubmittedImage
from registry.service.follower import Follower
from registry.service.indexing import IndexKeeper, Progress, VerifyReport
from registry.store import Store

__all__ = ["CaseReceipt", "CaseView", "IndexStatus", "Registry", "SubmittedImage",
           "VerifyReport"]


@dataclass(frozen=True, slots=True)
class IndexStatus:
    """The in-memory index at a glance (cheap: no database read, no sync), for metrics and the
    operator's commands: change-log position, when it was loaded (0: not yet), hashes per
    kind (``local`` counts registered images), the snapshot file and the database's dialect."""

    position: int
    loaded_at: float
    hashes: dict[str, int]
    snapshot: str
    database: str

    @property
    def total(self) -> int:
        return sum(self.hashes.values())


class Registry:
    """The registry's verbs over its parts. The store and the index keeper are its own: edges
    use these methods (tests/test_architecture.py checks that they do)."""

    def __init__(self, settings: Settings, store: Store, keeper: IndexKeeper) -> None:
        self.settings = settings
        self._store = store
        self._keeper = keeper
        self.follower: Follower | None = None
        self.upstream: exchange.Upstream | None = None
        self._anchored = 0

    def follow_changes(self) -> Follower:
        """Start this process's change-log follower (serving processes; idempotent)."""
        if self.follower is None:
            self.follower = Follower(self._store, self._keeper, self.settings.follow_poll_s,
                                     self.settings.snapshot_every, anchor=self.anchor_audit)
            self.follower.start()
        return self.follower

    def follow_upstream(self) -> exchange.Upstream | None:
        """With TAKEDOWN_UPSTREAM_URL set, follow that registry's feed into its bank from a
        thread (of whichever serving process takes the bank's lock first)."""
        s = self.settings
        if not s.upstream_url or self.upstream is not None:
            return self.upstream
        self.upstream = self.upstream_of(s.upstream_bank, s.upstream_url, s.upstream_key,
                                         s.upstream_interval_s)
        self.upstream.start()
        return self.upstream

    def follow_source(self, bank: str, url: str, key: str,
                      on_step: Callable[[exchange.Step], None] | None = None) -> int:
        """Read a registry's feed into ``bank`` until it has no more; the records read."""
        read = exchange.catch_up(self._store, self.settings, bank, url,
                                 exchange.http_fetch(url, key), on_step)
        self._catch_up()
        return read

    def upstream_of(self, bank: str, url: str, key: str, interval_s: float,
                    on_step: Callable[[exchange.Step], None] | None = None
                    ) -> exchange.Upstream:
        """A follower of ``url`` into ``bank``, to run (``.run()``) or start as a thread."""
        return exchange.Upstream(self._store, self.settings, bank, url,
                                 exchange.http_fetch(url, key), interval_s, on_step)

    def restart_source(self, bank: str) -> None:
        """Read a followed bank's source again from its start (after it was restored)."""
        exchange.restart(self._store, bank)

    # --- hashing (in memory; the bytes are not kept) -------------------------------------------
    @property
    def decode_options(self) -> DecodeOptions:
        return DecodeOptions.of(self.settings)

    def hash_image(self, data: bytes, *, registration: bool = False) -> ImageSignals:
        """Signals of an image held in memory; ``registration`` adds the registered views."""
        return compute_signals(data, self.decode_options, registration=registration)

    def hash_video(self, data: bytes, *, registration: bool = False) -> VideoSignals:
        """Digests and kept frame hashes of a video held in memory (registry.hashing.video);
        ``registration`` keeps them within the storage budget, a query keeps more and its
        content-box frames."""
        return compute_video_signals(data, VideoOptions.of(self.settings),
                                     registration=registration)

    # --- cases ---------------------------------------------------------------------------------
    def submit_case(self, images: Sequence[SubmittedImage], *, strict: bool = False
                    ) -> CaseReceipt:
        """Register the images as a new case. ``strict``: they come from anyone on the web and
        are held to the submit page's shape (``cases.validate_submission``)."""
        receipt = cases.submit(self._store, self.settings, images, strict=strict)
        self._catch_up()
        return receipt

    def validate_submission(self, images: Sequence[SubmittedImage], *, strict: bool = False
                            ) -> None:
        """Raise the error that submitting these images would meet; registers nothing."""
        cases.validate_submission(images, self.settings, strict=strict)

    def case_status(self, number: str, pin: str, client: str = "") -> CaseView:
        """The case's status if ``pin`` is its PIN; ``client`` is the address asking (wrong
        PINs lock that address out, never the case: see ``registry.service.pins``)."""
        return cases.status(self._store, self.settings, number, pin, client)

    def withdraw_case(self, number: str, pin: str, client: str = "") -> CaseView:
        view = cases.withdraw(self._store, self.settings, number, pin, client=client)
        self._catch_up()
        return view

    def operator_withdraw_case(self, number: str) -> CaseView:
        view = cases.withdraw(self._store, self.settings, number, None, actor="operator")
        self._catch_up()
        return view

    def unlock_case(self, number: str) -> int:
        """Operator: clear the case's wrong-PIN counters (audited); how many were cleared."""
        return cases.unlock(self._store, number)

    def reset_case_pin(self, number: str) -> str:
        """Operator: a new PIN for the case (audited); the old one stops working."""
        return cases.reset_pin(self._store, self.settings, number)

    def _catch_up(self) -> None:
        # A process that never loaded its index (a one-shot CLI command) has nothing to update.
        if self._keeper.loaded_at:
            self._keeper.sync()

    def show_case(self, number: str) -> CaseView:
        return cases.show(self._store, number)

    def list_cases(self, status: CaseStatus | None = None, limit: int = 100) -> list[CaseView]:
        return cases.list_cases(self._store, status, limit)

    # --- matching ------------------------------------------------------------------------------
    def match(self, queries: Sequence[Query], platform: Platform | None = None
              ) -> list[QueryResult]:
        actor = f"platform:{platform.name}" if platform else "operator"
        return matching.match(self._store, self._keeper, self.settings, queries,
                              platform.id if platform else None, actor)

    def query_of_image(self, ref: str, image: ImageSignals) -> Query:
        return matching.query_of_image(ref, image, self.settings)

    def query_of_video(self, ref: str, video: VideoSignals) -> Query:
        return Query(ref, video.signals())

    # --- feedback, feed, banks ----------------------------------------------------------------
    def record_feedback(self, platform: Platform, match_id: str, outcome: str
                        ) -> feedback.FeedbackReceipt:
        receipt = feedback.record(self._store, self.settings, platform, match_id,
                                  feedback.parse_outcome(outcome))
        self._catch_up()
        return receipt

    def release_signal(self, signal_id: int) -> None:
        feedback.release(self._store, signal_id)
        self._catch_up()

    def hold_signal(self, signal_id: int) -> None:
        """Operator: quarantine an active hash by decision (audited)."""
        feedback.hold(self._store, signal_id)
        self._catch_up()

    def quarantined(self) -> list[RegisteredSignal]:
        with self._store.transaction(write=False) as tx:
            return tx.signals.quarantined()

    def reported(self) -> list[RegisteredSignal]:
        """Active hashes with not_violating reports since their last review."""
        with self._store.transaction(write=False) as tx:
            return tx.signals.reported()

    def read_feed(self, platform: Platform, cursor: str | None, limit: int) -> feed.FeedPage:
        return feed.read(self._store, platform, cursor, limit)

    def register_bank(self, bank: str, kind: BankKind, images: Sequence[SubmittedImage]) -> int:
        count = banks.register(self._store, self.settings, bank, kind, images)
        self._store.refresh_statistics()  # a bulk import changes what the planner should assume
        self._catch_up()
        return count

    # --- banks and hash lists -------------------------------------------------------------------
    def add_bank(self, name: str, description: str = "",
                 thresholds: dict[SignalKind, Thresholds] | None = None) -> Bank:
        return banks.add(self._store, self.settings, name, description, thresholds)

    def configure_bank(self, name: str, *, enabled: bool | None = None,
                       thresholds: dict[SignalKind, Thresholds] | None = None,
                       description: str | None = None) -> Bank:
        return banks.configure(self._store, self.settings, name, enabled=enabled,
                               thresholds=thresholds, description=description)

    def import_list(self, bank: str, fmt: str, items: Iterable[Entry | Problem], *,
                    dry_run: bool = False) -> lists.ImportReport:
        """Apply a hash list's records to ``bank`` in one transaction (nothing when any record
        is bad, or for a dry run)."""
        report = lists.import_list(self._store, self.settings, bank, fmt, items, dry_run=dry_run)
        if report.applied:
            self._store.refresh_statistics()
            self._catch_up()
        return report

    def export_list(self, bank: str, fmt: str, out: TextIO, since: str | None = None
                    ) -> lists.ExportReport:
        return lists.export_list(self._store, bank, fmt, out, since)

    def purge_case(self, number: str, *, force: bool = False) -> purge.PurgeReport:
        """Erase a withdrawn case's hashes for good (see registry.service.purge). A loaded
        index then writes a new snapshot, so no file on disk holds them either."""
        report = purge.purge(self._store, number, force=force)
        if self._keeper.loaded_at and report.signals:
            self._keeper.sync()
            self._keeper.save_snapshot()
        return report

    # --- platforms -----------------------------------------------------------------------------
    def add_platform(self, name: str, scopes: Iterable[Scope]) -> tuple[Platform, str]:
        return platforms.add(self._store, name, scopes)

    def list_platforms(self) -> list[Platform]:
        return platforms.list_all(self._store)

    def revoke_platform(self, name: str) -> Platform:
        return platforms.revoke(self._store, name)

    def rotate_platform_key(self, name: str) -> tuple[Platform, str]:
        return platforms.rotate(self._store, name)

    def authenticate(self, key: str | None, scope: Scope) -> Platform:
        return platforms.authenticate(self._store, key, scope)

    # --- audit ----------------------------------------------------------------------------------
    def audit_trail(self, case: str | None = None, platform: str | None = None,
                    limit: int = 50) -> dict[str, object]:
        """The audit events (and, for a case, the matches) of one case or platform."""
        if case is not None and platform is not None:
            raise InvalidInput("Name a case or a platform, not both.")
        found = cases.find(self._store, case) if case is not None else None
        if platform is not None:
            with self._store.transaction(write=False) as tx:
                if tx.platforms.get(platform) is None:
                    raise PlatformNotFound(f"There is no platform named {platform!r}.")
        return audit.trail(self._store, found, platform, limit)

    def audit_head(self) -> audit.Anchor | None:
        """The audit chain's newest event, signed with the secret key (when one is set)."""
        return audit.head(self._store, self.settings.secret_key)

    def anchor_audit(self) -> None:
        """Append the audit head to the data directory's anchor file, if it moved."""
        self._anchored = audit.write_anchor(self._store, self.settings.secret_key,
                                            Path(self.settings.data_dir), self._anchored)

    def verify_audit(self, anchors: Sequence[audit.Anchor] = (), *, saved: bool = True
                     ) -> audit.AuditReport:
        """Walk the audit chain and check ``anchors`` (and, with ``saved``, the data directory's
        anchor file) against it."""
        found = list(anchors)
        path = Path(self.settings.data_dir) / audit.ANCHOR_FILE
        if saved and path.exists():
            found += audit.read_anchors(path)
        return audit.verify(self._store, self.settings.secret_key, found)

    # --- index ---------------------------------------------------------------------------------
    def rebuild_index(self, progress: Progress | None = None, snapshot: bool = True) -> int:
        count = self._keeper.rebuild(progress)
        self._keeper.sync()
        if snapshot:
            self._keeper.save_snapshot()
        return count

    def verify_index(self) -> VerifyReport:
        return self._keeper.verify()

    @property
    def index_version(self) -> int:
        """The change-log position the index reflects (what a match answer was computed at)."""
        return self._keeper.indexes.position

    def list_banks(self) -> list[dict[str, object]]:
        """Every bank (submissions, imported lists, canary, benign) with its signals by status."""
        with self._store.transaction(write=False) as tx:
            return tx.banks.listing()

    def operator_stats(self) -> dict[str, object]:
        """The registry at a glance for its operator: cases by status, signals by bank, kind
        and status, platforms with their matches (all time, last day, last week) and feedback,
        the review queue, and the index's size and lag."""
        self._keeper.sync()
        with self._keeper.lock:
            position = self._keeper.indexes.position
            live = {k.value: len(i) for k, i in self._keeper.indexes.indexes.items()}
            live[SignalKind.LOCAL.value] = len(self._keeper.indexes.local)
        at = datetime.now(UTC)
        with self._store.transaction(write=False) as tx:
            head = tx.changes.head()
            out: dict[str, object] = {
                "at": at.isoformat(),
                "cases": tx.cases.count(),
                "signals": tx.signals.count_by_bank(),
                "platforms": tx.platforms.activity({"last_day": at - timedelta(days=1),
                                                    "last_week": at - timedelta(days=7)}),
                "review": tx.signals.review_queue(),
            }
        out["index"] = {"kind": self._keeper.options.kind, "position": position,
                        "lag": head - position, "loaded_from": self._keeper.loaded_from,
                        "live": live}
        return out

    def index_stats(self) -> dict[str, object]:
        self._keeper.sync()
        stats = self._keeper.stats()
        with self._store.transaction(write=False) as tx:
            stats["database"] = {"head": tx.changes.head(), "signals": tx.signals.count(),
                                 "cases": tx.cases.count()}
        return stats

    def index_status(self) -> IndexStatus:
        with self._keeper.lock:
            hashes = {k.value: len(i) for k, i in self._keeper.indexes.indexes.items()}
            hashes[SignalKind.LOCAL.value] = len(self._keeper.indexes.local)
            return IndexStatus(self._keeper.indexes.position, self._keeper.loaded_at, hashes,
                               str(self._keeper.snapshot_path), self._store.dialect)

    def save_snapshot(self) -> str:
        return str(self._keeper.save_snapshot())

    def ready(self) -> dict[str, object]:
        """Readiness: database reachable, index loaded and caught up (a few entries behind is
        a commit landing right now; more, or a follower that stopped syncing, is not ready)."""
        db_ok = self._store.ping()
        lag, newest = None, None
        if db_ok:
            try:
                with self._store.transaction(write=False) as tx:
                    lag = tx.changes.head() - self._keeper.indexes.position
                    newest = tx.audit.head()
            except RegistryError:
                db_ok = False
        out: dict[str, object] = {"database": db_ok, "index_loaded": self._keeper.loaded_at > 0,
                                  "index_lag": lag, "index_position": self._keeper.indexes.position,
                                  "process": os.getpid()}
        following = True
        if self.follower is not None:
            st = self.follower.status
            age = time.time() - st.last_sync_at if st.last_sync_at else None
            following = st.running and age is not None and age <= self.settings.max_sync_age_s
            out["follower"] = {"running": st.running, "last_sync_age_s":
                               None if age is None else round(age, 3),
                               "notifications": st.notifications, "errors": st.errors,
                               "last_error": st.last_error or None}
        if newest is not None:  # the audit chain's signed head (registry.service.audit)
            out["audit_head"] = audit.Anchor(
                *newest, audit.sign(self.settings.secret_key, *newest)).to_json()
        out["ready"] = bool(db_ok and self._keeper.loaded_at and lag is not None
                            and lag <= self.settings.max_index_lag and following)
        return out

    def close(self) -> None:
        if self.upstream is not None:
            self.upstream.stop()
        if self.follower is not None:
            self.follower.stop()
        self._keeper.close()
        self._store.close()

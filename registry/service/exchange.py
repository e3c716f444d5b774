"""Following another registry: its hash feed (``GET /api/v1/feed``) read page by page into a
local bank, adds and withdrawals alike.

Each page is applied in one transaction together with the cursor that follows it, so a restart
or a network error resumes exactly after the last page applied: nothing is applied twice and no
withdrawal is skipped. A hash is known by the source's id for it, so two source records of one
value (two cases) stay two. A record this registry cannot hold (a malformed value) is skipped
and counted, never allowed to stall the bank behind it. Only the feed's HTTP client lives here
(standard library); :class:`Upstream` is what ``takedown follow`` and ``serve`` run.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from registry.config import Settings

if TYPE_CHECKING:
    from urllib.error import HTTPError
from registry.domain import Signal, SignalKind
from registry.errors import InvalidInput, RegistryError, StorageUnavailable
from registry.interop import Entry, Problem
from registry.service.feed import MAX_PAGE, parse_cursor
from registry.service.lists import ImportReport, apply, importable_bank
from registry.store import Store
from registry.store.engine import HeldLock

log = logging.getLogger("takedown.upstream")

KIND_NAMES = frozenset(k.value for k in SignalKind)
Fetch = Callable[[str, int], dict[str, object]]  # (cursor, limit) -> the feed page as JSON


class UpstreamError(RegistryError):
    """The followed registry cannot be read (down, refused the key, answered nonsense)."""

    code = "upstream_unavailable"


class UpstreamReset(UpstreamError):
    """The followed registry says our cursor is past its end: it was restored or replaced."""

    code = "upstream_reset"


def http_fetch(url: str, key: str, timeout_s: float = 30.0) -> Fetch:
    # Imported here: urllib.request brings http.client, ssl and email into every process
    # that imports the service, and only a follower needs them.
    import urllib.error
    import urllib.parse
    import urllib.request

    base = url.rstrip("/") + "/api/v1/feed"

    def fetch(cursor: str, limit: int) -> dict[str, object]:
        query = urllib.parse.urlencode({"cursor": cursor, "limit": limit})
        request = urllib.request.Request(f"{base}?{query}", headers={
            "Authorization": f"Bearer {key}", "Accept": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as answer:
                body = answer.read()
        except urllib.error.HTTPError as e:
            code, message = _error_of(e)
            if code == "cursor_ahead":
                raise UpstreamReset(f"{url}: {message}") from None
            raise UpstreamError(f"{url} answered HTTP {e.code}: {message}") from None
        except (urllib.error.URLError, OSError, ValueError) as e:
            raise UpstreamError(f"{url} cannot be reached: {e}") from None
        try:
            page = json.loads(body)
        except ValueError:
            raise UpstreamError(f"{url} answered something that is not JSON.") from None
        if not isinstance(page, dict) or not isinstance(page.get("records"), list) \
                or not isinstance(page.get("next_cursor"), str):
            raise UpstreamError(f"{url} answered JSON that is not a feed page.")
        return page

    return fetch


def _error_of(e: HTTPError) -> tuple[str, str]:
    try:
        error = json.loads(e.read())["error"]
        return str(error["code"]), str(error["message"])
    except (ValueError, KeyError, TypeError, OSError):
        return "", e.reason if isinstance(e.reason, str) else "error"


def entries_of(records: list[object]) -> Iterator[Entry | Problem]:
    """Feed records as list entries (``line``: the record's place in the feed)."""
    for n, record in enumerate(records, start=1):
        if not isinstance(record, dict):
            yield Problem(n, "a feed record is a JSON object", skipped=True)
            continue
        seq = record.get("seq")
        line = seq if isinstance(seq, int) and not isinstance(seq, bool) else n
        kind, value, status, ref = (record.get(k) for k in ("signal", "value", "status", "id"))
        if kind not in KIND_NAMES or status not in ("active", "withdrawn") \
                or not isinstance(ref, str) or not 0 < len(ref) <= 64:
            yield Problem(line, "not a feed record (signal, value, status, id)", skipped=True)
            continue
        try:
            signal = Signal.parse(str(kind), value)
        except InvalidInput as e:
            yield Problem(line, e.message, skipped=True)
            continue
        yield Entry(line, signal, status == "withdrawn", None, ref, "")


@dataclass(frozen=True, slots=True)
class Step:
    records: int
    has_more: bool
    cursor: str
    report: ImportReport


def step(store: Store, settings: Settings, bank: str, url: str, fetch: Fetch,
         limit: int = MAX_PAGE) -> Step:
    """Read the page after the bank's cursor and apply it with its next cursor, at once."""
    with store.transaction() as tx:
        bank_id = importable_bank(tx, bank, source=url)
        found = tx.banks.get(bank)
        assert found is not None
        cursor = found[1].cursor
    page = fetch(cursor, limit)  # outside any transaction: the network may be slow
    records = page["records"]
    next_cursor = page["next_cursor"]
    assert isinstance(records, list) and isinstance(next_cursor, str)
    try:
        if parse_cursor(next_cursor) < parse_cursor(cursor):
            raise InvalidInput("backwards")
    except InvalidInput:
        raise UpstreamError(f"{url} gave the cursor {next_cursor!r} after {cursor!r}.") from None
    report = ImportReport(bank, "feed", dry_run=False)
    with store.transaction() as tx:
        found = tx.banks.get(bank, for_update=True)
        assert found is not None
        if found[1].cursor != cursor:  # another process applied this page meanwhile
            return Step(0, True, found[1].cursor, report)
        apply(tx, bank_id, bank, entries_of(records), report, settings,
              kinds=frozenset(SignalKind))
        tx.banks.update(bank_id, cursor=next_cursor)
        if report.added or report.withdrawn or report.skipped:
            tx.audit.record("upstream", "feed_followed", bank,
                            {**report.counts(), "source": url, "cursor": next_cursor})
    for p in report.problems:
        log.warning("%s: record %d skipped: %s", url, p.line, p.reason)
    return Step(len(records), bool(page.get("has_more")), next_cursor, report)


def catch_up(store: Store, settings: Settings, bank: str, url: str, fetch: Fetch,
             on_step: Callable[[Step], None] | None = None) -> int:
    """Apply pages until the source has no more; the records read."""
    total = 0
    while True:
        result = step(store, settings, bank, url, fetch)
        total += result.records
        if on_step is not None:
            on_step(result)
        if not result.has_more:
            return total


def restart(store: Store, bank: str, actor: str = "operator") -> None:
    """Read the source again from its start (after it was restored): records already here
    change nothing; what it withdrew meanwhile is withdrawn."""
    with store.transaction() as tx:
        found = tx.banks.get(bank, for_update=True)
        if found is None:
            return
        tx.banks.update(found[0], cursor="")
        tx.audit.record(actor, "feed_follow_restarted", bank, {"source": found[1].source})


class Upstream:
    """A thread following one source into one bank: catches up, then polls every
    ``interval_s``, backing off (up to a minute) while the source or the database is down."""

    def __init__(self, store: Store, settings: Settings, bank: str, url: str, fetch: Fetch,
                 interval_s: float = 2.0, on_step: Callable[[Step], None] | None = None
                 ) -> None:
        self.store, self.settings = store, settings
        self.on_step = on_step
        self.bank, self.url, self.fetch = bank, url, fetch
        self.interval_s = interval_s
        self.errors = 0
        self.last_error = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock: HeldLock | None = None

    @property
    def following(self) -> bool:
        """Whether this process is the one following (holds the bank's lock)."""
        return self._lock is not None

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="takedown-upstream", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def run(self) -> None:
        pause = self.interval_s
        lock_name = f"upstream-{self.bank}"
        while not self._stop.is_set():
            # One process of all (every worker, every machine) follows a bank; the others wait
            # to take over should it stop.
            if self._lock is not None and not self._lock.held():
                self._lock = None  # its connection died: someone else may take over
            if self._lock is None and (lock := self.store.try_lock(lock_name)) is not None:
                self._lock = lock
            if self._lock is None:
                self._stop.wait(self.interval_s * 5)
                continue
            try:
                catch_up(self.store, self.settings, self.bank, self.url, self.fetch,
                         self.on_step)
                pause = self.interval_s
            except UpstreamReset as e:
                self._failed(e)
                log.error("%s; run 'takedown follow --from-start' once you trust it again.",
                          e.message)
                pause = 60.0
            except (UpstreamError, StorageUnavailable) as e:
                self._failed(e)
                pause = min(max(pause * 2, self.interval_s), 60.0)
            self._stop.wait(pause)

    def _failed(self, e: RegistryError) -> None:
        self.errors += 1
        if e.message != self.last_error:
            log.warning("following %s into bank %s: %s", self.url, self.bank, e.message)
        self.last_error = e.message

"""Change notifications: PostgreSQL LISTEN/NOTIFY wakes the index followers of every worker.

Writers send ``NOTIFY takedown_changes`` inside the transaction that appends to the change log
(:class:`registry.store.logs.ChangeLog`); PostgreSQL delivers it at commit, to every listening
connection. A :class:`Listener` holds one such connection per worker process. Notifications are
only a wake-up call: followers still read the log by position and also poll, so a lost
notification (a dropped connection, a restart) costs at most one poll interval. SQLite has no
notifications: its listener just waits out the interval.
"""

from __future__ import annotations

import threading
from types import TracebackType
from typing import Any

from sqlalchemy.engine import make_url

CHANNEL = "takedown_changes"


class Listener:
    """``wait(timeout)`` returns True when notified, False when the timeout passed."""

    def __init__(self, url: str, stop: threading.Event) -> None:
        parsed = make_url(url)
        self._stop = stop
        self._conn: Any = None
        if parsed.get_backend_name() == "postgresql":
            import psycopg

            dsn = parsed.set(drivername="postgresql").render_as_string(hide_password=False)
            self._conn = psycopg.connect(dsn, autocommit=True, connect_timeout=5)
            self._conn.execute(f"LISTEN {CHANNEL}")

    def __enter__(self) -> Listener:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def wait(self, timeout: float) -> bool:
        if self._conn is None:
            self._stop.wait(timeout)
            return False
        got = False
        # Drain everything already queued: many commits may have landed since the last wait.
        for _ in self._conn.notifies(timeout=timeout, stop_after=1):
            got = True
        return got

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None

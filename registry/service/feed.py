"""The hash feed: registered signals in change order (adds ``active``, withdrawals and
quarantines ``withdrawn``), paged by an opaque cursor; every read is audited."""

from __future__ import annotations

from dataclasses import dataclass

from registry.domain import FeedRecord, Platform
from registry.errors import CursorAhead, InvalidInput
from registry.store import Store

MAX_PAGE = 1000


@dataclass(frozen=True, slots=True)
class FeedPage:
    records: tuple[FeedRecord, ...]
    next_cursor: str
    has_more: bool

    def to_json(self) -> dict[str, object]:
        return {"records": [r.to_json() for r in self.records], "next_cursor": self.next_cursor,
                "has_more": self.has_more}


def parse_cursor(cursor: str | None) -> int:
    if cursor is None or cursor == "":
        return 0
    if not cursor.isascii() or not cursor.isdigit() or len(cursor) > 19 or \
            int(cursor) >= 2**63:
        raise InvalidInput("The cursor is not one this feed gave out.")
    return int(cursor)


def read(store: Store, platform: Platform, cursor: str | None, limit: int) -> FeedPage:
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidInput(f"limit must be between 1 and {MAX_PAGE}.")
    position = parse_cursor(cursor)
    with store.transaction() as tx:
        records = tx.changes.feed(position, limit + 1)
        page = records[:limit]
        if not page and position and position > (head := tx.changes.head()):
            # Not an empty page: after a restore from an older backup, a mirror that kept its
            # cursor would never see the records written since under the same numbers.
            raise CursorAhead(
                f"This cursor ({position}) is past the end of the feed ({head}): the registry "
                "was restored or replaced. Read the feed again from the start (no cursor) and "
                "replace your copy of the hashes.")
        tx.platforms.note_feed_read(platform.id, position)
        tx.audit.record(f"platform:{platform.name}", "feed_read", "",
                        {"cursor": position, "records": len(page)})
    last = page[-1].seq if page else position
    return FeedPage(tuple(page), str(last), len(records) > limit)

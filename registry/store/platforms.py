"""Platforms (API keys and scopes, feed positions) and the matches they were given."""

from __future__ import annotations

import builtins
from collections.abc import Iterable
from datetime import datetime
from typing import cast

from sqlalchemy import Table, func, insert, select, update
from sqlalchemy.orm import Session

from registry.domain import (
    Platform,
    Scope,
)
from registry.store.models import (
    FeedbackRow,
    MatchRow,
    PlatformRow,
    SignalRow,
)
from registry.store.values import _aware, now


class PlatformRepository:
    def __init__(self, session: Session) -> None:
        self.s = session

    def add(self, name: str, key_hash: str, key_prefix: str, scopes: Iterable[Scope]) -> Platform:
        row = PlatformRow(name=name, key_hash=key_hash, key_prefix=key_prefix,
                          scopes=",".join(sorted(s.value for s in scopes)), status="active",
                          created_at=now())
        self.s.add(row)
        self.s.flush()
        return _platform(row)

    def get(self, name: str) -> Platform | None:
        row = self.s.scalar(select(PlatformRow).where(PlatformRow.name == name))
        return _platform(row) if row else None

    def activity(self, windows: dict[str, datetime]) -> list[dict[str, object]]:
        """Every platform with its matches (all time and since each of ``windows``' times) and
        its feedback by outcome."""
        platforms = self.s.execute(select(PlatformRow.id, PlatformRow.name, PlatformRow.status,
                                          PlatformRow.scopes).order_by(PlatformRow.name)).all()
        matches: dict[int, dict[str, int]] = {}
        for label, since in {"all": None, **windows}.items():
            stmt = select(MatchRow.platform_id, func.count()).group_by(MatchRow.platform_id)
            if since is not None:
                stmt = stmt.where(MatchRow.created_at >= since)
            for pid, n in self.s.execute(stmt):
                if pid is not None:
                    matches.setdefault(int(pid), {})[label] = int(n)
        feedback: dict[int, dict[str, int]] = {}
        for pid, outcome, n in self.s.execute(
                select(FeedbackRow.platform_id, FeedbackRow.outcome, func.count())
                .group_by(FeedbackRow.platform_id, FeedbackRow.outcome)):
            feedback.setdefault(int(pid), {})[str(outcome)] = int(n)
        labels = ["all", *windows]
        return [{"name": name, "status": status, "scopes": scopes.split(","),
                 "matches": {label: matches.get(pid, {}).get(label, 0) for label in labels},
                 "feedback": feedback.get(pid, {})}
                for pid, name, status, scopes in platforms]

    def by_key_hash(self, key_hash: str) -> Platform | None:
        row = self.s.scalar(select(PlatformRow).where(PlatformRow.key_hash == key_hash))
        return _platform(row) if row else None

    def list(self) -> list[Platform]:
        rows = self.s.scalars(select(PlatformRow).order_by(PlatformRow.name))
        return [_platform(r) for r in rows]

    def note_feed_read(self, platform_id: int, position: int) -> None:
        """The platform asked for the feed after ``position``: it holds everything up to it."""
        self.s.execute(update(PlatformRow).where(PlatformRow.id == platform_id).values(
            feed_position=func.max(func.coalesce(PlatformRow.feed_position, position),
                                   position) if self.s.get_bind().dialect.name == "sqlite"
            else func.greatest(func.coalesce(PlatformRow.feed_position, position), position)))

    def feed_readers(self) -> builtins.list[tuple[str, int]]:
        """Active platforms that have read the feed, with the furthest cursor each read from."""
        rows = self.s.execute(select(PlatformRow.name, PlatformRow.feed_position).where(
            PlatformRow.status == "active", PlatformRow.feed_position.is_not(None))
            .order_by(PlatformRow.name))
        return [(str(name), int(pos)) for name, pos in rows if pos is not None]

    def revoke(self, platform_id: int) -> None:
        self.s.execute(update(PlatformRow).where(PlatformRow.id == platform_id)
                       .values(status="revoked", revoked_at=now()))

    def set_key(self, platform_id: int, key_hash: str, key_prefix: str) -> None:
        self.s.execute(update(PlatformRow).where(PlatformRow.id == platform_id)
                       .values(key_hash=key_hash, key_prefix=key_prefix))


def _platform(row: PlatformRow) -> Platform:
    return Platform(id=row.id, name=row.name, key_prefix=row.key_prefix,
                    scopes=frozenset(Scope(s) for s in row.scopes.split(",") if s),
                    active=row.status == "active", created_at=_aware(row.created_at) or now(),
                    revoked_at=_aware(row.revoked_at))


# One transaction-scoped advisory lock serialises the writers of both logs on PostgreSQL (SQLite
# writers are serialised by BEGIN IMMEDIATE already). For the change log it makes sequence order
# commit order: without it a follower could read seq 12 while seq 11 is still uncommitted,
# advance past 11 and never see it. For the audit log it keeps the hash chain a chain.
class MatchRepository:
    def __init__(self, session: Session) -> None:
        self.s = session

    def add_many(self, rows: Iterable[tuple[str, int | None, int, int, str, str]]) -> None:
        ts = now()
        params = [{"id": mid, "platform_id": pid, "signal_id": sid, "distance": d, "tier": t,
                   "query_ref": ref[:128], "created_at": ts} for mid, pid, sid, d, t, ref in rows]
        if params:  # one executemany: a batch of 1000 queries can make 1000 matches
            self.s.execute(insert(cast(Table, MatchRow.__table__)), params)

    def get(self, match_id: str) -> tuple[int | None, int] | None:
        """(platform id, signal id) of a match, or None."""
        row = self.s.get(MatchRow, match_id)
        return (row.platform_id, row.signal_id) if row else None

    def has_feedback(self, match_id: str, outcome: str) -> bool:
        stmt = select(func.count()).select_from(FeedbackRow).where(
            FeedbackRow.match_id == match_id, FeedbackRow.outcome == outcome)
        return bool(self.s.scalar(stmt))

    def add_feedback(self, match_id: str, platform_id: int, outcome: str) -> None:
        self.s.add(FeedbackRow(match_id=match_id, platform_id=platform_id, outcome=outcome,
                               created_at=now()))
        self.s.flush()

    def of_case(self, case_id: int, limit: int = 50) -> list[dict[str, object]]:
        """The newest matches of a case's signals, newest first: which platform, which signal
        kind, how close, and the feedback each got (never a hash value)."""
        stmt = (select(MatchRow.id, MatchRow.created_at, PlatformRow.name, SignalRow.kind,
                       MatchRow.distance, MatchRow.tier)
                .join(SignalRow, SignalRow.id == MatchRow.signal_id)
                .outerjoin(PlatformRow, PlatformRow.id == MatchRow.platform_id)
                .where(SignalRow.case_id == case_id)
                .order_by(MatchRow.created_at.desc(), MatchRow.id).limit(limit))
        rows = self.s.execute(stmt).all()
        outcomes: dict[str, list[str]] = {}
        if rows:
            for mid, outcome in self.s.execute(
                    select(FeedbackRow.match_id, FeedbackRow.outcome)
                    .where(FeedbackRow.match_id.in_([r[0] for r in rows]))
                    .order_by(FeedbackRow.id)):
                outcomes.setdefault(mid, []).append(outcome)
        return [{"match_id": mid, "at": (_aware(at) or now()).isoformat(),
                 "platform": platform, "signal": kind, "distance": int(distance), "tier": tier,
                 "feedback": outcomes.get(mid, [])}
                for mid, at, platform, kind, distance, tier in rows]

    def takedowns_of_case(self, case_id: int) -> int:
        """Copies of this case's pictures that a platform reported as removed: one per query
        (platform, query id and the request's time), however many of its signals matched and
        were each reported."""
        copies = (select(MatchRow.platform_id, MatchRow.query_ref, MatchRow.created_at)
                  .join(FeedbackRow, FeedbackRow.match_id == MatchRow.id)
                  .join(SignalRow, SignalRow.id == MatchRow.signal_id)
                  .where(SignalRow.case_id == case_id, FeedbackRow.outcome == "removed")
                  .distinct().subquery())
        return int(self.s.scalar(select(func.count()).select_from(copies)) or 0)

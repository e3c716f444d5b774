"""SQLAlchemy 2 typed models: the system of record. Only ``registry.store`` imports this module.

Hashes are stored as lowercase hex (readable in SQL, identical on SQLite and PostgreSQL). The
change log is append-only: every add and withdrawal of a signal gets the next ``seq`` in the same
transaction as the change itself, so an index that has applied the log up to ``seq`` reflects the
database exactly as of that commit.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    true,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# BIGINT on PostgreSQL; plain INTEGER on SQLite, where only INTEGER PRIMARY KEY autoincrements.
BigId = BigInteger().with_variant(Integer(), "sqlite")

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class BankRow(Base):
    __tablename__ = "banks"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    kind: Mapped[str] = mapped_column(String(16))
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # A disabled bank's hashes stay registered and indexed but match nothing.
    enabled: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    # Per-signal thresholds tighter than the registry's ({"pdq": [strong, weak]}), JSON.
    thresholds: Mapped[str] = mapped_column(Text, default="{}", server_default="{}")
    # A followed bank: the registry it mirrors and the feed cursor read so far.
    source: Mapped[str] = mapped_column(Text, default="", server_default="")
    cursor: Mapped[str] = mapped_column(String(32), default="", server_default="")


class CaseRow(Base):
    __tablename__ = "cases"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    number: Mapped[str] = mapped_column(String(20), unique=True)
    pin_hash: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    withdrawn_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class PinFailureRow(Base):
    """Wrong PINs from one client (a hashed address) for one case, or, with ``case_id`` NULL,
    for every case together: the lockout holds per client, so a stranger's guesses never lock
    the case's owner out."""

    __tablename__ = "pin_failures"
    __table_args__ = (Index("ix_pin_failures_case_id", "case_id"),
                      Index("ix_pin_failures_client", "client"))
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    case_id: Mapped[int | None] = mapped_column(ForeignKey("cases.id"))
    client: Mapped[str] = mapped_column(String(32))
    failures: Mapped[int] = mapped_column(Integer)
    locked_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_failure_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class SignalRow(Base):
    __tablename__ = "signals"
    __table_args__ = (
        Index("ix_signals_kind_value", "kind", "value"),
        Index("ix_signals_case_id", "case_id"),
        Index("ix_signals_bank_id", "bank_id"),
    )
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    case_id: Mapped[int | None] = mapped_column(ForeignKey("cases.id"))
    bank_id: Mapped[int] = mapped_column(ForeignKey("banks.id"))
    kind: Mapped[str] = mapped_column(String(16))
    value: Mapped[str] = mapped_column(String(64))
    label: Mapped[str] = mapped_column(String(32), default="")
    status: Mapped[str] = mapped_column(String(16))
    pipeline_version: Mapped[int] = mapped_column(Integer)
    quality: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    removed: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    not_violating: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    image_key: Mapped[str] = mapped_column(String(32), default="", server_default="")
    # Local signals only: the packed keypoints (``value`` is then their SHA-256).
    payload: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    # When an operator last reviewed this hash: feedback before it no longer counts.
    reviewed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # An imported hash's id in its source list ("" when the source gives none).
    source_ref: Mapped[str] = mapped_column(String(64), default="", server_default="")


class PlatformRow(Base):
    __tablename__ = "platforms"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    key_prefix: Mapped[str] = mapped_column(String(16))
    scopes: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The furthest feed cursor this platform has read from (NULL: it never read the feed).
    feed_position: Mapped[int | None] = mapped_column(BigInteger)


class MatchRow(Base):
    __tablename__ = "matches"
    __table_args__ = (Index("ix_matches_signal_id", "signal_id"),)
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    platform_id: Mapped[int | None] = mapped_column(ForeignKey("platforms.id"))
    signal_id: Mapped[int] = mapped_column(ForeignKey("signals.id"))
    distance: Mapped[int] = mapped_column(Integer)
    tier: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    query_ref: Mapped[str] = mapped_column(String(128), default="", server_default="")


class FeedbackRow(Base):
    __tablename__ = "feedback"
    __table_args__ = (Index("ix_feedback_match_id", "match_id"),)
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    match_id: Mapped[str] = mapped_column(ForeignKey("matches.id"))
    platform_id: Mapped[int] = mapped_column(ForeignKey("platforms.id"))
    outcome: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class AuditRow(Base):
    """Append-only, hash-chained: ``digest = sha256(prev_digest || canonical event)``."""

    __tablename__ = "audit_events"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    actor: Mapped[str] = mapped_column(String(80))
    action: Mapped[str] = mapped_column(String(40))
    subject: Mapped[str] = mapped_column(String(80), default="")
    details: Mapped[str] = mapped_column(Text, default="{}")
    digest: Mapped[str] = mapped_column(String(64))


class ChangeRow(Base):
    __tablename__ = "change_log"
    seq: Mapped[int] = mapped_column(BigId, primary_key=True)
    signal_id: Mapped[int] = mapped_column(ForeignKey("signals.id"))
    action: Mapped[str] = mapped_column(String(16))
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

"""Initial schema: banks, cases, signals, platforms, matches, feedback, audit, change log.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "banks",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_banks"),
        sa.UniqueConstraint("name", name="uq_banks_name"),
    )
    op.create_table(
        "cases",
        sa.Column("id", BigId, nullable=False),
        sa.Column("number", sa.String(20), nullable=False),
        sa.Column("pin_hash", sa.String(200), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("failed_attempts", sa.Integer(), nullable=False),
        sa.Column("locked_until", TS, nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.Column("withdrawn_at", TS, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_cases"),
        sa.UniqueConstraint("number", name="uq_cases_number"),
    )
    op.create_table(
        "platforms",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False),
        sa.Column("key_prefix", sa.String(16), nullable=False),
        sa.Column("scopes", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("revoked_at", TS, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_platforms"),
        sa.UniqueConstraint("name", name="uq_platforms_name"),
        sa.UniqueConstraint("key_hash", name="uq_platforms_key_hash"),
    )
    op.create_table(
        "signals",
        sa.Column("id", BigId, nullable=False),
        sa.Column("case_id", BigId, nullable=True),
        sa.Column("bank_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("value", sa.String(64), nullable=False),
        sa.Column("label", sa.String(32), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("pipeline_version", sa.Integer(), nullable=False),
        sa.Column("quality", sa.Integer(), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.ForeignKeyConstraint(["bank_id"], ["banks.id"], name="fk_signals_bank_id_banks"),
        sa.ForeignKeyConstraint(["case_id"], ["cases.id"], name="fk_signals_case_id_cases"),
        sa.PrimaryKeyConstraint("id", name="pk_signals"),
    )
    op.create_index("ix_signals_kind_value", "signals", ["kind", "value"])
    op.create_index("ix_signals_case_id", "signals", ["case_id"])
    op.create_table(
        "matches",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("platform_id", sa.Integer(), nullable=True),
        sa.Column("signal_id", BigId, nullable=False),
        sa.Column("distance", sa.Integer(), nullable=False),
        sa.Column("tier", sa.String(16), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.ForeignKeyConstraint(
            ["platform_id"], ["platforms.id"], name="fk_matches_platform_id_platforms"
        ),
        sa.ForeignKeyConstraint(["signal_id"], ["signals.id"], name="fk_matches_signal_id_signals"),
        sa.PrimaryKeyConstraint("id", name="pk_matches"),
    )
    op.create_index("ix_matches_signal_id", "matches", ["signal_id"])
    op.create_table(
        "feedback",
        sa.Column("id", BigId, nullable=False),
        sa.Column("match_id", sa.String(32), nullable=False),
        sa.Column("platform_id", sa.Integer(), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.ForeignKeyConstraint(["match_id"], ["matches.id"], name="fk_feedback_match_id_matches"),
        sa.ForeignKeyConstraint(
            ["platform_id"], ["platforms.id"], name="fk_feedback_platform_id_platforms"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_feedback"),
    )
    op.create_index("ix_feedback_match_id", "feedback", ["match_id"])
    op.create_table(
        "audit_events",
        sa.Column("id", BigId, nullable=False),
        sa.Column("at", TS, nullable=False),
        sa.Column("actor", sa.String(80), nullable=False),
        sa.Column("action", sa.String(40), nullable=False),
        sa.Column("subject", sa.String(80), nullable=False),
        sa.Column("details", sa.Text(), nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_audit_events"),
    )
    op.create_table(
        "change_log",
        sa.Column("seq", BigId, nullable=False),
        sa.Column("signal_id", BigId, nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("at", TS, nullable=False),
        sa.ForeignKeyConstraint(
            ["signal_id"], ["signals.id"], name="fk_change_log_signal_id_signals"
        ),
        sa.PrimaryKeyConstraint("seq", name="pk_change_log"),
    )


def downgrade() -> None:
    for table in ("change_log", "audit_events", "feedback", "matches", "signals", "platforms",
                  "cases", "banks"):
        op.drop_table(table)

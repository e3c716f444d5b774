"""Wrong PINs counted per case and client address (``pin_failures``), not per case, so knowing a
case number no longer lets anyone lock its owner out; ``signals.reviewed_at``: when an operator
last reviewed a hash (feedback before it no longer counts towards quarantine).

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)
BIG = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "pin_failures",
        sa.Column("id", BIG, nullable=False),
        sa.Column("case_id", BIG, nullable=True),
        sa.Column("client", sa.String(32), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("locked_until", TS, nullable=True),
        sa.Column("last_failure_at", TS, nullable=False),
        sa.ForeignKeyConstraint(["case_id"], ["cases.id"],
                                name="fk_pin_failures_case_id_cases"),
        sa.PrimaryKeyConstraint("id", name="pk_pin_failures"),
    )
    op.create_index("ix_pin_failures_case_id", "pin_failures", ["case_id"])
    op.create_index("ix_pin_failures_client", "pin_failures", ["client"])
    with op.batch_alter_table("cases") as batch:
        batch.drop_column("failed_attempts")
        batch.drop_column("locked_until")
    with op.batch_alter_table("signals") as batch:
        batch.add_column(sa.Column("reviewed_at", TS, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("signals") as batch:
        batch.drop_column("reviewed_at")
    with op.batch_alter_table("cases") as batch:
        batch.add_column(sa.Column("failed_attempts", sa.Integer(), nullable=False,
                                   server_default="0"))
        batch.add_column(sa.Column("locked_until", TS, nullable=True))
    op.drop_index("ix_pin_failures_client", table_name="pin_failures")
    op.drop_index("ix_pin_failures_case_id", table_name="pin_failures")
    op.drop_table("pin_failures")

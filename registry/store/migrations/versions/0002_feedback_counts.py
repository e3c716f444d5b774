"""Per-signal feedback counts (confidence and quarantine) and the feed's index on change_log.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("signals") as batch:
        batch.add_column(sa.Column("removed", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(
            sa.Column("not_violating", sa.Integer(), nullable=False, server_default="0"))
    with op.batch_alter_table("matches") as batch:
        batch.add_column(sa.Column("query_ref", sa.String(128), nullable=False,
                                   server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("matches") as batch:
        batch.drop_column("query_ref")
    with op.batch_alter_table("signals") as batch:
        batch.drop_column("not_violating")
        batch.drop_column("removed")

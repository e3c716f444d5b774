"""Bank policy and hash-list sources: ``banks.enabled`` (a disabled bank's hashes stop matching),
``banks.thresholds`` (per-bank perceptual thresholds, JSON), ``banks.source`` and
``banks.cursor`` (the registry a followed bank mirrors, and how far it has been read);
``signals.source_ref`` (an imported hash's id in its source list, so re-imports and a source's
withdrawals find it) with an index over ``signals.bank_id``; ``platforms.feed_position`` (the
furthest cursor a platform has read the feed from: what it has certainly received, which
``case purge`` checks before erasing hashes for good).

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None



def upgrade() -> None:
    with op.batch_alter_table("banks") as batch:
        batch.add_column(sa.Column("enabled", sa.Boolean(), nullable=False,
                                   server_default=sa.true()))
        batch.add_column(sa.Column("thresholds", sa.Text(), nullable=False, server_default="{}"))
        batch.add_column(sa.Column("source", sa.Text(), nullable=False, server_default=""))
        batch.add_column(sa.Column("cursor", sa.String(32), nullable=False, server_default=""))
    with op.batch_alter_table("signals") as batch:
        batch.add_column(sa.Column("source_ref", sa.String(64), nullable=False,
                                   server_default=""))
    op.create_index("ix_signals_bank_id", "signals", ["bank_id"])
    with op.batch_alter_table("platforms") as batch:
        batch.add_column(sa.Column("feed_position", sa.BigInteger(), nullable=True))
    # A platform that read the feed before this revision holds what it read, from an unknown
    # cursor: 0 makes ``case purge`` wait for its next read, where NULL would let it pass.
    op.execute("UPDATE platforms SET feed_position = 0 WHERE 'platform:' || name IN "
               "(SELECT actor FROM audit_events WHERE action = 'feed_read')")


def downgrade() -> None:
    with op.batch_alter_table("platforms") as batch:
        batch.drop_column("feed_position")
    op.drop_index("ix_signals_bank_id", table_name="signals")
    with op.batch_alter_table("signals") as batch:
        batch.drop_column("source_ref")
    with op.batch_alter_table("banks") as batch:
        batch.drop_column("cursor")
        batch.drop_column("source")
        batch.drop_column("thresholds")
        batch.drop_column("enabled")

"""A key shared by the signals and views of one registered image (matches are per image).

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("signals") as batch:
        batch.add_column(sa.Column("image_key", sa.String(32), nullable=False,
                                   server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("signals") as batch:
        batch.drop_column("image_key")

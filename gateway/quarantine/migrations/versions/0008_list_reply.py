"""A managed list entry's public reply (gateway list add --reply): what the
SMTP reply tells a rejected sender, apart from the owner and reason, which
stay the site's own.

Revision ID: 0008_list_reply
Revises: 0007_identity
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0008_list_reply"
down_revision = "0007_identity"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("list_entries",
                  sa.Column("reply", sa.Text, nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("list_entries") as table:
        table.drop_column("reply")

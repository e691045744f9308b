"""Managed allow and block lists (gateway list, the console): each entry with
its owner, reason, creation, expiry and hit counter.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "list_entries",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("value", sa.String(255), nullable=False),
        sa.Column("scope", sa.String(255), nullable=False),
        sa.Column("owner", sa.Text, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires", sa.DateTime(timezone=True)),
        sa.Column("hits", sa.Integer, nullable=False),
        sa.Column("last_hit", sa.DateTime(timezone=True)),
        sa.UniqueConstraint("kind", "value", "scope", name="uq_list_entries_kind_value_scope"),
    )
    op.create_index("ix_list_entries_expires", "list_entries", ["expires"])


def downgrade() -> None:
    op.drop_index("ix_list_entries_expires", table_name="list_entries")
    op.drop_table("list_entries")

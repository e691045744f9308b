"""The correspondent memory (gateway.correspondents): who writes to whom,
the sender of each held message, and how far releases and labels were read.

Revision ID: 0007_identity
Revises: 0006
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0007_identity"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "correspondents",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("sender", sa.String(320), nullable=False),
        sa.Column("via", sa.String(255), nullable=False),
        sa.Column("recipient", sa.String(320), nullable=False),
        sa.Column("first_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("accepted", sa.Integer, nullable=False),
        sa.Column("held", sa.Integer, nullable=False),
        sa.Column("released", sa.Integer, nullable=False),
        sa.Column("spam", sa.Integer, nullable=False),
        sa.Column("outbound", sa.Integer, nullable=False),
        sa.Column("names", sa.Text, nullable=False),
        sa.UniqueConstraint("sender", "via", "recipient", name="uq_correspondents_pair"),
    )
    op.create_index("ix_correspondents_recipient", "correspondents", ["recipient"])
    op.create_index("ix_correspondents_last_seen", "correspondents", ["last_seen"])
    op.create_table(
        "correspondent_holds",
        sa.Column("message", sa.String(32), sa.ForeignKey("messages.id", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("sender", sa.String(320), nullable=False),
        sa.Column("via", sa.String(255), nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "correspondent_cursor",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("event", sa.Integer, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("correspondent_cursor")
    op.drop_table("correspondent_holds")
    op.drop_index("ix_correspondents_last_seen", table_name="correspondents")
    op.drop_index("ix_correspondents_recipient", table_name="correspondents")
    op.drop_table("correspondents")

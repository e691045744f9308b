"""Accepted mail kept for gateway replay ([replay] keep_accepted_sample).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "replay_samples",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("node", sa.String(255), nullable=False),
        sa.Column("queue_id", sa.String(32)),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.Column("client_ip", sa.String(64)),
        sa.Column("client_name", sa.Text),
        sa.Column("helo", sa.Text),
        sa.Column("sender", sa.Text, nullable=False),
        sa.Column("recipients", sa.Text, nullable=False),
        sa.Column("macros", sa.Text, nullable=False),
        sa.Column("header_from", sa.Text),
        sa.Column("subject", sa.Text),
        sa.Column("message_id", sa.Text),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("score", sa.Float, nullable=False),
        sa.Column("symbols", sa.Text, nullable=False),
        sa.Column("size", sa.Integer, nullable=False),
        sa.Column("raw", sa.LargeBinary, nullable=False),
    )
    op.create_index("ix_replay_samples_created", "replay_samples", ["created"])
    op.create_index("ix_replay_samples_queue_id", "replay_samples", ["queue_id"])


def downgrade() -> None:
    op.drop_table("replay_samples")

"""The quarantine: messages, their recipients and symbols, and the audit trail.

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "messages",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("node", sa.String(255), nullable=False),
        sa.Column("queue_id", sa.String(32)),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated", sa.DateTime(timezone=True), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("client_ip", sa.String(64)),
        sa.Column("client_name", sa.Text),
        sa.Column("helo", sa.Text),
        sa.Column("sender", sa.Text, nullable=False),
        sa.Column("header_from", sa.Text),
        sa.Column("header_to", sa.Text),
        sa.Column("subject", sa.Text),
        sa.Column("header_date", sa.Text),
        sa.Column("message_id", sa.Text),
        sa.Column("score", sa.Float, nullable=False),
        sa.Column("required", sa.Float, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("failed_checks", sa.Text, nullable=False),
        sa.Column("size", sa.Integer, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("raw", sa.LargeBinary),
    )
    op.create_index("ix_messages_created", "messages", ["created"])
    op.create_index("ix_messages_state", "messages", ["state"])
    op.create_index("ix_messages_sender", "messages", ["sender"])
    op.create_table(
        "recipients",
        sa.Column("message", sa.String(32),
                  sa.ForeignKey("messages.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("position", sa.Integer, primary_key=True),
        sa.Column("address", sa.Text, nullable=False),
    )
    op.create_index("ix_recipients_address", "recipients", ["address"])
    op.create_table(
        "symbols",
        sa.Column("message", sa.String(32),
                  sa.ForeignKey("messages.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("position", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("score", sa.Float, nullable=False),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("evidence", sa.Text, nullable=False),
    )
    op.create_index("ix_symbols_name", "symbols", ["name"])
    op.create_table(
        "events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("message", sa.String(32),
                  sa.ForeignKey("messages.id", ondelete="CASCADE"), nullable=False),
        sa.Column("time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.Text, nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("detail", sa.Text, nullable=False),
    )
    op.create_index("ix_events_message", "events", ["message"])


def downgrade() -> None:
    for table in ("events", "symbols", "recipients", "messages"):
        op.drop_table(table)

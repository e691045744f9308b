"""The learned training set: labelled mail from gateway learn and the console.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "training_messages",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("key", sa.String(40), nullable=False, unique=True),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("label", sa.String(8), nullable=False),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("quarantine_id", sa.String(32)),
        sa.Column("who", sa.Text, nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated", sa.DateTime(timezone=True), nullable=False),
        sa.Column("note", sa.Text, nullable=False),
        sa.Column("size", sa.Integer, nullable=False),
        sa.Column("raw", sa.LargeBinary, nullable=False),
    )
    op.create_index("ix_training_messages_label", "training_messages", ["label"])
    op.create_index("ix_training_messages_updated", "training_messages", ["updated"])


def downgrade() -> None:
    op.drop_table("training_messages")

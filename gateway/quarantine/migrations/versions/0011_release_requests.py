"""Release requests (issue 28): an analyst's or a recipient's request to
release held mail, waiting for the approval [release] approve asks for, and
the decision (who, when, why) and whether the requester has been told.

Revision ID: 0011_release_requests
Revises: 0010_autolearn
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0011_release_requests"
down_revision = "0010_autolearn"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "release_requests",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("message", sa.String(32),
                  sa.ForeignKey("messages.id", ondelete="CASCADE"), nullable=False),
        sa.Column("recipients", sa.Text, nullable=False),
        sa.Column("requester", sa.Text, nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("notify", sa.Text, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("approver", sa.String(16), nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("decider", sa.Text),
        sa.Column("decided", sa.DateTime(timezone=True)),
        sa.Column("decision_reason", sa.Text, nullable=False),
        sa.Column("notified", sa.DateTime(timezone=True)),
    )
    op.create_index("ix_release_requests_state", "release_requests", ["state"])
    op.create_index("ix_release_requests_message", "release_requests", ["message"])


def downgrade() -> None:
    op.drop_index("ix_release_requests_message", table_name="release_requests")
    op.drop_index("ix_release_requests_state", table_name="release_requests")
    op.drop_table("release_requests")

"""Autolearning ([classifier] autolearn): candidates wait in the feedback
queue beside analysts' and recipients' labels. A candidate from accepted
mail has no quarantine record, so the message itself waits in
``feedback_mail`` until the candidate is accepted or rejected; the row says
which sender it counts against (per-sender caps), its subject for the
lists, and from when it may be learned.

Revision ID: 0010_autolearn
Revises: 0009_bulk
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0010_autolearn"
down_revision = "0009_bulk"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("feedback") as batch:
        batch.add_column(sa.Column("sender_key", sa.Text))
        batch.add_column(sa.Column("mail_subject", sa.Text))
        batch.add_column(sa.Column("due", sa.DateTime(timezone=True)))
    op.create_index("ix_feedback_training_key", "feedback", ["training_key"])
    op.create_index("ix_feedback_source_sender", "feedback", ["source", "sender_key"])
    op.create_table(
        "feedback_mail",
        sa.Column("feedback", sa.Integer, sa.ForeignKey("feedback.id", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("raw", sa.LargeBinary, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("feedback_mail")
    op.drop_index("ix_feedback_source_sender", "feedback")
    op.drop_index("ix_feedback_training_key", "feedback")
    with op.batch_alter_table("feedback") as batch:
        batch.drop_column("due")
        batch.drop_column("mail_subject")
        batch.drop_column("sender_key")

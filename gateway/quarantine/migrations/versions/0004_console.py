"""The analysts' console: accounts, sessions, audit, feedback queue, digest links;
per-recipient release, event reasons and the verdict's headers on a record.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("messages", sa.Column("verdict_headers", sa.Text))
    op.add_column("recipients", sa.Column("released", sa.DateTime(timezone=True)))
    op.add_column("recipients", sa.Column("release_queue_id", sa.String(32)))
    op.add_column("events", sa.Column("reason", sa.Text))

    op.create_table(
        "users",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("password", sa.Text, nullable=False),
        sa.Column("disabled", sa.Boolean, nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_login", sa.DateTime(timezone=True)),
    )
    op.create_table(
        "web_sessions",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("csrf", sa.String(64), nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.Column("seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("address", sa.String(64)),
    )
    op.create_index("ix_web_sessions_user", "web_sessions", ["user_id"])
    op.create_table(
        "login_failures",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("address", sa.String(64), nullable=False),
    )
    op.create_index("ix_login_failures_time", "login_failures", ["time"])
    op.create_table(
        "audit",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.Text, nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("target", sa.Text, nullable=False),
        sa.Column("detail", sa.Text, nullable=False),
        sa.Column("address", sa.String(64)),
    )
    op.create_index("ix_audit_time", "audit", ["time"])
    op.create_table(
        "feedback",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("message", sa.String(32), nullable=False),
        sa.Column("label", sa.String(8), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("who", sa.Text, nullable=False),
        sa.Column("note", sa.Text, nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("reviewer", sa.Text),
        sa.Column("reviewed", sa.DateTime(timezone=True)),
        sa.Column("review_note", sa.Text, nullable=False),
        sa.Column("training_key", sa.String(40)),
    )
    op.create_index("ix_feedback_state", "feedback", ["state"])
    op.create_index("ix_feedback_message", "feedback", ["message"])
    op.create_table(
        "digest_links",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("message", sa.String(32), nullable=False),
        sa.Column("recipient", sa.Text, nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used", sa.DateTime(timezone=True)),
        sa.Column("used_for", sa.String(16)),
        sa.UniqueConstraint("message", "recipient", name="uq_digest_links_message_recipient"),
    )
    op.create_table(
        "digest_runs",
        sa.Column("day", sa.String(10), primary_key=True),
        sa.Column("node", sa.String(255), nullable=False),
        sa.Column("started", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished", sa.DateTime(timezone=True)),
        sa.Column("sent", sa.Integer, nullable=False),
    )
    op.create_table(
        "console_settings",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
    )
    op.create_table(
        "console_jobs",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("who", sa.Text, nullable=False),
        sa.Column("node", sa.String(255), nullable=False),
        sa.Column("started", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished", sa.DateTime(timezone=True)),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("output", sa.Text, nullable=False),
    )


def downgrade() -> None:
    for table in ("console_jobs", "console_settings", "digest_runs", "digest_links",
                  "feedback", "audit", "login_failures", "web_sessions", "users"):
        op.drop_table(table)
    with op.batch_alter_table("events") as batch:
        batch.drop_column("reason")
    with op.batch_alter_table("recipients") as batch:
        batch.drop_column("release_queue_id")
        batch.drop_column("released")
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("verdict_headers")

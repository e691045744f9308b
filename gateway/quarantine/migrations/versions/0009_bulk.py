"""Bulk mail at the door: greylisting's triplets, rate limits' token
buckets, senders with a DKIM-authenticated history, and the fuzzy check's
learned hashes and recent messages.

Revision ID: 0009_bulk
Revises: 0008_list_reply
Create Date: 2026-12-10
"""

import sqlalchemy as sa
from alembic import op

revision = "0009_bulk"
down_revision = "0008_list_reply"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "greylist",
        sa.Column("client", sa.String(255), primary_key=True),
        sa.Column("sender", sa.String(320), primary_key=True),
        sa.Column("recipient", sa.String(320), primary_key=True),
        sa.Column("first_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("passed", sa.DateTime(timezone=True)),
        sa.Column("expires", sa.DateTime(timezone=True), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("messages", sa.Integer, nullable=False),
        sa.Column("client_ip", sa.String(64)),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("node", sa.String(255), nullable=False),
    )
    op.create_index("ix_greylist_expires", "greylist", ["expires"])
    op.create_table(
        "rate_buckets",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("key", sa.String(320), primary_key=True),
        sa.Column("level", sa.Float, nullable=False),
        sa.Column("updated", sa.DateTime(timezone=True), nullable=False),
        sa.Column("taken", sa.Integer, nullable=False),
        sa.Column("refused", sa.Integer, nullable=False),
        sa.Column("last_refused", sa.DateTime(timezone=True)),
    )
    op.create_index("ix_rate_buckets_updated", "rate_buckets", ["updated"])
    op.create_table(
        "sender_history",
        sa.Column("domain", sa.String(255), primary_key=True),
        sa.Column("net", sa.String(64), primary_key=True),
        sa.Column("accepted", sa.Integer, nullable=False),
        sa.Column("first_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_sender_history_last_seen", "sender_history", ["last_seen"])
    op.create_table(
        "fuzzy_hashes",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("digest", sa.String(80), nullable=False),
        sa.Column("label", sa.String(8), nullable=False),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_hit", sa.DateTime(timezone=True)),
        sa.Column("hits", sa.Integer, nullable=False),
        sa.Column("retired", sa.DateTime(timezone=True)),
        sa.UniqueConstraint("kind", "digest", "label", name="uq_fuzzy_hashes_kind_digest_label"),
    )
    op.create_index("ix_fuzzy_hashes_created", "fuzzy_hashes", ["created"])
    op.create_table(
        "fuzzy_seen",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("digest", sa.String(80), nullable=False),
        sa.Column("recipients", sa.Integer, nullable=False),
        sa.Column("sender", sa.String(255), nullable=False),
        sa.Column("seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("node", sa.String(255), nullable=False),
    )
    op.create_index("ix_fuzzy_seen_seen", "fuzzy_seen", ["seen"])


def downgrade() -> None:
    op.drop_index("ix_fuzzy_seen_seen", table_name="fuzzy_seen")
    op.drop_table("fuzzy_seen")
    op.drop_index("ix_fuzzy_hashes_created", table_name="fuzzy_hashes")
    op.drop_table("fuzzy_hashes")
    op.drop_index("ix_sender_history_last_seen", table_name="sender_history")
    op.drop_table("sender_history")
    op.drop_index("ix_rate_buckets_updated", table_name="rate_buckets")
    op.drop_table("rate_buckets")
    op.drop_index("ix_greylist_expires", table_name="greylist")
    op.drop_table("greylist")

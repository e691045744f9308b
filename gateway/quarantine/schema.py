"""The quarantine's tables (SQLAlchemy Core), identical on SQLite and PostgreSQL.

The Alembic migrations in ``migrations/versions`` create and change these
tables; this module is what the code queries. Keep both in step: a new
column here needs a new migration there.
"""

from __future__ import annotations

from sqlalchemy import (
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
)

metadata = MetaData()

messages = Table(
    "messages", metadata,
    Column("id", String(32), primary_key=True),
    Column("node", String(255), nullable=False),
    Column("queue_id", String(32)),
    Column("created", DateTime(timezone=True), nullable=False),
    Column("updated", DateTime(timezone=True), nullable=False),
    Column("state", String(16), nullable=False),      # held, released, deleted, expired
    Column("action", String(16), nullable=False),     # quarantine, reject
    Column("client_ip", String(64)),
    Column("client_name", Text),
    Column("helo", Text),
    Column("sender", Text, nullable=False),
    Column("header_from", Text),
    Column("header_to", Text),
    Column("subject", Text),
    Column("header_date", Text),
    Column("message_id", Text),
    Column("score", Float, nullable=False),
    Column("required", Float, nullable=False),
    Column("reason", Text, nullable=False),
    Column("failed_checks", Text, nullable=False),    # JSON list
    Column("size", Integer, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("raw", LargeBinary),                       # NULL once deleted or expired
    Index("ix_messages_created", "created"),
    Index("ix_messages_state", "state"),
    Index("ix_messages_sender", "sender"),
)

recipients = Table(
    "recipients", metadata,
    Column("message", String(32), ForeignKey("messages.id", ondelete="CASCADE"),
           primary_key=True),
    Column("position", Integer, primary_key=True),
    Column("address", Text, nullable=False),
    Index("ix_recipients_address", "address"),
)

symbols = Table(
    "symbols", metadata,
    Column("message", String(32), ForeignKey("messages.id", ondelete="CASCADE"),
           primary_key=True),
    Column("position", Integer, primary_key=True),
    Column("name", String(64), nullable=False),
    Column("score", Float, nullable=False),
    Column("description", Text, nullable=False),
    Column("evidence", Text, nullable=False),
    Index("ix_symbols_name", "name"),
)

events = Table(
    "events", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("message", String(32), ForeignKey("messages.id", ondelete="CASCADE"),
           nullable=False),
    Column("time", DateTime(timezone=True), nullable=False),
    Column("actor", Text, nullable=False),
    Column("action", String(32), nullable=False),
    Column("detail", Text, nullable=False),
    Index("ix_events_message", "message"),
)

# The learned training set (gateway learn, the console's accepted feedback):
# labelled mail kept whole, so that purging the quarantine never takes a
# label's message with it. Written by gateway.classifier.trainingset.
training_messages = Table(
    "training_messages", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("key", String(40), nullable=False, unique=True),   # body digest (de-duplication)
    Column("sha256", String(64), nullable=False),
    Column("label", String(8), nullable=False),               # ham, spam
    Column("source", Text, nullable=False),                   # file path, quarantine:<id>, ...
    Column("quarantine_id", String(32)),                      # reference, when from there
    Column("who", Text, nullable=False),
    Column("created", DateTime(timezone=True), nullable=False),
    Column("updated", DateTime(timezone=True), nullable=False),
    Column("note", Text, nullable=False),
    Column("size", Integer, nullable=False),
    Column("raw", LargeBinary, nullable=False),
    Index("ix_training_messages_label", "label"),
    Index("ix_training_messages_updated", "updated"),
)

# Accepted mail kept for ``gateway replay`` ([replay] keep_accepted_sample):
# the message and its envelope, so that proposed rules or a proposed model
# can be tried on ordinary mail too. Never released or listed with the
# quarantine; removed after [replay] accepted_retention_days.
replay_samples = Table(
    "replay_samples", metadata,
    Column("id", String(32), primary_key=True),
    Column("node", String(255), nullable=False),
    Column("queue_id", String(32)),
    Column("created", DateTime(timezone=True), nullable=False),
    Column("client_ip", String(64)),
    Column("client_name", Text),
    Column("helo", Text),
    Column("sender", Text, nullable=False),
    Column("recipients", Text, nullable=False),       # JSON list
    Column("macros", Text, nullable=False),           # JSON object: TLS, SASL macros
    Column("header_from", Text),
    Column("subject", Text),
    Column("message_id", Text),
    Column("action", String(16), nullable=False),     # the verdict when it arrived
    Column("score", Float, nullable=False),
    Column("symbols", Text, nullable=False),          # JSON list of {name, score}
    Column("size", Integer, nullable=False),
    Column("raw", LargeBinary, nullable=False),
    Index("ix_replay_samples_created", "created"),
    Index("ix_replay_samples_queue_id", "queue_id"),
)

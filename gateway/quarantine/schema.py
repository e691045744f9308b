"""The quarantine's tables (SQLAlchemy Core), identical on SQLite and PostgreSQL.

The Alembic migrations in ``migrations/versions`` create and change these
tables; this module is what the code queries. Keep both in step: a new
column here needs a new migration there.
"""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
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
    UniqueConstraint,
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
    # The verdict's headers as the milter would have added them (JSON list of
    # [name, value], Authentication-Results included): a release adds them.
    Column("verdict_headers", Text),
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
    Column("released", DateTime(timezone=True)),      # when a release reached this one
    Column("release_queue_id", String(32)),           # Postfix's queue id of that release
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
    Column("reason", Text),                           # why, as the person gave it
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

# -- the analysts' console (gateway web) ---------------------------------------------
# Everything several nodes' consoles share: accounts, sessions, failed logins
# (the rate limit), the audit trail, the reviewed feedback queue, the
# recipients' digest links. Written by gateway.web.console.

users = Table(
    "users", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("role", String(16), nullable=False),               # analyst, admin
    Column("password", Text, nullable=False),                 # argon2id hash
    Column("disabled", Boolean, nullable=False),
    Column("created", DateTime(timezone=True), nullable=False),
    Column("updated", DateTime(timezone=True), nullable=False),
    Column("last_login", DateTime(timezone=True)),
)

web_sessions = Table(
    "web_sessions", metadata,
    Column("id", String(64), primary_key=True),               # SHA-256 of the cookie's token
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("csrf", String(64), nullable=False),
    Column("created", DateTime(timezone=True), nullable=False),
    Column("seen", DateTime(timezone=True), nullable=False),
    Column("address", String(64)),
    Index("ix_web_sessions_user", "user_id"),
)

login_failures = Table(
    "login_failures", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("time", DateTime(timezone=True), nullable=False),
    Column("name", String(64), nullable=False),
    Column("address", String(64), nullable=False),
    Index("ix_login_failures_time", "time"),
)

audit = Table(
    "audit", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("time", DateTime(timezone=True), nullable=False),
    Column("actor", Text, nullable=False),                    # user name, or a recipient
    Column("action", String(32), nullable=False),
    Column("target", Text, nullable=False),                   # a quarantine id, a user, ...
    Column("detail", Text, nullable=False),
    Column("address", String(64)),                            # the client's IP
    Index("ix_audit_time", "time"),
)

# Labels from analysts and recipients wait here for an admin; an accepted one
# goes into training_messages. A held message with a pending label is kept
# past its retention until the label is dealt with.
feedback = Table(
    "feedback", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("message", String(32), nullable=False),            # quarantine id
    Column("label", String(8), nullable=False),               # ham, spam
    Column("source", String(16), nullable=False),             # analyst, recipient
    Column("who", Text, nullable=False),
    Column("note", Text, nullable=False),
    Column("created", DateTime(timezone=True), nullable=False),
    Column("state", String(16), nullable=False),              # pending, accepted, rejected
    Column("reviewer", Text),
    Column("reviewed", DateTime(timezone=True)),
    Column("review_note", Text, nullable=False),
    Column("training_key", String(40)),                       # training_messages.key
    # Autolearn candidates (source "autolearn", migration 0010_autolearn): the
    # sender their per-sender cap counts, the subject (accepted mail has no
    # quarantine record to show it) and when they may be learned.
    Column("sender_key", Text),
    Column("mail_subject", Text),
    Column("due", DateTime(timezone=True)),
    Index("ix_feedback_state", "state"),
    Index("ix_feedback_message", "message"),
    Index("ix_feedback_training_key", "training_key"),
    Index("ix_feedback_source_sender", "source", "sender_key"),
)

# An autolearn candidate's message while it waits, when the quarantine does
# not keep it (accepted mail, a rejected message with no kept copy).
feedback_mail = Table(
    "feedback_mail", metadata,
    Column("feedback", Integer, ForeignKey("feedback.id", ondelete="CASCADE"),
           primary_key=True),
    Column("raw", LargeBinary, nullable=False),
)

# One link per held message and recipient in a digest: the mail carries the
# id and its HMAC; the row says for whom, until when, and whether it was used.
digest_links = Table(
    "digest_links", metadata,
    Column("id", String(32), primary_key=True),
    Column("message", String(32), nullable=False),
    Column("recipient", Text, nullable=False),
    Column("created", DateTime(timezone=True), nullable=False),
    Column("expires", DateTime(timezone=True), nullable=False),
    Column("used", DateTime(timezone=True)),
    Column("used_for", String(16)),                           # release, spam
    UniqueConstraint("message", "recipient", name="uq_digest_links_message_recipient"),
)

# One row per day a digest run started, whichever node started it.
digest_runs = Table(
    "digest_runs", metadata,
    Column("day", String(10), primary_key=True),              # YYYY-MM-DD, UTC
    Column("node", String(255), nullable=False),
    Column("started", DateTime(timezone=True), nullable=False),
    Column("finished", DateTime(timezone=True)),
    Column("sent", Integer, nullable=False),
)

console_settings = Table(
    "console_settings", metadata,
    Column("key", String(64), primary_key=True),              # digest_secret, ...
    Column("value", Text, nullable=False),
)

# Background work started from the console (training a candidate model).
console_jobs = Table(
    "console_jobs", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("kind", String(32), nullable=False),
    Column("who", Text, nullable=False),
    Column("node", String(255), nullable=False),
    Column("started", DateTime(timezone=True), nullable=False),
    Column("finished", DateTime(timezone=True)),
    Column("status", String(16), nullable=False),             # running, done, failed
    Column("output", Text, nullable=False),
)

# Managed allow and block lists (gateway list, the console; migration 0005):
# read by the lists check in every worker, which counts the hits. Entries in
# gateway.toml's [lists] are not here; they apply as well.
list_entries = Table(
    "list_entries", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("kind", String(16), nullable=False),               # allow-sender, block-sender,
                                                              # allow-ip, block-ip
    Column("value", String(255), nullable=False),             # user@dom, @dom, dom, IP/net
    Column("scope", String(255), nullable=False),             # "" = all mail; else a
                                                              # recipient address or domain
    Column("owner", Text, nullable=False),
    Column("reason", Text, nullable=False),                   # internal
    Column("reply", Text, nullable=False, server_default=""),  # public, in the SMTP
                                                              # reply (0008_list_reply)
    Column("created", DateTime(timezone=True), nullable=False),
    Column("updated", DateTime(timezone=True), nullable=False),
    Column("expires", DateTime(timezone=True)),               # NULL: never
    Column("hits", Integer, nullable=False),
    Column("last_hit", DateTime(timezone=True)),
    UniqueConstraint("kind", "value", "scope", name="uq_list_entries_kind_value_scope"),
    Index("ix_list_entries_expires", "expires"),
)

# -- many nodes, one system (migration 0006) -----------------------------------------
# The model store when [classifier] store is a database URL: each version's
# artifact (a tar of the model folder) with its SHA-256 and its card (the
# folder's model.json), one current pointer, every promotion and rollback.
# Nodes poll the pointer every [classifier] reload_interval and cache the
# verified artifact locally (gateway.classifier.store).
model_versions = Table(
    "model_versions", metadata,
    Column("version", String(128), primary_key=True),
    Column("sha256", String(64), nullable=False),             # of artifact
    Column("size", Integer, nullable=False),
    Column("meta", Text, nullable=False),                     # model.json, the card's figures
    Column("artifact", LargeBinary, nullable=False),
    Column("created", DateTime(timezone=True), nullable=False),
    Column("added_by", Text, nullable=False),
)

model_current = Table(
    "model_current", metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),  # always 1
    Column("version", String(128), ForeignKey("model_versions.version")),  # NULL: shipped
    Column("sha256", String(64)),
    Column("changed", DateTime(timezone=True), nullable=False),
)

model_history = Table(
    "model_history", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("time", DateTime(timezone=True), nullable=False),
    Column("action", String(16), nullable=False),             # promote, rollback
    Column("version", String(128), nullable=False),           # "shipped": no stored version
    Column("user", Text, nullable=False),
    Column("node", String(255), nullable=False),
    Column("details", Text, nullable=False),                  # JSON: previous, evaluation, ...
)

# Jobs that must run on one node at a time, once per period (gateway.jobs):
# the purge, the daily digest. ``holder`` is the lease on SQLite; on
# PostgreSQL an advisory lock decides and ``holder`` only says who runs it.
jobs = Table(
    "jobs", metadata,
    Column("name", String(64), primary_key=True),
    Column("holder", String(255)),
    Column("token", String(32)),
    Column("lease_until", DateTime(timezone=True)),
    Column("started", DateTime(timezone=True)),
)

# One row per job and period, written in the transaction that finishes the
# work: a period with a row is done, one without is not (whoever died).
job_runs = Table(
    "job_runs", metadata,
    Column("job", String(64), primary_key=True),
    Column("period", String(32), primary_key=True),
    Column("node", String(255), nullable=False),
    Column("started", DateTime(timezone=True), nullable=False),
    Column("finished", DateTime(timezone=True), nullable=False),
    Column("result", Text, nullable=False),                   # JSON
    Index("ix_job_runs_finished", "finished"),
)

# The fleet: each gateway process that serves mail (gateway run) or the
# console (gateway web) says who it is and what it uses, every heartbeat.
nodes = Table(
    "nodes", metadata,
    Column("name", String(255), primary_key=True),
    Column("host", String(255), nullable=False),
    Column("version", String(32), nullable=False),            # gateway software
    Column("schema", String(32), nullable=False),             # newest migration it knows
    Column("model", String(128), nullable=False),             # model version in use
    Column("pid", Integer, nullable=False),
    Column("started", DateTime(timezone=True), nullable=False),
    Column("heartbeat", DateTime(timezone=True), nullable=False),  # the database's clock
    Column("status", Text, nullable=False),                   # JSON: {"stopped": bool}
)

# -- the correspondent memory (gateway.correspondents; migration 0007_identity) --------
# Who writes to whom: per authenticated sender (the author's address and the
# domain that authenticated it) and recipient of ours. Learned from accepted
# mail, releases, spam labels and our users' outbound mail; read by the
# identity check in every worker (FIRST_CONTACT, KNOWN_CORRESPONDENT).
correspondents = Table(
    "correspondents", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("sender", String(320), nullable=False),            # the author's address
    Column("via", String(255), nullable=False),               # DKIM d= / SPF domain
    Column("recipient", String(320), nullable=False),         # our user
    Column("first_seen", DateTime(timezone=True), nullable=False),
    Column("last_seen", DateTime(timezone=True), nullable=False),
    Column("accepted", Integer, nullable=False),
    Column("held", Integer, nullable=False),
    Column("released", Integer, nullable=False),
    Column("spam", Integer, nullable=False),                  # labelled spam
    Column("outbound", Integer, nullable=False),              # our user wrote to them
    Column("names", Text, nullable=False),                    # JSON list of display names
    UniqueConstraint("sender", "via", "recipient", name="uq_correspondents_pair"),
    Index("ix_correspondents_recipient", "recipient"),
    Index("ix_correspondents_last_seen", "last_seen"),
)

# The sender of each held message, so a release or a spam label later
# teaches the memory about the right sender.
correspondent_holds = Table(
    "correspondent_holds", metadata,
    Column("message", String(32), ForeignKey("messages.id", ondelete="CASCADE"),
           primary_key=True),
    Column("sender", String(320), nullable=False),
    Column("via", String(255), nullable=False),
    Column("created", DateTime(timezone=True), nullable=False),
)

# How far the memory has read the quarantine's events (releases, labels):
# one row, advanced in the transaction that applies them, so each event
# teaches once whichever node reads it.
correspondent_cursor = Table(
    "correspondent_cursor", metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),  # always 1
    Column("event", Integer, nullable=False),                 # last events.id applied
)

# Bulk mail at the door (migration 0009_bulk). Greylisting's triplets: the
# client's network or SPF-authorised domain, the normalised envelope sender,
# the recipient. Pending until passed (a retry after [greylist] delay), then
# let through until expires (renewed by each message).
greylist = Table(
    "greylist", metadata,
    Column("client", String(255), primary_key=True),          # net:198.51.100.0/24, spf:d
    Column("sender", String(320), primary_key=True),
    Column("recipient", String(320), primary_key=True),
    Column("first_seen", DateTime(timezone=True), nullable=False),
    Column("last_seen", DateTime(timezone=True), nullable=False),
    Column("passed", DateTime(timezone=True)),                # None while pending
    Column("expires", DateTime(timezone=True), nullable=False),
    Column("attempts", Integer, nullable=False),              # 4xx answers given
    Column("messages", Integer, nullable=False),              # let through since it passed
    Column("client_ip", String(64)),                          # the last one seen
    Column("reason", Text, nullable=False),                   # why it was greylisted
    Column("node", String(255), nullable=False),              # the node that saw it first
    Index("ix_greylist_expires", "expires"),
)

# Rate limits' token buckets ([[ratelimit]]): tokens left at ``updated``;
# nodes take tokens in small leases (gateway.ratelimit).
rate_buckets = Table(
    "rate_buckets", metadata,
    Column("name", String(64), primary_key=True),
    Column("key", String(320), primary_key=True),
    Column("level", Float, nullable=False),
    Column("updated", DateTime(timezone=True), nullable=False),
    Column("taken", Integer, nullable=False),                 # tokens leased out in all
    Column("refused", Integer, nullable=False),               # messages refused
    Column("last_refused", DateTime(timezone=True)),
    Index("ix_rate_buckets_updated", "updated"),
)

# Senders with a DKIM-authenticated history: a registrable domain whose
# aligned-DKIM mail was accepted, and the client networks it came from.
sender_history = Table(
    "sender_history", metadata,
    Column("domain", String(255), primary_key=True),
    Column("net", String(64), primary_key=True),
    Column("accepted", Integer, nullable=False),
    Column("first_seen", DateTime(timezone=True), nullable=False),
    Column("last_seen", DateTime(timezone=True), nullable=False),
    Index("ix_sender_history_last_seen", "last_seen"),
)

# Fuzzy hashes of labelled mail (the fuzzy check): spam learned from
# analysts' labels, accepted feedback and gateway learn; ham from releases.
# A spam hash matched by ham is retired.
fuzzy_hashes = Table(
    "fuzzy_hashes", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("kind", String(16), nullable=False),               # text, html, exact
    Column("digest", String(80), nullable=False),
    Column("label", String(8), nullable=False),               # spam, ham
    Column("source", Text, nullable=False),                   # where the label came from
    Column("created", DateTime(timezone=True), nullable=False),
    Column("last_hit", DateTime(timezone=True)),
    Column("hits", Integer, nullable=False),
    Column("retired", DateTime(timezone=True)),               # matched by ham: off
    UniqueConstraint("kind", "digest", "label", name="uq_fuzzy_hashes_kind_digest_label"),
    Index("ix_fuzzy_hashes_created", "created"),
)

# Recent messages' hashes, for campaigns: one near-duplicate reaching many
# recipients within [fuzzy] campaign_window, whichever node saw each copy.
fuzzy_seen = Table(
    "fuzzy_seen", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("kind", String(16), nullable=False),
    Column("digest", String(80), nullable=False),
    Column("recipients", Integer, nullable=False),
    Column("sender", String(255), nullable=False),            # the sender's domain
    Column("seen", DateTime(timezone=True), nullable=False),
    Column("node", String(255), nullable=False),
    Index("ix_fuzzy_seen_seen", "seen"),
)

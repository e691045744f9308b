"""The quarantine store: SQLite on one machine, PostgreSQL for several nodes.

Message bytes live in the database, next to their record. One transaction
writes both, so a record never points at a missing file and a message never
lies on disk without a record; every node sharing a PostgreSQL quarantine can
show and release every message; and the database's own commit (fsync'd WAL
on SQLite with ``synchronous=FULL``, PostgreSQL's commit) is the durability
point the milter waits for before it lets Postfix discard the message.
PostgreSQL compresses large values out of line (TOAST); 25 MB is no strain.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import operator
import socket
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    and_,
    delete,
    exists,
    func,
    insert,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.schema import Table
from sqlalchemy.sql.elements import ColumnElement

from gateway.db import (
    MigrationFailed,
    first_line,
    know_schema_head,
    make_engine,
    migrate,
    now,
    safe_url,
    utc,
)
from gateway.headers import authentication_results_header, verdict_headers
from gateway.message import Envelope, RawContent
from gateway.mime import parse_bytes
from gateway.quarantine import lists
from gateway.quarantine.fields import fields_of, header_text
from gateway.quarantine.lists import ListEntry
from gateway.quarantine.schema import (
    events,
    feedback,
    messages,
    recipients,
    release_requests,
    replay_samples,
    symbols,
)
from gateway.verdict import Verdict

STATES = ("held", "released", "deleted", "expired")
# Orders the list can be sorted by (Filters.sort).
SORTS = ("created", "score", "sender", "subject", "state", "action", "node", "size")


_INSERT_EVENT = insert(events)
# The columns a held message's rows fill, table by table.
_HELD_COLUMNS = (
    (messages, ("id", "node", "queue_id", "created", "updated", "state", "action", "client_ip",
                "client_name", "helo", "sender", "header_from", "header_to", "subject",
                "header_date", "message_id", "score", "required", "reason", "failed_checks",
                "size", "sha256", "raw", "verdict_headers")),
    (recipients, ("message", "position", "address")),
    (symbols, ("message", "position", "name", "score", "description", "evidence")),
    (events, ("message", "time", "actor", "action", "detail", "reason")),
)


@dataclass(frozen=True)
class _DriverInsert:
    """An INSERT as the database driver takes it: SQLAlchemy compiles it
    once per engine, and each row's values pass through the same bind
    processors (a SQLite date as text, ...) SQLAlchemy would apply. A held
    message's rows go through the driver's cursor: SQLAlchemy's execution
    of four statements was half the CPU of keeping a message."""

    sql: str
    # Positional parameters: a row's values in their order (None: by name).
    order: Callable[[dict[str, Any]], tuple[Any, ...]] | None
    processors: tuple[tuple[str, Callable[[Any], Any]], ...]

    @classmethod
    def of(cls, table: Table, keys: tuple[str, ...], dialect: Dialect) -> _DriverInsert:
        compiled = insert(table).compile(dialect=dialect, column_keys=list(keys))
        order = None
        if compiled.positional:
            names = tuple(compiled.positiontup or ())
            assert len(names) > 1 and set(names) == set(keys), (table.name, names)
            order = operator.itemgetter(*names)
        processors = tuple(
            (key, process) for key in keys
            if (process := table.c[key].type.dialect_impl(dialect).bind_processor(dialect)))
        return cls(compiled.string, order, processors)

    def parameters(self, row: dict[str, Any]) -> Any:
        for key, process in self.processors:
            row[key] = process(row[key])
        return row if self.order is None else self.order(row)

    def run(self, cursor: Any, rows: list[dict[str, Any]]) -> None:
        if len(rows) == 1:
            cursor.execute(self.sql, self.parameters(rows[0]))
        else:
            cursor.executemany(self.sql, [self.parameters(row) for row in rows])


class QuarantineError(Exception):
    """A store operation that failed, as one line."""


@dataclass(frozen=True)
class Event:
    time: datetime
    actor: str
    action: str
    detail: str
    reason: str = ""


@dataclass(frozen=True)
class Record:
    id: str
    node: str
    queue_id: str | None
    created: datetime
    updated: datetime
    state: str
    action: str
    client_ip: str | None
    client_name: str | None
    helo: str | None
    sender: str
    recipients: tuple[str, ...]
    header_from: str | None
    header_to: str | None
    subject: str | None
    header_date: str | None
    message_id: str | None
    score: float
    required: float
    reason: str
    failed_checks: tuple[str, ...]
    size: int
    sha256: str
    symbols: tuple[dict[str, Any], ...]
    events: tuple[Event, ...] = field(default=())
    # Recipients a release has reached, and the verdict's headers as stored.
    released_to: tuple[str, ...] = ()
    verdict_headers: tuple[tuple[str, str], ...] = ()

    def verdict_line(self) -> str:
        """The verdict in the policy's words, thresholds named as the rules
        name them, and where spam marking starts (the X-Spam-Status
        ``required``): "score 13.9 >= quarantine threshold 4; marked as spam
        from score 3" (the console and ``quarantine show``)."""
        return f"{self.reason}; marked as spam from score {self.required:g}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "state": self.state,
            "action": self.action,
            "node": self.node,
            "queue_id": self.queue_id,
            "created": self.created.isoformat(timespec="seconds"),
            "updated": self.updated.isoformat(timespec="seconds"),
            "sender": self.sender,
            "recipients": list(self.recipients),
            "client_ip": self.client_ip,
            "client_name": self.client_name,
            "helo": self.helo,
            "from": self.header_from,
            "to": self.header_to,
            "subject": self.subject,
            "date": self.header_date,
            "message_id": self.message_id,
            "score": self.score,
            "required": self.required,
            "reason": self.reason,
            "symbols": list(self.symbols),
            "failed_checks": list(self.failed_checks),
            "size": self.size,
            "sha256": self.sha256,
            "released_to": list(self.released_to),
            "history": [
                {"time": e.time.isoformat(timespec="seconds"), "actor": e.actor,
                 "action": e.action, "detail": e.detail, "reason": e.reason}
                for e in self.events
            ],
        }


@dataclass(frozen=True)
class Filters:
    sender: str | None = None
    recipient: str | None = None
    symbol: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    action: str | None = None
    state: str | None = None
    limit: int = 1000
    subject: str | None = None
    min_score: float | None = None
    max_score: float | None = None
    node: str | None = None
    sort: str = "created"        # one of SORTS
    descending: bool = True
    offset: int = 0


@dataclass(frozen=True)
class StoredMail:
    """A kept message with its envelope, as ``gateway replay`` reads it."""

    kind: str  # "quarantine", "reject" (a kept copy), "accept" (an accepted sample)
    id: str
    created: datetime
    envelope: Envelope
    action: str  # the verdict when it arrived
    score: float
    subject: str | None
    message_id: str | None
    raw: bytes


class QuarantineStore:
    def __init__(self, url: str, node: str | None = None, migrate: bool = True,
                 migrate_apart: bool = False):
        """``migrate=False``: use the schema as it is (a reader in each worker
        process, which must not race the milter's migration).
        ``migrate_apart``: migrate in a child process, for a process that
        runs long and should not keep alembic (gateway.quarantine.migrator);
        a database in memory, which a child cannot see, migrates here."""
        self.url = url
        self.node = node or socket.gethostname()
        self._held_inserts: list[_DriverInsert] | None = None
        try:
            self.engine = make_engine(url)
            if migrate and migrate_apart and self.engine.url.database not in (None, "", ":memory:"):
                from gateway.quarantine.migrator import migrate_apart as migrate_in_child

                know_schema_head(migrate_in_child(url))
            elif migrate:
                self._migrate()
        except (SQLAlchemyError, OSError, MigrationFailed) as exc:
            raise QuarantineError(f"quarantine.url {safe_url(url)}: {first_line(exc)}") from None

    # -- schema ------------------------------------------------------------------------

    def _migrate(self) -> None:
        migrate(self.engine)

    # -- writing -----------------------------------------------------------------------

    def put(self, envelope: Envelope, raw: RawContent, verdict: Verdict,
            action: str | None = None) -> str:
        """Store a message and its record in one committed transaction."""
        data = raw.bytes()
        fields = fields_of(data, verdict.header_fields)
        identifier = uuid.uuid4().hex[:20]
        stamp = now()
        row = {
            "id": identifier,
            "node": self.node,
            "queue_id": envelope.queue_id,
            "created": stamp,
            "updated": stamp,
            "state": "held",
            "action": action or verdict.action,
            "client_ip": envelope.client_ip,
            "client_name": _text(envelope.client_name),
            "helo": _text(envelope.helo),
            "sender": _text(envelope.mail_from),
            **fields,
            "score": verdict.score,
            "required": verdict.required,
            "reason": verdict.reason,
            "failed_checks": json.dumps(list(verdict.failed_checks)),
            "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "raw": data,
            "verdict_headers": json.dumps(_verdict_headers(verdict)),
        }
        what = "quarantined" if row["action"] == "quarantine" else "kept-rejected"
        self._write_held([
            [row],
            [{"message": identifier, "position": i, "address": _text(address)}
             for i, address in enumerate(envelope.rcpt_to)]
            or [{"message": identifier, "position": 0, "address": ""}],
            [{"message": identifier, "position": i, "name": s.name, "score": s.score,
              "description": s.description, "evidence": s.evidence}
             for i, s in enumerate(verdict.symbols)],
            [{"message": identifier, "time": now(), "actor": "gateway", "action": what,
              "detail": verdict.reason, "reason": None}],
        ])
        return identifier

    def _write_held(self, rows: list[list[dict[str, Any]]]) -> None:
        """A held message's rows (message, recipients, symbols, event) in one
        transaction, committed before this returns."""
        if self._held_inserts is None:
            dialect = self.engine.dialect
            self._held_inserts = [_DriverInsert.of(table, keys, dialect)
                                  for table, keys in _HELD_COLUMNS]
        driver_error = self.engine.dialect.loaded_dbapi.Error
        try:
            connection = self.engine.raw_connection()  # from the pool, pinged if it pings
        except SQLAlchemyError as exc:
            raise QuarantineError(f"cannot store message: {first_line(exc)}") from None
        cursor = None
        try:
            cursor = connection.cursor()
            for statement, table_rows in zip(self._held_inserts, rows, strict=True):
                if table_rows:
                    statement.run(cursor, table_rows)
            connection.commit()
        except Exception as exc:  # the driver's, or a value no bind processor takes
            with contextlib.suppress(Exception):
                connection.rollback()
            if isinstance(exc, driver_error) and self.engine.dialect.is_disconnect(
                    exc, connection.dbapi_connection, cursor):
                connection.invalidate()  # the pool opens a new one for the next message
            raise QuarantineError(f"cannot store message: {first_line(exc)}") from None
        finally:
            if cursor is not None:
                with contextlib.suppress(Exception):
                    cursor.close()
            connection.close()  # back to the pool

    def change_state(self, identifier: str, state: str, who: str, what: str, detail: str = "",
                     drop_body: bool = False, reason: str = "") -> None:
        values: dict[str, Any] = {"state": state, "updated": now()}
        if drop_body:
            values["raw"] = None
        with self.engine.begin() as connection:
            result = connection.execute(
                update(messages).where(messages.c.id == identifier).values(**values))
            if result.rowcount == 0:
                raise QuarantineError(f"no quarantined message {identifier!r}")
            _event(connection, identifier, who, what, detail, reason)

    def mark_released(self, identifier: str, to: Iterable[str], queue_id: str | None,
                      who: str, detail: str, reason: str = "") -> None:
        """A release reached ``to``: those recipients carry the time and
        Postfix's queue id, the history says by whom. The record is released
        once every recipient is; until then it stays held (listed, counted
        and kept as held mail: the released-mail retention is not its)."""
        stamp = now()
        to = list(to)
        with self.engine.begin() as connection:
            if to:
                connection.execute(
                    update(recipients).where(and_(recipients.c.message == identifier,
                                                  recipients.c.address.in_(to)))
                    .values(released=stamp, release_queue_id=(queue_id or "")[:32] or None))
            waiting = connection.execute(select(func.count()).select_from(recipients).where(
                and_(recipients.c.message == identifier, recipients.c.address != "",
                     recipients.c.released.is_(None)))).scalar_one()
            values: dict[str, Any] = {"updated": stamp}
            if not waiting:
                values["state"] = "released"
            result = connection.execute(update(messages).where(messages.c.id == identifier)
                                        .values(**values))
            if result.rowcount == 0:
                raise QuarantineError(f"no quarantined message {identifier!r}")
            _event(connection, identifier, who, "released", detail, reason)

    def record_event(self, identifier: str, who: str, what: str, detail: str = "",
                     reason: str = "") -> None:
        """A line in a message's history that changes nothing else (a failed
        release, a label)."""
        try:
            with self.engine.begin() as connection:
                _event(connection, identifier, who, what, detail, reason)
        except SQLAlchemyError as exc:
            raise QuarantineError(f"cannot record {what} for {identifier}: "
                                  f"{first_line(exc)}") from None

    def purge(self, retention: Mapping[str, int], rejected_days: int,
              at: datetime | None = None, connection: Connection | None = None
              ) -> dict[str, int]:
        """Expire held messages past their days (the body goes, the record
        stays for the audit trail), then remove records past theirs. In one
        transaction: ``connection``'s when given (a job's, which records the
        purge as done in the same commit), else its own."""
        if connection is None:
            with self.engine.begin() as own:
                return self.purge(retention, rejected_days, at, own)
        at = at or now()
        counts = {"expired": 0, "removed": 0}
        for action, days in (("quarantine", retention.get("held", 30)),
                             ("reject", rejected_days)):
            cutoff = at - timedelta(days=days)
            stale = connection.execute(
                select(messages.c.id).where(and_(
                    messages.c.state == "held", messages.c.action == action,
                    messages.c.created < cutoff, ~_awaiting_review()))).scalars().all()
            for identifier in stale:
                # only if still held: a purge run beside this one (gateway
                # quarantine purge during a node's) waits for this row and
                # then finds it expired, and records nothing twice
                done = connection.execute(
                    update(messages).where(and_(messages.c.id == identifier,
                                                messages.c.state == "held"))
                    .values(state="expired", raw=None, updated=at)).rowcount
                if done:
                    _event(connection, identifier, "gateway", "expired",
                           f"held longer than {days} days")
                    counts["expired"] += 1
        for state in ("released", "deleted", "expired"):
            cutoff = at - timedelta(days=retention.get(state, 30))
            gone = connection.execute(
                select(messages.c.id).where(and_(
                    messages.c.state == state, messages.c.updated < cutoff,
                    ~_awaiting_review()))
            ).scalars().all()
            if gone:
                for table, column in ((events, events.c.message),
                                      (symbols, symbols.c.message),
                                      (recipients, recipients.c.message)):
                    connection.execute(delete(table).where(column.in_(gone)))
                connection.execute(delete(messages).where(messages.c.id.in_(gone)))
            counts["removed"] += len(gone)
        return counts

    # -- reading -----------------------------------------------------------------------

    def get(self, identifier: str, prefix: bool = False) -> Record:
        """The record with this id or Postfix queue id; with ``prefix``, also
        the one record whose id starts with ``identifier`` (4 characters or
        more), as ``git`` takes an abbreviated commit."""
        with self.engine.connect() as connection:
            row = connection.execute(
                select(*_record_columns()).where(
                    (messages.c.id == identifier) | (messages.c.queue_id == identifier))
                .order_by(messages.c.created.desc())).first()
            if row is None and prefix and len(identifier) >= 4 and identifier.isalnum():
                rows = connection.execute(
                    select(*_record_columns()).where(
                        messages.c.id.startswith(identifier.lower(), autoescape=True))
                    .limit(2)).all()
                if len(rows) > 1:
                    raise QuarantineError(f"{identifier!r} is the start of several message "
                                          "ids; give more of it")
                row = rows[0] if rows else None
            if row is None:
                raise QuarantineError(f"no quarantined message {identifier!r}")
            return self._records(connection, [row], with_events=True)[0]

    def raw(self, identifier: str) -> bytes | None:
        with self.engine.connect() as connection:
            return connection.execute(
                select(messages.c.raw).where(messages.c.id == identifier)).scalar()

    def records(self, filters: Filters = Filters()) -> list[Record]:
        column = messages.c[filters.sort] if filters.sort in SORTS else messages.c.created
        order = [column.desc() if filters.descending else column.asc()]
        if column is not messages.c.created:
            order.append(messages.c.created.desc())
        query = (select(*_record_columns()).where(_conditions(filters))
                 .order_by(*order, messages.c.id).offset(max(filters.offset, 0))
                 .limit(filters.limit))
        with self.engine.connect() as connection:
            return self._records(connection, connection.execute(query).all())

    def count_matching(self, filters: Filters = Filters()) -> int:
        """How many records the filters match (limit and offset aside)."""
        query = select(func.count()).select_from(messages).where(_conditions(filters))
        with self.engine.connect() as connection:
            return int(connection.execute(query).scalar_one())

    def count(self) -> int:
        with self.engine.connect() as connection:
            return connection.execute(select(func.count()).select_from(messages)).scalar_one()

    def count_by_state(self) -> dict[str, int]:
        """Records per state, every state present (for metrics and doctor)."""
        query = select(messages.c.state, func.count()).group_by(messages.c.state)
        with self.engine.connect() as connection:
            counts: dict[str, int] = {state: n for state, n in connection.execute(query)}
        return {state: int(counts.get(state, 0)) for state in STATES}

    def _records(self, connection: Connection, rows: Iterable[Any],
                 with_events: bool = False) -> list[Record]:
        rows = list(rows)
        ids = [row.id for row in rows]
        if not ids:
            return []
        rcpts: dict[str, list[str]] = {i: [] for i in ids}
        released: dict[str, list[str]] = {i: [] for i in ids}
        for m, address, when in connection.execute(
                select(recipients.c.message, recipients.c.address, recipients.c.released)
                .where(recipients.c.message.in_(ids)).order_by(recipients.c.position)):
            if address:
                rcpts[m].append(address)
                if when is not None:
                    released[m].append(address)
        syms: dict[str, list[dict[str, Any]]] = {i: [] for i in ids}
        for s in connection.execute(
                select(symbols).where(symbols.c.message.in_(ids))
                .order_by(symbols.c.position)):
            syms[s.message].append({"name": s.name, "score": s.score,
                                    "description": s.description, "evidence": s.evidence})
        audit: dict[str, list[Event]] = {i: [] for i in ids}
        if with_events:
            for e in connection.execute(select(events).where(events.c.message.in_(ids))
                                        .order_by(events.c.id)):
                audit[e.message].append(Event(utc(e.time), e.actor, e.action, e.detail,
                                              e.reason or ""))
        return [
            Record(
                id=row.id, node=row.node, queue_id=row.queue_id, created=utc(row.created),
                updated=utc(row.updated), state=row.state, action=row.action,
                client_ip=row.client_ip, client_name=row.client_name, helo=row.helo,
                sender=row.sender, recipients=tuple(rcpts[row.id]),
                header_from=row.header_from, header_to=row.header_to, subject=row.subject,
                header_date=row.header_date, message_id=row.message_id, score=row.score,
                required=row.required, reason=row.reason,
                failed_checks=tuple(json.loads(row.failed_checks)), size=row.size,
                sha256=row.sha256, symbols=tuple(syms[row.id]),
                events=tuple(audit[row.id]),
                released_to=tuple(released[row.id]),
                verdict_headers=tuple(
                    (str(n), str(v)) for n, v in json.loads(row.verdict_headers or "[]")),
            )
            for row in rows
        ]

    # -- accepted mail kept for replay ([replay] keep_accepted_sample) -------------------

    def put_sample(self, envelope: Envelope, data: bytes, verdict: Verdict) -> str:
        """Keep an accepted message for ``gateway replay``."""
        head = parse_bytes(data.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n")
        identifier = uuid.uuid4().hex[:20]
        row = {
            "id": identifier,
            "node": self.node,
            "queue_id": envelope.queue_id,
            "created": now(),
            "client_ip": envelope.client_ip,
            "client_name": _text(envelope.client_name),
            "helo": _text(envelope.helo),
            "sender": _text(envelope.mail_from),
            "recipients": json.dumps([_text(r) for r in envelope.rcpt_to]),
            "macros": json.dumps({k: _text(v) for k, v in envelope.macros.items()}),
            "header_from": header_text(head, "From"),
            "subject": header_text(head, "Subject"),
            "message_id": header_text(head, "Message-ID"),
            "action": verdict.action,
            "score": verdict.score,
            "symbols": json.dumps([{"name": s.name, "score": s.score} for s in verdict.symbols]),
            "size": len(data),
            "raw": data,
        }
        try:
            with self.engine.begin() as connection:
                connection.execute(insert(replay_samples), row)
        except SQLAlchemyError as exc:
            raise QuarantineError(f"cannot keep an accepted message: {first_line(exc)}") \
                from None
        return identifier

    def trim_samples(self, keep: int) -> int:
        """Remove all but the newest ``keep`` accepted messages."""
        newest = (select(replay_samples.c.id).order_by(replay_samples.c.created.desc())
                  .limit(keep).scalar_subquery())
        try:
            with self.engine.begin() as connection:
                return connection.execute(
                    delete(replay_samples).where(replay_samples.c.id.not_in(newest))).rowcount
        except SQLAlchemyError as exc:
            raise QuarantineError(f"cannot trim the accepted sample: {first_line(exc)}") \
                from None

    def purge_samples(self, days: int, at: datetime | None = None,
                      connection: Connection | None = None) -> int:
        """Remove accepted messages kept longer than ``days`` (in
        ``connection``'s transaction when given)."""
        cutoff = (at or now()) - timedelta(days=days)
        query = delete(replay_samples).where(replay_samples.c.created < cutoff)
        if connection is not None:
            return connection.execute(query).rowcount
        try:
            with self.engine.begin() as own:
                return own.execute(query).rowcount
        except SQLAlchemyError as exc:
            raise QuarantineError(f"cannot purge the accepted sample: {first_line(exc)}") \
                from None

    def count_samples(self) -> int:
        with self.engine.connect() as connection:
            return connection.execute(
                select(func.count()).select_from(replay_samples)).scalar_one()

    def stored_mail(self, since: datetime | None = None,
                    kinds: Iterable[str] = ("quarantine", "reject", "accept"),
                    ) -> Iterator[StoredMail]:
        """Every kept message whose bytes are still there, oldest first: held
        and released mail, kept copies of rejected mail, accepted samples.
        The bytes are read one message at a time."""
        kinds = tuple(kinds)
        found: list[tuple[datetime, str, str]] = []
        with self.engine.connect() as connection:
            quarantine_kinds = [k for k in kinds if k in ("quarantine", "reject")]
            if quarantine_kinds:
                query = select(messages.c.created, messages.c.id, messages.c.action).where(
                    and_(messages.c.raw.is_not(None), messages.c.action.in_(quarantine_kinds)))
                if since is not None:
                    query = query.where(messages.c.created >= since)
                found += [(utc(c), i, a) for c, i, a in connection.execute(query)]
            if "accept" in kinds:
                samples = select(replay_samples.c.created, replay_samples.c.id)
                if since is not None:
                    samples = samples.where(replay_samples.c.created >= since)
                found += [(utc(c), i, "accept") for c, i in connection.execute(samples)]
        for _created, identifier, kind in sorted(found):
            item = self._stored(identifier, kind)
            if item is not None:
                yield item

    def _stored(self, identifier: str, kind: str) -> StoredMail | None:
        with self.engine.connect() as connection:
            if kind == "accept":
                row = connection.execute(select(replay_samples).where(
                    replay_samples.c.id == identifier)).first()
                if row is None:
                    return None
                envelope = Envelope(
                    mail_from=row.sender, rcpt_to=tuple(json.loads(row.recipients)),
                    client_ip=row.client_ip, client_name=row.client_name, helo=row.helo,
                    queue_id=row.queue_id, macros=json.loads(row.macros))
                return StoredMail(kind, row.id, utc(row.created), envelope, row.action,
                                  row.score, row.subject, row.message_id, bytes(row.raw))
            row = connection.execute(select(messages).where(
                messages.c.id == identifier)).first()
            if row is None or row.raw is None:
                return None
            rcpts = connection.execute(
                select(recipients.c.address).where(recipients.c.message == identifier)
                .order_by(recipients.c.position)).scalars().all()
            envelope = Envelope(
                mail_from=row.sender, rcpt_to=tuple(r for r in rcpts if r),
                client_ip=row.client_ip, client_name=row.client_name, helo=row.helo,
                queue_id=row.queue_id)
            return StoredMail(row.action, row.id, utc(row.created), envelope, row.action,
                              row.score, row.subject, row.message_id, bytes(row.raw))

    # -- looking a message up (gateway trace) ---------------------------------------------

    def find(self, identifier: str) -> list[Record]:
        """Records whose id, queue id or Message-ID (with or without <>) is
        ``identifier``, with their history, newest first."""
        bare = identifier.strip().strip("<>")
        with self.engine.connect() as connection:
            rows = connection.execute(
                select(*_record_columns()).where(
                    (messages.c.id == identifier) | (messages.c.queue_id == identifier)
                    | messages.c.message_id.in_([bare, f"<{bare}>"]))
                .order_by(messages.c.created.desc()).limit(100)).all()
            return self._records(connection, rows, with_events=True)

    def find_samples(self, identifier: str) -> list[dict[str, Any]]:
        """Accepted messages kept for replay, by id, queue id or Message-ID."""
        bare = identifier.strip().strip("<>")
        columns = [c for c in replay_samples.c if c.name != "raw"]
        with self.engine.connect() as connection:
            rows = connection.execute(
                select(*columns).where(
                    (replay_samples.c.id == identifier) | (replay_samples.c.queue_id == identifier)
                    | replay_samples.c.message_id.in_([bare, f"<{bare}>"]))
                .order_by(replay_samples.c.created.desc()).limit(100)).all()
        return [{
            "id": row.id, "node": row.node, "queue_id": row.queue_id,
            "created": utc(row.created).isoformat(timespec="seconds"),
            "client_ip": row.client_ip, "helo": row.helo, "sender": row.sender,
            "recipients": json.loads(row.recipients), "from": row.header_from,
            "subject": row.subject, "message_id": row.message_id, "action": row.action,
            "score": row.score, "symbols": json.loads(row.symbols), "size": row.size,
        } for row in rows]

    # -- managed allow and block lists (gateway.quarantine.lists) -----------------------

    def list_entries(self, kind: str | None = None, *, active_only: bool = False,
                     at: datetime | None = None) -> list[ListEntry]:
        """Entries, by kind, scope and value; ``active_only``: not expired ``at``."""
        with self._lists("read the lists") as connection:
            return lists.select_entries(connection, kind, (at or now()) if active_only else None)

    def add_list_entry(self, kind: str, value: str, *, owner: str, reason: str = "",
                       scope: str = "", expires: datetime | None = None,
                       reply: str = "", force: bool = False) -> tuple[ListEntry, bool]:
        """Add an entry (or renew the same kind, value and scope: owner, reason,
        reply and expiry replaced, hits kept); (the entry, True if new). Raises
        ValueError for a value, scope or reply that cannot be an entry's, and
        PublicSuffixEntry for a public suffix (``test``, ``@co.uk``) unless
        ``force``."""
        lists.normalize_value(kind, value)
        lists.normalize_scope(scope)
        lists.normalize_reply(reply)
        problem = lists.public_suffix_problem(kind, value)
        if problem is not None and not force:
            raise lists.PublicSuffixEntry(problem)
        with self._lists("add a list entry", write=True) as connection:
            return lists.upsert_entry(connection, kind, value, scope, owner, reason,
                                      expires, now(), reply)

    def get_list_entry(self, identifier: int) -> ListEntry | None:
        with self._lists("read the lists") as connection:
            return lists.get_entry(connection, identifier)

    def find_list_entry(self, kind: str, value: str, scope: str = "") -> ListEntry | None:
        """The entry of this kind, value and scope (values as written or stored)."""
        value, scope = lists.normalize_value(kind, value), lists.normalize_scope(scope)
        with self._lists("read the lists") as connection:
            return lists.find_entry(connection, kind, value, scope)

    def remove_list_entry(self, identifier: int) -> bool:
        with self._lists("remove a list entry", write=True) as connection:
            return lists.delete_entry(connection, identifier)

    def expire_list_entries(self, at: datetime | None = None) -> list[ListEntry]:
        """Remove the entries whose expiry has passed; the removed ones."""
        with self._lists("expire list entries", write=True) as connection:
            return lists.delete_expired(connection, at or now())

    def record_list_hits(self, hits: Mapping[int, int], at: datetime | None = None) -> None:
        """Add to the entries' hit counters (entry id -> messages matched)."""
        if hits:
            with self._lists("count list hits", write=True) as connection:
                lists.add_hits(connection, hits, at or now())

    @contextlib.contextmanager
    def _lists(self, what: str, write: bool = False) -> Iterator[Connection]:
        try:
            with (self.engine.begin() if write else self.engine.connect()) as connection:
                yield connection
        except SQLAlchemyError as exc:
            raise QuarantineError(f"cannot {what}: {first_line(exc)}") from None

    def close(self) -> None:
        self.engine.dispose()


def _record_columns():
    return [c for c in messages.c if c.name != "raw"]


def _event(connection: Connection, identifier: str, who: str, what: str, detail: str,
           reason: str = "") -> None:
    connection.execute(_INSERT_EVENT, {"message": identifier, "time": now(), "actor": who,
                                        "action": what, "detail": detail,
                                        "reason": reason or None})


def _conditions(filters: Filters) -> Any:
    """The WHERE clause of a list or count."""
    conditions: list[ColumnElement[bool]] = [true()]
    if filters.sender:
        conditions.append(messages.c.sender.ilike(_like(filters.sender), escape="\\"))
    if filters.recipient:
        conditions.append(exists().where(and_(
            recipients.c.message == messages.c.id,
            recipients.c.address.ilike(_like(filters.recipient), escape="\\"))))
    if filters.symbol:
        conditions.append(exists().where(and_(
            symbols.c.message == messages.c.id, symbols.c.name == filters.symbol.upper())))
    if filters.subject:
        conditions.append(messages.c.subject.ilike(_like(filters.subject), escape="\\"))
    if filters.since:
        conditions.append(messages.c.created >= filters.since)
    if filters.until:
        conditions.append(messages.c.created < filters.until)
    if filters.action:
        conditions.append(messages.c.action == filters.action)
    if filters.state:
        conditions.append(messages.c.state == filters.state)
    if filters.min_score is not None:
        conditions.append(messages.c.score >= filters.min_score)
    if filters.max_score is not None:
        conditions.append(messages.c.score <= filters.max_score)
    if filters.node:
        conditions.append(messages.c.node == filters.node)
    return and_(*conditions)


def _awaiting_review() -> Any:
    """A message with a label still in the feedback queue, or a release
    request still waiting for a decision: purging waits."""
    return or_(exists().where(and_(feedback.c.message == messages.c.id,
                                   feedback.c.state == "pending")),
               exists().where(and_(release_requests.c.message == messages.c.id,
                                   release_requests.c.state == "pending")))


def _verdict_headers(verdict: Verdict) -> list[list[str]]:
    """The headers the milter adds for this verdict, for a later release."""
    found = []
    auth = authentication_results_header(verdict)
    if auth is not None:
        found.append(list(auth))
    found += [list(pair) for pair in verdict_headers(verdict)]
    return found


def _text(value: str | None) -> str | None:
    """Envelope strings as the database can store them: bytes that were not
    UTF-8 (kept by pymilter as surrogates) become U+FFFD."""
    if value is None:
        return None
    return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _like(text_: str) -> str:
    escaped = text_.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"

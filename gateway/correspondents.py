"""The correspondent memory: who writes to whom, kept in the store's database.

One row per (sender, via, recipient): the author's address, the domain
that authenticated it (an aligned DKIM d= or SPF domain, or the signer that
vouched for it, such as a mailing list's), and our user. Each row counts
the messages **accepted**, **held**, **released** and labelled **spam**, and
the messages our user sent them (**outbound**), with the first and last time
and the display names used. Every node shares it (SQLite on one node,
PostgreSQL for many); the identity check reads it (FIRST_CONTACT,
KNOWN_CORRESPONDENT, a known correspondent's name from a stranger).

What teaches it, and what never does:

- accepted inbound mail, only from an authenticated sender, only when it
  carried no impersonation symbol, and only when it would have been
  accepted without the memory's own credit (KNOWN_CORRESPONDENT): a sender
  cannot raise itself by the verdicts the memory bought it;
- held mail counts as held; a release of it by a person counts as released,
  a spam label as spam (read from the quarantine's events, once whichever
  node reads them);
- our users' outbound mail (a SASL-authenticated client, a submission
  service): each recipient becomes a correspondent of the user, recorded
  under the recipient's own domain, so only mail aligned with that domain
  later matches it. The user is the From address only when the SASL login
  owns it (:class:`SenderLogins`): a login writing as someone else teaches
  nothing.

A sender is *known* to a recipient when none of its mail was labelled spam
and the user wrote to it, released its mail, or accepted at least
``[identity] known_messages`` from it over ``known_days`` or more; counts
halve for every ``half_life_days`` it is not seen, and rows not seen for
``retention_days`` are removed. ``gateway correspondents show|forget``
reads and erases one person's rows.

The milter process writes (:class:`Learner`: observations queued, written
in batches by a thread of its own); every worker reads (:class:`MemoryReader`:
cached for ``refresh`` seconds, and a message waits at most
``lookup_timeout`` for an answer). With the database away the check gets no
answer and emits no history symbols: the memory never holds up mail.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, bindparam, delete, func, insert, or_, select, tuple_, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from gateway.config import IdentitySection
from gateway.db import utc
from gateway.quarantine.schema import (
    correspondent_cursor,
    correspondent_holds,
    correspondents,
    events,
    recipients,
)

if TYPE_CHECKING:
    from gateway.decider import Decision
    from gateway.message import Envelope

log = logging.getLogger("gateway.correspondents")

MAX_NAMES = 5  # display names kept per row, the newest
MAX_NAME = 100
MAX_ADDRESS = 320
MAX_LOGIN_MAP_LINES = 100_000
MAX_SENDER_ROWS = 1000  # rows read for one sender (one per recipient)
MAX_INDEX_ROWS = 200_000  # rows read for the name and domain index
INDEX_BATCH = 1000  # of them held at once
BATCH = 500
MAX_WAITING = 100_000  # observations waiting for the writer, at most
FLUSH_EVERY = 2.0
PURGE_EVERY = 3600.0
COMPLAIN_EVERY = 60.0
BREAKER_SECONDS = 30.0
ASKING = 2  # questions to the database at once, per worker
COUNTS = ("accepted", "held", "released", "spam", "outbound")


def now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Entry:
    """One (sender, via, recipient) row."""

    sender: str
    via: str
    recipient: str
    first_seen: datetime
    last_seen: datetime
    accepted: int = 0
    held: int = 0
    released: int = 0
    spam: int = 0
    outbound: int = 0
    names: tuple[str, ...] = ()

    def weight(self, at: datetime, half_life_days: float) -> float:
        """How much its counts still weigh: halved per half-life unseen."""
        days = max((at - self.last_seen).total_seconds() / 86400.0, 0.0)
        return math.pow(0.5, days / half_life_days)

    def known(self, settings: IdentitySection, at: datetime | None = None) -> bool:
        """A known correspondent of its recipient (see the module's doc)."""
        if self.spam:
            return False
        if self.outbound or self.released:
            return True
        weight = self.weight(at or now(), settings.half_life_days)
        span = (self.last_seen - self.first_seen).total_seconds() / 86400.0
        return self.accepted * weight >= settings.known_messages - 1e-9 and \
            span >= settings.known_days

    def describe(self) -> str:
        parts = [f"{self.accepted} accepted"]
        parts += [f"{getattr(self, n)} {n}" for n in COUNTS[1:] if getattr(self, n)]
        return (f"{self.sender} -> {self.recipient}: {', '.join(parts)} since "
                f"{self.first_seen:%Y-%m-%d}, last {self.last_seen:%Y-%m-%d}")

    def as_dict(self) -> dict[str, Any]:
        return {"sender": self.sender, "via": self.via, "recipient": self.recipient,
                "first_seen": self.first_seen.isoformat(timespec="seconds"),
                "last_seen": self.last_seen.isoformat(timespec="seconds"),
                **{n: getattr(self, n) for n in COUNTS}, "names": list(self.names)}


def _entry(row: Any) -> Entry:
    try:
        names = tuple(str(n) for n in json.loads(row.names or "[]"))[:MAX_NAMES]
    except (ValueError, TypeError):
        names = ()
    return Entry(row.sender, row.via, row.recipient, utc(row.first_seen), utc(row.last_seen),
                 row.accepted, row.held, row.released, row.spam, row.outbound, names)


# -- what a decided message teaches ----------------------------------------------------------


@dataclass(frozen=True)
class Observation:
    """One count to add to one row (several rows per message)."""

    sender: str
    via: str
    recipient: str
    count: str  # one of COUNTS
    at: datetime
    name: str = ""
    hold: str | None = None  # the quarantine id of a held message


def observations(envelope: Envelope, decision: Decision, org_domains: Iterable[str] = (),
                 at: datetime | None = None) -> list[Observation]:
    """What one decided message teaches (nothing, most often for spam)."""
    from gateway.facts import IdentityFacts
    from gateway.hosts import registrable

    verdict = decision.verdict
    facts = IdentityFacts.of(verdict.facts)
    if facts is None or not facts.author:
        return []
    stamp = at or now()
    if facts.direction == "outbound":
        if decision.outcome != "accept":
            return []
        ours = {d.lower() for d in org_domains}
        found = []
        for recipient in envelope.rcpt_to[:100]:
            address = _address(recipient)
            domain = address.rpartition("@")[2]
            if not domain or registrable(domain) in ours or address == facts.author:
                continue
            found.append(Observation(address, registrable(domain), facts.author, "outbound",
                                     stamp))
        return found
    if not facts.via or facts.imitation:
        return []  # spoofable, or imitating someone: teaches nothing
    if decision.outcome == "accept" and verdict.action == "accept":
        credit = sum(s.score for s in verdict.symbols if s.name == "KNOWN_CORRESPONDENT")
        if verdict.score - credit >= verdict.required:
            return []  # accepted only thanks to the memory itself
        count, hold = "accepted", None
    elif decision.outcome in ("discard", "hold") and verdict.action == "quarantine":
        count, hold = "held", decision.notes.get("quarantine_id")
    else:
        return []
    name = (facts.name or "")[:MAX_NAME]
    return [Observation(facts.author, facts.via, _address(r), count, stamp, name, hold)
            for r in facts.recipients[:100] if _address(r)]


def _address(text: str) -> str:
    return text.strip().strip("<>").lower()[:MAX_ADDRESS]


# -- whose outbound mail it is ----------------------------------------------------------------


@dataclass(frozen=True)
class SenderLogins:
    """Which SASL logins own which sender addresses (``[identity]
    sender_login_maps``): the text Postfix's ``smtpd_sender_login_maps``
    reads (``postmap`` compiles it), one reading for both. Our user's mail
    teaches the memory under its From address only when the login owns it:
    else any logged-in user could make correspondents for someone else."""

    owners: Mapping[str, frozenset[str]] = field(default_factory=dict)  # address, @domain

    def owns(self, login: str, address: str) -> bool:
        """Whether ``login`` may write as ``address``: it is that address,
        or the maps list it for the address (else for ``@domain``; the first
        key found decides, as in Postfix)."""
        login, address = login.strip().lower(), _address(address)
        if not login or "@" not in address:
            return False
        if login == address:
            return True
        for key in (address, "@" + address.rpartition("@")[2]):
            if key in self.owners:
                return login in self.owners[key]
        return False


def load_sender_logins(paths: Iterable[str]) -> SenderLogins:
    """The maps from their files: ``address login[, login...]`` a line, a line
    that starts with white space continues the one before, ``#`` comments;
    raises ConfigError naming every file and line it cannot read."""
    from gateway.schema import ConfigError

    owners: dict[str, set[str]] = {}
    errors: list[str] = []
    for path in paths:
        try:
            with open(path, encoding="utf-8") as handle:
                logical: list[tuple[int, str]] = []
                for number, line in enumerate(handle, 1):
                    if number > MAX_LOGIN_MAP_LINES:
                        errors.append(f"{path}: more than {MAX_LOGIN_MAP_LINES} lines")
                        break
                    text = line.rstrip("\n")
                    if not text.strip() or text.lstrip().startswith("#"):
                        continue
                    if text[0].isspace() and logical:
                        logical[-1] = (logical[-1][0], f"{logical[-1][1]} {text.strip()}")
                    else:
                        logical.append((number, text.strip()))
        except FileNotFoundError:
            errors.append(f"{path}: sender login map not found")
            continue
        except (OSError, UnicodeDecodeError) as exc:
            errors.append(f"{path}: cannot read sender login map: {exc}")
            continue
        for number, text in logical:
            key, *logins = [w for w in text.replace(",", " ").split() if w]
            if not logins or "@" not in key:
                errors.append(f"{path}:{number}: expected an address or @domain, then the "
                              "logins that own it (bob@example.net bob@example.net)")
                continue
            owners.setdefault(key.lower(), set()).update(n.lower() for n in logins)
    if errors:
        raise ConfigError(errors)
    return SenderLogins({key: frozenset(found) for key, found in owners.items()})


# -- the database --------------------------------------------------------------------------


class Memory:
    """The correspondent rows in the store's database (one engine)."""

    def __init__(self, engine: Engine):
        self.engine = engine

    @classmethod
    def open(cls, url: str) -> Memory:
        from gateway.db import make_engine

        return cls(make_engine(url, pool_size=2, connect_timeout=5))

    # -- reading -------------------------------------------------------------------

    def sender(self, sender: str, via: str) -> list[Entry]:
        query = (select(correspondents).where(and_(correspondents.c.sender == sender,
                                                   correspondents.c.via == via))
                 .limit(MAX_SENDER_ROWS))
        with self.engine.connect() as connection:
            return [_entry(row) for row in connection.execute(query)]

    def index_rows(self, settings: IdentitySection | None = None) -> Iterator[Entry]:
        """Rows for the name and domain index: the most recently seen first,
        read INDEX_BATCH at a time as they are used (all at once, they took
        some 0.6 kB a row until the snapshot was built: 110 MB for
        MAX_INDEX_ROWS, in every worker at every refresh). With
        ``settings``, only the rows that can make a known correspondent
        (none labelled spam; written to, released, or accepted at least
        ``known_messages`` times): the long tail of senders seen once, most
        of a site's rows, is not read again at every refresh."""
        query = select(correspondents)
        if settings is not None:
            query = query.where(correspondents.c.spam == 0, or_(
                correspondents.c.outbound > 0, correspondents.c.released > 0,
                correspondents.c.accepted >= math.ceil(settings.known_messages - 1e-9)))
        query = query.order_by(correspondents.c.last_seen.desc()).limit(MAX_INDEX_ROWS)
        with self.engine.connect() as connection:
            for row in connection.execution_options(yield_per=INDEX_BATCH).execute(query):
                yield _entry(row)

    def recipient_domains(self) -> frozenset[str]:
        """The domains of our recipients (from the recipients' index alone)."""
        query = select(correspondents.c.recipient).distinct().limit(MAX_INDEX_ROWS)
        with self.engine.connect() as connection:
            return frozenset(recipient.rpartition("@")[2]
                             for recipient in connection.execute(query).scalars()) - {""}

    def show(self, address: str) -> list[Entry]:
        """Every row about one person: as a sender or as our recipient."""
        address = _address(address)
        query = (select(correspondents)
                 .where(or_(correspondents.c.sender == address,
                            correspondents.c.recipient == address))
                 .order_by(correspondents.c.last_seen.desc()))
        with self.engine.connect() as connection:
            return [_entry(row) for row in connection.execute(query)]

    def count(self) -> int:
        with self.engine.connect() as connection:
            return int(connection.execute(select(func.count()).select_from(correspondents))
                       .scalar_one())

    # -- writing -------------------------------------------------------------------

    def forget(self, address: str) -> int:
        """Erase one person: rows as sender or recipient, and held-message links."""
        address = _address(address)
        with self.engine.begin() as connection:
            removed = connection.execute(delete(correspondents).where(or_(
                correspondents.c.sender == address,
                correspondents.c.recipient == address))).rowcount
            connection.execute(delete(correspondent_holds)
                               .where(correspondent_holds.c.sender == address))
        return int(removed or 0)

    def add(self, found: Sequence[Observation]) -> None:
        """Add a batch of observations in one transaction (retried once when
        another node inserted the same new row meanwhile)."""
        merged: dict[tuple[str, str, str], dict[str, Any]] = {}
        holds: dict[str, tuple[str, str, datetime]] = {}
        for item in found:
            row = merged.setdefault((item.sender, item.via, item.recipient),
                                    {"first": item.at, "last": item.at, "names": [],
                                     **dict.fromkeys(COUNTS, 0)})
            row[item.count] += 1
            row["first"] = min(row["first"], item.at)
            row["last"] = max(row["last"], item.at)
            if item.name and item.name not in row["names"]:
                row["names"].append(item.name)
            if item.hold:
                holds[item.hold] = (item.sender, item.via, item.at)
        for attempt in range(2):
            try:
                with self.engine.begin() as connection:
                    _upsert_many(connection, merged)
                    _hold_many(connection, holds)
                return
            except IntegrityError:
                if attempt:
                    raise

    def apply_events(self, limit: int = 1000) -> int:
        """Teach the releases and spam labels recorded since the last call
        (on any node): the cursor moves in the same transaction, so each
        event counts once. Returns how many events were applied."""
        try:
            return self._apply_events(limit)
        except _Lost:
            return 0  # another node applied them first; ours were rolled back

    def _apply_events(self, limit: int) -> int:
        with self.engine.begin() as connection:
            cursor = connection.execute(select(correspondent_cursor.c.event)
                                        .where(correspondent_cursor.c.id == 1)).scalar()
            if cursor is None:
                last = connection.execute(select(func.max(events.c.id))).scalar() or 0
                connection.execute(insert(correspondent_cursor), {"id": 1, "event": last})
                return 0  # start from now: older events predate the memory
            rows = connection.execute(
                select(events.c.id, events.c.message, events.c.action, events.c.time)
                .where(events.c.id > cursor).order_by(events.c.id).limit(limit)).all()
            if not rows:
                return 0
            applied = 0
            for row in rows:
                count = {"released": "released", "labelled-spam": "spam"}.get(row.action)
                if count is None:
                    continue
                held = connection.execute(select(correspondent_holds).where(
                    correspondent_holds.c.message == row.message)).first()
                if held is None:
                    continue
                query = select(recipients.c.address).where(recipients.c.message == row.message)
                if count == "released":
                    query = query.where(recipients.c.released.is_not(None))
                for (address,) in connection.execute(query):
                    row_counts = {"first": utc(row.time), "last": utc(row.time), "names": [],
                                  **dict.fromkeys(COUNTS, 0), count: 1}
                    _upsert(connection, (held.sender, held.via, _address(address)),
                            row_counts, seen=count == "released")
                applied += 1
            moved = connection.execute(
                update(correspondent_cursor)
                .where(and_(correspondent_cursor.c.id == 1,
                            correspondent_cursor.c.event == cursor))
                .values(event=rows[-1].id)).rowcount
            if moved != 1:
                raise _Lost
        return applied

    def purge(self, retention_days: int, at: datetime | None = None) -> int:
        """Remove rows not seen for ``retention_days``."""
        cutoff = (at or now()) - timedelta(days=retention_days)
        with self.engine.begin() as connection:
            removed = connection.execute(delete(correspondents)
                                         .where(correspondents.c.last_seen < cutoff)).rowcount
            connection.execute(delete(correspondent_holds)
                               .where(correspondent_holds.c.created < cutoff))
        return int(removed or 0)

    def close(self) -> None:
        self.engine.dispose()


class _Lost(Exception):
    """Another node moved the events cursor meanwhile."""


def _upsert(connection: Connection, key: tuple[str, str, str], row: Mapping[str, Any],
            seen: bool = True) -> None:
    _upsert_many(connection, {key: row}, seen)


# Keys looked up per statement: 3 parameters each, well within any
# database's limit on parameters.
UPSERT_CHUNK = 200
# The writer's statements, built once (each build costs its construction
# and its cache key again, per flush).
_FIND_ROWS = select(correspondents.c.id, correspondents.c.sender, correspondents.c.via,
                    correspondents.c.recipient, correspondents.c.names,
                    correspondents.c.last_seen).where(
    tuple_(correspondents.c.sender, correspondents.c.via, correspondents.c.recipient)
    .in_(bindparam("keys", expanding=True)))
_INSERT_ROWS = insert(correspondents)
_FIND_HOLDS = select(correspondent_holds.c.message).where(
    correspondent_holds.c.message.in_(bindparam("messages", expanding=True)))
_INSERT_HOLDS = insert(correspondent_holds)


def _upsert_many(connection: Connection, merged: Mapping[tuple[str, str, str], Mapping[str, Any]],
                 seen: bool = True) -> None:
    """Add each row's counts to the row of its (sender, via, recipient),
    made if there is none: a SELECT per 200 keys, one INSERT of the new
    rows and one UPDATE per kind of change (executemany), not three
    statements built and compiled per row (a millisecond of the milter's
    CPU per message)."""
    keys = list(merged)
    for start in range(0, len(keys), UPSERT_CHUNK):
        chunk = keys[start:start + UPSERT_CHUNK]
        found = {(r.sender, r.via, r.recipient): r
                 for r in connection.execute(_FIND_ROWS, {"keys": chunk})}
        new = [{"sender": key[0], "via": key[1], "recipient": key[2],
                "first_seen": merged[key]["first"], "last_seen": merged[key]["last"],
                **{n: merged[key][n] for n in COUNTS},
                "names": json.dumps(merged[key]["names"][-MAX_NAMES:])}
               for key in chunk if key not in found]
        if new:
            connection.execute(_INSERT_ROWS, new)
        changes: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        for key, current in found.items():
            values = _changed(current, merged[key], seen)
            if values:
                changes.setdefault(tuple(sorted(values)), []).append(
                    {"row_id": current.id, **values})
        for columns, rows in changes.items():
            connection.execute(_update_statement(columns), rows)


def _changed(current: Any, row: Mapping[str, Any], seen: bool) -> dict[str, Any]:
    """What an existing row gets: counts to add, a later last_seen, names."""
    values: dict[str, Any] = {n: row[n] for n in COUNTS if row[n]}
    if seen and utc(current.last_seen) < row["last"]:
        values["last_seen"] = row["last"]
    if row["names"]:
        try:
            names = [str(n) for n in json.loads(current.names or "[]")]
        except (ValueError, TypeError):
            names = []
        names = [n for n in names if n not in row["names"]] + list(row["names"])
        values["names"] = json.dumps(names[-MAX_NAMES:])
    return values


@functools.cache  # a few kinds of change: built once each, not per flush
def _update_statement(columns: tuple[str, ...]) -> Any:
    """UPDATE of these columns by row id: counts added to, others set."""
    c = correspondents.c
    return update(correspondents).where(c.id == bindparam("row_id")).values(**{
        name: (getattr(c, name) + bindparam(name)) if name in COUNTS else bindparam(name)
        for name in columns})


def _hold_many(connection: Connection,
               holds: Mapping[str, tuple[str, str, datetime]]) -> None:
    """Remember who sent each held message (by its quarantine id), once."""
    messages = list(holds)
    for start in range(0, len(messages), UPSERT_CHUNK):
        chunk = messages[start:start + UPSERT_CHUNK]
        known = set(connection.execute(_FIND_HOLDS, {"messages": chunk}).scalars())
        new = [{"message": message, "sender": holds[message][0], "via": holds[message][1],
                "created": holds[message][2]} for message in chunk if message not in known]
        if new:
            connection.execute(_INSERT_HOLDS, new)


# -- writing, in the milter process ----------------------------------------------------------


class Learner:
    """Collects what decided messages teach and writes it in batches on a
    thread of its own; also applies releases and labels, and removes rows
    past their retention. Never raises into the caller: a store that is
    down loses the observations of that time (with a log line a minute).

    The thread wakes for a batch, a flush or every FLUSH_EVERY seconds, not
    for each message: a queue woke it (and handed it the GIL) per
    observation, a tenth of the milter's CPU with the writes."""

    def __init__(self, url: str, settings: IdentitySection,
                 org_domains: Callable[[], Iterable[str]] = tuple,
                 memory: Memory | None = None):
        self.url = url
        self.settings = settings
        self.org_domains = org_domains
        self._memory = memory
        # Appended by the milter's threads, taken only by the writer thread.
        self._pending: collections.deque[Observation] = collections.deque()
        self._flushes: collections.deque[threading.Event] = collections.deque()
        self._wake = threading.Event()
        self._closing = False
        self._complained = float("-inf")
        self._purged = float("-inf")
        self._thread = threading.Thread(target=self._run, name="correspondents", daemon=True)
        self._thread.start()

    def observe(self, envelope: Envelope, decision: Decision) -> None:
        """Called for every decided message (cheap: no database here)."""
        try:
            found = observations(envelope, decision, self.org_domains())
        except Exception as exc:  # a learner must never fail a message
            self._complain(f"cannot read what message {envelope.queue_id or '-'} teaches: "
                           f"{type(exc).__name__}: {exc}")
            return
        if not found:
            return
        room = MAX_WAITING - len(self._pending)
        if len(found) > room:
            self._complain("too many observations waiting for the store; dropping some")
            found = found[:max(room, 0)]
        self._pending.extend(found)
        if len(self._pending) >= BATCH:
            self._wake.set()

    def flush(self) -> None:
        """Write what is waiting now (tests, shutdown)."""
        done = threading.Event()
        self._flushes.append(done)
        self._wake.set()
        done.wait(30)

    def close(self) -> None:
        self._closing = True
        self._wake.set()
        self._thread.join(timeout=10)
        if self._memory is not None:
            self._memory.close()

    def _run(self) -> None:
        deadline = time.monotonic() + FLUSH_EVERY
        while True:
            self._wake.wait(max(deadline - time.monotonic(), 0.01))
            self._wake.clear()
            closing = self._closing
            flushes = [self._flushes.popleft() for _ in range(len(self._flushes))]
            due = len(self._pending) >= BATCH or time.monotonic() >= deadline
            if not (closing or flushes or due):
                continue
            self._write([self._pending.popleft() for _ in range(len(self._pending))])
            if closing:
                return
            self._events()
            for done in flushes:
                done.set()
            if due:
                self._purge()
                deadline = time.monotonic() + FLUSH_EVERY

    def _open(self) -> Memory:
        if self._memory is None:
            self._memory = Memory.open(self.url)
        return self._memory

    def _write(self, pending: list[Observation]) -> None:
        if not pending:
            return
        try:
            self._open().add(pending)
        except Exception as exc:
            self._complain(f"cannot record {len(pending)} observation(s): {_line(exc)}")

    def _events(self) -> None:
        try:
            self._open().apply_events()
        except Exception as exc:
            self._complain(f"cannot read releases and labels: {_line(exc)}")

    def _purge(self) -> None:
        if time.monotonic() - self._purged < PURGE_EVERY:
            return
        self._purged = time.monotonic()
        try:
            removed = self._open().purge(self.settings.retention_days)
            if removed:
                log.info("correspondents: %d not seen for %d days forgotten", removed,
                         self.settings.retention_days)
        except Exception as exc:
            self._complain(f"cannot remove old correspondents: {_line(exc)}")

    def _complain(self, problem: str) -> None:
        if time.monotonic() - self._complained >= COMPLAIN_EVERY:
            self._complained = time.monotonic()
            log.warning("correspondents: %s", problem)


def _line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__


# -- reading, in every worker ----------------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    """What the identity check needs of the whole memory, read every
    ``refresh`` seconds: known correspondents' names and domains, and the
    domains of our recipients."""

    names: Mapping[str, frozenset[str]] = field(default_factory=dict)  # name key -> senders
    shown: Mapping[str, str] = field(default_factory=dict)  # name key -> a name as written
    known_domains: frozenset[str] = frozenset()
    recipient_domains: frozenset[str] = frozenset()
    read: bool = False


class MemoryReader:
    """The memory as one worker process sees it. ``sender()`` answers from
    a cache of ``refresh`` seconds, else asks the database on a thread of
    its own and waits at most ``lookup_timeout``; no answer (a database
    away, slow or without the table) gives None, and for the next 30 s no
    message waits for it at all."""

    def __init__(self, url: str, settings: IdentitySection,
                 clock: Callable[[], float] = time.monotonic,
                 open_memory: Callable[[str], Memory] = Memory.open):
        self.url = url
        self.settings = settings
        self.clock = clock
        self._open_memory = open_memory
        self._memory: Memory | None = None
        self._pid = 0
        self._pool: ThreadPoolExecutor | None = None
        self._cache: dict[tuple[str, str], tuple[float, list[Entry]]] = {}
        self._snapshot = Snapshot()
        self._snapshot_at = float("-inf")
        self._refreshing = False
        self._broken_until = float("-inf")
        self._complained = float("-inf")
        self._waiting = 0  # questions asked and not answered yet
        self._lock = threading.Lock()

    def sender(self, sender: str, via: str) -> list[Entry] | None:
        """This sender's rows (one per recipient), or None when the memory
        cannot answer in time."""
        key = (sender, via)
        stamp = self.clock()
        cached = self._cache.get(key)
        if cached is not None and stamp - cached[0] < self.settings.refresh:
            return cached[1]
        found = self._ask(lambda memory: memory.sender(sender, via))
        if found is None:
            return None
        with self._lock:
            if len(self._cache) >= 10_000:
                self._cache.clear()
            self._cache[key] = (stamp, found)
        return found

    def snapshot(self) -> Snapshot:
        """The index as last read; read again in the background when older
        than ``refresh`` (the first message of a process waits for it, at
        most ``lookup_timeout``)."""
        stamp = self.clock()
        if stamp - self._snapshot_at >= self.settings.refresh and not self._refreshing \
                and stamp >= self._broken_until:
            self._refreshing = True
            future = self._executor().submit(self._read_snapshot)
            if not self._snapshot.read:  # its own thread logs why it failed
                with contextlib.suppress(FutureTimeout, Exception):
                    future.result(timeout=self.settings.lookup_timeout)
        return self._snapshot

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        if self._memory is not None:
            self._memory.close()

    def _read_snapshot(self) -> None:
        try:
            memory = self._open()
            self._snapshot = build_snapshot(memory.index_rows(self.settings), self.settings,
                                            now(), memory.recipient_domains())
            self._snapshot_at = self.clock()
        except Exception as exc:
            self._broken(f"cannot read the correspondent index: {_line(exc)}")
            self._snapshot_at = self.clock()
        finally:
            self._refreshing = False

    def _ask(self, question: Callable[[Memory], list[Entry]]) -> list[Entry] | None:
        if self.clock() < self._broken_until:
            return None
        with self._lock:
            if self._waiting >= ASKING:  # earlier questions still hang: do not queue more
                return None
            self._waiting += 1
        future = self._executor().submit(lambda: question(self._open()))
        future.add_done_callback(self._answered)
        try:
            return future.result(timeout=self.settings.lookup_timeout)
        except FutureTimeout:
            self._broken(f"no answer within {self.settings.lookup_timeout:g}s; judging "
                         "without the correspondent memory for now")
        except (SQLAlchemyError, OSError, Exception) as exc:
            self._broken(f"cannot read correspondents: {_line(exc)}")
        return None

    def _answered(self, _future: object) -> None:
        with self._lock:
            self._waiting -= 1

    def _broken(self, problem: str) -> None:
        self._broken_until = self.clock() + BREAKER_SECONDS
        if self.clock() - self._complained >= COMPLAIN_EVERY:
            self._complained = self.clock()
            log.warning("identity: %s", problem)

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None or self._pid != os.getpid():  # a new process: its own
            self._pool = ThreadPoolExecutor(ASKING + 1, thread_name_prefix="correspondents")
            self._memory = None
            self._pid = os.getpid()
        return self._pool

    def _open(self) -> Memory:
        if self._memory is None:
            self._memory = self._open_memory(self.url)
        return self._memory


def build_snapshot(rows: Iterable[Entry], settings: IdentitySection, at: datetime,
                   our_domains: Iterable[str] | None = None) -> Snapshot:
    """The name and domain index from rows. A name counts when a known
    correspondent used it, it has two words or more, and at most two
    senders' domains use it (more: a role name such as "Customer Service").
    Our recipients' domains are the rows' unless given."""
    from gateway.confusables import name_keys, name_tokens
    from gateway.lookalike import ROLE_WORDS, registrable

    senders: dict[str, set[str]] = {}
    shown: dict[str, str] = {}
    known_domains: set[str] = set()
    recipient_domains: set[str] = set(our_domains or ())
    for entry in rows:
        if our_domains is None:
            recipient_domains.add(entry.recipient.rpartition("@")[2])
        if not entry.known(settings, at):
            continue
        known_domains.add(registrable(entry.sender.rpartition("@")[2]))
        for name in entry.names:
            tokens = name_tokens(name)
            if len(tokens) < 2 or all(t in ROLE_WORDS for t in tokens) or \
                    sum(len(t) for t in tokens) < 6:
                continue
            for key in name_keys(name):
                senders.setdefault(key, set()).add(entry.sender)
                shown.setdefault(key, name)
    names = {}
    for key, found in senders.items():
        if len({s.rpartition("@")[2] for s in found}) <= 2:
            names[key] = frozenset(found)
    known_domains.discard("")
    recipient_domains.discard("")
    return Snapshot(names, {k: shown[k] for k in names}, frozenset(known_domains),
                    frozenset(recipient_domains), True)


def memory_url(url: str) -> str | None:
    """The store's URL when it can hold the memory (a database), else None."""
    return url if url.startswith(("sqlite:///", "postgresql://", "postgres://")) else None


def learner_for(config: Any) -> Learner | None:
    """The milter's learner, when the identity check runs with a store."""
    checks = config.pipeline.checks
    url = memory_url(config.quarantine.url)
    if url is None or "identity" not in checks:
        return None
    ours = [d.lower() for d in config.identity.org_domains]
    return Learner(url, config.identity, org_domains=lambda: ours)


def known_to_any(entries: Iterable[Entry], recipients_: Iterable[str],
                 settings: IdentitySection, at: datetime) -> list[Entry]:
    """The rows that make the sender a known correspondent of one of the
    recipients (none if any of its mail to anyone was labelled spam)."""
    rows = list(entries)
    if any(row.spam for row in rows):
        return []
    wanted = {_address(r) for r in recipients_}
    return [row for row in rows if row.recipient in wanted and row.known(settings, at)]

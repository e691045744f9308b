"""Autolearning: training labels from evidence that is not the classifier's own.

A filter that learns from its own verdicts learns its own mistakes (the
peers' users report it: mailcow#1537, rspamd#5028). Here a message is a
*candidate* only on other evidence:

- ham: mail that was accepted, with no check failing, whose author is
  authenticated (the DMARC check found DKIM or SPF aligned with the From
  domain) and known: a correspondent the identity check remembers
  (``KNOWN_CORRESPONDENT``) or an allow-listed sender (``ALLOWLIST_SENDER``);
  or mail from an allow-listed client IP (``ALLOWLIST_IP``);
- spam: mail held or rejected on evidence other than the classifier: a
  symbol that forced the action (a virus, a block list, a DNS block list,
  DMARC's reject, a rule), or a score that reaches the quarantine threshold
  without the BAYES_* band and without meta rules that read it.

Candidates wait in the feedback queue (source ``autolearn``) for
``[classifier] autolearn_delay_days``. With ``autolearn = "review"`` an admin
accepts them in bulk (``gateway feedback accept --autolearn``); with ``"on"``
the node that runs the purge accepts each once its delay has passed, unless
someone objected meanwhile: a label the other way, a release of held "spam",
or any label a person gave the same message (a person's label always wins,
and an autolearned label never replaces one). A message is learned once
(the training set holds one row per body); one sender has at most
``autolearn_per_sender`` candidates (the authenticated domain for ham, the
client's network for spam); every learned row says why (its note) and which
candidate it came from (its source).
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, bindparam, func, insert, or_, select, update
from sqlalchemy.exc import SQLAlchemyError

from gateway.classifier.corpus import content_key
from gateway.classifier.trainingset import TrainingSet
from gateway.config import Config
from gateway.db import first_line, utc
from gateway.facts import DmarcFacts, IdentityFacts
from gateway.mail import decoded_header
from gateway.message import Envelope
from gateway.quarantine.schema import events, feedback, feedback_mail, messages, training_messages
from gateway.quarantine.store import QuarantineStore
from gateway.ruleset import Ruleset
from gateway.verdict import Verdict

log = logging.getLogger("gateway.autolearn")

SOURCE = "autolearn"
WHO = "autolearn"
# Symbols that say a person trusts the sender: the identity check's
# correspondent memory, the managed and configured allow lists.
KNOWN_SENDER = ("KNOWN_CORRESPONDENT", "ALLOWLIST_SENDER")
TRUSTED_CLIENT = "ALLOWLIST_IP"
# Candidates waiting in all, at most: past it new ones are dropped (and said).
MAX_PENDING = 5000
QUEUE = 64
BATCH = 32  # candidates written in one transaction, at most
GATHER = 1.0  # seconds the writer waits for more after a candidate


@dataclass(frozen=True)
class Candidate:
    label: str  # ham, spam
    why: str  # the evidence, for the note and the trail
    sender_key: str  # what the per-sender cap counts


def bayes_derived(metas: Iterable[Any]) -> frozenset[str]:
    """Meta rules that read a BAYES_* symbol: evidence of the classifier too."""
    return frozenset(m.name for m in metas if any(n.startswith("BAYES_") for n in m.names))


def candidate(verdict: Verdict, envelope: Envelope, quarantine_threshold: float,
              derived: frozenset[str] = frozenset()) -> Candidate | None:
    """The autolearn candidate this verdict makes, or None."""
    names = {s.name for s in verdict.symbols}
    if verdict.action == "accept":
        return _ham(verdict, envelope, names)
    if verdict.action in ("quarantine", "reject"):
        return _spam(verdict, envelope, quarantine_threshold, derived)
    return None


def _ham(verdict: Verdict, envelope: Envelope, names: set[str]) -> Candidate | None:
    trusted_client = TRUSTED_CLIENT in names and bool(envelope.client_ip)
    known = [n for n in KNOWN_SENDER if n in names]
    if verdict.failed_checks or not (trusted_client or known):
        return None  # most accepted mail: no facts read
    identity = IdentityFacts.of(verdict.facts)
    if identity is not None and (identity.imitation or identity.direction != "inbound"):
        return None  # someone imitated, or our own user writing out: not the mail to learn
    if trusted_client:
        return Candidate("ham", f"accepted from allow-listed client {envelope.client_ip}",
                         f"ip:{envelope.client_ip}")
    dmarc = DmarcFacts.of(verdict.facts)
    if not known or dmarc is None or dmarc.result != "pass" or not dmarc.from_domain:
        return None
    if not (dmarc.dkim_aligned or dmarc.spf_aligned):
        return None
    how = f"DKIM {dmarc.dkim_domain}" if dmarc.dkim_aligned else "SPF"
    domain = dmarc.from_domain.lower()
    return Candidate("ham", f"accepted; {domain} authenticated (aligned {how}); "
                            f"{', '.join(known)}", f"domain:{domain}")


def _spam(verdict: Verdict, envelope: Envelope, quarantine_threshold: float,
          derived: frozenset[str]) -> Candidate | None:
    def classifier(name: str) -> bool:
        return name.startswith("BAYES_") or name in derived

    if verdict.forced_by and not classifier(verdict.forced_by):
        return Candidate("spam", f"{verdict.action}: forced by {verdict.forced_by}",
                         _network(envelope.client_ip))
    others = [s for s in verdict.symbols if not classifier(s.name)]
    score = sum(s.score for s in others)
    if verdict.forced_by is None and score >= quarantine_threshold:
        top = sorted((s for s in others if s.score > 0), key=lambda s: -s.score)[:4]
        return Candidate("spam", f"{verdict.action}: {score:g} without the classifier "
                                 f"(>= {quarantine_threshold:g}): "
                                 + ", ".join(f"{s.name} {s.score:g}" for s in top),
                         _network(envelope.client_ip))
    return None


def _network(ip: str | None) -> str:
    """The client's /24 (IPv4) or /48 (IPv6): one spam source's addresses."""
    try:
        address = ipaddress.ip_address(ip or "")
    except ValueError:
        return "net:unknown"
    prefix = 24 if address.version == 4 else 48
    return f"net:{ipaddress.ip_network(f'{address}/{prefix}', strict=False)}"


# -- the queue ----------------------------------------------------------------------------


def queue_candidate(engine: Any, found: Candidate, raw: bytes, subject: str | None,
                    quarantine_id: str | None, delay_days: float, per_sender: int,
                    at: datetime | None = None) -> str:
    """Put one candidate in the feedback queue: 'queued', or why not
    ('known': this message is queued or learned already; 'capped': its
    sender has its share; 'full': MAX_PENDING candidates wait)."""
    with engine.begin() as connection:
        return _queue_one(connection, found, raw, subject, quarantine_id, delay_days,
                          per_sender, at or datetime.now(UTC))


def queue_candidates(engine: Any, offered: list[Offered], delay_days: float,
                     per_sender: int) -> list[str]:
    """Several candidates in one transaction (one commit for the lot, not
    one each), each decided as queue_candidate decides it."""
    at = datetime.now(UTC)
    with engine.begin() as connection:
        return [_queue_one(connection, o.found, o.raw, o.subject, o.quarantine_id,
                           delay_days, per_sender, at) for o in offered]


# The queue's statements, built once (each build costs its construction and
# its cache key again, per candidate).
_FROM_AUTOLEARN = and_(feedback.c.source == SOURCE, feedback.c.state.in_(("pending", "accepted")))
_QUEUED = select(feedback.c.id).where(feedback.c.training_key == bindparam("key")).limit(1)
_LEARNED = select(training_messages.c.id).where(training_messages.c.key == bindparam("key"))
_PER_SENDER = select(func.count()).select_from(feedback).where(
    and_(_FROM_AUTOLEARN, feedback.c.sender_key == bindparam("sender_key")))
_PENDING = select(func.count()).select_from(feedback).where(
    and_(feedback.c.source == SOURCE, feedback.c.state == "pending"))


def _queue_one(connection: Any, found: Candidate, raw: bytes, subject: str | None,
               quarantine_id: str | None, delay_days: float, per_sender: int,
               at: datetime) -> str:
    key = content_key(raw)
    if connection.execute(_QUEUED, {"key": key}).first() is not None or \
            connection.execute(_LEARNED, {"key": key}).first() is not None:
        return "known"
    if connection.execute(_PER_SENDER, {"sender_key": found.sender_key}).scalar_one() \
            >= per_sender:
        return "capped"
    if connection.execute(_PENDING).scalar_one() >= MAX_PENDING:
        return "full"
    identifier = connection.execute(insert(feedback).values(
        message=quarantine_id or "", label=found.label, source=SOURCE, who=WHO,
        note=found.why[:1000], created=at, state="pending", review_note="",
        training_key=key, sender_key=found.sender_key[:255],
        mail_subject=(subject or "")[:500],
        due=at + timedelta(days=delay_days))).inserted_primary_key[0]
    if quarantine_id is None:
        connection.execute(insert(feedback_mail), {"feedback": identifier, "raw": raw})
    else:
        connection.execute(insert(events), {
            "message": quarantine_id, "time": at, "actor": WHO,
            "action": f"autolearn-{found.label}",
            "detail": f"feedback #{identifier}: {found.why}"[:1000]})
    return "queued"


@dataclass(frozen=True)
class Offered:
    """A candidate waiting for the writer thread, with what it writes."""

    found: Candidate
    raw: bytes
    subject: str | None
    quarantine_id: str | None


class Autolearner:
    """The milter's side: candidates of each decided message, written to the
    feedback queue by a thread of its own (a message never waits for it; a
    candidate is dropped, and counted, when the thread falls behind)."""

    def __init__(self, config: Config, store: Callable[[], Any], rules: Ruleset):
        """``rules``: the configuration generation's (gateway.service)."""
        self.settings = config.classifier
        self.threshold = rules.quarantine
        self.derived = bayes_derived(rules.metas)
        self._store = store
        self._queue: queue.Queue | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.dropped = 0
        self.outcomes: dict[str, int] = {}
        self._complained = 0.0

    @property
    def enabled(self) -> bool:
        return self.settings.autolearn != "off"

    def offer(self, envelope: Envelope, raw: Callable[[], bytes], verdict: Verdict,
              quarantine_id: str | None) -> Candidate | None:
        """Queue this message if it is a candidate (``raw`` gives its bytes,
        read only then); returns the candidate."""
        if not self.enabled:
            return None
        found = candidate(verdict, envelope, self.threshold, self.derived)
        if found is None:
            return None
        try:
            data = raw()
        except OSError as exc:  # a spilled message whose file went away
            self._complain(f"cannot read message {envelope.queue_id or '-'}: {exc}")
            return None
        with self._lock:
            if self._queue is None:
                self._queue = queue.Queue(QUEUE)
                self._thread = threading.Thread(target=self._write, args=(self._queue,),
                                                name="autolearn", daemon=True)
                self._thread.start()
        try:
            self._queue.put_nowait(Offered(found, data, _subject(data), quarantine_id))
        except queue.Full:
            self.dropped += 1
            self._complain(f"{self.dropped} autolearn candidates dropped so far: the store "
                           "is slower than the mail")
        return found

    def _write(self, items: queue.Queue) -> None:
        while True:
            batch = self._gather(items)
            offered = [item for item in batch if item is not None]
            try:
                if offered:
                    self._write_batch(offered)
            finally:
                for _ in batch:
                    items.task_done()
            if len(offered) < len(batch):  # None: closing
                return

    def _gather(self, items: queue.Queue) -> list[Offered | None]:
        """The next candidate and those offered within GATHER seconds after
        it (up to BATCH): written in one transaction. A candidate waits days
        for its delay anyway."""
        batch = [items.get()]
        deadline = time.monotonic() + GATHER
        while batch[-1] is not None and len(batch) < BATCH:
            try:
                batch.append(items.get(timeout=max(deadline - time.monotonic(), 0.0)))
            except queue.Empty:
                break
        return batch

    def _write_batch(self, offered: list[Offered]) -> None:
        """In one transaction; if it fails, each candidate in one of its own,
        so that a bad one costs only itself."""
        settings = self.settings
        try:
            outcomes = queue_candidates(self._store().engine, offered,
                                        settings.autolearn_delay_days,
                                        settings.autolearn_per_sender)
        except Exception as exc:
            if len(offered) == 1:
                self._failed(exc)
                return
            outcomes = []
            for one in offered:
                try:
                    outcomes.append(queue_candidate(
                        self._store().engine, one.found, one.raw, one.subject,
                        one.quarantine_id, settings.autolearn_delay_days,
                        settings.autolearn_per_sender))
                except Exception as alone:  # a candidate is never worth the thread
                    self._failed(alone)
        for outcome in outcomes:
            self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
        if "full" in outcomes:
            self._complain(f"{MAX_PENDING} autolearn candidates wait already: accept or "
                           "reject them (gateway feedback list --autolearn)")

    def _failed(self, exc: Exception) -> None:
        what = first_line(exc) if isinstance(exc, SQLAlchemyError) else \
            f"{type(exc).__name__}: {exc}"
        self._complain(f"cannot queue a candidate: {what}")

    def flush(self, timeout: float = 5.0) -> None:
        """Wait until what was offered is written (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        while self._queue is not None and self._queue.unfinished_tasks and \
                time.monotonic() < deadline:
            time.sleep(0.01)

    def close(self) -> None:
        if self._queue is not None and self._thread is not None:
            with contextlib.suppress(queue.Full):
                self._queue.put(None, timeout=1)
            self._thread.join(timeout=5)

    def _complain(self, problem: str) -> None:
        if time.monotonic() - self._complained > 60:
            self._complained = time.monotonic()
            log.warning("autolearn: %s", problem)


def _subject(raw: bytes) -> str | None:

    head = raw.split(b"\n\n", 1)[0].split(b"\r\n\r\n", 1)[0][:65536]
    for line in head.splitlines():
        if line[:8].lower() == b"subject:":
            return decoded_header(line[8:].decode("latin-1").strip())[:500]
    return None


# -- learning them ------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    learned: int = 0
    objected: int = 0  # a person said otherwise, or released held "spam"
    superseded: int = 0  # a person's label, or the same message learned already
    gone: int = 0  # the message is no longer kept
    waiting: int = 0  # not due yet

    def describe(self) -> str:
        return (f"{self.learned} learned, {self.objected} objected to, {self.superseded} "
                f"superseded by a person's label, {self.gone} no longer kept, "
                f"{self.waiting} still waiting")


def accept_candidates(quarantine_url: str, training_set_url: str, reviewer: str,
                      ids: Iterable[int] | None = None, at: datetime | None = None,
                      limit: int = 1000) -> Outcome:
    """Learn pending autolearn candidates: those whose delay has passed (or
    exactly ``ids``, an admin's choice, due or not), each unless objected to."""
    at = at or datetime.now(UTC)
    store = QuarantineStore(quarantine_url)
    training = TrainingSet(training_set_url)
    counts = {"learned": 0, "objected": 0, "superseded": 0, "gone": 0, "waiting": 0}
    try:
        pending = and_(feedback.c.source == SOURCE, feedback.c.state == "pending")
        query = select(feedback).where(pending).order_by(feedback.c.id).limit(limit)
        if ids is not None:
            query = query.where(feedback.c.id.in_(list(ids)))
        with store.engine.connect() as connection:
            rows = connection.execute(query).all()
        for row in rows:
            if ids is None and row.due is not None and utc(row.due) > at:
                counts["waiting"] += 1
                continue
            verdict, why = _judge(store.engine, training.engine, row, feedback,
                                  training_messages, messages)
            raw = None
            if verdict == "learn":
                with store.engine.connect() as connection:
                    raw = connection.execute(select(feedback_mail.c.raw).where(
                        feedback_mail.c.feedback == row.id)).scalar()
                if raw is None and row.message:
                    raw = store.raw(row.message)
                if raw is None:
                    verdict, why = "gone", "the message is no longer kept"
            if verdict == "learn" and raw is not None:
                source = f"autolearn feedback #{row.id}" + (
                    f" (quarantine:{row.message})" if row.message else "")
                outcome = training.learn(bytes(raw), row.label, source, WHO,
                                         row.message or None, row.note, replace=False)
                if outcome != "added":  # learned meanwhile: never twice, never over a person
                    verdict, why = "superseded", "learned meanwhile"
                else:
                    why = f"learned as {row.label}"
            state = "accepted" if verdict == "learn" else "rejected"
            counts[{"learn": "learned"}.get(verdict, verdict)] += 1
            with store.engine.begin() as connection:
                connection.execute(update(feedback).where(and_(
                    feedback.c.id == row.id, feedback.c.state == "pending")).values(
                    state=state, reviewer=reviewer, reviewed=at, review_note=why))
                connection.execute(feedback_mail.delete().where(
                    feedback_mail.c.feedback == row.id))
        with store.engine.begin() as connection:  # rejected elsewhere (the console)
            connection.execute(feedback_mail.delete().where(feedback_mail.c.feedback.in_(
                select(feedback.c.id).where(feedback.c.state != "pending"))))
    finally:
        training.close()
        store.close()
    return Outcome(**counts)


def _judge(engine: Any, training_engine: Any, row: Any, feedback: Any, training_messages: Any,
           messages: Any) -> tuple[str, str]:
    """('learn', '') or (objected | superseded, why) for one pending candidate."""
    with training_engine.connect() as connection:
        stored = connection.execute(select(training_messages.c.label, training_messages.c.who)
                                    .where(training_messages.c.key == row.training_key)).first()
    if stored is not None:
        if stored.label != row.label:
            return "objected", f"{stored.who} labelled it {stored.label}"
        return "superseded", f"learned already (by {stored.who})"
    with engine.connect() as connection:
        others = connection.execute(select(feedback.c.label, feedback.c.who, feedback.c.state)
                                    .where(and_(feedback.c.id != row.id, or_(
                                        feedback.c.training_key == row.training_key,
                                        and_(feedback.c.message == row.message,
                                             feedback.c.message != ""))))).all()
        released = row.message and connection.execute(
            select(messages.c.state).where(messages.c.id == row.message)).scalar() == "released"
    for other in others:
        if other.state == "rejected":
            continue
        if other.label != row.label:
            return "objected", f"{other.who} labelled it {other.label}"
        return "superseded", f"{other.who} labelled it {other.label} too"
    if row.label == "spam" and released:
        return "objected", "released from the quarantine"
    return "learn", ""


def pending_counts(engine: Any, at: datetime | None = None) -> dict[str, int]:
    """Autolearn candidates waiting, per label, and how many are due."""

    at = at or datetime.now(UTC)
    counts = {"ham": 0, "spam": 0, "due": 0}
    with engine.connect() as connection:
        rows = connection.execute(select(feedback.c.label, feedback.c.due).where(and_(
            feedback.c.source == SOURCE, feedback.c.state == "pending"))).all()
    for label, due in rows:
        counts[label] = counts.get(label, 0) + 1
        counts["due"] += due is None or utc(due) <= at
    return counts

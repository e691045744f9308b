"""Near-duplicates: mail like spam people confirmed, and campaigns.

Two findings, from the fuzzy hashes of :mod:`gateway.fuzzyhash` (TLSH of
the normalised text and of the HTML structure; an exact hash for short
texts):

- **FUZZY_SPAM**: the message is within ``[fuzzy] threshold`` of a learned
  spam hash. Spam is learned from the learned training set (``gateway learn
  --spam``, the console's accepted feedback: every label goes through
  :class:`gateway.classifier.trainingset.TrainingSet`); ham from the same
  and from releases. A message near both a spam and a ham hash does not
  fire, and learning ham retires the spam hashes it matches: newsletters
  and transactional mail that look like a spam run are spared once someone
  releases one.
- **BULK_CAMPAIGN**: the same near-duplicate from senders without a
  DKIM-authenticated history reached ``campaign_recipients`` recipients
  within ``campaign_window``, on whichever node (each copy is recorded in
  the store's database, written in batches; a worker sees the others'
  copies within ``refresh`` seconds).

Mail DKIM-signed (aligned with From) by a sender with a history of accepted
mail (:mod:`gateway.senders`) gets neither: transactional mail from large
senders is near-identical by design. The learned hashes are bounded
(``max_hashes``, least recently matched removed first) and expire when not
matched for ``expire``. Without a store the check finds nothing.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
from sqlalchemy import and_, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from gateway.checks import Check, CheckContext
from gateway.config import Config, FuzzySection
from gateway.db import first_line
from gateway.durations import seconds
from gateway.facts import DmarcFacts, IdentityFacts
from gateway.fuzzyhash import TLSH_BYTES, Digest, TlshIndex, digests, tlsh_rows
from gateway.message import Message
from gateway.quarantine.schema import fuzzy_hashes, fuzzy_seen
from gateway.ruleset import Ruleset
from gateway.symbols import Report

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine

log = logging.getLogger("gateway.checks.fuzzy")

MAX_RECENT = 100_000  # recent copies a worker keeps for campaigns
# Each reading of the recent copies fetches the rows after the newest id a
# worker holds, and this many ids before it again: PostgreSQL hands out ids
# before a transaction commits, so another node's batch can land below ids
# already read.
RECENT_OVERLAP = 1_000
# The domains with a DKIM-authenticated history are read in full this often
# (a domain past its retention leaves then); in between, only the domains
# seen since the last reading, and KNOWN_OVERLAP before it (another node's
# clock, a write still in flight).
KNOWN_FULL_READ = timedelta(minutes=10)
KNOWN_OVERLAP = timedelta(minutes=5)
WRITE_BATCH = 200
COMPLAIN_EVERY = 60.0


def message_digests(message: Message, settings: FuzzySection) -> list[Digest]:
    from gateway.checks.view import view_of

    texts = view_of(message).texts
    plain = "\n".join(t.text for t in texts)
    html = "\n".join(t.raw for t in texts if t.content_type == "text/html")
    return digests(plain, html, settings.short_text)


def raw_digests(raw: bytes, settings: FuzzySection) -> list[Digest]:
    return message_digests(Message.from_bytes(raw), settings)


def utc_now() -> datetime:
    return datetime.now(UTC)


# -- learning -------------------------------------------------------------------------------------


def learn(engine: Engine, raw: bytes, label: str, source: str,
          settings: FuzzySection | None = None, at: datetime | None = None) -> int:
    """Record the message's hashes under ``label`` (spam or ham); ham retires
    the spam hashes it matches. The number of hashes recorded."""
    settings = settings or FuzzySection()
    at = at or utc_now()
    found = raw_digests(raw, settings)
    with engine.begin() as connection:
        for digest in found:
            _put(connection, digest, label, source, at)
            # The other label's hash of the same digest no longer counts.
            other = "ham" if label == "spam" else "spam"
            connection.execute(update(fuzzy_hashes).where(and_(
                fuzzy_hashes.c.kind == digest.kind, fuzzy_hashes.c.digest == digest.value,
                fuzzy_hashes.c.label == other, fuzzy_hashes.c.retired.is_(None))).values(
                retired=at))
        if label == "ham":
            _retire_near(connection, found, settings.threshold, at)
        _bound(connection, settings, at)
    return len(found)


def _put(connection: Connection, digest: Digest, label: str, source: str,
         at: datetime) -> None:
    changed = connection.execute(update(fuzzy_hashes).where(and_(
        fuzzy_hashes.c.kind == digest.kind, fuzzy_hashes.c.digest == digest.value,
        fuzzy_hashes.c.label == label)).values(retired=None, source=source[:500],
                                               last_hit=at)).rowcount
    if changed:
        return
    try:
        with connection.begin_nested():
            connection.execute(insert(fuzzy_hashes), {
                "kind": digest.kind, "digest": digest.value, "label": label,
                "source": source[:500], "created": at, "last_hit": at, "hits": 0,
                "retired": None})
    except IntegrityError:
        pass  # learned at the same moment elsewhere


def _retire_near(connection: Connection, found: list[Digest], threshold: int,
                 at: datetime) -> None:
    """Spam hashes near a ham message are retired: that look is not spam's."""
    for digest in found:
        if digest.kind == "exact":
            continue
        rows = connection.execute(select(fuzzy_hashes.c.id, fuzzy_hashes.c.digest).where(and_(
            fuzzy_hashes.c.kind == digest.kind, fuzzy_hashes.c.label == "spam",
            fuzzy_hashes.c.retired.is_(None)))).all()
        index = TlshIndex((row.digest, row.id) for row in rows)
        near = [identifier for _distance, identifier in index.near(digest.value, threshold)]
        if near:
            connection.execute(update(fuzzy_hashes).where(fuzzy_hashes.c.id.in_(near)).values(
                retired=at))


def _bound(connection: Connection, settings: FuzzySection, at: datetime) -> None:
    """Expired hashes go, and the least recently matched past max_hashes."""
    cutoff = at - timedelta(seconds=seconds(settings.expire))
    connection.execute(delete(fuzzy_hashes).where(
        func.coalesce(fuzzy_hashes.c.last_hit, fuzzy_hashes.c.created) < cutoff))
    total = connection.execute(select(func.count()).select_from(fuzzy_hashes)).scalar_one()
    if total > settings.max_hashes:
        oldest = select(fuzzy_hashes.c.id).order_by(
            func.coalesce(fuzzy_hashes.c.last_hit, fuzzy_hashes.c.created)).limit(
            total - settings.max_hashes)
        ids = [row.id for row in connection.execute(oldest)]
        connection.execute(delete(fuzzy_hashes).where(fuzzy_hashes.c.id.in_(ids)))


def learn_quietly(engine: Engine, raw: bytes, label: str, source: str) -> None:
    """For the labelling paths: a label is stored even when hashing fails."""
    try:
        learn(engine, raw, label, source)
    except Exception as exc:
        log.warning("fuzzy: could not record the hashes of %s (%s): %s", source[:80], label,
                    exc)


# -- what a worker keeps ------------------------------------------------------------------------


@dataclass
class _Learned:
    spam: dict[str, TlshIndex] = field(default_factory=dict)  # kind -> index of (id, source)
    ham: dict[str, TlshIndex] = field(default_factory=dict)
    exact_spam: dict[str, tuple[int, str]] = field(default_factory=dict)
    exact_ham: set[str] = field(default_factory=set)
    recent: dict[str, TlshIndex] = field(default_factory=dict)  # kind -> (recipients)
    recent_exact: dict[str, int] = field(default_factory=dict)
    known: frozenset[str] = frozenset()  # domains with a DKIM-authenticated history


_EPOCH = datetime(1970, 1, 1)


def _epoch(when: datetime) -> float:
    """Seconds since the epoch of a time read from the store (SQLite's
    naive times are UTC)."""
    return when.timestamp() if when.tzinfo else (when - _EPOCH).total_seconds()


@dataclass(frozen=True)
class _Copies:
    """One kind's recent copies as columns: their ids, when each was seen
    (epoch seconds), the recipients it reached, and its digest (a row of
    TLSH bytes, or an exact hash)."""

    ids: npt.NDArray[np.int64]
    seen: npt.NDArray[np.float64]
    recipients: npt.NDArray[np.int64]
    digests: np.ndarray

    @classmethod
    def empty(cls, kind: str) -> _Copies:
        digests = (np.empty(0, dtype="S40") if kind == "exact"
                   else np.empty((0, TLSH_BYTES), dtype=np.uint8))
        return cls(np.empty(0, dtype=np.int64), np.empty(0), np.empty(0, dtype=np.int64),
                   digests)

    @classmethod
    def of(cls, kind: str, rows: list[tuple[int, float, int, str]]) -> _Copies:
        """From (id, seen, recipients, digest) rows; malformed digests are left out."""
        if kind == "exact":
            rows = [r for r in rows if len(r[3]) <= 40 and r[3].isascii()]
            digests = np.array([r[3].encode() for r in rows], dtype="S40")
        else:
            digests, at = tlsh_rows([r[3] for r in rows])
            rows = [rows[i] for i in at]
        return cls(np.array([r[0] for r in rows], dtype=np.int64),
                   np.array([r[1] for r in rows], dtype=np.float64),
                   np.array([r[2] for r in rows], dtype=np.int64), digests)

    def __len__(self) -> int:
        return len(self.ids)

    def __add__(self, other: _Copies) -> _Copies:
        return _Copies(np.concatenate((self.ids, other.ids)),
                       np.concatenate((self.seen, other.seen)),
                       np.concatenate((self.recipients, other.recipients)),
                       np.concatenate((self.digests, other.digests)))

    def where(self, keep: npt.NDArray[np.bool_]) -> _Copies:
        return _Copies(self.ids[keep], self.seen[keep], self.recipients[keep],
                       self.digests[keep])


class _RecentCopies:
    """The copies of the campaign window a process holds, read from the
    store a little at a time: each reading fetches only the rows after the
    newest it holds (and RECENT_OVERLAP ids before it), so a busy site's
    100,000 copies are read once, not again at every refresh; copies leave
    as the window passes them, the oldest first past MAX_RECENT."""

    KINDS = ("text", "html", "exact")

    def __init__(self) -> None:
        self._lock = threading.Lock()  # the reading thread, and refresh_now's callers
        self.copies = {kind: _Copies.empty(kind) for kind in self.KINDS}
        self.indexes: dict[str, TlshIndex] = {"text": TlshIndex(), "html": TlshIndex()}
        self.exact: dict[str, int] = {}

    def read(self, connection: Connection, since: datetime) -> None:
        with self._lock:
            self._read(connection, since)

    def _read(self, connection: Connection, since: datetime) -> None:
        # What the window has passed leaves first: once every copy has, the
        # store may have deleted them all, and SQLite then hands out their
        # ids again from 1; holding none, the reading starts over.
        cutoff = since.timestamp()
        expired = self._within(self.copies, cutoff)
        held = [c for c in expired.values() if len(c)]
        query = select(fuzzy_seen.c.id, fuzzy_seen.c.kind, fuzzy_seen.c.digest,
                       fuzzy_seen.c.recipients, fuzzy_seen.c.seen).where(
            fuzzy_seen.c.seen > since)
        newest = int(max(c.ids.max() for c in held)) if held else None
        again: set[tuple[int, float]] = set()  # (id, seen) of the held copies read again
        if newest is not None:
            floor = newest - RECENT_OVERLAP
            query = query.where(fuzzy_seen.c.id > floor)
            for c in held:
                recent = c.ids > floor
                again.update(zip(c.ids[recent].tolist(), c.seen[recent].tolist(), strict=True))
        rows = connection.execute(query.order_by(fuzzy_seen.c.id.desc()).limit(
            MAX_RECENT)).all()
        fresh: dict[str, list[tuple[int, float, int, str]]] = {}
        for row in reversed(rows):
            seen = _epoch(row.seen)
            if row.kind in self.copies and (newest is None or row.id > newest or
                                            (row.id, seen) not in again):
                fresh.setdefault(row.kind, []).append((row.id, seen, row.recipients,
                                                       row.digest))
        copies = {kind: kept + _Copies.of(kind, fresh[kind]) if kind in fresh else kept
                  for kind, kept in expired.items()}
        copies = self._within(copies, cutoff)
        changed = [kind for kind in self.KINDS
                   if len(copies[kind]) != len(self.copies[kind]) or kind in fresh]
        self.copies = copies
        for kind in changed:
            kept = copies[kind]
            if kind == "exact":
                counts: dict[str, int] = {}
                for digest, reached in zip(kept.digests.tolist(), kept.recipients.tolist(),
                                           strict=True):
                    key = digest.decode()
                    counts[key] = counts.get(key, 0) + reached
                self.exact = counts
            else:
                self.indexes[kind] = TlshIndex.from_rows(kept.digests,
                                                         kept.recipients.tolist())

    @staticmethod
    def _within(copies: dict[str, _Copies], since: float) -> dict[str, _Copies]:
        """The copies seen after ``since``, the newest MAX_RECENT of them."""
        copies = {kind: c.where(c.seen > since) if len(c) and c.seen.min() <= since else c
                  for kind, c in copies.items()}
        total = sum(len(c) for c in copies.values())
        if total > MAX_RECENT:
            ids = np.concatenate([c.ids for c in copies.values()])
            lowest_kept = np.partition(ids, total - MAX_RECENT)[total - MAX_RECENT]
            copies = {kind: c.where(c.ids >= lowest_kept) for kind, c in copies.items()}
        return copies


class _KnownSenders:
    """The domains with a DKIM-authenticated history as a worker holds them:
    read in full every KNOWN_FULL_READ, and at each refresh in between only
    those seen since the last (a few, not every such domain every 5 s)."""

    def __init__(self) -> None:
        self.domains: frozenset[str] = frozenset()
        self._full_at: datetime | None = None
        self._read_at: datetime | None = None

    def read(self, engine: Engine, clock: Callable[[], datetime]) -> frozenset[str]:
        from gateway.senders import MAX_DOMAINS, SenderHistory

        history = SenderHistory(lambda: engine, clock)
        started = clock()
        if self._full_at is None or self._read_at is None or \
                started - self._full_at >= KNOWN_FULL_READ:
            self.domains = frozenset(history.all_domains())
            self._full_at = started
        else:
            fresh = history.all_domains(since=self._read_at - KNOWN_OVERLAP) - self.domains
            if fresh and len(self.domains) + len(fresh) <= MAX_DOMAINS:
                self.domains = self.domains | fresh
        self._read_at = started
        return self.domains


class FuzzyMemory:
    """The learned hashes, the recent copies and the known senders as this
    process last read them (every ``refresh`` seconds, on a thread of its
    own), and the copies and hits to write back."""

    def __init__(self, url: str, settings: FuzzySection, node: str,
                 clock: Callable[[], datetime] = utc_now, first_wait: float = 5.0):
        self.url = url
        self.settings = settings
        self.node = node[:255]
        self.clock = clock
        self.first_wait = first_wait
        self.window = timedelta(seconds=seconds(settings.campaign_window))
        self.current = _Learned()
        self._recent = _RecentCopies()
        self._known = _KnownSenders()
        self._learned_signature: tuple[Any, ...] | None = None
        self._engine: Engine | None = None
        self._seen: queue.Queue[dict[str, Any]] = queue.Queue(10_000)
        self._hits: dict[int, int] = {}
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._complained = float("-inf")
        self.dropped = 0

    def snapshot(self) -> _Learned:
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._keep_reading,
                                                    name="fuzzy-memory", daemon=True)
                    self._thread.start()
        if not self._ready.is_set() and not self._ready.wait(self.first_wait):
            self._complain(f"the store did not answer within {self.first_wait:g}s; checking "
                           "without the learned hashes for now")
        return self.current

    def seen(self, digest: Digest, recipients: int, sender: str) -> None:
        try:
            self._seen.put_nowait({"kind": digest.kind, "digest": digest.value,
                                   "recipients": recipients, "sender": sender[:255],
                                   "seen": self.clock(), "node": self.node})
        except queue.Full:
            self.dropped += 1

    def hit(self, identifier: int) -> None:
        with self._lock:
            self._hits[identifier] = self._hits.get(identifier, 0) + 1

    def refresh_now(self) -> None:
        """Write what waits and read everything again (tests, the bench)."""
        self._write()
        self._read()
        self._ready.set()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        try:
            self._write()
        except Exception as exc:
            self._complain(f"cannot write the last copies: {exc}")
        if self._engine is not None:
            self._engine.dispose()

    def _open(self) -> Engine | None:
        if self._engine is None:
            if self.url.startswith("sqlite:///"):
                path = self.url.removeprefix("sqlite:///")
                if path in ("", ":memory:") or not Path(path).exists():
                    return None  # no store yet: nothing learned (and none created here)
            from gateway.db import make_engine

            self._engine = make_engine(self.url, pool_size=2)
        return self._engine

    def _keep_reading(self) -> None:
        while not self._stop.is_set():
            try:
                self.refresh_now()
            except Exception as exc:  # the store away: keep the last reading
                self._ready.set()
                self._complain(f"learned hashes not read again, using the last ones: "
                               f"{first_line(exc)}")
            self._stop.wait(self.settings.refresh)

    def _write(self) -> None:
        rows: list[dict[str, Any]] = []
        while len(rows) < 10 * WRITE_BATCH:
            try:
                rows.append(self._seen.get_nowait())
            except queue.Empty:
                break
        with self._lock:
            hits, self._hits = self._hits, {}
        if not rows and not hits:
            return
        engine = self._open()
        if engine is None:
            return
        try:
            with engine.begin() as connection:
                for start in range(0, len(rows), WRITE_BATCH):
                    connection.execute(insert(fuzzy_seen), rows[start:start + WRITE_BATCH])
                for identifier, count in hits.items():
                    connection.execute(update(fuzzy_hashes).where(
                        fuzzy_hashes.c.id == identifier).values(
                        hits=fuzzy_hashes.c.hits + count, last_hit=self.clock()))
        except Exception:
            with self._lock:
                for identifier, count in hits.items():
                    self._hits[identifier] = self._hits.get(identifier, 0) + count
            raise

    def _read(self) -> None:
        engine = self._open()
        if engine is None:
            return
        since = self.clock() - self.window
        live = fuzzy_hashes.c.retired.is_(None)
        with engine.connect() as connection:
            # The learned hashes are read again only when they changed: one
            # learned (a higher id), retired or expired (fewer, another sum).
            signature = tuple(connection.execute(select(
                func.count(), func.max(fuzzy_hashes.c.id), func.sum(fuzzy_hashes.c.id)).where(
                live)).one())
            learned = None if signature == self._learned_signature else connection.execute(
                select(fuzzy_hashes.c.id, fuzzy_hashes.c.kind, fuzzy_hashes.c.digest,
                       fuzzy_hashes.c.label, fuzzy_hashes.c.source).where(live).limit(
                    self.settings.max_hashes * 2)).all()
            self._recent.read(connection, since)
        built = _Learned()
        if learned is None:
            last = self.current
            built.spam, built.ham = last.spam, last.ham
            built.exact_spam, built.exact_ham = last.exact_spam, last.exact_ham
        else:
            for label, target in (("spam", built.spam), ("ham", built.ham)):
                for kind in ("text", "html"):
                    target[kind] = TlshIndex((r.digest, (r.id, r.source)) for r in learned
                                             if r.label == label and r.kind == kind)
            for row in learned:
                if row.kind == "exact":
                    if row.label == "spam":
                        built.exact_spam[row.digest] = (row.id, row.source)
                    else:
                        built.exact_ham.add(row.digest)
        built.recent = dict(self._recent.indexes)
        built.recent_exact = self._recent.exact
        built.known = self._known.read(engine, self.clock)
        self.current = built
        self._learned_signature = signature
        if self.clock().second < self.settings.refresh:  # about once a minute
            self._expire(engine, since)

    def _expire(self, engine: Engine, since: datetime) -> None:
        with engine.begin() as connection:
            connection.execute(delete(fuzzy_seen).where(fuzzy_seen.c.seen <= since))

    def _complain(self, problem: str) -> None:
        now = time.monotonic()
        if now - self._complained >= COMPLAIN_EVERY:
            self._complained = now
            log.warning("fuzzy: %s", problem)


# -- the check ----------------------------------------------------------------------------------


class FuzzyCheck(Check):
    name = "fuzzy"
    wants = ("dmarc", "identity")
    symbols = {
        "FUZZY_SPAM": "a near-duplicate of spam people confirmed (learned fuzzy hash)",
        "BULK_CAMPAIGN": "the same text from senders without a history reached many "
                         "recipients within [fuzzy] campaign_window",
    }

    def __init__(self, config: Config, ruleset: Ruleset):
        super().__init__(config, ruleset)
        self.settings = config.fuzzy
        url = config.quarantine.url
        import socket

        self.memory = FuzzyMemory(url, self.settings, config.quarantine.node or
                                  socket.gethostname()) if url else None

    def run(self, message: Message, context: CheckContext) -> Report:
        if self.memory is None:
            return Report(facts={"reason": "no store: nothing learned"})
        found = message_digests(message, self.settings)
        if not found:
            return Report(facts={"digests": []})
        learned = self.memory.snapshot()
        dmarc = DmarcFacts.of(context.facts)
        protected = None
        identity = IdentityFacts.of(context.facts)
        if identity is not None and identity.known:
            protected = f"{identity.author or 'the sender'}: KNOWN_CORRESPONDENT"
        elif dmarc is not None and dmarc.dkim_aligned and dmarc.dkim_domain:
            from gateway.senders import organisation

            domain = organisation(dmarc.dkim_domain)
            if domain in learned.known:
                protected = f"{domain}: DKIM-authenticated mail accepted before"
        facts: dict[str, Any] = {"digests": [f"{d.kind}:{d.value}" for d in found]}
        symbols = []
        spam = self._learned_spam(found, learned)
        if spam is not None:
            facts["spam"] = spam
            if protected is None:
                identifier = spam.pop("id")
                symbols.append(self.symbol("FUZZY_SPAM", _describe(spam)))
                if message.envelope.queue_id:
                    self.memory.hit(identifier)
        recipients = max(1, len(message.envelope.rcpt_to))
        reached = self._campaign(found, learned) + recipients
        facts["campaign_recipients"] = reached
        if protected is not None:
            facts["protected"] = protected
        elif reached >= self.settings.campaign_recipients:
            symbols.append(self.symbol("BULK_CAMPAIGN", f"{reached} recipients within "
                                       f"{self.settings.campaign_window}"))
        if protected is None and message.envelope.queue_id:
            campaign_digest = next((d for d in found if d.kind in ("text", "exact")), None)
            if campaign_digest is not None:
                self.memory.seen(campaign_digest, recipients, message.envelope.sender_domain)
        return Report(symbols=tuple(symbols), facts=facts)

    def _learned_spam(self, found: list[Digest], learned: _Learned) -> dict[str, Any] | None:
        threshold = self.settings.threshold
        best: dict[str, Any] | None = None
        for digest in found:
            if digest.kind == "exact":
                if digest.value in learned.exact_ham:
                    return None
                if digest.value in learned.exact_spam:
                    identifier, source = learned.exact_spam[digest.value]
                    best = {"kind": "exact", "distance": 0, "source": source, "id": identifier}
                continue
            ham = learned.ham.get(digest.kind)
            if ham is not None and ham.near(digest.value, threshold):
                return None  # looks like ham people kept too: no finding
            index = learned.spam.get(digest.kind)
            near = index.near(digest.value, threshold) if index is not None else []
            if near and (best is None or near[0][0] < best["distance"]):
                distance, (identifier, source) = near[0]  # type: ignore[misc]
                best = {"kind": digest.kind, "distance": distance, "source": source,
                        "id": identifier}
        return best

    def _campaign(self, found: list[Digest], learned: _Learned) -> int:
        """Recipients the recent near-duplicates of this text reached."""
        for digest in found:
            if digest.kind == "exact":
                return learned.recent_exact.get(digest.value, 0)
            if digest.kind == "text":
                index = learned.recent.get("text")
                if index is None:
                    return 0
                near = index.near(digest.value, self.settings.threshold)
                return sum(int(payload) for _distance, payload in near)  # type: ignore[call-overload]
        return 0

    def close(self) -> None:
        if self.memory is not None:
            self.memory.close()


def _describe(spam: dict[str, Any]) -> str:
    how = "the same short text as" if spam["kind"] == "exact" else \
        f"{spam['kind']} at distance {spam['distance']} from"
    return f"{how} spam learned from {spam['source']}"

"""Senders with a DKIM-authenticated history: whom greylisting spares and
whose bulk mail the fuzzy check leaves alone.

Beside the correspondent memory (``KNOWN_CORRESPONDENT``, asked through
:class:`Correspondents`), which knows whom our users write to but not the
transactional senders nobody answers: :class:`KnownSenders` is the small
interface greylisting and the fuzzy check ask; :class:`SenderHistory`
answers it from the store's ``sender_history`` table. A sender is *known* when mail it signed with a
DKIM signature aligned with its From domain was accepted before:

- at RCPT (greylisting), only the envelope is there: the envelope sender's
  registrable domain must have such history, and the client must be one it
  came from before (its /24 or /64) or SPF must pass for the domain, so a
  forged envelope sender gets nothing from a real sender's history;
- after DATA (the fuzzy check), the message's aligned DKIM domain must have
  such history.

The milter process records accepted mail (queued, written by a thread of
its own); readers keep what they read for ``refresh`` seconds. A database
that does not answer makes nobody known: the filters run as for a stranger.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import and_, delete, insert, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from gateway.db import first_line
from gateway.mail import registrable_domain
from gateway.quarantine.schema import sender_history

log = logging.getLogger("gateway.senders")

QUEUE = 1000
CACHE_SECONDS = 60.0
MAX_DOMAINS = 200_000  # rows a worker reads for the fuzzy check's snapshot
RETENTION = timedelta(days=400)


class KnownSenders(Protocol):
    """What greylisting and the fuzzy check ask; the correspondent memory
    can answer it instead (``KNOWN_CORRESPONDENT``)."""

    def known_at_door(self, sender_domain: str, client_net: str | None,
                      spf_pass: bool) -> str | None:
        """Why the envelope's sender is known (evidence), or None."""

    def known_author(self, dkim_domain: str) -> str | None:
        """Why a message DKIM-signed (aligned) by this domain is from a known
        sender, or None."""


class Correspondents:
    """KNOWN_CORRESPONDENT at RCPT: the correspondent memory
    (gateway.correspondents), asked with the envelope sender and the domain
    SPF authorises for it (only then is the sender who it says it is before
    DATA). A sender one of our users writes to, or whose mail they released
    or kept accepting, is never greylisted."""

    def __init__(self, url: str, settings: Any):
        from gateway.correspondents import MemoryReader

        self.settings = settings
        self.reader = MemoryReader(url, settings)

    def known(self, sender: str, spf_domain: str | None, recipient: str) -> str | None:
        from gateway.correspondents import known_to_any, now

        if not sender or not spf_domain:
            return None
        entries = self.reader.sender(sender.lower(), spf_domain.lower())
        if not entries or not known_to_any(entries, [recipient], self.settings, now()):
            return None
        return f"{sender} is a known correspondent of {recipient} (KNOWN_CORRESPONDENT)"

    def close(self) -> None:
        self.reader.close()


def organisation(domain: str) -> str:
    domain = domain.strip().rstrip(".").lower()
    return registrable_domain(domain) if domain else ""


class SenderHistory:
    """``sender_history`` rows: (registrable domain, client network) ->
    accepted messages, first and last seen."""

    def __init__(self, engine_of: Callable[[], Engine | None], clock: Callable[[], datetime]
                 = lambda: datetime.now(UTC)):
        self._engine_of = engine_of
        self.clock = clock
        self._cache: dict[str, tuple[float, set[str]]] = {}
        self._lock = threading.Lock()
        self._queue: queue.Queue[tuple[str, str]] = queue.Queue(QUEUE)
        self._writer: threading.Thread | None = None
        self._stop = threading.Event()
        self.dropped = 0

    # -- reading -------------------------------------------------------------------------------

    def known_at_door(self, sender_domain: str, client_net: str | None,
                      spf_pass: bool) -> str | None:
        domain = organisation(sender_domain)
        if not domain:
            return None
        nets = self._nets(domain)
        if not nets:
            return None
        if client_net is not None and client_net in nets:
            return f"{domain}: DKIM-authenticated mail accepted before from {client_net}"
        if spf_pass:
            return f"{domain}: DKIM-authenticated mail accepted before, SPF passes"
        return None

    def known_author(self, dkim_domain: str) -> str | None:
        domain = organisation(dkim_domain)
        if domain and self._nets(domain):
            return f"{domain}: DKIM-authenticated mail accepted before"
        return None

    def _nets(self, domain: str) -> set[str]:
        now = time.monotonic()
        with self._lock:
            cached = self._cache.get(domain)
        if cached is not None and now - cached[0] < CACHE_SECONDS:
            return cached[1]
        engine = self._engine_of()
        if engine is None:
            return set()
        with engine.connect() as connection:
            nets = {row.net for row in connection.execute(
                select(sender_history.c.net).where(and_(
                    sender_history.c.domain == domain,
                    sender_history.c.last_seen > self.clock() - RETENTION)).limit(1000))}
        with self._lock:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[domain] = (now, nets)
        return nets

    def all_domains(self, since: datetime | None = None) -> set[str]:
        """Every domain with history (the fuzzy check's snapshot); with
        ``since``, those seen after it."""
        engine = self._engine_of()
        if engine is None:
            return set()
        oldest = self.clock() - RETENTION
        with engine.connect() as connection:
            return {row.domain for row in connection.execute(
                select(sender_history.c.domain).distinct().where(
                    sender_history.c.last_seen > max(oldest, since or oldest)).limit(
                    MAX_DOMAINS))}

    # -- writing -------------------------------------------------------------------------------

    def record(self, dkim_domain: str, client_net: str | None) -> None:
        """Accepted mail with an aligned DKIM pass: written by a thread, never
        waited for (dropped and counted when the thread falls behind)."""
        domain = organisation(dkim_domain)
        if not domain:
            return
        if self._writer is None:
            with self._lock:
                if self._writer is None:
                    self._writer = threading.Thread(target=self._write_forever,
                                                    name="sender-history", daemon=True)
                    self._writer.start()
        try:
            self._queue.put_nowait((domain, client_net or ""))
        except queue.Full:
            self.dropped += 1

    def write(self, domain: str, net: str) -> None:
        at = self.clock()
        engine = self._engine_of()
        if engine is None:
            return
        with engine.begin() as connection:
            changed = connection.execute(update(sender_history).where(and_(
                sender_history.c.domain == domain, sender_history.c.net == net)).values(
                accepted=sender_history.c.accepted + 1, last_seen=at)).rowcount
            if not changed:
                try:
                    with connection.begin_nested():
                        connection.execute(insert(sender_history), {
                            "domain": domain, "net": net, "accepted": 1, "first_seen": at,
                            "last_seen": at})
                except IntegrityError:
                    pass  # another node wrote it first: one message more or less
        with self._lock:
            cached = self._cache.get(domain)
            if cached is not None:
                cached[1].add(net)

    def purge(self) -> int:
        engine = self._engine_of()
        if engine is None:
            return 0
        with engine.begin() as connection:
            return int(connection.execute(delete(sender_history).where(
                sender_history.c.last_seen <= self.clock() - RETENTION)).rowcount)

    def flush(self, timeout: float = 5.0) -> None:
        """Wait until what was recorded so far is written (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)

    def close(self) -> None:
        self.flush(2.0)
        self._stop.set()

    def _write_forever(self) -> None:
        complained = float("-inf")
        while not self._stop.is_set():
            try:
                domain, net = self._queue.get(timeout=0.5)
            except queue.Empty:
                continue
            try:
                self.write(domain, net)
            except Exception as exc:  # the database away: history waits, mail does not
                if time.monotonic() - complained > 60:
                    complained = time.monotonic()
                    log.warning("sender history: cannot record %s: %s", domain,
                                first_line(exc))
            finally:
                self._queue.task_done()

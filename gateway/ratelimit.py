"""Rate limits (``[[ratelimit]]``): token buckets shared by every node.

A limit such as ``rate = "100/hour"``, ``burst = 20`` is a bucket of 20
tokens per key (client IP, client network, sender domain, SMTP AUTH login
or recipient) that refills at 100 an hour; each message takes one (each
recipient, for ``key = "recipient"``), and a message that finds the bucket
empty is over the limit: ``tempfail`` answers ``451 4.7.1`` at RCPT,
``quarantine`` and ``score`` let it in with RATELIMITED_QUARANTINE or
RATELIMITED in its verdict.

The buckets are rows of the store's database. A node takes tokens from a
bucket in small *leases* (one transaction each: refill for the time gone,
take up to ``lease`` tokens) and spends them locally, so a message waits
for the database only when its node's lease for that key is used up; a
lease unused for ``LEASE_SECONDS`` goes back to the bucket. Every message
let in spent a token taken from the one shared bucket, so however many
nodes there are, all of them together let in at most

    burst + rate x (t + LEASE_SECONDS)

messages of one key in any t seconds: never more than one node alone
would, while the database answers. A node that cannot reach it counts
alone in memory with the whole limit (logged once a minute, counted in
``gateway_ratelimit_total{outcome="local"}``): N such nodes let in up to N
times the limit, and no mail waits on the database.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import and_, delete, insert, select, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

from gateway.config import RateLimitSection
from gateway.db import first_line, utc
from gateway.durations import per_second
from gateway.quarantine.schema import rate_buckets

log = logging.getLogger("gateway.ratelimit")

LEASE_SECONDS = 2.0
MAX_LEASE = 10
MAX_KEY = 320
COMPLAIN_EVERY = 60.0
# What a reply says is counted, in public words (the limit's name and
# numbers stay in the log, under the reply's reference).
PUBLIC_WORDS = {
    "client_ip": "from your address",
    "client_net": "from your network",
    "sender_domain": "from your domain",
    "auth_identity": "from your account",
    "recipient": "to this recipient",
}
# Per message, or per recipient.
PER_RECIPIENT = ("recipient",)

Clock = Callable[[], datetime]

# Every limiter of this process adds here; /metrics reads it (gateway.metrics):
# (limit, outcome) -> messages: admitted, refused, local (counted without the
# database), and what was done over the limit (tempfail, quarantine, score).
COUNTS: dict[tuple[str, str], int] = {}
_counts_lock = threading.Lock()


def count(name: str, outcome: str) -> None:
    with _counts_lock:
        COUNTS[(name, outcome)] = COUNTS.get((name, outcome), 0) + 1


def counts() -> dict[tuple[str, str], int]:
    with _counts_lock:
        return dict(COUNTS)


@dataclass(frozen=True)
class Limit:
    name: str
    key: str
    count: float
    period: float  # seconds
    burst: float
    action: str
    rate_text: str

    @classmethod
    def of(cls, section: RateLimitSection) -> Limit:
        count, period = per_second(section.rate)
        return cls(section.name, section.key, count, period,
                   float(section.burst or max(1, math.ceil(count))), section.action,
                   section.rate)

    @property
    def per_second(self) -> float:
        return self.count / self.period

    @property
    def lease(self) -> int:
        """Tokens a node takes at once: a tenth of the burst, 1 to MAX_LEASE."""
        return max(1, min(MAX_LEASE, int(self.burst // 10)))

    def describe(self) -> str:
        return f"{self.name}: {self.key} at most {self.rate_text}, burst {self.burst:g}"


class BucketStore:
    """The buckets' rows: take tokens (refilled for the time gone), give
    back unused ones, count refusals."""

    def __init__(self, engine: Engine, clock: Clock = lambda: datetime.now(UTC)):
        self.engine = engine
        self.clock = clock

    def take(self, limit: Limit, key: str, want: int) -> int:
        """Up to ``want`` whole tokens from the bucket; how many it had."""
        at = self.clock()
        with self.engine.begin() as connection:
            level = self._level(connection, limit, key, at)
            granted = int(min(want, math.floor(level + 1e-9)))
            values: dict[str, Any] = {"level": level - granted, "updated": at}
            if granted:
                values["taken"] = rate_buckets.c.taken + granted
            else:
                values["refused"] = rate_buckets.c.refused + 1
                values["last_refused"] = at
            connection.execute(update(rate_buckets).where(_is(limit.name, key)).values(values))
            return granted

    def give_back(self, limit: Limit, key: str, tokens: int) -> None:
        at = self.clock()
        with self.engine.begin() as connection:
            level = self._level(connection, limit, key, at)
            connection.execute(update(rate_buckets).where(_is(limit.name, key)).values(
                level=min(limit.burst, level + tokens), updated=at,
                taken=rate_buckets.c.taken - tokens))

    def _level(self, connection: Connection, limit: Limit, key: str, at: datetime) -> float:
        """The bucket's tokens now (a new bucket is full), its row locked."""
        query = select(rate_buckets.c.level, rate_buckets.c.updated).where(
            _is(limit.name, key))
        if connection.dialect.name == "postgresql":
            query = query.with_for_update()
        row = connection.execute(query).first()
        if row is None:
            try:
                with connection.begin_nested():
                    connection.execute(insert(rate_buckets), {
                        "name": limit.name, "key": key, "level": limit.burst, "updated": at,
                        "taken": 0, "refused": 0, "last_refused": None})
            except IntegrityError:  # another node made it just now
                pass
            row = connection.execute(query).first()
            assert row is not None
        elapsed = max(0.0, (at - utc(row.updated)).total_seconds())
        return float(min(limit.burst, row.level + elapsed * limit.per_second))

    def rows(self, name: str = "", limit_rows: int = 1000) -> list[dict[str, Any]]:
        query = select(rate_buckets)
        if name:
            query = query.where(rate_buckets.c.name == name)
        query = query.order_by(rate_buckets.c.refused.desc(),
                               rate_buckets.c.updated.desc()).limit(limit_rows)
        with self.engine.connect() as connection:
            return [dict(row._mapping) for row in connection.execute(query)]

    def purge(self, idle_seconds: float) -> int:
        """Remove buckets untouched for that long (they are full again)."""
        cutoff = self.clock().timestamp() - idle_seconds
        with self.engine.begin() as connection:
            return int(connection.execute(delete(rate_buckets).where(
                rate_buckets.c.updated < datetime.fromtimestamp(cutoff, UTC))).rowcount)


def _is(name: str, key: str) -> Any:
    return and_(rate_buckets.c.name == name, rate_buckets.c.key == key)


@dataclass
class _Lease:
    tokens: int = 0
    used: float = 0.0  # monotonic time it was last spent from


@dataclass
class _Local:
    """A bucket counted in this process alone (the database away)."""

    level: float
    updated: float


class RateLimiter:
    """This node's side: leases by (limit, key), spent without the database."""

    def __init__(self, limits: Sequence[Limit], store_of: Callable[[], BucketStore | None],
                 monotonic: Callable[[], float] = time.monotonic):
        self.limits = tuple(limits)
        self._store_of = store_of
        self._monotonic = monotonic
        self._leases: dict[tuple[str, str], _Lease] = {}
        self._local: dict[tuple[str, str], _Local] = {}
        self._lock = threading.Lock()
        self._complained = float("-inf")
        self._stop = threading.Event()
        self._returner: threading.Thread | None = None

    def admit(self, limit: Limit, key: str) -> bool:
        """Take one token for ``key``; False when the limit is reached."""
        key = key[:MAX_KEY]
        slot = (limit.name, key)
        with self._lock:
            lease = self._leases.get(slot)
            if lease is not None and lease.tokens > 0:
                lease.tokens -= 1
                lease.used = self._monotonic()
                self._count(limit, "admitted")
                return True
        self._start_returning()
        try:
            store = self._store_of()
            if store is None:
                raise LookupError("no database")
            granted = store.take(limit, key, limit.lease)
        except Exception as exc:  # the database away: count alone, never hold mail
            self._complain(f"rate limits counted on this node alone (the store's database "
                           f"does not answer: {first_line(exc)})")
            allowed = self._admit_locally(limit, key)
            self._count(limit, "local")
            self._count(limit, "admitted" if allowed else "refused")
            return allowed
        if granted <= 0:
            self._count(limit, "refused")
            return False
        with self._lock:
            lease = self._leases.setdefault(slot, _Lease())
            lease.tokens += granted - 1
            lease.used = self._monotonic()
        self._count(limit, "admitted")
        return True

    def _admit_locally(self, limit: Limit, key: str) -> bool:
        now = self._monotonic()
        with self._lock:
            bucket = self._local.get((limit.name, key))
            if bucket is None:
                if len(self._local) > 100_000:
                    self._local.clear()
                bucket = self._local[(limit.name, key)] = _Local(limit.burst, now)
            bucket.level = min(limit.burst, bucket.level + (now - bucket.updated)
                               * limit.per_second)
            bucket.updated = now
            if bucket.level >= 1:
                bucket.level -= 1
                return True
            return False

    def _count(self, limit: Limit, outcome: str) -> None:
        count(limit.name, outcome)

    # -- leases not spent go back -----------------------------------------------------------------

    def _start_returning(self) -> None:
        if self._returner is None:
            with self._lock:
                if self._returner is None:
                    self._returner = threading.Thread(target=self._return_forever,
                                                      name="ratelimit-leases", daemon=True)
                    self._returner.start()

    def _return_forever(self) -> None:
        while not self._stop.wait(LEASE_SECONDS / 2):
            self.return_idle(LEASE_SECONDS)

    def return_idle(self, idle: float) -> int:
        """Give back the tokens of leases unused for ``idle`` seconds."""
        now = self._monotonic()
        with self._lock:
            due = [(slot, lease.tokens) for slot, lease in self._leases.items()
                   if now - lease.used >= idle]
            for slot, _tokens in due:
                del self._leases[slot]
        by_name = {limit.name: limit for limit in self.limits}
        returned = 0
        for (name, key), tokens in due:
            if tokens <= 0 or name not in by_name:
                continue
            try:
                store = self._store_of()
                if store is not None:
                    store.give_back(by_name[name], key, tokens)
                    returned += tokens
            except Exception as exc:  # lost tokens: the bucket refills anyway
                self._complain(f"cannot give back unused rate limit tokens: "
                               f"{first_line(exc)}")
        return returned

    def close(self) -> None:
        self._stop.set()
        self.return_idle(0.0)

    def _complain(self, problem: str) -> None:
        now = time.monotonic()
        if now - self._complained >= COMPLAIN_EVERY:
            self._complained = now
            log.warning("ratelimit: %s", problem)

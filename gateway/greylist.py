"""Greylisting: a first attempt from a suspicious sender is asked to retry.

A real mail server retries a 4xx after a few minutes; much spamware never
does. A *triplet* (client, envelope sender, recipient) seen for the first
time gets ``451 4.7.1``; the same triplet retried after ``[greylist]
delay`` passes and is then let through at once for ``remember`` (renewed
by each message). Unlike plain greylisting (postgrey), and minus what its
users complain about:

- only suspicious mail is greylisted: at RCPT, a client without valid
  reverse DNS, with a listed IP ([[dnsbl]] lookup = "client_ip") or a
  dynamic-looking name; after DATA, mail in the policy's ``greylist`` score
  band (as rspamd's score-based greylisting);
- the client is its /24 (IPv4) or /64 (IPv6), or the SPF-authorised sender
  domain when SPF passes, so a retry from another host of a sender's pool
  passes; the envelope sender is normalised (VERP, BATV, SRS tags), so a
  per-message bounce address is one sender;
- never greylisted: SMTP-authenticated clients, allow-listed senders and
  IPs, ``exempt_senders`` (login-code and password-reset senders), and
  senders with a DKIM-authenticated history (:mod:`gateway.senders`);
- the state is in the store's database, so a retry reaching another node
  passes there; a node that cannot reach it does not greylist (fail open,
  logged and counted): greylisting is a filter, not a place mail can be lost.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, func, insert, select, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

from gateway.config import GreylistSection
from gateway.db import utc
from gateway.durations import seconds
from gateway.quarantine.schema import greylist

log = logging.getLogger("gateway.greylist")

MAX_ADDRESS = 320
MAX_KEY = 255
SHOW_LIMIT = 1000

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


# -- the triplet's parts --------------------------------------------------------------------


def client_network(ip: str | None, ipv4_prefix: int = 24, ipv6_prefix: int = 64) -> str | None:
    """The client's network as greylisting and rate limits key it:
    198.51.100.0/24, 2001:db8:1:2::/64; None without a readable address."""
    try:
        address = ipaddress.ip_address((ip or "").strip("[]"))
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    prefix = ipv4_prefix if address.version == 4 else ipv6_prefix
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False))


def client_key(ip: str | None, spf_domain: str | None, settings: GreylistSection) -> str:
    """``spf:example.org`` when SPF passed for the sender's domain (any host
    the domain authorises is one client), else ``net:198.51.100.0/24``."""
    if spf_domain:
        return f"spf:{spf_domain.lower().rstrip('.')}"[:MAX_KEY]
    network = client_network(ip, settings.ipv4_prefix, settings.ipv6_prefix)
    return f"net:{network or (ip or 'unknown')}"[:MAX_KEY]


_BATV = re.compile(r"^(?:(?:prvs|msprvs1)=[^=]*=|btv1==[^=]*==)(?P<local>.+)$",
                   re.IGNORECASE)
_SRS0 = re.compile(r"^srs0[=+-][^=]*=[^=]*=(?P<domain>[^=]+)=(?P<local>.+)$", re.IGNORECASE)
_SRS1 = re.compile(r"^srs1[=+-].*?==[^=]*=[^=]*=(?P<domain>[^=]+)=(?P<local>.+)$",
                   re.IGNORECASE)
_NUMBERS = re.compile(r"\d{3,}|(?=[0-9a-f]*\d)[0-9a-f]{8,}")


def normalise_sender(address: str) -> str:
    """The envelope sender with per-message tags removed, lower case:
    ``prvs=0123abcd=bob@example.org`` (BATV) -> ``bob@example.org``;
    ``SRS0=HHH=TT=orig.example=alice@fwd.example`` (SRS) ->
    ``alice@orig.example``; ``list-bounces+bob=example.net@lists.example``
    and ``bounce-12345@mailer.example`` (VERP, message ids) ->
    ``list-bounces@lists.example``, ``bounce-#@mailer.example``."""
    address = address.strip().strip("<>").lower()[:MAX_ADDRESS]
    local, at, domain = address.rpartition("@")
    if not at:
        return address
    for _ in range(3):  # SRS inside BATV and the like, a few layers at most
        if match := _BATV.match(local):
            local = match.group("local")
        elif (match := _SRS1.match(local)) or (match := _SRS0.match(local)):
            local, domain = match.group("local"), match.group("domain")
        else:
            break
    if "=" in local:  # VERP: the recipient encoded after a separator
        cut = max(local.rfind("+", 0, local.index("=")), local.rfind("-", 0, local.index("=")))
        if cut > 0:
            local = local[:cut]
    local = local.split("+", 1)[0] or local
    local = _NUMBERS.sub("#", local)
    return f"{local}@{domain}"


_DYNAMIC_WORDS = re.compile(
    r"(?:^|[.\-_\d])(?:dyn|dynamic|dynamicip|dhcp|dialup|dial|dsl|adsl|vdsl|xdsl|cable|"
    r"catv|ppp|pppoe|pool|broadband|customer|cust|client|clients|host|hosts|ip|user|"
    r"users|res|resnet|residential|home|mobile|wireless|wlan|3g|4g|lte|nat|unassigned|"
    r"unknown|static|generic|cpe|fttx|ftth)(?=$|[.\-_\d])", re.IGNORECASE)


def dynamic_name(name: str, ip: str) -> bool:
    """Whether a reverse DNS name looks like an ISP's name for a dynamic or
    generic address (``203-0-113-7.dsl.example.net``,
    ``cpe-198-51-100-7.example.com``): the address written in it, or the
    access networks' words beside digits."""
    name = name.lower().rstrip(".")
    try:
        address = ipaddress.ip_address(ip.strip("[]"))
    except ValueError:
        return False
    if address.version == 4:
        octets = str(address).split(".")
        forward, backward = octets[2:], octets[::-1][:2]
        for parts in (octets, octets[::-1], forward, backward):
            written = re.search(r"(?<![0-9])" + r"[.\-_x]?".join(parts) + r"(?![0-9])", name)
            if written and (len(parts) == 4 or _DYNAMIC_WORDS.search(name)):
                return True
        hexed = "".join(f"{int(o):02x}" for o in octets)
        if hexed in name.replace("-", "").replace(".", ""):
            return True
    first = name.split(".", 1)[0]
    return bool(_DYNAMIC_WORDS.search(first)) and bool(re.search(r"\d", first))


# -- the state in the database ----------------------------------------------------------------


@dataclass(frozen=True)
class Triplet:
    client: str     # net:198.51.100.0/24 or spf:example.org
    sender: str     # normalised
    recipient: str  # lower case

    @classmethod
    def of(cls, client: str, sender: str, recipient: str) -> Triplet:
        return cls(client[:MAX_KEY], normalise_sender(sender),
                   recipient.strip().strip("<>").lower()[:MAX_ADDRESS])

    def describe(self) -> str:
        return f"{self.client} {self.sender or '<>'} -> {self.recipient}"


@dataclass(frozen=True)
class Outcome:
    """What greylisting said about one triplet: ``greylisted`` (first
    attempt, or a retry before the delay), ``passed`` (the retry after it)
    or ``known`` (passed before, still remembered)."""

    triplet: Triplet
    result: str
    wait: float = 0.0  # seconds still to wait when greylisted

    @property
    def greylisted(self) -> bool:
        return self.result == "greylisted"


@dataclass(frozen=True)
class Entry:
    """One triplet as ``gateway greylist show`` and the console list it."""

    client: str
    sender: str
    recipient: str
    first_seen: datetime
    last_seen: datetime
    passed: datetime | None
    expires: datetime
    attempts: int
    messages: int
    client_ip: str | None
    reason: str
    node: str

    @property
    def pending(self) -> bool:
        return self.passed is None

    def as_dict(self) -> dict[str, Any]:
        return {"client": self.client, "sender": self.sender, "recipient": self.recipient,
                "state": "pending" if self.pending else "passed",
                "first_seen": self.first_seen.isoformat(timespec="seconds"),
                "last_seen": self.last_seen.isoformat(timespec="seconds"),
                "passed": self.passed.isoformat(timespec="seconds") if self.passed else None,
                "expires": self.expires.isoformat(timespec="seconds"),
                "attempts": self.attempts, "messages": self.messages,
                "client_ip": self.client_ip, "reason": self.reason, "node": self.node}


class GreylistStore:
    """The triplets in the store's database (SQLite or PostgreSQL): every
    node reads and writes the same rows, so a retry reaching another node
    passes there."""

    def __init__(self, engine: Engine, settings: GreylistSection, node: str,
                 clock: Clock = utc_now):
        self.engine = engine
        self.node = node[:255]
        self.clock = clock
        self.delay = timedelta(seconds=seconds(settings.delay))
        self.remember = timedelta(seconds=seconds(settings.remember))
        self.retry_window = timedelta(seconds=seconds(settings.retry_window))

    def check(self, triplets: Sequence[Triplet], client_ip: str | None,
              reason: str) -> list[Outcome]:
        """Record an attempt for each triplet and say whether it passes;
        one transaction."""
        at = self.clock()
        with self.engine.begin() as connection:
            return [self._check(connection, triplet, at, client_ip, reason)
                    for triplet in triplets]

    def _check(self, connection: Connection, triplet: Triplet, at: datetime,
               client_ip: str | None, reason: str) -> Outcome:
        row = self._row(connection, triplet, lock=True)
        if row is None or utc(row.expires) <= at:
            if row is not None:  # forgotten: a first attempt again
                connection.execute(delete(greylist).where(_is(triplet)))
            try:
                with connection.begin_nested():
                    connection.execute(insert(greylist), {
                        "client": triplet.client, "sender": triplet.sender,
                        "recipient": triplet.recipient, "first_seen": at, "last_seen": at,
                        "passed": None, "expires": at + self.retry_window, "attempts": 1,
                        "messages": 0, "client_ip": client_ip, "reason": reason[:500],
                        "node": self.node})
            except IntegrityError:  # another node recorded it at the same moment
                return Outcome(triplet, "greylisted", self.delay.total_seconds())
            return Outcome(triplet, "greylisted", self.delay.total_seconds())
        if row.passed is not None:
            connection.execute(update(greylist).where(_is(triplet)).values(
                last_seen=at, expires=at + self.remember, messages=greylist.c.messages + 1,
                client_ip=client_ip))
            return Outcome(triplet, "known")
        waited = at - utc(row.first_seen)
        if waited >= self.delay:
            connection.execute(update(greylist).where(_is(triplet)).values(
                last_seen=at, passed=at, expires=at + self.remember,
                messages=greylist.c.messages + 1, client_ip=client_ip))
            return Outcome(triplet, "passed")
        connection.execute(update(greylist).where(_is(triplet)).values(
            last_seen=at, attempts=greylist.c.attempts + 1, client_ip=client_ip))
        return Outcome(triplet, "greylisted", (self.delay - waited).total_seconds())

    def _row(self, connection: Connection, triplet: Triplet, lock: bool = False) -> Any:
        query = select(greylist).where(_is(triplet))
        if lock and connection.dialect.name == "postgresql":
            query = query.with_for_update()
        return connection.execute(query).first()

    # -- what the commands and the console do -------------------------------------------------

    def entries(self, pending_only: bool = False, match: str = "",
                limit: int = SHOW_LIMIT) -> list[Entry]:
        at = self.clock()
        query = select(greylist).where(greylist.c.expires > at)
        if pending_only:
            query = query.where(greylist.c.passed.is_(None))
        if match:
            like = f"%{_escape(match.lower())}%"
            query = query.where(greylist.c.client.like(like, escape="\\")
                                | greylist.c.sender.like(like, escape="\\")
                                | greylist.c.recipient.like(like, escape="\\")
                                | greylist.c.client_ip.like(like, escape="\\"))
        query = query.order_by(greylist.c.last_seen.desc()).limit(limit)
        with self.engine.connect() as connection:
            return [_entry(row) for row in connection.execute(query)]

    def count_pending(self) -> int:
        with self.engine.connect() as connection:
            return int(connection.execute(select(func.count()).select_from(greylist).where(and_(
                greylist.c.passed.is_(None), greylist.c.expires > self.clock()))).scalar_one())

    def pass_now(self, triplets: Iterable[Triplet]) -> int:
        """Let these triplets through from now on, without waiting; the
        number of pending ones passed."""
        at = self.clock()
        passed = 0
        with self.engine.begin() as connection:
            for triplet in triplets:
                passed += connection.execute(update(greylist).where(and_(
                    _is(triplet), greylist.c.passed.is_(None))).values(
                    passed=at, expires=at + self.remember)).rowcount
        return passed

    def pass_matching(self, match: str) -> list[Entry]:
        """Pass every pending triplet whose client, sender, recipient or IP
        contains ``match``; the ones passed."""
        found = [e for e in self.entries(pending_only=True, match=match)]
        self.pass_now(Triplet(e.client, e.sender, e.recipient) for e in found)
        return found

    def forget(self, match: str) -> int:
        """Remove the triplets whose client, sender, recipient or IP contains
        ``match`` (the next attempt is a first attempt again)."""
        like = f"%{_escape(match.lower())}%"
        with self.engine.begin() as connection:
            return int(connection.execute(delete(greylist).where(
                greylist.c.client.like(like, escape="\\")
                | greylist.c.sender.like(like, escape="\\")
                | greylist.c.recipient.like(like, escape="\\")
                | greylist.c.client_ip.like(like, escape="\\"))).rowcount)

    def purge(self) -> int:
        """Remove the triplets past their expiry."""
        with self.engine.begin() as connection:
            return int(connection.execute(delete(greylist).where(
                greylist.c.expires <= self.clock())).rowcount)


def _is(triplet: Triplet) -> Any:
    return and_(greylist.c.client == triplet.client, greylist.c.sender == triplet.sender,
                greylist.c.recipient == triplet.recipient)


def _entry(row: Any) -> Entry:
    return Entry(row.client, row.sender, row.recipient, utc(row.first_seen),
                 utc(row.last_seen), utc(row.passed) if row.passed else None,
                 utc(row.expires), row.attempts, row.messages, row.client_ip, row.reason,
                 row.node)


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")

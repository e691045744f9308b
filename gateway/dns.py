"""One DNS resolver for every check: short timeouts, and three caches.

- a positive cache, honouring TTLs (capped);
- a negative cache for NXDOMAIN and "no such record", for the SOA minimum
  (capped), so a domain without DMARC is not asked again for every message;
- a failure cache, per name: a lookup that timed out or got SERVFAIL is
  answered "temporary failure" at once for ``failure_ttl`` seconds. One
  sender domain whose name servers never answer costs one timeout per name,
  and never makes other names fail.

A DNS server itself is only taken for dead when it has timed out on
``server_down_after`` distinct names without answering anything in between
and then does not answer a probe (``. NS``, which any live server answers at
once, even if only with REFUSED): then it is skipped for ``failure_ttl``
seconds, so a dead server costs a few timeouts, not one per lookup per
message. A live recursive resolver that is slow on some domains is never
skipped.

Names are converted to A-labels (IDNA, UTS #46) before they are asked for; a
name that cannot exist in the DNS (an empty label, a label over 63 octets,
invalid IDNA) is :class:`InvalidName`, a kind of NXDOMAIN: permanent, never
a temporary failure.

Answers are plain Python values (strings, tuples), easy to hand to pyspf and
dkimpy. Lookups never apply the resolv.conf search list.

On the wire (:mod:`gateway.dnswire`): each query from a new socket (a random
source port) with a random ID, without EDNS, asked again after ``timeout``
while the lookup's ``lifetime`` lasts, and over TCP when the answer comes
truncated; a datagram from another address or not answering the query is
ignored. CNAME chains in the answer are followed.
"""

from __future__ import annotations

import copy
import logging
import os
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import dns.exception
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dns.resolver
import idna

from gateway import dnswire
from gateway.config import Config, DnsSection

log = logging.getLogger("gateway.dns")

MAX_POSITIVE_TTL = 3600
MAX_NEGATIVE_TTL = 900
DEFAULT_NEGATIVE_TTL = 300
MAX_NAME_LENGTH = 253  # RFC 1035 2.3.4, without the final dot
MAX_LABEL_LENGTH = 63


class DnsError(Exception):
    """Base of the lookup outcomes that are not an answer."""


class NxDomain(DnsError):
    """The name does not exist."""


class InvalidName(NxDomain):
    """The name cannot exist in the DNS: no query is sent."""


class NoRecords(DnsError):
    """The name exists but has no records of this type."""


class DnsTempError(DnsError):
    """No answer now (timeout, SERVFAIL, REFUSED): try again later."""


def dns_name(name: str) -> str:
    """``name`` as asked for: A-labels, lower case, no final dot; raises
    InvalidName when it cannot be a DNS name. Labels that are already ASCII
    are kept as they are (``_dmarc``, ``_domainkey`` are not hostnames)."""
    text = name.rstrip(".").lower()
    if not text.isascii():
        try:
            text = idna.uts46_remap(text, std3_rules=False, transitional=False)
            text = ".".join(label if label.isascii() else idna.alabel(label).decode("ascii")
                            for label in text.rstrip(".").split("."))
        except (idna.IDNAError, UnicodeError, ValueError) as exc:
            raise InvalidName(f"{name!r} is not a valid domain name: {exc}") from None
    if not text:
        raise InvalidName("empty domain name")
    if len(text) > MAX_NAME_LENGTH:
        raise InvalidName(f"{text[:60]}...: longer than {MAX_NAME_LENGTH} octets")
    for label in text.split("."):
        if not label:
            raise InvalidName(f"{text!r}: empty label")
        if len(label) > MAX_LABEL_LENGTH:
            raise InvalidName(f"{text[:60]!r}: a label longer than {MAX_LABEL_LENGTH} octets")
    return text


@dataclass(frozen=True)
class _Entry:
    expires: float
    values: tuple[Any, ...] | None
    error: DnsError | None

    def fresh_error(self) -> DnsError:
        """A new exception like the cached one. Raising the cached object
        itself would chain every raiser's frames onto its traceback, and the
        cache would keep every message that met the error alive (measured:
        44 KB a message, without end)."""
        assert self.error is not None
        return copy.copy(self.error).with_traceback(None)


@dataclass
class _ServerHealth:
    # Names this server timed out on since it last answered, and when.
    silent_names: dict[str, float] = field(default_factory=dict)
    down_until: float = 0.0
    # Marked down before and not heard from since: the next timeout probes.
    suspect: bool = False
    probing: bool = False


class Resolver:
    def __init__(self, settings: DnsSection, clock: Callable[[], float] = time.monotonic):
        self.settings = settings
        # What TTLs and failures are counted on (tests bring their own);
        # waiting for a reply is always on the real clock.
        self._clock = clock
        configured = dns.resolver.Resolver(configure=not settings.nameservers)
        servers = list(settings.nameservers) or [str(s) for s in configured.nameservers]
        self.servers: tuple[str, ...] = tuple(servers)
        # Each server is asked on its own, so that a timeout is known to be
        # that server's and a dead server can be skipped.
        self._addresses = {server: _socket_address(server, settings.port)
                           for server in self.servers}
        self._health = {server: _ServerHealth() for server in self.servers}
        self._cache: OrderedDict[tuple[str, str], _Entry] = OrderedDict()
        self._lock = threading.Lock()
        self.queries = 0  # lookups that went to the network (for tests and benchmarks)

    # -- public API ------------------------------------------------------------------

    def lookup(self, name: str, rdtype: str) -> tuple[Any, ...]:
        """Records of ``rdtype`` at ``name``; raises NxDomain (InvalidName for
        a name that cannot exist), NoRecords or DnsTempError. TXT records
        come back as str (strings joined), MX as (preference, host),
        A/AAAA/PTR/CNAME/NS as str."""
        key = (dns_name(name), rdtype)
        now = self._clock()
        with self._lock:
            entry = self._cache.get(key)
            if entry is not None and entry.expires > now:
                self._cache.move_to_end(key)
                if entry.error is not None:
                    raise entry.fresh_error()
                return entry.values or ()
        entry = self._query(key[0], rdtype)
        if entry.expires > now:
            with self._lock:
                self._cache[key] = entry
                self._cache.move_to_end(key)
                # The least recently used first: past the size, or expired
                # (without this an expired answer stayed until the size
                # pushed it out, and a worker's cache grew to its size).
                while self._cache and (len(self._cache) > self.settings.cache_size or
                                       next(iter(self._cache.values())).expires <= now):
                    self._cache.popitem(last=False)
        if entry.error is not None:
            raise entry.fresh_error()
        return entry.values or ()

    def txt(self, name: str) -> list[str]:
        return list(self.lookup(name, "TXT"))

    def addresses(self, name: str) -> list[str]:
        """A and AAAA records; NoRecords only if there are neither."""
        found: list[str] = []
        missing: DnsError | None = None
        for rdtype in ("A", "AAAA"):
            try:
                found.extend(self.lookup(name, rdtype))
            except (NxDomain, NoRecords) as exc:
                missing = exc
        if not found and missing is not None:
            raise missing
        return found

    def servers_down(self) -> list[str]:
        """The servers being skipped now (for tests and logs)."""
        now = self._clock()
        with self._lock:
            return [s for s, h in self._health.items() if h.down_until > now]

    # -- the network -------------------------------------------------------------------

    def _query(self, name: str, rdtype: str) -> _Entry:
        now = self._clock()
        with self._lock:
            live = [s for s in self.servers if self._health[s].down_until <= now]
        if not live:
            # Not cached: the name is not to blame, and the server may be back soon.
            return _Entry(now, None, DnsTempError(
                f"{name}/{rdtype}: DNS server {', '.join(self.servers)} not answering "
                "(skipped after timeouts on several names)"))
        self.queries += 1
        try:
            type_number = dnswire.FAST_TYPES.get(rdtype) or dns.rdatatype.from_text(rdtype)
            asked = dnswire.question(name, type_number)
        except (dns.exception.DNSException, ValueError) as exc:
            return _Entry(self._clock() + self.settings.failure_ttl, None,
                          DnsTempError(f"{name}/{rdtype}: {type(exc).__name__}: {exc}"))
        deadline = time.monotonic() + self.settings.lifetime
        problems: list[str] = []
        for index, server in enumerate(live):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            # Each server but the last gets one timeout; the last what is left.
            wait = remaining if index == len(live) - 1 else min(self.settings.timeout, remaining)
            try:
                reply = self._exchange(server, asked, type_number, wait)
            except _Timeout:
                self._timed_out(server, name)
                problems.append("DNS timeout")
                continue
            except _Answered as exc:
                self._answered(server)  # it answered, with SERVFAIL, REFUSED, junk...
                problems.append(str(exc))
                continue
            except (dns.exception.DNSException, OSError, ValueError) as exc:
                problems.append(f"{type(exc).__name__}: {exc}")
                continue
            self._answered(server)
            now = self._clock()
            if reply.rcode == dns.rcode.NXDOMAIN:
                return _Entry(now + _negative_ttl(reply.soa), None,
                              NxDomain(f"{name}: no such domain"))
            if reply.values is None:
                return _Entry(now + _negative_ttl(reply.soa), None,
                              NoRecords(f"{name}: no {rdtype} records"))
            ttl = min(max(reply.ttl, 0), MAX_POSITIVE_TTL)
            return _Entry(now + ttl, reply.values, None)
        why = problems[-1] if problems else "DNS timeout"
        return _Entry(self._clock() + self.settings.failure_ttl, None,
                      DnsTempError(f"{name}/{rdtype}: {why}"))

    def _exchange(self, server: str, asked: bytes, rdtype: int, wait: float) -> dnswire.Reply:
        """The server's NOERROR or NXDOMAIN reply within ``wait`` seconds: over
        UDP, asked again after each ``timeout`` (a lost datagram), then over
        TCP if truncated. Raises _Timeout, _Answered (another rcode, or a
        reply that is no answer) or OSError."""
        address = self._addresses[server]
        deadline = time.monotonic() + wait
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _Timeout
            try:
                reply = _udp(address, os.urandom(2), asked, rdtype,
                             min(self.settings.timeout, remaining))
            except (dns.exception.DNSException, ValueError) as exc:
                # A reply that is no answer (a CNAME chain too long, an answer
                # with NXDOMAIN): the server answered, badly.
                raise _Answered(f"{type(exc).__name__}: {exc}") from None
            if reply is not None:
                break
        if reply.truncated:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _Timeout
            try:
                reply = _tcp(address, os.urandom(2), asked, rdtype,
                             min(self.settings.timeout, remaining))
            except TimeoutError:
                raise _Timeout from None
            except (OSError, EOFError, dns.exception.DNSException, ValueError) as exc:
                raise _Answered(f"truncated over UDP, and over TCP: {exc}") from None
            if reply.truncated:
                raise _Answered("truncated over UDP and TCP")
        if reply.rcode not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
            raise _Answered(dns.rcode.to_text(dns.rcode.Rcode.make(reply.rcode)))
        return reply

    # -- server health -----------------------------------------------------------------

    def _answered(self, server: str) -> None:
        health = self._health[server]
        if health.silent_names or health.suspect:
            with self._lock:
                health.silent_names.clear()
                health.suspect = False

    def _timed_out(self, server: str, name: str) -> None:
        now = self._clock()
        window = self.settings.failure_ttl
        health = self._health[server]
        with self._lock:
            health.silent_names[name] = now
            for old in [n for n, when in health.silent_names.items() if when < now - window]:
                del health.silent_names[old]
            needed = 1 if health.suspect else self.settings.server_down_after
            if health.probing or len(health.silent_names) < needed:
                return
            health.probing = True
        alive = True
        try:
            alive = self._probe(server)
        finally:
            with self._lock:
                health.probing = False
                health.silent_names.clear()
                if alive:
                    health.suspect = False
                else:
                    health.down_until = self._clock() + window
                    health.suspect = True
        if not alive:
            log.warning("DNS server %s did not answer on several names nor a probe; "
                        "skipping it for %gs", server, window)

    def _probe(self, server: str) -> bool:
        """Whether the server answers at all: any reply counts, REFUSED included."""
        query = dns.message.make_query(".", "NS")
        try:
            dns.query.udp(query, server, timeout=self.settings.timeout,
                          port=self.settings.port)
        except (dns.exception.DNSException, OSError):
            return False
        return True


class _Timeout(Exception):
    """The server did not answer in time."""


class _Answered(Exception):
    """The server answered, but not with an answer (SERVFAIL, REFUSED...)."""


def _socket_address(server: str, port: int) -> tuple[int, tuple[str, int]]:
    """(family, address) of a server as recvfrom() writes it."""
    family = socket.AF_INET6 if ":" in server else socket.AF_INET
    try:
        return family, (socket.inet_ntop(family, socket.inet_pton(family, server)), port)
    except OSError:  # an address with a scope (fe80::1%eth0): as written
        return family, (server, port)


def _udp(address: tuple[int, tuple[str, int]], ident: bytes, asked: bytes, rdtype: int,
         timeout: float) -> dnswire.Reply | None:
    """One query over UDP from a new socket (a new random port); None when
    no reply came within ``timeout``. Datagrams from elsewhere, or not a
    reply to this query, are ignored, as dnspython ignores them."""
    family, peer = address
    deadline = time.monotonic() + timeout
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.sendto(dnswire.query(ident, asked), peer)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            sock.settimeout(remaining)
            try:
                wire, source = sock.recvfrom(65535)
            except TimeoutError:
                return None
            if source[:2] != peer:
                continue
            try:
                return dnswire.read_reply(wire, ident, asked, rdtype)
            except dnswire.NotOurReply:
                continue


def _tcp(address: tuple[int, tuple[str, int]], ident: bytes, asked: bytes, rdtype: int,
         timeout: float) -> dnswire.Reply:
    family, peer = address
    query = dnswire.query(ident, asked)
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(peer)
        sock.sendall(len(query).to_bytes(2, "big") + query)
        size = int.from_bytes(_receive(sock, 2), "big")
        wire = _receive(sock, size)
    try:
        return dnswire.read_reply(wire, ident, asked, rdtype)
    except dnswire.NotOurReply:
        raise EOFError("the reply over TCP is not an answer to the query") from None


def _receive(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise EOFError("the server closed the connection")
        data += chunk
    return data


def _negative_ttl(soa: tuple[int, int] | None) -> float:
    """The SOA record's TTL or minimum, whichever is less (RFC 2308 5)."""
    if soa is None:
        return float(DEFAULT_NEGATIVE_TTL)
    return float(min(soa[0], soa[1], MAX_NEGATIVE_TTL))


# One resolver per process, shared by every check (and every worker's checks).
_shared: dict[DnsSection, Resolver] = {}
_shared_lock = threading.Lock()


def shared_resolver(config: Config) -> Resolver:
    with _shared_lock:
        resolver = _shared.get(config.dns)
        if resolver is None:
            resolver = _shared[config.dns] = Resolver(config.dns)
        return resolver

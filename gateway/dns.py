"""One DNS resolver for every check: short timeouts, and three caches.

- a positive cache, honouring TTLs (capped);
- a negative cache for NXDOMAIN and "no such record", for the SOA minimum
  (capped), so a domain without DMARC is not asked again for every message;
- a failure cache: a lookup that timed out or got SERVFAIL is answered
  "temporary failure" at once for a few seconds, and a server that timed out
  is skipped for a few seconds, so a dead DNS server costs one timeout, not
  one per lookup per message.

Answers are plain Python values (strings, tuples), easy to hand to pyspf and
dkimpy. Lookups never apply the resolv.conf search list.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.resolver

from gateway.config import Config, DnsSection

MAX_POSITIVE_TTL = 3600
MAX_NEGATIVE_TTL = 900
DEFAULT_NEGATIVE_TTL = 300


class DnsError(Exception):
    """Base of the lookup outcomes that are not an answer."""


class NxDomain(DnsError):
    """The name does not exist."""


class NoRecords(DnsError):
    """The name exists but has no records of this type."""


class DnsTempError(DnsError):
    """No answer now (timeout, SERVFAIL, REFUSED): try again later."""


@dataclass(frozen=True)
class _Entry:
    expires: float
    values: tuple[Any, ...] | None
    error: DnsError | None


class Resolver:
    def __init__(self, settings: DnsSection):
        self.settings = settings
        self._resolver = dns.resolver.Resolver(configure=not settings.nameservers)
        if settings.nameservers:
            self._resolver.nameservers = list(settings.nameservers)
        self._resolver.port = settings.port
        self._resolver.timeout = settings.timeout
        self._resolver.lifetime = settings.lifetime
        self._resolver.search = []
        self._resolver.use_search_by_default = False
        self._cache: OrderedDict[tuple[str, str], _Entry] = OrderedDict()
        self._lock = threading.Lock()
        self._server_down_until = 0.0
        self.queries = 0  # lookups that went to the network (for tests and benchmarks)

    # -- public API ------------------------------------------------------------------

    def lookup(self, name: str, rdtype: str) -> tuple[Any, ...]:
        """Records of ``rdtype`` at ``name``; raises NxDomain, NoRecords or
        DnsTempError. TXT records come back as str (strings joined), MX as
        (preference, host), A/AAAA/PTR/CNAME/NS as str."""
        key = (name.lower().rstrip("."), rdtype)
        now = time.monotonic()
        with self._lock:
            entry = self._cache.get(key)
            if entry is not None and entry.expires > now:
                self._cache.move_to_end(key)
                if entry.error is not None:
                    raise entry.error
                return entry.values or ()
            if now < self._server_down_until:
                raise DnsTempError(f"{key[0]}/{rdtype}: DNS server not answering "
                                   "(recent timeout)")
        entry = self._query(key[0], rdtype)
        with self._lock:
            self._cache[key] = entry
            self._cache.move_to_end(key)
            while len(self._cache) > self.settings.cache_size:
                self._cache.popitem(last=False)
        if entry.error is not None:
            raise entry.error
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

    # -- the network -------------------------------------------------------------------

    def _query(self, name: str, rdtype: str) -> _Entry:
        self.queries += 1
        now = time.monotonic()
        try:
            answer = self._resolver.resolve(name, rdtype, search=False,
                                            raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN as exc:
            ttl = _negative_ttl(exc.response(exc.qnames()[0]) if exc.qnames() else None)
            return _Entry(now + ttl, None, NxDomain(f"{name}: no such domain"))
        except dns.resolver.LifetimeTimeout:
            with self._lock:
                self._server_down_until = time.monotonic() + self.settings.failure_ttl
            return _Entry(now + self.settings.failure_ttl, None,
                          DnsTempError(f"{name}/{rdtype}: DNS timeout"))
        except dns.resolver.NoNameservers as exc:
            return _Entry(now + self.settings.failure_ttl, None,
                          DnsTempError(f"{name}/{rdtype}: {_why(exc)}"))
        except (dns.exception.DNSException, OSError) as exc:
            return _Entry(now + self.settings.failure_ttl, None,
                          DnsTempError(f"{name}/{rdtype}: {type(exc).__name__}: {exc}"))
        if answer.rrset is None:
            ttl = _negative_ttl(answer.response)
            return _Entry(now + ttl, None, NoRecords(f"{name}: no {rdtype} records"))
        values = tuple(_value(rdata, rdtype) for rdata in answer.rrset)
        ttl = min(max(answer.rrset.ttl, 0), MAX_POSITIVE_TTL)
        return _Entry(now + ttl, values, None)


def _value(rdata: Any, rdtype: str) -> Any:
    if rdtype in ("TXT", "SPF"):
        return b"".join(rdata.strings).decode("utf-8", "replace")
    if rdtype == "MX":
        return (rdata.preference, rdata.exchange.to_text(omit_final_dot=True).lower())
    if rdtype in ("A", "AAAA"):
        return rdata.address
    if rdtype in ("PTR", "CNAME", "NS"):
        return rdata.target.to_text(omit_final_dot=True).lower()
    return rdata.to_text()


def _negative_ttl(response: dns.message.Message | None) -> float:
    if response is not None:
        for rrset in response.authority:
            if rrset.rdtype == dns.rdatatype.SOA:
                return float(min(rrset.ttl, rrset[0].minimum, MAX_NEGATIVE_TTL))
    return float(DEFAULT_NEGATIVE_TTL)


def _why(exc: dns.resolver.NoNameservers) -> str:
    errors = exc.kwargs.get("errors") or []
    for _server, _tcp, _port, error, _response in errors:
        if isinstance(error, str) and error:
            return error
    text = str(exc)
    if "SERVFAIL" in text:
        return "SERVFAIL"
    if "REFUSED" in text:
        return "REFUSED"
    return text.split(". ")[0]


# One resolver per process, shared by every check (and every worker's checks).
_shared: dict[DnsSection, Resolver] = {}
_shared_lock = threading.Lock()


def shared_resolver(config: Config) -> Resolver:
    with _shared_lock:
        resolver = _shared.get(config.dns)
        if resolver is None:
            resolver = _shared[config.dns] = Resolver(config.dns)
        return resolver

"""DNS blocklists: client IPs (DNSBL), domains and linked hosts (URIBL, DBL).

No list is asked unless a rules file configures it (public lists have
terms of use, and some need a key or your own mirror)::

    [[dnsbl]]
    name = "ZEN"                  # the symbol that fires when the query is listed
    zone = "zen.spamhaus.org"
    lookup = "client_ip"          # client_ip | sender_domain | from_domain | url_host
    codes = { "127.0.0.2" = 4.0, "127.0.0.4" = 3.0, "127.0.0.10/31" = 1.0 }
    symbols = { "127.0.0.4" = "ZEN_XBL" }   # optional: a symbol of its own per code
    refused = ["127.255.255.0/24", "127.0.0.1"]   # the default: never a listing

- the query is the client IP's octets reversed (IPv6: its nibbles), or the
  domain (its registrable domain unless ``registrable = false``) in front
  of the zone; ``url_host`` asks for every host linked from the text and
  HTML parts, attached web pages and the QR codes of pictures (the links
  of :mod:`gateway.urls`, the same the links check judges; at most
  ``max_hosts``, 20 by default; an IP host reversed);
- an answer in ``codes`` (an address, or a network) scores that; other
  answers in 127.0.0.0/8 are listed with score 0, so the symbol still says
  it; where several codes map to one symbol it gets the highest score;
- the operators' answers for "query refused" or "over the quota" (Spamhaus
  127.255.255.252-255, URIBL and SURBL 127.0.0.1) are ``refused`` and an
  answer outside 127.0.0.0/8 (a resolver that answers for names that do not
  exist) is no listing either: both are ``DNSBL_REFUSED`` with score 0, and
  a line in the log, never the list's symbol;
- lookups go through the gateway's resolver (:mod:`gateway.dns`, its caches
  and failure memory). A list that fails (timeout, SERVFAIL) is
  ``DNSBL_TEMPERROR``, not listed, and is not asked again for ``[dns]
  failure_ttl`` seconds, so a dead list costs one timeout, not one per
  message; lists are asked side by side, and all of them together stop at
  half the ``[pipeline] budget``.

Client IPs that cannot be listed (loopback, private, link-local) are not
asked for.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, TypeVar

from gateway.checks import Check, CheckContext
from gateway.checks.view import view_of
from gateway.config import Config
from gateway.dns import DnsTempError, InvalidName, NoRecords, NxDomain, dns_name, shared_resolver
from gateway.facts import DnsblFacts
from gateway.mail import registrable_domain
from gateway.message import Message
from gateway.ruleset import Ruleset
from gateway.schema import ConfigError, suggest_key
from gateway.symbols import SYMBOL_NAME, Report, Symbol

log = logging.getLogger("gateway.checks.dnsbl")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
T = TypeVar("T")
LOOKUPS = {
    "client_ip": "the client's IP address",
    "sender_domain": "the envelope sender's domain",
    "from_domain": "the From domain",
    "url_host": "a linked host",
}
KEYS = ("name", "zone", "lookup", "codes", "symbols", "refused", "registrable", "max_hosts",
        "description", "enabled", "force", "source")
DEFAULT_REFUSED = ("127.255.255.0/24", "127.0.0.1/32")
LISTED = ipaddress.ip_network("127.0.0.0/8")
NOT_LISTABLE = tuple(ipaddress.ip_network(n) for n in (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
    "172.16.0.0/12", "192.168.0.0/16", "::/128", "::1/128", "fc00::/7", "fe80::/10"))
MAX_AUTHORS = 5
SHOWN = 3


@dataclass(frozen=True)
class Blocklist:
    name: str
    zone: str
    lookup: str
    codes: tuple[tuple[Network, float], ...]  # most specific first
    symbols: tuple[tuple[Network, str], ...]
    refused: tuple[Network, ...]
    registrable: bool
    max_hosts: int
    description: str

    def meaning(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address
                ) -> tuple[str, float] | None:
        """(symbol, score) of a listed answer; None for a refusal."""
        if any(address in network for network in self.refused) or address not in LISTED:
            return None
        score = next((s for network, s in self.codes if address in network), 0.0)
        symbol = next((s for network, s in self.symbols if address in network), self.name)
        return symbol, score


def parse_blocklist(table: Mapping[str, Any], errors: list[str]) -> Blocklist | None:
    name = table.get("name")
    where = f"{table.get('source', 'rules')}: dnsbl {name}"
    before = len(errors)
    for key in table:
        if key not in KEYS:
            errors.append(f"{where}: {key}: unknown key{suggest_key(key, dict.fromkeys(KEYS))}")
    zone = table.get("zone")
    try:
        zone = dns_name(zone) if isinstance(zone, str) else None
    except InvalidName as exc:
        errors.append(f"{where}: zone: {exc}")
        zone = ""
    if zone is None:
        errors.append(f"{where}: zone: the list's DNS zone, such as \"zen.spamhaus.org\"")
    lookup = table.get("lookup")
    if lookup not in LOOKUPS:
        errors.append(f"{where}: lookup: expected one of {', '.join(LOOKUPS)}, got {lookup!r}")
    codes = _networks_to(table.get("codes", {}), f"{where}: codes", errors,
                         lambda v: float(v) if isinstance(v, int | float)
                         and not isinstance(v, bool) else None, "a score")
    symbols = _networks_to(table.get("symbols", {}), f"{where}: symbols", errors,
                           lambda v: v if isinstance(v, str) and SYMBOL_NAME.match(v) else None,
                           "a symbol name (UPPER_SNAKE_CASE)")
    refused_values = table.get("refused", list(DEFAULT_REFUSED))
    refused: list[Network] = []
    if not isinstance(refused_values, list):
        errors.append(f"{where}: refused: expected a list of addresses or networks")
    else:
        for value in refused_values:
            try:
                refused.append(ipaddress.ip_network(str(value), strict=False))
            except ValueError:
                errors.append(f"{where}: refused: {value!r} is not an address or network")
    registrable = table.get("registrable", True)
    if not isinstance(registrable, bool):
        errors.append(f"{where}: registrable: expected true or false")
    max_hosts = table.get("max_hosts", 20)
    if not isinstance(max_hosts, int) or isinstance(max_hosts, bool) or max_hosts < 1:
        errors.append(f"{where}: max_hosts: expected a whole number, 1 or more")
    description = table.get("description", "")
    if not isinstance(description, str):
        errors.append(f"{where}: description: expected a string")
    if len(errors) > before:
        return None
    assert isinstance(name, str) and zone and isinstance(lookup, str)
    return Blocklist(name, zone, lookup, codes, symbols, tuple(refused), registrable, max_hosts,
                     description or f"{LOOKUPS[lookup]} is listed in {zone}")


def _networks_to(table: Any, where: str, errors: list[str], convert: Callable[[Any], T | None],
                 expected: str) -> tuple[tuple[Network, T], ...]:
    if not isinstance(table, Mapping):
        errors.append(f"{where}: expected a table such as {{ \"127.0.0.2\" = ... }}")
        return ()
    found = []
    for key, value in table.items():
        try:
            network = ipaddress.ip_network(key, strict=False)
        except ValueError:
            errors.append(f"{where}: {key!r} is not an address or network")
            continue
        converted = convert(value)
        if converted is None:
            errors.append(f"{where}: {key}: expected {expected}, got {value!r}")
            continue
        found.append((network, converted))
    return tuple(sorted(found, key=lambda pair: -pair[0].prefixlen))


@dataclass
class _Outcome:
    listed: dict[str, tuple[float, list[str]]]  # symbol -> (score, evidence items)
    refused: list[str]
    failed: list[str]
    queries: int = 0


class DnsblCheck(Check):
    name = "dnsbl"
    io_bound = True
    symbols = {
        "DNSBL_TEMPERROR": "a DNS blocklist could not be asked now (DNS failure): not counted "
                           "as listed",
        "DNSBL_REFUSED": "a DNS blocklist refused the query (over its quota, or asked through "
                         "a public resolver) or gave no blocklist answer: not counted as listed",
    }

    def __init__(self, config: Config, ruleset: Ruleset):
        super().__init__(config, ruleset)
        errors: list[str] = []
        lists = [parse_blocklist(table, errors) for table in ruleset.dnsbl]
        if errors:
            raise ConfigError(errors)
        self.lists = [b for b in lists if b is not None]
        self.resolver = shared_resolver(config) if self.lists else None
        self.failure_ttl = config.dns.failure_ttl
        self.time_limit = config.pipeline.budget / 2
        self._failing: dict[str, float] = {}  # zone -> monotonic time it may be asked again
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(min(len(self.lists), 8), thread_name_prefix="dnsbl") \
            if len(self.lists) > 1 else None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    def run(self, message: Message, context: CheckContext) -> Report:
        if not self.lists:
            return Report()
        targets = {lookup: self._targets(lookup, message) for lookup in
                   {b.lookup for b in self.lists}}
        deadline = time.monotonic() + self.time_limit
        outcomes: dict[str, _Outcome] = {}
        if self._pool is None:
            for blocklist in self.lists:
                outcomes[blocklist.name] = self._ask(blocklist, targets[blocklist.lookup],
                                                     deadline)
        else:
            futures = {self._pool.submit(self._ask, b, targets[b.lookup], deadline): b
                       for b in self.lists}
            done, late = wait(futures, timeout=max(deadline - time.monotonic(), 0.0) + 0.5)
            for future in done:
                outcomes[futures[future].name] = future.result()
            for future in late:
                future.cancel()
                outcomes[futures[future].name] = _Outcome(
                    {}, [], [f"{futures[future].zone}: no answer within {self.time_limit:g}s"])
        return self._report(outcomes)

    # -- what to ask ------------------------------------------------------------------------

    def _targets(self, lookup: str, message: Message) -> list[tuple[str, str, bool]]:
        """(what is asked for, as shown in the evidence, whether it is a domain)."""
        envelope = message.envelope
        if lookup == "client_ip":
            ip = (envelope.client_ip or "").strip("[]")
            try:
                address = ipaddress.ip_address(ip)
            except ValueError:
                return []
            if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
                address = address.ipv4_mapped
            if any(address in network for network in NOT_LISTABLE
                   if network.version == address.version):
                return []
            return [(_reversed(address), str(address), False)]
        if lookup == "sender_domain":
            domain = envelope.sender_domain
            return [(domain, domain, True)] if domain and not domain.startswith("[") else []
        if lookup == "from_domain":
            found = message.authors.domains  # the reading DMARC judges
            return [(d, d, True) for d in found[:MAX_AUTHORS]]
        hosts = []
        for link in view_of(message).links:
            if not link.ip:
                hosts.append((link.host, link.host, True))
                continue
            try:
                hosts.append((_reversed(ipaddress.ip_address(link.host)), link.host, False))
            except ValueError:
                continue
        return list(dict.fromkeys(hosts))

    def _ask(self, blocklist: Blocklist, targets: list[tuple[str, str, bool]],
             deadline: float) -> _Outcome:
        outcome = _Outcome({}, [], [])
        assert self.resolver is not None
        names: dict[str, str] = {}
        for key, shown, domain in targets:
            if domain and blocklist.registrable:
                key = shown = registrable_domain(key)
            names.setdefault(key, shown)
            if len(names) >= blocklist.max_hosts:
                break
        for key, shown in names.items():
            with self._lock:
                until = self._failing.get(blocklist.zone, 0.0)
            now = time.monotonic()
            if until > now:
                outcome.failed.append(f"{blocklist.zone}: not asked, it failed less than "
                                      f"{self.failure_ttl:g}s ago")
                break
            if now >= deadline:
                outcome.failed.append(f"{blocklist.zone}: not asked for {shown}, out of time")
                break
            try:
                query = dns_name(f"{key}.{blocklist.zone}")
            except InvalidName:
                continue  # a host that cannot be a DNS name cannot be listed
            outcome.queries += 1
            try:
                answers = self.resolver.lookup(query, "A")
            except (NxDomain, NoRecords):
                continue
            except DnsTempError as exc:
                with self._lock:
                    self._failing[blocklist.zone] = time.monotonic() + self.failure_ttl
                outcome.failed.append(f"{blocklist.name} ({blocklist.zone}): {exc}")
                break
            self._read(blocklist, shown, query, answers, outcome)
        return outcome

    def _read(self, blocklist: Blocklist, shown: str, query: str, answers: tuple[Any, ...],
              outcome: _Outcome) -> None:
        codes: dict[str, list[str]] = {}
        scores: dict[str, float] = {}
        for answer in answers:
            try:
                address = ipaddress.ip_address(answer)
            except ValueError:
                continue
            meaning = blocklist.meaning(address)
            if meaning is None:
                why = "refused" if address in LISTED else "not a blocklist answer"
                outcome.refused.append(f"{blocklist.name}: {query} -> {address} ({why})")
                log.warning("dnsbl %s: %s answered %s (%s): not counted as listed; see the "
                            "list's terms (a key, your own resolver, a mirror)",
                            blocklist.name, query, address, why)
                continue
            symbol, score = meaning
            codes.setdefault(symbol, []).append(str(address))
            scores[symbol] = max(scores.get(symbol, score), score)
        for symbol, found in codes.items():
            previous, items = outcome.listed.get(symbol, (scores[symbol], []))
            items.append(f"{shown} ({', '.join(found)})")
            outcome.listed[symbol] = (max(previous, scores[symbol]), items)

    def _report(self, outcomes: Mapping[str, _Outcome]) -> Report:
        found: list[Symbol] = []
        refused: list[str] = []
        failed: list[str] = []
        listed_facts: dict[str, list[str]] = {}
        by_name = {b.name: b for b in self.lists}
        for name, outcome in outcomes.items():
            blocklist = by_name[name]
            for symbol, (score, items) in outcome.listed.items():
                shown = "; ".join(items[:SHOWN]) + (f"; and {len(items) - SHOWN} more"
                                                    if len(items) > SHOWN else "")
                found.append(Symbol(symbol, score, blocklist.description,
                                    f"{shown} in {blocklist.zone}"))
                listed_facts[symbol] = items
            refused += outcome.refused
            failed += outcome.failed
        if refused:
            found.append(self.symbol("DNSBL_REFUSED", "; ".join(refused[:SHOWN])))
        if failed:
            found.append(self.symbol("DNSBL_TEMPERROR", "; ".join(failed[:SHOWN])))
        return Report(symbols=tuple(found), facts=DnsblFacts(
            listed=listed_facts, queries=sum(o.queries for o in outcomes.values())).to_json())


def _reversed(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    if address.version == 4:
        return ".".join(reversed(str(address).split(".")))
    return ".".join(reversed(address.exploded.replace(":", "")))

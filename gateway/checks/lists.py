"""Local allow and block lists on the envelope sender and the client IP.

Three sources, all used together:

- ``[lists]`` in gateway.toml (read at start and on reload);
- ``lists`` in a recipient domain's or address's policy (rules files,
  :mod:`gateway.ruleset`): they count for that recipient's mail only;
- the managed entries in the store's database (``gateway list add``, the
  console; :mod:`gateway.quarantine.lists`), for all mail or for one
  recipient or recipient domain. Each worker reads them again every
  ``[lists] refresh`` seconds (and as soon as one expires), so a change
  applies within seconds, without a reload; the hits are counted per entry
  and written back at the same pace (for mail the MTA passed, with a queue
  id: ``gateway check`` counts none).

Sender entries: ``user@example.org`` (that address), ``@example.org`` (any
address at exactly that domain) or ``example.org`` (that domain and its
subdomains). IP entries: addresses or networks in CIDR form.

Entries for all mail give symbols as usual; entries for some recipients go
to the policy as facts (``recipient_symbols``), which judges each
recipient's mail with its own symbols. A symbol's evidence names the entry
(and a managed one's owner and reason) for the site; what a rejected sender
is told is the symbol's ``reply``: the entry's public ``--reply`` text, or
the symbol's description, never the evidence. The check also reports the envelope's
recipients (``recipients``), from which the policy finds their domains'
policies.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.checks import Check, CheckContext
from gateway.config import Config
from gateway.facts import ListsFacts
from gateway.mail import DomainError, ascii_domain
from gateway.message import Message
from gateway.ruleset import Ruleset, policy_key
from gateway.symbols import Report, Symbol

if TYPE_CHECKING:  # imported when first used: SQLAlchemy only where a store is configured
    from gateway.quarantine.store import QuarantineStore

log = logging.getLogger("gateway.checks.lists")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
# (symbol, list kind) in the order they are looked at.
KINDS = (("BLOCKLIST_SENDER", "block-sender"), ("BLOCKLIST_IP", "block-ip"),
         ("ALLOWLIST_SENDER", "allow-sender"), ("ALLOWLIST_IP", "allow-ip"))
COMPLAIN_EVERY = 60.0


class SenderList:
    def __init__(self, entries: Iterable[str]):
        self.addresses: set[str] = set()
        self.exact_domains: set[str] = set()
        self.domains: set[str] = set()
        for entry in entries:
            entry = entry.strip().lower().rstrip(".")
            if entry.startswith("@"):
                self.exact_domains.add(entry[1:])
            elif "@" in entry:
                self.addresses.add(entry)
            else:
                self.domains.add(entry)

    def match(self, address: str | None) -> str | None:
        """The entry that matches ``address``, or None."""
        address = (address or "").strip().strip("<>").lower()
        if not address or "@" not in address:
            return None
        local, _, domain = address.rpartition("@")
        domain = domain.rstrip(".")
        for candidate_domain in _spellings(domain):
            found = self._match(f"{local}@{candidate_domain}", candidate_domain)
            if found is not None:
                return found
        return None

    def _match(self, address: str, domain: str) -> str | None:
        if address in self.addresses:
            return address
        if domain in self.exact_domains:
            return "@" + domain
        labels = domain.split(".")
        for i in range(len(labels)):
            candidate = ".".join(labels[i:])
            if candidate in self.domains:
                return candidate
        return None

    def __bool__(self) -> bool:
        return bool(self.addresses or self.exact_domains or self.domains)


def _spellings(domain: str) -> tuple[str, ...]:
    """The domain as written and in A-labels (entries may be either)."""
    if domain.isascii():
        return (domain,)
    try:
        return (domain, ascii_domain(domain))
    except DomainError:
        return (domain,)


class NetworkList:
    def __init__(self, entries: Iterable[str]):
        self.networks: list[Network] = [ipaddress.ip_network(e, strict=False) for e in entries]

    def match(self, ip: str | None) -> str | None:
        if not ip or not self.networks:
            return None
        try:
            address = ipaddress.ip_address(ip.strip("[]"))
        except ValueError:
            return None
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        for network in self.networks:
            if address.version == network.version and address in network:
                return str(network)
        return None

    def __bool__(self) -> bool:
        return bool(self.networks)


@dataclass(frozen=True)
class Managed:
    """What the check needs of a managed entry besides its value."""

    id: int
    about: str  # ", owner: reason", for the evidence
    reply: str  # public, for the SMTP reply ("" = the symbol's description)
    expires: datetime | None


@dataclass(frozen=True)
class Match:
    symbol: str
    evidence: str
    entry: int | None  # the managed entry's id
    reply: str = ""


@dataclass
class Lists:
    """The four lists of one source and scope; ``entries`` describes the
    managed entries by (kind, value)."""

    lists: dict[str, SenderList | NetworkList]
    where: str = ""  # "" or " (policy of example.org)"
    entries: dict[tuple[str, str], Managed] = field(default_factory=dict)

    @classmethod
    def of(cls, allow_senders: Iterable[str] = (), block_senders: Iterable[str] = (),
           allow_ips: Iterable[str] = (), block_ips: Iterable[str] = (),
           where: str = "") -> Lists:
        return cls({"allow-sender": SenderList(allow_senders),
                    "block-sender": SenderList(block_senders),
                    "allow-ip": NetworkList(allow_ips), "block-ip": NetworkList(block_ips)},
                   where)

    def matches(self, sender: str, ip: str | None, now: datetime | None = None) -> list[Match]:
        """The match of each kind that matches; a managed entry past its
        expiry does not."""
        found: list[Match] = []
        for symbol, kind in KINDS:
            entry = self.lists[kind].match(sender if kind.endswith("sender") else ip)
            if entry is None:
                continue
            managed = self.entries.get((kind, entry))
            if managed is None:
                found.append(Match(symbol, f"matched {entry}{self.where}", None))
                continue
            if managed.expires is not None and managed.expires <= (now or datetime.now(UTC)):
                continue
            found.append(Match(symbol, f"matched {entry} (list entry {managed.id}"
                               f"{managed.about})", managed.id, managed.reply))
        return found


class ManagedLists:
    """The store's list entries, as a thread of this process last read them:
    every ``refresh`` seconds, and as soon as the first of them expires. The
    thread also writes the hits counted meanwhile. A message never waits on
    the store, except the first ones of a process, for the first reading,
    at most ``first_wait`` seconds. A store that cannot be read leaves the
    entries read last (none at first), with a log line a minute at most."""

    def __init__(self, url: str, refresh: float, first_wait: float = 5.0):
        self.url = url
        self.refresh = refresh
        self.first_wait = first_wait
        self._store: QuarantineStore | None = None
        self._lists: tuple[Lists, dict[str, Lists]] = (Lists.of(), {})
        self._expiry: datetime | None = None
        self._hits: Counter[int] = Counter()
        self._lock = threading.Lock()
        self._complained = float("-inf")
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._wake = threading.Event()
        self._stop = threading.Event()

    def current(self) -> tuple[Lists, dict[str, Lists]]:
        """(the entries for all mail, those by recipient key)."""
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._keep_reading,
                                                    name="managed-lists", daemon=True)
                    self._thread.start()
        if not self._ready.is_set() and not self._ready.wait(self.first_wait):
            self._complain(f"the store did not answer within {self.first_wait:g}s; "
                           "deciding without the managed lists for now")
        expiry = self._expiry
        if expiry is not None and datetime.now(UTC) >= expiry:
            self._wake.set()  # entries matched until then are checked one by one
        return self._lists

    def count(self, identifiers: Iterable[int]) -> None:
        with self._lock:
            self._hits.update(identifiers)

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        self._flush()
        if self._store is not None:
            self._store.close()

    def _keep_reading(self) -> None:
        while not self._stop.is_set():
            self._load()
            self._ready.set()
            self._flush()
            wait = self.refresh
            if self._expiry is not None:
                left = (self._expiry - datetime.now(UTC)).total_seconds()
                wait = min(wait, max(left, 0.0) + 0.01)
            self._wake.wait(wait)
            self._wake.clear()

    def _open(self) -> QuarantineStore | None:
        from gateway.quarantine.store import QuarantineStore

        if self._store is None:
            if self.url.startswith("sqlite:///"):
                path = self.url.removeprefix("sqlite:///")
                if path in ("", ":memory:") or not Path(path).exists():
                    return None  # no store yet: nothing managed (and none created here)
            self._store = QuarantineStore(self.url, migrate=False)
        return self._store

    def _flush(self) -> None:
        with self._lock:
            hits, self._hits = self._hits, Counter()
        if not hits:
            return
        try:
            store = self._open()
            if store is not None:
                store.record_list_hits(hits)
        except Exception as exc:
            with self._lock:
                self._hits.update(hits)
            self._complain(f"cannot count list hits: {exc}")

    def _load(self) -> None:
        store = None
        try:
            store = self._open()
            entries = store.list_entries(active_only=True) if store is not None else []
        except Exception as exc:  # a store that is down must not stop the mail
            if store is not None and not _has_lists(store):
                entries = []  # a schema from before managed lists: there are none yet
            else:
                self._complain(f"managed list entries not read again, using the last ones: "
                               f"{exc}")
                return
        grouped: dict[str, dict[str, list[str]]] = {}
        about: dict[str, dict[tuple[str, str], Managed]] = {}
        for entry in entries:
            grouped.setdefault(entry.scope, {}).setdefault(entry.kind, []).append(entry.value)
            note = f", {entry.owner}" + (f": {entry.reason[:80]}" if entry.reason else "")
            about.setdefault(entry.scope, {})[(entry.kind, entry.value)] = Managed(
                entry.id, note, entry.reply, entry.expires)
        built = {}
        for scope, kinds in grouped.items():
            lists = Lists.of(kinds.get("allow-sender", ()), kinds.get("block-sender", ()),
                             kinds.get("allow-ip", ()), kinds.get("block-ip", ()))
            lists.entries = about[scope]
            built[scope] = lists
        everyone = built.pop("", Lists.of())
        self._lists = (everyone, built)
        self._expiry = min((e.expires for e in entries if e.expires is not None), default=None)

    def _complain(self, problem: str) -> None:
        now = time.monotonic()
        if now - self._complained >= COMPLAIN_EVERY:
            self._complained = now
            log.warning("lists: %s", problem)


def _has_lists(store: QuarantineStore) -> bool:
    """Whether the store's schema has the managed lists' table (migration 0005)."""
    from sqlalchemy import inspect

    try:
        return bool(inspect(store.engine).has_table("list_entries"))
    except Exception:
        return True  # cannot tell: say so


class ListsCheck(Check):
    name = "lists"
    symbols = {
        "ALLOWLIST_SENDER": "envelope sender is on the local allow list",
        "ALLOWLIST_IP": "client IP is on the local allow list",
        "BLOCKLIST_SENDER": "envelope sender is on the local block list",
        "BLOCKLIST_IP": "client IP is on the local block list",
    }

    def __init__(self, config: Config, ruleset: Ruleset):
        super().__init__(config, ruleset)
        lists = config.lists
        self.static = Lists.of(lists.allow_senders, lists.block_senders, lists.allow_ips,
                               lists.block_ips)
        # Kept for callers that read them one by one.
        self.allow_senders = self.static.lists["allow-sender"]
        self.block_senders = self.static.lists["block-sender"]
        self.allow_ips = self.static.lists["allow-ip"]
        self.block_ips = self.static.lists["block-ip"]
        self.policies: dict[str, Lists] = {}
        # (where, kind, entries as written): what startup_problems looks at
        self.written: list[tuple[str, str, Iterable[str]]] = [
            ("[lists]", "allow-sender", lists.allow_senders),
            ("[lists]", "block-sender", lists.block_senders)]
        for key, overlay in ruleset.domains.items():
            self.written += [(f"the policy of {key}", kind, overlay.lists.get(name, ()))
                             for name, kind in (("allow_senders", "allow-sender"),
                                                ("block_senders", "block-sender"))]
            if overlay.lists:
                self.policies[key] = Lists.of(
                    **{name: overlay.lists.get(name, ()) for name in
                       ("allow_senders", "block_senders", "allow_ips", "block_ips")},
                    where=f" (policy of {key})")
        url = config.quarantine.url
        self.managed = ManagedLists(url, lists.refresh) if url else None

    def startup_problems(self) -> list[str]:
        """Entries of [lists] and of domains' policies that can match no
        sender (a wildcard), or that name a public suffix and so match every
        sender under it: what ``gateway list add`` refuses."""
        # SQLAlchemy comes with it: imported here, not in every worker.
        from gateway.quarantine.lists import public_suffix_problem

        problems = []
        for where, kind, entries in self.written:
            for entry in entries:
                try:
                    problem = public_suffix_problem(kind, entry)
                except ValueError as exc:
                    problem = str(exc)
                if problem is not None:
                    problems.append(f"lists: {where}, {kind}: {problem}")
        return problems

    def run(self, message: Message, context: CheckContext) -> Report:
        envelope = message.envelope
        sender, ip = envelope.mail_from, envelope.client_ip
        managed_global, managed_scoped = self.managed.current() if self.managed else (None, {})
        hits: list[int] = []
        found: list[Symbol] = []
        for lists in (self.static, managed_global):
            for match in (lists.matches(sender, ip) if lists else ()):
                if match.entry is not None:
                    hits.append(match.entry)
                if match.symbol not in {s.name for s in found}:
                    found.append(self._listed(match, match.evidence))
        recipients = list(envelope.rcpt_to)
        scoped: dict[str, list[Symbol]] = {}
        if self.policies or managed_scoped:
            for recipient in recipients:
                items = self._scoped(recipient, sender, ip, managed_scoped, hits,
                                     {s.name for s in found})
                if items:
                    scoped[recipient] = items
        if hits and self.managed is not None and envelope.queue_id:
            self.managed.count(set(hits))  # one hit per message and entry
        return Report(symbols=tuple(found),
                      facts=ListsFacts(recipients, recipient_symbols=scoped).to_json())

    def _scoped(self, recipient: str, sender: str, ip: str | None,
                managed: Mapping[str, Lists], hits: list[int], known: set[str]) -> list[Symbol]:
        try:
            key = policy_key(recipient)
        except ValueError:
            return []
        keys = [key.rpartition("@")[2], key] if "@" in key else [key]
        items: list[Symbol] = []
        for scope in keys:
            for lists in (self.policies.get(scope), managed.get(scope)):
                for match in (lists.matches(sender, ip) if lists else ()):
                    if match.entry is not None:
                        hits.append(match.entry)
                    if match.symbol not in known:
                        known = known | {match.symbol}
                        items.append(self._listed(match, f"{match.evidence}, for {scope}"))
        return items

    def _listed(self, match: Match, evidence: str) -> Symbol:
        """The symbol of a match: the evidence for the site, the reply for
        the sender (never the entry, its owner or its reason)."""
        symbol = self.symbol(match.symbol, evidence)
        return replace(symbol, reply=match.reply or symbol.description)

    def close(self) -> None:
        if self.managed is not None:
            self.managed.close()

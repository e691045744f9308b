"""Managed allow and block lists, kept in the store's database.

An entry is a kind (``allow-sender``, ``block-sender``, ``allow-ip``,
``block-ip``), a value (``user@example.org``, ``@example.org`` or
``example.org`` for senders; an address or network for IPs), a scope (``""``
for all mail, else the recipient address or domain whose mail it is for),
who added it and why (for the site's eyes only), what a rejected sender may
be told (``reply``, optional), when, until when, and how often it matched.

:class:`~gateway.quarantine.store.QuarantineStore` offers these as methods
(``list_entries``, ``add_list_entry``, ...); the lists check reads them in
every worker and counts the hits, ``gateway list`` and the console change
them. Values are normalised here, so every writer stores the same form.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, insert, or_, select, update
from sqlalchemy.engine import Connection

from gateway.db import utc
from gateway.durations import UNITS
from gateway.mail import DomainError, ascii_domain, is_public_suffix
from gateway.quarantine.schema import list_entries

LIST_KINDS = ("allow-sender", "block-sender", "allow-ip", "block-ip")
MAX_VALUE = 255
MAX_TEXT = 1000
# Entries are compared as they are: a wildcard would match nothing.
WILDCARDS = "*%?"
# RFC 5321's domain (letters, digits, hyphens; in A-labels) and RFC 5322's
# dot-atom local part: what an envelope address can hold unquoted.
_DOMAIN = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*")
_LOCAL = re.compile(r"[a-z0-9!#$&'*+/=?^_`{|}~-]+(\.[a-z0-9!#$&'*+/=?^_`{|}~-]+)*")
MAX_REPLY = 200  # the whole SMTP reply line stays well under RFC 5321's 512
# An expiry needs its unit ("30" alone is more likely a typo than 30 s).
_DURATION = re.compile(r"^(\d+)\s*([smhdw])$")


@dataclass(frozen=True)
class ListEntry:
    id: int
    kind: str
    value: str
    scope: str  # "" = all mail; else a recipient address or domain
    owner: str
    reason: str  # internal: shown to the site, never to a sender
    reply: str  # public: the SMTP reply's text when it rejects ("" = the symbol's)
    created: datetime
    updated: datetime
    expires: datetime | None
    hits: int
    last_hit: datetime | None

    def active(self, at: datetime | None = None) -> bool:
        return self.expires is None or self.expires > (at or datetime.now(UTC))

    def as_dict(self) -> dict[str, Any]:
        def stamp(value: datetime | None) -> str | None:
            return value.isoformat(timespec="seconds") if value else None

        return {"id": self.id, "kind": self.kind, "value": self.value, "for": self.scope or None,
                "owner": self.owner, "reason": self.reason, "reply": self.reply,
                "created": stamp(self.created),
                "updated": stamp(self.updated), "expires": stamp(self.expires),
                "active": self.active(), "hits": self.hits, "last_hit": stamp(self.last_hit)}


def normalize_value(kind: str, value: str) -> str:
    """The stored form of an entry's value; raises ValueError saying why not."""
    if kind not in LIST_KINDS:
        raise ValueError(f"unknown kind {kind!r} (kinds: {', '.join(LIST_KINDS)})")
    text = value.strip().strip("<>").strip()
    if kind.endswith("-ip"):
        try:
            network = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise ValueError(f"{value!r} is not an IP address or network "
                             "(e.g. 198.51.100.7 or 198.51.100.0/24)") from None
        if isinstance(network, ipaddress.IPv6Network) and network.prefixlen == 128 and \
                network.network_address.ipv4_mapped:
            network = ipaddress.ip_network(network.network_address.ipv4_mapped)
        return str(network)
    return normalize_sender(text, value)


def normalize_sender(text: str, shown: str | None = None) -> str:
    """``user@example.org``, ``@example.org`` or ``example.org``, lower case,
    the domain in A-labels; raises ValueError for what could match no
    envelope address (a wildcard, a character no mail domain has)."""
    shown = shown if shown is not None else text
    text = text.lower().rstrip(".")
    if not text or any(c.isspace() for c in text) or text.count("@") > 1 or len(text) > MAX_VALUE:
        raise ValueError(f"{shown!r} is not an address, @domain or domain")
    if any(c in WILDCARDS for c in text):
        raise ValueError(f"{shown!r}: entries have no wildcards ({' '.join(WILDCARDS)} match "
                         "only themselves); example.org is that domain and its subdomains, "
                         "@example.org exactly that domain")
    local, at, domain = text.rpartition("@")
    try:
        domain = ascii_domain(domain)
    except DomainError as exc:
        raise ValueError(f"{shown!r}: {exc}") from None
    if not _DOMAIN.fullmatch(domain):
        raise ValueError(f"{shown!r}: not a mail domain (labels of letters, digits and "
                         "inner hyphens, such as mail-1.example.org; no _, [ ] or others)")
    if local and not _LOCAL.fullmatch(local):
        raise ValueError(f"{shown!r}: {local!r} is not a local part an envelope address "
                         "can have (RFC 5322 dot-atom)")
    return f"{local}@{domain}" if at else domain


class PublicSuffixEntry(ValueError):
    """A domain entry that names a public suffix (refused unless forced)."""


def public_suffix_problem(kind: str, value: str) -> str | None:
    """Why a domain entry that names a public suffix (``test``, ``@co.uk``)
    is not a sender's domain, or None; raises ValueError for a value that
    cannot be an entry at all."""
    if kind.endswith("-ip"):
        return None
    local, exact, domain = normalize_value(kind, value).rpartition("@")
    if local or not is_public_suffix(domain):
        return None
    reach = "no one sends from it" if exact else f"it would match every sender under .{domain}"
    return (f"{value.strip()!r} names a public suffix, under which anyone registers "
            f"domains, not one sender's domain: {reach}")


def normalize_reply(text: str) -> str:
    """The public reply text as stored: printable ASCII on one line (it goes
    into an SMTP reply), at most MAX_REPLY characters; raises ValueError."""
    text = " ".join(text.split())
    if not all(" " <= c <= "~" for c in text):
        raise ValueError("the reply goes to the sender in an SMTP reply: printable ASCII only")
    if len(text) > MAX_REPLY:
        raise ValueError(f"the reply is {len(text)} characters; at most {MAX_REPLY}")
    return text


def parse_expiry(text: str | None, now: datetime | None = None) -> datetime | None:
    """``30d``, ``12h``, ``2w``, ``90m``, ``3600s`` from now, or an ISO date or
    time (UTC unless it says otherwise); None for no expiry. Raises
    ValueError saying why not (what ``gateway list add --expires`` and the
    console's Lists page both take)."""
    if not text or not text.strip():
        return None
    now = now or datetime.now(UTC)
    match = _DURATION.match(text.strip().lower())
    if match:
        return now + timedelta(seconds=int(match.group(1)) * UNITS[match.group(2)])
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"{text!r}: expected 30d, 12h, 2w, 90m or a date such as "
                         "2027-01-31") from None
    when = when if when.tzinfo else when.replace(tzinfo=UTC)
    if when <= now:
        raise ValueError(f"{text!r} is in the past")
    return when


def normalize_scope(scope: str | None) -> str:
    """``""`` (all mail), a recipient address or a recipient domain."""
    if not scope:
        return ""
    text = scope.strip().strip("<>").lower().rstrip(".")
    if text.startswith("@"):
        text = text[1:]
    local, at, _domain = text.rpartition("@")
    if at and not local:
        raise ValueError(f"{scope!r} is not a recipient address or domain")
    return normalize_sender(text, scope)


def _entry(row: Any) -> ListEntry:
    return ListEntry(row.id, row.kind, row.value, row.scope, row.owner, row.reason,
                     row.reply, utc(row.created), utc(row.updated), utc(row.expires), row.hits,
                     utc(row.last_hit))


def select_entries(connection: Connection, kind: str | None = None,
                   active_at: datetime | None = None) -> list[ListEntry]:
    query = select(list_entries)
    if kind is not None:
        query = query.where(list_entries.c.kind == kind)
    if active_at is not None:
        query = query.where(or_(list_entries.c.expires.is_(None),
                                list_entries.c.expires > active_at))
    query = query.order_by(list_entries.c.kind, list_entries.c.scope, list_entries.c.value)
    return [_entry(row) for row in connection.execute(query)]


def find_entry(connection: Connection, kind: str, value: str, scope: str) -> ListEntry | None:
    row = connection.execute(select(list_entries).where(and_(
        list_entries.c.kind == kind, list_entries.c.value == value,
        list_entries.c.scope == scope))).first()
    return _entry(row) if row is not None else None


def get_entry(connection: Connection, identifier: int) -> ListEntry | None:
    row = connection.execute(select(list_entries).where(list_entries.c.id == identifier)).first()
    return _entry(row) if row is not None else None


def upsert_entry(connection: Connection, kind: str, value: str, scope: str, owner: str,
                 reason: str, expires: datetime | None, at: datetime,
                 reply: str = "") -> tuple[ListEntry, bool]:
    """Add an entry, or renew the same one (kind, value, scope): its owner,
    reason, reply and expiry are replaced, its hits kept. (entry, True if new)."""
    value, scope = normalize_value(kind, value), normalize_scope(scope)
    fields = {"owner": owner[:MAX_TEXT], "reason": reason[:MAX_TEXT],
              "reply": normalize_reply(reply), "expires": expires, "updated": at}
    existing = find_entry(connection, kind, value, scope)
    if existing is not None:
        connection.execute(update(list_entries).where(list_entries.c.id == existing.id)
                           .values(**fields))
        found = get_entry(connection, existing.id)
        assert found is not None
        return found, False
    identifier = connection.execute(insert(list_entries).values(
        kind=kind, value=value, scope=scope, created=at, hits=0, **fields)
        .returning(list_entries.c.id)).scalar_one()
    found = get_entry(connection, identifier)
    assert found is not None
    return found, True


def delete_entry(connection: Connection, identifier: int) -> bool:
    return connection.execute(delete(list_entries).where(
        list_entries.c.id == identifier)).rowcount > 0


def delete_expired(connection: Connection, at: datetime) -> list[ListEntry]:
    gone = [e for e in select_entries(connection) if not e.active(at)]
    if gone:
        connection.execute(delete(list_entries).where(
            list_entries.c.id.in_([e.id for e in gone])))
    return gone


def add_hits(connection: Connection, hits: Mapping[int, int], at: datetime) -> None:
    for identifier, count in hits.items():
        connection.execute(update(list_entries).where(list_entries.c.id == identifier)
                           .values(hits=list_entries.c.hits + count, last_hit=at))

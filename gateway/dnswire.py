"""DNS queries and replies on the wire, for the record types the checks ask
for (A, AAAA, TXT, SPF, MX, PTR, CNAME, NS): the query is a few bytes put
together, and a reply is read straight into the plain values
:mod:`gateway.dns` hands out, without building dnspython's messages, rrsets
and names (that building was a fifth of a worker's CPU).

The reading is dnspython's own, kept bit for bit where it decides anything:
CNAME chains followed as ``Message.resolve_chaining`` does (16 links at
most); records of one name and type gathered into one set (duplicates
dropped, the lowest TTL; of a CNAME or SOA set, the last record); names
turned to text by ``dns.name``, IPv6 addresses by ``dns.ipv6``; names read
as ``dns.name`` reads them (every length and compression pointer checked
before it is used, a pointer only backwards, 16 at most), every record of
every section read, used or not. A reply this reader does not take as it is
(a record type it does not read, another class, anything malformed) is
handed to dnspython's own parser, which decides as before: the two readings
were compared on half a million broken replies (tests/test_dns_wire.py does a
few thousand on every run).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import dns.flags
import dns.ipv6
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype

# The record types read here, and their numbers.
FAST_TYPES = {"A": 1, "NS": 2, "CNAME": 5, "PTR": 12, "MX": 15, "TXT": 16, "AAAA": 28, "SPF": 99}
_NAME_TYPES = frozenset({2, 5, 12})  # rdata is one name
_TEXT_TYPES = frozenset({16, 99})
_SOA, _CNAME, _IN = 6, 5, 1
MAX_CHAIN = 16  # dns.message.MAX_CHAIN
MAX_POINTERS = 16  # dns.name.MAX_COMPRESSION_POINTER_CHAIN
_ERROR_RCODES = frozenset({1, 2, 4, 5})  # FORMERR, SERVFAIL, NOTIMP, REFUSED
_HEADER = struct.Struct("!HHHHHH")
_RR = struct.Struct("!HHIH")
# Label bytes dns.name writes as they are (no backslash, no \\DDD).
_ESCAPED = b'"().;\\@$' + bytes(range(0, 0x21)) + bytes(range(0x7F, 0x100))
# Names made of these are written on the wire as they are; any other
# (a backslash escape, "@") goes through dns.name.from_text, as before.
_PLAIN_NAME = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_.*")


class Unreadable(Exception):
    """A reply this reader does not take as it is: dnspython's parser decides."""


class NotOurReply(Exception):
    """A datagram that is not the reply to the query (or not a DNS message at
    all): ignored, the reply is still awaited (dnspython's ``ignore_errors``)."""


@dataclass(frozen=True, slots=True)
class Reply:
    rcode: int
    truncated: bool
    # The records of the type asked for at the end of the CNAME chain, as
    # plain values; None when there are none.
    values: tuple[Any, ...] | None
    # values' TTL; without values, the negative TTL's parts: the first SOA
    # record of the authority section, (its TTL, its minimum), or None.
    ttl: int
    soa: tuple[int, int] | None


def question(name: str, rdtype: int) -> bytes:
    """The question section for ``name`` (as :func:`gateway.dns.dns_name`
    returns it) and ``rdtype``; raises dns.exception.DNSException for a
    name dnspython would not ask for either."""
    if _PLAIN_NAME.issuperset(name):
        labels = name.encode("ascii").split(b".")
        wire = b"".join(bytes((len(label),)) + label for label in labels) + b"\0"
        if len(wire) > 255 or any(not 0 < len(label) < 64 for label in labels):
            raise dns.name.NameTooLong  # dns_name let no such name through
    else:
        written = dns.name.from_text(name).to_wire()
        assert written is not None
        wire = written
    return wire + struct.pack("!HH", rdtype, _IN)


def query(ident: bytes, asked: bytes) -> bytes:
    """A query as dnspython's make_query sends it: RD set, no EDNS."""
    return ident + b"\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + asked


def read_reply(wire: bytes, ident: bytes, asked: bytes, rdtype: int) -> Reply:
    """The reply to the query ``ident`` + ``asked``: raises NotOurReply for
    a datagram to ignore, dns.exception.DNSException (or ValueError) for a
    reply dnspython would not take as an answer either."""
    try:
        return _read(wire, ident, asked, rdtype)
    except Unreadable:
        return _read_with_dnspython(wire, ident, asked, rdtype)


# -- the fast reading ------------------------------------------------------------------

def _read(wire: bytes, ident: bytes, asked: bytes, rdtype: int) -> Reply:
    if rdtype not in FAST_TYPES.values():
        raise Unreadable
    if len(wire) < 12:
        raise NotOurReply
    _id, flags, qdcount, ancount, nscount, arcount = _HEADER.unpack_from(wire)
    if wire[:2] != ident or not flags & 0x8000 or flags & 0x7800:  # a response, QUERY
        raise NotOurReply
    rcode = flags & 0x000F
    offset = 12
    if qdcount == 1:
        end = 12 + len(asked)
        if (wire[12:end - 4].lower() != asked[:-4] or wire[end - 4:end] != asked[-4:]):
            raise Unreadable  # perhaps compressed or of another case: dnspython compares
        offset = end
    elif not (qdcount == 0 and rcode in _ERROR_RCODES):
        raise Unreadable
    if flags & 0x0200:
        # Truncated: asked again over TCP, whatever the rest holds (dnspython's
        # raise_on_truncation reads no further either).
        return Reply(rcode, True, None, 0, None)
    answer, offset = _records(wire, offset, ancount)
    authority, offset = _records(wire, offset, nscount)
    _additional, offset = _records(wire, offset, arcount)
    if offset != len(wire):
        raise Unreadable  # trailing junk
    if qdcount == 0:
        return Reply(rcode, False, None, 0, None)
    values, ttl = _chain(wire, answer, asked, rdtype, rcode)
    if values is not None:
        return Reply(rcode, False, values, ttl, None)
    return Reply(rcode, False, None, 0, _first_soa(wire, authority))


# (owner key, type, class, ttl, rdata offset, rdata length)
_Record = tuple[tuple[bytes, ...], int, int, int, int, int]


def _records(wire: bytes, offset: int, count: int) -> tuple[list[_Record], int]:
    records: list[_Record] = []
    for _ in range(count):
        labels, offset = _name(wire, offset)
        if offset + 10 > len(wire):
            raise Unreadable
        rrtype, rrclass, ttl, length = _RR.unpack_from(wire, offset)
        offset += 10
        if offset + length > len(wire):
            raise Unreadable
        if ttl > 0x7FFFFFFF:
            ttl = 0  # RFC 2181 8, as dnspython reads it
        # Every record is read, used or not, as dnspython reads them all: a
        # reply with one it cannot read is no reply (it is ignored).
        if rrclass != _IN:
            raise Unreadable
        if rrtype == _SOA:
            _soa_minimum(wire, offset, length)
        else:
            _value(wire, rrtype, offset, length)  # Unreadable for another type
        records.append((tuple(label.lower() for label in labels), rrtype, rrclass, ttl,
                        offset, length))
        offset += length
    return records, offset


def _name(wire: bytes, offset: int) -> tuple[list[bytes], int]:
    """The labels of the name at ``offset`` (without the root's), and the
    offset after it where it is written (not where a pointer led). As
    dns.name reads it: a pointer points before every byte of the name read
    so far, what it points to ends before where it was, 16 pointers at most."""
    labels: list[bytes] = []
    size = 1
    after = -1
    end = len(wire)
    start = offset
    jumps = 0
    while True:
        if offset >= end:
            raise Unreadable
        length = wire[offset]
        if length == 0:
            return labels, (offset + 1 if after < 0 else after)
        if length >= 0xC0:
            if offset + 2 > end:
                raise Unreadable
            target = ((length & 0x3F) << 8) | wire[offset + 1]
            if after < 0:
                after = offset + 2
            jumps += 1
            if target >= start or jumps > MAX_POINTERS:
                raise Unreadable  # a loop, or a forward pointer
            end = start
            offset = start = target
            continue
        if length > 63 or offset + 1 + length > end:
            raise Unreadable
        size += length + 1
        if size > 255:
            raise Unreadable
        labels.append(wire[offset + 1:offset + 1 + length])
        offset += 1 + length


def _name_text(labels: list[bytes]) -> str:
    """dns.name's text of a name, without the final dot, lower case."""
    if labels and not any(label.translate(None, _ESCAPED) != label for label in labels):
        return b".".join(labels).decode("ascii").lower()
    return dns.name.Name([*labels, b""]).to_text(omit_final_dot=True).lower()


def _rdata_name(wire: bytes, offset: int, length: int) -> list[bytes]:
    labels, end = _name(wire, offset)
    if end != offset + length:
        raise Unreadable
    return labels


def _value(wire: bytes, rdtype: int, offset: int, length: int) -> tuple[Any, bytes | Any]:
    """(the plain value, what makes two records the same for dnspython)."""
    if rdtype == 1:
        if length != 4:
            raise Unreadable
        text = "%d.%d.%d.%d" % tuple(wire[offset:offset + 4])  # noqa: UP031 (dns.ipv4's)
        return text, text
    if rdtype == 28:
        if length != 16:
            raise Unreadable
        text = dns.ipv6.inet_ntoa(wire[offset:offset + 16])
        return text, text
    if rdtype in _TEXT_TYPES:
        strings, at, end = [], offset, offset + length
        while at < end:
            size = wire[at]
            if at + 1 + size > end:
                raise Unreadable
            strings.append(wire[at + 1:at + 1 + size])
            at += 1 + size
        if not strings:
            raise Unreadable
        # RFC 6376 3.6.2.2 / RFC 7208 3.3: the strings joined with nothing between.
        return b"".join(strings).decode("utf-8", "replace"), wire[offset:end]
    if rdtype == 15:
        if length < 3:
            raise Unreadable
        value = (int.from_bytes(wire[offset:offset + 2], "big"),
                 _name_text(_rdata_name(wire, offset + 2, length - 2)))
        return value, value
    if rdtype in _NAME_TYPES:
        text = _name_text(_rdata_name(wire, offset, length))
        return text, text
    raise Unreadable


def _chain(wire: bytes, answer: list[_Record], asked: bytes, rdtype: int,
           rcode: int) -> tuple[tuple[Any, ...] | None, int]:
    """Message.resolve_chaining: the values and TTL of the records of
    ``rdtype`` at the end of the CNAME chain from the name asked for."""
    owner, _ = _name(asked, 0)
    key = tuple(label.lower() for label in owner)
    for _link in range(MAX_CHAIN):
        found = [r for r in answer if r[0] == key and r[1] == rdtype and r[2] == _IN]
        if found:
            if rcode == dns.rcode.NXDOMAIN:
                raise dns.message.AnswerForNXDOMAIN
            values: list[Any] = []
            seen: set[Any] = set()
            # A CNAME set holds one record: dnspython keeps the last.
            for _owner, _type, _class, _ttl, offset, length in (
                    found[-1:] if rdtype == _CNAME else found):
                value, same = _value(wire, rdtype, offset, length)
                if same not in seen:
                    seen.add(same)
                    values.append(value)
            return tuple(values), min(r[3] for r in found)
        if rdtype == _CNAME:
            return None, 0
        aliases = [r for r in answer if r[0] == key and r[1] == _CNAME and r[2] == _IN]
        if not aliases:
            return None, 0
        alias = aliases[-1]  # the one dnspython keeps
        key = tuple(label.lower() for label in _rdata_name(wire, alias[4], alias[5]))
    raise dns.message.ChainTooLong


def _first_soa(wire: bytes, authority: list[_Record]) -> tuple[int, int] | None:
    """(TTL, minimum) of the first SOA set of the authority section."""
    soas = [r for r in authority if r[1] == _SOA]
    if not soas:
        return None
    first = [r for r in soas if r[0] == soas[0][0] and r[2] == soas[0][2]]
    # One SOA record to a set: dnspython keeps the last, with the lowest TTL.
    return min(r[3] for r in first), _soa_minimum(wire, first[-1][4], first[-1][5])


def _soa_minimum(wire: bytes, offset: int, length: int) -> int:
    _mname, at = _name(wire, offset)
    _rname, at = _name(wire, at)
    if at + 20 != offset + length:
        raise Unreadable
    return int.from_bytes(wire[at + 16:at + 20], "big")


# -- what the fast reading leaves to dnspython -----------------------------------------

def _read_with_dnspython(wire: bytes, ident: bytes, asked: bytes, rdtype: int) -> Reply:
    request = dns.message.make_query(dns.name.from_wire(asked, 0)[0],
                                     dns.rdatatype.RdataType.make(rdtype))
    request.id = int.from_bytes(ident, "big")
    try:
        message = dns.message.from_wire(wire, raise_on_truncation=True)
    except dns.message.Truncated as exc:
        if not request.is_response(exc.message()):
            raise NotOurReply from None
        return Reply(exc.message().rcode(), True, None, 0, None)
    except Exception:  # dns.query.udp(ignore_errors=True) skips what it cannot parse
        raise NotOurReply from None
    if not request.is_response(message):
        raise NotOurReply
    rcode = message.rcode()
    truncated = False
    if not message.question:
        return Reply(rcode, truncated, None, 0, None)
    assert isinstance(message, dns.message.QueryMessage)
    chained = message.resolve_chaining()
    if chained.answer is not None:
        name = dns.rdatatype.to_text(dns.rdatatype.RdataType.make(rdtype))
        values = tuple(_dnspython_value(rdata, name) for rdata in chained.answer)
        return Reply(rcode, truncated, values, chained.answer.ttl, None)
    for rrset in message.authority:
        if rrset.rdtype == _SOA:
            return Reply(rcode, truncated, None, 0, (rrset.ttl, rrset[0].minimum))
    return Reply(rcode, truncated, None, 0, None)


def _dnspython_value(rdata: Any, rdtype: str) -> Any:
    """A value from dnspython's rdata: the same as the fast reading's."""
    if rdtype in ("TXT", "SPF"):
        return b"".join(rdata.strings).decode("utf-8", "replace")
    if rdtype == "MX":
        return (rdata.preference, rdata.exchange.to_text(omit_final_dot=True).lower())
    if rdtype in ("A", "AAAA"):
        return rdata.address
    if rdtype in ("PTR", "CNAME", "NS"):
        return rdata.target.to_text(omit_final_dot=True).lower()
    return rdata.to_text()


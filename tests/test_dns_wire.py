"""The resolver's own reading of the wire (gateway/dnswire.py), against a
real authoritative server (knotd) and dnslib servers that misbehave in front
of it: truncated answers asked again over TCP, CNAME chains, SERVFAIL
remembered per name, NXDOMAIN kept for the SOA minimum, servers tried in
order; and the reading itself beside dnspython's on crafted and broken
replies."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import dns.exception
import dns.message
import dns.rcode
import dns.rrset
import pytest

from gateway import dnswire
from gateway.config import DnsSection
from gateway.dns import DnsTempError, NoRecords, NxDomain, Resolver
from gateway.lab.dns import KnotServer, Zone
from tests.lab.dns import FaultServer

LONG_TEXT = "v=DKIM1; k=rsa; p=" + "A" * 1200  # over 512 bytes: truncated over UDP

ZONE = (Zone("wire.test", ttl=600)  # SOA minimum 30 (gateway.lab.dns)
        .add("@", "MX", "10 mail.wire.test.").add("@", "MX", "20 Backup.Wire.Test.")
        .add("mail", "A", "192.0.2.1").add("mail", "A", "192.0.2.2")
        .add("mail", "AAAA", "2001:db8::1")
        .add("www", "CNAME", "mail")
        .add("deep", "CNAME", "www")
        .add("MiXeD", "CNAME", "MAIL.wire.test.")
        .add("away", "CNAME", "host.elsewhere.example.")
        .add("ptr", "PTR", "Mail.Wire.Test.")
        .add("split", "TXT", '"v=spf1 " "-all"')
        .txt("big", LONG_TEXT))


@pytest.fixture(scope="module")
def server(lab_dir: Path):
    if shutil.which("knotd") is None:
        pytest.skip("knotd is not installed (see .ci/run)")
    with KnotServer(lab_dir / "knot-wire", [ZONE]) as knot:
        yield knot


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def resolver(port: int, clock: Clock | None = None, servers: tuple[str, ...] = ("127.0.0.1",),
             **settings) -> Resolver:
    # Long enough for an answer relayed on a busy machine; the tests that
    # wait for a timeout set their own.
    options = {"timeout": 2.0, "lifetime": 4.0, "failure_ttl": 10.0, **settings}
    return Resolver(DnsSection(nameservers=servers, port=port, **options),
                    **({"clock": clock} if clock else {}))


def test_answers_as_plain_values(server):
    lookups = resolver(server.port)
    assert lookups.lookup("wire.test", "MX") == ((10, "mail.wire.test"), (20, "backup.wire.test"))
    assert lookups.lookup("mail.wire.test", "A") == ("192.0.2.1", "192.0.2.2")
    assert lookups.lookup("mail.wire.test", "AAAA") == ("2001:db8::1",)
    assert lookups.lookup("ptr.wire.test", "PTR") == ("mail.wire.test",)
    assert lookups.txt("split.wire.test") == ["v=spf1 -all"]  # strings joined
    assert lookups.addresses("mail.wire.test") == ["192.0.2.1", "192.0.2.2", "2001:db8::1"]
    with pytest.raises(NoRecords):
        lookups.txt("mail.wire.test")
    with pytest.raises(NxDomain):
        lookups.txt("missing.wire.test")


def test_a_truncated_answer_is_asked_again_over_tcp(server):
    """knotd truncates the 1.2 KB record over UDP (no EDNS is asked for)."""
    assert resolver(server.port).txt("big.wire.test") == [LONG_TEXT]


def test_truncated_with_no_tcp_service_is_a_temporary_failure_not_a_timeout(server):
    with FaultServer("truncate", names=("big.wire.test",), upstream=server.port) as broken:
        lookups = resolver(broken.port, server_down_after=1)
        with pytest.raises(DnsTempError, match="truncated over UDP"):
            lookups.txt("big.wire.test")
        assert lookups.servers_down() == []  # it answered: never probed
        assert "." not in broken.asked
        assert lookups.txt("split.wire.test") == ["v=spf1 -all"]


def test_cname_chains_are_followed_in_the_answer(server):
    lookups = resolver(server.port)
    assert lookups.lookup("www.wire.test", "A") == ("192.0.2.1", "192.0.2.2")
    assert lookups.lookup("deep.wire.test", "AAAA") == ("2001:db8::1",)
    assert lookups.lookup("mixed.wire.test", "A") == ("192.0.2.1", "192.0.2.2")
    assert lookups.lookup("www.wire.test", "CNAME") == ("mail.wire.test",)
    # The chain leaves the server's zones: no records here (as dnspython said).
    with pytest.raises(NoRecords):
        lookups.lookup("away.wire.test", "A")


def test_nxdomain_and_no_records_are_kept_for_the_soa_minimum(server):
    clock = Clock()
    lookups = resolver(server.port, clock)
    for ask in (lambda: lookups.txt("missing.wire.test"), lambda: lookups.txt("mail.wire.test")):
        with pytest.raises((NxDomain, NoRecords)):
            ask()
        asked = lookups.queries
        clock.now += 29  # the SOA minimum is 30 s (its TTL 600)
        with pytest.raises((NxDomain, NoRecords)):
            ask()
        assert lookups.queries == asked
        clock.now += 2
        with pytest.raises((NxDomain, NoRecords)):
            ask()
        assert lookups.queries == asked + 1
    lookups.txt("split.wire.test")
    asked = lookups.queries
    clock.now += 599  # an answer is kept for its TTL
    lookups.txt("split.wire.test")
    assert lookups.queries == asked
    clock.now += 2
    lookups.txt("split.wire.test")
    assert lookups.queries == asked + 1


def test_expired_answers_leave_the_cache_and_it_keeps_its_size(server):
    """An answer past its TTL goes when a newer one comes, not only when the
    cache is full: a worker's cache grew to its size with answers long
    expired (50,000 of them, 25 MB)."""
    clock = Clock()
    lookups = resolver(server.port, clock, cache_size=3)
    with pytest.raises(NxDomain):
        lookups.txt("missing.wire.test")  # kept for the SOA minimum, 30 s
    lookups.txt("split.wire.test")  # 600 s
    assert len(lookups._cache) == 2
    clock.now += 31
    lookups.lookup("mail.wire.test", "A")
    assert [name for name, _ in lookups._cache] == ["split.wire.test", "mail.wire.test"]
    for name in ("ptr.wire.test", "www.wire.test"):
        lookups.lookup(name, "A" if name.startswith("www") else "PTR")
    assert len(lookups._cache) == 3  # the size holds: the least recently used left
    assert ("split.wire.test", "TXT") not in lookups._cache


def test_servfail_is_remembered_for_its_name_only(server):
    clock = Clock()
    with FaultServer("servfail", names=("mail.wire.test",), upstream=server.port) as broken:
        lookups = resolver(broken.port, clock, failure_ttl=10.0)
        with pytest.raises(DnsTempError, match="SERVFAIL"):
            lookups.lookup("mail.wire.test", "A")
        asked = broken.queries
        with pytest.raises(DnsTempError, match="SERVFAIL"):
            lookups.lookup("mail.wire.test", "A")
        assert broken.queries == asked  # not asked again
        assert lookups.lookup("wire.test", "MX")[0] == (10, "mail.wire.test")
        assert lookups.servers_down() == []
        clock.now += 11
        asked = broken.queries
        with pytest.raises(DnsTempError):
            lookups.lookup("mail.wire.test", "A")
        assert broken.queries == asked + 1  # asked again after failure_ttl


def test_servers_are_asked_in_order(server):
    """The first server drops the query: its timeout, then the second."""
    with FaultServer("drop") as silent, \
            FaultServer("drop", names=("nothing.invalid",), upstream=server.port,
                        host="127.0.0.2", port=silent.port) as relay:
        lookups = resolver(silent.port, servers=("127.0.0.1", "127.0.0.2"),
                           timeout=0.2, lifetime=2.0)
        assert lookups.lookup("mail.wire.test", "A") == ("192.0.2.1", "192.0.2.2")
        assert silent.asked == ["mail.wire.test."]
        assert relay.asked == ["mail.wire.test."]
        lookups = resolver(silent.port, servers=("127.0.0.2", "127.0.0.1"))
        assert lookups.txt("split.wire.test") == ["v=spf1 -all"]
        assert silent.asked == ["mail.wire.test."]  # the first answered: never asked


def test_a_lost_datagram_is_asked_again_within_the_lifetime():
    with FaultServer("drop") as silent:
        lookups = resolver(silent.port, timeout=0.2, lifetime=0.5)
        with pytest.raises(DnsTempError, match="DNS timeout"):
            lookups.txt("lost.test")
        assert silent.asked[:2] == ["lost.test.", "lost.test."]


# -- the reading beside dnspython's ---------------------------------------------------------

def _reply(qname: str, qtype: str, answer=(), authority=(), rcode=dns.rcode.NOERROR) -> bytes:
    query = dns.message.make_query(qname, qtype)
    query.id = 0x1234
    response = dns.message.make_response(query)
    response.set_rcode(rcode)
    for section, texts in ((response.answer, answer), (response.authority, authority)):
        for name, ttl, rdtype, *rdatas in texts:
            section.append(dns.rrset.from_text(name, ttl, "IN", rdtype, *rdatas))
    return response.to_wire()


SOA = ("x.test.", 300, "SOA", "ns.x.test. h.x.test. 1 2 3 4 45")
REPLIES = [
    ("x.test", "A", [("x.test.", 50, "A", "192.0.2.1", "192.0.2.9")], []),
    ("x.test", "AAAA", [("X.TEST.", 50, "AAAA", "::ffff:192.0.2.1", "2001:db8::")], []),
    ("x.test", "TXT", [("x.test.", 9, "TXT", '"a" "b"', '"\\195\\169t\\255"', '"a" "b"')], []),
    ("x.test", "MX", [("x.test.", 50, "MX", "0 .", "5 A\\.B.x.test.", "7 sp\\032ace.test.")], []),
    ("a.x.test", "A", [("a.x.test.", 70, "CNAME", "B.x.test."),
                       ("b.x.test.", 40, "CNAME", "c.x.test."),
                       ("c.x.test.", 60, "A", "192.0.2.3")], []),
    ("a.x.test", "TXT", [("a.x.test.", 70, "CNAME", "b.x.test.")], [SOA]),
    ("x.test", "PTR", [("x.test.", 5, "PTR", "h\\@st.x.test.")], []),
    ("x.test", "NS", [("x.test.", 5, "NS", "ns.x.test."), ("y.test.", 5, "NS", "no.test.")], []),
    ("x.test", "MX", [], [SOA]),
    # One record to a CNAME or SOA set: the last one counts.
    ("a.x.test", "A", [("a.x.test.", 70, "CNAME", "b.x.test."),
                       ("a.x.test.", 70, "CNAME", "c.x.test."),
                       ("c.x.test.", 60, "A", "192.0.2.3")], []),
    ("a.x.test", "CNAME", [("a.x.test.", 70, "CNAME", "b.x.test."),
                           ("a.x.test.", 30, "CNAME", "c.x.test.")], []),
    ("x.test", "TXT", [], [SOA, ("x.test.", 20, "SOA", "ns.x.test. h.x.test. 1 2 3 4 5")]),
]


@pytest.mark.parametrize(("qname", "qtype", "answer", "authority"), REPLIES)
def test_the_fast_reading_is_dnspythons(qname, qtype, answer, authority):
    wire = _reply(qname, qtype, answer, authority)
    ident, asked = b"\x12\x34", dnswire.question(qname, dnswire.FAST_TYPES[qtype])
    fast = dnswire._read(wire, ident, asked, dnswire.FAST_TYPES[qtype])
    assert fast == dnswire._read_with_dnspython(wire, ident, asked, dnswire.FAST_TYPES[qtype])


def test_a_chain_too_long_and_an_answer_for_nxdomain_are_refused():
    chain = [(f"c{i}.test.", 60, "CNAME", f"c{i + 1}.test.") for i in range(20)]
    asked = dnswire.question("c0.test", 1)
    with pytest.raises(dns.message.ChainTooLong):
        dnswire.read_reply(_reply("c0.test", "A", chain), b"\x12\x34", asked, 1)
    lying = _reply("c0.test", "A", [("c0.test.", 60, "A", "192.0.2.1")],
                   rcode=dns.rcode.NXDOMAIN)
    with pytest.raises(dns.message.AnswerForNXDOMAIN):
        dnswire.read_reply(lying, b"\x12\x34", asked, 1)


def test_replies_to_other_queries_are_ignored():
    wire = _reply("x.test", "A", [("x.test.", 50, "A", "192.0.2.1")])
    with pytest.raises(dnswire.NotOurReply):  # another id
        dnswire.read_reply(wire, b"\x43\x21", dnswire.question("x.test", 1), 1)
    with pytest.raises(dnswire.NotOurReply):  # another name
        dnswire.read_reply(wire, b"\x12\x34", dnswire.question("y.test", 1), 1)
    with pytest.raises(dnswire.NotOurReply):  # another type
        dnswire.read_reply(wire, b"\x12\x34", dnswire.question("x.test", 28), 28)


def test_a_compression_loop_ends():
    asked = dnswire.question("x.test", 1)
    header = b"\x12\x34\x81\x80\x00\x01\x00\x01\x00\x00\x00\x00"
    record = b"\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04\xc0\x00\x02\x01"
    looping = header + asked + b"\xc0\x1c" + record  # the owner: a pointer to itself
    with pytest.raises(dnswire.NotOurReply):  # dnspython refuses it too
        dnswire.read_reply(looping, b"\x12\x34", asked, 1)


def test_broken_replies_are_refused_or_ignored_never_a_crash():
    """Bytes of real replies changed, and replies cut anywhere: the reading
    raises only what the resolver handles, and what it reads by itself it
    reads as dnspython does."""
    chooser = random.Random(29)
    for qname, qtype, answer, authority in REPLIES:
        rdtype = dnswire.FAST_TYPES[qtype]
        wire, asked = _reply(qname, qtype, answer, authority), dnswire.question(qname, rdtype)
        broken = [wire[:cut] for cut in range(len(wire))]
        for _ in range(200):
            mutated = bytearray(wire)
            mutated[chooser.randrange(2, len(wire))] = chooser.randrange(256)
            broken.append(bytes(mutated))
        for candidate in broken:
            try:
                reply = dnswire.read_reply(candidate, b"\x12\x34", asked, rdtype)
            except (dnswire.NotOurReply, dns.exception.DNSException, ValueError):
                continue
            assert isinstance(reply, dnswire.Reply)
            try:
                theirs = dnswire._read_with_dnspython(candidate, b"\x12\x34", asked, rdtype)
            except (dnswire.NotOurReply, dns.exception.DNSException, ValueError):
                continue
            assert reply == theirs, candidate

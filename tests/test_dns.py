"""The resolver every check shares, against a real authoritative server
(knotd) and a misbehaving one (dnslib) in front of it: failures are
remembered per name, a server is skipped only when it is dead, and a name
that cannot exist is a permanent answer, never a temporary failure."""

from __future__ import annotations

import time

import pytest

from gateway.config import DnsSection
from gateway.dns import DnsTempError, InvalidName, NxDomain, Resolver, dns_name
from tests.lab.dns import FaultServer


def resolver(port: int, **settings) -> Resolver:
    options = {"timeout": 0.3, "lifetime": 0.6, "failure_ttl": 10.0, **settings}
    return Resolver(DnsSection(nameservers=("127.0.0.1",), port=port, **options))


def timed(call):
    started = time.monotonic()
    try:
        return call(), time.monotonic() - started
    except Exception as exc:  # the outcome is what the test compares
        return exc, time.monotonic() - started


@pytest.mark.slow
def test_one_slow_name_does_not_fail_other_names(knot):
    with FaultServer("drop", names=("slow.test",), upstream=knot.port) as dns:
        lookups = resolver(dns.port)
        outcome, took = timed(lambda: lookups.txt("slow.test"))
        assert isinstance(outcome, DnsTempError) and took >= 0.5
        outcome, took = timed(lambda: lookups.txt("good.test"))
        assert any(t.startswith("v=spf1") for t in outcome), outcome
        assert lookups.servers_down() == []


@pytest.mark.slow
def test_a_failure_is_remembered_for_its_name(knot):
    with FaultServer("drop", names=("slow.test",), upstream=knot.port) as dns:
        lookups = resolver(dns.port)
        timed(lambda: lookups.txt("slow.test"))
        asked = dns.queries
        outcome, _ = timed(lambda: lookups.txt("slow.test"))
        assert isinstance(outcome, DnsTempError)
        assert dns.queries == asked  # not asked again: no second timeout


@pytest.mark.slow
def test_a_live_server_slow_on_many_names_is_never_skipped(knot):
    """Its probe is answered (REFUSED by knotd for the root: an answer)."""
    with FaultServer("drop", names=("slow.test",), upstream=knot.port) as dns:
        lookups = resolver(dns.port, server_down_after=2)
        for index in range(4):
            outcome, _ = timed(lambda i=index: lookups.txt(f"n{i}.slow.test"))
            assert isinstance(outcome, DnsTempError)
        assert lookups.servers_down() == []
        assert lookups.lookup("good.test", "MX") == ((10, "mail.good.test"),)


@pytest.mark.slow
def test_a_dead_server_is_skipped_after_timeouts_on_several_names():
    with FaultServer("drop") as dns:
        lookups = resolver(dns.port, server_down_after=2)
        for name in ("a.test", "b.test"):
            outcome, took = timed(lambda n=name: lookups.txt(n))
            assert isinstance(outcome, DnsTempError) and took >= 0.5
        assert lookups.servers_down() == ["127.0.0.1"]
        asked = len(dns.asked)
        outcome, _ = timed(lambda: lookups.txt("c.test"))
        assert isinstance(outcome, DnsTempError)
        assert "not answering" in str(outcome)
        assert "c.test." not in dns.asked[asked:]  # skipped: no timeout waited out


@pytest.mark.slow
def test_a_server_answering_in_between_is_not_counted_down(knot):
    with FaultServer("drop", names=("slow.test",), upstream=knot.port) as dns:
        lookups = resolver(dns.port, server_down_after=2)
        timed(lambda: lookups.txt("a.slow.test"))
        lookups.txt("good.test")  # an answer: the count starts again, no probe
        timed(lambda: lookups.txt("b.slow.test"))
        assert "." not in dns.asked  # never probed
        assert lookups.servers_down() == []


@pytest.mark.slow
@pytest.mark.parametrize("name", [
    "bank..test", ".test", "", "x" * 64 + ".test", ("a" * 60 + ".") * 5 + "test",
    "ex\ufffdample.com", "example.com\udce9",
])
def test_a_name_that_cannot_exist_is_permanent_and_never_asked(name):
    with FaultServer("servfail") as dns:
        lookups = resolver(dns.port)
        with pytest.raises(InvalidName):
            lookups.txt(name)
        with pytest.raises(NxDomain):  # callers that handle NXDOMAIN need nothing new
            lookups.lookup(name, "MX")
        assert dns.queries == 0


def test_names_are_asked_for_in_a_labels(knot):
    lookups = resolver(knot.port)
    assert dns_name("_dmarc.BÄNK.test.") == "_dmarc.xn--bnk-qla.test"
    assert dns_name("bänk\u3002test") == "xn--bnk-qla.test"  # an ideographic full stop
    assert lookups.txt("_dmarc.bänk.test") == ["v=DMARC1; p=reject"]
    assert lookups.txt("_dmarc.xn--bnk-qla.test") == ["v=DMARC1; p=reject"]

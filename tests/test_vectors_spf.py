"""The OpenSPF test suites (RFC 7208 and RFC 4408, as shipped with pyspf)
through the gateway's SPF check and its DNS resolver.

Each scenario's zone data is served by a DNS server on loopback (dnslib, UDP
and TCP); each test case is one message through ``SpfCheck`` with a fresh
``gateway.dns.Resolver`` pointed at that server, so what is tested is the
gateway's resolver and its pyspf glue on real DNS packets, not pyspf's own
test harness. The vectors and their licence: tests/vectors/README.md;
the figures: docs/auth-vectors.md.

The zone data follows the suites' conventions, as pyspf's driver
(test/testspf.py) reads them:

- a name with SPF (type 99) records and no TXT entry also publishes them as
  TXT ("auto-magic duplication by test suite drivers"); ``TXT: NONE`` means
  no TXT records and no duplication;
- ``TIMEOUT`` among a name's records: a query for a type listed before it is
  answered, any other type gets no reply at all;
- CNAMEs are followed like a recursive resolver does, and a CNAME loop is a
  SERVFAIL, the error RFC 1034 3.6.2 asks for (PowerDNS Recursor answers so).
"""

from __future__ import annotations

import errno
import subprocess
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
import spf

from gateway.checks import CheckContext
from gateway.checks.spf import SpfCheck, _pyspf_lookup, install_pyspf_lookup
from gateway.config import Config, DnsSection, PipelineSection
from gateway.dns import Resolver
from gateway.message import Envelope, Message

yaml = pytest.importorskip("yaml", reason="PyYAML reads the test suites (pip install '.[test]')")

VECTORS = Path(__file__).parent / "vectors"
SUITES = ("rfc7208", "rfc4408")
MESSAGE = b"From: vectors@example.org\r\nSubject: SPF vector\r\n\r\nbody\r\n"
# A dropped query costs one lifetime; short, since the server is on loopback.
DNS = DnsSection(nameservers=("127.0.0.1",), timeout=0.2, lifetime=0.4, failure_ttl=10.0)

# Cases the gateway does not pass, and why. Every other case must pass.
KNOWN_MISSES: dict[tuple[str, str], str] = {
    ("rfc7208", "ptr-cname-loop"): (
        "pyspf's bug: query.validated_ptrs() lets a DNS error on one PTR name's address "
        "lookup (here a CNAME loop, SERVFAIL) end the whole check as temperror, where RFC 7208 "
        "5.5 says that name is skipped and the search continues (result neutral); pyspf's own "
        "driver follows CNAMEs one level deep without an error, so it never sees the loop"),
    ("rfc7208", "null-text"): (
        "not expressible in DNS: a TXT record with no character-strings is malformed on the "
        "wire (RFC 1035 3.3.14: one or more); dnspython drops such a reply as a FormError, the "
        "lookup times out and SPF is temperror (pyspf's own driver hands the empty record to "
        "pyspf without DNS)"),
}

# Cases that wait out the DNS lifetime (a query the zone data never
# answers, or a reply dnspython drops): marked slow, as is a scenario
# holding several of them.
WAIT_FOR_A_TIMEOUT = frozenset({"alltimeout", "exists-dnserr", "exp-dns-error",
                                "include-temperror", "nospftxttimeout", "null-text",
                                "txttimeout"})


# -- the suites ------------------------------------------------------------------------

@dataclass
class Scenario:
    suite: str
    description: str
    zone: dict[str, list[Any]]  # lower-case name -> [(type, value) | "TIMEOUT", ...]
    cases: dict[str, dict[str, Any]] = field(default_factory=dict)


def records(entries: list[Any]) -> list[Any]:
    """One name's zone data as pyspf's driver reads it: (type, value) pairs
    and "TIMEOUT" markers in order; SPF records doubled as TXT when the name
    has no TXT entry; ``NONE`` values dropped."""
    out: list[Any] = []
    spf_as_txt: list[tuple[str, Any]] = []
    has_txt = False
    for entry in entries:
        if not isinstance(entry, dict):
            out.append(entry)  # "TIMEOUT"
            continue
        for rdtype, value in entry.items():
            if rdtype in ("TXT", "SPF") and isinstance(value, str):
                value = [value]
            if rdtype == "TXT":
                has_txt = True
            elif rdtype == "SPF":
                spf_as_txt.append(("TXT", value))
            if value != ["NONE"]:
                out.append((rdtype, value))
    return out if has_txt else out + spf_as_txt


def load(suite: str) -> list[Scenario]:
    with open(VECTORS / f"{suite}-tests.yml", "rb") as handle:
        documents = list(yaml.safe_load_all(handle))
    return [Scenario(suite, doc["description"],
                     {name.lower().rstrip("."): records(entries)
                      for name, entries in doc["zonedata"].items()},
                     doc["tests"])
            for doc in documents]


SCENARIOS = {suite: load(suite) for suite in SUITES}
CASES = [(scenario, name) for suite in SUITES for scenario in SCENARIOS[suite]
         for name in scenario.cases]


def case_param(scenario: Scenario, name: str):
    reason = KNOWN_MISSES.get((scenario.suite, name))
    marks = [pytest.mark.xfail(reason=reason, strict=True)] if reason else []
    if name in WAIT_FOR_A_TIMEOUT:
        marks.append(pytest.mark.slow)
    return pytest.param(scenario, name, id=f"{scenario.suite}:{name}", marks=marks)


# -- the DNS server --------------------------------------------------------------------

class ZoneServer:
    """A DNS server on a loopback port (UDP and TCP) answering from one
    scenario's zone data at a time, like a recursive resolver would."""

    def __init__(self) -> None:
        from dnslib.server import DNSHandler, DNSLogger, DNSServer

        class Handler(DNSHandler):
            udplen = 512  # no EDNS from the gateway's resolver: truncate, it retries on TCP

        class Quiet(DNSLogger):
            def __init__(self) -> None:
                super().__init__(log="-request,-reply,-truncated,-error")

        self.zone: dict[str, list[Any]] = {}
        # UDP and TCP on one port: the kernel's free UDP port may be taken on
        # TCP by another program on a busy machine; then take another.
        for _attempt in range(20):
            self.udp = DNSServer(self, address="127.0.0.1", port=0, logger=Quiet(),
                                 handler=Handler)
            self.port = self.udp.server.server_address[1]
            try:
                self.tcp = DNSServer(self, address="127.0.0.1", port=self.port, tcp=True,
                                     logger=Quiet(), handler=Handler)
                break
            except OSError as exc:
                self.udp.server.server_close()
                if exc.errno != errno.EADDRINUSE:
                    raise
        else:
            raise OSError(errno.EADDRINUSE, "no loopback port free on both UDP and TCP")

    def start(self) -> ZoneServer:
        self.udp.start_thread()
        self.tcp.start_thread()
        return self

    def stop(self) -> None:
        for server in (self.udp, self.tcp):
            server.stop()
            server.server.server_close()

    def resolve(self, request, handler):
        """dnslib's resolver interface; raising DNSError sends no reply."""
        from dnslib import QTYPE, RCODE, RR
        from dnslib.dns import DNSError

        qname = b".".join(request.q.qname.label).decode("utf-8", "replace")
        qtype = QTYPE.get(request.q.qtype)
        reply = request.reply()
        reply.header.ra = 1
        name, seen = qname, set()
        while True:
            entries = self.zone.get(name.lower())
            if entries is None:
                reply.header.rcode = RCODE.NXDOMAIN
                return reply
            answers = self.answers(entries, qtype)
            if answers is None:
                raise DNSError(f"TIMEOUT: {name}/{qtype}")  # no reply at all
            for rdtype, rdata in answers:
                reply.add_answer(RR(name, getattr(QTYPE, rdtype), rdata=rdata, ttl=60))
            cnames = [e[1] for e in entries if e != "TIMEOUT" and e[0] == "CNAME"]
            if answers or not cnames or qtype == "CNAME":
                return reply
            seen.add(name.lower())
            target = cnames[0].rstrip(".")
            reply.add_answer(RR(name, QTYPE.CNAME, rdata=rdata_of("CNAME", cnames[0]), ttl=60))
            if target.lower() in seen:
                reply = request.reply()
                reply.header.rcode = RCODE.SERVFAIL  # a CNAME loop
                return reply
            name = target

    @staticmethod
    def answers(entries: list[Any], qtype: str) -> list[tuple[str, Any]] | None:
        """The records of ``qtype``; None for no reply (a TIMEOUT before any)."""
        found: list[tuple[str, Any]] = []
        for entry in entries:
            if entry == "TIMEOUT":
                if not found:
                    return None
                break
            if entry[0] == qtype:
                found.append((qtype, rdata_of(*entry)))
        return found


def rdata_of(rdtype: str, value: Any):
    from dnslib import AAAA, CNAME, MX, PTR, TXT, A

    if rdtype in ("TXT", "SPF"):
        return TXT([s.encode("utf-8") for s in value])
    if rdtype == "MX":
        return MX(str(value[1]), int(value[0]))
    return {"A": A, "AAAA": AAAA, "PTR": PTR, "CNAME": CNAME}[rdtype](value)


@pytest.fixture(scope="module")
def zones():
    server = ZoneServer().start()
    yield server
    server.stop()


# -- the tests -------------------------------------------------------------------------

def spf_check(port: int) -> SpfCheck:
    """The gateway's SPF check with a resolver of its own: cold caches,
    shared with no other test."""
    config = Config(pipeline=PipelineSection(checks=["spf"]),
                    dns=replace(DNS, port=port))
    check = SpfCheck.from_config(config)
    check.resolver = Resolver(config.dns)
    return check


def run_case(check: SpfCheck, case: dict[str, Any]) -> dict[str, Any]:
    envelope = Envelope(mail_from=case["mailfrom"], rcpt_to=("postmaster@example.net",),
                        client_ip=case["host"], helo=case["helo"])
    report = check.run(Message.from_bytes(MESSAGE, envelope), CheckContext())
    return dict(report.facts)


def expected_results(case: dict[str, Any]) -> list[str]:
    result = case["result"]
    return list(result) if isinstance(result, list) else [result]


@pytest.mark.parametrize(("scenario", "name"),
                         [case_param(scenario, name) for scenario, name in CASES])
def test_openspf_vector(zones, scenario: Scenario, name: str):
    case = scenario.cases[name]
    zones.zone = scenario.zone
    facts = run_case(spf_check(zones.port), case)
    assert facts["result"] in expected_results(case), (
        f"{scenario.description}: {case.get('description', '').strip()} "
        f"(spec {case['spec']}): {facts}")
    explanation = case.get("explanation")
    if explanation is not None:
        if explanation == "DEFAULT":  # the suites' stand-in for the default explanation
            explanation = spf.EXPLANATIONS[facts["result"]]
        assert facts["explanation"] == explanation


# Each scenario's cases in order, as messages through one check and its one
# resolver, as the milter runs them: caching across messages must change no result.
@pytest.mark.parametrize("scenario", [
    pytest.param(scenario, id=f"{scenario.suite}:{scenario.description}",
                 marks=[pytest.mark.slow] if len(WAIT_FOR_A_TIMEOUT & set(scenario.cases)) > 1
                 else [])
    for suite in SUITES for scenario in SCENARIOS[suite]])
def test_openspf_scenario_through_one_resolver(zones, scenario: Scenario):
    zones.zone = scenario.zone
    check = spf_check(zones.port)
    differ = {}
    for name, case in scenario.cases.items():
        if (scenario.suite, name) in KNOWN_MISSES:
            continue
        facts = run_case(check, case)
        if facts["result"] not in expected_results(case):
            differ[name] = (facts["result"], expected_results(case), facts["explanation"])
    assert not differ


@pytest.mark.slow
def test_pyspf_looks_up_through_the_gateway_once_a_check_is_built_not_on_import():
    code = ("import spf; original = spf.DNSLookup; import gateway.checks.spf; "
            "print(spf.DNSLookup is original)")
    imported = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              check=True)
    assert imported.stdout.strip() == "True"
    SpfCheck.from_config(Config())
    assert spf.DNSLookup is _pyspf_lookup
    install_pyspf_lookup()  # idempotent
    assert spf.DNSLookup is _pyspf_lookup

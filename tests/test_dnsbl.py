"""DNS blocklists (gateway/checks/dnsbl.py) against a real authoritative
server (knotd) with blocklist zones, and a list server that never answers."""

from __future__ import annotations

import ipaddress
import shutil
from pathlib import Path

import pytest

from gateway.checks import CheckContext
from gateway.checks.dnsbl import DnsblCheck
from gateway.config import Config, DnsSection, PolicySection
from gateway.lab.dns import KnotServer, Zone
from gateway.message import Envelope, Message
from gateway.schema import ConfigError
from tests.lab.dns import FaultServer

V6_LISTED = "2001:db8::1"


def _nibbles(address: str) -> str:
    return ".".join(reversed(ipaddress.ip_address(address).exploded.replace(":", "")))


ZONES = [
    Zone("bl.test")
    .add("2.100.51.198", "A", "127.0.0.2")
    .add("4.100.51.198", "A", "127.0.0.4")
    .add("5.100.51.198", "A", "127.0.0.2").add("5.100.51.198", "A", "127.0.0.4")
    .add("9.100.51.198", "A", "127.0.0.9")
    .add("252.100.51.198", "A", "127.255.255.252")
    .add("254.100.51.198", "A", "127.255.255.254")
    .add("66.113.0.203", "A", "203.0.113.250")
    .add(_nibbles(V6_LISTED), "A", "127.0.0.2"),
    Zone("dbl.test")
    .add("evil.example", "A", "127.0.1.2")
    .add("spamsender.example", "A", "127.0.1.2")
    .add("phish.example", "A", "127.0.1.4")
    .add("quota.example", "A", "127.0.0.1"),
    Zone("deadbl.test").add("2.100.51.198", "A", "127.0.0.2"),
]

LISTS = """
[[dnsbl]]
name = "TEST_ZEN"
zone = "bl.test"
lookup = "client_ip"
codes = { "127.0.0.2" = 4.0, "127.0.0.4" = 3.0 }
symbols = { "127.0.0.4" = "TEST_ZEN_XBL" }

[[dnsbl]]
name = "TEST_DBL"
zone = "dbl.test"
lookup = "url_host"
codes = { "127.0.1.2" = 2.5, "127.0.1.4" = 4.5 }

[[dnsbl]]
name = "TEST_DBL_SENDER"
zone = "dbl.test"
lookup = "sender_domain"
codes = { "127.0.1.0/24" = 2.0 }

[[dnsbl]]
name = "TEST_DBL_FROM"
zone = "dbl.test"
lookup = "from_domain"
codes = { "127.0.1.0/24" = 1.5 }
"""


@pytest.fixture(scope="module")
def blocklists(lab_dir: Path):
    if shutil.which("knotd") is None:
        pytest.skip("knotd is not installed (see .ci/run)")
    with KnotServer(lab_dir / "knot-dnsbl", ZONES) as server:
        yield server


def make_check(tmp_path: Path, port: int, lists: str = LISTS, **dns) -> DnsblCheck:
    rules = tmp_path / "lists.toml"
    rules.write_text(lists)
    settings = DnsSection(nameservers=("127.0.0.1",), port=port, **dns)
    return DnsblCheck.from_config(Config(dns=settings, policy=PolicySection(rules=[str(rules)])))


def run(check: DnsblCheck, ip: str | None = "203.0.113.99", mail_from: str = "",
        body: str = "hello", from_header: str = "a@example.org") -> dict[str, tuple]:
    raw = (f"From: {from_header}\r\nSubject: x\r\nContent-Type: text/html\r\n\r\n{body}\r\n"
           ).encode()
    report = check.run(Message.from_bytes(raw, Envelope(mail_from=mail_from, client_ip=ip)),
                       CheckContext())
    return {s.name: (s.score, s.evidence) for s in report.symbols}


@pytest.fixture
def check(tmp_path: Path, blocklists) -> DnsblCheck:
    return make_check(tmp_path, blocklists.port)


@pytest.mark.slow
def test_each_return_code_scores_as_configured(check):
    assert run(check, "198.51.100.2") == {"TEST_ZEN": (4.0, "198.51.100.2 (127.0.0.2) in bl.test")}
    assert run(check, "198.51.100.4") == {
        "TEST_ZEN_XBL": (3.0, "198.51.100.4 (127.0.0.4) in bl.test")}
    assert run(check, "198.51.100.5") == {
        "TEST_ZEN": (4.0, "198.51.100.5 (127.0.0.2) in bl.test"),
        "TEST_ZEN_XBL": (3.0, "198.51.100.5 (127.0.0.4) in bl.test")}
    # A code the table does not name: listed, score 0, still said.
    assert run(check, "198.51.100.9") == {"TEST_ZEN": (0.0, "198.51.100.9 (127.0.0.9) in bl.test")}
    assert run(check, V6_LISTED) == {"TEST_ZEN": (4.0, f"{V6_LISTED} (127.0.0.2) in bl.test")}


def test_unlisted_and_unlistable_addresses(check):
    assert run(check, "198.51.100.7") == {}
    for private in ("10.1.2.3", "127.0.0.1", "192.168.1.1", "::1", "fe80::1", None, "junk"):
        report = check.run(Message.from_bytes(b"Subject: x\r\n\r\nx",
                                              Envelope(client_ip=private)), CheckContext())
        assert report.facts["queries"] == 0, private


def test_refused_and_bogus_answers_are_never_listings(check):
    assert run(check, "198.51.100.254") == {"DNSBL_REFUSED": (
        0.0, "TEST_ZEN: 254.100.51.198.bl.test -> 127.255.255.254 (refused)")}
    assert run(check, "198.51.100.252") == {"DNSBL_REFUSED": (
        0.0, "TEST_ZEN: 252.100.51.198.bl.test -> 127.255.255.252 (refused)")}
    assert run(check, "203.0.113.66") == {"DNSBL_REFUSED": (
        0.0, "TEST_ZEN: 66.113.0.203.bl.test -> 203.0.113.250 (not a blocklist answer)")}


def test_linked_hosts_by_registrable_domain(check):
    body = ('<a href="https://login.EVIL.example/x">a</a> http://phish.example/ '
            'https://good.example/ https://www.quota.example/')
    assert run(check, body=body) == {
        "TEST_DBL": (4.5, "evil.example (127.0.1.2); phish.example (127.0.1.4) in dbl.test"),
        "DNSBL_REFUSED": (0.0, "TEST_DBL: quota.example.dbl.test -> 127.0.0.1 (refused)")}
    assert run(check, body='<a href="https://good.example/evil.example">x</a>') == {}


def test_sender_and_from_domains(check):
    assert run(check, mail_from="bounce@mail.spamsender.example") == {
        "TEST_DBL_SENDER": (2.0, "spamsender.example (127.0.1.2) in dbl.test")}
    assert run(check, from_header='"PayPal" <service@phish.example>') == {
        "TEST_DBL_FROM": (1.5, "phish.example (127.0.1.4) in dbl.test")}
    assert run(check, mail_from="a@good.example", from_header="a@good.example") == {}


@pytest.mark.slow
def test_a_dead_list_server_is_a_temperror_not_a_listing(tmp_path: Path, blocklists):
    lists = LISTS + ('[[dnsbl]]\nname = "TEST_DEAD"\nzone = "deadbl.test"\n'
                     'lookup = "client_ip"\ncodes = { "127.0.0.2" = 5.0 }\n')
    with FaultServer(mode="drop", names=("deadbl.test",), upstream=blocklists.port) as dead:
        check = make_check(tmp_path, dead.port, lists, timeout=0.5, lifetime=1.0,
                           failure_ttl=30.0)
        try:
            found = run(check, "198.51.100.2")
            assert set(found) == {"TEST_ZEN", "DNSBL_TEMPERROR"}
            assert found["DNSBL_TEMPERROR"][0] == 0.0
            # The resolver's own timeout (its lifetime), not the check's time limit.
            assert found["DNSBL_TEMPERROR"][1].startswith("TEST_DEAD (deadbl.test): ")
            # The list is not asked again for a while: no second timeout.
            asked = len(dead.asked)
            again = run(check, "198.51.100.2")
            assert again["DNSBL_TEMPERROR"][1] == ("deadbl.test: not asked, it failed less "
                                                   "than 30s ago")
            assert not any("deadbl" in name for name in dead.asked[asked:])
        finally:
            check.close()


def test_no_list_is_asked_unless_configured():
    check = DnsblCheck.from_config(Config())
    assert check.lists == [] and check.resolver is None
    report = check.run(Message.from_bytes(b"Subject: x\r\n\r\nhttp://evil.example/",
                                          Envelope(client_ip="198.51.100.2")), CheckContext())
    assert report.symbols == () and report.facts == {}


@pytest.mark.parametrize(
    ("table", "problem"),
    [
        ('zone = "bl.test"\nlookup = "helo"\n',
         "lookup: expected one of client_ip, sender_domain, from_domain, url_host, got 'helo'"),
        ('zone = "bl.test"\nlookup = "client_ip"\ncodes = { "127.0.0.x" = 1 }\n',
         "codes: '127.0.0.x' is not an address or network"),
        ('zone = "bl.test"\nlookup = "client_ip"\nsymbols = { "127.0.0.2" = "low" }\n',
         "symbols: 127.0.0.2: expected a symbol name (UPPER_SNAKE_CASE), got 'low'"),
        ('zone = "bl..test"\nlookup = "client_ip"\n', "zone: 'bl..test': empty label"),
        ('zone = "bl.test"\nlookup = "client_ip"\nmax_host = 3\n',
         "max_host: unknown key (did you mean 'max_hosts'?)"),
    ],
)
def test_blocklist_problems_are_config_errors(tmp_path: Path, table, problem):
    rules = tmp_path / "lists.toml"
    rules.write_text(f'[[dnsbl]]\nname = "X"\n{table}')
    with pytest.raises(ConfigError) as caught:
        DnsblCheck.from_config(Config(policy=PolicySection(rules=[str(rules)])))
    assert caught.value.problems == [f"{rules}: dnsbl X: {problem}"]


@pytest.mark.slow
def test_every_lookup_survives_the_hostile_corpus(check):
    """Whatever the content, the lookups it does not feed still find the
    listed client and sender, and none fails."""
    from tests import hostile

    for name, case in hostile.BUILDERS.items():
        envelope = Envelope(mail_from="bounce@spamsender.example", client_ip="198.51.100.2")
        report = check.run(Message.from_bytes(case.build(), envelope), CheckContext())
        found = {s.name for s in report.symbols}
        assert {"TEST_ZEN", "TEST_DBL_SENDER"} <= found, (name, report.symbols)
        assert "DNSBL_TEMPERROR" not in found, name

"""Other implementations' DMARC test cases through the gateway's DMARC code,
every DNS answer from a real authoritative server (knotd) on loopback.

- authheaders 0.16.3 (``authheaders/test/test_authentication.py``): its test
  messages, vendored, with the DNS answers of its ``dnsfunc`` published as
  zones. Where its test supplies the DKIM results (``prev=``, ``dkim=False``)
  they are handed to the gateway's DMARC check as the DKIM check's facts;
  where it verifies DKIM itself, the message goes through the gateway's
  ``dkim`` and ``dmarc`` checks.
- the PyPI ``dmarc`` package 1.2.1 (``dmarc/tests/test_dmarc.py``,
  ``test_psl.py``): its records through ``gateway.dmarc.parse_record``, its
  alignment cases through ``gateway.dmarc.aligned``, and its policy cases
  (a record, SPF and DKIM results) through the DMARC check with the record
  published in DNS. Each of those cases gets a domain of its own
  (``example.com`` becomes ``<case>-example.com``), since they publish
  different records at the same name.

A case passes when the gateway gives the result it is expected to give:
the peer's own expectation, or, where the gateway differs on purpose, its
own (``differs`` says why). The vectors and their licences:
tests/vectors/README.md; the figures: docs/auth-vectors.md.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from gateway.checks import CheckContext
from gateway.checks.dmarc import DmarcCheck
from gateway.config import AuthSection, Config, DnsSection, PipelineSection
from gateway.dmarc import PslDiscovery, RecordError, aligned, parse_record
from gateway.dns import Resolver
from gateway.evaluator import LocalEvaluator
from gateway.facts import DkimFacts, SignatureResult, SpfFacts
from gateway.lab.dns import KnotServer, Zone
from gateway.mail import author_domains
from gateway.message import Envelope, Message

VECTORS = Path(__file__).parent / "vectors"
AUTHHEADERS = VECTORS / "authheaders"


def dns_config(port: int) -> DnsSection:
    return DnsSection(nameservers=("127.0.0.1",), port=port, timeout=0.5, lifetime=1.0)


# -- authheaders -----------------------------------------------------------------------

# Its dnsfunc's answers. "" and None there mean no record; sub2.example.biz answers
# "host.example.biz" (it exists), published here as an MX record.
AUTHHEADERS_RECORDS = {
    "_dmarc.example.com": "v=DMARC1; p=reject; "
    "rua=mailto:dmarc.reports@valimail.com,mailto:dmarc_agg@vali.email; "
    "ruf=mailto:dmarc.reports@valimail.com,mailto:dmarc_c0cb7153_afrf@vali.email",
    "_dmarc.example.org": "v=DMARC1; p=none",
    "_dmarc.example.net": "v=DMARC1; p=none; sp=reject",
    "_dmarc.example.biz": "v=DMARC1; p=none; sp=quarantine; np=reject",
    "_dmarc.nop.example.org": "v=DMARC1; sp=quarantine; np=reject",
    "_dmarc.bad.example.com": "v=DMARC1; p=none; reject",
    "_dmarc.gov": "v=DMARC1; p=reject; sp=none; np=reject; "
    "rua=mailto:dotgov_dmarc@cisa.dhs.gov; psd=y",
    "test._domainkey.example.com": (AUTHHEADERS / "test.txt").read_text().strip(),
}
AUTHHEADERS_ORIGINS = ("example.com", "example.org", "example.net", "example.biz", "gov")


def authheaders_zones() -> list[Zone]:
    zones = {origin: Zone(origin) for origin in AUTHHEADERS_ORIGINS}
    for name, text in AUTHHEADERS_RECORDS.items():
        origin = next(o for o in AUTHHEADERS_ORIGINS if name.endswith("." + o))
        zones[origin].txt(name.removesuffix("." + origin), text)
    zones["example.biz"].add("sub2", "MX", "10 host.example.biz.")
    return list(zones.values())


@dataclass(frozen=True)
class AuthheadersCase:
    test: str  # the test in test_authentication.py
    message: str  # the vendored file
    dkim: tuple[tuple[str, str], ...] | None  # its prev= DKIM results; None: verified here
    expected: tuple[str, str, str]  # the gateway's (dmarc result, header.from, policy.dmarc)
    differs: str = ""  # where the gateway differs from authheaders, what it says and why


AUTHHEADERS_CASES = [
    AuthheadersCase("test_authenticate_dmarc", "test.message_signed", None,
                    ("pass", "example.com", "reject")),
    AuthheadersCase(
        "test_authenticate_dmarc_bad", "test.bad.message", (),
        ("fail", "bad.example.com", "none"),
        differs="authheaders: permerror (missing tag or value), policy.dmarc=none. The "
        "record 'v=DMARC1; p=none; reject' has a valid p=none; RFC 7489 6.3 ignores what it "
        "does not know, so the gateway reads it as p=none and the unauthenticated message "
        "fails under it. Neither applies example.com's p=reject."),
    AuthheadersCase("test_authenticate_dmarc_nofrom", "test.nofrom.message", (),
                    ("permerror", "", "")),
    AuthheadersCase(
        "test_authenticate_dmarc_psdsub", "test.gov.message", (),
        ("none", "example.gov", ""),
        differs="authheaders (dmarcbis=True): fail under _dmarc.gov's p=reject, found by the "
        "DMARCbis tree walk with psd=y. The gateway finds the organizational domain on the "
        "public suffix list (RFC 7489): example.gov publishes no record, so DMARC is none."),
    AuthheadersCase("test_authenticate_dmarc_mult_from", "test.message_multi",
                    (("example.com", "fail"), ("example.org", "pass")),
                    ("fail", "example.com", "reject")),
    AuthheadersCase("test_authenticate_dmarc_mult_from2", "test.message_multi2",
                    (("example.com", "fail"), ("example.org", "pass")),
                    ("fail", "example.com", "reject")),
    AuthheadersCase("test_authenticate_dmarc_sub", "test.message_sub",
                    (("sub.example.net", "fail"),), ("fail", "sub.example.net", "reject")),
    AuthheadersCase("test_authenticate_dmarc_np1", "test.message_np1",
                    (("sub.example.biz", "fail"),), ("fail", "sub.example.biz", "reject")),
    AuthheadersCase("test_authenticate_dmarc_np2", "test.message_np2",
                    (("sub2.example.biz", "fail"),), ("fail", "sub2.example.biz", "quarantine")),
    AuthheadersCase("test_authenticate_dmarc_no_p", "test_nop.message",
                    (("nop.example.org", "fail"),), ("none", "nop.example.org", "")),
    AuthheadersCase("test_authenticate_dmarc_comma", "testcomma.message", None,
                    ("pass", "example.com", "reject")),
]


@pytest.fixture(scope="module")
def authheaders_dns(lab_dir: Path):
    if shutil.which("knotd") is None:
        pytest.skip("knotd is not installed (see .ci/run)")
    server = KnotServer(lab_dir / "knot-dmarc-authheaders", authheaders_zones()).start()
    yield server
    server.stop()


def dmarc_facts(port: int, raw: bytes, dkim: tuple[tuple[str, str], ...] | None) -> dict:
    """The DMARC check's facts for a message: with the DKIM results given, or
    through the gateway's own dkim check."""
    envelope = Envelope(mail_from="", rcpt_to=("somebody@example.com",))
    config = Config(pipeline=PipelineSection(checks=["spf", "dkim", "dmarc"], budget=5.0),
                    dns=dns_config(port), auth=AuthSection(authserv_id="example.com"))
    message = Message.from_bytes(raw, envelope)
    if dkim is None:
        evaluator = LocalEvaluator(config)
        try:
            return dict(evaluator.evaluate_message(message).facts["dmarc"])
        finally:
            evaluator.close()
    check = DmarcCheck.from_config(config)
    check.discovery = PslDiscovery(Resolver(config.dns))
    signatures = [SignatureResult(domain, "", "", result) for domain, result in dkim]
    context = CheckContext(facts={"spf": SpfFacts(None).to_json(),
                                  "dkim": DkimFacts(signatures).to_json()})
    return dict(check.run(message, context).facts)


@pytest.mark.parametrize("case", AUTHHEADERS_CASES, ids=lambda c: c.test)
def test_authheaders_dmarc_case(authheaders_dns, case: AuthheadersCase):
    facts = dmarc_facts(authheaders_dns.port, (AUTHHEADERS / case.message).read_bytes(),
                        case.dkim)
    got = (facts["result"], facts.get("from_domain", ""),
           facts.get("policy", "") if facts["result"] in ("pass", "fail") else "")
    assert got == case.expected, (case.test, facts)


@pytest.mark.parametrize(("value", "domain"), [
    ("test@example.com", "example.com"),
    ('"Test, User" <test@example.com>', "example.com"),
    ("Test User <test@sub2.example.biz>", "sub2.example.biz"),
    ("=?UTF-8?B?QmVkIEJhdGggJiBCZXlvbmQ=?=<BdBth&Byond@example.com>", "example.com"),
])
def test_authheaders_get_domain_part(value, domain):
    """test_get_domain_part: the author domain of a From value."""
    assert author_domains([value]).domains == (domain,)


# -- the dmarc package -----------------------------------------------------------------

def test_dmarc_package_parse_record():
    record = parse_record(
        "v=DMARC1; p=reject; sp=quarantine; adkim=s; pct=50; ri=3600; RF = AFRF,IODEF; "
        "RUA = MAILTO:Dmarc@example.com ; ruf=mailto:forensic@example.com; fo=0:1:d:s; "
        "unknown=test")
    assert (record.policy, record.subdomain_policy, record.adkim, record.aspf, record.pct,
            record.testing) == ("reject", "quarantine", "s", "r", 50, False)


@pytest.mark.parametrize("record", [
    "", "v=DMARC1 p=none", "p=none", "v=DMARC1; p:none", "v=DAMRC1; p=none",
    "v=dmarc1; p=none;", "p=none; v=DMARC1", "v=DMARC1; sp=none",
    "v=DMARC1; p=reject; sp=pass", "v=DMARC1; p=pass",
])
def test_dmarc_package_records_that_give_no_policy(record):
    """test_parse_record_syntax_invalid and the first two of
    test_parse_record_value_invalid: no DMARC policy from any of them."""
    with pytest.raises(RecordError):
        parse_record(record)


@pytest.mark.parametrize("record", ["v=DMARC1; p=none; adkim=none",
                                    "v=DMARC1; p=none; aspf=none"])
def test_dmarc_package_invalid_alignment_mode_is_relaxed(record):
    """Differs: the dmarc package refuses the record (RecordValueError). RFC 7489
    6.6.3 drops a record only for its p= and sp=; the gateway reads an invalid
    adkim=/aspf= as the default, r, and keeps the domain's p=."""
    parsed = parse_record(record)
    assert (parsed.policy, parsed.adkim, parsed.aspf) == ("none", "r", "r")
    assert parsed.problems


def test_dmarc_package_not_strict_invalid_sp_is_no_policy():
    """Differs: in its non-strict mode the dmarc package keeps p=none and drops the
    invalid sp=test. RFC 7489 6.6.3 step 6: an invalid sp= and no rua= mean no
    DMARC processing at all, which the gateway does."""
    with pytest.raises(RecordError):
        parse_record("v=DMARC1; p=none; sp=test; adkim=test; aspf=test; pct=test; t=test")
    lenient = parse_record("v=DMARC1; p=none; adkim=test; aspf=test; pct=test; t=test")
    assert (lenient.policy, lenient.adkim, lenient.aspf, lenient.pct, lenient.testing) == \
        ("none", "r", "r", 100, False)


def test_dmarc_package_test_mode():
    assert parse_record("v=DMARC1; p=none; t=y").testing is True


@pytest.mark.parametrize(("identifier", "from_domain", "mode", "expected"), [
    ("example.com", "news.example.com", "r", True),
    ("news.example.com", "example.com", "r", True),
    ("example.com", "news.example.com", "s", False),
    ("news.example.com", "example.com", "s", False),
    ("EXAMPLE.COM", "news.example.com", "r", True),
    ("NEWS.EXAMPLE.COM", "example.com", "r", True),
    ("EXAMPLE.COM", "news.example.com", "s", False),
    ("NEWS.EXAMPLE.COM", "example.com", "s", False),
    ("news.example.com", "mailer.example.com", "r", True),  # test_psl.py
    ("example.com", "mailer.example.com", "s", False),      # test_psl.py
])
def test_dmarc_package_alignment(identifier, from_domain, mode, expected):
    """test_alignment, test_alignment_mixed_case and test_psl.py's."""
    discovery = PslDiscovery(Resolver(dns_config(53)))
    assert aligned(identifier, from_domain, mode, discovery) is expected


@dataclass(frozen=True)
class PolicyCase:
    test: str
    record: str  # published at _dmarc.<found_at>
    from_domain: str  # example.com: the case's own domain
    spf: tuple[str, str] | None  # (domain, result)
    dkim: tuple[str, str] | None
    expected: tuple[str, str]  # the gateway's (result, disposition)
    found_at: str = "example.com"
    differs: str = ""
    peer: dict = field(default_factory=dict)


SUFFIX_TEST = ("the dmarc package without a public suffix list aligns relaxed only when one "
               "domain is a suffix of the other, so news.example.com and mail.example.com do "
               "not align; with the list (its test_psl.py) they do, as RFC 7489 3.2 says "
               "and the gateway does: SPF passes aligned")
DMARC_PACKAGE_CASES = [
    PolicyCase("test_result_spf_alignment", "v=DMARC1; p=reject;", "example.com",
               ("news.example.com", "pass"), None, ("pass", "none")),
    PolicyCase("test_result_dkim_alignment", "v=DMARC1; p=reject;", "example.com",
               None, ("news.example.com", "pass"), ("pass", "none")),
    PolicyCase("test_result_spf_dkim_alignment", "v=DMARC1; p=reject;", "example.com",
               ("news.example.com", "pass"), ("news.example.com", "pass"), ("pass", "none")),
    PolicyCase("test_result_no_alignment", "v=DMARC1; p=none", "example.com", None, None,
               ("fail", "none")),
    PolicyCase("test_result_reject", "v=DMARC1; p=reject; aspf=s; adkim=s;", "example.com",
               ("news.example.com", "pass"), ("example.com", "fail"), ("fail", "reject")),
    PolicyCase("test_result_quarantine", "v=DMARC1; p=quarantine; adkim=s;",
               "mail.example.com", ("news.example.com", "pass"), ("example.com", "pass"),
               ("pass", "none"), found_at="mail.example.com",
               differs=SUFFIX_TEST, peer={"result": "fail", "disposition": "quarantine"}),
    PolicyCase("test_result_quarantine_subdomain", "v=DMARC1; p=none; sp=quarantine; adkim=s;",
               "mail.example.com", ("news.example.com", "pass"), ("example.com", "pass"),
               ("pass", "none"),
               differs=SUFFIX_TEST, peer={"result": "fail", "disposition": "quarantine"}),
    PolicyCase("test_result_allow_policy_test_mode", "v=DMARC1; p=reject; t=y;",
               "example.com", None, None, ("fail", "quarantine")),
    PolicyCase("test_verify_pass", "v=DMARC1; p=none;", "example.com",
               ("news.example.com", "fail"), ("example.com", "pass"), ("pass", "none")),
    PolicyCase("test_verify_none", "v=DMARC1; p=none;", "example.com", None, None,
               ("fail", "none")),
    PolicyCase("test_verify_reject", "v=DMARC1; p=reject;", "example.com", None, None,
               ("fail", "reject")),
    PolicyCase("test_verify_quarantine", "v=DMARC1; p=quarantine;", "example.com", None, None,
               ("fail", "quarantine")),
    PolicyCase("test_verify_allow_policy_test_mode", "v=DMARC1; p=quarantine; t=y;",
               "example.com", None, None, ("fail", "none"),
               differs="the dmarc package honours t=y only when asked "
               "(allow_policy_test_mode=True), else quarantines; the gateway always honours "
               "it: t=y is the domain owner asking for the next milder policy (DMARCbis)",
               peer={"disposition": "quarantine (none with allow_policy_test_mode)"}),
    PolicyCase("test_isaligned_spf", "v=DMARC1; p=reject;", "example.com",
               ("news.example.com", "pass"), None, ("pass", "none")),
    PolicyCase("test_isaligned_spf (fail)", "v=DMARC1; p=reject;", "example.com",
               ("news.example.com", "fail"), None, ("fail", "reject")),
    PolicyCase("test_isaligned_dkim", "v=DMARC1; p=reject;", "example.com",
               None, ("news.example.com", "pass"), ("pass", "none")),
    PolicyCase("test_isaligned_dkim (fail)", "v=DMARC1; p=reject;", "example.com",
               None, ("news.example.com", "fail"), ("fail", "reject")),
]


def own_domain(case: PolicyCase, name: str) -> str:
    """``example.com`` in a case's names becomes a domain of that case's own."""
    slug = re.sub("[^a-z0-9]+", "-", case.test.lower()).strip("-")
    return name.replace("example.com", f"{slug}-example.com")


@pytest.fixture(scope="module")
def dmarc_package_dns(lab_dir: Path):
    if shutil.which("knotd") is None:
        pytest.skip("knotd is not installed (see .ci/run)")
    zones = []
    for case in DMARC_PACKAGE_CASES:
        origin = own_domain(case, "example.com")
        at = own_domain(case, case.found_at).removesuffix(origin).rstrip(".")
        zone = Zone(origin).txt(f"_dmarc.{at}".rstrip("."), case.record)
        zone.add("mail", "A", "192.0.2.1")
        zones.append(zone)
    server = KnotServer(lab_dir / "knot-dmarc-package", zones).start()
    yield server
    server.stop()


@pytest.mark.parametrize("case", DMARC_PACKAGE_CASES, ids=lambda c: c.test)
def test_dmarc_package_policy_case(dmarc_package_dns, case: PolicyCase):
    from_domain = own_domain(case, case.from_domain)
    raw = f"From: <user@{from_domain}>\r\nSubject: vector\r\n\r\nbody\r\n".encode()
    spf = SpfFacts(None)
    if case.spf:
        spf = SpfFacts(case.spf[1], domain=own_domain(case, case.spf[0]))
    signatures = ([SignatureResult(own_domain(case, case.dkim[0]), "", "", case.dkim[1])]
                  if case.dkim else [])
    config = Config(pipeline=PipelineSection(checks=["spf", "dkim", "dmarc"]),
                    dns=dns_config(dmarc_package_dns.port))
    check = DmarcCheck.from_config(config)
    check.discovery = PslDiscovery(Resolver(config.dns))
    facts = check.run(Message.from_bytes(raw, Envelope(rcpt_to=("rcpt@example.net",))),
                      CheckContext(facts={"spf": spf.to_json(),
                                          "dkim": DkimFacts(signatures).to_json()}))
    disposition = facts.facts["applied"]
    assert (facts.facts["result"], disposition) == case.expected, (case.test, facts.facts)
    assert facts.facts["found_at"] == own_domain(case, case.found_at)


def test_the_cases_say_why_they_differ():
    """Every deliberate difference is explained (and counted in docs/auth-vectors.md)."""
    differing = [c for c in AUTHHEADERS_CASES if c.differs] + \
        [c for c in DMARC_PACKAGE_CASES if c.differs]
    assert all(len(c.differs) > 40 for c in differing)
    assert len(differing) == 5

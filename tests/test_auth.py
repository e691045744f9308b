"""Sender authentication against a real authoritative DNS server (knotd) on
loopback, and a misbehaving one (dnslib) for failures."""

from __future__ import annotations

import email
import re
import smtplib
import time
import uuid

import dkim
import pytest

from gateway import authresults
from gateway.config import AuthSection, Config, DnsSection, PipelineSection
from gateway.dmarc import PslDiscovery, aligned, parse_record
from gateway.dns import Resolver
from gateway.evaluator import LocalEvaluator
from gateway.message import Envelope, Message
from gateway.verdict import Verdict
from tests.authlab import (
    GOOD_IP,
    MISMATCH_IP,
    NO_PTR_IP,
    OTHER_IP,
    Keys,
    arc_seal,
    message,
    sign,
)
from tests.helpers import dns_config, send
from tests.lab.dns import FaultServer

AUTH_CHECKS = ["spf", "dkim", "arc", "dmarc", "sender", "iprev", "tls"]
AUTHSERV = "mx.gateway.test"


def auth_config(port: int, **auth) -> Config:
    return Config(
        pipeline=PipelineSection(checks=AUTH_CHECKS, budget=4.0),
        dns=DnsSection(nameservers=("127.0.0.1",), port=port, timeout=0.5, lifetime=1.0),
        auth=AuthSection(authserv_id=AUTHSERV, **auth),
    )


_evaluators: dict[str, LocalEvaluator] = {}


@pytest.fixture
def check(knot):
    """check(raw, mail_from, ip, helo, **auth settings) -> Verdict."""

    def run(raw: bytes, mail_from: str = "alice@good.test", ip: str | None = GOOD_IP,
            helo: str = "mail.good.test", macros: dict | None = None, port: int | None = None,
            rcpt_to: tuple[str, ...] = ("bob@example.net",), **auth) -> Verdict:
        config = auth_config(port or knot.port, **auth)
        evaluator = _evaluators.get(repr(config))
        if evaluator is None:
            evaluator = _evaluators[repr(config)] = LocalEvaluator(config)
        envelope = Envelope(mail_from=mail_from, rcpt_to=rcpt_to, client_ip=ip,
                            helo=helo, macros=macros or {})
        return evaluator.evaluate_message(Message.from_bytes(raw, envelope))

    return run


def names(verdict: Verdict) -> set[str]:
    return {s.name for s in verdict.symbols}


def evidence(verdict: Verdict, name: str) -> str:
    return next(s.evidence for s in verdict.symbols if s.name == name)


def spf(verdict: Verdict) -> str:
    return verdict.facts["spf"]["result"]


# -- SPF ----------------------------------------------------------------------------

@pytest.mark.parametrize(("mail_from", "ip", "expected"), [
    ("alice@good.test", GOOD_IP, "pass"),
    ("alice@good.test", OTHER_IP, "fail"),
    ("a@softfail.test", GOOD_IP, "softfail"),
    ("a@neutral.test", GOOD_IP, "neutral"),
    ("a@nospf.test", GOOD_IP, "none"),
    ("a@syntax.test", GOOD_IP, "permerror"),
    ("a@twospf.test", GOOD_IP, "permerror"),
    ("a@include.test", GOOD_IP, "pass"),
    ("a@include.test", OTHER_IP, "fail"),
    ("a@redirect.test", GOOD_IP, "pass"),
    ("a@amech.test", GOOD_IP, "pass"),
    ("a@mxmech.test", GOOD_IP, "pass"),
    ("a@ptrmech.test", GOOD_IP, "pass"),
    ("a@ptrmech.test", MISMATCH_IP, "fail"),
    ("a@cidr.test", "198.51.100.5", "pass"),
    ("a@cidr.test", MISMATCH_IP, "fail"),
    ("a@cidr.test", "2001:db8::5", "pass"),
    ("a@exists.test", GOOD_IP, "pass"),
    ("a@exists.test", MISMATCH_IP, "fail"),
    ("a@limit.test", GOOD_IP, "permerror"),
    ("a@void.test", GOOD_IP, "permerror"),
])
def test_spf_results(check, mail_from, ip, expected):
    verdict = check(message(), mail_from=mail_from, ip=ip)
    assert spf(verdict) == expected
    assert f"SPF_{expected.upper()}" in names(verdict)
    assert evidence(verdict, f"SPF_{expected.upper()}").startswith(
        f"{mail_from.split('@')[1]}: {expected}")


def test_spf_lookup_limit_says_why(check):
    verdict = check(message(), mail_from="a@limit.test")
    assert "Too many DNS lookups" in evidence(verdict, "SPF_PERMERROR")


def test_spf_checks_helo_for_bounces(check):
    verdict = check(message(), mail_from="", helo="mail.good.test")
    assert verdict.facts["spf"]["identity"] == "helo"
    assert spf(verdict) == "pass"
    assert "spf=pass smtp.helo=mail.good.test" in verdict.authentication_results


def test_spf_without_client_ip_is_not_guessed(check):
    verdict = check(message(), ip=None)
    assert not any(n.startswith("SPF_") for n in names(verdict))
    assert "spf=" not in (verdict.authentication_results or "")


# -- DKIM ---------------------------------------------------------------------------

def dkim_results(verdict: Verdict) -> list[tuple[str, str, str]]:
    return [(s["domain"], s["selector"], s["result"])
            for s in verdict.facts["dkim"]["signatures"]]


def test_dkim_rsa_2048_passes(check, keys):
    verdict = check(sign(message(), "good.test", "s2048", keys.rsa))
    assert dkim_results(verdict) == [("good.test", "s2048", "pass")]
    assert "DKIM_PASS" in names(verdict)


def test_dkim_ed25519_passes(check, keys):
    verdict = check(sign(message(), "good.test", "sed", keys.ed25519,
                         algorithm=b"ed25519-sha256"))
    assert dkim_results(verdict) == [("good.test", "sed", "pass")]
    assert verdict.facts["dkim"]["signatures"][0]["algorithm"] == "ed25519-sha256"


def test_dkim_broken_by_a_body_change(check, keys):
    signed = sign(message(), "good.test", "s2048", keys.rsa)
    verdict = check(signed.replace(b"tomorrow", b"TOMORROW"))
    assert dkim_results(verdict) == [("good.test", "s2048", "fail")]
    assert "body hash mismatch" in evidence(verdict, "DKIM_FAIL")


def test_dkim_broken_by_a_header_change(check, keys):
    signed = sign(message(subject="invoice"), "good.test", "s2048", keys.rsa)
    verdict = check(signed.replace(b"Subject: invoice", b"Subject: INVOICE"))
    assert dkim_results(verdict) == [("good.test", "s2048", "fail")]
    assert "signature does not verify" in evidence(verdict, "DKIM_FAIL")


def test_dkim_two_signatures_one_good_one_bad(check, keys):
    raw = sign(message(), "good.test", "s2048", keys.rsa)
    raw = sign(raw, "good.test", "other", keys.rsa)  # wrong key for that selector
    verdict = check(raw)
    assert sorted(dkim_results(verdict)) == [("good.test", "other", "fail"),
                                             ("good.test", "s2048", "pass")]
    assert {"DKIM_PASS", "DKIM_FAIL"} <= names(verdict)
    assert verdict.facts["dmarc"]["result"] == "pass"  # one aligned pass is enough
    assert verdict.authentication_results.count("dkim=") == 2


def test_dkim_unsigned(check):
    verdict = check(message())
    assert dkim_results(verdict) == []
    assert "DKIM_NONE" in names(verdict)
    assert "dkim=none" in verdict.authentication_results


def test_dkim_rsa_sha1_does_not_pass(check, keys):
    verdict = check(sign(message(), "good.test", "s2048", keys.rsa, algorithm=b"rsa-sha1"))
    assert dkim_results(verdict) == [("good.test", "s2048", "policy")]
    assert "RFC 8301" in evidence(verdict, "DKIM_POLICY")
    assert verdict.facts["dmarc"]["dkim_aligned"] is False


@pytest.mark.parametrize(("selector", "reason"), [
    ("nokey", "no key at nokey._domainkey.good.test"),
    ("revoked", "key revoked"),
    ("broken", "bad key"),
    ("small", "too small"),
])
def test_dkim_key_problems_are_permerrors(check, keys, selector, reason):
    key = keys.small if selector == "small" else keys.rsa
    verdict = check(sign(message(), "good.test", selector, key))
    assert dkim_results(verdict) == [("good.test", selector, "permerror")]
    assert reason in evidence(verdict, "DKIM_PERMERROR")


def test_dkim_key_in_strings_cut_anywhere_is_one_key(check, keys):
    """RFC 6376 3.6.2.2: the strings of a TXT record are joined with nothing between."""
    verdict = check(sign(message(), "good.test", "split", keys.rsa))
    assert dkim_results(verdict) == [("good.test", "split", "pass")]


def test_dkim_two_key_records_at_one_selector_are_no_key(check, keys):
    """RFC 6376 3.6.2.2: several records at one name: results undefined, so none."""
    verdict = check(sign(message(), "good.test", "two", keys.rsa))
    assert dkim_results(verdict) == [("good.test", "two", "permerror")]
    assert "2 TXT records at two._domainkey.good.test" in evidence(verdict, "DKIM_PERMERROR")


def test_dkim_length_limited_signature_is_marked(check, keys):
    """It verifies, but vouches for nothing past l=: policy, not pass
    (tests/test_auth_transient.py has the DMARC side)."""
    signed = sign(message(), "good.test", "s2048", keys.rsa, length=True)
    verdict = check(signed + b"-- \r\nAppended by someone else: click here\r\n")
    assert dkim_results(verdict) == [("good.test", "s2048", "policy")]
    assert "DKIM_PARTIAL_BODY" in names(verdict)
    untouched = check(sign(message(), "good.test", "s2048", keys.rsa, length=True))
    assert dkim_results(untouched) == [("good.test", "s2048", "pass")]
    assert "DKIM_PARTIAL_BODY" not in names(untouched)


def test_dkim_malformed_signature_is_neutral(check):
    raw = b"DKIM-Signature: v=1; a=rsa-sha256; d=good.test; s=s2048; h=from\r\n" + message()
    verdict = check(raw)
    assert dkim_results(verdict)[0][2] == "neutral"
    assert "DKIM_NEUTRAL" in names(verdict)


# -- DMARC --------------------------------------------------------------------------

def dmarc(verdict: Verdict) -> str:
    return verdict.facts["dmarc"]["result"]


def test_dmarc_pass_through_aligned_spf(check):
    verdict = check(message())
    assert dmarc(verdict) == "pass"
    assert verdict.facts["dmarc"]["spf_aligned"] is True
    assert verdict.action == "accept"


def test_dmarc_pass_through_aligned_dkim_alone(check, keys):
    verdict = check(sign(message(), "good.test", "s2048", keys.rsa), ip=OTHER_IP)
    assert spf(verdict) == "fail"
    assert dmarc(verdict) == "pass"
    assert verdict.facts["dmarc"]["dkim_domain"] == "good.test"


def test_dmarc_spf_pass_but_unaligned_fails(check):
    verdict = check(message(from_header="q@quarantine.test"), mail_from="bounce@good.test")
    assert spf(verdict) == "pass"
    assert dmarc(verdict) == "fail"
    assert "DMARC_POLICY_QUARANTINE" in names(verdict)
    assert verdict.action == "quarantine"


def test_dmarc_relaxed_alignment_accepts_a_subdomain(check):
    verdict = check(message(), mail_from="bounces@sub.good.test")
    assert spf(verdict) == "pass"
    assert dmarc(verdict) == "pass"


def test_dmarc_strict_spf_alignment_refuses_a_subdomain(check):
    verdict = check(message(from_header="s@strict.test"), mail_from="b@bounce.strict.test")
    assert spf(verdict) == "pass"
    assert dmarc(verdict) == "fail"
    assert verdict.action == "reject"


def test_dmarc_strict_dkim_alignment_refuses_a_subdomain(check, keys):
    raw = sign(message(from_header="s@strict.test"), "sub.strict.test", "s2048", keys.rsa)
    verdict = check(raw, mail_from="b@bounce.strict.test", ip=OTHER_IP)
    assert dkim_results(verdict) == [("sub.strict.test", "s2048", "pass")]
    assert dmarc(verdict) == "fail"
    aligned_parent = check(sign(message(from_header="s@strict.test"), "strict.test", "s2048",
                                keys.rsa), mail_from="b@bounce.strict.test", ip=OTHER_IP)
    assert dmarc(aligned_parent) == "pass"


def test_dmarc_reject_is_a_550_naming_dmarc(check):
    verdict = check(message(), ip=OTHER_IP)
    assert dmarc(verdict) == "fail"
    assert "DMARC_POLICY_REJECT" in names(verdict)
    assert verdict.action == "reject"
    assert str(verdict.reply).startswith("550 5.7.1 Rejected: DMARC policy of the sender's "
                                         "domain says reject: good.test: p=reject")
    assert "dmarc=fail header.from=good.test policy.dmarc=reject" in \
        verdict.authentication_results


def test_dmarc_reject_downgraded_to_quarantine_by_config(check):
    verdict = check(message(), ip=OTHER_IP, dmarc_reject="quarantine")
    assert "DMARC_REJECT_DOWNGRADED" in names(verdict)
    assert verdict.action == "quarantine"


def test_dmarc_reject_downgraded_per_domain(check):
    downgraded = check(message(), ip=OTHER_IP,
                       dmarc_reject_domains={"good.test": "quarantine"})
    assert downgraded.action == "quarantine"
    other = check(message(from_header="s@strict.test"), mail_from="s@strict.test",
                  ip=OTHER_IP, dmarc_reject_domains={"good.test": "quarantine"})
    assert other.action == "reject"


def test_dmarc_p_none_only_reports(check):
    verdict = check(message(from_header="m@monitor.test"), ip=OTHER_IP,
                    mail_from="m@monitor.test")
    assert dmarc(verdict) == "fail"
    assert "DMARC_POLICY_NONE" in names(verdict)
    # Delivered, nothing forced by p=none; SPF fail + iprev fail + DMARC_POLICY_NONE
    # (4.1) reach the add_header tier (the Junk folder), not the quarantine.
    assert (verdict.action, verdict.forced_by) == ("add_header", None)


def test_dmarc_without_record(check):
    verdict = check(message(from_header="n@nodmarc.test"), mail_from="n@nodmarc.test",
                    ip=OTHER_IP)
    assert dmarc(verdict) == "none"
    assert "DMARC_NA" in names(verdict)


def test_dmarc_sp_applies_to_subdomains(check):
    parent = check(message(from_header="x@sp.test"), mail_from="x@sp.test", ip=OTHER_IP)
    assert "DMARC_POLICY_NONE" in names(parent)  # p=none for sp.test itself
    child = check(message(from_header="x@mail.sp.test"), mail_from="x@mail.sp.test",
                  ip=OTHER_IP)
    assert verdict_policy(child) == ("reject", "reject")  # sp=reject for its subdomains
    assert child.facts["dmarc"]["found_at"] == "sp.test"


def verdict_policy(verdict: Verdict) -> tuple[str, str]:
    """(the policy published for the From domain, the one applied after pct=/t=)."""
    return verdict.facts["dmarc"]["published_policy"], verdict.facts["dmarc"]["applied"]


def test_dmarc_subdomain_inherits_sp_quarantine(check):
    verdict = check(message(from_header="x@sub.good.test"), mail_from="x@sub.good.test",
                    ip=OTHER_IP)
    assert verdict_policy(verdict) == ("quarantine", "quarantine")
    assert verdict.action == "quarantine"


def test_dmarc_junk_txt_beside_a_valid_record_is_ignored(check):
    verdict = check(message(from_header="j@junk.test"), mail_from="j@junk.test", ip=OTHER_IP)
    assert verdict_policy(verdict) == ("reject", "reject")


def test_dmarc_two_records_mean_no_policy(check):
    verdict = check(message(from_header="t@twice.test"), mail_from="t@twice.test", ip=OTHER_IP)
    assert dmarc(verdict) == "none"


def test_dmarc_invalid_p_with_rua_is_p_none(check):
    verdict = check(message(from_header="b@badp.test"), mail_from="b@badp.test", ip=OTHER_IP)
    assert verdict_policy(verdict) == ("none", "none")


def test_dmarc_pct_50_applies_to_about_half(check):
    applied = {"reject": 0, "quarantine": 0}
    for index in range(200):
        raw = message(from_header="p@pct.test", subject=f"sample {index}")
        verdict = check(raw, mail_from="p@pct.test", ip=OTHER_IP)
        applied[verdict.facts["dmarc"]["applied"]] += 1
        if verdict.facts["dmarc"]["applied"] == "quarantine":
            assert "DMARC_SAMPLED_OUT" in names(verdict)
        # RFC 7489 11.2: policy.dmarc is the policy applied after pct=
        assert f"policy.dmarc={verdict.facts['dmarc']['applied']}" in \
            verdict.authentication_results
    assert 70 <= applied["reject"] <= 130, applied
    again = check(message(from_header="p@pct.test", subject="sample 7"),
                  mail_from="p@pct.test", ip=OTHER_IP)
    first = check(message(from_header="p@pct.test", subject="sample 7"),
                  mail_from="p@pct.test", ip=OTHER_IP)
    assert again.action == first.action  # the same message always samples the same way


# RFC 7489 6.6.1: every author domain is evaluated, the strictest result applies.
# evil.test publishes no DMARC and lets OTHER_IP send: its own part always "passes".
@pytest.mark.parametrize("header", [
    "From: ceo@bank.test, x@evil.test\r\n",
    "From: x@evil.test, ceo@bank.test\r\n",
    "From: Boss <ceo@bank.test>, \"Evil\" <x@evil.test>\r\n",
    "From: x@evil.test\r\nFrom: ceo@bank.test\r\n",
    "From: x@evil.test\r\nFrom : ceo@bank.test\r\n",
    "From : ceo@bank.test\r\nFrom: x@evil.test\r\n",
    "From: ceo@bank.test <x@evil.test>\r\n",
    "From: team: ceo@bank.test, x@evil.test;\r\n",
], ids=["one field", "bank second", "display names", "two fields", "obs 'From :' second",
        "obs 'From :' first", "address in display name", "group"])
def test_dmarc_every_author_domain_counts_and_the_strictest_applies(check, header):
    raw = header.encode() + message().split(b"\r\n", 1)[1]
    verdict = check(raw, mail_from="x@evil.test", ip=OTHER_IP)
    assert spf(verdict) == "pass"
    assert verdict.facts["dmarc"]["authors"] == {"bank.test": "fail", "evil.test": "none"}
    assert dmarc(verdict) == "fail" and verdict.facts["dmarc"]["from_domain"] == "bank.test"
    assert "DMARC_POLICY_REJECT" in names(verdict)
    assert verdict.action == "reject"
    assert "strictest of 2 author domains" in evidence(verdict, "DMARC_POLICY_REJECT")
    assert "dmarc=fail header.from=bank.test policy.dmarc=reject" in \
        verdict.authentication_results


def test_dmarc_two_passing_author_domains_pass(check, keys):
    raw = sign(message(from_header="a@good.test, b@sub.good.test"), "good.test", "s2048",
               keys.rsa)
    verdict = check(raw)
    assert verdict.facts["dmarc"]["authors"] == {"good.test": "pass", "sub.good.test": "pass"}
    assert dmarc(verdict) == "pass" and verdict.action == "accept"


@pytest.mark.parametrize(("header", "why"), [
    ("From: \"Test User\"\r\n", "no author domain"),
    ("From: undisclosed-recipients:;\r\n", "no author domain"),
    ("From: ceo@bank..test\r\n", "not a valid domain name"),
    ("From: ceo@[192.0.2.1]\r\n", "an address literal is not a domain"),
])
def test_dmarc_without_a_usable_author_domain_is_a_permerror(check, header, why):
    raw = header.encode() + message().split(b"\r\n", 1)[1]
    verdict = check(raw)
    assert dmarc(verdict) == "permerror"
    assert "DMARC_PERMERROR" in names(verdict)
    assert why in evidence(verdict, "DMARC_PERMERROR")
    assert next(s.score for s in verdict.symbols if s.name == "DMARC_PERMERROR") >= 3.0
    assert "dmarc=permerror" in verdict.authentication_results


def test_dmarc_no_from_field_at_all_is_a_permerror(check):
    raw = b"\r\n".join(line for line in message().split(b"\r\n")
                        if not line.startswith(b"From:"))
    assert dmarc(check(raw)) == "permerror"


def test_dmarc_a_utf8_from_domain_is_looked_up_in_a_labels(check):
    raw = message(from_header="CEO <ceo@bänk.test>")  # raw UTF-8 (RFC 6532)
    verdict = check(raw)
    assert verdict.facts["dmarc"]["from_domain"] == "xn--bnk-qla.test"
    assert verdict_policy(verdict) == ("reject", "reject")
    assert verdict.action == "reject"


# RFC 7489 6.6.3: discovery stops at the first domain with v=DMARC1 records.
@pytest.mark.parametrize(("author", "result", "symbol"), [
    ("x@bad.bank.test", "fail", "DMARC_POLICY_NONE"),   # p=none; a stray "reject" ignored
    ("x@multi.bank.test", "none", "DMARC_NA"),          # two records: no policy at all
    ("x@nop.bank.test", "none", "DMARC_NA"),            # no p=, no rua=: no policy at all
    ("x@ruaonly.bank.test", "fail", "DMARC_POLICY_NONE"),  # no p=, a valid rua=: p=none
    ("x@lower.bank.test", "fail", "DMARC_POLICY_REJECT"),  # v=dmarc1 is not DMARC1: bank.test's
    ("x@badsp.test", "none", "DMARC_NA"),               # invalid sp=, no rua=: no policy
    ("x@sub.badsp.test", "none", "DMARC_NA"),
    ("x@sub.badsprua.test", "fail", "DMARC_POLICY_NONE"),  # invalid sp=, valid rua=: p=none
])
def test_dmarc_discovery_stops_at_an_invalid_or_duplicate_record(check, author, result,
                                                                  symbol):
    verdict = check(message(from_header=author))
    assert dmarc(verdict) == result
    assert symbol in names(verdict)
    expected_at = {"lower.bank.test": "bank.test", "sub.badsp.test": "badsp.test",
                   "sub.badsprua.test": "badsprua.test"}
    domain = author.split("@")[1]
    assert verdict.facts["dmarc"]["found_at"] == expected_at.get(domain, domain)
    assert verdict.action == ("reject" if symbol == "DMARC_POLICY_REJECT" else "accept")
    if domain == "bad.bank.test":
        assert "ignored 'reject'" in evidence(verdict, symbol)


@pytest.mark.parametrize("author", ["x@spaces.test", "x@upper.test", "x@stray.test"])
def test_dmarc_records_are_read_with_the_rfc_grammar(check, author):
    """``v = DMARC1 ; p = reject``, ``V=DMARC1; P=Reject`` and a stray
    ``; fo`` are all p=reject."""
    verdict = check(message(from_header=author))
    assert verdict_policy(verdict) == ("reject", "reject")
    assert verdict.action == "reject"


@pytest.mark.parametrize(("author", "policy"), [
    ("x@ghost.np.test", "quarantine"),  # does not exist: np=
    ("x@real.np.test", "none"),         # exists (an A record): sp=
    ("x@np.test", "reject"),            # the domain itself: p=
])
def test_dmarc_np_applies_to_subdomains_that_do_not_exist(check, author, policy):
    verdict = check(message(from_header=author))
    assert verdict_policy(verdict) == (policy, policy)


def test_dmarc_t_y_asks_for_the_next_milder_policy(check):
    verdict = check(message(from_header="x@testing.test"))
    assert verdict_policy(verdict) == ("reject", "quarantine")
    assert "t=y (testing)" in evidence(verdict, "DMARC_SAMPLED_OUT")
    assert verdict.action == "quarantine"
    assert "policy.dmarc=quarantine" in verdict.authentication_results


def test_dmarc_record_parsing():
    record = parse_record("v=DMARC1; p=reject; sp=none; adkim=s; pct=30; rua=mailto:x@y")
    assert (record.policy, record.subdomain_policy, record.adkim, record.aspf, record.pct) == \
        ("reject", "none", "s", "r", 30)
    assert parse_record("v=DMARC1; p=quarantine; pct=250").pct == 100
    with pytest.raises(ValueError):
        parse_record("v=DMARC1; p=maybe")
    with pytest.raises(ValueError):
        parse_record("v=spf1 -all")


@pytest.mark.parametrize(("text", "expected"), [
    # (p, sp, np, testing) as read, or the error
    ("v=DMARC1; p=reject", ("reject", "reject", "reject", False)),
    ("v=DMARC1;p=reject;sp=none;np=quarantine;t=Y", ("reject", "none", "quarantine", True)),
    ("v=DMARC1; p=reject; sp=none; np=bogus", ("reject", "none", "none", False)),
    ("v=DMARC1; p=reject; p=none", ("reject", "reject", "reject", False)),  # the first one
    ("\tv=DMARC1 ;\tp\t=\tQUARANTINE ;", ("quarantine", "quarantine", "quarantine", False)),
    ("v=DMARC1; p=bogus; rua=mailto:d@x.test!10m", ("none", "none", "none", False)),
    ("v=DMARC1; p=bogus; np=reject; rua=mailto:d@x.test", ("none", "none", "none", False)),
    ("v=DMARC1; rua=not a uri, mailto:d@x.test", ("none", "none", "none", False)),
    ("v=DMARC1; p=bogus; rua=not-a-uri", "no valid rua="),
    ("v=DMARC1; p=reject; sp=", "sp='' is not valid"),
    ("v=DMARC1", "no p="),
    ("v=DMARC1x; p=reject", "not a DMARC1 record"),
    ("x=1; v=DMARC1; p=reject", "not a DMARC1 record"),
])
def test_dmarc_record_grammar(text, expected):
    if isinstance(expected, str):
        with pytest.raises(ValueError, match=re.escape(expected)):
            parse_record(text)
        return
    record = parse_record(text)
    assert (record.policy, record.subdomain_policy, record.nonexistent_policy,
            record.testing) == expected


@pytest.mark.parametrize(("identifier", "from_domain", "mode", "expected"), [
    ("mail.example.co.uk", "example.co.uk", "r", True),
    ("a.example.com", "b.example.com", "r", True),     # siblings align (relaxed)
    ("example.com", "mail.example.com", "r", True),
    ("a.co.uk", "b.co.uk", "r", False),                # different organizations
    ("co.uk", "example.co.uk", "r", False),            # a public suffix is no parent
    ("com", "example.com", "r", False),
    ("mail.example.com", "example.com", "s", False),
    ("EXAMPLE.com.", "example.com", "s", True),
])
def test_relaxed_and_strict_alignment_use_the_public_suffix_list(identifier, from_domain,
                                                                 mode, expected):
    discovery = PslDiscovery(Resolver(DnsSection(nameservers=("127.0.0.1",))))
    assert aligned(identifier, from_domain, mode, discovery) is expected


# -- ARC ----------------------------------------------------------------------------

RECORDED_PASS = ("dkim=pass header.d=good.test; spf=pass smtp.mailfrom=good.test; "
                 "dmarc=pass header.from=good.test")


def forwarded(keys: Keys, recorded: str = RECORDED_PASS) -> bytes:
    """Signed by good.test, changed by a mailing list, sealed by forwarder.test,
    which records ``recorded`` in its ARC-Authentication-Results."""
    original = sign(message(subject="list post"), "good.test", "s2048", keys.rsa)
    changed = original.replace(b"see you tomorrow.", b"see you tomorrow.\r\n-- \r\nlist footer")
    return arc_seal(changed, "forwarder.test", keys.arc, "mx.forwarder.test", recorded)


def test_arc_chain_passes_and_names_its_sealer(check, keys):
    verdict = check(forwarded(keys), mail_from="list@forwarder.test", ip=OTHER_IP)
    assert verdict.facts["arc"]["result"] == "pass"
    assert verdict.facts["arc"]["sealer"] == "forwarder.test"
    assert "ARC_PASS" in names(verdict)


def test_arc_chain_broken_after_sealing(check, keys):
    raw = forwarded(keys).replace(b"list footer", b"list footer, edited")
    verdict = check(raw, mail_from="list@forwarder.test", ip=OTHER_IP)
    assert verdict.facts["arc"]["result"] == "fail"


def test_arc_none(check):
    assert check(message()).facts["arc"]["result"] == "none"


def test_trusted_arc_sealer_overrides_dmarc_failure(check, keys):
    trusted = check(forwarded(keys), mail_from="list@forwarder.test", ip=OTHER_IP,
                    trusted_arc_sealers=("forwarder.test",))
    assert dmarc(trusted) == "fail"
    assert "DMARC_ARC_OVERRIDE" in names(trusted)
    assert trusted.action == "accept"
    assert 'reason="overridden by trusted ARC"' in trusted.authentication_results
    untrusted = check(forwarded(keys), mail_from="list@forwarder.test", ip=OTHER_IP)
    assert "DMARC_POLICY_REJECT" in names(untrusted)
    assert untrusted.action == "reject"


@pytest.mark.parametrize(("recorded", "why"), [
    ("dkim=pass header.d=good.test; dmarc=fail header.from=good.test", "recorded dmarc=fail"),
    ("dkim=pass header.d=good.test; spf=pass smtp.mailfrom=good.test", "recorded dmarc=nothing"),
    ("dmarc=pass header.from=other.test", "recorded dmarc=pass for other.test"),
    ("dmarc=pass (looks good) reason=\"x\" header.from=\"other.test\"",
     "recorded dmarc=pass for other.test"),
])
def test_trusted_arc_sealer_overrides_only_what_it_recorded_as_dmarc_pass(check, keys,
                                                                          recorded, why):
    """RFC 8617 7.2: the trusted sealer's own ARC-Authentication-Results decide."""
    verdict = check(forwarded(keys, recorded), mail_from="list@forwarder.test", ip=OTHER_IP,
                    trusted_arc_sealers=("forwarder.test",))
    assert verdict.facts["arc"]["result"] == "pass"
    assert "DMARC_ARC_OVERRIDE" not in names(verdict)
    assert why in evidence(verdict, "DMARC_POLICY_REJECT")
    assert verdict.action == "reject"


# -- sender verification ------------------------------------------------------------

@pytest.mark.parametrize(("mail_from", "symbol", "action"), [
    ("x@missing.good.test", "SENDER_DOMAIN_NXDOMAIN", "reject"),
    ("x@nullmx.test", "SENDER_NULL_MX", "reject"),
    ("x@nomail.test", "SENDER_NO_MAIL_HOST", "reject"),
])
def test_sender_domains_that_take_no_mail_are_rejected(check, mail_from, symbol, action):
    verdict = check(message(from_header=mail_from), mail_from=mail_from, ip=OTHER_IP)
    assert symbol in names(verdict)
    assert verdict.action == action
    assert verdict.reply.code == "550" and "Sender address rejected" in verdict.reply.text


def test_sender_with_a_null_mx_is_refused_with_5_7_27(check):
    verdict = check(message(from_header="x@nullmx.test"), mail_from="x@nullmx.test")
    assert str(verdict.reply).startswith("550 5.7.27 ")  # RFC 7505 4.2


def test_an_address_literal_sender_is_not_nxdomain(check):
    verdict = check(message(from_header="n@nodmarc.test"), mail_from="alice@[192.0.2.1]")
    assert spf(verdict) == "none"  # RFC 7208 4.3: not a domain name, no lookup
    assert "SENDER_DOMAIN_NXDOMAIN" not in names(verdict)
    assert "SENDER_ADDRESS_LITERAL" in names(verdict)
    assert verdict.facts["sender"]["sender_domain"] == "address literal"
    assert verdict.action != "reject"


@pytest.mark.parametrize("rcpt_to", [("postmaster@example.net",), ("Abuse@example.net",),
                                     ("<Postmaster>",), ("postmaster@a.test", "abuse@b.test")])
def test_mail_for_postmaster_or_abuse_alone_is_not_refused(check, rcpt_to):
    """RFC 5321 4.5.1: postmaster must be reachable, most of all by senders
    whose own mail setup is broken."""
    spoofed = check(message(), ip=OTHER_IP, rcpt_to=rcpt_to)
    assert "DMARC_REJECT_EXEMPT_RCPT" in names(spoofed)
    assert "DMARC_POLICY_REJECT" not in names(spoofed)
    assert spoofed.action != "reject"
    unreplyable = check(message(from_header="x@missing.good.test"),
                        mail_from="x@missing.good.test", rcpt_to=rcpt_to)
    assert "SENDER_REJECT_EXEMPT_RCPT" in names(unreplyable)
    assert "NXDOMAIN" in evidence(unreplyable, "SENDER_REJECT_EXEMPT_RCPT")
    assert unreplyable.action != "reject"


@pytest.mark.parametrize(("rcpt_to", "exempt"), [
    (("postmaster@example.net", "bob@example.net"), ("postmaster", "abuse")),
    (("postmaster@example.net",), ()),
    (("postmaster-owner@example.net",), ("postmaster", "abuse")),
])
def test_mail_for_others_too_or_with_the_option_off_is_refused(check, rcpt_to, exempt):
    spoofed = check(message(), ip=OTHER_IP, rcpt_to=rcpt_to, reject_exempt_recipients=exempt)
    assert spoofed.action == "reject" and "DMARC_POLICY_REJECT" in names(spoofed)
    unreplyable = check(message(from_header="x@missing.good.test"),
                        mail_from="x@missing.good.test", rcpt_to=rcpt_to,
                        reject_exempt_recipients=exempt)
    assert unreplyable.action == "reject"


def test_sender_domain_with_only_an_address_is_fine(check):
    verdict = check(message(from_header="x@aonly.test"), mail_from="x@aonly.test")
    assert not any(n.startswith("SENDER_") for n in names(verdict))


@pytest.mark.parametrize(("ip", "result"), [
    (GOOD_IP, "pass"), (MISMATCH_IP, "fail"), (NO_PTR_IP, "permerror"),
])
def test_iprev(check, ip, result):
    verdict = check(message(), ip=ip)
    assert verdict.facts["iprev"]["result"] == result
    assert f"IPREV_{result.upper()}" in names(verdict)
    assert f"iprev={result} policy.iprev={ip}" in verdict.authentication_results


@pytest.mark.parametrize(("helo", "symbol"), [
    ("localhost", "HELO_INVALID"),
    ("mail_server.good.test", "HELO_INVALID"),
    ("[999.1.1.1]", "HELO_INVALID"),
    ("[198.51.100.10]", None),
    ("mail.good.test", None),
    (AUTHSERV, "HELO_CLAIMS_OURS"),
])
def test_helo_checks(check, helo, symbol):
    found = {n for n in names(check(message(), helo=helo)) if n.startswith("HELO_")}
    assert found == ({symbol} if symbol else set())


def test_helo_claiming_to_be_us_can_be_rejected(check):
    verdict = check(message(), helo=AUTHSERV, helo_forged_action="reject")
    assert verdict.action == "reject"


def test_require_tls_per_sender_domain(check):
    plain = check(message(), require_tls_from=("good.test",))
    assert "TLS_REQUIRED_MISSING" in names(plain)
    assert plain.action == "tempfail"
    secure = check(message(), require_tls_from=("good.test",),
                   macros={"tls_version": "TLSv1.3", "cipher": "TLS_AES_256_GCM_SHA384"})
    assert "TLS_REQUIRED_MISSING" not in names(secure)
    assert secure.facts["tls"] == {"version": "TLSv1.3", "cipher": "TLS_AES_256_GCM_SHA384"}


def test_authentication_results_for_a_good_message(check, keys):
    verdict = check(sign(message(), "good.test", "s2048", keys.rsa))
    header = verdict.authentication_results
    assert header.startswith(f"{AUTHSERV}; spf=pass smtp.mailfrom=alice@good.test; dkim=pass")
    assert "header.d=good.test" in header and "header.s=s2048" in header
    assert "dmarc=pass header.from=good.test policy.dmarc=reject" in header
    assert "iprev=pass policy.iprev=198.51.100.10 (mail.good.test)" in header


# -- forged Authentication-Results -----------------------------------------------------

FORGED = [
    f"(x) {AUTHSERV}; dkim=pass header.d=bank.example",
    f"{AUTHSERV}(x); dkim=pass header.d=bank.example",
    f'"{AUTHSERV}"; dkim=pass header.d=bank.example',
    f"{AUTHSERV}.; dkim=pass header.d=bank.example",
    f"{AUTHSERV.upper()} 1; dkim=pass header.d=bank.example",
    f"\r\n\t{AUTHSERV}\r\n\t; dkim=pass header.d=bank.example",
    f'(a (nested) "comment") "{AUTHSERV[:4]}\\{AUTHSERV[4:]}"; none',
    f"{AUTHSERV}",
]
NOT_OURS = [
    "other.example; dkim=pass header.d=bank.example",
    f"{AUTHSERV}.evil.example; dkim=pass",
    f"evil.example; dkim=pass header.d={AUTHSERV}",
    f'evil.example (claims "{AUTHSERV}"); spf=pass',
    f"x{AUTHSERV}; spf=pass",
    "",
]


@pytest.mark.parametrize("value", FORGED)
def test_authentication_results_claiming_our_id_in_any_rfc_8601_form(value):
    assert authresults.claims(value, AUTHSERV)
    assert authresults.claims(value, AUTHSERV.upper() + ".")


@pytest.mark.parametrize("value", NOT_OURS)
def test_authentication_results_of_others_are_not_ours(value):
    assert not authresults.claims(value, AUTHSERV)


@pytest.mark.postfix
def test_forged_authentication_results_in_any_form_are_removed_through_postfix(
        postfix, sink, gateway_milter, knot):
    gateway_milter(auth_milter(knot))
    tag = uuid.uuid4().hex
    forged = "".join(f"Authentication-Results: {value}\r\n"
                     for value in FORGED if "\r\n" not in value)
    forged += "Authentication-Results:\r\n\t(folded) " + AUTHSERV + ";\r\n\tspf=pass\r\n"
    kept = "Authentication-Results: other.example; spf=pass smtp.mailfrom=x@other.example\r\n"
    send(postfix, (forged + kept).encode() + message(subject=tag),
         mail_from="alice@good.test")
    delivery = sink.find(tag)
    assert delivery is not None
    results = email.message_from_bytes(delivery.data).get_all("Authentication-Results")
    assert [authresults.parse(r).authserv_id for r in results] == [AUTHSERV, "other.example"]
    assert b"bank.example" not in delivery.data and b"(folded)" not in delivery.data


# -- DNS failures ---------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("mode", ["drop", "delay", "servfail", "refused", "truncate"])
def test_broken_dns_gives_temperrors_within_the_budget(check, keys, mode):
    with FaultServer(mode, delay=3.0) as broken:  # "delay" answers after the lifetime
        raw = sign(message(subject=f"dns {mode}"), "good.test", "s2048", keys.rsa)
        started = time.monotonic()
        verdict = check(raw, port=broken.port)
        first = time.monotonic() - started
        assert first < 4.5  # the per-message budget, not 20 s per lookup
        assert spf(verdict) == "temperror"
        assert dkim_results(verdict) == [("good.test", "s2048", "temperror")]
        assert dmarc(verdict) == "temperror"
        assert verdict.facts["iprev"]["result"] == "temperror"
        assert "SENDER_DOMAIN_TEMPFAIL" in names(verdict)
        assert verdict.action == "tempfail"  # the sender domain could not be verified
        assert verdict.failed_checks == ()  # the checks ran; DNS failed, and they said so
        started = time.monotonic()
        check(raw.replace(b"dns", b"again"), port=broken.port)
        assert time.monotonic() - started < 0.5  # failures are cached: no second timeout
        started = time.monotonic()
        other = check(message(from_header="n@nodmarc.test", subject=f"other {mode}"),
                      mail_from="n@nodmarc.test", port=broken.port)
        assert time.monotonic() - started < 0.5  # a dead server is skipped, or fails at once
        assert spf(other) == "temperror"


@pytest.mark.slow
def test_one_slow_sender_domain_does_not_make_other_mail_wait(check, knot):
    """A domain whose name servers never answer (behind a resolver that
    answers everything else) costs its own messages a timeout, and nobody
    else anything."""
    with FaultServer("drop", names=("slow.test",), upstream=knot.port) as dns:
        slow = check(message(from_header="x@slow.test", subject="from the slow domain"),
                     mail_from="x@slow.test", port=dns.port)
        assert spf(slow) == "temperror"
        assert slow.action == "tempfail"  # its sender domain could not be verified
        for index in range(3):
            started = time.monotonic()
            good = check(message(subject=f"right after the slow one {index}"), port=dns.port)
            assert (spf(good), dmarc(good), good.action) == ("pass", "pass", "accept")
            assert time.monotonic() - started < 0.5


def test_pipelines_with_other_dns_servers_do_not_mix(check):
    """pyspf looks up through one module-level function; each SPF check must
    still ask its own resolver."""
    with FaultServer("servfail") as broken:
        assert spf(check(message(subject="to the broken server"), port=broken.port)) == \
            "temperror"
    assert spf(check(message(subject="to the working server"))) == "pass"


# -- through the real Postfix -----------------------------------------------------------

def auth_milter(knot) -> str:
    return (f'[pipeline]\nchecks = {AUTH_CHECKS!r}\n'.replace("'", '"')
            + dns_config(knot) + f'[auth]\nauthserv_id = "{AUTHSERV}"\n')


@pytest.mark.postfix
def test_dmarc_reject_through_postfix_is_a_550_naming_dmarc(postfix, sink, gateway_milter, knot):
    gateway_milter(auth_milter(knot))
    tag = uuid.uuid4().hex
    raw = message(from_header="ceo@strict.test", subject=tag)
    with pytest.raises(smtplib.SMTPDataError) as caught:
        send(postfix, raw, mail_from="alice@good.test")  # SPF passes, but for good.test
    assert caught.value.smtp_code == 550
    assert b"DMARC policy of the sender's domain says reject" in caught.value.smtp_error
    assert b"[DMARC_POLICY_REJECT]" in caught.value.smtp_error
    assert sink.find(tag, timeout=1) is None


@pytest.mark.postfix
def test_passing_mail_through_postfix_gets_our_authentication_results(postfix, sink,
                                                                     gateway_milter, knot, keys):
    gateway_milter(auth_milter(knot))
    tag = uuid.uuid4().hex
    raw = message(subject=tag, extra="Authentication-Results: other.example; spf=pass\r\n")
    forged = f"Authentication-Results: {AUTHSERV.upper()}; dkim=pass header.d=bank.example\r\n"
    signed = dkim.sign(raw, b"s2048", b"good.test", keys.rsa.private_pem,
                       canonicalize=(b"simple", b"simple"),
                       include_headers=[b"from", b"to", b"subject", b"date"]) + raw
    send(postfix, forged.encode() + signed, mail_from="alice@good.test")
    delivery = sink.find(tag)
    assert delivery is not None
    results = email.message_from_bytes(delivery.data).get_all("Authentication-Results")
    ours = [" ".join(r.split()) for r in results if r.strip().startswith(AUTHSERV)]
    assert len(ours) == 1  # the forged one is gone, ours is there
    assert ours[0] == (
        f"{AUTHSERV}; spf=pass smtp.mailfrom=alice@good.test; dkim=pass "
        f"header.b={ours[0].split('header.b=')[1].split()[0]} header.d=good.test "
        "header.a=rsa-sha256 header.s=s2048; dmarc=pass header.from=good.test "
        "policy.dmarc=reject; arc=none; iprev=pass policy.iprev=127.0.0.1 "
        "(localhost.good.test)")
    assert any(r.strip().startswith("other.example") for r in results)  # not ours: kept
    assert b"bank.example" not in delivery.data
    # simple/simple DKIM passed: the milter saw the headers byte for byte.
    assert delivery.data.index(b"Authentication-Results: " + AUTHSERV.encode()) < \
        delivery.data.index(b"Received:")

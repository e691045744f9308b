"""DNS transients are never permanent (issue 24): a DNS failure while DMARC
is evaluated gives ``DMARC_TEMPERROR`` and, where the policy is or may be
quarantine or reject, a tempfail naming the name that failed; ``np=`` only on
NXDOMAIN; the author's signatures are verified before the signature cap; an
``l=`` signature does not vouch for what follows its signed length.

Every case against knotd (tests/authlab.py's zones) and, for the failures,
the fault-injecting server of tests/lab/dns.py in front of it, failing only
the names each case names.
"""

from __future__ import annotations

import smtplib
import uuid

import pytest

from gateway.config import AuthSection, Config, DnsSection, PipelineSection
from gateway.evaluator import LocalEvaluator
from gateway.message import Envelope, Message
from gateway.verdict import Verdict
from tests.authlab import GOOD_IP, OTHER_IP, message, sign
from tests.helpers import send
from tests.lab.dns import FaultServer

CHECKS = ["headers", "spf", "dkim", "arc", "dmarc", "sender", "iprev"]
AUTHSERV = "mx.gateway.test"
# A forwarder relays good.test's mail: SPF passes, but for forwarder.test.
FORWARDED = {"mail_from": "fwd@forwarder.test", "ip": OTHER_IP, "helo": "mx.forwarder.test"}


def evaluate(port: int, raw: bytes, mail_from: str = "alice@good.test", ip: str = GOOD_IP,
             helo: str = "mail.good.test", **auth) -> Verdict:
    config = Config(
        pipeline=PipelineSection(checks=CHECKS, budget=6.0),
        dns=DnsSection(nameservers=("127.0.0.1",), port=port, timeout=0.5, lifetime=1.0),
        auth=AuthSection(authserv_id=AUTHSERV, **auth))
    evaluator = LocalEvaluator(config)
    try:
        envelope = Envelope(mail_from=mail_from, rcpt_to=("bob@example.net",), client_ip=ip,
                            helo=helo)
        return evaluator.evaluate_message(Message.from_bytes(raw, envelope))
    finally:
        evaluator.close()


def names(verdict: Verdict) -> set[str]:
    return {s.name for s in verdict.symbols}


def evidence(verdict: Verdict, name: str) -> str:
    return next(s.evidence for s in verdict.symbols if s.name == name)


def failing(knot, *names: str, rdtypes: tuple[str, ...] = (), exact: bool = True,
            mode: str = "drop") -> FaultServer:
    """knotd's answers, except for ``names`` (and ``rdtypes``), which time out."""
    return FaultServer(mode, names=names, upstream=knot.port, exact=exact, rdtypes=rdtypes)


# -- 1. a temperror on an aligned identifier is DMARC temperror, not fail ------------------

def test_aligned_dkim_key_timing_out_is_a_tempfail_not_a_reject(knot, keys):
    """Issue 24: good.test (p=reject) signs, its key lookup times out, SPF
    passes only for the forwarder: dkim=temperror gave dmarc=fail and 550."""
    raw = sign(message(subject="forwarded, key times out"), "good.test", "s2048", keys.rsa)
    with failing(knot, "s2048._domainkey.good.test") as dns:
        verdict = evaluate(dns.port, raw, **FORWARDED)
    assert verdict.facts["dkim"]["signatures"][0]["result"] == "temperror"
    assert verdict.facts["dmarc"]["result"] == "temperror"
    assert {"DMARC_TEMPERROR", "DMARC_TEMPFAIL"} <= names(verdict)
    assert "DMARC_POLICY_REJECT" not in names(verdict)
    assert verdict.action == "tempfail"
    assert str(verdict.reply).startswith("451 4.7.1 ")
    assert "s2048._domainkey.good.test" in str(verdict.reply)
    assert "[DMARC_TEMPFAIL]" in str(verdict.reply)
    assert "dmarc=temperror header.from=good.test" in verdict.authentication_results
    # The same message once the key answers: an ordinary DKIM-aligned pass.
    assert evaluate(knot.port, raw, **FORWARDED).action == "accept"


@pytest.mark.parametrize(("author", "action"), [
    ("quarantine.test", "tempfail"),  # p=quarantine: a retry may hold it
    ("monitor.test", "accept"),       # p=none: nothing to wait for
])
def test_a_temperror_waits_only_where_the_policy_would_act(knot, keys, author, action):
    raw = sign(message(from_header=f"a@{author}", subject=f"key times out {author}"),
               author, "s2048", keys.rsa)
    with failing(knot, f"s2048._domainkey.{author}") as dns:
        verdict = evaluate(dns.port, raw, **FORWARDED)
    assert verdict.facts["dmarc"]["result"] == "temperror"
    assert "DMARC_TEMPERROR" in names(verdict)
    assert ("DMARC_TEMPFAIL" in names(verdict)) == (action == "tempfail")
    assert verdict.action == action


def test_an_aligned_pass_beside_a_timed_out_key_passes(knot, keys):
    """Only when nothing aligned passed does a temperror decide: SPF of the
    author's own domain passing is enough."""
    raw = sign(message(subject="own server, key times out"), "good.test", "s2048", keys.rsa)
    with failing(knot, "s2048._domainkey.good.test") as dns:
        verdict = evaluate(dns.port, raw)
    assert verdict.facts["dmarc"]["result"] == "pass"
    assert verdict.action == "accept"


# -- 2. np= applies only on NXDOMAIN ---------------------------------------------------------

def test_np_applies_to_a_subdomain_that_does_not_exist(knot):
    """npreject.test: p=none; sp=quarantine; np=reject. ghost.npreject.test is NXDOMAIN."""
    verdict = evaluate(knot.port, message(from_header="x@ghost.npreject.test",
                                          subject="nxdomain subdomain"))
    assert (verdict.facts["dmarc"]["published_policy"], verdict.action) == ("reject", "reject")


def test_np_does_not_apply_when_the_subdomain_lookups_time_out(knot):
    """Issue 24: A, AAAA and MX of the subdomain timing out were read as
    "does not exist" (the stricter of np= and sp=): np=reject, 550."""
    raw = message(from_header="x@ghost.npreject.test", subject="subdomain lookups fail")
    # SERVFAIL, not silence: the same "cannot tell" for the resolver, without
    # three timeouts in a row.
    with failing(knot, "ghost.npreject.test", rdtypes=("A", "AAAA", "MX"),
                 mode="servfail") as dns:
        verdict = evaluate(dns.port, raw)
        assert {"ghost.npreject.test.", "_dmarc.ghost.npreject.test."} <= set(dns.asked)
    assert verdict.facts["dmarc"]["published_policy"] == "quarantine"  # sp=
    assert "DMARC_POLICY_QUARANTINE" in names(verdict)
    assert "sp= applies, not np=" in evidence(verdict, "DMARC_POLICY_QUARANTINE")
    assert verdict.action == "quarantine"


# -- 3. the author's signatures before the cap; a cap never rejects ---------------------------

def junk_signature(domain: str, selector: str) -> bytes:
    return (f"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d={domain}; "
            f"s={selector}; h=from:subject; bh=AAAA; b=AAAA\r\n").encode()


def test_the_authors_signature_is_verified_before_the_cap(knot, keys):
    """Issue 24: ten junk signatures above good.test's valid one: it was the
    eleventh, never verified, DMARC failed, 550."""
    signed = sign(message(subject="ten junk signatures above"), "good.test", "s2048", keys.rsa)
    raw = b"".join(junk_signature(f"junk{i}.test", "x") for i in range(10)) + signed
    verdict = evaluate(knot.port, raw, **FORWARDED)
    results = [(s["domain"], s["result"]) for s in verdict.facts["dkim"]["signatures"]]
    assert ("good.test", "pass") in results and len(results) == 10
    assert verdict.facts["dkim"]["unverified"] == 1
    assert verdict.facts["dmarc"]["result"] == "pass"
    assert verdict.action == "accept"


def test_a_cap_that_leaves_an_aligned_signature_unverified_holds_not_rejects(knot, keys):
    """Eleven signatures that all claim good.test: the valid one past the
    cap may be the one that passes, so the failure is held, not refused."""
    signed = sign(message(subject="eleven aligned signatures"), "good.test", "s2048", keys.rsa)
    raw = b"".join(junk_signature("good.test", f"nokey{i}") for i in range(10)) + signed
    verdict = evaluate(knot.port, raw, **FORWARDED)
    assert verdict.facts["dkim"]["unverified_domains"] == ["good.test"]
    assert verdict.facts["dmarc"]["result"] == "fail"
    assert "DMARC_POLICY_REJECT" not in names(verdict)
    assert "past the DKIM signature limit not verified" in evidence(
        verdict, "DMARC_REJECT_DOWNGRADED")
    assert verdict.action == "quarantine"


# -- 4. the policy record timing out -------------------------------------------------------

def test_policy_record_timing_out_on_unauthenticated_mail_is_a_tempfail(knot):
    """Issue 24: SPF fails, no DKIM, _dmarc.bank.test times out: it was
    accepted with DMARC_TEMPERROR at 3.1."""
    raw = message(from_header="ceo@bank.test", subject="policy record times out")
    with failing(knot, "_dmarc.bank.test") as dns:
        verdict = evaluate(dns.port, raw, mail_from="ceo@bank.test", ip=OTHER_IP,
                           helo="mx.attacker.test")
    assert verdict.facts["spf"]["result"] == "fail"
    assert {"DMARC_TEMPERROR", "DMARC_TEMPFAIL"} <= names(verdict)
    assert "_dmarc.bank.test" in evidence(verdict, "DMARC_TEMPFAIL")
    assert verdict.action == "tempfail"
    assert "_dmarc.bank.test/TXT: DNS timeout" in str(verdict.reply)


def test_policy_record_timing_out_on_authenticated_mail_is_delivered(knot, keys):
    raw = sign(message(subject="signed, policy record times out"), "good.test", "s2048",
               keys.rsa)
    with failing(knot, "_dmarc.good.test") as dns:
        verdict = evaluate(dns.port, raw, **FORWARDED)
    assert "DMARC_TEMPERROR" in names(verdict) and "DMARC_TEMPFAIL" not in names(verdict)
    assert verdict.action == "accept"


@pytest.mark.postfix
def test_policy_record_timing_out_through_postfix_is_a_451_naming_it(postfix, sink,
                                                                     gateway_milter, knot):
    with failing(knot, "_dmarc.paypal.test") as dns:
        gateway_milter(f'[pipeline]\nchecks = {CHECKS!r}\n'.replace("'", '"')
                       + f'[dns]\nnameservers = ["127.0.0.1"]\nport = {dns.port}\n'
                       + f'[auth]\nauthserv_id = "{AUTHSERV}"\n')
        tag = uuid.uuid4().hex
        with pytest.raises(smtplib.SMTPDataError) as caught:
            send(postfix, message(from_header="ceo@paypal.test", subject=tag),
                 mail_from="ceo@paypal.test")  # SPF fails from 127.0.0.1
    reply = caught.value.smtp_error.decode()
    assert caught.value.smtp_code == 451
    assert reply.startswith("4.7.1 ") and "_dmarc.paypal.test" in reply
    assert "[DMARC_TEMPFAIL]" in reply
    assert sink.find(tag, timeout=1) is None


# -- 5. l=: what follows the signed length is not vouched for --------------------------------

def test_text_appended_after_l_does_not_ride_on_the_signature(knot, keys):
    """Issue 24: good.test's l= signature with a phishing line appended
    passed DKIM and DMARC and was accepted at -0.3."""
    signed = sign(message(subject="newsletter"), "good.test", "s2048", keys.rsa, length=True)
    intact = evaluate(knot.port, signed, **FORWARDED)
    assert intact.facts["dmarc"]["result"] == "pass" and intact.action == "accept"
    tampered = signed + b"\r\nYour account is locked: https://login.attacker.test/\r\n"
    verdict = evaluate(knot.port, tampered, **FORWARDED)
    signature = verdict.facts["dkim"]["signatures"][0]
    assert (signature["result"], signature["partial_body"]) == ("policy", True)
    assert "what follows is not signed" in evidence(verdict, "DKIM_POLICY")
    assert "DKIM_PASS" not in names(verdict)
    assert verdict.facts["dmarc"]["result"] == "fail"
    assert verdict.action == "reject"  # good.test says p=reject

"""Sender authentication on hostile input: bounded work, and no exception.

dkimpy has two regular expressions that backtrack quadratically (relaxed
body canonicalization on a long run of spaces, b= stripping on a folded
signature header); the gateway replaces the first and refuses input that
reaches the second. Whatever a message or its sender says, the dkim, arc,
dmarc, spf, sender and iprev checks end with a result of their own, never
an exception (which the pipeline would turn into <CHECK>_ERROR). Keys come
from knotd, as in tests/test_auth.py.
"""

from __future__ import annotations

import subprocess
import sys
import time

import dkim
import dkim.canonicalization
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.checks.dkim import (
    MAX_SIGNATURE_HEADER_BYTES,
    MAX_SIGNATURE_HEADER_LINES,
    DkimCheck,
    install_linear_relaxed_body,
    linear_relaxed_body,
)
from gateway.config import Config
from gateway.evaluator import LocalEvaluator
from gateway.message import Envelope, Message
from tests.authlab import GOOD_IP, message, sign
from tests.test_auth import AUTH_CHECKS, auth_config, dkim_results, evidence, names

CHECKED = {"spf", "dkim", "arc", "dmarc", "sender", "iprev"}


def dkimpy_relaxed_body(body: bytes) -> bytes:
    """dkimpy 1.1.8's Relaxed.canonicalize_body, as written there."""
    c = dkim.canonicalization
    return c.correct_empty_body(c.strip_trailing_lines(
        c.compress_whitespace(c.strip_trailing_whitespace(body))))


# -- relaxed body canonicalization -----------------------------------------------------

@pytest.mark.slow
@settings(max_examples=3000, deadline=None)
@given(st.lists(st.sampled_from([b" ", b"\t", b"\r", b"\n", b"\r\n", b"a", b"\x00", b"\xff",
                                 b"  \r\n", b" \t ", b"\r\n\r\n"]), max_size=60).map(b"".join))
def test_linear_relaxed_body_is_dkimpys_byte_for_byte(body):
    assert linear_relaxed_body(body) == dkimpy_relaxed_body(body)


@pytest.mark.slow
@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_linear_relaxed_body_is_dkimpys_on_any_bytes(body):
    assert linear_relaxed_body(body) == dkimpy_relaxed_body(body)


@pytest.mark.slow
def test_linear_body_is_installed_when_a_check_is_built_not_on_import():
    code = ("import gateway.checks.dkim, gateway.checks.arc, dkim.canonicalization as c; "
            "print(c.Relaxed.canonicalize_body.__name__)")
    imported = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              check=True)
    assert imported.stdout.strip() == "canonicalize_body"
    DkimCheck.from_config(Config())
    assert dkim.canonicalization.Relaxed.canonicalize_body is linear_relaxed_body
    install_linear_relaxed_body()  # idempotent
    assert dkim.canonicalization.Relaxed.canonicalize_body is linear_relaxed_body


@pytest.fixture
def evaluate(knot):
    evaluators: dict[str, LocalEvaluator] = {}

    def run(raw: bytes, mail_from: str = "alice@good.test", **auth):
        config = auth_config(knot.port, **auth)
        evaluator = evaluators.get(repr(config))
        if evaluator is None:
            evaluator = evaluators[repr(config)] = LocalEvaluator(config)
        envelope = Envelope(mail_from=mail_from, rcpt_to=("bob@example.net",),
                            client_ip=GOOD_IP, helo="mail.good.test")
        started = time.monotonic()
        verdict = evaluator.evaluate_message(Message.from_bytes(raw, envelope))
        return verdict, time.monotonic() - started

    yield run
    for evaluator in evaluators.values():
        evaluator.close()


def test_a_long_run_of_spaces_in_a_relaxed_body_takes_no_time(evaluate, keys):
    body = "Hello" + " " * 100_000 + "world\r\n"
    evaluate(message())  # builds the checks: from here on dkimpy signs in linear time too
    raw = dkim.sign(message(body=body), b"s2048", b"good.test", keys.rsa.private_pem,
                    canonicalize=(b"relaxed", b"relaxed"),
                    include_headers=[b"from", b"to", b"subject"]) + message(body=body)
    verdict, took = evaluate(raw)
    assert dkim_results(verdict) == [("good.test", "s2048", "pass")]
    assert took < 1.0, took  # dkimpy's own canonicalization: about 7 s


# -- signature header size -------------------------------------------------------------

def folded_signature(folds: int) -> bytes:
    return (b"DKIM-Signature: v=1; a=rsa-sha256; d=good.test; s=s2048; h=from;"
            b" bh=47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=; b="
            + b"\r\n " * folds + b"x\r\n")


@pytest.mark.parametrize("folds", [16_000, MAX_SIGNATURE_HEADER_LINES])
def test_a_signature_header_folded_thousands_of_times_is_refused_at_once(evaluate, keys,
                                                                        folds):
    raw = folded_signature(folds) + sign(message(), "good.test", "s2048", keys.rsa)
    verdict, took = evaluate(raw)
    results = verdict.facts["dkim"]["signatures"]
    assert [r["result"] for r in results] == ["neutral", "pass"]  # the good one still counts
    assert "signature header too long" in results[0]["reason"]
    assert verdict.facts["dmarc"]["result"] == "pass"
    assert took < 1.0, took  # dkimpy's b= regex: 7.7 s on 16,000 folds


def test_a_signature_header_at_the_limits_is_verified(evaluate, keys):
    raw = folded_signature(MAX_SIGNATURE_HEADER_LINES - 2) + message()
    assert len(raw.split(b"\r\n\r\n")[0]) < MAX_SIGNATURE_HEADER_BYTES
    verdict, _ = evaluate(raw)
    reason = verdict.facts["dkim"]["signatures"][0]["reason"]
    assert "too long" not in reason  # handed to dkimpy (and found malformed)


def test_a_long_arc_header_fails_the_chain_at_once(evaluate):
    raw = (b"ARC-Seal: i=1; a=rsa-sha256; cv=none; d=forwarder.test; s=arc; b="
           + b"\r\n " * 16_000 + b"x\r\n" + message())
    verdict, took = evaluate(raw)
    assert verdict.facts["arc"]["result"] == "fail"
    assert "signature header too long" in evidence(verdict, "ARC_FAIL")
    assert took < 1.0, took


# -- how many signatures ---------------------------------------------------------------

def test_at_most_max_dkim_signatures_are_verified(evaluate, keys):
    raw = message()
    for _ in range(12):
        raw = sign(raw, "good.test", "s2048", keys.rsa)
    verdict, _ = evaluate(raw)
    assert len(verdict.facts["dkim"]["signatures"]) == 10
    assert verdict.facts["dkim"]["unverified"] == 2
    assert "2 more signature(s) not verified ([auth] max_dkim_signatures = 10)" in \
        evidence(verdict, "DKIM_PASS")
    one, _ = evaluate(raw, max_dkim_signatures=1)
    assert len(one.facts["dkim"]["signatures"]) == 1
    assert "11 more signature(s) not verified" in evidence(one, "DKIM_PASS")


# -- no exceptions, whatever the message says ------------------------------------------

NASTY_HEADERS = [
    b"DKIM-Signature: \xff\xfe\x00\r\n",
    b"DKIM-Signature: v=1; a=rsa-sha256; d=good.test; s=s2048; h=from; bh=; b=; l=-1\r\n",
    b"DKIM-Signature: v=1; a=rsa-sha256; d=good.test; s=s2048; h=from; bh=x; b=x; "
    b"l=99999999999999999999999\r\n",
    b"DKIM-Signature: v=1; a=rsa-sha999; d=good.test; s=s2048; h=from; bh=x; b=x\r\n",
    b"DKIM-Signature: v=1; a=rsa-sha256; d=\xc3\x28.test; s=s; h=from; bh=x; b=x\r\n",
    b"DKIM-Signature: v=1; a=rsa-sha256; d=good.test; s=" + b"a" * 300 + b"; h=from; bh=x; b=x\r\n",
    b"DKIM-Signature: v=1; a=rsa-sha256; d=good..test; s=s; h=from; bh=x; b=x\r\n",
    b"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed/relaxed; d=good.test; s=s2048; "
    b"h=from; bh=x; b=x\r\n",
    b"ARC-Seal: i=99999999999999999999; cv=pass; d=\xff; s=x; b=x\r\n",
    b"ARC-Seal: i=1\r\nARC-Message-Signature: i=1\r\nARC-Authentication-Results: i=1\r\n",
    b"ARC-Authentication-Results: i=1; ((((((((((((((((((((; dmarc=pass\r\n",
    b"From: ((((((((((((((((((((((((((((((((((((((((((((((((((((((((((@x\r\n",
    b"From: " + b":" * 5000 + b"\r\n",
    b"From: " + b"a@b.test, " * 2000 + b"\r\n",
    b"From: =?utf-8?b?/////w==?= <\xff@\xfe>\r\n",
    b"From: x@" + b"a" * 300 + b".test\r\n",
    b"From: x@\xe2\x80\xae.test\r\n",
]


@pytest.mark.parametrize("header", NASTY_HEADERS, ids=range(len(NASTY_HEADERS)))
def test_hostile_headers_give_results_not_errors(evaluate, header):
    verdict, _ = evaluate(header + message())
    assert not CHECKED & set(verdict.failed_checks), verdict.symbols
    assert not any(n.endswith("_ERROR") for n in names(verdict)), verdict.symbols


@pytest.mark.parametrize("mail_from", [
    "a@", "@b.test", "a@b..test", "a@[999.1.1.1]", "a@[IPv6:::1]", "a@" + "x" * 300,
    "a@\udcff.test", "a@\u202e.test", "a@b.test\x00", "x" * 1000,
])
def test_hostile_senders_give_results_not_errors(evaluate, mail_from):
    verdict, _ = evaluate(message(), mail_from=mail_from)
    assert not CHECKED & set(verdict.failed_checks), verdict.symbols


header_names = st.sampled_from(["DKIM-Signature", "ARC-Seal", "ARC-Message-Signature",
                                "ARC-Authentication-Results", "From", "From "])
header_values = st.lists(st.sampled_from(
    ["v=1", "a=rsa-sha256", "a=ed25519-sha256", "d=good.test", "d=b\u00e4nk.test", "s=s2048",
     "h=from", "bh=x", "b=", "b=abc", "i=1", "i=2", "cv=pass", "cv=none", "c=relaxed",
     "l=5", "t=1", "x=0", "dmarc=pass", "lists.test", "(", ")", '"', "\\", "@", "<", ">",
     ",", ":", ";", "=", " ", "\r\n ", "\t", "\u00ff", "\x00", "@good.test", "a@b.test"]),
    max_size=25).map("".join)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                    HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(header_names, header_values), min_size=1, max_size=4))
def test_random_authentication_headers_give_results_not_errors(evaluate, headers):
    raw = b"".join(f"{name}: {value}\r\n".encode("utf-8", "surrogateescape")
                   for name, value in headers) + message()
    verdict, _ = evaluate(raw)
    assert not CHECKED & set(verdict.failed_checks), (headers, verdict.symbols)


def test_auth_checks_are_the_ones_checked():
    assert set(AUTH_CHECKS) >= CHECKED

"""Forged Authentication-Results under our authserv-id as a reader would see
it, not only as RFC 8601 parses it (issue 23, finding 10): RFC 2047 encoded
words, which mail programs decode even there, and look-alike letters."""

from __future__ import annotations

import pytest

from gateway import authresults

AUTHSERV = "mx.gateway.test"
CYRILLIC = "m\u0445.g\u0430teway.test"  # Cyrillic ha and a

CLAIMED = [
    "=?utf-8?q?mx.gateway.test?=; spf=pass smtp.mailfrom=ceo@bank.example",
    "=?UTF-8?B?bXguZ2F0ZXdheS50ZXN0?=; dkim=pass header.d=bank.example",
    "=?iso-8859-1?q?mx=2Egateway=2Etest?=; spf=pass",
    "=?utf-8?q?mx.gate?= =?utf-8?q?way.test?=; spf=pass",  # adjacent words join
    "=?utf-8?q?mx=2Egateway=2Etest=3B?= spf=pass",  # the ';' inside the word
    f"{CYRILLIC}; dkim=pass header.d=bank.example",
    f"(x) \"{CYRILLIC}\"; spf=pass",
    "=?utf-8?b?bdGFLmdhdGV3YXkudGVzdA==?=; spf=pass",  # Cyrillic, encoded
    "xn--m-gub.xn--gteway-3nf.test; spf=pass",  # its A-labels, shown as Unicode
    "\uff4d\uff58.gateway.test; spf=pass",  # full-width letters
    "mx.gate\u200bway.test; spf=pass",  # a zero-width space
    "MX.GATEWAY.TEST.; spf=pass",
]
NOT_CLAIMED = [
    "other.example; spf=pass",
    "mx.gateway.test.evil.example; spf=pass",
    "=?utf-8?q?mx.gateway.test.evil.example?=; spf=pass",
    "gateway.test; spf=pass",
    f'evil.example (claims "{AUTHSERV}"); spf=pass',
    "=?utf-8?x?mx.gateway.test?=; spf=pass",  # not an encoding: an RFC 8601 token
    "=?no-such-charset?q?mx.gateway.test?=; spf=pass",
    "",
]


@pytest.mark.parametrize("value", CLAIMED)
def test_our_authserv_id_encoded_or_in_look_alike_letters_is_ours(value):
    assert authresults.claims(value, AUTHSERV)
    assert authresults.claims(value, AUTHSERV.upper() + ".")


@pytest.mark.parametrize("value", NOT_CLAIMED)
def test_other_authserv_ids_are_not_ours(value):
    assert not authresults.claims(value, AUTHSERV)


def test_an_authserv_id_of_our_own_in_unicode_is_read_the_same_way():
    assert authresults.claims("xn--bnk-qla.test; spf=pass", "b\u00e4nk.test")
    assert authresults.claims("b\u00e4nk.test; spf=pass", "xn--bnk-qla.test")
    assert not authresults.claims("bank.test; spf=pass", "b\u00e4nk.test")


def test_what_is_looked_at_is_bounded():
    words = "=?utf-8?q?" + "a" * 100_000 + "?= "
    assert not authresults.claims(words * 10 + AUTHSERV + ";", AUTHSERV)
    assert authresults.claims(AUTHSERV + "; " + words * 10, AUTHSERV)

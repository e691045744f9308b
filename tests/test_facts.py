"""Typed facts (gateway/facts.py): the JSON each outcome always had, and back."""

import pytest

from gateway import facts
from gateway.checks import BUILTIN, resolve_check
from gateway.facts import (
    ArcFacts,
    DkimFacts,
    DmarcFacts,
    Facts,
    ListsFacts,
    SignatureResult,
    SpfFacts,
    TlsFacts,
)
from gateway.symbols import Symbol

FACTS_CLASSES = [cls for cls in vars(facts).values()
                 if isinstance(cls, type) and issubclass(cls, Facts) and cls is not Facts]


@pytest.mark.parametrize("cls", FACTS_CLASSES, ids=lambda c: c.__name__)
def test_each_facts_class_names_the_built_in_check_that_reports_it(cls: type[Facts]):
    assert cls.check in BUILTIN
    assert resolve_check(cls.check).name == cls.check


def test_a_field_only_some_outcomes_have_is_left_out_until_set():
    assert SpfFacts(None, reason="no client IP to check").to_json() == {
        "result": None, "reason": "no client IP to check"}
    assert list(SpfFacts("pass", identity="mailfrom", domain="a.test", sender="x@a.test",
                         mechanism="", explanation="").to_json()) == [
        "result", "identity", "domain", "sender", "mechanism", "explanation"]
    assert ArcFacts("temperror", reason="SERVFAIL").to_json() == {
        "result": "temperror", "reason": "SERVFAIL"}
    assert DmarcFacts("permerror", reason="no author domain").to_json() == {
        "result": "permerror", "reason": "no author domain", "authors": {}}
    assert TlsFacts(None, None).to_json() == {"version": None, "cipher": None}


def test_facts_read_back_as_the_class_from_a_message_s_facts():
    signature = SignatureResult("a.test", "s1", "ed25519-sha256", "pass", header_b="abc")
    dkim = DkimFacts((signature,), unverified=0).to_json()
    assert dkim == {"signatures": [{"domain": "a.test", "selector": "s1",
                                    "algorithm": "ed25519-sha256", "result": "pass",
                                    "reason": "", "partial_body": False,
                                    "header_b": "abc"}],
                    "unverified": 0}
    by_check = {"dkim": dkim, "spf": SpfFacts("fail", domain="b.test").to_json()}
    assert DkimFacts.of(by_check) == DkimFacts((signature,), unverified=0)
    assert SpfFacts.of(by_check) == SpfFacts("fail", domain="b.test")
    assert ArcFacts.of(by_check) is None  # the check did not report


def test_lists_facts_carry_each_recipient_s_own_symbols_as_their_fields():
    allowed = Symbol("ALLOWLIST_SENDER", 0.0, "allowed", "news@shop.example, for fan.example")
    lists = ListsFacts(["fan@fan.example"], {"fan@fan.example": [allowed]})
    assert lists.to_json() == {
        "recipients": ["fan@fan.example"],
        "recipient_symbols": {"fan@fan.example": [
            ["ALLOWLIST_SENDER", 0.0, "allowed", "news@shop.example, for fan.example"]]}}
    read = ListsFacts.of({"lists": lists.to_json()})
    assert read is not None
    assert read.recipient_symbols["fan@fan.example"] == (allowed,)

"""The identity check and the correspondent memory, without Postfix: the
authentication results are given as the SPF and DKIM checks' facts (the
boundary a unit test may fake), the memory is a real SQLite store."""

from __future__ import annotations

import json
import random
import threading
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from gateway.checks import CheckContext
from gateway.checks.identity import IdentityCheck, load_people
from gateway.cli import main as gateway
from gateway.config import parse_config
from gateway.correspondents import (
    COUNTS,
    MAX_NAMES,
    Learner,
    Memory,
    MemoryReader,
    Observation,
    build_snapshot,
    observations,
)
from gateway.db import utc
from gateway.decider import Decision
from gateway.evaluator import LocalEvaluator
from gateway.facts import DkimFacts, IdentityFacts, SignatureResult, SpfFacts
from gateway.message import Envelope, Message, RawContent
from gateway.quarantine.schema import correspondent_holds, correspondents
from gateway.quarantine.store import QuarantineStore
from gateway.ruleset import Ruleset
from gateway.schema import ConfigError
from gateway.symbols import Symbol
from gateway.verdict import Verdict
from tests.helpers import wait_until

CEO = "ceo@acme.example"
BOB = "bob@acme.example"
IDENTITY = """
[identity]
org_domains = ["acme.example"]
[[identity.protected]]
name = "Jane Doe"
addresses = ["ceo@acme.example", "jane.doe@gmail.com"]
"""


def config(tmp_path: Path, extra: str = "", store: bool = True, identity: str = ""):
    url = f"sqlite:///{tmp_path}/store.db"
    if store:
        QuarantineStore(url).close()  # the schema, migrations included
    text = IDENTITY.replace("[[identity", identity + "\n[[identity", 1) + extra
    text += f'[quarantine]\nurl = "{url}"\n' if store else '[quarantine]\nurl = ""\n'
    return parse_config(text, "test.toml")


def message(from_: str, subject: str = "Hello", rcpt: tuple[str, ...] = (BOB,),
            extra: str = "", macros: dict[str, str] | None = None, body: str = "Hi.\n"):
    raw = (f"From: {from_}\r\nTo: {rcpt[0]}\r\nSubject: {subject}\r\n"
           f"Date: Mon, 7 Dec 2026 10:00:00 +0000\r\nMessage-ID: <1@x>\r\n{extra}\r\n{body}")
    return Message.from_bytes(raw.encode(), Envelope(mail_from="x@y.example", rcpt_to=rcpt,
                                                     macros=macros or {}))


def authenticated(dkim: tuple[str, ...] = (), spf: str | None = None) -> CheckContext:
    facts = {}
    if dkim:
        facts["dkim"] = DkimFacts(tuple(SignatureResult(d, "s1", "rsa-sha256", "pass")
                                        for d in dkim)).to_json()
    if spf:
        facts["spf"] = SpfFacts("pass", domain=spf).to_json()
    return CheckContext(facts)


def symbols(report) -> dict[str, str]:
    return {s.name: s.evidence for s in report.symbols}


@pytest.fixture
def check(tmp_path):
    found = IdentityCheck.from_config(config(tmp_path))
    yield found
    found.close()


# -- whom a message imitates -----------------------------------------------------------------


def test_a_protected_name_from_freemail(check):
    report = check.run(message('"Jane Doe" <jane.doe.ceo@gmail.com>'), authenticated(
        dkim=("gmail.com",)))
    found = symbols(report)
    assert "Jane Doe (ceo@acme.example, jane.doe@gmail.com)" in \
        found["FROM_NAME_IMPERSONATION"]
    assert "jane.doe.ceo@gmail.com" in found["FROM_NAME_IMPERSONATION"]
    assert "FROM_FREEMAIL_ORG_NAME" in found
    facts = IdentityFacts.of({"identity": report.facts})
    assert facts is not None and facts.imitation and facts.via == "gmail.com"


@pytest.mark.parametrize("name", ["J\u0430ne D\u043ee", "JANE DOE", "Doe, Jane",
                                  "Jane Doe (CEO)", "Jane\u200b Doe"])
def test_the_name_in_every_spelling(check, name):
    report = check.run(message(f'"{name}" <x@gmail.com>'), authenticated(dkim=("gmail.com",)))
    assert "FROM_NAME_IMPERSONATION" in symbols(report)


def test_her_own_addresses_and_other_people_are_fine(check):
    assert set(symbols(check.run(message('"Jane Doe" <jane.doe@gmail.com>'),
                                 authenticated(dkim=("gmail.com",))))) == {"FIRST_CONTACT"}
    assert "FROM_NAME_IMPERSONATION" not in symbols(check.run(
        message('"Jane Dove" <x@gmail.com>'), authenticated(dkim=("gmail.com",))))


def test_the_organisations_name_from_freemail(check):
    found = symbols(check.run(message('"ACME Payroll" <acme.payroll@gmail.com>'),
                              authenticated(dkim=("gmail.com",))))
    assert "as our organisation" in found["FROM_FREEMAIL_ORG_NAME"]


def test_a_lookalike_of_our_domain(check):
    found = symbols(check.run(message("Bob <bob@acme-example.com>"),
                              authenticated(dkim=("acme-example.com",))))
    assert "imitates acme.example (our domain)" in found["FROM_LOOKALIKE_DOMAIN"], found


def test_our_domain_as_the_leading_labels_of_another(check):
    found = symbols(check.run(message("IT <it@acme.example.verify-login.com>"),
                              authenticated(dkim=("verify-login.com",))))
    assert "verify-login.com imitates acme.example (our domain): written as its subdomain" \
        in found["FROM_LOOKALIKE_DOMAIN"]


def test_a_lookalike_of_a_brand(check):
    found = symbols(check.run(message('"Service" <service@paypa1-alerts.example>'),
                              authenticated(dkim=("paypa1-alerts.example",))))
    assert "paypa1-alerts.example imitates paypal.com (brand PayPal)" in \
        found["FROM_LOOKALIKE_DOMAIN"]


def test_a_near_spelling_of_a_brands_domain_counts_only_when_the_brand_is_named(check):
    # lindows.com is one letter from Microsoft's windows.com: its newsletter
    # (the corpus's hard_ham) names no Microsoft where a reader looks first.
    newsletter = check.run(message('"Michael Robertson" <michaelr@lindows.com>',
                                   subject="Lindows.com: Michael's Minute: Do the Math"),
                           authenticated(dkim=("lindows.com",)))
    assert "FROM_LOOKALIKE_DOMAIN" not in symbols(newsletter)
    assert "FROM_LOOKALIKE_DOMAIN" not in symbols(check.run(
        message('"Customer Service" <service@paypol.com>', subject="Your invoice"),
        authenticated(dkim=("paypol.com",))))
    named = symbols(check.run(message('"Michael Robertson" <michaelr@lindows.com>',
                                      subject="Your Microsoft account is on hold"),
                              authenticated(dkim=("lindows.com",))))
    assert named["FROM_LOOKALIKE_DOMAIN"] == (
        "lindows.com imitates windows.com (brand Microsoft): a typo (edit distance 1); "
        "the subject names Microsoft")
    by_name = symbols(check.run(message('"PayPal Billing" <service@paypol.com>'),
                                authenticated(dkim=("paypol.com",))))
    assert "the display name names PayPal" in by_name["FROM_LOOKALIKE_DOMAIN"]
    assert "BRAND_IMPERSONATION" in by_name
    # A confusable spelling is no neighbour's name: it imitates by itself.
    assert "a confusable spelling" in symbols(check.run(
        message('"Customer Service" <service@paypa1.com>', subject="Your invoice"),
        authenticated(dkim=("paypa1.com",))))["FROM_LOOKALIKE_DOMAIN"]
    # Nor is a slip of the keyboard: a letter doubled, left out, swapped with
    # its neighbour or struck beside its key is how typosquatters register.
    for slip in ("paypall.com", "paypl.com", "papyal.com", "paypak.com"):
        assert f"{slip} imitates paypal.com (brand PayPal): a typo" in symbols(check.run(
            message(f'"Customer Service" <service@{slip}>', subject="Your invoice"),
            authenticated(dkim=(slip,))))["FROM_LOOKALIKE_DOMAIN"], slip


def test_a_typo_of_our_domain_needs_no_other_sign(tmp_path):
    check = IdentityCheck.from_config(parse_config(
        '[identity]\norg_domains = ["widgetco.example"]\n[quarantine]\nurl = ""\n', "test.toml"))
    try:
        found = symbols(check.run(message('"Bob" <bob@wdigetco.example>', subject="Invoice"),
                                  authenticated(dkim=("wdigetco.example",))))
        assert found["FROM_LOOKALIKE_DOMAIN"] == (
            "wdigetco.example imitates widgetco.example (our domain): a typo (edit distance 1)")
    finally:
        check.close()


def test_another_tld_of_our_domain_counts_only_when_the_name_claims_us(tmp_path):
    # example.org writing to example.net is another organisation of the same
    # name (the demo's ham was held so); "Widgetco Billing" or our CEO's name
    # from widgetco.org is an imitation of widgetco.example.
    check = IdentityCheck.from_config(parse_config(
        '[identity]\norg_domains = ["widgetco.example"]\n[[identity.protected]]\n'
        'name = "Jane Doe"\naddresses = ["ceo@widgetco.example"]\n[quarantine]\nurl = ""\n',
        "test.toml"))
    try:
        def lookalike(from_: str) -> str | None:
            domain = from_.rpartition("@")[2].rstrip(">")
            return symbols(check.run(message(from_, subject="Invoice"),
                                     authenticated(dkim=(domain,)))).get("FROM_LOOKALIKE_DOMAIN")

        assert lookalike("Bob <bob@widgetco.org>") is None
        assert lookalike("Alice Widgetco <alice@widgetco.org>") is None  # a surname
        assert lookalike('"Widgetco Billing" <billing@widgetco.org>') == (
            "widgetco.org imitates widgetco.example (our domain): another TLD; "
            "the display name speaks as our organisation")
        assert lookalike("Jane Doe <jane@widgetco.org>") == (
            "widgetco.org imitates widgetco.example (our domain): another TLD; "
            "the display name is Jane Doe's")
        assert lookalike("Bob <bob@widget-co.example>") is not None  # other techniques as before
    finally:
        check.close()


def test_our_domain_is_the_registrable_domain_of_the_one_configured(tmp_path):
    # We receive for lists.widgetco.example: widgetco.example is our name
    # (as DMARC reads it), for the identity check and the links check alike.
    from gateway.checks.links import LinksCheck

    settings = parse_config('[identity]\norg_domains = ["lists.widgetco.example"]\n'
                            '[quarantine]\nurl = ""\n', "test.toml")
    check = IdentityCheck.from_config(settings)
    try:
        found = symbols(check.run(message('"Bob" <bob@widgetco-billing.example>'),
                                  authenticated(dkim=("widgetco-billing.example",))))
        assert found["FROM_LOOKALIKE_DOMAIN"] == (
            "widgetco-billing.example imitates widgetco.example (our domain): a word added")
    finally:
        check.close()
    links = LinksCheck(settings, Ruleset(), memory=False)
    link = Message.from_bytes(b"From: a@b.example\r\nSubject: x\r\n\r\n"
                              b"https://www.widgetco-billing.com/pay\r\n")
    assert "imitates widgetco.example (our domain)" in symbols(
        links.run(link, CheckContext()))["URL_LOOKALIKE_DOMAIN"]


def test_a_brands_name_needs_the_brands_domain(check):
    found = symbols(check.run(message('"PayPal Security" <security@mailer.example>'),
                              authenticated(dkim=("mailer.example",))))
    assert "speaks as PayPal" in found["BRAND_IMPERSONATION"]
    assert "mailer.example" in found["BRAND_IMPERSONATION"]
    real = check.run(message('"PayPal" <service@intl.paypal.com>'),
                     authenticated(dkim=("paypal.com",)))
    assert "BRAND_IMPERSONATION" not in symbols(real)
    freemail = check.run(message('"Apple Support" <apple.support@gmail.com>'),
                         authenticated(dkim=("gmail.com",)))
    assert "BRAND_IMPERSONATION" in symbols(freemail)  # a freemail domain vouches for no one


def test_a_brand_in_the_subject_counts_only_beside_another_sign(check):
    mention = "Your PayPal account is limited"
    assert "BRAND_IMPERSONATION" not in symbols(check.run(
        message("News <news@shop.example>", subject=mention), authenticated(
            dkim=("shop.example",))))
    found = symbols(check.run(message("Team <team@shop.example>", subject=mention),
                              CheckContext()))
    assert "subject names PayPal; the sender is not authenticated" in \
        found["BRAND_IMPERSONATION"]
    for talk in ("Re: boycotting PayPal", "Fwd: PayPal news"):  # a conversation about it
        assert "BRAND_IMPERSONATION" not in symbols(check.run(
            message("Team <team@shop.example>", subject=talk), CheckContext()))
    freemail = symbols(check.run(message("Gordon <gordon@usa.net>", subject="Microsoft buys"),
                                 authenticated(dkim=("usa.net",))))
    assert "BRAND_IMPERSONATION" not in freemail


def test_reply_to_elsewhere(check):
    found = symbols(check.run(message("Bob <bob@supplier.example>",
                                      extra="Reply-To: <bob.supplier@gmail.com>\r\n"),
                              authenticated(dkim=("supplier.example",))))
    assert "Reply-To bob.supplier@gmail.com is on gmail.com (freemail" in \
        found["REPLY_TO_DIVERGES"]
    assert "REPLY_TO_FREEMAIL" in found
    listed = check.run(message("Bob <bob@supplier.example>", extra=(
        "Reply-To: <list@lists.example.org>\r\nList-Id: <talk.lists.example.org>\r\n")),
        authenticated(dkim=("supplier.example",)))
    assert "REPLY_TO_DIVERGES" not in symbols(listed)


@pytest.mark.parametrize(("from_", "expected"), [
    ('"' + "A" * 100_000 + '" <a@b.example>', {"FIRST_CONTACT"}),
    # No single author: nothing to say about one.
    (", ".join(f"u{i}@x{i}.example" for i in range(20_000)), set()),
    ("(" * 5000 + "x@y.example", set()),
    ('"Jane Doe" <' + "@" * 10_000 + ">", {"FROM_NAME_IMPERSONATION"}),
    ("=?utf-8?b?" + "SmFuZSBEb2U=" + "?= <z@gmail.com>",
     {"FROM_NAME_IMPERSONATION", "FROM_FREEMAIL_ORG_NAME"}),
], ids=["long-name", "many-authors", "deep-comment", "at-signs", "encoded-name"])
def test_hostile_from_fields(check, from_, expected):
    started = time.process_time()
    report = check.run(message(from_), authenticated(dkim=("gmail.com",)))
    assert time.process_time() - started < 5  # bounded: a generous ceiling, not a speed test
    assert expected <= {s.name for s in report.symbols}, report.symbols
    if not expected:
        assert "author" not in report.facts
    assert all(len(s.evidence) < 2000 for s in report.symbols)


def test_an_encoded_display_name_is_read_decoded(check):
    found = symbols(check.run(message("=?utf-8?b?SmFuZSBEb2U=?= <z@gmail.com>"),
                              authenticated(dkim=("gmail.com",))))
    assert "FROM_NAME_IMPERSONATION" in found


def test_config_problems_say_where(tmp_path):
    with pytest.raises(ConfigError, match=r"identity.protected: \[0\] \(X\): addresses"):
        parse_config('[[identity.protected]]\nname = "X"\naddresses = ["nobody"]\n', "t.toml")
    with pytest.raises(ConfigError, match=r"identity\.org_domains: 'a@b' is not a domain"):
        parse_config('[identity]\norg_domains = ["a@b"]\n', "t.toml")
    broken = tmp_path / "protected.toml"
    broken.write_text('[[protected]]\nname = "Y"\n[[protected]]\nnom = 1\n')
    settings = parse_config(f'[identity]\nprotected_files = ["{broken}"]\n', "t.toml")
    with pytest.raises(ConfigError, match=r"protected.toml: protected\[1\]: unknown key 'nom'"):
        load_people(settings)


def test_a_brands_country_site_is_its_own_another_tld_is_not(check):
    # eBay's Austrian site, as brands.toml lists eBay's countries: neither a
    # lookalike of ebay.com nor someone else using eBay's name.
    own = symbols(check.run(message('"eBay" <ebay@ebay.at>', subject="Ihr Kauf"),
                            authenticated(dkim=("ebay.at",))))
    assert "FROM_LOOKALIKE_DOMAIN" not in own and "BRAND_IMPERSONATION" not in own
    for host in ("ebay.tk", "ebay.top"):  # a country it does not list, a generic TLD
        found = symbols(check.run(message(f'"eBay" <ebay@{host}>', subject="Your purchase"),
                                  authenticated(dkim=(host,))))
        assert found["FROM_LOOKALIKE_DOMAIN"] == f"{host} imitates ebay.com (brand eBay): " \
            "another TLD"
        assert "BRAND_IMPERSONATION" in found


def test_a_brands_name_under_another_registrable_domain_vouches_for_that_name_alone(check):
    # amazon.com.be is Amazon's Belgian store; the public suffix list reads
    # its registrable domain as com.be, which is not Amazon's.
    own = symbols(check.run(message('"Amazon.com.be" <bestelling@amazon.com.be>'),
                            authenticated(dkim=("amazon.com.be",))))
    assert "FROM_LOOKALIKE_DOMAIN" not in own and "BRAND_IMPERSONATION" not in own
    other = symbols(check.run(message('"Amazon" <service@shop.com.be>'),
                              authenticated(dkim=("shop.com.be",))))
    assert "speaks as Amazon" in other["BRAND_IMPERSONATION"]
    assert "FROM_LOOKALIKE_DOMAIN" not in symbols(check.run(
        message('"Billing" <billing@com.com>'), authenticated(dkim=("com.com",))))


# -- outbound mail ---------------------------------------------------------------------------


SCORE_IT = """
[rule.TEST_SPAMMY]
type = "header"
header = "Subject"
pattern = "spammy"
score = 20.0
description = "test: scores like spam"
[rule.TEST_BLOCKED]
type = "header"
header = "Subject"
pattern = "blocked"
score = 0.0
force = "reject"
description = "test: forced reject, as a virus"
"""


def test_outbound_mail_is_learned_and_not_spam_scored(tmp_path):
    rules = tmp_path / "local.toml"
    rules.write_text(SCORE_IT)
    settings = config(tmp_path, identity='submission_daemons = ["ORIGINATING"]', extra=(
        f'[pipeline]\nchecks = ["rules", "identity"]\nworkers = 0\n'
        f'[policy]\nrules = ["{Path(__file__).parent.parent}/rules/default.toml", "{rules}"]\n'))
    evaluator = LocalEvaluator(settings)
    try:
        spammy = message(f"Bob <{BOB}>", subject="spammy", rcpt=("carol@client.example",))
        assert evaluator.evaluate_message(spammy).action == "reject"
        for macros in ({"auth_authen": "bob"}, {"daemon_name": "ORIGINATING"}):
            sent = message(f"Bob <{BOB}>", subject="spammy", rcpt=("carol@client.example",),
                           macros=macros)
            verdict = evaluator.evaluate_message(sent)
            assert verdict.action == "accept" and verdict.forced_by == "OUTBOUND_SUBMISSION"
            facts = IdentityFacts.of(verdict.facts)
            assert facts is not None and facts.direction == "outbound"
        blocked = message(f"Bob <{BOB}>", subject="blocked", rcpt=("carol@client.example",),
                          macros={"auth_authen": "bob"})
        assert evaluator.evaluate_message(blocked).action == "reject"  # the stricter force
        other = message(f"Bob <{BOB}>", subject="spammy", macros={"daemon_name": "smtpd"})
        assert evaluator.evaluate_message(other).action == "reject"
    finally:
        evaluator.close()


def outbound_author(check, from_: str, login: str) -> tuple[str | None, str]:
    report = check.run(message(from_, rcpt=("carol@client.example",),
                               macros={"auth_authen": login}), CheckContext())
    facts = IdentityFacts.of({"identity": report.facts})
    assert facts is not None and facts.direction == "outbound"
    return facts.author, symbols(report)["OUTBOUND_SUBMISSION"]


def test_a_login_writing_as_someone_else_teaches_nothing(check, caplog):
    assert outbound_author(check, f"Bob <{BOB}>", BOB)[0] == BOB  # the login itself
    assert outbound_author(check, f"Bob <{BOB}>", "BOB@ACME.example")[0] == BOB
    with caplog.at_level("INFO", logger="gateway.checks.identity"):
        author, evidence = outbound_author(check, f"Jane Doe <{CEO}>", BOB)
    assert author is None
    assert evidence == (f"from {CEO}, SASL-authenticated as {BOB}, who does not own that "
                        "address: its recipients are not learned")
    assert f"from {CEO}, but SASL login {BOB} does not own that address" in caplog.text
    # What the learner makes of it: nothing under the CEO's address.
    facts = IdentityFacts(direction="outbound", author=author,
                          recipients=("carol@client.example",))
    assert observations(envelope("carol@client.example"), decided(facts)) == []


def test_outbound_mail_teaches_under_an_address_the_login_owns_by_the_map(tmp_path):
    logins = tmp_path / "sender_logins"
    logins.write_text("# as Postfix's smtpd_sender_login_maps reads it\n"
                      "bob@acme.example   bob\n"
                      "team@acme.example  bob@acme.example,\n"
                      "                   ann@acme.example\n"
                      "@sales.acme.example ann@acme.example\n")
    check = IdentityCheck.from_config(
        config(tmp_path, identity=f'sender_login_maps = ["{logins}"]'))
    try:
        assert outbound_author(check, f"Bob <{BOB}>", BOB)[0] == BOB  # the login itself
        assert outbound_author(check, f"Bob <{BOB}>", "bob")[0] == BOB  # by the map
        assert outbound_author(check, "Team <team@acme.example>", BOB)[0] == "team@acme.example"
        assert outbound_author(check, "Ann <ann@sales.acme.example>",
                               "ann@acme.example")[0] == "ann@sales.acme.example"
        assert outbound_author(check, f"Jane Doe <{CEO}>", BOB)[0] is None
        # The address's own line decides, before its @domain: bob@ is bob's alone.
        assert outbound_author(check, "Ann <bob@acme.example>", "ann@acme.example")[0] is None
    finally:
        check.close()


def test_a_sender_login_map_that_cannot_be_read_says_where(tmp_path):
    bad = tmp_path / "sender_logins"
    bad.write_text("bob@acme.example\nnot-an-address bob\n")
    with pytest.raises(ConfigError) as raised:
        IdentityCheck.from_config(config(tmp_path, identity=f'sender_login_maps = ["{bad}", '
                                                            f'"{tmp_path}/none"]'))
    assert raised.value.problems == [
        f"{bad}:1: expected an address or @domain, then the logins that own it "
        "(bob@example.net bob@example.net)",
        f"{bad}:2: expected an address or @domain, then the logins that own it "
        "(bob@example.net bob@example.net)",
        f"{tmp_path}/none: sender login map not found"]


# -- the memory --------------------------------------------------------------------------------


def decided(facts: IdentityFacts, outcome: str = "accept", action: str = "accept",
            score: float = 0.0, extra: tuple[Symbol, ...] = (), notes=None) -> Decision:
    verdict = Verdict(action=action, score=score, required=4.0, symbols=extra,  # type: ignore
                      failed_checks=(), reason="test", facts={"identity": facts.to_json()})
    return Decision(verdict, outcome, notes=notes or {})  # type: ignore[arg-type]


def inbound(author: str = "ann@supplier.example", via: str | None = "supplier.example",
            name: str = "Ann Other", rcpt: str = BOB, **kwargs) -> IdentityFacts:
    return IdentityFacts(author=author, via=via, name=name, recipients=(rcpt,), **kwargs)


def envelope(*rcpt: str) -> Envelope:
    return Envelope(mail_from="x@y", rcpt_to=rcpt)


@pytest.fixture
def memory(tmp_path):
    settings = config(tmp_path)
    found = Memory.open(settings.quarantine.url)
    yield found
    found.close()


def teach(memory, facts: IdentityFacts, at: datetime, **kwargs) -> None:
    memory.add(observations(envelope(*facts.recipients), decided(facts, **kwargs), at=at))


def test_what_teaches_and_what_does_not(memory):
    at = datetime(2026, 12, 1, tzinfo=UTC)
    assert observations(envelope(BOB), decided(inbound(via=None)), at=at) == []  # spoofable
    assert observations(envelope(BOB), decided(inbound(imitation=True)), at=at) == []
    credit = Symbol("KNOWN_CORRESPONDENT", -2.0)
    bought = decided(inbound(), score=3.0, extra=(credit,))  # 5.0 without the credit
    assert observations(envelope(BOB), bought, at=at) == []
    assert observations(envelope(BOB), decided(inbound(), outcome="accept",
                                               action="add_header"), at=at) == []
    held = observations(envelope(BOB), decided(inbound(), outcome="discard",
                                               action="quarantine",
                                               notes={"quarantine_id": "q1"}), at=at)
    assert [(o.count, o.hold) for o in held] == [("held", "q1")]
    sent = observations(envelope("carol@client.example", "dave@acme.example"),
                        decided(IdentityFacts(direction="outbound", author=BOB)), [
                            "acme.example"], at=at)
    assert [(o.sender, o.via, o.recipient, o.count) for o in sent] == [
        ("carol@client.example", "client.example", BOB, "outbound")]


def test_known_after_messages_over_days_and_decay(tmp_path, memory):
    settings = config(tmp_path).identity
    start = datetime(2026, 1, 1, tzinfo=UTC)
    teach(memory, inbound(), start)
    [entry] = memory.sender("ann@supplier.example", "supplier.example")
    assert not entry.known(settings, start)
    teach(memory, inbound(), start + timedelta(days=4))
    [entry] = memory.sender("ann@supplier.example", "supplier.example")
    assert entry.accepted == 2 and entry.names == ("Ann Other",)
    assert entry.known(settings, start + timedelta(days=4))
    assert not entry.known(settings, start + timedelta(days=200))  # two messages, halved
    assert memory.purge(settings.retention_days, start + timedelta(days=500)) == 1
    assert memory.sender("ann@supplier.example", "supplier.example") == []


def test_outbound_teaches_a_known_correspondent_and_first_contact_before(tmp_path, memory):
    check = IdentityCheck.from_config(config(tmp_path))
    try:
        context = authenticated(dkim=("client.example",))
        first = symbols(check.run(message("Carol <carol@client.example>"), context))
        assert "carol@client.example (authenticated by client.example) has never written" in \
            first["FIRST_CONTACT"]
        memory.add(observations(envelope("carol@client.example"), decided(
            IdentityFacts(direction="outbound", author=BOB)), ["acme.example"]))
        check.reader._cache.clear()
        found = symbols(check.run(message("Carol <carol@client.example>"), context))
        assert "known correspondent of bob@acme.example: bob@acme.example wrote to them 1 " \
               "time(s)" in found["KNOWN_CORRESPONDENT"]
        # Carol's address authenticated by someone else's signature is not Carol.
        other = symbols(check.run(message("Carol <carol@client.example>"),
                                  authenticated(dkim=("bulk.example",))))
        assert "KNOWN_CORRESPONDENT" not in other and "FIRST_CONTACT" in other
        # Unauthenticated: no history at all.
        assert not {"FIRST_CONTACT", "KNOWN_CORRESPONDENT"} & set(symbols(
            check.run(message("Carol <carol@client.example>"), CheckContext())))
    finally:
        check.close()


def test_a_known_correspondents_name_from_a_stranger(tmp_path, memory):
    at = datetime.now(UTC)
    memory.add([Observation("ann@supplier.example", "supplier.example", BOB, "outbound", at),
                Observation("ann@supplier.example", "supplier.example", BOB, "accepted", at,
                            name="Ann Other")])
    check = IdentityCheck.from_config(config(tmp_path))
    try:
        found = symbols(check.run(message('"Ann Other" <ann.other@gmail.com>'),
                                  authenticated(dkim=("gmail.com",))))
        assert "is known correspondent ann@supplier.example's; written from " \
               "ann.other@gmail.com" in found["FROM_NAME_IMPERSONATION"]
        same = symbols(check.run(message('"Ann Other" <ann@supplier.example>'),
                                 authenticated(dkim=("supplier.example",))))
        assert "FROM_NAME_IMPERSONATION" not in same and "KNOWN_CORRESPONDENT" in same
        assert "uses the name of known correspondent ann@supplier.example" in \
            found["FROM_FREEMAIL_ORG_NAME"]
        colleague = symbols(check.run(message('"Ann Other" <a.other@supplier.example>'),
                                      authenticated(dkim=("supplier.example",))))
        assert "FROM_NAME_IMPERSONATION" not in colleague
        # Her own new domain, authenticated: someone we know, not an imitation ...
        moved = symbols(check.run(message('"Ann Other" <ann@other-family.example>'),
                                  authenticated(dkim=("other-family.example",))))
        assert "FROM_NAME_IMPERSONATION" not in moved
        # A known correspondent's domain under another TLD is theirs, or another's:
        # not an imitation; a confusable spelling of it is.
        assert "FROM_LOOKALIKE_DOMAIN" not in symbols(check.run(
            message("Sales <sales@supplier.net>"), authenticated(dkim=("supplier.net",))))
        assert "supplier.example (a known correspondent's domain)" in symbols(check.run(
            message("Sales <sales@supp1ier.example>"), authenticated(
                dkim=("supp1ier.example",))))["FROM_LOOKALIKE_DOMAIN"]
        # A typo of it needs no other sign (a brand's would: see above), nor
        # does a brand's domain that known correspondents write from.
        assert "supplier.example (a known correspondent's domain): a typo" in symbols(
            check.run(message("Sales <sales@suppiler.example>", subject="Invoice"),
                      authenticated(dkim=("suppiler.example",))))["FROM_LOOKALIKE_DOMAIN"]
        assert "FROM_LOOKALIKE_DOMAIN" not in symbols(check.run(
            message('"Ann Other" <ann.other@yahuo.co.uk>', subject="Invoice"),
            authenticated(dkim=("yahuo.co.uk",))))
    finally:
        check.close()
    memory.add([Observation("matt@yahoo.co.uk", "yahoo.co.uk", BOB, "outbound", at)])
    check = IdentityCheck.from_config(config(tmp_path))
    try:
        assert "yahuo.co.uk imitates yahoo.co.uk (a known correspondent's domain): a typo " \
               "(edit distance 1)" in \
            symbols(check.run(message('"Ann Other" <ann.other@yahuo.co.uk>', subject="Invoice"),
                              authenticated(dkim=("yahuo.co.uk",))))["FROM_LOOKALIKE_DOMAIN"]
        # ... but not a lookalike of her domain (another TLD of it counts with her
        # name), nor an address that cannot authenticate.
        for author, context in (
                ("ann@supp1ier.example", authenticated(dkim=("supp1ier.example",))),
                ("ann@supplier.net", authenticated(dkim=("supplier.net",))),
                ("ann@other-family.example", CheckContext())):
            assert "FROM_NAME_IMPERSONATION" in symbols(check.run(
                message(f'"Ann Other" <{author}>'), context))
    finally:
        check.close()


def test_releases_and_spam_labels_teach_once_across_nodes(tmp_path, memory):
    from tests.test_quarantine import verdict as held_verdict

    url = config(tmp_path).quarantine.url
    store = QuarantineStore(url)
    other_node = Memory.open(url)
    try:
        assert memory.apply_events() == 0  # the cursor starts now
        raw = b"From: Ann <ann@supplier.example>\r\nSubject: x\r\n\r\nbody\r\n"
        from gateway.message import RawContent

        held = store.put(envelope(BOB), RawContent(data=raw), held_verdict())
        memory.add(observations(envelope(BOB), decided(inbound(), outcome="discard",
                                                       action="quarantine",
                                                       notes={"quarantine_id": held})))
        store.mark_released(held, [BOB], "Q1", "analyst", "to bob")
        applied = [memory.apply_events(), other_node.apply_events()]
        assert sorted(applied) == [0, 1]
        [entry] = memory.sender("ann@supplier.example", "supplier.example")
        assert (entry.held, entry.released, entry.spam) == (1, 1, 0)
        assert entry.known(config(tmp_path).identity)
        store.record_event(held, "bob", "labelled-spam", "feedback #1, recipient")
        assert memory.apply_events() == 1 and other_node.apply_events() == 0
        [entry] = memory.sender("ann@supplier.example", "supplier.example")
        assert entry.spam == 1 and not entry.known(config(tmp_path).identity)
    finally:
        other_node.close()
        store.close()


def test_the_learner_writes_in_batches_and_survives_a_store_away(tmp_path, caplog):
    settings = config(tmp_path)
    learner = Learner(settings.quarantine.url, settings.identity)
    try:
        learner.observe(envelope(BOB), decided(inbound()))
        learner.flush()
        assert Memory.open(settings.quarantine.url).sender(
            "ann@supplier.example", "supplier.example")[0].accepted == 1
    finally:
        learner.close()
    away = Learner("postgresql://nobody@127.0.0.1:1/none", settings.identity)
    try:
        away.observe(envelope(BOB), decided(inbound()))
        away.flush()
    finally:
        away.close()
    assert "correspondents: cannot record 1 observation(s)" in caplog.text


class _Counting:
    """A memory that records each batch it is given."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []

    def add(self, found) -> None:
        self.batches.append([item.sender for item in found])

    def apply_events(self) -> int:
        return 0

    def purge(self, retention_days: int) -> int:
        return 0

    def close(self) -> None:
        pass


def test_the_learner_writes_a_full_batch_at_once_and_the_rest_when_closed(tmp_path,
                                                                            monkeypatch):
    from gateway import correspondents as module

    monkeypatch.setattr(module, "BATCH", 3)
    monkeypatch.setattr(module, "FLUSH_EVERY", 3600.0)  # the timer never fires here
    memory = _Counting()
    learner = Learner("sqlite://", config(tmp_path).identity, memory=memory)  # type: ignore[arg-type]
    try:
        for who in ("a", "b", "c"):
            learner.observe(envelope(BOB), decided(inbound(author=f"{who}@supplier.example")))
        wait_until(lambda: memory.batches, what="the full batch written")
        assert memory.batches == [["a@supplier.example", "b@supplier.example",
                                   "c@supplier.example"]]
        learner.observe(envelope(BOB), decided(inbound(author="d@supplier.example")))
        learner.observe(envelope(BOB), decided(inbound(via=None)))  # spoofable: teaches nothing
    finally:
        learner.close()
    assert memory.batches[1:] == [["d@supplier.example"]]


def test_the_learner_drops_what_exceeds_its_bound_and_says_so(tmp_path, monkeypatch, caplog):
    from gateway import correspondents as module

    monkeypatch.setattr(module, "MAX_WAITING", 2)
    monkeypatch.setattr(module, "FLUSH_EVERY", 3600.0)
    memory = _Counting()
    learner = Learner("sqlite://", config(tmp_path).identity, memory=memory)  # type: ignore[arg-type]
    try:
        for who in ("a", "b", "c"):
            learner.observe(envelope(BOB), decided(inbound(author=f"{who}@supplier.example")))
        learner.flush()
    finally:
        learner.close()
    assert memory.batches == [["a@supplier.example", "b@supplier.example"]]
    assert "too many observations waiting for the store" in caplog.text


class _Hanging:
    """A database that never answers."""

    def __init__(self) -> None:
        self.asked = 0
        self.release = threading.Event()

    def sender(self, sender, via):
        self.asked += 1
        self.release.wait(30)
        return []

    def index_rows(self, settings=None):
        self.release.wait(30)
        return []

    def recipient_domains(self):
        return frozenset()

    def close(self) -> None:
        self.release.set()


def test_with_the_database_away_no_history_and_no_wait(tmp_path):
    settings = config(tmp_path)
    hanging = _Hanging()
    clock = [0.0]
    reader = MemoryReader(settings.quarantine.url,
                          settings.identity.__class__(lookup_timeout=0.05),
                          clock=lambda: clock[0], open_memory=lambda url: hanging)
    check = IdentityCheck(settings, Ruleset(), reader=reader)
    try:
        context = authenticated(dkim=("client.example",))
        first = check.run(message("Carol <carol@client.example>"), context)
        assert not {"FIRST_CONTACT", "KNOWN_CORRESPONDENT"} & set(symbols(first))
        facts = IdentityFacts.of({"identity": first.facts})
        assert facts is not None and not facts.history
        asked = hanging.asked
        check.run(message("Carol <carol@client.example>"), context)
        assert hanging.asked == asked  # within the 30 s after a failure: not asked again
        hanging.release.set()  # the database is back
        # and answers at once, if not within 0.05 s on a busy machine
        reader.settings = replace(reader.settings, lookup_timeout=30.0)
        clock[0] += 31
        back = check.run(message("Carol <carol@client.example>"), context)
        assert hanging.asked == asked + 1 and "FIRST_CONTACT" in symbols(back)
    finally:
        hanging.release.set()
        check.close()


# -- commands ----------------------------------------------------------------------------------


def test_identity_import_csv_and_ldif(tmp_path, capsys):
    people = tmp_path / "people.csv"
    people.write_text("Display Name;Email;Title\nJane Doe;SMTP:ceo@acme.example, "
                      "jane@acme.example;CEO\nNo Address;;x\nFinance Team;finance@acme.example;\n")
    output = tmp_path / "protected.toml"
    assert gateway(["identity", "import", str(people), "--output", str(output)]) == 0
    assert "wrote 2 protected people" in capsys.readouterr().out
    settings = parse_config(f'[identity]\nprotected_files = ["{output}"]\n', "t.toml")
    loaded = load_people(settings)
    assert [(p.name, sorted(p.addresses)) for p in loaded.people] == [
        ("Jane Doe", ["ceo@acme.example", "jane@acme.example"]),
        ("Finance Team", ["finance@acme.example"])]
    ldif = tmp_path / "export.ldif"
    ldif.write_text("version: 1\n\ndn: cn=Jane Doe,dc=acme,dc=example\ncn: Jane Doe\n"
                    "displayName:: SmFuZSBEb8Oo\nmail: ceo@acme.example\n"
                    "proxyAddresses: smtp:jd@acme.example\n\ndn: cn=nomail\ncn: Nomail\n")
    assert gateway(["identity", "import", str(ldif), "--output", "-"]) == 0
    printed = capsys.readouterr().out
    assert 'name = "Jane Do\\u00e8"' in printed
    assert 'addresses = ["ceo@acme.example", "jd@acme.example"]' in printed
    bad = tmp_path / "bad.csv"
    bad.write_text("who,where\nx,y\n")
    assert gateway(["identity", "import", str(bad), "--output", str(output)]) == 2
    assert "the first row must name the columns" in capsys.readouterr().err


def test_correspondents_show_and_forget(tmp_path, memory, capsys):
    path = tmp_path / "gateway.toml"
    path.write_text(f'[quarantine]\nurl = "sqlite:///{tmp_path}/store.db"\n')
    memory.add([Observation("carol@client.example", "client.example", BOB, "outbound",
                            datetime.now(UTC))])
    assert gateway(["correspondents", "show", "Carol@Client.example", "--config",
                    str(path)]) == 0
    shown = capsys.readouterr().out
    assert "carol@client.example -> bob@acme.example: 0 accepted, 1 outbound" in shown
    assert "known)" in shown
    assert gateway(["correspondents", "show", BOB, "--config", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["known"] is True
    assert gateway(["correspondents", "forget", "carol@client.example", "--config",
                    str(path)]) == 0
    assert "1 row(s) removed" in capsys.readouterr().out
    assert memory.show("carol@client.example") == []
    assert gateway(["correspondents", "show", "nobody", "--config", str(path)]) == 2


def test_a_reply_to_freemail_even_when_known_correspondents_use_it(tmp_path, memory):
    memory.add([Observation("pal@gmail.com", "gmail.com", BOB, "outbound", datetime.now(UTC)),
                Observation("sales@partner.example", "partner.example", BOB, "outbound",
                            datetime.now(UTC))])
    check = IdentityCheck.from_config(config(tmp_path))
    try:
        context = authenticated(dkim=("supplier.example",))
        free = symbols(check.run(message("Bob <bob@supplier.example>",
                                          extra="Reply-To: <bob.s@gmail.com>\r\n"), context))
        assert "REPLY_TO_FREEMAIL" in free
        known = symbols(check.run(message("Bob <bob@supplier.example>",
                                           extra="Reply-To: <sales@partner.example>\r\n"),
                                  context))
        assert "REPLY_TO_DIVERGES" not in known  # replies to a domain we know
    finally:
        check.close()


def test_a_directory_of_protected_people_is_searched_by_name():
    from gateway.checks.identity import People, Person

    people = People([Person.of(f"Person Number{i}", [f"p{i}@acme.example"])
                     for i in range(5000)] + [Person.of("Jane Doe", [CEO])])
    assert [p.name for p in people.named_by("DOE, Jane (CEO)")] == ["Jane Doe"]
    assert [p.name for p in people.named_by("person number42")] == ["Person Number42"]
    assert people.named_by("Jane Dough") == []


def test_doctor_says_where_our_domains_come_from(tmp_path, memory):
    from gateway.commands.doctor import identity_lines

    memory.add([Observation("carol@client.example", "client.example", BOB, "outbound",
                            datetime.now(UTC))])
    learned = config(tmp_path).__class__(
        quarantine=config(tmp_path).quarantine, identity=config(tmp_path).identity.__class__())
    (line,) = identity_lines(learned)
    assert line.status == "ok"
    assert "org_domains is empty: our domains are learned from the recipients' domains " \
           "(so far: acme.example)" in line.text
    (line,) = identity_lines(config(tmp_path))
    assert "our domains: acme.example; 1 protected people, 42 brands" in line.text


def _observed_batches(seed: int, held: list[str]) -> list[list[Observation]]:
    """Batches of observations over few pairs: new rows, rows met again in the
    same batch and in later ones, names, every count, times out of order, and
    the ``held`` messages' senders, some more than once."""
    rng = random.Random(seed)
    start = datetime(2026, 12, 1, tzinfo=UTC)
    batches = []
    for number in range(12):
        batch = []
        for _ in range(rng.randrange(1, 60)):
            sender = rng.randrange(40)
            batch.append(Observation(
                f"user{sender}@d{sender % 7}.example", f"d{sender % 7}.example",
                f"rcpt{rng.randrange(4)}@ours.example", rng.choice(sorted(COUNTS)),
                start + timedelta(minutes=rng.randrange(-30, 30) + 60 * number),
                rng.choice(["", "", "Ann Other", "Bob", "Carol"]),
                hold=rng.choice(held) if rng.random() < 0.3 else None))
        batches.append(batch)
    return batches


def _rows(memory) -> list[tuple]:
    with memory.engine.connect() as connection:
        found = connection.execute(select(correspondents).order_by(
            correspondents.c.sender, correspondents.c.via, correspondents.c.recipient)).all()
    return [(r.sender, r.via, r.recipient, utc(r.first_seen), utc(r.last_seen),
             *(getattr(r, n) for n in sorted(COUNTS)), json.loads(r.names)) for r in found]


def _expected_rows(batches: list[list[Observation]]) -> list[tuple]:
    """What the memory should hold, worked out here: per batch, each pair's
    counts, its earliest and latest time and its names in order; a new
    pair's row takes them, a known one adds the counts, a later last seen
    and the names (moved to the end, the last MAX_NAMES kept)."""
    table: dict[tuple[str, str, str], dict] = {}
    for batch in batches:
        merged: dict[tuple[str, str, str], dict] = {}
        for item in batch:
            row = merged.setdefault((item.sender, item.via, item.recipient), {
                "first": item.at, "last": item.at, "names": [],
                **dict.fromkeys(COUNTS, 0)})
            row[item.count] += 1
            row["first"], row["last"] = min(row["first"], item.at), max(row["last"], item.at)
            if item.name and item.name not in row["names"]:
                row["names"].append(item.name)
        for key, row in merged.items():
            current = table.get(key)
            if current is None:
                table[key] = {**row, "names": row["names"][-MAX_NAMES:]}
                continue
            for count in COUNTS:
                current[count] += row[count]
            current["last"] = max(current["last"], row["last"])
            names = [n for n in current["names"] if n not in row["names"]] + row["names"]
            current["names"] = names[-MAX_NAMES:]
    return [(*key, row["first"], row["last"], *(row[n] for n in sorted(COUNTS)), row["names"])
            for key, row in sorted(table.items())]


def _expected_holds(batches: list[list[Observation]]) -> dict[str, tuple]:
    """Who sent each held message: the first batch that names it, the last
    observation of it in that batch."""
    holds: dict[str, tuple] = {}
    for batch in batches:
        named = {item.hold: (item.sender, item.via, item.at) for item in batch if item.hold}
        holds.update({hold: seen for hold, seen in named.items() if hold not in holds})
    return holds


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_a_batch_of_observations_adds_what_it_should(tmp_path, request, database):
    """Memory.add writes a batch with one SELECT, one INSERT and one UPDATE
    per kind of change (a fourth of the CPU of three statements per row,
    the same rows): counts, first and last seen, names, in SQLite and in
    PostgreSQL."""
    url = (request.getfixturevalue("postgres").url if database == "postgresql"
           else f"sqlite:///{tmp_path}/store.db")
    store = QuarantineStore(url)
    verdict = Verdict(action="quarantine", score=9.0, required=4.0, symbols=(),
                      failed_checks=(), reason="test")
    held = [store.put(envelope(BOB), RawContent(data=b"Subject: x\r\n\r\nHi.\r\n"), verdict)
            for _ in range(80)]
    store.close()
    memory = Memory.open(url)
    try:
        batches = _observed_batches(29, held)
        for batch in batches:
            memory.add(batch)
        rows = _rows(memory)
        assert rows == _expected_rows(batches)
        with memory.engine.connect() as connection:
            holds = {r.message: (r.sender, r.via, utc(r.created))
                     for r in connection.execute(select(correspondent_holds))}
        assert holds == _expected_holds(batches) and len(holds) > 40
        assert len(rows) > 40 and any(len(r[-1]) > 1 for r in rows)  # pairs met again, names
    finally:
        memory.close()


def test_our_domains_index_is_built_once_per_set_of_our_domains(monkeypatch):
    # Mail for two domains in turn (our domains learned from the recipients)
    # rebuilt the brands-and-ours index for every message: 4% of a worker's
    # CPU in soak.py --profile.
    import gateway.lookalike as lookalike

    built = []
    real = lookalike.DomainIndex.__init__

    def counting(self, domains, **kwargs):
        if "our domain" in domains.values():
            built.append(frozenset(d for d, owner in domains.items() if owner == "our domain"))
        real(self, domains, **kwargs)

    monkeypatch.setattr(lookalike.DomainIndex, "__init__", counting)
    check = IdentityCheck.from_config(parse_config('[quarantine]\nurl = ""\n', "test.toml"))
    try:
        for rcpt in ("bob@acme.example", "ann@widgetco.example") * 5:
            found = symbols(check.run(message("Bob <bob@acme-example.com>", rcpt=(rcpt,)),
                                      authenticated(dkim=("acme-example.com",))))
            assert ("imitates acme.example" in found.get("FROM_LOOKALIKE_DOMAIN", "")) == \
                rcpt.endswith("acme.example")
    finally:
        check.close()
    assert sorted(built, key=sorted) == [frozenset({"acme.example"}),
                                         frozenset({"widgetco.example"})]


def test_the_name_index_reads_only_rows_that_can_be_known(tmp_path, memory):
    settings = config(tmp_path).identity
    start = datetime(2026, 1, 1, tzinfo=UTC)
    later = start + timedelta(days=4)

    def row(sender: str, count: str, at: datetime, rcpt: str = BOB, name: str = "") -> Observation:
        return Observation(sender, sender.partition("@")[2], rcpt, count, at, name=name)

    memory.add([
        row("ann@supplier.example", "accepted", start, name="Ann Other"),  # known by days
        row("ann@supplier.example", "accepted", later, name="Ann Other"),
        row("cy@client.example", "outbound", later),  # written to
        row("dee@shop.example", "released", later, name="Dee Seller"),  # released
        row("eve@twice.example", "accepted", later, name="Eve Soon"),  # twice, same day
        row("eve@twice.example", "accepted", later),
        row("fay@spam.example", "accepted", start, name="Fay Spammer"),  # labelled spam
        row("fay@spam.example", "accepted", later),
        row("fay@spam.example", "spam", later),
        *(row(f"one{n}@once{n}.example", "accepted", later, rcpt=f"u{n}@other{n % 3}.example")
          for n in range(30)),  # seen once: the long tail
    ])
    every = list(memory.index_rows())
    read = list(memory.index_rows(settings))
    assert {e.sender for e in read} == {"ann@supplier.example", "cy@client.example",
                                        "dee@shop.example", "eve@twice.example"}
    assert memory.recipient_domains() == {"acme.example", "other0.example", "other1.example",
                                          "other2.example"}
    # The same index as from every row, at any time.
    for at in (later, start + timedelta(days=200)):
        assert build_snapshot(read, settings, at, memory.recipient_domains()) == \
            build_snapshot(every, settings, at)
    assert build_snapshot(read, settings, later).names  # not empty: the test means something

"""Declarative rules (gateway/checks/rules.py): each kind fires on a crafted
message and not on its near-miss; meta rules combine; no pattern can make
matching blow up."""

from __future__ import annotations

import pickle
import time
from pathlib import Path
from types import MappingProxyType

import pytest

from gateway.checks import CheckContext
from gateway.checks.rules import RulesCheck
from gateway.checks.view import view_of
from gateway.config import Config, PipelineSection, PolicySection
from gateway.evaluator import LocalEvaluator
from gateway.message import Envelope, Message, RawContent
from gateway.paths import DEFAULT_RULES
from gateway.ruleset import load_rules
from gateway.schema import ConfigError
from gateway.urls import parse_link
from gateway.workers import WorkerPool
from tests.helpers import fixture_message, wait_until

RULES = r"""
[rule.SUBJECT_FREE_MONEY]
type = "header"
header = "Subject"
pattern = '\bfree\s+money\b'
nocase = true
score = 2.5
description = "the Subject offers free money"

[rule.FROM_BANK_LOOKALIKE]
type = "header"
header = "From:addr"
pattern = '@paypa1\.'
score = 3.0

[rule.HAS_X_BULK]
type = "header"
header = "X-Bulk"
exists = true
score = 0.5

[rule.BODY_WIRE_TRANSFER]
type = "body"
pattern = 'wire\s+the\s+funds'
nocase = true
score = 2.0

[rule.RAWBODY_HIDDEN_TEXT]
type = "rawbody"
pattern = 'display:\s*none'
score = 1.0

[rule.URI_LOGIN_ON_EVIL]
type = "uri"
domain = '^evil\.example$'
path = '^/login'
score = 3.0

[rule.URI_IP_HOST]
type = "uri"
host = '^\d+\.\d+\.\d+\.\d+$'
score = 1.5

[rule.MIME_HTML_ATTACHMENT]
type = "mime"
content_type = '^text/html$'
filename = '\.html?$'
nocase = true
score = 2.0

[rule.MIME_MANY_PARTS]
type = "mime"
min_parts = 4
score = 0.5

[rule.MONEY_AND_LOOKALIKE]
type = "meta"
expression = "SUBJECT_FREE_MONEY && FROM_BANK_LOOKALIKE && !DKIM_PASS"
score = 4.0
description = "free money from a look-alike bank, unsigned"
"""


def write_rules(tmp_path: Path, text: str = RULES) -> Path:
    path = tmp_path / "local.toml"
    path.write_text(text)
    return path


def rules_config(tmp_path: Path, text: str = RULES, budget: float = 10.0) -> Config:
    return Config(policy=PolicySection(rules=[str(DEFAULT_RULES), str(write_rules(tmp_path,
                                                                                    text))]),
                  pipeline=PipelineSection(checks=["rules"], budget=budget, workers=0))


def fired(check: RulesCheck, raw: bytes) -> dict[str, str]:
    report = check.run(Message.from_bytes(raw), CheckContext())
    return {s.name: s.evidence for s in report.symbols}


def mail(subject: str = "hello", sender: str = "Alice <alice@example.org>",
         body: str = "Hello Bob.\r\n", content_type: str = "text/plain",
         extra: str = "") -> bytes:
    return (f"From: {sender}\r\nTo: bob@example.net\r\nSubject: {subject}\r\n{extra}"
            f"Content-Type: {content_type}; charset=utf-8\r\n\r\n{body}").encode()


@pytest.fixture
def check(tmp_path: Path) -> RulesCheck:
    return RulesCheck.from_config(rules_config(tmp_path))


def test_header_rules_fire_on_the_decoded_field_and_not_on_a_near_miss(check):
    assert fired(check, mail(subject="=?utf-8?q?Get_FREE_=20money?= today")) == {
        "SUBJECT_FREE_MONEY": "Subject: FREE money"}
    assert fired(check, mail(subject="free moneybox for sale")) == {}
    assert fired(check, mail(subject="Free\r\n money")) == {
        "SUBJECT_FREE_MONEY": "Subject: Free money"}


def test_display_name_rules(tmp_path: Path):
    check = RulesCheck.from_config(rules_config(tmp_path, RULES + """
[rule.NAME_SAYS_CEO]
type = "header"
header = "From:name"
pattern = '(?i)\\bceo\\b'
score = 1.0
"""))
    assert fired(check, mail(sender='"The CEO" <x@example.org>')) == {
        "NAME_SAYS_CEO": "From:name: CEO"}
    assert fired(check, mail(sender="ceo@example.org")) == {}


def test_address_and_presence_header_rules(check):
    assert fired(check, mail(sender='"PayPal" <service@paypa1.example>')) == {
        "FROM_BANK_LOOKALIKE": "From:addr: @paypa1."}
    # The look-alike only in the display name: From:addr reads the address.
    assert fired(check, mail(sender='"service@paypa1.example" <me@example.org>')) == {}
    assert fired(check, mail(extra="X-Bulk: yes\r\n")) == {"HAS_X_BULK": "X-Bulk present"}
    assert fired(check, mail(extra="X-Bulky: yes\r\n")) == {}


def test_body_rules_read_what_a_reader_sees_rawbody_rules_the_markup(check):
    html = '<p style="display: none">x</p><p>Please wire <b>the</b> funds</p>'
    assert fired(check, mail(body=html, content_type="text/html")) == {
        "BODY_WIRE_TRANSFER": "wire the funds", "RAWBODY_HIDDEN_TEXT": "display: none"}
    # Near misses: the words in an attribute are not text; no hidden style.
    html = '<p title="wire the funds">Please send the invoice</p>'
    assert fired(check, mail(body=html, content_type="text/html")) == {}
    assert fired(check, mail(body="wire the\r\nfunds today")) == {
        "BODY_WIRE_TRANSFER": "wire the funds"}


def test_uri_rules_match_host_domain_and_path_of_the_same_link(check):
    body = '<a href="https://Login.EVIL.example:8443/login?next=1">pay</a>'
    assert fired(check, mail(body=body, content_type="text/html")) == {
        "URI_LOGIN_ON_EVIL": "https://login.evil.example:8443/login?next=1"}
    # The domain and the path on two different links: no rule.
    body = "see https://evil.example/about and https://good.example/login"
    assert fired(check, mail(body=body)) == {}
    assert fired(check, mail(body="http://198.51.100.7/x and www.example.org")) == {
        "URI_IP_HOST": "http://198.51.100.7/x"}


def test_mime_rules_match_one_part_and_count_parts(check):
    def multipart(*parts: tuple[str, str]) -> bytes:
        body = "".join(f"--b\r\nContent-Type: {ctype}\r\n{extra}\r\nx\r\n"
                       for ctype, extra in parts)
        return mail(content_type='multipart/mixed; boundary="b"', body=body + "--b--\r\n")

    attached = ("text/html", 'Content-Disposition: attachment; filename="Invoice.HTM"\r\n')
    assert fired(check, multipart(("text/plain", ""), attached)) == {
        "MIME_HTML_ATTACHMENT": "text/html 'Invoice.HTM'"}
    # An HTML body without a file name, and a .htm name on a PDF: no rule.
    named_pdf = ("application/pdf", 'Content-Disposition: attachment; filename="a.htm"\r\n')
    assert fired(check, multipart(("text/html", ""), named_pdf)) == {}
    four = multipart(*[("text/plain", "")] * 4)
    assert fired(check, four) == {"MIME_MANY_PARTS": "4 parts"}
    assert fired(check, multipart(*[("text/plain", "")] * 3)) == {}


def test_a_meta_rule_combines_rules_of_this_check_and_of_others(tmp_path: Path):
    config = rules_config(tmp_path)
    evaluator = LocalEvaluator(config)
    try:
        raw = mail(subject="free money", sender="<x@paypa1.example>")
        verdict = evaluator.evaluate_message(Message.from_bytes(raw, Envelope()))
        names = {s.name: s.score for s in verdict.symbols}
        assert names == {"SUBJECT_FREE_MONEY": 2.5, "FROM_BANK_LOOKALIKE": 3.0,
                         "MONEY_AND_LOOKALIKE": 4.0}
        assert (verdict.score, verdict.action) == (9.5, "quarantine")
        only_subject = evaluator.evaluate_message(Message.from_bytes(mail(subject="free money")))
        assert [s.name for s in only_subject.symbols] == ["SUBJECT_FREE_MONEY"]
    finally:
        evaluator.close()


def test_a_catastrophic_pattern_on_a_1mb_body_stays_inside_the_budget(tmp_path: Path):
    # In Python's re, (a+)+b on a run of a's without a b backtracks for
    # longer than the universe has left; RE2 reads the text once.
    text = RULES + r"""
[rule.CATASTROPHIC]
type = "body"
pattern = '(a+)+b'
score = 1.0

[rule.NESTED_ALTERNATION]
type = "rawbody"
pattern = '^(\w+\s?)*$'
score = 1.0
"""
    config = rules_config(tmp_path, text, budget=2.0)
    evaluator = LocalEvaluator(config)
    try:
        body = "a" * 1_000_000 + "!"
        started = time.monotonic()
        verdict = evaluator.evaluate_message(Message.from_bytes(mail(body=body)))
        elapsed = time.monotonic() - started
        assert elapsed < 2.0
        assert verdict.failed_checks == ()
        assert [s.name for s in verdict.symbols] == []
        matching = evaluator.evaluate_message(Message.from_bytes(mail(body="a" * 1_000_000
                                                                       + "b")))
        assert [s.name for s in matching.symbols] == ["CATASTROPHIC", "NESTED_ALTERNATION"]
    finally:
        evaluator.close()


def test_rules_that_run_out_of_time_are_named_not_skipped(tmp_path: Path):
    text = "".join(f"[rule.SLOW_{n}]\ntype = \"rawbody\"\npattern = 'z{{2}}q'\nscore = 1\n"
                   for n in range(50))
    check = RulesCheck.from_config(rules_config(tmp_path, text, budget=0.001))
    found = fired(check, mail(body="zzz " * 300_000))
    (evidence,) = found.values()
    assert list(found) == ["RULES_INCOMPLETE"]
    assert evidence.endswith("rules not run in 0.0005s: " + ", ".join(
        f"SLOW_{n}" for n in range(50 - int(evidence.split()[0]), 50)[:10]))


@pytest.mark.parametrize(
    ("table", "problem"),
    [
        ("type = \"body\"\npattern = '(a)\\1'\nscore = 1\n",
         "rule.BAD.pattern: RE2 cannot compile '(a)\\\\1': invalid escape sequence: \\1 "
         "(RE2 has no backreferences or look-around)"),
        ("type = \"body\"\npattern = 'x(?=y)'\nscore = 1\n",
         "rule.BAD.pattern: RE2 cannot compile 'x(?=y)': invalid perl operator: (?= "
         "(RE2 has no backreferences or look-around)"),
        ("type = \"body\"\nscore = 1\n", "rule.BAD.pattern: a body rule needs a pattern"),
        ("type = \"header\"\npattern = 'x'\nscore = 1\n",
         "rule.BAD.header: a header rule needs the header field's name"),
        ("type = \"uri\"\nhots = 'x'\nscore = 1\n",
         "rule.BAD.hots: not a key of a uri rule (did you mean 'host'?)"),
        ("type = \"uri\"\nscore = 1\n",
         "rule.BAD: a uri rule needs at least one of url, host, domain, path"),
        ("type = \"mime\"\nmin_parts = -1\nscore = 1\n",
         "rule.BAD.min_parts: expected a whole number, 0 or more"),
        ("type = \"body\"\npattern = '\\pL{1000}'\nscore = 1\n",
         "rule.BAD.pattern: RE2 cannot compile '\\\\pL{1000}': pattern too large - compile "
         "failed (RE2 has no backreferences or look-around)"),
    ],
)
def test_rules_problems_name_the_rule(tmp_path: Path, table, problem):
    with pytest.raises(ConfigError) as caught:
        RulesCheck.from_config(rules_config(tmp_path, "[rule.BAD]\n" + table))
    assert caught.value.problems == [problem]


def test_a_later_file_can_switch_a_rule_off_or_rescore_it(tmp_path: Path):
    first = write_rules(tmp_path)
    later = tmp_path / "later.toml"
    later.write_text("[rule.HAS_X_BULK]\nenabled = false\n"
                     "[rule.SUBJECT_FREE_MONEY]\nscore = 0.5\n")
    config = Config(policy=PolicySection(rules=[str(first), str(later)]),
                    pipeline=PipelineSection(checks=["rules"]))
    check = RulesCheck.from_config(config)
    assert "HAS_X_BULK" not in [r.name for r in check.rules]
    report = check.run(Message.from_bytes(mail(subject="free money")), CheckContext())
    assert [(s.name, s.score) for s in report.symbols] == [("SUBJECT_FREE_MONEY", 0.5)]


def test_the_view_reads_links_from_text_and_html_within_the_limits():
    html = ('<a href="HTTPS://user@Shop.Example.co.uk./cart?a=1">x</a> '
            '<img src="http://[2001:db8::1]:8080/p.png"> mailto:a@b.example www.plain.example')
    view = view_of(Message.from_bytes(mail(body=html, content_type="text/html")))
    assert [(link.host, link.domain, link.path) for link in view.links] == [
        ("shop.example.co.uk", "example.co.uk", "/cart?a=1"),
        ("2001:db8::1", "2001:db8::1", "/p.png"),
        ("www.plain.example", "plain.example", "/"),  # as a browser reads it
    ]
    assert parse_link("javascript:alert(1)") is None


@pytest.mark.slow
def test_every_rule_kind_survives_the_hostile_corpus(tmp_path: Path):
    from tests import hostile

    # Every hostile message names good.test (its From or Message-ID), has a
    # To field and a part: these fire on each, whatever else it holds.
    text = RULES + r"""
[rule.ALL_HEADERS]
type = "header"
header = "ALL"
pattern = 'good\.test'
score = 0.1

[rule.FROM_NAMES]
type = "header"
header = "From:name"
pattern = '(?i)ceo'
score = 0.1

[rule.HAS_TO]
type = "header"
header = "To"
exists = true
score = 0.1

[rule.ANY_PART]
type = "mime"
min_parts = 1
score = 0.1
"""
    # A budget no machine hits.
    check = RulesCheck.from_config(rules_config(tmp_path, text, budget=300.0))
    for name, case in hostile.BUILDERS.items():
        message = Message.from_bytes(case.build(), Envelope(mail_from=hostile.SPOOFED))
        report = check.run(message, CheckContext())  # raises nothing
        found = {s.name for s in report.symbols}
        assert {"ALL_HEADERS", "HAS_TO", "ANY_PART"} <= found, (name, found)
        assert all(f"[rule.{s}]" in text for s in found), (name, found)  # these rules only



# -- the rules a configuration judges by: read once, like Postfix's main.cf -----------------

LUNCH_RULE = ('[rule.SUBJECT_LUNCH]\ntype = "header"\nheader = "Subject"\npattern = "Lunch"\n'
              "score = 2.0\n")
# The same rule edited: it no longer fires on the message, and scores more.
DINNER_RULE = LUNCH_RULE.replace('"Lunch"', '"Dinner"').replace("2.0", "3.0")


@pytest.mark.slow
def test_recycled_workers_judge_by_the_rules_read_at_start_not_the_files_now(tmp_path: Path):
    rules = write_rules(tmp_path, LUNCH_RULE)
    config = Config(policy=PolicySection(rules=[str(DEFAULT_RULES), str(rules)]),
                    pipeline=PipelineSection(checks=["headers", "rules"], workers=1,
                                             max_workers=1, worker_max_messages=1, budget=2.0,
                                             grace=1.0))
    envelope = Envelope(mail_from="alice@example.org", rcpt_to=("bob@example.net",))
    raw = RawContent(data=fixture_message("ham_plain.eml"))
    pool = WorkerPool(config)
    try:
        pids, verdicts = set(), []
        for edit in ("", DINNER_RULE, "not toml ["):  # none of them reloaded
            if edit:
                rules.write_text(edit)
            # Each worker checks one message: the next one is a new process.
            pids.add(wait_until(pool.worker_pids, timeout=60, what="a worker")[0])
            verdict = pool.evaluate(envelope, raw)
            verdicts.append((verdict.action, verdict.score, verdict.symbols,
                             verdict.failed_checks))
        assert len(pids) == 3
        assert verdicts[0][:2] == ("accept", 2.0)
        assert [s.name for s in verdicts[0][2]] == ["SUBJECT_LUNCH"]
        assert verdicts[1] == verdicts[0]  # before: the new worker read the edit
        assert verdicts[2] == verdicts[0]  # before: no worker could start
    finally:
        pool.close()


def test_a_ruleset_crosses_to_a_worker_process_whole(tmp_path: Path):
    local = write_rules(tmp_path, RULES + """
[[dnsbl]]
name = "TEST_BL"
zone = "bl.example"
score = 1.0
symbols = { "127.0.0.2" = "TEST_BL_SPAM" }

[attachments]
executable = ["exe"]

[domain."example.org"]
thresholds = { quarantine = 5.0 }
force = { MISSING_DATE = "reject" }
lists = { allow_senders = ["alice@example.net"] }
""")
    ruleset = load_rules([DEFAULT_RULES, local])
    copy = pickle.loads(pickle.dumps(ruleset))
    assert copy == ruleset
    assert isinstance(copy.scores, MappingProxyType)
    assert isinstance(copy.domains["example.org"].force, MappingProxyType)
    assert all(isinstance(table, MappingProxyType) for table in copy.rule_tables.values())
    assert all(isinstance(table, MappingProxyType) for table in copy.dnsbl)
    with pytest.raises(TypeError):
        copy.scores["MISSING_DATE"] = 9.0  # type: ignore[index]

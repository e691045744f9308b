"""Hostile mail against the gateway (issue 9): the parsers stay bounded, no
check fails on content, and no hostile shape lets a spoofed p=reject author
through, offline through the evaluator and through a real Postfix.

Messages come from tests/hostile.py: named builders, each with the limit
symbols it must raise, and generated ones (hypothesis, fixed seed). Times
are printed, never asserted: speed is for tests/bench/fuzz.py.
"""

from __future__ import annotations

import inspect
import smtplib
import time
import uuid
from email.feedparser import BytesFeedParser, FeedParser

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway import mime
from gateway.classifier.features import TextStats, message_tokens
from gateway.config import AuthSection, Config, DnsSection, LimitsSection, PipelineSection
from gateway.evaluator import LocalEvaluator
from gateway.lab.postfix import PostfixInstance
from gateway.mail import (
    UNCUT_FIELDS,
    author_domains,
    decoded_header,
    parse_header_block,
    parse_mailboxes,
    safe_getaddresses,
    safe_parseaddr,
)
from gateway.message import Envelope, Message
from gateway.quarantine.store import QuarantineStore
from gateway.verdict import Verdict
from tests import hostile
from tests.authlab import OTHER_IP
from tests.helpers import dns_config, fixture_message

AUTHSERV = "mx.gateway.test"
EVERY_CHECK_BUT_CLAMAV = [c for c in PipelineSection().checks if c != "clamav"]
# Budget enough for any check to finish: a check that did not is a failure
# of the check, never of a slow machine. Time is printed, not asserted.
BUDGET = 300.0
# The spoofer as the brief of issue 9 has it: MAIL FROM the p=reject domain,
# from an address its SPF does not allow.
SPOOFER = Envelope(mail_from=hostile.SPOOFED, rcpt_to=("bob@example.net",), client_ip=OTHER_IP,
                   helo="mx.attacker.test")
# A better-prepared one: its own domain (forwarder.test) with SPF passing for
# this address, so SPF adds nothing to the score and DMARC alone must hold.
OWN_DOMAIN = Envelope(mail_from="eve@forwarder.test", rcpt_to=("bob@example.net",),
                      client_ip=OTHER_IP, helo="mx.forwarder.test")
HYPOTHESIS = settings(derandomize=True, database=None, deadline=None, print_blob=True,
                      suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                             HealthCheck.large_base_example])

TIMES: dict[str, float] = {}


@pytest.fixture(scope="module")
def evaluator(knot, pytestconfig):
    config = Config(
        pipeline=PipelineSection(checks=EVERY_CHECK_BUT_CLAMAV, budget=BUDGET),
        dns=DnsSection(nameservers=("127.0.0.1",), port=knot.port, timeout=0.5, lifetime=1.0),
        auth=AuthSection(authserv_id=AUTHSERV),
    )
    evaluator = LocalEvaluator(config)
    yield evaluator
    evaluator.close()
    if TIMES:
        slowest = sorted(TIMES.items(), key=lambda item: -item[1])[:5]
        line = "hostile: slowest evaluations: " + ", ".join(
            f"{name} {seconds:.2f}s" for name, seconds in slowest)
        reporter = pytestconfig.pluginmanager.get_plugin("terminalreporter")
        capture = pytestconfig.pluginmanager.get_plugin("capturemanager")
        if reporter is None or capture is None:
            print(line)
            return
        with capture.global_and_fixture_disabled():
            reporter.write_line("")
            reporter.write_line(line)


def evaluate(evaluator: LocalEvaluator, name: str, raw: bytes,
             envelope: Envelope = OWN_DOMAIN) -> tuple[Message, Verdict]:
    message = Message.from_bytes(raw, envelope)
    started = time.perf_counter()
    verdict = evaluator.evaluate_message(message)
    TIMES[name] = max(TIMES.get(name, 0.0), time.perf_counter() - started)
    return message, verdict


def failures(verdict: Verdict) -> str:
    """The failed checks with their evidence, for assertion messages."""
    return "; ".join(f"{s.name}: {s.evidence}" for s in verdict.symbols
                     if s.name.endswith("_ERROR") or s.name == "BUDGET_EXCEEDED")


def names(verdict: Verdict) -> set[str]:
    return {s.name for s in verdict.symbols}


def assert_bounded(message: Message) -> None:
    """The parsed views hold no more than [limits] lets them."""
    limits = message.limits
    block = message.fields
    assert len(block.fields) <= limits.header_count
    assert all(len(f.value) <= limits.header_length for f in block.fields
               if f.name.lower() not in UNCUT_FIELDS)
    parts, stack = 0, [(message.email, 1)]
    while stack:
        part, depth = stack.pop()
        parts += 1
        assert depth <= limits.mime_depth + 1
        assert len(part) <= limits.header_count
        for name, value in part.raw_items():
            assert len(name) + len(str(value)) <= limits.header_length
            if name.lower().startswith("content-"):
                assert str(value).count(";") <= limits.mime_parameters
        # get_payload() of a leaf decodes with its charset, and raises for
        # some (punycode, with 8-bit bytes): only containers are opened.
        if part.is_multipart():
            stack.extend((child, depth + 1) for child in part.get_payload())
    assert parts <= limits.mime_parts


# -- every builder, offline ------------------------------------------------------------


@pytest.mark.parametrize("name", [
    pytest.param(name, marks=[pytest.mark.slow] if item.slow else [])
    for name, item in hostile.BUILDERS.items()])
def test_hostile_message(evaluator, name):
    """No check fails on it, its parse stays within [limits], the verdict
    names the limits it went past, and a spoofed author is not accepted."""
    item = hostile.BUILDERS[name]
    message, verdict = evaluate(evaluator, name, item.build())
    assert verdict.failed_checks == (), failures(verdict)
    assert_bounded(message)
    assert names(verdict) & hostile.LIMIT_SYMBOLS == item.expect
    if item.spoofs:
        assert verdict.action in ("reject", "quarantine"), verdict.symbols


@pytest.mark.slow
@given(hostile.messages())
@settings(HYPOTHESIS, max_examples=40)
def test_generated_messages(evaluator, generated):
    raw, spoofs = generated
    message, verdict = evaluate(evaluator, "generated", raw)
    assert verdict.failed_checks == (), failures(verdict)
    assert_bounded(message)
    if spoofs:
        assert verdict.action in ("reject", "quarantine"), verdict.symbols


@pytest.mark.slow
def test_seeded_generated_messages(evaluator):
    """Larger random messages than hypothesis draws, from fixed seeds (the
    fuzz bench's generator)."""
    chooser = hostile.RandomChooser(9)
    problems = []
    for index in range(100):
        raw, spoofs = hostile.generated_message(chooser)
        message, verdict = evaluate(evaluator, f"seeded-{index}", raw)
        assert_bounded(message)
        if verdict.failed_checks:
            problems.append(f"message {index}: {failures(verdict)}")
        elif spoofs and verdict.action == "accept":
            problems.append(f"message {index}: spoof accepted: {verdict.symbols}")
    assert not problems, problems


# -- the parsers on their own, with more examples -----------------------------------------


@pytest.mark.slow
@given(st.lists(hostile.address_strategy(), min_size=1, max_size=2))
@settings(HYPOTHESIS, max_examples=100)
def test_address_parsers_never_raise(values):
    for value in values:
        parsed = parse_mailboxes(value)
        assert all(isinstance(m.address, str) for m in parsed.mailboxes)
        safe_parseaddr(value)
        decoded_header(value)
    safe_getaddresses(values)
    authors = author_domains(values)
    assert authors.fields == len(values)


@pytest.mark.slow
@given(st.lists(hostile.header_field_strategy(), max_size=12))
@settings(HYPOTHESIS, max_examples=150)
def test_header_fields_parse_bounded(fields):
    raw = hostile.message(extra="".join(fields))
    for limits in (LimitsSection(), LimitsSection(header_count=5, header_length=200)):
        message = Message.from_bytes(raw, limits=limits)
        assert_bounded(message)
        message.parse_problems()
        block = parse_header_block(raw.splitlines(keepends=True), limits.header_count,
                                   limits.header_length)
        assert len(block.fields) <= limits.header_count


@pytest.mark.slow
@given(hostile.mime_tree_strategy())
@settings(HYPOTHESIS, max_examples=150)
def test_mime_trees_parse_bounded_and_tokenize(tree):
    headers, _, body = tree.partition("\r\n\r\n")
    raw = hostile.message(body.encode("utf-8", "surrogatepass"),
                          extra=headers.encode("utf-8", "surrogatepass") + b"\r\n")
    for limits in (LimitsSection(), LimitsSection(mime_depth=3, mime_parts=10,
                                                  mime_parameters=2, text_bytes=1000, urls=3)):
        message = Message.from_bytes(raw, limits=limits)
        assert_bounded(message)
        message.parse_problems()
        stats = TextStats()
        message_tokens(message.email, limits, stats)
        assert stats.text_bytes <= limits.text_bytes


# -- issue 9's three bypass shapes, offline -------------------------------------------------


@pytest.mark.parametrize("shape", ["plain", "nested-comments", "nested-multipart",
                                   "nested-rfc822"])
def test_spoofed_p_reject_author_is_never_accepted(evaluator, shape):
    raw = hostile.bypass_shapes("offline")[shape]
    _, verdict = evaluate(evaluator, f"bypass-{shape}", raw, SPOOFER)
    assert verdict.facts["spf"]["result"] == "fail"
    if shape == "plain":
        assert verdict.action == "reject"
        assert "DMARC_POLICY_REJECT" in names(verdict)
    else:
        assert verdict.action in ("reject", "quarantine"), verdict.symbols
        assert names(verdict) & {"ADDRESS_UNPARSEABLE", "MIME_TOO_DEEP"}


# -- issue 9's three bypass shapes, through Postfix -----------------------------------------


@pytest.fixture(scope="module")
def spoofing_postfix(lab_dir, sink, milter_socket, postfix):
    """A second private Postfix on the gateway's milter socket that lets the
    test client say which address it connects from (XCLIENT): through the
    session's Postfix every client is 127.0.0.1, which good.test's SPF
    allows."""
    instance = PostfixInstance(
        lab_dir / "postfix-xclient", relay_port=sink.port, milter=f"unix:{milter_socket}",
        settings={"smtpd_authorized_xclient_hosts": "127.0.0.0/8",
                  "mynetworks": "127.0.0.0/8 203.0.113.0/24"})
    instance.start()
    yield instance
    instance.stop()


def send_from(instance: PostfixInstance, raw: bytes, ip: str = OTHER_IP,
              helo: str = "mx.attacker.test", mail_from: str = hostile.SPOOFED) -> None:
    """Send as if from ``ip``; raises smtplib.SMTPDataError on 4xx/5xx at end of DATA."""
    with smtplib.SMTP("127.0.0.1", instance.smtp_port, timeout=60) as client:
        client.ehlo("client.test")
        code, text = client.docmd("XCLIENT", f"ADDR={ip} NAME=[UNAVAILABLE] HELO={helo}")
        assert code == 220, text
        client.ehlo(helo)
        client.sendmail(mail_from, ["bob@example.net"], raw)


def every_check_but_clamav(knot) -> str:
    checks = ", ".join(f'"{name}"' for name in EVERY_CHECK_BUT_CLAMAV)
    return (f"[pipeline]\nchecks = [{checks}]\n" + dns_config(knot)
            + f'[auth]\nauthserv_id = "{AUTHSERV}"\n')


@pytest.mark.postfix
def test_spoofed_p_reject_author_through_postfix(spoofing_postfix, sink, gateway_milter, knot,
                                                 milter_store):
    """Plain: 550 at end of DATA. The three shapes that switched checks off:
    550 too, or held in the quarantine; never delivered."""
    milter = gateway_milter(every_check_but_clamav(knot))
    tag = uuid.uuid4().hex
    outcomes: dict[str, str] = {}
    for shape, raw in hostile.bypass_shapes(tag).items():
        try:
            send_from(spoofing_postfix, raw)
        except smtplib.SMTPDataError as refused:
            outcomes[shape] = f"{refused.smtp_code} {refused.smtp_error.decode(errors='replace')}"
        else:
            outcomes[shape] = "250"
    store = QuarantineStore(milter_store)
    held = {record.subject for record in store.records() if record.state == "held"}
    store.close()
    assert outcomes["plain"].startswith("550 5.7.1"), outcomes
    assert "[DMARC_POLICY_REJECT]" in outcomes["plain"]
    for shape, outcome in outcomes.items():
        assert outcome.startswith("550") or (
            outcome == "250" and f"Wire transfer {tag}" in held), (shape, outcomes,
                                                                   milter.log()[-2000:])
    assert sink.find(tag, timeout=2) is None


# -- the stdlib hooks gateway/mime.py relies on -------------------------------------------


def test_the_feed_parser_hooks_of_bounded_parsing_still_exist():
    """gateway/mime.py overrides the stdlib feed parser's _new_message and
    _parse_headers and reads its _msgstack and _cur: a Python release that
    renames them or changes when they run must fail here, not parse
    without limits."""
    for hook, parameters in (("_new_message", ["self"]), ("_parse_headers", ["self", "lines"]),
                             ("_pop_message", ["self"]), ("_parsegen", ["self"])):
        assert list(inspect.signature(getattr(FeedParser, hook)).parameters) == parameters
        assert getattr(BytesFeedParser, hook) is getattr(FeedParser, hook)
    parser = BytesFeedParser()
    assert parser._msgstack == [] and parser._cur is None
    # They run once per part and once per header block, with _cur the part
    # whose fields were just parsed, before the parser reads the body.
    limits = LimitsSection(mime_depth=3, mime_parts=4, header_count=7, mime_parameters=2)
    raw = hostile.mime_message(
        'multipart/mixed; boundary="b0"; a=1; b=2; c=3',
        hostile.nested_multipart(5, close=False)
        + "--b0\r\nContent-Type: text/plain\r\n\r\nx\r\n" * 3 + "--b0--\r\n",
        extra="X-Eighth: 1\r\n")
    parsed, excess = mime.parse([raw], limits)
    assert excess.deepest == 4
    assert excess.unopened == 1
    assert excess.dropped_parts == 3  # 7 parts: the first 4 kept
    assert excess.dropped_fields == 1  # the top block has 8 fields
    assert excess.many_parameters == ["Content-Type"]
    assert parsed.get_boundary() == "b0"
    deepest = parsed
    while deepest.is_multipart():
        deepest = deepest.get_payload()[0]
    assert deepest.get_content_type() == mime.OPAQUE_TYPE


_HEADER_LINE = st.sampled_from(["From a@b.test\n", "Subject: x\n", " folded; y\n", "\tz\n",
                                "Content-Type: text/plain; a=1; b=2\n", "X: ;;;\n",
                                "Received: from x; Tue\n", "content-disposition: a; b\n",
                                "Long: " + "w" * 40 + "\n"])


@given(st.lists(_HEADER_LINE, max_size=12), st.integers(1, 8), st.integers(20, 200),
       st.integers(0, 6))
@settings(derandomize=True, database=None, deadline=None, max_examples=500)
def test_a_header_block_within_every_limit_is_bounded_as_field_by_field(
        lines, header_count, header_length, mime_parameters):
    """The parser hands on a block within every limit as it is (no sorting
    into fields): the same lines, and the same excess, as field by field."""
    limits = LimitsSection(header_count=header_count, header_length=header_length,
                           mime_parameters=mime_parameters)
    quick, by_field = mime.BoundedParser(limits), mime.BoundedParser(limits)
    assert quick._bounded(list(lines)) == by_field._bounded_by_field(list(lines))
    assert vars(quick.excess) == vars(by_field.excess)


# -- regressions found by the builders -------------------------------------------------


def test_obs_syntax_from_on_the_first_line_is_a_field_not_an_mbox_separator():
    message = Message.from_bytes(hostile.header_obs_from())
    assert message.headers("From") == [hostile.SPOOFED]
    mbox = Message.from_bytes(b"From ceo@good.test Tue Nov 24 09:00:00 2026\r\n"
                              + hostile.message())
    assert mbox.headers("From") == [hostile.SPOOFED]
    assert mbox.fields.fields[0].name == "From"


@pytest.mark.parametrize(("build", "leaf"), [
    (hostile.ctype_rfc2231_mixed_sections, "text/plain"),
    (hostile.ctype_rfc2231_long_section, "text/plain"),
    (hostile.ctype_rfc2231_odd, "application/octet-stream"),
])
def test_rfc2231_parameters_the_stdlib_cannot_decode_do_not_break_the_parse(build, leaf):
    """'name*' beside 'name*0' (TypeError in decode_params) and a section
    number past int()'s 4,300 digits (ValueError) made every get_param raise,
    the parser's own get_boundary included: limits and bayes failed."""
    parsed = mime.parse_bytes(build())
    assert parsed.is_multipart()
    for part in parsed.walk():
        part.get_params()
        part.get_params(header="content-disposition")
        part.get_filename()
        part.get_content_charset()
        part.get_boundary()
    assert [p.get_content_type() for p in parsed.get_payload()] == [leaf]


def test_rfc2231_parameters_that_decode_are_kept():
    raw = hostile.mime_message(
        "multipart/mixed; boundary=a",
        "--a\r\nContent-Type: text/plain\r\nContent-Disposition: attachment; "
        "filename*0*=utf-8''%E2%82%AC; filename*1=.txt\r\n\r\nx\r\n--a--\r\n")
    assert [p.get_filename() for p in mime.parse_bytes(raw).walk()] == [None, "€.txt"]


def test_an_author_longer_than_the_header_limit_keeps_its_address():
    """A From cut to [limits] header_length lost the address after a long
    display name: DMARC saw no author (DMARC_PERMERROR) while a reader's MUA
    shows ceo@good.test."""
    message = Message.from_bytes(hostile.from_long_display_name())
    assert message.headers("From")[0].endswith(f"<{hostile.SPOOFED}>")
    assert author_domains(message.headers("From")).domains == ("good.test",)
    cut = Message.from_bytes(hostile.header_long_line())  # other fields are still cut
    assert len(cut.header("Subject")) <= cut.limits.header_length


def test_spoof_behind_a_long_display_name_is_rejected_like_a_plain_one(evaluator):
    """From a domain of the attacker's own with SPF passing, the long display
    name got DMARC_PERMERROR instead of the domain's p=reject: this short body
    was still quarantined on its score, most bodies of the corpus' easy_ham
    were accepted."""
    body = fixture_message("ham_plain.eml").split(b"\r\n\r\n", 1)[1]
    plain = hostile.message(body, subject="Lunch on Thursday", tag="long-name-plain")
    _, verdict = evaluate(evaluator, "long-name-plain", plain)
    assert verdict.action == "reject"
    for from_ in ("A" * 40_000 + f" <{hostile.SPOOFED}>",
                  " ".join(["=?utf-8?q?CEO?="] * 5_000) + f" <{hostile.SPOOFED}>"):
        raw = hostile.message(body, from_=from_, subject="Lunch on Thursday", tag="long-name")
        _, verdict = evaluate(evaluator, "long-name", raw)
        assert verdict.action == "reject", verdict.symbols
        assert "DMARC_POLICY_REJECT" in names(verdict)


def test_unclosed_quotes_are_scanned_once(monkeypatch):
    """After a quote that never closes, each later quote was searched for its
    closing one to the end of the field again: '"\\' * 8,000 took 1.8 s, a
    From of Postfix's 100 KB header limit over a minute."""
    from gateway import mail

    scanned = []
    search = mail._closing_quote

    def counting(text: str, index: int) -> int:
        end = search(text, index)
        scanned.append((end if end >= 0 else len(text)) - index)
        return end

    monkeypatch.setattr(mail, "_closing_quote", counting)
    value = '"\\' * 20_000 + f" <{hostile.SPOOFED}>"
    parsed = parse_mailboxes(value)
    assert sum(scanned) <= 2 * len(value)
    assert [m.address for m in parsed.mailboxes] == [hostile.SPOOFED]
    assert "unclosed \"" in parsed.problems

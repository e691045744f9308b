"""Through a real Postfix: the add_header tier (delivered, marked, the
Subject tagged), recipient domains' own thresholds, and a managed list
entry that applies to the next messages without a restart, counts its hits
and stops when it expires. Each test has a quarantine database of its own
(``milter_store``)."""

from __future__ import annotations

import smtplib
import subprocess
import sys
import uuid
from datetime import timedelta
from pathlib import Path

import pytest

from gateway.db import now
from gateway.paths import DEFAULT_RULES
from gateway.quarantine.store import QuarantineStore
from tests.helpers import PROJECT_ROOT, fixture_message, send, wait_until

pytestmark = pytest.mark.postfix

MARKED = '[pipeline]\nchecks = ["headers", "tests.plugins:MarkerCheck"]\n'


def tagged(subject: str | None = "Quarterly report", marker: bool = True) -> tuple[str, bytes]:
    """A clean message (score 0 without the marker) with a unique Message-ID."""
    tag = uuid.uuid4().hex
    raw = fixture_message("ham_plain.eml").replace(
        b"Message-ID: <20261124091244.4711@mail.example.org>", f"Message-ID: <{tag}@test>".encode())
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = [line for line in head.split(b"\r\n") if not line.lower().startswith(b"subject:")]
    if subject is not None:
        lines.append(f"Subject: {subject}".encode())
    raw = b"\r\n".join(lines) + b"\r\n\r\n" + body
    if marker:
        raw += b"TRIGGER-MARKER\r\n"
    return tag, raw


def rules(directory: Path, text: str) -> str:
    path = directory / "local.toml"
    path.write_text("[scores]\nTEST_MARKER = 5.0\n" + text)
    return f'[policy]\nrules = ["{DEFAULT_RULES}", "{path}"]\n'


def test_mail_between_add_header_and_quarantine_is_delivered_marked_and_tagged(
        postfix, sink, gateway_milter, tmp_path):
    gateway_milter(MARKED + rules(tmp_path, '[add_header]\nsubject_tag = "[SPAM]"\n'))
    tag, raw = tagged("=?utf-8?q?Quarterly_r=C3=A9port?=")
    send(postfix, raw)
    delivery = sink.find(tag)
    assert delivery is not None, postfix.log_tail()
    assert delivery.header("X-Spam-Flag") == "YES"
    assert delivery.header("X-Spam-Status") == "Yes, score=5.0 required=4.0 tests=TEST_MARKER"
    assert delivery.header("X-Gateway-Symbols") == "action=add_header; TEST_MARKER(5)"
    assert delivery.header("Subject") == "[SPAM] =?utf-8?q?Quarterly_r=C3=A9port?="
    assert delivery.data.count(b"Subject:") == 1
    # No Subject at all: Postfix adds the tag as one.
    tag, raw = tagged(subject=None)
    send(postfix, raw)
    delivery = sink.find(tag)
    assert delivery is not None
    assert delivery.header("Subject") == "[SPAM]"
    # Below the add_header threshold: delivered as it was.
    tag, raw = tagged(marker=False)
    send(postfix, raw)
    delivery = sink.find(tag)
    assert delivery is not None
    assert delivery.header("Subject") == "Quarterly report"
    assert delivery.header("X-Spam-Flag") is None
    assert delivery.header("X-Spam-Status").startswith("No, score=0.0 required=4.0")


def test_without_a_subject_tag_the_subject_is_left_alone(postfix, sink, gateway_milter,
                                                          tmp_path):
    gateway_milter(MARKED + rules(tmp_path, ""))
    tag, raw = tagged()
    send(postfix, raw)
    delivery = sink.find(tag)
    assert delivery is not None
    assert (delivery.header("X-Spam-Flag"), delivery.header("Subject")) == (
        "YES", "Quarterly report")


def test_a_recipient_domains_thresholds_apply_to_its_mail(postfix, sink, gateway_milter,
                                                          tmp_path, milter_store):
    # The lists check (on by default) tells the policy the recipients.
    gateway_milter('[pipeline]\nchecks = ["headers", "lists", "tests.plugins:MarkerCheck"]\n'
                   + rules(tmp_path, '[domain."strict.example".thresholds]\nquarantine = 4.5\n'))
    store = QuarantineStore(milter_store)
    try:
        tag, raw = tagged()
        send(postfix, raw, rcpt_to=("alice@other.example",))
        delivered = sink.find(tag)
        assert delivered is not None and delivered.header("X-Spam-Flag") == "YES"

        tag, raw = tagged()
        send(postfix, raw, rcpt_to=("bob@strict.example",))
        assert sink.find(tag, timeout=1) is None
        (held,) = store.find(f"<{tag}@test>")
        assert (held.action, held.recipients) == ("quarantine", ("bob@strict.example",))
        assert held.reason == "score 5 >= quarantine threshold 4.5 (policy of strict.example)"

        # To both: the strictest of the two, for both (one answer after DATA).
        tag, raw = tagged()
        send(postfix, raw, rcpt_to=("alice@other.example", "bob@strict.example"))
        assert sink.find(tag, timeout=1) is None
        (held,) = store.find(f"<{tag}@test>")
        assert held.recipients == ("alice@other.example", "bob@strict.example")
        assert held.reason.endswith("the strictest of 2 recipients' policies "
                                    "(alice@other.example: add_header, bob@strict.example: "
                                    "quarantine)")
    finally:
        store.close()


def test_a_list_entry_applies_without_a_restart_counts_hits_and_expires(
        postfix, sink, gateway_milter, milter_store):
    milter = gateway_milter('[pipeline]\nchecks = ["headers", "lists"]\n'
                            '[lists]\nrefresh = 1.0\n')
    sender = "news@mx.blocked.example"
    tag, raw = tagged(marker=False)
    send(postfix, raw, mail_from=sender)
    assert sink.find(tag) is not None

    def refusal() -> smtplib.SMTPDataError | None:
        """Send one message from the sender: the refusal, or None once delivered."""
        tag, raw = tagged(marker=False)
        try:
            send(postfix, raw, mail_from=sender)
        except smtplib.SMTPDataError as refused:
            assert sink.find(tag, timeout=0.5) is None
            return refused
        assert sink.find(tag) is not None
        return None

    added = subprocess.run(
        [sys.executable, "-m", "gateway", "list", "add", "block-sender", "blocked.example",
         "--reason", "test wave", "--expires", "1h", "--config", str(milter.config_path)],
        capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=60)
    assert added.returncode == 0, added.stderr
    # Applies from the milter's next reading of the lists ([lists] refresh), no restart.
    refusals = [wait_until(refusal, 30, "a refusal by the new entry"), refusal()]
    for refused in refusals:
        assert refused is not None and refused.smtp_code == 550
        text = refused.smtp_error.decode()
        assert "envelope sender is on the local block list [BLOCKLIST_SENDER]" in text
        assert "test wave" not in text and "list entry" not in text  # the site's own

    store = QuarantineStore(milter_store)
    try:
        entry = store.find_list_entry("block-sender", "blocked.example")
        assert entry is not None
        wait_until(lambda: store.get_list_entry(entry.id).hits >= 2, 30, "two hits counted")
        assert store.get_list_entry(entry.id).hits == 2
        # Renewed to expire in a second (as `gateway list add` renews an
        # entry): mail is delivered again once that second has passed.
        renewed, _ = store.add_list_entry("block-sender", "blocked.example", owner="test",
                                          expires=now() + timedelta(seconds=1))
        wait_until(lambda: refusal() is None, 30, "delivery after the expiry")
        assert now() >= renewed.expires
    finally:
        store.close()

"""The adapter's error paths, driven through a stand-in for libmilter's context.

The end-to-end behaviour with a real Postfix is in test_postfix_e2e.py; here
we make the evaluator and the callbacks fail on purpose, which a real
session cannot do on demand.
"""

from __future__ import annotations

import io
import socket

import Milter
import pytest

from gateway.config import Config, MilterSection, PipelineSection
from gateway.decider import Decider
from gateway.evaluator import LocalEvaluator
from gateway.milter import GatewayMilter, Runtime, smtp_safe
from tests.conftest import fixture_message


class ExplodingEvaluator:
    def evaluate(self, envelope, raw):
        raise RuntimeError("evaluator exploded")

    def close(self):
        pass


class RecordingEvaluator(LocalEvaluator):
    def evaluate(self, envelope, raw):
        self.seen = (envelope, raw.bytes())
        return super().evaluate(envelope, raw)


class FakeContext:
    """The few libmilter context calls the adapter makes, recorded."""

    def __init__(self, macros: dict[str, str]):
        self.macros = macros
        self.reply: tuple[str, ...] | None = None
        self.added: list[tuple[str, str]] = []
        self.changed: list[tuple[str, int, str | None]] = []
        self.priv = None

    def setpriv(self, priv):
        self.priv = priv

    def getsymval(self, name):
        return self.macros.get(name)

    def setreply(self, code, status, *text):
        self.reply = (code, status, *text)

    def addheader(self, name, value, index):
        self.added.append((name, value))

    def chgheader(self, name, index, value):
        self.changed.append((name, index, value))

    def quarantine(self, reason):
        self.quarantined = reason


def runtime_for(config: Config, evaluator) -> Runtime:
    return Runtime(config, Decider(evaluator, keeper=None, threads=2))


def session(runtime: Runtime, message: bytes, queue_id: str = "QID42"):
    ctx = FakeContext({"{i}": queue_id})
    milter = GatewayMilter(runtime)
    milter._setctx(ctx)  # protocol 0: no negotiation, every callback answers
    assert milter.connect("mail.example.org", socket.AF_INET, ("198.51.100.7", 4711)) == 0
    milter.hello("mail.example.org")
    milter.envfrom_bytes(b"<alice@example.org>")
    milter.envrcpt_bytes(b"<bob@example.net>")
    head, _, body = message.replace(b"\r\n", b"\n").partition(b"\n\n")
    for line in head.split(b"\n"):
        name, _, value = line.partition(b":")
        milter.header_bytes(name.decode(), value.lstrip())  # as sent without LEADSPC
    milter.eoh()
    stream = io.BytesIO(body.replace(b"\n", b"\r\n"))
    while chunk := stream.read(64):
        milter.body(chunk)
    return ctx, milter.eom()


def test_evaluator_failure_tempfails_with_a_clear_reply():
    runtime = runtime_for(Config(), ExplodingEvaluator())
    ctx, rc = session(runtime, fixture_message("ham_plain.eml"))
    assert rc == Milter.TEMPFAIL
    assert ctx.reply == ("451", "4.3.0", "Temporary failure in mail filter, try again later")


def test_evaluator_failure_passes_mail_when_configured():
    config = Config(milter=MilterSection(on_error="accept"))
    _, rc = session(runtime_for(config, ExplodingEvaluator()), fixture_message("ham_plain.eml"))
    assert rc == Milter.ACCEPT


def test_failure_in_a_noreply_callback_is_answered_at_end_of_message(monkeypatch):
    evaluator = RecordingEvaluator(Config())
    runtime = runtime_for(Config(), evaluator)
    monkeypatch.setattr(
        "gateway.milter.RawSpool.write",
        lambda self, data: (_ for _ in ()).throw(OSError("disk full")),
    )
    ctx, rc = session(runtime, fixture_message("ham_plain.eml"))
    assert rc == Milter.TEMPFAIL
    assert ctx.reply is not None and ctx.reply[0] == "451"
    assert not hasattr(evaluator, "seen")  # never scored a half-received message


def test_envelope_and_bytes_reach_the_evaluator():
    config = Config(pipeline=PipelineSection(checks=["headers", "size", "lists"]))
    evaluator = RecordingEvaluator(config)
    ctx, rc = session(runtime_for(config, evaluator), fixture_message("ham_plain.eml"))
    assert rc == Milter.ACCEPT
    assert [name for name, _ in ctx.added] == ["X-Spam-Status", "X-Spam-Score", "X-Gateway-Symbols"]
    envelope, raw = evaluator.seen
    assert envelope.client_ip == "198.51.100.7"
    assert envelope.helo == "mail.example.org"
    assert envelope.mail_from == "alice@example.org"
    assert envelope.rcpt_to == ("bob@example.net",)
    assert envelope.queue_id == "QID42"
    assert b"Subject: Lunch on Thursday\r\n" in raw
    assert raw.endswith(b"\r\nAlice\r\n")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("100% spam", "100%% spam"),
        ("two\r\nlines", "two lines"),
        ("caf\u00e9", "caf?"),
    ],
)
def test_reply_text_is_safe_for_smtp(text, expected):
    assert smtp_safe(text) == expected

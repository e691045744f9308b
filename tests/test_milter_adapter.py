"""The adapter's error paths, driven through a stand-in for libmilter's context.

The end-to-end behaviour with a real Postfix is in test_postfix_e2e.py; here
we make the evaluator and the callbacks fail on purpose, which a real
session cannot do on demand.
"""

from __future__ import annotations

import dataclasses
import io

import Milter
import pytest
from Milter.testctx import TestCtx as MilterTestCtx

from gateway.config import (
    Config,
    ListsSection,
    MilterSection,
    PipelineSection,
    QuarantineSection,
)
from gateway.decider import Decider
from gateway.evaluator import LocalEvaluator
from gateway.message import Envelope, RawContent
from gateway.milter import GatewayMilter, Runtime
from gateway.replies import smtp_safe
from gateway.ruleset import Ruleset
from gateway.service import Generation
from tests.helpers import fixture_message


class ExplodingEvaluator:
    store_free = True  # decided on the callback thread, like the worker pool

    def evaluate(self, envelope, raw):
        raise RuntimeError("evaluator exploded")

    def close(self):
        pass


class RecordingEvaluator(LocalEvaluator):
    def evaluate(self, envelope, raw):
        self.seen = (envelope, raw.bytes())
        return super().evaluate(envelope, raw)


class Ctx(MilterTestCtx):
    """pymilter's own test context, with the MTA's offered actions settable
    and the quarantine action recorded instead of refused."""

    def __init__(self, actions: int = Milter.CURR_ACTS):
        super().__init__()
        self.offered = [actions, 0, 0, 0]  # no protocol options: every step answers
        self.quarantined: str | None = None

    def _negotiate(self):
        MilterTestCtx.default_opts = list(self.offered)
        try:
            return super()._negotiate()
        finally:
            MilterTestCtx.default_opts = [Milter.CURR_ACTS, 0x1FFFFF, 0, 0]

    def quarantine(self, reason):
        if not self._body:
            raise OSError("quarantine not called from eom()")
        self.quarantined = reason


def runtime_for(config: Config, evaluator) -> Runtime:
    return Runtime(FixedService(Generation(config, Ruleset(), evaluator,
                                           Decider(evaluator, keeper=None, threads=2),
                                           keeper=None, number=1)))


class FixedService:
    def __init__(self, generation: Generation):
        self.current = generation


def session(runtime: Runtime, message: bytes, queue_id: str = "QID42",
            actions: int = Milter.CURR_ACTS) -> tuple[Ctx, int]:
    ctx = Ctx(actions)
    ctx._setsymval("{i}", queue_id)
    Milter.factory = lambda: GatewayMilter(runtime)
    assert ctx._connect("mail.example.org", "mail.example.org", "198.51.100.7") == Milter.CONTINUE
    rc = ctx._feedFile(io.BytesIO(message), "alice@example.org", "bob@example.net")
    return ctx, rc


def test_evaluator_failure_tempfails_with_a_clear_reply():
    runtime = runtime_for(Config(), ExplodingEvaluator())
    ctx, rc = session(runtime, fixture_message("ham_plain.eml"))
    assert rc == Milter.TEMPFAIL
    assert ctx._reply == ("451", "4.3.0", "Temporary failure in mail filter, try again later")


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
    assert ctx._reply is not None and ctx._reply[0] == "451"
    assert not hasattr(evaluator, "seen")  # never scored a half-received message


def test_envelope_and_bytes_reach_the_evaluator():
    config = Config(pipeline=PipelineSection(checks=["headers", "size", "lists"]))
    evaluator = RecordingEvaluator(config)
    ctx, rc = session(runtime_for(config, evaluator), fixture_message("ham_plain.eml"))
    assert rc == Milter.ACCEPT
    assert [name for name in ctx._msg if name.startswith("X-")][-3:] == [
        "X-Spam-Status", "X-Spam-Score", "X-Gateway-Symbols"]
    envelope, raw = evaluator.seen
    assert envelope.client_ip == "198.51.100.7"
    assert envelope.helo == "mail.example.org"
    assert envelope.mail_from == "alice@example.org"
    assert envelope.rcpt_to == ("bob@example.net",)
    assert envelope.queue_id == "QID42"
    assert b"Subject: Lunch on Thursday\r\n" in raw
    assert raw.rstrip().endswith(b"Alice")


@pytest.mark.parametrize("threshold", [1 << 20, 4096])  # in memory; spilled to a file
def test_header_fields_gathered_before_the_spool_arrive_byte_for_byte(threshold, tmp_path):
    # The header fields are gathered and written to the spool at the end of
    # the header block, or in HEAD_CHUNK pieces: the same bytes either way.
    from gateway.milter import HEAD_CHUNK

    many = "".join(f"X-Filler-{i}: {'x' * 70}\r\n" for i in range(HEAD_CHUNK // 60))
    message = ("From: Alice <alice@example.org>\r\nTo: bob@example.net\r\n"
               "Subject: folded\r\n\tover two lines\r\n" + many +
               "Message-ID: <m@example.org>\r\n\r\nbody line\r\n").encode()
    config = Config(pipeline=PipelineSection(checks=["headers"], spool_threshold=threshold,
                                             spool_dir=str(tmp_path)))
    evaluator = RecordingEvaluator(config)
    _, rc = session(runtime_for(config, evaluator), message)
    assert rc == Milter.ACCEPT
    head, body = evaluator.seen[1].split(b"\r\n\r\n", 1)
    assert head + b"\r\n\r\n" == message[:message.index(b"\r\n\r\n") + 4]
    assert body.startswith(b"body line")  # (pymilter's test context sends LF in bodies)


def test_an_mta_without_header_actions_gets_the_verdict_without_headers():
    config = Config(pipeline=PipelineSection(checks=["headers", "size", "lists"]))
    offered = Milter.CURR_ACTS & ~Milter.ADDHDRS & ~Milter.CHGHDRS
    forged = b"X-Spam-Status: No, forged\r\n" + fixture_message("ham_plain.eml")
    ctx, rc = session(runtime_for(config, LocalEvaluator(config)), forged, actions=offered)
    assert rc == Milter.ACCEPT  # not 451 for a missing action
    assert not ctx._headerschanged


def test_an_mta_without_quarantine_rejects_what_it_cannot_hold():
    config = Config(pipeline=PipelineSection(checks=["headers", "size", "lists"]),
                    lists=ListsSection(block_senders=[]),
                    quarantine=QuarantineSection(url=""))
    evaluator = QuarantiningEvaluator(config)
    ctx, rc = session(runtime_for(config, evaluator), fixture_message("ham_plain.eml"),
                      actions=Milter.CURR_ACTS & ~Milter.QUARANTINE)
    assert rc == Milter.REJECT
    assert ctx._reply[:2] == ("550", "5.7.1") and "cannot hold" in ctx._reply[2]
    ctx, rc = session(runtime_for(config, evaluator), fixture_message("ham_plain.eml"))
    assert rc == Milter.ACCEPT and ctx.quarantined  # held where the MTA can
    decision = Decider(evaluator, keeper=None, threads=1).decide(
        Envelope(mail_from="alice@example.org", rcpt_to=("bob@example.net",)),
        RawContent(data=fixture_message("ham_plain.eml")))
    assert decision.notes == {"held_by": "mta"}  # Postfix's or Sendmail's hold queue alike


class QuarantiningEvaluator(LocalEvaluator):
    def evaluate(self, envelope, raw):
        verdict = super().evaluate(envelope, raw)
        return dataclasses.replace(verdict, action="quarantine", reason="test")


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


def test_the_milter_freezes_what_it_loaded_before_serving():
    """The collector runs on a thread of its own, and what the milter
    loaded before serving is frozen first: a full collection walks only
    what came after (70 ms of CPU every 30 s on this machine before)."""
    import gc

    from gateway.milter import _collect_garbage_off_callback_threads

    loaded = object.__new__(type("Loaded", (), {}))  # a tracked object made before serving
    stop = _collect_garbage_off_callback_threads()
    try:
        assert not gc.isenabled() and gc.get_freeze_count() > 0
        assert not any(o is loaded for o in gc.get_objects())  # out of the collector's walk
    finally:
        stop.set()
        gc.unfreeze()
        gc.enable()

"""The verdict's log line: written straight to the installed handler, the
same line the logging module writes, and through logging whenever anything
else listens."""

from __future__ import annotations

import io
import json
import logging
import sys
import threading

import pytest

from gateway import logs
from gateway.logline import log, log_verdict
from gateway.logs import for_message, setup_logging
from gateway.message import Envelope
from gateway.symbols import Symbol
from gateway.verdict import Verdict

ENVELOPE = Envelope(mail_from="alice@example.org", rcpt_to=("bob@example.net",),
                    client_ip="192.0.2.1", helo="mail.example.org", queue_id="4XyZ1")
VERDICT = Verdict(action="quarantine", score=7.25, required=6.0,
                  symbols=(Symbol("BAYES_99", 5.0, "spam"), Symbol("MISSING_DATE", 2.254, "")),
                  failed_checks=("dkim",), reason="score 7.25 >= 6.0",
                  check_millis={"bayes": 1.5})


@pytest.fixture
def stderr():
    """What setup_logging's handler writes (see install); logging as it was
    afterwards."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level, sys.excepthook, threading.excepthook,
             logs._installed)
    stream = io.StringIO()
    yield stream
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handlers, level, sys.excepthook, threading.excepthook, logs._installed = saved
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(False)


def install(stream: io.StringIO, style: str, level: str = "info") -> None:
    setup_logging(level, style)
    assert isinstance(logs._installed, logging.StreamHandler)
    logs._installed.setStream(stream)  # pytest's capture holds sys.stderr now


class _Pass(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return True


def lines_both_ways(stream: io.StringIO, envelope: Envelope = ENVELOPE) -> tuple[str, str]:
    """The line written straight, and the one logging writes (a filter on
    the logger sends the record through logging's own path)."""
    with for_message(envelope.queue_id):
        log_verdict(envelope, VERDICT, 5000, 12.5, {"quarantine_id": "abc"})
        direct = stream.getvalue()
        log.addFilter(_Pass())
        try:
            log_verdict(envelope, VERDICT, 5000, 12.5, {"quarantine_id": "abc"})
        finally:
            log.filters.clear()
    return direct, stream.getvalue()[len(direct):]


def test_the_direct_text_line_is_the_line_logging_writes(stderr):
    install(stderr, "text", "info")
    assert logs.write_fields(log, {"probe": 1})  # the direct path is taken
    stderr.truncate(0)
    stderr.seek(0)
    direct, through_logging = lines_both_ways(stderr)
    assert direct.endswith("\n") and direct.count("\n") == 1
    # The same after the time stamp: level, logger, queue id, JSON.
    assert direct.split(" ", 2)[2] == through_logging.split(" ", 2)[2]
    assert direct.split(" ", 2)[2].startswith("INFO gateway.message: 4XyZ1: {")
    fields = json.loads(direct.split(": ", 2)[2])
    assert fields["symbols"] == {"BAYES_99": 5.0, "MISSING_DATE": 2.25}
    assert fields["queue_id"] == "4XyZ1" and fields["quarantine_id"] == "abc"


def test_the_direct_json_line_is_the_line_logging_writes(stderr):
    install(stderr, "json", "info")
    direct, through_logging = lines_both_ways(stderr)
    first, second = json.loads(direct), json.loads(through_logging)
    assert first.pop("time") and second.pop("time")
    assert first == second
    assert first["logger"] == "gateway.message" and first["level"] == "info"
    assert first["action"] == "quarantine" and first["failed_checks"] == ["dkim"]


def test_an_envelope_that_was_not_utf8_is_still_one_json_line(stderr):
    # pymilter keeps bytes that were not UTF-8 as lone surrogates, which
    # orjson refuses: the line falls back to the json module, escaped.
    install(stderr, "json", "info")
    envelope = Envelope(mail_from="al\udcffice@example.org\u202e", rcpt_to=("b@example.net",),
                        queue_id="4XyZ2")
    direct, through_logging = lines_both_ways(stderr, envelope)
    assert "\\udcff" in direct and "\\u202e" in direct
    assert json.loads(direct)["from"] == "al\udcffice@example.org\u202e"
    assert json.loads(through_logging)["from"] == json.loads(direct)["from"]


def test_a_listener_besides_the_handler_gets_the_record(stderr, caplog):
    install(stderr, "text", "info")
    logging.getLogger().addHandler(caplog.handler)  # as pytest's capture, or an admin's handler
    with caplog.at_level(logging.INFO, logger="gateway.message"):
        log_verdict(ENVELOPE, VERDICT, 5000, 12.5)
    (record,) = [r for r in caplog.records if r.name == "gateway.message"]
    assert record.fields["action"] == "quarantine"  # type: ignore[attr-defined]
    assert "INFO gateway.message: {\"queue_id\":\"4XyZ1\"" in stderr.getvalue()  # and ours


def test_nothing_is_built_when_info_is_off(stderr, monkeypatch):
    install(stderr, "text", "warning")
    monkeypatch.setattr("gateway.logline.message_record", lambda *a: pytest.fail("built"))
    log_verdict(ENVELOPE, VERDICT, 5000, 12.5)
    assert stderr.getvalue() == ""

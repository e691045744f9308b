"""One structured log line per message."""

from __future__ import annotations

import logging

from gateway.facts import HeadersFacts
from gateway.logs import compact_json, write_fields
from gateway.message import Envelope
from gateway.verdict import Verdict

log = logging.getLogger("gateway.message")


def message_record(envelope: Envelope, verdict: Verdict, size: int, millis: float,
                   notes: dict[str, str] | None = None) -> dict:
    headers = HeadersFacts.of(verdict.facts)
    return {
        "queue_id": envelope.queue_id,
        "message_id": (headers.message_id if headers is not None else "") or None,
        "client_ip": envelope.client_ip,
        "helo": envelope.helo,
        "from": envelope.mail_from,
        "rcpt": list(envelope.rcpt_to),
        "size": size,
        "action": verdict.action,
        "score": round(verdict.score, 2),
        "reason": verdict.reason,
        "symbols": {s.name: round(s.score, 2) for s in verdict.symbols},
        "failed_checks": list(verdict.failed_checks),
        "spam_probability": verdict.spam_probability,
        "check_ms": dict(verdict.check_millis),
        "total_ms": round(millis, 2),
        **(notes or {}),
    }


def log_verdict(envelope: Envelope, verdict: Verdict, size: int, millis: float,
                notes: dict[str, str] | None = None) -> None:
    if not log.isEnabledFor(logging.INFO):
        return
    record = message_record(envelope, verdict, size, millis, notes)
    if write_fields(log, record):
        return
    # As text: the JSON after the logger's prefix; as JSON: these fields, merged
    # (then the text is never made: it is rendered only if a formatter asks).
    log.info("%s", _AsJson(record), extra={"fields": record})


class _AsJson:
    def __init__(self, record: dict):
        self.record = record

    def __str__(self) -> str:
        return compact_json(self.record)

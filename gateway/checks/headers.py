"""Header sanity: the fields RFC 5322 requires, present once and parseable."""

from __future__ import annotations

from email.utils import parsedate_tz

from gateway.checks import Check, CheckContext
from gateway.message import Message
from gateway.symbols import Symbol


class HeaderSanityCheck(Check):
    name = "headers"
    symbols = {
        "MISSING_FROM": "no From header (RFC 5322 requires one)",
        "MULTIPLE_FROM": "more than one From header",
        "MISSING_DATE": "no Date header (RFC 5322 requires one)",
        "INVALID_DATE": "Date header cannot be parsed",
        "MISSING_MESSAGE_ID": "no Message-ID header",
        "MISSING_SUBJECT": "no Subject header",
    }

    def run(self, message: Message, context: CheckContext) -> list[Symbol]:
        found: list[Symbol] = []
        senders = message.headers("From")
        if not senders:
            found.append(self.symbol("MISSING_FROM"))
        elif len(senders) > 1:
            found.append(self.symbol("MULTIPLE_FROM", f"{len(senders)} From headers"))
        date = message.header("Date")
        if date is None:
            found.append(self.symbol("MISSING_DATE"))
        elif parsedate_tz(date) is None:
            found.append(self.symbol("INVALID_DATE", _clip(date)))
        if message.header("Message-ID") is None:
            found.append(self.symbol("MISSING_MESSAGE_ID"))
        if message.header("Subject") is None:
            found.append(self.symbol("MISSING_SUBJECT"))
        return found


def _clip(text: str, limit: int = 80) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"

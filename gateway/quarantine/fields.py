"""The header fields a quarantine record lists (From, To, Subject, Date,
Message-ID), read from the email view of the message.

A worker reads them from the parse its checks already made and sends them
in its verdict (gateway.workers), so the milter stores held mail without
parsing its header a second time; held mail without them (a worker stopped
at the deadline, the in-process evaluator) is parsed here.
"""

from __future__ import annotations

from collections.abc import Mapping
from email.message import Message as EmailMessage

from gateway.mail import decoded_header
from gateway.mime import parse_bytes

# Record column -> header field.
STORED = (("header_from", "From"), ("header_to", "To"), ("subject", "Subject"),
          ("header_date", "Date"), ("message_id", "Message-ID"))
FIELD_LENGTH = 998  # RFC 5322's line limit: a record's field is cut there


def stored_fields(head: EmailMessage) -> dict[str, str | None]:
    """The record's header columns from a parsed message (or its header)."""
    return {column: header_text(head, name) for column, name in STORED}


def fields_of(data: bytes, known: Mapping[str, str | None] | None) -> Mapping[str, str | None]:
    """``known`` when a worker sent them, else read from the header of ``data``."""
    if known is not None:
        return known
    return stored_fields(parse_bytes(data.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n"))


def header_text(head: EmailMessage, name: str) -> str | None:
    """The first ``name`` field, RFC 2047 decoded, whitespace runs as one space."""
    value = head.get(name)
    if value is None:
        return None
    return " ".join(decoded_header(value).split())[:FIELD_LENGTH]

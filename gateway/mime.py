"""The parsed email view of a message, with limits an attacker cannot pass.

Python's ``email`` parser recurses once per nested multipart or
``message/rfc822`` part (a 70 KB message with 1,000 nested parts raises
``RecursionError``), keeps every part in memory, and its MIME parameter
parser (``get_param``, ``get_filename``, ``get_boundary``) is quadratic in
the number of ``;`` in a field. :class:`BoundedParser` is that parser with
the ``[limits]`` applied while it reads:

- parts nested deeper than ``mime_depth`` are not opened: they become
  opaque ``application/octet-stream`` leaves;
- parts beyond ``mime_parts`` are read past but not kept (nor opened);
- a part's header fields beyond ``header_count`` are dropped, a field longer
  than ``header_length`` is cut, and a ``Content-*`` field is cut after
  ``mime_parameters`` parameters;
- a ``Content-*`` field whose RFC 2231 parameters the stdlib cannot decode
  (``name*`` beside ``name*0``, a section number of thousands of digits:
  every ``get_param`` raises, the parser's own ``get_boundary`` included)
  loses those parameters.

Within the limits the result is exactly what ``email.message_from_bytes``
with the ``compat32`` policy gives, so the classifier sees the same tokens
on ordinary mail. What went past a limit is counted in :class:`Excess`.

The hooks (``_new_message``, ``_parse_headers``, ``_msgstack``) are the
stdlib feed parser's own, unchanged since Python 3.3; tests/test_hostile.py
fails if a Python release changes them.
"""

from __future__ import annotations

import email.policy
from collections.abc import Iterable
from dataclasses import dataclass, field
from email.feedparser import BytesFeedParser
from email.message import Message as EmailMessage

from gateway.config import LimitsSection

OPAQUE_TYPE = "application/octet-stream"


@dataclass
class Excess:
    """What a parse left out, per limit."""

    unopened: int = 0  # parts too deep to open
    deepest: int = 0
    dropped_parts: int = 0
    dropped_fields: int = 0
    long_fields: list[tuple[str, int]] = field(default_factory=list)
    many_parameters: list[str] = field(default_factory=list)


class BoundedParser(BytesFeedParser):
    def __init__(self, limits: LimitsSection):
        super().__init__(policy=email.policy.compat32)
        self.limits = limits
        self.excess = Excess()
        self._parts = 0

    # -- the stdlib parser's hooks -------------------------------------------------

    def _new_message(self) -> None:
        super()._new_message()  # type: ignore[misc]
        self._parts += 1
        stack = self._msgstack  # type: ignore[attr-defined]
        self.excess.deepest = max(self.excess.deepest, len(stack))
        if self._parts > self.limits.mime_parts and len(stack) > 1:
            # Parsed past, not kept: the parent forgets it, so memory stays
            # bounded however many parts follow.
            siblings = stack[-2].get_payload()
            if siblings and siblings[-1] is stack[-1]:
                siblings.pop()
            self.excess.dropped_parts += 1

    def _parse_headers(self, lines: list[str]) -> None:
        super()._parse_headers(self._bounded(lines))  # type: ignore[misc]
        current: EmailMessage = self._cur  # type: ignore[attr-defined]
        _repair_parameters(current)
        too_deep = len(self._msgstack) > self.limits.mime_depth  # type: ignore[attr-defined]
        too_many = self._parts > self.limits.mime_parts
        if (too_deep or too_many) and current.get_content_maintype() in ("multipart",
                                                                         "message"):
            if too_deep:
                self.excess.unopened += 1
            current.set_default_type("text/plain")
            if "content-type" in current:
                current.replace_header("Content-Type", OPAQUE_TYPE)

    # -- limits on one header block -------------------------------------------------

    def _bounded(self, lines: list[str]) -> list[str]:
        limits = self.limits
        whole = "".join(lines)
        if len(lines) <= limits.header_count and len(whole) <= limits.header_length and \
                whole.count(";") <= limits.mime_parameters:
            # Within every limit however the lines make fields: the block as
            # it is (nearly every block; sorting each line into its field
            # was an eighth of the parse).
            return lines
        return self._bounded_by_field(lines)

    def _bounded_by_field(self, lines: list[str]) -> list[str]:
        limits = self.limits
        fields: list[list[str]] = []
        out: list[str] = []
        for index, line in enumerate(lines):
            if index == 0 and line.startswith("From "):
                out.append(line)  # the mbox From_ line, left to the stdlib
            elif line[:1] in (" ", "\t") and fields:
                fields[-1].append(line)
            elif len(fields) < limits.header_count:
                fields.append([line])
            else:
                self.excess.dropped_fields += 1
        for lines_of_field in fields:
            text = "".join(lines_of_field)
            name = text.split(":", 1)[0].strip()
            if len(text) > limits.header_length:
                self.excess.long_fields.append((name, len(text)))
                text = text[: limits.header_length]
                lines_of_field = [text.rstrip("\r\n") + "\n"]
            if name.lower().startswith("content-") and \
                    text.count(";") > limits.mime_parameters:
                self.excess.many_parameters.append(name)
                cut = _nth(text, ";", limits.mime_parameters)
                lines_of_field = [text[:cut].rstrip("\r\n") + "\n"]
            out.extend(lines_of_field)
        return out


def _repair_parameters(part: EmailMessage) -> None:
    """Drop the RFC 2231 parameters (``name*...``) of each ``Content-*`` field
    whose parameters make ``get_params`` raise; if that is not enough, keep
    only the field's first item (the type or disposition)."""
    seen: set[str] = set()
    for name in list(part):
        lower = name.lower()
        if not lower.startswith("content-") or lower in seen:
            continue
        seen.add(lower)
        value = str(part.get(name, ""))
        if "*" not in value or _decodes(part, lower):
            continue
        items = _split_parameters(value)
        kept = [items[0], *(p for p in items[1:] if "*" not in p.partition("=")[0])]
        part.replace_header(name, "; ".join(kept))
        if not _decodes(part, lower):
            part.replace_header(name, items[0])


def _decodes(part: EmailMessage, header: str) -> bool:
    try:
        part.get_params(header=header)
    except (TypeError, ValueError):
        return False
    return True


def _split_parameters(value: str) -> list[str]:
    """A field value split at the semicolons outside quoted strings."""
    items: list[str] = []
    start, quoted, escaped = 0, False, False
    for index, char in enumerate(value):
        if escaped:
            escaped = False
        elif quoted and char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == ";" and not quoted:
            items.append(value[start:index].strip())
            start = index + 1
    items.append(value[start:].strip())
    return [items[0], *(item for item in items[1:] if item)]


def _nth(text: str, char: str, n: int) -> int:
    index = -1
    for _ in range(n):
        index = text.index(char, index + 1)
    return index


def parse(chunks: Iterable[bytes], limits: LimitsSection) -> tuple[EmailMessage, Excess]:
    """The bounded email view of a message read as ``chunks`` of bytes."""
    parser = BoundedParser(limits)
    for chunk in chunks:
        parser.feed(chunk)
    return parser.close(), parser.excess


def parse_bytes(data: bytes, limits: LimitsSection | None = None) -> EmailMessage:
    """The bounded email view of ``data`` (what training and checks both use)."""
    return parse([data], limits or LimitsSection())[0]

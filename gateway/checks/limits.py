"""Parse limits: say when a message went past what the parsers look at.

Every parser on the message path is bounded by ``[limits]`` (see
:mod:`gateway.mime` and :mod:`gateway.mail`): a message nested 1,000 MIME
levels deep is scored on its first levels instead of switching checks off.
This check turns what was left out into symbols, so crafting such a message
costs its sender a score rather than buying a blind spot.
"""

from __future__ import annotations

from gateway.checks import Check, CheckContext
from gateway.mail import count_encoded_words
from gateway.message import Message
from gateway.symbols import Symbol


class LimitsCheck(Check):
    name = "limits"
    symbols = {
        "MIME_TOO_DEEP": "MIME parts nested deeper than [limits] mime_depth (not opened)",
        "MIME_TOO_MANY_PARTS": "more MIME parts than [limits] mime_parts (the rest not read)",
        "MIME_TOO_MANY_PARAMETERS": "a Content-* field with more than [limits] "
                                    "mime_parameters parameters",
        "HEADERS_TOO_MANY": "more header fields than [limits] header_count",
        "HEADER_TOO_LONG": "a header field longer than [limits] header_length",
        "TOO_MANY_ENCODED_WORDS": "a header with more RFC 2047 encoded words than "
                                  "[limits] encoded_words (the rest not decoded)",
    }

    def run(self, message: Message, context: CheckContext) -> list[Symbol]:
        found = [self.symbol(p.symbol, p.evidence) for p in message.parse_problems()]
        limit = message.limits.encoded_words
        crowded = [(f.name, n) for f in message.fields.fields
                   if "=?" in f.value and (n := count_encoded_words(f.value)) > limit]
        if crowded:
            found.append(self.symbol("TOO_MANY_ENCODED_WORDS", ", ".join(
                f"{name}: {count}" for name, count in crowded[:5])))
        return found

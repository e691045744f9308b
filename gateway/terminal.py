"""Text from mail, made safe to print on an analyst's terminal.

A header decoded from an RFC 2047 encoded-word, an envelope address or a
check's evidence can carry bytes a terminal obeys: ESC starts sequences that
clear the screen or retitle the window, CR and LF fake extra output lines,
C1 controls (U+0080-U+009F) act like ESC on some terminals, and Unicode
bidi controls reorder what is shown. Every command that prints such text
passes it through :func:`printable`, which shows each of these characters
as a visible backslash escape (``\\x1b``, ``\\r``, ``\\u202e``) instead,
and prints JSON through :func:`dumps`.
"""

from __future__ import annotations

import json
import re
from typing import Any

# C0 controls, DEL and C1 controls; every Unicode Bidi_Control character
# (ALM, LRM, RLM, the embeddings and overrides U+202A-U+202E, the isolates
# U+2066-U+2069); the line and paragraph separators; lone surrogates (bytes
# that were not UTF-8, kept by surrogateescape), which cannot be encoded.
_UNSAFE = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069"
    "\ud800-\udfff]"
)
# JSON already escapes C0 controls; these are the rest of the list above.
_UNSAFE_IN_JSON = re.compile(
    "[\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]"
)
_NAMED = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: object) -> str:
    """``text`` as one line a terminal shows as it is: control, bidi and
    undecodable characters become visible escapes; everything else,
    non-ASCII letters included, is kept."""
    return _UNSAFE.sub(_escape, str(text))


def dumps(value: Any, **options: Any) -> str:
    """JSON like ``json.dumps(value, ensure_ascii=False)``, with the
    characters JSON leaves raw (DEL, C1, bidi, separators, lone surrogates)
    written as ``\\uXXXX`` escapes: the same data for a JSON reader, and
    nothing a terminal acts on."""
    return escape_json_text(json.dumps(value, ensure_ascii=False, **options))


def escape_json_text(text: str) -> str:
    """JSON text with the characters :func:`dumps` escapes written as
    ``\\uXXXX`` (for JSON made by another encoder)."""
    # Outside strings JSON has only ASCII punctuation and digits, so these
    # characters can only be inside strings, where \\uXXXX means the same.
    return _UNSAFE_IN_JSON.sub(lambda m: f"\\u{ord(m.group()):04x}", text)

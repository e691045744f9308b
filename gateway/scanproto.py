"""The scan protocols on the wire: requests as MTAs send them, answers as
they parse them. :mod:`gateway.scan` is the listener that uses this.

Three request forms, told apart by the request line:

- ``CHECK SPAMC/1.5``: SpamAssassin's spamd protocol (``spamc``, anything
  written for SpamAssassin). Commands ``CHECK``, ``SYMBOLS``, ``REPORT``,
  ``REPORT_IFSPAM``, ``HEADERS``, ``PROCESS``, ``PING``, ``SKIP``, answered
  as spamd does (``Spam: True ; 9.2 / 4.0``).
- ``CHECK RSPAMC/1.3``: rspamd's legacy protocol, what Exim's
  ``spamd_address = … variant=rspamd`` sends (Exim 4.96, ``src/spam.c``):
  the envelope in ``Queue-Id:``, ``From:``, ``Rcpt:``, ``Helo:``,
  ``Hostname:``, ``IP:`` and ``User:`` headers. Exim reads the answer with
  ``sscanf("RSPAMD/%7s 0 EX_OK\\r\\nMetric: default; %7s %lf / %lf / %lf\\r\\n")``
  and then an ``Action:`` line, which becomes ``$spam_action``; every line
  after the Metric line becomes ``$spam_report``, from which
  deploy/exim/gateway-acl.conf takes the reply text and the headers.
- ``POST /checkv2 HTTP/1.0``: rspamd's HTTP protocol, answered in JSON.

Every answer carries the gateway's own action in rspamd's words
(:data:`RSPAMD_ACTIONS`): quarantine is ``quarantine`` (rspamd's own name
for it), tempfail is ``soft reject``.
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass
from typing import Literal

from gateway import authresults
from gateway.headers import OWN_HEADERS, authentication_results_header, verdict_headers
from gateway.mail import parse_header_block
from gateway.message import Envelope, RawContent
from gateway.replies import REJECTED, TRY_AGAIN
from gateway.verdict import Verdict

MAX_HEAD_BYTES = 64 * 1024  # the request line and headers together
MAX_REQUEST_LINE = 1024
# Exim reads at most 32,599 bytes of an rspamd answer; keep well inside.
MAX_RSPAMC_ANSWER = 30_000

EX_OK, EX_USAGE, EX_DATAERR, EX_NOPERM = 0, 64, 65, 77
EX_SOFTWARE, EX_TEMPFAIL, EX_PROTOCOL, EX_UNAVAILABLE = 70, 75, 76, 69

Protocol = Literal["spamc", "rspamc", "http"]
SPAMC_COMMANDS = ("CHECK", "SYMBOLS", "REPORT", "REPORT_IFSPAM", "HEADERS", "PROCESS",
                  "PING", "SKIP", "TELL")
RSPAMC_COMMANDS = ("CHECK", "SYMBOLS", "REPORT", "REPORT_IFSPAM", "PING", "SKIP")
HTTP_PATHS = ("/checkv2", "/check")
# Commands that carry no message.
NO_BODY = ("PING", "SKIP")

# The gateway's actions in rspamd's words: what Exim puts in $spam_action.
RSPAMD_ACTIONS = {
    "accept": "no action",
    "add_header": "add header",
    "quarantine": "quarantine",
    "reject": "reject",
    "tempfail": "soft reject",
}

_FIELD_NAME = re.compile(rb"^[\x21-\x39\x3b-\x7e]+$")
_RECEIVED_IP = re.compile(r"\[(?:IPv6:)?([0-9A-Fa-f:.]+)\]")
_RECEIVED_HELO = re.compile(r"^\s*from\s+(\S+)", re.IGNORECASE)
_EXIM_HELO = re.compile(r"\(helo=([^)\s]+)\)", re.IGNORECASE)
_ENVELOPE_FROM = re.compile(r"\(envelope-from <([^>]*)>\)", re.IGNORECASE)
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


class ProtocolError(Exception):
    """A request the listener answers with an error (``code``: sysexits)."""

    def __init__(self, code: int, text: str):
        super().__init__(text)
        self.code = code


@dataclass(frozen=True)
class Head:
    """A request's first line and headers: everything before the message."""

    protocol: Protocol
    command: str  # a SPAMC/RSPAMC command, or "CHECKV2" for HTTP
    headers: dict[str, list[str]]

    def header(self, name: str) -> str | None:
        values = self.headers.get(name.lower())
        return values[0] if values else None

    @property
    def has_body(self) -> bool:
        return self.command not in NO_BODY

    def content_length(self) -> int:
        text = self.header("Content-length")
        if text is None:
            raise ProtocolError(EX_PROTOCOL, "Content-length is required")
        if not text.isdigit() or len(text) > 15:
            raise ProtocolError(EX_PROTOCOL, f"bad Content-length {text[:40]!r}")
        return int(text)


def read_request_line(line: bytes) -> tuple[Protocol, str]:
    """(protocol, command) from the first line, or ProtocolError."""
    if len(line) > MAX_REQUEST_LINE:
        raise ProtocolError(EX_PROTOCOL, "request line too long")
    words = line.decode("latin-1").split()
    if len(words) == 3 and words[2].upper().startswith("HTTP/"):
        if words[0].upper() != "POST" or words[1].split("?")[0] not in HTTP_PATHS:
            raise ProtocolError(EX_USAGE, f"unsupported HTTP request {words[0][:20]} "
                                f"{words[1][:60]}")
        return "http", "CHECKV2"
    if len(words) == 2:
        command, version = words[0].upper(), words[1].upper()
        if version.startswith("SPAMC/") and command in SPAMC_COMMANDS:
            return "spamc", command
        if version.startswith("RSPAMC/") and command in RSPAMC_COMMANDS:
            return "rspamc", command
        if version.startswith(("SPAMC/", "RSPAMC/")):
            raise ProtocolError(EX_PROTOCOL, f"bad command {command[:20]!r}")
    raise ProtocolError(EX_PROTOCOL, "bad request line")


def read_header_line(line: bytes) -> tuple[str, str]:
    """(lower-case name, value) of one request header line."""
    name, colon, value = line.decode("latin-1").partition(":")
    if not colon or not name.strip():
        raise ProtocolError(EX_PROTOCOL, f"bad header line {line[:40]!r}")
    return name.strip().lower(), value.strip()


# -- the envelope --------------------------------------------------------------------


def envelope_of(head: Head, raw: RawContent) -> Envelope:
    """The SMTP envelope from the request's own headers (rspamd's names, which
    Exim sends), else from the message's top Received: header (the one the
    calling MTA added) and Return-Path:."""
    header = head.header
    ip, helo, mail_from = header("IP"), header("Helo"), header("From")
    if ip is None or helo is None or mail_from is None:
        found_ip, found_helo, found_from = _from_message(raw)
        ip = ip or found_ip
        helo = helo or found_helo
        mail_from = mail_from if mail_from is not None else found_from
    user = header("User")
    return Envelope(
        mail_from=(mail_from or "").strip().strip("<>"),
        rcpt_to=tuple(r.strip().strip("<>") for r in head.headers.get("rcpt", [])),
        client_ip=ip.strip("[]") if ip else None,
        client_name=header("Hostname"),
        helo=helo,
        queue_id=header("Queue-Id"),
        macros={"auth_authen": user} if user else {},
    )


def _from_message(raw: RawContent) -> tuple[str | None, str | None, str | None]:
    with raw.open() as stream:
        lines = stream.read(MAX_HEAD_BYTES).splitlines(keepends=True)
    fields = parse_header_block(lines, 200, 8192).fields
    received = next((f.value for f in fields if f.name.lower() == "received"), "")
    ip = helo = mail_from = None
    if received:
        text = " ".join(received.split())
        if found := _RECEIVED_IP.search(text):
            try:
                ip = str(ipaddress.ip_address(found.group(1)))
            except ValueError:
                ip = None
        exim_helo = _EXIM_HELO.search(text)
        plain_helo = _RECEIVED_HELO.search(text)
        helo = exim_helo.group(1) if exim_helo else plain_helo.group(1) if plain_helo else None
        if found := _ENVELOPE_FROM.search(text):
            mail_from = found.group(1)
    if mail_from is None:
        path = next((f.value for f in fields if f.name.lower() == "return-path"), None)
        if path is not None:
            mail_from = path.strip().strip("<>")
    return ip, helo, mail_from


# -- answers --------------------------------------------------------------------------


def answer(head: Head, verdict: Verdict, raw: RawContent, authserv_id: str) -> bytes:
    """The answer to a scanned message, in the request's protocol."""
    if head.protocol == "http":
        return _http_answer(verdict)
    if head.protocol == "rspamc":
        return rspamc_answer(verdict)
    return _spamd_answer(head, verdict, raw, authserv_id)


def pong(protocol: Protocol) -> bytes:
    return b"RSPAMD/1.3 0 PONG\r\n" if protocol == "rspamc" else b"SPAMD/1.5 0 PONG\r\n"


def error_answer(protocol: Protocol, code: int, text: str) -> bytes:
    """An error in the client's protocol: for Exim any answer but EX_OK is one
    it cannot parse, so it defers the message."""
    text = " ".join(_CONTROL.sub(" ", text).split())[:200]
    if protocol == "http":
        status = {EX_NOPERM: "403 Forbidden", EX_DATAERR: "413 Payload Too Large",
                  EX_PROTOCOL: "400 Bad Request", EX_USAGE: "400 Bad Request"}.get(
                      code, "503 Service Unavailable")
        body = json.dumps({"error": text}).encode()
        return (f"HTTP/1.0 {status}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    banner = "RSPAMD/1.3" if protocol == "rspamc" else "SPAMD/1.1"
    return f"{banner} {code} {text}\r\n\r\n".encode("latin-1", "replace")


def is_spam(verdict: Verdict) -> bool:
    """What ``Spam: True`` means here: the gateway would not simply deliver."""
    return verdict.action in ("quarantine", "reject", "tempfail") or verdict.is_spam


def reply_of(verdict: Verdict) -> str | None:
    """The SMTP reply for a reject or tempfail, one printable line."""
    if verdict.action == "reject":
        reply = verdict.reply or REJECTED
    elif verdict.action == "tempfail":
        reply = verdict.reply or TRY_AGAIN
    else:
        return None
    return re.sub(r"[^\x20-\x7e]", "?", " ".join(str(reply).split()))[:400]


def rspamc_answer(verdict: Verdict) -> bytes:
    """rspamd's legacy answer, with the lines deploy/exim/gateway-acl.conf
    reads from ``$spam_report``: ``Message:`` (the SMTP reply for a reject
    or tempfail) and the headers to add, each as ``Name: value`` with folded
    lines starting with a tab."""
    lines = [
        f"Metric: default; {'True' if is_spam(verdict) else 'False'}; "
        f"{verdict.score:.2f} / {verdict.required:.2f} / 0.00",
        f"Action: {RSPAMD_ACTIONS.get(verdict.action, verdict.action)}",
    ]
    if (reply := reply_of(verdict)) is not None:
        lines.append(f"Message: {reply}")
    for name, value in _headers_to_add(verdict):
        lines.append(f"{name}: {_wire_value(value)}")
    for symbol in verdict.symbols:
        lines.append(f"Symbol: {symbol.name}({symbol.score:.2f})")
    text = "RSPAMD/1.3 0 EX_OK\r\n"
    for line in lines:
        if len(text) + len(line) + 2 > MAX_RSPAMC_ANSWER:
            break  # the last lines are symbols, already named in X-Gateway-Symbols
        text += line + "\r\n"
    return text.encode("utf-8", "replace")


def _headers_to_add(verdict: Verdict) -> list[tuple[str, str]]:
    auth = authentication_results_header(verdict)
    return ([auth] if auth else []) + verdict_headers(verdict)


def _wire_value(value: str) -> str:
    """A folded header value with every continuation line starting with a
    tab and no other control character: a line of ours can never be read as
    another header, whatever the message put into a value."""
    pieces = [" ".join(_CONTROL.sub(" ", piece).split()) for piece in value.split("\n")]
    return "\r\n\t".join(piece for piece in pieces if piece)


def _spamd_answer(head: Head, verdict: Verdict, raw: RawContent, authserv_id: str) -> bytes:
    spam = is_spam(verdict)
    status = (f"SPAMD/1.1 0 EX_OK\r\nSpam: {'True' if spam else 'False'} ; "
              f"{verdict.score:.1f} / {verdict.required:.1f}\r\n")
    command = head.command
    if command == "CHECK":
        return (status + "\r\n").encode()
    if command == "SYMBOLS":
        body = ",".join(s.name for s in verdict.symbols).encode()
    elif command == "REPORT" or (command == "REPORT_IFSPAM" and spam):
        body = report(verdict).encode("utf-8", "replace")
    elif command == "REPORT_IFSPAM":
        body = b""
    else:  # HEADERS, PROCESS
        body = with_headers(raw.bytes(), verdict, authserv_id,
                            headers_only=command == "HEADERS")
    return (status + f"Content-length: {len(body)}\r\n\r\n").encode() + body


def report(verdict: Verdict) -> str:
    """SpamAssassin's report layout: score, name and why, one line each."""
    lines = [f"Action: {verdict.action} ({verdict.reason})", "",
             " pts rule name              description",
             "---- ---------------------- " + "-" * 50]
    for symbol in sorted(verdict.symbols, key=lambda s: -abs(s.score)):
        why = symbol.description + (f": {symbol.evidence}" if symbol.evidence else "")
        lines.append(f"{symbol.score:4.1f} {symbol.name:<22} {' '.join(why.split())[:200]}")
    return "\r\n".join(lines) + "\r\n"


def with_headers(raw: bytes, verdict: Verdict, authserv_id: str, headers_only: bool) -> bytes:
    """The message with our headers on top and the sender's copies of them
    gone (X-Spam-*, X-Gateway-Symbols, and Authentication-Results under our
    authserv-id), as the milter leaves it."""
    newline = b"\r\n" if b"\r\n" in raw[:2000] else b"\n"
    separator, fields, body = split_header(raw)
    kept = b"".join(field for name, field in fields
                    if name is None or not _forged(name, field, authserv_id))
    ours = b"".join(f"{name}: {value}".encode("utf-8", "replace").replace(b"\n", newline)
                    + newline for name, value in _headers_to_add(verdict))
    if not body.startswith((b"\r\n", b"\n")):
        body = newline + body  # no blank line after the header: one goes in
    if headers_only:
        return separator + ours + kept + newline
    return separator + ours + kept + body


_OWN_LOWER = {name.lower() for name in OWN_HEADERS}


def _forged(name: str, field: bytes, authserv_id: str) -> bool:
    lower = name.lower()
    if lower in _OWN_LOWER:
        return True
    if lower == authresults.HEADER.lower():
        value = field.split(b":", 1)[1].decode("utf-8", "replace")
        return authresults.claims(value, authserv_id)
    return False


def split_header(raw: bytes) -> tuple[bytes, list[tuple[str | None, bytes]], bytes]:
    """(mbox From_ line, header fields as (name, raw bytes), the rest from the
    blank line on), by the rules of :func:`gateway.mail.parse_header_block`:
    a line that is neither a field nor a continuation starts the body. A
    continuation line before any field is kept with no name."""
    fields: list[tuple[str | None, bytes]] = []
    separator = b""
    position = 0
    while position < len(raw):
        end = raw.find(b"\n", position)
        end = len(raw) if end < 0 else end + 1
        line = raw[position:end]
        if line[:1] in (b" ", b"\t"):
            if fields:
                name, text = fields[-1]
                fields[-1] = (name, text + line)
            else:
                fields.append((None, line))
            position = end
            continue
        label, colon, _rest = line.partition(b":")
        label = label.rstrip(b" \t")
        if position == 0 and line.startswith(b"From ") and not (colon and label == b"From"):
            separator, position = line, end  # an mbox From_ line (Exim sends one)
            continue
        if not colon or not _FIELD_NAME.match(label):
            break  # the blank line, or a body with no blank line before it
        fields.append((label.decode("ascii"), line))
        position = end
    return separator, fields, raw[position:]


def _http_answer(verdict: Verdict) -> bytes:
    reply = reply_of(verdict)
    payload = {
        "is_skipped": False,
        "is_spam": is_spam(verdict),
        "score": round(verdict.score, 2),
        "required_score": verdict.required,
        "action": RSPAMD_ACTIONS.get(verdict.action, verdict.action),
        "gateway_action": verdict.action,
        "symbols": {s.name: {"name": s.name, "score": round(s.score, 3),
                             "description": s.description,
                             "options": [s.evidence] if s.evidence else []}
                    for s in verdict.symbols},
        "messages": {"smtp_message": reply} if reply else {},
        "headers": dict(_headers_to_add(verdict)),
    }
    body = json.dumps(payload).encode()
    return (b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)

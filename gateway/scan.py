"""A scan protocol for MTAs without a milter interface (Exim, and anything
that speaks to SpamAssassin's spamd or rspamd).

Served on ``[scan] listen`` beside the milter by ``gateway run``:

- the spamd protocol, SPAMC/1.x: ``CHECK``, ``SYMBOLS``, ``REPORT``,
  ``REPORT_IFSPAM``, ``HEADERS``, ``PROCESS``, ``PING`` and ``SKIP``, answered
  as spamd does (``Spam: True ; 9.2 / 6.0``), so ``spamc`` and Exim's
  ``spam =`` condition work unchanged;
- rspamd's HTTP protocol, ``POST /checkv2`` (what Exim's
  ``spamd_address = … variant=rspamd`` sends), which carries the envelope:
  ``IP``, ``Helo``, ``From``, ``Rcpt``, ``Queue-Id``, ``Hostname``.

Both run the gateway's full pipeline and policy and return the verdict;
the MTA applies it (add headers, defer, reject). Nothing is quarantined
here: that is the MTA's business on this path.

The envelope: from the request's headers where the client sends them (the
rspamd protocol does, and a SPAMC client may add the same headers), else
from the top ``Received:`` header the calling MTA added (client IP and
HELO) and ``Return-Path:``. Without either, SPF, iprev and the HELO checks
have nothing to check (see docs/install.md).

Hostile clients are expected: a request's header block is capped at 64 KB,
its body at ``[size] max_bytes``, a client has ``[scan] timeout`` seconds
for each read, at most ``[scan] max_clients`` are served at once, and only
addresses in ``[scan] allow`` (loopback by default) are answered, and only
those with ``[scan] secret`` when one is set (a ``Secret:`` header).
"""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import json
import logging
import re
import socket
import socketserver
import threading
from collections.abc import Callable
from dataclasses import dataclass

from gateway.config import Config
from gateway.headers import verdict_headers
from gateway.message import Envelope, RawContent
from gateway.policy import Verdict

log = logging.getLogger("gateway.scan")

MAX_HEADER_BYTES = 64 * 1024
EX_OK, EX_USAGE, EX_DATAERR, EX_NOPERM = 0, 64, 65, 77
EX_SOFTWARE, EX_TEMPFAIL, EX_PROTOCOL, EX_UNAVAILABLE = 70, 75, 76, 69
SPAMC_COMMANDS = ("CHECK", "SYMBOLS", "REPORT", "REPORT_IFSPAM", "HEADERS", "PROCESS",
                  "PING", "SKIP", "TELL")
_RECEIVED_IP = re.compile(r"\[(?:IPv6:)?([0-9A-Fa-f:.]+)\]")
_RECEIVED_HELO = re.compile(r"^\s*from\s+(\S+)|\(helo=([^)\s]+)\)", re.IGNORECASE)
_ENVELOPE_FROM = re.compile(r"\(envelope-from <([^>]*)>\)", re.IGNORECASE)


class ProtocolError(Exception):
    def __init__(self, code: int, text: str):
        super().__init__(text)
        self.code = code


# Decides one message: (envelope, raw) -> Verdict.
Scanner = Callable[[Envelope, RawContent], Verdict]


@dataclass(frozen=True)
class Request:
    command: str  # a SPAMC command, or "CHECKV2" for rspamd's protocol
    headers: dict[str, list[str]]
    body: bytes
    http: bool = False

    def header(self, name: str) -> str | None:
        values = self.headers.get(name.lower())
        return values[0] if values else None


class _Listener(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
    request_queue_size = 128  # a burst of MTA connections must not be refused

    def __init__(self, address, handler, family: int):
        self.address_family = family
        super().__init__(address, handler)


class ScanServer:
    """The listener; ``scanner`` is asked for a verdict per message."""

    def __init__(self, config: Config, scanner: Scanner):
        settings = config.scan
        self.settings = settings
        self.max_body = config.size.max_bytes
        self.scanner = scanner
        self.allowed = [ipaddress.ip_network(n, strict=False) for n in settings.allow]
        self._slots = threading.BoundedSemaphore(settings.max_clients)
        host, _, port = settings.listen.rpartition(":")
        host = host.strip("[]") or "127.0.0.1"
        server = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                server.serve_client(self.request, self.client_address[0])

        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._server = _Listener((host, int(port)), Handler, family)
        self.address = self._server.server_address

    def start(self) -> ScanServer:
        threading.Thread(target=self._server.serve_forever, name="scan", daemon=True).start()
        log.info("scan protocol (spamd SPAMC, rspamd /checkv2) on %s", self.settings.listen)
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    # -- one client -------------------------------------------------------------

    def serve_client(self, connection: socket.socket, address: str) -> None:
        connection.settimeout(self.settings.timeout)
        stream = connection.makefile("rb")
        if not self._slots.acquire(blocking=False):
            _send(connection, _spamd_error(EX_TEMPFAIL, "too many clients, try again"))
            return
        try:
            if not self._allowed(address):
                log.warning("scan: refused a client at %s (not in [scan] allow)", address)
                _send(connection, _spamd_error(EX_NOPERM, "not allowed from this address"))
                return
            try:
                request = self._read(stream)
            except ProtocolError as exc:
                _send(connection, _spamd_error(exc.code, str(exc)))
                return
            except (OSError, ValueError):
                return  # the client went away or stalled: nothing to answer
            if self.settings.secret and not hmac.compare_digest(
                    (request.header("Secret") or "").encode(), self.settings.secret.encode()):
                _send(connection, _answer_error(request, EX_NOPERM, "wrong or missing secret"))
                return
            _send(connection, self.answer(request))
        except OSError:
            pass
        finally:
            self._slots.release()
            stream.close()

    def _allowed(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
            ip = ip.ipv4_mapped
        return any(ip in network for network in self.allowed)

    def _read(self, stream) -> Request:
        first = stream.readline(1024)
        if not first:
            raise ValueError("no request")
        if not first.endswith(b"\n"):
            raise ProtocolError(EX_PROTOCOL, "request line too long")
        words = first.decode("latin-1").split()
        http = len(words) == 3 and words[2].upper().startswith("HTTP/")
        if http:
            if words[0].upper() != "POST" or words[1].split("?")[0] not in ("/checkv2",
                                                                             "/check"):
                raise ProtocolError(EX_USAGE, f"unsupported HTTP request {words[0]} {words[1]}")
            command = "CHECKV2"
        elif len(words) == 2 and words[1].upper().startswith("SPAMC/"):
            command = words[0].upper()
            if command not in SPAMC_COMMANDS:
                raise ProtocolError(EX_PROTOCOL, f"bad command {command!r}")
        else:
            raise ProtocolError(EX_PROTOCOL, "bad request line")
        headers: dict[str, list[str]] = {}
        size = len(first)
        while True:
            line = stream.readline(MAX_HEADER_BYTES)
            size += len(line)
            if size > MAX_HEADER_BYTES:
                raise ProtocolError(EX_PROTOCOL, "request headers too long")
            if not line:
                raise ValueError("headers cut short")
            if line in (b"\r\n", b"\n"):
                break
            name, colon, value = line.decode("latin-1").partition(":")
            if not colon or not name.strip():
                raise ProtocolError(EX_PROTOCOL, f"bad header line {line[:40]!r}")
            headers.setdefault(name.strip().lower(), []).append(value.strip())
        if command in ("PING", "SKIP"):
            return Request(command, headers, b"", http)
        length_text = next(iter(headers.get("content-length") or []), None)
        if length_text is None:
            raise ProtocolError(EX_PROTOCOL, "Content-length is required")
        try:
            length = int(length_text)
        except ValueError:
            raise ProtocolError(EX_PROTOCOL, f"bad Content-length {length_text!r}") from None
        if length < 0 or length > self.max_body:
            raise ProtocolError(EX_DATAERR, f"message of {length} bytes is over the "
                                f"{self.max_body}-byte limit")
        body = stream.read(length)
        if len(body) != length:
            raise ValueError("body cut short")
        return Request(command, headers, body, http)

    # -- answers ------------------------------------------------------------------

    def answer(self, request: Request) -> bytes:
        if request.command == "PING":
            return b"SPAMD/1.5 0 PONG\r\n"
        if request.command == "SKIP":
            return b""
        if request.command == "TELL":
            return _spamd_error(EX_UNAVAILABLE, "learning is done with gateway learn")
        envelope = envelope_of(request)
        try:
            verdict = self.scanner(envelope, RawContent(data=request.body))
        except Exception as exc:  # a worker died, the pool is down: the MTA defers
            log.error("scan: message %s: %s: %s", envelope.queue_id or "-",
                      type(exc).__name__, exc)
            return _answer_error(request, EX_TEMPFAIL, "temporary failure, try again")
        if request.http:
            return _http_answer(verdict)
        return _spamd_answer(request, verdict)


def is_spam(verdict: Verdict) -> bool:
    """What ``Spam: True`` means here: the gateway would not simply deliver."""
    return verdict.action in ("quarantine", "reject") or verdict.is_spam


def _spamd_answer(request: Request, verdict: Verdict) -> bytes:
    spam = is_spam(verdict)
    head = (f"SPAMD/1.1 0 EX_OK\r\nSpam: {'True' if spam else 'False'} ; "
            f"{verdict.score:.1f} / {verdict.required:.1f}\r\n")
    command = request.command
    if command == "CHECK":
        return (head + "\r\n").encode()
    if command == "SYMBOLS":
        body = ",".join(s.name for s in verdict.symbols).encode()
    elif command == "REPORT" or (command == "REPORT_IFSPAM" and spam):
        body = report(verdict).encode("utf-8", "replace")
    elif command == "REPORT_IFSPAM":
        body = b""
    elif command == "HEADERS":
        body = _with_headers(request.body, verdict, headers_only=True)
    else:  # PROCESS
        body = _with_headers(request.body, verdict, headers_only=False)
    return (head + f"Content-length: {len(body)}\r\n\r\n").encode() + body


def report(verdict: Verdict) -> str:
    """SpamAssassin's report layout: score, name and why, one line each."""
    lines = [f"Action: {verdict.action} ({verdict.reason})", "",
             " pts rule name              description",
             "---- ---------------------- " + "-" * 50]
    for symbol in sorted(verdict.symbols, key=lambda s: -abs(s.score)):
        why = symbol.description + (f": {symbol.evidence}" if symbol.evidence else "")
        lines.append(f"{symbol.score:4.1f} {symbol.name:<22} {' '.join(why.split())[:200]}")
    return "\r\n".join(lines) + "\r\n"


def _with_headers(raw: bytes, verdict: Verdict, headers_only: bool) -> bytes:
    newline = b"\r\n" if b"\r\n" in raw[:2000] else b"\n"
    separator = newline + newline
    head, found, body = raw.partition(separator)
    ours = b"".join(f"{name}: {value}".encode("utf-8", "replace").replace(b"\n", newline)
                    + newline for name, value in verdict_headers(verdict))
    if not found:
        head, body = raw.rstrip(b"\r\n"), b""
    head = ours + head + newline
    return head + newline if headers_only else head + newline + body


def _http_answer(verdict: Verdict) -> bytes:
    action = {"accept": "no action", "add_header": "add header", "quarantine": "add header",
              "reject": "reject", "tempfail": "soft reject"}.get(verdict.action, verdict.action)
    payload = {
        "is_skipped": False,
        "score": round(verdict.score, 2),
        "required_score": verdict.required,
        "action": action,
        "gateway_action": verdict.action,
        "symbols": {s.name: {"name": s.name, "score": round(s.score, 3),
                             "description": s.description,
                             "options": [s.evidence] if s.evidence else []}
                    for s in verdict.symbols},
        "messages": {"smtp_message": str(verdict.reply)} if verdict.reply else {},
    }
    body = json.dumps(payload).encode()
    return (b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)


def _spamd_error(code: int, text: str) -> bytes:
    return f"SPAMD/1.1 {code} {' '.join(text.split())}\r\n\r\n".encode("latin-1", "replace")


def _answer_error(request: Request, code: int, text: str) -> bytes:
    if request.http:
        status = "403 Forbidden" if code == EX_NOPERM else "503 Service Unavailable"
        body = json.dumps({"error": text}).encode()
        return (f"HTTP/1.0 {status}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    return _spamd_error(code, text)


def _send(connection: socket.socket, data: bytes) -> None:
    if data:
        connection.sendall(data)
    with contextlib.suppress(OSError):
        connection.shutdown(socket.SHUT_WR)


# -- the envelope ---------------------------------------------------------------------


def envelope_of(request: Request) -> Envelope:
    """The SMTP envelope from the request's own headers (rspamd's names), else
    from the message's top Received: header and Return-Path:."""
    header = request.header
    ip, helo, mail_from = header("IP"), header("Helo"), header("From")
    if ip is None or helo is None or mail_from is None:
        found_ip, found_helo, found_from = _from_message(request.body)
        ip = ip or found_ip
        helo = helo or found_helo
        mail_from = mail_from if mail_from is not None else found_from
    return Envelope(
        mail_from=(mail_from or "").strip().strip("<>"),
        rcpt_to=tuple(r.strip().strip("<>") for r in request.headers.get("rcpt", [])),
        client_ip=ip.strip("[]") if ip else None,
        client_name=header("Hostname"),
        helo=helo,
        queue_id=header("Queue-Id"),
    )


def _from_message(raw: bytes) -> tuple[str | None, str | None, str | None]:
    from gateway.mail import parse_header_block

    lines = raw[:MAX_HEADER_BYTES].splitlines(keepends=True)
    fields = parse_header_block(lines, 200, 8192).fields
    received = next((f.value for f in fields if f.name.lower() == "received"), "")
    ip = helo = mail_from = None
    if received:
        text = " ".join(received.split())
        if found := _RECEIVED_IP.search(text):
            candidate = found.group(1)
            try:
                ipaddress.ip_address(candidate)
                ip = candidate
            except ValueError:
                ip = None
        if found := _RECEIVED_HELO.search(text):
            exim_helo = re.search(r"\(helo=([^)\s]+)\)", text, re.IGNORECASE)
            helo = exim_helo.group(1) if exim_helo else found.group(1)
        if found := _ENVELOPE_FROM.search(text):
            mail_from = found.group(1)
    if mail_from is None:
        path = next((f.value for f in fields if f.name.lower() == "return-path"), None)
        if path is not None:
            mail_from = path.strip().strip("<>")
    return ip, helo, mail_from

"""Virus scanning with clamd (INSTREAM through pyclamd).

The raw message is streamed to clamd in chunks straight from the spool (a
25 MB message is never copied into memory for this), so clamd's own MIME
and archive handling sees attachments, zips and nested zips.

Nothing is ever marked clean without a scan: clamd down, slow or answering
an error raises, which the pipeline turns into ``CLAMAV_ERROR`` (and, with
``on_fail = "tempfail"``, a 4xx so the sender retries). A message too large
to scan gets ``CLAMAV_OVERSIZE``, not silence.
"""

from __future__ import annotations

import socket
import threading
from typing import TYPE_CHECKING, Any

import pyclamd

from gateway.checks import Check, CheckContext
from gateway.config import ClamavSection, Config
from gateway.facts import ClamavFacts
from gateway.message import Message
from gateway.ruleset import Ruleset
from gateway.symbols import Report

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

CHUNK = 64 * 1024
# clamd reports scan limits it hit (with AlertExceedsMax) as these "viruses":
# the message was not fully scanned, which is not the same as infected.
LIMIT_SIGNATURES = ("Heuristics.Limits.Exceeded",)


# pyclamd retries a failed read five times before giving up, so each read
# waits a fifth of the configured timeout: the total stays within it.
READ_ATTEMPTS = 5


class ClamdUnavailable(Exception):
    """clamd could not scan the message (down, timed out, or an error)."""


class _SendAllSocket(socket.socket):
    """pyclamd writes INSTREAM chunks with send(), which may write only part
    of a chunk on a socket with a timeout and corrupt the stream; make every
    send complete."""

    def send(self, data: ReadableBuffer, flags: int = 0) -> int:
        self.sendall(data, flags)
        return memoryview(data).nbytes


def _connect(client: Any, family: int, address: str | tuple[str, int], label: str) -> None:
    """pyclamd's ``_init_socket`` with a complete-send socket, keeping the
    reason of a failed connect (pyclamd replaces it with "Unable to scan
    stream")."""
    client.clamd_socket = _SendAllSocket(family, socket.SOCK_STREAM)
    client.clamd_socket.settimeout(client.timeout)
    try:
        client.clamd_socket.connect(address)
    except OSError as exc:
        client.connect_error = f"cannot connect to {label}: {exc.strerror or exc}"
        raise pyclamd.ConnectionError(client.connect_error) from None
    client.connect_error = None


class _UnixClient(pyclamd.ClamdUnixSocket):  # type: ignore[misc]  # pyclamd has no types
    def _init_socket(self) -> None:
        _connect(self, socket.AF_UNIX, self.unix_socket, self.unix_socket)


class _NetworkClient(pyclamd.ClamdNetworkSocket):  # type: ignore[misc]  # pyclamd has no types
    def _init_socket(self) -> None:
        _connect(self, socket.AF_INET, (self.host, self.port), f"{self.host}:{self.port}")


class ClamavCheck(Check):
    name = "clamav"
    io_bound = True
    symbols = {
        "CLAMAV_VIRUS": "virus found by ClamAV",
        "CLAMAV_OVERSIZE": "not virus-scanned: larger than the scan limit",
    }

    def __init__(self, config: Config, ruleset: Ruleset):
        super().__init__(config, ruleset)
        self.settings = config.clamav
        self._local = threading.local()

    @classmethod
    def forced_actions(cls, config: Config) -> dict[str, str]:
        forced: dict[str, str] = {"CLAMAV_VIRUS": config.clamav.on_virus}
        if config.clamav.on_fail == "tempfail":
            forced[cls.failure_symbol()] = "tempfail"
        return forced

    @classmethod
    def failure_description(cls) -> str:
        return "not virus-scanned: clamd failed or timed out"

    def _client(self) -> pyclamd.ClamdUnixSocket | pyclamd.ClamdNetworkSocket:
        """One pyclamd client per thread: its socket is per instance state."""
        client = getattr(self._local, "client", None)
        if client is None:
            read_timeout = self.settings.timeout / READ_ATTEMPTS
            try:
                if self.settings.address:
                    host, _, port = self.settings.address.rpartition(":")
                    client = _NetworkClient(host, int(port), read_timeout)
                else:
                    client = _UnixClient(self.settings.socket, read_timeout)
            except pyclamd.ConnectionError as exc:
                raise ClamdUnavailable(f"{self._where()}: {exc}") from None
            self._local.client = client
        return client

    def startup_problems(self) -> list[str]:
        try:
            client = self._client()
            client.ping()
        except ClamdUnavailable as exc:
            reason = str(exc)
        except (pyclamd.ConnectionError, OSError) as exc:
            self._local.client = None
            reason = f"{self._where()}: {getattr(client, 'connect_error', None) or exc}"
        else:
            return []
        then = ("messages are answered 4xx until it does" if self.settings.on_fail ==
                    "tempfail" else "messages pass unscanned, marked CLAMAV_ERROR, until it does")
        return [f"clamav: not answering, {reason}; {then}"]

    def _where(self) -> str:
        return f"clamd at {self.settings.address or self.settings.socket}"

    def run(self, message: Message, context: CheckContext) -> Report:
        limit = self.settings.max_size
        if message.size > limit:
            return self._oversize(f"{message.size} bytes > clamav.max_size {limit}")
        client = self._client()
        try:
            with message.raw.open() as stream:
                answer = client.scan_stream(stream, chunk_size=CHUNK)
        except pyclamd.BufferTooLongError:
            return self._oversize(
                f"{message.size} bytes refused by clamd: its StreamMaxLength is below "
                f"clamav.max_size ({limit})")
        except BrokenPipeError:
            self._local.client = None
            raise ClamdUnavailable(
                f"{self._where()} hung up while receiving {message.size} bytes: is its "
                f"StreamMaxLength below clamav.max_size ({limit})?") from None
        except (pyclamd.ConnectionError, OSError) as exc:
            self._local.client = None  # reconnect next time
            reason = getattr(client, "connect_error", None) or str(exc) or type(exc).__name__
            raise ClamdUnavailable(f"{self._where()}: {reason}") from None
        if not answer:
            return Report(facts=ClamavFacts(scanned=True, infected=False).to_json())
        status, detail = next(iter(answer.values()))
        if status == "FOUND":
            if detail.startswith(LIMIT_SIGNATURES):
                return self._oversize(f"clamd stopped at a scan limit: {detail}")
            return Report(
                symbols=(self.symbol("CLAMAV_VIRUS", detail),),
                facts=ClamavFacts(scanned=True, infected=True, signature=detail).to_json(),
            )
        raise ClamdUnavailable(f"{self._where()} answered an error: {detail}")

    def _oversize(self, evidence: str) -> Report:
        return Report(symbols=(self.symbol("CLAMAV_OVERSIZE", evidence),),
                      facts=ClamavFacts(scanned=False, reason=evidence).to_json())


def clamd_command(settings: ClamavSection, command: bytes, timeout: float | None = None) -> str:
    """Send one clamd command (PING, VERSION) and return its answer as text;
    raises OSError. For doctor and /health, which ask clamd, not scan."""
    if settings.address:
        host, _, port = settings.address.rpartition(":")
        connection = socket.create_connection((host, int(port)), timeout or settings.timeout)
    else:
        connection = socket.socket(socket.AF_UNIX)
        connection.settimeout(timeout or settings.timeout)
        try:
            connection.connect(settings.socket)
        except OSError:
            connection.close()
            raise
    with connection:
        connection.sendall(b"z" + command + b"\0")
        answer = b""
        while not answer.endswith(b"\0"):
            chunk = connection.recv(4096)
            if not chunk:
                break
            answer += chunk
    return answer.rstrip(b"\0").decode("utf-8", "replace").strip()

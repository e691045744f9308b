"""The one parsed message object every check reads.

The milter adapter (or ``gateway check``) builds a :class:`Message` once per
message: the SMTP envelope, the raw bytes as received and a lazily parsed
``email`` view. Checks never re-parse the raw bytes on their own; they ask
this object.
"""

from __future__ import annotations

import builtins
import contextlib
import io
import os
import tempfile
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from email.message import Message as EmailMessage
from pathlib import Path
from typing import IO, BinaryIO

from gateway import mime
from gateway.config import LimitsSection, PipelineSection
from gateway.mail import Authors, HeaderBlock, author_domains, parse_header_block
from gateway.mime import Excess
from gateway.symbols import Symbol

# Raw messages larger than this spill from memory to a temporary file, so a
# 25 MB message is held once on disk rather than several times in RAM.
DEFAULT_SPOOL_THRESHOLD = PipelineSection().spool_threshold
DEFAULT_LIMITS = LimitsSection()


@dataclass(frozen=True)
class Envelope:
    """What the SMTP session said about a message, as Postfix reported it."""

    mail_from: str = ""
    rcpt_to: tuple[str, ...] = ()
    client_ip: str | None = None
    client_name: str | None = None
    helo: str | None = None
    queue_id: str | None = None
    # Postfix macros of interest ({tls_version}, {cipher}, {auth_authen}, ...),
    # stored without braces.
    macros: Mapping[str, str] = field(default_factory=dict)
    # Found at the SMTP stages before DATA (rate limits, gateway.door), for
    # the verdict beside the checks' symbols.
    stage_symbols: tuple[Symbol, ...] = ()

    @property
    def sender_domain(self) -> str:
        """Domain of MAIL FROM, lower-cased; empty for the null sender."""
        return domain_of(self.mail_from)

    @property
    def tls_version(self) -> str | None:
        return self.macros.get("tls_version") or None

    @property
    def tls_cipher(self) -> str | None:
        return self.macros.get("cipher") or None

    def with_queue_id(self, queue_id: str | None) -> Envelope:
        return replace(self, queue_id=queue_id)


def domain_of(address: str) -> str:
    """The domain part of an address, lower-cased, without a trailing dot."""
    address = address.strip().strip("<>")
    if "@" not in address:
        return ""
    return address.rsplit("@", 1)[1].rstrip(".").lower()


class RawSpool:
    """Append-only buffer for a message's raw bytes.

    Keeps small messages in memory and moves to a named temporary file once
    ``threshold`` bytes are exceeded. The file has a path, so a worker
    process can read a large message without it being copied through a pipe.
    """

    def __init__(self, threshold: int = DEFAULT_SPOOL_THRESHOLD, directory: str | None = None):
        self._threshold = threshold
        self._directory = directory
        self._buffer: io.BytesIO | None = io.BytesIO()
        self._file: IO[bytes] | None = None
        self._size = 0

    @property
    def size(self) -> int:
        return self._size

    @property
    def path(self) -> str | None:
        """Path of the spill file, or None while the bytes are in memory."""
        return self._file.name if self._file is not None else None

    def write(self, data: bytes) -> None:
        if self._file is None and self._size + len(data) > self._threshold:
            self._spill()
        target = self._file if self._file is not None else self._buffer
        assert target is not None
        target.write(data)
        self._size += len(data)

    def _spill(self) -> None:
        assert self._buffer is not None
        handle = tempfile.NamedTemporaryFile(  # noqa: SIM115 - lives as long as the spool
            prefix="gateway-msg-", dir=self._directory, delete=False
        )
        handle.write(self._buffer.getvalue())
        self._file = handle
        self._buffer = None

    def freeze(self) -> RawContent:
        """Finish writing; return read-only access to the bytes."""
        if self._file is not None:
            self._file.flush()
            self._file.close()
            return RawContent(path=Path(self._file.name), size=self._size, owned=True)
        assert self._buffer is not None
        return RawContent(data=self._buffer.getvalue(), size=self._size)

    def discard(self) -> None:
        if self._file is not None:
            self._file.close()
            _unlink_quietly(self._file.name)
            self._file = None
        self._buffer = io.BytesIO()
        self._size = 0


class RawContent:
    """Read-only raw message bytes, in memory or in a file."""

    def __init__(
        self,
        data: bytes | None = None,
        path: Path | None = None,
        size: int | None = None,
        owned: bool = False,
    ):
        if (data is None) == (path is None):
            raise ValueError("RawContent needs exactly one of data or path")
        self._data = data
        self._path = path
        self._owned = owned
        self.size = (
            size
            if size is not None
            else (
                len(data) if data is not None else os.path.getsize(path)  # type: ignore[arg-type]
            )
        )

    @property
    def path(self) -> Path | None:
        return self._path

    @property
    def in_memory(self) -> bool:
        return self._data is not None

    def open(self) -> BinaryIO:
        """A fresh binary stream over the bytes (callers close it)."""
        if self._data is not None:
            return io.BytesIO(self._data)
        assert self._path is not None
        return open(self._path, "rb")

    def bytes(self) -> bytes:
        """The whole message as bytes. Reads the file each call when spooled:
        call it only where a check genuinely needs all bytes at once."""
        if self._data is not None:
            return self._data
        assert self._path is not None
        return self._path.read_bytes()

    def chunks(self, size: int = 64 * 1024) -> Iterator[builtins.bytes]:
        with self.open() as stream:
            while block := stream.read(size):
                yield block

    def release(self) -> None:
        """Remove the spill file if this object owns it."""
        if self._owned and self._path is not None:
            _unlink_quietly(str(self._path))
            self._owned = False


@dataclass(frozen=True)
class ParseProblem:
    """A parse limit the message went past: a symbol name and what it saw."""

    symbol: str
    evidence: str


class Message:
    """One message: envelope, raw bytes, its header fields and a lazily
    parsed email view, both bounded by ``[limits]``."""

    def __init__(self, envelope: Envelope, raw: RawContent,
                 limits: LimitsSection | None = None):
        self.envelope = envelope
        self.raw = raw
        self.limits = limits or DEFAULT_LIMITS
        self._parsed: EmailMessage | None = None
        self._excess: Excess | None = None
        self._fields: HeaderBlock | None = None
        self._authors: Authors | None = None
        self._parse_lock = threading.Lock()

    @classmethod
    def from_bytes(cls, data: bytes, envelope: Envelope | None = None,
                   limits: LimitsSection | None = None) -> Message:
        return cls(envelope or Envelope(), RawContent(data=data), limits)

    @property
    def size(self) -> int:
        return self.raw.size

    @property
    def email(self) -> EmailMessage:
        """The parsed message (``compat32`` policy: it never raises on broken
        headers, and defects are recorded on the object instead), within the
        ``[limits]`` (see :mod:`gateway.mime`)."""
        if self._parsed is None:
            with self._parse_lock:
                if self._parsed is None:
                    self._parsed, self._excess = mime.parse(self.raw.chunks(), self.limits)
        return self._parsed

    @property
    def fields(self) -> HeaderBlock:
        """The top-level header fields, read from the raw bytes. Unlike the
        email view, these include obs-syntax fields such as ``From : x``."""
        if self._fields is None:
            with self._parse_lock:
                if self._fields is None:
                    with self.raw.open() as stream:
                        self._fields = parse_header_block(
                            stream, self.limits.header_count, self.limits.header_length)
        return self._fields

    @property
    def authors(self) -> Authors:
        """The From fields read once, by one parser (:func:`gateway.mail.author_domains`):
        the mailboxes, every author domain DMARC evaluates, and why the
        field is ambiguous if it is. DMARC, the DKIM order, the rules, the
        blocklists, the classifier and the header checks all use this."""
        if self._authors is None:
            # No lock: two threads reading at once compute the same value.
            self._authors = author_domains(self.headers("From"),
                                           self.limits.address_comment_depth)
        return self._authors

    def header(self, name: str) -> str | None:
        """First value of a header field, as a str (undecoded RFC 2047), or None."""
        wanted = name.lower()
        return next((f.value for f in self.fields.fields if f.name.lower() == wanted), None)

    def headers(self, name: str) -> list[str]:
        """Every value of a header field, in order."""
        wanted = name.lower()
        return [f.value for f in self.fields.fields if f.name.lower() == wanted]

    def parse_problems(self) -> list[ParseProblem]:
        """The limits this message went past (parses it if not done yet)."""
        self.email  # noqa: B018 - the parse fills self._excess
        assert self._excess is not None
        excess, limits, block = self._excess, self.limits, self.fields
        problems: list[ParseProblem] = []
        if excess.unopened:
            problems.append(ParseProblem(
                "MIME_TOO_DEEP", f"{excess.unopened} part(s) nested deeper than "
                f"{limits.mime_depth} levels not opened"))
        if excess.dropped_parts:
            problems.append(ParseProblem(
                "MIME_TOO_MANY_PARTS", f"{excess.dropped_parts} part(s) beyond the first "
                f"{limits.mime_parts} not looked at"))
        dropped = max(excess.dropped_fields, block.too_many)
        if dropped:
            problems.append(ParseProblem(
                "HEADERS_TOO_MANY", f"{dropped} header field(s) beyond {limits.header_count} "
                "per header block ignored"))
        long_fields = dict(block.too_long)
        for name, length in excess.long_fields:
            long_fields.setdefault(name, length)
        if long_fields:
            shown = ", ".join(f"{name} ({length} bytes)"
                              for name, length in list(long_fields.items())[:5])
            problems.append(ParseProblem(
                "HEADER_TOO_LONG", f"cut to {limits.header_length} bytes: {shown}"))
        if excess.many_parameters:
            names = ", ".join(dict.fromkeys(excess.many_parameters))
            problems.append(ParseProblem(
                "MIME_TOO_MANY_PARAMETERS", f"{names}: cut after {limits.mime_parameters} "
                "parameters"))
        return problems

    def release(self) -> None:
        self.raw.release()


def _unlink_quietly(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)

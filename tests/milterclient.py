"""The MTA's side of the milter protocol, small enough to read in one go.

For tests and benchmarks that talk to ``gateway run`` directly, without a
Postfix in between: soak runs of 100,000 messages, and protocol abuse
(aborts, dropped connections, oversized packets) that Postfix would never
send. Protocol version 6, no "no reply" steps negotiated, so every command
is answered and the client always knows where it stands.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass, field

SMFI_VERSION = 6
ALL_ACTIONS = 0x1FF  # add/change/delete headers, quarantine, reply codes, ...
FINAL = {b"a": "accept", b"r": "reject", b"t": "tempfail", b"d": "discard",
         b"y": "reply"}


@dataclass
class Outcome:
    action: str  # accept, reject, tempfail, discard, reply (a custom SMTP reply)
    reply: str = ""
    added_headers: list[tuple[str, str]] = field(default_factory=list)
    changed_headers: list[tuple[str, int, str]] = field(default_factory=list)
    quarantined: str | None = None


class MilterError(RuntimeError):
    pass


class MilterClient:
    def __init__(self, address: str, timeout: float = 60.0):
        """``address``: a unix socket path, or host:port."""
        if address.startswith("/"):
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(timeout)
            self.sock.connect(address)
        else:
            host, _, port = address.rpartition(":")
            self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        self._negotiate()

    # -- wire --------------------------------------------------------------------

    def send(self, command: bytes, data: bytes = b"") -> None:
        self.sock.sendall(struct.pack("!I", len(data) + 1) + command + data)

    def receive(self) -> tuple[bytes, bytes]:
        header = self._read(4)
        (length,) = struct.unpack("!I", header)
        packet = self._read(length)
        return packet[:1], packet[1:]

    def _read(self, count: int) -> bytes:
        chunks, missing = [], count
        while missing:
            chunk = self.sock.recv(missing)
            if not chunk:
                raise MilterError("the milter closed the connection")
            chunks.append(chunk)
            missing -= len(chunk)
        return b"".join(chunks)

    def _negotiate(self) -> None:
        self.send(b"O", struct.pack("!III", SMFI_VERSION, ALL_ACTIONS, 0))
        command, _ = self.receive()
        if command != b"O":
            raise MilterError(f"unexpected answer to option negotiation: {command!r}")

    def _step(self, command: bytes, data: bytes = b"") -> bytes:
        self.send(command, data)
        answer, payload = self.receive()
        if answer != b"c":
            return answer + payload
        return b""

    # -- one SMTP session ----------------------------------------------------------

    def macros(self, stage: bytes, values: dict[str, str]) -> None:
        data = b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in values.items())
        self.send(b"D", stage + data)

    def connect(self, hostname: str = "client.example", ip: str = "198.51.100.7") -> bytes:
        family = b"6" if ":" in ip else b"4"
        return self._step(b"C", hostname.encode() + b"\0" + family + struct.pack("!H", 25)
                          + ip.encode() + b"\0")

    def helo(self, name: str = "client.example") -> bytes:
        return self._step(b"H", name.encode() + b"\0")

    def message(self, mail_from: str, rcpt_to: list[str], raw: bytes,
                queue_id: str = "") -> Outcome:
        """One whole transaction: MAIL, RCPT, headers, body, end of message."""
        if queue_id:
            self.macros(b"M", {"i": queue_id})
        for command, data in [(b"M", f"<{mail_from}>".encode() + b"\0")] + [
                (b"R", f"<{r}>".encode() + b"\0") for r in rcpt_to]:
            refused = self._step(command, data)
            if refused:
                return Outcome(_final(refused[:1]), refused[1:].decode("latin-1"))
        head, _, body = raw.replace(b"\r\n", b"\n").partition(b"\n\n")
        for name, value in _fields(head):
            refused = self._step(b"L", name + b"\0" + value + b"\0")
            if refused:
                return Outcome(_final(refused[:1]))
        refused = self._step(b"N")
        if refused:
            return Outcome(_final(refused[:1]))
        body = body.replace(b"\n", b"\r\n")
        for start in range(0, len(body), 65535):
            refused = self._step(b"B", body[start:start + 65535])
            if refused:
                return Outcome(_final(refused[:1]))
        self.send(b"E")
        return self._end_of_message()

    def _end_of_message(self) -> Outcome:
        outcome = Outcome("accept")
        while True:
            command, data = self.receive()
            if command == b"h":
                name, value = data.rstrip(b"\0").split(b"\0", 1)
                outcome.added_headers.append((name.decode(), value.decode("latin-1")))
            elif command == b"i":
                name, value = data[4:].rstrip(b"\0").split(b"\0", 1)
                outcome.added_headers.append((name.decode(), value.decode("latin-1")))
            elif command == b"m":
                (index,) = struct.unpack("!I", data[:4])
                name, value = data[4:].rstrip(b"\0").split(b"\0", 1)
                outcome.changed_headers.append((name.decode(), index, value.decode("latin-1")))
            elif command == b"q":
                outcome.quarantined = data.rstrip(b"\0").decode("latin-1")
            elif command == b"y":
                outcome.reply = data.rstrip(b"\0").decode("latin-1")
                outcome.action = "reply"
                return outcome
            elif command in FINAL:
                outcome.action = FINAL[command]
                return outcome
            elif command == b"p":  # progress
                continue
            else:
                raise MilterError(f"unexpected answer at end of message: {command!r}")

    def abort(self) -> None:
        self.send(b"A")

    def quit(self) -> None:
        try:
            self.send(b"Q")
        finally:
            self.sock.close()

    def drop(self) -> None:
        """Hang up without a word, as a crashed MTA process would."""
        self.sock.close()


def _final(command: bytes) -> str:
    return FINAL.get(command, command.decode("latin-1"))


def _fields(head: bytes) -> list[tuple[bytes, bytes]]:
    fields: list[tuple[bytes, bytes]] = []
    for line in head.split(b"\n"):
        if line[:1] in (b" ", b"\t") and fields:
            name, value = fields[-1]
            fields[-1] = (name, value + b"\r\n" + line)
        elif b":" in line:
            name, _, value = line.partition(b":")
            fields.append((name, value[1:] if value.startswith(b" ") else value))
    return fields

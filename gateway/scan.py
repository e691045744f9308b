"""The scan listener for MTAs without a milter interface (Exim, and anything
that speaks to SpamAssassin's spamd or rspamd), on ``[scan] listen`` beside
the milter. The wire format is in :mod:`gateway.scanproto`.

Each request runs the gateway's full pipeline and policy; the answer carries
the verdict and the MTA applies it (deploy/exim/gateway-acl.conf: reject,
defer, freeze, add the headers). Nothing is quarantined here: holding mail
is the MTA's business on this path.

Hostile clients are expected, and none can take the service from the MTA:

- only addresses in ``[scan] allow`` are served (checked on connect, before
  a byte is read), and with ``[scan] secret`` only requests whose head
  carries it (checked before the message is read);
- a client has ``[scan] timeout`` seconds for its whole request, however it
  trickles it (a deadline, not a timeout per read), and again for reading
  the answer; reading is asynchronous, so a slow client costs a socket and
  at most 64 KB of head, not a thread;
- a request holds one of ``[scan] max_clients`` slots from the end of its
  head until it is answered, and one address at most ``[scan]
  max_per_client`` of them; others wait for a slot until their deadline;
- the message streams into a spool that moves to a file past ``[pipeline]
  spool_threshold`` and keeps at most ``[size] max_bytes`` (the rest is read
  and dropped, and the verdict sees the size the client declared:
  SIZE_EXCEEDED);
- at most ``[scan] max_connections`` connections are open at once;
- every refusal is logged with the client's address (one line per address
  and reason a minute, with a count of the ones in between).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import logging
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal

from gateway.config import Config
from gateway.message import Envelope, RawContent, RawSpool
from gateway.scanproto import (
    EX_NOPERM,
    EX_PROTOCOL,
    EX_TEMPFAIL,
    EX_UNAVAILABLE,
    MAX_HEAD_BYTES,
    Head,
    Protocol,
    ProtocolError,
    answer,
    envelope_of,
    error_answer,
    pong,
    read_header_line,
    read_request_line,
)
from gateway.verdict import Verdict

log = logging.getLogger("gateway.scan")

# Decides one message: (envelope, raw) -> Verdict.
Scanner = Callable[[Envelope, RawContent], Verdict]
Clock = Callable[[], float]
Phase = Literal["head", "slot", "body", "scan", "answer"]

CHUNK = 64 * 1024
# After a refusal, what the client is still sending is read and dropped for a
# moment before closing: closing on unread bytes resets the connection, and
# the client could lose the answer. Bounded: a moment, 64 KB, 64 clients.
LINGER_SECONDS, LINGER_BYTES, LINGER_CLIENTS = 1.0, 64 * 1024, 64
LOG_INTERVAL = 60.0  # seconds between two log lines for one address and reason


@dataclass(eq=False)
class _Client:
    address: str
    task: asyncio.Task
    deadline: float
    phase: Phase = "head"
    protocol: Protocol = "spamc"
    expired: bool = False
    holds_slot: bool = False
    refused: bool = False


class Slots:
    """Requests being read or scanned: at most ``total``, and at most
    ``per_client`` from one address. Used from the event loop's thread only."""

    def __init__(self, total: int, per_client: int):
        self.total = total
        self.per_client = per_client
        self.held: Counter[str] = Counter()
        self._waiters: list[asyncio.Future[None]] = []

    def free_for(self, address: str) -> bool:
        return sum(self.held.values()) < self.total and self.held[address] < self.per_client

    async def acquire(self, address: str) -> None:
        while not self.free_for(address):
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                self._waiters.remove(waiter)
        self.held[address] += 1

    def release(self, address: str) -> None:
        self.held[address] -= 1
        if self.held[address] <= 0:
            del self.held[address]
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)


class RefusalLog:
    """One warning per client address and reason a minute, with how many
    were refused in between: a flood of refusals cannot flood the log."""

    def __init__(self, clock: Clock, interval: float = LOG_INTERVAL):
        self.clock = clock
        self.interval = interval
        self._last: dict[tuple[str, str], tuple[float, int]] = {}

    def refused(self, address: str, reason: str) -> None:
        now = self.clock()
        key = (address, reason)
        last = self._last.get(key)
        if last is not None and now - last[0] < self.interval:
            self._last[key] = (last[0], last[1] + 1)
            return
        more = f" ({last[1]} more since the last line)" if last and last[1] else ""
        log.warning("scan: refused a request from %s: %s%s", address, reason, more)
        if len(self._last) > 10_000:  # many addresses: forget the old ones
            self._last = {k: v for k, v in self._last.items() if now - v[0] < self.interval}
        self._last[key] = (now, 0)


class ScanServer:
    """The listener; ``scanner`` is asked for a verdict per message. ``clock``
    is what the deadlines are measured on (tests pass their own)."""

    def __init__(self, config: Config, scanner: Scanner, clock: Clock = time.monotonic,
                 tick: float = 0.2):
        settings = config.scan
        self.settings = settings
        self.max_body = config.size.max_bytes
        self.spool_threshold = config.pipeline.spool_threshold
        self.spool_dir = config.pipeline.spool_dir or None
        self.authserv_id = config.auth.server_id()
        self.scanner = scanner
        self.clock = clock
        self.tick = tick
        self.allowed = [ipaddress.ip_network(n, strict=False) for n in settings.allow]
        self.slots = Slots(settings.max_clients, settings.max_per_client)
        self.refusals = RefusalLog(clock)
        self._clients: set[_Client] = set()  # being served
        self._tasks: set[asyncio.Task] = set()  # every connection, refused ones included
        self._lingering = 0
        host, _, port = settings.listen.rpartition(":")
        host = host.strip("[]") or "127.0.0.1"
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._socket = socket.create_server((host, int(port)), family=family, backlog=128)
        self.address = self._socket.getsockname()
        self._pool = ThreadPoolExecutor(settings.max_clients, thread_name_prefix="scan")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._ready = threading.Event()
        self._failed: BaseException | None = None
        self._thread: threading.Thread | None = None

    # -- running ------------------------------------------------------------------

    def start(self) -> ScanServer:
        self._thread = threading.Thread(target=self._run, name="scan", daemon=True)
        self._thread.start()
        self._ready.wait(30)
        if self._failed is not None:
            raise self._failed
        log.info("scan protocol (spamd SPAMC, rspamd RSPAMC and /checkv2) on %s",
                 self.settings.listen)
        return self

    def stop(self) -> None:
        thread, self._thread = self._thread, None
        if thread is not None and self._loop is not None and self._stopping is not None:
            with contextlib.suppress(RuntimeError):  # the loop ended on its own
                self._loop.call_soon_threadsafe(self._stopping.set)
            thread.join(30)
        self._socket.close()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def open_connections(self) -> int:
        return len(self._clients)

    def _run(self) -> None:
        loop = self._loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(self._main())
        except BaseException as exc:
            self._failed = exc
            log.exception("scan: the listener stopped")
        finally:
            self._ready.set()
            loop.close()

    async def _main(self) -> None:
        self._stopping = asyncio.Event()
        server = await asyncio.start_server(self._connection, sock=self._socket,
                                            limit=MAX_HEAD_BYTES)
        reaper = asyncio.create_task(self._reap())
        self._ready.set()
        try:
            await self._stopping.wait()
        finally:
            server.close()
            reaper.cancel()
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _reap(self) -> None:
        """Ends requests past their deadline, measured on ``clock``."""
        while True:
            await asyncio.sleep(self.tick)
            now = self.clock()
            for client in list(self._clients):
                if client.phase != "scan" and now >= client.deadline and not client.expired:
                    client.expired = True
                    client.task.cancel()

    # -- one client -----------------------------------------------------------------

    async def _connection(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        address = str(peer[0]) if peer else "unknown"
        task = asyncio.current_task()
        assert task is not None
        client = _Client(address, task, self.clock() + self.settings.timeout)
        self._tasks.add(task)
        try:
            if not self._allowed(address):
                self._refuse(writer, client, EX_NOPERM, "not allowed from this address",
                             "not in [scan] allow")
            elif len(self._clients) >= self.settings.max_connections:
                self._refuse(writer, client, EX_TEMPFAIL, "too many connections, try again",
                             f"already {len(self._clients)} connections ([scan] "
                             "max_connections)")
            else:
                self._clients.add(client)
                await self._serve(client, reader, writer)
        except asyncio.CancelledError:
            if not client.expired:
                raise  # the server is stopping
            task.uncancel()
            self._expired(writer, client)
        except OSError:
            pass  # the client went away
        except Exception:
            log.exception("scan: serving %s failed", address)
        finally:
            self._clients.discard(client)
            if client.holds_slot:
                self.slots.release(address)
            client.holds_slot = False
            try:
                await self._close(client, reader, writer)
            finally:
                self._tasks.discard(task)

    async def _close(self, client: _Client, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> None:
        unread = client.refused and (not client.expired or client.phase == "slot")
        if unread and self._lingering < LINGER_CLIENTS:
            self._lingering += 1
            try:
                writer.write_eof()
                with contextlib.suppress(OSError, asyncio.TimeoutError):
                    await asyncio.wait_for(_discard(reader, LINGER_BYTES), LINGER_SECONDS)
            except OSError:
                pass
            finally:
                self._lingering -= 1
        writer.close()

    async def _serve(self, client: _Client, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> None:
        try:
            head = await self._read_head(client, reader)
        except ProtocolError as exc:
            self._refuse(writer, client, exc.code, str(exc), str(exc))
            return
        if head is None:
            return  # connected and went away
        secret = self.settings.secret
        if secret and not hmac.compare_digest((head.header("Secret") or "").encode(),
                                              secret.encode()):
            self._refuse(writer, client, EX_NOPERM, "wrong or missing secret",
                         "wrong or missing [scan] secret")
            return
        if head.command == "TELL":
            self._refuse(writer, client, EX_UNAVAILABLE, "learning is done with gateway learn",
                         "TELL (learning is done with gateway learn)")
            return
        if not head.has_body:
            if head.command == "PING":
                writer.write(pong(head.protocol))
            await self._drain(client, writer)
            return
        try:
            length = head.content_length()
        except ProtocolError as exc:
            self._refuse(writer, client, exc.code, str(exc), str(exc))
            return
        client.phase = "slot"
        await self.slots.acquire(client.address)
        client.holds_slot = True
        client.phase = "body"
        raw = await self._read_body(reader, length)
        if raw is None:
            return  # cut short: the client went away
        try:
            client.phase = "scan"
            loop = asyncio.get_running_loop()
            data = await loop.run_in_executor(self._pool, self._scan, head, raw)
        finally:
            raw.release()
        writer.write(data)
        await self._drain(client, writer)

    async def _drain(self, client: _Client, writer: asyncio.StreamWriter) -> None:
        client.phase = "answer"
        client.deadline = self.clock() + self.settings.timeout
        await writer.drain()
        with contextlib.suppress(OSError):
            writer.write_eof()

    async def _read_head(self, client: _Client, reader: asyncio.StreamReader) -> Head | None:
        first = await self._line(reader, first=True)
        if first is None:
            return None
        protocol, command = read_request_line(first)
        client.protocol = protocol
        headers: dict[str, list[str]] = {}
        size = len(first)
        while True:
            line = await self._line(reader)
            assert line is not None
            size += len(line)
            if size > MAX_HEAD_BYTES:
                raise ProtocolError(EX_PROTOCOL, "request headers too long")
            if line in (b"\r\n", b"\n"):
                return Head(protocol, command, headers)
            name, value = read_header_line(line)
            headers.setdefault(name, []).append(value)

    @staticmethod
    async def _line(reader: asyncio.StreamReader, first: bool = False) -> bytes | None:
        try:
            return await reader.readuntil(b"\n")
        except asyncio.LimitOverrunError:
            raise ProtocolError(EX_PROTOCOL, "request line too long" if first
                                else "request headers too long") from None
        except asyncio.IncompleteReadError as exc:
            if first and not exc.partial:
                return None
            raise ProtocolError(EX_PROTOCOL, "request cut short in its head") from None

    async def _read_body(self, reader: asyncio.StreamReader, length: int) -> RawContent | None:
        """The message, kept up to [size] max_bytes (in a file past the spool
        threshold); the rest is read and dropped. None if it is cut short."""
        spool = RawSpool(self.spool_threshold, self.spool_dir)
        remaining = length
        try:
            while remaining:
                chunk = await reader.read(min(CHUNK, remaining))
                if not chunk:
                    spool.discard()
                    return None
                room = self.max_body - spool.size
                if room > 0:
                    spool.write(chunk[:room])
                remaining -= len(chunk)
        except BaseException:
            spool.discard()
            raise
        raw = spool.freeze()
        raw.size = length  # what the checks judge (SIZE_EXCEEDED), kept or not
        return raw

    def _scan(self, head: Head, raw: RawContent) -> bytes:
        envelope = envelope_of(head, raw)
        try:
            verdict = self.scanner(envelope, raw)
        except Exception as exc:  # a worker died, the pool is down: the MTA defers
            log.error("scan: message %s: %s: %s", envelope.queue_id or "-",
                      type(exc).__name__, exc)
            return error_answer(head.protocol, EX_TEMPFAIL, "temporary failure, try again")
        return answer(head, verdict, raw, self.authserv_id)

    # -- refusals -------------------------------------------------------------------

    def _allowed(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
            ip = ip.ipv4_mapped
        return any(ip in network for network in self.allowed)

    def _refuse(self, writer: asyncio.StreamWriter, client: _Client, code: int, answer_text: str,
                why: str) -> None:
        self.refusals.refused(client.address, why)
        client.refused = True
        with contextlib.suppress(OSError):
            writer.write(error_answer(client.protocol, code, answer_text))

    def _expired(self, writer: asyncio.StreamWriter, client: _Client) -> None:
        timeout = f"{self.settings.timeout:g} s ([scan] timeout)"
        if client.phase == "slot":
            self._refuse(writer, client, EX_TEMPFAIL, "too many clients, try again",
                         f"no free slot within {timeout}")
        elif client.phase == "answer":
            self.refusals.refused(client.address, f"did not read its answer within {timeout}")
            writer.transport.abort()  # closing would wait for it to read
        else:
            self.refusals.refused(client.address, f"no complete request within {timeout}")
            writer.transport.abort()


async def _discard(reader: asyncio.StreamReader, limit: int) -> None:
    while limit > 0 and (chunk := await reader.read(min(CHUNK, limit))):
        limit -= len(chunk)

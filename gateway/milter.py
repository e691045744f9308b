"""pymilter adapter: Postfix's milter protocol in, a verdict applied out.

This module knows the milter protocol and nothing about scoring: it collects
the envelope, headers and body into one :class:`~gateway.message.Message`,
hands it to an evaluator at end of message and applies the verdict.

Every callback is guarded. pymilter sends no reply at all when a callback
raises, and Postfix then waits for its milter timeout (300 s by default)
before giving up; a guarded callback logs the traceback and answers with
the configured failure action instead. Callbacks Postfix does not wait on
(``@noreply``) remember the failure and the end-of-message callback
answers for them.
"""

from __future__ import annotations

import functools
import gc
import grp
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import Milter

from gateway import authresults
from gateway.config import Config
from gateway.decider import Decision
from gateway.door import Door, Visit
from gateway.headers import OWN_HEADERS, authentication_results_header, verdict_headers
from gateway.message import Envelope, RawSpool
from gateway.replies import FILTER_FAILED, HOLD_IMPOSSIBLE, SmtpReply, smtp_safe
from gateway.service import Generation, Service

log = logging.getLogger("gateway.milter")

# Postfix macros kept on the envelope (sent by default at these stages).
CONNECT_MACROS = ("{daemon_name}", "{daemon_port}")
HELO_MACROS = ("{tls_version}", "{cipher}", "{cipher_bits}", "{cert_subject}", "{cert_issuer}")
MAIL_MACROS = ("{auth_type}", "{auth_authen}", "{auth_author}")

_OWN_HEADERS_LOWER = {h.lower() for h in OWN_HEADERS}
_AUTH_RESULTS = authresults.HEADER.lower()
LISTEN_BACKLOG = 1024
HEAD_CHUNK = 65536  # header bytes gathered before they go to the spool, at most


@dataclass
class Runtime:
    """What every connection shares: the service, whose current generation
    (configuration, evaluator, decider) a message takes at MAIL FROM and
    keeps until it is answered, whatever reloads happen meanwhile."""

    service: Service
    sessions: Callable[[int], None] | None = None  # +1 / -1 per SMTP session, for metrics
    listening: Callable[[], None] | None = None  # called once the socket is open

    @property
    def config(self) -> Config:
        return self.service.current.config


def guarded(callback: Callable[..., int]) -> Callable[..., int]:
    """Never let an exception escape a milter callback."""

    @functools.wraps(callback)
    def wrapper(self: GatewayMilter, *args: Any) -> int:
        try:
            return callback(self, *args)
        except Exception as exc:
            # One line for the log reader; the traceback for whoever debugs.
            log.error("milter %s callback failed on message %s: %s: %s", callback.__name__,
                      self.queue_id or self.last_queue_id or "-", type(exc).__name__, exc)
            log.debug("traceback of the failed %s callback", callback.__name__, exc_info=True)
            self.failure = f"{callback.__name__}: {type(exc).__name__}: {exc}"
            if callback.__name__ in _NOREPLY_CALLBACKS:
                return Milter.CONTINUE  # answered at end of message
            return self.failure_response()

    return wrapper


_NOREPLY_CALLBACKS = {"connect", "hello", "envfrom", "envrcpt", "header", "eoh", "body"}


@Milter.header_leading_space
class GatewayMilter(Milter.Base):
    def __init__(self, runtime: Runtime):
        self.runtime = runtime
        self.generation: Generation | None = None
        self.config = runtime.config
        self.authserv_id = self.config.auth.server_id()
        self.last_queue_id: str | None = None
        self.client_ip: str | None = None
        self.client_name: str | None = None
        self.helo: str | None = None
        self.connect_macros: dict[str, str] = {}
        self.visit = Visit()  # what greylisting and rate limits found (gateway.door)
        self._reset_message()

    def _take_generation(self) -> None:
        """The configuration this message is judged under, from MAIL FROM on."""
        self._drop_generation()
        self.generation = self.runtime.service.current.acquire()
        self.config = self.generation.config
        self.authserv_id = self.config.auth.server_id()

    def _drop_generation(self) -> None:
        generation, self.generation = self.generation, None
        if generation is not None:
            generation.release()

    def _reset_message(self) -> None:
        spool = getattr(self, "spool", None)
        if spool is not None:
            spool.discard()
        self._drop_generation()
        self.mail_from = ""
        self.rcpt_to: list[str] = []
        self.macros: dict[str, str] = dict(self.connect_macros)
        self.spool = self._new_spool()
        self.head: list[bytes] = []  # header fields not yet in the spool
        self.head_size = 0
        # Incoming headers to delete before ours are added: (name, occurrence).
        self.header_counts: dict[str, int] = {}
        self.removals: list[tuple[str, int]] = []
        self.queue_id: str | None = None
        self.failure: str | None = None

    def _new_spool(self) -> RawSpool:
        settings = self.config.pipeline
        return RawSpool(settings.spool_threshold, settings.spool_dir or None)

    def _collect(self, names: tuple[str, ...], into: dict[str, str]) -> None:
        for name in names:
            value = self.getsymval(name)
            if value:
                into[name.strip("{}")] = value

    # -- callbacks Postfix does not wait on -----------------------------------

    @Milter.noreply
    @guarded
    def connect(self, hostname: str, family: int, hostaddr: Any) -> int:
        if self.runtime.sessions is not None:
            self.runtime.sessions(+1)
            self._counted = True
        if isinstance(hostaddr, tuple) and hostaddr:  # (address, port) for inet families
            self.client_ip = str(hostaddr[0])
        elif isinstance(hostaddr, str) and hostaddr:
            self.client_ip = hostaddr
        self.client_name = hostname
        self._collect(CONNECT_MACROS, self.connect_macros)
        return Milter.CONTINUE

    @Milter.noreply
    @guarded
    def hello(self, hostname: str) -> int:
        self.helo = hostname
        self._collect(HELO_MACROS, self.connect_macros)
        return Milter.CONTINUE

    @Milter.noreply
    @guarded
    def envfrom(self, mail_from: str, *params: str) -> int:
        self._reset_message()
        self._take_generation()
        self.spool = self._new_spool()  # under this message's configuration
        self.mail_from = mail_from.strip().strip("<>")
        self._collect(MAIL_MACROS, self.macros)
        self.visit.new_message()
        return Milter.CONTINUE

    @Milter.noreply
    @guarded
    def envrcpt(self, rcpt: str, *params: str) -> int:
        recipient = rcpt.strip().strip("<>")
        door = self._door()
        # Only when negotiated: an MTA told not to wait for RCPT takes no answer.
        if door is not None and not self._protocol & Milter.P_NR_RCPT:
            envelope = Envelope(mail_from=self.mail_from, client_ip=self.client_ip,
                                client_name=self.client_name, helo=self.helo,
                                macros=dict(self.macros))
            reply = door.rcpt(self.visit, envelope, recipient)
            if reply is not None:  # greylisted or over a rate limit: this recipient only
                self.reply(reply)
                return Milter.TEMPFAIL
        self.rcpt_to.append(recipient)
        return Milter.CONTINUE

    def _door(self) -> Door | None:
        generation = self.generation or self.runtime.service.current
        door = generation.decider.door
        return door if door is not None and door.answers_rcpt else None

    @Milter.noreply
    @Milter.decode("bytes")
    @guarded
    def header(self, name: str, value: bytes) -> int:
        # With header_leading_space the value arrives exactly as sent (leading
        # space and folding intact): DKIM's "simple" canonicalization needs it.
        # An MTA that cannot do that strips one space; put it back.
        separator = b":" if self._protocol & Milter.P_HDR_LEADSPC else b": "
        if b"\n" in value:  # folded: every line ends in CRLF
            value = value.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        line = b"".join((name.encode("ascii", "surrogateescape"), separator, value, b"\r\n"))
        # Gathered and written to the spool at the end of the header block
        # (one write, not one a field), or once they pass HEAD_CHUNK bytes.
        self.head.append(line)
        self.head_size += len(line)
        if self.head_size > HEAD_CHUNK:
            self._write_head()
        lower = name.lower()
        if lower in _OWN_HEADERS_LOWER or lower == _AUTH_RESULTS:
            occurrence = self.header_counts[lower] = self.header_counts.get(lower, 0) + 1
            # Ours, or an Authentication-Results forged under our authserv-id.
            if lower != _AUTH_RESULTS or authresults.claims(
                    value.decode("utf-8", "replace"), self.authserv_id):
                self.removals.append((name, occurrence))
        return Milter.CONTINUE

    def _write_head(self) -> None:
        if self.head:
            self.spool.write(b"".join(self.head))
            self.head.clear()
            self.head_size = 0

    @Milter.noreply
    @guarded
    def eoh(self) -> int:
        self.head.append(b"\r\n")
        self._write_head()
        return Milter.CONTINUE

    @Milter.noreply
    @guarded
    def body(self, chunk: bytes) -> int:
        self._write_head()  # none left after eoh; an MTA that sends no eoh
        self.spool.write(chunk)
        return Milter.CONTINUE

    # -- callbacks that answer -------------------------------------------------

    @guarded
    def eom(self) -> int:
        self.queue_id = self.last_queue_id = self.getsymval("{i}") or None
        if self.failure is not None:
            return self.failure_response()
        envelope = Envelope(
            mail_from=self.mail_from,
            rcpt_to=tuple(self.rcpt_to),
            client_ip=self.client_ip,
            client_name=self.client_name,
            helo=self.helo,
            queue_id=self.queue_id,
            macros=dict(self.macros),
            stage_symbols=tuple(self.visit.symbols),
        )
        self._write_head()
        raw = self.spool.freeze()
        if self.generation is None:  # end of message without MAIL FROM
            self._take_generation()
        assert self.generation is not None
        try:
            return self.apply(self.generation.decider.decide(envelope, raw))
        finally:
            raw.release()
            self._reset_message()

    def abort(self) -> int:
        try:
            self._reset_message()
        except Exception:
            log.exception("milter abort callback failed")
        return Milter.CONTINUE

    def close(self) -> int:
        try:
            self.spool.discard()
            self._drop_generation()
            if getattr(self, "_counted", False) and self.runtime.sessions is not None:
                self._counted = False
                self.runtime.sessions(-1)
        except Exception:
            log.exception("milter close callback failed")
        return Milter.CONTINUE

    # -- applying a verdict ----------------------------------------------------

    # -- negotiation ------------------------------------------------------------

    def negotiate(self, opts: list[int]) -> int:
        """Take what the MTA offers, and do without what it does not.

        Never a 4xx per message for a missing capability (pymilter raises
        DisabledAction from an action the MTA did not offer): without
        ADDHDRS no headers are added (the verdict still applies); without
        CHGHDRS forged copies of our headers cannot be removed (ours are
        added above them); without QUARANTINE, mail to hold in the MTA's
        hold queue (``[quarantine] url = ""``) is rejected instead, so the
        sender learns of it. Each gap is logged once per process.
        """
        answer = super().negotiate(opts)
        if answer == Milter.CONTINUE and self._door() is not None:
            # Greylisting and rate limits answer at RCPT: the MTA must wait.
            self._protocol &= ~Milter.P_NR_RCPT
            opts[1] = self._protocol
        missing = [name for name, flag in CAPABILITIES.items() if not self._actions & flag]
        if missing:
            _log_missing_once(missing)
        return answer

    def apply(self, decision: Decision) -> int:
        """Tell the MTA what was decided."""
        if decision.outcome == "hold" and not self._actions & Milter.QUARANTINE:
            decision = Decision(decision.verdict, "reject", HOLD_IMPOSSIBLE, decision.notes)
        if decision.outcome in ("reject", "tempfail"):
            assert decision.reply is not None
            self.reply(decision.reply)
            return Milter.REJECT if decision.outcome == "reject" else Milter.TEMPFAIL
        if decision.outcome == "discard":  # safely in the quarantine
            return Milter.DISCARD
        if self._actions & Milter.CHGHDRS:
            # Last occurrence first, so the earlier ones keep their numbers.
            for name, occurrence in sorted(self.removals, key=lambda r: (r[0].lower(), -r[1])):
                self.chgheader(name, occurrence, None)
        if self._actions & Milter.ADDHDRS:
            # With header_leading_space negotiated, values are sent verbatim.
            lead = " " if self._protocol & Milter.P_HDR_LEADSPC else ""
            ours = verdict_headers(decision.verdict)
            if self._actions & Milter.CHGHDRS:
                for name, value in ours:
                    self.addheader(name, lead + value)
            else:
                # Forged copies stay: ours go above them, where readers and
                # filters look first (an index needs ADDHDRS only).
                for name, value in reversed(ours):
                    self.addheader(name, lead + value, 0)
            auth = authentication_results_header(decision.verdict)
            if auth is not None:
                self.addheader(auth[0], lead + auth[1], 0)  # at the top (RFC 8601)
        subject = decision.verdict.tagged_subject  # add_header with [add_header] subject_tag
        if subject is not None and self._actions & Milter.CHGHDRS:
            lead = " " if self._protocol & Milter.P_HDR_LEADSPC else ""
            self.chgheader("Subject", 1, lead + subject)  # Postfix adds one if there is none
        if decision.outcome == "hold":
            self.quarantine(decision.verdict.reason)
        return Milter.ACCEPT

    def failure_response(self) -> int:
        if self.config.milter.on_error == "accept":
            log.error(
                "passing message %s through unfiltered after an error: %s",
                self.queue_id or "-",
                self.failure,
            )
            return Milter.ACCEPT
        self.reply(FILTER_FAILED)
        return Milter.TEMPFAIL

    def reply(self, reply: SmtpReply) -> None:
        self.setreply(reply.code, reply.status, smtp_safe(reply.text))


# What each negotiated action is used for (docs/install.md lists them too).
CAPABILITIES = {
    "ADDHDRS (add X-Spam-* and Authentication-Results)": Milter.ADDHDRS,
    "CHGHDRS (remove forged copies of those headers)": Milter.CHGHDRS,
    "QUARANTINE (hold mail in the MTA's queue when [quarantine] url is empty)":
        Milter.QUARANTINE,
}
_missing_logged: set[str] = set()
_missing_lock = threading.Lock()


def _log_missing_once(missing: list[str]) -> None:
    with _missing_lock:
        new = [name for name in missing if name not in _missing_logged]
        _missing_logged.update(new)
    if new:
        log.warning("the MTA does not offer %s: doing without (logged once)", "; ".join(new))


def serve(runtime: Runtime) -> None:
    """Run the milter in the foreground until SIGTERM (libmilter handles it)."""
    import milter  # the C extension under pymilter

    socket = runtime.config.milter.socket
    Milter.factory = lambda: GatewayMilter(runtime)
    milter.set_connect_callback(Milter.connect_callback)
    milter.set_helo_callback(lambda ctx, host: ctx.getpriv().hello(host))
    milter.set_envfrom_callback(lambda ctx, *b: ctx.getpriv().envfrom_bytes(*b))
    milter.set_envrcpt_callback(lambda ctx, *b: ctx.getpriv().envrcpt_bytes(*b))
    milter.set_header_callback(lambda ctx, f, v: ctx.getpriv().header_bytes(f, v))
    milter.set_eoh_callback(lambda ctx: ctx.getpriv().eoh())
    milter.set_body_callback(lambda ctx, chunk: ctx.getpriv().body(chunk))
    milter.set_eom_callback(lambda ctx: ctx.getpriv().eom())
    milter.set_abort_callback(lambda ctx: ctx.getpriv().abort())
    milter.set_close_callback(Milter.close_callback)
    if socket.startswith(("unix:", "local:")):
        os.makedirs(os.path.dirname(socket.split(":", 1)[1]), exist_ok=True)
    milter.setconn(socket)
    milter.settimeout(runtime.config.milter.timeout)
    # libmilter's own listen backlog is small; a burst of SMTP sessions would
    # find the socket refusing connections and Postfix would answer 4xx.
    milter.setbacklog(LISTEN_BACKLOG)
    milter.register(
        "gateway",
        data=lambda ctx: ctx.getpriv().data(),
        unknown=lambda ctx, cmd: ctx.getpriv().unknown(cmd),
        negotiate=Milter.negotiate_callback,
    )
    milter.opensocket(True)
    if socket.startswith(("unix:", "local:")):
        _set_socket_access(socket.split(":", 1)[1], runtime.config)
    log.info("gateway milter listening on %s", socket)
    if runtime.listening is not None:
        runtime.listening()
    collector = _collect_garbage_off_callback_threads()
    try:
        milter.main()
    finally:
        collector.set()


def _collect_garbage_off_callback_threads() -> threading.Event:
    """Run Python's cyclic garbage collector on a thread of its own.

    Left automatic, a collection can start on a pymilter callback thread and
    run finalizers (of sqlite3 or psycopg connections, say) that call
    PyGILState_Ensure, which crashes on those threads (see gateway.decider).

    What is loaded by now (modules, the configuration, rules, the checks'
    classes) lives as long as the process: frozen, a full collection no
    longer walks it (it was most of the collector's few percent of the
    milter's CPU).
    """
    gc.disable()
    gc.collect()
    gc.freeze()
    stop = threading.Event()

    def collect() -> None:
        rounds = 0
        while not stop.wait(0.5):
            rounds += 1
            gc.collect(2 if rounds % 60 == 0 else 0)

    threading.Thread(target=collect, name="gc", daemon=True).start()
    return stop


def _set_socket_access(path: str, config: Config) -> None:
    """Let Postfix (another user) connect: mode and group from config."""
    os.chmod(path, int(config.milter.socket_mode, 8))
    group = config.milter.socket_group
    if not group:
        return
    try:
        os.chown(path, -1, grp.getgrnam(group).gr_gid)
    except KeyError:
        log.warning("milter.socket_group: no group %r here; socket left in our own group", group)
    except PermissionError:
        log.warning("milter.socket_group: cannot give the socket to group %r (run as a member "
                    "of it, e.g. Group=%s in the systemd unit)", group, group)

"""The SMTP stages before content: greylisting and rate limits.

Neither is a pipeline check: each answers at RCPT (a 4xx for that
recipient), and greylisting also after DATA for mail in the policy's
``greylist`` score band. A :class:`Door` is built with each configuration
generation when ``[greylist] enabled`` or a ``[[ratelimit]]`` table is
there, and is None otherwise (the milter then tells the MTA it never
answers at RCPT: no round trip per recipient).

Whatever touches the database or DNS runs on the door's own threads: the
milter's callback threads must never enter a database driver (see
:mod:`gateway.decider`). A RCPT waits at most ``RCPT_TIMEOUT`` seconds for
the door's answer, then continues as if it had said nothing (fail open),
logged and counted.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from gateway import ratelimit
from gateway.config import Config
from gateway.db import first_line
from gateway.facts import DmarcFacts, DnsblFacts, IprevFacts, ListsFacts, SpfFacts
from gateway.greylist import (
    Clock,
    GreylistStore,
    Outcome,
    Triplet,
    client_key,
    client_network,
    dynamic_name,
    utc_now,
)
from gateway.logline import log_verdict
from gateway.message import Envelope, Message, RawContent
from gateway.ratelimit import PER_RECIPIENT, PUBLIC_WORDS, BucketStore, Limit, RateLimiter
from gateway.replies import SmtpReply
from gateway.ruleset import Ruleset, load_rules
from gateway.senders import Correspondents, KnownSenders, SenderHistory
from gateway.symbols import STAGE_SYMBOLS, Symbol
from gateway.verdict import Verdict

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from gateway.checks import Check
    from gateway.decider import Decision

log = logging.getLogger("gateway.door")

RCPT_TIMEOUT = 10.0
REOPEN_AFTER = 30.0  # seconds before a database that failed to open is tried again
ALLOW_SYMBOLS = ("ALLOWLIST_SENDER", "ALLOWLIST_IP")

# Every door of this process adds here; /metrics reads it (gateway.metrics):
# ("greylist", outcome) and ("door", timeout | error) -> count (rate limits
# count in gateway.ratelimit).
COUNTS: Counter[tuple[str, str]] = Counter()
_counts_lock = threading.Lock()


def count(kind: str, outcome: str, by: int = 1) -> None:
    with _counts_lock:
        COUNTS[(kind, outcome)] += by


def counts() -> dict[tuple[str, str], int]:
    with _counts_lock:
        return dict(COUNTS)


def greylisted_reply(reference: str) -> SmtpReply:
    return SmtpReply("451", "4.7.1", f"Greylisted: this server asks senders it does not know "
                     f"yet to try again in a few minutes (ref {reference})")


def ratelimit_reply(limit: Limit, reference: str) -> SmtpReply:
    return SmtpReply("451", "4.7.1", f"Too much mail {PUBLIC_WORDS[limit.key]} right now, "
                     f"please try again later (ref {reference})")


def stage_symbol(name: str, evidence: str) -> Symbol:
    return Symbol(name, 0.0, STAGE_SYMBOLS[name], evidence)


def new_reference() -> str:
    return secrets.token_hex(5)


@dataclass
class Visit:
    """What the door found about one SMTP session: the client's suspicion is
    looked up once per connection, SPF once per sender, rate limits of the
    message once per transaction."""

    suspicion: tuple[str | None] | None = None  # (reason or None,) once looked up
    spf: dict[str, str | None] = field(default_factory=dict)  # sender -> SPF-passing domain
    limited: bool = False  # the message's own limits were counted
    refusal: SmtpReply | None = None  # the message is over a tempfail limit
    symbols: list[Symbol] = field(default_factory=list)  # for the message's verdict

    def new_message(self) -> None:
        self.limited = False
        self.refusal = None
        self.symbols = []


class Door:
    """Greylisting and rate limits of one configuration generation."""

    def __init__(self, config: Config, clock: Clock = utc_now,
                 known: KnownSenders | None = None,
                 engine: Engine | None = None, ruleset: Ruleset | None = None):
        """``ruleset``: the generation's (gateway.service), which the checks
        asked at the door read; without one, the config's files read now."""
        self.config = config
        self.ruleset = load_rules(config.policy.rules) if ruleset is None else ruleset
        self.settings = config.greylist
        self.clock = clock
        self.limits = tuple(Limit.of(section) for section in config.ratelimit)
        self._engine = engine
        self._engine_failed_at = float("-inf")
        self._engine_lock = threading.Lock()
        self.history = SenderHistory(self.engine, clock)
        self.known: KnownSenders = known or self.history
        self.correspondents = _correspondents(config)
        self.ratelimiter = RateLimiter(self.limits, self._buckets) if self.limits else None
        self._pool = ThreadPoolExecutor(8, thread_name_prefix="door")
        self._checks: dict[str, Check | None] = {}
        self._checks_lock = threading.Lock()
        from gateway.checks.lists import SenderList

        self.exempt = SenderList(self.settings.exempt_senders)

    @property
    def greylisting(self) -> bool:
        return self.settings.enabled

    @property
    def answers_rcpt(self) -> bool:
        """Whether RCPT must wait for the door (else the MTA is told not to)."""
        return self.greylisting or bool(self.limits)

    # -- the database --------------------------------------------------------------------------

    def engine(self) -> Engine | None:
        """The store's database, opened on first use (None: not configured,
        or it failed to open less than REOPEN_AFTER seconds ago)."""
        if self._engine is not None:
            return self._engine
        url = self.config.quarantine.url
        if not url or time.monotonic() - self._engine_failed_at < REOPEN_AFTER:
            return None
        with self._engine_lock:
            if self._engine is None:
                from gateway.quarantine.store import QuarantineStore

                try:  # migrates, as the keeper would
                    self._engine = QuarantineStore(url, self.config.quarantine.node or None
                                                   ).engine
                except Exception as exc:
                    self._engine_failed_at = time.monotonic()
                    log.warning("door: the store's database does not open (%s): greylisting "
                                "lets mail through and rate limits count on this node alone "
                                "until it does", exc)
                    return None
            return self._engine

    def _greylist(self) -> GreylistStore | None:
        engine = self.engine()
        if engine is None:
            return None
        return GreylistStore(engine, self.settings, self.config.quarantine.node or _host(),
                             self.clock)

    def _buckets(self) -> BucketStore | None:
        engine = self.engine()
        return BucketStore(engine, self.clock) if engine is not None else None

    # -- RCPT ------------------------------------------------------------------------------------

    def rcpt(self, visit: Visit, envelope: Envelope, recipient: str) -> SmtpReply | None:
        """The answer for one RCPT (None: go on); waits for the door's
        threads at most RCPT_TIMEOUT seconds."""
        future = self._pool.submit(self._rcpt, visit, envelope, recipient)
        try:
            return future.result(timeout=RCPT_TIMEOUT)
        except FutureTimeout:
            count("door", "timeout")
            log.warning("door: no answer for RCPT %s within %gs: let through", recipient[:80],
                        RCPT_TIMEOUT)
        except Exception as exc:
            count("door", "error")
            log.error("door: RCPT %s: %s: %s; let through", recipient[:80],
                      type(exc).__name__, exc)
        return None

    def _rcpt(self, visit: Visit, envelope: Envelope, recipient: str) -> SmtpReply | None:
        started = time.perf_counter()
        envelope = replace(envelope, rcpt_to=(recipient,))
        if self.ratelimiter is not None:
            refusal = self._limits(visit, envelope, recipient)
            if refusal is not None:
                return refusal
        if not self.greylisting:
            return None
        return self._greylist_rcpt(visit, envelope, recipient, started)

    def _limits(self, visit: Visit, envelope: Envelope, recipient: str) -> SmtpReply | None:
        assert self.ratelimiter is not None
        if not visit.limited:
            visit.limited = True
            for limit in self.limits:
                if limit.key not in PER_RECIPIENT:
                    self._limit(visit, limit, envelope, recipient)
        if visit.refusal is not None:
            return visit.refusal
        for limit in self.limits:
            if limit.key in PER_RECIPIENT:
                reply = self._limit(visit, limit, envelope, recipient)
                if reply is not None:
                    return reply
        return None

    def _limit(self, visit: Visit, limit: Limit, envelope: Envelope,
               recipient: str) -> SmtpReply | None:
        assert self.ratelimiter is not None
        key = limit_key(limit, envelope, recipient, self.settings.ipv4_prefix,
                        self.settings.ipv6_prefix)
        if key is None or self.ratelimiter.admit(limit, key):
            return None
        ratelimit.count(limit.name, limit.action)
        evidence = f"{limit.describe()}; {limit.key} {key}"
        if limit.action == "tempfail":
            reference = new_reference()
            reply = ratelimit_reply(limit, reference)
            log.info("ratelimit: %s over limit %s (%s) from %s: %s (ref %s)", key, limit.name,
                     limit.rate_text, envelope.client_ip or "-", reply.code, reference)
            if limit.key not in PER_RECIPIENT:
                visit.refusal = reply
            return reply
        name = "RATELIMITED_QUARANTINE" if limit.action == "quarantine" else "RATELIMITED"
        if all(s.evidence != evidence for s in visit.symbols):
            visit.symbols.append(stage_symbol(name, evidence))
        return None

    def _greylist_rcpt(self, visit: Visit, envelope: Envelope, recipient: str,
                       started: float) -> SmtpReply | None:
        exempt = self._exempt(envelope)
        if exempt is not None:
            count("greylist", "exempt")
            return None
        if visit.suspicion is None:
            visit.suspicion = (self._suspicion(envelope),)
        reason = visit.suspicion[0]
        if reason is None:
            count("greylist", "clean")
            return None
        spf_domain = self._spf(visit, envelope)
        net = client_network(envelope.client_ip, self.settings.ipv4_prefix,
                             self.settings.ipv6_prefix)
        if self.known.known_at_door(envelope.sender_domain, net, spf_domain is not None) or (
                self.correspondents is not None and
                self.correspondents.known(envelope.mail_from, spf_domain, recipient)):
            count("greylist", "known_sender")
            return None
        key = client_key(envelope.client_ip, spf_domain, self.settings)
        outcome = self._check([Triplet.of(key, envelope.mail_from, recipient)],
                              envelope.client_ip, reason)
        if outcome is None or not outcome.greylisted:
            return None
        reference = new_reference()
        reply = greylisted_reply(reference)
        verdict = Verdict(action="tempfail", score=0.0, required=0.0,
                          symbols=(stage_symbol("GREYLISTED", f"{reason}; "
                                                f"{outcome.triplet.describe()}; retry in "
                                                f"{outcome.wait:.0f}s or later"),),
                          failed_checks=(), reason=f"greylisted at RCPT: {reason}",
                          reply=reply)
        log_verdict(envelope, verdict, 0, (time.perf_counter() - started) * 1000,
                    {"stage": "rcpt", "ref": reference})
        return reply

    def _check(self, triplets: list[Triplet], client_ip: str | None,
               reason: str) -> Outcome | None:
        """The first triplet still greylisted, else the last outcome; None
        when the database does not answer (let through: fail open)."""
        try:
            store = self._greylist()
            if store is None:
                raise LookupError("no database")
            outcomes = store.check(triplets, client_ip, reason)
        except Exception as exc:
            count("greylist", "failopen")
            _complain(f"greylisting lets mail through: the store's database does not answer "
                      f"({first_line(exc)})")
            return None
        for outcome in outcomes:
            count("greylist", outcome.result)
        return next((o for o in outcomes if o.greylisted), outcomes[-1] if outcomes else None)

    def _exempt(self, envelope: Envelope) -> str | None:
        """Why this envelope is never greylisted, or None."""
        if envelope.macros.get("auth_authen"):
            return "SMTP-authenticated"
        if entry := self.exempt.match(envelope.mail_from):
            return f"[greylist] exempt_senders: {entry}"
        report = self._run("lists", envelope)
        facts = ListsFacts.from_json(report.facts) if report is not None else None
        names = {s.name for s in report.symbols} if report is not None else set()
        if facts is not None:
            for items in facts.recipient_symbols.values():
                names.update(item.name for item in items)
        allowed = names.intersection(ALLOW_SYMBOLS)
        return f"allow-listed ({', '.join(sorted(allowed))})" if allowed else None

    def _suspicion(self, envelope: Envelope) -> str | None:
        """Why a client is suspicious enough to greylist, or None."""
        ip = (envelope.client_ip or "").strip("[]")
        iprev_report = self._run("iprev", envelope)
        iprev = IprevFacts.from_json(iprev_report.facts) if iprev_report is not None else None
        if iprev is not None and iprev.result in ("fail", "permerror"):
            return "no valid reverse DNS" + (f" ({iprev.name})" if iprev.name else "")
        dnsbl_report = self._run("dnsbl", envelope)
        dnsbl = DnsblFacts.from_json(dnsbl_report.facts) if dnsbl_report is not None else None
        if dnsbl is not None and dnsbl.listed:
            return "listed in " + ", ".join(sorted(dnsbl.listed))
        if iprev is not None and iprev.result == "pass" and iprev.name and \
                dynamic_name(iprev.name, ip):
            return f"dynamic-looking name {iprev.name}"
        return None

    def _spf(self, visit: Visit, envelope: Envelope) -> str | None:
        sender = envelope.mail_from
        if sender not in visit.spf:
            report = self._run("spf", envelope) if sender else None
            facts = SpfFacts.from_json(report.facts) if report is not None else None
            visit.spf[sender] = facts.domain if facts is not None and \
                facts.result == "pass" else None
        return visit.spf[sender]

    def _run(self, name: str, envelope: Envelope) -> Any:
        """A check's report on the envelope alone (no content), or None when
        it cannot be had."""
        from gateway.checks import CheckContext

        check = self._check_named(name)
        if check is None:
            return None
        try:
            report = check.run(Message(envelope, RawContent(data=b"\r\n"),
                                       self.config.limits), CheckContext())
        except Exception as exc:  # a lookup that fails is no finding
            log.warning("door: %s on %s: %s: %s", name, envelope.client_ip or "-",
                        type(exc).__name__, exc)
            return None
        from gateway.symbols import Report

        return report if isinstance(report, Report) else Report(symbols=tuple(report))

    def _check_named(self, name: str) -> Check | None:
        with self._checks_lock:
            if name not in self._checks:
                self._checks[name] = _build_check(name, self.config, self.ruleset)
            return self._checks[name]

    # -- after DATA ------------------------------------------------------------------------------

    def after_data(self, envelope: Envelope, verdict: Verdict) -> Verdict | None:
        """A verdict in the greylist band: the tempfail verdict when one of
        the message's triplets is still greylisted, else None (go on)."""
        if not (self.greylisting and verdict.greylist):
            return None
        names = {s.name for s in verdict.symbols}
        if envelope.macros.get("auth_authen") or names.intersection(ALLOW_SYMBOLS) or \
                self.exempt.match(envelope.mail_from):
            count("greylist", "exempt")
            return None
        if "KNOWN_CORRESPONDENT" in names:  # the identity check's memory
            count("greylist", "known_sender")
            return None
        dmarc = DmarcFacts.of(verdict.facts)
        if dmarc is not None and dmarc.dkim_aligned and dmarc.dkim_domain and \
                self.known.known_author(dmarc.dkim_domain):
            count("greylist", "known_sender")
            return None
        spf = SpfFacts.of(verdict.facts)
        spf_domain = spf.domain if spf is not None and spf.result == "pass" and \
            spf.identity == "mailfrom" else None
        key = client_key(envelope.client_ip, spf_domain, self.settings)
        reason = f"score {verdict.score:g} in the greylist band"
        triplets = [Triplet.of(key, envelope.mail_from, r) for r in envelope.rcpt_to] or \
            [Triplet.of(key, envelope.mail_from, "")]
        outcome = self._check(triplets, envelope.client_ip, reason)
        if outcome is None or not outcome.greylisted:
            return None
        reference = envelope.queue_id or new_reference()
        symbol = stage_symbol("GREYLISTED", f"{reason}; {outcome.triplet.describe()}; retry "
                              f"in {outcome.wait:.0f}s or later")
        return replace(verdict, action="tempfail", symbols=(*verdict.symbols, symbol),
                       reason=f"{verdict.reason}; greylisted", reply=greylisted_reply(reference))

    def observed(self, envelope: Envelope, decision: Decision) -> None:
        """Accepted mail with an aligned DKIM pass makes its sender known."""
        verdict = decision.verdict
        if decision.outcome != "accept" or verdict.action != "accept" or not envelope.queue_id:
            return
        dmarc = DmarcFacts.of(verdict.facts)
        if dmarc is None or not dmarc.dkim_aligned or not dmarc.dkim_domain:
            return
        self.history.record(dmarc.dkim_domain, client_network(
            envelope.client_ip, self.settings.ipv4_prefix, self.settings.ipv6_prefix))

    def close(self) -> None:
        if self.ratelimiter is not None:
            with contextlib.suppress(Exception):
                self.ratelimiter.close()
        self.history.close()
        if self.correspondents is not None:
            self.correspondents.close()
        self._pool.shutdown(wait=False, cancel_futures=True)
        for check in self._checks.values():
            if check is not None:
                with contextlib.suppress(Exception):
                    check.close()


def limit_key(limit: Limit, envelope: Envelope, recipient: str, ipv4_prefix: int = 24,
              ipv6_prefix: int = 64) -> str | None:
    """What one limit counts for this message (None: the limit does not
    apply, such as auth_identity for a client that did not log in)."""
    if limit.key == "client_ip":
        return (envelope.client_ip or "").strip("[]") or None
    if limit.key == "client_net":
        return client_network(envelope.client_ip, ipv4_prefix, ipv6_prefix)
    if limit.key == "sender_domain":
        return envelope.sender_domain or "<>"
    if limit.key == "auth_identity":
        return (envelope.macros.get("auth_authen") or "").lower() or None
    return recipient.strip().strip("<>").lower() or None


def build_door(config: Config, **kwargs: Any) -> Door | None:
    """The door of a configuration: greylisting, rate limits, and the sender
    history they and the fuzzy check read (None without any of them)."""
    history = "fuzzy" in config.pipeline.checks and bool(config.quarantine.url)
    if not config.greylist.enabled and not config.ratelimit and not history:
        return None
    return Door(config, **kwargs)


def _correspondents(config: Config) -> Correspondents | None:
    """The correspondent memory, when the identity check keeps one."""
    from gateway.correspondents import memory_url

    url = memory_url(config.quarantine.url)
    if url is None or "identity" not in config.pipeline.checks or not config.greylist.enabled:
        return None
    return Correspondents(url, config.identity)


def _build_check(name: str, config: Config, ruleset: Ruleset) -> Check | None:
    from gateway.checks.dnsbl import DnsblCheck
    from gateway.checks.iprev import IprevCheck
    from gateway.checks.lists import ListsCheck
    from gateway.checks.spf import SpfCheck

    if name == "iprev":
        return IprevCheck(config, ruleset)
    if name == "spf":
        return SpfCheck(config, ruleset)
    if name == "lists":
        return ListsCheck(config, ruleset)
    if name == "dnsbl":
        check = DnsblCheck(config, ruleset)
        check.lists = [b for b in check.lists if b.lookup == "client_ip"]
        return check if check.lists else None
    raise ValueError(f"no check {name!r} at the door")


def _host() -> str:
    import socket

    return socket.gethostname()


_complained = [float("-inf")]


def _complain(problem: str) -> None:
    now = time.monotonic()
    if now - _complained[0] >= 60.0:
        _complained[0] = now
        log.warning("door: %s", problem)

"""Release: re-inject a quarantined message to its original recipients.

The original bytes go over SMTP to a Postfix listener that does not call the
milter again (``[release] smtp``, see docs/quarantine.md for the master.cf
entry), with the original envelope sender and only original recipients —
all of them, or the ones chosen, never anyone else: nobody types an address
that is not already on the record, so a release cannot be turned into a way
to send mail anywhere.

The released copy carries ``X-Gateway-Released: by NAME at TIME (quarantine
ID)`` and the verdict's headers as the milter would have added them
(``Authentication-Results``, ``X-Spam-*``); copies of those headers that
arrived with the message are removed first, so a sender cannot pre-set them.
Postfix's queue id for the copy is recorded in the message's history, and
so is a release that failed.

A message carrying a virus symbol, or a symbol that the rules mark
``[release] SYMBOL = "admin"``, needs an admin and an explicit confirmation
(``--force`` on the command line).
"""

from __future__ import annotations

import contextlib
import re
import smtplib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from gateway import authresults
from gateway.checks import BUILTIN, resolve_check
from gateway.headers import OWN_HEADERS, verdict_headers
from gateway.quarantine import requests
from gateway.quarantine.store import QuarantineError, QuarantineStore, Record
from gateway.symbols import PIPELINE_SYMBOLS, Symbol
from gateway.verdict import Verdict

RELEASED_HEADER = "X-Gateway-Released"
# Symbols whose mail only an admin may release, whatever the rules say.
VIRUS_SYMBOLS = frozenset({"CLAMAV_VIRUS"})
# Where each MTA names the queue id in its reply to DATA: Postfix ("250 2.0.0
# Ok: queued as 4bXyZ1"), Sendmail ("250 2.0.0 5B7AB1l3012345 Message
# accepted for delivery"), Exim ("250 OK id=1qXyZa-000123-AB").
_QUEUE_IDS = (re.compile(rb"queued as ([0-9A-Za-z]+)"),
              re.compile(rb"([0-9A-Za-z]{6,32}) Message accepted for delivery"),
              re.compile(rb"\bid=([0-9A-Za-z-]{6,40})"))


class ReleaseError(Exception):
    pass


@dataclass(frozen=True)
class Released:
    id: str
    accepted: list[str]
    queue_id: str | None
    refused: dict[str, tuple[int, str]] = field(default_factory=dict)
    settled: list = field(default_factory=list)  # requests it approved (requests.Request)


def admin_only_symbols(record: Record, release_rules: Mapping[str, str] | None = None
                       ) -> list[str]:
    """The record's symbols that make its release an admin's decision."""
    rules = release_rules or {}
    return [s["name"] for s in record.symbols
            if s["name"] in VIRUS_SYMBOLS or s["name"].endswith("_VIRUS")
            or rules.get(s["name"]) == "admin"]


# Who must approve a requested release, from the least strict (gateway.config).
APPROVERS = ("none", "analyst", "admin")


def symbol_classes(config_checks: Iterable[str] = (), rules_defined: Iterable[str] = ()
                   ) -> dict[str, str]:
    """Each symbol's class: the check that emits it, as ``gateway symbols``
    lists it (``bayes``, ``clamav``, ``identity``...); the rules files' own
    symbols are ``rules``'."""
    classes = dict.fromkeys(PIPELINE_SYMBOLS, "pipeline")
    classes.update(dict.fromkeys(rules_defined, "rules"))
    for spec in dict.fromkeys([*config_checks, *BUILTIN]):
        try:
            check = resolve_check(spec)
        except Exception:  # a check that cannot load (its extra missing) names no class
            continue
        for name in check.catalog():
            classes.setdefault(name, check.name)
    return classes


def approver(record: Record, approve: str | Mapping[str, str],
             release_rules: Mapping[str, str] | None = None,
             classes: Mapping[str, str] | None = None,
             forced: Iterable[str] = ()) -> str:
    """Who must approve a requested release of this message ([release]
    approve): the strictest setting among the symbols that held it (a
    positive score, or forced), each read as its symbol's own entry, else its
    class's, else ``default``; "admin" for a virus or a symbol the rules
    reserve for admins, whatever the setting."""
    if admin_only_symbols(record, release_rules):
        return "admin"
    table = {"default": approve} if isinstance(approve, str) else dict(approve)
    fallback = table.get("default", "analyst")
    forced = set(forced)
    found = [table.get(s["name"], table.get((classes or {}).get(s["name"], ""), fallback))
             for s in record.symbols if s["score"] > 0 or s["name"] in forced]
    return max(found or [fallback], key=APPROVERS.index)


def may_release(role: str, needed: str) -> bool:
    """Whether ``role`` (admin, analyst, recipient) releases at once, rather
    than asking: an admin always; an analyst unless an admin must approve;
    a recipient only where nobody need approve."""
    if role == "admin":
        return True
    if role == "analyst":
        return needed != "admin"
    return needed == "none"


def may_decide(role: str, needed: str) -> bool:
    """Whether ``role`` may approve or refuse a request needing ``needed``."""
    return role == "admin" or (role == "analyst" and needed != "admin")


@dataclass(frozen=True)
class ReleasePolicy:
    """Everything a release or a request needs from the config and rules."""

    smtp: str
    timeout: float = 60.0
    release_rules: Mapping[str, str] = field(default_factory=dict)
    approve: str | Mapping[str, str] = "analyst"
    classes: Mapping[str, str] = field(default_factory=dict)
    forced: frozenset[str] = frozenset()
    server_id: str | None = None

    @classmethod
    def of(cls, config: Any, rules: Any) -> ReleasePolicy:
        """From a gateway.config.Config and its loaded gateway.policy.Rules."""
        return cls(config.release.smtp, config.release.timeout, rules.release,
                   config.release.approve,
                   symbol_classes(config.pipeline.checks, rules.defined),
                   frozenset(rules.force), config.auth.server_id())

    def approver(self, record: Record) -> str:
        return approver(record, self.approve, self.release_rules, self.classes, self.forced)


def release_or_request(store: QuarantineStore, record: Record, policy: ReleasePolicy,
                       who: str, role: str, *, to: Iterable[str] | None = None,
                       reason: str = "", confirmed: bool = False, force: bool = False,
                       notify: str = "") -> Any:
    """Release ``record`` when ``role`` may (:func:`may_release`), else ask
    for it: the Released, or the new requests.Request. ``notify``: the
    address a recipient's request is answered at."""
    needed = policy.approver(record)
    if may_release(role, needed):
        return release(store, record.id, policy.smtp, who, force=force,
                       timeout=policy.timeout, to=to, reason=reason, role=role,
                       confirmed=confirmed, release_rules=policy.release_rules,
                       server_id=policy.server_id)
    targets = list(to) if to is not None else \
        [r for r in record.recipients if r not in record.released_to]
    return requests.create(store, record, targets, who,
                           "recipient" if role == "recipient" else "analyst", reason,
                           needed, notify)


def approve_request(store: QuarantineStore, identifier: int, policy: ReleasePolicy,
                    who: str, role: str, *, reason: str = "", confirmed: bool = False
                    ) -> Released | None:
    """Approve a pending request: release the message to its recipients
    (those not released yet). None when they all had it already (the
    request is approved all the same). Raises RequestError or ReleaseError."""
    item = requests.get(store, identifier)
    if item.state != "pending":
        raise requests.RequestError(f"release request #{identifier} was {item.state} already")
    if not may_decide(role, item.approver):
        raise requests.RequestError(f"release request #{identifier}: only an admin may "
                                    "approve it")
    record = store.get(item.message)
    targets = [r for r in item.recipients if r not in record.released_to]
    if not targets:
        requests.settle(store, record.id, who, reason)
        return None
    return release(store, record.id, policy.smtp, who, timeout=policy.timeout, to=targets,
                   reason=reason, role=role, confirmed=confirmed,
                   release_rules=policy.release_rules, server_id=policy.server_id)


def release(store: QuarantineStore, identifier: str, smtp: str, who: str,
            force: bool = False, timeout: float = 60.0, *,
            to: Iterable[str] | None = None, reason: str = "", role: str = "admin",
            confirmed: bool | None = None, release_rules: Mapping[str, str] | None = None,
            server_id: str | None = None) -> Released:
    """Send the message to ``to`` (default: every original recipient not yet
    released to). ``force`` sends again to recipients who already got it and,
    for the command line, is the confirmation an admin-only message needs;
    the console passes ``role`` and ``confirmed`` instead."""
    record = store.get(identifier)
    if record.state in ("deleted", "expired"):
        raise ReleaseError(f"{record.id}: {record.state}, its content is gone")
    if not record.recipients:
        raise ReleaseError(f"{record.id}: no recipients recorded")
    dangerous = admin_only_symbols(record, release_rules)
    if dangerous:
        if role != "admin":
            raise ReleaseError(f"{record.id}: carries {', '.join(dangerous)}; only an admin "
                               "may release it")
        if not (force if confirmed is None else confirmed):
            raise ReleaseError(f"{record.id}: carries {', '.join(dangerous)}; releasing it "
                               "needs an explicit confirmation (--force)")
    targets = _targets(record, to, force)
    raw = store.raw(record.id)
    if raw is None:
        raise ReleaseError(f"{record.id}: its content is gone")
    stamp = datetime.now(UTC)
    data = released_copy(raw, record, who, stamp, server_id)
    try:
        accepted, refused, queue_id = _send(record.sender, targets, data, smtp, timeout)
    except ReleaseError as exc:
        problem = str(exc)
        with contextlib.suppress(QuarantineError):  # the failure is what the caller sees
            store.record_event(record.id, who, "release-failed", problem, reason)
        raise ReleaseError(f"{record.id}: {problem}") from None
    detail = f"to {', '.join(accepted)} via {smtp}"
    detail += f", queued as {queue_id}" if queue_id else ", no queue id in the reply"
    if refused:
        detail += f"; refused {_reasons(refused)}"
    try:
        store.mark_released(record.id, accepted, queue_id, who, detail, reason)
    except QuarantineError as exc:  # sent, but not recorded: say so loudly
        raise ReleaseError(f"{record.id}: released but not recorded: {exc}") from None
    if accepted:  # released mail is ham to the fuzzy check: its look is retired from spam
        # Here, not at the top: the fuzzy check's hashing brings numpy, which
        # the milter (it imports this module) otherwise never needs.
        from gateway.checks.fuzzy import learn_quietly

        learn_quietly(store.engine, raw, "ham", f"released:{record.id}")

    # Requests this release fulfilled are approved by it, whoever asked.
    settled = requests.settle(store, record.id, who, reason)
    return Released(record.id, accepted, queue_id, refused, settled)


def _targets(record: Record, to: Iterable[str] | None, force: bool) -> list[str]:
    already = set(record.released_to)
    if record.state == "released" and not already:
        already = set(record.recipients)  # released before recipients were tracked
    by_lower = {r.lower(): r for r in record.recipients}
    if to is None:
        chosen = list(record.recipients)
        if not force:
            chosen = [r for r in chosen if r not in already]
            if not chosen:
                released = [e for e in record.events if e.action == "released"]
                when = (released[-1].time.isoformat(timespec="seconds") if released
                        else "before")
                raise ReleaseError(f"{record.id}: already released ({when}); --force sends "
                                   "it again")
        return chosen
    chosen = []
    for address in to:
        original = by_lower.get(address.strip().lower())
        if original is None:
            raise ReleaseError(f"{record.id}: {address} is not a recipient of this message; "
                               "a release goes only to the original recipients")
        if original in already and not force:
            raise ReleaseError(f"{record.id}: already released to {original}; --force sends "
                               "it again")
        if original not in chosen:
            chosen.append(original)
    if not chosen:
        raise ReleaseError(f"{record.id}: no recipient chosen")
    return chosen


def _send(sender: str, rcpts: list[str], data: bytes, smtp: str, timeout: float
          ) -> tuple[list[str], dict[str, tuple[int, str]], str | None]:
    host, _, port = smtp.rpartition(":")
    refused: dict[str, tuple[int, str]] = {}
    try:
        with smtplib.SMTP(host, int(port), timeout=timeout) as client:
            client.ehlo_or_helo_if_needed()
            code, reply = client.mail(sender)
            if code != 250:
                raise ReleaseError(f"{smtp} refused the sender: {code} {_text(reply)}")
            for rcpt in rcpts:
                code, reply = client.rcpt(rcpt)
                if code not in (250, 251):
                    refused[rcpt] = (code, _text(reply))
            if len(refused) == len(rcpts):
                client.rset()
                raise ReleaseError(f"every recipient refused by {smtp}: {_reasons(refused)}")
            code, reply = client.data(data)
            if code != 250:
                raise ReleaseError(f"{smtp} refused the message: {code} {_text(reply)}")
    except ReleaseError:
        raise
    except (smtplib.SMTPException, OSError, UnicodeError) as exc:
        raise ReleaseError(f"cannot re-inject through {smtp}: {exc}") from None
    accepted = [r for r in rcpts if r not in refused]
    return accepted, refused, queue_id_of(reply)


def queue_id_of(reply: bytes) -> str | None:
    """The queue id an MTA gave the re-injected copy, from its reply to DATA."""
    for pattern in _QUEUE_IDS:
        found = pattern.search(reply)
        if found:
            return found.group(1).decode("ascii")
    return None


def released_copy(raw: bytes, record: Record, who: str, at: datetime,
                  server_id: str | None = None) -> bytes:
    """The message as released: our headers on top, the sender's copies of
    them gone, the rest byte for byte."""
    newline = b"\r\n" if b"\r\n" in raw[:4096] or not raw else b"\n"
    head, separator, body = _split(raw)
    ours = [(RELEASED_HEADER, f"by {_token(who)} at "
                              f"{at.astimezone(UTC):%Y-%m-%dT%H:%M:%SZ} (quarantine {record.id})")]
    ours += list(record.verdict_headers) or reconstructed_headers(record)
    own = {h.lower() for h in (*OWN_HEADERS, RELEASED_HEADER)}
    kept = []
    for name, lines in _fields(head):
        lower = name.lower()
        if lower in own:
            continue
        if lower == authresults.HEADER.lower() and server_id:
            value = b"".join(lines).split(b":", 1)[-1].decode("utf-8", "replace")
            if authresults.claims(value, server_id):
                continue
        kept.extend(lines)
    added = b"".join(f"{name}: {value}".replace("\r\n", "\n").replace("\n", "\r\n")
                     .encode("utf-8", "replace").replace(b"\r\n", newline) + newline
                     for name, value in ours)
    return added + b"".join(kept) + separator + body


def reconstructed_headers(record: Record) -> list[tuple[str, str]]:
    """X-Spam-* for a record stored before the verdict's headers were kept."""
    verdict = Verdict(
        action=record.action, score=record.score, required=record.required,  # type: ignore[arg-type]
        symbols=tuple(Symbol(s["name"], s["score"], s["description"], s["evidence"])
                      for s in record.symbols),
        failed_checks=record.failed_checks, reason=record.reason)
    return verdict_headers(verdict)


def _split(raw: bytes) -> tuple[bytes, bytes, bytes]:
    """Header block (with its last line ending), the blank line, the body."""
    for separator in (b"\r\n\r\n", b"\n\n"):
        index = raw.find(separator)
        if index >= 0:
            half = len(separator) // 2
            return raw[:index + half], raw[index + half:index + len(separator)], \
                raw[index + len(separator):]
    return raw, b"", b""


def _fields(head: bytes) -> list[tuple[str, list[bytes]]]:
    """Header fields as (name, their physical lines), folded lines kept."""
    fields: list[tuple[str, list[bytes]]] = []
    for line in head.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1][1].append(line)
        else:
            name = line.split(b":", 1)[0].strip().decode("ascii", "replace")
            fields.append((name, [line]))
    return fields


def _token(who: str) -> str:
    """A name for a header line: printable ASCII only."""
    cleaned = "".join(c if 0x20 <= ord(c) < 0x7f else "?" for c in who.strip())
    return cleaned[:200] or "?"


def _text(reply: bytes | str) -> str:
    return reply.decode(errors="replace") if isinstance(reply, bytes) else str(reply)


def _reasons(refused: Mapping) -> str:
    parts = []
    for rcpt, (code, text) in refused.items():
        parts.append(f"{rcpt} ({code} {_text(text)})")
    return "; ".join(parts)

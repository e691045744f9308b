"""Recipients' self-service: a daily digest of their held mail, with links.

Each recipient with held mail gets one message listing sender, subject,
score and the main reason of each, and two links per message: release it
to me, or report it as spam. A link works without an account, and only
for what it was made for:

- it names one random link id; the URL also carries an HMAC-SHA256 over the
  id, the message, the recipient and the expiry, under a secret kept in the
  store's database (every node has the same one), so an id alone or a link
  altered in any way is refused;
- the row behind it says for which message and which recipient: a release
  goes to that recipient and nobody else, whatever the request says;
- it expires after ``[digest] link_days`` and is marked used by the first
  action (release or report), in one UPDATE that only one request can win.

Opening a link only shows the message and a button: mail scanners that
fetch every link in a message cannot release anything. Messages that only
an admin may release (viruses, ``[release] SYMBOL = "admin"``) and kept
copies of rejected mail are never listed.

Digests go out through the release listener (``[release] smtp``).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import smtplib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from html import escape
from typing import Any

from sqlalchemy import and_, exists, func, select, update
from sqlalchemy.engine import Connection

from gateway.config import Config
from gateway.db import insert_ignoring, utc
from gateway.jobs import Jobs, PeriodicJob
from gateway.quarantine.release import admin_only_symbols
from gateway.quarantine.schema import digest_links, digest_runs, messages, recipients
from gateway.quarantine.store import QuarantineStore, Record, now
from gateway.web import notices
from gateway.web.console import Console
from gateway.web.notices import sender_address

log = logging.getLogger("gateway.web")
SECRET = "digest_secret"
DIGEST_JOB = "digest"


class LinkError(Exception):
    """A digest link that does not work, and why (status: 404 or 410)."""

    def __init__(self, message: str, status: int = 404):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Link:
    id: str
    message: str
    recipient: str
    expires: datetime
    used: datetime | None
    used_for: str | None


def _signature(secret: bytes, identifier: str, message: str, recipient: str,
               expires: datetime) -> str:
    text = f"{identifier}|{message}|{recipient}|{int(expires.timestamp())}"
    return hmac.new(secret, text.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()


def make_link(console: Console, message: str, recipient: str, days: int,
              at: datetime | None = None, connection: Connection | None = None) -> str | None:
    """A link token for this message and recipient; None when one was made
    before (a message is in one digest per recipient). In ``connection``'s
    transaction when given: the digest's, which commits once the mail went."""
    secret = console.secret(SECRET)  # before the transaction: the first call writes it
    if connection is None:
        with console.engine.begin() as own:
            return make_link(console, message, recipient, days, at, own)
    stamp = at or now()
    expires = (stamp + timedelta(days=days)).replace(microsecond=0)
    identifier = secrets.token_hex(16)
    made = insert_ignoring(connection, digest_links, {
        "id": identifier, "message": message, "recipient": recipient,
        "created": stamp, "expires": expires})
    if not made:  # that message and recipient have a link (another digest, another node)
        return None
    signature = _signature(secret, identifier, message, recipient, expires)
    return f"{identifier}.{signature}"


def check_link(console: Console, token: str, at: datetime | None = None) -> Link:
    """The link behind a token, if it may still be used."""
    identifier, _, signature = token.partition(".")
    if len(identifier) != 32 or len(signature) != 64 or not identifier.isalnum():
        raise LinkError("this link is not valid")
    with console.engine.connect() as connection:
        row = connection.execute(select(digest_links).where(
            digest_links.c.id == identifier)).first()
    if row is None:
        raise LinkError("this link is not valid")
    expires = utc(row.expires)
    expected = _signature(console.secret(SECRET), row.id, row.message, row.recipient, expires)
    if not hmac.compare_digest(expected, signature):
        raise LinkError("this link is not valid")
    link = Link(row.id, row.message, row.recipient, expires,
                utc(row.used) if row.used else None, row.used_for)
    if link.used is not None:
        raise LinkError(f"this link was used already ({link.used_for}, "
                        f"{link.used:%Y-%m-%d %H:%M} UTC)", 410)
    if (at or now()) >= expires:
        raise LinkError("this link has expired", 410)
    return link


FORM_HOURS = 24


def form_token(console: Console, link: Link, at: datetime | None = None) -> str:
    """The token a link's page puts in its form: the action needs it, so a
    POST that did not come from that page (a scanner's, a forged form's)
    does nothing. Signed, for this link, valid FORM_HOURS."""
    issued = int((at or now()).timestamp())
    mac = hmac.new(console.secret(SECRET), f"form|{link.id}|{issued}".encode(),
                   hashlib.sha256).hexdigest()
    return f"{issued}.{mac}"


def check_form_token(console: Console, link: Link, token: str,
                     at: datetime | None = None) -> bool:
    issued, _, mac = token.partition(".")
    if not issued.isdigit() or len(mac) != 64 or len(issued) > 12:
        return False
    age = (at or now()).timestamp() - int(issued)
    if not 0 <= age <= FORM_HOURS * 3600:
        return False
    expected = hmac.new(console.secret(SECRET), f"form|{link.id}|{issued}".encode(),
                        hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, mac)


def use_link(console: Console, token: str, action: str) -> Link:
    """Mark the link used for ``action``; only one request can."""
    link = check_link(console, token)
    with console.engine.begin() as connection:
        done = connection.execute(update(digest_links).where(and_(
            digest_links.c.id == link.id, digest_links.c.used.is_(None))).values(
            used=now(), used_for=action))
    if done.rowcount != 1:
        raise LinkError("this link was used already", 410)
    return link


# -- composing and sending ------------------------------------------------------------

def pending(store: QuarantineStore, release_rules: dict[str, str] | None = None,
            recipient: str | None = None, limit: int = 100) -> dict[str, list[Record]]:
    """Held mail per recipient that no digest has listed yet."""
    listed = exists().where(and_(digest_links.c.message == recipients.c.message,
                                 digest_links.c.recipient == recipients.c.address))
    query = (select(recipients.c.address, recipients.c.message)
             .join(messages, messages.c.id == recipients.c.message)
             .where(and_(messages.c.state == "held", messages.c.action == "quarantine",
                         messages.c.raw.is_not(None), recipients.c.released.is_(None),
                         recipients.c.address != "", ~listed))
             .order_by(recipients.c.address, messages.c.created.desc()))
    if recipient:
        query = query.where(recipients.c.address == recipient)
    wanted: dict[str, list[str]] = {}
    with store.engine.connect() as connection:
        for address, message in connection.execute(query):
            wanted.setdefault(address, [])
            if len(wanted[address]) < limit:
                wanted[address].append(message)
    found: dict[str, list[Record]] = {}
    for address, ids in wanted.items():
        records = [store.get(i) for i in ids]
        records = [r for r in records if not admin_only_symbols(r, release_rules)]
        if records:
            found[address] = records
    return found


def compose(config: Config, recipient: str, items: list[tuple[Record, str]],
            at: datetime) -> EmailMessage:
    """The digest mail: text and HTML, every message field escaped in the HTML."""
    base = config.digest.url.rstrip("/")
    sender = sender_address(config)
    days = config.digest.link_days
    mail = EmailMessage()
    mail["From"] = sender
    mail["To"] = recipient
    mail["Subject"] = f"Held mail: {len(items)} message{'s' if len(items) != 1 else ''} " \
                      "waiting for you"
    mail["Date"] = format_datetime(at)
    mail["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2] or None)
    mail["Auto-Submitted"] = "auto-generated"
    lines = [f"These messages to {recipient} were held by the mail filter as probable spam.",
             f"Each link works once and for {days} days; it releases the message to you "
             "only, or reports it as spam.", ""]
    rows = []
    for record, token in items:
        reason = _reason(record)
        lines += [f"From:    {_one_line(record.header_from or record.sender or '<>')}",
                  f"Subject: {_one_line(record.subject or '(no subject)')}",
                  f"Held:    {record.created:%Y-%m-%d %H:%M} UTC, score {record.score:.1f}"
                  f" ({reason})",
                  f"Release: {base}/digest/{token}?action=release",
                  f"Spam:    {base}/digest/{token}?action=spam", ""]
        rows.append(
            f"<tr><td>{escape(_one_line(record.header_from or record.sender or '<>'))}</td>"
            f"<td>{escape(_one_line(record.subject or '(no subject)'))}</td>"
            f"<td>{record.score:.1f}</td><td>{escape(reason)}</td>"
            f'<td><a href="{escape(base)}/digest/{token}?action=release">release to me</a> · '
            f'<a href="{escape(base)}/digest/{token}?action=spam">report spam</a></td></tr>')
    mail.set_content("\n".join(lines))
    mail.add_alternative(
        "<!doctype html><html><body><p>These messages to "
        f"{escape(recipient)} were held by the mail filter as probable spam. Each link works "
        f"once and for {days} days.</p><table border=\"1\" cellpadding=\"4\" "
        "style=\"border-collapse:collapse\"><tr><th>From</th><th>Subject</th><th>Score</th>"
        f"<th>Why</th><th></th></tr>{''.join(rows)}</table></body></html>", subtype="html")
    return mail


def send_digests(store: QuarantineStore, console: Console, config: Config,
                 release_rules: dict[str, str] | None = None, recipient: str | None = None,
                 dry_run: bool = False) -> list[tuple[str, int, str]]:
    """Send one digest per recipient with unlisted held mail; returns
    (recipient, messages, outcome) for each."""
    if not config.digest.url:
        raise LinkError("[digest] url is not set: the links need the console's address")
    results = []
    for address, records in pending(store, release_rules, recipient,
                                    config.digest.max_messages).items():
        if dry_run:
            results.append((address, len(records), "would be sent"))
            continue
        count, outcome = _send_one(console, config, address, records)
        if not count:
            continue
        console.log("digest", "digest-sent" if outcome == "sent" else "digest-failed",
                    address, f"{count} messages; {outcome}")
        results.append((address, count, outcome))
    return results


def _send_one(console: Console, config: Config, address: str, records: list[Record]
              ) -> tuple[int, str]:
    """One recipient's digest: its links and the mail in one transaction that
    commits when the mail server has taken the mail. A node that dies before
    leaves no links, so the messages are listed by the next digest run; one
    that dies after committed them, so nobody lists them again. (Between the
    server's answer and the commit, a few milliseconds, a death would mean
    the recipient gets that digest twice; never none.)"""
    stamp = now()
    console.secret(SECRET)  # made before the transaction, if this is the first digest
    try:
        with console.engine.begin() as connection:
            items = []
            for record in records:
                token = make_link(console, record.id, address, config.digest.link_days, stamp,
                                  connection)
                if token is not None:  # another node listed it meanwhile
                    items.append((record, token))
            if not items:
                return 0, ""
            mail = compose(config, address, items, stamp)
            host, _, port = config.release.smtp.rpartition(":")
            with smtplib.SMTP(host, int(port), timeout=config.release.timeout) as client:
                client.send_message(mail, from_addr=mail["From"], to_addrs=[address])
    except (smtplib.SMTPException, OSError, UnicodeError) as exc:
        return len(records), f"not sent: {exc}"  # the links rolled back: listed next time
    return len(items), "sent"


class DailyDigest:
    """In ``gateway web``: after ``[digest] hour`` each day, one node sends
    the day's digests, as the job ``digest`` (see gateway.jobs): the first
    node to look after the hour takes it; if it dies halfway, another node
    sends the rest (each recipient's digest commits on its own) and the day
    is done once."""

    def __init__(self, store: QuarantineStore, console: Console, config: Config,
                 release_rules: dict[str, str] | None = None, interval: float = 300.0):
        self.store, self.console, self.config = store, console, config
        self.release_rules = release_rules
        self.interval = interval
        self._job: PeriodicJob | None = None

    def start(self) -> None:
        self._job = PeriodicJob(self._jobs, DIGEST_JOB, self.interval, self._send,
                                piecewise=True, period=self._period).start()

    def stop(self) -> None:
        if self._job is not None:
            self._job.stop()

    def _jobs(self) -> Jobs:
        return Jobs(self.console.engine, self.store.node)

    def _period(self, at: datetime | None = None) -> str | None:
        """Today (UTC) once [digest] hour has come; None before."""
        at = at or now()
        return at.date().isoformat() if at.hour >= self.config.digest.hour else None

    def run_once(self, at: datetime | None = None) -> int | None:
        """Send the day's digests if due and nobody has; the messages listed,
        or None when it was not this node's to do."""
        day = self._period(at)
        if day is None:
            return None
        outcome = self._jobs().run(DIGEST_JOB, day, lambda _: self._send(None, day, at),
                                   piecewise=True)
        return outcome.result.get("sent") if outcome.state == "ran" else None

    def _send(self, _connection: Connection | None, day: str | None = None,
              at: datetime | None = None) -> dict[str, Any]:
        day = day or self._period(at) or (at or now()).date().isoformat()
        with self.console.engine.begin() as connection:  # the day's row, for the console
            insert_ignoring(connection, digest_runs, {
                "day": day, "node": self.store.node, "started": at or now(), "sent": 0})
        results = send_digests(self.store, self.console, self.config, self.release_rules)
        notices.tell_by_mail(self.store, self.config)  # decisions a mail server missed
        sent = sum(n for _, n, outcome in results if outcome == "sent")
        failed = sum(1 for _, _, outcome in results if outcome != "sent")
        start = datetime.fromisoformat(day).replace(tzinfo=UTC)
        with self.console.engine.begin() as connection:
            # the day's figure counts the links made that day, by whichever run
            # (a run that died after some recipients reported nothing itself)
            listed = connection.execute(select(func.count()).select_from(digest_links).where(
                and_(digest_links.c.created >= start,
                     digest_links.c.created < start + timedelta(days=1)))).scalar_one()
            connection.execute(update(digest_runs).where(digest_runs.c.day == day).values(
                node=self.store.node, finished=now(), sent=listed))
        log.info("digest: %d messages listed in today's digests", sent)
        # A digest the mail server refused keeps its messages unlisted: the
        # next day's digest (or gateway digest send) lists them.
        return {"sent": sent, "recipients": len(results), "failed": failed}


def _reason(record: Record) -> str:
    top = sorted(record.symbols, key=lambda s: -s["score"])[:2]
    named = ", ".join(s["description"] or s["name"] for s in top if s["score"] > 0)
    return _one_line(named or record.reason)[:120]


def _one_line(text: str) -> str:
    return "".join(c if c.isprintable() else " " for c in text)[:200]



def link_summary(link: Link) -> dict[str, Any]:
    return {"message": link.message, "recipient": link.recipient,
            "expires": link.expires.isoformat(timespec="seconds")}

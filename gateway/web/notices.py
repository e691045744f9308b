"""Telling requesters what became of their release requests.

A recipient who asked from a digest link is told by mail (through the
release listener, ``[release] smtp``, from the digests' sender); a console
user is told on their next page in the console. A decided request is marked
told once its notice went (a mail the server took, or a page shown), so a
notice that could not go out is tried again at the next decision or digest
run. The command line uses this module too; it imports no web framework.
"""

from __future__ import annotations

import logging
import smtplib
import socket
import threading
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid

from gateway.config import Config
from gateway.quarantine import requests
from gateway.quarantine.requests import Request
from gateway.quarantine.store import QuarantineStore, now

log = logging.getLogger("gateway.web")


def sender_address(config: Config) -> str:
    """From and envelope sender of the mail the console sends (digests, notices)."""
    return config.digest.sender or f"postmaster@{socket.getfqdn()}"


def decision_line(item: Request) -> str:
    """One line saying what became of a request, for its requester."""
    subject = _one_line(item.subject or "(no subject)")[:120]
    if item.state == "approved":
        return (f"Your request #{item.id} to release \"{subject}\" was approved: it was "
                f"delivered to {', '.join(item.recipients)}.")
    why = f": {item.decision_reason}" if item.decision_reason else ""
    return f"Your request #{item.id} to release \"{subject}\" was refused{why}."


def tell_by_mail(store: QuarantineStore, config: Config) -> int:
    """Mail each recipient whose request was decided and who was not told
    yet; returns how many were told."""
    told = []
    for item in requests.untold(store, by_mail=True):
        mail = _compose(config, item)
        host, _, port = config.release.smtp.rpartition(":")
        try:
            with smtplib.SMTP(host, int(port), timeout=config.release.timeout) as client:
                client.send_message(mail, from_addr=mail["From"], to_addrs=[item.notify])
        except (smtplib.SMTPException, OSError, UnicodeError) as exc:
            log.warning("web: cannot tell %s about release request #%d (tried again later): "
                        "%s", item.notify, item.id, exc)
            continue
        told.append(item.id)
    requests.mark_told(store, told)
    return len(told)


def tell_by_mail_later(store: QuarantineStore, config: Config) -> None:
    """:func:`tell_by_mail`, off the request thread (the mail server may be
    slow): after a decision in the console."""
    threading.Thread(target=tell_by_mail, args=(store, config), daemon=True,
                     name="notices").start()


def tell_in_console(store: QuarantineStore, user: str) -> list[tuple[str, str]]:
    """The notices a console user has not seen, as (text, ok|error); marked seen."""
    found = requests.untold(store, by_mail=False, requester=user)
    requests.mark_told(store, [item.id for item in found])
    return [(decision_line(item), "ok" if item.state == "approved" else "error")
            for item in found]


def _compose(config: Config, item: Request) -> EmailMessage:
    mail = EmailMessage()
    sender = sender_address(config)
    mail["From"] = sender
    mail["To"] = item.notify
    mail["Subject"] = ("Released: " if item.state == "approved" else "Not released: ") + \
        _one_line(item.subject or "(no subject)")[:120]
    mail["Date"] = format_datetime(now())
    mail["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2] or None)
    mail["Auto-Submitted"] = "auto-replied"
    lines = [decision_line(item), ""]
    if item.state == "approved":
        lines.append("You will find it in your mailbox.")
    else:
        lines.append("If you need it all the same, answer this mail or ask your mail admins.")
    mail.set_content("\n".join(lines))
    return mail


def _one_line(text: str) -> str:
    return "".join(c if c.isprintable() else " " for c in text)

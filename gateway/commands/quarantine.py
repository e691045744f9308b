"""``gateway quarantine``: list, show, release, delete, purge — for analysts."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime, timedelta

from gateway.audit import actor
from gateway.commands.common import UsageError, config_from
from gateway.config import Config
from gateway.quarantine.release import ReleaseError, release
from gateway.quarantine.store import (
    STATES,
    Filters,
    QuarantineError,
    QuarantineStore,
    Record,
)
from gateway.terminal import dumps, printable


def add_arguments(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(title="quarantine commands", metavar="COMMAND")

    listing = commands.add_parser("list", help="find quarantined messages")
    listing.add_argument("--sender", help="envelope sender contains this")
    listing.add_argument("--recipient", help="a recipient contains this")
    listing.add_argument("--symbol", help="has this symbol, e.g. CLAMAV_VIRUS")
    listing.add_argument("--since", type=when, help="held at or after (ISO date/time, or 2h, 3d)")
    listing.add_argument("--until", type=when, help="held before (ISO date/time, or 2h, 3d)")
    listing.add_argument("--action", choices=("quarantine", "reject"),
                         help="quarantined, or a kept copy of rejected mail")
    listing.add_argument("--state", choices=STATES)
    listing.add_argument("--limit", type=int, default=1000)
    listing.add_argument("--json", action="store_true", help="a JSON array of records")
    listing.set_defaults(handler=list_main)

    show = commands.add_parser("show", help="headers, verdict, symbols and history of one")
    show.add_argument("id", help="quarantine id, or the Postfix queue id")
    show.add_argument("--json", action="store_true")
    show.add_argument("--raw", action="store_true",
                      help="print the original message, byte for byte (to a pipe or file; "
                           "a terminal needs --force)")
    show.add_argument("--force", action="store_true",
                      help="with --raw: write the raw bytes even to a terminal")
    show.set_defaults(handler=show_main)

    send = commands.add_parser("release", help="deliver to the original recipients")
    send.add_argument("id")
    send.add_argument("--force", action="store_true", help="release again")
    send.add_argument("--reason", default="", help="why, for the audit trail")
    send.set_defaults(handler=release_main)

    remove = commands.add_parser("delete", help="discard the message (the record stays)")
    remove.add_argument("id")
    remove.add_argument("--reason", default="", help="why, for the audit trail")
    remove.set_defaults(handler=delete_main)

    purge = commands.add_parser("purge", help="apply the retention periods now")
    purge.set_defaults(handler=purge_main)

    for sub in (listing, show, send, remove, purge):
        sub.add_argument("--config", default=argparse.SUPPRESS)


def when(text: str) -> datetime:
    """An ISO date/time (UTC unless it says otherwise) or an age like 2h, 3d."""
    units = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
    if text[:-1].isdigit() and text[-1:] in units:
        return datetime.now(UTC) - timedelta(**{units[text[-1]]: int(text[:-1])})
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected a date such as 2026-11-26 or 2026-11-26T14:00, "
            "or an age such as 2h or 3d") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def open_store(config: Config) -> QuarantineStore:
    if not config.quarantine.url:
        raise UsageError("quarantine.url is empty: quarantined mail is in Postfix's hold "
                         "queue (postqueue -p; postsuper -H to release)")
    try:
        return QuarantineStore(config.quarantine.url, config.quarantine.node or None)
    except QuarantineError as exc:
        raise UsageError(str(exc)) from None


def list_main(args: argparse.Namespace) -> int:
    store = open_store(config_from(args))
    records = store.list(Filters(sender=args.sender, recipient=args.recipient,
                                 symbol=args.symbol, since=args.since, until=args.until,
                                 action=args.action, state=args.state, limit=args.limit))
    if args.json:
        print(dumps([r.as_dict() for r in records], indent=2))
        return 0
    if not records:
        print("no messages")
    for r in records:
        names = ",".join(s["name"] for s in r.symbols)
        print(printable(
            f"{r.id}  {r.created:%Y-%m-%d %H:%M}  {r.state:<8} {r.action:<10} "
            f"{r.score:6.1f}  {r.sender or '<>'} -> {','.join(r.recipients)}  "
            f"\"{(r.subject or '')[:50]}\"  [{names}]"))
    return 0


def show_main(args: argparse.Namespace) -> int:
    store = open_store(config_from(args))
    record = _get(store, args.id)
    if args.raw:
        raw = store.raw(record.id)
        if raw is None:
            raise UsageError(f"{record.id}: {record.state}, its content is gone")
        if sys.stdout.isatty() and not args.force:
            # The bytes are the sender's: escape sequences in them would reach
            # the terminal as they are. Like less(1) on a binary file, ask first.
            raise UsageError(f"{record.id}: --raw writes the sender's bytes unescaped; "
                             "send them to a pipe or file (| less, > msg.eml), or add --force")
        sys.stdout.flush()
        sys.stdout.buffer.write(raw)
        return 0
    if args.json:
        print(dumps(record.as_dict(), indent=2))
        return 0
    print_record(record)
    return 0


def print_record(r: Record) -> None:
    # Every line goes through printable(): headers, envelope, client names,
    # evidence and history details come from the sender, and one of them
    # must not be able to clear the screen or fake a "state:" line.
    def line(text: str) -> None:
        print(printable(text))

    line(f"id:          {r.id}   (queue id {r.queue_id or '-'}, node {r.node})")
    line(f"state:       {r.state}   action: {r.action}   held: {r.created:%Y-%m-%d %H:%M:%S %Z}")
    line(f"verdict:     score {r.score:g} (required {r.required:g}): {r.reason}")
    if r.failed_checks:
        line(f"not run:     {', '.join(r.failed_checks)}")
    line(f"envelope:    MAIL FROM:<{r.sender}>  RCPT TO: {', '.join(r.recipients)}")
    line(f"client:      {r.client_name or '-'} [{r.client_ip or '-'}]  HELO {r.helo or '-'}")
    for label, value in (("From", r.header_from), ("To", r.header_to),
                         ("Subject", r.subject), ("Date", r.header_date),
                         ("Message-ID", r.message_id)):
        line(f"{label + ':':<13}{value or '-'}")
    line(f"size:        {r.size} bytes, sha256 {r.sha256[:16]}…")
    line("symbols:")
    for s in sorted(r.symbols, key=lambda s: -abs(s["score"])):
        evidence = f" ({s['evidence']})" if s["evidence"] else ""
        line(f"  {s['name']:<22} {s['score']:>7.2f}  {s['description']}{evidence}")
    line("history:")
    for e in r.events:
        detail = f": {e.detail}" if e.detail else ""
        line(f"  {e.time:%Y-%m-%d %H:%M:%S}  {e.action} by {e.actor}{detail}")


def release_main(args: argparse.Namespace) -> int:
    config = config_from(args)
    store = open_store(config)
    record = _get(store, args.id)
    who = actor() + (f" ({args.reason})" if args.reason else "")
    try:
        accepted = release(store, record.id, config.release.smtp, who, force=args.force,
                           timeout=config.release.timeout)
    except ReleaseError as exc:
        raise UsageError(f"release: {exc}") from None
    print(printable(f"{record.id}: released to {', '.join(accepted)}"))
    return 0


def delete_main(args: argparse.Namespace) -> int:
    store = open_store(config_from(args))
    record = _get(store, args.id)
    if record.state == "deleted":
        raise UsageError(f"{record.id}: already deleted")
    store.change_state(record.id, "deleted", actor(), "deleted", args.reason, drop_body=True)
    print(f"{record.id}: deleted (the record stays for the audit trail)")
    return 0


def purge_main(args: argparse.Namespace) -> int:
    config = config_from(args)
    store = open_store(config)
    counts = store.purge(config.quarantine.retention_days(), config.quarantine.keep_rejected_days)
    print(f"purged: {counts['expired']} expired, {counts['removed']} records removed")
    return 0


def _get(store: QuarantineStore, identifier: str) -> Record:
    try:
        return store.get(identifier)
    except QuarantineError as exc:
        raise UsageError(str(exc)) from None

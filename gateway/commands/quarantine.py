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
    SORTS,
    STATES,
    Filters,
    QuarantineError,
    QuarantineStore,
    Record,
)
from gateway.ruleset import load_rules
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
    listing.add_argument("--subject", help="subject contains this")
    listing.add_argument("--min-score", type=float, help="score at least this")
    listing.add_argument("--max-score", type=float, help="score at most this")
    listing.add_argument("--node", help="held by this gateway node")
    listing.add_argument("--sort", choices=SORTS, default="created",
                         help="order by (default: created, newest first)")
    listing.add_argument("--ascending", action="store_true", help="smallest or oldest first")
    listing.add_argument("--limit", type=int, default=1000)
    listing.add_argument("--offset", type=int, default=0, help="skip this many")
    listing.add_argument("--json", action="store_true", help="a JSON array of records")
    listing.set_defaults(handler=list_main)

    show = commands.add_parser("show", help="headers, verdict, symbols and history of one")
    show.add_argument("id", help="quarantine id (or its first characters), or the Postfix "
                                "queue id")
    show.add_argument("--json", action="store_true")
    show.add_argument("--text", action="store_true",
                      help="print the whole decoded text body (escaped), not its first lines")
    show.add_argument("--raw", action="store_true",
                      help="print the original message, byte for byte (to a pipe or file; "
                           "a terminal needs --force)")
    show.add_argument("--force", action="store_true",
                      help="with --raw: write the raw bytes even to a terminal")
    show.set_defaults(handler=show_main)

    send = commands.add_parser("release", help="deliver to the original recipients")
    send.add_argument("ids", nargs="+", metavar="ID",
                      help="quarantine ids (or their first characters), or queue ids")
    send.add_argument("--to", action="append", metavar="ADDRESS",
                      help="only to this original recipient (repeat for more; default: all)")
    send.add_argument("--force", action="store_true",
                      help="release again to who already got it; confirm the release of a "
                           "virus or of a symbol the rules reserve for admins")
    send.add_argument("--reason", default="", help="why, for the audit trail")
    send.set_defaults(handler=release_main)

    asked = commands.add_parser("requests", help="release requests waiting for a decision "
                                "(an admin's release or refusal decides them)")
    asked.add_argument("--state", choices=("pending", "approved", "refused", "all"),
                       default="pending")
    asked.add_argument("--json", action="store_true")
    asked.set_defaults(handler=requests_main)

    refuse = commands.add_parser("refuse", help="refuse release requests, saying why (the "
                                 "requester is told)")
    refuse.add_argument("numbers", nargs="+", type=int, metavar="N",
                        help="request numbers (gateway quarantine requests)")
    refuse.add_argument("--reason", required=True, help="why, for the requester and the history")
    refuse.set_defaults(handler=refuse_main)

    remove = commands.add_parser("delete", help="discard the message (the record stays)")
    remove.add_argument("ids", nargs="+", metavar="ID")
    remove.add_argument("--reason", default="", help="why, for the audit trail")
    remove.set_defaults(handler=delete_main)

    purge = commands.add_parser("purge", help="apply the retention periods now")
    purge.set_defaults(handler=purge_main)

    for sub in (listing, show, send, asked, refuse, remove, purge):
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


NO_STORE = ("quarantine.url is empty: quarantined mail is in Postfix's hold queue "
            "(postqueue -p; postsuper -H to release)")


def open_store(config: Config, without_url: str = NO_STORE) -> QuarantineStore:
    """The store's database, or one line for the user (``without_url`` when
    ``[quarantine] url`` is empty)."""
    if not config.quarantine.url:
        raise UsageError(without_url)
    try:
        return QuarantineStore(config.quarantine.url, config.quarantine.node or None)
    except QuarantineError as exc:
        raise UsageError(str(exc)) from None


def list_main(args: argparse.Namespace) -> int:
    store = open_store(config_from(args))
    records = store.records(Filters(sender=args.sender, recipient=args.recipient,
                                 symbol=args.symbol, since=args.since, until=args.until,
                                 action=args.action, state=args.state, limit=args.limit,
                                 subject=args.subject, min_score=args.min_score,
                                 max_score=args.max_score, node=args.node, sort=args.sort,
                                 descending=not args.ascending, offset=args.offset))
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
    config = config_from(args)
    store = open_store(config)
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
    preview = _preview(store, record, config)
    if args.json:
        shown = record.as_dict()
        if preview is not None:
            shown.update({
                "text": preview.text, "html": preview.html is not None,
                "attachments": [{"name": a.name, "declared_type": a.declared,
                                 "detected_type": a.detected, "size": a.size,
                                 "sha256": a.sha256} for a in preview.attachments],
                "urls": preview.urls})
        print(dumps(shown, indent=2))
        return 0
    print_record(record)
    if preview is not None:
        print_contents(preview, whole_text=args.text)
    return 0


def _preview(store: QuarantineStore, record: Record, config: Config):
    """What the console shows, read the way the checks read it: bounded and
    linear, so no held message can stall this command."""
    from gateway.web.preview import analyse

    raw = store.raw(record.id)
    return None if raw is None else analyse(bytes(raw), config.limits)


TEXT_LINES = 40


def print_contents(preview, whole_text: bool = False) -> None:
    """The decoded text, attachments and URLs, every line escaped."""
    if preview.attachments:
        print("attachments (not opened):")
        for a in preview.attachments:
            warning = "  (declared type differs!)" if a.mismatch else ""
            print(printable(f"  {a.name}  {a.declared}, looks like {a.detected}, "
                            f"{a.size} bytes, sha256 {a.sha256[:16]}…{warning}"))
    if preview.urls:
        print(f"URLs ({len(preview.urls)}):")
        for url in preview.urls:
            print(printable(f"  {url}"))
    lines = preview.text.splitlines()
    if lines:
        print("text:" + ("  (words of the HTML part; there is no text part)"
                         if preview.text_from_html else ""))
        shown = lines if whole_text else lines[:TEXT_LINES]
        for line in shown:
            print(printable(f"  {line}"))
        if len(lines) > len(shown):
            print(f"  … {len(lines) - len(shown)} more lines (--text prints them all)")


def print_record(r: Record) -> None:
    # Every line goes through printable(): headers, envelope, client names,
    # evidence and history details come from the sender, and one of them
    # must not be able to clear the screen or fake a "state:" line.
    def line(text: str) -> None:
        print(printable(text))

    line(f"id:          {r.id}   (queue id {r.queue_id or '-'}, node {r.node})")
    line(f"state:       {r.state}   action: {r.action}   held: {r.created:%Y-%m-%d %H:%M:%S %Z}")
    line(f"verdict:     {r.action} at score {r.score:g}: {r.verdict_line()}")
    if r.failed_checks:
        line(f"not run:     {', '.join(r.failed_checks)}")
    line(f"envelope:    MAIL FROM:<{r.sender}>  RCPT TO: {', '.join(r.recipients)}")
    line(f"client:      {r.client_name or '-'} [{r.client_ip or '-'}]  HELO {r.helo or '-'}")
    for label, value in (("From", r.header_from), ("To", r.header_to),
                         ("Subject", r.subject), ("Date", r.header_date),
                         ("Message-ID", r.message_id)):
        line(f"{label + ':':<13}{value or '-'}")
    line(f"size:        {r.size} bytes, sha256 {r.sha256[:16]}…")
    if r.released_to:
        held = [a for a in r.recipients if a not in r.released_to]
        line(f"released to: {', '.join(r.released_to)}"
             + (f"   (still held for {', '.join(held)})" if held else ""))
    line("symbols:")
    for s in sorted(r.symbols, key=lambda s: -abs(s["score"])):
        evidence = f" ({s['evidence']})" if s["evidence"] else ""
        line(f"  {s['name']:<22} {s['score']:>7.2f}  {s['description']}{evidence}")
    line("history:")
    for e in r.events:
        detail = f": {e.detail}" if e.detail else ""
        why = f" (reason: {e.reason})" if e.reason else ""
        line(f"  {e.time:%Y-%m-%d %H:%M:%S}  {e.action} by {e.actor}{detail}{why}")


def release_main(args: argparse.Namespace) -> int:
    config = config_from(args)
    store = open_store(config)
    rules = load_rules(config.policy.rules)
    status = told = 0
    for identifier in _unique(args.ids):
        try:
            record = _get(store, identifier)
            done = release(store, record.id, config.release.smtp, actor(), force=args.force,
                           timeout=config.release.timeout, to=args.to, reason=args.reason,
                           release_rules=rules.release, server_id=config.auth.server_id())
        except (UsageError, ReleaseError) as exc:
            if len(args.ids) == 1:
                raise UsageError(f"release: {exc}") from None
            print(printable(f"gateway: release: {exc}"), file=sys.stderr)
            status = 1
            continue
        queued = f" (queued as {done.queue_id})" if done.queue_id else ""
        refused = f"; refused: {', '.join(done.refused)}" if done.refused else ""
        approved = "".join(f"; approves request #{r.id} from {r.requester}"
                           for r in done.settled)
        print(printable(f"{record.id}: released to {', '.join(done.accepted)}{queued}{refused}"
                        f"{approved}"))
        told += len(done.settled)
    if told:
        _tell_requesters(store, config)
    return status


def requests_main(args: argparse.Namespace) -> int:
    from gateway.quarantine import requests

    store = open_store(config_from(args))
    found = requests.listing(store, None if args.state == "all" else args.state)
    if args.json:
        print(dumps([r.as_dict() for r in found], indent=2))
        return 0
    if not found:
        print(f"no {'' if args.state == 'all' else args.state + ' '}release requests")
    for r in found:
        why = f" \"{r.reason}\"" if r.reason else ""
        decided = "" if r.state == "pending" else \
            f" -- {r.state} by {r.decider}" + (f": {r.decision_reason}" if r.decision_reason
                                               else "")
        print(printable(f"#{r.id}  {r.created:%Y-%m-%d %H:%M}  {r.message}  by {r.requester} "
                        f"({r.source}) to {', '.join(r.recipients)}; an {r.approver} approves"
                        f"{why}{decided}"))
    if args.state == "pending" and found:
        print("approve with gateway quarantine release ID [--to ...]; refuse with "
              "gateway quarantine refuse N --reason ...")
    return 0


def refuse_main(args: argparse.Namespace) -> int:
    from gateway.quarantine import requests

    config = config_from(args)
    store = open_store(config)
    status = 0
    for number in dict.fromkeys(args.numbers):
        try:
            item = requests.refuse(store, number, actor(), args.reason)
        except requests.RequestError as exc:
            print(printable(f"gateway: refuse: {exc}"), file=sys.stderr)
            status = 1
            continue
        print(printable(f"request #{item.id} refused ({item.message}, from {item.requester})"))
    _tell_requesters(store, config)
    return status


def _tell_requesters(store: QuarantineStore, config: Config) -> None:
    """Mail recipients whose requests were decided (console users see it there)."""
    from gateway.web.notices import tell_by_mail

    tell_by_mail(store, config)


def delete_main(args: argparse.Namespace) -> int:
    store = open_store(config_from(args))
    status = 0
    for identifier in _unique(args.ids):
        try:
            record = _get(store, identifier)
            if record.state == "deleted":
                raise UsageError(f"{record.id}: already deleted")
        except UsageError as exc:
            if len(args.ids) == 1:
                raise
            print(printable(f"gateway: delete: {exc}"), file=sys.stderr)
            status = 1
            continue
        store.change_state(record.id, "deleted", actor(), "deleted", "", drop_body=True,
                           reason=args.reason)
        print(f"{record.id}: deleted (the record stays for the audit trail)")
    return status


def _unique(ids: list[str]) -> list[str]:
    return list(dict.fromkeys(ids))


def purge_main(args: argparse.Namespace) -> int:
    config = config_from(args)
    store = open_store(config)
    counts = store.purge(config.quarantine.retention_days(), config.quarantine.keep_rejected_days)
    print(f"purged: {counts['expired']} expired, {counts['removed']} records removed")
    return 0


def _get(store: QuarantineStore, identifier: str) -> Record:
    try:
        return store.get(identifier, prefix=True)
    except QuarantineError as exc:
        raise UsageError(str(exc)) from None

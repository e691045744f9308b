"""``gateway list``: the managed allow and block lists in the store's database.

    gateway list add KIND VALUE [--reason R] [--reply TEXT] [--expires 30d] [--owner NAME]
                                [--for RCPT] [--force]
    gateway list remove KIND VALUE [--for RCPT]   |   gateway list remove --id N
    gateway list show [KIND] [--all] [--json]
    gateway list expire [--dry-run]

KIND is allow-sender, block-sender, allow-ip or block-ip; a sender is
``user@example.org``, ``@example.org`` (exactly that domain) or
``example.org`` (and its subdomains), never a wildcard, and a public
suffix (``test``, ``co.uk``) only with ``--force``; an IP is an address or
a network.
``--for`` makes an entry count for one recipient's (or one recipient
domain's) mail only. The owner and ``--reason`` are the site's own: a
sender the entry rejects is told ``--reply`` (or the symbol's description),
never those. The milter's workers read the entries again every
``[lists] refresh`` seconds (5): no reload. Entries in gateway.toml's
``[lists]`` apply as well; they are not shown here.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from datetime import UTC, datetime

from gateway.commands.common import UsageError, config_from, setup_logging
from gateway.quarantine.lists import (
    LIST_KINDS,
    ListEntry,
    PublicSuffixEntry,
    normalize_reply,
    parse_expiry,
)
from gateway.terminal import printable


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(title="list commands", metavar="COMMAND")

    def command(name: str, handler, help_text: str) -> argparse.ArgumentParser:
        found = sub.add_parser(name, help=help_text, description=help_text)
        found.add_argument("--config", default=argparse.SUPPRESS,
                           help="config file (overrides the global --config)")
        found.set_defaults(handler=handler)
        return found

    add = command("add", add_main, "add an entry (or renew the same one)")
    add.add_argument("kind", choices=LIST_KINDS)
    add.add_argument("value", help="user@example.org, @example.org, example.org; or an IP "
                     "address or network")
    add.add_argument("--reason", default="", help="why, for the site: shown with every match "
                     "in logs and the console, never to the sender")
    add.add_argument("--reply", default="", metavar="TEXT",
                     help="what a sender it rejects is told, in the SMTP reply (printable "
                     "ASCII); default: the symbol's description")
    add.add_argument("--expires", help="when it stops applying: 30d, 12h, 2w, or a date "
                     "(2027-01-31); default never")
    add.add_argument("--owner", help="who answers for it (default: you)")
    add.add_argument("--for", dest="scope", default="", metavar="RCPT",
                     help="only for mail to this recipient address or domain")
    add.add_argument("--force", action="store_true",
                     help="add a public suffix (test, co.uk) all the same: every domain "
                     "under it")

    remove = command("remove", remove_main, "remove an entry")
    remove.add_argument("kind", nargs="?", choices=LIST_KINDS)
    remove.add_argument("value", nargs="?")
    remove.add_argument("--for", dest="scope", default="", metavar="RCPT")
    remove.add_argument("--id", type=int, help="the entry's id (gateway list show)")

    show = command("show", show_main, "the entries, with owner, reason, expiry and hits")
    show.add_argument("kind", nargs="?", choices=LIST_KINDS)
    show.add_argument("--all", action="store_true", help="expired entries too")
    show.add_argument("--json", action="store_true")

    expire = command("expire", expire_main, "remove the entries whose expiry has passed")
    expire.add_argument("--dry-run", action="store_true", help="say which, remove nothing")


def _store(args: argparse.Namespace):
    from gateway.commands.quarantine import open_store

    config = config_from(args)
    setup_logging("warning")
    return open_store(config, "the managed lists live in the store's database, and "
                      "[quarantine] url is empty; use [lists] in gateway.toml instead")


def expiry(text: str | None, now: datetime | None = None) -> datetime | None:
    """--expires: ``30d``, ``12h``, a date... (see lists.parse_expiry)."""
    try:
        return parse_expiry(text, now)
    except ValueError as exc:
        raise UsageError(f"--expires {exc}") from None


def add_main(args: argparse.Namespace) -> int:
    until = expiry(args.expires)
    try:
        normalize_reply(args.reply)
    except ValueError as exc:
        raise UsageError(f"--reply: {exc}") from None
    owner = args.owner or os.environ.get("SUDO_USER") or getpass.getuser()
    store = _store(args)
    try:
        entry, new = store.add_list_entry(args.kind, args.value, owner=owner,
                                          reason=args.reason, scope=args.scope, expires=until,
                                          reply=args.reply, force=args.force)
    except PublicSuffixEntry as exc:
        raise UsageError(f"{args.kind}: {exc}; --force adds it all the same") from None
    except ValueError as exc:
        raise UsageError(f"{args.kind}: {exc}") from None
    finally:
        store.close()
    print(printable(f"{'added' if new else 'renewed'} {describe(entry)}"))
    return 0


def remove_main(args: argparse.Namespace) -> int:
    if args.id is None and not (args.kind and args.value):
        raise UsageError("list remove: give KIND VALUE, or --id N")
    store = _store(args)
    try:
        if args.id is not None:
            entry = store.get_list_entry(args.id)
        else:
            try:
                entry = store.find_list_entry(args.kind, args.value, args.scope)
            except ValueError as exc:
                raise UsageError(f"{args.kind}: {exc} (an entry added before such values "
                                 "were refused: gateway list remove --id N)") from None
        if entry is None:
            wanted = f"id {args.id}" if args.id is not None else \
                f"{args.kind} {args.value}" + (f" for {args.scope}" if args.scope else "")
            print(printable(f"gateway: no list entry {wanted}"), file=sys.stderr)
            return 1
        store.remove_list_entry(entry.id)
    finally:
        store.close()
    print(printable(f"removed {describe(entry)}"))
    return 0


def show_main(args: argparse.Namespace) -> int:
    store = _store(args)
    try:
        entries = store.list_entries(args.kind, active_only=not args.all)
    finally:
        store.close()
    if args.json:
        print(json.dumps([e.as_dict() for e in entries], indent=2))
        return 0
    if not entries:
        print("no entries" + ("" if args.all else " in force (--all shows expired ones)"))
        return 0
    for entry in entries:
        print(printable(describe(entry, hits=True)))
    return 0


def expire_main(args: argparse.Namespace) -> int:
    store = _store(args)
    try:
        if args.dry_run:
            gone = [e for e in store.list_entries() if not e.active()]
        else:
            gone = store.expire_list_entries()
    finally:
        store.close()
    for entry in gone:
        print(printable(f"{'would remove' if args.dry_run else 'removed'} {describe(entry)}"))
    print(f"{len(gone)} expired entr{'y' if len(gone) == 1 else 'ies'}"
          f"{' (dry run)' if args.dry_run else ' removed'}")
    return 0


def describe(entry: ListEntry, hits: bool = False) -> str:
    def when(value: datetime) -> str:
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")

    parts = [f"{entry.kind} {entry.value}"]
    if entry.scope:
        parts.append(f"for {entry.scope}")
    parts.append(f"(id {entry.id}, {entry.owner}, {when(entry.created)}")
    if entry.expires is not None:
        parts[-1] += (", expires " if entry.active() else ", expired ") + when(entry.expires)
    if hits:
        parts[-1] += f", {entry.hits} hit{'s' if entry.hits != 1 else ''}"
        if entry.last_hit is not None:
            parts[-1] += f", last {when(entry.last_hit)}"
    parts[-1] += ")"
    if entry.reason:
        parts.append(f"-- {entry.reason}")
    if entry.reply:
        parts.append(f"(replies: {entry.reply})")
    return " ".join(parts)

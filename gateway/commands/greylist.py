"""``gateway greylist``: the greylisting triplets in the store's database.

    gateway greylist show [MATCH] [--pending] [--json]
    gateway greylist pass MATCH       # let matching pending triplets through now
    gateway greylist forget MATCH     # the next attempt is a first attempt again

MATCH is part of a client (``net:203.0.113.0/24``, ``spf:example.org``), a
sender, a recipient or a client IP. Every node reads the same rows: a
triplet passed here passes on every node at once.
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime

from gateway.commands.common import UsageError, config_from, setup_logging
from gateway.greylist import Entry, GreylistStore
from gateway.terminal import printable


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(title="greylist commands", metavar="COMMAND")

    def command(name: str, handler, help_text: str) -> argparse.ArgumentParser:
        found = sub.add_parser(name, help=help_text, description=help_text)
        found.add_argument("--config", default=argparse.SUPPRESS,
                           help="config file (overrides the global --config)")
        found.set_defaults(handler=handler)
        return found

    show = command("show", show_main, "the triplets: pending ones and those let through")
    show.add_argument("match", nargs="?", default="",
                      help="part of a client, sender, recipient or IP")
    show.add_argument("--pending", action="store_true", help="only those waiting for a retry")
    show.add_argument("--json", action="store_true")
    passing = command("pass", pass_main, "let the matching pending triplets through now, "
                      "without waiting for the delay")
    passing.add_argument("match", help="part of a client, sender, recipient or IP")
    forget = command("forget", forget_main, "remove the matching triplets")
    forget.add_argument("match", help="part of a client, sender, recipient or IP")


def _greylist(args: argparse.Namespace) -> GreylistStore:
    from gateway.commands.quarantine import open_store

    config = config_from(args)
    setup_logging("warning")
    store = open_store(config, "greylisting keeps its triplets in the store's database, "
                       "and [quarantine] url is empty")
    return GreylistStore(store.engine, config.greylist, store.node)


def show_main(args: argparse.Namespace) -> int:
    entries = _greylist(args).entries(pending_only=args.pending, match=args.match)
    if args.json:
        print(json.dumps([e.as_dict() for e in entries], indent=2))
        return 0
    if not entries:
        print("no triplets" + (" pending" if args.pending else ""))
        return 0
    for entry in entries:
        print(printable(describe(entry)))
    return 0


def pass_main(args: argparse.Namespace) -> int:
    if not args.match.strip():
        raise UsageError("greylist pass: say which triplets (part of a client, sender, "
                         "recipient or IP)")
    passed = _greylist(args).pass_matching(args.match.strip())
    for entry in passed:
        print(printable(f"passed {entry.client} {entry.sender or '<>'} -> {entry.recipient}"))
    print(f"{len(passed)} pending triplet{'s' if len(passed) != 1 else ''} passed")
    return 0 if passed else 1


def forget_main(args: argparse.Namespace) -> int:
    if not args.match.strip():
        raise UsageError("greylist forget: say which triplets")
    removed = _greylist(args).forget(args.match.strip())
    print(f"{removed} triplet{'s' if removed != 1 else ''} forgotten")
    return 0 if removed else 1


def describe(entry: Entry) -> str:
    def when(value: datetime) -> str:
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")

    state = "pending" if entry.pending else f"passed {when(entry.passed)}" \
        if entry.passed else "passed"
    return (f"{state:<32} {entry.client} {entry.sender or '<>'} -> {entry.recipient} "
            f"(first {when(entry.first_seen)}, {entry.attempts} attempt"
            f"{'s' if entry.attempts != 1 else ''}, {entry.messages} let through, last from "
            f"{entry.client_ip or '-'}, {entry.reason or 'score band'}, until "
            f"{when(entry.expires)})")

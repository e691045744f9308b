"""``gateway correspondents``: the correspondent memory, one person at a time.

    gateway correspondents show ADDRESS [--json]
    gateway correspondents forget ADDRESS

``show`` lists every row about the address, as a sender writing to us or
as our user: counts, first and last time, display names, and whether the
identity check takes the sender for a known correspondent. ``forget``
erases them (a person's request to be forgotten; the rows come back only
with new mail). Rows not seen for ``[identity] retention_days`` go by
themselves.
"""

from __future__ import annotations

import argparse
import json

from gateway.commands.common import UsageError, config_from, setup_logging
from gateway.correspondents import Memory, memory_url
from gateway.terminal import printable


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(title="correspondents commands", metavar="COMMAND")
    show = sub.add_parser("show", help="every row about an address, as sender or recipient",
                          description="every row about an address, as sender or recipient")
    show.add_argument("address")
    show.add_argument("--json", action="store_true", help="one JSON list")
    show.add_argument("--config", default=argparse.SUPPRESS)
    show.set_defaults(handler=show_main)
    forget = sub.add_parser("forget", help="erase every row about an address",
                            description="erase every row about an address")
    forget.add_argument("address")
    forget.add_argument("--config", default=argparse.SUPPRESS)
    forget.set_defaults(handler=forget_main)


def _memory(args: argparse.Namespace) -> tuple[Memory, object]:
    from gateway.commands.quarantine import open_store

    config = config_from(args)
    setup_logging("warning")
    if "@" not in args.address:
        raise UsageError(f"{args.address!r} is not an address (user@example.org)")
    url = memory_url(config.quarantine.url)
    if url is None:
        raise UsageError("the correspondent memory lives in the store's database, and "
                         "[quarantine] url is empty")
    store = open_store(config, "")  # creates or migrates the schema, like every command
    return Memory(store.engine), config


def show_main(args: argparse.Namespace) -> int:
    memory, config = _memory(args)
    entries = memory.show(args.address)
    settings = config.identity  # type: ignore[attr-defined]
    if args.json:
        print(json.dumps([{**e.as_dict(), "known": e.known(settings)} for e in entries],
                         indent=2))
        return 0
    if not entries:
        print(printable(f"nothing remembered about {args.address}"))
        return 0
    for entry in entries:
        known = "known" if entry.known(settings) else "not known yet"
        names = f"; names: {', '.join(entry.names)}" if entry.names else ""
        print(printable(f"{entry.describe()} (via {entry.via}; {known}){names}"))
    return 0


def forget_main(args: argparse.Namespace) -> int:
    memory, _config = _memory(args)
    removed = memory.forget(args.address)
    print(printable(f"forgot {args.address}: {removed} row(s) removed"))
    return 0

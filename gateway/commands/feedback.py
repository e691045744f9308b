"""``gateway feedback``: the reviewed feedback queue, from the command line.

Labels that analysts (in the console) and recipients (from their digest)
give wait in the queue; an admin accepts each into the learned training set
(``gateway train --feedback`` trains on it) or rejects it. Autolearn
candidates ([classifier] autolearn) wait there too; ``accept --autolearn``
takes every one whose delay has passed and that nobody objected to.
"""

from __future__ import annotations

import argparse
import sys

from gateway.audit import actor
from gateway.commands.common import UsageError, config_from
from gateway.commands.user import open_console
from gateway.terminal import dumps, printable


def add_arguments(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(title="feedback commands", metavar="COMMAND")
    listing = commands.add_parser("list", help="labels in the queue")
    listing.add_argument("--state", choices=("pending", "accepted", "rejected", "all"),
                         default="pending")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(handler=list_main)
    accept = commands.add_parser("accept", help="accept labels into the learned training set")
    reject = commands.add_parser("reject", help="reject labels")
    for sub, handler in ((accept, accept_main), (reject, reject_main)):
        sub.add_argument("ids", nargs="*" if sub is accept else "+", type=int, metavar="N",
                         help="label numbers")
        sub.add_argument("--note", default="", help="why, for the record")
        sub.set_defaults(handler=handler)
    accept.add_argument("--autolearn", action="store_true",
                        help="every autolearn candidate whose delay has passed, unless "
                             "someone objected to it")
    for sub in (listing, accept, reject):
        sub.add_argument("--config", default=argparse.SUPPRESS)


def list_main(args: argparse.Namespace) -> int:
    console = open_console(config_from(args))
    items = console.labels(None if args.state == "all" else args.state)
    if args.json:
        print(dumps([i.as_dict() for i in items], indent=2))
        return 0
    if not items:
        print(f"no {args.state if args.state != 'all' else ''} labels".replace("  ", " "))
    for i in items:
        review = "" if i.state == "pending" else f"  [{i.state} by {i.reviewer}]"
        print(printable(f"#{i.id:<5} {i.label:<4}  by {i.who} ({i.source})  {i.message}  "
                        f"{(i.subject or '')[:50]!r}{review}"
                        + (f"  note: {i.note}" if i.note else "")))
    return 0


def _review(args: argparse.Namespace, accept: bool) -> int:
    from gateway.classifier.autolearn import accept_candidates
    from gateway.web.console import ConsoleError

    config = config_from(args)
    training_set = config.classifier.training_set_url(config.quarantine.url)
    if accept and getattr(args, "autolearn", False):
        if args.ids:
            raise UsageError("feedback: give label numbers or --autolearn, not both")
        print(f"autolearn candidates: "
              f"{accept_candidates(config.quarantine.url, training_set, actor()).describe()}")
        return 0
    if not args.ids:
        raise UsageError("feedback: give label numbers (or --autolearn)")
    console = open_console(config)
    who = actor()
    status = 0
    for number in dict.fromkeys(args.ids):
        try:
            outcome = console.review(number, accept, who, args.note, training_set)
        except ConsoleError as exc:
            if len(args.ids) == 1:
                raise UsageError(f"feedback: {exc}") from None
            print(printable(f"gateway: feedback: {exc}"), file=sys.stderr)
            status = 1
            continue
        console.log(who, "label-accept" if accept else "label-reject", f"feedback #{number}",
                    args.note)
        print(printable(f"#{number}: {outcome}"))
    return status


def accept_main(args: argparse.Namespace) -> int:
    return _review(args, True)


def reject_main(args: argparse.Namespace) -> int:
    return _review(args, False)

"""``gateway ratelimit show``: the configured limits and their buckets.

    gateway ratelimit show [NAME] [--json]

One line per ``[[ratelimit]]`` table (its key, rate, burst and action), then
its busiest buckets from the store's database: tokens left now, tokens
taken and messages refused, whichever node counted them. This node's own
counts since it started are on /metrics (``gateway_ratelimit_total``).
"""

from __future__ import annotations

import argparse
import json
import math
from datetime import UTC, datetime
from typing import Any

from gateway.commands.common import UsageError, config_from, setup_logging
from gateway.ratelimit import BucketStore, Limit
from gateway.terminal import printable

SHOWN = 20


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(title="ratelimit commands", metavar="COMMAND")
    show = sub.add_parser("show", help="the limits and their busiest buckets",
                          description="the limits and their busiest buckets")
    show.add_argument("--config", default=argparse.SUPPRESS,
                      help="config file (overrides the global --config)")
    show.add_argument("name", nargs="?", default="", help="one limit only")
    show.add_argument("--json", action="store_true")
    show.set_defaults(handler=show_main)


def show_main(args: argparse.Namespace) -> int:
    from gateway.commands.quarantine import open_store

    config = config_from(args)
    limits = [Limit.of(section) for section in config.ratelimit]
    if args.name:
        limits = [limit for limit in limits if limit.name == args.name]
        if not limits:
            known = ", ".join(s.name for s in config.ratelimit) or "none configured"
            raise UsageError(f"ratelimit show: no limit {args.name!r} ({known})")
    if not limits:
        print("no [[ratelimit]] tables in the configuration")
        return 0
    setup_logging("warning")
    store = open_store(config, "rate limits keep their buckets in the store's database, "
                       "and [quarantine] url is empty")
    buckets = BucketStore(store.engine)
    now = datetime.now(UTC)
    report: list[dict[str, Any]] = []
    for limit in limits:
        rows = [_bucket(limit, row, now) for row in buckets.rows(limit.name, SHOWN)]
        report.append({"name": limit.name, "key": limit.key, "rate": limit.rate_text,
                       "burst": limit.burst, "action": limit.action, "buckets": rows})
    store.close()
    if args.json:
        print(json.dumps(report, indent=2, default=str))
        return 0
    for entry in report:
        print(printable(f"{entry['name']}: {entry['key']} at most {entry['rate']}, burst "
                        f"{entry['burst']:g}, then {entry['action']}"))
        if not entry["buckets"]:
            print("  no buckets yet")
        for row in entry["buckets"]:
            print(printable(f"  {row['key']:<40} {row['tokens']:>6} left  "
                            f"{row['taken']:>6} taken  {row['refused']:>6} refused"
                            + (f"  last refused {row['last_refused']}"
                               if row["last_refused"] else "")))
    return 0


def _bucket(limit: Limit, row: dict[str, Any], now: datetime) -> dict[str, Any]:
    updated = row["updated"] if row["updated"].tzinfo else row["updated"].replace(tzinfo=UTC)
    tokens = min(limit.burst, row["level"] + max(0.0, (now - updated).total_seconds())
                 * limit.per_second)
    last = row["last_refused"]
    return {"key": row["key"], "tokens": math.floor(tokens), "taken": row["taken"],
            "refused": row["refused"],
            "last_refused": last.strftime("%Y-%m-%d %H:%M:%S") if last else None}

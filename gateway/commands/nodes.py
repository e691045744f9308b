"""``gateway nodes``: the gateway nodes sharing this store's database, with
their version, model and last heartbeat (stale ones marked), and the
once-only jobs: who runs one now, who did the last period.

``gateway nodes forget NAME`` removes a node taken out of service for good
(a node that comes back registers itself again)."""

from __future__ import annotations

import argparse
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from gateway.commands.common import UsageError, config_from
from gateway.terminal import dumps, printable


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="the nodes and jobs as JSON")
    parser.set_defaults(handler=main)
    commands = parser.add_subparsers(title="nodes commands", metavar="COMMAND")
    forget = commands.add_parser("forget", help="remove a node that is gone for good")
    forget.add_argument("name")
    forget.add_argument("--config", default=argparse.SUPPRESS)
    forget.set_defaults(handler=forget_main)


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.1f}h ago"


def fleet_report(config) -> dict[str, Any]:
    """The nodes and the jobs, as ``gateway nodes --json`` prints them."""
    from gateway.commands.quarantine import open_store
    from gateway.jobs import Jobs
    from gateway.nodes import fleet

    store = open_store(config)
    try:
        with store.engine.connect() as connection:
            found = fleet(connection)
        jobs = Jobs(store.engine, store.node)
        last: dict[str, dict[str, Any]] = {}
        for run in jobs.runs(limit=200):
            last.setdefault(run["job"], run)
        running = jobs.running()
    except SQLAlchemyError as exc:
        from gateway.db import first_line

        raise UsageError(f"nodes: cannot read the registry: {first_line(exc)}") from None
    finally:
        store.close()
    return {
        "nodes": [n.as_dict() for n in found],
        "jobs": [{"job": name, "last_period": run["period"], "last_node": run["node"],
                  "finished": run["finished"].isoformat(timespec="seconds"),
                  "result": run["result"]} for name, run in sorted(last.items())],
        "running": [{"job": r["job"], "node": r["node"],
                     "since": r["started"].isoformat(timespec="seconds")} for r in running],
    }


def main(args: argparse.Namespace) -> int:
    report = fleet_report(config_from(args))
    if args.json:
        print(dumps(report, indent=2))
        return 0
    nodes = report["nodes"]
    if not nodes:
        print("no node has registered: is a gateway (gateway run) using this database?")
    else:
        rows = [("NODE", "HOST", "VERSION", "SCHEMA", "MODEL", "HEARTBEAT", "STATE")]
        for node in nodes:
            state = ("stopped" if node["stopped"] else
                     "STALE (no heartbeat)" if node["stale"] else "ok")
            rows.append((node["name"], node["host"], node["version"], node["schema"],
                         node["model"], _age(node["age_seconds"]), state))
        widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]) - 1)]
        for row in rows:
            print(printable("  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=False))
                            + "  " + row[-1]))
    for job in report["jobs"]:
        print(printable(f"job {job['job']}: last period {job['last_period']} done by "
                        f"{job['last_node']} at {job['finished']}"))
    for job in report["running"]:
        print(printable(f"job {job['job']}: running on {job['node']} since {job['since']}"))
    stale = [n["name"] for n in nodes if n["stale"]]
    return 1 if stale else 0


def forget_main(args: argparse.Namespace) -> int:
    from gateway.commands.quarantine import open_store
    from gateway.nodes import forget

    store = open_store(config_from(args))
    try:
        with store.engine.begin() as connection:
            gone = forget(connection, args.name)
    finally:
        store.close()
    if not gone:
        raise UsageError(f"nodes forget: no node named {args.name!r}")
    print(printable(f"node {args.name} removed from the registry"))
    return 0

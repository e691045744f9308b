"""``gateway trace ID``: what did the gateway do with this message?

The first question when a user says "my mail never arrived". ``ID`` is a
Postfix queue id (the ``ref`` in a reject reply, the id in Postfix's log),
a Message-ID (with or without ``<>``) or a quarantine id. The answer comes
from two places:

- the store: a held or kept-rejected message, its verdict, symbols and
  history (released by whom, when, to whom), or a copy kept for replay;
- the logs: the one JSON line the gateway writes per message (verdict,
  symbols, timings, quarantine id) and any failure line with the queue id,
  read from ``--log FILE`` (plain or .gz) or else from the journal
  (``journalctl -o cat -t gateway``). Lines that are not a JSON object with
  a ``queue_id`` are passed over (a text prefix before the object is
  allowed).
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import subprocess
import sys
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any

from gateway.commands.common import config_from
from gateway.commands.quarantine import when
from gateway.quarantine.store import QuarantineError, QuarantineStore, Record
from gateway.terminal import dumps, printable

JOURNAL = ["journalctl", "-o", "cat", "-t", "gateway", "--no-pager"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("id", metavar="QUEUE_ID_OR_MESSAGE_ID",
                        help="Postfix queue id, Message-ID or quarantine id")
    parser.add_argument("--log", action="append", default=[], metavar="FILE",
                        help="read the gateway's log lines from FILE (plain or .gz; "
                             "repeatable) instead of the journal")
    parser.add_argument("--since", type=when,
                        help="search the journal from then on (ISO date/time, or an age "
                             "such as 2d)")
    parser.add_argument("--json", action="store_true")


def main(args: argparse.Namespace) -> int:
    config = config_from(args)
    wanted = args.id.strip()
    notes: list[str] = []
    records: list[Record] = []
    samples: list[dict[str, Any]] = []
    if config.quarantine.url:
        try:
            store = QuarantineStore(config.quarantine.url, config.quarantine.node or None)
        except QuarantineError as exc:
            notes.append(f"store not searched: {exc}")
        else:
            try:
                records = store.find(wanted)
                samples = store.find_samples(wanted)
            finally:
                store.close()
    else:
        notes.append("store not searched: quarantine.url is empty")
    # A Message-ID found in the store gives the queue ids to look for in the logs.
    ids = {wanted} | {r.queue_id for r in records if r.queue_id} \
        | {s["queue_id"] for s in samples if s["queue_id"]}
    lines, source = _log_lines(args.log, args.since, notes)
    events = list(matching(lines, ids, wanted))
    ids |= {e["queue_id"] for e in events if e.get("queue_id")}
    if not (records or samples or events):
        for note in notes:
            print(printable(f"gateway: trace: {note}"), file=sys.stderr)
        print(printable(f"gateway: trace: no trace of {wanted} in the store or in {source}"),
              file=sys.stderr)
        return 1
    if args.json:
        print(dumps({"id": wanted, "queue_ids": sorted(ids - {wanted} | {
                         e["queue_id"] for e in events if e.get("queue_id")}),
                     "log": events, "store": [r.as_dict() for r in records],
                     "replay_samples": samples, "log_source": source, "notes": notes},
                    indent=2))
        return 0
    for event in events:
        print_event(event)
    for record in records:
        print_record(record)
    for sample in samples:
        print(printable(f"replay  kept a copy of accepted mail {sample['id']} at "
                        f"{sample['created']} (score {sample['score']:g}) for gateway replay"))
    if not events:
        print(printable(f"log     no line about {wanted} in {source}"))
    for note in notes:
        print(printable(f"note    {note}"))
    return 0


# -- the logs ------------------------------------------------------------------------------


def _log_lines(files: list[str], since: datetime | None,
               notes: list[str]) -> tuple[Iterable[str], str]:
    if files:
        return _read_files(files, notes), ", ".join(files)
    if shutil.which(JOURNAL[0]) is None:
        notes.append("logs not searched: no journalctl here; give the log file with --log")
        return [], "no logs"
    command = list(JOURNAL)
    if since is not None:
        command += ["--since", since.astimezone().strftime("%Y-%m-%d %H:%M:%S")]
    return _journal(command, notes), "the journal (journalctl -t gateway)"


def _read_files(files: list[str], notes: list[str]) -> Iterator[str]:
    for name in files:
        opener = gzip.open if name.endswith(".gz") else open
        try:
            with opener(name, "rt", encoding="utf-8", errors="replace") as stream:
                yield from stream
        except OSError as exc:
            notes.append(f"{name}: cannot read: {exc.strerror or exc}")


def _journal(command: list[str], notes: list[str]) -> Iterator[str]:
    try:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True, errors="replace")
    except OSError as exc:
        notes.append(f"journalctl: {exc.strerror or exc}")
        return
    assert process.stdout is not None and process.stderr is not None
    try:
        yield from process.stdout
    finally:
        process.stdout.close()
        error = process.stderr.read().strip()
        process.stderr.close()
        if process.wait() != 0 and error:
            notes.append(f"journalctl: {error.splitlines()[-1]}")


def parse_line(line: str) -> dict[str, Any] | None:
    """The JSON object of a log line that has a ``queue_id``, else None. A
    text prefix before the object (time, level, logger) is allowed."""
    start = line.find("{")
    if start < 0 or '"queue_id"' not in line:
        return None
    try:
        record = json.loads(line[start:])
    except ValueError:
        return None
    if isinstance(record, dict) and "queue_id" in record:
        return record
    return None


def matching(lines: Iterable[str], ids: set[str], wanted: str) -> Iterator[dict[str, Any]]:
    bare = wanted.strip("<>")
    message_ids = {bare, f"<{bare}>"}
    needles = [*ids, bare]
    for line in lines:
        if not any(needle in line for needle in needles):
            continue  # cheap: most lines are about other messages
        record = parse_line(line)
        if record is None:
            continue
        if (record.get("queue_id") in ids or record.get("message_id") in message_ids
                or record.get("quarantine_id") == wanted):
            yield record


# -- printing ------------------------------------------------------------------------------


def print_event(event: dict[str, Any]) -> None:
    when_ = event.get("time") or event.get("ts") or event.get("timestamp") or ""
    head = f"log     {event.get('queue_id') or '-'}"
    if when_:
        head += f"  {when_}"
    if "action" not in event:  # a failure or other line about the message
        detail = event.get("message") or event.get("msg") or event.get("error") or \
            ", ".join(f"{k}={v}" for k, v in event.items() if k != "queue_id")
        print(printable(f"{head}  {event.get('level', '')} {detail}".rstrip()))
        return
    score = event.get("score")
    print(printable(f"{head}  {str(event['action']).upper()}"
                    + (f", score {score:g}" if isinstance(score, int | float) else "")
                    + (f" ({event['reason']})" if event.get("reason") else "")))
    rcpt = event.get("rcpt") or []
    envelope = f"from <{event.get('from') or ''}>"
    if event.get("client_ip"):
        envelope += f" [{event['client_ip']}]"
    if event.get("helo"):
        envelope += f" helo {event['helo']}"
    envelope += f" to {', '.join(rcpt) or '-'}"
    if event.get("size") is not None:
        envelope += f", {event['size']} bytes"
    print(printable(f"        {envelope}"))
    symbols = event.get("symbols") or {}
    if symbols:
        shown = ", ".join(f"{name} {score:g}" if isinstance(score, int | float) else str(name)
                          for name, score in symbols.items())
        print(printable(f"        symbols  {shown}"))
    if event.get("failed_checks"):
        print(printable(f"        failed   {', '.join(event['failed_checks'])}"))
    timings = event.get("check_ms") or {}
    total = event.get("total_ms")
    if timings or total is not None:
        slowest = sorted(timings.items(), key=lambda kv: -(kv[1] or 0))
        parts = ", ".join(f"{name} {ms:g}" for name, ms in slowest)
        print(printable(f"        timings  total {total} ms" + (f"; {parts}" if parts else "")))
    for key in ("quarantine_id", "held_by", "quarantine_error"):
        if event.get(key):
            print(printable(f"        {key.replace('_', ' ')}  {event[key]}"))


def print_record(record: Record) -> None:
    kind = "held" if record.action == "quarantine" else "kept copy of rejected mail"
    print(printable(f"store   {record.id}  {kind}, now {record.state}; queue id "
                    f"{record.queue_id or '-'}, node {record.node}"))
    print(printable(f"        {record.created:%Y-%m-%d %H:%M:%S} from <{record.sender}> "
                    f"[{record.client_ip or '-'}] to {', '.join(record.recipients) or '-'}; "
                    f"Message-ID {record.message_id or '-'}; \"{record.subject or ''}\""))
    print(printable(f"        score {record.score:g} (required {record.required:g}): "
                    f"{record.reason}"))
    if record.symbols:
        print(printable("        symbols  " + ", ".join(
            f"{s['name']} {s['score']:g}" for s in record.symbols)))
    for event in record.events:
        detail = f": {event.detail}" if event.detail else ""
        print(printable(f"        {event.time:%Y-%m-%d %H:%M:%S}  {event.actor} "
                        f"{event.action}{detail}"))

"""``gateway learn``: add labelled mail to the learned training set.

Like ``sa-learn``: ``gateway learn --spam PATH...`` or ``--ham PATH...``
(Maildir folders, mbox files, .eml files or folders of them), or
``--quarantine ID...`` for held messages. The labels go to the store's
database, where ``gateway train --feedback`` reads them (and the console's
accepted feedback joins them); the model in use does not change until a
model trained with them is promoted.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gateway.audit import actor
from gateway.classifier.corpus import CorpusError, read_corpus
from gateway.classifier.trainingset import TrainingSet, TrainingSetError
from gateway.commands.common import UsageError, config_from
from gateway.mime import parse_bytes
from gateway.quarantine.store import QuarantineError, QuarantineStore
from gateway.terminal import dumps, printable


def add_arguments(parser: argparse.ArgumentParser) -> None:
    label = parser.add_mutually_exclusive_group()
    label.add_argument("--spam", dest="label", action="store_const", const="spam",
                       help="the mail given is spam")
    label.add_argument("--ham", dest="label", action="store_const", const="ham",
                       help="the mail given is good mail")
    parser.add_argument("paths", nargs="*", metavar="PATH",
                        help="Maildir folders, mbox files, .eml files or folders of them")
    parser.add_argument("--quarantine", nargs="+", default=[], metavar="ID",
                        help="quarantined messages, by id or queue id")
    parser.add_argument("--note", default="", help="why, for the record")
    parser.add_argument("--list", action="store_true",
                        help="show the learned set: counts and the latest messages")
    parser.add_argument("--forget", nargs="+", default=[], metavar="KEY",
                        help="remove messages from the learned set (key prefix or row id)")
    parser.add_argument("--json", action="store_true")


def main(args: argparse.Namespace) -> int:
    config = config_from(args)
    url = config.classifier.training_set_url(config.quarantine.url)
    wants_to_learn = bool(args.paths or args.quarantine)
    if wants_to_learn and args.label is None:
        raise UsageError("learn: say what the mail is: --spam or --ham")
    if not (wants_to_learn or args.list or args.forget):
        raise UsageError("learn: give --spam or --ham with PATH... or --quarantine ID..., "
                         "or --list, or --forget KEY...")
    for name in args.paths:  # every path checked before anything is learned
        if not Path(name).exists():
            raise UsageError(f"{name}: no such file or directory")
    try:
        stored = TrainingSet(url)
    except TrainingSetError as exc:
        raise UsageError(f"learn: {exc}") from None
    try:
        status = 0
        if wants_to_learn:
            status = _learn(args, stored, config.quarantine.url)
        for key in args.forget:
            try:
                found = stored.forget(key)
            except TrainingSetError as exc:
                raise UsageError(f"learn: {exc}") from None
            if found:
                print(printable(f"forgot {key}"))
            else:
                print(printable(f"gateway: learn: {key}: not in the learned set"),
                      file=sys.stderr)
                status = 1
        if args.list:
            _list(stored, args.json)
        return status
    finally:
        stored.close()


def _learn(args: argparse.Namespace, stored: TrainingSet, quarantine_url: str) -> int:
    who = actor()
    counts = {"added": 0, "relabelled": 0, "unchanged": 0, "failed": 0}
    status = 0

    def learn_one(raw: bytes, source: str, quarantine_id: str | None = None) -> None:
        nonlocal status
        problem = message_problem(raw)
        if problem:
            print(printable(f"gateway: {source}: not learned, {problem}"), file=sys.stderr)
            counts["failed"] += 1
            status = 1
            return
        try:
            outcome = stored.learn(raw, args.label, source, who, quarantine_id, args.note)
        except TrainingSetError as exc:
            raise UsageError(f"learn: {exc}") from None
        counts[outcome] += 1

    try:
        for sample in read_corpus(args.paths):
            learn_one(sample.raw, str(Path(sample.source).resolve())
                      if "#" not in sample.source else sample.source)
    except CorpusError as exc:
        raise UsageError(str(exc)) from None
    except OSError as exc:
        raise UsageError(f"{exc.filename or 'learn'}: cannot read: {exc.strerror or exc}") \
            from None
    if args.quarantine:
        if not quarantine_url:
            raise UsageError("learn: --quarantine needs a quarantine database ([quarantine] url)")
        try:
            quarantine = QuarantineStore(quarantine_url)
        except QuarantineError as exc:
            raise UsageError(str(exc)) from None
        try:
            for identifier in args.quarantine:
                try:
                    record = quarantine.get(identifier)
                except QuarantineError as exc:
                    print(printable(f"gateway: {exc}"), file=sys.stderr)
                    counts["failed"] += 1
                    status = 1
                    continue
                raw = quarantine.raw(record.id)
                if raw is None:
                    print(printable(f"gateway: {identifier}: the message itself is no longer "
                                    f"kept (state {record.state})"), file=sys.stderr)
                    counts["failed"] += 1
                    status = 1
                    continue
                learn_one(bytes(raw), f"quarantine:{record.id}", record.id)
        finally:
            quarantine.close()
    totals = stored.counts()
    summary = (f"learned as {args.label}: {counts['added']} added, {counts['relabelled']} "
               f"relabelled, {counts['unchanged']} already known"
               + (f", {counts['failed']} not learned" if counts["failed"] else "")
               + f"; the learned set holds {totals['ham']} ham and {totals['spam']} spam")
    if args.json:
        print(dumps({"label": args.label, **counts, "totals": totals}))
    else:
        print(summary)
    return status


def message_problem(raw: bytes) -> str | None:
    """Why these bytes are not a mail message we can learn (None: they are)."""
    if not raw.strip():
        return "the file is empty"
    if b"\0" in raw[:4096]:
        return "not a mail message (binary data)"
    head = parse_bytes(raw.split(b"\n\n", 1)[0].split(b"\r\n\r\n", 1)[0] + b"\n\n")
    if not head.keys():
        return "not a mail message (no header fields)"
    return None


def _list(stored: TrainingSet, as_json: bool) -> None:
    totals = stored.counts()
    entries = stored.entries()
    if as_json:
        print(dumps({"totals": totals, "latest": [e.as_dict() for e in entries]}))
        return
    print(f"learned set: {totals['ham']} ham, {totals['spam']} spam")
    for entry in entries:
        print(printable(f"  {entry.key[:12]}  {entry.label:<4}  "
                        f"{entry.updated.isoformat(timespec='seconds')}  {entry.who}  "
                        f"{entry.source}" + (f"  ({entry.note})" if entry.note else "")))

"""``gateway check``: the milter's pipeline, offline, on message files.

Prints the verdict and a table of symbols with scores and reasons, or with
``--json`` one JSON object per message and line.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from email.utils import parseaddr
from pathlib import Path
from typing import Any

from gateway.commands.common import config_from, setup_logging
from gateway.evaluator import LocalEvaluator
from gateway.message import Envelope, Message
from gateway.terminal import dumps, printable
from gateway.verdict import Verdict


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "paths", nargs="+", metavar="PATH", help="message files (.eml) or directories of them"
    )
    parser.add_argument(
        "--from", dest="mail_from", help="envelope sender (default: the Return-Path header, if any)"
    )
    parser.add_argument(
        "--rcpt", action="append", default=[], help="envelope recipient (repeatable)"
    )
    parser.add_argument("--ip", help="SMTP client IP address")
    parser.add_argument("--helo", help="HELO/EHLO name the client gave")
    parser.add_argument("--json", action="store_true", help="one JSON object per message")


def main(args: argparse.Namespace) -> int:
    config = config_from(args)
    setup_logging("warning")
    evaluator = LocalEvaluator(config)
    status = 0
    existing = []
    for name in args.paths:
        if Path(name).exists():
            existing.append(name)
        else:
            print(printable(f"gateway: {name}: no such file or directory"), file=sys.stderr)
            status = 1
    try:
        for path in message_files(existing):
            try:
                data = path.read_bytes()
            except OSError as exc:
                print(printable(f"gateway: {path}: cannot read message: {exc.strerror or exc}"),
                      file=sys.stderr)
                status = 1
                continue
            message = Message.from_bytes(data, envelope_for(args, data), config.limits)
            verdict = evaluator.evaluate_message(message)
            if args.json:
                print(dumps(verdict_json(str(path), verdict)))
            else:
                print_verdict(str(path), verdict)
    finally:
        evaluator.close()
    return status


def message_files(paths: list[str]) -> Iterator[Path]:
    """Files as given, and the files below directories (hidden ones skipped)."""
    for name in paths:
        path = Path(name)
        if path.is_dir():
            for child in sorted(path.rglob("*")):
                relative = child.relative_to(path).parts
                if child.is_file() and not any(p.startswith(".") for p in relative):
                    yield child
        else:
            yield path


def envelope_for(args: argparse.Namespace, data: bytes) -> Envelope:
    mail_from = args.mail_from
    if mail_from is None:
        mail_from = _return_path(data)
    return Envelope(
        mail_from=mail_from.strip().strip("<>"),
        rcpt_to=tuple(args.rcpt),
        client_ip=args.ip,
        helo=args.helo,
    )


def _return_path(data: bytes) -> str:
    """The address in the first Return-Path header, without parsing the body."""
    head = data.split(b"\n\n", 1)[0].split(b"\r\n\r\n", 1)[0]
    for line in head.splitlines():
        if line[:12].lower() == b"return-path:":
            return parseaddr(line[12:].decode("utf-8", "replace"))[1]
    return ""


def verdict_json(file: str, verdict: Verdict) -> dict[str, Any]:
    record: dict[str, Any] = {"file": file}
    record.update(verdict.as_dict())
    # The classifier's own numbers, unrounded: two messages that print the
    # same 4 decimals are still ordered (the log-odds never saturates).
    bayes = verdict.facts.get("bayes") or {}
    record["spam_probability"] = bayes.get("spam_probability")
    record["log_odds"] = bayes.get("log_odds")
    record["tokens"] = bayes.get("tokens")
    record["authentication_results"] = verdict.authentication_results
    return record


def print_verdict(file: str, verdict: Verdict) -> None:
    # Reasons and evidence quote the message (an invalid Date header, an
    # address): every line goes through printable().
    def line(text: str) -> None:
        print(printable(text))

    line(
        f"{file}: {verdict.action.upper()} (score {verdict.score:g}, "
        f"required {verdict.required:g}; {verdict.reason})"
    )
    if verdict.reply:
        line(f"  SMTP reply: {verdict.reply}")
    if verdict.failed_checks:
        line(f"  failed checks: {', '.join(verdict.failed_checks)}")
    if not verdict.symbols:
        line("  no symbols")
        return
    width = max(len(s.name) for s in verdict.symbols)
    for symbol in sorted(verdict.symbols, key=lambda s: (-abs(s.score), s.name)):
        why = symbol.description + (f" ({symbol.evidence})" if symbol.evidence else "")
        line(f"  {symbol.name:<{width}} {symbol.score:>7.2f}  {why}")

"""``gateway replay``: what would proposed rules or a proposed model change?

Re-scores the mail the store keeps -- held messages, kept copies of
rejected mail, and the sample of accepted mail ``[replay]
keep_accepted_sample`` keeps -- with the offline pipeline, under the
running configuration and under the proposed one, and lists the messages
whose action differs: "3 from accept to quarantine", which ones, and the
symbols that did it.

Both configurations score each message now, on its stored bytes and
envelope, so the difference is the proposal's alone; how a message was
decided when it arrived (DNS answers and signatures change) is shown beside
it, and counted when it no longer matches.

``--rules FILE`` is read after the configured rules files (later files
override, key by key), as if it were appended to ``[policy] rules``;
``--replace-rules`` makes the given files the whole list instead.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from gateway.commands.common import UsageError, config_from, setup_logging
from gateway.commands.quarantine import open_store, when
from gateway.config import Config
from gateway.evaluator import LocalEvaluator
from gateway.message import Message
from gateway.pipeline import check_classes
from gateway.policy import Judge
from gateway.quarantine.store import QuarantineError, StoredMail
from gateway.ruleset import load_rules
from gateway.schema import ConfigError
from gateway.symbolcheck import known_symbols
from gateway.terminal import dumps, printable
from gateway.verdict import Verdict

KINDS = {"quarantine": "held", "reject": "kept reject", "accept": "accepted sample"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rules", action="append", default=[], metavar="FILE",
                        help="proposed rules file, read after the configured ones "
                             "(repeatable)")
    parser.add_argument("--replace-rules", action="store_true",
                        help="the --rules files replace [policy] rules instead")
    parser.add_argument("--model", metavar="DIR", help="proposed spam model folder")
    parser.add_argument("--since", type=when, help="mail kept at or after (ISO date/time, "
                        "or an age such as 7d)")
    parser.add_argument("--kind", action="append", choices=tuple(KINDS),
                        help="only held (quarantine), kept rejected (reject) or accepted "
                             "sample (accept) mail; repeatable (default: all)")
    parser.add_argument("--limit", type=int, default=0,
                        help="look at no more than this many messages (0 = all)")
    parser.add_argument("--json", action="store_true", help="one JSON object for scripts")


@dataclass(frozen=True)
class Outcome:
    item: StoredMail
    current: Verdict
    proposed: Verdict

    @property
    def changed(self) -> bool:
        return self.current.action != self.proposed.action

    @property
    def drifted(self) -> bool:
        """Scored differently now than when it arrived (same rules)."""
        return self.current.action != self.item.action

    def symbol_changes(self) -> list[dict[str, Any]]:
        """The symbols that made the difference: those whose score the
        proposal changes (or that only one side has), else those that carry
        the score, largest first."""
        before = {s.name: s.score for s in self.current.symbols}
        after = {s.name: s.score for s in self.proposed.symbols}
        changed = [{"name": name, "current": before.get(name), "proposed": after.get(name)}
                   for name in dict.fromkeys([*before, *after])
                   if before.get(name) != after.get(name)]
        if changed:
            return changed
        weighty = sorted((s for s in self.proposed.symbols if s.score), key=lambda s: -s.score)
        return [{"name": s.name, "current": s.score, "proposed": s.score} for s in weighty]


def main(args: argparse.Namespace) -> int:
    if not args.rules and not args.model:
        raise UsageError("replay: propose something: --rules FILE and/or --model DIR")
    if args.replace_rules and not args.rules:
        raise UsageError("replay: --replace-rules needs --rules FILE")
    config = config_from(args)
    setup_logging("warning")
    proposed_config = propose(config, args.rules, args.replace_rules, args.model)
    store = open_store(config)
    current = LocalEvaluator(config)
    try:
        proposed = _proposed_scorer(current, proposed_config, bool(args.model))
        outcomes = []
        try:
            kinds = tuple(args.kind or KINDS)
            for item in store.stored_mail(args.since, kinds):
                outcomes.append(score(item, current, proposed, config))
                if args.limit and len(outcomes) >= args.limit:
                    break
        except QuarantineError as exc:
            raise UsageError(str(exc)) from None
    finally:
        current.close()
        store.close()
        if isinstance(proposed, LocalEvaluator):
            proposed.close()
    report = summary(outcomes, proposed_config, args.model)
    if args.json:
        print(dumps(report, indent=2))
    else:
        print_report(report, args.since)
    return 0


def propose(config: Config, rules: list[str], replace_rules: bool,
            model: str | None) -> Config:
    """The running config with the proposed rules and model; every problem
    with them is reported at once."""
    problems = []
    for name in rules:
        if not Path(name).is_file():
            problems.append(f"{name}: no such rules file")
    if model and not Path(model, "model.json").is_file():
        problems.append(f"{model}: not a model folder (no model.json)")
    if problems:
        raise ConfigError(problems)
    paths = [str(Path(r).resolve()) for r in rules]
    if not replace_rules:
        paths = [*config.policy.rules, *paths]
    try:
        load_rules(paths, known_symbols(check_classes(config, [])))
    except ConfigError as exc:
        problems += exc.problems
    if problems:
        raise ConfigError(problems)
    proposed = replace(config, policy=replace(config.policy, rules=paths))
    if model:
        proposed = replace(proposed, classifier=replace(config.classifier,
                                                        model=str(Path(model).resolve())))
    return proposed


def _proposed_scorer(current: LocalEvaluator, config: Config,
                     new_model: bool) -> LocalEvaluator | Judge:
    """With only new rules the checks' findings are the same: one pipeline
    run, judged twice. A new model needs its own pipeline."""
    if new_model:
        return LocalEvaluator(config)
    return Judge(config, current.pipeline.checks, load_rules(config.policy.rules))


def score(item: StoredMail, current: LocalEvaluator, proposed: LocalEvaluator | Judge,
          config: Config) -> Outcome:
    message = Message.from_bytes(item.raw, item.envelope, config.limits)
    if isinstance(proposed, Judge):
        result = current.pipeline.run(message)
        return Outcome(item, current.judge.verdict(result, item.envelope),
                       proposed.verdict(result, item.envelope))
    second = Message.from_bytes(item.raw, item.envelope, config.limits)
    return Outcome(item, current.evaluate_message(message), proposed.evaluate_message(second))


def summary(outcomes: list[Outcome], config: Config, model: str | None) -> dict[str, Any]:
    rules = load_rules(config.policy.rules)
    changed = [o for o in outcomes if o.changed]
    return {
        "messages": len(outcomes),
        "by_kind": dict(Counter(KINDS[o.item.kind] for o in outcomes)),
        "proposed": {"rules": list(config.policy.rules), "quarantine": rules.quarantine,
                     "reject": rules.reject, "model": config.classifier.model if model else None},
        "changes": dict(Counter(f"{o.current.action}->{o.proposed.action}" for o in changed)),
        "drifted": sum(o.drifted for o in outcomes),
        "changed": [_changed(o) for o in changed],
    }


def _changed(outcome: Outcome) -> dict[str, Any]:
    item = outcome.item
    return {
        "id": item.id,
        "kind": KINDS[item.kind],
        "created": item.created.isoformat(timespec="seconds"),
        "queue_id": item.envelope.queue_id,
        "message_id": item.message_id,
        "sender": item.envelope.mail_from,
        "recipients": list(item.envelope.rcpt_to),
        "subject": item.subject,
        "arrived": {"action": item.action, "score": item.score},
        "current": {"action": outcome.current.action, "score": outcome.current.score,
                    "reason": outcome.current.reason},
        "proposed": {"action": outcome.proposed.action, "score": outcome.proposed.score,
                     "reason": outcome.proposed.reason},
        "symbols": outcome.symbol_changes(),
    }


def print_report(report: dict[str, Any], since: datetime | None) -> None:
    kinds = ", ".join(f"{n} {k}" for k, n in report["by_kind"].items()) or "none"
    window = f" since {since:%Y-%m-%d %H:%M}" if since else ""
    print(f"replayed {report['messages']} stored messages{window} ({kinds})")
    proposal = report["proposed"]
    print(printable(f"proposed: rules {' + '.join(Path(r).name for r in proposal['rules'])} "
                    f"(quarantine {proposal['quarantine']:g}, reject {proposal['reject']:g})"
                    + (f", model {proposal['model']}" if proposal["model"] else "")))
    if not report["changed"]:
        print("no message would be decided differently")
    else:
        total = len(report["changed"])
        print(f"{total} message{'s' if total > 1 else ''} would be decided differently:")
        for change, count in sorted(report["changes"].items(), key=lambda kv: -kv[1]):
            before, after = change.split("->")
            print(f"  {count} from {before} to {after}")
        for change in sorted(report["changes"]):
            before, after = change.split("->")
            print(f"\n{before} -> {after}:")
            for row in report["changed"]:
                if f"{row['current']['action']}->{row['proposed']['action']}" == change:
                    _print_row(row)
    if report["drifted"]:
        print(f"\nnote: {report['drifted']} of the replayed messages score differently now "
              "than when they arrived (DNS answers, signatures or the model changed since); "
              "the comparison above is between the running and the proposed configuration, "
              "both now",
              file=sys.stderr)


def _print_row(row: dict[str, Any]) -> None:
    created = row["created"][:16].replace("T", " ")
    score = f"{row['current']['score']:g}"
    if row["proposed"]["score"] != row["current"]["score"]:
        score += f" -> {row['proposed']['score']:g}"
    print(printable(f"  {created}  {row['id']}  {row['kind']:<15}  score {score}  "
                    f"{row['sender'] or '<>'} -> {','.join(row['recipients'])}  "
                    f"\"{(row['subject'] or '')[:50]}\""))
    parts = []
    for symbol in row["symbols"]:
        before, after = symbol["current"], symbol["proposed"]
        if before == after:
            parts.append(f"{symbol['name']} {after:g}")
        else:
            parts.append(f"{symbol['name']} {_score(before)} -> {_score(after)}")
    if parts:
        print(printable(f"      by {', '.join(parts)}"))
    print(printable(f"      now: {row['proposed']['reason']}"))


def _score(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"

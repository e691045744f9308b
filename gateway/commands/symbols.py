"""``gateway symbols``: every symbol the enabled checks can emit, with its
score and forced action under the current rules."""

from __future__ import annotations

import argparse
import json
from typing import Any

from gateway.checks import BUILTIN, Check, resolve_check
from gateway.commands.common import config_from
from gateway.ruleset import load_rules
from gateway.symbols import PIPELINE_SYMBOLS, STAGE_SYMBOLS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--all", action="store_true",
                        help="include built-in checks that are not enabled")
    parser.add_argument("--json", action="store_true")


def main(args: argparse.Namespace) -> int:
    config = config_from(args)
    rules = load_rules(config.policy.rules)
    specs = list(config.pipeline.checks)
    if args.all:
        specs += [name for name in BUILTIN if name not in specs]
    rows: list[dict[str, Any]] = []
    for spec in specs:
        check: type[Check] = resolve_check(spec)
        for name, description in check.catalog().items():
            rows.append({
                "check": check.name,
                "name": name,
                "score": rules.scores.get(name, 0.0),
                "force": rules.force.get(name),
                "description": description,
                "enabled": spec in config.pipeline.checks,
            })
    listed = {row["name"] for row in rows}
    for name, description in rules.defined.items():  # [rule.*] and [[dnsbl]] symbols
        if name not in listed:
            rows.append({"check": "rules", "name": name, "score": rules.scores.get(name, 0.0),
                         "force": rules.force.get(name), "description": description,
                         "enabled": True})
    stages = [("pipeline", name, text) for name, text in PIPELINE_SYMBOLS.items()]
    stages += [("smtp", name, text) for name, text in STAGE_SYMBOLS.items()]
    for check_name, name, description in stages:
        if name not in listed:
            rows.append({"check": check_name, "name": name,
                         "score": rules.scores.get(name, 0.0), "force": rules.force.get(name),
                         "description": description, "enabled": True})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    width = max((len(r["name"]) for r in rows), default=10)
    for row in rows:
        force = f"[{row['force']}] " if row["force"] else ""
        off = "" if row["enabled"] else " (check not enabled)"
        print(f"{row['check']:<9} {row['name']:<{width}} {row['score']:>7.2f}  "
              f"{force}{row['description']}{off}")
    return 0

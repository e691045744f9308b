"""``gateway config check``: validate gateway.toml, the rules and the checks."""

from __future__ import annotations

import argparse
import sys

from gateway.commands.common import config_from
from gateway.evaluator import LocalEvaluator


def main(args: argparse.Namespace) -> int:
    config = config_from(args)
    evaluator = LocalEvaluator(config)  # loads the rules, builds every check
    try:
        rules = evaluator.policy.rules
        print(f"config ok: {config.source}")
        print(f"  milter socket: {config.milter.socket}")
        print(f"  checks: {', '.join(c.name for c in evaluator.pipeline.checks)}")
        print(f"  rules: {', '.join(rules.sources)}")
        print(f"  thresholds: quarantine {rules.quarantine:g}, reject {rules.reject:g}")
        problems = evaluator.startup_problems()
        for problem in problems:
            print(f"gateway: warning: {problem}", file=sys.stderr)
    finally:
        evaluator.close()
    return 1 if problems else 0

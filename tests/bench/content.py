"""The content checks' CPU per message on the public corpus, in the
pipeline's order: limits, rules (which reads the message view first: the
parts, their text, their URLs), the near-duplicates' digests (what the
fuzzy check computes before it asks its store), identity and links; in CPU
ms per message (time.process_time), the messages parsed before the clock
starts, each figure the least of three passes.

    .venv/bin/python tests/bench/content.py -n 600 --rounds 3 [--before DIR]

``--before DIR``: another checkout (``git worktree add --detach DIR main``)
measured in turn with this one, alternated in fresh processes, each round
both; printed as the median and spread of each and of the ratio
after/before within a round. Progress on stderr; only comparable on a
quiet machine. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CHECKS = ("limits", "rules", "identity", "links")  # fuzzy's digests measured after rules


def measure(root: Path, corpus: Path, count: int) -> dict[str, float]:
    """CPU ms per message of each content check, with ``root``'s code."""
    from tests.bench.interleave import sample  # the bench's own checkout's, before root's

    sys.path.insert(0, str(root))
    from gateway.checks import CheckContext
    from gateway.checks.fuzzy import message_digests
    from gateway.config import Config, PipelineSection
    from gateway.message import Message
    from gateway.registry import BUILTIN
    from gateway.ruleset import load_rules

    if not Path(sys.modules["gateway"].__file__ or "").is_relative_to(root):
        raise SystemExit(f"content.py: gateway imported from {sys.modules['gateway'].__file__}, "
                         f"not from {root}")
    config = Config(pipeline=PipelineSection(checks=list(CHECKS), workers=0))
    ruleset = load_rules(config.policy.rules)
    checks = []
    for name in CHECKS:
        module, _, cls = BUILTIN[name].partition(":")
        checks.append((name, getattr(importlib.import_module(module), cls)(config, ruleset)))
    raws = [path.read_bytes() for path in sample(corpus, count)]

    def parsed() -> list[Message]:
        messages = [Message.from_bytes(raw) for raw in raws]
        for message in messages:
            message.email  # noqa: B018 - parsed as the limits check gets it
            message.authors  # noqa: B018
        return messages

    def one_pass(spent: dict[str, float]) -> None:
        for message in parsed():
            context = CheckContext(facts={})
            for name, check in checks:
                started = time.process_time()
                check.run(message, context)
                spent[name] = spent.get(name, 0.0) + time.process_time() - started
                if name == "rules":
                    started = time.process_time()
                    message_digests(message, config.fuzzy)
                    spent["fuzzy"] = spent.get("fuzzy", 0.0) + time.process_time() - started

    one_pass({})  # untimed: the caches (public suffixes, indexes)
    least: dict[str, float] = {}
    for _ in range(3):  # a busy machine only ever adds time
        spent: dict[str, float] = {}
        one_pass(spent)
        for name, seconds in spent.items():
            least[name] = min(least.get(name, float("inf")), seconds * 1000 / len(raws))
    return {**least, "messages": len(raws)}


def main(argv: list[str] | None = None) -> None:
    sys.path.insert(0, str(PROJECT_ROOT))
    from tests.bench.corpus import add_corpus_argument, require_corpus
    from tests.bench.interleave import add_arguments, in_turn, print_parts

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=600, help="corpus messages (default 600)")
    add_arguments(parser)
    add_corpus_argument(parser)
    args = parser.parse_args(argv)
    if args.child is not None:
        print(json.dumps(measure(args.child, args.corpus, args.n)))
        return
    corpus = require_corpus(args.corpus, "content.py")
    runs = in_turn(Path(__file__), PROJECT_ROOT, args.before, args.rounds,
                   ["-n", str(args.n), "--corpus", str(corpus)])
    count = int(runs["after"][0]["messages"])
    print(f"CPU ms per message, {count} corpus messages, {args.rounds} rounds: "
          "median (min-max)")
    print_parts(runs, ("limits", "rules", "fuzzy", "identity", "links"), 8)


if __name__ == "__main__":
    main()

"""The classifier's CPU per message on the public corpus: the tokens
(features.message_tokens), the explained score of those tokens
(SpamModel.explain), the bayes check's whole work (tokens, then the
explained score), and that work after the content checks' view read the
text (``view+check``, as in the pipeline), in CPU ms per message
(time.process_time), with the message already parsed anew for every
pass, as the check gets it; each figure the least of three passes.

    .venv/bin/python tests/bench/tokens.py -n 500 --rounds 5 [--before DIR] [--profile]

``--before DIR``: another checkout (``git worktree add --detach DIR main``)
measured in turn with this one, A/B interleaved in fresh processes, each
round both; printed as the median and spread of each and of the ratio
after/before within a round. ``--profile``: cProfile's top functions of
this checkout. Progress on stderr; only comparable on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def measure(root: Path, corpus: Path, count: int) -> dict[str, float]:
    """CPU ms per message of this process's code (``root`` on sys.path)."""
    from tests.bench.interleave import sample  # the bench's own checkout's, before root's

    sys.path.insert(0, str(root))
    from gateway.checks.bayes import SHIPPED_MODEL
    from gateway.checks.view import view_of
    from gateway.classifier.features import TextStats, message_tokens
    from gateway.classifier.model import load_model
    from gateway.message import Message

    if not Path(sys.modules["gateway"].__file__ or "").is_relative_to(root):
        raise SystemExit(f"tokens.py: gateway imported from {sys.modules['gateway'].__file__}, "
                         f"not from {root}")

    model = load_model(SHIPPED_MODEL).placed(0.001)
    raws = [path.read_bytes() for path in sample(corpus, count)]
    try:
        from gateway.checks.bayes import same_from_reading
    except ImportError:  # a checkout from before it
        def same_from_reading(message):  # type: ignore[misc]
            return None

    def parsed() -> list[Message]:
        """The messages parsed anew, before the clock starts, as the check
        gets them: nothing a pass keeps on a parse helps the next pass."""
        messages = [Message.from_bytes(raw) for raw in raws]
        for message in messages:
            message.email  # noqa: B018
            message.authors  # noqa: B018 - other checks (DMARC, headers) read it anyway
        return messages

    def check(message) -> None:  # as the bayes check scores
        model.score_explained(message.email, message.limits, TextStats(),
                              authors=same_from_reading(message))

    def after_the_view(message) -> None:
        """The text the content checks read first (gateway.checks.view), then the check."""
        view_of(message).texts  # noqa: B018
        check(message)

    for message in parsed():  # once untimed: the caches (public suffixes, expressions)
        check(message)

    def cpu_ms(work, items: list | None = None) -> float:
        """The least of three passes (each over messages parsed anew, or
        over ``items``): a busy machine only ever adds time."""
        passes = []
        for _ in range(3):
            inputs = parsed() if items is None else items
            started = time.process_time()
            for item in inputs:
                work(item)
            passes.append((time.process_time() - started) * 1000 / len(inputs))
        return min(passes)

    token_sets = [message_tokens(m.email, m.limits, TextStats()) for m in parsed()]
    return {
        "tokens": cpu_ms(lambda m: message_tokens(m.email, m.limits, TextStats())),
        "explain": cpu_ms(model.explain, token_sets),
        "check": cpu_ms(check),
        "view+check": cpu_ms(after_the_view),
        "messages": len(raws),
    }


def profile(corpus: Path, count: int) -> None:
    import cProfile
    import pstats

    sys.path.insert(0, str(PROJECT_ROOT))
    profiler = cProfile.Profile()
    profiler.runcall(measure, PROJECT_ROOT, corpus, count)
    pstats.Stats(profiler).sort_stats("tottime").print_stats(25)


def main(argv: list[str] | None = None) -> None:
    sys.path.insert(0, str(PROJECT_ROOT))
    from tests.bench.corpus import add_corpus_argument, require_corpus
    from tests.bench.interleave import add_arguments, in_turn, print_parts

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=500, help="corpus messages (default 500)")
    parser.add_argument("--profile", action="store_true", help="cProfile this checkout")
    add_arguments(parser)
    add_corpus_argument(parser)
    args = parser.parse_args(argv)
    if args.child is not None:
        print(json.dumps(measure(args.child, args.corpus, args.n)))
        return
    corpus = require_corpus(args.corpus, "tokens.py")
    if args.profile:
        profile(corpus, args.n)
        return
    runs = in_turn(Path(__file__), PROJECT_ROOT, args.before, args.rounds,
                   ["-n", str(args.n), "--corpus", str(corpus)])
    count = int(runs["after"][0]["messages"])
    print(f"CPU ms per message, {count} corpus messages, {args.rounds} rounds: "
          "median (min-max)")
    print_parts(runs, ("tokens", "explain", "check", "view+check"), 7)


if __name__ == "__main__":
    main()

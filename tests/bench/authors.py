"""The one reading of the From (Message.authors) on a corpus: how many
messages per folder have an ambiguous From (FROM_AMBIGUOUS, held), the
problems found, and the time to read the From per message.

    .venv/bin/python tests/bench/authors.py [--corpus /work/shared/corpora/spamassassin]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(PROJECT_ROOT))

from gateway.message import Message  # noqa: E402
from tests.bench.corpus import add_corpus_argument, require_corpus  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_corpus_argument(parser)  # a folder of folders of messages (one per class)
    parser.add_argument("-n", "--messages", type=int, default=0,
                        help="at most this many messages per folder (0: all)")
    parser.add_argument("--show", type=int, default=5, help="ambiguous Froms shown per folder")
    args = parser.parse_args()
    folders = sorted(p for p in require_corpus(args.corpus, "authors.py").iterdir()
                     if p.is_dir())
    if not folders:
        print(f"authors.py: {args.corpus}: no folders of messages", file=sys.stderr)
        return 1
    print(f"{'folder':<14} {'messages':>8} {'ambiguous':>9} {'read us p50':>11} {'p99':>8}")
    for folder in folders:
        files = sorted(p for p in folder.iterdir() if p.is_file())
        if args.messages:
            files = files[:args.messages]
        times, shown, problems = [], [], Counter()
        ambiguous = 0
        for path in files:
            message = Message.from_bytes(path.read_bytes())
            message.fields  # noqa: B018 - the header block, read before the clock starts
            started = time.perf_counter()
            authors = message.authors
            times.append((time.perf_counter() - started) * 1e6)
            if authors.ambiguous:
                ambiguous += 1
                problems.update(p.split(": ")[0].split(" in ")[0] for p in authors.problems)
                if len(shown) < args.show:
                    shown.append(f"    {path.name}: {message.headers('From')!r:.100}")
        times.sort()
        p99 = times[min(len(times) - 1, int(len(times) * 0.99))] if times else 0.0
        print(f"{folder.name:<14} {len(files):>8} {ambiguous:>9} "
              f"{statistics.median(times) if times else 0.0:>11.1f} {p99:>8.1f}")
        for line in shown:
            print(line)
        if problems:
            print("    problems: " + ", ".join(f"{p} ({n})" for p, n in problems.most_common(5)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

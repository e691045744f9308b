"""Two checkouts measured in turn, for the benches that compare a change
with the code before it (tokens.py, content.py, pipeline.py).

Each round runs the bench once per checkout, each in a fresh process
(``SCRIPT --child ROOT ...``, which prints its figures as one JSON object),
and alternates which goes first: the machine's speed drifts, and a fresh
process keeps one checkout's caches from flattering the other. Printed as
the median and spread of each figure and of the ratio after/before within a
round.

The child imports this module from the checkout it was started from (the
bench's own), before it puts ROOT's code first: a ``--before`` checkout
need not have it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

Runs = dict[str, list[dict[str, float]]]


def sample(corpus: Path, count: int) -> list[Path]:
    """``count`` messages spread evenly over the corpus's folders."""
    paths = sorted(p for p in corpus.rglob("*") if p.is_file() and p.name != "README.md")
    step = max(1, len(paths) // count)
    return paths[::step][:count]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every such bench takes: rounds, the checkout to compare
    with, and the child's own (hidden)."""
    parser.add_argument("--rounds", type=int, default=3, help="rounds (default 3)")
    parser.add_argument("--before", type=Path, help="another checkout to compare with")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)


def in_turn(script: Path, after: Path, before: Path | None, rounds: int,
            arguments: Sequence[str]) -> Runs:
    """The figures of ``after`` (and of ``before``, when given), a dict per
    round, each measured by ``script --child ROOT *arguments`` in a fresh
    process; progress on stderr."""
    roots = {"after": after} if before is None else {"before": before.resolve(),
                                                       "after": after}
    runs: Runs = {name: [] for name in roots}
    for round_ in range(rounds):
        order = list(roots) if round_ % 2 == 0 else list(reversed(roots))  # the machine drifts
        for name in order:
            runs[name].append(_child(script, roots[name], arguments))
            print(f"round {round_ + 1}/{rounds} {name}: {runs[name][-1]}",
                  file=sys.stderr, flush=True)
    return runs


def _child(script: Path, root: Path, arguments: Sequence[str]) -> dict[str, float]:
    result = subprocess.run([sys.executable, str(script), "--child", str(root), *arguments],
                            capture_output=True, text=True, check=False, cwd=root)
    if result.returncode != 0:
        raise SystemExit(f"{script.name}: measuring {root} failed: "
                         f"{(result.stderr.strip().splitlines() or ['?'])[-1]}")
    figures: dict[str, float] = json.loads(result.stdout)
    return figures


def spread(values: Sequence[float], digits: int = 3) -> str:
    """``median (min-max)``."""
    if not values:
        return "-"
    return (f"{statistics.median(values):.{digits}f} "
            f"({min(values):.{digits}f}-{max(values):.{digits}f})")


def print_parts(runs: Runs, parts: Sequence[str], width: int, digits: int = 3) -> None:
    """A line per figure: each checkout's spread, and the ratio after/before
    when there is a before."""
    for part in parts:
        line = f"{part:{width}}" + "".join(
            f"  {name} {spread([r[part] for r in figures], digits)}"
            for name, figures in runs.items())
        if "before" in runs:
            ratios = [a[part] / b[part] for a, b in zip(runs["after"], runs["before"],
                                                        strict=True)]
            line += f"  after/before {spread(ratios, digits)}"
        print(line)

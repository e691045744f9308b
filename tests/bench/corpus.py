"""Where the benches find the public SpamAssassin corpus, and the one line
they stop with when it is not there.

The corpus lives in ``shared/corpora/spamassassin`` beside the checkout
(``/work/shared`` for ``/work/main``), or beside a folder above it (a git
worktree in ``/work/wt/NAME``); ``--corpus PATH`` names another copy. A
bench never falls back to the tests' own fixtures: figures from a few
dozen test messages would pass for the corpus's.
"""

from __future__ import annotations

import argparse
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SHARED_CORPUS = Path("shared", "corpora", "spamassassin")
# The folders of the corpus as published: ham, then spam.
HAM_FOLDERS = ("easy_ham", "easy_ham_2", "hard_ham")
SPAM_FOLDERS = ("spam", "spam_2")


def default_corpus() -> Path:
    """The first ``shared/corpora/spamassassin`` above the checkout; the
    one beside it (which may not exist) when there is none."""
    for parent in PROJECT_ROOT.parents:
        if (parent / SHARED_CORPUS).is_dir():
            return parent / SHARED_CORPUS
    return PROJECT_ROOT.parent / SHARED_CORPUS


def add_corpus_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--corpus", type=Path, default=default_corpus(),
                        help="the SpamAssassin corpus: folders of message files "
                             "(default: %(default)s)")


def require_corpus(path: Path, bench: str = "bench") -> Path:
    """``path`` if it holds message files; else the bench stops with one line."""
    if not path.is_dir() or not any(p.is_file() for p in path.rglob("*")):
        raise SystemExit(f"{bench}: no corpus at {path}: give --corpus PATH, a folder of "
                         f"message files (the SpamAssassin corpus: {', '.join(HAM_FOLDERS)}, "
                         f"{', '.join(SPAM_FOLDERS)})")
    return path

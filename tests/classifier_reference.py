"""The classifier's output kept as the reference: a faster tokenizer or
scorer must give the same tokens, and the same log-odds, probability and
explanation to the last bit, on the same messages.

Two files in tests/fixtures, written by this module from the code of the
day they were made (run it only when the tokens or the shipped model are
*meant* to change, e.g. with ``FEATURE_VERSION``):

- ``classifier_reference.json.gz``: a fixed sample (the fixture corpus and
  the hostile builders that are not slow), with every token, so that a
  difference names the tokens;
- ``classifier_reference_corpus.tsv.gz``: one digest per message of the
  public corpus (every message), for the slow test.

    .venv/bin/python -m tests.classifier_reference --write [--corpus DIR]
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gateway.checks.bayes import SHIPPED_MODEL, same_from_reading
from gateway.classifier.features import TextStats, message_tokens
from gateway.classifier.model import SpamModel, load_model
from gateway.config import ClassifierSection
from gateway.message import Message
from tests import hostile
from tests.helpers import FIXTURES

SAMPLE_FILE = FIXTURES / "classifier_reference.json.gz"
CORPUS_FILE = FIXTURES / "classifier_reference_corpus.tsv.gz"
CORPUS_FOLDERS = ("easy_ham", "easy_ham_2", "hard_ham", "spam", "spam_2")


def shipped_model() -> SpamModel:
    """The shipped model, placed as the bayes check places it by default."""
    return load_model(SHIPPED_MODEL).placed(ClassifierSection().target_fpr)


def reading(raw: bytes, model: SpamModel) -> dict[str, Any]:
    """What the bayes check takes from one message: its tokens, what the
    tokenizer counted, and the explained score, floats as exact hex."""
    message = Message.from_bytes(raw)
    tokens = message_tokens(message.email, message.limits, counted := TextStats())
    explained_stats = TextStats()
    # As the bayes check scores it: with the message's reading of the From.
    explanation = model.score_explained(message.email, message.limits, explained_stats,
                                        authors=same_from_reading(message))
    assert explained_stats == counted
    return {
        "tokens": sorted(tokens),
        "stats": [counted.urls, counted.text_bytes, counted.truncated],
        "log_odds": explanation.log_odds.hex(),
        "probability": explanation.probability.hex(),
        "spam": [[t, v.hex()] for t, v in explanation.spam],
        "ham": [[t, v.hex()] for t, v in explanation.ham],
        "known": explanation.known,
        "model": model.version,
    }


def digest(read: dict[str, Any]) -> str:
    """One short digest of a reading (every field)."""
    text = json.dumps(read, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:20]


def compact(read: dict[str, Any], limit: int = 50_000) -> dict[str, Any]:
    """``read`` with its tokens as a count and digest when they would take
    more than ``limit`` characters (hostile mail's giant tokens)."""
    if sum(len(t) for t in read["tokens"]) <= limit:
        return read
    tokens = read["tokens"]
    return {**read, "tokens": f"{len(tokens)} tokens, digest {digest({'tokens': tokens})}"}


def sample() -> Iterator[tuple[str, bytes]]:
    """(name, raw message) of the fixed sample, in a fixed order."""
    for path in sorted((FIXTURES / "corpus").rglob("*.eml")):
        yield f"corpus/{path.parent.name}/{path.name}", path.read_bytes()
    for name, item in sorted(hostile.BUILDERS.items()):
        if not item.slow:
            yield f"hostile/{name}", item.build()


def corpus_messages(corpus: Path) -> Iterator[tuple[str, bytes]]:
    for folder in CORPUS_FOLDERS:
        for path in sorted((corpus / folder).iterdir()):
            if path.is_file():
                yield f"{folder}/{path.name}", path.read_bytes()


def read_sample_reference() -> dict[str, dict[str, Any]]:
    with gzip.open(SAMPLE_FILE, "rt", encoding="utf-8") as handle:
        loaded: dict[str, dict[str, Any]] = json.load(handle)
    return loaded


def read_corpus_reference() -> dict[str, str]:
    with gzip.open(CORPUS_FILE, "rt", encoding="utf-8") as handle:
        return dict(line.rstrip("\n").split("\t") for line in handle)


def _write_gzip(path: Path, text: str) -> None:
    """Written without a time stamp: the same reference, the same bytes."""
    with gzip.GzipFile(path, "wb", mtime=0) as handle:
        handle.write(text.encode("ascii"))


def main(argv: list[str] | None = None) -> None:
    from tests.bench.corpus import add_corpus_argument, require_corpus

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="write the reference files")
    add_corpus_argument(parser)
    args = parser.parse_args(argv)
    if not args.write:
        parser.error("nothing to do without --write")
    model = shipped_model()
    readings = {name: compact(reading(raw, model)) for name, raw in sample()}
    _write_gzip(SAMPLE_FILE, json.dumps(readings, sort_keys=True, indent=0) + "\n")
    print(f"{SAMPLE_FILE}: {len(readings)} messages", file=sys.stderr)
    corpus = require_corpus(args.corpus, "classifier_reference")
    lines = [f"{name}\t{digest(reading(raw, model))}\n" for name, raw in corpus_messages(corpus)]
    _write_gzip(CORPUS_FILE, "".join(lines))
    print(f"{CORPUS_FILE}: {len(lines)} messages", file=sys.stderr)


if __name__ == "__main__":
    main()

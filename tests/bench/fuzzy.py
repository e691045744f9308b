"""Fuzzy hashes on the shared SpamAssassin corpus: how much unseen spam a
third of the spam, learned, catches, and how much ham it hits.

    .venv/bin/python tests/bench/fuzzy.py [--rounds 5] [-n 0] [--ssdeep]

The corpus is de-duplicated by body (as training does). Each round (its own
seed) splits the spam in thirds: *learned* (hashed as analysts' spam), *tune*
and *report*; and the ham in halves: *tune* and *report*. Per TLSH distance
threshold it prints the share of the report spam caught and the share of
report ham hit (mean over rounds, with the lowest and highest), for the
text hashes alone and with the HTML-structure hashes. The threshold is
chosen on the tune parts only (the largest with tune ham hit <= 0.1%), and
the report parts give its figures: none of the printed figures at the
chosen threshold come from mail it was chosen on.

Beside it: the spam the shipped classifier misses (p < 0.95, where BAYES
alone would not hold it) among the report spam it never trained on (the 20%
tests/bench/classifier.py holds back, seed 42), and how much of that fuzzy
catches. ``--ssdeep`` runs the same protocol with ssdeep (ppdeep, a pure
Python ssdeep: pip install ppdeep) on the same normalised text, for the
choice between the two. ``-n`` caps the messages of each kind (a quick run).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

PROJECT_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(PROJECT_ROOT))

from gateway.checks.fuzzy import raw_digests  # noqa: E402
from gateway.config import FuzzySection  # noqa: E402
from gateway.fuzzyhash import Digest, TlshIndex, normalise_text  # noqa: E402
from tests.bench.corpus import (  # noqa: E402
    HAM_FOLDERS,
    SPAM_FOLDERS,
    add_corpus_argument,
    require_corpus,
)

HAM = list(HAM_FOLDERS)
SPAM = list(SPAM_FOLDERS)
THRESHOLDS = (0, 10, 20, 30, 40, 50, 60, 70, 80, 100, 120)
HAM_TARGET = 0.001
QUARANTINE_P = 0.95


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("-n", type=int, default=0, help="at most this many of each kind")
    add_corpus_argument(parser)
    parser.add_argument("--ssdeep", action="store_true", help="compare with ssdeep (ppdeep)")
    parser.add_argument("--short-text", type=int, default=FuzzySection().short_text,
                        help="[fuzzy] short_text to measure with")
    args = parser.parse_args()

    from gateway.classifier.train import load_dataset, stratified_split

    require_corpus(args.corpus, "fuzzy")
    data = load_dataset([args.corpus / h for h in HAM], [args.corpus / s for s in SPAM],
                        show_progress=False)
    _, held = stratified_split(data.labels, 0.2, 42, data.groups)
    held_back = set(held.tolist())
    spam = [i for i, label in enumerate(data.labels) if label == 1]
    ham = [i for i, label in enumerate(data.labels) if label == 0]
    if args.n:
        rng = random.Random(0)
        spam, ham = rng.sample(spam, min(args.n, len(spam))), rng.sample(ham, min(args.n,
                                                                                 len(ham)))
    raws = {i: Path(data.sources[i]).read_bytes() for i in spam + ham}
    settings = FuzzySection(short_text=args.short_text)
    started = time.perf_counter()
    found = {i: raw_digests(raws[i], settings) for i in spam + ham}
    hashing = (time.perf_counter() - started) * 1000 / len(found)
    print(f"{len(spam)} spam and {len(ham)} ham after de-duplication; hashing "
          f"{hashing:.1f} ms a message (parse included); short_text {settings.short_text} "
          f"bytes: {sum(1 for d in found.values() if any(x.kind == 'exact' for x in d))} "
          f"messages by exact hash, {sum(1 for d in found.values() if not d)} without any")
    missed = _classifier_misses([i for i in spam if i in held_back], raws)

    for kinds in (("text", "exact"), ("text", "exact", "html")):
        print(f"\nTLSH, digests {' + '.join(kinds)}")
        _protocol(spam, ham, lambda i, kinds=kinds: [d for d in found[i] if d.kind in kinds],
                  _tlsh_matcher, THRESHOLDS, args.rounds, missed, "distance <=")
    if args.ssdeep:
        try:
            import ppdeep
        except ImportError:
            print("\n--ssdeep needs ppdeep (pip install ppdeep)")
            return 1
        started = time.perf_counter()
        fuzzy = {i: ppdeep.hash(normalise_text(_plain(raws[i]))) for i in spam + ham}
        print(f"\nssdeep (ppdeep) on the same normalised text, "
              f"{(time.perf_counter() - started) * 1000 / len(fuzzy):.1f} ms a message; "
              "threshold is 100 - score")
        _protocol(spam, ham, lambda i: [Digest("ssdeep", fuzzy[i])], _ssdeep_matcher,
                  (0, 10, 20, 30, 40, 50, 60, 70, 80, 90), args.rounds, missed,
                  "100 - score <=")
    return 0


def _plain(raw: bytes) -> str:
    from gateway.checks.view import view_of
    from gateway.message import Message

    return "\n".join(t.text for t in view_of(Message.from_bytes(raw)).texts)


def _classifier_misses(held_spam: list[int], raws: dict[int, bytes]) -> set[int]:
    from gateway.classifier.model import load_model
    from gateway.message import Message

    model = load_model(PROJECT_ROOT / "models" / "default")
    missed = set()
    for i in held_spam:
        probability, _ = model.score(Message.from_bytes(raws[i]).email)
        if probability < QUARANTINE_P:
            missed.add(i)
    print(f"the shipped classifier misses {len(missed)} of the {len(held_spam)} spam it never "
          f"trained on (p < {QUARANTINE_P})")
    return missed


def _tlsh_matcher(learned: list[Digest]):
    indexes = {kind: TlshIndex((d.value, None) for d in learned if d.kind == kind)
               for kind in ("text", "html")}
    exact = {d.value for d in learned if d.kind == "exact"}

    def distance(digests: list[Digest], limit: int) -> int | None:
        best = None
        for digest in digests:
            if digest.kind == "exact":
                if digest.value in exact:
                    return 0
                continue
            near = indexes[digest.kind].near(digest.value, limit)
            if near and (best is None or near[0][0] < best):
                best = near[0][0]
        return best

    return distance


def _ssdeep_matcher(learned: list[Digest]):
    import ppdeep

    by_gram: dict[str, set[str]] = {}
    for digest in learned:
        for gram in _grams(digest.value):
            by_gram.setdefault(gram, set()).add(digest.value)

    def distance(digests: list[Digest], limit: int) -> int | None:
        best = None
        for digest in digests:
            candidates = set().union(*(by_gram.get(g, set()) for g in _grams(digest.value)))
            for other in candidates:
                score = ppdeep.compare(digest.value, other)
                if score and (best is None or 100 - score < best):
                    best = 100 - score
        return best if best is not None and best <= limit else None

    return distance


def _grams(value: str) -> set[str]:
    """ssdeep scores 0 unless two hashes share 7 characters (and block sizes)."""
    size, _, rest = value.partition(":")
    grams = set()
    for offset, part in enumerate(rest.split(":")[:2]):
        grams.update(f"{int(size) * (2 ** offset)}:{part[i:i + 7]}"
                     for i in range(max(0, len(part) - 6)))
    return grams


def _protocol(spam: Sequence[int], ham: Sequence[int], digests_of, matcher,
              thresholds: Sequence[int], rounds: int, missed: set[int], label: str) -> None:
    caught: dict[int, list[float]] = {t: [] for t in thresholds}
    hit: dict[int, list[float]] = {t: [] for t in thresholds}
    hit_count: dict[int, list[int]] = {t: [] for t in thresholds}
    chosen: list[tuple[int, float, float, int, float]] = []
    for seed in range(1, rounds + 1):
        rng = random.Random(seed)
        shuffled_spam, shuffled_ham = list(spam), list(ham)
        rng.shuffle(shuffled_spam)
        rng.shuffle(shuffled_ham)
        third = len(shuffled_spam) // 3
        learned_ids, tune_spam, report_spam = (shuffled_spam[:third],
                                               shuffled_spam[third:2 * third],
                                               shuffled_spam[2 * third:])
        half = len(shuffled_ham) // 2
        tune_ham, report_ham = shuffled_ham[:half], shuffled_ham[half:]
        distance = matcher([d for i in learned_ids for d in digests_of(i)])
        top = max(thresholds)
        nearest = {i: distance(digests_of(i), top) for i in tune_spam + report_spam + ham}
        best_threshold = None
        for threshold in thresholds:
            def matched(ids, threshold=threshold, nearest=nearest):
                return [i for i in ids if nearest[i] is not None and nearest[i] <= threshold]

            caught[threshold].append(len(matched(report_spam)) / len(report_spam))
            hit[threshold].append(len(matched(report_ham)) / len(report_ham))
            hit_count[threshold].append(len(matched(report_ham)))
            if len(matched(tune_ham)) / len(tune_ham) <= HAM_TARGET:
                best_threshold = threshold
        if best_threshold is not None:
            in_report = [i for i in report_spam if i in missed]
            got = [i for i in in_report if nearest[i] is not None
                   and nearest[i] <= best_threshold]
            chosen.append((best_threshold, caught[best_threshold][-1], hit[best_threshold][-1],
                           len(in_report), len(got) / len(in_report) if in_report else 0.0))
    print(f"  {label:<14} {'spam caught':>26} {'ham hit':>24}")
    for threshold in thresholds:
        print(f"  {threshold:<14} {_spread(caught[threshold]):>26} "
              f"{_spread(hit[threshold], 2):>24}  ({max(hit_count[threshold])} ham at most)")
    if chosen:
        thresholds_chosen = [c[0] for c in chosen]
        print(f"  chosen on the tune parts (ham hit <= {HAM_TARGET:.1%}): "
              f"{', '.join(map(str, thresholds_chosen))}; on the report parts: spam caught "
              f"{_spread([c[1] for c in chosen])}, ham hit {_spread([c[2] for c in chosen], 2)}")
        missed_count = statistics.mean(c[3] for c in chosen)
        print(f"  of the report spam the classifier misses ({missed_count:.0f} a round), "
              f"fuzzy catches {_spread([c[4] for c in chosen])}")


def _spread(values: Sequence[float], digits: int = 1) -> str:
    if not values:
        return "-"
    return (f"{statistics.mean(values):.{digits}%} ({min(values):.{digits}%}-"
            f"{max(values):.{digits}%})")


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())

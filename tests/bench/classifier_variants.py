"""Screen classifier variants by nested repeated cross-validation of the
shipped training set (the 80% of the shared corpus ``gateway train
--validation 0.2`` trains on; the held-back 20% is never read here).

    .venv/bin/python tests/bench/classifier_variants.py --repeats 1 mnb fisher
    .venv/bin/python tests/bench/classifier_variants.py --repeats 4 --json /tmp/v.json fisher

Every variant is a scoring rule (how a naive-Bayes model's learned token
probabilities become a message score) with a grid of hyperparameters; in
each outer fold the grid point is chosen by an inner cross-validation of
that fold's training mail alone (mean spam recall at FPR 0.1/0.25/0.5%,
then AUC), exactly as ``gateway train`` chooses, and the outer test fold is
scored once. Figures: mean over the outer folds with the 95% Nadeau-Bengio
interval. ``--features`` picks a tokenizer variant (see ``FEATURES``).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

PROJECT_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(PROJECT_ROOT))

from gateway.classifier import train as training  # noqa: E402
from gateway.classifier.features import body_tokens, message_tokens, part_text  # noqa: E402
from gateway.classifier.metrics import (  # noqa: E402
    FPR_POINTS,
    fold_figures,
    format_spread,
    paired_difference,
    repeated_folds,
    spreads,
)
from gateway.classifier.train import (  # noqa: E402
    GRID,
    SCORERS,
    Settings,
    TokenMatrix,
    fit,
)
from gateway.mail import safe_parseaddr  # noqa: E402
from gateway.mime import parse_bytes  # noqa: E402
from tests.bench.classifier import corpus, folder  # noqa: E402


def extra_repeat(message) -> Iterator[str]:
    """Body words said at least 3 (and 6) times: a set of tokens forgets
    that spam repeats its pitch."""
    counts = Counter(t for t in body_tokens(message) if ":" not in t and " " not in t)
    for word, count in counts.items():
        if count >= 3:
            yield "rep3:" + word
        if count >= 6:
            yield "rep6:" + word


HTML_TAG = re.compile(r"<\s*([a-zA-Z][a-zA-Z0-9]{0,15})([^>]{0,400})>")
HTML_ATTRIBUTE = re.compile(r"([a-zA-Z-]{1,20})\s*=")
HIDDEN = re.compile(r"display\s*:\s*none|visibility\s*:\s*hidden|font-size\s*:\s*[01]px|"
                    r"color\s*=\s*[\"']?#?(?:fff(?:fff)?|white)\b", re.IGNORECASE)


def extra_html(message) -> Iterator[str]:
    """Every HTML tag and attribute name, and hidden or white text, as
    structure tokens (tried under one norm for feature version 3: hard ham
    is HTML too)."""
    for part in message.walk():
        if part.get_content_type() != "text/html":
            continue
        markup = part_text(part)[:200_000]
        for name, rest in HTML_TAG.findall(markup):
            yield "html:tag:" + name.lower()
            for attribute in HTML_ATTRIBUTE.findall(rest):
                yield f"html:attr:{name.lower()}.{attribute.lower()}"
        if HIDDEN.search(markup):
            yield "html:hidden"


def extra_caps(message) -> Iterator[str]:
    """Words in capitals kept as their own text tokens ('FREE', 'URGENT')."""
    subject = str(message.get("Subject", ""))
    texts = [subject] + [part_text(p) for p in message.walk()
                         if p.get_content_type() == "text/plain"]
    for text in texts:
        for raw in text[:100_000].split():
            word = raw.strip(".,;:!?()[]\"'")
            if 3 <= len(word) <= 20 and word.isalpha() and word.isupper():
                yield "caps:" + word


TAIL_ID = re.compile(r"(?:\s{2,}|[\s-])[#(\[]?[A-Za-z]*\d[\w-]{2,}[)\]]?\s*$")


def extra_envelope(message) -> Iterator[str]:
    """SpamAssassin-rule-like header facts: a 'Re:' without the headers a
    reply has, a random id at the end of the Subject, To missing, undisclosed
    or the sender's own address, a To without a display name."""
    subject = str(message.get("Subject", ""))
    if re.match(r"\s*(re|fw|fwd)\s*:", subject, re.IGNORECASE) and not (
            message.get("In-Reply-To") or message.get("References")):
        yield "subject:fake-reply"
    if TAIL_ID.search(subject):
        yield "subject:tail-id"
    if subject != subject.rstrip() or "  " in subject.strip():
        yield "subject:spaces"
    to = str(message.get("To", ""))
    if not to.strip():
        yield "to:missing"
    elif "undisclosed" in to.lower() or to.strip() in (":;", "undisclosed-recipients:;"):
        yield "to:undisclosed"
    name, address = safe_parseaddr(to)
    _, sender = safe_parseaddr(str(message.get("From", "")))
    if address and not name:
        yield "to:noname"
    if address and address.lower() == sender.lower():
        yield "to:from"


def extra_trigrams(message) -> Iterator[str]:
    """Body word triples (phrases: 'click here to', 'to be removed')."""
    plain = [t for t in body_tokens(message) if ":" not in t and " " not in t]
    for first, second, third in zip(plain, plain[1:], plain[2:], strict=False):
        yield f"{first} {second} {third}"


LIST_HEADERS = ("List-Id", "List-Post", "X-Mailman-Version", "Mailing-List", "X-BeenThere",
                "X-Loop", "List-Unsubscribe")


def extra_via_list(message) -> Iterator[str]:
    """For mail that came through a list, its structure tokens again under
    'vialist:': HTML-only mail, links and attachments mean one thing from a
    sender and another through a list of people."""
    if not any(message.get(name) for name in LIST_HEADERS):
        return
    yield "vialist:yes"
    for token in body_tokens(message):
        if token.startswith(("structure:", "url:count:", "url:domains:", "html:", "charset:",
                             "cte:")):
            yield "vialist:" + token


EXTRAS: dict[str, Callable[[Any], Iterator[str]]] = {
    "repeat": extra_repeat,
    "html": extra_html,
    "caps": extra_caps,
    "envelope": extra_envelope,
    "trigrams": extra_trigrams,
    "vialist": extra_via_list,
}


def tokenizer(extras: list[str]) -> Callable[[bytes], frozenset[str]]:
    """train.tokenize plus the experimental token kinds ``extras``."""
    def tokenize(raw: bytes) -> frozenset[str]:
        message = parse_bytes(raw)
        tokens = message_tokens(message)
        for name in extras:
            tokens.update(EXTRAS[name](message))
        return frozenset(tokens)
    return tokenize


FIGURES = ("auc", "recall_at_fpr_0.001", "recall_at_fpr_0.0025", "recall_at_fpr_0.005")


def grids() -> dict[str, list[Settings]]:
    """The variants and their grids (chosen inside each training fold)."""
    return {
        "shipped": list(GRID),
        "mnb": [Settings(alpha=a, min_documents=m) for m in (2, 3)
                for a in (0.0001, 0.0003, 0.001, 0.003)],
        "mnb-balance": [Settings(alpha=a, min_documents=m, balance=b) for m in (2, 3)
                        for a in (0.0001, 0.0003, 0.001, 0.003) for b in (0.0, 0.5, 1.0)],
        "balance1": [Settings(alpha=a, min_documents=m, balance=1.0) for m in (2, 3)
                     for a in (0.0001, 0.0003, 0.001, 0.003)],
        "balance05": [Settings(alpha=a, min_documents=m, balance=0.5) for m in (2, 3)
                      for a in (0.0001, 0.0003, 0.001, 0.003)],
        "mnb-low": [Settings(alpha=a, min_documents=m) for m in (1, 2)
                    for a in (0.00001, 0.00003, 0.0001)],
        "prune": [Settings(alpha=a, min_documents=2, balance=1.0, prune=x)
                  for a in (0.0003, 0.001, 0.003) for x in (0.0, 0.1, 0.2, 0.3)],
        "prune1": [Settings(alpha=a, min_documents=2, balance=1.0, prune=0.1)
                   for a in (0.0003, 0.001, 0.003)],
        "prune2": [Settings(alpha=a, min_documents=2, balance=1.0, prune=0.2)
                   for a in (0.0003, 0.001, 0.003)],
        "prune0": [Settings(alpha=a, min_documents=2, balance=1.0)
                   for a in (0.0003, 0.001, 0.003)],
        "half": [Settings(alpha=a, min_documents=m, balance=b) for b in (0.0, 0.5)
                 for m in (2, 3) for a in (0.0001, 0.0003, 0.001, 0.003)],
        "half-blocks": [Settings(alpha=a, min_documents=m, balance=b, blocks=3)
                        for b in (0.0, 0.5) for m in (2, 3)
                        for a in (0.0001, 0.0003, 0.001, 0.003)],
        "fixed": [Settings(alpha=0.0003, min_documents=2, balance=0.5, blocks=3)],
        "mnb-fisher": [Settings(alpha=a, min_documents=2, balance=0.5, blocks=3,
                                scorer="mnb-fisher", significant=k, strength=x)
                       for a in (0.0003, 0.003) for k in (50, 150, 400) for x in (0.1, 0.346)],
        "complement": [Settings(alpha=a, min_documents=m, scorer="complement")
                       for m in (2, 3) for a in (0.0001, 0.0003, 0.001, 0.003)],
        "bernoulli": [Settings(alpha=a, min_documents=m, scorer="bernoulli")
                      for m in (2, 3) for a in (0.01, 0.1, 0.5, 1.0)],
        "fisher": [Settings(alpha=a, min_documents=2, scorer="fisher", significant=k,
                            strength=0.346)
                   for a in (0.01, 0.1) for k in (50, 150, 400)],
        "fisher-k": [Settings(alpha=0.01, min_documents=2, scorer="fisher", significant=k,
                              strength=s)
                     for k in (100, 150, 250) for s in (0.1, 0.346)],
        "fisher-a": [Settings(alpha=a, min_documents=m, scorer="fisher", significant=150,
                              strength=0.346)
                     for m in (1, 2) for a in (0.0001, 0.001, 0.01)],
        "fisher-s": [Settings(alpha=a, min_documents=2, scorer="fisher", significant=k,
                              strength=s)
                     for a in (0.0001, 0.001) for k in (150, 1000) for s in (0.0, 0.2, 0.4)],
    }


def reshape_weights(idf_power: float, block_weights: list[float] | None) -> None:
    """Experiments on what the model sees, by wrapping train._weigh: idf
    raised to a power, and the blocks (headers, text, structure) scaled
    after their normalisation."""
    original = training._weigh

    def weigh(rows, idf, block=None):
        out = original(rows, np.asarray(idf, dtype=np.float64) ** idf_power, block)
        if block is not None and block_weights is not None:
            out.data = out.data * np.asarray(block_weights)[block[out.indices]]
        return out

    training._weigh = weigh


def boosted(extra: float) -> Callable[..., Any]:
    """train.fit with one boosting step: the training messages its own
    4-fold out-of-fold scores put on the wrong side of 0 weigh 1 + extra,
    then it fits again (still naive Bayes, with sample weights)."""
    original_fit, original_weights = training.fit, training.folder_weights

    def fit_boosted(rows, labels, settings, groups=None, blocks=None):
        scores = np.zeros(len(labels))
        for train_index, test_index in repeated_folds(labels, 4, 1, 1, groups):
            model = original_fit(rows[train_index], labels[train_index], settings,
                                 None if groups is None else groups[train_index], blocks)
            scores[test_index] = model.log_odds(rows[test_index])
        wrong = np.where(labels == 1, scores < 0, scores > 0)
        base = original_weights(labels, groups, settings.balance)
        weights = (np.ones(len(labels)) if base is None else base) * np.where(wrong, 1 + extra, 1)
        training.folder_weights = lambda *_args: weights
        try:
            return original_fit(rows, labels, settings, groups, blocks)
        finally:
            training.folder_weights = original_weights

    return fit_boosted


def signed(value: dict[str, Any]) -> str:
    """A paired difference: '+0.0061 (-0.0120 to +0.0242)'."""
    return f"{value['mean']:+.4f} ({value['low']:+.4f} to {value['high']:+.4f})"


def kind(token: str) -> str:
    """A token's kind for --drop: its prefix up to the first ':' ('h',
    'subject', 'url'...), 'bigram' for word pairs, 'word' for words."""
    if ":" in token:
        return token.split(":", 1)[0]
    return "bigram" if " " in token else "word"


def nested(matrix: TokenMatrix, labels: np.ndarray, groups: np.ndarray,
           grid: list[Settings], folds: int, repeats: int, inner: int, seed: int,
           say: Callable[[str], None]) -> tuple[list[dict[str, float]], list[str]]:
    """Per outer fold figures and the settings chosen in each."""
    per_fold, chosen = [], []
    started = time.monotonic()
    splits = repeated_folds(labels, folds, repeats, seed, groups)
    for number, (train_index, test_index) in enumerate(splits):
        rows = matrix.rows(train_index)
        if len(grid) > 1:
            settings, _, _ = training.choose_settings(rows, labels[train_index], grid, inner,
                                                      seed + number, None, groups[train_index],
                                                      matrix.blocks)
        else:
            settings = grid[0]
        model = fit(rows, labels[train_index], settings, groups[train_index], matrix.blocks)
        scores = model.log_odds(matrix.rows(test_index))
        figures = fold_figures(scores, np.zeros_like(scores), labels[test_index], 2.0)
        per_fold.append(figures)
        chosen.append(settings.describe())
        say(f"  fold {number + 1}/{len(splits)}: AUC {figures['auc']:.5f} "
            f"r@0.1% {figures['recall_at_fpr_0.001']:.4f} "
            f"r@0.25% {figures['recall_at_fpr_0.0025']:.4f} {settings.describe()} "
            f"({time.monotonic() - started:.0f}s)")
    return per_fold, chosen


def temporal(matrix: TokenMatrix, labels: np.ndarray, folders: list[str],
             grid: list[Settings], inner: int, seed: int) -> dict[str, float]:
    """Older mail to newer: learn easy_ham, spam (2002) and every other
    hard_ham, score easy_ham_2, spam_2 (later in 2002-2003) and the rest of
    hard_ham. A proxy for the issue's newer mail: a model that memorised
    its corpus loses more here than in cross-validation."""
    older = np.array([f in ("easy_ham", "spam") for f in folders])
    hard = np.flatnonzero(np.array([f == "hard_ham" for f in folders]))
    older[hard[::2]] = True
    train_index, test_index = np.flatnonzero(older), np.flatnonzero(~older)
    rows = matrix.rows(train_index)
    groups = np.array([hash(f) % 1000 for f in folders])[train_index]
    settings, _, _ = training.choose_settings(rows, labels[train_index], grid, inner, seed,
                                              None, groups, matrix.blocks)
    model = fit(rows, labels[train_index], settings, groups, matrix.blocks)
    scores = model.log_odds(matrix.rows(test_index))
    figures = fold_figures(scores, np.zeros_like(scores), labels[test_index], 2.0)
    figures["settings"] = settings.describe()  # type: ignore[assignment]
    return figures


def cross_validation(matrix: TokenMatrix, labels: np.ndarray, groups: np.ndarray,
                     grid: list[Settings], args: argparse.Namespace,
                     say: Callable[[str], None]) -> dict[str, Any]:
    per_fold, chosen = nested(matrix, labels, groups, grid, args.folds, args.repeats,
                              args.inner, args.seed, say)
    return {"figures": spreads(per_fold, 1 / (args.folds - 1), FIGURES),
            "per_fold": per_fold, "chosen": chosen}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variants", nargs="+", help=f"any of {', '.join(grids())}")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--inner", type=int, default=4)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--extras", default="", help=f"comma-separated: {', '.join(EXTRAS)}")
    parser.add_argument("--idf-power", type=float, default=1.0)
    parser.add_argument("--block-weights", help="headers,text,structure, e.g. 1.5,1,1")
    parser.add_argument("--boost", type=float, default=0.0,
                        help="one boosting step: out-of-fold mistakes weigh 1 + this")
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--temporal", action="store_true",
                        help="also train on the older folders and test on the newer")
    parser.add_argument("--drop", default="", help="comma-separated token kinds to leave out "
                        "(see kind(): h, header, bigram, word, subject, url, rcvd...)")
    parser.add_argument("--against", type=Path, help="a --json file of the same folds: "
                        "print the paired difference per figure")
    parser.add_argument("--against-variant", help="which variant of --against (the first)")
    args = parser.parse_args(argv)
    say = (lambda _text: None) if args.quiet else (lambda text: print(text, flush=True))
    unknown = [v for v in args.variants if v not in grids()]
    if unknown:
        parser.error(f"unknown variants {unknown}; known: {list(grids())} "
                     f"(scorers {list(SCORERS)})")
    started = time.monotonic()
    extras = [e for e in args.extras.split(",") if e]
    if extras:
        training.tokenize = tokenizer(extras)
    if args.idf_power != 1.0 or args.block_weights:
        reshape_weights(args.idf_power, [float(w) for w in args.block_weights.split(",")]
                        if args.block_weights else None)
    if args.boost:
        global fit
        training.fit = fit = boosted(args.boost)
    data, training_index, _held = corpus(show_progress=False)
    drop = {d for d in args.drop.split(",") if d}
    documents = [data.tokens[i] for i in training_index]
    if drop:
        documents = [frozenset(t for t in d if kind(t) not in drop) for d in documents]
    matrix = TokenMatrix(documents)
    labels, groups = data.labels[training_index], data.groups[training_index]
    print(f"training set: {int((labels == 0).sum())} ham, {int(labels.sum())} spam, "
          f"{len(matrix.tokens)} distinct tokens ({time.monotonic() - started:.0f}s)")
    results: dict[str, Any] = {}
    for name in args.variants:
        results[name] = {}
        if args.repeats > 0:
            print(f"{name}: {args.folds} folds x {args.repeats} repeats")
            results[name] = cross_validation(matrix, labels, groups, grids()[name], args, say)
            summary = results[name]["figures"]
            print(f"{name:>12}: AUC {format_spread(summary['auc'], digits=5)}; " + "; ".join(
                f"r@{p:.2%} {format_spread(summary[f'recall_at_fpr_{p}'])}"
                for p in FPR_POINTS))
        if args.temporal:
            folders = [folder(data, i) for i in training_index]
            figures = temporal(matrix, labels, folders, grids()[name], args.inner, args.seed)
            results[name]["temporal"] = figures
            print(f"{name:>12}: older -> newer ({int(figures['n_ham'])} ham, "
                  f"{int(figures['n_spam'])} spam): AUC {figures['auc']:.5f}; " + "; ".join(
                      f"r@{p:.2%} {figures[f'recall_at_fpr_{p}']:.4f}" for p in FPR_POINTS)
                  + f" ({figures['settings']})")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    if args.against and args.repeats > 0:
        base = json.loads(args.against.read_text())
        base = base[args.against_variant or next(iter(base))]["per_fold"]
        fraction = 1 / (args.folds - 1)
        for name, result in results.items():
            print(f"{name} minus {args.against}: " + "; ".join(
                f"{key} {signed(paired_difference(result['per_fold'], base, key, fraction))}"
                for key in FIGURES))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

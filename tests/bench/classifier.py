"""Spam classifier figures: quality with its spread, the default rules on ham
people asked for, speed, size, memory; and the model card.

    .venv/bin/python tests/bench/classifier.py                 # the shipped model
    .venv/bin/python tests/bench/classifier.py --rules-cv      # + default rules, out of fold
    .venv/bin/python tests/bench/classifier.py --rules-cv --write-card \\
        --anchor /tmp/anchor.json                               # regenerate models/MODEL_CARD.md

The shared SpamAssassin corpus is split once (seed 42, stratified by folder):
80% is the *training set* the shipped model is trained on (``gateway train
... --validation 0.2``), 20% is held back from it and from every choice made
while building the classifier. Printed, for models/default (or --model):

- the nested repeated cross-validation report of its training set, from its
  model.json (each figure: mean over 20 folds and a 95% interval);
- its figures on the held-back 20%, with the spread over folds of it;
- the default rules (checks headers, size, lists, bayes) on the held-back
  ham and spam, per folder (hard_ham: newsletters and commercial mail people
  asked for); with --rules-cv also out of fold on the training set, by the
  same nested cross-validation as training;
- parse + score time per message on one core (median, p99), artifact size,
  resident memory of a process holding the model.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

PROJECT_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(PROJECT_ROOT))

from gateway.classifier.corpus import Progress  # noqa: E402
from gateway.classifier.metrics import FIGURE_LABELS, format_spread, spread  # noqa: E402
from gateway.classifier.model import band, load_model  # noqa: E402
from gateway.classifier.train import (  # noqa: E402
    GRID,
    TokenMatrix,
    cross_validate,
    load_dataset,
    stratified_split,
)
from gateway.commands.classifier import evaluate_scores, print_cv_report  # noqa: E402
from tests.bench.corpus import (  # noqa: E402
    HAM_FOLDERS,
    SPAM_FOLDERS,
    default_corpus,
    require_corpus,
)

CORPUS = default_corpus()
HAM = [CORPUS / name for name in HAM_FOLDERS]
SPAM = [CORPUS / name for name in SPAM_FOLDERS]
HOLD_BACK = 0.2
SEED = 42
# The BAYES_* scores before feature version 3 (the classifier alone
# quarantined from p >= 0.70), for the before/after on ham people asked for.
PREVIOUS_BANDS = {"BAYES_60": 4.5, "BAYES_70": 6.0, "BAYES_80": 6.5, "BAYES_90": 7.0,
                  "BAYES_95": 7.5, "BAYES_99": 8.0, "BAYES_999": 9.0}
CARD = PROJECT_ROOT / "models" / "MODEL_CARD.md"

RSS_PROBE = """
import sys
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
sys.path.insert(0, {root!r})
import numpy, gateway.classifier.features
before = rss()
from gateway.classifier.model import load_model
model = load_model({model!r})
print(before, rss())
"""


def corpus(show_progress: bool = True):
    """The de-duplicated corpus and its (training set, held back) indices:
    exactly what ``gateway train --validation 0.2 --seed 42`` sees."""
    require_corpus(CORPUS)
    data = load_dataset(HAM, SPAM, show_progress=show_progress)
    training, held = stratified_split(data.labels, HOLD_BACK, SEED, data.groups)
    return data, training, held


def folder(data, index: int) -> str:
    return Path(data.group_names[data.groups[index]].split(":", 1)[1]).name


class Rules:
    """The default rules' verdict from the other checks' score and a bayes
    probability: the policy adds symbol scores, so the bayes band's score can
    be added to a verdict computed once without it."""

    def __init__(self) -> None:
        from gateway.config import Config, PipelineSection
        from gateway.evaluator import LocalEvaluator
        from gateway.ruleset import load_rules

        self.config = Config(pipeline=PipelineSection(checks=["headers", "size", "lists"]))
        self.rules = load_rules(self.config.policy.rules)
        self.evaluator = LocalEvaluator(self.config)

    def others(self, raw: bytes) -> tuple[float, str | None]:
        from gateway.message import Message

        verdict = self.evaluator.evaluate_message(Message.from_bytes(raw))
        forced = verdict.action if verdict.forced_by else None
        return verdict.score, forced

    def held(self, others: tuple[float, str | None], probability: float,
             previous: bool = False) -> bool:
        score, forced = others
        if forced is not None:
            return forced in ("quarantine", "reject")
        scores = {**self.rules.scores, **PREVIOUS_BANDS} if previous else self.rules.scores
        return score + scores.get(band(probability), 0.0) >= self.rules.quarantine

    def close(self) -> None:
        self.evaluator.close()


def rules_table(rows: list[tuple[str, int, bool]]) -> dict[str, dict[str, float]]:
    """{folder: {n, held, rate}} from (folder, label, held) rows."""
    table: dict[str, dict[str, float]] = {}
    for name, label, held in rows:
        key = name if label == 0 else "spam (all)"
        entry = table.setdefault(key, {"n": 0, "held": 0})
        entry["n"] += 1
        entry["held"] += int(held)
    ham = [r for r in rows if r[1] == 0]
    table["ham (all)"] = {"n": len(ham), "held": sum(int(r[2]) for r in ham)}
    for entry in table.values():
        entry["rate"] = entry["held"] / entry["n"] if entry["n"] else 0.0
    return table


def print_rules(table: dict[str, dict[str, float]]) -> None:
    for name in sorted(table, key=lambda k: (k.startswith("spam"), k.startswith("ham (all)"), k)):
        entry = table[name]
        verb = "caught" if name.startswith("spam") else "held"
        print(f"    {name:<12} {entry['held']:>4} of {entry['n']:>4} {verb} ({entry['rate']:.2%})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=PROJECT_ROOT / "models" / "default")
    parser.add_argument("--rules-cv", action="store_true",
                        help="the default rules out of fold on the training set (nested CV)")
    parser.add_argument("--anchor", type=Path, help="classifier_anchor.py --json output, for "
                                                    "the card")
    parser.add_argument("--anchor-like", type=Path,
                        help="classifier_anchor.py --sa-like-gateway --json output (with "
                             "--repeats 0: the held-back part alone)")
    parser.add_argument("--write-card", action="store_true", help=f"rewrite {CARD}")
    parser.add_argument("--json", type=Path, help="write every figure here")
    parser.add_argument("--target-fpr", type=float, default=0.001,
                        help="[classifier] target_fpr the bands are placed at (default 0.001)")
    args = parser.parse_args()
    # As the gateway scores: its bands placed on the ham it carries.
    model = load_model(args.model).placed(args.target_fpr)
    meta = model.meta
    results: dict[str, Any] = {"model": model.version}
    print(f"model {model.version}: {meta['algorithm']}, {model.meta['settings']}; trained on "
          f"{meta['data']['train_ham']} ham + {meta['data']['train_spam']} spam, seed "
          f"{meta['seed']}")
    if meta.get("cross_validation"):
        print("\ntraining set, from model.json:")
        print_cv_report(meta["cross_validation"])

    data, training, held = corpus()
    decision = meta["thresholds"]["decision_probability"]
    scores = np.array([model.log_odds(data.tokens[i]) for i in held])
    probabilities = np.array([model.probability_of(s) for s in scores])
    labels = data.labels[held]
    figures = evaluate_scores(scores, probabilities, labels, decision)
    results["held_back"] = {k: v for k, v in figures.items() if k != "per_fold"}
    print(f"\nheld back from the training set: {figures['n_ham']} ham, {figures['n_spam']} "
          f"spam (figure on all of it; 95% interval over 5 folds x 4 repeats of it)")
    for key in ("auc", "recall_at_fpr_0.001", "recall_at_fpr_0.0025", "recall_at_fpr_0.005",
                "fpr"):
        whole = figures["auc"] if key == "auc" else figures["fpr"] if key == "fpr" else \
            figures["recall_at_fpr"][key.removeprefix("recall_at_fpr_")]
        print(f"  {FIGURE_LABELS[key]:<40} {whole:.5f}   folds "
              f"{format_spread(figures['spread'][key], digits=5 if key == 'auc' else 4)}")

    rules = Rules()
    progress = Progress("default rules on the held-back mail", len(held))
    others_cache: dict[int, tuple[float, str | None]] = {}

    def others(index: int) -> tuple[float, str | None]:
        if index not in others_cache:
            others_cache[index] = rules.others(Path(data.sources[index]).read_bytes())
        return others_cache[index]

    rows, previous_rows = [], []
    for position, index in enumerate(held):
        rows.append((folder(data, index), int(data.labels[index]),
                     rules.held(others(index), probabilities[position])))
        previous_rows.append((folder(data, index), int(data.labels[index]),
                              rules.held(others(index), probabilities[position], True)))
        progress.step()
    progress.done()
    results["rules_held_back"] = rules_table(rows)
    results["rules_held_back_previous"] = rules_table(previous_rows)
    print("  default rules (headers, size, lists, bayes) on the held-back mail:")
    print_rules(results["rules_held_back"])
    print("  the same with the previous BAYES_* scores (alone from p >= 0.70):")
    print_rules(results["rules_held_back_previous"])

    if args.rules_cv:
        matrix = TokenMatrix([data.tokens[i] for i in training])
        train_labels = data.labels[training]
        per_fold: list[list[tuple[str, int, bool]]] = []
        previous_per_fold: list[list[tuple[str, int, bool]]] = []
        progress = Progress("other checks on the training set", len(training))
        for index in training:
            others(index)
            progress.step()
        progress.done()

        def on_fold(number, test_index, _scores, fold_probabilities) -> None:
            for target, previous in ((per_fold, False), (previous_per_fold, True)):
                target.append([(folder(data, training[i]), int(train_labels[i]),
                                rules.held(others(training[i]), p, previous))
                               for i, p in zip(test_index, fold_probabilities, strict=True)])

        cross_validate(matrix, train_labels, data.groups[training], 5, 4, SEED, GRID, 4,
                       decision, report=print, on_fold=on_fold)
        tables = [rules_table(rows) for rows in per_fold]
        summary = {name: spread([t[name]["rate"] for t in tables], 0.25)
                   for name in tables[0]}
        previous_tables = [rules_table(rows) for rows in previous_per_fold]
        results["rules_cv"] = {"tables": tables, "spread": summary,
                               "n": {name: tables[0][name]["n"] for name in tables[0]},
                               "previous_spread": {
                                   name: spread([t[name]["rate"] for t in previous_tables],
                                                0.25) for name in tables[0]}}
        print("  default rules out of fold on the training set (nested CV, 5 x 4; mean and "
              "95% interval of the per-fold rate):")
        for name, value in sorted(summary.items(), key=lambda kv: (kv[0].startswith("spam"),
                                                                    kv[0])):
            verb = "caught" if name.startswith("spam") else "held"
            print(f"    {name:<12} {verb} {format_spread(value, percent=True)} "
                  f"(~{tables[0][name]['n']} a fold; previous scores: "
                  f"{format_spread(results['rules_cv']['previous_spread'][name], percent=True)})")
    rules.close()

    from gateway.mime import parse_bytes

    raws = [p.read_bytes() for path in HAM + SPAM for p in sorted(path.iterdir())]
    timings = []
    progress = Progress("timing parse + score + explanation", len(raws))
    for raw in raws:
        started = time.perf_counter()
        model.score_explained(parse_bytes(raw))
        timings.append((time.perf_counter() - started) * 1000)
        progress.step()
    progress.done()
    timings.sort()
    results["timing_ms"] = {"median": statistics.median(timings),
                            "p99": timings[int(0.99 * len(timings))], "n": len(timings)}
    print(f"\nparse + score + explanation per message, one core: median "
          f"{results['timing_ms']['median']:.2f} ms, p99 {results['timing_ms']['p99']:.2f} ms "
          f"({len(timings)} messages)")
    size = sum(p.stat().st_size for p in args.model.iterdir())
    probe = subprocess.run([sys.executable, "-c", RSS_PROBE.format(root=str(PROJECT_ROOT),
                                                                   model=str(args.model))],
                           capture_output=True, text=True, check=True)
    before, after = (int(x) for x in probe.stdout.split())
    results["artifact_mb"] = size / 1e6
    results["memory_mb"] = (after - before) / 1024
    print(f"artifact {size / 1e6:.2f} MB; resident memory of the loaded model "
          f"{(after - before) / 1024:.1f} MB (process total {after / 1024:.1f} MB)")

    anchor = json.loads(args.anchor.read_text()) if args.anchor else None
    if anchor is not None and args.anchor_like:
        anchor["like_gateway"] = json.loads(args.anchor_like.read_text())
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    if args.write_card:
        from tests.bench.classifier_card import render

        CARD.write_text(render(meta, results, anchor))
        print(f"wrote {CARD}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

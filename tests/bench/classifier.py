"""Spam classifier figures: quality on the validation split, speed, size, memory.

    .venv/bin/python tests/bench/classifier.py                 # shipped model
    .venv/bin/python tests/bench/classifier.py --retrain       # also time training

Prints, for the model in models/default (or --model):
- AUC and spam recall at 0.1%, 0.25% and 0.5% false positives on the
  validation split it was not trained on (same seed, same split);
- parse + score time per message on one core (median, p99);
- artifact size, and resident memory of a process holding the model;
- with --retrain: the time ``gateway train`` takes on the corpus.
"""

from __future__ import annotations

import argparse
import email
import email.policy
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(PROJECT_ROOT))

from gateway.classifier.corpus import Progress  # noqa: E402
from gateway.classifier.metrics import recall_at_fpr, roc_auc  # noqa: E402
from gateway.classifier.model import load_model  # noqa: E402
from gateway.classifier.train import load_dataset, stratified_split  # noqa: E402

CORPUS = PROJECT_ROOT.parent / "shared" / "corpora" / "spamassassin"
HAM = [CORPUS / "easy_ham", CORPUS / "easy_ham_2", CORPUS / "hard_ham"]
SPAM = [CORPUS / "spam", CORPUS / "spam_2"]

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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=PROJECT_ROOT / "models" / "default")
    parser.add_argument("--retrain", action="store_true", help="time a full training run")
    args = parser.parse_args()
    if not CORPUS.exists():
        raise SystemExit(f"bench: corpus not found at {CORPUS}")
    model = load_model(args.model)
    meta = model.meta
    print(f"model {model.version}: trained on {meta['data']['train_ham']} ham + "
          f"{meta['data']['train_spam']} spam, seed {meta['seed']}")

    dataset = load_dataset(HAM, SPAM, show_progress=True)
    _, held = stratified_split(dataset.labels, 0.25, meta["seed"])
    scores = [model.log_odds(dataset.tokens[i]) for i in held]
    import numpy as np

    labels = dataset.labels[held]
    scores_array = np.array(scores)
    print(f"\nvalidation split: {int((labels == 0).sum())} ham, {int(labels.sum())} spam")
    print(f"  AUC                        {roc_auc(scores_array, labels):.5f}")
    for point in (0.001, 0.0025, 0.005):
        recall, _ = recall_at_fpr(scores_array, labels, point)
        print(f"  spam recall at FPR <= {point:.2%}  {recall:.4f}")

    # The verdicts the gateway gives these messages with the default rules, on
    # the checks that need no live DNS or clamd (headers, size, lists, bayes).
    from gateway.config import Config, PipelineSection
    from gateway.evaluator import LocalEvaluator
    from gateway.message import Message

    evaluator = LocalEvaluator(Config(pipeline=PipelineSection(
        checks=["headers", "size", "lists", "bayes"])))
    stopped = {0: 0, 1: 0}
    for index in held:
        raw = Path(dataset.sources[index]).read_bytes()
        verdict = evaluator.evaluate_message(Message.from_bytes(raw))
        if verdict.action in ("quarantine", "reject"):
            stopped[int(dataset.labels[index])] += 1
    evaluator.close()
    n_ham, n_spam = int((labels == 0).sum()), int(labels.sum())
    print(f"  with the default rules (checks headers, size, lists, bayes): "
          f"{stopped[0]} of {n_ham} ham held ({stopped[0] / n_ham:.2%}), "
          f"{stopped[1]} of {n_spam} spam caught ({stopped[1] / n_spam:.2%})")

    raws = [p.read_bytes() for folder in HAM + SPAM for p in sorted(folder.iterdir())]
    timings = []
    progress = Progress("timing parse + score", len(raws))
    for raw in raws:
        started = time.perf_counter()
        parsed = email.message_from_bytes(raw, policy=email.policy.compat32)
        model.score(parsed)
        timings.append((time.perf_counter() - started) * 1000)
        progress.step()
    progress.done()
    timings.sort()
    print(f"\nparse + score per message, one core: median {statistics.median(timings):.2f} ms, "
          f"p99 {timings[int(0.99 * len(timings))]:.2f} ms ({len(timings)} messages)")

    size = sum(p.stat().st_size for p in args.model.iterdir())
    probe = subprocess.run([sys.executable, "-c", RSS_PROBE.format(root=str(PROJECT_ROOT),
                                                                   model=str(args.model))],
                           capture_output=True, text=True, check=True)
    before, after = (int(x) for x in probe.stdout.split())
    print(f"artifact {size / 1e6:.2f} MB; resident memory of the loaded model "
          f"{(after - before) / 1024:.1f} MB (process total {after / 1024:.1f} MB)")

    if args.retrain:
        started = time.perf_counter()
        result = subprocess.run(
            [sys.executable, "-m", "gateway", "train", "--ham", *map(str, HAM), "--spam",
             *map(str, SPAM), "--out", "/tmp/gateway-bench-model", "--json"],
            capture_output=True, text=True, cwd=PROJECT_ROOT)
        seconds = time.perf_counter() - started
        version = json.loads(result.stdout)["version"]
        data = json.loads(Path("/tmp/gateway-bench-model/model.json").read_text())["data"]
        fitted = data["train_ham"] + data["train_spam"]
        print(f"training on {data['ham'] + data['spam']} messages ({fitted} fitted): "
              f"{seconds:.1f} s wall, version {version}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

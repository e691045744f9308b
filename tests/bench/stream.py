"""The classifier as a mail stream, measured the way the TREC spam track
measured filters (Cormack and Lynam, TREC 2005): messages arrive in date
order, each is scored and acted on *before* its label is known, and the
operator's labels arrive later and teach the filter.

    .venv/bin/python tests/bench/stream.py                                # --site new
    .venv/bin/python tests/bench/stream.py --site dev --feedback 0.1,1.0  # tuning split
    .venv/bin/python tests/bench/stream.py -n 300 --no-sa                 # a quick look

"Another site", from the shared SpamAssassin corpus (say so beside any figure):

- ``--site new``: the site has trained on easy_ham, spam and the older half
  of hard_ham (by Date); its mail is easy_ham_2, spam_2 and the newer half
  of hard_ham, in Date order: other mailing lists, other spam, other
  newsletters than the training mail. Report figures from this one, and
  choose nothing on it.
- ``--site dev``: inside the training mail only, the older 60% by Date
  trains and the newer 40% streams: for choosing settings of the procedure
  without looking at the ``new`` site.

For each ``--feedback`` rate the stream is replayed with the gateway and
with SpamAssassin's Bayes side by side, each starting from the same
training mail:

- the gateway scores each message with the model in use and acts by the
  default rules (headers, size and lists checks, plus the BAYES_* band; no
  network checks: the corpus has no authentication to check). A mistake
  (spam not held, ham held) is labelled by the operator with that
  probability, and the label arrives ``--delay`` messages later. Every
  ``--retrain-every`` messages with new labels the model is retrained, as
  ``gateway train --feedback`` would (the training mail plus the labels;
  the hyperparameters chosen once on the training mail, the calibration and
  out-of-fold ham scores refitted), and promoted: its bands placed on its
  own out-of-fold ham and the site's ham labels, at ``[classifier]
  target_fpr`` (``--target-fpr``);
- SpamAssassin 4's Bayes (Debian's ``spamassassin``, offline, through its
  Perl API as ``sa-learn`` and ``spamassassin`` use it) learns the same
  training mail, scores each message (``bayes_score``), acts at p >= 0.99
  (its BAYES_99: Bayes alone holds nothing in SpamAssassin's default
  scores) and learns the operator's labels of *its* mistakes, at the same
  rate and delay, at once (``sa-learn`` has no retraining).

Printed per rate and filter: cumulative (1-ROCA)% (100 x the area above the
ROC curve of every score given in the stream, TREC's headline figure, with
a bootstrap 95% interval), spam recall at FPR <= 0.1% and 0.25% of those
scores, and the actions' FPR and recall in each block of 500 messages and
overall (Wilson 95% intervals). The gateway's stream score is its placed
log-odds (``logit`` of the displayed probability), so that models retrained
on other scales are comparable, as TREC's filters' scores were.

``--targets`` also measures issue 26's targets on the site: cold start (the
training mail's model, no label yet, on the whole stream) and after the
site's first 200 labels (its first 100 ham and 100 spam in date order
learned and promoted; measured on the rest of the stream).
"""

from __future__ import annotations

import argparse
import email.utils
import hashlib
import json
import math
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

PROJECT_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(PROJECT_ROOT))

from gateway.classifier.corpus import Progress, content_key  # noqa: E402
from gateway.classifier.metrics import recall_at_fpr, roc_auc  # noqa: E402
from gateway.classifier.model import SpamModel  # noqa: E402
from gateway.classifier.thresholds import PLACED_PROBABILITY, HamScores  # noqa: E402
from gateway.classifier.train import (  # noqa: E402
    Dataset,
    TokenMatrix,
    choose_settings,
    fit,
    fit_calibration,
    tokenize,
    train_dataset,
)
from tests.bench.classifier import CORPUS as BENCH_CORPUS  # noqa: E402

CORPUS = BENCH_CORPUS
SEED = 42
SA_DECISION = 0.99
BLOCK = 500
# Dates outside these years are the corpus's broken Date headers ("102-08").
YEARS = (1995, 2005)


@dataclass
class Mail:
    folder: str
    label: int  # 1 = spam
    date: float
    key: str
    path: Path
    tokens: frozenset[str] = field(default_factory=frozenset)


def read_folder(name: str, label: int) -> list[Mail]:
    from email.parser import BytesHeaderParser

    parser = BytesHeaderParser()
    found = []
    for path in sorted((CORPUS / name).iterdir()):
        raw = path.read_bytes()
        try:
            date = email.utils.parsedate_to_datetime(str(parser.parsebytes(raw)["Date"]))
            stamp = date.timestamp() if YEARS[0] <= date.year <= YEARS[1] else math.nan
        except (TypeError, ValueError, IndexError, OverflowError):
            stamp = math.nan
        found.append(Mail(name, label, stamp, content_key(raw), path))
    known = [m.date for m in found if not math.isnan(m.date)]
    middle = float(np.median(known)) if known else 0.0
    for mail in found:  # a broken Date: the folder's middle, so it sorts somewhere sane
        if math.isnan(mail.date):
            mail.date = middle
    return found


def by_date(mails: list[Mail]) -> list[Mail]:
    return sorted(mails, key=lambda m: (m.date, str(m.path)))


def split(site: str) -> tuple[list[Mail], list[Mail]]:
    """(training mail, the stream in date order) for ``site`` (see the docstring)."""
    if not CORPUS.exists():
        raise SystemExit(f"stream: corpus not found at {CORPUS}")
    folders = {name: read_folder(name, label) for name, label in (
        ("easy_ham", 0), ("spam", 1), ("hard_ham", 0), ("easy_ham_2", 0), ("spam_2", 1))}
    hard = by_date(folders["hard_ham"])
    old = folders["easy_ham"] + folders["spam"] + hard[:len(hard) // 2]
    new = folders["easy_ham_2"] + folders["spam_2"] + hard[len(hard) // 2:]
    if site == "dev":  # each label's older 60% trains, its newer 40% streams
        old, new = [], [*old]
        for label in (0, 1):
            ordered = by_date([m for m in new if m.label == label])
            cut = int(len(ordered) * 0.6)
            old += ordered[:cut]
        chosen = {id(m) for m in old}
        new = [m for m in new if id(m) not in chosen]
    seen: set[str] = set()
    train, stream = [], []
    for target, mails in ((train, old), (stream, new)):
        for mail in mails:
            if mail.key not in seen:  # the same body twice: once, where it came first
                seen.add(mail.key)
                target.append(mail)
    return train, by_date(stream)


def tokenize_all(mails: list[Mail]) -> None:
    progress = Progress("tokenizing", len(mails))
    for mail in mails:
        mail.tokens = tokenize(mail.path.read_bytes())
        progress.step()
    progress.done()


# -- the gateway's side ----------------------------------------------------------------


def dataset(mails: list[Mail], extra: list[tuple[Mail, int]]) -> Dataset:
    names = [*sorted({m.folder for m in mails}), "learned"]
    tokens = [m.tokens for m in mails] + [m.tokens for m, _ in extra]
    labels = [m.label for m in mails] + [label for _, label in extra]
    groups = [names.index(m.folder) for m in mails] + [len(names) - 1] * len(extra)
    return Dataset(tokens=tokens, labels=np.array(labels, dtype=np.int8),
                   sources=[str(m.path) for m in mails] + [str(m.path) for m, _ in extra],
                   groups=np.array(groups, dtype=np.int64), group_names=names,
                   keys=[m.key for m in mails] + [m.key for m, _ in extra],
                   learned=len(extra))


def base_model(train: list[Mail], cache: Path, say) -> SpamModel:
    """The training mail's model, as ``gateway train`` makes it (the grid
    chosen by cross-validation; no nested measurement), cached."""
    from gateway.classifier.model import load_model

    digest = hashlib.sha256("".join(m.key for m in train).encode()).hexdigest()[:16]
    path = cache / f"base-{digest}"
    if (path / "model.json").exists():
        return load_model(path)
    say(f"training the site's model on {len(train)} messages (grid, 4-fold) ...")
    model, _ = train_dataset(dataset(train, []), seed=SEED, repeats=0, report=say)
    model.save(path)
    return load_model(path)


def retrain(train: list[Mail], learned: list[tuple[Mail, int]], settings: Any) -> SpamModel:
    """The training mail plus the site's labels, with the base model's
    hyperparameters: calibration and out-of-fold ham refitted (4 folds)."""
    data = dataset(train, learned)
    matrix = TokenMatrix(data.tokens)
    _, oof, _ = choose_settings(matrix.matrix, data.labels, [settings], 4, SEED,
                                groups=data.groups, blocks=matrix.blocks)
    calibration = fit_calibration(oof, data.labels)
    final = fit(matrix.matrix, data.labels, settings, data.groups, matrix.blocks)
    vocabulary = {matrix.tokens[c]: i for i, c in enumerate(final.columns)}
    learned_oof = {data.keys[i]: float(oof[i]) for i in range(len(train), len(data.keys))}
    meta = {"version": f"stream-{len(learned)}", "thresholds": {
        "training_ham": HamScores.of(oof[data.labels == 0],
                                     "out-of-fold training ham").to_json()},
            "learned_out_of_fold": learned_oof}
    return SpamModel(weights=final.weights, idf=final.idf, vocabulary=vocabulary,
                     intercept=final.intercept, calibration=calibration, meta=meta,
                     block=final.block)


def promoted(model: SpamModel, site_ham: list[float], target: float) -> SpamModel:
    """The model with its bands placed as ``gateway model promote`` places them."""
    from dataclasses import replace

    thresholds = dict(model.meta["thresholds"])
    if site_ham:
        thresholds["site_ham"] = HamScores.of(site_ham, "site ham").to_json()
    return replace(model, meta={**model.meta, "thresholds": thresholds}).placed(target)


class Rules:
    """The default rules' verdict from the other checks and a BAYES band."""

    def __init__(self) -> None:
        from tests.bench.classifier import Rules as Bench

        self.bench = Bench()
        self.cache: dict[Path, tuple[float, str | None]] = {}

    def held(self, mail: Mail, probability: float) -> bool:
        if mail.path not in self.cache:
            self.cache[mail.path] = self.bench.others(mail.path.read_bytes())
        return self.bench.held(self.cache[mail.path], probability)

    def close(self) -> None:
        self.bench.close()


def stream_score(model: SpamModel, log_odds: float) -> float:
    """A score comparable across retrained models: the placed log-odds."""
    if model.placement is None:
        a, b = model.calibration
        return a * log_odds + b
    return model.placement.slope * (log_odds - model.placement.anchor) + \
        math.log(PLACED_PROBABILITY / (1 - PLACED_PROBABILITY))


@dataclass
class Run:
    name: str
    scores: list[float] = field(default_factory=list)
    held: list[bool] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    labelled: int = 0
    retrains: int = 0
    curve: list[tuple[int, float]] = field(default_factory=list)  # (messages, (1-ROCA)%)


def operator_labels(rate: float, seed: int, stream: list[Mail]) -> np.ndarray:
    """Which mistakes the operator would label: the same draw per message
    for every filter at this rate."""
    rng = np.random.RandomState(seed + int(rate * 1000))
    return rng.random_sample(len(stream)) < rate


def gateway_stream(stream: list[Mail], train: list[Mail], base: SpamModel, rules: Rules,
                   rate: float, delay: int, every: int, target: float, say) -> Run:
    run = Run(f"gateway feedback {rate:g}")
    settings = _settings(base)
    model = promoted(base, [], target)
    labels_on = operator_labels(rate, SEED, stream)
    pending: list[tuple[int, Mail, int]] = []
    learned: list[tuple[Mail, int]] = []
    fresh = 0
    started = time.monotonic()
    for i, mail in enumerate(stream):
        while pending and pending[0][0] <= i:
            _, labelled, label = pending.pop(0)
            learned.append((labelled, label))
            fresh += 1
        if fresh and i % every == 0:
            model = retrain(train, learned, settings)
            site_ham = [model.meta["learned_out_of_fold"][m.key] for m, label in learned
                        if label == 0]
            model = promoted(model, site_ham, target)
            fresh = 0
            run.retrains += 1
        log_odds = model.log_odds(mail.tokens)
        probability = model.probability_of(log_odds)
        held = rules.held(mail, probability)
        _record(run, stream_score(model, log_odds), held, mail.label, i)
        if held != bool(mail.label) and labels_on[i]:
            pending.append((i + delay, mail, mail.label))
            run.labelled += 1
        if (i + 1) % BLOCK == 0:
            say(f"  {run.name}: {i + 1}/{len(stream)} messages, {run.labelled} labelled, "
                f"{run.retrains} retrains ({time.monotonic() - started:.0f}s)")
    return run


def _settings(model: SpamModel):
    from gateway.classifier.train import Settings

    return Settings(**model.meta["settings"])


def _record(run: Run, score: float, held: bool, label: int, i: int) -> None:
    run.scores.append(score)
    run.held.append(held)
    run.labels.append(label)
    if (i + 1) % 100 == 0:
        labels = np.array(run.labels)
        if labels.min() != labels.max():
            run.curve.append((i + 1, 100 * (1 - roc_auc(np.array(run.scores), labels))))


# -- SpamAssassin's side ----------------------------------------------------------------

SA_PL = r"""
use strict;
use warnings;
use Mail::SpamAssassin;
my ($dir) = @ARGV;
sub spamassassin {
    my $sa = Mail::SpamAssassin->new({
        rules_filename => "$dir/rules", site_rules_filename => "$dir/rules",
        userprefs_filename => "$dir/user_prefs", userstate_dir => $dir,
        local_tests_only => 1, dont_copy_prefs => 1,
    });
    $sa->init(1);
    return $sa;
}
sub slurp {
    my ($path) = @_;
    local $/;
    open(my $fh, '<:raw', $path) or die "$path: $!";
    my $text = <$fh>;
    return $text;
}
my $sa = spamassassin();
$| = 1;
while (my $line = <STDIN>) {
    chomp $line;
    my ($command, $label, $path) = split /\t/, $line, 3;
    if ($command eq 'learn') {
        my $mail = $sa->parse(slurp($path));
        $sa->learn($mail, undef, $label eq 'spam' ? 1 : 0, 0);
        $mail->finish;
    } elsif ($command eq 'sync') {
        $sa->finish_learner();
        $sa = spamassassin();
        print "ok\n";
    } elsif ($command eq 'check') {
        my $mail = $sa->parse(slurp($path));
        my $status = $sa->check($mail);
        my $p = $status->{bayes_score};
        printf "%s\n", defined $p ? sprintf("%.17g", $p) : "nan";
        $status->finish;
        $mail->finish;
    }
}
$sa->finish_learner();
"""

SA_CF = """loadplugin Mail::SpamAssassin::Plugin::Check
loadplugin Mail::SpamAssassin::Plugin::Bayes
use_bayes 1
use_bayes_rules 1
bayes_auto_learn 0
bayes_path {dir}/bayes
bayes_store_module Mail::SpamAssassin::BayesStore::SDBM
bayes_learn_to_journal 0
bayes_min_ham_num 200
bayes_min_spam_num 200
body BAYES_ANY eval:check_bayes('0.00', 'undef')
"""


class SpamAssassin:
    """One SpamAssassin process with a Bayes database of its own."""

    def __init__(self, state: Path):
        state.mkdir(parents=True, exist_ok=True)
        (state / "rules").mkdir(exist_ok=True)
        (state / "rules" / "bayes.cf").write_text(SA_CF.format(dir=state))
        shutil.copy("/usr/share/spamassassin/20_aux_tlds.cf", state / "rules")
        script = state / "stream.pl"
        script.write_text(SA_PL)
        self.process = subprocess.Popen(["perl", str(script), str(state)], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True)

    def _send(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def _read(self) -> str:
        assert self.process.stdout is not None
        answer = self.process.stdout.readline()
        if not answer:
            raise SystemExit("stream: SpamAssassin stopped")
        return answer.strip()

    def learn(self, path: Path, label: int) -> None:
        self._send(f"learn\t{'spam' if label else 'ham'}\t{path}")

    def sync(self) -> None:
        self._send("sync\t\t")
        self._read()

    def check(self, path: Path) -> float:
        self._send(f"check\t\t{path}")
        return float(self._read())

    def close(self) -> None:
        if self.process.stdin:
            self.process.stdin.close()
        self.process.wait(timeout=120)


def spamassassin_stream(stream: list[Mail], base_state: Path, work: Path, rate: float,
                        delay: int, say) -> Run:
    run = Run(f"SpamAssassin feedback {rate:g}")
    state = work / f"sa-{rate:g}"
    shutil.rmtree(state, ignore_errors=True)
    shutil.copytree(base_state, state)
    sa = SpamAssassin(state)
    labels_on = operator_labels(rate, SEED, stream)
    pending: list[tuple[int, Mail]] = []
    started = time.monotonic()
    try:
        for i, mail in enumerate(stream):
            if pending and pending[0][0] <= i:
                while pending and pending[0][0] <= i:
                    labelled = pending.pop(0)[1]
                    sa.learn(labelled.path, labelled.label)
                sa.sync()  # the learned tokens count from the next check on
            probability = sa.check(mail.path)
            probability = 0.5 if math.isnan(probability) else probability
            held = probability >= SA_DECISION
            _record(run, probability, held, mail.label, i)
            if held != bool(mail.label) and labels_on[i]:
                pending.append((i + delay, mail))
                run.labelled += 1
            if (i + 1) % BLOCK == 0:
                say(f"  {run.name}: {i + 1}/{len(stream)} messages, {run.labelled} labelled "
                    f"({time.monotonic() - started:.0f}s)")
    finally:
        sa.close()
    return run


def spamassassin_base(train: list[Mail], cache: Path, say) -> Path:
    digest = hashlib.sha256("".join(m.key for m in train).encode()).hexdigest()[:16]
    state = cache / f"sa-base-{digest}"
    if (state / "done").exists():
        return state
    shutil.rmtree(state, ignore_errors=True)
    say(f"SpamAssassin learns the {len(train)} training messages ...")
    sa = SpamAssassin(state)
    progress = Progress("sa-learn", len(train))
    for mail in train:
        sa.learn(mail.path, mail.label)
        progress.step()
    sa.sync()
    sa.close()
    progress.done()
    (state / "done").write_text("")
    return state


# -- figures ----------------------------------------------------------------------------


def wilson(successes: int, n: int) -> tuple[float, float, float]:
    if n == 0:
        return math.nan, math.nan, math.nan
    z = 1.96
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return p, max(0.0, centre - half), min(1.0, centre + half)


def actions(held: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    held = held.astype(bool)
    ham, spam = labels == 0, labels == 1
    return {"fpr": wilson(int((held & ham).sum()), int(ham.sum())),
            "recall": wilson(int((held & spam).sum()), int(spam.sum())),
            "ham_held": int((held & ham).sum()), "n_ham": int(ham.sum()),
            "spam_held": int((held & spam).sum()), "n_spam": int(spam.sum())}


def one_minus_roca(scores: np.ndarray, labels: np.ndarray, rounds: int = 200
                   ) -> tuple[float, float, float]:
    """100 (1 - AUC), and a bootstrap 95% interval."""
    value = 100 * (1 - roc_auc(scores, labels))
    rng = np.random.RandomState(SEED)
    samples = []
    for _ in range(rounds):
        pick = rng.randint(0, len(labels), len(labels))
        if labels[pick].min() != labels[pick].max():
            samples.append(100 * (1 - roc_auc(scores[pick], labels[pick])))
    return value, float(np.percentile(samples, 2.5)), float(np.percentile(samples, 97.5))


def figures(run: Run) -> dict[str, Any]:
    scores, labels = np.array(run.scores), np.array(run.labels)
    held = np.array(run.held)
    blocks = [actions(held[i:i + BLOCK], labels[i:i + BLOCK])
              for i in range(0, len(labels), BLOCK)]
    return {"name": run.name, "n": len(labels), "labelled": run.labelled,
            "retrains": run.retrains, "one_minus_roca_percent": one_minus_roca(scores, labels),
            "recall_at_fpr": {str(p): recall_at_fpr(scores, labels, p)[0]
                              for p in (0.001, 0.0025)},
            "actions": actions(held, labels), "blocks": blocks, "curve": run.curve}


def percent(value: tuple[float, float, float]) -> str:
    return f"{value[0]:.2%} ({value[1]:.2%}-{value[2]:.2%})"


def print_figures(result: dict[str, Any]) -> None:
    roca = result["one_minus_roca_percent"]
    acts = result["actions"]
    retrains = f", {result['retrains']} retrains" if result["name"].startswith("gateway") else ""
    print(f"{result['name']}: {result['n']} messages, {result['labelled']} labelled{retrains}")
    print(f"  (1-ROCA)% {roca[0]:.3f} ({roca[1]:.3f}-{roca[2]:.3f}); recall at FPR <= 0.1% "
          f"{result['recall_at_fpr']['0.001']:.4f}, <= 0.25% "
          f"{result['recall_at_fpr']['0.0025']:.4f}")
    print(f"  actions: ham held {acts['ham_held']}/{acts['n_ham']} {percent(acts['fpr'])}; "
          f"spam held {acts['spam_held']}/{acts['n_spam']} {percent(acts['recall'])}")
    for number, block in enumerate(result["blocks"]):
        end = number * BLOCK + block["n_ham"] + block["n_spam"]
        print(f"    messages {number * BLOCK + 1:>5}-{end:<5} "
              f"ham held {block['ham_held']:>3}/{block['n_ham']:<4} "
              f"({block['fpr'][0]:.2%})  spam held {block['spam_held']:>4}/{block['n_spam']:<4} "
              f"({block['recall'][0]:.2%})")


def plot(results: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (curve, bars) = plt.subplots(1, 2, figsize=(12, 4.8))
    for result in results:
        if not result["curve"]:
            continue
        x, y = zip(*result["curve"], strict=True)
        style = "-" if result["name"].startswith("gateway") else "--"
        curve.plot(x, y, style, label=result["name"])
        recall = [b["recall"][0] for b in result["blocks"]]
        bars.plot([BLOCK * (i + 1) for i in range(len(recall))], recall, style + "o",
                  label=result["name"])
    curve.set_yscale("log")
    curve.set_xlabel("messages")
    curve.set_ylabel("cumulative (1-ROCA)% (log)")
    curve.set_title(f"{title}: ranking")
    bars.set_xlabel("messages (end of each block of 500)")
    bars.set_ylabel("spam held by the actions")
    bars.set_title("default-rule actions (SpamAssassin: p >= 0.99)")
    for axis in (curve, bars):
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


# -- issue 26's targets -------------------------------------------------------------------


def targets(stream: list[Mail], train: list[Mail], base: SpamModel, rules: Rules,
            target: float, say) -> dict[str, Any]:
    cold = promoted(base, [], target)
    held = np.array([rules.held(m, cold.probability_of(cold.log_odds(m.tokens)))
                     for m in stream])
    labels = np.array([m.label for m in stream])
    cold_figures = actions(held, labels)
    first: list[tuple[Mail, int]] = []
    counts = [0, 0]
    stop = len(stream) - 1
    for position, mail in enumerate(stream):
        stop = position
        if counts[mail.label] < 100:
            counts[mail.label] += 1
            first.append((mail, mail.label))
        if counts == [100, 100]:
            break
    rest = stream[stop + 1:]
    if counts != [100, 100] or len({m.label for m in rest}) < 2:
        say("after the first 200 labels: the stream has too few ham or spam to measure it")
        return {"cold_start": cold_figures, "cold_start_by_folder": _by_folder(stream, held),
                "cold_start_placement": cold.placement.describe() if cold.placement else None}
    say(f"after the first 200 labels: retraining on them, measuring on the {len(rest)} "
        "messages after them ...")
    model = retrain(train, first, _settings(base))
    site_ham = [model.meta["learned_out_of_fold"][m.key] for m, label in first if label == 0]
    model = promoted(model, site_ham, target)
    after = np.array([rules.held(m, model.probability_of(model.log_odds(m.tokens)))
                      for m in rest])
    scores = np.array([model.log_odds(m.tokens) for m in rest])
    rest_labels = np.array([m.label for m in rest])
    result = {"cold_start": cold_figures,
              "cold_start_placement": cold.placement.describe() if cold.placement else None,
              "after_200_labels": actions(after, rest_labels),
              "after_200_placement": model.placement.describe() if model.placement else None,
              "after_200_ranking": {str(p): recall_at_fpr(scores, rest_labels, p)[0]
                                    for p in (0.001, 0.0025)},
              "cold_start_by_folder": _by_folder(stream, held)}
    return result


def _by_folder(stream: list[Mail], held: np.ndarray) -> dict[str, Any]:
    labels = np.array([m.label for m in stream])
    found = {}
    for name in sorted({m.folder for m in stream}):
        mask = np.array([m.folder == name for m in stream])
        found[name] = actions(held[mask], labels[mask])
    return found


def print_targets(result: dict[str, Any]) -> None:
    cold, after = result["cold_start"], result["after_200_labels"]
    print("targets (issue 26), default rules:")
    print(f"  cold start ({result['cold_start_placement']}):")
    print(f"    spam held {cold['spam_held']}/{cold['n_spam']} {percent(cold['recall'])} "
          f"(target >= 85%); ham held {cold['ham_held']}/{cold['n_ham']} "
          f"{percent(cold['fpr'])} (target <= 0.25%)")
    for name, figures_ in result["cold_start_by_folder"].items():
        print(f"      {name:<11} ham held {figures_['ham_held']}/{figures_['n_ham']}, "
              f"spam held {figures_['spam_held']}/{figures_['n_spam']}")
    if "after_200_labels" not in result:
        print("  after the site's first 200 labels: too few ham or spam in this stream")
        return
    print(f"  after the site's first 200 labels ({result['after_200_placement']}):")
    print(f"    spam held {after['spam_held']}/{after['n_spam']} {percent(after['recall'])} "
          f"(target >= 95%); ham held {after['ham_held']}/{after['n_ham']} "
          f"{percent(after['fpr'])} (target <= 0.1%)")
    ranking = result["after_200_ranking"]
    print(f"    its ranking on the rest: recall at FPR <= 0.1% {ranking['0.001']:.4f}, "
          f"<= 0.25% {ranking['0.0025']:.4f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--site", choices=("new", "dev"), default="new")
    parser.add_argument("--feedback", default="0.1,0.5,1.0",
                        help="shares of mistakes the operator labels (default 0.1,0.5,1.0)")
    parser.add_argument("--delay", type=int, default=50,
                        help="messages between a mistake and its label (default 50)")
    parser.add_argument("--retrain-every", type=int, default=100,
                        help="messages between retrainings when labels came (default 100)")
    parser.add_argument("--target-fpr", type=float, default=0.001)
    parser.add_argument("-n", type=int, default=0, help="only the first N stream messages")
    parser.add_argument("--no-sa", action="store_true", help="the gateway alone")
    parser.add_argument("--targets", action="store_true", help="issue 26's targets too")
    parser.add_argument("--plot", type=Path, help="write the curves to this PNG")
    parser.add_argument("--json", type=Path, help="write every figure here")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir())
                        / "gateway-stream-bench", help="trained starting points, reused")
    args = parser.parse_args()
    rates = [float(r) for r in args.feedback.split(",") if r]
    if not rates or any(not 0 <= r <= 1 for r in rates):
        parser.error("--feedback: shares between 0 and 1, comma-separated")

    def say(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    train, stream = split(args.site)
    if args.n:
        stream = stream[:args.n]
    say(f"site {args.site}: {sum(m.label == 0 for m in train)} ham + "
        f"{sum(m.label for m in train)} spam to train on; a stream of "
        f"{sum(m.label == 0 for m in stream)} ham + {sum(m.label for m in stream)} spam")
    tokenize_all(train + stream)
    base = base_model(train, args.cache, say)
    rules = Rules()
    results: list[dict[str, Any]] = []
    report: dict[str, Any] = {"site": args.site, "delay": args.delay,
                              "retrain_every": args.retrain_every,
                              "target_fpr": args.target_fpr, "runs": results}
    try:
        sa_state = None
        if not args.no_sa:
            from tests.bench.classifier_anchor import ensure_spamassassin

            ensure_spamassassin()
            report["spamassassin"] = subprocess.run(
                ["spamassassin", "--version"], capture_output=True,
                text=True).stdout.splitlines()[0]
            sa_state = spamassassin_base(train, args.cache, say)
        with tempfile.TemporaryDirectory(prefix="stream-") as work:
            for rate in rates:
                run = gateway_stream(stream, train, base, rules, rate, args.delay,
                                     args.retrain_every, args.target_fpr, say)
                results.append(figures(run))
                print_figures(results[-1])
                if sa_state is not None:
                    run = spamassassin_stream(stream, sa_state, Path(work), rate, args.delay,
                                              say)
                    results.append(figures(run))
                    print_figures(results[-1])
        if args.targets:
            report["targets"] = targets(stream, train, base, rules, args.target_fpr, say)
            print_targets(report["targets"])
    finally:
        rules.close()
    if args.plot:
        plot(results, args.plot, f"site {args.site}, delay {args.delay}")
        print(f"plot written to {args.plot}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=float) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The anchor: SpamAssassin's Bayes and the gateway's classifier trained and
tested on the same folds of the same mail, side by side.

    .venv/bin/python tests/bench/classifier_anchor.py                # 5 folds x 4 repeats
    .venv/bin/python tests/bench/classifier_anchor.py --repeats 1 --json /tmp/anchor.json

The mail is the shared SpamAssassin corpus split as in tests/bench/classifier.py:
the 80% training set, cut into the very folds the gateway's nested
cross-validation uses (same function, seed and strata), and the 20% held
back from it. In every fold both classifiers learn the fold's training mail
and score its test mail:

- SpamAssassin 4's Bayes (Debian's ``spamassassin`` package, installed here
  with apt-get if missing), through its Perl API: a fresh Bayes database per
  fold (SDBM), ``learn`` on each training message (what ``sa-learn`` does),
  then ``check`` on each test message with only the Bayes plugin loaded,
  reading the exact probability (``bayes_score``; the BAYES_* rule bands are
  coarser). SpamAssassin reads the whole message, collection artefacts
  included (the collectors' Received and Delivered-To lines), which the
  gateway's tokenizer refuses; that can only flatter SpamAssassin here.
- the gateway's training procedure, nested as in ``gateway train``.

On the held-back mail the gateway's column is the shipped model (trained on
exactly the training set), SpamAssassin's a Bayes database trained on it.
Each figure is printed as the mean over the folds with a 95% interval
(Nadeau-Bengio corrected), and the paired difference per fold.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

PROJECT_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(PROJECT_ROOT))

from gateway.classifier.metrics import (  # noqa: E402
    FIGURE_LABELS,
    fold_figures,
    format_spread,
    paired_difference,
    repeated_folds,
    spreads,
)
from gateway.classifier.model import load_model  # noqa: E402
from gateway.classifier.train import GRID, TokenMatrix, cross_validate  # noqa: E402
from tests.bench.classifier import SEED, corpus  # noqa: E402

# SpamAssassin's Bayes alone quarantines nothing; its strongest bands are
# BAYES_99 (p >= 0.99) and BAYES_999: "FPR at the default thresholds" for it
# is read at p >= 0.99.
SA_DECISION = 0.99
FIGURES = ("auc", "recall_at_fpr_0.001", "recall_at_fpr_0.0025", "recall_at_fpr_0.005", "fpr",
           "recall")

BAYES_PL = r"""
use strict;
use warnings;
use Mail::SpamAssassin;

my ($dir, $train, $test, $min, $ignore) = @ARGV;
$min //= 200;
$ignore //= '';
my $ignored = join('', map { "bayes_ignore_header $_\n" } grep { length } split /,/, $ignore);
mkdir "$dir/rules";
open(my $cf, '>', "$dir/rules/bayes.cf") or die "$dir/rules/bayes.cf: $!";
print $cf <<"CF";
loadplugin Mail::SpamAssassin::Plugin::Check
loadplugin Mail::SpamAssassin::Plugin::Bayes
use_bayes 1
use_bayes_rules 1
bayes_auto_learn 0
bayes_path $dir/bayes
bayes_store_module Mail::SpamAssassin::BayesStore::SDBM
bayes_learn_to_journal 0
bayes_min_ham_num $min
bayes_min_spam_num $min
body BAYES_ANY eval:check_bayes('0.00', 'undef')
$ignored
CF
close $cf;
# The registry boundaries (TLDs) Bayes uses to tokenize hosts and URIs.
system("cp", "/usr/share/spamassassin/20_aux_tlds.cf", "$dir/rules/") == 0
    or die "cannot copy 20_aux_tlds.cf";

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
open(my $list, '<', $train) or die "$train: $!";
my $n = 0;
while (my $line = <$list>) {
    chomp $line;
    my ($label, $path) = split /\t/, $line, 2;
    my $mail = $sa->parse(slurp($path));
    $sa->learn($mail, undef, $label eq 'spam' ? 1 : 0, 0);
    $mail->finish;
    print STDERR "  sa-learn: $n messages\n" if ++$n % 1000 == 0;
}
$sa->finish_learner();

$sa = spamassassin();
open($list, '<', $test) or die "$test: $!";
$| = 1;
while (my $path = <$list>) {
    chomp $path;
    my $mail = $sa->parse(slurp($path));
    my $status = $sa->check($mail);
    my $p = $status->{bayes_score};
    printf "%s\t%s\n", defined $p ? sprintf("%.17g", $p) : "nan", $path;
    $status->finish;
    $mail->finish;
}
"""


def ensure_spamassassin() -> None:
    """Install Debian's spamassassin when sa-learn is missing (a benchmark may;
    the test suite never needs it)."""
    if shutil.which("sa-learn") and Path("/usr/share/perl5/Mail/SpamAssassin.pm").exists():
        return
    if os.geteuid() != 0:
        raise SystemExit("anchor: SpamAssassin is not installed; run as root to have it "
                         "installed (apt-get install spamassassin), or install it yourself")
    print("anchor: installing spamassassin with apt-get ...", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "spamassassin"], check=True, env=env)


def spamassassin_bayes(train: list[tuple[str, int]], test: list[str], workdir: Path,
                       ignore: tuple[str, ...] = ()) -> np.ndarray:
    """SpamAssassin's Bayes probability for each test file, after learning
    the training files in a fresh database."""
    state = workdir / "state"
    shutil.rmtree(state, ignore_errors=True)
    state.mkdir(parents=True)
    script = workdir / "bayes.pl"
    script.write_text(BAYES_PL)
    train_list, test_list = workdir / "train.txt", workdir / "test.txt"
    train_list.write_text("".join(f"{'spam' if label else 'ham'}\t{path}\n"
                                  for path, label in train))
    test_list.write_text("".join(f"{path}\n" for path in test))
    result = subprocess.run(["perl", str(script), str(state), str(train_list), str(test_list),
                             "200", ",".join(ignore)], capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"anchor: SpamAssassin failed: {result.stderr.strip()[-500:]}")
    found = {}
    for line in result.stdout.splitlines():
        value, path = line.split("\t", 1)
        found[path] = float(value)
    return np.array([found.get(path, float("nan")) for path in test])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--no-held-back", action="store_true",
                        help="skip the comparison on the held-back 20%%")
    parser.add_argument("--json", type=Path, help="write the figures here (for the card)")
    parser.add_argument("--sa-like-gateway", action="store_true",
                        help="SpamAssassin ignores the headers the gateway's tokenizer "
                             "excludes as collection artefacts (bayes_ignore_header), "
                             "Received included")
    parser.add_argument("--sa-from", type=Path,
                        help="reuse SpamAssassin's figures from an earlier --json of this "
                             "bench on the same folds (they do not depend on the gateway's "
                             "model; the folds' sizes are checked) instead of running it "
                             "again (~30 minutes)")
    args = parser.parse_args()
    earlier = json.loads(args.sa_from.read_text()) if args.sa_from else None
    ignore: tuple[str, ...] = ()
    if args.sa_like_gateway:
        from gateway.classifier.features import EXCLUDED_HEADERS

        ignore = tuple(sorted(EXCLUDED_HEADERS))
    if earlier is not None:
        if (earlier.get("folds"), earlier.get("repeats"), earlier.get("seed")) != \
                (args.folds, args.repeats, SEED) or bool(earlier.get("sa_ignores")) != bool(ignore):
            parser.error(f"{args.sa_from}: other folds or SpamAssassin settings")
        version = earlier["spamassassin"]
    else:
        ensure_spamassassin()
        version = subprocess.run(["spamassassin", "--version"], capture_output=True,
                                 text=True).stdout.splitlines()[0]
    data, training, held = corpus()
    labels = data.labels[training]
    groups = data.groups[training]
    sources = [data.sources[i] for i in training]
    decision = load_model(PROJECT_ROOT / "models" / "default").meta["thresholds"][
        "decision_probability"]
    print(f"anchor: {version}; training set {int((labels == 0).sum())} ham, "
          f"{int(labels.sum())} spam; {args.folds} folds x {args.repeats} repeats, seed {SEED}")

    gateway_folds: list[dict[str, float]] = []
    if args.repeats:
        matrix = TokenMatrix([data.tokens[i] for i in training])
        cv = cross_validate(matrix, labels, groups, args.folds, args.repeats, SEED, GRID, 4,
                            decision, report=lambda line: print("gateway " + line, flush=True))
        gateway_folds = cv["per_fold"]

    splits = repeated_folds(labels, args.folds, args.repeats, SEED, groups) \
        if args.repeats else []
    sa_folds: list[dict[str, float]] = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="anchor-") as work:
        for number, (train_index, test_index) in enumerate(splits):
            if earlier is not None:
                figures = earlier["per_fold"]["spamassassin_bayes"][number]
                if (figures["n_ham"], figures["n_spam"]) != (
                        float((labels[test_index] == 0).sum()), float(labels[test_index].sum())):
                    raise SystemExit(f"{args.sa_from}: fold {number + 1} is not this fold")
                sa_folds.append(figures)
                continue
            probabilities = spamassassin_bayes(
                [(sources[i], int(labels[i])) for i in train_index],
                [sources[i] for i in test_index], Path(work), ignore)
            figures = fold_figures(probabilities, probabilities, labels[test_index],
                                   SA_DECISION)
            sa_folds.append(figures)
            elapsed = time.monotonic() - started
            print(f"spamassassin fold {number + 1}/{len(splits)}: AUC {figures['auc']:.5f}, "
                  f"recall at FPR <= 0.25% {figures['recall_at_fpr_0.0025']:.4f} "
                  f"({elapsed:.0f}s, ~{elapsed / (number + 1) * (len(splits) - number - 1):.0f}s "
                  f"left)", flush=True)
        test_fraction = 1 / (args.folds - 1)
        report: dict[str, Any] = {"sa_ignores": list(ignore)}
        if args.repeats:
            report.update({
                "spamassassin": version, "folds": args.folds, "repeats": args.repeats, "seed": SEED,
                "gateway": spreads(gateway_folds, test_fraction, FIGURES),
                "spamassassin_bayes": spreads(sa_folds, test_fraction, FIGURES),
                "difference": {key: paired_difference(gateway_folds, sa_folds, key, test_fraction)
                               for key in FIGURES},
                "per_fold": {"gateway": gateway_folds, "spamassassin_bayes": sa_folds},
                "decision": {"gateway": decision, "spamassassin_bayes": SA_DECISION},
            })
            print(f"\nsame {len(splits)} folds of the training set; mean (95% interval):")
            print(f"  {'':<36} {'gateway':<26} {'SpamAssassin Bayes':<26} gateway - SA")
            for key in FIGURES:
                label = FIGURE_LABELS[key] if key not in ("fpr", "recall") else {
                    "fpr": "FPR (gw: default rules; SA: p>=0.99)",
                    "recall": "recall (same thresholds)"}[key]
                digits = 5 if key == "auc" else 4
                difference = report["difference"][key]
                print(f"  {label:<36} {format_spread(report['gateway'][key], digits=digits):<26} "
                      f"{format_spread(report['spamassassin_bayes'][key], digits=digits):<26} "
                      f"{difference['mean']:+.{digits}f} ({difference['low']:+.{digits}f} to "
                      f"{difference['high']:+.{digits}f})")

        if not args.no_held_back:
            from gateway.classifier.metrics import summarize

            model = load_model(PROJECT_ROOT / "models" / "default")
            if model.meta["data"]["train_ham"] + model.meta["data"]["train_spam"] != \
                    len(training):
                print("\nheld back: models/default was not trained on this training set; "
                      "skipped")
            else:
                print("\nheld back (20%): SpamAssassin learns the whole training set ...",
                      flush=True)
                held_labels = data.labels[held]
                scores = np.array([model.log_odds(data.tokens[i]) for i in held])
                gw = summarize(scores, np.array([model.probability_of(s) for s in scores]),
                               held_labels, decision)
                if earlier is not None and "held_back" in earlier:
                    sa_figures = earlier["held_back"]["spamassassin_bayes"]
                else:
                    sa = spamassassin_bayes([(sources[i], int(labels[i]))
                                             for i in range(len(training))],
                                            [data.sources[i] for i in held], Path(work), ignore)
                    sa_figures = summarize(sa, sa, held_labels, SA_DECISION)
                report["spamassassin"] = version
                report["held_back"] = {"gateway": gw, "spamassassin_bayes": sa_figures}
                print(f"  {gw['n_ham']} ham, {gw['n_spam']} spam")
                print(f"  {'':<36} {'gateway':<12} SpamAssassin Bayes")
                print(f"  {'ROC AUC':<36} {gw['auc']:<12.5f} {sa_figures['auc']:.5f}")
                for point in gw["recall_at_fpr"]:
                    print(f"  {FIGURE_LABELS['recall_at_fpr_' + point]:<36} "
                          f"{gw['recall_at_fpr'][point]:<12.4f} "
                          f"{sa_figures['recall_at_fpr'][point]:.4f}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

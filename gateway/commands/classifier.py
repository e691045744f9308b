"""``gateway train``, ``gateway evaluate`` and ``gateway model``: the spam
model's life cycle, for operators."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from gateway.checks.bayes import decision_probability, model_location
from gateway.classifier.corpus import CorpusError, Progress, read_corpus
from gateway.classifier.metrics import (
    FIGURE_LABELS,
    FOLD_FIGURES,
    figures_on_folds,
    format_spread,
    paired_difference,
    plot_roc,
    spreads,
    summarize,
)
from gateway.classifier.model import ModelError, SpamModel, load_model
from gateway.classifier.store import ModelStore, StoreError
from gateway.classifier.train import (
    GRID,
    Labelled,
    TokenMatrix,
    cross_validate,
    load_dataset,
    tokenize,
    train,
)
from gateway.commands.common import UsageError, config_from
from gateway.config import Config
from gateway.ruleset import load_rules

# The folds a fixed model's held-out mail is split into for the spread, and
# for the paired comparison of two models at promotion.
EVALUATION_FOLDS, EVALUATION_REPEATS, EVALUATION_SEED = 5, 4, 42
# The figure the promotion gate guards, and the one it must not raise.
GATE_FIGURE = "recall_at_fpr_0.0025"


def _decision_probability(config: Config) -> float:
    rules = load_rules(config.policy.rules)
    return decision_probability(dict(rules.scores), rules.quarantine)


def learned_set(config: Config, say: Callable[[str], None]) -> list[Labelled]:
    """The stored training set (gateway learn, the console's accepted labels)."""
    from gateway.classifier.trainingset import TrainingSet, TrainingSetError

    try:
        stored = TrainingSet(config.classifier.training_set_url(config.quarantine.url))
    except TrainingSetError as exc:
        raise UsageError(f"--feedback: {exc}") from None
    try:
        items = list(stored.labelled())
    finally:
        stored.close()
    say(f"learned training set: {sum(1 for i in items if i.label == 0)} ham, "
        f"{sum(1 for i in items if i.label == 1)} spam")
    return items


# -- train -------------------------------------------------------------------------

def add_cv_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=int, default=42, help="split and fold seed (default 42)")
    parser.add_argument("--folds", type=int, default=5,
                        help="cross-validation folds (default 5)")
    parser.add_argument("--repeats", type=int, default=4,
                        help="cross-validation repeats (default 4; 0 skips the measurement)")
    parser.add_argument("--feedback", action="store_true",
                        help="also train on the learned training set (gateway learn, the "
                             "console's accepted labels); its labels win over the folders'")


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ham", nargs="+", default=[], metavar="PATH",
                        help="good mail: Maildir folders, mbox files or folders of .eml")
    parser.add_argument("--spam", nargs="+", default=[], metavar="PATH", help="spam, likewise")
    parser.add_argument("--out", type=Path,
                        help="write the model folder here (default: add it to the model store "
                             "as a candidate, not promoted)")
    parser.add_argument("--validation", type=float, default=0.0,
                        help="fraction held back from everything, to check the final model "
                             "on (default 0: cross-validation only)")
    add_cv_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")


def _check_cv_arguments(args: argparse.Namespace) -> None:
    if args.folds < 2:
        raise UsageError("--folds must be 2 or more")
    if args.repeats < 0:
        raise UsageError("--repeats must be 0 or more")
    if not (args.ham or args.spam or args.feedback):
        raise UsageError("give --ham and --spam mail, or --feedback for the learned set")
    if not args.feedback and not (args.ham and args.spam):
        raise UsageError("give both --ham and --spam (or --feedback to add the learned set)")


def train_main(args: argparse.Namespace) -> int:
    config = config_from(args)
    if not 0 <= args.validation < 0.9:
        raise UsageError("--validation must be between 0 and 0.9")
    _check_cv_arguments(args)
    say = (lambda text: print(text, file=sys.stderr)) if args.json else print
    learned = learned_set(config, say) if args.feedback else []
    try:
        model, figures = train(args.ham, args.spam, seed=args.seed, validation=args.validation,
                               folds=args.folds, repeats=args.repeats,
                               decision_probability=_decision_probability(config), report=say,
                               learned=learned)
    except CorpusError as exc:
        raise UsageError(str(exc)) from None
    except ValueError as exc:
        raise UsageError(f"train: {exc}") from None
    if args.out:
        model.save(args.out)
        where = str(args.out)
    else:
        with tempfile.TemporaryDirectory() as staging:
            model.save(Path(staging) / "model")
            try:
                store = ModelStore(config.classifier.store)
                store.add(Path(staging) / "model")
            except StoreError as exc:  # a database store: the message names it
                raise UsageError(f"train: {exc}") from None
            except OSError as exc:
                raise UsageError(f"classifier.store {config.classifier.store}: {exc}") from None
        where = f"{store.root} (candidate; promote with "\
                f"'gateway model promote {model.version}')"
    if args.json:
        print(json.dumps({"version": model.version, "path": where, **figures}, indent=2))
    else:
        print(f"model {model.version} written to {where}")
        if "cross_validation" in figures:
            print_cv_report(figures["cross_validation"])
        if "validation" in figures:
            print(f"held-back split ({figures['validation']['n_ham']} ham, "
                  f"{figures['validation']['n_spam']} spam), final model:")
            print_figures(figures["validation"])
    return 0


def print_cv_report(cv: dict[str, Any]) -> None:
    print(f"{cv['method']}; {cv['interval']} interval:")
    allowed = cv.get("allowed_false_positives", {})
    size = cv.get("fold_size", {})
    for key in FOLD_FIGURES:
        note = ""
        if key.startswith("recall_at_fpr_"):
            n = allowed.get(key.removeprefix("recall_at_fpr_"))
            if n is not None:
                note = f"  ({n} false positive{'s' if n != 1 else ''} allowed per fold)"
        if key == "fpr":
            note = f"  (spam probability >= {cv['decision_probability']:g})"
        print(f"  {FIGURE_LABELS[key]:<40} "
              f"{format_spread(cv['figures'][key], digits=5 if key == 'auc' else 4)}{note}")
    if size:
        print(f"  (a test fold: {size['ham']:.0f} ham, {size['spam']:.0f} spam)")


# -- evaluate ----------------------------------------------------------------------

def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="model folder or store version (default: the model "
                                        "the gateway uses)")
    parser.add_argument("--ham", nargs="+", default=[], metavar="PATH")
    parser.add_argument("--spam", nargs="+", default=[], metavar="PATH")
    parser.add_argument("--cross-validate", action="store_true",
                        help="measure the training procedure on this mail by nested repeated "
                             "cross-validation, instead of a trained model")
    add_cv_arguments(parser)
    parser.add_argument("--roc", type=Path, help="write the ROC curve to this PNG file")
    parser.add_argument("--json", action="store_true")


def resolve_model(config: Config, name: str | None) -> SpamModel:
    if name is None:
        path = model_location(config)
    elif Path(name).is_dir():
        path = Path(name)
    else:
        try:
            path = ModelStore(config.classifier.store).path_of(name)
        except StoreError as exc:
            raise UsageError(f"--model {name}: not a folder, and {exc}") from None
    try:
        return load_model(path).placed(config.classifier.target_fpr)
    except ModelError as exc:
        raise UsageError(str(exc)) from None


def read_labelled(ham: list[str], spam: list[str], show_progress: bool = True
                  ) -> tuple[list[frozenset[str]], np.ndarray]:
    """Tokens and labels of labelled mail (unparseable files skipped, said)."""
    try:
        samples = [(s, 0) for s in read_corpus(ham)] + [(s, 1) for s in read_corpus(spam)]
    except CorpusError as exc:
        raise UsageError(str(exc)) from None
    progress = Progress("reading mail", len(samples)) if show_progress else None
    tokens, labels = [], []
    for sample, label in samples:
        try:
            tokens.append(tokenize(sample.raw))
        except Exception as exc:
            print(f"gateway: {sample.source}: skipped, cannot parse: {exc}", file=sys.stderr)
            continue
        labels.append(label)
        if progress:
            progress.step()
    if progress:
        progress.done()
    labels_array = np.array(labels, dtype=np.int8)
    if len(set(labels)) < 2:
        raise UsageError("evaluate: need both ham and spam messages")
    return tokens, labels_array


def score_model(model: SpamModel, tokens: list[frozenset[str]]) -> tuple[np.ndarray, np.ndarray]:
    scores = np.array([model.log_odds(t) for t in tokens])
    return scores, np.array([model.probability_of(s) for s in scores])


def evaluate_scores(scores: np.ndarray, probabilities: np.ndarray, labels: np.ndarray,
                    decision: float, seed: int = EVALUATION_SEED) -> dict[str, Any]:
    """Figures on the whole set, and their spread over repeated folds of it."""
    figures = summarize(scores, probabilities, labels, decision)
    per_fold = figures_on_folds(scores, probabilities, labels, decision, EVALUATION_FOLDS,
                                EVALUATION_REPEATS, seed)
    figures["spread"] = spreads(per_fold, independent=EVALUATION_FOLDS)
    figures["folds"] = {"folds": EVALUATION_FOLDS, "repeats": EVALUATION_REPEATS, "seed": seed,
                        "interval": "95%, t over the folds of one repeat"}
    figures["per_fold"] = per_fold
    return figures


def evaluate_model(model: SpamModel, ham: list[str], spam: list[str],
                   decision: float, show_progress: bool = True) -> tuple[dict[str, Any], Any]:
    tokens, labels = read_labelled(ham, spam, show_progress)
    scores, probabilities = score_model(model, tokens)
    return evaluate_scores(scores, probabilities, labels, decision), (scores, labels)


def evaluate_main(args: argparse.Namespace) -> int:
    config = config_from(args)
    if args.cross_validate:
        return cross_validate_main(args, config)
    if args.feedback:
        raise UsageError("--feedback goes with --cross-validate (a trained model is measured "
                         "on the mail given)")
    if not (args.ham and args.spam):
        raise UsageError("evaluate: give both --ham and --spam")
    model = resolve_model(config, args.model)
    figures, (scores, labels) = evaluate_model(model, args.ham, args.spam,
                                               _decision_probability(config),
                                               show_progress=not args.json)
    figures["model"] = model.version
    if args.roc:
        plot_roc(scores, labels, args.roc, f"model {model.version}")
    if args.json:
        print(json.dumps({k: v for k, v in figures.items() if k != "per_fold"}, indent=2))
    else:
        print(f"model {model.version} on {figures['n_ham']} ham and {figures['n_spam']} spam")
        print_figures(figures)
        if args.roc:
            print(f"ROC curve written to {args.roc}")
    return 0


def cross_validate_main(args: argparse.Namespace, config: Config) -> int:
    _check_cv_arguments(args)
    if args.repeats < 1:
        raise UsageError("--cross-validate needs --repeats 1 or more")
    say = (lambda text: print(text, file=sys.stderr)) if args.json else print
    learned = learned_set(config, say) if args.feedback else []
    try:
        data = load_dataset(args.ham, args.spam, show_progress=not args.json, learned=learned)
    except CorpusError as exc:
        raise UsageError(str(exc)) from None
    n_spam = int(data.labels.sum())
    need = args.folds * 2
    if len(data.labels) - n_spam < need or n_spam < need:
        raise UsageError(f"evaluate: need at least {need} ham and {need} spam messages")
    cv = cross_validate(TokenMatrix(data.tokens), data.labels, data.groups, args.folds,
                        args.repeats, args.seed, GRID, 4, _decision_probability(config), say)
    if args.json:
        print(json.dumps(cv, indent=2))
    else:
        print_cv_report(cv)
    return 0


def print_figures(figures: dict[str, Any]) -> None:
    confusion = figures["confusion"]
    spread = figures.get("spread")

    def interval(key: str) -> str:
        if not spread:
            return ""
        value = spread[key]
        return f" (folds: {format_spread(value, digits=5 if key == 'auc' else 4)})"

    print(f"  AUC {figures['auc']:.5f}{interval('auc')}")
    print(f"  accuracy {figures['accuracy']:.4f}   precision {figures['precision']:.4f}   "
          f"recall {figures['recall']:.4f}   F1 {figures['f1']:.4f}")
    print(f"  false-positive rate {figures['fpr']:.4%}{interval('fpr')} (ham quarantined or "
          f"rejected by the classifier alone, spam probability >= "
          f"{figures['decision_probability']:g})")
    for point, recall in figures["recall_at_fpr"].items():
        print(f"  spam recall at FPR <= {float(point):.2%}: {recall:.4f}"
              f"{interval('recall_at_fpr_' + point)}")
    print(f"  confusion: {confusion['true_spam']} spam caught, {confusion['missed_spam']} "
          f"missed; {confusion['true_ham']} ham passed, {confusion['false_spam']} held")


# -- model list / promote / rollback -------------------------------------------------

def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(title="model commands", metavar="COMMAND")
    listing = commands.add_parser("list", help="versions in the store")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(handler=list_main)
    promote = commands.add_parser(
        "promote", help="make a version current, if it is no worse on a held-out set")
    promote.add_argument("version", help="store version, or a model folder to add and promote")
    promote.add_argument("--ham", nargs="+", metavar="PATH", help="held-out good mail")
    promote.add_argument("--spam", nargs="+", metavar="PATH", help="held-out spam")
    promote.add_argument("--force", action="store_true",
                         help="promote even if worse, or without a held-out set")
    promote.set_defaults(handler=promote_main)
    rollback = commands.add_parser(
        "rollback", help="go back to the previously promoted version (before the first "
                         "promotion: the shipped model)")
    rollback.set_defaults(handler=rollback_main)
    imported = commands.add_parser(
        "import", help="copy a model store folder's versions and current model into the "
                       "configured store (moving to a store in the database)")
    imported.add_argument("folder", type=Path, help="the old store (with versions/)")
    imported.set_defaults(handler=import_main)
    for sub in (listing, promote, rollback, imported):
        sub.add_argument("--config", default=argparse.SUPPRESS)


def _cv_brief(meta: dict[str, Any]) -> dict[str, Any] | None:
    cv = meta.get("cross_validation") or {}
    figures = cv.get("figures") or {}
    if not figures:
        return None
    return {key: figures[key]["mean"] for key in ("auc", GATE_FIGURE) if key in figures}


def list_main(args: argparse.Namespace) -> int:
    config = config_from(args)
    store = ModelStore(config.classifier.store)
    in_use = model_location(config)
    rows = [{
        "version": v.version,
        "current": v.current,
        "created": v.meta.get("created"),
        "cross_validation": _cv_brief(v.meta),
        "ham": (v.meta.get("data") or {}).get("ham"),
        "spam": (v.meta.get("data") or {}).get("spam"),
        "learned": (v.meta.get("data") or {}).get("learned", 0),
    } for v in store.versions()]
    if args.json:
        print(json.dumps({"in_use": str(in_use), "versions": rows}, indent=2))
        return 0
    print(f"model in use: {in_use}")
    if not rows:
        print(f"no versions in {store.root}")
    for row in rows:
        mark = "*" if row["current"] else " "
        cv = row["cross_validation"] or {}
        figures = (f"CV AUC {cv['auc']:.5f}, recall at FPR <= 0.25% {cv[GATE_FIGURE]:.4f}"
                   if "auc" in cv and GATE_FIGURE in cv else "")
        print(f"{mark} {row['version']}  {row['created'] or '?'}  "
              f"{row['ham']} ham / {row['spam']} spam ({row['learned']} learned)  {figures}")
    return 0


def compare_models(candidate: SpamModel, current: SpamModel, ham: list[str], spam: list[str],
                   decision: float) -> dict[str, Any]:
    """Both models on the same held-out mail and the same repeated folds of it:
    each one's figures with their spread, and the paired difference per fold."""
    tokens, labels = read_labelled(ham, spam)
    results = {}
    for name, model in (("candidate", candidate), ("current", current)):
        scores, probabilities = score_model(model, tokens)
        results[name] = evaluate_scores(scores, probabilities, labels, decision)
    differences = {key: paired_difference(results["candidate"]["per_fold"],
                                          results["current"]["per_fold"], key,
                                          independent=EVALUATION_FOLDS)
                   for key in ("auc", GATE_FIGURE, "fpr")}
    return {"candidate": results["candidate"], "current": results["current"],
            "difference": differences}


def gate_problems(comparison: dict[str, Any], candidate: str, current: str) -> list[str]:
    """Why the candidate must not replace the current model (empty: it may).

    Worse *beyond the interval*: the 95% interval of the paired per-fold
    difference lies wholly on the worse side. A difference the folds cannot
    tell from noise does not block a promotion."""
    problems = []
    recall = comparison["difference"][GATE_FIGURE]
    if recall["n"] and recall["high"] < 0:
        problems.append(
            f"{candidate} catches less spam at FPR <= 0.25% than {current} "
            f"({comparison['candidate']['spread'][GATE_FIGURE]['mean']:.4f} vs "
            f"{comparison['current']['spread'][GATE_FIGURE]['mean']:.4f}, difference "
            f"{recall['mean']:+.4f}, 95% interval {recall['low']:+.4f} to {recall['high']:+.4f})")
    fpr = comparison["difference"]["fpr"]
    if fpr["n"] and fpr["low"] > 0:
        problems.append(
            f"{candidate} holds more good mail than {current} "
            f"({comparison['candidate']['fpr']:.4%} > {comparison['current']['fpr']:.4%}, "
            f"difference per fold {fpr['mean']:+.4%}, 95% interval {fpr['low']:+.4%} to "
            f"{fpr['high']:+.4%})")
    return problems


def promote_main(args: argparse.Namespace) -> int:
    config = config_from(args)
    store = ModelStore(config.classifier.store)
    target = config.classifier.target_fpr
    try:
        version = store.add(Path(args.version)) if Path(args.version).is_dir() else args.version
        candidate = load_model(store.path_of(version)).placed(target)
    except (StoreError, ModelError) as exc:
        raise UsageError(str(exc)) from None
    try:
        current: SpamModel | None = load_model(model_location(config)).placed(target)
    except ModelError as exc:
        if not args.force:
            raise UsageError(f"promote: the model in use cannot be loaded to compare with "
                             f"({exc}); --force promotes without comparing") from None
        current = None
    details: dict[str, Any] = {"forced": args.force,
                               "previous": current.version if current else None}
    if args.ham and args.spam and current is not None:
        comparison = compare_models(candidate, current, args.ham, args.spam,
                                    _decision_probability(config))
        new, old = comparison["candidate"], comparison["current"]
        print(f"held-out set: {new['n_ham']} ham, {new['n_spam']} spam; the same "
              f"{EVALUATION_FOLDS} folds x {EVALUATION_REPEATS} repeats for both models")
        for label, figures in ((f"current   {current.version}", old),
                               (f"candidate {candidate.version}", new)):
            spread = figures["spread"]
            print(f"  {label}: recall at FPR <= 0.25% {format_spread(spread[GATE_FIGURE])}, "
                  f"false positives {figures['fpr']:.4%}, AUC {figures['auc']:.5f}")
        difference = comparison["difference"][GATE_FIGURE]
        print(f"  candidate - current, recall at FPR <= 0.25%: {difference['mean']:+.4f} "
              f"(95% interval {difference['low']:+.4f} to {difference['high']:+.4f})")
        details["evaluation"] = {"candidate": _brief(new), "current": _brief(old),
                                 "difference": comparison["difference"]}
        problems = gate_problems(comparison, candidate.version, current.version)
        if problems and not args.force:
            raise UsageError("promote: refused, " + "; ".join(problems) + "; --force overrides")
    elif args.ham or args.spam:
        raise UsageError("promote: the held-out set needs both --ham and --spam")
    elif not args.force:
        raise UsageError("promote: give a held-out set (--ham PATH --spam PATH) to compare "
                         "with the model in use, or --force")
    version, candidate, details["thresholds"] = place_on_site(config, store, candidate, current)
    if current is not None and current.version == candidate.version:
        raise UsageError(f"model {version} is already in use, its bands where they are")
    store.set_current(version, "promote", details)
    previous = current.version if current else "none"
    print(f"model {version} is now current (was {previous}); running gateways "
          f"pick it up within {config.classifier.reload_interval:g}s")
    return 0


def place_on_site(config: Config, store: ModelStore, candidate: SpamModel,
                  current: SpamModel | None) -> tuple[str, SpamModel, dict[str, Any]]:
    """The candidate with its bands placed on the site's ham (a version of
    its own, ``<base>-site<digest>``, when they move), and the before/after,
    printed: a promotion never moves the bands silently."""
    from gateway.classifier.site import (
        SiteError,
        SiteMail,
        site_ham,
        site_mail,
        site_scores,
        with_site_ham,
    )

    target = config.classifier.target_fpr
    try:
        mail = site_mail(config)
    except SiteError as exc:
        print(f"thresholds: cannot read the site's mail ({exc}); the bands stay on the "
              "candidate's own ham")
        mail = SiteMail()
    scores = site_scores(candidate, mail)
    ham = site_ham(scores)
    carried = (candidate.meta.get("thresholds") or {}).get("site_ham")
    if ham is not None and candidate.path is not None and \
            (carried is None or carried.get("top") != list(ham.top) or carried["n"] != ham.n):
        with tempfile.TemporaryDirectory() as staging:
            with_site_ham(candidate.path, ham, mail.origins(0), Path(staging) / "model")
            try:
                derived = store.add(Path(staging) / "model")
                candidate = load_model(store.path_of(derived)).placed(target)
            except (StoreError, ModelError) as exc:
                raise UsageError(f"promote: placing the bands on the site's ham: {exc}") \
                    from None

    def placement(model: SpamModel | None) -> str:
        if model is None:
            return "none"
        if model.placement is None:
            return f"{model.version}: the model's own calibration (it carries no ham scores)"
        return f"{model.version}: {model.placement.describe()}"

    print(f"thresholds (target FPR {target:.2%}; the default rules hold BAYES_95 and above "
          "on the classifier alone):")
    print(f"  before  {placement(current)}")
    print(f"  after   {placement(candidate)}")
    summary: dict[str, Any] = {
        "target_fpr": target,
        "before": current.placement.to_json() if current and current.placement else None,
        "after": candidate.placement.to_json() if candidate.placement else None,
        "site_ham": mail.origins(0), "site_spam": mail.origins(1)}
    n_ham, n_spam = len(scores.ham), len(scores.spam)
    if not mail.messages:
        print("  the site has no ham of its own yet (released mail, ham labels, autolearned "
              "ham): placed on the model's out-of-fold training ham")
    elif current is not None:
        old = site_scores(current, mail).held(current)
        new = scores.held(candidate)
        print(f"  on the site's {n_ham:,} ham and {n_spam:,} spam "
              f"({scores.out_of_fold} scored out of fold): BAYES_95 and above holds "
              f"{old[0]} -> {new[0]} ham and {old[1]} -> {new[1]} spam")
        summary["site_held"] = {"before": {"ham": old[0], "spam": old[1]},
                                "after": {"ham": new[0], "spam": new[1]}}
    return candidate.version, candidate, summary


def rollback_main(args: argparse.Namespace) -> int:
    config = config_from(args)
    store = ModelStore(config.classifier.store)
    previous = store.previous_version()
    current = store.current_version()
    if previous is None:
        if current is None:
            raise UsageError(f"rollback: nothing to roll back: no version in {store.root} is "
                             "current, the shipped model is in use")
        store.clear_current("rollback", {"previous": current})
        print(f"the shipped model is current again (was {current})")
        return 0
    store.set_current(previous, "rollback", {"previous": current})
    print(f"model {previous} is current again (was {current})")
    return 0


def import_main(args: argparse.Namespace) -> int:
    """Every version of a folder store into the configured store, and its
    current model made current there (one history entry, 'import'); the
    folder's history.json stays where it is."""
    from gateway.classifier.store import DirectoryModelStore

    config = config_from(args)
    source = DirectoryModelStore(args.folder)
    if not source.versions_dir.is_dir():
        raise UsageError(f"import: {args.folder} has no versions/ folder: not a model store")
    target = ModelStore(config.classifier.store)
    try:
        added = [target.add(v.path) for v in source.versions()]
        current = source.current_version()
        if current is not None and current != target.current_version():
            target.set_current(current, "import", {"from": str(args.folder)})
    except StoreError as exc:
        raise UsageError(f"import: {exc}") from None
    print(f"{len(added)} version{'s' if len(added) != 1 else ''} imported into {target.root}"
          + (f"; {current} is current" if current else "; the shipped model stays current"))
    return 0


def _brief(figures: dict[str, Any]) -> dict[str, Any]:
    keys = ("auc", "fpr", "recall", "n_ham", "n_spam")
    brief = {k: figures[k] for k in keys}
    brief["recall_at_fpr"] = figures["recall_at_fpr"]
    brief["spread"] = {k: figures["spread"][k] for k in ("auc", GATE_FIGURE, "fpr")}
    return brief

"""``gateway train``, ``gateway evaluate`` and ``gateway model``: the spam
model's life cycle, for operators."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from gateway.checks.bayes import decision_probability, model_location
from gateway.classifier.corpus import CorpusError, Progress, read_corpus
from gateway.classifier.metrics import plot_roc, summarize
from gateway.classifier.model import ModelError, SpamModel, load_model
from gateway.classifier.store import ModelStore, StoreError
from gateway.classifier.train import tokenize, train
from gateway.cli import UsageError
from gateway.commands.common import config_from
from gateway.config import Config
from gateway.policy import load_rules


def _decision_probability(config: Config) -> float:
    rules = load_rules(config.policy.rules)
    return decision_probability(dict(rules.scores), rules.quarantine)


# -- train -------------------------------------------------------------------------

def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ham", nargs="+", required=True, metavar="PATH",
                        help="good mail: Maildir folders, mbox files or folders of .eml")
    parser.add_argument("--spam", nargs="+", required=True, metavar="PATH", help="spam, likewise")
    parser.add_argument("--out", type=Path,
                        help="write the model folder here (default: add it to the model store "
                             "as a candidate, not promoted)")
    parser.add_argument("--seed", type=int, default=42, help="split and fold seed (default 42)")
    parser.add_argument("--validation", type=float, default=0.25,
                        help="fraction held back to measure the model (default 0.25; "
                             "0 trains on everything and reports cross-validation)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")


def train_main(args: argparse.Namespace) -> int:
    config = config_from(args)
    if not 0 <= args.validation < 0.9:
        raise UsageError("--validation must be between 0 and 0.9")
    say = (lambda text: print(text, file=sys.stderr)) if args.json else print
    try:
        model, figures = train(args.ham, args.spam, seed=args.seed, validation=args.validation,
                               decision_probability=_decision_probability(config), report=say)
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
                ModelStore(config.classifier.store).add(Path(staging) / "model")
            except OSError as exc:
                raise UsageError(f"classifier.store {config.classifier.store}: {exc}") from None
        where = f"{config.classifier.store} (candidate; promote with "\
                f"'gateway model promote {model.version}')"
    if args.json:
        print(json.dumps({"version": model.version, "path": where, **figures}, indent=2))
    else:
        print(f"model {model.version} written to {where}")
        print_figures(figures)
    return 0


# -- evaluate ----------------------------------------------------------------------

def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="model folder or store version (default: the model "
                                        "the gateway uses)")
    parser.add_argument("--ham", nargs="+", required=True, metavar="PATH")
    parser.add_argument("--spam", nargs="+", required=True, metavar="PATH")
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
        return load_model(path)
    except ModelError as exc:
        raise UsageError(str(exc)) from None


def evaluate_model(model: SpamModel, ham: list[str], spam: list[str],
                   decision: float, show_progress: bool = True) -> tuple[dict[str, Any], Any]:
    log_odds, labels = [], []
    try:
        samples = [(s, 0) for s in read_corpus(ham)] + [(s, 1) for s in read_corpus(spam)]
    except CorpusError as exc:
        raise UsageError(str(exc)) from None
    progress = Progress("scoring", len(samples)) if show_progress else None
    for sample, label in samples:
        try:
            tokens = tokenize(sample.raw)
        except Exception as exc:
            print(f"gateway: {sample.source}: skipped, cannot parse: {exc}", file=sys.stderr)
            continue
        log_odds.append(model.log_odds(tokens))
        labels.append(label)
        if progress:
            progress.step()
    if progress:
        progress.done()
    scores = np.array(log_odds)
    labels_array = np.array(labels, dtype=np.int8)
    if len(set(labels)) < 2:
        raise UsageError("evaluate: need both ham and spam messages")
    probabilities = np.array([model.probability_of(s) for s in scores])
    return summarize(scores, probabilities, labels_array, decision), (scores, labels_array)


def evaluate_main(args: argparse.Namespace) -> int:
    config = config_from(args)
    model = resolve_model(config, args.model)
    figures, (scores, labels) = evaluate_model(model, args.ham, args.spam,
                                               _decision_probability(config),
                                               show_progress=not args.json)
    figures["model"] = model.version
    if args.roc:
        plot_roc(scores, labels, args.roc, f"model {model.version}")
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        print(f"model {model.version} on {figures['n_ham']} ham and {figures['n_spam']} spam")
        print_figures(figures)
        if args.roc:
            print(f"ROC curve written to {args.roc}")
    return 0


def print_figures(figures: dict[str, Any]) -> None:
    confusion = figures["confusion"]
    print(f"  AUC {figures['auc']:.5f}   accuracy {figures['accuracy']:.4f}   "
          f"precision {figures['precision']:.4f}   recall {figures['recall']:.4f}   "
          f"F1 {figures['f1']:.4f}")
    print(f"  false-positive rate {figures['fpr']:.4%} (ham quarantined or rejected by the "
          f"classifier alone, spam probability >= {figures['decision_probability']:g})")
    for point, recall in figures["recall_at_fpr"].items():
        print(f"  spam recall at FPR <= {float(point):.2%}: {recall:.4f}")
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
    rollback = commands.add_parser("rollback", help="go back to the previously promoted version")
    rollback.set_defaults(handler=rollback_main)
    for sub in (listing, promote, rollback):
        sub.add_argument("--config", default=argparse.SUPPRESS)


def list_main(args: argparse.Namespace) -> int:
    config = config_from(args)
    store = ModelStore(config.classifier.store)
    in_use = model_location(config)
    rows = [{
        "version": v.version,
        "current": v.current,
        "created": v.meta.get("created"),
        "auc": (v.meta.get("validation") or {}).get("auc"),
        "ham": (v.meta.get("data") or {}).get("ham"),
        "spam": (v.meta.get("data") or {}).get("spam"),
    } for v in store.list()]
    if args.json:
        print(json.dumps({"in_use": str(in_use), "versions": rows}, indent=2))
        return 0
    print(f"model in use: {in_use}")
    if not rows:
        print(f"no versions in {store.root}")
    for row in rows:
        mark = "*" if row["current"] else " "
        auc = f"AUC {row['auc']:.5f}" if row["auc"] is not None else ""
        print(f"{mark} {row['version']}  {row['created'] or '?'}  "
              f"{row['ham']} ham / {row['spam']} spam  {auc}")
    return 0


def promote_main(args: argparse.Namespace) -> int:
    config = config_from(args)
    store = ModelStore(config.classifier.store)
    try:
        version = store.add(Path(args.version)) if Path(args.version).is_dir() else args.version
        candidate = load_model(store.path_of(version))
    except (StoreError, ModelError) as exc:
        raise UsageError(str(exc)) from None
    current = load_model(model_location(config))
    details: dict[str, Any] = {"forced": args.force, "previous": current.version}
    if current.version == candidate.version:
        raise UsageError(f"model {version} is already in use")
    if args.ham and args.spam:
        decision = _decision_probability(config)
        new, _ = evaluate_model(candidate, args.ham, args.spam, decision)
        old, _ = evaluate_model(current, args.ham, args.spam, decision)
        print(f"held-out set: {new['n_ham']} ham, {new['n_spam']} spam")
        for label, figures in ((f"current   {current.version}", old),
                               (f"candidate {candidate.version}", new)):
            print(f"  {label}: false positives {figures['fpr']:.4%}, "
                  f"spam recall {figures['recall']:.4f}, AUC {figures['auc']:.5f}")
        details["evaluation"] = {"candidate": _brief(new), "current": _brief(old)}
        if new["fpr"] > old["fpr"] and not args.force:
            raise UsageError(
                f"promote: refused, {candidate.version} holds more good mail than "
                f"{current.version} ({new['fpr']:.4%} > {old['fpr']:.4%}); --force overrides")
    elif args.ham or args.spam:
        raise UsageError("promote: the held-out set needs both --ham and --spam")
    elif not args.force:
        raise UsageError("promote: give a held-out set (--ham PATH --spam PATH) to compare "
                         "with the model in use, or --force")
    store.set_current(version, "promote", details)
    print(f"model {version} is now current (was {current.version}); running gateways "
          f"pick it up within {config.classifier.reload_interval:g}s")
    return 0


def rollback_main(args: argparse.Namespace) -> int:
    config = config_from(args)
    store = ModelStore(config.classifier.store)
    previous = store.previous_version()
    current = store.current_version()
    if previous is None:
        raise UsageError(f"rollback: no earlier promoted version in {store.root}")
    store.set_current(previous, "rollback", {"previous": current})
    print(f"model {previous} is current again (was {current})")
    return 0


def _brief(figures: dict[str, Any]) -> dict[str, Any]:
    keys = ("auc", "fpr", "recall", "n_ham", "n_spam")
    return {k: figures[k] for k in keys}

"""Evaluation figures for a spam classifier, and their spread.

One split of a few hundred ham cannot tell two good spam models apart (at
800 ham, 0.25% false positives is two messages), so figures come from
repeated stratified k-fold cross-validation: every fold gives each figure
once, and a figure is reported as the mean over the folds with a 95%
interval. The folds of repeated cross-validation share most of their
training mail, so the plain t-interval of their figures is too narrow; the
interval here is Nadeau and Bengio's corrected resampled t (Machine
Learning 52, 2003; Bouckaert and Frank 2004 for repeated k-fold), whose
variance is scaled by ``1/J + n_test/n_train`` instead of ``1/J``.

Recall at a false-positive rate is read on each fold's own ham: with 660
ham in a fold, "FPR <= 0.1%" allows no false positive at all, 0.25% one and
0.5% three (``allowed_false_positives``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

FPR_POINTS = (0.001, 0.0025, 0.005)
# The figures of one fold, in report order, and how to print them.
FOLD_FIGURES = ("auc", "recall_at_fpr_0.001", "recall_at_fpr_0.0025", "recall_at_fpr_0.005",
                "fpr", "recall", "precision", "f1")


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    if len(labels) == 0 or labels.min() == labels.max():
        return float("nan")
    return float(roc_auc_score(labels, scores))


def allowed_false_positives(max_fpr: float, n_ham: int) -> int:
    return int(np.floor(max_fpr * n_ham + 1e-9))


def recall_at_fpr(scores: np.ndarray, labels: np.ndarray, max_fpr: float) -> tuple[float, float]:
    """Best spam recall with at most ``max_fpr`` of ham above the threshold.

    Returns (recall, threshold): spam counts as caught when its score is
    strictly above the threshold.
    """
    ham = np.sort(scores[labels == 0])[::-1]
    spam = scores[labels == 1]
    if len(ham) == 0 or len(spam) == 0:
        return float("nan"), float("nan")
    allowed = allowed_false_positives(max_fpr, len(ham))
    threshold = ham[allowed] if allowed < len(ham) else -np.inf
    return float((spam > threshold).mean()), float(threshold)


def summarize(log_odds: np.ndarray, probabilities: np.ndarray, labels: np.ndarray,
              decision_probability: float) -> dict[str, Any]:
    """Figures at the decision threshold plus threshold-free ones.

    ``log_odds`` ranks messages (probabilities saturate at 0 and 1 and would
    tie); ``decision_probability`` is where the classifier alone would have
    the message quarantined.
    """
    predicted = probabilities >= decision_probability
    spam = labels == 1
    tp = int((predicted & spam).sum())
    fp = int((predicted & ~spam).sum())
    fn = int((~predicted & spam).sum())
    tn = int((~predicted & ~spam).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    return {
        "auc": roc_auc(log_odds, labels),
        "accuracy": (tp + tn) / len(labels) if len(labels) else 0.0,
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        "fpr": fp / (fp + tn) if fp + tn else 0.0,
        "recall_at_fpr": {
            str(point): recall_at_fpr(log_odds, labels, point)[0] for point in FPR_POINTS
        },
        "confusion": {"true_spam": tp, "false_spam": fp, "missed_spam": fn, "true_ham": tn},
        "decision_probability": decision_probability,
        "n_ham": int((~spam).sum()),
        "n_spam": int(spam.sum()),
    }


def fold_figures(log_odds: np.ndarray, probabilities: np.ndarray, labels: np.ndarray,
                 decision_probability: float) -> dict[str, float]:
    """The flat figures of one fold (see FOLD_FIGURES)."""
    full = summarize(log_odds, probabilities, labels, decision_probability)
    flat = {key: float(full[key]) for key in ("auc", "fpr", "recall", "precision", "f1")}
    for point, value in full["recall_at_fpr"].items():
        flat[f"recall_at_fpr_{point}"] = float(value)
    flat["false_positives"] = float(full["confusion"]["false_spam"])
    flat["n_ham"], flat["n_spam"] = float(full["n_ham"]), float(full["n_spam"])
    return flat


# -- folds and spreads --------------------------------------------------------------


def repeated_folds(labels: np.ndarray, folds: int, repeats: int, seed: int,
                   groups: np.ndarray | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, test) index pairs of ``repeats`` stratified ``folds``-fold
    splits. Stratified by label and, when given, by ``groups`` (the folder a
    message came from), so a small kind of mail (hard ham) is in every fold."""
    from sklearn.model_selection import RepeatedStratifiedKFold

    strata = labels.astype(np.int64)
    if groups is not None:
        strata = strata * (int(groups.max()) + 1 if len(groups) else 1) + groups
        # A stratum smaller than the number of folds cannot be spread over
        # them: fold it into its label's stratum.
        counts = np.bincount(strata)
        strata = np.where(counts[strata] < folds, labels.astype(np.int64) * -1 - 1, strata)
    splitter = RepeatedStratifiedKFold(n_splits=folds, n_repeats=repeats, random_state=seed)
    return [(np.asarray(a), np.asarray(b))
            for a, b in splitter.split(np.zeros(len(labels)), strata)]


def _t_quantile(df: int) -> float:
    from scipy.stats import t

    return float(t.ppf(0.975, df))


def spread(values: Sequence[float], test_fraction: float | None = None,
           independent: int | None = None) -> dict[str, Any]:
    """Mean and 95% interval of a figure over folds.

    - ``test_fraction`` (n_test / n_train): folds of cross-validation, whose
      models share training mail; Nadeau and Bengio's corrected variance.
    - ``independent``: folds of *one* model's test mail, repeated: only the
      folds of one repetition are independent samples, so the variance of
      the mean is the per-fold variance over that many, not over all.
    - neither: independent values, the plain t-interval.
    """
    data = np.array([v for v in values if not math.isnan(v)], dtype=np.float64)
    if len(data) == 0:
        return {"mean": float("nan"), "low": float("nan"), "high": float("nan"), "n": 0}
    mean = float(data.mean())
    if len(data) < 2:
        return {"mean": mean, "low": mean, "high": mean, "n": 1}
    variance = float(data.var(ddof=1))
    if test_fraction is not None:
        scale, df = 1 / len(data) + test_fraction, len(data) - 1
    elif independent is not None:
        scale, df = 1 / independent, max(independent - 1, 1)
    else:
        scale, df = 1 / len(data), len(data) - 1
    half = _t_quantile(df) * math.sqrt(scale * variance)
    return {"mean": mean, "low": mean - half, "high": mean + half, "n": len(data)}


def spreads(per_fold: Iterable[dict[str, float]], test_fraction: float | None = None,
            keys: Sequence[str] = FOLD_FIGURES,
            independent: int | None = None) -> dict[str, dict[str, Any]]:
    rows = list(per_fold)
    return {key: spread([row[key] for row in rows], test_fraction, independent)
            for key in keys}


def paired_difference(new: Sequence[dict[str, float]], old: Sequence[dict[str, float]],
                      key: str, test_fraction: float | None = None,
                      independent: int | None = None) -> dict[str, Any]:
    """Mean and interval of ``new - old`` for one figure over the same folds."""
    return spread([a[key] - b[key] for a, b in zip(new, old, strict=True)], test_fraction,
                  independent)


def figures_on_folds(log_odds: np.ndarray, probabilities_: np.ndarray, labels: np.ndarray,
                     decision_probability: float, folds: int, repeats: int, seed: int
                     ) -> list[dict[str, float]]:
    """A fixed model's figures on each test fold of repeated stratified folds
    of its labelled mail (the same folds for every model given the same mail
    and seed: comparisons are paired)."""
    return [fold_figures(log_odds[test], probabilities_[test], labels[test],
                         decision_probability)
            for _, test in repeated_folds(labels, folds, repeats, seed)]


def format_spread(value: dict[str, Any], percent: bool = False, digits: int = 4) -> str:
    """'0.9812 (0.9770-0.9854)' or '98.12% (97.70-98.54)'."""
    if value.get("n", 0) == 0 or math.isnan(value["mean"]):
        return "n/a"
    low, high = max(value["low"], 0.0), value["high"]
    if percent:
        places = digits - 2
        return (f"{value['mean']:.{places}%} "
                f"({low * 100:.{places}f}-{min(high, 1.0) * 100:.{places}f})")
    return f"{value['mean']:.{digits}f} ({low:.{digits}f}-{min(high, 1.0):.{digits}f})"


FIGURE_LABELS = {
    "auc": "ROC AUC",
    "recall_at_fpr_0.001": "spam recall at FPR <= 0.1%",
    "recall_at_fpr_0.0025": "spam recall at FPR <= 0.25%",
    "recall_at_fpr_0.005": "spam recall at FPR <= 0.5%",
    "fpr": "FPR at the default thresholds",
    "recall": "spam recall at the default thresholds",
    "precision": "precision at the default thresholds",
    "f1": "F1 at the default thresholds",
}


def plot_roc(log_odds: np.ndarray, labels: np.ndarray, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(labels, log_odds)
    figure, (full, zoom) = plt.subplots(1, 2, figsize=(10, 4.5))
    for axis, limit in ((full, 1.0), (zoom, 0.01)):
        axis.plot(fpr, tpr, color="tab:blue")
        axis.set_xlim(0, limit)
        axis.set_ylim(0.8 if limit < 1 else 0, 1.001)
        axis.set_xlabel("false-positive rate (ham caught)")
        axis.set_ylabel("spam recall")
        axis.grid(True, alpha=0.3)
    for point in FPR_POINTS:
        zoom.axvline(point, color="grey", linestyle=":", linewidth=1)
    full.set_title(f"{title}: ROC")
    zoom.set_title("low false-positive region (FPR <= 1%)")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)

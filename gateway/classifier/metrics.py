"""Evaluation figures for a spam classifier."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

FPR_POINTS = (0.001, 0.0025, 0.005)


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    if labels.min() == labels.max():
        return float("nan")
    return float(roc_auc_score(labels, scores))


def recall_at_fpr(scores: np.ndarray, labels: np.ndarray, max_fpr: float) -> tuple[float, float]:
    """Best spam recall with at most ``max_fpr`` of ham above the threshold.

    Returns (recall, threshold): spam counts as caught when its score is
    strictly above the threshold.
    """
    ham = np.sort(scores[labels == 0])[::-1]
    spam = scores[labels == 1]
    if len(ham) == 0 or len(spam) == 0:
        return float("nan"), float("nan")
    allowed = int(np.floor(max_fpr * len(ham) + 1e-9))
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

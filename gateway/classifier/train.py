"""Train a naive-Bayes spam model (scikit-learn) and write a safe artifact.

Steps, all deterministic for a given seed:

1. read and de-duplicate the mail (a message given as both ham and spam is
   dropped; a label an operator stored with ``gateway learn`` overrides the
   folder a message was found in);
2. optionally hold back a stratified split (``validation``) that nothing
   below sees, to check the final model on;
3. measure the *procedure* by nested, repeated, stratified cross-validation
   (``folds`` x ``repeats``): in every outer fold the hyperparameters are
   chosen by an inner cross-validation of that fold's training mail only,
   the calibration is fitted on that inner cross-validation's scores, and
   the fold's test mail is scored once. Each figure is reported as the
   mean over the folds with a 95% interval (see :mod:`metrics`);
4. choose the hyperparameters the same way on all the training mail, fit
   the calibration on its out-of-fold scores and fit the final model. The
   out-of-fold scores of the ham go with the model (the top of their
   distribution): they place its bands at ``[classifier] target_fpr``
   (see :mod:`thresholds`), in every outer fold of step 3 as well. The
   learned set's out-of-fold scores go with it too, so that the site's own
   labels can measure the model without the scores it learned them with.

The model is MultinomialNB on token presence weighted by idf and
L2-normalised per message (Rennie et al. 2003), on the tokens that appear
in at least ``min_documents`` training messages, optionally with each given
folder of a label weighted as much as the others (``Settings.balance``).
Other naive-Bayes scorers (Bernoulli, Complement, Fisher's chi-squared
combining) are here for the benchmarks that measured them
(tests/bench/classifier_variants.py); the grid does not offer them.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from gateway.classifier.corpus import Progress, Sample, content_key, read_corpus
from gateway.classifier.features import BLOCKS, FEATURE_VERSION, message_tokens, token_block
from gateway.classifier.metrics import (
    FPR_POINTS,
    fold_figures,
    recall_at_fpr,
    repeated_folds,
    roc_auc,
    spreads,
    summarize,
)
from gateway.classifier.model import BANDS, SpamModel
from gateway.classifier.thresholds import HamScores, Placement
from gateway.mime import parse_bytes

log = logging.getLogger("gateway.train")

Report = Callable[[str], None]


SCORERS = ("mnb", "complement", "bernoulli", "fisher", "mnb-fisher")


@dataclass(frozen=True)
class Settings:
    """The hyperparameters chosen by cross-validation.

    ``scorer`` is how the learned token probabilities become a score:

    - ``mnb``: MultinomialNB on idf-weighted, L2-normalised token presence
      (Rennie et al. 2003); the log-odds is linear in the tokens;
    - ``bernoulli``: BernoulliNB on token presence (absent tokens count too);
    - ``mnb-fisher``: MultinomialNB's token log-odds as token probabilities
      (their sigmoid), combined like ``fisher``;
    - ``fisher``: BernoulliNB's per-token spam probability
      ``P(w|spam) / (P(w|spam) + P(w|ham))`` (Graham/Robinson), combined over
      the message's ``significant`` strongest tokens (those at least
      ``strength`` away from 0.5) by Fisher's chi-squared method, as
      SpamAssassin's and SpamBayes' Bayes do. The score is
      ``log Q(ham evidence) - log Q(spam evidence)``: the same ranking as
      their ``(1 + S - H) / 2`` where that is not saturated at 0 or 1, and
      still ordered where it is.
    """

    alpha: float
    min_documents: int = 2  # a token must appear in this many training messages
    scorer: str = "mnb"
    significant: int = 150  # fisher: at most this many tokens per message
    strength: float = 0.346  # fisher: only tokens with |p - 0.5| >= this
    balance: float = 0.0  # weigh each folder of a label by (its share)^-balance
    prune: float = 0.0  # keep only tokens whose spam probability is this far from 0.5
    blocks: int = 1  # 1: one L2 norm per message; 3: one per block (features.token_block)

    def describe(self) -> str:
        text = f"{self.scorer} alpha {self.alpha:g}, min_df {self.min_documents}"
        if self.balance:
            text += f", folders balanced^{self.balance:g}"
        if self.prune:
            text += f", tokens |p-0.5| >= {self.prune:g}"
        if self.blocks > 1:
            text += ", blocks normalised apart"
        if self.scorer == "fisher":
            text += f", {self.significant} tokens |p-0.5| >= {self.strength:g}"
        return text


# Measured on the shared corpus (tests/bench/classifier_variants.py, nested
# cross-validation; table in models/MODEL_CARD.md): smaller alphas than
# 0.003 won; keeping only the most significant tokens (chi-squared or
# |p - 0.5|), the Bernoulli and Complement models and Fisher's combining of
# the strongest tokens never helped, so the grid offers MultinomialNB alone.
# Normalising headers, text and structure apart helped. Balancing the
# folders (hard ham, a small folder of newsletters people asked for, against
# the big folders of list mail) helps on the same mail but fully balanced
# (1.0) it lost on newer mail (older-to-newer split), so it stops at 0.5.
GRID: tuple[Settings, ...] = tuple(
    Settings(alpha=alpha, min_documents=min_documents, balance=balance, blocks=blocks)
    for blocks in (1, 3)
    for balance in (0.0, 0.5)
    for min_documents in (2, 3)
    for alpha in (0.0001, 0.0003, 0.001, 0.003)
)
# What the model artifact (model.py) can score: idf-weighted, L2-normalised
# presence dotted with per-token weights. The other scorers are measured by
# the benchmarks only.
SHIPPABLE_SCORERS = ("mnb", "complement")
NB_CLASS = {"mnb": "MultinomialNB", "complement": "ComplementNB", "bernoulli": "BernoulliNB",
            "fisher": "BernoulliNB (Fisher-combined)",
            "mnb-fisher": "MultinomialNB (Fisher-combined)"}


@dataclass
class Dataset:
    tokens: list[frozenset[str]]
    labels: np.ndarray  # 1 = spam
    sources: list[str]
    groups: np.ndarray  # which given path (or the learned set) a message came from
    group_names: list[str] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)  # content_key of each message
    duplicates: int = 0
    conflicts: int = 0
    relabelled: int = 0
    learned: int = 0
    unreadable: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Labelled:
    """A message with an operator's label (``gateway learn``): it joins the
    training mail, and its label wins over the folder it was also found in."""

    raw: bytes
    label: int
    source: str


def tokenize(raw: bytes) -> frozenset[str]:
    return frozenset(message_tokens(parse_bytes(raw)))


def load_dataset(ham: Sequence[str | Path], spam: Sequence[str | Path],
                 show_progress: bool = True, learned: Sequence[Labelled] = (),
                 report: Report | None = None) -> Dataset:
    """Read, de-duplicate and tokenize the given mail plus the learned set."""
    samples: list[tuple[Sample, int, int]] = []
    names: list[str] = []
    for label, paths in ((0, ham), (1, spam)):
        for path in paths:
            names.append(f"{'spam' if label else 'ham'}:{path}")
            samples += [(s, label, len(names) - 1) for s in read_corpus([path])]
    if learned:
        names.append("learned")
    learned_labels: dict[str, int] = {}
    for item in learned:
        learned_labels[content_key(item.raw)] = item.label
    labels_by_key: dict[str, set[int]] = {}
    for sample, label, _ in samples:
        labels_by_key.setdefault(content_key(sample.raw), set()).add(label)
    progress = Progress("reading mail", len(samples) + len(learned)) if show_progress else None
    seen: set[str] = set()
    data = Dataset(tokens=[], labels=np.zeros(0, dtype=np.int8), sources=[],
                   groups=np.zeros(0, dtype=np.int64), group_names=names)
    labels: list[int] = []
    groups: list[int] = []
    entries = [(s.raw, s.source, label, group) for s, label, group in samples]
    entries += [(item.raw, item.source, item.label, len(names) - 1) for item in learned]
    for raw, source, label, group in entries:
        if progress:
            progress.step()
        key = content_key(raw)
        if key in seen:
            data.duplicates += 1
            continue
        if key in learned_labels:
            if learned_labels[key] != label or len(labels_by_key.get(key, ())) > 1:
                data.relabelled += 1
            label = learned_labels[key]
        elif len(labels_by_key[key]) > 1:
            data.conflicts += 1  # the same mail given as ham and as spam: noise
            continue
        seen.add(key)
        try:
            data.tokens.append(tokenize(raw))
        except Exception as exc:  # one broken file must not stop training
            data.unreadable.append(f"{source}: {exc}")
            continue
        labels.append(label)
        groups.append(group)
        data.sources.append(source)
        data.keys.append(key)
        data.learned += group == len(names) - 1 and bool(learned)
    if progress:
        progress.done()
    data.labels = np.array(labels, dtype=np.int8)
    data.groups = np.array(groups, dtype=np.int64)
    return data


def stratified_split(labels: np.ndarray, fraction: float, seed: int,
                     groups: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, held back) with ``fraction`` of each label (and of
    each group, when given) held back."""
    rng = np.random.RandomState(seed)
    strata = labels.astype(np.int64) if groups is None else groups * 2 + labels
    train, held = [], []
    for stratum in np.unique(strata):
        indices = np.flatnonzero(strata == stratum)
        rng.shuffle(indices)
        cut = round(len(indices) * fraction)
        held.append(indices[:cut])
        train.append(indices[cut:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(held))


# -- the model ------------------------------------------------------------------------


class TokenMatrix:
    """Every message's tokens as one sparse 0/1 matrix over all tokens seen;
    folds take rows of it, and each fit chooses its own columns."""

    def __init__(self, documents: Sequence[frozenset[str]]):
        from scipy.sparse import csr_matrix

        index: dict[str, int] = {}
        indptr: list[int] = [0]
        indices: list[int] = []
        for document in documents:
            indices.extend(index.setdefault(token, len(index)) for token in document)
            indptr.append(len(indices))
        self.tokens = list(index)
        self.blocks = np.array([token_block(t) for t in self.tokens], dtype=np.int8)
        self.matrix = csr_matrix(
            (np.ones(len(indices), dtype=np.float64), np.array(indices, dtype=np.int64),
             np.array(indptr, dtype=np.int64)),
            shape=(len(documents), len(index)))
        self.matrix.sort_indices()

    def rows(self, index: np.ndarray):
        return self.matrix[index]


@dataclass(frozen=True)
class NaiveBayes:
    columns: np.ndarray  # the matrix columns (tokens) the model knows
    weights: np.ndarray  # mnb, bernoulli: each present token's term of the log-odds
    idf: np.ndarray  # mnb: idf; others: ones
    intercept: float
    settings: Settings
    token_probability: np.ndarray | None = None  # fisher: P(spam | token present)
    block: np.ndarray | None = None  # each column's block, when normalised apart

    def log_odds(self, rows) -> np.ndarray:
        rows = rows[:, self.columns]
        if self.settings.scorer in ("mnb", "complement"):
            weighted = _weigh(rows, self.idf, self.block)
            return weighted @ self.weights.astype(np.float64) + self.intercept
        if self.settings.scorer == "bernoulli":
            return rows.tocsr() @ self.weights.astype(np.float64) + self.intercept
        assert self.token_probability is not None
        rows = rows.tocsr()
        probability = self.token_probability.astype(np.float64)
        out = np.empty(rows.shape[0])
        for i in range(rows.shape[0]):
            present = rows.indices[rows.indptr[i]:rows.indptr[i + 1]]
            out[i] = fisher_score(probability[present], self.settings.significant,
                                  self.settings.strength)[0]
        return out


def log_chi2_sf_even(statistic: float, half_df: int) -> float:
    """log Q(statistic, 2 * half_df), the chi-squared survival function for
    even degrees of freedom, in closed form
    (``exp(-m) * sum(m**i / i!, i < half_df)``, ``m = statistic / 2``) and in
    logs, so that the extremes of spam and ham stay ordered instead of
    rounding to 0 or 1."""
    from scipy.special import gammaln

    m = statistic / 2.0
    if m <= 0.0:
        return 0.0
    i = np.arange(half_df)
    terms = i * math.log(m) - gammaln(i + 1)
    top = float(terms.max())
    return min(0.0, -m + top + math.log(float(np.exp(terms - top).sum())))


def fisher_select(probability: np.ndarray, significant: int, strength: float) -> np.ndarray:
    """Positions of the tokens Fisher's method combines: those at least
    ``strength`` from 0.5, at most ``significant`` of them, strongest
    first (ties by position, so the choice is deterministic)."""
    distance = np.abs(probability - 0.5)
    candidates = np.flatnonzero(distance >= strength)
    if len(candidates) > significant:
        order = np.argsort(-distance[candidates], kind="stable")[:significant]
        candidates = np.sort(candidates[order])
    return candidates


def fisher_score(probability: np.ndarray, significant: int, strength: float
                 ) -> tuple[float, np.ndarray]:
    """(score, positions used) of one message's token probabilities by
    Fisher's chi-squared combining (Robinson; SpamBayes, SpamAssassin):
    ``log Q(-2 sum ln p, 2n) - log Q(-2 sum ln(1 - p), 2n)``; positive
    means spam. Both terms test "these tokens are no evidence", one for ham
    and one for spam, so a message with strong tokens both ways is not
    pushed to either end."""
    used = fisher_select(probability, significant, strength)
    if len(used) == 0:
        return 0.0, used
    chosen = np.clip(probability[used].astype(np.float64), 1e-12, 1 - 1e-12)
    n = len(used)
    ham = log_chi2_sf_even(-2.0 * float(np.log(chosen).sum()), n)
    spam = log_chi2_sf_even(-2.0 * float(np.log1p(-chosen).sum()), n)
    return ham - spam, used


def _weigh(rows, idf: np.ndarray, block: np.ndarray | None = None):
    """idf of each present token, each row divided by its L2 norm, or each
    block of a row by that block's L2 norm (``block``: each column's)."""
    from sklearn.preprocessing import normalize

    weighted = rows.multiply(idf.astype(np.float64).reshape(1, -1)).tocsr()
    if block is None:
        return normalize(weighted, norm="l2", copy=False)
    weighted.sum_duplicates()
    row_of = np.repeat(np.arange(weighted.shape[0]), np.diff(weighted.indptr))
    block_of = block[weighted.indices].astype(np.int64)
    squares = np.zeros((weighted.shape[0], BLOCKS))
    np.add.at(squares, (row_of, block_of), weighted.data ** 2)
    norms = np.sqrt(squares[row_of, block_of])
    weighted.data = weighted.data / np.where(norms > 0, norms, 1.0)
    return weighted


def folder_weights(labels: np.ndarray, groups: np.ndarray | None, balance: float
                   ) -> np.ndarray | None:
    """Per-message training weights that give each folder of a label (each
    ``--ham``/``--spam`` path, the learned set) the same total weight when
    ``balance`` is 1, and the weight of its size when 0: a small folder of
    newsletters people asked for then counts as much as a big one of list
    mail. The weights of a label sum to its number of messages."""
    if not balance or groups is None:
        return None
    weights = np.ones(len(labels))
    for label in (0, 1):
        mine = labels == label
        names, counts = np.unique(groups[mine], return_counts=True)
        share = dict(zip(names.tolist(), (counts / mine.sum()).tolist(), strict=True))
        raw = np.array([share[g] for g in groups[mine]]) ** -balance
        weights[mine] = raw * mine.sum() / raw.sum()
    return weights


def significant(rows, labels: np.ndarray, prune: float) -> np.ndarray:
    """Columns whose spam probability is at least ``prune`` from 0.5, as
    SpamAssassin's Bayes uses only tokens with ``|p - 0.5| >= 0.346``: Graham's
    ``p = (s/S) / (s/S + h/H)`` from the share of spam and ham holding the
    token, shrunk toward 0.5 by Robinson's ``(1/2 + n p) / (1 + n)`` so that a
    token seen once is not certain."""
    spam = np.asarray(rows[labels == 1].sum(axis=0)).ravel() / max(int((labels == 1).sum()), 1)
    ham = np.asarray(rows[labels == 0].sum(axis=0)).ravel() / max(int((labels == 0).sum()), 1)
    count = np.asarray(rows.sum(axis=0)).ravel()
    graham = spam / np.maximum(spam + ham, 1e-12)
    robinson = (0.5 + count * graham) / (1 + count)
    return np.flatnonzero(np.abs(robinson - 0.5) >= prune)


def fit(rows, labels: np.ndarray, settings: Settings, groups: np.ndarray | None = None,
        blocks: np.ndarray | None = None) -> NaiveBayes:
    """Fit one model on ``rows``; ``groups`` are the rows' folders (for
    ``balance``), ``blocks`` the columns' blocks (for ``blocks``)."""
    weights_ = folder_weights(labels, groups, settings.balance)
    frequency = np.asarray(rows.sum(axis=0)).ravel()
    columns = np.flatnonzero(frequency >= settings.min_documents)
    if settings.prune:
        columns = columns[significant(rows[:, columns], labels, settings.prune)]
    if settings.scorer in ("mnb", "complement", "mnb-fisher"):
        from sklearn.naive_bayes import ComplementNB, MultinomialNB

        idf = (np.log((1 + rows.shape[0]) / (1 + frequency[columns])) + 1).astype(np.float32)
        block = blocks[columns] if settings.blocks > 1 and blocks is not None else None
        model = (ComplementNB(alpha=settings.alpha, norm=True)
                 if settings.scorer == "complement" else MultinomialNB(alpha=settings.alpha))
        model.fit(_weigh(rows[:, columns], idf, block), labels, sample_weight=weights_)
        weights = (model.feature_log_prob_[1] - model.feature_log_prob_[0]).astype(np.float32)
        intercept = float(model.class_log_prior_[1] - model.class_log_prior_[0])
        if settings.scorer == "mnb-fisher":
            # MultinomialNB's own token log-odds as Graham/Robinson token
            # probabilities, combined by Fisher's method (not linear).
            probability = (1 / (1 + np.exp(-weights.astype(np.float64)))).astype(np.float32)
            return NaiveBayes(columns, weights, idf, intercept, settings, probability, block)
        return NaiveBayes(columns, weights, idf, intercept, settings, block=block)
    from sklearn.naive_bayes import BernoulliNB

    model = BernoulliNB(alpha=settings.alpha)
    model.fit(rows[:, columns], labels, sample_weight=weights_)
    present = model.feature_log_prob_  # log P(token present | class)
    absent = np.log1p(-np.exp(present))
    ones = np.ones(len(columns), dtype=np.float32)
    if settings.scorer == "bernoulli":
        weights = ((present[1] - present[0]) - (absent[1] - absent[0])).astype(np.float32)
        intercept = float(model.class_log_prior_[1] - model.class_log_prior_[0]
                          + (absent[1] - absent[0]).sum())
        return NaiveBayes(columns, weights, ones, intercept, settings)
    if settings.scorer != "fisher":
        raise ValueError(f"unknown scorer {settings.scorer!r}")
    # Graham's and Robinson's per-token probability: equal priors, so a token
    # seen in 1% of spam and 1% of ham is 0.5 whatever the class sizes.
    spam, ham = np.exp(present[1]), np.exp(present[0])
    token_probability = (spam / (spam + ham)).astype(np.float32)
    weights = np.log(token_probability / (1 - token_probability)).astype(np.float32)
    return NaiveBayes(columns, weights, ones, 0.0, settings, token_probability)


def fit_calibration(log_odds: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Platt scaling: p = sigmoid(a * log_odds + b), fitted by logistic regression."""
    from sklearn.linear_model import LogisticRegression

    regression = LogisticRegression(C=1.0)
    regression.fit(log_odds.reshape(-1, 1), labels)
    return float(regression.coef_[0][0]), float(regression.intercept_[0])


def probabilities(log_odds: np.ndarray, calibration: tuple[float, float],
                  placement: Placement | None = None) -> np.ndarray:
    if placement is not None:
        return np.array([placement.probability(float(s)) for s in log_odds])
    a, b = calibration
    return 1.0 / (1.0 + np.exp(-np.clip(a * log_odds + b, -500, 500)))


def ham_placement(oof_scores: np.ndarray, labels: np.ndarray, calibration: tuple[float, float],
                  target_fpr: float | None) -> Placement | None:
    """Where out-of-fold ham places the bands of a model with this calibration."""
    if target_fpr is None:
        return None
    ham = HamScores.of(oof_scores[labels == 0], "out-of-fold training ham")
    return Placement(ham.anchor(target_fpr), calibration[0], target_fpr, ham)


def selection_score(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """What the hyperparameters are chosen on: mean spam recall at the three
    low false-positive rates of pooled out-of-fold scores, then AUC."""
    recalls = [recall_at_fpr(scores, labels, point)[0] for point in FPR_POINTS]
    return float(np.mean(recalls)), roc_auc(scores, labels)


def choose_settings(rows, labels: np.ndarray, grid: Sequence[Settings], folds: int,
                    seed: int, report: Report | None = None, groups: np.ndarray | None = None,
                    blocks: np.ndarray | None = None
                    ) -> tuple[Settings, np.ndarray, list[dict[str, Any]]]:
    """The settings with the best out-of-fold selection score on ``rows``
    alone, and their out-of-fold log-odds (for the calibration)."""
    splits = repeated_folds(labels, folds, 1, seed, groups)
    best: tuple[tuple[float, float], Settings, np.ndarray] | None = None
    trials = []
    for settings in grid:
        scores = np.zeros(len(labels))
        for train_index, test_index in splits:
            model = fit(rows[train_index], labels[train_index], settings,
                        None if groups is None else groups[train_index], blocks)
            scores[test_index] = model.log_odds(rows[test_index])
        score = selection_score(scores, labels)
        trials.append({**asdict(settings), "mean_recall_low_fpr": score[0], "auc": score[1]})
        if report:
            report(f"  {settings.describe():<45} mean recall at low FPR {score[0]:.4f}, "
                   f"AUC {score[1]:.5f}")
        if best is None or score > best[0]:
            best = (score, settings, scores)
    assert best is not None
    return best[1], best[2], trials


def cross_validate(matrix: TokenMatrix, labels: np.ndarray, groups: np.ndarray | None,
                   folds: int, repeats: int, seed: int, grid: Sequence[Settings],
                   inner_folds: int, decision_probability: float,
                   report: Report = print,
                   on_fold: Callable[[int, np.ndarray, np.ndarray, np.ndarray], None] | None = None,
                   target_fpr: float | None = None,
                   ) -> dict[str, Any]:
    """Nested repeated cross-validation of the whole training procedure.

    With ``target_fpr`` each fold's probabilities are placed as the
    gateway places a model's (on the inner cross-validation's ham), so the
    figures at the decision probability are the gateway's.

    ``on_fold(number, test_index, log_odds, probabilities)`` sees each outer
    fold's scores (benchmarks use it for figures of their own)."""
    splits = repeated_folds(labels, folds, repeats, seed, groups)
    per_fold: list[dict[str, float]] = []
    chosen: list[dict[str, Any]] = []
    started = time.monotonic()
    for number, (train_index, test_index) in enumerate(splits):
        rows = matrix.rows(train_index)
        fold_groups = None if groups is None else groups[train_index]
        settings, inner_scores, _ = choose_settings(rows, labels[train_index], grid,
                                                    inner_folds, seed + number,
                                                    groups=fold_groups, blocks=matrix.blocks)
        calibration = fit_calibration(inner_scores, labels[train_index])
        placement = ham_placement(inner_scores, labels[train_index], calibration, target_fpr)
        model = fit(rows, labels[train_index], settings, fold_groups, matrix.blocks)
        scores = model.log_odds(matrix.rows(test_index))
        fold_probabilities = probabilities(scores, calibration, placement)
        if on_fold is not None:
            on_fold(number, test_index, scores, fold_probabilities)
        figures = fold_figures(scores, fold_probabilities, labels[test_index],
                               decision_probability)
        per_fold.append(figures)
        chosen.append(asdict(settings))
        elapsed = time.monotonic() - started
        report(f"cross-validation fold {number + 1}/{len(splits)}: AUC {figures['auc']:.5f}, "
               f"recall at FPR <= 0.25% {figures['recall_at_fpr_0.0025']:.4f}, "
               f"{settings.describe()} ({elapsed:.0f}s, "
               f"~{elapsed / (number + 1) * (len(splits) - number - 1):.0f}s left)")
    test_fraction = 1 / (folds - 1)
    return {
        "method": f"nested repeated stratified cross-validation, {folds} folds x {repeats} "
                  f"repeat{'s' if repeats != 1 else ''} (seed {seed}); hyperparameters and "
                  "calibration chosen by "
                  f"{inner_folds}-fold cross-validation inside each outer training fold",
        "folds": folds, "repeats": repeats, "seed": seed, "inner_folds": inner_folds,
        "interval": "95%, Nadeau-Bengio corrected resampled t",
        "decision_probability": decision_probability,
        "placed_at_target_fpr": target_fpr,
        "figures": spreads(per_fold, test_fraction),
        "per_fold": per_fold,
        "chosen": chosen,
        "allowed_false_positives": {
            str(p): int(np.floor(p * np.mean([f["n_ham"] for f in per_fold]) + 1e-9))
            for p in FPR_POINTS},
        "fold_size": {"ham": float(np.mean([f["n_ham"] for f in per_fold])),
                      "spam": float(np.mean([f["n_spam"] for f in per_fold]))},
    }


# -- training -------------------------------------------------------------------------


def train(
    ham: Sequence[str | Path],
    spam: Sequence[str | Path],
    seed: int = 42,
    validation: float = 0.0,
    folds: int = 5,
    repeats: int = 4,
    inner_folds: int = 4,
    decision_probability: float = 0.99,
    report: Report = print,
    show_progress: bool = True,
    learned: Sequence[Labelled] = (),
    grid: Sequence[Settings] = GRID,
    target_fpr: float | None = 0.001,
) -> tuple[SpamModel, dict[str, Any]]:
    """Train and measure a model; returns it and its figures (the
    cross-validation report, and the held-back split's when ``validation``)."""
    started = time.monotonic()
    data = load_dataset(ham, spam, show_progress, learned)
    return train_dataset(data, seed, validation, folds, repeats, inner_folds,
                         decision_probability, report, grid, target_fpr,
                         {"ham": [str(p) for p in ham], "spam": [str(p) for p in spam]},
                         started)


def train_dataset(
    data: Dataset,
    seed: int = 42,
    validation: float = 0.0,
    folds: int = 5,
    repeats: int = 4,
    inner_folds: int = 4,
    decision_probability: float = 0.99,
    report: Report = print,
    grid: Sequence[Settings] = GRID,
    target_fpr: float | None = 0.001,
    sources: dict[str, list[str]] | None = None,
    started: float | None = None,
) -> tuple[SpamModel, dict[str, Any]]:
    """``train`` on mail read already (benchmarks build their own datasets)."""
    started = time.monotonic() if started is None else started
    n_spam = int(data.labels.sum())
    n_ham = len(data.labels) - n_spam
    need = max(folds, inner_folds) * 2
    if n_ham < need or n_spam < need:
        raise ValueError(f"need at least {need} ham and {need} spam messages, "
                         f"got {n_ham} ham and {n_spam} spam")
    report(f"read {n_ham} ham and {n_spam} spam ({data.duplicates} duplicates and "
           f"{data.conflicts} given as both dropped, {data.learned} from the learned set, "
           f"{data.relabelled} relabelled by it, {len(data.unreadable)} unreadable)")
    if validation > 0:
        train_index, held_index = stratified_split(data.labels, validation, seed, data.groups)
    else:
        train_index, held_index = np.arange(len(data.labels)), np.array([], dtype=np.int64)
    matrix = TokenMatrix([data.tokens[i] for i in train_index])
    labels = data.labels[train_index]
    groups = data.groups[train_index]

    cv: dict[str, Any] | None = None
    if repeats > 0:
        report(f"measuring: {folds} folds x {repeats} repeats, hyperparameters chosen inside "
               f"each training fold ({len(grid)} candidates x {inner_folds} inner folds)")
        cv = cross_validate(matrix, labels, groups, folds, repeats, seed, grid, inner_folds,
                            decision_probability, report, target_fpr=target_fpr)
    report(f"choosing hyperparameters on all {len(labels)} training messages "
           f"({inner_folds}-fold cross-validation)")
    all_rows = matrix.matrix
    settings, oof_scores, trials = choose_settings(all_rows, labels, grid, inner_folds, seed,
                                                   report, groups, matrix.blocks)
    if settings.scorer not in SHIPPABLE_SCORERS:
        raise ValueError(f"a {settings.scorer} model cannot be written as a model artifact "
                         f"(only {', '.join(SHIPPABLE_SCORERS)})")
    calibration = fit_calibration(oof_scores, labels)
    placement = ham_placement(oof_scores, labels, calibration, target_fpr)
    final = fit(all_rows, labels, settings, groups, matrix.blocks)
    vocabulary = {matrix.tokens[c]: i for i, c in enumerate(final.columns)}
    report(f"chose {settings.describe()}; vocabulary {len(vocabulary)} tokens")

    figures: dict[str, Any] = {}
    if cv is not None:
        figures["cross_validation"] = {k: v for k, v in cv.items() if k != "per_fold"}
    held: dict[str, Any] | None = None
    if len(held_index):
        held_matrix = _rows_for([data.tokens[i] for i in held_index], matrix.tokens)
        held_scores = final.log_odds(held_matrix)
        held_labels = data.labels[held_index]
        held_probabilities = probabilities(held_scores, calibration, placement)
        held = summarize(held_scores, held_probabilities, held_labels, decision_probability)
        held["groups"] = {
            data.group_names[g]: {
                "n": int((data.groups[held_index] == g).sum()),
                "false_positives": int(((data.groups[held_index] == g) & (held_labels == 0)
                                        & (held_probabilities >= decision_probability)).sum()),
            } for g in np.unique(data.groups[held_index])}
        figures["validation"] = held
    operating = {}
    for point in FPR_POINTS:
        _, threshold = recall_at_fpr(oof_scores, labels, point)
        operating[str(point)] = (float(probabilities(np.array([threshold]), calibration)[0])
                                 if np.isfinite(threshold) else 0.0)

    meta = {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "algorithm": (f"scikit-learn {NB_CLASS[settings.scorer]}"
                      " on idf-weighted, L2-normalised token presence"
                      + (f", each folder of a label weighted by its share^-{settings.balance:g}"
                         if settings.balance else "")
                      + (", headers, text and structure normalised apart"
                         if settings.blocks > 1 else "")),
        "settings": asdict(settings),
        "alpha": settings.alpha,
        "trials": trials,
        "seed": seed,
        "data": {
            "ham": n_ham, "spam": n_spam,
            "train_ham": int((labels == 0).sum()), "train_spam": int((labels == 1).sum()),
            "validation_ham": int((data.labels[held_index] == 0).sum()),
            "validation_spam": int((data.labels[held_index] == 1).sum()),
            "duplicates_dropped": data.duplicates,
            "conflicts_dropped": data.conflicts,
            "learned": data.learned,
            "relabelled_by_learned": data.relabelled,
            "unreadable": len(data.unreadable),
            "sources": sources or {},
        },
        "features": {"feature_version": FEATURE_VERSION},
        "calibration": {"method": "logistic (Platt) on out-of-fold log-odds",
                        "a": calibration[0], "b": calibration[1]},
        "cross_validation": cv,
        "validation": held,
        "thresholds": {
            "bands": {name: (upper if np.isfinite(upper) else 1.0) for upper, name in BANDS},
            "decision_probability": decision_probability,
            "probability_at_fpr": operating,
            # The top of the out-of-fold ham scores: where the bands go at
            # any [classifier] target_fpr (gateway.classifier.thresholds).
            "training_ham": HamScores.of(oof_scores[labels == 0],
                                         "out-of-fold training ham").to_json(),
        },
        # The learned set's out-of-fold log-odds by content key: the site's
        # labels measure this model without the scores it learned them with.
        "learned_out_of_fold": {
            data.keys[i]: round(float(oof_scores[position]), 4)
            for position, i in enumerate(train_index)
            if data.groups[i] == len(data.group_names) - 1 and data.learned},
        "training_seconds": round(time.monotonic() - started, 1),
    }
    meta["version"] = "nb-" + _digest(vocabulary, final)[:12]
    model = SpamModel(weights=final.weights, idf=final.idf, vocabulary=vocabulary,
                      intercept=final.intercept, calibration=calibration, meta=meta,
                      block=final.block)
    return model, figures


def _rows_for(documents: Sequence[frozenset[str]], tokens: list[str]):
    """Rows over the columns of a TokenMatrix (tokens it has not seen dropped)."""
    from scipy.sparse import csr_matrix

    index = {token: i for i, token in enumerate(tokens)}
    indptr, indices = [0], []
    for document in documents:
        indices.extend(sorted(i for i in map(index.get, document) if i is not None))
        indptr.append(len(indices))
    return csr_matrix((np.ones(len(indices)), np.array(indices, dtype=np.int64),
                       np.array(indptr, dtype=np.int64)), shape=(len(documents), len(tokens)))


def _digest(vocabulary: dict[str, int], model: NaiveBayes) -> str:
    digest = hashlib.sha256()
    for token in sorted(vocabulary, key=vocabulary.__getitem__):
        digest.update(token.encode("utf-8", "surrogatepass") + b"\0")
    digest.update(model.weights.astype(np.float32).tobytes())
    digest.update(model.idf.astype(np.float32).tobytes())
    digest.update(np.float64(model.intercept).tobytes())
    if model.block is not None:
        digest.update(model.block.astype(np.int8).tobytes())
    return digest.hexdigest()

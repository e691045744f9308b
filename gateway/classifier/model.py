"""The spam model artifact and the small scorer that uses it.

A model is a folder of three files, none of which is ever unpickled:

- ``model.npz``: per-token log-odds weights (float32), idf, and (format 2)
  each token's block (int8), loaded with ``allow_pickle=False``;
- ``vocabulary.json``: the tokens, in weight order (held as hashes in
  memory: :mod:`vocabulary`);
- ``model.json``: metadata (version, creation time, data counts, feature
  settings, validation figures, calibration, thresholds) and the SHA-256 of
  the two other files. A file whose checksum or feature version does not
  match is refused.

The weights are naive Bayes' own, ``log P(token|spam) - log P(token|ham)``;
a message is the idf weights of its known tokens, L2-normalised (each
block apart -- headers, text, structure -- when the model has blocks), and
its dot product with the weights plus the prior log-odds is the
classifier's log-odds, which a logistic calibration turns into a
probability: the model's own, or, once placed (:mod:`thresholds`), the
same slope anchored so that ``[classifier] target_fpr`` of the ham the
model carries scores in ``BAYES_95`` or above.
scikit-learn is needed to train, not to score.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from gateway.classifier.features import (
    BLOCKS,
    DEFAULT_LIMITS,
    FEATURE_VERSION,
    TextStats,
    describe_token,
    message_tokens,
)
from gateway.classifier.names import (  # noqa: F401 (read without numpy; named here as before)
    BAND_DESCRIPTIONS,
    BANDS,
    META_FILE,
    ModelError,
    band,
)
from gateway.classifier.thresholds import Placement, place
from gateway.classifier.vocabulary import Vocabulary
from gateway.config import LimitsSection
from gateway.mail import Authors

FORMAT = "gateway-naive-bayes/2"
# /1 had no blocks (one norm per message); it still loads.
FORMATS = ("gateway-naive-bayes/1", FORMAT)
WEIGHTS_FILE = "model.npz"
VOCABULARY_FILE = "vocabulary.json"


@dataclass(frozen=True)
class Explanation:
    """A message's score and the tokens that pushed it most either way.

    A token's contribution is its share of the log-odds, ``idf * weight /
    norm``: positive toward spam, negative toward ham. The contributions
    and the intercept add up to ``log_odds``."""

    probability: float
    log_odds: float
    spam: tuple[tuple[str, float], ...]  # strongest first
    ham: tuple[tuple[str, float], ...]
    known: int  # tokens of the message the model knows

    def evidence(self, version: str) -> str:
        """'p=0.9731, model nb-...; + "click here" +0.41, url:example.biz ...; - ...'"""
        text = f"p={self.probability:.4f}, model {version}"
        for sign, items in (("+", self.spam), ("-", self.ham)):
            if items:
                text += f"; {sign} " + ", ".join(
                    f"{describe_token(token)} {value:+.2f}" for token, value in items)
        return text

    def facts(self) -> dict[str, Any]:
        return {"spam": [[t, round(v, 4)] for t, v in self.spam],
                "ham": [[t, round(v, 4)] for t, v in self.ham], "known": self.known}


@dataclass(frozen=True)
class SpamModel:
    weights: np.ndarray
    idf: np.ndarray
    vocabulary: Mapping[str, int]  # a Vocabulary once built (a dict is turned into one)
    intercept: float
    calibration: tuple[float, float]  # p = sigmoid(a * log_odds + b)
    meta: dict[str, Any]
    path: Path | None = None
    block: np.ndarray | None = None  # each token's block (features.token_block), or one norm
    placement: Placement | None = None  # where the bands sit at this site (placed())

    def __post_init__(self) -> None:
        # Built with the model, before the fork server shares it (numpy
        # arrays a look-up never writes to, not a dict of strings).
        object.__setattr__(self, "vocabulary", Vocabulary.of(self.vocabulary))

    def placed(self, target_fpr: float) -> SpamModel:
        """This model scoring with the calibration its ham scores place at
        ``target_fpr`` (itself, unchanged, when it carries none)."""
        thresholds = self.meta.get("thresholds")
        placement = place(thresholds, self.calibration[0], target_fpr) \
            if isinstance(thresholds, dict) else None
        return replace(self, placement=placement)

    def _parts(self, indices: list[int] | np.ndarray) -> np.ndarray:
        """Each known token's share of the log-odds: idf * weight / norm,
        the norm of the whole message or of the token's block."""
        at = np.asarray(indices, dtype=np.intp)  # one conversion for the three look-ups
        idf = self.idf[at].astype(np.float64)
        if self.block is None:
            norm: np.ndarray | float = math.sqrt(float(idf @ idf))
        else:
            block = self.block[at]
            norm = np.sqrt(np.bincount(block, weights=idf * idf, minlength=BLOCKS))[block]
        return idf * self.weights[at] / norm

    @property
    def version(self) -> str:
        return str(self.meta.get("version", "unknown"))

    @property
    def _vocabulary(self) -> Vocabulary:
        vocabulary = self.vocabulary
        assert isinstance(vocabulary, Vocabulary)  # __post_init__
        return vocabulary

    def log_odds(self, tokens: Iterable[str]) -> float:
        """Known tokens weighted by idf, L2-normalised (by block), dotted with the weights."""
        found = self._vocabulary.indices(_collection(tokens))
        indices = found[found >= 0]
        if not len(indices):
            return self.intercept
        return self.intercept + float(self._parts(indices).sum())

    def contributions(self, tokens: Iterable[str]) -> tuple[float, list[str], np.ndarray]:
        """(log-odds, known tokens, each one's contribution to the log-odds),
        in the order of ``tokens``."""
        tokens = list(tokens)
        found = self._vocabulary.indices(tokens)  # one lookup a token
        known = np.flatnonzero(found >= 0)
        return self._contributions([tokens[k] for k in known], found[known])

    def _contributions(self, known: list[str], indices: list[int] | np.ndarray
                       ) -> tuple[float, list[str], np.ndarray]:
        if not known:
            return self.intercept, [], np.zeros(0)
        parts = self._parts(indices)
        return self.intercept + float(parts.sum()), known, parts

    def explain(self, tokens: Iterable[str], count: int = 5) -> Explanation:
        """The score of a token set with the ``count`` tokens that pushed it
        most toward spam and toward ham."""
        at = self._known_in_name_order(tokens)
        if not len(at):
            return Explanation(self.probability_of(self.intercept), self.intercept, (), (), 0)
        parts = self._parts(at)
        log_odds = self.intercept + float(parts.sum())
        order = np.argsort(parts, kind="stable")
        name = self._vocabulary.token
        spam = tuple((name(at[i]), float(parts[i])) for i in order[::-1][:count] if parts[i] > 0)
        ham = tuple((name(at[i]), float(parts[i])) for i in order[:count] if parts[i] < 0)
        return Explanation(self.probability_of(log_odds), log_odds, spam, ham, len(at))

    def _known_in_name_order(self, tokens: Iterable[str]) -> np.ndarray:
        """The vocabulary indices of the known tokens, each once, in the
        order of the tokens sorted: a set's order depends on the process's
        hash seed, and ties must name the same tokens in every worker (the
        log-odds, a sum in this order, the same to the last bit). One
        look-up a token; the sorting is numpy's, over each index's place
        among the sorted vocabulary, not Python's over the strings."""
        unique = isinstance(tokens, (set, frozenset, dict))
        found = self._vocabulary.indices(_collection(tokens))
        known = found[found >= 0]
        known = known[np.argsort(self._vocabulary.rank[known])]
        if not unique and len(known) > 1:  # each once (np.unique costs more than this)
            known = known[np.concatenate(([True], known[1:] != known[:-1]))]
        return known

    def probability_of(self, log_odds: float) -> float:
        if self.placement is not None:
            return self.placement.probability(log_odds)
        a, b = self.calibration
        z = a * log_odds + b
        if z >= 0:
            return 1.0 / (1.0 + math.exp(-z))
        e = math.exp(z)
        return e / (1.0 + e)

    def score(self, email_message, limits: LimitsSection = DEFAULT_LIMITS,
              stats: TextStats | None = None) -> tuple[float, float]:
        """(calibrated spam probability, raw log-odds) of a parsed message."""
        log_odds = self.log_odds(message_tokens(email_message, limits, stats))
        return self.probability_of(log_odds), log_odds

    def score_explained(self, email_message, limits: LimitsSection = DEFAULT_LIMITS,
                        stats: TextStats | None = None, count: int = 5,
                        authors: Authors | None = None) -> Explanation:
        """``authors``: see :func:`features.message_tokens`."""
        return self.explain(message_tokens(email_message, limits, stats, authors), count)

    # -- files -------------------------------------------------------------------

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        tokens = list(self.vocabulary)  # in index order
        vocabulary_bytes = json.dumps(tokens, ensure_ascii=False).encode("utf-8")
        (directory / VOCABULARY_FILE).write_bytes(vocabulary_bytes)
        arrays: dict[str, Any] = {
            "weights": self.weights.astype(np.float32),
            "idf": self.idf.astype(np.float32),
            "intercept": np.array([self.intercept]),
            "calibration": np.array(self.calibration, dtype=np.float64),
        }
        if self.block is not None:
            arrays["block"] = self.block.astype(np.int8)
        np.savez_compressed(directory / WEIGHTS_FILE, **arrays)
        meta = dict(self.meta)
        meta.update({
            "format": FORMAT,
            "feature_version": FEATURE_VERSION,
            "vocabulary_size": len(tokens),
            "sha256": {
                WEIGHTS_FILE: _sha256(directory / WEIGHTS_FILE),
                VOCABULARY_FILE: hashlib.sha256(vocabulary_bytes).hexdigest(),
            },
        })
        (directory / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")


def load_model(directory: str | Path) -> SpamModel:
    """Load and verify a model folder; raise ModelError with one clear line."""
    directory = Path(directory)
    meta_path = directory / META_FILE
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"{meta_path}: not found (is {directory} a model folder?)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{meta_path}: unreadable model metadata: {exc}") from None
    if not isinstance(meta, dict) or meta.get("format") not in FORMATS:
        raise ModelError(f"{meta_path}: not a {' or '.join(FORMATS)} model")
    if meta.get("feature_version") != FEATURE_VERSION:
        raise ModelError(
            f"{meta_path}: trained with feature version {meta.get('feature_version')}, "
            f"this gateway computes version {FEATURE_VERSION}: retrain the model"
        )
    expected = meta.get("sha256") or {}
    for name in (WEIGHTS_FILE, VOCABULARY_FILE):
        path = directory / name
        if not path.exists():
            raise ModelError(f"{path}: missing")
        if _sha256(path) != expected.get(name):
            raise ModelError(f"{path}: checksum does not match {META_FILE}; refusing the model")
    try:
        tokens = json.loads((directory / VOCABULARY_FILE).read_text(encoding="utf-8"))
        with np.load(directory / WEIGHTS_FILE, allow_pickle=False) as arrays:
            weights = arrays["weights"].astype(np.float32)
            idf = arrays["idf"].astype(np.float32)
            intercept = float(arrays["intercept"][0])
            a, b = (float(x) for x in arrays["calibration"])
            block = arrays["block"].astype(np.int64) if "block" in arrays.files else None
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as exc:
        raise ModelError(f"{directory}: unreadable model files: {exc}") from None
    if not isinstance(tokens, list) or not len(tokens) == len(weights) == len(idf):
        raise ModelError(f"{directory}: vocabulary and weights differ in length")
    if not all(isinstance(token, str) for token in tokens):
        raise ModelError(f"{directory}: {VOCABULARY_FILE} holds something other than tokens")
    if block is not None and (len(block) != len(weights) or
                              (len(block) and not 0 <= block.min() <= block.max() < BLOCKS)):
        raise ModelError(f"{directory}: token blocks do not match the vocabulary")
    if not (np.isfinite(weights).all() and np.isfinite(idf).all() and math.isfinite(intercept)
            and math.isfinite(a) and math.isfinite(b)):
        raise ModelError(f"{directory}: model holds non-finite numbers")
    try:
        vocabulary = Vocabulary(tokens)
    except ValueError as exc:
        raise ModelError(f"{directory / VOCABULARY_FILE}: {exc}") from None
    return SpamModel(
        weights=weights,
        idf=idf,
        vocabulary=vocabulary,
        intercept=intercept,
        calibration=(a, b),
        meta=meta,
        path=directory,
        block=block,
    )


def _collection(tokens: Iterable[str]) -> Collection[str]:
    return tokens if isinstance(tokens, Collection) else list(tokens)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()

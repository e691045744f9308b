"""Where a model's BAYES bands sit: placed on ham, per model and per site.

A model's log-odds mean different things for different models and sites:
a retrained model is more or less confident than the one before, and mail
at a site unlike the training mail scores lower or higher as a whole. Bands
at fixed probabilities then hold a different share of good mail after every
promotion (issue 26: a promotion that raised the ranking to ~1.0 quarantined
fewer phishing messages than before).

So every model carries the log-odds of ham it did not train on, the top of
that distribution (:class:`HamScores`): its out-of-fold training ham, from
training, and, once promoted at a site that has ham of its own (released
mail, ham labels, autolearned ham), that site's ham. The displayed
probability is the model's logistic calibration shifted so that
``PLACED_PROBABILITY`` (0.95, the lower edge of ``BAYES_95``, the band the
default rules quarantine on alone) falls just above the ham that
``[classifier] target_fpr`` allows: with 2,634 ham and target 0.1%, the
third-highest ham is below ``BAYES_95`` and the two above it are the 0.1%.
The slope stays the model's own, so every band moves with that one anchor.

The site's ham decides once there is enough of it to see one message in
``target_fpr`` (1,000 ham at 0.1%); with less it may only raise the anchor,
never lower it: the top of a hundred ham says little about the top 0.1%,
and a band lowered on too little mail holds good mail.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

PLACED_PROBABILITY = 0.95
PLACED_BAND = "BAYES_95"
# The top of a ham distribution kept in model.json: enough to place any
# target FPR up to TAIL_SHARE, and never fewer than TAIL_MIN scores.
TAIL_SHARE = 0.05
TAIL_MIN = 50
# Above the highest ham when no ham may be above the anchor (log-odds).
MARGIN = 1.0
TARGET_FPR_RANGE = (0.0001, 0.05)


@dataclass(frozen=True)
class HamScores:
    """The top of a distribution of ham log-odds: ``n`` messages, the
    highest ``top`` scores, highest first."""

    source: str  # what the ham is: "out-of-fold training ham", "site ham ..."
    n: int
    top: tuple[float, ...]

    @classmethod
    def of(cls, scores: Iterable[float], source: str) -> HamScores:
        values = sorted((float(s) for s in scores if math.isfinite(s)), reverse=True)
        keep = max(TAIL_MIN, math.ceil(TAIL_SHARE * len(values)))
        return cls(source, len(values), tuple(round(v, 4) for v in values[:keep]))

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> HamScores:
        top = tuple(float(v) for v in data["top"])
        n = int(data["n"])
        if n < len(top) or any(not math.isfinite(v) for v in top) or \
                list(top) != sorted(top, reverse=True):
            raise ValueError("ham scores are not a sorted top of n finite values")
        return cls(str(data.get("source", "")), n, top)

    def to_json(self) -> dict[str, Any]:
        return {"source": self.source, "n": self.n, "top": list(self.top)}

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.to_json(), sort_keys=True).encode()).hexdigest()

    def allowed(self, target_fpr: float) -> int:
        """How many of these ham may score above the anchor."""
        return min(math.floor(target_fpr * self.n + 1e-9), max(len(self.top) - 1, 0))

    def anchor(self, target_fpr: float) -> float:
        """The log-odds from which a message is in the placed band: midway
        between the last ham allowed above it and the first that is not."""
        if not self.top:
            return math.inf
        k = self.allowed(target_fpr)
        if k == 0:
            return self.top[0] + MARGIN
        return (self.top[k - 1] + self.top[k]) / 2

    def enough_for(self, target_fpr: float) -> bool:
        """Enough ham to see one message in ``target_fpr``."""
        return self.n * target_fpr >= 1 - 1e-9


@dataclass(frozen=True)
class Placement:
    """The calibration a model scores with at a site: its own slope, and
    ``anchor`` (log-odds) placed at ``PLACED_PROBABILITY``."""

    anchor: float
    slope: float
    target_fpr: float
    reference: HamScores  # the ham that placed the anchor
    note: str = ""  # how the training and the site's ham were combined

    def probability(self, log_odds: float) -> float:
        # (+1e-12: the anchor itself is in the placed band, whatever the rounding)
        z = self.slope * (log_odds - self.anchor) + _logit(PLACED_PROBABILITY) + 1e-12
        if z >= 0:
            return 1.0 / (1.0 + math.exp(-z))
        e = math.exp(z)
        return e / (1.0 + e)

    @property
    def allowed(self) -> int:
        return self.reference.allowed(self.target_fpr)

    def describe(self) -> str:
        """'BAYES_95 from log-odds 9.48: 2 of 2,634 out-of-fold training ham
        above it (target FPR 0.1%)'"""
        text = (f"{PLACED_BAND} from log-odds {self.anchor:.2f}: {self.allowed} of "
                f"{self.reference.n:,} {self.reference.source} above it (target FPR "
                f"{self.target_fpr:.2%})")
        return text + (f"; {self.note}" if self.note else "")

    def to_json(self) -> dict[str, Any]:
        return {"band": PLACED_BAND, "probability": PLACED_PROBABILITY,
                "anchor_log_odds": self.anchor, "slope": self.slope,
                "target_fpr": self.target_fpr, "reference": self.reference.source,
                "reference_n": self.reference.n, "ham_above": self.allowed, "note": self.note}


def place(thresholds: Mapping[str, Any], slope: float, target_fpr: float) -> Placement | None:
    """The placement a model's ``thresholds`` (model.json) give at this
    target; None for a model that carries no ham scores (trained before
    placement existed: it keeps its own calibration)."""
    try:
        training = HamScores.from_json(thresholds["training_ham"]) \
            if thresholds.get("training_ham") else None
        site = HamScores.from_json(thresholds["site_ham"]) \
            if thresholds.get("site_ham") else None
    except (KeyError, TypeError, ValueError):
        return None
    if not (math.isfinite(slope) and slope > 0):
        return None
    if site is not None and site.top and (training is None or not training.top
                                          or site.enough_for(target_fpr)):
        return Placement(site.anchor(target_fpr), slope, target_fpr, site)
    if training is None or not training.top:
        return None
    placed = Placement(training.anchor(target_fpr), slope, target_fpr, training)
    if site is not None and site.top and site.anchor(target_fpr) > placed.anchor:
        return Placement(site.anchor(target_fpr), slope, target_fpr, site,
                         note=f"raised above the {training.source} "
                              f"({training.anchor(target_fpr):.2f}): too few site ham to "
                              f"lower it")
    if site is not None and site.top:
        return Placement(placed.anchor, slope, target_fpr, training,
                         note=f"{site.n:,} site ham, too few to lower it (need "
                              f"{math.ceil(1 / target_fpr - 1e-9):,})")
    return placed


def target_fpr_problem(value: float) -> str | None:
    low, high = TARGET_FPR_RANGE
    if low <= value <= high:
        return None
    return f"a share of ham between {low:g} and {high:g} (0.001 = 0.1%), got {value:g}"


def _logit(p: float) -> float:
    return math.log(p / (1 - p))

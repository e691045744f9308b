"""What other modules name about a model without loading one (and numpy
with it): the probability bands and their symbols, the model folder's
metadata file, the model's error. The milter declares the bayes check's
symbols and finds the model's folder with these alone."""

from __future__ import annotations

import math

META_FILE = "model.json"

# Probability bands, named like SpamAssassin's BAYES_* rules: the number is
# the band's lower edge in percent. Finer than SpamAssassin's between 60 and
# 95%, where a calibrated model's quarantine threshold usually falls.
BANDS: tuple[tuple[float, str], ...] = (
    (0.01, "BAYES_00"),
    (0.05, "BAYES_05"),
    (0.20, "BAYES_20"),
    (0.40, "BAYES_40"),
    (0.60, "BAYES_50"),
    (0.70, "BAYES_60"),
    (0.80, "BAYES_70"),
    (0.90, "BAYES_80"),
    (0.95, "BAYES_90"),
    (0.99, "BAYES_95"),
    (0.999, "BAYES_99"),
    (math.inf, "BAYES_999"),
)


def _describe_band(lower: float, upper: float) -> str:
    if upper == math.inf:
        return f"spam probability {lower:.1%} or more"
    if lower == 0:
        return f"spam probability below {upper:.0%}"
    return f"spam probability {lower:.0%} to {upper:.{1 if upper > 0.99 else 0}%}"


BAND_DESCRIPTIONS: dict[str, str] = {
    name: _describe_band(lower, upper)
    for (lower, _), (upper, name) in zip([(0.0, ""), *BANDS[:-1]], BANDS, strict=True)
}


def band(probability: float) -> str:
    for upper, name in BANDS:
        if probability < upper:
            return name
    return BANDS[-1][1]


class ModelError(Exception):
    """A model folder that cannot be used, as one line naming file and reason."""

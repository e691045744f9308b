"""Symbols: the named findings every check reports and every verdict lists."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

SYMBOL_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")

# Symbols of the pipeline itself, beside those of the checks.
PIPELINE_SYMBOLS: dict[str, str] = {
    "BUDGET_EXCEEDED": "the checks of this message did not finish within [pipeline] budget",
}
# Symbols of the SMTP stages, decided outside the checks (gateway.door):
# greylisting at RCPT and after DATA, rate limits at RCPT.
STAGE_SYMBOLS: dict[str, str] = {
    "GREYLISTED": "asked to retry later: a first attempt from a sender not seen before "
                  "([greylist])",
    "RATELIMITED": "over a [[ratelimit]] limit whose action is score",
    "RATELIMITED_QUARANTINE": "over a [[ratelimit]] limit whose action is quarantine",
}


@dataclass(frozen=True)
class Symbol:
    """One finding: a name, a score, what it means and what triggered it.

    ``score`` is the check's own suggestion; the policy replaces it with the
    score from the rules files when one is configured. ``reply``: what an
    SMTP reply may tell the sender of it, for a finding whose evidence is
    the site's own business (a list entry's owner and reason); empty: the
    description and evidence.
    """

    name: str
    score: float = 0.0
    description: str = ""
    evidence: str = ""
    reply: str = ""

    def __post_init__(self) -> None:
        if not SYMBOL_NAME.match(self.name):
            raise ValueError(f"symbol name {self.name!r} must be UPPER_SNAKE_CASE")

    def rescored(self, score: float) -> Symbol:
        return replace(self, score=score)

    def as_dict(self) -> dict[str, Any]:
        found = {
            "name": self.name,
            "score": round(self.score, 3),
            "description": self.description,
            "evidence": self.evidence,
        }
        if self.reply:
            found["reply"] = self.reply
        return found


@dataclass(frozen=True)
class Report:
    """What one check returns: its symbols plus machine-readable facts.

    Facts are for other parts (a later check, the headers, the policy), e.g.
    ``{"spam_probability": 0.97}``; symbols are for the score. The built-in
    checks write them with their class in :mod:`gateway.facts`
    (``SpfFacts(...).to_json()``) and readers read them back with it; a
    site's own check may report any JSON-shaped mapping.
    """

    symbols: tuple[Symbol, ...] = ()
    facts: Mapping[str, Any] = field(default_factory=dict)


def failure_symbol_name(check_name: str) -> str:
    """``clamav`` -> ``CLAMAV_ERROR``: the symbol for a check that did not
    finish (it raised, or ran out of time). No check result ends in
    ``_ERROR`` alone, so it never reads like one (``DMARC_ERROR`` would)."""
    return re.sub(r"[^A-Z0-9]+", "_", check_name.upper()).strip("_") + "_ERROR"

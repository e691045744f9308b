"""Policy: turn the symbols of a message into one action, and say why.

Rules files (``rules/default.toml`` and the admin's own, later files
overriding earlier ones) hold:

    [thresholds]  quarantine = 6.0, reject = 15.0
    [scores]      SYMBOL = 2.5          (replaces the check's own score)
    [force]       SYMBOL = "reject"     (accept | quarantine | reject | tempfail)
    [release]     SYMBOL = "admin"      (who may release held mail carrying it:
                                         "admin" or "analyst"; see gateway.quarantine.release)

A forced symbol decides regardless of the score. When several are forced,
the most severe wins: reject > tempfail > quarantine > accept. So an
allow-listed sender (a large negative score) still cannot slip a virus past
a forced reject.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from gateway.config import ACTIONS, Action
from gateway.pipeline import PipelineResult
from gateway.schema import ConfigError, suggest_key
from gateway.symbols import SYMBOL_NAME, Symbol

SEVERITY: dict[Action, int] = {"accept": 0, "quarantine": 1, "tempfail": 2, "reject": 3}


@dataclass(frozen=True)
class SmtpReply:
    code: str  # "550"
    status: str  # "5.7.1"
    text: str

    def __str__(self) -> str:
        return f"{self.code} {self.status} {self.text}"


@dataclass(frozen=True)
class Verdict:
    """The decision on one message, with everything needed to explain it."""

    action: Action
    score: float
    required: float
    symbols: tuple[Symbol, ...]
    failed_checks: tuple[str, ...]
    reason: str
    reply: SmtpReply | None = None
    forced_by: str | None = None
    check_millis: Mapping[str, float] = field(default_factory=dict)
    facts: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    authentication_results: str | None = None

    @property
    def is_spam(self) -> bool:
        return self.score >= self.required

    @property
    def spam_probability(self) -> float | None:
        """The classifier's calibrated probability, when it ran."""
        value = self.facts.get("bayes", {}).get("spam_probability")
        return None if value is None else round(float(value), 4)

    def as_dict(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "score": round(self.score, 2),
            "required": self.required,
            "reason": self.reason,
            "reply": str(self.reply) if self.reply else None,
            "symbols": [s.as_dict() for s in self.symbols],
            "failed_checks": list(self.failed_checks),
        }


@dataclass(frozen=True)
class Rules:
    quarantine: float = 6.0
    reject: float = 15.0
    scores: Mapping[str, float] = field(default_factory=dict)
    force: Mapping[str, Action] = field(default_factory=dict)
    sources: tuple[str, ...] = ()
    release: Mapping[str, str] = field(default_factory=dict)

    def with_default_forces(self, defaults: Mapping[str, Action]) -> Rules:
        """These rules, with forced actions that apply unless a rules file
        forces the same symbol itself."""
        return replace(self, force=MappingProxyType({**defaults, **self.force}))


def load_rules(paths: Iterable[str | Path]) -> Rules:
    """Merge rules files in order; raise ConfigError listing every problem."""
    thresholds: dict[str, float] = {"quarantine": 6.0, "reject": 15.0}
    scores: dict[str, float] = {}
    force: dict[str, Action] = {}
    release: dict[str, str] = {}
    errors: list[str] = []
    sources = []
    for path in map(Path, paths):
        sources.append(str(path))
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            errors.append(f"{path}: rules file not found")
            continue
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            errors.append(f"{path}: cannot read rules file: {exc}")
            continue
        _merge_rules(data, str(path), thresholds, scores, force, errors)
        _merge_release(data, str(path), release, errors)
    if thresholds["reject"] < thresholds["quarantine"]:
        errors.append(
            f"{sources[-1] if sources else 'rules'}: thresholds: reject "
            f"({thresholds['reject']}) must not be below quarantine ({thresholds['quarantine']})"
        )
    if errors:
        raise ConfigError(errors)
    return Rules(
        quarantine=thresholds["quarantine"],
        reject=thresholds["reject"],
        scores=MappingProxyType(scores),
        force=MappingProxyType(force),
        sources=tuple(sources),
        release=MappingProxyType(release),
    )


def _merge_rules(data, source, thresholds, scores, force, errors) -> None:
    sections = {"thresholds", "scores", "force", "release"}
    for name in data:
        if name not in sections:
            hint = suggest_key(name, dict.fromkeys(sections))
            errors.append(f"{source}: [{name}]: unknown section{hint}")
    for key, value in data.get("thresholds", {}).items():
        if key not in thresholds:
            errors.append(f"{source}: thresholds.{key}: unknown key{suggest_key(key, thresholds)}")
        elif not _is_number(value):
            errors.append(f"{source}: thresholds.{key}: expected a number, got {value!r}")
        else:
            thresholds[key] = float(value)
    for name, value in data.get("scores", {}).items():
        if not SYMBOL_NAME.match(name):
            errors.append(f"{source}: scores.{name}: symbol names are UPPER_SNAKE_CASE")
        elif not _is_number(value):
            errors.append(f"{source}: scores.{name}: expected a number, got {value!r}")
        else:
            scores[name] = float(value)
    for name, value in data.get("force", {}).items():
        if not SYMBOL_NAME.match(name):
            errors.append(f"{source}: force.{name}: symbol names are UPPER_SNAKE_CASE")
        elif value not in ACTIONS:
            errors.append(
                f"{source}: force.{name}: expected one of {', '.join(ACTIONS)}, got {value!r}"
            )
        else:
            force[name] = value


def _merge_release(data, source, release, errors) -> None:
    for name, value in data.get("release", {}).items():
        if not SYMBOL_NAME.match(name):
            errors.append(f"{source}: release.{name}: symbol names are UPPER_SNAKE_CASE")
        elif value not in ("admin", "analyst"):
            errors.append(f"{source}: release.{name}: expected \"admin\" or \"analyst\", "
                          f"got {value!r}")
        else:
            release[name] = value


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


class Policy:
    def __init__(self, rules: Rules):
        self.rules = rules

    def decide(self, result: PipelineResult, reference: str | None = None) -> Verdict:
        rules = self.rules
        symbols = tuple(
            s.rescored(rules.scores[s.name]) if s.name in rules.scores else s
            for s in result.symbols
        )
        score = round(sum(s.score for s in symbols), 3)
        forced = [(rules.force[s.name], s) for s in symbols if s.name in rules.force]
        forced_by: Symbol | None = None
        if forced:
            action, forced_by = max(forced, key=lambda pair: SEVERITY[pair[0]])
            reason = f"forced by {forced_by.name}"
        elif score >= rules.reject:
            action, reason = "reject", f"score {score:g} >= reject threshold {rules.reject:g}"
        elif score >= rules.quarantine:
            action = "quarantine"
            reason = f"score {score:g} >= quarantine threshold {rules.quarantine:g}"
        else:
            action = "accept"
            reason = f"score {score:g} < quarantine threshold {rules.quarantine:g}"
        return Verdict(
            action=action,
            score=score,
            required=rules.quarantine,
            symbols=symbols,
            failed_checks=tuple(result.failed_checks),
            reason=reason,
            reply=_reply(action, score, forced_by, reference),
            forced_by=forced_by.name if forced_by else None,
            check_millis=result.check_millis,
            facts=dict(result.facts),
        )


def _reply(
    action: Action, score: float, forced_by: Symbol | None, reference: str | None
) -> SmtpReply | None:
    ref = f" (ref {reference})" if reference else ""
    # Enhanced status codes other than 5.7.1 for symbols that have their own.
    status_of = {"SENDER_NULL_MX": "5.7.27"}  # RFC 7505 4.2: sender's domain has a null MX
    if action == "reject":
        if forced_by is not None:
            why = forced_by.description or forced_by.name
            detail = f": {forced_by.evidence}" if forced_by.evidence else ""
            status = status_of.get(forced_by.name, "5.7.1")
            return SmtpReply("550", status, f"Rejected: {why}{detail} [{forced_by.name}]{ref}")
        return SmtpReply("550", "5.7.1", f"Rejected as spam, score {score:g}{ref}")
    if action == "tempfail":
        why = f" [{forced_by.name}]" if forced_by is not None else ""
        return SmtpReply("451", "4.7.1", f"Temporary failure, please try again later{why}{ref}")
    return None

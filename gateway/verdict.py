"""What the checks found and what was decided: the types every stage shares.

At the bottom of the house: the pipeline produces a :class:`PipelineResult`
(each check's :class:`CheckRun` and the symbols), the policy turns it into a
:class:`Verdict`, and the milter, the scan protocol, the quarantine, the
logs and the tools read that. This module imports none of them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from gateway.config import Action
from gateway.replies import SmtpReply
from gateway.symbols import Symbol

Status = Literal["ok", "error", "timeout", "skipped"]


@dataclass(frozen=True)
class CheckRun:
    """How one check went for one message."""

    name: str
    status: Status
    millis: float
    error: str = ""


@dataclass(frozen=True)
class PipelineResult:
    symbols: tuple[Symbol, ...]
    runs: tuple[CheckRun, ...]
    facts: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    @property
    def failed_checks(self) -> list[str]:
        return [run.name for run in self.runs if run.status != "ok"]

    @property
    def check_millis(self) -> dict[str, float]:
        return {run.name: round(run.millis, 2) for run in self.runs}


class TooBusy(RuntimeError):
    """No room to check the message before its deadline (every worker busy).
    The decider answers it with a 4xx whatever ``[milter] on_error`` says:
    accepting it unchecked would let anyone who can keep the workers busy
    send mail past the checks."""


@dataclass(frozen=True)
class Verdict:
    """The decision on one message, with everything needed to explain it."""

    action: Action
    score: float
    required: float  # the score from which mail counts as spam (X-Spam-Status: Yes)
    symbols: tuple[Symbol, ...]
    failed_checks: tuple[str, ...]
    reason: str
    reply: SmtpReply | None = None
    forced_by: str | None = None
    check_millis: Mapping[str, float] = field(default_factory=dict)
    facts: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    authentication_results: str | None = None
    # add_header: the tag put before the Subject ("" = none), and the whole
    # tagged Subject as the milter sets it (filled in by the decider, which
    # has the message).
    subject_tag: str = ""
    tagged_subject: str | None = None
    # The score is in the greylist band (from [thresholds] greylist, below
    # quarantine): the milter asks the sender to retry, with [greylist] on.
    greylist: bool = False
    # Held or rejected mail: its From, To, Subject, Date and Message-ID as the
    # worker's parse read them, for the quarantine record (gateway.quarantine.
    # fields); None: the store reads them from the message itself.
    header_fields: Mapping[str, str | None] | None = None

    @property
    def is_spam(self) -> bool:
        """X-Spam-Flag: YES. By the score, as SpamAssassin's ``required``, or
        because a symbol forced the add_header action."""
        return self.score >= self.required or self.action == "add_header"

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

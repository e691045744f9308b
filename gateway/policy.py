"""Policy: turn the symbols of a message into one action, and say why.

The rules it decides by (thresholds, scores, forced actions, meta rules, the
policies of recipient domains) are a :class:`~gateway.ruleset.Ruleset`,
read once per configuration.

The actions, mildest first: **accept** (deliver) < **add_header** (deliver
marked as spam: ``X-Spam-Flag: YES``, for the recipient's Junk folder) <
**quarantine** < **tempfail** < **reject**. A forced symbol decides
regardless of the score; when several are forced, the most severe wins. So
an allow-listed sender (a large negative score) still cannot slip a virus
past a forced reject.

A message for several recipients whose policies differ (a domain of their
own, a recipient's own allow list entry) is judged under each, and gets the
strictest of those actions: after DATA a milter answers for the whole
message, so it cannot refuse one recipient and deliver to another.

:class:`Judge` is the policy where a verdict is made (in the milter's
process, whether the checks ran there or in worker processes): the policy
with the checks' own forced actions, and the Authentication-Results header.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from gateway import authresults
from gateway.checks import Check
from gateway.config import Config
from gateway.facts import ListsFacts
from gateway.message import Envelope
from gateway.replies import for_verdict
from gateway.ruleset import NOT_FORCED, Ruleset, overlay_chain, policy_key
from gateway.symbols import Symbol
from gateway.verdict import PipelineResult, Verdict

log = logging.getLogger("gateway.policy")

SEVERITY: dict[str, int] = {"accept": 0, "add_header": 1, "quarantine": 2, "tempfail": 3,
                            "reject": 4}


@dataclass(frozen=True)
class _Effective:
    """The rules for one recipient's mail: the global ones and its overlays."""

    name: str  # the overlay that applies ("" = the global rules)
    add_header: float | None
    quarantine: float
    reject: float
    scores: Mapping[str, float]
    greylist: float | None
    force: Mapping[str, str]
    subject_tag: str

    @property
    def spam_threshold(self) -> float:
        return self.quarantine if self.add_header is None else self.add_header


class Policy:
    def __init__(self, rules: Ruleset):
        self.rules = rules
        self._effective: dict[tuple[str, ...], _Effective] = {}
        self._lock = threading.Lock()
        self._warned = False

    def decide(self, result: PipelineResult, reference: str | None = None,
               recipients: Sequence[str] | None = None) -> Verdict:
        """The verdict on one message. ``recipients``: the envelope's, for the
        domains' and recipients' own policies (default: as the lists check
        reported them)."""
        listed = ListsFacts.of(result.facts)
        if recipients is None:
            recipients = tuple(listed.recipients) if listed is not None else ()
            if listed is None and self.rules.domains and not self._warned:
                self._warned = True
                log.warning("domain policies are not applied: the recipients are not known "
                            "(the lists check reports them; enable it in [pipeline] checks)")
        scoped = listed.recipient_symbols if listed is not None else {}
        groups: dict[tuple[tuple[str, ...], tuple[Symbol, ...]], list[str]] = {}
        for recipient in recipients:
            extra = tuple(scoped.get(recipient, ()))
            groups.setdefault((self._chain(recipient), extra), []).append(recipient)
        if not groups:
            groups[((), ())] = []
        outcomes = []
        for (chain, extra), members in groups.items():
            effective = self._rules_for(chain)
            outcomes.append((self._judge(result, effective, extra, reference), effective,
                             members))
        verdict, effective, members = max(outcomes, key=lambda o: SEVERITY[o[0].action])
        if len(outcomes) == 1 and not effective.name:
            return verdict
        reason = verdict.reason
        if len(outcomes) > 1:
            parts = ", ".join(f"{', '.join(m) or '-'}: {v.action}" for v, _e, m in outcomes)
            reason += f"; the strictest of {len(outcomes)} recipients' policies ({parts})"
        elif effective.name:
            reason += f" (policy of {effective.name})"
        policy_facts = {"recipients": {m: {"policy": e.name or "global", "action": v.action,
                                           "score": v.score}
                                       for v, e, ms in outcomes for m in ms},
                        "applied": effective.name or "global"}
        return replace(verdict, reason=reason, facts={**verdict.facts, "policy": policy_facts})

    def _chain(self, recipient: str) -> tuple[str, ...]:
        if not self.rules.domains:
            return ()
        try:
            key = policy_key(recipient)
        except ValueError:
            return ()
        return overlay_chain(key, self.rules.domains)

    def _rules_for(self, chain: tuple[str, ...]) -> _Effective:
        effective = self._effective.get(chain)
        if effective is not None:
            return effective
        rules = self.rules
        thresholds: dict[str, float | None] = {"add_header": rules.add_header,
                                               "greylist": rules.greylist,
                                               "quarantine": rules.quarantine,
                                               "reject": rules.reject}
        scores, tag = dict(rules.scores), rules.subject_tag
        force: dict[str, str] = dict(rules.force)
        for key in chain:
            overlay = rules.domains[key]
            thresholds.update(overlay.thresholds)
            scores.update(overlay.scores)
            force.update(overlay.force)
            if overlay.subject_tag is not None:
                tag = overlay.subject_tag
        force = {name: action for name, action in force.items() if action != NOT_FORCED}
        effective = _Effective(
            name=chain[-1] if chain else "", add_header=thresholds["add_header"],
            quarantine=float(thresholds["quarantine"] or 0.0),
            reject=float(thresholds["reject"] or 0.0),
            scores=scores, force=force, subject_tag=tag, greylist=thresholds["greylist"])
        with self._lock:
            self._effective[chain] = effective
        return effective

    def _judge(self, result: PipelineResult, rules: _Effective, extra: tuple[Symbol, ...],
               reference: str | None) -> Verdict:
        found = [*result.symbols, *extra]
        symbols = [s.rescored(rules.scores[s.name]) if s.name in rules.scores else s
                   for s in found]
        if self.rules.metas:
            present = {s.name for s in symbols}
            for meta in self.rules.metas:
                if meta.holds(present):
                    present.add(meta.name)
                    symbols.append(Symbol(meta.name, rules.scores.get(meta.name, meta.score),
                                          meta.description, meta.expression))
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
        elif rules.add_header is not None and score >= rules.add_header:
            action = "add_header"
            reason = f"score {score:g} >= add_header threshold {rules.add_header:g}"
        else:
            action = "accept"
            lowest = ("quarantine", rules.quarantine) if rules.add_header is None else \
                ("add_header", rules.add_header)
            reason = f"score {score:g} < {lowest[0]} threshold {lowest[1]:g}"
        return Verdict(
            action=action,  # type: ignore[arg-type]
            score=score,
            required=rules.spam_threshold,
            symbols=tuple(symbols),
            failed_checks=tuple(result.failed_checks),
            reason=reason,
            reply=for_verdict(action, score, forced_by, reference),
            forced_by=forced_by.name if forced_by else None,
            check_millis=result.check_millis,
            facts=dict(result.facts),
            subject_tag=rules.subject_tag if action == "add_header" else "",
            greylist=not forced and rules.greylist is not None
            and rules.greylist <= score < rules.quarantine,
        )


class Judge:
    """The policy and the Authentication-Results header: from a pipeline's
    result to a verdict. Cheap; lives wherever the verdict is made."""

    def __init__(self, config: Config, checks: Iterable[type[Check] | Check],
                 ruleset: Ruleset):
        forced: dict[str, str] = {}
        for check in checks:
            forced.update(check.forced_actions(config))
        self.policy = Policy(ruleset.with_default_forces(forced))
        self.authserv_id = config.auth.server_id()

    def verdict(self, result: PipelineResult, envelope: Envelope) -> Verdict:
        if envelope.stage_symbols:  # found at RCPT (gateway.door): scored like the rest
            result = replace(result, symbols=(*result.symbols, *envelope.stage_symbols))
        verdict = self.policy.decide(result, reference=envelope.queue_id,
                                     recipients=envelope.rcpt_to)
        header = authresults.build(self.authserv_id, verdict.facts)
        return replace(verdict, authentication_results=header) if header else verdict

"""Message in, verdict out: the seam between the milter and the scoring.

:class:`LocalEvaluator` runs the pipeline and policy in the calling process.
:class:`~gateway.workers.WorkerPool` runs the checks in worker processes,
so that parsing, the classifier and DKIM's RSA work use every core (which
pymilter's threads cannot: they share one GIL), and so that a message that
overruns its budget can be stopped. Both take the envelope and the raw
content and return a :class:`~gateway.policy.Verdict`; the milter cannot
tell them apart.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Protocol

from gateway import authresults
from gateway.checks import Check
from gateway.config import Config
from gateway.message import Envelope, Message, RawContent
from gateway.pipeline import Pipeline, PipelineResult
from gateway.policy import Policy, Verdict, load_rules

log = logging.getLogger("gateway.evaluator")


class TooBusy(RuntimeError):
    """No room to check the message before its deadline (every worker busy).
    The decider answers it with a 4xx whatever ``[milter] on_error`` says:
    accepting it unchecked would let anyone who can keep the workers busy
    send mail past the checks."""


class Evaluator(Protocol):
    # True when evaluating touches no database driver in this process (the
    # checks run elsewhere): it may then run on pymilter's own threads
    # (see gateway.decider for why that matters).
    store_free: bool

    def evaluate(self, envelope: Envelope, raw: RawContent) -> Verdict: ...

    def startup_problems(self) -> list[str]: ...

    def worker_pids(self) -> list[int]: ...  # the processes running the checks, if others

    def close(self) -> None: ...


class Judge:
    """The policy and the Authentication-Results header: from a pipeline's
    result to a verdict. Cheap; lives wherever the verdict is made."""

    def __init__(self, config: Config, checks: list[type[Check]] | list[Check]):
        forced: dict = {}
        for check in checks:
            forced.update(check.forced_actions(config))
        self.policy = Policy(load_rules(config.policy.rules).with_default_forces(forced))
        self.authserv_id = config.auth.server_id()

    def verdict(self, result: PipelineResult, envelope: Envelope) -> Verdict:
        if envelope.stage_symbols:  # found at RCPT (gateway.door): scored like the rest
            result = replace(result, symbols=(*result.symbols, *envelope.stage_symbols))
        verdict = self.policy.decide(result, reference=envelope.queue_id,
                                     recipients=envelope.rcpt_to)
        header = authresults.build(self.authserv_id, verdict.facts)
        return replace(verdict, authentication_results=header) if header else verdict


class LocalEvaluator:
    store_free = False  # the lists check reads the store

    def __init__(self, config: Config):
        self.config = config
        self.pipeline = Pipeline.from_config(config)
        self.judge = Judge(config, self.pipeline.checks)
        self.policy = self.judge.policy

    def evaluate(self, envelope: Envelope, raw: RawContent) -> Verdict:
        return self.evaluate_message(Message(envelope, raw, self.config.limits))

    def startup_problems(self) -> list[str]:
        """What the enabled checks find wrong before the first message."""
        return [p for check in self.pipeline.checks for p in check.startup_problems()]

    def worker_pids(self) -> list[int]:
        return []  # the checks run in the calling process

    def evaluate_message(self, message: Message) -> Verdict:
        return self.judge.verdict(self.pipeline.run(message), message.envelope)

    def close(self) -> None:
        self.pipeline.close()


def build_evaluator(config: Config) -> Evaluator:
    if config.pipeline.workers > 0:
        from gateway.workers import WorkerPool

        return WorkerPool(config)
    return LocalEvaluator(config)

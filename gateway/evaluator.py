"""Message in, verdict out: the seam between the milter and the scoring.

:class:`LocalEvaluator` runs the pipeline and policy in the calling process.
:class:`~gateway.workers.WorkerPool` runs the checks in worker processes,
so that parsing, the classifier and DKIM's RSA work use every core (which
pymilter's threads cannot: they share one GIL), and so that a message that
overruns its budget can be stopped. Both take the envelope and the raw
content and return a :class:`~gateway.verdict.Verdict`; the milter cannot
tell them apart.
"""

from __future__ import annotations

import logging
from typing import Protocol

from gateway.config import Config
from gateway.message import Envelope, Message, RawContent
from gateway.pipeline import Pipeline
from gateway.policy import Judge
from gateway.ruleset import Ruleset, load_rules
from gateway.verdict import Verdict
from gateway.workers import WorkerPool

log = logging.getLogger("gateway.evaluator")


class Evaluator(Protocol):
    # True when evaluating touches no database driver in this process (the
    # checks run elsewhere): it may then run on pymilter's own threads
    # (see gateway.decider for why that matters).
    store_free: bool

    def evaluate(self, envelope: Envelope, raw: RawContent) -> Verdict: ...

    def startup_problems(self) -> list[str]: ...

    def worker_pids(self) -> list[int]: ...  # the processes running the checks, if others

    def close(self) -> None: ...


class LocalEvaluator:
    """``ruleset``: the configuration generation's (gateway.service); without
    one, the config's rules files are read now (the commands and tests that
    score mail outside ``gateway run``)."""

    store_free = False  # the lists check reads the store

    def __init__(self, config: Config, ruleset: Ruleset | None = None):
        self.config = config
        self.ruleset = load_rules(config.policy.rules) if ruleset is None else ruleset
        self.pipeline = Pipeline.from_config(config, self.ruleset)
        self.judge = Judge(config, self.pipeline.checks, self.ruleset)
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


def build_evaluator(config: Config, ruleset: Ruleset) -> Evaluator:
    if config.pipeline.workers > 0:
        return WorkerPool(config, ruleset)
    return LocalEvaluator(config, ruleset)

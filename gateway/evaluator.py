"""Message in, verdict out: the seam between the milter and the scoring.

:class:`LocalEvaluator` runs the pipeline and policy in the calling process.
:class:`PoolEvaluator` runs them in worker processes so that parsing, the
classifier and DKIM's RSA work use every core, which pymilter's threads
cannot (they share one GIL). Both take the envelope and the raw content
and return a :class:`~gateway.policy.Verdict`; the milter cannot tell them
apart.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Protocol

from gateway import authresults
from gateway.config import Config
from gateway.message import Envelope, Message, RawContent
from gateway.pipeline import Pipeline
from gateway.policy import Policy, Verdict, load_rules

log = logging.getLogger("gateway.evaluator")


class Evaluator(Protocol):
    def evaluate(self, envelope: Envelope, raw: RawContent) -> Verdict: ...

    def startup_problems(self) -> list[str]: ...

    def close(self) -> None: ...


class LocalEvaluator:
    def __init__(self, config: Config):
        self.config = config
        self.pipeline = Pipeline.from_config(config)
        rules = load_rules(config.policy.rules)
        forced = {}
        for check in self.pipeline.checks:
            forced.update(check.forced_actions(config))
        self.policy = Policy(rules.with_default_forces(forced))
        self.authserv_id = config.auth.server_id()

    def evaluate(self, envelope: Envelope, raw: RawContent) -> Verdict:
        return self.evaluate_message(Message(envelope, raw, self.config.limits))

    def startup_problems(self) -> list[str]:
        """What the enabled checks find wrong before the first message."""
        return [p for check in self.pipeline.checks for p in check.startup_problems()]

    def evaluate_message(self, message: Message) -> Verdict:
        result = self.pipeline.run(message)
        verdict = self.policy.decide(result, reference=message.envelope.queue_id)
        header = authresults.build(self.authserv_id, verdict.facts)
        return replace(verdict, authentication_results=header) if header else verdict

    def close(self) -> None:
        self.pipeline.close()


# One LocalEvaluator per worker process, built by the pool's initializer.
_worker: LocalEvaluator | None = None


def _init_worker(config: Config) -> None:
    global _worker
    _worker = LocalEvaluator(config)


def _evaluate_in_worker(envelope: Envelope, data: bytes | None, path: str | None) -> Verdict:
    assert _worker is not None, "worker not initialised"
    raw = RawContent(data=data) if data is not None else RawContent(path=Path(path or ""))
    return _worker.evaluate(envelope, raw)


class PoolEvaluator:
    def __init__(self, config: Config, workers: int):
        # Validate in this process first: a bad rules file should stop start-up
        # with one clear line, not surface later as a broken pool.
        probe = LocalEvaluator(config)
        self.problems = probe.startup_problems()
        probe.close()
        context = multiprocessing.get_context("forkserver" if os.name == "posix" else "spawn")
        self._pool = ProcessPoolExecutor(
            max_workers=workers,
            mp_context=context,
            initializer=_init_worker,
            initargs=(config,),
        )

    def startup_problems(self) -> list[str]:
        return self.problems

    def evaluate(self, envelope: Envelope, raw: RawContent) -> Verdict:
        # A spilled message goes by path, so its bytes are never pickled.
        data = raw.bytes() if raw.in_memory else None
        path = str(raw.path) if raw.path is not None else None
        return self._pool.submit(_evaluate_in_worker, envelope, data, path).result()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def build_evaluator(config: Config) -> Evaluator:
    if config.pipeline.workers > 0:
        return PoolEvaluator(config, config.pipeline.workers)
    return LocalEvaluator(config)

"""Run the enabled checks of one message under a time budget.

Checks run one after the other in the calling thread, or, with
``[pipeline] parallel = true``, the ones that wait on the network
(``io_bound = True``) run concurrently in a thread pool. Sequential is the
default: with warm DNS caches those checks hardly wait, and handing work
between threads costs more CPU than it saves (measured: 0.35x bare Postfix
sequential, 0.25x parallel, every check on). A sequential check that starts
before the budget is spent runs to its own timeout (DNS lifetime, clamd
timeout); the ones after it are not started. A
check that raises, times out or never gets to run yields its ``<NAME>_ERROR``
symbol and is listed in ``failed_checks``: nothing is silently dropped.

The GIL keeps all of this on one core. Spreading messages over both cores
is the job of :mod:`gateway.evaluator`, which runs this pipeline in worker
processes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from gateway.checks import Check, CheckContext, UnknownCheck, resolve_check
from gateway.config import Config
from gateway.message import Message
from gateway.schema import ConfigError
from gateway.symbols import Report, Symbol

log = logging.getLogger("gateway.pipeline")

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


class Pipeline:
    def __init__(self, checks: list[Check], budget: float, threads: int = 8,
                 parallel: bool = True):
        names = [c.name for c in checks]
        for check in checks:
            missing = [r for r in check.requires if r not in names]
            if missing:
                raise ConfigError(
                    [
                        f"pipeline.checks: {check.name!r} needs {', '.join(map(repr, missing))}"
                        " enabled too"
                    ]
                )
        self.checks = checks
        # What each check waits for: its requirements, and the wanted checks
        # that are enabled.
        self.dependencies = {
            c.name: tuple(c.requires) + tuple(w for w in c.wants if w in names)
            for c in checks
        }
        self.budget = budget
        self._pool = (
            ThreadPoolExecutor(threads, thread_name_prefix="check")
            if parallel and any(getattr(c, "io_bound", False) for c in checks)
            else None
        )

    @classmethod
    def from_config(cls, config: Config) -> Pipeline:
        problems, checks = [], []
        for spec in config.pipeline.checks:
            try:
                checks.append(resolve_check(spec)(config))
            except UnknownCheck as exc:
                problems.append(f"{config.source}: pipeline.checks: {exc}")
            except ConfigError as exc:
                problems.extend(exc.problems)
        if problems:
            raise ConfigError(problems)
        return cls(checks, config.pipeline.budget, config.pipeline.threads,
                   config.pipeline.parallel)

    def close(self) -> None:
        for check in self.checks:
            check.close()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    def run(self, message: Message) -> PipelineResult:
        deadline = time.monotonic() + self.budget
        pending = list(self.checks)
        running: dict[Future[tuple[Report, float]], Check] = {}
        reports: dict[str, Report] = {}
        runs: dict[str, CheckRun] = {}

        def finish(check: Check, outcome: tuple[Report, float] | BaseException, millis: float):
            if isinstance(outcome, BaseException):
                log.warning(
                    "check %s failed: %s",
                    check.name,
                    outcome,
                    exc_info=(type(outcome), outcome, outcome.__traceback__),
                )
                runs[check.name] = CheckRun(check.name, "error", millis, _describe(outcome))
            else:
                reports[check.name], millis = outcome
                runs[check.name] = CheckRun(check.name, "ok", millis)

        while pending or running:
            ready = [c for c in pending
                     if all(r in runs for r in self.dependencies[c.name])]
            for check in ready:
                pending.remove(check)
                context = CheckContext(
                    facts=MappingProxyType(
                        {r: reports[r].facts for r in self.dependencies[check.name]
                         if r in reports}
                    )
                )
                if getattr(check, "io_bound", False) and self._pool is not None:
                    running[self._pool.submit(_timed, check, message, context)] = check
                elif time.monotonic() >= deadline:
                    runs[check.name] = CheckRun(
                        check.name, "timeout", 0.0,
                        f"not run: the {self.budget:g}s budget was spent")
                else:
                    started = time.perf_counter()
                    try:
                        finish(check, _timed(check, message, context), 0.0)
                    except Exception as exc:
                        finish(check, exc, (time.perf_counter() - started) * 1000)
            if ready:
                continue
            remaining = deadline - time.monotonic()
            if not running or remaining <= 0:
                break
            done, _ = wait(running, timeout=remaining, return_when=FIRST_COMPLETED)
            for future in done:
                check = running.pop(future)
                error = future.exception()
                finish(check, error if error is not None else future.result(), 0.0)

        waited = (self.budget - max(deadline - time.monotonic(), 0.0)) * 1000
        for future, check in running.items():
            future.cancel()
            runs[check.name] = CheckRun(
                check.name, "timeout", waited, f"timed out after the {self.budget:g}s budget"
            )
        for check in pending:
            runs[check.name] = CheckRun(
                check.name, "skipped", 0.0, "not run: the checks it needs did not finish"
            )

        symbols: list[Symbol] = []
        for check in self.checks:
            run = runs[check.name]
            if run.status == "ok":
                symbols.extend(reports[check.name].symbols)
            else:
                symbols.append(
                    Symbol(
                        name=check.failure_symbol(),
                        description=check.failure_description(),
                        evidence=run.error,
                    )
                )
        return PipelineResult(
            symbols=tuple(symbols),
            runs=tuple(runs[c.name] for c in self.checks),
            facts={name: dict(report.facts) for name, report in reports.items()},
        )


def _timed(check: Check, message: Message, context: CheckContext) -> tuple[Report, float]:
    started = time.perf_counter()
    outcome = check.run(message, context)
    return _as_report(outcome), (time.perf_counter() - started) * 1000


def _as_report(outcome: Iterable[Symbol] | Report | None) -> Report:
    if outcome is None:
        return Report()
    if isinstance(outcome, Report):
        return outcome
    return Report(symbols=tuple(outcome))


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if str(exc) else text

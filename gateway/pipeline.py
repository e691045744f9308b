"""Run the enabled checks of one message under a time budget.

With ``[pipeline] parallel = true`` (the default) the checks that wait on
the network (``io_bound = True``: DNS, clamd) run concurrently in a thread
pool, the others in the calling thread, each as soon as the checks it needs
have finished. A worker process (gateway.workers) is busy with a message for
as long as its checks take, waiting included, so waiting for the slowest
lookup rather than for all of them in turn lets the same workers check more
mail per second. With ``parallel = false`` checks run one after the other:
a check that starts before the budget is spent runs to its own timeout (DNS
lifetime, clamd timeout); the ones after it are not started.

A check that raises, times out or never gets to run yields its
``<NAME>_ERROR`` symbol and is listed in ``failed_checks``; running out of
time also yields ``BUDGET_EXCEEDED``. Nothing is silently dropped, and a
check that depends on a failed one still runs, without its facts (DMARC
without a DKIM that crashed is DMARC without a DKIM pass).

The budget here only stops checks from *starting*: Python cannot stop a
thread that is busy in C code. The hard stop is :mod:`gateway.workers`,
which runs this pipeline in worker processes and kills one that overruns;
it assembles the result of the checks that finished with :func:`assemble`,
the same function the pipeline uses itself.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from gateway.checks import Check, CheckContext, UnknownCheck, resolve_check
from gateway.config import Config
from gateway.message import Message
from gateway.schema import ConfigError
from gateway.symbols import PIPELINE_SYMBOLS, Report, Symbol

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


# Called as each check finishes: (its run, its report or None if it failed).
Observer = Callable[[CheckRun, Report | None], None]


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
            if parallel and any(c.io_bound for c in checks)
            else None
        )

    @classmethod
    def from_config(cls, config: Config) -> Pipeline:
        problems, checks = [], []
        for check_class in check_classes(config, problems):
            try:
                checks.append(check_class(config))
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

    def run(self, message: Message, observer: Observer | None = None) -> PipelineResult:
        runs, reports = self._schedule(message, observer)
        return assemble(self.checks, runs, reports, self.budget)

    # -- scheduling ---------------------------------------------------------------

    def _schedule(self, message: Message, observer: Observer | None
                  ) -> tuple[dict[str, CheckRun], dict[str, Report]]:
        deadline = time.monotonic() + self.budget
        pending = list(self.checks)
        running: dict[Future[tuple[Report, float]], tuple[Check, float]] = {}
        reports: dict[str, Report] = {}
        runs: dict[str, CheckRun] = {}

        def finish(check: Check, run: CheckRun, report: Report | None) -> None:
            runs[check.name] = run
            if report is not None:
                reports[check.name] = report
            if observer is not None:
                observer(run, report)

        while pending or running:
            ready = [c for c in pending if all(r in runs for r in self.dependencies[c.name])]
            for check in ready:
                pending.remove(check)
                context = self._context(check, reports)
                if check.io_bound and self._pool is not None:
                    future = self._pool.submit(_timed, check, message, context)
                    running[future] = (check, time.perf_counter())
                elif time.monotonic() >= deadline:
                    finish(check, CheckRun(check.name, "timeout", 0.0,
                                           f"not run: the {self.budget:g}s budget was spent"),
                           None)
                else:
                    started = time.perf_counter()
                    try:
                        report, millis = _timed(check, message, context)
                    except Exception as exc:
                        finish(check, _failed(check, exc, started, message), None)
                    else:
                        finish(check, CheckRun(check.name, "ok", millis), report)
            if ready:
                continue
            remaining = deadline - time.monotonic()
            if not running or remaining <= 0:
                break
            done, _ = wait(running, timeout=remaining, return_when=FIRST_COMPLETED)
            for future in done:
                check, started = running.pop(future)
                error = future.exception()
                if error is not None:
                    finish(check, _failed(check, error, started, message), None)
                else:
                    report, millis = future.result()
                    finish(check, CheckRun(check.name, "ok", millis), report)

        for future, (check, started) in running.items():
            future.cancel()
            finish(check, CheckRun(check.name, "timeout", (time.perf_counter() - started) * 1000,
                                   f"timed out after the {self.budget:g}s budget"), None)
        return runs, reports

    def _context(self, check: Check, reports: Mapping[str, Report]) -> CheckContext:
        return CheckContext(facts=MappingProxyType(
            {r: reports[r].facts for r in self.dependencies[check.name] if r in reports}))


def check_classes(config: Config, problems: list[str]) -> list[type[Check]]:
    """The classes of the enabled checks; unknown ones go to ``problems``."""
    classes = []
    for spec in config.pipeline.checks:
        try:
            classes.append(resolve_check(spec))
        except UnknownCheck as exc:
            problems.append(f"{config.source}: pipeline.checks: {exc}")
    return classes


def assemble(checks: Sequence[Check | type[Check]], runs: Mapping[str, CheckRun],
             reports: Mapping[str, Report], budget: float,
             stopped: str = "") -> PipelineResult:
    """The result of one message from the checks that finished.

    A check with no run did not get to run (its dependencies did not finish,
    or its worker was stopped: ``stopped`` says why). Every check that did
    not finish gets its ``<CHECK>_ERROR``, and running out of time adds
    ``BUDGET_EXCEEDED``.
    """
    complete: dict[str, CheckRun] = {}
    for check in checks:
        complete[check.name] = runs.get(check.name) or CheckRun(
            check.name, "timeout" if stopped else "skipped", 0.0,
            stopped or "not run: the checks it needs did not finish")
    symbols: list[Symbol] = []
    for check in checks:
        run = complete[check.name]
        if run.status == "ok":
            symbols.extend(reports[check.name].symbols)
        else:
            symbols.append(Symbol(name=check.failure_symbol(),
                                  description=check.failure_description(),
                                  evidence=run.error))
    late = [run.name for run in complete.values() if run.status in ("timeout", "skipped")]
    if any(run.status == "timeout" for run in complete.values()):
        symbols.append(Symbol("BUDGET_EXCEEDED", description=PIPELINE_SYMBOLS["BUDGET_EXCEEDED"],
                              evidence=f"not finished within {budget:g}s: {', '.join(late)}"))
    return PipelineResult(
        symbols=tuple(symbols),
        runs=tuple(complete[c.name] for c in checks),
        facts={name: dict(report.facts) for name, report in reports.items()},
    )


def _failed(check: Check, exc: BaseException, started: float,
            message: Message | None = None) -> CheckRun:
    # One line with the queue id for the log reader (clamd down would
    # otherwise write a traceback per message); the traceback at debug level.
    queue_id = (message.envelope.queue_id if message is not None else None) or "-"
    log.warning("check %s failed on message %s: %s", check.name, queue_id, _describe(exc))
    log.debug("traceback of check %s", check.name,
              exc_info=(type(exc), exc, exc.__traceback__))
    return CheckRun(check.name, "error", (time.perf_counter() - started) * 1000, _describe(exc))


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

"""Run the enabled checks of one message under a time budget.

With ``[pipeline] parallel = true`` the checks that wait on the network
(``io_bound = True``: DNS, clamd) run concurrently in a thread pool, the
others in the calling thread, each as soon as the checks it needs have
finished. A worker process (gateway.workers) is busy with a message for as
long as its checks take, waiting included, so waiting for the slowest lookup
rather than for all of them in turn lets the same workers check more mail
per second. With ``parallel = false`` checks run one after the other: a
check that starts before the budget is spent runs to its own timeout (DNS
lifetime, clamd timeout); the ones after it are not started.

Threads are not free: handing a check to the pool and taking its result
back costs thread wake-ups and GIL hand-offs, about 0.1 ms of CPU a check,
0.3-0.7 ms a message through Postfix (10-15% of the gateway's CPU), for nothing
when a local caching resolver and clamd answer in a fraction of a
millisecond. ``parallel = "auto"`` (the default, :class:`_Concurrency`)
runs each network check inline while its waits stay short, and in the pool
once they grow while cores are spare.

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

import itertools
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from types import MappingProxyType
from typing import Literal

from gateway.checks import Check, CheckContext, UnknownCheck, check_sections, resolve_check
from gateway.checks.declared import declared_or_resolved
from gateway.config import Config
from gateway.cpu import SPARE_CORES, IdleShare
from gateway.message import Message
from gateway.ruleset import Ruleset
from gateway.schema import ConfigError
from gateway.symbols import PIPELINE_SYMBOLS, Report, Symbol
from gateway.verdict import CheckRun, PipelineResult

log = logging.getLogger("gateway.pipeline")

Parallel = bool | Literal["auto"]


# Called as each check finishes: (its run, its report or None if it failed).
Observer = Callable[[CheckRun, Report | None], None]


class _Concurrency:
    """``parallel = "auto"``: which network checks of a message go to the
    thread pool. A network check run inline measures how long it waited
    (its wall time less its own CPU time, so parsing or computing does not
    count), as a moving average per check. Handing a check to a thread
    costs about 0.1 ms of CPU, so a check goes to the pool while its wait
    averages more than ``ABOVE`` seconds (clamd's scan, slow DNS answers;
    not a cached answer from a local resolver) and the machine has spare
    cores: on a machine whose cores are all busy the waits are clamd and
    the resolver queueing for a core, and threads would only add CPU.
    Every ``PROBE_EVERY``-th message runs them all inline to measure again
    (times in the pool include waits for the GIL); a check whose average
    falls under ``BELOW``, or busy cores, brings it back inline. A lost
    update between threads (``workers = 0`` runs messages side by side)
    only delays a switch."""

    ABOVE = 0.001
    BELOW = 0.0005
    PROBE_EVERY = 16
    WEIGHT = 0.2  # of the newest measurement in the moving average
    BUSY_CORES = 0.1  # idle share under which the checks come back inline

    def __init__(self) -> None:
        self.waits: dict[str, float] = {}
        self.pooled: frozenset[str] = frozenset()
        self._messages = itertools.count()
        self._idle = IdleShare()

    def pooled_for_next(self) -> frozenset[str]:
        """The checks the next message runs in the pool (none on a probe)."""
        if self.pooled and next(self._messages) % self.PROBE_EVERY != 0:
            return self.pooled
        return frozenset()

    def measured(self, waits: Mapping[str, float]) -> None:
        """The waits of the network checks one message ran inline."""
        if not waits:
            return
        for name, seconds in waits.items():
            average = self.waits.get(name, 0.0)
            self.waits[name] = average + self.WEIGHT * (seconds - average)
        idle = self._idle.share()
        pooled = {name for name, average in self.waits.items()
                  if (name in self.pooled and average >= self.BELOW and idle >= self.BUSY_CORES)
                  or (average > self.ABOVE and idle >= SPARE_CORES)}
        if pooled != self.pooled:
            log.debug("network checks in threads: %s (waits %s ms)",
                      ", ".join(sorted(pooled)) or "none",
                      ", ".join(f"{n} {w * 1000:.1f}" for n, w in sorted(self.waits.items())))
            self.pooled = frozenset(pooled)


class Pipeline:
    def __init__(self, checks: list[Check], budget: float, threads: int = 8,
                 parallel: Parallel = "auto"):
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
        self.concurrency = _Concurrency() if parallel == "auto" and self._pool else None
        self.inline_order = self._inline_order()

    def _inline_order(self) -> tuple[Check, ...]:
        """The order :class:`_Schedule` runs the checks in when none goes to
        the pool: in rounds, each the checks (in configuration order) whose
        dependencies ran in the rounds before. It depends on nothing but the
        checks, so it is found once, not again for every message."""
        order: list[Check] = []
        done: set[str] = set()
        pending = list(self.checks)
        while pending:
            ready = [c for c in pending if all(r in done for r in self.dependencies[c.name])]
            if not ready:  # unreachable: requirements are enabled checks, wants too
                break
            order.extend(ready)
            done.update(c.name for c in ready)
            pending = [c for c in pending if c not in ready]
        return tuple(order)

    def _pooled_for_next(self) -> frozenset[str] | None:
        """The network checks the next message runs in the pool: None for
        all of them (``parallel = true``), else by name."""
        if self._pool is None:
            return frozenset()
        if self.concurrency is None:
            return None
        return self.concurrency.pooled_for_next()

    @classmethod
    def from_config(cls, config: Config, ruleset: Ruleset) -> Pipeline:
        """The enabled checks, built with the configuration generation's
        rules (gateway.service), which they read instead of the files."""
        problems: list[str] = []
        checks: list[Check] = []
        for check_class in check_classes(config, problems, to_build=True):
            try:
                checks.append(check_class(config, ruleset))
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
        schedule = _Schedule(self, message, observer)
        schedule.run()
        return assemble(self.checks, schedule.runs, schedule.reports, self.budget)



class _Schedule:
    """One message's way through the checks: each starts once the checks it
    needs have finished; network-bound ones go to the pool (when parallel)
    before the others run here, so their waiting overlaps this thread's work."""

    def __init__(self, pipeline: Pipeline, message: Message, observer: Observer | None):
        self.pipeline = pipeline
        self.message = message
        self.observer = observer
        self.deadline = time.monotonic() + pipeline.budget
        self.pending = list(pipeline.checks)
        self.pooled = pipeline._pooled_for_next()
        self.waits: dict[str, float] = {}  # of the network checks run inline
        self.running: dict[Future[tuple[Report, float]], tuple[Check, float]] = {}
        self.runs: dict[str, CheckRun] = {}
        self.reports: dict[str, Report] = {}

    def run(self) -> None:
        if self.pooled is not None and not self.pooled and self.pipeline.inline_order:
            # Nothing for the pool (the usual case): the order is known.
            for check in self.pipeline.inline_order:
                self._run_here(check)
            self.pending.clear()
        while self.pending or self.running:
            if self._start_ready():
                continue
            remaining = self.deadline - time.monotonic()
            if not self.running or remaining <= 0:
                break
            self._collect(remaining)
        self._abandon_running()
        if self.pipeline.concurrency is not None:
            self.pipeline.concurrency.measured(self.waits)

    def _to_pool(self, check: Check) -> bool:
        return check.io_bound and self.pipeline._pool is not None and (
            self.pooled is None or check.name in self.pooled)

    def _start_ready(self) -> bool:
        dependencies = self.pipeline.dependencies
        ready = [c for c in self.pending if all(r in self.runs for r in dependencies[c.name])]
        pool = self.pipeline._pool
        ready.sort(key=lambda c: not self._to_pool(c))  # stable: config order kept
        for check in ready:
            self.pending.remove(check)
            if pool is not None and self._to_pool(check):
                future = pool.submit(_timed, check, self.message, self._context(check))
                self.running[future] = (check, time.perf_counter())
            else:
                self._run_here(check)
        return bool(ready)

    def _run_here(self, check: Check) -> None:
        """Run one check in this thread, unless the budget is spent."""
        if time.monotonic() >= self.deadline:
            self._finish(check, CheckRun(
                check.name, "timeout", 0.0,
                f"not run: the {self.pipeline.budget:g}s budget was spent"), None)
            return
        context = self._context(check)
        # Only a network check's wait is measured (_Concurrency), and only
        # then is the thread's CPU clock read (a system call).
        measured = check.io_bound and self.pipeline.concurrency is not None
        cpu = time.thread_time() if measured else 0.0
        started = time.perf_counter()
        try:
            report = _as_report(check.run(self.message, context))
        except Exception as exc:
            self._finish(check, _failed(check, exc, started, self.message), None)
        else:
            self._finish(check, CheckRun(check.name, "ok",
                                         (time.perf_counter() - started) * 1000), report)
        if measured:
            self.waits[check.name] = (time.perf_counter() - started
                                      - (time.thread_time() - cpu))

    def _collect(self, timeout: float) -> None:
        done, _ = wait(self.running, timeout=timeout, return_when=FIRST_COMPLETED)
        for future in done:
            check, started = self.running.pop(future)
            error = future.exception()
            if error is not None:
                self._finish(check, _failed(check, error, started, self.message), None)
            else:
                report, millis = future.result()
                self._finish(check, CheckRun(check.name, "ok", millis), report)

    def _abandon_running(self) -> None:
        for future, (check, started) in self.running.items():
            future.cancel()
            self._finish(check, CheckRun(
                check.name, "timeout", (time.perf_counter() - started) * 1000,
                f"timed out after the {self.pipeline.budget:g}s budget"), None)
        self.running.clear()

    def _context(self, check: Check) -> CheckContext:
        """The facts of the checks this one needs or wants, read-only."""
        needed = self.pipeline.dependencies[check.name]
        if not needed:
            return _NO_FACTS
        return CheckContext(facts=MappingProxyType(
            {r: self.reports[r].facts for r in needed if r in self.reports}))

    def _finish(self, check: Check, run: CheckRun, report: Report | None) -> None:
        self.runs[check.name] = run
        if report is not None:
            self.reports[check.name] = report
        if self.observer is not None:
            self.observer(run, report)


_NO_FACTS = CheckContext(facts=MappingProxyType({}))  # immutable: shared


def check_classes(config: Config, problems: list[str], *,
                  to_build: bool = False) -> list[type[Check]]:
    """The classes of the enabled checks; unknown ones, and [check.NAME]
    settings that do not fit, go to ``problems``. In the milter with worker
    processes, a built-in check's declaration (gateway.checks.declared),
    unless ``to_build``: the checks themselves, to build them from."""
    classes = []
    for spec in config.pipeline.checks:
        try:
            classes.append(resolve_check(spec) if to_build
                           else declared_or_resolved(spec, config))
        except UnknownCheck as exc:
            problems.append(f"{config.source}: pipeline.checks: {exc}")
    problems.extend(check_sections(config, classes))
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

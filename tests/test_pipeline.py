import threading
import time

import pytest

from gateway.checks import BUILTIN, Check, CheckContext, catalog, resolve_check
from gateway.config import Config, PipelineSection
from gateway.message import Message
from gateway.paths import DEFAULT_RULES
from gateway.pipeline import Pipeline
from gateway.ruleset import Ruleset, load_rules
from gateway.symbols import Report, Symbol
from tests.plugins import BoomCheck, DependentCheck, FactsCheck, MarkerCheck, SlowCheck

CONFIG = Config()


def run(checks, raw=b"Subject: x\r\n\r\nbody\r\n", budget=2.0):
    pipeline = Pipeline([c.from_config(CONFIG) for c in checks], budget=budget, threads=4,
                        parallel=True)
    try:
        return pipeline.run(Message.from_bytes(raw))
    finally:
        pipeline.close()


def test_a_check_that_raises_yields_its_fail_symbol():
    result = run([BoomCheck, MarkerCheck], b"Subject: x\r\n\r\nTRIGGER-MARKER\r\n")
    names = [s.name for s in result.symbols]
    assert names == ["BOOM_ERROR", "TEST_MARKER"]
    assert result.failed_checks == ["boom"]
    (boom,) = [s for s in result.symbols if s.name == "BOOM_ERROR"]
    assert boom.evidence == "RuntimeError: boom: deliberate test failure"


def test_a_check_over_budget_times_out_and_the_rest_still_report():
    class Stalled(SlowCheck):
        """A dead peer until the test is done: the pipeline must not wait for it."""

        seconds = 120.0
        released = threading.Event()
        finished = threading.Event()

        def run(self, message, context):
            try:
                return super().run(message, context)
            finally:
                Stalled.finished.set()

    try:
        result = run([Stalled, MarkerCheck], b"Subject: x\r\n\r\nTRIGGER-MARKER\r\n",
                     budget=0.3)
        assert not Stalled.finished.is_set()  # decided without it, however busy the machine
    finally:
        Stalled.released.set()
    assert {s.name for s in result.symbols} == {"SLOW_ERROR", "TEST_MARKER", "BUDGET_EXCEEDED"}
    assert result.failed_checks == ["slow"]
    (slow,) = [r for r in result.runs if r.name == "slow"]
    assert slow.status == "timeout"
    assert "0.3s budget" in slow.error


def test_dependent_check_sees_the_facts_it_requires():
    result = run([DependentCheck, FactsCheck])
    (seen,) = result.symbols
    assert seen.name == "TEST_SIZE_SEEN"
    assert seen.evidence == str(len(b"Subject: x\r\n\r\nbody\r\n"))
    assert result.failed_checks == []


def test_dependent_of_a_timed_out_check_is_skipped_not_dropped():
    class SlowFacts(SlowCheck):
        name = "facts"

    result = run([SlowFacts, DependentCheck], budget=0.2)
    assert {r.name: r.status for r in result.runs} == {"facts": "timeout", "dependent": "skipped"}
    assert {s.name for s in result.symbols} == {"FACTS_ERROR", "DEPENDENT_ERROR",
                                                "BUDGET_EXCEEDED"}


def test_io_bound_checks_run_concurrently():
    # Each waits at the barrier for the other: run one after the other, the
    # first would wait alone until the barrier broke.
    both_running = threading.Barrier(2, timeout=10.0)

    class Meeting(Check):
        io_bound = True
        symbols = {"TEST_MET": "met the other check while both ran"}

        def run(self, message: Message, context: CheckContext) -> list[Symbol]:
            both_running.wait()
            return [self.symbol("TEST_MET")]

    class MeetingA(Meeting):
        name = "meeting_a"

    class MeetingB(Meeting):
        name = "meeting_b"

    result = run([MeetingA, MeetingB], budget=30.0)
    assert [s.name for s in result.symbols] == ["TEST_MET", "TEST_MET"]


def test_every_builtin_symbol_has_a_default_score():
    rules = load_rules([DEFAULT_RULES])
    symbols = catalog(resolve_check(name) for name in BUILTIN)
    unscored = sorted(set(symbols) - set(rules.scores))
    assert unscored == []


def test_unknown_check_is_a_config_error():
    config = Config(pipeline=PipelineSection(checks=["headers", "nope"]))
    try:
        Pipeline.from_config(config, Ruleset())
    except Exception as exc:
        assert "unknown check 'nope' (built-in checks:" in str(exc)
    else:
        raise AssertionError("unknown check accepted")


def test_sequential_pipeline_stops_starting_checks_once_the_budget_is_spent():
    class SlowFirst(SlowCheck):
        name = "slow_first"
        seconds = 0.4  # past the budget

    pipeline = Pipeline([SlowFirst.from_config(CONFIG), MarkerCheck.from_config(CONFIG)],
                        budget=0.2, parallel=False)
    try:
        result = pipeline.run(Message.from_bytes(b"Subject: x\r\n\r\nTRIGGER-MARKER\r\n"))
    finally:
        pipeline.close()
    assert {r.name: r.status for r in result.runs} == {"slow_first": "ok", "marker": "timeout"}
    assert [s.name for s in result.symbols] == ["TEST_SLOW_DONE", "MARKER_ERROR", "BUDGET_EXCEEDED"]
    assert result.failed_checks == ["marker"]


def test_parallel_auto_is_the_default_and_sequential_runs_everything_in_budget():
    config = Config()
    assert config.pipeline.parallel == "auto"
    pipeline = Pipeline([FactsCheck.from_config(config), DependentCheck.from_config(config)],
                        budget=2.0, parallel=False)
    try:
        result = pipeline.run(Message.from_bytes(b"Subject: x\r\n\r\nbody\r\n"))
    finally:
        pipeline.close()
    assert [s.name for s in result.symbols] == ["TEST_SIZE_SEEN"]


def test_a_failed_check_logs_one_line_with_the_queue_id(caplog):
    from gateway.message import Envelope

    pipeline = Pipeline([BoomCheck.from_config(CONFIG)], budget=2.0, parallel=False)
    message = Message.from_bytes(b"Subject: x\r\n\r\nbody\r\n", Envelope(queue_id="QID7"))
    with caplog.at_level("INFO", logger="gateway.pipeline"):
        pipeline.run(message)
    pipeline.close()
    (record,) = [r for r in caplog.records if r.levelname == "WARNING"]
    assert record.getMessage() == (
        "check boom failed on message QID7: RuntimeError: boom: deliberate test failure")
    assert record.exc_info is None  # the traceback only at debug level


def test_network_checks_start_before_the_others_run_so_their_waiting_overlaps():
    """A check listed after a CPU-bound one, but waiting on the network,
    is already under way when the CPU-bound one runs."""
    lookup_started = threading.Event()

    class Lookup(Check):
        name = "lookup"
        symbols = {"TEST_LOOKUP": "a lookup"}
        io_bound = True

        def run(self, message, context):
            lookup_started.set()
            return [self.symbol("TEST_LOOKUP")]

    class Busy(Check):
        name = "busy"
        symbols = {"TEST_LOOKUP_UNDER_WAY": "the lookup had started"}

        def run(self, message, context):
            if lookup_started.wait(timeout=5):
                return [self.symbol("TEST_LOOKUP_UNDER_WAY")]
            return []

    result = run([Busy, Lookup])
    assert {s.name for s in result.symbols} == {"TEST_LOOKUP_UNDER_WAY", "TEST_LOOKUP"}
    assert [r.name for r in result.runs] == ["busy", "lookup"]  # reported in config order


class _Clocks:
    """The pipeline's wall and CPU clocks (gateway.pipeline's ``time``),
    moved on by the checks alone, each thread's its own as each check's
    time is its own: a busy machine that deschedules a check cannot make
    it look as if it waited, nor a quick one look slow."""

    monotonic = staticmethod(time.monotonic)  # the budget's deadline

    def __init__(self) -> None:
        self._mine = threading.local()

    def perf_counter(self) -> float:
        return getattr(self._mine, "wall", 0.0)

    def thread_time(self) -> float:
        return getattr(self._mine, "cpu", 0.0)

    def wait(self, seconds: float) -> None:
        self._mine.wall = self.perf_counter() + seconds

    def compute(self, seconds: float) -> None:
        self.wait(seconds)
        self._mine.cpu = self.thread_time() + seconds


@pytest.fixture
def clocks(monkeypatch) -> _Clocks:
    import gateway.pipeline

    clocks = _Clocks()
    monkeypatch.setattr(gateway.pipeline, "time", clocks)
    _Where.clocks = clocks
    return clocks


class _Where(Check):
    """A network check that notes which thread ran it and waits
    ``seconds`` (like a DNS answer that takes that long) on the clocks."""

    name = "where"
    symbols = {"TEST_WHERE": "ran"}
    io_bound = True
    seconds = 0.0
    threads: list[str] = []
    clocks: _Clocks

    def run(self, message, context):
        _Where.threads.append(threading.current_thread().name)
        _Where.clocks.wait(_Where.seconds)
        return [self.symbol("TEST_WHERE")]


class _Cores:
    """The machine's idle share, as the test sets it (the real one depends
    on what else runs beside the tests)."""

    def __init__(self, idle: float):
        self.idle = idle

    def share(self) -> float:
        return self.idle


def _auto(*checks: Check, idle: float = 1.0) -> Pipeline:
    pipeline = Pipeline(list(checks), budget=2.0, parallel="auto")
    pipeline.concurrency._idle = _Cores(idle)
    return pipeline


def _threads_of(pipeline, messages, seconds):
    _Where.seconds, _Where.threads = seconds, []
    for _ in range(messages):
        pipeline.run(Message.from_bytes(b"Subject: x\r\n\r\nbody\r\n"))
    return ["pool" if name.startswith("check") else "inline" for name in _Where.threads]


def test_auto_runs_quick_network_checks_inline_and_slow_ones_in_the_pool(clocks):
    pipeline = _auto(_Where.from_config(CONFIG))
    try:
        assert set(_threads_of(pipeline, 20, 0.0)) == {"inline"}
        # Waits of 30 ms: the first message measures them, the rest go to the pool.
        slow = _threads_of(pipeline, 40, 0.03)
        assert slow[0] == "inline" and slow.count("pool") >= 35
        assert "inline" in slow[1:]  # every 16th re-measures
        # Quick again: the probes bring the checks back inline.
        quick = _threads_of(pipeline, 400, 0.0)
        assert quick[-20:] == ["inline"] * 20
    finally:
        pipeline.close()


def test_auto_counts_waiting_not_computing(clocks):
    class Compute(_Where):
        def run(self, message, context):
            _Where.threads.append(threading.current_thread().name)
            clocks.compute(0.03)  # 30 ms of CPU, no waiting
            return [self.symbol("TEST_WHERE")]

    pipeline = _auto(Compute.from_config(CONFIG))
    try:
        assert set(_threads_of(pipeline, 10, 0.0)) == {"inline"}
    finally:
        pipeline.close()


def test_parallel_true_always_uses_the_pool_and_false_never(clocks):
    for parallel, where in ((True, {"pool"}), (False, {"inline"})):
        pipeline = Pipeline([_Where.from_config(CONFIG)], budget=2.0, parallel=parallel)
        try:
            assert set(_threads_of(pipeline, 5, 0.0)) == where
        finally:
            pipeline.close()


def test_auto_keeps_slow_network_checks_inline_while_the_cores_are_busy(clocks):
    """Waits on a saturated machine are clamd and the resolver queueing for
    a core: threads would only add CPU."""

    pipeline = _auto(_Where.from_config(CONFIG), idle=0.0)
    cores = pipeline.concurrency._idle
    try:
        assert set(_threads_of(pipeline, 10, 0.03)) == {"inline"}
        cores.idle = 0.5
        assert _threads_of(pipeline, 10, 0.03)[-5:] == ["pool"] * 5
        cores.idle = 0.05  # busy again: the next probe brings them back
        assert _threads_of(pipeline, 40, 0.03)[-10:] == ["inline"] * 10
    finally:
        pipeline.close()


def test_idle_share_reads_the_machines_cores():
    from gateway.cpu import IdleShare, cpu_times

    idle, total = cpu_times()
    assert 0 < idle < total
    gauge = IdleShare(window=0.0)
    deadline = time.monotonic() + 0.3
    while time.monotonic() < deadline:
        pass  # one core busy
    assert 0.0 <= gauge.share() < 1.0  # measured: this core was not idle


def test_auto_sends_only_the_network_checks_that_wait_to_the_pool(clocks):
    """clamd's scan waits a few milliseconds, a cached DNS answer almost
    nothing: only the scan is worth a thread."""
    seen: dict[str, list[str]] = {"scan": [], "cached": []}

    def waiting(check_name: str, seconds: float) -> type[Check]:
        class Waiting(Check):
            name = check_name
            symbols = {f"TEST_{check_name.upper()}": "ran"}
            io_bound = True

            def run(self, message, context):
                seen[check_name].append(threading.current_thread().name)
                clocks.wait(seconds)
                return [self.symbol(f"TEST_{check_name.upper()}")]

        return Waiting

    pipeline = _auto(waiting("scan", 0.004).from_config(CONFIG),
                     waiting("cached", 0.0).from_config(CONFIG))
    try:
        for _ in range(40):
            pipeline.run(Message.from_bytes(b"Subject: x\r\n\r\nbody\r\n"))
    finally:
        pipeline.close()
    scan = ["pool" if n.startswith("check") else "inline" for n in seen["scan"]]
    assert scan[0] == "inline" and scan[-10:].count("pool") >= 9
    assert all(not n.startswith("check") for n in seen["cached"])


def test_only_a_measured_network_check_reads_the_threads_cpu_clock(clocks, monkeypatch):
    """The wait of a network check run inline is its wall time less its
    CPU time (parallel = "auto" decides on it); other checks, and a
    pipeline that does not decide (parallel = false), do not read the
    thread's CPU clock, a system call each time."""
    import gateway.pipeline as pipeline_module

    readings = []
    real = time.thread_time

    class Clock:
        def __getattr__(self, name):
            return getattr(time, name)

        @staticmethod
        def thread_time():
            readings.append(1)
            return real()

    class Local(Check):
        name = "local"
        symbols = {"TEST_LOCAL": "ran"}

        def run(self, message, context):
            return [self.symbol("TEST_LOCAL")]

    monkeypatch.setattr(pipeline_module, "time", Clock())
    for parallel, expected in (("auto", 2), (False, 0)):
        readings.clear()
        pipeline = Pipeline([Local.from_config(CONFIG), _Where.from_config(CONFIG)], budget=2.0,
                            parallel=parallel)
        try:
            _Where.seconds = 0.0
            result = pipeline.run(Message.from_bytes(b"Subject: x\r\n\r\nbody\r\n"))
        finally:
            pipeline.close()
        assert [s.name for s in result.symbols] == ["TEST_LOCAL", "TEST_WHERE"]
        assert len(readings) == expected


def _recording_copies(ran: list[str]) -> list[Check]:
    """Checks named, ordered and depending on each other as the built-in
    ones, each noting that it ran and which facts it was given."""
    checks = []
    for name in BUILTIN:
        real = resolve_check(name)

        class Recording(Check):
            symbols = {"TEST_RAN": "ran"}
            requires, wants, io_bound = real.requires, real.wants, real.io_bound

            def run(self, message, context):
                ran.append(f"{self.name}<{','.join(sorted(context.facts))}")
                return Report(symbols=(self.symbol("TEST_RAN", self.name),),
                              facts={"name": self.name})

        Recording.name = name
        checks.append(Recording.from_config(CONFIG))
    return checks


@pytest.mark.parametrize("budget", [10.0, 0.0])
def test_checks_run_in_the_order_and_with_the_facts_of_the_per_message_scheduling(budget):
    """With nothing for the pool, the checks run in the order found once
    (Pipeline.inline_order): the order, facts and results the scheduling
    of each message gives (here made to schedule with a pool that gets
    nothing), a spent budget included."""
    results, orders = [], []
    for known_order in (True, False):
        ran: list[str] = []
        pipeline = Pipeline(_recording_copies(ran), budget=budget, parallel=False)
        if not known_order:
            pipeline.inline_order = ()  # as every message was scheduled before
        try:
            result = pipeline.run(Message.from_bytes(b"Subject: x\r\n\r\nbody\r\n"))
        finally:
            pipeline.close()
        results.append(([(s.name, s.evidence) for s in result.symbols],
                        [(r.name, r.status, r.error) for r in result.runs], result.facts))
        orders.append(ran)
    assert orders[0] == orders[1] and results[0] == results[1]
    if budget:
        assert orders[0][-4:] == ["dmarc<arc,dkim,spf", "identity<dkim,spf",
                                  "fuzzy<dmarc,identity", "links<dmarc"]
        assert len(orders[0]) == len(BUILTIN)
    else:
        assert orders[0] == [] and {status for _n, status, _e in results[0][1]} == {"timeout"}

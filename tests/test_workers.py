"""The worker pool: same verdicts as in-process, a hard deadline that stops
checks stuck in C code, crashes answered 4xx, and slow messages that do not
hold up the rest."""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from gateway.config import Config, PipelineSection
from gateway.decider import Decider
from gateway.evaluator import LocalEvaluator
from gateway.lanes import ALONE_AFTER
from gateway.message import Envelope, RawContent
from gateway.schema import ConfigError
from gateway.workers import (
    DEMAND_WINDOW,
    GROW_AFTER,
    NoWorkerFree,
    ResultLog,
    WorkerFailed,
    WorkerPool,
    _cpu_demand,
)
from tests.helpers import FIXTURES, fixture_message, wait_until

PLAIN = (b"From: Alice <alice@example.org>\r\nTo: bob@example.net\r\nSubject: hello\r\n"
         b"Date: Tue, 24 Nov 2026 09:00:00 +0000\r\nMessage-ID: <1@example.org>\r\n\r\n")
ENVELOPE = Envelope(mail_from="alice@example.org", rcpt_to=("bob@example.net",),
                    queue_id="Q1")


def config(*checks: str, **pipeline) -> Config:
    settings = {"workers": 1, "max_workers": 3, "budget": 1.0, "grace": 0.5, **pipeline}
    return Config(pipeline=PipelineSection(checks=list(checks), **settings))


@pytest.fixture
def pool_of(request):
    pools: list[WorkerPool] = []

    def make(cfg: Config, **readings) -> WorkerPool:
        pool = WorkerPool(cfg, **readings)
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        pool.close()


def body(text: str) -> RawContent:
    return RawContent(data=PLAIN + text.encode() + b"\r\n")


def names(verdict) -> list[str]:
    return [s.name for s in verdict.symbols]


@pytest.mark.slow
def test_workers_give_the_verdict_the_milter_process_gives(pool_of):
    cfg = config("limits", "headers", "size", "lists", "bayes")
    local = LocalEvaluator(cfg)
    try:
        spam = next((FIXTURES / "corpus" / "spam").iterdir()).read_bytes()
        for data in (fixture_message("ham_plain.eml"), fixture_message("missing_headers.eml"),
                     spam):
            raw = RawContent(data=data)
            expected = local.evaluate(ENVELOPE, raw)
            got = pool_of(cfg).evaluate(ENVELOPE, raw)
            assert got.action == expected.action
            assert got.score == expected.score
            assert got.symbols == expected.symbols
            # The classifier's float sums may differ in the last bit between
            # processes (vectorised numpy paths depend on memory alignment).
            assert got.facts.keys() == expected.facts.keys()
            for check, facts in expected.facts.items():
                for key, value in facts.items():
                    if isinstance(value, float):
                        assert got.facts[check][key] == pytest.approx(value, rel=1e-9)
                    else:
                        assert got.facts[check][key] == value
    finally:
        local.close()


@pytest.mark.slow
def test_a_check_stuck_in_c_code_is_stopped_and_the_message_decided(pool_of):
    pool = pool_of(config("tests.plugins:MarkerCheck", "tests.plugins:StuckCheck",
                          "headers"))
    verdict = pool.evaluate(ENVELOPE, body("TRIGGER-MARKER TRIGGER-STUCK"))
    got = names(verdict)
    # The check that finished before is kept; the stuck one and the one after
    # it did not finish.
    assert "TEST_MARKER" in got
    assert {"STUCK_ERROR", "HEADERS_ERROR", "BUDGET_EXCEEDED"} <= set(got)
    assert set(verdict.failed_checks) == {"stuck", "headers"}
    budget = next(s for s in verdict.symbols if s.name == "BUDGET_EXCEEDED")
    assert "stuck, headers" in budget.evidence
    # A new worker takes the next message.
    after = pool.evaluate(ENVELOPE, body("nothing special"))
    assert "TEST_NOT_STUCK" in names(after)
    assert after.failed_checks == ()


def test_a_worker_that_dies_makes_the_message_a_temporary_failure(pool_of):
    pool = pool_of(config("tests.plugins:CrashCheck", "headers"))
    with pytest.raises(WorkerFailed, match=r"died \(exit code 3\) while checking message Q1"):
        pool.evaluate(ENVELOPE, body("TRIGGER-CRASH"))
    assert pool.evaluate(ENVELOPE, body("fine")).failed_checks == ()


@pytest.mark.slow
def test_slow_messages_do_not_hold_up_the_others(pool_of, tmp_path: Path):
    pool = pool_of(config("tests.plugins:GateCheck", budget=30.0, max_workers=4),
                   cores=Idle(1.0))  # the machine's cores have time: more workers help
    gate = tmp_path / "open"
    with ThreadPoolExecutor(4) as threads:
        slow = [threads.submit(pool.evaluate, ENVELOPE, body(f"WAIT-FOR: {gate}"))
                for _ in range(2)]
        # With one worker kept warm and both busy, the pool grows for this one.
        quick = pool.evaluate(ENVELOPE, body("no waiting"))
        assert quick.failed_checks == ()
        assert not any(f.done() for f in slow)
        gate.touch()
        assert all("TEST_GATE_OPENED" in names(f.result(timeout=30)) for f in slow)


def test_many_messages_at_once_all_get_a_verdict(pool_of):
    pool = pool_of(config("limits", "headers", workers=2, max_workers=2))
    barrier = threading.Barrier(8)

    def one(index: int):
        barrier.wait()
        return pool.evaluate(ENVELOPE, body(f"message {index}"))

    with ThreadPoolExecutor(8) as threads:
        verdicts = list(threads.map(one, range(8)))
    assert all(v.failed_checks == () for v in verdicts)


class ManualClock:
    """The pool's clock, moved on by the test alone: no rule of the pool
    that counts seconds fires because the machine is slow."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Idle:
    """The machine's idle share, as the test says."""

    def __init__(self, share: float):
        self.idle = share

    def share(self) -> float:
        return self.idle


class Demand:
    """The workers' seconds run or runnable, as the test says: a share of
    the time on the pool's clock; counts how often the pool read it."""

    def __init__(self, clock: ManualClock, running: float):
        self.clock, self.running, self.readings = clock, running, 0

    def __call__(self, pid: int) -> float:
        self.readings += 1
        return self.clock.now * self.running


def held_and_waiting(pool_of, tmp_path: Path, running: float, idle: float):
    """A pool of one worker (up to 4) whose clock and readings the test
    sets; one message holds the worker, a second waits, and the clock
    moves on past QUEUE_WAIT and two readings of the workers' demand (not
    as far as GROW_AFTER). Returns the pool, the gate, both futures and
    the readings."""
    clock = ManualClock()
    demand = Demand(clock, running)
    pool = pool_of(config("tests.plugins:GateCheck", workers=1, max_workers=4, budget=30.0),
                   clock=clock, cores=Idle(idle), demand=demand)
    gate = tmp_path / "open"
    threads = ThreadPoolExecutor(2)
    first = threads.submit(pool.evaluate, ENVELOPE, body(f"WAIT-FOR: {gate}"))
    wait_until(lambda: not pool._idle and not pool._queue)
    second = threads.submit(pool.evaluate, ENVELOPE, body("waits for a worker"))
    wait_until(lambda: len(pool._queue) == 1)
    clock.advance(0.1)  # past QUEUE_WAIT: the first reading
    wait_until(lambda: demand.readings >= 1)
    clock.advance(DEMAND_WINDOW + 0.05)  # the second: a share over the window
    wait_until(lambda: demand.readings >= 2)
    assert clock.now - 1000.0 < GROW_AFTER  # the rule for slow messages stays out of it
    return pool, gate, first, second, threads


def test_the_pool_grows_while_messages_queue_for_workers_waiting_on_the_network(
        pool_of, tmp_path: Path):
    pool, gate, first, second, threads = held_and_waiting(pool_of, tmp_path, running=0.0,
                                                          idle=1.0)
    with threads:
        # A second worker starts and takes the waiting message.
        assert second.result(timeout=60).failed_checks == ()
        assert not first.done()
        assert len(pool.worker_pids()) == 2
        gate.touch()
        assert "TEST_GATE_OPENED" in names(first.result(timeout=30))


@pytest.mark.parametrize("running, idle", [(1.0, 1.0), (0.0, 0.1)],
                         ids=["the-workers-compute", "the-cores-are-busy"])
def test_the_pool_does_not_grow_when_more_processes_would_not_check_faster(
        pool_of, tmp_path: Path, running: float, idle: float):
    """Workers that run (or wait for a core) all the time, or a machine
    without idle cores: more processes than cores would not check mail
    any faster."""
    pool, gate, first, second, threads = held_and_waiting(pool_of, tmp_path, running, idle)
    with threads:
        with pool._lock:  # the waiting message decided on its second reading
            assert not pool._starting and len(pool._workers) == 1
        assert not second.done()
        gate.touch()
        assert "TEST_GATE_OPENED" in names(first.result(timeout=30))
        assert second.result(timeout=30).failed_checks == ()
    assert len(pool.worker_pids()) == 1


def test_slow_messages_on_busy_cores_do_not_grow_the_pool(pool_of, tmp_path: Path):
    """Every worker busy with one message past GROW_AFTER, but the machine's
    cores are busy too: the messages are slow for want of CPU, and more
    processes would not give them any. The waiting message waits."""
    pool, gate, first, second, threads = held_and_waiting(pool_of, tmp_path, running=0.0,
                                                          idle=0.1)
    clock = pool._clock  # held_and_waiting's ManualClock
    with threads:
        clock.advance(GROW_AFTER + DEMAND_WINDOW)
        wait_until(lambda: clock.now - pool._demand_at < DEMAND_WINDOW,
                   what="a reading after the workers turned slow")
        with pool._lock:
            assert not pool._starting and len(pool._workers) == 1
        gate.touch()
        assert "TEST_GATE_OPENED" in names(first.result(timeout=30))
        assert second.result(timeout=30).failed_checks == ()
    assert len(pool.worker_pids()) == 1


def test_the_demand_reading_counts_what_a_process_ran():
    assert _cpu_demand(os.getpid()) > 0
    assert _cpu_demand(2**22 + 1) == -1.0  # no such process


def test_messages_get_a_worker_in_the_order_they_came(pool_of, tmp_path: Path):
    """A freed worker goes to the message that waited longest, not to one
    that arrived since (which would stretch the tail under load)."""
    pool = pool_of(config("tests.plugins:GateCheck", budget=30.0, workers=1, max_workers=1))
    first_gate, second_gate = tmp_path / "first", tmp_path / "second"
    with ThreadPoolExecutor(3) as threads:
        busy = threads.submit(pool.evaluate, ENVELOPE, body(f"WAIT-FOR: {first_gate}"))
        wait_until(lambda: pool._idle == [] and not pool._queue)
        first = threads.submit(pool.evaluate, ENVELOPE, body(f"WAIT-FOR: {second_gate}"))
        wait_until(lambda: len(pool._queue) == 1)
        later = threads.submit(pool.evaluate, ENVELOPE, body("no waiting"))
        wait_until(lambda: len(pool._queue) == 2)
        first_gate.touch()
        assert "TEST_GATE_OPENED" in names(busy.result(timeout=30))
        # The worker is the first waiter's (blocked on its gate), not the later one's.
        wait_until(lambda: len(pool._queue) == 1)
        time.sleep(0.2)
        assert not later.done() and not first.done()
        second_gate.touch()
        assert "TEST_GATE_OPENED" in names(first.result(timeout=30))
        assert later.result(timeout=30).failed_checks == ()


def test_a_broken_check_stops_start_up_with_its_problem():
    with pytest.raises(ConfigError, match="unknown check 'nope'"):
        WorkerPool(config("headers", "nope"))


def test_large_messages_leave_a_lane_for_ordinary_mail(pool_of, tmp_path: Path):
    pool = pool_of(config("tests.plugins:GateCheck", budget=30.0, workers=2, max_workers=2,
                          heavy_message_bytes=1000))
    gate = tmp_path / "open"
    large = body(f"WAIT-FOR: {gate}\r\n" + "x" * 2000)
    with ThreadPoolExecutor(4) as threads:
        held = [threads.submit(pool.evaluate, ENVELOPE, large) for _ in range(3)]
        # Two workers, three large messages waiting on the gate: one worker is
        # theirs, the other stays free for small mail.
        quick = pool.evaluate(ENVELOPE, body("small and quick"))
        assert quick.failed_checks == ()
        assert not any(f.done() for f in held)
        gate.touch()
        assert all("TEST_GATE_OPENED" in names(f.result(timeout=30)) for f in held)


ATTACKER = Envelope(mail_from="eve@forwarder.test", rcpt_to=("bob@example.net",),
                    client_ip="203.0.113.66", queue_id="A1")
OTHER = Envelope(mail_from="alice@example.org", rcpt_to=("bob@example.net",),
                 client_ip="198.51.100.7", queue_id="L1")


def lanes_config(**pipeline) -> Config:
    return config("tests.plugins:SpinCheck", "tests.plugins:HoldCheck", budget=30.0,
                  heavy_message_bytes=1000, heavy_cpu_seconds=0.2, **pipeline)


def held(folder: Path, padding: int = 0, spin: float = 0.0) -> RawContent:
    """A message that holds its worker until ``folder/open`` exists (after
    ``spin`` seconds of CPU)."""
    folder.mkdir(exist_ok=True)
    return body(f"SPIN-CPU: {spin}\r\nHOLD: {folder}\r\n" + "x" * padding)


def running(folder: Path) -> int:
    return len(list(folder.glob("running.*")))


def make_costly(pool: WorkerPool) -> None:
    """Messages from the attacker that cost 0.3 s of CPU each, until one ran
    in a worker that had checked a message before (a worker's first message
    is not judged)."""
    for _ in range(len(pool.worker_pids()) + 1):
        assert "TEST_SPUN" in names(pool.evaluate(ATTACKER, body("SPIN-CPU: 0.3")))
        if ATTACKER.client_ip in pool._costly:
            return
    raise AssertionError("the attacker's costly messages did not make it costly")


def warm_up(pool: WorkerPool, folder: Path) -> None:
    """One message in each worker at once, so that each has checked one."""
    count = len(pool.worker_pids())
    with ThreadPoolExecutor(count) as threads:
        warming = [threads.submit(pool.evaluate, OTHER, held(folder)) for _ in range(count)]
        wait_until(lambda: running(folder) == count)
        (folder / "open").touch()
        assert all("TEST_HELD" in names(f.result(timeout=60)) for f in warming)


def test_a_workers_first_message_is_not_judged_by_its_cpu(pool_of):
    """It also pays for what the checks load on first use."""
    pool = pool_of(lanes_config(workers=1, max_workers=1))
    pool.evaluate(ATTACKER, body("SPIN-CPU: 0.3"))
    assert ATTACKER.client_ip not in pool._costly
    pool.evaluate(ATTACKER, body("SPIN-CPU: 0.3"))
    assert ATTACKER.client_ip in pool._costly


def test_a_costly_client_cannot_make_large_mail_from_others_wait(pool_of, tmp_path: Path):
    """Two workers; a client whose message cost 0.3 s of CPU (over
    heavy_cpu_seconds) sends three more large ones that each hold a worker.
    It gets one worker; the other takes a 300 KiB message from another
    client at once, and small mail after it."""
    pool = pool_of(lanes_config(workers=2, max_workers=2))
    wait_until(lambda: len(pool.worker_pids()) == 2)
    make_costly(pool)
    attack = tmp_path / "attack"
    with ThreadPoolExecutor(5) as threads:
        crafted = [threads.submit(pool.evaluate, ATTACKER, held(attack, 2000)) for _ in range(3)]
        wait_until(lambda: running(attack) == 1 and len(pool._queue) == 2)
        large = threads.submit(pool.evaluate, OTHER, body("y" * 300 * 1024))
        # (held messages let go by themselves after 60 s)
        assert large.result(timeout=30).failed_checks == ()
        assert pool.evaluate(OTHER, body("small")).failed_checks == ()
        assert running(attack) == 1 and not any(f.done() for f in crafted)
        (attack / "open").touch()
        assert all("TEST_HELD" in names(f.result(timeout=60)) for f in crafted)


def test_costly_mail_gets_a_freed_worker_after_other_mail(pool_of, tmp_path: Path):
    """One worker, held by a message from another client; a costly
    client's message comes, then another client's: the freed worker goes
    to the one that came later."""
    pool = pool_of(lanes_config(workers=1, max_workers=1))
    make_costly(pool)
    first, later = tmp_path / "first", tmp_path / "later"
    with ThreadPoolExecutor(3) as threads:
        busy = threads.submit(pool.evaluate, OTHER, held(first))
        wait_until(lambda: running(first) == 1)
        costly = threads.submit(pool.evaluate, ATTACKER, body("crafted"))
        wait_until(lambda: len(pool._queue) == 1)
        other = threads.submit(pool.evaluate, OTHER, held(later))
        wait_until(lambda: len(pool._queue) == 2)
        (first / "open").touch()
        assert "TEST_HELD" in names(busy.result(timeout=60))
        wait_until(lambda: running(later) == 1, what="the later message running")
        assert not costly.done()
        (later / "open").touch()
        assert "TEST_HELD" in names(other.result(timeout=60))
        assert costly.result(timeout=60).failed_checks == ()


def test_mail_that_came_before_its_client_was_known_costly_waits_behind_other_mail(
        pool_of, tmp_path: Path):
    """Two workers: the attacker's costly message and another client's
    both held; the attacker's next message comes, then another client's.
    When the costly one ends, its client is known, and the freed worker
    goes to the other client's message, though the attacker's came first."""
    pool = pool_of(lanes_config(workers=2, max_workers=2))
    wait_until(lambda: len(pool.worker_pids()) == 2)
    warm_up(pool, tmp_path / "warm")
    costly, other, later = tmp_path / "costly", tmp_path / "other", tmp_path / "later"
    with ThreadPoolExecutor(4) as threads:
        spinning = threads.submit(pool.evaluate, ATTACKER, held(costly, spin=0.3))
        held_other = threads.submit(pool.evaluate, OTHER, held(other))
        wait_until(lambda: running(costly) == 1 and running(other) == 1)
        first = threads.submit(pool.evaluate, ATTACKER, body("came first"))
        wait_until(lambda: len(pool._queue) == 1)
        second = threads.submit(pool.evaluate, OTHER, held(later))
        wait_until(lambda: len(pool._queue) == 2)
        (costly / "open").touch()
        assert "TEST_SPUN" in names(spinning.result(timeout=60))
        wait_until(lambda: running(later) == 1, what="the other client's message running")
        assert not first.done()
        (other / "open").touch()
        (later / "open").touch()
        assert "TEST_HELD" in names(held_other.result(timeout=60))
        assert "TEST_HELD" in names(second.result(timeout=60))
        assert first.result(timeout=60).failed_checks == ()


def test_a_client_is_costly_as_soon_as_its_message_in_a_worker_has_used_too_much_cpu(
        pool_of, tmp_path: Path):
    """One worker kept (up to two), the pool's clock and CPU reading the
    test's: the attacker's message holds the worker, its next one waits,
    then another client's. Once the reading says the held message has used
    more than heavy_cpu_seconds, the attacker is costly while that message
    still runs: the pool starts a worker, and it goes to the other client."""
    clock, used = ManualClock(), {"seconds": 0.0}
    pool = pool_of(lanes_config(workers=1, max_workers=2), clock=clock,
                   cpu=lambda pid: used["seconds"])
    pool.evaluate(ATTACKER, body("a worker's first message is not judged"))
    attack = tmp_path / "attack"
    with ThreadPoolExecutor(3) as threads:
        holding = threads.submit(pool.evaluate, ATTACKER, held(attack))
        wait_until(lambda: running(attack) == 1)
        queued = threads.submit(pool.evaluate, ATTACKER, body("crafted, waits"))
        other = threads.submit(pool.evaluate, OTHER, body("small"))
        wait_until(lambda: len(pool._queue) == 2)
        used["seconds"] = 1e6  # far over what the worker had used when it started
        clock.advance(DEMAND_WINDOW)
        assert other.result(timeout=60).failed_checks == ()
        assert ATTACKER.client_ip in pool._costly
        assert not queued.done() and len(pool.worker_pids()) == 2
        (attack / "open").touch()
        assert "TEST_HELD" in names(holding.result(timeout=60))
        assert queued.result(timeout=60).failed_checks == ()


def test_a_message_costs_what_its_own_threads_used_not_the_workers_background_work(
        pool_of):
    """heavy_cpu_seconds 0.2: a message during which a background thread of
    the worker computes for 0.4 s is not costly; one whose network check
    computes for 0.3 s on the pipeline's thread is (parallel checks)."""
    pool = pool_of(config("tests.plugins:BackgroundSpinCheck", "tests.plugins:NetworkSpinCheck",
                          budget=30.0, heavy_cpu_seconds=0.2, parallel="true",
                          max_workers=1))
    pool.evaluate(OTHER, body("a worker's first message is not judged"))
    verdict = pool.evaluate(ATTACKER, body("BACKGROUND-CPU: 0.4"))
    assert "TEST_BACKGROUND_SPUN" in names(verdict)
    assert ATTACKER.client_ip not in pool._costly
    verdict = pool.evaluate(ATTACKER, body("NETWORK-SPIN-CPU: 0.3"))
    (spun,) = [s for s in verdict.symbols if s.name == "TEST_NETWORK_SPUN"]
    assert spun.evidence.startswith("check_")  # on the pipeline's thread, not the worker's
    assert ATTACKER.client_ip in pool._costly


def test_a_workers_background_work_between_messages_makes_no_running_message_costly(
        pool_of, tmp_path: Path):
    """heavy_cpu_seconds 0.2, the pool's clock the test's: a thread of the
    worker computes for 0.4 s after a message is answered; the attacker's
    next message holds the worker while another waits. Read while it runs,
    the held message has used nothing of its own: its client is not costly."""
    clock = ManualClock()
    pool = pool_of(config("tests.plugins:BackgroundAfterCheck", "tests.plugins:HoldCheck",
                          budget=30.0, heavy_cpu_seconds=0.2, max_workers=1), clock=clock)
    pool.evaluate(OTHER, body("a worker's first message is not judged"))
    done, holding = tmp_path / "background-done", tmp_path / "holding"
    pool.evaluate(OTHER, body(f"BACKGROUND-AFTER: 0.4 {done}"))
    wait_until(done.exists, what="the background thread's work")
    with ThreadPoolExecutor(2) as threads:
        held_message = threads.submit(pool.evaluate, ATTACKER, held(holding))
        wait_until(lambda: running(holding) == 1)
        waiting = threads.submit(pool.evaluate, OTHER, body("waits"))
        wait_until(lambda: len(pool._queue) == 1)
        judged = pool._judged_at
        clock.advance(DEMAND_WINDOW)
        wait_until(lambda: pool._judged_at != judged, what="the running message judged")
        assert ATTACKER.client_ip not in pool._costly
        (holding / "open").touch()
        assert "TEST_HELD" in names(held_message.result(timeout=60))
        assert waiting.result(timeout=60).failed_checks == ()


def costly_and_alone(pool_of, max_workers: int, quiet_for: float = ALONE_AFTER + 1,
                     ) -> WorkerPool:
    """Two workers kept; the attacker's mail costly, and no other mail for
    ``quiet_for`` seconds since (by default longer than ALONE_AFTER)."""
    clock = ManualClock()
    pool = pool_of(lanes_config(workers=2, max_workers=max_workers), clock=clock)
    wait_until(lambda: len(pool.worker_pids()) == 2)
    make_costly(pool)
    clock.advance(quiet_for)
    return pool


def test_a_costly_client_alone_gets_every_worker_until_other_mail_comes(
        pool_of, tmp_path: Path):
    """Two workers kept (up to three: room for the spare); after a client's
    mail is costly, no other mail for longer than ALONE_AFTER (a site's one
    relay after one heavy message): its next two messages run at once. Once
    another client's message has come, the costly lane is held to all
    workers but one again."""
    pool = costly_and_alone(pool_of, max_workers=3)
    alone, later = tmp_path / "alone", tmp_path / "later"
    with ThreadPoolExecutor(4) as threads:
        both = [threads.submit(pool.evaluate, ATTACKER, held(alone)) for _ in range(2)]
        wait_until(lambda: running(alone) == 2, what="both costly messages running")
        (alone / "open").touch()
        assert all("TEST_HELD" in names(f.result(timeout=60)) for f in both)
        assert pool.evaluate(OTHER, body("another client")).failed_checks == ()
        again = [threads.submit(pool.evaluate, ATTACKER, held(later)) for _ in range(2)]
        wait_until(lambda: running(later) == 1 and len(pool._queue) == 1)
        (later / "open").touch()
        assert all("TEST_HELD" in names(f.result(timeout=60)) for f in again)


def test_a_client_whose_own_mail_made_it_costly_is_alone_at_once(pool_of, tmp_path: Path):
    """Two workers kept (up to three); a client's mail is made costly, with
    no mail from any other client: its own mail from before it was costly
    holds nothing back, and its next two messages run at once, without the
    ALONE_AFTER wait (the relay of a site whose mail all comes through it)."""
    pool = costly_and_alone(pool_of, max_workers=3, quiet_for=0.0)
    alone = tmp_path / "alone"
    with ThreadPoolExecutor(3) as threads:
        both = [threads.submit(pool.evaluate, ATTACKER, held(alone)) for _ in range(2)]
        wait_until(lambda: running(alone) == 2, what="both costly messages running")
        (alone / "open").touch()
        assert all("TEST_HELD" in names(f.result(timeout=60)) for f in both)


def test_without_room_for_a_spare_costly_mail_alone_keeps_a_worker_free(
        pool_of, tmp_path: Path):
    """Two workers and no more: no spare can start for other mail, so the
    costly lane stays at all workers but one even with no other mail about."""
    pool = costly_and_alone(pool_of, max_workers=2)
    alone = tmp_path / "alone"
    with ThreadPoolExecutor(3) as threads:
        both = [threads.submit(pool.evaluate, ATTACKER, held(alone)) for _ in range(2)]
        wait_until(lambda: running(alone) == 1 and len(pool._queue) == 1)
        assert pool.evaluate(OTHER, body("finds the free worker")).failed_checks == ()
        (alone / "open").touch()
        assert all("TEST_HELD" in names(f.result(timeout=60)) for f in both)


def test_no_worker_is_started_for_a_message_whose_lane_is_full(pool_of, tmp_path: Path):
    """Costly mail holds its lane's one worker and the spare waits for
    other mail; the costly client's next message waits, on a machine with
    idle cores and workers that wait on the network: a new worker would
    sit idle (its lane is full), and the idle spare does not count as a
    worker waiting on the network."""
    clock = ManualClock()
    demand = Demand(clock, running=0.0)
    pool = pool_of(lanes_config(workers=1, max_workers=4), clock=clock, cores=Idle(1.0),
                   demand=demand)
    make_costly(pool)
    attack = tmp_path / "attack"
    with ThreadPoolExecutor(3) as threads:
        holding = threads.submit(pool.evaluate, ATTACKER, held(attack))
        wait_until(lambda: running(attack) == 1)
        wait_until(lambda: len(pool._idle) == 1, what="the spare, idle")
        waiting = threads.submit(pool.evaluate, ATTACKER, held(attack))
        wait_until(lambda: len(pool._queue) == 1)
        for _ in range(3):  # past QUEUE_WAIT, and readings of the demand
            clock.advance(DEMAND_WINDOW + 0.05)
            time.sleep(0.2)  # the waiting message's loop looks every QUEUE_WAIT
        with pool._lock:
            assert not pool._starting and len(pool._workers) == 2
        (attack / "open").touch()
        assert "TEST_HELD" in names(holding.result(timeout=60))
        assert "TEST_HELD" in names(waiting.result(timeout=60))


def test_the_pool_keeps_a_worker_ready_for_other_mail_while_costly_mail_holds_one(
        pool_of, tmp_path: Path):
    """One worker kept, held by a costly client's message: the pool starts a
    second before other mail comes, which the costly client's next message
    may not take (its lane has all workers but one: one), and another
    client's message does."""
    pool = pool_of(lanes_config(workers=1, max_workers=2), clock=ManualClock())
    make_costly(pool)
    attack = tmp_path / "attack"
    with ThreadPoolExecutor(3) as threads:
        holding = threads.submit(pool.evaluate, ATTACKER, held(attack))
        wait_until(lambda: running(attack) == 1)
        wait_until(lambda: len(pool._idle) == 1, what="a second worker, idle")
        queued = threads.submit(pool.evaluate, ATTACKER, body("crafted, waits"))
        wait_until(lambda: len(pool._queue) == 1)
        assert len(pool._idle) == 1
        assert pool.evaluate(OTHER, body("small")).failed_checks == ()
        assert len(pool.worker_pids()) == 2 and not queued.done()
        (attack / "open").touch()
        assert "TEST_HELD" in names(holding.result(timeout=60))
        assert queued.result(timeout=60).failed_checks == ()


def test_a_message_stopped_at_the_deadline_makes_its_client_costly(pool_of, tmp_path: Path):
    pool = pool_of(config("tests.plugins:StuckCheck", "tests.plugins:HoldCheck", workers=1,
                          max_workers=1, budget=0.5, grace=0.5))
    verdict = pool.evaluate(ATTACKER, body("TRIGGER-STUCK"))
    assert "BUDGET_EXCEEDED" in names(verdict)
    assert "203.0.113.66" in pool._costly and "198.51.100.7" not in pool._costly


@pytest.mark.slow
def test_a_message_that_finds_no_worker_in_time_is_a_temporary_failure(pool_of, tmp_path):
    """The pool says so; the decider answers 451 4.3.2 itself, so that the
    milter tempfails it even with [milter] on_error = "accept": a flood
    that keeps the workers busy never gets mail accepted unchecked."""
    clock = ManualClock()
    pool = pool_of(config("tests.plugins:GateCheck", budget=30.0, workers=1, max_workers=1),
                   clock=clock)
    decider = Decider(pool, keeper=None)
    gate = tmp_path / "open"
    with ThreadPoolExecutor(3) as threads:
        busy = threads.submit(pool.evaluate, ENVELOPE, body(f"WAIT-FOR: {gate}"))
        wait_until(lambda: not pool._idle and not pool._queue)
        waiting = threads.submit(pool.evaluate, ENVELOPE, body("waits"))
        decided = threads.submit(decider.decide, ENVELOPE, body("waits too"))
        wait_until(lambda: len(pool._queue) == 2)
        clock.advance(pool.hard_limit + 0.1)  # budget + grace: 30.5 s
        with pytest.raises(NoWorkerFree, match=r"no worker process free within 30\.5s"):
            waiting.result(timeout=30)
        decision = decided.result(timeout=30)
        assert decision.outcome == "tempfail"
        assert str(decision.reply) == "451 4.3.2 Too busy to check this message now, try " \
                                      "again later"
        assert decision.verdict.reason.startswith("not checked: no worker process free")
        gate.touch()
        assert "TEST_GATE_OPENED" in names(busy.result(timeout=30))
    decider.close()


def test_the_result_log_keeps_whole_results_and_drops_one_cut_short():
    """What a killed worker had finished is read back; a frame the kill cut
    in half, and the previous message's results, are not."""
    log = ResultLog()
    try:
        log.append(("old", "message"))
        log.restart()
        log.append(("spf", "ok", 1.5))
        log.append(("dkim", {"facts": [1, 2, 3]}))
        whole = log.read()
        size = os.fstat(log.fd).st_size
        os.pwrite(log.fd, b"\x00\x00\x10\x00partial", size)  # declares 4 KB, has 7 bytes
        assert log.read() == whole == [("spf", "ok", 1.5), ("dkim", {"facts": [1, 2, 3]})]
    finally:
        log.close()


def test_workers_take_the_model_the_fork_server_loaded(tmp_path, monkeypatch):
    """The fork server loads the model the milter names before it forks any
    worker (gateway.forkshare), so the workers share its pages; a worker
    whose configuration selects another model (a promotion since) loads
    its own."""
    from gateway import forkshare
    from gateway.checks.bayes import SHIPPED_MODEL, ModelHolder
    from gateway.config import ClassifierSection
    from gateway.workers import _model_to_share, _preload

    monkeypatch.delenv(forkshare.ENVIRONMENT, raising=False)
    monkeypatch.setattr(forkshare, "_models", {})
    monkeypatch.setattr(forkshare.gc, "freeze", lambda: None)  # not this test process
    shipped = Config(classifier=ClassifierSection(model=str(SHIPPED_MODEL)))
    assert _preload(shipped)[-1] == "gateway.forkshare"  # imported after the checks
    forkshare.share_model(_model_to_share(shipped))
    forkshare._load_shared()  # what the fork server does as it starts
    holder = ModelHolder(shipped)
    holder.stop()
    shared = forkshare.shared_model(forkshare.signature(SHIPPED_MODEL))
    assert shared is not None  # the tables are the fork server's, the bands placed here
    assert holder.model.vocabulary is shared.vocabulary and holder.model.weights is shared.weights

    promoted = tmp_path / "promoted"
    promoted.mkdir()
    for part in SHIPPED_MODEL.iterdir():
        (promoted / part.name).write_bytes(part.read_bytes())
    other = ModelHolder(Config(classifier=ClassifierSection(model=str(promoted))))
    other.stop()
    assert other.model.vocabulary is not shared.vocabulary
    assert other.model.vocabulary == shared.vocabulary
    assert _model_to_share(config("headers")) is None  # no bayes check, nothing loaded


def test_the_fork_server_builds_the_static_tables_the_workers_share(monkeypatch):
    """Before it forks, the fork server builds the public suffix lists and
    the registrable domains of the shipped brands and freemail lists
    (gateway.forkshare), which each worker otherwise builds on its own."""
    from gateway import forkshare, lookalike, mail
    from gateway.checks import links

    monkeypatch.delenv(forkshare.ENVIRONMENT, raising=False)
    monkeypatch.setattr(forkshare.gc, "freeze", lambda: None)  # not this test process
    for cache in (mail._public_suffix_list, lookalike._icann_suffixes, lookalike.registrable,
                  links.shipped_shorteners):
        cache.cache_clear()
    forkshare._load_shared()
    assert mail._public_suffix_list.cache_info().currsize == 1
    assert lookalike._icann_suffixes.cache_info().currsize == 1
    assert links.shipped_shorteners.cache_info().currsize == 1
    freemail = lookalike.load_freemail(Config().identity.freemail)
    hits = lookalike.registrable.cache_info().hits
    lookalike.load_freemail(Config().identity.freemail)  # as a worker's checks do
    assert lookalike.registrable.cache_info().hits - hits >= len(freemail)


def test_a_table_the_fork_server_cannot_build_is_left_to_the_workers(monkeypatch, caplog):
    from gateway import forkshare, lookalike
    from gateway.checks import links

    def unreadable(paths):
        raise OSError("brands.toml: permission denied")

    monkeypatch.setattr(lookalike, "load_brands", unreadable)
    links.shipped_shorteners.cache_clear()
    with caplog.at_level("DEBUG", logger="gateway.workers"):
        forkshare._warm_tables()  # no exception: the fork server starts
    assert "a table not prebuilt: OSError: brands.toml: permission denied" in caplog.text
    assert links.shipped_shorteners.cache_info().currsize == 1  # the others still built


def test_a_worker_start_cut_short_by_stopping_is_no_error(pool_of, monkeypatch, caplog):
    # `gateway run` failing at its socket stops the pool while a worker
    # starts in the background: its start fails, and that is no traceback
    # on the admin's terminal below the one line that says what is wrong.
    pool = pool_of(config("headers"))
    pool.close()

    def cut_short():
        raise WorkerFailed("a worker died while starting (still running)")

    monkeypatch.setattr(pool, "_start_worker", cut_short)
    with caplog.at_level("DEBUG", logger="gateway.workers"):
        pool._start_in_background()
    assert [r.levelname for r in caplog.records] == ["DEBUG"]
    assert "abandoned while stopping" in caplog.records[0].getMessage()


def test_held_mail_is_stored_with_the_workers_reading_of_its_header(pool_of, tmp_path,
                                                                    monkeypatch):
    """The worker sends the header fields a quarantine record lists, read from
    the parse its checks made: the milter stores held mail without parsing its
    header again, and the record is the one a parse in the milter gives."""
    from dataclasses import replace

    from sqlalchemy import select

    import gateway.mime
    from gateway.quarantine.schema import messages
    from gateway.quarantine.store import QuarantineStore
    from gateway.ruleset import Ruleset

    crafted = (b"From: =?utf-8?q?Jos=C3=A9?= <jose@example.org>\r\nTo: bob@example.net,\r\n"
               b"  carol@example.net\r\nSubject: =?iso-8859-1?q?caf=E9?= \xff menu\r\n"
               b"Message-ID: <c1@example.org>\r\nX-Other: 1\r\n\r\nhello\r\n")
    spam = next((FIXTURES / "corpus" / "spam").iterdir()).read_bytes()
    pool = pool_of(config("tests.plugins:MarkerCheck", "headers"),
                   ruleset=Ruleset(scores={"TEST_MARKER": 8.0}))
    store = QuarantineStore(f"sqlite:///{tmp_path}/q.db", node="n")
    parses = []
    real_parse = gateway.mime.parse
    monkeypatch.setattr(gateway.mime, "parse",
                        lambda *a, **k: parses.append(1) or real_parse(*a, **k))

    def row(identifier: str) -> dict:
        with store.engine.connect() as connection:
            found = connection.execute(select(messages).where(messages.c.id == identifier))
            values = dict(found.one()._mapping)
        return {k: v for k, v in values.items() if k not in ("id", "created", "updated")}

    try:
        for data in (fixture_message("ham_plain.eml"), fixture_message("missing_headers.eml"),
                     spam, crafted):
            raw = RawContent(data=data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
                             + b"TRIGGER-MARKER\r\n")
            verdict = pool.evaluate(ENVELOPE, raw)
            assert verdict.action == "quarantine" and verdict.header_fields is not None
            parses.clear()
            from_worker = store.put(ENVELOPE, raw, verdict)
            assert not parses  # the header was not parsed again
            parsed_here = store.put(ENVELOPE, raw, replace(verdict, header_fields=None))
            assert parses  # the store reads it itself when no worker sent it
            assert row(from_worker) == row(parsed_here)
        assert row(from_worker)["subject"].startswith("café ")  # decoded, as before
    finally:
        store.close()


def test_the_worker_answers_with_the_verdict_the_milter_process_would_give(pool_of,
                                                                          monkeypatch):
    """The worker judges its checks' results by the rules the pool sent it
    and answers with the verdict: the milter does not rebuild and judge them
    again (it only does for a worker it stopped), and the verdict is the
    one the milter's own judgement gives, stage symbols and recipients included."""
    from gateway.ruleset import Ruleset
    from gateway.symbols import Symbol

    cfg = config("tests.plugins:MarkerCheck", "headers", "size", "lists")
    rules = Ruleset(scores={"TEST_MARKER": 4.0, "RATELIMITED": 2.5})
    local = LocalEvaluator(cfg, rules)
    pool = pool_of(cfg, ruleset=rules)
    envelope = Envelope(mail_from="alice@example.org", rcpt_to=("bob@example.net",),
                        queue_id="Q7", stage_symbols=(Symbol("RATELIMITED", 1.0),))
    try:
        expected = [local.evaluate(envelope, body(text)) for text in ("hi", "TRIGGER-MARKER")]
        monkeypatch.setattr(pool.judge, "verdict", lambda *a: pytest.fail("judged again"))
        got = [pool.evaluate(envelope, body(text)) for text in ("hi", "TRIGGER-MARKER")]
    finally:
        local.close()
    assert [v.action for v in got] == ["accept", "quarantine"]
    for mine, theirs in zip(got, expected, strict=True):
        assert (mine.action, mine.score, mine.symbols, mine.reason, mine.reply) == \
            (theirs.action, theirs.score, theirs.symbols, theirs.reason, theirs.reply)
        assert mine.facts == theirs.facts
        assert mine.authentication_results == theirs.authentication_results


def test_a_verdict_the_worker_cannot_make_is_made_as_before_and_the_worker_lives(pool_of):
    """Judging that fails in the worker (here the Authentication-Results of
    broken facts) does not end the worker: the milter judges the results
    itself and fails as the milter always has (the decider answers it)."""
    cfg = config("tests.plugins:BrokenSpfFactsCheck", "headers")
    pool = pool_of(cfg)
    local = LocalEvaluator(cfg)
    try:
        with pytest.raises(AttributeError):
            local.evaluate(ENVELOPE, body("hi"))
    finally:
        local.close()
    before = pool.worker_pids()
    for _ in range(2):
        with pytest.raises(AttributeError):
            pool.evaluate(ENVELOPE, body("hi"))
    assert pool.worker_pids() == before

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
from gateway.evaluator import LocalEvaluator
from gateway.message import Envelope, RawContent
from gateway.schema import ConfigError
from gateway.workers import ResultLog, WorkerFailed, WorkerPool
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

    def make(cfg: Config) -> WorkerPool:
        pool = WorkerPool(cfg)
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        pool.close()


def body(text: str) -> RawContent:
    return RawContent(data=PLAIN + text.encode() + b"\r\n")


def names(verdict) -> list[str]:
    return [s.name for s in verdict.symbols]


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


def test_slow_messages_do_not_hold_up_the_others(pool_of, tmp_path: Path):
    pool = pool_of(config("tests.plugins:GateCheck", budget=30.0, max_workers=4))
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


def concurrently(pool: WorkerPool, count: int) -> list:
    with ThreadPoolExecutor(count) as threads:
        return list(threads.map(lambda i: pool.evaluate(ENVELOPE, body(f"m{i}")), range(count)))


def test_the_pool_grows_while_messages_queue_for_workers_waiting_on_the_network(pool_of):
    pool = pool_of(config("tests.plugins:LookupCheck", workers=1, max_workers=4, budget=30.0))
    verdicts = concurrently(pool, 8)
    assert all("TEST_LOOKED_UP" in names(v) for v in verdicts)
    assert len(pool.worker_pids()) > 1


def test_the_pool_does_not_grow_when_the_workers_compute(pool_of):
    """More processes than cores would not check mail any faster."""
    pool = pool_of(config("tests.plugins:ComputeCheck", workers=1, max_workers=4, budget=30.0))
    verdicts = concurrently(pool, 8)
    assert all("TEST_COMPUTED" in names(v) for v in verdicts)
    assert len(pool.worker_pids()) == 1


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


def test_a_message_that_finds_no_worker_in_time_is_a_temporary_failure(pool_of, tmp_path):
    pool = pool_of(config("tests.plugins:GateCheck", budget=30.0, workers=1, max_workers=1))
    gate = tmp_path / "open"
    with ThreadPoolExecutor(2) as threads:
        busy = threads.submit(pool.evaluate, ENVELOPE, body(f"WAIT-FOR: {gate}"))
        deadline = time.monotonic() + 10
        while not pool._workers or any(w.busy_since is None for w in pool._workers):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        pool.hard_limit = 0.5  # for messages from now on: wait half a second at most
        with pytest.raises(WorkerFailed, match=r"no worker process free within 0\.5s"):
            pool.evaluate(ENVELOPE, body("waits"))
        gate.touch()
        assert "TEST_GATE_OPENED" in names(busy.result(timeout=30))


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

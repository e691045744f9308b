"""Worker processes that run the checks, and the hard per-message deadline.

The milter process keeps the MTA-facing side (pymilter); the checks of
each message, and the policy's judgement of their results (the same rules,
sent to each worker as it starts), run in a worker process of their own,
which answers with the verdict. Two things follow:

- both cores work: parsing, the classifier and RSA run beside the milter's
  protocol work instead of behind one GIL;
- a worker waiting on DNS is not a core busy: when messages queue for the
  workers while the workers mostly wait on the network, the pool grows, like
  spamd's or amavisd's children (see ``QUEUE_WAIT``);
- a message can be stopped. Python cannot interrupt a thread stuck in C
  code (a regular expression, a decoder), but a process can be killed. A
  worker still busy ``[pipeline] budget + grace`` seconds after it got a
  message is killed and replaced; the message is decided on the checks that
  had finished, plus ``BUDGET_EXCEEDED`` and an ``<CHECK>_ERROR`` for each
  one that had not, so an attacker who finds a slow path gets a score, not
  a pass, and other mail is not held up.

A worker answers each message once, with its verdict: one wake-up of the
milter per message, not one per check (which cost a fifth of a worker's
time in system calls and thread switches), and one object to read, not
every check's result to rebuild and judge again (most of the milter's CPU
for a message's answer). So that a killed worker's finished checks still
count, it also appends each result as it comes to a scratch file it shares
with the milter (:class:`ResultLog`, an in-memory file), which the milter
reads and judges only when it stops the worker.

gateway.lanes decides which waiting message gets a free worker: messages over
``[pipeline] heavy_message_bytes``, and mail from clients whose messages
lately used more than ``heavy_cpu_seconds`` of a worker's CPU (each
worker reports what a message cost, by the clocks of the threads that
checked it (:class:`MessageCpu`); not of its first message, which also
pays for loading what the checks need), may each occupy all workers but one,
and that costly mail goes after the rest: a client looping crafted
messages cannot make other mail, large or small, wait for it. The pool
keeps ``[pipeline] workers`` processes and grows to ``max_workers`` while
every one of them has been busy with one message for half a second, so a
few slow messages cannot queue up the rest; while messages queue for
workers that mostly wait on the network; and while a worker is busy with
costly mail, by one idle worker kept ready for other mail (the extra ones
retire after a minute idle). A worker that dies
on its own (a crash in C code, the OOM killer) is replaced, and its message
is answered 4xx by the milter so the sender retries: nothing is lost.

Workers come from a fork server started with the modules the checks need,
so a replacement costs a fork and the model load, not a Python start-up;
the milter process itself never forks (pymilter runs threads).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import pickle
import signal
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from multiprocessing import reduction
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Protocol

from gateway.checks import BUILTIN
from gateway.config import Config
from gateway.cpu import SPARE_CORES, IdleShare
from gateway.forkshare import share_model
from gateway.lanes import (
    COSTLY_FOR,
    Arrivals,
    CostlyClients,
    Lane,
    client_of,
    lane_limits,
    lane_of,
    next_to_go,
)
from gateway.logs import for_message, setup_logging
from gateway.message import Envelope, Message, RawContent
from gateway.pipeline import Pipeline, assemble, check_classes
from gateway.policy import Judge
from gateway.quarantine.fields import stored_fields
from gateway.ruleset import Ruleset, load_rules
from gateway.schema import ConfigError
from gateway.symbols import Report, Symbol
from gateway.verdict import CheckRun, PipelineResult, TooBusy, Verdict

log = logging.getLogger("gateway.workers")

# Extra workers beyond [pipeline] workers retire after this long idle.
IDLE_RETIREMENT = 60.0
# The pool grows when every worker has been busy with one message for this
# long (a slow message, not just a busy moment), while the cores have time
# to spare (SPARE_CORES, below).
GROW_AFTER = 0.5
# It also grows when a message has waited this long for a worker while the
# workers spend most of their time waiting on the network (DNS, clamd), not
# running or queued for a core: then more processes check more mail (a DNS
# answer takes 20 ms, the checks 3 ms of CPU). When the CPU is what they
# wait for, more processes than cores would not check mail any faster.
QUEUE_WAIT = 0.05
IO_WAITING_SHARE = 0.5  # below this share of the time running or runnable
# ...and while the machine's cores are idle at least SPARE_CORES of the time
# (gateway.cpu): workers waiting on a clamd or a DNS server that itself
# waits for a core are not helped by more workers.
DEMAND_WINDOW = 0.25  # seconds between two readings of the workers' demand
START_TIMEOUT = 120.0  # a worker loads the model and imports the checks


class WorkerFailed(RuntimeError):
    """A worker died with a message in hand (answered as a temporary failure)."""


class NoWorkerFree(WorkerFailed, TooBusy):
    """No worker could take the message before its deadline."""


# A worker's answer: the CPU seconds the message took in it and the
# process's CPU seconds so far, then its verdict as one ResultLog frame.
_CPU_USED = struct.Struct("!dd")
# Verdicts whose message the quarantine may keep: they carry the header
# fields its record lists (gateway.quarantine.fields).
_KEPT = ("quarantine", "reject")


class ResultLog:
    """The results of a worker's message in hand, as each check finishes.

    An in-memory file (memfd) shared by the worker, which appends to it,
    and the milter, which reads it only after killing the worker. Frames are
    a 4-byte length and a pickle; one cut short by the kill is ignored. The
    worker's answer at the end of a message, its verdict, is one such frame,
    read with the same :meth:`parse`.
    """

    _FRAME = struct.Struct("!I")

    def __init__(self, fd: int | None = None):
        self.fd = os.memfd_create("gateway-worker-results", os.MFD_CLOEXEC) if fd is None else fd
        self._size = 0  # what the worker has written

    def __reduce__(self) -> tuple[Any, ...]:
        # Crosses to the worker as a duplicate of the descriptor.
        return (_rebuild_result_log, (reduction.DupFd(self.fd),))

    # -- the worker's side
    def restart(self) -> None:
        os.ftruncate(self.fd, 0)
        self._size = 0

    def append(self, item: tuple[Any, ...]) -> None:
        frame = self.frame(item)
        os.pwrite(self.fd, frame, self._size)
        self._size += len(frame)

    @classmethod
    def frame(cls, item: Any) -> bytes:
        data = pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL)
        return cls._FRAME.pack(len(data)) + data

    # -- the milter's side
    def read(self) -> list[Any]:
        """What a killed worker had finished."""
        return self.parse(os.pread(self.fd, os.fstat(self.fd).st_size, 0))

    @classmethod
    def parse(cls, data: bytes, at: int = 0) -> list[Any]:
        items, size = [], cls._FRAME.size
        while at + size <= len(data):
            (length,) = cls._FRAME.unpack_from(data, at)
            if not length or at + size + length > len(data):
                break
            items.append(pickle.loads(data[at + size:at + size + length]))
            at += size + length
        return items

    def close(self) -> None:
        # Once only: a second close could hit a descriptor reused meanwhile.
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)


def _rebuild_result_log(fd: Any) -> ResultLog:
    return ResultLog(fd.detach())


@dataclass(eq=False)
class _Turn:
    """A message waiting for a worker: woken when one is handed to it."""

    lane: Lane
    client: str | None
    ready: threading.Condition
    worker: Worker | None = None


@dataclass(eq=False)
class Worker:
    process: multiprocessing.process.BaseProcess
    conn: Connection
    results: ResultLog
    messages: int = 0
    cpu_at_start: float | None = None  # its main thread's CPU seconds as its last message ended
    idle_since: float = field(default_factory=time.monotonic)
    busy_since: float | None = None
    lane: Lane | None = None  # of the message in hand (gateway.lanes)
    client: str | None = None  # who sent it

    @property
    def pid(self) -> int:
        return self.process.pid or 0

    def stop(self, kill: bool = False, keep_results: bool = False) -> None:
        try:
            if kill:
                os.kill(self.pid, signal.SIGKILL)
            else:
                self.conn.send(None)
        except (OSError, ValueError):
            pass
        self.process.join(timeout=5.0)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(timeout=5.0)
        self.conn.close()
        if not keep_results:  # the caller reads what the worker had finished
            self.results.close()


class IdleReading(Protocol):
    def share(self) -> float: ...  # the machine's idle share (gateway.cpu.IdleShare)


class WorkerPool:
    """``ruleset``: the configuration generation's rules (gateway.service),
    sent to each worker as it starts, so that every worker, a replacement
    too, judges by what the milter judges by, whatever is on disk now;
    without one, the config's rules files are read now. ``clock``,
    ``cores`` (the machine's idle share), ``demand`` (a process's seconds
    run or runnable) and ``cpu`` (a process's CPU seconds) are the readings
    the pool decides on; tests give their own."""

    store_free = True  # the milter's side only sends bytes and applies the policy

    def __init__(self, config: Config, ruleset: Ruleset | None = None, *,
                 clock: Callable[[], float] = time.monotonic,
                 cores: IdleReading | None = None,
                 demand: Callable[[int], float] | None = None,
                 cpu: Callable[[int], float] | None = None):
        self.config = config
        settings = config.pipeline
        problems: list[str] = []
        self.checks = check_classes(config, problems)
        if problems:
            raise ConfigError(problems)
        self.ruleset = load_rules(config.policy.rules) if ruleset is None else ruleset
        self.judge = Judge(config, self.checks, self.ruleset)
        self.policy = self.judge.policy
        self.size = settings.workers
        self.max_size = max(settings.max_workers, settings.workers)
        self.hard_limit = settings.budget + settings.grace
        self.max_messages = settings.worker_max_messages
        self.heavy_bytes = settings.heavy_message_bytes
        self.heavy_cpu = settings.heavy_cpu_seconds
        # The costly and the large lane each hold at most this many workers,
        # and all kept ones while no other mail is about (gateway.lanes), if
        # the pool may start a spare for other mail beyond them.
        self.lane_limit = max(self.size - 1, 1)
        self.alone_limit = self.size if self.max_size > self.size else self.lane_limit
        self._clock = clock
        self._costly = CostlyClients(clock)
        self._busy: Counter[Lane] = Counter()  # workers busy, by the lane of their message
        self._arrivals = Arrivals()  # when other mail than costly mail last came
        self._queue: list[_Turn] = []  # messages waiting for a worker, in arrival order
        self._demand: dict[int, float] = {}  # pid -> seconds run or runnable
        self._demand_at = float("-inf")
        self._read_demand = demand or _cpu_demand
        self._read_cpu = cpu or _cpu_seconds
        self._judged_at = float("-inf")
        # Read with each reading of the demand.
        self._cores: IdleReading = cores or IdleShare(window=0.0)
        self._waiting_on_network = False
        self._idle_share = 1.0  # the cores' idle share at the last reading
        self._context = multiprocessing.get_context("forkserver")
        self._context.set_forkserver_preload(_preload(config))
        share_model(_model_to_share(config))  # read when the fork server starts
        self._mutex = threading.RLock()  # re-entered: _grow and _discard take it too
        self._lock = threading.Condition(self._mutex)
        self._idle: list[Worker] = []
        self._workers: set[Worker] = set()
        self._starting = 0
        self._closed = False
        first, self.problems = self._start_worker()  # a broken config stops start-up here
        self._add_idle(first)
        for _ in range(self.size - 1):
            self._grow()
        self._reaper = threading.Thread(target=self._retire_idle, name="worker-reaper",
                                        daemon=True)
        self._reaper.start()

    def startup_problems(self) -> list[str]:
        return self.problems

    def worker_pids(self) -> list[int]:
        with self._lock:
            return [w.pid for w in self._workers if w.process.is_alive()]

    def starting(self) -> int:
        return self._starting

    # -- one message --------------------------------------------------------------

    def evaluate(self, envelope: Envelope, raw: RawContent) -> Verdict:
        client = client_of(envelope.client_ip)
        limit = self.hard_limit  # this message's, whatever changes meanwhile
        worker = self._acquire(client, raw.size, limit)
        stopped = ""
        keep: Worker | None = worker
        try:
            # A spilled message goes by path, so its bytes are never pickled.
            data = raw.bytes() if raw.in_memory else None
            worker.conn.send((envelope, data, str(raw.path) if raw.path else None))
            if worker.conn.poll(limit):
                answer = worker.conn.recv_bytes()
                cpu, worker.cpu_at_start = _CPU_USED.unpack_from(answer)
                # A worker's first message also pays for what the checks load
                # on first use (the model, the store: 0.25 s of CPU or more).
                if cpu > self.heavy_cpu and worker.messages:
                    self._costly_mail(client, f"used {cpu:.2f}s of CPU (over [pipeline] "
                                      f"heavy_cpu_seconds {self.heavy_cpu:g})", envelope)
                # Judged in the worker, by the same rules (sent as it started);
                # without a verdict, judged here from its results (as before).
                judged = ResultLog.parse(answer, _CPU_USED.size)
                if judged:
                    verdict: Verdict = judged[0]
                    return verdict
                finished = worker.results.read()
            else:
                stopped = (f"stopped: still running after {limit:g}s "
                           "([pipeline] budget + grace)")
                log.warning("message %s: worker %d still busy after %gs, stopped",
                            envelope.queue_id or "-", worker.pid, limit)
                keep = None
                self._costly_mail(client, "was stopped at the deadline", envelope)
                self._discard(worker, kill=True, keep_results=True)
                finished = worker.results.read()
                worker.results.close()
        except (EOFError, OSError) as exc:
            keep = None
            self._costly_mail(client, "crashed its worker", envelope)
            code = self._discard(worker, kill=True)
            raise WorkerFailed(f"worker {worker.pid} died ({_exit_reason(code)}) while "
                               f"checking message {envelope.queue_id or '-'}: "
                               f"{type(exc).__name__}") from None
        finally:
            if keep is not None:
                self._release(keep)
        # A stopped worker (or one whose judgement failed): judged here,
        # on the checks it had finished.
        runs: dict[str, CheckRun] = {}
        reports: dict[str, Report] = {}
        for item in finished:
            run, report = _decode(*item)
            runs[run.name] = run
            if report is not None:
                reports[run.name] = report
        result = assemble(self.checks, runs, reports, self.config.pipeline.budget, stopped)
        return self.judge.verdict(result, envelope)

    def _costly_mail(self, client: str | None, what: str, envelope: Envelope) -> None:
        """Note that this client's message was costly (gateway.lanes)."""
        with self._lock:
            known = client in self._costly
            self._costly.record(client)
            if client is not None and not known:
                self._move_to_costly_lane(client)
        if client is not None and not known:
            log.info("client %s: message %s %s: its mail goes after other mail for %gs",
                     client, envelope.queue_id or "-", what, COSTLY_FOR)

    def _judge_running(self, now: float) -> None:
        """While messages wait: a client whose message in a worker has used
        more than heavy_cpu_seconds so far is costly now, not only once that
        message ends (which, with the cores busy, takes seconds more), so its
        other mail stops taking workers meanwhile (under the lock; every
        DEMAND_WINDOW at most, from the main thread's /proc/PID/task/PID/stat:
        not the background readers', which run between messages too)."""
        if now - self._judged_at < DEMAND_WINDOW:
            return
        self._judged_at = now
        for worker in list(self._workers):
            if worker.lane in (None, "costly") or worker.client is None or \
                    worker.cpu_at_start is None:  # a first message is not judged
                continue
            used = self._read_cpu(worker.pid) - worker.cpu_at_start
            if used > self.heavy_cpu and worker.client not in self._costly:
                self._costly.record(worker.client)
                self._move_to_costly_lane(worker.client)
                log.info("client %s: a message has used %.2fs of CPU so far (over [pipeline] "
                         "heavy_cpu_seconds %g): its mail goes after other mail for %gs",
                         worker.client, used, self.heavy_cpu, COSTLY_FOR)

    def _move_to_costly_lane(self, client: str) -> None:
        """The client's other messages, waiting or in a worker, are costly
        mail from now on: those that came before it was known wait behind
        other mail too, and those in workers count toward the lane's limit
        (under the lock)."""
        for turn in self._queue:
            if turn.client == client:
                turn.lane = "costly"
        for worker in self._workers:
            if worker.client == client and worker.lane not in (None, "costly"):
                self._busy[worker.lane] -= 1
                worker.lane = "costly"
                self._busy["costly"] += 1
        self._keep_a_spare()

    # -- the pool -----------------------------------------------------------------

    def _acquire(self, client: str | None, size: int, limit: float) -> Worker:
        """A worker for this message: at once if one is idle and nobody came
        first, else in turn (gateway.lanes). A message waits no longer than
        it may take to check: past that the MTA gets a 4xx and retries,
        rather than its own timeout."""
        arrived = self._clock()
        give_up = arrived + limit
        with self._lock:
            if self._closed:
                raise WorkerFailed("the worker pool is shut down")
            lane = lane_of(client in self._costly, size, self.heavy_bytes)
            self._arrivals.record(client, lane, arrived)
            turn = _Turn(lane, client, threading.Condition(self._mutex))
            self._queue.append(turn)
            self._hand_out()
            try:
                while turn.worker is None:
                    if self._closed:
                        raise WorkerFailed("the worker pool is shut down")
                    now = self._clock()
                    if now > give_up:
                        raise NoWorkerFree(f"no worker process free within {limit:g}s "
                                           f"({len(self._workers)} running, "
                                           f"{self._starting} starting, {lane} lane)")
                    self._judge_running(now)
                    if not self._starting and len(self._workers) < self.max_size and \
                            self._has_room(turn.lane) and (
                            (self._all_slow() and self._cores_to_spare())
                            or (now - arrived > QUEUE_WAIT and self._workers_wait_on_network())):
                        self._grow()  # whichever comes first: this one or a freed one
                    turn.ready.wait(timeout=QUEUE_WAIT)
                return turn.worker
            except BaseException:
                if turn.worker is not None:  # handed one just as it gave up
                    self._idle.append(turn.worker)
                    self._end_busy(turn.worker)
                    self._hand_out()
                raise
            finally:
                if turn in self._queue:
                    self._queue.remove(turn)

    def _hand_out(self) -> None:
        """Give idle workers to waiting messages, in the order of
        gateway.lanes.next_to_go (under the lock): first come first served,
        but a message whose lane is full lets the ones behind it go first,
        and costly mail goes last."""
        limits = self._lane_limits()
        while self._idle:
            turn = next_to_go(self._queue, self._busy, limits)
            if turn is None:
                return
            self._queue.remove(turn)
            worker = self._idle.pop()
            worker.busy_since = self._clock()
            worker.lane, worker.client = turn.lane, turn.client
            self._busy[turn.lane] += 1
            turn.worker = worker
            turn.ready.notify()
        self._keep_a_spare()

    def _keep_a_spare(self) -> None:
        """While a worker is busy with costly mail, keep one idle for other
        mail, started before that mail comes (up to max_workers): a worker
        takes a second or more to start on cores busy with costly mail.
        Costly mail never takes it: its lane is full (under the lock)."""
        if self._busy["costly"] and not self._idle and not self._starting \
                and len(self._workers) < self.max_size and not self._closed:
            self._grow()

    def _wake_all(self) -> None:
        for turn in self._queue:
            turn.ready.notify()

    def _workers_wait_on_network(self) -> bool:
        """Whether, over the last moments, the workers spent most of their
        time neither running nor queued for a core, while the machine had
        cores to spare (read from the kernel's scheduler statistics)."""
        now = self._clock()
        if now - self._demand_at < DEMAND_WINDOW:
            return self._waiting_on_network
        demand = {w.pid: self._read_demand(w.pid) for w in self._workers}
        # Only the workers with a message say whether messages wait on the
        # network: an idle one (the spare kept for other mail) waits on nothing.
        busy = {w.pid for w in self._workers if w.busy_since is not None}
        shares = [max(demand[pid] - self._demand[pid], 0.0) / (now - self._demand_at)
                  for pid in demand if pid in busy and pid in self._demand and demand[pid] >= 0]
        idle_share = self._idle_share = self._cores.share()
        self._demand, self._demand_at = demand, now
        self._waiting_on_network = bool(shares) and idle_share >= SPARE_CORES and \
            sum(shares) / len(shares) < IO_WAITING_SHARE
        return self._waiting_on_network

    def _has_room(self, lane: Lane) -> bool:
        """Whether a message of this lane could take another worker: a new
        one started for a message whose lane is full would sit idle (under
        the lock)."""
        if lane == "ordinary":
            return True
        return self._busy[lane] < self._lane_limits()[lane]

    def _lane_limits(self) -> dict[Lane, int]:
        """The workers the costly and the large lane may hold now (under the
        lock): gateway.lanes.lane_limits, with the mail about from clients
        not costly now."""
        now = self._clock()
        return lane_limits(self._arrivals.latest(now, self._costly), now, self.lane_limit,
                           self.alone_limit)

    def _cores_to_spare(self) -> bool:
        """Whether the machine's cores were idle at least SPARE_CORES of the
        time, by the last reading (taken with the workers' demand): slow
        messages on busy cores are slow for want of CPU, which more
        processes would not give them (at 50 sessions on 2 cores the pool
        grew to 8 workers, 1 GB, for no more mail a second)."""
        self._workers_wait_on_network()  # reads both, at most every DEMAND_WINDOW
        return self._idle_share >= SPARE_CORES

    def _all_slow(self) -> bool:
        now = self._clock()
        return all(w.busy_since is not None and now - w.busy_since > GROW_AFTER
                   for w in self._workers)

    def _release(self, worker: Worker) -> None:
        worker.messages += 1
        if self.max_messages and worker.messages >= self.max_messages:
            # Recycled like Postfix's max_use: whatever a long life leaks goes.
            self._discard(worker)
            return
        self._add_idle(worker)

    def _add_idle(self, worker: Worker) -> None:
        with self._lock:
            self._end_busy(worker)
            worker.idle_since = self._clock()
            self._workers.add(worker)
            self._idle.append(worker)
            # Straight to the message that waited longest, and only it
            # awakes: new arrivals do not overtake it, and waking every
            # waiter for each freed worker cost more than the checks.
            self._hand_out()

    def _end_busy(self, worker: Worker) -> None:
        if worker.lane is not None:
            self._busy[worker.lane] -= 1
        worker.busy_since = None
        worker.lane = worker.client = None

    def _discard(self, worker: Worker, kill: bool = False,
                 keep_results: bool = False) -> int | None:
        with self._lock:
            self._end_busy(worker)
            self._workers.discard(worker)
            if worker in self._idle:
                self._idle.remove(worker)
            short = len(self._workers) + self._starting < self.size and not self._closed
        worker.stop(kill=kill, keep_results=keep_results)
        if short:
            self._grow()
        return worker.process.exitcode

    def _grow(self) -> None:
        """Start one more worker in the background."""
        with self._lock:
            self._starting += 1
        threading.Thread(target=self._start_in_background, name="worker-start",
                         daemon=True).start()

    def _start_in_background(self) -> None:
        try:
            worker, _ = self._start_worker()
        except Exception as exc:
            if self._closed:  # stopping: the fork server went first, nothing to report
                log.debug("worker start abandoned while stopping: %s", exc)
            else:
                log.exception("could not start a worker process")
            with self._lock:
                self._starting -= 1
                self._wake_all()  # a waiting message may grow the pool again
            return
        with self._lock:
            self._starting -= 1
            if self._closed:
                worker.stop()
                return
        self._add_idle(worker)

    def _start_worker(self) -> tuple[Worker, list[str]]:
        parent, child = self._context.Pipe()
        results = ResultLog()
        process = self._context.Process(target=_worker_main,
                                        args=(child, self.config, self.ruleset, results),
                                        name="gateway-worker", daemon=True)
        try:
            process.start()
        except BaseException:
            results.close()
            raise
        child.close()
        worker = Worker(process, parent, results)
        if not parent.poll(START_TIMEOUT):
            worker.stop(kill=True)
            raise WorkerFailed(f"a worker did not start within {START_TIMEOUT:g}s")
        try:
            kind, payload = parent.recv()
        except EOFError:
            code = process.exitcode
            worker.stop(kill=True)
            raise WorkerFailed(f"a worker died while starting ({_exit_reason(code)})") from None
        if kind == "error":
            worker.stop(kill=True)
            raise ConfigError(payload)
        return worker, payload

    def _retire_idle(self) -> None:
        while not self._closed:
            time.sleep(IDLE_RETIREMENT / 4)
            now = self._clock()
            with self._lock:
                # (one more is kept while costly mail holds a worker)
                spare = len(self._workers) - self.size - bool(self._busy["costly"])
                retiring = [w for w in self._idle if now - w.idle_since > IDLE_RETIREMENT]
                retiring = retiring[:max(spare, 0)]
                for worker in retiring:
                    self._idle.remove(worker)
                    self._workers.discard(worker)
            for worker in retiring:
                worker.stop()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            workers = list(self._workers)
            self._workers.clear()
            self._idle.clear()
            self._wake_all()
        for worker in workers:
            worker.stop()


# The threads that check a message besides the worker's own: the pipeline's
# pool for checks that wait on the network, the DNSBL check's lookups.
MESSAGE_THREADS = ("check_", "dnsbl_")


class MessageCpu:
    """The CPU a message used in a worker: its main thread's and the
    threads that run its checks (:data:`MESSAGE_THREADS`), each by its own
    clock. Not the whole process's: the threads that re-read shared state
    in the background (near-duplicate digests, lists, the model's watch)
    run while a message does, and their work is nobody's message; counted,
    it made ordinary mail look costly (gateway.lanes) on a busy worker."""

    def __init__(self) -> None:
        self._started: dict[int, float] = {}

    def start(self) -> None:
        self._started = self._read()

    def used(self) -> float:
        """CPU seconds since :meth:`start` (a thread started since counts
        from its start)."""
        return sum(max(at - self._started.get(ident, 0.0), 0.0)
                   for ident, at in self._read().items())

    @staticmethod
    def _read() -> dict[int, float]:
        clocks = {threading.get_ident(): time.thread_time()}
        for thread in threading.enumerate():
            if thread.ident is not None and thread.name.startswith(MESSAGE_THREADS):
                try:
                    clocks[thread.ident] = time.clock_gettime(
                        time.pthread_getcpuclockid(thread.ident))
                except OSError:  # it ended meanwhile
                    continue
        return clocks


def _worker_main(conn: Connection, config: Config, ruleset: Ruleset,
                 results: ResultLog) -> None:
    """A worker: build the checks once, with the rules the pool sent (never
    the files on disk), then run them on message after message."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the milter decides when to stop
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    # The milter blocks SIGTERM for libmilter's sake (gateway.commands.run); a
    # worker inherits the mask through the fork server, and must die on it.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    setup_logging(config.log.level, config.log.format)  # lines like the milter's
    try:
        pipeline = Pipeline.from_config(config, ruleset)
    except ConfigError as exc:
        conn.send(("error", exc.problems))
        return
    judge = Judge(config, pipeline.checks, ruleset)  # as the milter's (WorkerPool.judge)
    conn.send(("ready", [p for check in pipeline.checks for p in check.startup_problems()]))

    def report(run: CheckRun, found: Report | None) -> None:
        results.append(_encode(run, found))

    spent = MessageCpu()

    try:
        while True:
            try:
                request = conn.recv()
            except EOFError:
                return  # the milter went away
            if request is None:
                return
            envelope, data, path = request
            raw = RawContent(data=data) if data is not None else RawContent(path=Path(path))
            results.restart()
            spent.start()
            message = Message(envelope, raw, config.limits)
            with for_message(envelope.queue_id):
                answer = _judged(judge, pipeline.run(message, observer=report), message)
            conn.send_bytes(_CPU_USED.pack(spent.used(), time.thread_time()) + answer)
    except (BrokenPipeError, ConnectionResetError):
        log.info("the milter went away; worker %d ends", os.getpid())
    except Exception:
        log.exception("worker %d ended on an error", os.getpid())
        raise SystemExit(1) from None
    finally:
        pipeline.close()


def _judged(judge: Judge, result: PipelineResult, message: Message) -> bytes:
    """The verdict as the worker's answer; nothing if judging failed: then
    the milter judges the results in the result log, and fails as it would
    have (a message tempfailed, or passed with ``[milter] on_error``), not
    the worker."""
    try:
        verdict = judge.verdict(result, message.envelope)
        if verdict.action in _KEPT:  # the milter stores it without parsing it again
            verdict = replace(verdict, header_fields=_stored_fields(message))
        return ResultLog.frame(verdict)
    except Exception as exc:
        log.debug("judging in the worker: %s: %s", type(exc).__name__, exc)
        return b""


def _stored_fields(message: Message) -> dict[str, str | None] | None:
    """The header fields a quarantine record lists, from the parse the
    checks made (the milter would otherwise parse the header again to keep
    the message); None, and the milter parses, if they cannot be read."""
    try:
        return stored_fields(message.email)
    except Exception as exc:  # never worth the worker: the store reads them itself
        log.debug("header fields for the quarantine record: %s: %s", type(exc).__name__, exc)
        return None


# A check's result crosses the pipe as plain tuples: pickling the frozen
# dataclasses costs five times as much, on each side, for every check of
# every message.
def _encode(run: CheckRun, report: Report | None) -> tuple[Any, ...]:
    found = None if report is None else (
        tuple((s.name, s.score, s.description, s.evidence, s.reply) for s in report.symbols),
        dict(report.facts))
    return (run.name, run.status, run.millis, run.error), found


def _decode(run: tuple[Any, ...], found: tuple[Any, ...] | None
            ) -> tuple[CheckRun, Report | None]:
    report = None if found is None else Report(
        symbols=tuple(Symbol(*fields) for fields in found[0]), facts=found[1])
    return CheckRun(*run), report


def _preload(config: Config) -> list[str]:
    """Modules the fork server imports once, so that each worker is a fork;
    gateway.forkshare last: it loads the model the workers share and
    freezes what is loaded (gateway.forkshare)."""
    modules = ["gateway.workers", "gateway.mime", "gateway.mail"]
    for spec in config.pipeline.checks:
        target = BUILTIN.get(spec, spec)
        modules.append(target.partition(":")[0])
    return [*dict.fromkeys(m for m in modules if m != "gateway.forkshare"), "gateway.forkshare"]


def _model_to_share(config: Config) -> str | None:
    """The model folder the bayes check will use, if it is enabled."""
    if "bayes" not in config.pipeline.checks:
        return None
    from gateway.checks.bayes import model_location

    try:
        return str(model_location(config))
    except Exception as exc:  # the store away: each worker loads (or fails) on its own
        log.debug("no model to share with the workers: %s: %s", type(exc).__name__, exc)
        return None


def _cpu_seconds(pid: int) -> float:
    """The CPU seconds a worker's main thread has used (-1 if it is gone):
    utime + stime of /proc/PID/task/PID/stat, what time.thread_time()
    counts in that thread, in clock ticks. The main thread runs the checks
    that compute (the others wait on the network); the worker's background
    readers, which run between messages too, are not a message's
    (:class:`MessageCpu`)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/stat") as stat:
            fields = stat.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS
    except (OSError, ValueError, IndexError):
        return -1.0


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_demand(pid: int) -> float:
    """Seconds a process's threads have run or waited for a core (-1 if
    it is gone): /proc/PID/task/*/schedstat, run time plus run-queue delay."""
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return -1.0
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as stats:
                running, waiting, _ = stats.read().split()
        except (OSError, ValueError):
            continue  # a thread that just ended
        total += int(running) + int(waiting)
    return total / 1e9


def _exit_reason(code: Any) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"

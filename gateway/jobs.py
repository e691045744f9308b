"""Work that several nodes share and one node does: once per period, never
two at a time, never half.

A job has a name (``quarantine-purge``, ``digest``) and periods (the hour of
a purge, the day of a digest). :meth:`Jobs.run` does one period's work if
nobody has:

- one node at a time: on PostgreSQL a session advisory lock on a connection
  of its own (``pg_try_advisory_lock``). PostgreSQL frees it the moment that
  connection ends, so a node killed mid-job (SIGKILL, power) hands the job
  over at once, without waiting out a lease. On SQLite (one machine) a lease
  row in ``jobs`` with an expiry does it.
- once: a period is done when ``job_runs`` has its row, and that row is
  written *in the transaction that does the work*. A node that dies before
  the commit leaves neither the work nor the row (the database rolls both
  back), so the next node does the whole period; a node that committed left
  both, so nobody does it again. The row's primary key (job, period) refuses
  a second one even if two nodes somehow ran at once.
- work that cannot be one transaction (mail sent by the digest) commits
  each item on its own and asks the database what is left; the job is then
  done in pieces, each once, and its ``job_runs`` row comes at the end.

A :class:`PeriodicJob` thread runs a job at each period's start (wall
clock, so all nodes try at the same moment and one wins), and looks again
soon while another node holds it, in case that node dies.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, delete, func, insert, or_, select, text, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from gateway.db import first_line, insert_ignoring, utc
from gateway.quarantine.schema import job_runs, jobs

log = logging.getLogger("gateway.jobs")

# A SQLite lease outlives a killed process this long (one machine: the
# process that holds it renews nothing; a purge takes seconds).
SQLITE_LEASE = timedelta(minutes=10)
# While another node holds a job: look again after this long (at most).
BUSY_RETRY = 30.0
# Finished periods are kept this long, for `gateway nodes` and the curious.
RUNS_KEPT = timedelta(days=30)

# A job's work gets the transaction that records its period as done, or
# None when it is piecewise (it commits its own items).
Work = Callable[[Connection | None], dict[str, Any]]


class JobError(Exception):
    """A job that could not run, as one line."""


@dataclass(frozen=True)
class Outcome:
    state: str                      # "ran", "done-before" (by whoever), "busy" (another node)
    node: str = ""                  # who did the period (ran, done-before)
    result: dict[str, Any] = field(default_factory=dict)


def period_of(interval: float, at: float | None = None) -> str:
    """The period a moment falls in: the UTC start of its ``interval``."""
    at = time.time() if at is None else at
    start = datetime.fromtimestamp((at // interval) * interval, UTC).replace(tzinfo=None)
    whole = float(interval).is_integer()  # else two periods may share a second
    return start.isoformat(timespec="seconds" if whole else "milliseconds")


def _watch_client(connection: Connection) -> None:
    """PostgreSQL 14+: a statement of this transaction whose client died
    (a killed node) is stopped within 2 s, and the transaction rolled back,
    rather than finishing a statement nobody will commit (a purge waiting
    on a row lock, say)."""
    if connection.dialect.name == "postgresql" and \
            (connection.dialect.server_version_info or (0,)) >= (14,):
        connection.execute(text("SET LOCAL client_connection_check_interval = '2s'"))


def _lock_key(name: str) -> int:
    """A stable signed 64-bit advisory-lock key for a job name."""
    digest = hashlib.sha256(f"gateway-job:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def one_at_a_time(connection: Connection, name: str) -> None:
    """Make the transactions that call this for ``name`` run one after the
    other, for a check then a write that must not race (two consoles
    starting a training run). PostgreSQL: an advisory lock held to the end
    of the transaction. SQLite lets one writer in at a time, so the caller
    writes first: the second transaction's write waits for the first to
    commit, and what it reads after sees the first's row."""
    if connection.dialect.name == "postgresql":
        connection.execute(select(func.pg_advisory_xact_lock(_lock_key(name))))


class Jobs:
    def __init__(self, engine: Engine, node: str):
        self.engine = engine
        self.node = node

    def run(self, name: str, period: str, work: Work, *, piecewise: bool = False
            ) -> Outcome:
        """Do ``work`` for ``period`` unless it is done or another node is at it.

        ``work`` gets a connection inside the transaction that records the
        period as done; with ``piecewise`` it gets None and commits its own
        items (each must be safe to find done by the next node)."""
        postgres = self.engine.dialect.name == "postgresql"
        try:
            with self._held(name, postgres) as token:
                if token is None:
                    return Outcome("busy")
                done = self._done(name, period)
                if done is not None:
                    return Outcome("done-before", done[0], done[1])
                started = datetime.now(UTC)
                if piecewise:
                    result = work(None)
                    with self.engine.begin() as connection:
                        self._finish(connection, name, period, started, result, token,
                                     postgres)
                else:
                    with self.engine.begin() as connection:
                        _watch_client(connection)
                        result = work(connection)
                        self._finish(connection, name, period, started, result, token,
                                     postgres)
                return Outcome("ran", self.node, result)
        except IntegrityError:  # a second row for the period: somebody else's; ours rolled back
            done = self._done(name, period)
            return Outcome("done-before", *(done or ("?", {})))

    # -- one node at a time ------------------------------------------------------

    @contextlib.contextmanager
    def _held(self, name: str, postgres: bool):
        """Yields a token while this node holds the job, None if another does."""
        token = uuid.uuid4().hex
        if not postgres:
            if not self._lease(name, token):
                yield None
                return
            try:
                yield token
            finally:
                self._release_lease(name, token)
            return
        key = _lock_key(name)
        with self.engine.connect() as connection:
            got = connection.execute(select(func.pg_try_advisory_lock(key))).scalar()
            connection.commit()  # idle, not idle in a transaction, while the job runs
            if not got:
                yield None
                return
            try:
                self._mark_running(name, token)
                yield token
            finally:
                self._release_lease(name, token)  # a job that failed runs no more
                with contextlib.suppress(SQLAlchemyError):
                    connection.execute(select(func.pg_advisory_unlock(key)))
                    connection.commit()

    def _ensure_row(self, connection: Connection, name: str) -> None:
        insert_ignoring(connection, jobs, {"name": name})

    def _lease(self, name: str, token: str) -> bool:
        stamp = datetime.now(UTC)
        with self.engine.begin() as connection:
            self._ensure_row(connection, name)
            taken = connection.execute(update(jobs).where(
                jobs.c.name == name,
                or_(jobs.c.holder.is_(None), jobs.c.lease_until < stamp)).values(
                holder=self.node, token=token, lease_until=stamp + SQLITE_LEASE,
                started=stamp)).rowcount
        return taken == 1

    def _release_lease(self, name: str, token: str) -> None:
        """The job is nobody's any more (if it was still ours)."""
        with contextlib.suppress(SQLAlchemyError), self.engine.begin() as connection:
            connection.execute(update(jobs).where(jobs.c.name == name, jobs.c.token == token)
                               .values(holder=None, token=None, lease_until=None,
                                       started=None))

    def _mark_running(self, name: str, token: str) -> None:
        """Who runs it now (PostgreSQL: for people; the lock decides)."""
        with self.engine.begin() as connection:
            self._ensure_row(connection, name)
            connection.execute(update(jobs).where(jobs.c.name == name).values(
                holder=self.node, token=token, started=datetime.now(UTC), lease_until=None))

    # -- once per period ---------------------------------------------------------

    def _done(self, name: str, period: str) -> tuple[str, dict[str, Any]] | None:
        with self.engine.connect() as connection:
            row = connection.execute(select(job_runs.c.node, job_runs.c.result).where(
                job_runs.c.job == name, job_runs.c.period == period)).first()
        return None if row is None else (row.node, json.loads(row.result))

    def _finish(self, connection: Connection, name: str, period: str, started: datetime,
                result: dict[str, Any], token: str, postgres: bool) -> None:
        """The period's row, in the work's transaction. On SQLite the lease
        must still be ours (a process that outlived its lease commits
        nothing)."""
        stamp = datetime.now(UTC)
        if not postgres:
            still = connection.execute(select(jobs.c.token).where(jobs.c.name == name)).scalar()
            if still != token:
                raise JobError(f"job {name}: lease lost to another process; nothing committed")
        connection.execute(insert(job_runs), {
            "job": name, "period": period, "node": self.node, "started": started,
            "finished": stamp, "result": json.dumps(result, default=str)})
        connection.execute(update(jobs).where(jobs.c.name == name, jobs.c.token == token)
                           .values(holder=None, started=None))
        connection.execute(delete(job_runs).where(job_runs.c.job == name,
                                                  job_runs.c.finished < stamp - RUNS_KEPT))

    def runs(self, name: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """Finished periods, newest first."""
        query = select(job_runs).order_by(job_runs.c.finished.desc()).limit(limit)
        if name:
            query = query.where(job_runs.c.job == name)
        with self.engine.connect() as connection:
            return [{"job": r.job, "period": r.period, "node": r.node,
                     "started": utc(r.started), "finished": utc(r.finished),
                     "result": json.loads(r.result)} for r in connection.execute(query)]

    def running(self) -> list[dict[str, Any]]:
        """Jobs some node says it runs now (on PostgreSQL a crashed node's
        claim stays until the next run; the lock is the truth)."""
        with self.engine.connect() as connection:
            return [{"job": r.name, "node": r.holder, "started": utc(r.started)}
                    for r in connection.execute(select(jobs).where(jobs.c.holder.is_not(None)))
                    if r.started is not None]


class PeriodicJob:
    """A thread that runs a job at each period's start, on whichever node
    gets there first."""

    def __init__(self, jobs_: Callable[[], Jobs], name: str, interval: float,
                 work: Work, piecewise: bool = False,
                 period: Callable[[], str | None] | None = None):
        self.jobs, self.name, self.interval = jobs_, name, interval
        self.work, self.piecewise = work, piecewise
        self.period = period or (lambda: period_of(self.interval))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> PeriodicJob:
        self._thread = threading.Thread(target=self._loop, name=f"job-{self.name}", daemon=True)
        self._thread.start()
        return self

    def stop(self, wait: float = 0.0) -> None:
        """No further runs; with ``wait``, up to that long for a run in
        progress to commit (or roll back)."""
        self._stop.set()
        if wait and self._thread is not None:
            self._thread.join(wait)

    def _next_start(self) -> float:
        return self.interval - time.time() % self.interval

    def _loop(self) -> None:
        delay = self._next_start()
        while not self._stop.wait(delay):
            delay = self._next_start()
            try:
                outcome = self.run_now()
            except (SQLAlchemyError, JobError) as exc:
                log.error("job %s: %s", self.name, first_line(exc))
                delay = min(delay, BUSY_RETRY, self.interval)
                continue
            except Exception:
                log.exception("job %s failed", self.name)
                continue
            if outcome is not None and outcome.state == "busy":
                delay = min(delay, BUSY_RETRY, max(self.interval / 4, 0.2))

    def run_now(self) -> Outcome | None:
        period = self.period()
        if period is None:  # not due (a digest before its hour)
            return None
        outcome = self.jobs().run(self.name, period, self.work, piecewise=self.piecewise)
        if outcome.state == "ran":
            log.info("job %s for %s done on this node: %s", self.name, period,
                     json.dumps(outcome.result, default=str))
        else:
            log.debug("job %s for %s: %s %s", self.name, period, outcome.state, outcome.node)
        return outcome

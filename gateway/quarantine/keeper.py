"""What the milter needs from the quarantine: keep a message, durably.

The database is opened on first use and again after a failure, so a
quarantine that is down when the gateway starts (or goes down later) costs
the affected messages a 4xx, never the gateway, and never a message.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import queue
import random
import threading
import time

from sqlalchemy.engine import Connection

from gateway.classifier.autolearn import accept_candidates
from gateway.config import Config
from gateway.jobs import JobError, Jobs, PeriodicJob
from gateway.message import Envelope, RawContent
from gateway.quarantine.store import QuarantineError, QuarantineStore
from gateway.verdict import Verdict

log = logging.getLogger("gateway.quarantine")

# Accepted mail kept for replay: copies waiting for the writer thread, and how
# often the newest-N sample is cut back to N.
SAMPLE_QUEUE = 64
TRIM_EVERY = 10
PURGE_JOB = "quarantine-purge"
AUTOLEARN_JOB = "autolearn"


class Keeper:
    def __init__(self, config: Config):
        self.settings = config.quarantine
        self._store: QuarantineStore | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.replay = config.replay
        self.classifier = config.classifier
        self._samples: queue.Queue | None = None
        self._sample_writer: threading.Thread | None = None
        self.samples_dropped = 0
        self._complained = 0.0
        self._purge: PeriodicJob | None = None
        self._autolearn: PeriodicJob | None = None

    def store(self) -> QuarantineStore:
        with self._lock:
            if self._store is None:
                # The milter runs for months: alembic stays in a child.
                self._store = QuarantineStore(self.settings.url, self.settings.node or None,
                                              migrate_apart=True)
            return self._store

    def hold(self, envelope: Envelope, raw: RawContent, verdict: Verdict) -> str:
        """Store a quarantined message; raises QuarantineError if it is not
        committed (the milter then answers 4xx and Postfix keeps the mail)."""
        return self.store().put(envelope, raw, verdict, "quarantine")

    def keep_rejected(self, envelope: Envelope, raw: RawContent, verdict: Verdict) -> str | None:
        """A recoverable copy of a rejected message, when configured. The
        sender keeps the original either way, so a failure is only logged."""
        if self.settings.keep_rejected_days <= 0:
            return None
        try:
            return self.store().put(envelope, raw, verdict, "reject")
        except QuarantineError as exc:
            log.error("quarantine: could not keep a copy of rejected message %s: %s",
                      envelope.queue_id or "-", exc)
            return None

    def sample_accepted(self, envelope: Envelope, raw: RawContent, verdict: Verdict) -> None:
        """Keep a copy of an accepted message for ``gateway replay`` when
        ``[replay] keep_accepted_sample`` asks for one. The message never
        waits for it: a background thread writes the copies, and a copy is
        dropped (and counted) when that thread falls behind."""
        share = self.replay.keep_accepted_sample
        if share <= 0 or (share <= 1 and random.random() >= share):
            return
        try:
            data = raw.bytes()
        except OSError as exc:  # a spilled message whose file went away
            self._complain(f"could not read accepted message {envelope.queue_id or '-'}: {exc}")
            return
        with self._lock:
            if self._samples is None:
                self._samples = queue.Queue(SAMPLE_QUEUE)
                self._sample_writer = threading.Thread(
                    target=self._write_samples, args=(self._samples,),
                    name="replay-sample", daemon=True)
                self._sample_writer.start()
        try:
            self._samples.put_nowait((envelope, data, verdict))
        except queue.Full:
            self.samples_dropped += 1
            self._complain(f"{self.samples_dropped} accepted messages not kept for replay "
                           "so far: the store is slower than the mail")

    def _write_samples(self, samples: queue.Queue) -> None:
        written = 0
        while True:
            item = samples.get()
            try:
                if item is not None:
                    self.store().put_sample(*item)
                    written += 1
                count = self.replay.keep_accepted_sample
                # "the newest N": cut back every few messages, when idle, and at the end
                if count > 1 and (item is None or samples.empty() or written % TRIM_EVERY == 0):
                    self.store().trim_samples(int(count))
            except QuarantineError as exc:
                self._complain(str(exc))
            except Exception as exc:  # a sample is never worth the writer thread
                log.error("replay sample: %s: %s", type(exc).__name__, exc)
                log.debug("replay sample", exc_info=True)
            if item is None:
                return

    def _complain(self, problem: str) -> None:
        """One log line a minute at most: a sample is not worth a flood."""
        if time.monotonic() - self._complained > 60:
            self._complained = time.monotonic()
            log.warning("replay sample: %s", problem)

    def start_purging(self) -> None:
        """The node's shared duties: the purge and autolearning as jobs that
        run once per ``purge_interval`` on whichever node gets them (see
        gateway.jobs). The node's heartbeat is the service's (gateway.service)."""
        self._purge = PeriodicJob(self._jobs, PURGE_JOB, self.settings.purge_interval,
                                  self.purge_work).start()
        # Each candidate commits on its own: a node that stops half-way
        # leaves the rest to the next run, and none is learned twice.
        self._autolearn = PeriodicJob(self._jobs, AUTOLEARN_JOB, self.settings.purge_interval,
                                      self.autolearn_work, piecewise=True).start()

    def _jobs(self) -> Jobs:
        try:
            store = self.store()
        except QuarantineError as exc:
            raise JobError(str(exc)) from None
        return Jobs(store.engine, store.node)

    def purge_work(self, connection: Connection | None) -> dict[str, int]:
        """One purge, in the job's transaction: held mail past its days
        expires, records past theirs go, old accepted samples go."""
        store = self.store()
        counts = store.purge(self.settings.retention_days(), self.settings.keep_rejected_days,
                             connection=connection)
        counts["samples"] = store.purge_samples(self.replay.accepted_retention_days,
                                                connection=connection)

        if counts["expired"] or counts["removed"]:
            log.info("quarantine: purged: %s expired, %s records removed",
                     counts["expired"], counts["removed"])
        return counts

    def autolearn_work(self, _connection: Connection | None) -> dict[str, int]:
        """With ``[classifier] autolearn = "on"``: learn the candidates whose
        delay has passed, unless someone objected."""
        if self.classifier.autolearn != "on":
            return {"learned": 0}
        outcome = accept_candidates(self.settings.url,
                                    self.classifier.training_set_url(self.settings.url),
                                    "autolearn (on)")
        return dataclasses.asdict(outcome)

    def close(self) -> None:
        self._stop.set()
        for duty in (self._purge, self._autolearn):
            if duty is not None:
                duty.stop()
        if self._samples is not None and self._sample_writer is not None:
            with contextlib.suppress(queue.Full):  # the writer finishes what is queued
                self._samples.put(None, timeout=1)
            self._sample_writer.join(timeout=5)
        if self._store is not None:
            self._store.close()

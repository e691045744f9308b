"""From a received message to what the MTA should be told.

The decider evaluates the message (pipeline and policy, via an evaluator),
keeps it in the quarantine when the verdict says so, and returns a
:class:`Decision`: the verdict plus the one thing the milter must do
(accept, hold, discard, reject or tempfail) and the reply text.

Whatever touches the store runs on ordinary Python threads of the
decider's own pool, never on pymilter's callback threads: pymilter gives
each connection a thread state of its own, outside Python's PyGILState
bookkeeping, and any C code that calls PyGILState_Ensure there (sqlite3 and
psycopg callbacks and finalizers among them) takes the GIL twice and crashes
the process. An evaluator that touches no database driver here (the worker
pool: it only sends bytes and applies the policy) runs on the callback
thread itself, and only storing a held or rejected message goes to the pool:
two thread switches fewer for most messages.
"""

from __future__ import annotations

import contextvars
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

from gateway.classifier.autolearn import Autolearner
from gateway.evaluator import Evaluator
from gateway.logline import log_verdict
from gateway.logs import for_message
from gateway.message import Envelope, RawContent
from gateway.quarantine.keeper import Keeper
from gateway.quarantine.store import QuarantineError
from gateway.replies import BUSY, REJECTED, STORE_FAILED, TRY_AGAIN, SmtpReply
from gateway.verdict import TooBusy, Verdict

if TYPE_CHECKING:
    from gateway.door import Door

log = logging.getLogger("gateway.decider")

Outcome = Literal["accept", "hold", "discard", "reject", "tempfail"]
# Told of every decision (metrics): the envelope, the decision, seconds taken.
Observer = Callable[[Envelope, "Decision", float], None]


class Learner(Protocol):
    """Told of every decision, to learn from it (gateway.correspondents)."""

    def observe(self, envelope: Envelope, decision: Decision) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    # accept: deliver with our headers; hold: Postfix's hold queue; discard:
    # kept in our quarantine, Postfix drops its copy; reject / tempfail: reply.
    outcome: Outcome
    reply: SmtpReply | None = None
    notes: dict[str, str] = field(default_factory=dict)


class Decider:
    def __init__(self, evaluator: Evaluator, keeper: Keeper | None, threads: int = 16,
                 observer: Observer | None = None, learner: Learner | None = None,
                 door: Door | None = None,
                 autolearner: Autolearner | None = None):
        self.evaluator = evaluator
        self.keeper = keeper
        self.observer = observer
        self.learner = learner
        self.door = door  # greylisting and rate limits (gateway.door), when configured
        self.autolearner = autolearner  # training candidates ([classifier] autolearn)
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="decide")

    def decide(self, envelope: Envelope, raw: RawContent) -> Decision:
        """Decide; the store's work on a pool thread, while the caller waits
        (without the GIL)."""
        with for_message(envelope.queue_id):  # every log line about it names it
            if not self.evaluator.store_free:
                return self._on_pool(self._decide, envelope, raw)
            started = time.perf_counter()
            try:
                verdict = self.evaluator.evaluate(envelope, raw)
            except TooBusy as exc:
                return self._decided(envelope, raw, _too_busy(envelope, exc), started)
            if (self.keeper is not None and verdict.action in ("quarantine", "reject")) or \
                    (self.door is not None and verdict.greylist):  # the database, on the pool
                decision = self._on_pool(self._act, verdict, envelope, raw)
            else:
                decision = self._act(verdict, envelope, raw)
            return self._decided(envelope, raw, decision, started)

    def _on_pool(self, work: Callable[..., Decision], *args: Any) -> Decision:
        # In this thread's context: the queue id the log lines carry goes along.
        return self._pool.submit(contextvars.copy_context().run, work, *args).result()

    def _decide(self, envelope: Envelope, raw: RawContent) -> Decision:
        started = time.perf_counter()
        try:
            verdict = self.evaluator.evaluate(envelope, raw)
        except TooBusy as exc:
            return self._decided(envelope, raw, _too_busy(envelope, exc), started)
        return self._decided(envelope, raw, self._act(verdict, envelope, raw), started)

    def _decided(self, envelope: Envelope, raw: RawContent, decision: Decision,
                 started: float) -> Decision:
        verdict = decision.verdict
        seconds = time.perf_counter() - started
        log_verdict(envelope, verdict, raw.size, seconds * 1000, decision.notes)
        if self.observer is not None:
            self.observer(envelope, decision, seconds)
        if self.learner is not None:
            self.learner.observe(envelope, decision)
        if self.door is not None:
            self.door.observed(envelope, decision)
        return decision

    def _act(self, verdict: Verdict, envelope: Envelope, raw: RawContent) -> Decision:
        if self.door is not None and verdict.greylist:  # in the policy's greylist band
            greylisted = self.door.after_data(envelope, verdict)
            if greylisted is not None:
                return Decision(greylisted, "tempfail", greylisted.reply)
        if verdict.action == "reject":
            notes = {}
            if self.keeper is not None and (kept := self.keeper.keep_rejected(envelope, raw,
                                                                              verdict)):
                notes["quarantine_id"] = kept
            self._autolearn(envelope, raw, verdict, notes.get("quarantine_id"))
            reply = verdict.reply or REJECTED
            return Decision(verdict, "reject", reply, notes)
        if verdict.action == "tempfail":
            return Decision(verdict, "tempfail",
                            verdict.reply or TRY_AGAIN)
        if verdict.action == "quarantine":
            if self.keeper is None:
                # No store: the MTA holds it in its own queue (Postfix, Sendmail).
                return Decision(verdict, "hold", notes={"held_by": "mta"})
            # Committed to the store before Postfix may drop its copy; if the
            # store fails, Postfix keeps the message and the sender retries.
            try:
                identifier = self.keeper.hold(envelope, raw, verdict)
            except QuarantineError as exc:
                log.error("quarantine: cannot store message %s, answering 4xx: %s",
                          envelope.queue_id or "-", exc)
                return Decision(verdict, "tempfail", STORE_FAILED,
                                {"quarantine_error": str(exc)})
            self._autolearn(envelope, raw, verdict, identifier)
            return Decision(verdict, "discard", notes={"quarantine_id": identifier})
        if verdict.action == "add_header":  # delivered, marked as spam
            from gateway.headers import with_tagged_subject

            verdict = with_tagged_subject(verdict, raw)
        if self.keeper is not None:  # a copy for what-if replays, when configured
            self.keeper.sample_accepted(envelope, raw, verdict)
        self._autolearn(envelope, raw, verdict, None)
        return Decision(verdict, "accept")

    def _autolearn(self, envelope: Envelope, raw: RawContent, verdict: Verdict,
                   quarantine_id: str | None) -> None:
        if self.autolearner is not None:
            self.autolearner.offer(envelope, raw.bytes, verdict, quarantine_id)

    def close(self, close_keeper: bool = True) -> None:
        self._pool.shutdown(wait=True)
        self.evaluator.close()
        if self.learner is not None:
            self.learner.close()
        if self.door is not None:
            self.door.close()
        if self.autolearner is not None:
            self.autolearner.close()
        if close_keeper and self.keeper is not None:
            self.keeper.close()


def _too_busy(envelope: Envelope, exc: TooBusy) -> Decision:
    """A message nothing could check in time: 4xx, never accepted unchecked
    (whatever [milter] on_error says), so the sender retries."""
    log.warning("message %s not checked, answered %s: %s", envelope.queue_id or "-",
                BUSY, exc)
    verdict = Verdict(action="tempfail", score=0.0, required=0.0, symbols=(),
                      failed_checks=(), reason=f"not checked: {exc}", reply=BUSY)
    return Decision(verdict, "tempfail", BUSY)

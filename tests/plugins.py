"""Checks used by the tests, loaded as ``tests.plugins:Name`` like a site's own."""

from __future__ import annotations

import os
import re
import threading
import time
from dataclasses import dataclass
from typing import ClassVar

from gateway.checks import Check, CheckContext
from gateway.message import Message
from gateway.schema import positive, setting
from gateway.symbols import Report, Symbol


class MarkerCheck(Check):
    """TEST_MARKER when the body says TRIGGER-MARKER."""

    name = "marker"
    symbols = {"TEST_MARKER": "the body contains TRIGGER-MARKER"}

    def run(self, message: Message, context: CheckContext) -> list[Symbol]:
        if b"TRIGGER-MARKER" in message.raw.bytes():
            return [self.symbol("TEST_MARKER", "TRIGGER-MARKER", score=1.0)]
        return []


class BoomCheck(Check):
    name = "boom"
    symbols = {}

    def run(self, message: Message, context: CheckContext) -> list[Symbol]:
        raise RuntimeError("boom: deliberate test failure")


class SlowCheck(Check):
    """Waits like a dead network peer: ``seconds`` (longer than any test
    budget), or until the test sets ``released``."""

    name = "slow"
    io_bound = True
    symbols = {"TEST_SLOW_DONE": "the slow check finished"}
    seconds = 3.0
    released: ClassVar[threading.Event] = threading.Event()

    def run(self, message: Message, context: CheckContext) -> list[Symbol]:
        self.released.wait(self.seconds)
        return [self.symbol("TEST_SLOW_DONE")]


class FactsCheck(Check):
    """Publishes a fact for DependentCheck."""

    name = "facts"
    io_bound = True
    symbols = {}

    def run(self, message: Message, context: CheckContext) -> Report:
        time.sleep(0.05)  # some work, so a dependent started too early would not see it
        return Report(facts={"size": message.size})


class BrokenSpfFactsCheck(Check):
    """Reports SPF facts the Authentication-Results header cannot be built
    from (a result that is not text): judging the message raises."""

    name = "spf"
    symbols = {}

    def run(self, message: Message, context: CheckContext) -> Report:
        return Report(facts={"result": 5})


class DependentCheck(Check):
    name = "dependent"
    requires = ("facts",)
    symbols = {"TEST_SIZE_SEEN": "saw the size fact of the facts check"}

    def run(self, message: Message, context: CheckContext) -> list[Symbol]:
        size = context.facts["facts"]["size"]
        return [self.symbol("TEST_SIZE_SEEN", str(size))]


class StuckCheck(Check):
    """Spins in C code (a catastrophic regular expression) on TRIGGER-STUCK:
    no Python-level timeout can interrupt it, only stopping the process."""

    name = "stuck"
    symbols = {"TEST_NOT_STUCK": "the stuck check was not triggered"}

    def run(self, message: Message, context: CheckContext) -> list[Symbol]:
        if b"TRIGGER-STUCK" in message.raw.bytes():
            re.match(r"(a+)+$", "a" * 64 + "!")
        return [self.symbol("TEST_NOT_STUCK")]


class CrashCheck(Check):
    """Ends its process on TRIGGER-CRASH, like a crash in a C extension."""

    name = "crash"
    symbols = {}

    def run(self, message: Message, context: CheckContext) -> list[Symbol]:
        if b"TRIGGER-CRASH" in message.raw.bytes():
            os._exit(3)
        return []


class GateCheck(Check):
    """On a body line ``WAIT-FOR: /path``, waits until that file exists."""

    name = "gate"
    symbols = {"TEST_GATE_OPENED": "the file the message waited for appeared"}

    def run(self, message: Message, context: CheckContext) -> list[Symbol]:
        found = re.search(rb"WAIT-FOR: (\S+)", message.raw.bytes())
        if found is None:
            return []
        path = found.group(1).decode()
        for _ in range(3000):
            if os.path.exists(path):
                return [self.symbol("TEST_GATE_OPENED", path)]
            time.sleep(0.01)
        return []


class InFlightCheck(Check):
    """Writes to the file $GATEWAY_TEST_IN_FLIGHT when a message reaches it,
    then waits 3 s: a message a test knows is being decided."""

    name = "in_flight"
    symbols = {"TEST_IN_FLIGHT_DONE": "the in-flight check finished"}

    def run(self, message: Message, context: CheckContext) -> list[Symbol]:
        if path := os.environ.get("GATEWAY_TEST_IN_FLIGHT"):
            with open(path, "w") as marker:
                marker.write("deciding")
        time.sleep(3.0)
        return [self.symbol("TEST_IN_FLIGHT_DONE")]


class SpinCheck(Check):
    """On a body line ``SPIN-CPU: SECONDS``, computes for that much of its
    thread's CPU time, like a crafted message that is costly to parse: the
    same CPU on any machine, however busy."""

    name = "spin"
    symbols = {"TEST_SPUN": "computed for as long as the message asked"}

    def run(self, message: Message, context: CheckContext) -> list[Symbol]:
        found = re.search(rb"SPIN-CPU: ([0-9.]+)", message.raw.bytes())
        if found is None:
            return []
        spin(float(found.group(1)))
        return [self.symbol("TEST_SPUN")]


def spin(seconds: float) -> None:
    """Compute for that much of this thread's CPU time."""
    until = time.thread_time() + seconds
    while time.thread_time() < until:
        pass


class BackgroundSpinCheck(Check):
    """On a body line ``BACKGROUND-CPU: SECONDS``, waits while a thread of
    its own (not one that checks messages) computes for that long: the work
    a check's background reader does while a message runs."""

    name = "background_spin"
    symbols = {"TEST_BACKGROUND_SPUN": "a background thread computed meanwhile"}

    def run(self, message: Message, context: CheckContext) -> list[Symbol]:
        found = re.search(rb"BACKGROUND-CPU: ([0-9.]+)", message.raw.bytes())
        if found is None:
            return []
        reader = threading.Thread(target=spin, args=(float(found.group(1)),),
                                  name="test-background-reader")
        reader.start()
        reader.join()
        return [self.symbol("TEST_BACKGROUND_SPUN")]


class BackgroundAfterCheck(Check):
    """On ``BACKGROUND-AFTER: SECONDS FILE``, starts a thread of its own
    that computes for that long after the message is answered, then
    creates FILE: a background reader's work while the worker is idle."""

    name = "background_after"
    symbols = {"TEST_BACKGROUND_STARTED": "a background thread computes after this message"}

    def run(self, message: Message, context: CheckContext) -> list[Symbol]:
        found = re.search(rb"BACKGROUND-AFTER: ([0-9.]+) (\S+)", message.raw.bytes())
        if found is None:
            return []
        seconds, done = float(found.group(1)), found.group(2).decode()

        def read_in_the_background() -> None:
            time.sleep(0.2)  # after the answer
            spin(seconds)
            with open(done, "w"):
                pass

        threading.Thread(target=read_in_the_background, name="test-background-after",
                         daemon=True).start()
        return [self.symbol("TEST_BACKGROUND_STARTED")]


class NetworkSpinCheck(Check):
    """SpinCheck for a check that waits on the network, which the pipeline
    runs on its own threads: on ``NETWORK-SPIN-CPU: SECONDS``."""

    name = "network_spin"
    io_bound = True
    symbols = {"TEST_NETWORK_SPUN": "computed on the pipeline's thread"}

    def run(self, message: Message, context: CheckContext) -> list[Symbol]:
        found = re.search(rb"NETWORK-SPIN-CPU: ([0-9.]+)", message.raw.bytes())
        if found is None:
            return []
        spin(float(found.group(1)))
        return [self.symbol("TEST_NETWORK_SPUN", threading.current_thread().name)]


class HoldCheck(Check):
    """On a body line ``HOLD: /folder``, says that it runs (a file
    ``running.*`` in that folder) and keeps its worker until
    ``/folder/open`` exists: a message in flight for as long as a test wants."""

    name = "hold"
    symbols = {"TEST_HELD": "held its worker until the test let it go"}

    def run(self, message: Message, context: CheckContext) -> list[Symbol]:
        found = re.search(rb"HOLD: (\S+)", message.raw.bytes())
        if found is None:
            return []
        folder = found.group(1).decode()
        with open(os.path.join(folder, f"running.{os.getpid()}.{time.monotonic_ns()}"), "w"):
            pass
        for _ in range(6000):
            if os.path.exists(os.path.join(folder, "open")):
                return [self.symbol("TEST_HELD", folder)]
            time.sleep(0.01)
        return []


@dataclass(frozen=True)
class ShoutingSettings:
    min_length: int = setting(10, positive, "subjects shorter than this are never shouting")
    score: float = setting(1.0, doc="the score of SUBJECT_ALL_CAPS")


class ShoutingCheck(Check):
    """docs/admin.md's site check with settings of its own: [check.shouting]."""

    name = "shouting"
    symbols = {"SUBJECT_ALL_CAPS": "subject is written in capitals"}
    section = ShoutingSettings

    def run(self, message: Message, context: CheckContext) -> list[Symbol]:
        subject = message.header("Subject") or ""
        if len(subject) >= self.options.min_length and subject.isupper():
            return [self.symbol("SUBJECT_ALL_CAPS", subject[:40], score=self.options.score)]
        return []

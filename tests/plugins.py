"""Checks used by the tests, loaded as ``tests.plugins:Name`` like a site's own."""

from __future__ import annotations

import time

from gateway.checks import Check, CheckContext
from gateway.message import Message
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
    """Waits longer than any test budget, like a dead network peer."""

    name = "slow"
    io_bound = True
    symbols = {"TEST_SLOW_DONE": "the slow check finished"}

    def run(self, message: Message, context: CheckContext) -> list[Symbol]:
        time.sleep(3)
        return [self.symbol("TEST_SLOW_DONE")]


class FactsCheck(Check):
    """Publishes a fact for DependentCheck."""

    name = "facts"
    io_bound = True
    symbols = {}

    def run(self, message: Message, context: CheckContext) -> Report:
        time.sleep(0.05)
        return Report(facts={"size": message.size})


class DependentCheck(Check):
    name = "dependent"
    requires = ("facts",)
    symbols = {"TEST_SIZE_SEEN": "saw the size fact of the facts check"}

    def run(self, message: Message, context: CheckContext) -> list[Symbol]:
        size = context.facts["facts"]["size"]
        return [self.symbol("TEST_SIZE_SEEN", str(size))]

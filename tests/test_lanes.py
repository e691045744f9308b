"""Lanes: which waiting message gets a free worker (gateway.lanes), and
through the real milter, a large legitimate message answered while crafted
mail from other clients holds the workers it may hold."""

from __future__ import annotations

import base64
import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.lab.milter_process import MilterProcess
from gateway.lanes import (
    ALONE_AFTER,
    COSTLY_FOR,
    Arrivals,
    CostlyClients,
    Lane,
    client_of,
    lane_limits,
    lane_of,
    next_to_go,
)
from tests.helpers import PROJECT_ROOT, wait_until
from tests.milterclient import MilterClient, Outcome


@pytest.mark.parametrize("address, client", [
    ("203.0.113.66", "203.0.113.66"),
    ("[198.51.100.7]", "198.51.100.7"),
    ("2001:db8:1:2:3::1", "2001:db8:1:2::/64"),
    ("2001:db8:1:2:ffff::9", "2001:db8:1:2::/64"),  # one subscriber's /64: one client
    ("IPv6:2001:db8::1", "2001:db8::/64"),
    ("::ffff:203.0.113.66", "203.0.113.66"),
    ("unknown", None), ("", None), (None, None), ("999.1.1.1", None), ("a" * 5000, None),
])
def test_a_client_is_its_ipv4_address_or_its_ipv6_64(address, client):
    assert client_of(address) == client


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_costly_client_is_remembered_for_a_while_and_the_table_is_bounded():
    clock = Clock()
    costly = CostlyClients(clock, capacity=3)
    costly.record("203.0.113.66")
    costly.record(None)  # no address: nobody to remember
    assert "203.0.113.66" in costly and None not in costly and "198.51.100.7" not in costly
    clock.now = COSTLY_FOR - 1
    assert "203.0.113.66" in costly
    clock.now = COSTLY_FOR + 1
    assert "203.0.113.66" not in costly
    for index in range(5):  # the least recently costly go first
        costly.record(f"192.0.2.{index}")
    assert len(costly) == 3
    assert [f"192.0.2.{i}" in costly for i in range(5)] == [False, False, True, True, True]


def test_lanes_by_cost_then_by_size():
    assert lane_of(True, 10, 1000) == "costly"
    assert lane_of(True, 10**6, 1000) == "costly"
    assert lane_of(False, 1001, 1000) == "large"
    assert lane_of(False, 1000, 1000) == "ordinary"


@dataclass
class Turn:
    name: str
    lane: Lane


def go(waiting: list[Turn], limit: int = 1, **busy: int) -> str | None:
    turn = next_to_go(waiting, busy, limit)
    return None if turn is None else turn.name


def test_costly_mail_gets_a_worker_only_when_no_other_message_can():
    costly, large, ordinary = Turn("c", "costly"), Turn("l", "large"), Turn("o", "ordinary")
    assert go([costly, large, ordinary]) == "l"  # first come, first served...
    assert go([costly, ordinary, large]) == "o"
    assert go([costly, large, ordinary], large=1) == "o"  # ...past a full lane
    assert go([costly, large], large=1) == "c"  # costly mail when nothing else can go
    assert go([costly, large], large=1, costly=1) is None
    assert go([ordinary], large=5, costly=5) == "o"  # ordinary mail is never held back
    assert go([costly, Turn("c2", "costly")], limit=3, costly=2) == "c"
    assert go([]) is None


def test_a_lane_is_held_back_only_while_mail_that_goes_before_it_is_about():
    now = 1000.0
    recent, old = now - ALONE_AFTER / 2, now - ALONE_AFTER - 1
    assert lane_limits({"ordinary": recent, "costly": now}, now, 1, 2) == {
        "costly": 1, "large": 1}
    # Large mail from others keeps the costly lane back, not the large one.
    assert lane_limits({"large": recent, "costly": now}, now, 1, 2) == {
        "costly": 1, "large": 2}
    # Only costly mail for a while (a site's one relay after one heavy
    # message): it may hold every worker the pool keeps.
    assert lane_limits({"ordinary": old, "costly": now}, now, 1, 2) == {
        "costly": 2, "large": 2}
    assert lane_limits({}, now, 3, 4)["costly"] == 4
    costly = [Turn("c1", "costly"), Turn("c2", "costly")]
    assert go(costly, limit=lane_limits({"costly": now}, now, 1, 2), costly=1) == "c1"
    assert go(costly, limit=lane_limits({"costly": now}, now, 1, 2), costly=2) is None


def test_mail_is_about_only_from_clients_not_costly_now():
    arrivals, costly = Arrivals(window=30.0), {"relay"}
    arrivals.record("relay", "ordinary", 100.0)  # before it was known costly
    arrivals.record("relay", "costly", 101.0)
    assert arrivals.latest(102.0, costly) == {}  # its own earlier mail holds nothing back
    arrivals.record("other", "large", 103.0)
    arrivals.record("other", "ordinary", 104.0)
    arrivals.record("relay", "ordinary", 105.0)  # (were it not costly)
    assert arrivals.latest(106.0, costly) == {"ordinary": 104.0, "large": 103.0}
    assert arrivals.latest(106.0, set())["ordinary"] == 105.0
    assert arrivals.latest(133.5, costly) == {"ordinary": 104.0}  # the large one 30.5 s back
    assert arrivals.latest(200.0, costly) == {}
    arrivals.record(None, "ordinary", 300.0)  # a message with no client address
    assert arrivals.latest(301.0, CostlyClients()) == {"ordinary": 300.0}


def test_arrivals_keep_only_the_window_and_their_capacity():
    arrivals = Arrivals(window=30.0, capacity=3)
    for i in range(10):
        arrivals.record(f"client{i}", "ordinary", 100.0 + i)
    assert len(arrivals._last) == 3
    arrivals.record("late", "ordinary", 500.0)
    assert list(arrivals._last) == [("late", "ordinary")]


# -- through the real milter --------------------------------------------------------

LEGIT_IP, ATTACKERS = "198.51.100.7", ("203.0.113.66", "2001:db8:66::1")


def legitimate(size: int, index: int = 0) -> bytes:
    """A message with a report attached (random bytes, as a PDF would be)."""
    pdf = base64.encodebytes(random.Random(index).randbytes(size * 3 // 4)).decode()
    return (f"From: Alice <alice@example.org>\r\nTo: bob@example.net\r\n"
            f"Subject: the quarterly report\r\nDate: Tue, 24 Nov 2026 09:00:00 +0000\r\n"
            f"Message-ID: <report-{index}@example.org>\r\nMIME-Version: 1.0\r\n"
            f'Content-Type: multipart/mixed; boundary="b"\r\n\r\n'
            f"--b\r\nContent-Type: text/plain\r\n\r\nHere is the report.\r\n"
            f"--b\r\nContent-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n"
            f'Content-Disposition: attachment; filename="report.pdf"\r\n\r\n{pdf}'
            f"--b--\r\n").encode()


def crafted(line: str, index: int) -> bytes:
    return (f"From: eve@forwarder.test\r\nTo: bob@example.net\r\nSubject: crafted {index}\r\n"
            f"Date: Tue, 24 Nov 2026 09:00:00 +0000\r\nMessage-ID: <c{index}@forwarder.test>"
            f"\r\n\r\n{line}\r\n" + "x" * 200_000 + "\r\n").encode()


class Session(MilterClient):
    """An MTA's session from one client address."""

    def __init__(self, socket_path: Path, ip: str):
        super().__init__(str(socket_path))
        self.connect("client.example", ip)
        self.helo("client.example")

    def deliver(self, raw: bytes, index: int) -> Outcome:
        try:
            return self.message("sender@example.org", ["bob@example.net"], raw, f"Q{index}")
        finally:
            self.quit()


@pytest.mark.slow
def test_a_large_message_is_answered_while_crafted_mail_from_other_clients_is_in_flight(
        tmp_path: Path):
    """Four workers; two clients whose mail cost 0.3 s of CPU each (over
    heavy_cpu_seconds) keep three 200 KiB messages in flight, as many
    workers as their lane may hold. A 300 KiB message from a third client
    is answered at once (before, it waited for the large lane they held),
    and a small one after it; then the crafted mail is let go and answered
    too: nothing is lost.

    The crafted messages are sent one at a time, each once the one before
    runs: libmilter's worker pool (Debian's is built with one) can leave a
    command that comes at the same moment as another unserved until one of
    its threads is free, and here every thread that holds a message holds
    it until the test lets it go."""
    hold = tmp_path / "hold"
    hold.mkdir()
    socket_path = tmp_path / "milter.sock"
    milter = MilterProcess(tmp_path / "milter", (
        f'[milter]\nsocket = "unix:{socket_path}"\nsocket_group = ""\n'
        '[pipeline]\nchecks = ["limits", "headers", "size", "tests.plugins:SpinCheck", '
        '"tests.plugins:HoldCheck"]\nworkers = 4\nmax_workers = 4\nbudget = 90.0\n'
        'heavy_cpu_seconds = 0.2\n[quarantine]\nurl = ""\n[metrics]\nlisten = ""\n'),
        env={"PYTHONPATH": str(PROJECT_ROOT)})
    with milter, ThreadPoolExecutor(3) as threads:
        for index, ip in enumerate(ATTACKERS):  # costly from now on
            # (a worker's first message is not judged: it loads what the checks need)
            for _ in range(5):
                outcome = Session(socket_path, ip).deliver(crafted("SPIN-CPU: 0.3", index),
                                                           index)
                assert outcome.action == "accept", milter.log()[-2000:]
                if f"client {client_of(ip)}: message" in milter.log():
                    break
            else:
                raise AssertionError(f"{ip} not costly: {milter.log()[-2000:]}")
        in_flight = []
        for index in range(3):
            session = Session(socket_path, ATTACKERS[index % 2])
            in_flight.append(threads.submit(session.deliver,
                                            crafted(f"HOLD: {hold}", 10 + index), 10 + index))
            wait_until(lambda count=index + 1: len(list(hold.glob("running.*"))) == count,
                       timeout=60, what=f"crafted message {index + 1} in a worker")
        large = Session(socket_path, LEGIT_IP).deliver(legitimate(300 * 1024), 20)
        assert large.action == "accept", milter.log()[-2000:]
        small = Session(socket_path, LEGIT_IP).deliver(legitimate(2 * 1024, 1), 21)
        assert small.action == "accept"
        assert not any(future.done() for future in in_flight)
        (hold / "open").touch()
        assert [f.result(timeout=120).action for f in in_flight] == ["accept"] * 3

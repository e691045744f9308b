"""Rate limits: the buckets on a clock the test moves, leases, the database
away, the door's answers at RCPT, and three nodes on one PostgreSQL held
to the bound gateway.ratelimit promises."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gateway import ratelimit
from gateway.config import RateLimitSection, parse_config
from gateway.door import Door, Visit
from gateway.lab.milter_process import MilterProcess
from gateway.message import Envelope
from gateway.policy import Judge
from gateway.quarantine.store import QuarantineStore
from gateway.ratelimit import LEASE_SECONDS, BucketStore, Limit, RateLimiter
from gateway.ruleset import load_rules
from gateway.schema import ConfigError
from gateway.verdict import PipelineResult
from tests.helpers import PROJECT_ROOT
from tests.milterclient import MilterClient

START = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def limit(rate: str = "10/hour", burst: int = 0, key: str = "client_ip",
          action: str = "tempfail", name: str = "per_ip") -> Limit:
    return Limit.of(RateLimitSection(name=name, key=key, rate=rate, burst=burst,
                                     action=action))  # type: ignore[arg-type]


@pytest.fixture
def store(tmp_path: Path):
    opened = QuarantineStore(f"sqlite:///{tmp_path}/store.db", node="node-a")
    yield opened
    opened.close()


def test_limits_are_read_with_their_names_and_checked():
    config = parse_config('[[ratelimit]]\nname = "per_ip"\nkey = "client_ip"\n'
                          'rate = "100/hour"\nburst = 20\n'
                          '[[ratelimit]]\nname = "per_rcpt"\nkey = "recipient"\n'
                          'rate = "30/minute"\naction = "score"\n', "gateway.toml")
    per_ip, per_rcpt = (Limit.of(s) for s in config.ratelimit)
    assert (per_ip.count, per_ip.period, per_ip.burst, per_ip.action) == (100, 3600, 20,
                                                                          "tempfail")
    assert (per_rcpt.burst, per_rcpt.per_second, per_rcpt.action) == (30, 0.5, "score")
    with pytest.raises(ConfigError) as caught:
        parse_config('[[ratelimit]]\nname = "x"\nkey = "helo"\nrate = "many"\n'
                     '[[ratelimit]]\nrate = "1/day"\n[[ratelimit]]\nname = "x"\n'
                     'rate = "1/fortnight"\n', "gateway.toml")
    problems = "\n".join(caught.value.problems)
    assert "ratelimit[0].key: expected one of 'client_ip'" in problems
    assert "ratelimit[0].rate: expected a rate such as \"100/hour\"" in problems
    assert "ratelimit[1].name: every limit needs one" in problems
    assert "ratelimit[2].rate: expected a rate" in problems


def test_a_bucket_holds_its_burst_and_refills_at_its_rate(store):
    clock = Clock()
    buckets = BucketStore(store.engine, clock)
    per_ip = limit("60/hour", burst=3)
    assert [buckets.take(per_ip, "203.0.113.7", 1) for _ in range(4)] == [1, 1, 1, 0]
    clock.advance(59)
    assert buckets.take(per_ip, "203.0.113.7", 1) == 0
    clock.advance(1)  # one a minute
    assert buckets.take(per_ip, "203.0.113.7", 5) == 1
    clock.advance(3600)  # never more than the burst
    assert buckets.take(per_ip, "203.0.113.7", 10) == 3
    assert buckets.take(per_ip, "198.51.100.1", 10) == 3  # a bucket per key
    (row,) = buckets.rows()[:1]
    assert (row["key"], row["refused"]) == ("203.0.113.7", 2)


def test_a_node_takes_tokens_in_leases_and_gives_back_what_it_did_not_spend(store):
    clock = Clock()
    buckets = BucketStore(store.engine, clock)
    per_ip = limit("100/hour", burst=100)  # leases of 10
    seconds = [0.0]
    node = RateLimiter([per_ip], lambda: buckets, monotonic=lambda: seconds[0])
    assert all(node.admit(per_ip, "203.0.113.7") for _ in range(3))
    (row,) = buckets.rows()
    assert (row["taken"], round(row["level"])) == (10, 90)  # one lease, three spent
    seconds[0] = LEASE_SECONDS
    assert node.return_idle(LEASE_SECONDS) == 7
    (row,) = buckets.rows()
    assert (row["taken"], round(row["level"])) == (3, 97)
    node.close()


def test_without_its_database_a_node_counts_alone(store, caplog):
    per_ip = limit("10/hour", burst=2)
    node = RateLimiter([per_ip], lambda: None)
    before = ratelimit.counts().get(("per_ip", "local"), 0)
    assert [node.admit(per_ip, "203.0.113.7") for _ in range(3)] == [True, True, False]
    assert ratelimit.counts()[("per_ip", "local")] == before + 3
    assert "counted on this node alone" in caplog.text
    node.close()


# -- the door at RCPT ---------------------------------------------------------------------


def door_for(tmp_path: Path, limits: str, clock: Clock) -> Door:
    config = parse_config(f'[quarantine]\nurl = "sqlite:///{tmp_path}/store.db"\n' + limits,
                          "test.toml")
    return Door(config, clock=clock)


def test_over_a_tempfail_limit_every_recipient_of_the_message_gets_451(tmp_path: Path):
    door = door_for(tmp_path, '[[ratelimit]]\nname = "per_sender"\nkey = "sender_domain"\n'
                    'rate = "2/hour"\n', Clock())
    envelope = Envelope(mail_from="news@bulk.example", client_ip="203.0.113.7")
    before = ratelimit.counts().get(("per_sender", "tempfail"), 0)
    try:
        for _ in range(2):  # two messages of two recipients: one token each
            visit = Visit()
            assert door.rcpt(visit, envelope, "a@example.net") is None
            assert door.rcpt(visit, envelope, "b@example.net") is None
        visit = Visit()
        reply = door.rcpt(visit, envelope, "a@example.net")
        assert reply is not None and str(reply).startswith(
            "451 4.7.1 Too much mail from your domain right now, please try again later (ref ")
        assert "per_sender" not in str(reply) and "2/hour" not in str(reply)  # public words
        assert door.rcpt(visit, envelope, "b@example.net") == reply
        visit.new_message()
        assert door.rcpt(visit, Envelope(mail_from="x@other.example"), "a@example.net") \
            is None
    finally:
        door.close()
    assert ratelimit.counts()[("per_sender", "tempfail")] == before + 1


def test_a_recipient_limit_refuses_that_recipient_only(tmp_path: Path):
    door = door_for(tmp_path, '[[ratelimit]]\nname = "per_rcpt"\nkey = "recipient"\n'
                    'rate = "1/hour"\n', Clock())
    envelope = Envelope(mail_from="bob@example.org", client_ip="203.0.113.7")
    try:
        visit = Visit()
        assert door.rcpt(visit, envelope, "a@example.net") is None
        assert door.rcpt(visit, envelope, "b@example.net") is None
        visit.new_message()
        reply = door.rcpt(visit, envelope, "A@example.net")
        assert reply is not None and "to this recipient" in str(reply)
        assert door.rcpt(visit, envelope, "c@example.net") is None
    finally:
        door.close()


@pytest.mark.parametrize("action, symbol, verdict_action", [
    ("score", "RATELIMITED", "accept"),
    ("quarantine", "RATELIMITED_QUARANTINE", "quarantine"),
])
def test_score_and_quarantine_limits_let_the_message_in_with_their_symbol(
        tmp_path: Path, action: str, symbol: str, verdict_action: str):
    config = parse_config(f'[quarantine]\nurl = "sqlite:///{tmp_path}/store.db"\n'
                          f'[[ratelimit]]\nname = "per_net"\nkey = "client_net"\n'
                          f'rate = "1/hour"\naction = "{action}"\n', "test.toml")
    door = Door(config, clock=Clock())
    try:
        visit = Visit()
        envelope = Envelope(mail_from="bob@example.org", client_ip="203.0.113.7")
        assert door.rcpt(visit, envelope, "a@example.net") is None
        visit.new_message()
        neighbour = Envelope(mail_from="bob@example.org", client_ip="203.0.113.99")
        assert door.rcpt(visit, neighbour, "a@example.net") is None
        (found,) = visit.symbols
        assert found.name == symbol and "client_net 203.0.113.0/24" in found.evidence
    finally:
        door.close()
    # Scored and forced like any symbol, under the default rules.
    verdict = Judge(config, [], load_rules(config.policy.rules)).verdict(
        PipelineResult((), ()), Envelope(rcpt_to=("a@example.net",),
                                         stage_symbols=tuple(visit.symbols)))
    assert verdict.action == verdict_action
    assert symbol in {s.name for s in verdict.symbols}
    assert verdict.score == (3.0 if action == "score" else 0.0)


# -- three nodes on one PostgreSQL -------------------------------------------------------


def node_config(directory: Path, url: str, name: str) -> str:
    return (f'[milter]\nsocket = "unix:{directory / "milter.sock"}"\nsocket_mode = "666"\n'
            '[pipeline]\nchecks = ["headers", "size"]\nworkers = 0\n'
            f'[quarantine]\nurl = "{url}"\nnode = "{name}"\n[metrics]\nlisten = ""\n'
            '[[ratelimit]]\nname = "per_ip"\nkey = "client_ip"\nrate = "10/hour"\n'
            'burst = 10\n')


MESSAGE = (b"From: Bob <bob@example.org>\r\nTo: alice@example.net\r\nSubject: hello\r\n"
           b"Date: Tue, 01 Dec 2026 09:00:00 +0000\r\nMessage-ID: <1@example.org>\r\n\r\n"
           b"Hello Alice.\r\n")


@pytest.mark.slow
def test_three_nodes_hold_a_burst_to_the_promised_bound(tmp_path: Path, postgres):
    """45 messages from one client at once, 15 to each of three nodes,
    against 10/hour with a burst of 10: the nodes together let in at most
    burst + rate x (t + LEASE_SECONDS), here 10, however the burst lands."""
    nodes = []
    for name in ("node-a", "node-b", "node-c"):
        directory = tmp_path / name
        nodes.append(MilterProcess(directory, node_config(directory, postgres.url, name),
                                   env={"PYTHONPATH": str(PROJECT_ROOT)}).start())
    answers: list[str] = []
    lock = threading.Lock()
    started = time.monotonic()

    def burst(node: MilterProcess, index: int) -> None:
        client = MilterClient(str(node.socket_path))
        client.connect("[203.0.113.7]", "203.0.113.7")
        client.helo("client.example")
        for number in range(5):
            outcome = client.message("bob@example.org", ["alice@example.net"], MESSAGE,
                                     queue_id=f"Q{index}{number}")
            with lock:
                answers.append(outcome.action if not outcome.reply else outcome.reply[:3])
        client.quit()

    try:
        threads = [threading.Thread(target=burst, args=(node, n * 3 + k))
                   for n, node in enumerate(nodes) for k in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        elapsed = time.monotonic() - started
    finally:
        for node in nodes:
            node.stop()
    admitted = answers.count("accept")
    bound = int(10 + 10 / 3600 * (elapsed + LEASE_SECONDS))
    assert len(answers) == 45
    assert admitted == bound == 10, answers
    assert answers.count("451") + answers.count("tempfail") == 35


def test_ratelimit_show_lists_the_limits_and_their_busiest_buckets(tmp_path: Path, store,
                                                                    capsys):
    from gateway.cli import main

    config = tmp_path / "gateway.toml"
    config.write_text(f'[quarantine]\nurl = "sqlite:///{tmp_path}/store.db"\n'
                      '[[ratelimit]]\nname = "per_ip"\nkey = "client_ip"\nrate = "2/day"\n')
    per_ip = limit("2/day", name="per_ip")
    buckets = BucketStore(store.engine)
    for _ in range(3):
        buckets.take(per_ip, "203.0.113.7", 1)
    assert main(["ratelimit", "show", "--config", str(config)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "per_ip: client_ip at most 2/day, burst 2, then tempfail"
    assert out[1].split()[:7] == ["203.0.113.7", "0", "left", "2", "taken", "1", "refused"]
    assert main(["ratelimit", "show", "per_net", "--config", str(config)]) == 2
    assert "no limit 'per_net' (per_ip)" in capsys.readouterr().err

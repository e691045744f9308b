"""Greylisting: the triplet's parts, the state in the database on a clock
the test moves, and the door at RCPT and after DATA with real DNS (knotd)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gateway import door as door_module
from gateway.config import GreylistSection, parse_config
from gateway.decider import Decider
from gateway.door import Door, Visit
from gateway.greylist import (
    GreylistStore,
    Triplet,
    client_key,
    client_network,
    dynamic_name,
    normalise_sender,
)
from gateway.message import Envelope, RawContent
from gateway.policy import Policy
from gateway.quarantine.store import QuarantineStore
from gateway.ruleset import Ruleset
from gateway.symbols import Symbol
from gateway.verdict import PipelineResult, Verdict
from tests.authlab import GOOD_IP
from tests.helpers import dns_config

START = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


# -- the triplet's parts ------------------------------------------------------------------------


@pytest.mark.parametrize("sender, normal", [
    ("Alice@Example.ORG", "alice@example.org"),
    ("prvs=0123abcdef=bob@example.org", "bob@example.org"),
    ("btv1==123abc==bob@example.org", "bob@example.org"),
    ("SRS0=HHH=TT=orig.example=alice@forwarder.example", "alice@orig.example"),
    ("SRS1=HHH=fwd1.example==HHH=TT=orig.example=alice@fwd2.example", "alice@orig.example"),
    ("list-bounces+bob=example.net@lists.example.org", "list-bounces@lists.example.org"),
    ("bounce-bob=example.net@mailer.example", "bounce@mailer.example"),
    ("bounce-12345-678901@mailer.example", "bounce-#-#@mailer.example"),
    ("msg-1a2b3c4d5e6f@mailer.example", "msg-#@mailer.example"),
    ("", ""),
])
def test_the_envelope_sender_loses_its_per_message_tags(sender: str, normal: str):
    assert normalise_sender(sender) == normal


def test_a_client_is_its_network_or_the_spf_authorised_domain():
    settings = GreylistSection()
    assert client_network("198.51.100.77") == "198.51.100.0/24"
    assert client_network("2001:db8:1:2:3:4:5:6") == "2001:db8:1:2::/64"
    assert client_network("::ffff:198.51.100.77") == "198.51.100.0/24"
    assert client_network("not an address") is None
    assert client_key("198.51.100.77", None, settings) == \
        client_key("198.51.100.200", None, settings) == "net:198.51.100.0/24"
    assert client_key("198.51.100.77", "Example.ORG", settings) == "spf:example.org"
    assert client_key("203.0.113.5", "example.org", settings) == "spf:example.org"
    wider = GreylistSection(ipv4_prefix=16)
    assert client_key("198.51.100.77", None, wider) == "net:198.51.0.0/16"


@pytest.mark.parametrize("name, ip, dynamic", [
    ("203-0-113-7.dsl.example.net", "203.0.113.7", True),
    ("7.113.0.203.broadband.example.net", "203.0.113.7", True),
    ("cpe-198-51-100-7.example.com", "198.51.100.7", True),
    ("dhcp-113-7.pool.example.net", "203.0.113.7", True),
    ("cb007107.example.net", "203.0.113.7", True),  # the address in hex
    ("ppp12.dialup.example.net", "203.0.113.7", True),
    ("mail.example.org", "203.0.113.7", False),
    ("mx1.mail.example.com", "203.0.113.7", False),
    ("smtp-out-7.example.com", "203.0.113.7", False),
])
def test_dynamic_looking_names(name: str, ip: str, dynamic: bool):
    assert dynamic_name(name, ip) is dynamic


# -- the state ------------------------------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path):
    opened = QuarantineStore(f"sqlite:///{tmp_path}/store.db", node="node-a")
    yield opened
    opened.close()


def greylist_store(store: QuarantineStore, clock: Clock, **settings) -> GreylistStore:
    section = GreylistSection(enabled=True, delay="5m", remember="35d", retry_window="2d",
                              **settings)
    return GreylistStore(store.engine, section, "node-a", clock)


def test_a_triplet_passes_on_a_retry_after_the_delay_and_is_then_remembered(store):
    clock = Clock()
    greylist = greylist_store(store, clock)
    triplet = Triplet.of("net:203.0.113.0/24", "prvs=1234abcd=bob@example.org",
                         "Alice@Example.NET")
    (first,) = greylist.check([triplet], "203.0.113.7", "no valid reverse DNS")
    assert (first.result, first.wait) == ("greylisted", 300.0)
    clock.advance(120)  # too early: still greylisted, with the time left
    (early,) = greylist.check([triplet], "203.0.113.8", "no valid reverse DNS")
    assert (early.result, early.wait) == ("greylisted", 180.0)
    clock.advance(180)
    (retry,) = greylist.check([Triplet.of("net:203.0.113.0/24", "prvs=99ffee00=bob@example.org",
                                          "alice@example.net")], "203.0.113.9", "")
    assert retry.result == "passed"
    clock.advance(30 * 86400)  # within remember: through at once, and renewed
    (later,) = greylist.check([triplet], "203.0.113.9", "")
    assert later.result == "known"
    clock.advance(34 * 86400)
    assert greylist.check([triplet], None, "")[0].result == "known"
    (entry,) = greylist.entries()
    assert (entry.attempts, entry.messages, entry.sender, entry.recipient) == (
        2, 3, "bob@example.org", "alice@example.net")
    clock.advance(36 * 86400)  # forgotten: a first attempt again
    assert greylist.check([triplet], None, "again")[0].result == "greylisted"


def test_a_first_attempt_not_retried_within_the_window_is_forgotten(store):
    clock = Clock()
    greylist = greylist_store(store, clock)
    triplet = Triplet.of("net:203.0.113.0/24", "bob@example.org", "alice@example.net")
    greylist.check([triplet], None, "")
    clock.advance(3 * 86400)
    assert greylist.entries() == []
    assert greylist.check([triplet], None, "")[0].result == "greylisted"
    assert greylist.purge() == 0  # the new row is not expired
    clock.advance(3 * 86400)
    assert greylist.purge() == 1


def test_pass_now_and_forget(store):
    clock = Clock()
    greylist = greylist_store(store, clock)
    one = Triplet.of("net:203.0.113.0/24", "bob@example.org", "alice@example.net")
    two = Triplet.of("spf:spam.example", "x@spam.example", "carol@example.net")
    greylist.check([one, two], "203.0.113.7", "listed in ZEN")
    assert greylist.count_pending() == 2
    passed = greylist.pass_matching("alice@")
    assert [e.sender for e in passed] == ["bob@example.org"]
    assert greylist.check([one], None, "")[0].result == "known"  # no wait at all
    assert greylist.count_pending() == 1
    assert greylist.forget("spam.example") == 1
    assert greylist.entries() == [greylist.entries()[0]] and greylist.count_pending() == 0


# -- the door -----------------------------------------------------------------------------------


def door_config(tmp_path: Path, knot, extra: str = "") -> str:
    return (f'[quarantine]\nurl = "sqlite:///{tmp_path}/store.db"\nnode = "node-a"\n'
            '[greylist]\nenabled = true\ndelay = "5m"\n' + extra + dns_config(knot))


@pytest.fixture
def make_door(tmp_path: Path, knot):
    made: list[Door] = []

    def make(extra: str = "", lists: str = "", clock: Clock | None = None) -> Door:
        config = parse_config(door_config(tmp_path, knot, extra) + lists, "test.toml")
        door = Door(config, clock=clock or Clock())
        made.append(door)
        return door

    yield make
    for door in made:
        door.close()


def rcpt(door: Door, ip: str, sender: str = "bob@example.org",
         recipient: str = "alice@example.net", visit: Visit | None = None,
         macros: dict[str, str] | None = None) -> str | None:
    envelope = Envelope(mail_from=sender, client_ip=ip, helo="client.example",
                        macros=macros or {})
    reply = door.rcpt(visit or Visit(), envelope, recipient)
    return None if reply is None else str(reply)


def test_an_rdns_less_client_is_greylisted_and_its_neighbour_passes_after_the_delay(
        make_door, caplog):
    clock = Clock()
    door = make_door(clock=clock)
    before = door_module.counts()
    caplog.set_level("INFO", logger="gateway.message")
    reply = rcpt(door, "127.0.0.2")  # no PTR in the test zones
    assert reply is not None and reply.startswith("451 4.7.1 Greylisted")
    assert "ref " in reply
    (line,) = [r.getMessage() for r in caplog.records if "GREYLISTED" in r.getMessage()]
    assert '"stage":"rcpt"' in line and "no valid reverse DNS" in line
    clock.advance(299)
    assert rcpt(door, "127.0.0.3") is not None
    clock.advance(1)
    assert rcpt(door, "127.0.0.3") is None  # another host of the same /24, after the delay
    assert rcpt(door, "127.0.0.4") is None  # remembered
    after = door_module.counts()
    assert after[("greylist", "greylisted")] - before.get(("greylist", "greylisted"), 0) == 2
    assert after[("greylist", "passed")] - before.get(("greylist", "passed"), 0) == 1


def test_clients_with_confirmed_reverse_dns_are_not_greylisted(make_door):
    door = make_door()
    assert rcpt(door, GOOD_IP) is None  # mail.good.test, forward-confirmed
    assert rcpt(door, "127.0.0.1") is None  # localhost.good.test
    assert rcpt(door, "198.51.100.20") is not None  # a PTR that does not point back


def test_allow_lists_exempt_senders_and_logged_in_clients_are_never_greylisted(make_door):
    door = make_door(extra='exempt_senders = ["codes.example.com"]\n',
                     lists='[lists]\nallow_ips = ["127.0.0.9"]\nallow_senders = ["@ok.example"]\n')
    assert rcpt(door, "127.0.0.9") is None
    assert rcpt(door, "127.0.0.2", sender="carol@ok.example") is None
    assert rcpt(door, "127.0.0.2", sender="login@mail.codes.example.com") is None
    assert rcpt(door, "127.0.0.2", macros={"auth_authen": "bob"}) is None
    assert rcpt(door, "127.0.0.2", sender="carol@other.example") is not None


def test_a_sender_with_dkim_authenticated_history_is_not_delayed(make_door):
    door = make_door()
    door.history.write("example.org", "127.0.0.0/24")  # accepted DKIM-aligned mail before
    assert rcpt(door, "127.0.0.2", sender="news@mail.example.org") is None
    # The same domain forged from a network it never came from, without SPF: greylisted.
    assert rcpt(door, "198.51.100.20", sender="news@example.org") is not None


def test_a_door_without_its_database_lets_mail_through_and_counts_it(tmp_path: Path, knot):
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    config = parse_config(
        f'[quarantine]\nurl = "sqlite:///{blocked}/store.db"\n[greylist]\nenabled = true\n'
        + dns_config(knot), "test.toml")
    door = Door(config)
    before = door_module.counts().get(("greylist", "failopen"), 0)
    try:
        assert rcpt(door, "127.0.0.2") is None
    finally:
        door.close()
    assert door_module.counts()[("greylist", "failopen")] == before + 1


def test_the_client_is_looked_up_once_per_connection(make_door, caplog):
    door = make_door()
    visit = Visit()
    caplog.set_level("DEBUG")
    assert rcpt(door, "127.0.0.2", recipient="a@example.net", visit=visit) is not None
    assert visit.suspicion == ("no valid reverse DNS",)
    visit.suspicion = (None,)  # what the connection found stands for its other recipients
    assert rcpt(door, "127.0.0.2", recipient="b@example.net", visit=visit) is None


# -- after DATA: the policy's greylist band -------------------------------------------------------


def test_the_policy_marks_the_greylist_band_below_quarantine():
    policy = Policy(Ruleset(add_header=4.0, greylist=5.0, quarantine=6.0))

    def judged(score: float, forced: bool = False) -> Verdict:
        symbols = (Symbol("A", score),)
        rules = Policy(Ruleset(add_header=4.0, greylist=5.0, quarantine=6.0,
                             force={"A": "add_header"})) if forced else policy
        return rules.decide(PipelineResult(symbols, ()), recipients=("a@example.net",))

    assert [(v.action, v.greylist) for v in map(judged, (4.9, 5.0, 5.9, 6.0))] == [
        ("add_header", False), ("add_header", True), ("add_header", True),
        ("quarantine", False)]
    assert judged(5.5, forced=True).greylist is False  # a forced action is never delayed


class _Fixed:
    store_free = True

    def __init__(self, verdict: Verdict):
        self.verdict = verdict

    def evaluate(self, envelope: Envelope, raw: RawContent) -> Verdict:
        return self.verdict

    def close(self) -> None:
        pass


def test_mail_in_the_band_is_greylisted_after_data_then_delivered_on_the_retry(make_door):
    clock = Clock()
    door = make_door(clock=clock)
    verdict = Policy(Ruleset(add_header=4.0, greylist=5.0, quarantine=6.0)).decide(
        PipelineResult((Symbol("A", 5.5),), ()), recipients=("a@example.net",))
    decider = Decider(_Fixed(verdict), None, door=door)  # type: ignore[arg-type]
    envelope = Envelope(mail_from="bob@example.org", rcpt_to=("a@example.net",),
                        client_ip=GOOD_IP, queue_id="4AB12")
    raw = RawContent(data=b"Subject: x\r\n\r\nbody\r\n")
    try:
        first = decider.decide(envelope, raw)
        assert first.outcome == "tempfail"
        assert "GREYLISTED" in {s.name for s in first.verdict.symbols}
        assert first.reply is not None and str(first.reply).startswith("451 4.7.1 Greylisted")
        assert "(ref 4AB12)" in str(first.reply)
        clock.advance(301)
        retry = decider.decide(envelope, raw)
        assert (retry.outcome, retry.verdict.action) == ("accept", "add_header")
    finally:
        decider.close()


def test_without_greylisting_the_band_changes_nothing(tmp_path: Path):
    verdict = Policy(Ruleset(add_header=4.0, greylist=5.0, quarantine=6.0)).decide(
        PipelineResult((Symbol("A", 5.5),), ()), recipients=("a@example.net",))
    decider = Decider(_Fixed(verdict), None)  # type: ignore[arg-type]
    try:
        decision = decider.decide(Envelope(rcpt_to=("a@example.net",)),
                                  RawContent(data=b"\r\n"))
    finally:
        decider.close()
    assert (decision.outcome, decision.verdict.action) == ("accept", "add_header")


# -- gateway greylist ---------------------------------------------------------------------------


def test_greylist_show_pass_and_forget(tmp_path: Path, store, capsys):
    from gateway.cli import main

    config = tmp_path / "gateway.toml"
    config.write_text(f'[quarantine]\nurl = "sqlite:///{tmp_path}/store.db"\n'
                      '[greylist]\nenabled = true\n')
    greylist = greylist_store(store, Clock())
    greylist.clock = lambda: datetime.now(UTC)
    greylist.check([Triplet.of("net:203.0.113.0/24", "bob@example.org", "alice@example.net"),
                    Triplet.of("net:203.0.113.0/24", "bob@example.org", "carol@example.net")],
                   "203.0.113.7", "no valid reverse DNS")
    assert main(["greylist", "show", "--pending", "--config", str(config)]) == 0
    shown = capsys.readouterr().out.splitlines()
    assert len(shown) == 2 and all(line.startswith("pending") for line in shown)
    assert "net:203.0.113.0/24 bob@example.org -> alice@example.net" in shown[0] + shown[1]
    assert "no valid reverse DNS" in shown[0]
    assert main(["greylist", "pass", "alice@", "--config", str(config)]) == 0
    assert "1 pending triplet passed" in capsys.readouterr().out
    assert main(["greylist", "show", "--json", "--config", str(config)]) == 0
    import json

    states = {e["recipient"]: e["state"] for e in json.loads(capsys.readouterr().out)}
    assert states == {"alice@example.net": "passed", "carol@example.net": "pending"}
    assert main(["greylist", "forget", "carol@", "--config", str(config)]) == 0
    assert main(["greylist", "pass", "nobody@", "--config", str(config)]) == 1
    assert "0 pending triplets passed" in capsys.readouterr().out


# -- through Postfix, with a real retrying client -------------------------------------------------
#
# The sending side is a Postfix of its own (the "upstream") relaying to the
# gateway's Postfix from 127.0.0.2, an address without reverse DNS in the
# test zones: it queues what it is refused with a 4xx and retries on
# `postfix flush`, from the address it is then told to bind to.

GREYLIST_CHECKS = ('[pipeline]\nchecks = ["headers", "size", "lists", "spf", "dkim", "dmarc"]\n'
                   'workers = 0\n[greylist]\nenabled = true\ndelay = "2s"\n')


def upstream_postfix(lab_dir: Path, name: str, relay_port: int, bind: str):
    from gateway.lab.postfix import PostfixInstance

    instance = PostfixInstance(lab_dir / name, relay_port=relay_port,
                               settings={"smtp_bind_address": bind})
    instance.start()
    return instance


def rebind(upstream, address: str, relay_port: int | None = None) -> None:
    """Another host of the sender's pool (and, given a port, another gateway)."""
    import subprocess

    upstream.settings["smtp_bind_address"] = address
    if relay_port is not None:
        upstream.relay_port = relay_port
    upstream.write_config()
    subprocess.run(["postfix", "-c", str(upstream.config_dir), "reload"], check=True,
                   capture_output=True, timeout=60)


def greylisted_in(upstream, marker: str) -> bool:
    return any("status=deferred" in line and "451 4.7.1 Greylisted" in line
               for line in upstream.log_text().splitlines()) and marker != ""


def note(tag: str, sender: str = "bob@example.org") -> bytes:
    return (f"From: Bob <{sender}>\r\nTo: alice@example.net\r\nSubject: minutes {tag}\r\n"
            f"Date: Tue, 01 Dec 2026 09:00:00 +0000\r\nMessage-ID: <{tag}@example.org>\r\n\r\n"
            f"The minutes of Tuesday's meeting, {tag}.\r\n").encode()


def pending_for(url: str, recipient: str) -> list:
    from sqlalchemy import create_engine, select

    from gateway.db import engine_url
    from gateway.quarantine.schema import greylist

    engine = create_engine(engine_url(url))
    try:
        with engine.connect() as connection:
            return list(connection.execute(select(greylist).where(
                greylist.c.recipient == recipient)))
    finally:
        engine.dispose()


def delay_passed(url: str, recipient: str, delay: float = 2.0) -> bool:
    """The database's record says the retry will be taken now."""
    rows = pending_for(url, recipient)
    return bool(rows) and all((datetime.now(UTC) - r.first_seen.replace(tzinfo=UTC))
                              .total_seconds() >= delay for r in rows)


def test_through_postfix_a_greylisted_sender_retries_from_its_pool_after_a_restart(
        lab_dir: Path, postfix, sink, knot, keys, gateway_milter, milter_store):
    from tests.authlab import sign
    from tests.helpers import send, wait_until

    url = milter_store
    config = GREYLIST_CHECKS + dns_config(knot)
    gateway_milter(config)
    upstream = upstream_postfix(lab_dir, "upstream-greylist", postfix.smtp_port, "127.0.0.2")
    try:
        # A first attempt from an unknown client without reverse DNS: 451 at RCPT.
        send(upstream, note("grey-1"), rcpt_to=("first@example.net",))
        wait_until(lambda: greylisted_in(upstream, "grey-1"), 30, "the upstream's deferral")
        assert sink.find("grey-1", timeout=0.5) is None
        (row,) = pending_for(url, "first@example.net")
        assert (row.client, row.client_ip, row.passed) == ("net:127.0.0.0/24", "127.0.0.2",
                                                          None)
        gateway_milter(config)  # a restart keeps the state: it is in the store
        wait_until(lambda: delay_passed(url, "first@example.net"), 30, "the delay")
        rebind(upstream, "127.0.0.3")  # the retry comes from another host of the /24
        upstream.flush()
        assert sink.find("grey-1", timeout=30) is not None
        (row,) = pending_for(url, "first@example.net")
        assert row.passed is not None and row.client_ip == "127.0.0.3"

        # A known-good sender: DKIM-aligned mail from good.test accepted before
        # (from 127.0.0.1, which has reverse DNS), then the same sender from the
        # unknown client is delivered at the first attempt.
        send(postfix, sign(note("known-1", "alice@good.test"), "good.test", "s2048", keys.rsa),
             mail_from="alice@good.test", rcpt_to=("second@example.net",))
        assert sink.find("known-1", timeout=30) is not None
        wait_until(lambda: _history(url, "good.test"), 10, "the sender history")
        rebind(upstream, "127.0.0.2")
        send(upstream, sign(note("known-2", "alice@good.test"), "good.test", "s2048",
                            keys.rsa), mail_from="alice@good.test",
             rcpt_to=("third@example.net",))
        assert sink.find("known-2", timeout=30) is not None
        assert pending_for(url, "third@example.net") == []  # never greylisted
    finally:
        upstream.stop()


def _history(url: str, domain: str) -> bool:
    from sqlalchemy import create_engine, select

    from gateway.db import engine_url
    from gateway.quarantine.schema import sender_history

    engine = create_engine(engine_url(url))
    try:
        with engine.connect() as connection:
            return connection.execute(select(sender_history).where(
                sender_history.c.domain == domain)).first() is not None
    finally:
        engine.dispose()


@pytest.mark.slow
@pytest.mark.postfix
def test_through_postfix_two_nodes_share_the_triplets(lab_dir: Path, sink, knot, postgres):
    import shutil

    if shutil.which("postfix") is None:
        pytest.skip("postfix is not installed (see .ci/run)")
    from gateway.lab.milter_process import MilterProcess
    from gateway.lab.postfix import PostfixInstance, free_port
    from tests.helpers import PROJECT_ROOT, send, wait_until

    nodes = []
    try:
        for name in ("grey-a", "grey-b"):
            directory = lab_dir / name
            milter = MilterProcess(directory, (
                f'[milter]\nsocket = "unix:{directory / "milter.sock"}"\nsocket_mode = "666"\n'
                + GREYLIST_CHECKS + dns_config(knot)
                + f'[quarantine]\nurl = "{postgres.url}"\nnode = "{name}"\n'
                '[metrics]\nlisten = ""\n'), env={"PYTHONPATH": str(PROJECT_ROOT)}).start()
            instance = PostfixInstance(lab_dir / f"postfix-{name}", relay_port=sink.port,
                                       milter=f"unix:{directory / 'milter.sock'}",
                                       reinject_port=free_port())
            nodes.append((milter, instance))
            instance.start()
        (_, node_a), (_, node_b) = nodes
        upstream = upstream_postfix(lab_dir, "upstream-two", node_a.smtp_port, "127.0.0.2")
        try:
            send(upstream, note("shared-1"), rcpt_to=("shared@example.net",))
            wait_until(lambda: greylisted_in(upstream, "shared-1"), 30, "node a's 451")
            (row,) = pending_for(postgres.url, "shared@example.net")
            assert row.node == "grey-a"
            wait_until(lambda: delay_passed(postgres.url, "shared@example.net"), 30,
                       "the delay")
            rebind(upstream, "127.0.0.3", relay_port=node_b.smtp_port)
            upstream.flush()
            assert sink.find("shared-1", timeout=30) is not None  # node b let the retry in
            assert "grey-b" not in {r.node for r in pending_for(postgres.url,
                                                                "shared@example.net")}
        finally:
            upstream.stop()
    finally:
        for milter, instance in nodes:
            instance.stop()
            milter.stop()


def test_a_known_correspondent_is_not_greylisted_after_data(make_door):
    clock = Clock()
    door = make_door(clock=clock)
    verdict = Policy(Ruleset(add_header=4.0, greylist=5.0, quarantine=6.0)).decide(
        PipelineResult((Symbol("A", 6.5), Symbol("KNOWN_CORRESPONDENT", -1.0)), ()),
        recipients=("a@example.net",))
    assert verdict.greylist
    envelope = Envelope(mail_from="bob@example.org", rcpt_to=("a@example.net",),
                        client_ip=GOOD_IP, queue_id="4AB13")
    assert door.after_data(envelope, verdict) is None


def test_a_known_correspondent_passing_spf_is_not_greylisted_at_rcpt(tmp_path: Path, make_door):
    from gateway.correspondents import Memory, Observation, now

    door = make_door(extra='[pipeline]\nchecks = ["lists", "spf", "identity"]\n')
    door._suspicion = lambda envelope: "suspicious for the test"  # type: ignore[method-assign]
    QuarantineStore(f"sqlite:///{tmp_path}/store.db").close()  # the schema
    memory = Memory.open(f"sqlite:///{tmp_path}/store.db")
    # alice wrote to bob@good.test before (our user's outbound mail): he is known to her.
    memory.add([Observation("bob@good.test", "good.test", "alice@example.net", "outbound",
                            now())])
    memory.close()
    # SPF passes for good.test from 127.0.0.1: the envelope sender is who it says.
    assert rcpt(door, "127.0.0.1", sender="bob@good.test",
                recipient="alice@example.net") is None
    assert rcpt(door, "127.0.0.1", sender="bob@good.test",
                recipient="carol@example.net") is not None  # not her correspondent
    assert rcpt(door, "127.0.0.1", sender="bob@other.example",
                recipient="alice@example.net") is not None


# -- the console's page -----------------------------------------------------------------------


def test_the_console_lists_pending_triplets_and_passes_one_at_once(tmp_path: Path):
    from tests.test_web import console_app, csrf_of, login

    app, store, console = console_app(tmp_path)
    try:
        greylist = GreylistStore(store.engine, GreylistSection(enabled=True), "node-a")
        greylist.check([Triplet.of("net:203.0.113.0/24", "bob@example.org", "alice@example.net"),
                        Triplet.of("spf:spam.example", "x@spam.example", "carol@example.net")],
                       "203.0.113.7", "no valid reverse DNS")
        client = app.test_client()
        login(client, "bob")  # an analyst may pass one, as they release mail
        page = client.get("/greylist").text
        assert "bob@example.org" in page and "x@spam.example" in page
        assert "no valid reverse DNS" in page
        assert "x@spam.example" not in client.get("/greylist?q=alice").text
        # The form needs its CSRF token.
        form = {"client": "net:203.0.113.0/24", "sender": "bob@example.org",
                "recipient": "alice@example.net"}
        assert client.post("/greylist/pass", data=form).status_code in (400, 403)
        response = client.post("/greylist/pass", data={**form, "csrf": csrf_of(client,
                                                                                 "/greylist")})
        assert response.status_code == 302
        assert greylist.check([Triplet.of(*form.values())], "203.0.113.9", "")[0].result == \
            "known"
        page = client.get("/greylist").text
        assert "the sender&#39;s next retry is accepted" in page
        assert 'value="alice@example.net"' not in page and 'value="carol@example.net"' in page
        (entry,) = [e for e in console.audit_trail(10, 0) if e["action"] == "greylist-pass"]
        assert entry["actor"] == "bob"
        assert "bob@example.org -> alice@example.net" in entry["target"]
    finally:
        app.extensions["gateway"]["renderer"].close()
        store.close()

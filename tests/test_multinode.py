"""Many gateway nodes, one system: three nodes, each a private Postfix with
its own milter, on one PostgreSQL, on loopback.

One setup serves the module (starting three nodes takes seconds): a model
promoted or rolled back from one node's CLI reaches the others; a list
entry added on one applies on another; mail held on one is released from
another; the purge runs once while the nodes race for it, and once more
when the node doing it is killed halfway; PostgreSQL stopped for 30 s
under mail through two nodes loses nothing, and the nodes recover alone.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import smtplib
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import and_, func, select, text, update

from gateway.classifier.store import ModelStore
from gateway.classifier.train import train
from gateway.db import now
from gateway.jobs import _lock_key
from gateway.lab.milter_process import MilterProcess
from gateway.lab.postfix import PostfixInstance, free_port
from gateway.message import Envelope, RawContent
from gateway.paths import DEFAULT_RULES
from gateway.quarantine.schema import events, job_runs, jobs, messages
from gateway.quarantine.store import QuarantineStore
from tests.helpers import FIXTURES, PROJECT_ROOT, send, wait_until
from tests.lab.postgres import PostgresInstance, postgres_bin
from tests.test_quarantine import verdict

pytestmark = pytest.mark.postfix

NAMES = ("node-a", "node-b", "node-c")
RELOAD_INTERVAL = 0.5
PURGE_INTERVAL = 2.0
# Subjects with this are held whatever the model says (a rule forces it).
HOLD_RULES = """
[rule.HOLD_ME]
type = "header"
header = "Subject"
pattern = 'hold-me'
score = 1.0
description = "test: hold this message"

[force]
HOLD_ME = "quarantine"
"""


@dataclass
class Node:
    name: str
    directory: Path
    milter: MilterProcess
    postfix: PostfixInstance
    metrics: int

    @property
    def config(self) -> Path:
        return self.milter.config_path

    def restart(self) -> None:
        self.milter = MilterProcess(self.directory, self.milter.config_text,
                                    env=self.milter.env).start()


@dataclass
class Cluster:
    postgres: PostgresInstance
    nodes: dict[str, Node]
    models: dict[str, Path]
    lab: Path

    def store(self) -> QuarantineStore:
        return QuarantineStore(self.postgres.url, node="test")

    def cli(self, node: str, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "gateway", *args, "--config", str(self.nodes[node].config)],
            capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=120,
            env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT),
                 "GATEWAY_MODEL_CACHE": str(self.lab / "cli-cache")})


def node_config(lab: Path, name: str, url: str, reinject: int, metrics: int) -> str:
    return (f'[milter]\nsocket = "unix:{lab / name / "milter.sock"}"\nsocket_mode = "666"\n'
            '[pipeline]\nchecks = ["headers", "size", "lists", "rules", "bayes"]\n'
            'workers = 1\n'
            f'[policy]\nrules = ["{DEFAULT_RULES}", "{lab / "hold.toml"}"]\n'
            f'[quarantine]\nurl = "{url}"\nnode = "{name}"\npurge_interval = {PURGE_INTERVAL}\n'
            f'[classifier]\nstore = "{url}"\nreload_interval = {RELOAD_INTERVAL}\n'
            '[lists]\nrefresh = 1.0\n'
            f'[release]\nsmtp = "127.0.0.1:{reinject}"\n'
            f'[metrics]\nlisten = "127.0.0.1:{metrics}"\n')


@pytest.fixture(scope="module")
def cluster(lab_dir: Path, sink) -> Iterator[Cluster]:
    if os.geteuid() != 0:
        pytest.skip("private Postfix and PostgreSQL instances need root")
    if shutil.which("postfix") is None or postgres_bin() is None:
        pytest.skip("postfix and PostgreSQL are needed (see .ci/run)")
    lab = lab_dir / "multinode"
    lab.mkdir()
    (lab / "hold.toml").write_text(HOLD_RULES)
    corpus = FIXTURES / "corpus"
    models = {}
    for kind, (ham, spam) in {"good": ("ham", "spam"), "inverted": ("spam", "ham")}.items():
        model, _ = train([corpus / ham], [corpus / spam], repeats=0, report=lambda _: None,
                         show_progress=False)
        model.save(lab / kind)
        models[kind] = lab / kind
    postgres = PostgresInstance(lab / "pg").start()
    # The good model is current before any node starts.
    os.environ["GATEWAY_MODEL_CACHE"] = str(lab / "test-cache")
    store = ModelStore(postgres.url)
    store.set_current(store.add(models["good"]), "promote", {"forced": True})
    nodes: dict[str, Node] = {}
    try:
        for name in NAMES:
            reinject, metrics = free_port(), free_port()
            directory = lab / name
            milter = MilterProcess(
                directory, node_config(lab, name, postgres.url, reinject, metrics),
                env={"PYTHONPATH": str(PROJECT_ROOT),
                     "GATEWAY_MODEL_CACHE": str(directory / "model-cache")}).start()
            instance = PostfixInstance(lab / f"postfix-{name}", relay_port=sink.port,
                                       milter=f"unix:{directory / 'milter.sock'}",
                                       reinject_port=reinject)
            instance.start()
            nodes[name] = Node(name, directory, milter, instance, metrics)
        yield Cluster(postgres, nodes, models, lab)
    finally:
        for node in nodes.values():
            node.postfix.stop()
            node.milter.stop()
        postgres.stop()
        os.environ.pop("GATEWAY_MODEL_CACHE", None)


def message(tag: str, subject: str = "hold-me") -> bytes:
    return (f"From: Alice <alice@example.org>\r\nTo: bob@example.net\r\n"
            f"Subject: {subject} minutes {tag}\r\nDate: Tue, 01 Dec 2026 09:00:00 +0000\r\n"
            f"Message-ID: <{tag}@example.org>\r\n\r\nDear Bob,\r\n\r\nthe minutes of "
            "Tuesday's meeting are attached; see you next week.\r\n\r\nAlice\r\n").encode()


def held(cluster: Cluster, tag: str) -> list:
    store = cluster.store()
    try:
        return store.find(f"<{tag}@example.org>")
    finally:
        store.close()


def model_of(cluster: Cluster, tag: str) -> str:
    """The model version the BAYES_* evidence of a held message names."""
    (record,) = held(cluster, tag)
    (bayes,) = [s for s in record.symbols if s["name"].startswith("BAYES_")]
    return re.search(r"model ([\w.-]+)", bayes["evidence"]).group(1)


def version(path: Path) -> str:
    return json.loads((path / "model.json").read_text())["version"]


def wait_for_model(cluster: Cluster, node: str, wanted: str, within: float) -> None:
    """Send held mail through ``node`` until its evidence names ``wanted``."""
    started = time.monotonic()
    while True:
        tag = uuid.uuid4().hex
        send(cluster.nodes[node].postfix, message(tag))
        if model_of(cluster, tag) == wanted:
            return
        assert time.monotonic() - started < within, f"{node} still not on {wanted}"
        time.sleep(0.1)


def test_a_promotion_and_a_rollback_from_one_node_reach_the_others(cluster: Cluster):
    good, inverted = version(cluster.models["good"]), version(cluster.models["inverted"])
    for name in ("node-b", "node-c"):
        tag = uuid.uuid4().hex
        send(cluster.nodes[name].postfix, message(tag))
        assert model_of(cluster, tag) == good

    promoted = cluster.cli("node-a", "model", "promote", str(cluster.models["inverted"]),
                           "--force")
    assert promoted.returncode == 0, promoted.stderr
    # Each node polls every reload_interval (0.5 s), fetches the 2 MB artifact
    # once, checks it and swaps it in: a few seconds on an idle machine (the
    # deadline is for a busy one: this is not a speed test).
    for name in ("node-b", "node-c"):
        wait_for_model(cluster, name, inverted, within=60)

    rolled = cluster.cli("node-a", "model", "rollback")
    assert rolled.returncode == 0, rolled.stderr
    assert f"model {good} is current again (was {inverted})" in rolled.stdout
    for name in ("node-b", "node-c"):
        wait_for_model(cluster, name, good, within=60)
    # The registry shows the model that scored each node's last message.
    listing = cluster.cli("node-a", "nodes", "--json")
    assert listing.returncode == 0, listing.stderr
    fleet = {n["name"]: n for n in json.loads(listing.stdout)["nodes"]}
    assert set(fleet) == set(NAMES)
    assert not any(n["stale"] for n in fleet.values())
    deadline = time.monotonic() + 60  # the next heartbeat carries it (every 10 s)
    while any(fleet[n]["model"] != good for n in ("node-b", "node-c")):
        assert time.monotonic() < deadline, fleet
        time.sleep(1)
        fleet = {n["name"]: n for n in json.loads(
            cluster.cli("node-a", "nodes", "--json").stdout)["nodes"]}
    history = ModelStore(cluster.postgres.url).history()
    assert [(e["action"], e["version"]) for e in history[-2:]] == [("promote", inverted),
                                                                   ("rollback", good)]


def test_a_list_entry_added_on_one_node_applies_on_another(cluster: Cluster):
    sender = f"pest-{uuid.uuid4().hex[:8]}@example.org"
    tag = uuid.uuid4().hex
    send(cluster.nodes["node-c"].postfix, message(tag, subject="plain"), mail_from=sender)
    added = cluster.cli("node-b", "list", "add", "block-sender", sender, "--reason", "test")
    assert added.returncode == 0, added.stderr
    deadline = time.monotonic() + 60  # [lists] refresh = 1 s
    while True:
        try:
            send(cluster.nodes["node-c"].postfix, message(uuid.uuid4().hex, subject="plain"),
                 mail_from=sender)
        except smtplib.SMTPDataError as refused:
            assert refused.smtp_code == 550, refused
            break
        assert time.monotonic() < deadline, "node-c never applied node-b's entry"
        time.sleep(0.3)


def test_a_message_held_on_one_node_is_released_from_another(cluster: Cluster, sink):
    tag = uuid.uuid4().hex
    send(cluster.nodes["node-c"].postfix, message(tag))
    (record,) = held(cluster, tag)
    assert record.node == "node-c" and record.state == "held"
    released = cluster.cli("node-a", "quarantine", "release", record.id)
    assert released.returncode == 0, released.stderr
    delivery = sink.find(tag)
    assert delivery is not None and delivery.rcpt_to == ("rcpt@example.net",)
    (after,) = held(cluster, tag)
    assert after.state == "released"


def stale_messages(cluster: Cluster, count: int) -> list[str]:
    """Held mail 40 days old, all at once: the next purge expires it."""
    store = cluster.store()
    try:
        envelope = Envelope(mail_from="old@example.org", rcpt_to=("bob@example.net",),
                            client_ip="198.51.100.7", helo="mail.example.org")
        ids = [store.put(envelope, RawContent(data=message(uuid.uuid4().hex)),
                         verdict("OLD_MARKER")) for _ in range(count)]
        with store.engine.begin() as connection:
            connection.execute(update(messages).where(messages.c.id.in_(ids)).values(
                created=now() - timedelta(days=40)))
        return ids
    finally:
        store.close()


def expiries(cluster: Cluster, ids: list[str]) -> dict[str, int]:
    """How often each message was expired (its history's 'expired' lines)."""
    store = cluster.store()
    try:
        with store.engine.connect() as connection:
            counted = dict(connection.execute(
                select(events.c.message, func.count()).where(and_(
                    events.c.message.in_(ids), events.c.action == "expired"))
                .group_by(events.c.message)).all())
    finally:
        store.close()
    return {i: counted.get(i, 0) for i in ids}


def purges_that_expired(cluster: Cluster) -> list[tuple[str, str, int]]:
    store = cluster.store()
    try:
        with store.engine.connect() as connection:
            rows = connection.execute(select(job_runs).where(
                job_runs.c.job == "quarantine-purge")).all()
    finally:
        store.close()
    return [(r.period, r.node, json.loads(r.result)["expired"]) for r in rows
            if json.loads(r.result)["expired"]]


def wait_until_expired(cluster: Cluster, ids: list[str], within: float) -> dict[str, int]:
    deadline = time.monotonic() + within
    while True:
        counts = expiries(cluster, ids)
        if all(counts.values()) or time.monotonic() > deadline:
            return counts
        time.sleep(0.2)


def test_the_purge_runs_once_while_three_nodes_race_for_it(cluster: Cluster):
    before = purges_that_expired(cluster)
    ids = stale_messages(cluster, 100)
    # Every node tries at each 2 s period's start; one gets it.
    counts = wait_until_expired(cluster, ids, within=3 * PURGE_INTERVAL + 60)
    assert set(counts.values()) == {1}, counts
    new = [p for p in purges_that_expired(cluster) if p not in before]
    assert len(new) == 1 and new[0][2] == 100, new
    assert new[0][1] in NAMES


def test_a_node_killed_during_the_purge_leaves_it_to_another_once(cluster: Cluster):
    before = purges_that_expired(cluster)
    store = cluster.store()
    blocker, gate = store.engine.connect(), store.engine.connect()
    purge_lock = _lock_key("quarantine-purge")
    try:
        # No node starts the purge while the test sets it up: the test holds
        # the job's lock (a node finds the job busy and looks again soon).
        gate.execute(select(func.pg_advisory_lock(purge_lock)))
        gate.commit()
        ids = stale_messages(cluster, 40)
        # Hold one of the messages: whichever node purges next stops there,
        # halfway, with part of the purge done in its open transaction.
        blocker.execute(select(messages.c.id).where(messages.c.id == ids[20])
                        .with_for_update())
        gate.execute(select(func.pg_advisory_unlock(purge_lock)))
        gate.commit()
        deadline = time.monotonic() + 3 * PURGE_INTERVAL + 60
        holder = None
        while holder is None:
            assert time.monotonic() < deadline, "no node started the purge"
            time.sleep(0.1)
            waiting = blocker.execute(text(
                "SELECT count(*) FROM pg_locks WHERE NOT granted")).scalar()
            if waiting:
                holder = blocker.execute(select(jobs.c.holder).where(
                    jobs.c.name == "quarantine-purge")).scalar()
        victim = cluster.nodes[holder]
        os.killpg(victim.milter.process.pid, signal.SIGKILL)
        victim.milter.process.wait()
        blocker.rollback()  # the killed node's half is rolled back, never committed
    finally:
        gate.close()
        blocker.close()
        store.close()
    try:
        counts = wait_until_expired(cluster, ids, within=3 * PURGE_INTERVAL + 60)
        assert set(counts.values()) == {1}, counts  # nothing twice, nothing left
        new = [p for p in purges_that_expired(cluster) if p not in before]
        assert len(new) == 1 and new[0][2] == 40, new
        assert new[0][1] != holder  # another node completed it
    finally:
        victim.restart()


def metric(node: Node, name: str) -> float | None:
    with urllib.request.urlopen(f"http://127.0.0.1:{node.metrics}/metrics", timeout=5) as page:
        for line in page.read().decode().splitlines():
            if line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
    return None


OUTAGE = 30.0  # seconds PostgreSQL stays stopped


def test_postgresql_down_for_30_s_under_mail_loses_nothing(cluster: Cluster, sink):
    """Mail through two nodes while PostgreSQL stops for 30 s: mail to
    deliver is delivered all along (last good model and lists); mail to hold
    gets 4xx while the database is away and is held when the sender retries;
    the nodes notice, say so in /metrics, and recover alone."""
    streaming = [cluster.nodes["node-a"], cluster.nodes["node-b"]]
    sent: list[tuple[str, bool, str]] = []  # tag, held?, outcome
    stop = threading.Event()
    phase = {"now": "before"}

    def stream() -> None:
        number = 0
        while not stop.is_set():
            number += 1
            tag, hold = uuid.uuid4().hex, number % 3 == 0
            node = streaming[number % 2]
            try:
                send(node.postfix, message(tag, "hold-me" if hold else "plain"))
                outcome = "accepted"
            except smtplib.SMTPDataError as exc:
                outcome = f"{exc.smtp_code}"
            sent.append((tag, hold, f"{phase['now']}:{outcome}:{node.name}"))
            time.sleep(0.15)

    def sent_in(now: str) -> int:
        return sum(outcome.startswith(now + ":") for _, _, outcome in sent)

    def database_up(up: float) -> bool:
        return all(metric(node, "gateway_database_up") == up for node in streaming)

    writer = threading.Thread(target=stream)
    writer.start()
    try:
        wait_until(lambda: sent_in("before") >= 6, 120, "mail before the outage")
        phase["now"] = "down"
        cluster.postgres.stop()
        down_at = time.monotonic()
        # A heartbeat (every 10 s) fails: both nodes say so in /metrics.
        wait_until(lambda: database_up(0.0), 60, "gateway_database_up 0 on both nodes")
        time.sleep(max(0.0, OUTAGE - (time.monotonic() - down_at)))  # what the test is about
        cluster.postgres.start()
        phase["now"] = "recovering"
        # The nodes find the database again by themselves (the next heartbeat).
        wait_until(lambda: database_up(1.0), 60, "gateway_database_up 1 on both nodes")
        phase["now"] = "after"
        wait_until(lambda: sent_in("after") >= 12, 120, "mail after the recovery")
    finally:
        stop.set()
        writer.join()
        if not (cluster.postgres.data / "postmaster.pid").exists():
            cluster.postgres.start()

    # The senders retry what got 4xx, as an MTA does.
    retried = 0
    for tag, hold, outcome in sent:
        if outcome.split(":")[1] != "accepted":
            assert outcome.split(":")[1].startswith("4"), outcome
            send(streaming[retried % 2].postfix, message(tag, "hold-me" if hold else "plain"))
            retried += 1
    outcomes = [o for _, _, o in sent]
    during = [o for o in outcomes if o.startswith("down:")]
    assert {o.rsplit(":", 1)[1] for o in during} == {"node-a", "node-b"}, outcomes
    # Mail to deliver went through while the database was away ...
    assert all(":accepted:" in o for (_, h, o) in sent if not h and o.startswith("down:"))
    # ... mail to hold was refused for later, never accepted and lost ...
    assert retried >= 5 and all(h for (_, h, o) in sent if ":accepted:" not in o), outcomes
    # ... and once it was back, held again on the first try, with no restart.
    assert all(":accepted:" in o for (_, h, o) in sent if o.startswith("after:")), outcomes
    for tag, hold, _ in sent:
        if hold:
            assert len(held(cluster, tag)) == 1, tag
        else:
            assert sink.find(tag, timeout=10) is not None, tag

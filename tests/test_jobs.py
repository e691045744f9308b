"""Jobs that run once per period on one node at a time (gateway.jobs), and
the node registry (gateway.nodes); SQLite and PostgreSQL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import func, insert, select

from gateway.db import schema_head
from gateway.jobs import Jobs, PeriodicJob, period_of
from gateway.nodes import Heartbeat, fleet
from gateway.quarantine.schema import console_settings, job_runs
from gateway.quarantine.store import QuarantineStore
from tests.helpers import PROJECT_ROOT


@pytest.fixture
def store(tmp_path: Path):
    opened = QuarantineStore(f"sqlite:///{tmp_path}/q.db", node="node-a")
    yield opened
    opened.close()


def mark(name: str):
    """Work that leaves a trace in its transaction: a settings row."""
    def work(connection):
        connection.execute(insert(console_settings), {"key": name, "value": "x"})
        return {"marked": name}
    return work


def marks(store: QuarantineStore) -> list[str]:
    with store.engine.connect() as connection:
        return sorted(connection.execute(select(console_settings.c.key)).scalars())


def test_a_period_runs_once_whoever_asks(store):
    a, b = Jobs(store.engine, "node-a"), Jobs(store.engine, "node-b")
    assert a.run("purge", "P1", mark("one")).state == "ran"
    again = b.run("purge", "P1", mark("two"))
    assert (again.state, again.node, again.result) == ("done-before", "node-a",
                                                       {"marked": "one"})
    assert b.run("purge", "P2", mark("three")).state == "ran"
    assert marks(store) == ["one", "three"]
    assert [(r["period"], r["node"]) for r in a.runs("purge")] == [("P2", "node-b"),
                                                                   ("P1", "node-a")]


def test_work_that_fails_leaves_nothing_and_the_period_open(store):
    jobs = Jobs(store.engine, "node-a")

    def half_then_fail(connection):
        mark("half")(connection)
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        jobs.run("purge", "P1", half_then_fail)
    assert marks(store) == [] and jobs.runs() == []
    assert jobs.running() == []  # the lease went with it
    assert Jobs(store.engine, "node-b").run("purge", "P1", mark("whole")).state == "ran"
    assert marks(store) == ["whole"]


def test_one_node_at_a_time_on_sqlite(store):
    started, finish = threading.Event(), threading.Event()

    def slow(connection):
        started.set()
        finish.wait(10)
        return {}

    first = threading.Thread(target=Jobs(store.engine, "node-a").run,
                             args=("digest", "D1", slow))
    first.start()
    assert started.wait(10)
    try:
        assert Jobs(store.engine, "node-b").run("digest", "D1", mark("b")).state == "busy"
        assert [r["node"] for r in Jobs(store.engine, "x").running()] == ["node-a"]
    finally:
        finish.set()
        first.join()
    assert Jobs(store.engine, "node-b").run("digest", "D1", mark("b")).state == "done-before"


def test_periods_are_wall_clock_intervals():
    assert period_of(3600, 7200 + 1799) == "1970-01-01T02:00:00"
    assert period_of(86400, 86400 * 2 + 5) == "1970-01-03T00:00:00"
    # periods shorter than a second, or not whole seconds, are told apart
    assert period_of(0.5, 1000.2) != period_of(0.5, 1000.7) == "1970-01-01T00:16:40.500"


@pytest.mark.slow
def test_a_periodic_job_runs_at_the_period_start(store):
    ran = []
    job = PeriodicJob(lambda: Jobs(store.engine, "node-a"), "tick", 0.5,
                      lambda c: ran.append(1) or {}).start()
    try:
        deadline = time.monotonic() + 5
        while len(ran) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        job.stop(wait=30)  # the last run commits (or rolls back) before the runs are read
    assert len(ran) >= 2
    periods = [r["period"] for r in Jobs(store.engine, "x").runs("tick")]
    assert len(periods) == len(set(periods)) == len(ran)


def test_the_registry_shows_each_node_and_its_heartbeat(store):
    heartbeat = Heartbeat(lambda: store).start()
    deadline = time.monotonic() + 5
    while True:
        with store.engine.connect() as connection:
            found = fleet(connection)
        if found or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    (node,) = found
    assert (node.name, node.pid, node.stale, node.stopped) == ("node-a", os.getpid(), False,
                                                               False)
    assert node.age < 5 and node.schema == schema_head()
    heartbeat.stop()  # a node shut down on purpose says so, and is not stale later
    with store.engine.connect() as connection:
        (node,) = fleet(connection)
    assert node.stopped and not node.stale


# -- PostgreSQL: a node killed mid-job -------------------------------------------------

HOLDER = """
import sys, time
from sqlalchemy import insert
from gateway.jobs import Jobs
from gateway.quarantine.schema import console_settings
from gateway.quarantine.store import QuarantineStore

store = QuarantineStore(sys.argv[1], node="node-a")

def work(connection):
    connection.execute(insert(console_settings), {"key": "half", "value": "x"})
    print("working", flush=True)
    time.sleep(600)

Jobs(store.engine, "node-a").run("purge", "P1", work)
"""


def test_a_node_killed_mid_job_hands_it_over_at_once(postgres):
    store = QuarantineStore(postgres.url, node="node-b")
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, postgres.url], cwd=PROJECT_ROOT,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "working"
        jobs = Jobs(store.engine, "node-b")
        assert jobs.run("purge", "P1", mark("b")).state == "busy"
        assert [r["node"] for r in jobs.running()] == ["node-a"]
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        deadline = time.monotonic() + 10
        outcome = jobs.run("purge", "P1", mark("whole"))
        while outcome.state == "busy" and time.monotonic() < deadline:
            time.sleep(0.1)
            outcome = jobs.run("purge", "P1", mark("whole"))
        assert outcome.state == "ran"
    finally:
        holder.kill()
        holder.wait()
    assert marks(store) == ["whole"]  # nothing of the killed node's half
    assert jobs.running() == []

    def failing(connection):
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):  # a job that failed is not shown running after
        jobs.run("purge", "P2", failing)
    assert jobs.running() == [] and [r["period"] for r in jobs.runs()] == ["P1"]
    with store.engine.connect() as connection:
        assert connection.execute(select(func.count()).select_from(job_runs)).scalar() == 1
    store.close()


@pytest.mark.slow
def test_the_dashboard_lists_the_nodes_and_marks_a_stale_one(tmp_path: Path):
    from datetime import UTC, datetime, timedelta

    from sqlalchemy import update

    from gateway.config import parse_config
    from gateway.nodes import beat
    from gateway.quarantine.schema import nodes
    from gateway.web.app import create_app
    from tests.test_web import PASSWORD, login

    url = f"sqlite:///{tmp_path}/q.db"
    store = QuarantineStore(url, node="node-a")
    started = datetime.now(UTC)
    with store.engine.begin() as connection:
        beat(connection, "node-a", "nb-aaaa", started)
        beat(connection, "node-b", "nb-bbbb", started)
        connection.execute(update(nodes).where(nodes.c.name == "node-b").values(
            heartbeat=started - timedelta(minutes=5)))
    app = create_app(parse_config(f'[quarantine]\nurl = "{url}"\n', "t"), store)
    app.extensions["gateway"]["console"].add_user("ann", "analyst", PASSWORD)
    client = app.test_client()
    login(client, "ann")
    page = client.get("/").text
    row_a = page[page.index("<td>node-a</td>"):][:600]
    row_b = page[page.index("<td>node-b</td>"):][:600]
    assert "nb-aaaa" in row_a and "stale" not in row_a.split("</tr>")[0]
    assert "nb-bbbb" in row_b and "stale: no heartbeat" in row_b.split("</tr>")[0]
    store.close()


def test_a_node_of_an_older_version_uses_a_schema_a_newer_node_migrated(tmp_path: Path,
                                                                        caplog):
    """A rolling upgrade: the first upgraded node migrated the shared store;
    a node still on the old version restarts and keeps working on it."""
    from sqlalchemy import text

    url = f"sqlite:///{tmp_path}/q.db"
    QuarantineStore(url).close()
    store = QuarantineStore(url)
    with store.engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = '0099'"))
    store.close()
    reopened = QuarantineStore(url, node="old-node")  # does not refuse, does not migrate
    assert "newer than this gateway's" in caplog.text
    Heartbeat(lambda: reopened).beat_once()
    with reopened.engine.connect() as connection:
        assert [n.name for n in fleet(connection)] == ["old-node"]
    reopened.close()


DIGEST_NODE = """
import sys
from gateway.config import parse_config
from gateway.quarantine.store import QuarantineStore
from gateway.web.console import Console
from gateway.web.digest import DailyDigest

url, port = sys.argv[1], sys.argv[2]
config = parse_config(f'[release]\\nsmtp = "127.0.0.1:{port}"\\n[digest]\\nenabled = true\\n'
                      'url = "https://q.example.org"\\nhour = 0\\n', "node-a")
store = QuarantineStore(url, node="node-a")
DailyDigest(store, Console(store), config).run_once()
"""


class Stalling:
    """An SMTP server that takes the first message and never answers the
    end of the second: the node sending to it is stuck halfway."""

    def __init__(self) -> None:
        self.accepted: list[str] = []
        self.stalled = threading.Event()

    async def handle_DATA(self, server, session, envelope) -> str:
        import asyncio

        if self.accepted:
            self.stalled.set()
            await asyncio.sleep(3600)
        self.accepted.extend(envelope.rcpt_tos)
        return "250 OK"


def test_a_node_killed_during_the_digest_leaves_the_rest_to_another(postgres):
    from aiosmtpd.controller import Controller

    from gateway.config import parse_config
    from gateway.lab.postfix import free_port
    from gateway.lab.sink import Sink
    from gateway.quarantine.schema import digest_links
    from gateway.web.console import Console
    from gateway.web.digest import DIGEST_JOB, DailyDigest
    from tests.test_quarantine import put

    store = QuarantineStore(postgres.url, node="node-b")
    recipients = ("r1@example.net", "r2@example.net", "r3@example.net")
    for address in recipients:
        put(store, address.split("@")[0], rcpts=(address,))
    handler = Stalling()
    stalling = Controller(handler, hostname="127.0.0.1", port=free_port())
    stalling.start()
    node_a = subprocess.Popen([sys.executable, "-c", DIGEST_NODE, postgres.url,
                               str(stalling.port)], cwd=PROJECT_ROOT)
    try:
        assert handler.stalled.wait(30), "node-a never got to its second digest"
        node_a.send_signal(signal.SIGKILL)
        node_a.wait()
    finally:
        node_a.kill()
        node_a.wait()
    assert handler.accepted == ["r1@example.net"]  # r1's digest went; r2's hung
    with Sink() as sink:
        config = parse_config(f'[release]\nsmtp = "127.0.0.1:{sink.port}"\n[digest]\n'
                              'enabled = true\nurl = "https://q.example.org"\nhour = 0\n', "b")
        node_b = DailyDigest(store, Console(store), config)
        deadline = time.monotonic() + 10
        sent = node_b.run_once()
        while sent is None and time.monotonic() < deadline:  # node-a's lock going
            time.sleep(0.2)
            sent = node_b.run_once()
        assert sent == 2
        assert sorted(d.rcpt_to[0] for d in sink.wait_for(2)) == ["r2@example.net",
                                                                "r3@example.net"]
        assert node_b.run_once() is None  # the day is done
        time.sleep(0.3)
        assert len(sink.deliveries) == 2
    stalling.stop()
    with store.engine.connect() as connection:
        links = connection.execute(select(digest_links.c.recipient)).scalars().all()
        runs = connection.execute(select(job_runs.c.node).where(
            job_runs.c.job == DIGEST_JOB)).scalars().all()
    assert sorted(links) == list(recipients)  # each message listed once, for its recipient
    assert runs == ["node-b"]
    store.close()


def test_two_purges_at_once_expire_each_message_once(postgres):
    """gateway quarantine purge run by hand while a node's purge job runs:
    whichever reaches a message second finds it expired already."""
    from concurrent.futures import ThreadPoolExecutor
    from datetime import timedelta

    from sqlalchemy import update

    from gateway.db import now
    from gateway.quarantine.schema import events, messages
    from tests.test_quarantine import put

    store = QuarantineStore(postgres.url, node="node-a")
    ids = [put(store, f"old{i}") for i in range(60)]
    with store.engine.begin() as connection:
        connection.execute(update(messages).where(messages.c.id.in_(ids)).values(
            created=now() - timedelta(days=40)))
    barrier = threading.Barrier(2)

    def purge(_):
        barrier.wait()
        return store.purge({"held": 30}, 0)["expired"]

    with ThreadPoolExecutor(2) as pool:
        expired = list(pool.map(purge, range(2)))
    assert sum(expired) == 60
    with store.engine.connect() as connection:
        counted = connection.execute(select(events.c.message, func.count()).where(
            events.c.action == "expired").group_by(events.c.message)).all()
    assert len(counted) == 60 and {n for _, n in counted} == {1}
    store.close()


@pytest.mark.slow
def test_gateway_nodes_lists_the_fleet_and_fails_on_a_stale_node(tmp_path: Path):
    from datetime import UTC, datetime, timedelta

    from sqlalchemy import update

    from gateway.nodes import beat
    from gateway.quarantine.schema import nodes

    url = f"sqlite:///{tmp_path}/q.db"
    config = tmp_path / "gateway.toml"
    config.write_text(f'[quarantine]\nurl = "{url}"\n')
    store = QuarantineStore(url, node="node-a")
    started = datetime.now(UTC)
    with store.engine.begin() as connection:
        beat(connection, "node-a", "nb-aaaa", started)
    Jobs(store.engine, "node-a").run("quarantine-purge", "2026-12-01T08:00:00",
                                     lambda c: {"expired": 0})

    def nodes_command(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "gateway", "nodes", *args, "--config",
                               str(config)], capture_output=True, text=True, cwd=PROJECT_ROOT,
                              timeout=60)

    fine = nodes_command()
    assert fine.returncode == 0, fine.stderr
    assert "node-a" in fine.stdout and "nb-aaaa" in fine.stdout and "STALE" not in fine.stdout
    assert "job quarantine-purge: last period 2026-12-01T08:00:00 done by node-a" in fine.stdout
    with store.engine.begin() as connection:
        connection.execute(update(nodes).values(heartbeat=started - timedelta(minutes=2)))
    stale = nodes_command()
    assert stale.returncode == 1 and "STALE (no heartbeat)" in stale.stdout
    forgot = subprocess.run([sys.executable, "-m", "gateway", "nodes", "forget", "node-a",
                             "--config", str(config)], capture_output=True, text=True,
                            cwd=PROJECT_ROOT, timeout=60)
    assert forgot.returncode == 0, forgot.stderr
    assert "no node has registered" in nodes_command().stdout
    store.close()

"""The quarantine store, release and retention; SQLite and PostgreSQL."""

from __future__ import annotations

import json
import os
import smtplib
import subprocess
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from gateway.lab.milter_process import MilterProcess
from gateway.lab.postfix import PostfixInstance, free_port
from gateway.lab.sink import Sink
from gateway.message import Envelope, RawContent
from gateway.paths import DEFAULT_RULES
from gateway.policy import Policy
from gateway.quarantine.release import ReleaseError, release
from gateway.quarantine.schema import metadata
from gateway.quarantine.store import Filters, QuarantineError, QuarantineStore
from gateway.ruleset import Ruleset
from gateway.symbols import Symbol
from gateway.verdict import PipelineResult
from tests.helpers import PROJECT_ROOT, milter_config, send

BODY = "Dear Bob,\r\n\r\nthe minutes are attached; TRIGGER-MARKER.\r\n.leading dot line\r\n"


def message(tag: str) -> bytes:
    return (f"From: Alice <alice@example.org>\r\nTo: bob@example.net\r\nSubject: minutes {tag}"
            f"\r\nDate: Tue, 24 Nov 2026 09:00:00 +0000\r\nMessage-ID: <{tag}@example.org>"
            f"\r\n\r\n{BODY}").encode()


def verdict(*names: str, score: float = 7.0):
    symbols = tuple(Symbol(name=n, score=score / len(names), description=n.lower(),
                           evidence=f"{n} seen") for n in names)
    return Policy(Ruleset()).decide(PipelineResult(symbols=symbols, runs=()), "QID")


def put(store: QuarantineStore, tag: str, sender: str = "alice@example.org",
        rcpts: tuple[str, ...] = ("bob@example.net",), names=("TEST_MARKER",),
        action: str = "quarantine") -> str:
    envelope = Envelope(mail_from=sender, rcpt_to=rcpts, client_ip="198.51.100.7",
                        helo="mail.example.org", queue_id=f"Q{tag[:8]}")
    return store.put(envelope, RawContent(data=message(tag)), verdict(*names), action)


@pytest.fixture
def store(tmp_path: Path):
    opened = QuarantineStore(f"sqlite:///{tmp_path}/q.db", node="node-a")
    yield opened
    opened.close()


# -- the store ----------------------------------------------------------------------

def test_a_record_keeps_envelope_headers_and_verdict(store):
    identifier = put(store, "t1", rcpts=("bob@example.net", "carol@example.net"))
    record = store.get(identifier)
    assert (record.state, record.action, record.node) == ("held", "quarantine", "node-a")
    assert record.sender == "alice@example.org"
    assert record.recipients == ("bob@example.net", "carol@example.net")
    assert (record.client_ip, record.helo, record.queue_id) == ("198.51.100.7",
                                                                 "mail.example.org", "Qt1")
    assert (record.header_from, record.subject) == ("Alice <alice@example.org>", "minutes t1")
    assert record.message_id == "<t1@example.org>"
    assert record.score == 7.0 and record.reason == "score 7 >= quarantine threshold 6"
    assert record.symbols == ({"name": "TEST_MARKER", "score": 7.0,
                               "description": "test_marker", "evidence": "TEST_MARKER seen"},)
    assert [e.action for e in record.events] == ["quarantined"]
    assert store.raw(identifier) == message("t1")
    assert store.get("Qt1").id == identifier  # found by Postfix queue id too


def stored_rows(opened: QuarantineStore) -> dict[str, list[tuple]]:
    """Every row of a held message's tables, as the database keeps them."""
    with opened.engine.connect() as connection:
        return {table: connection.exec_driver_sql(f"SELECT * FROM {table}").all()
                for table in ("messages", "recipients", "symbols", "events")}


def test_held_rows_go_in_as_sqlalchemys_own_insert_writes_them(store, tmp_path, monkeypatch):
    # The driver's cursor writes held mail (SQLAlchemy's execution was half
    # the CPU): the same values, dates in the same text, as Core's INSERT.
    from copy import deepcopy

    from sqlalchemy import insert

    from gateway.quarantine.store import _HELD_COLUMNS

    written: list = []
    driver_write = QuarantineStore._write_held

    def keep_rows(self, rows):
        written.append(deepcopy(rows))
        driver_write(self, rows)

    monkeypatch.setattr(QuarantineStore, "_write_held", keep_rows)
    envelope = Envelope(mail_from="al\udcffice@example.org", client_ip="198.51.100.7",
                        rcpt_to=("bob@example.net", "carol@example.net"), helo="helo\udcfe")
    store.put(envelope, RawContent(data=message("rows")), verdict("A_ONE", "B_TWO",
                                                                  score=7.3))
    store.put(Envelope(mail_from=""), RawContent(data=b"Subject: bare\r\n\r\nbody"),
              verdict("C_THREE"), "reject")
    core = QuarantineStore(f"sqlite:///{tmp_path}/core.db", node="node-a")
    try:
        for rows in written:
            with core.engine.begin() as connection:
                for (table, _), table_rows in zip(_HELD_COLUMNS, rows, strict=True):
                    if table_rows:
                        connection.execute(insert(table), table_rows)
        ours = stored_rows(store)
        assert ours == stored_rows(core)
        assert len(ours["recipients"]) == 3 and len(ours["symbols"]) == 3
        assert [e[4] for e in ours["events"]] == ["quarantined", "kept-rejected"]
    finally:
        core.close()
    assert store.get(store.records()[0].id).created.tzinfo is not None


def test_a_held_message_that_cannot_be_written_leaves_no_row_and_no_connection(store):
    with store.engine.begin() as connection:
        connection.exec_driver_sql("DROP TABLE symbols")  # the third of four INSERTs fails
    with pytest.raises(QuarantineError) as caught:
        put(store, "lost")
    assert str(caught.value) == "cannot store message: no such table: symbols"
    assert stored_rows_without_symbols(store) == {"messages": [], "recipients": [],
                                                  "events": []}
    assert store.engine.pool.checkedout() == 0  # the connection went back to the pool


def stored_rows_without_symbols(opened: QuarantineStore) -> dict[str, list[tuple]]:
    with opened.engine.connect() as connection:
        return {table: connection.exec_driver_sql(f"SELECT * FROM {table}").all()
                for table in ("messages", "recipients", "events")}


def test_list_filters(store):
    a = put(store, "a", sender="news@shop.example", names=("BAYES_99",))
    b = put(store, "b", rcpts=("ceo@example.net",), names=("CLAMAV_VIRUS",))
    c = put(store, "c", action="reject")

    def ids(**filters):
        return {r.id for r in store.records(Filters(**filters))}

    assert ids() == {a, b, c}
    assert ids(sender="shop.example") == {a}
    assert ids(recipient="CEO@") == {b}
    assert ids(symbol="clamav_virus") == {b}
    assert ids(action="reject") == {c}
    assert ids(state="held") == {a, b, c}
    assert ids(since=datetime.now(UTC) - timedelta(minutes=5)) == {a, b, c}
    assert ids(until=datetime.now(UTC) - timedelta(minutes=5)) == set()
    assert ids(sender="100%_") == set()  # LIKE wildcards are matched literally


def test_delete_drops_the_body_and_keeps_the_audit_trail(store):
    identifier = put(store, "d")
    store.change_state(identifier, "deleted", "analyst", "deleted", "phishing", drop_body=True)
    record = store.get(identifier)
    assert record.state == "deleted"
    assert store.raw(identifier) is None
    assert [(e.actor, e.action, e.detail) for e in record.events][-1] == (
        "analyst", "deleted", "phishing")


def test_purge_expires_then_removes(store):
    held = put(store, "h")
    kept_reject = put(store, "r", action="reject")
    released = put(store, "x")
    store.change_state(released, "released", "analyst", "released")
    later = datetime.now(UTC) + timedelta(days=10)
    counts = store.purge({"held": 30, "released": 7, "deleted": 1, "expired": 30}, 7, at=later)
    assert counts == {"expired": 1, "removed": 1}  # the rejected copy expired, release gone
    assert store.get(held).state == "held"
    assert store.get(kept_reject).state == "expired"
    assert store.raw(kept_reject) is None
    with pytest.raises(QuarantineError):
        store.get(released)
    counts = store.purge({"held": 30, "released": 7, "deleted": 1, "expired": 30}, 7,
                         at=later + timedelta(days=60))
    assert counts == {"expired": 1, "removed": 1}


def test_migrations_build_exactly_the_schema_the_code_uses(store):
    with store.engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), metadata)
    assert differences == []


def test_an_unusable_url_is_one_clear_line(tmp_path: Path):
    (tmp_path / "file").write_text("")
    with pytest.raises(QuarantineError) as caught:
        QuarantineStore(f"sqlite:///{tmp_path}/file/q.db")
    assert str(caught.value).startswith(f"quarantine.url sqlite:///{tmp_path}/file/q.db: ")
    assert "\n" not in str(caught.value)


# -- release --------------------------------------------------------------------------

def test_release_sends_original_bytes_to_original_recipients_once(store):
    identifier = put(store, "rel", rcpts=("bob@example.net", "carol@example.net"))
    with Sink() as sink:
        accepted = release(store, identifier, f"127.0.0.1:{sink.port}", "analyst").accepted
        (delivery,) = sink.wait_for(1)
        assert accepted == ["bob@example.net", "carol@example.net"]
        assert delivery.rcpt_to == ("bob@example.net", "carol@example.net")
        assert delivery.mail_from == "alice@example.org"
        # the original bytes, under the release's own headers (X-Gateway-Released, verdict)
        assert delivery.data.endswith(message("rel"))
        assert delivery.data.startswith(b"X-Gateway-Released: by analyst at ")
        assert store.get(identifier).state == "released"
        with pytest.raises(ReleaseError, match="already released"):
            release(store, identifier, f"127.0.0.1:{sink.port}", "analyst")
        release(store, identifier, f"127.0.0.1:{sink.port}", "analyst", force=True)
        assert len(sink.wait_for(2)) == 2
    actions = [e.action for e in store.get(identifier).events]
    assert actions == ["quarantined", "released", "released"]


def test_release_of_deleted_mail_and_dead_listener_are_refused(store):
    gone = put(store, "gone")
    store.change_state(gone, "deleted", "analyst", "deleted", drop_body=True)
    with pytest.raises(ReleaseError, match="deleted, its content is gone"):
        release(store, gone, "127.0.0.1:9", "analyst")
    waiting = put(store, "wait")
    with pytest.raises(ReleaseError, match=r"cannot re-inject through 127\.0\.0\.1:"):
        release(store, waiting, f"127.0.0.1:{free_port()}", "analyst", timeout=2)
    assert store.get(waiting).state == "held"  # not marked released when nothing was sent


# -- through the real Postfix ---------------------------------------------------------

def quarantine_config(tmp_path: Path, postfix: PostfixInstance, extra: str = "") -> str:
    (tmp_path / "marker.toml").write_text("[scores]\nTEST_MARKER = 10.0\n")
    return ('[pipeline]\nchecks = ["headers", "lists", "tests.plugins:MarkerCheck"]\n'
            f'[policy]\nrules = ["{DEFAULT_RULES}", "{tmp_path / "marker.toml"}"]\n'
            f'[release]\nsmtp = "127.0.0.1:{postfix.reinject_port}"\n{extra}')


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", *args, "--config", str(config)],
                          capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)})


@pytest.mark.postfix
def test_quarantined_mail_is_listed_then_released_intact(postfix, sink, gateway_milter,
                                                         tmp_path):
    url = f"sqlite:///{tmp_path}/q.db"
    extra = f'[quarantine]\nurl = "{url}"\n'
    milter = gateway_milter(quarantine_config(tmp_path, postfix, extra))
    tag = uuid.uuid4().hex
    send(postfix, message(tag), mail_from="alice@example.org",
         rcpt_to=("bob@example.net", "carol@example.net"))
    assert sink.find(tag, timeout=2) is None  # held, not delivered
    assert '"quarantine_id"' in milter.log()

    listing = cli(milter.config_path, "quarantine", "list", "--json")
    assert listing.returncode == 0, listing.stderr
    (record,) = [r for r in json.loads(listing.stdout) if r["subject"] == f"minutes {tag}"]
    assert set(record) >= {"id", "state", "sender", "recipients", "subject", "score",
                           "symbols"}
    assert record["state"] == "held"
    assert record["recipients"] == ["bob@example.net", "carol@example.net"]
    assert [s["name"] for s in record["symbols"]] == ["TEST_MARKER"]
    assert record["score"] == 10.0

    shown = cli(milter.config_path, "quarantine", "show", record["id"])
    assert "TEST_MARKER" in shown.stdout and "quarantined by gateway" in shown.stdout

    released = cli(milter.config_path, "quarantine", "release", record["id"])
    assert released.returncode == 0, released.stderr
    delivery = sink.find(tag)
    assert delivery is not None
    assert delivery.rcpt_to == ("bob@example.net", "carol@example.net")
    assert delivery.data.split(b"\r\n\r\n", 1)[1] == BODY.encode()  # body byte-identical
    again = cli(milter.config_path, "quarantine", "release", record["id"])
    assert again.returncode == 2 and "already released" in again.stderr


@pytest.mark.postfix
def test_rejected_mail_can_be_kept_and_found(postfix, sink, gateway_milter, tmp_path):
    url = f"sqlite:///{tmp_path}/q.db"
    extra = (f'[quarantine]\nurl = "{url}"\nkeep_rejected_days = 7\n'
             '[lists]\nblock_senders = ["spammer.example"]\n')
    gateway_milter(quarantine_config(tmp_path, postfix, extra))
    tag = uuid.uuid4().hex
    with pytest.raises(smtplib.SMTPDataError) as caught:
        send(postfix, message(tag), mail_from="x@spammer.example")
    assert caught.value.smtp_code == 550
    (record,) = QuarantineStore(url).records(Filters(action="reject"))
    assert record.subject == f"minutes {tag}"
    assert "BLOCKLIST_SENDER" in [s["name"] for s in record.symbols]
    # The reference in the reject reply finds it.
    reference = caught.value.smtp_error.decode().rsplit("(ref ", 1)[1].rstrip(")")
    assert QuarantineStore(url).get(reference).id == record.id


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 4 MB tmpfs: root ignores file modes, but not a read-only or full disk."""
    directory = tmp_path / "disk"
    directory.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,ro", "tmpfs",
                              str(directory)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    yield directory
    subprocess.run(["umount", "-l", str(directory)], capture_output=True)


def remount(directory: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(directory)], check=True)


@pytest.mark.postfix
def test_read_only_store_means_4xx_and_nothing_lost(postfix, sink, gateway_milter, tmp_path,
                                                    small_disk):
    url = f"sqlite:///{small_disk}/q.db"
    milter = gateway_milter(quarantine_config(tmp_path, postfix, f'[quarantine]\nurl = "{url}"\n'))
    tag = uuid.uuid4().hex
    with pytest.raises(smtplib.SMTPDataError) as caught:
        send(postfix, message(tag))  # the directory is read-only: nothing can be stored
    assert caught.value.smtp_code == 451
    assert b"storing the message" in caught.value.smtp_error
    assert "quarantined mail is answered 4xx until it works" in milter.log()
    remount(small_disk, "rw")
    send(postfix, message(tag))  # the sender's retry is stored
    assert [r.subject for r in QuarantineStore(url).records()] == [f"minutes {tag}"]


@pytest.mark.postfix
def test_full_store_means_4xx_and_nothing_lost(postfix, sink, gateway_milter, tmp_path,
                                               small_disk):
    remount(small_disk, "rw")
    url = f"sqlite:///{small_disk}/q.db"
    gateway_milter(quarantine_config(tmp_path, postfix, f'[quarantine]\nurl = "{url}"\n'))
    first = uuid.uuid4().hex
    send(postfix, message(first))
    filler = small_disk / "filler"
    # Fill the disk to the last byte; unbuffered, so that closing the file
    # has nothing left to write (a buffered close raised ENOSPC again).
    with open(filler, "wb", buffering=0) as handle:
        try:
            while True:
                handle.write(b"\0" * 65536)
        except OSError:
            pass
    tag = uuid.uuid4().hex
    big = message(tag) + b"x" * 200_000 + b"\r\n"
    with pytest.raises(smtplib.SMTPDataError) as caught:
        send(postfix, big)
    assert caught.value.smtp_code == 451
    filler.unlink()
    send(postfix, big)
    subjects = {r.subject for r in QuarantineStore(url).records()}
    assert subjects == {f"minutes {first}", f"minutes {tag}"}


@pytest.mark.postfix
def test_fifty_parallel_sessions_lose_nothing(postfix, sink, gateway_milter, tmp_path):
    url = f"sqlite:///{tmp_path}/q.db"
    gateway_milter(quarantine_config(tmp_path, postfix, f'[quarantine]\nurl = "{url}"\n'))
    tags = [uuid.uuid4().hex for _ in range(50)]
    with ThreadPoolExecutor(50) as pool:
        list(pool.map(lambda t: send(postfix, message(t)), tags))
    stored = {r.subject for r in QuarantineStore(url).records()}
    assert stored == {f"minutes {t}" for t in tags}


# -- PostgreSQL: several nodes, one quarantine -----------------------------------------

def test_postgres_schema_matches(postgres):
    store = QuarantineStore(postgres.url)
    with store.engine.connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), metadata) == []
    identifier = put(store, "pg", rcpts=("bob@example.net", "carol@example.net"),
                     names=("A_ONE", "B_TWO"))
    record = store.get(identifier)
    assert record.recipients == ("bob@example.net", "carol@example.net")
    assert [(s["name"], s["score"]) for s in record.symbols] == [("A_ONE", 3.5), ("B_TWO", 3.5)]
    assert [e.action for e in record.events] == ["quarantined"]
    assert record.created.tzinfo is not None and record.score == 7.0
    assert store.raw(identifier) == message("pg")


@pytest.mark.postfix
def test_two_nodes_share_one_postgres_quarantine(postfix, sink, lab_dir, tmp_path, postgres):
    """Two gateways (each a Postfix with its own milter) write to one
    PostgreSQL; one CLI sees both nodes' messages; PostgreSQL down means 4xx."""
    nodes = []
    try:
        for name in ("node-a", "node-b"):
            socket = lab_dir / name / "milter.sock"
            extra = quarantine_config(tmp_path, postfix,
                                      f'[quarantine]\nurl = "{postgres.url}"\nnode = "{name}"\n')
            milter = MilterProcess(lab_dir / name, milter_config(socket, extra),
                                   env={"PYTHONPATH": str(PROJECT_ROOT)}).start()
            instance = PostfixInstance(lab_dir / f"postfix-{name}", relay_port=sink.port,
                                       milter=f"unix:{socket}")
            instance.start()
            nodes.append((name, milter, instance))
        tags = {}
        for name, _, instance in nodes:
            tags[name] = uuid.uuid4().hex
            send(instance, message(tags[name]))
        listing = cli(nodes[0][1].config_path, "quarantine", "list", "--json")
        assert listing.returncode == 0, listing.stderr
        by_subject = {r["subject"]: r["node"] for r in json.loads(listing.stdout)}
        assert by_subject == {f"minutes {tags['node-a']}": "node-a",
                              f"minutes {tags['node-b']}": "node-b"}

        postgres.stop()
        lost = uuid.uuid4().hex
        with pytest.raises(smtplib.SMTPDataError) as caught:
            send(nodes[1][2], message(lost))
        assert caught.value.smtp_code == 451
        postgres.start()
        send(nodes[1][2], message(lost))  # the retry lands once PostgreSQL is back
        subjects = [r.subject for r in QuarantineStore(postgres.url).records()]
        assert f"minutes {lost}" in subjects, nodes[1][1].log()[-3000:]
        assert len(subjects) == 3
    finally:
        for _, milter, instance in nodes:
            instance.stop()
            milter.stop()


def test_an_envelope_that_is_not_utf8_is_stored_readably(store):
    sender = b"j\xf6rg@example.org".decode("utf-8", "surrogateescape")  # as pymilter passes it
    identifier = put(store, "latin1", sender=sender, rcpts=(sender,))
    record = store.get(identifier)
    assert record.sender == "j\ufffdrg@example.org"
    assert record.recipients == ("j\ufffdrg@example.org",)

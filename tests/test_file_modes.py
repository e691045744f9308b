"""Held mail on disk is for the gateway's user alone, whatever the umask.

The quarantine's directory 0700, the database and SQLite's -wal and -shm
files 0600, set explicitly; wider modes found at start are narrowed with one
log line; the milter's socket stays 0660 for Postfix's group; spilled
message files are 0600.
"""

from __future__ import annotations

import grp
import logging
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from gateway.lab.milter_process import MilterProcess
from gateway.message import Envelope, RawContent, RawSpool
from gateway.policy import Policy
from gateway.quarantine.store import QuarantineStore
from gateway.ruleset import Ruleset
from gateway.symbols import Symbol
from gateway.verdict import PipelineResult
from tests.helpers import PROJECT_ROOT, SPINE_CHECKS

MESSAGE = (b"From: alice@example.org\r\nTo: bob@example.net\r\nSubject: private\r\n"
           b"Date: Tue, 24 Nov 2026 09:00:00 +0000\r\nMessage-ID: <m@example.org>\r\n"
           b"\r\nThe minutes.\r\n")


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@contextmanager
def umask(value: int) -> Iterator[None]:
    previous = os.umask(value)
    try:
        yield
    finally:
        os.umask(previous)


def hold(store: QuarantineStore) -> str:
    symbol = Symbol(name="TEST_MARKER", score=9.0, description="marker", evidence="")
    verdict = Policy(Ruleset()).decide(PipelineResult(symbols=(symbol,), runs=()), "Q1")
    envelope = Envelope(mail_from="alice@example.org", rcpt_to=("bob@example.net",))
    return store.put(envelope, RawContent(data=MESSAGE), verdict, "quarantine")


def store_files(database: Path) -> list[Path]:
    return [database, Path(f"{database}-wal"), Path(f"{database}-shm")]


@pytest.mark.parametrize("mask", [0o000, 0o022, 0o007])
def test_a_new_store_is_private_whatever_the_umask(tmp_path: Path, mask: int):
    database = tmp_path / "state" / "quarantine" / "q.db"
    with umask(mask):
        store = QuarantineStore(f"sqlite:///{database}")
        try:
            hold(store)
            # While the store is open SQLite keeps its WAL and shared memory.
            assert all(p.exists() for p in store_files(database))
            assert mode(database.parent) == 0o700
            assert {p.name: mode(p) for p in store_files(database)} == {
                "q.db": 0o600, "q.db-wal": 0o600, "q.db-shm": 0o600}
        finally:
            store.close()


def test_wider_modes_are_narrowed_at_start_with_one_log_line(tmp_path: Path, caplog):
    directory = tmp_path / "quarantine"
    database = directory / "q.db"
    (directory / "models").mkdir(parents=True)  # the default layout's model store
    QuarantineStore(f"sqlite:///{database}").close()
    os.chmod(directory, 0o755)  # as an older gateway left it under umask 022
    os.chmod(database, 0o664)
    Path(f"{database}-wal").touch(mode=0o644)  # a journal left behind
    os.chmod(f"{database}-wal", 0o644)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="gateway.quarantine"):
        store = QuarantineStore(f"sqlite:///{database}")
    try:
        assert mode(directory) == 0o700
        assert mode(database) == 0o600 and mode(Path(f"{database}-wal")) == 0o600
        (record,) = [r for r in caplog.records if r.name == "gateway.quarantine"]
        assert record.levelno == logging.WARNING
        message = record.getMessage()
        assert "\n" not in message
        assert f"{directory} 0755 -> 0700" in message
        assert f"{database} 0664 -> 0600" in message
        assert f"{database}-wal 0644 -> 0600" in message
        caplog.clear()
        QuarantineStore(f"sqlite:///{database}").close()  # nothing more to say
        assert not [r for r in caplog.records if r.name == "gateway.quarantine"]
    finally:
        store.close()


def test_a_shared_directory_is_reported_not_changed(tmp_path: Path, caplog):
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "someone-elses.conf").write_text("x")
    os.chmod(shared, 0o775)  # group-writable: the database could be replaced
    with caplog.at_level(logging.INFO, logger="gateway.quarantine"):
        QuarantineStore(f"sqlite:///{shared}/q.db").close()
    assert mode(shared) == 0o775  # not ours to change
    assert mode(shared / "q.db") == 0o600
    (record,) = [r for r in caplog.records if r.name == "gateway.quarantine"]
    assert "directory of its own" in record.getMessage()
    caplog.clear()
    os.chmod(shared, 0o755)  # readable only: the files are private, nothing to say
    with caplog.at_level(logging.INFO, logger="gateway.quarantine"):
        QuarantineStore(f"sqlite:///{shared}/q.db").close()
    assert not [r for r in caplog.records if r.name == "gateway.quarantine"]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create files for another user")
def test_root_running_the_cli_leaves_the_store_to_the_gateways_user(tmp_path: Path):
    """Root (an admin's CLI) creates the database in the gateway user's
    directory: the file and SQLite's journals belong to that user."""
    gateway_uid, gateway_gid = 65534, 65534  # nobody/nogroup, standing in for "gateway"
    directory = tmp_path / "quarantine"
    directory.mkdir(mode=0o700)
    os.chown(directory, gateway_uid, gateway_gid)
    database = directory / "q.db"
    store = QuarantineStore(f"sqlite:///{database}")
    try:
        hold(store)
        for path in store_files(database):
            info = os.stat(path)
            assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (gateway_uid, 0o600), path
    finally:
        store.close()


def test_spilled_message_files_are_private(tmp_path: Path):
    with umask(0o000):
        spool = RawSpool(threshold=10, directory=str(tmp_path))
        spool.write(MESSAGE)
        assert spool.path is not None
        assert mode(Path(spool.path)) == 0o600
        spool.discard()


@pytest.mark.slow
@pytest.mark.parametrize("mask", [0o000, 0o022])
def test_the_milter_socket_is_for_postfix_and_the_store_for_the_gateway(tmp_path: Path,
                                                                        mask: int):
    try:
        group = grp.getgrnam("postfix")
    except KeyError:
        pytest.skip("no postfix group here")
    socket = tmp_path / "spool" / "milter.sock"
    database = tmp_path / "state" / "q.db"
    config = (f'[milter]\nsocket = "unix:{socket}"\n{SPINE_CHECKS}'
              f'[quarantine]\nurl = "sqlite:///{database}"\n')
    milter = MilterProcess(tmp_path / "milter", config, env={"PYTHONPATH": str(PROJECT_ROOT)})
    with umask(mask):  # the milter inherits it
        milter.start()
    try:
        assert stat.S_ISSOCK(os.stat(socket).st_mode)
        assert mode(socket) == 0o660
        assert os.stat(socket).st_gid == group.gr_gid
        assert mode(database.parent) == 0o700 and mode(database) == 0o600
        for side in ("-wal", "-shm"):
            path = Path(f"{database}{side}")
            if path.exists():
                assert mode(path) == 0o600
    finally:
        milter.stop()

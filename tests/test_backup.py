"""gateway backup / restore: a consistent copy of a live SQLite store, checked
and migrated when restored, never over mail by accident."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

from gateway.db import MIGRATIONS, make_engine
from gateway.message import Envelope, RawContent
from gateway.policy import Policy
from gateway.quarantine.store import QuarantineStore
from gateway.ruleset import Ruleset
from gateway.symbols import Symbol
from gateway.verdict import PipelineResult
from tests.helpers import PROJECT_ROOT

MESSAGE = b"From: a@example.org\r\nTo: b@example.net\r\nSubject: held\r\n\r\nbody\r\n"


def hold(store: QuarantineStore, n: int = 1) -> list[str]:
    symbol = Symbol(name="TEST_MARKER", score=9.0, description="marker", evidence="")
    verdict = Policy(Ruleset()).decide(PipelineResult(symbols=(symbol,), runs=()), "Q1")
    envelope = Envelope(mail_from="alice@example.org", rcpt_to=("bob@example.net",))
    return [store.put(envelope, RawContent(data=MESSAGE + str(i).encode()), verdict,
                      "quarantine") for i in range(n)]


def config(tmp_path: Path, name: str) -> Path:
    state = tmp_path / name
    path = tmp_path / f"{name}.toml"
    path.write_text(f'[quarantine]\nurl = "sqlite:///{state}/quarantine.db"\n'
                    f'[classifier]\nstore = "{state}/models"\n')
    return path


def gateway(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True,
                          text=True, timeout=120, cwd=PROJECT_ROOT)


def held_ids(database: Path) -> set[str]:
    with sqlite3.connect(database) as db:
        return {row[0] for row in db.execute("SELECT id FROM messages")}


def test_a_backup_taken_while_mail_is_held_restores_on_another_node(tmp_path: Path):
    source = config(tmp_path, "node-a")
    database = tmp_path / "node-a" / "quarantine.db"
    store = QuarantineStore(f"sqlite:///{database}")
    hold(store, 20)
    (tmp_path / "node-a" / "models" / "versions" / "nb-1").mkdir(parents=True)
    (tmp_path / "node-a" / "models" / "versions" / "nb-1" / "model.json").write_text("{}")
    (tmp_path / "node-a" / "models" / "current").symlink_to("versions/nb-1")
    writing = threading.Event()
    stop = threading.Event()

    def keep_holding() -> None:  # the milter, holding mail meanwhile
        while not stop.is_set():
            hold(store)
            writing.set()

    writer = threading.Thread(target=keep_holding)
    writer.start()
    try:
        writing.wait(30)
        made = gateway("backup", str(tmp_path / "backup"), "--config", str(source))
    finally:
        stop.set()
        writer.join()
        store.close()
    assert made.returncode == 0, made.stderr
    copy = tmp_path / "backup" / "quarantine.db"
    with sqlite3.connect(copy) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    manifest = json.loads((tmp_path / "backup" / "manifest.json").read_text())
    assert manifest["held"] >= 21 and manifest["schema"]
    assert oct((tmp_path / "backup").stat().st_mode & 0o777) == "0o700"

    target = config(tmp_path, "node-b")
    restored = gateway("restore", str(tmp_path / "backup"), "--config", str(target))
    assert restored.returncode == 0, restored.stderr
    assert held_ids(tmp_path / "node-b" / "quarantine.db") == held_ids(copy)
    models = tmp_path / "node-b" / "models"
    assert (models / "current").readlink() == Path("versions/nb-1")
    assert (models / "current" / "model.json").read_text() == "{}"


def test_restore_never_replaces_mail_unless_forced_and_refuses_a_changed_backup(tmp_path):
    source = config(tmp_path, "node-a")
    store = QuarantineStore(f"sqlite:///{tmp_path}/node-a/quarantine.db")
    hold(store, 2)
    store.close()
    assert gateway("backup", str(tmp_path / "backup"), "--config", str(source)).returncode == 0
    other = QuarantineStore(f"sqlite:///{tmp_path}/node-b/quarantine.db")
    kept = hold(other, 3)
    other.close()
    target = config(tmp_path, "node-b")
    refused = gateway("restore", str(tmp_path / "backup"), "--config", str(target))
    assert refused.returncode == 2
    assert refused.stderr.strip() == (
        f"gateway: restore: {tmp_path}/node-b/quarantine.db holds 3 messages; --force "
        "replaces them with the backup's")
    assert held_ids(tmp_path / "node-b" / "quarantine.db") == set(kept)
    with sqlite3.connect(tmp_path / "backup" / "quarantine.db") as db:
        db.execute("UPDATE messages SET state = 'released'")
    changed = gateway("restore", str(tmp_path / "backup"), "--config", str(target), "--force")
    assert changed.returncode == 2 and "checksum differs" in changed.stderr
    assert held_ids(tmp_path / "node-b" / "quarantine.db") == set(kept)


def test_a_backup_from_an_earlier_schema_is_migrated_when_restored(tmp_path: Path):
    from alembic import command
    from alembic.config import Config as AlembicConfig

    database = tmp_path / "old" / "quarantine.db"
    database.parent.mkdir()
    engine = make_engine(f"sqlite:///{database}")
    settings = AlembicConfig()
    settings.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        settings.attributes["connection"] = connection
        command.upgrade(settings, "0005")  # before the node registry (0006)
    engine.dispose()
    old = QuarantineStore(f"sqlite:///{database}", migrate=False)
    kept = hold(old, 2)
    old.close()
    assert gateway("backup", str(tmp_path / "backup"), "--config",
                   str(config(tmp_path, "old"))).returncode == 0
    restored = gateway("restore", str(tmp_path / "backup"), "--config",
                       str(config(tmp_path, "new")))
    assert restored.returncode == 0, restored.stderr
    assert "restore: migrated the quarantine from schema 0005 to" in restored.stdout
    new = QuarantineStore(f"sqlite:///{tmp_path}/new/quarantine.db")
    try:
        assert {r.id for r in new.records()} == set(kept)
    finally:
        new.close()


def test_a_store_in_postgresql_is_left_to_pg_dump(tmp_path: Path):
    path = tmp_path / "pg.toml"
    path.write_text('[quarantine]\nurl = "postgresql://gw:secret@db.example/gateway"\n'
                    '[classifier]\nstore = "postgresql://gw:secret@db.example/gateway"\n')
    result = gateway("backup", str(tmp_path / "backup"), "--config", str(path))
    assert result.returncode == 2
    assert "not included: quarantine postgresql://db.example/gateway (pg_dump)" in result.stdout
    assert "secret" not in result.stdout + result.stderr
    assert result.stderr.strip() == ("gateway: backup: nothing to back up here (no SQLite "
                                     "store, no folder model store)")

"""The learned training set: gateway learn, its table, train --feedback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import create_engine, inspect

from gateway.classifier.train import Labelled, load_dataset
from gateway.classifier.trainingset import TrainingSet, TrainingSetError
from gateway.message import Envelope, RawContent
from gateway.quarantine.store import MIGRATIONS, QuarantineStore
from tests.helpers import FIXTURES, PROJECT_ROOT
from tests.test_quarantine import message, verdict

HAM = FIXTURES / "corpus" / "ham"
SPAM = FIXTURES / "corpus" / "spam"


def gateway(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True,
                          text=True, cwd=PROJECT_ROOT, timeout=120)


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(f'[quarantine]\nurl = "sqlite:///{tmp_path}/q.db"\n'
                    f'[classifier]\nstore = "{tmp_path}/store"\n')
    return path


def test_learn_relabel_and_forget(tmp_path: Path):
    stored = TrainingSet(f"sqlite:///{tmp_path}/t.db")
    try:
        raw = sorted(SPAM.iterdir())[0].read_bytes()
        assert stored.learn(raw, "spam", "a.eml", "ana") == "added"
        assert stored.learn(raw, "spam", "a.eml", "ana") == "unchanged"
        # The same body delivered again (other Received lines) is the same message.
        assert stored.learn(b"Received: from x\r\n" + raw, "spam", "b.eml", "ana") == "unchanged"
        assert stored.learn(raw, "ham", "a.eml", "bob", note="a newsletter") == "relabelled"
        assert stored.counts() == {"ham": 1, "spam": 0}
        (entry,) = stored.entries()
        assert (entry.label, entry.who, entry.note) == ("ham", "bob", "a newsletter")
        (item,) = stored.labelled()
        assert item.raw == raw and item.label == 0
        with pytest.raises(TrainingSetError, match="label must be ham or spam"):
            stored.learn(raw, "eggs", "a.eml", "ana")
        assert stored.forget(entry.key[:10]) and stored.counts() == {"ham": 0, "spam": 0}
        assert not stored.forget("ffff")
    finally:
        stored.close()


def test_the_training_set_table_joins_an_existing_quarantine(tmp_path: Path):
    """A quarantine database made before the table existed is migrated."""
    url = f"sqlite:///{tmp_path}/old.db"
    settings = AlembicConfig()
    settings.set_main_option("script_location", str(MIGRATIONS))
    engine = create_engine(url)
    with engine.begin() as connection:
        settings.attributes["connection"] = connection
        command.upgrade(settings, "0001")
    assert "training_messages" not in inspect(engine).get_table_names()
    engine.dispose()
    TrainingSet(url).close()
    engine = create_engine(url)
    assert "training_messages" in inspect(engine).get_table_names()
    engine.dispose()


def test_learned_labels_win_over_the_folders(tmp_path: Path):
    spam_file = sorted(SPAM.iterdir())[0]
    extra = b"From: a@example.org\r\nSubject: only learned\r\n\r\nhello there friend\r\n"
    data = load_dataset([HAM], [SPAM], show_progress=False, learned=[
        Labelled(spam_file.read_bytes(), 0, "learned #1"),
        Labelled(extra, 1, "learned #2")])
    assert (len(data.labels), int(data.labels.sum())) == (81, 40)
    assert data.relabelled == 1 and data.learned == 1
    index = data.sources.index(str(spam_file))
    assert data.labels[index] == 0


def test_gateway_learn_files_and_quarantine_then_train_with_feedback(config: Path,
                                                                    tmp_path: Path):
    spam = sorted(SPAM.iterdir())[:3]
    result = gateway("learn", "--config", str(config), "--spam", *map(str, spam))
    assert result.returncode == 0, result.stderr
    assert "3 added" in result.stdout and "holds 0 ham and 3 spam" in result.stdout

    quarantine = QuarantineStore(f"sqlite:///{tmp_path}/q.db")
    try:
        held = quarantine.put(Envelope(mail_from="alice@example.org", rcpt_to=("b@example.net",)),
                              RawContent(data=message("learn1")), verdict("BAYES_99"))
    finally:
        quarantine.close()
    result = gateway("learn", "--config", str(config), "--ham", "--quarantine", held, "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["added"] == 1
    quarantine = QuarantineStore(f"sqlite:///{tmp_path}/q.db")
    try:
        assert [e.action for e in quarantine.get(held).events] == ["quarantined", "learned-ham"]
    finally:
        quarantine.close()

    listing = gateway("learn", "--config", str(config), "--list", "--json")
    latest = json.loads(listing.stdout)["latest"]
    assert latest[0]["source"] == f"quarantine:{held}" and latest[0]["label"] == "ham"

    result = gateway("train", "--config", str(config), "--ham", str(HAM), "--spam", str(SPAM),
                     "--feedback", "--repeats", "1", "--out", str(tmp_path / "m"))
    assert result.returncode == 0, result.stderr
    assert "learned training set: 1 ham, 3 spam" in result.stdout
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    assert meta["data"]["learned"] == 1  # the three spam were in the folders already
    assert meta["data"]["ham"] == 41


def test_learn_errors_are_one_line(config: Path, tmp_path: Path):
    result = gateway("learn", "--config", str(config), "--spam", str(tmp_path / "nope.eml"))
    assert result.returncode == 2
    assert result.stderr == f"gateway: {tmp_path / 'nope.eml'}: no such file or directory\n"

    (tmp_path / "empty.eml").write_bytes(b"")
    (tmp_path / "binary.eml").write_bytes(bytes(range(256)) * 4)
    good = sorted(HAM.iterdir())[0]
    result = gateway("learn", "--config", str(config), "--ham", str(tmp_path / "empty.eml"),
                     str(tmp_path / "binary.eml"), str(good))
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert lines == [f"gateway: {tmp_path / 'empty.eml'}: not learned, the file is empty",
                     f"gateway: {tmp_path / 'binary.eml'}: not learned, not a mail message "
                     "(binary data)"]
    assert "1 added" in result.stdout and "2 not learned" in result.stdout
    assert "Traceback" not in result.stderr

    result = gateway("learn", "--config", str(config), str(good))
    assert result.returncode == 2 and "--spam or --ham" in result.stderr
    result = gateway("learn", "--config", str(config), "--spam", "--quarantine", "nosuch")
    assert result.returncode == 1
    assert result.stderr == "gateway: no quarantined message 'nosuch'\n"

    no_db = tmp_path / "no-db.toml"
    no_db.write_text('[quarantine]\nurl = ""\n')
    result = gateway("learn", "--config", str(no_db), "--spam", str(good))
    assert result.returncode == 2
    assert "no database for the training set" in result.stderr


def test_train_needs_mail(config: Path):
    result = gateway("train", "--config", str(config), "--ham", str(HAM))
    assert result.returncode == 2 and "give both --ham and --spam" in result.stderr

"""The learned training set: gateway learn, its table, train --feedback."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import create_engine, inspect

from gateway.classifier.train import Labelled, load_dataset
from gateway.classifier.trainingset import TrainingSet, TrainingSetError
from gateway.db import MIGRATIONS
from gateway.message import Envelope, RawContent
from gateway.quarantine.store import QuarantineStore
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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_train_needs_mail(config: Path):
    result = gateway("train", "--config", str(config), "--ham", str(HAM))
    assert result.returncode == 2 and "give both --ham and --spam" in result.stderr


# -- autolearning ---------------------------------------------------------------------

def learn_verdict(action: str, *symbols: tuple[str, float], forced_by: str | None = None,
                  dmarc: dict | None = None, failed: tuple[str, ...] = ()):
    from gateway.symbols import Symbol
    from gateway.verdict import Verdict

    found = tuple(Symbol(name, score) for name, score in symbols)
    return Verdict(action=action, score=sum(s for _, s in symbols), required=4.0,  # type: ignore[arg-type]
                   symbols=found, failed_checks=failed, reason="test", forced_by=forced_by,
                   facts={"dmarc": dmarc} if dmarc else {})


ALIGNED = {"result": "pass", "from_domain": "Example.org", "dkim_aligned": True,
           "spf_aligned": False, "dkim_domain": "example.org"}
CLIENT = Envelope(mail_from="alice@example.org", rcpt_to=("bob@example.net",),
                  client_ip="192.0.2.77")


def test_autolearn_candidates_come_only_from_evidence_that_is_not_the_classifiers():
    from gateway.classifier.autolearn import bayes_derived, candidate
    from gateway.meta import Meta, parse_meta

    def found(*args, **kwargs):
        return candidate(learn_verdict(*args, **kwargs), CLIENT, 6.0, derived)

    tree, names = parse_meta("BAYES_99 && FIRST_CONTACT")
    derived = bayes_derived([Meta("BAYES_FIRST", "", tree, names, "", 3.0)])
    assert derived == {"BAYES_FIRST"}
    # Ham: an authenticated author someone knows.
    ham = found("accept", ("KNOWN_CORRESPONDENT", -1.0), ("BAYES_50", 1.5), dmarc=ALIGNED)
    assert ham is not None and ham.label == "ham" and ham.sender_key == "domain:example.org"
    assert "aligned DKIM example.org" in ham.why and "KNOWN_CORRESPONDENT" in ham.why
    assert found("accept", ("ALLOWLIST_SENDER", -20.0), dmarc={**ALIGNED, "dkim_aligned": False,
                                                                 "spf_aligned": True})
    assert found("accept", ("ALLOWLIST_IP", -20.0)).sender_key == "ip:192.0.2.77"
    # Not: unauthenticated (a forged From of a known correspondent), unknown,
    # a check that failed, or mail delivered as spam.
    assert found("accept", ("KNOWN_CORRESPONDENT", -1.0),
                 dmarc={**ALIGNED, "result": "fail", "dkim_aligned": False}) is None
    assert found("accept", ("DMARC_PASS", -1.0), dmarc=ALIGNED) is None
    assert found("accept", ("KNOWN_CORRESPONDENT", -1.0), dmarc=ALIGNED,
                 failed=("dkim",)) is None
    assert found("add_header", ("KNOWN_CORRESPONDENT", -1.0), ("BAYES_95", 6.0),
                 dmarc=ALIGNED) is None
    # Nor mail in which the identity check saw an imitation, or our users' own.
    for identity in ({"imitation": True, "known": True}, {"direction": "outbound"}):
        verdict = learn_verdict("accept", ("KNOWN_CORRESPONDENT", -1.0), dmarc=ALIGNED)
        verdict = replace(verdict, facts={**verdict.facts, "identity": identity})
        assert candidate(verdict, CLIENT, 6.0, derived) is None
    # Spam: forced by other evidence, or over the threshold without the classifier.
    spam = found("reject", ("BLOCKLIST_SENDER", 0.0), ("BAYES_00", -2.0),
                 forced_by="BLOCKLIST_SENDER")
    assert spam is not None and spam.label == "spam" and spam.sender_key == "net:192.0.2.0/24"
    assert "forced by BLOCKLIST_SENDER" in spam.why
    assert found("quarantine", ("DNSBL_LISTED", 4.0), ("MISSING_DATE", 2.0),
                 ("BAYES_99", 7.5)).label == "spam"
    # Not: held by the classifier (alone, with little else, or through a meta rule).
    assert found("quarantine", ("BAYES_999", 9.0)) is None
    assert found("quarantine", ("MISSING_DATE", 1.0), ("BAYES_95", 6.0)) is None
    assert found("quarantine", ("BAYES_FIRST", 6.0), ("BAYES_99", 7.5),
                 forced_by="BAYES_FIRST") is None
    assert found("quarantine", ("BAYES_FIRST", 6.0), ("MISSING_DATE", 1.0)) is None


class CountedFacts(dict):
    """A verdict's facts that count how often a check's are read."""

    reads = 0

    def get(self, key, default=None):  # Facts.of reads through get
        CountedFacts.reads += 1
        return super().get(key, default)


def test_accepted_mail_nobody_vouches_for_is_no_candidate_without_reading_its_facts():
    # Before, the identity check's facts were parsed for every accepted
    # message, though only allow-listed or known senders can be candidates.
    from gateway.classifier.autolearn import candidate

    facts = CountedFacts(dmarc=ALIGNED, identity={"direction": "inbound"})
    verdict = replace(learn_verdict("accept", ("DMARC_PASS", -1.0)), facts=facts)
    CountedFacts.reads = 0
    assert candidate(verdict, CLIENT, 6.0) is None
    assert CountedFacts.reads == 0
    known = replace(learn_verdict("accept", ("KNOWN_CORRESPONDENT", -1.0)), facts=facts)
    assert candidate(known, CLIENT, 6.0) is not None and CountedFacts.reads == 2


def mail(tag: str) -> bytes:
    """A message of its own: the training set tells messages apart by body."""
    return message(tag).replace(b"\r\n\r\n", f"\r\n\r\nabout {tag}\r\n".encode(), 1)


def test_autolearn_queues_each_message_once_and_caps_each_sender(tmp_path: Path):
    from gateway.classifier.autolearn import Candidate, queue_candidate

    store = QuarantineStore(f"sqlite:///{tmp_path}/q.db")
    ham = Candidate("ham", "accepted; example.org authenticated", "domain:example.org")
    try:
        assert queue_candidate(store.engine, ham, mail("a"), "minutes a", None, 3, 2) \
            == "queued"
        assert queue_candidate(store.engine, ham, mail("a"), "minutes a", None, 3, 2) \
            == "known"
        assert queue_candidate(store.engine, ham, mail("b"), "minutes b", None, 3, 2) \
            == "queued"
        assert queue_candidate(store.engine, ham, mail("c"), "minutes c", None, 3, 2) \
            == "capped"
        other = Candidate("ham", "accepted; example.com authenticated", "domain:example.com")
        assert queue_candidate(store.engine, other, mail("c"), None, None, 3, 2) == "queued"
    finally:
        store.close()


def test_autolearn_learns_after_the_delay_unless_someone_objects(tmp_path: Path):
    from datetime import UTC, datetime, timedelta

    from gateway.classifier.autolearn import Candidate, accept_candidates, queue_candidate
    from gateway.web.console import Console

    url = f"sqlite:///{tmp_path}/q.db"
    store = QuarantineStore(url)
    start = datetime(2026, 12, 1, tzinfo=UTC)
    spam = Candidate("spam", "reject: forced by BLOCKLIST_SENDER", "net:192.0.2.0/24")
    ham = Candidate("ham", "accepted; example.org authenticated (aligned SPF)",
                    "domain:example.org")
    held = {tag: store.put(Envelope(mail_from="x@spam.example", rcpt_to=("bob@example.net",)),
                           RawContent(mail(tag)), verdict("TEST_MARKER"), "quarantine")
            for tag in ("released", "relabelled", "kept")}
    for tag, identifier in held.items():
        queue_candidate(store.engine, spam, mail(tag), tag, identifier, 3, 20, at=start)
    for tag in ("ham-1", "ham-2", "by-hand"):
        queue_candidate(store.engine, ham, mail(tag), tag, None, 3, 20, at=start)
    # Meanwhile: an analyst says one held message is good, another is
    # released; a person learns one accepted message as spam by hand.
    Console(store).add_label(held["relabelled"], "ham", "analyst", "ana")
    store.mark_released(held["released"], ["bob@example.net"], "QID", "ana", "released")
    training = TrainingSet(url)
    training.learn(mail("by-hand"), "spam", "by-hand.eml", "ana")

    early = accept_candidates(url, url, "autolearn (on)", at=start + timedelta(days=1))
    assert (early.learned, early.waiting) == (0, 6)
    later = accept_candidates(url, url, "autolearn (on)", at=start + timedelta(days=3, hours=1))
    assert (later.learned, later.objected, later.waiting) == (3, 3, 0)
    rows = {entry.source: entry for entry in training.entries()}
    # The person's label stands; the candidates that nobody contradicted are
    # learned, each saying which candidate and why.
    assert rows["by-hand.eml"].label == "spam" and rows["by-hand.eml"].who == "ana"
    learned = [e for e in rows.values() if e.who == "autolearn"]
    assert sorted(e.label for e in learned) == ["ham", "ham", "spam"]
    assert all(e.source.startswith("autolearn feedback #") for e in learned)
    (kept,) = [e for e in learned if e.label == "spam"]
    assert kept.quarantine_id == held["kept"] and kept.note == spam.why
    # Nothing is learned twice: a candidate of a learned message is refused.
    assert queue_candidate(store.engine, ham, mail("ham-1"), None, None, 0, 20) == "known"
    again = accept_candidates(url, url, "autolearn (on)", at=start + timedelta(days=9))
    assert again.learned == 0
    training.close()
    store.close()


def test_candidates_offered_together_are_queued_in_one_transaction(tmp_path: Path, caplog):
    # Before, each candidate had a transaction (and a durable commit) of its
    # own; one that cannot be queued still costs only itself.
    from sqlalchemy import event

    from gateway.classifier.autolearn import Autolearner
    from gateway.config import parse_config
    from gateway.ruleset import Ruleset

    store = QuarantineStore(f"sqlite:///{tmp_path}/q.db")
    commits: list[object] = []
    event.listen(store.engine, "commit", commits.append)
    settings = parse_config('[classifier]\nautolearn = "review"\n', "test")
    learner = Autolearner(settings, lambda: store, Ruleset())
    ham = learn_verdict("accept", ("ALLOWLIST_IP", -20.0))
    spam = learn_verdict("reject", ("BLOCKLIST_SENDER", 0.0), forced_by="BLOCKLIST_SENDER")
    try:
        for tag in ("one", "two", "three"):
            assert learner.offer(CLIENT, lambda tag=tag: mail(tag), ham, None) is not None
        learner.flush()
        assert learner.outcomes == {"queued": 3} and len(commits) == 1
        # A held message that is not in the store: its event cannot be written.
        learner.offer(CLIENT, lambda: mail("four"), ham, None)
        learner.offer(CLIENT, lambda: mail("gone"), spam, "no-such-held-message")
        learner.offer(CLIENT, lambda: mail("five"), ham, None)
        learner.flush()
    finally:
        learner.close()
        store.close()
    assert learner.outcomes == {"queued": 5}
    assert "autolearn: cannot queue a candidate: FOREIGN KEY constraint failed" in caplog.text


@pytest.mark.postfix
def test_autolearn_candidates_from_mail_through_postfix_wait_for_review(
        postfix, sink, gateway_milter, tmp_path: Path):
    import smtplib
    import uuid

    from tests.helpers import send, wait_until
    from tests.test_quarantine import cli, quarantine_config

    url = f"sqlite:///{tmp_path}/q.db"
    milter = gateway_milter(quarantine_config(tmp_path, postfix, (
        f'[quarantine]\nurl = "{url}"\n'
        '[lists]\nblock_senders = ["spammer.example"]\nallow_ips = ["127.0.0.1", "::1"]\n'
        '[classifier]\nautolearn = "review"\nautolearn_delay_days = 0\n')))
    good, bad = uuid.uuid4().hex, uuid.uuid4().hex
    send(postfix, mail(good), mail_from="alice@example.org")  # from an allow-listed client
    with pytest.raises(smtplib.SMTPDataError):
        send(postfix, mail(bad), mail_from="x@spammer.example")  # forced reject
    assert sink.find(good) is not None

    def queued() -> list[dict]:
        listing = cli(milter.config_path, "feedback", "list", "--json")
        rows = [r for r in json.loads(listing.stdout) if r["source"] == "autolearn"]
        return rows if len(rows) == 2 else []

    rows = wait_until(queued, what="two autolearn candidates in the feedback queue")
    assert {r["label"] for r in rows} == {"ham", "spam"}
    assert all(r["state"] == "pending" for r in rows)  # "review": nothing learned yet
    assert any("allow-listed client" in r["note"] for r in rows)
    assert any("forced by BLOCKLIST_SENDER" in r["note"] for r in rows)
    listed = cli(milter.config_path, "learn", "--list", "--json")
    assert json.loads(listed.stdout)["totals"] == {"ham": 0, "spam": 0}

    accepted = cli(milter.config_path, "feedback", "accept", "--autolearn")
    assert accepted.returncode == 0, accepted.stderr
    assert "2 learned" in accepted.stdout
    latest = json.loads(cli(milter.config_path, "learn", "--list", "--json").stdout)
    assert latest["totals"] == {"ham": 1, "spam": 1}
    assert {e["who"] for e in latest["latest"]} == {"autolearn"}
    stored = TrainingSet(url)
    try:
        learned = {item.label: item.raw for item in stored.labelled()}
    finally:
        stored.close()
    assert good.encode() in learned[0] and bad.encode() in learned[1]


def test_an_admin_accepts_one_autolearn_candidate_in_the_console(tmp_path: Path):
    from gateway.classifier.autolearn import Candidate, queue_candidate
    from gateway.web.console import Console

    url = f"sqlite:///{tmp_path}/q.db"
    store = QuarantineStore(url)
    console = Console(store)
    try:
        ham = Candidate("ham", "accepted; example.org authenticated (aligned SPF)",
                        "domain:example.org")
        assert queue_candidate(store.engine, ham, mail("accepted"), "minutes accepted", None,
                               3, 20) == "queued"
        (label,) = console.labels()
        assert (label.source, label.subject, label.message) == ("autolearn", "minutes accepted",
                                                                 "")
        # Not due yet, but an admin's choice: the message it carries is learned.
        outcome = console.review(label.id, True, "ann")
        assert outcome.startswith("autolearn candidate: 1 learned")
        assert console.label(label.id).state == "accepted"
        training = TrainingSet(url)
        try:
            (entry,) = training.entries()
            assert (entry.label, entry.who, entry.note) == ("ham", "autolearn", ham.why)
        finally:
            training.close()
    finally:
        store.close()

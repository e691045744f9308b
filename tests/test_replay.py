"""What-if replay: kept mail re-scored under proposed rules, and the
accepted-mail sample the keeper keeps for it."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import inspect

from gateway.config import load_config
from gateway.db import MIGRATIONS, now
from gateway.evaluator import LocalEvaluator
from gateway.message import Envelope, Message, RawContent
from gateway.quarantine.keeper import Keeper
from gateway.quarantine.store import QuarantineStore
from gateway.verdict import Verdict
from tests.helpers import PROJECT_ROOT


def gateway(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True,
                          text=True, cwd=PROJECT_ROOT, timeout=120)


def message(number: int, date: bool = True, message_id: bool = True, sender: str = "",
            from_header: bool = True) -> bytes:
    lines = []
    if from_header:
        lines.append(f"From: Sender {number} <{sender or f'user{number}@example.org'}>")
    lines += ["To: bob@example.net", f"Subject: message {number}"]
    if date:
        lines.append("Date: Tue, 24 Nov 2026 09:12:44 +0000")
    if message_id:
        lines.append(f"Message-ID: <m{number}@example.org>")
    return ("\r\n".join(lines) + f"\r\n\r\nbody {number}\r\n").encode()


@pytest.fixture
def kept(tmp_path: Path):
    """A config whose rules quarantine at 2, and a store holding mail it
    decided: accepted samples scoring 0, 0.5, 1 and 1.5, a held message
    (3.0) and a kept copy of a rejected one (block list)."""
    rules = tmp_path / "current.toml"
    rules.write_text("[thresholds]\nquarantine = 2.0\n")
    config_path = tmp_path / "gateway.toml"
    config_path.write_text(
        '[pipeline]\nchecks = ["headers", "size", "lists"]\nworkers = 0\n'
        f'[policy]\nrules = ["{PROJECT_ROOT}/rules/default.toml", "{rules}"]\n'
        '[lists]\nblock_senders = ["spammer.example"]\n'
        f'[quarantine]\nurl = "sqlite:///{tmp_path}/store/quarantine.db"\n'
        'keep_rejected_days = 7\n'
        '[replay]\nkeep_accepted_sample = 1\n')
    config = load_config(config_path)
    evaluator = LocalEvaluator(config)
    keeper = Keeper(config)
    ids: dict[str, str] = {}

    def decide(name: str, raw: bytes, sender: str = "user@example.org") -> Verdict:
        envelope = Envelope(mail_from=sender, rcpt_to=("bob@example.net",),
                            client_ip="198.51.100.7", helo="mail.example.org",
                            queue_id=f"Q{name.upper()}")
        verdict = evaluator.evaluate_message(Message.from_bytes(raw, envelope, config.limits))
        content = RawContent(data=raw)
        if verdict.action == "accept":
            keeper.sample_accepted(envelope, content, verdict)
        elif verdict.action == "quarantine":
            ids[name] = keeper.hold(envelope, content, verdict)
        else:
            ids[name] = keeper.keep_rejected(envelope, content, verdict)
        return verdict

    scores = {
        "clean": decide("clean", message(1)).score,
        "no_id": decide("no_id", message(2, message_id=False)).score,
        "no_date": decide("no_date", message(3, date=False)).score,
        "no_both": decide("no_both", message(4, date=False, message_id=False)).score,
        "held": decide("held", message(5, date=False, from_header=False)).score,
        "rejected": decide("rejected", message(6), sender="eve@spammer.example").score,
    }
    keeper.close()
    evaluator.close()
    assert scores == {"clean": 0, "no_id": 0.5, "no_date": 1.0, "no_both": 1.5, "held": 3.0,
                      "rejected": 0}
    store = QuarantineStore(config.quarantine.url)
    for name in ("clean", "no_id", "no_date", "no_both"):
        (sample,) = store.find_samples(f"Q{name.upper()}")
        ids[name] = sample["id"]
    store.close()
    return config_path, ids


def replay(config: Path, *args: str) -> dict:
    result = gateway("replay", "--config", str(config), "--json", *args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.slow
def test_a_lower_threshold_lists_exactly_the_messages_that_cross_it(kept, tmp_path: Path):
    config, ids = kept
    lower = tmp_path / "lower.toml"
    lower.write_text("[thresholds]\nquarantine = 0.8\n")
    report = replay(config, "--rules", str(lower))
    assert report["messages"] == 6
    assert report["by_kind"] == {"accepted sample": 4, "held": 1, "kept reject": 1}
    assert report["changes"] == {"accept->quarantine": 2}
    assert {row["id"] for row in report["changed"]} == {ids["no_date"], ids["no_both"]}
    by_id = {row["id"]: row for row in report["changed"]}
    row = by_id[ids["no_both"]]
    assert row["current"]["action"] == "accept" and row["proposed"]["action"] == "quarantine"
    assert row["proposed"]["reason"] == "score 1.5 >= quarantine threshold 0.8"
    assert [s["name"] for s in row["symbols"]] == ["MISSING_DATE", "MISSING_MESSAGE_ID"]
    assert row["queue_id"] == "QNO_BOTH" and row["message_id"] is None
    assert report["drifted"] == 0
    assert report["proposed"]["quarantine"] == 0.8


@pytest.mark.slow
def test_a_new_score_names_the_symbol_that_moved_each_message(kept, tmp_path: Path):
    config, ids = kept
    scores = tmp_path / "scores.toml"
    scores.write_text("[scores]\nMISSING_MESSAGE_ID = 1.5\n")
    report = replay(config, "--rules", str(scores))
    assert report["changes"] == {"accept->quarantine": 1}
    (row,) = report["changed"]
    assert row["id"] == ids["no_both"]
    assert row["symbols"] == [{"name": "MISSING_MESSAGE_ID", "current": 0.5, "proposed": 1.5}]
    text = gateway("replay", "--config", str(config), "--rules", str(scores))
    assert text.returncode == 0, text.stderr
    assert "1 message would be decided differently:\n  1 from accept to quarantine\n" \
        in text.stdout
    assert "by MISSING_MESSAGE_ID 0.5 -> 1.5" in text.stdout


@pytest.mark.slow
def test_replay_can_look_at_one_kind_and_a_time_window(kept, tmp_path: Path):
    config, _ids = kept
    stricter = tmp_path / "strict.toml"
    stricter.write_text("[thresholds]\nquarantine = 0.1\nreject = 2.5\n")
    report = replay(config, "--rules", str(stricter), "--kind", "quarantine")
    assert report["messages"] == 1
    assert report["changes"] == {"quarantine->reject": 1}
    assert replay(config, "--rules", str(stricter), "--since", "2099-01-01")["messages"] == 0


@pytest.mark.slow
def test_proposed_rules_are_validated_like_the_running_ones(kept, tmp_path: Path):
    config, _ids = kept
    wrong = tmp_path / "wrong.toml"
    wrong.write_text("[scores]\nMISSING_DAT = 2\n[thresholds]\nquarantine = \"x\"\n")
    result = gateway("replay", "--config", str(config), "--rules", str(wrong),
                     "--rules", "/no/such.toml", "--model", str(tmp_path))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "gateway: /no/such.toml: no such rules file",
        f"gateway: {tmp_path}: not a model folder (no model.json)",
    ]
    result = gateway("replay", "--config", str(config), "--rules", str(wrong))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"gateway: {wrong}: thresholds.quarantine: expected a number, got 'x'",
        f"gateway: {wrong}: scores.MISSING_DAT: unknown symbol (did you mean MISSING_DATE?)",
    ]
    result = gateway("replay", "--config", str(config))
    assert result.returncode == 2
    assert result.stderr == "gateway: replay: propose something: --rules FILE and/or " \
                            "--model DIR\n"


@pytest.mark.slow
def test_a_proposed_model_is_scored_by_its_own_pipeline(tmp_path: Path, kept):
    config_path, _ids = kept
    text = config_path.read_text().replace('"headers", "size", "lists"',
                                           '"headers", "size", "lists", "bayes"')
    config_path.write_text(text)
    shipped = PROJECT_ROOT / "models" / "default"
    report = replay(config_path, "--model", str(shipped))
    assert report["proposed"]["model"] == str(shipped)
    assert report["messages"] == 6
    assert report["changed"] == []  # the same model: the same verdicts


# -- the accepted-mail sample ---------------------------------------------------------------


def sample_config(tmp_path: Path, share: str) -> object:
    path = tmp_path / "gateway.toml"
    path.write_text(f'[quarantine]\nurl = "sqlite:///{tmp_path}/q.db"\n'
                    f'[replay]\nkeep_accepted_sample = {share}\naccepted_retention_days = 2\n')
    return load_config(path)


def keep(config, count: int) -> QuarantineStore:
    """``count`` accepted messages offered to the keeper's sample."""
    keeper = Keeper(config)
    verdict = Verdict(action="accept", score=0.0, required=6.0, symbols=(),
                      failed_checks=(), reason="score 0 < quarantine threshold 6")
    for number in range(count):
        envelope = Envelope(mail_from="a@example.org", rcpt_to=("b@example.net",),
                            queue_id=f"Q{number:03d}", macros={"tls_version": "TLSv1.3"})
        keeper.sample_accepted(envelope, RawContent(data=message(number)), verdict)
    keeper.close()
    return QuarantineStore(config.quarantine.url)


def test_a_count_keeps_the_newest(tmp_path: Path):
    store = keep(sample_config(tmp_path, "3"), 25)
    assert store.count_samples() == 3
    kept = [item.envelope.queue_id for item in store.stored_mail(kinds=("accept",))]
    assert kept == ["Q022", "Q023", "Q024"]
    (item,) = [i for i in store.stored_mail(kinds=("accept",)) if i.envelope.queue_id == "Q024"]
    assert item.envelope.macros == {"tls_version": "TLSv1.3"}
    assert item.raw == message(24)
    store.close()


@pytest.mark.slow
def test_off_by_default_and_a_fraction_keeps_some(tmp_path: Path):
    assert load_config(None).replay.keep_accepted_sample == 0
    off = keep(sample_config(tmp_path, "0"), 20)
    assert off.count_samples() == 0
    off.close()
    (tmp_path / "q.db").unlink()
    some = keep(sample_config(tmp_path, "0.5"), 200)
    assert 50 < some.count_samples() < 150
    some.close()


def test_samples_have_their_own_retention(tmp_path: Path):
    config = sample_config(tmp_path, "1")
    store = keep(config, 4)
    assert store.purge_samples(2) == 0
    assert store.purge_samples(2, at=now() + timedelta(days=2, minutes=1)) == 4
    assert store.count_samples() == 0
    store.close()


def test_the_migrations_have_one_head_and_a_fresh_store_has_the_sample_table(tmp_path: Path):
    scripts = ScriptDirectory(str(MIGRATIONS))
    assert len(scripts.get_heads()) == 1  # two engineers' migrations chained, never forked
    assert "0003" in {revision.revision for revision in scripts.walk_revisions()}
    store = QuarantineStore(f"sqlite:///{tmp_path}/fresh.db")
    assert "replay_samples" in inspect(store.engine).get_table_names()
    store.close()

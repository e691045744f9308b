"""``gateway trace``: from a queue id or Message-ID to what happened."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.message import Envelope, RawContent
from gateway.quarantine.store import QuarantineStore
from gateway.symbols import Symbol
from gateway.verdict import Verdict
from tests.helpers import PROJECT_ROOT

RAW = (b"From: Prize Desk <winner@promo.example>\r\nTo: bob@example.net\r\n"
       b"Subject: You have won\r\nMessage-ID: <prize-1@promo.example>\r\n\r\nClick here\r\n")

VERDICT_LINE = {
    "queue_id": "4XyZ12AB", "client_ip": "203.0.113.9", "helo": "mx.promo.example",
    "from": "winner@promo.example", "rcpt": ["bob@example.net"], "size": 123,
    "action": "quarantine", "score": 7.5, "reason": "score 7.5 >= quarantine threshold 6",
    "symbols": {"BAYES_99": 7.5, "MISSING_DATE": 1.0}, "failed_checks": [],
    "spam_probability": 0.995, "check_ms": {"headers": 0.2, "bayes": 12.5},
    "total_ms": 14.1, "quarantine_id": "",
}


def gateway(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True,
                          text=True, cwd=PROJECT_ROOT, timeout=60)


@pytest.fixture
def traced(tmp_path: Path) -> tuple[Path, Path, str]:
    """A held message, released by an analyst, and the gateway's log lines
    about it among others: (config, log file, quarantine id)."""
    url = f"sqlite:///{tmp_path}/quarantine.db"
    config = tmp_path / "gateway.toml"
    config.write_text(f'[quarantine]\nurl = "{url}"\n')
    store = QuarantineStore(url)
    verdict = Verdict(action="quarantine", score=8.5, required=6.0,
                      symbols=(Symbol("BAYES_99", 7.5, "spam probability 99%", "p=0.995"),
                               Symbol("MISSING_DATE", 1.0, "no Date header")),
                      failed_checks=(), reason="score 8.5 >= quarantine threshold 6")
    envelope = Envelope(mail_from="winner@promo.example", rcpt_to=("bob@example.net",),
                        client_ip="203.0.113.9", queue_id="4XyZ12AB")
    identifier = store.put(envelope, RawContent(data=RAW), verdict, "quarantine")
    store.change_state(identifier, "released", "alice", "released",
                       "to bob@example.net via 127.0.0.1:10026")
    store.close()
    log = tmp_path / "gateway.log"
    line = dict(VERDICT_LINE, quarantine_id=identifier)
    log.write_text("\n".join([
        "2026-12-01 10:00:00,001 INFO gateway: gateway milter started",
        json.dumps({"queue_id": "OTHER1", "action": "accept", "score": 0.0}),
        json.dumps({"time": "2026-12-01T10:00:02", "level": "ERROR", "queue_id": "4XyZ12AB",
                    "message": "clamav: clamd at /run/clamav/clamd.ctl: cannot connect"}),
        "2026-12-01 10:00:02,500 INFO gateway.message: " + json.dumps(line),
        "{not json at all, 4XyZ12AB",
    ]) + "\n")
    return config, log, identifier


@pytest.mark.slow
def test_trace_by_queue_id_shows_verdict_symbols_timings_and_release(traced):
    config, log, identifier = traced
    result = gateway("trace", "4XyZ12AB", "--config", str(config), "--log", str(log))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "log     4XyZ12AB  2026-12-01T10:00:02  ERROR clamav: clamd at" in out
    assert "log     4XyZ12AB  QUARANTINE, score 7.5 (score 7.5 >= quarantine threshold 6)" in out
    assert "from <winner@promo.example> [203.0.113.9] helo mx.promo.example to " \
        "bob@example.net, 123 bytes" in out
    assert "symbols  BAYES_99 7.5, MISSING_DATE 1" in out
    assert "timings  total 14.1 ms; bayes 12.5, headers 0.2" in out
    assert f"quarantine id  {identifier}" in out
    assert f"store   {identifier}  held, now released; queue id 4XyZ12AB" in out
    assert "alice released: to bob@example.net via 127.0.0.1:10026" in out
    assert "OTHER1" not in out


@pytest.mark.slow
def test_trace_by_message_id_finds_the_queue_id_in_the_store(traced, tmp_path: Path):
    config, log, identifier = traced
    packed = tmp_path / "gateway.log.1.gz"
    packed.write_bytes(gzip.compress(log.read_bytes()))
    for wanted in ("<prize-1@promo.example>", "prize-1@promo.example"):
        result = gateway("trace", wanted, "--config", str(config), "--log", str(packed),
                         "--json")
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)
        assert report["queue_ids"] == ["4XyZ12AB"]
        assert [e.get("action") for e in report["log"]] == [None, "quarantine"]
        (record,) = report["store"]
        assert record["id"] == identifier
        history = record.get("history") or record.get("events")  # the key was renamed
        assert [e["action"] for e in history] == ["quarantined", "released"]


@pytest.mark.slow
def test_trace_of_nothing_says_where_it_looked(traced):
    config, log, _identifier = traced
    result = gateway("trace", "NOSUCHID", "--config", str(config), "--log", str(log))
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == f"gateway: trace: no trace of NOSUCHID in the store or in {log}\n"


@pytest.mark.slow
def test_trace_reads_pure_json_lines_without_a_store(tmp_path: Path):
    config = tmp_path / "gateway.toml"
    config.write_text('[quarantine]\nurl = ""\n')
    log = tmp_path / "gateway.log"
    log.write_text(json.dumps(dict(VERDICT_LINE, action="reject", quarantine_id="")) + "\n")
    result = gateway("trace", "4XyZ12AB", "--config", str(config), "--log", str(log))
    assert result.returncode == 0, result.stderr
    assert "REJECT, score 7.5" in result.stdout
    assert "note    store not searched: quarantine.url is empty" in result.stdout

"""``gateway check`` and ``gateway config check`` as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.checks import BUILTIN
from gateway.config import Config
from tests.helpers import MESSAGES, PROJECT_ROOT, SPINE_CHECKS, dns_config


def gateway(*args: str, cwd: Path = PROJECT_ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=60,
    )


@pytest.fixture
def spine(tmp_path: Path) -> str:
    """A config with the spine's checks only, for exact expectations."""
    config = tmp_path / "spine.toml"
    config.write_text(SPINE_CHECKS)
    return str(config)


def test_check_json_explains_the_verdict(spine):
    result = gateway("check", "--config", spine, "--json", str(MESSAGES / "missing_headers.eml"))
    assert result.returncode == 0, result.stderr
    (line,) = result.stdout.splitlines()
    record = json.loads(line)
    assert record["file"] == str(MESSAGES / "missing_headers.eml")
    assert record["action"] == "accept"
    assert record["score"] == 1.5
    assert record["failed_checks"] == []
    assert [(s["name"], s["score"]) for s in record["symbols"]] == [
        ("MISSING_DATE", 1.0),
        ("MISSING_MESSAGE_ID", 0.5),
    ]
    assert set(record["symbols"][0]) == {"name", "score", "description", "evidence"}


@pytest.mark.slow
def test_check_walks_directories_one_line_per_message():
    result = gateway("check", "--json", str(MESSAGES))
    files = [json.loads(line)["file"] for line in result.stdout.splitlines()]
    assert files == sorted(str(p) for p in MESSAGES.iterdir() if p.is_file())


@pytest.mark.slow
def test_check_envelope_flags_reach_the_checks(tmp_path: Path):
    config = tmp_path / "gateway.toml"
    config.write_text(
        '[lists]\nblock_senders = ["spammer.example"]\nblock_ips = ["203.0.113.0/24"]\n'
    )
    result = gateway(
        "check",
        "--config",
        str(config),
        "--json",
        "--from",
        "x@spammer.example",
        "--ip",
        "203.0.113.9",
        "--helo",
        "mail.spammer.example",
        str(MESSAGES / "ham_plain.eml"),
    )
    record = json.loads(result.stdout)
    assert record["action"] == "reject"
    assert {s["name"] for s in record["symbols"]} >= {"BLOCKLIST_SENDER", "BLOCKLIST_IP"}
    assert record["reply"].startswith("550 5.7.1 Rejected: ")


def test_check_text_output_is_a_table(spine):
    result = gateway("check", "--config", spine, str(MESSAGES / "missing_headers.eml"))
    lines = result.stdout.splitlines()
    assert lines[0].endswith("ACCEPT (score 1.5, required 4; score 1.5 < add_header threshold 4)")
    assert lines[1].split() == [
        "MISSING_DATE",
        "1.00",
        "no",
        "Date",
        "header",
        "(RFC",
        "5322",
        "requires",
        "one)",
    ]


@pytest.mark.slow
def test_check_reports_a_missing_file_in_one_line_and_goes_on(spine):
    result = gateway("check", "--config", spine, "--json", "/no/such.eml",
                     str(MESSAGES / "ham_plain.eml"))
    assert result.returncode == 1
    assert result.stderr == "gateway: /no/such.eml: no such file or directory\n"
    assert json.loads(result.stdout)["file"].endswith("ham_plain.eml")


@pytest.mark.slow
def test_check_json_carries_the_spam_probability(tmp_path: Path, clamd, knot):
    config = tmp_path / "gateway.toml"  # every default check, clamd and DNS included
    config.write_text(f'[clamav]\nsocket = "{clamd.socket_path}"\n' + dns_config(knot))
    result = gateway("check", "--config", str(config), "--json",
                     str(MESSAGES / "missing_headers.eml"), str(MESSAGES / "ham_plain.eml"))
    spammy, plain = (json.loads(line) for line in result.stdout.splitlines())
    assert spammy["spam_probability"] > 0.7 > plain["spam_probability"]
    (band,) = [s for s in spammy["symbols"] if s["name"].startswith("BAYES_")]
    assert band["evidence"].startswith(f"p={spammy['spam_probability']:.4f}, model nb-")
    assert spammy["action"] == "quarantine"


@pytest.mark.slow
def test_bad_config_is_one_line_per_problem_without_traceback(tmp_path: Path):
    config = tmp_path / "gateway.toml"
    config.write_text('[milter]\nsocket = "/tmp/x"\n[pipeline]\nchecks = ["headers", "nope"]\n')
    result = gateway("config", "check", "--config", str(config))
    assert result.returncode == 2
    assert result.stderr.splitlines()[:2] == [  # every problem, not only the first
        f"gateway: {config}: milter.socket: expected unix:/path or inet:port@host",
        f"gateway: {config}: pipeline.checks: unknown check 'nope' (built-in checks: "
        f"{', '.join(sorted(BUILTIN))})",
    ]
    assert "config ok" not in result.stdout
    config.write_text('[pipeline]\nchecks = ["headers", "nope"]\n')
    result = gateway("config", "check", "--config", str(config))
    assert result.returncode == 2
    assert result.stderr.startswith(f"gateway: {config}: pipeline.checks: unknown check 'nope'")
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_config_check_accepts_a_working_setup(tmp_path: Path, clamd, knot):
    config = tmp_path / "gateway.toml"
    config.write_text(f'[clamav]\nsocket = "{clamd.socket_path}"\n' + dns_config(knot))
    result = gateway("config", "check", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert f"checks: {', '.join(Config().pipeline.checks)}" in result.stdout
    assert "thresholds: add_header 4, quarantine 6, reject 15" in result.stdout
    assert result.stderr == ""


@pytest.mark.slow
def test_config_check_says_when_clamd_is_missing(tmp_path: Path, knot):
    config = tmp_path / "gateway.toml"
    config.write_text(f'[clamav]\nsocket = "{tmp_path}/no-clamd.sock"\n' + dns_config(knot))
    result = gateway("config", "check", "--config", str(config))
    assert result.returncode == 0  # a peer that is down is not a config problem
    assert result.stdout.startswith(f"config ok: {config} (1 warning)\n")
    assert result.stderr == (
        f"gateway: warning: clamav: not answering, clamd at {tmp_path}/no-clamd.sock: cannot "
        f"connect to {tmp_path}/no-clamd.sock: No such file or directory; messages are "
        "answered 4xx until it does\n")


@pytest.mark.slow
def test_run_with_an_unusable_socket_says_so(tmp_path: Path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = gateway("run", "--socket", f"unix:{blocker}/sub/milter.sock")
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1].startswith(f"gateway: milter.socket unix:{blocker}")
    assert "Traceback" not in result.stderr

"""What the CLI prints from hostile mail: no control byte reaches the terminal.

Encoded-words in From/Subject/To, the SMTP envelope (as pymilter hands it
over), the client's names and the checks' evidence carry ESC, BEL, CSI and
OSC sequences, CR, LF, NUL, C1 controls and bidi overrides into a real
SQLite quarantine; every command that shows them is run in-process.
"""

from __future__ import annotations

import base64
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from gateway import cli
from gateway.message import Envelope, RawContent
from gateway.policy import Policy
from gateway.quarantine.store import QuarantineStore
from gateway.ruleset import Ruleset
from gateway.symbols import Symbol
from gateway.terminal import dumps, printable
from gateway.verdict import PipelineResult
from tests.helpers import PROJECT_ROOT, SPINE_CHECKS

CLEAR = "\x1b[2J"
RETITLE = "\x1b]0;pwned\x07"
FAKE_LINE = "\r\nstate:       released"
HOSTILE = f"{CLEAR}{RETITLE}\x07\x00\x9b2J\u202eevil\u2066x\u2069{FAKE_LINE}"
# Everything a terminal could act on, except the newline that ends a line.
RAW_CONTROL = re.compile(
    "[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069"
    "\ud800-\udfff]")


def encoded(text: str) -> str:
    return f"=?utf-8?b?{base64.b64encode(text.encode()).decode()}?="


def hostile_message() -> bytes:
    return (f"From: {encoded('Eve ' + HOSTILE)} <eve@example.org>\r\n"
            f"To: {encoded('Bob ' + HOSTILE)} <bob@example.net>\r\n"
            f"Subject: {encoded('Invoice ' + HOSTILE)}\r\n"
            "Date: Tue, 24 Nov 2026 09:00:00 +0000\r\n"
            "Message-ID: <hostile@example.org>\r\n\r\nHello.\r\n").encode()


def as_pymilter_hands_it(raw: bytes) -> str:
    """Envelope strings arrive decoded with surrogateescape."""
    return raw.decode("utf-8", "surrogateescape")


def assert_safe(output: str) -> None:
    found = RAW_CONTROL.search(output)
    assert found is None, f"raw {found.group()!r} in output: {output!r}"
    assert sum(line.startswith("state:") for line in output.splitlines()) <= 1


@pytest.fixture
def hostile_store(tmp_path: Path):
    url = f"sqlite:///{tmp_path}/quarantine/q.db"
    config = tmp_path / "gateway.toml"
    config.write_text(f'[quarantine]\nurl = "{url}"\n')
    store = QuarantineStore(url, node="node-a")
    envelope = Envelope(
        mail_from=as_pymilter_hands_it(b"eve\x1b[2J\xc2\x9b\xe2\x80\xae@example.org"),
        rcpt_to=(as_pymilter_hands_it(b"bob\x07\r\n@example.net"),
                 as_pymilter_hands_it(b"carol\x1b]0;t\x07\xff@example.net")),
        client_ip="198.51.100.7",
        client_name="mail" + CLEAR + ".example.org",
        helo="helo" + RETITLE + "\u202e.example",
        queue_id="QHOSTILE")
    symbol = Symbol(name="TEST_MARKER", score=9.0, description="marker " + CLEAR,
                    evidence="seen " + HOSTILE)
    verdict = Policy(Ruleset()).decide(PipelineResult(symbols=(symbol,), runs=()), "QHOSTILE")
    identifier = store.put(envelope, RawContent(data=hostile_message()), verdict, "quarantine")
    store.change_state(identifier, "held", "mallory" + RETITLE, "note", "looked" + FAKE_LINE)
    store.close()
    return config, identifier


def run(capsys, *argv: str) -> tuple[int, str, str]:
    status = cli.main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


# -- the function ---------------------------------------------------------------------

def test_printable_shows_controls_as_visible_escapes():
    assert printable("a\x1b[2Jb\x07c\rd\ne\x00f\x9bg\th") == \
        "a\\x1b[2Jb\\x07c\\rd\\ne\\x00f\\x9bg\\th"
    assert printable("\x7f\u202etxt\u2066\u2069\u200f\u2028") == \
        "\\x7f\\u202etxt\\u2066\\u2069\\u200f\\u2028"
    assert printable("\udcff") == "\\udcff"  # a byte that was not UTF-8, not a crash
    assert printable("Grüße, 日本, émoji 🙂") == "Grüße, 日本, émoji 🙂"


def test_json_stays_json_and_carries_no_raw_c1_or_bidi():
    value = {"subject": HOSTILE + "\x7f\udcff", "score": 1.5}
    text = dumps(value, indent=2)
    assert_safe(text)
    assert json.loads(text) == value
    assert "\\u009b" in text and "\\u202e" in text and "\\u001b" in text


# -- the quarantine commands ----------------------------------------------------------

def test_list_escapes_sender_recipients_and_subject(hostile_store, capsys):
    config, identifier = hostile_store
    status, out, _ = run(capsys, "quarantine", "list", "--config", str(config))
    assert status == 0
    assert_safe(out)
    (line,) = out.splitlines()
    assert line.startswith(identifier)
    assert "eve\\x1b[2J\\x9b\\u202e@example.org" in line
    assert "bob\\x07\\r\\n@example.net" in line
    assert "carol\\x1b]0;t\\x07\ufffd@example.net" in line  # the stray byte: U+FFFD
    assert "Invoice \\x1b[2J\\x1b]0;pwned\\x07" in line


def test_show_escapes_every_field(hostile_store, capsys):
    config, identifier = hostile_store
    status, out, _ = run(capsys, "quarantine", "show", identifier, "--config", str(config))
    assert status == 0
    assert_safe(out)
    assert [line for line in out.splitlines() if line.startswith("state:")] == [
        line for line in out.splitlines() if line.startswith("state:       held")]
    for expected in (
        "MAIL FROM:<eve\\x1b[2J\\x9b\\u202e@example.org>",   # envelope
        "RCPT TO: bob\\x07\\r\\n@example.net",
        "mail\\x1b[2J.example.org [198.51.100.7]",             # client name
        "HELO helo\\x1b]0;pwned\\x07\\u202e.example",          # HELO
        "From:        Eve \\x1b[2J\\x1b]0;pwned\\x07",          # decoded headers
        "To:          Bob \\x1b[2J",
        "Subject:     Invoice \\x1b[2J",
        "\\x00\\x9b2J\\u202eevil\\u2066x\\u2069",
        "marker \\x1b[2J (seen \\x1b[2J\\x1b]0;pwned\\x07\\x07\\x00\\x9b2J",   # evidence
        "\\r\\nstate:       released)",
        "note by mallory\\x1b]0;pwned\\x07: looked\\r\\nstate:       released",  # history
    ):
        assert expected in out, expected


def test_json_output_round_trips_the_hostile_text(hostile_store, capsys):
    config, identifier = hostile_store
    status, out, _ = run(capsys, "quarantine", "show", identifier, "--json",
                         "--config", str(config))
    assert status == 0
    assert_safe(out)
    record = json.loads(out)
    assert record["symbols"][0]["evidence"] == "seen " + HOSTILE
    assert record["helo"] == "helo" + RETITLE + "\u202e.example"
    status, out, _ = run(capsys, "quarantine", "list", "--json", "--config", str(config))
    assert_safe(out)
    (listed,) = json.loads(out)
    assert listed["sender"] == "eve\x1b[2J\x9b\u202e@example.org"


def test_raw_refuses_a_terminal_without_force(hostile_store, capsys, monkeypatch):
    config, identifier = hostile_store
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    status, out, err = run(capsys, "quarantine", "show", identifier, "--raw",
                           "--config", str(config))
    assert status == 2 and out == ""
    assert err.count("\n") == 1 and "--force" in err and "pipe" in err


def test_raw_writes_the_original_bytes_to_a_pipe_or_with_force(hostile_store, capsysbinary,
                                                               monkeypatch):
    config, identifier = hostile_store
    assert cli.main(["quarantine", "show", identifier, "--raw", "--config", str(config)]) == 0
    assert capsysbinary.readouterr().out == hostile_message()
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    assert cli.main(["quarantine", "show", identifier, "--raw", "--force",
                     "--config", str(config)]) == 0
    assert capsysbinary.readouterr().out == hostile_message()


def test_release_escapes_the_recipients_it_names(hostile_store, capsys, monkeypatch):
    config, identifier = hostile_store
    from gateway.commands import quarantine
    from gateway.quarantine.release import Released

    monkeypatch.setattr(quarantine, "release", lambda *args, **kwargs: Released(
        identifier, ["bob\x07\r\n@example.net", "x\u202e@y"], None))
    status, out, _ = run(capsys, "quarantine", "release", identifier, "--config", str(config))
    assert status == 0
    assert_safe(out)
    assert "released to bob\\x07\\r\\n@example.net, x\\u202e@y" in out


def test_errors_quoting_message_text_are_escaped(tmp_path, capsys, monkeypatch):
    from gateway.commands import quarantine

    def refuse(_args):
        raise cli.UsageError(f"release: 550 no such user {CLEAR}{FAKE_LINE}")
    monkeypatch.setattr(quarantine, "release_main", refuse)
    config = tmp_path / "gateway.toml"
    config.write_text("")
    status, _, err = run(capsys, "quarantine", "release", "x", "--config", str(config))
    assert status == 2
    assert_safe(err)
    assert err.count("\n") == 1


# -- gateway check ---------------------------------------------------------------------

@pytest.fixture
def hostile_file(tmp_path: Path) -> tuple[Path, Path]:
    config = tmp_path / "spine.toml"
    config.write_text(SPINE_CHECKS)
    message = tmp_path / f"evil{CLEAR}.eml"
    message.write_bytes(
        b"From: " + encoded("Eve " + HOSTILE).encode() + b" <eve@example.org>\r\n"
        b"To: bob@example.net\r\nSubject: hi\r\nMessage-ID: <c@example.org>\r\n"
        b"Date: \x1b]0;pwned\x07 \x1b[2J \xc2\x9b \xe2\x80\xae\r\n\r\nHello.\r\n")
    return config, message


def test_check_text_escapes_file_names_and_evidence(hostile_file, capsys):
    config, message = hostile_file
    status, out, _ = run(capsys, "check", "--config", str(config), str(message))
    assert status == 0
    assert_safe(out)
    assert "evil\\x1b[2J.eml: ACCEPT" in out
    assert "INVALID_DATE" in out and "\\x1b]0;pwned\\x07 \\x1b[2J \\x9b \\u202e" in out


def test_check_json_stays_json(hostile_file, capsys):
    config, message = hostile_file
    status, out, _ = run(capsys, "check", "--config", str(config), "--json", str(message))
    assert status == 0
    assert_safe(out)
    record = json.loads(out)
    assert record["file"] == str(message)
    (date,) = [s for s in record["symbols"] if s["name"] == "INVALID_DATE"]
    assert "\x1b]0;pwned\x07" in date["evidence"] and "\u202e" in date["evidence"]


# -- a reader that goes away ----------------------------------------------------------

class _ClosedPipe(io.TextIOBase):
    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")


def test_a_closed_pipe_ends_quietly_in_process(hostile_store, capsys, monkeypatch):
    config, _ = hostile_store
    monkeypatch.setattr(sys, "stdout", _ClosedPipe())
    assert cli.main(["quarantine", "list", "--config", str(config)]) == cli.SIGPIPE_STATUS
    assert capsys.readouterr().err == ""


@pytest.mark.slow
def test_list_into_a_closed_pipe_has_no_traceback(hostile_store):
    config, _ = hostile_store
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "quarantine", "list", "--config", str(config)],
        cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()  # like `| head` that has read enough: before the first line
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=60) == 141
    assert stderr == ""

"""deploy/exim/ through a real Exim 4.96 (tests/lab/exim.py) asking a real
``gateway run`` on its scan port, with clamd and the test DNS server: every
decision is the gateway's action, never a score. Then the same cases over
spamd's SPAMC protocol with Debian's ``spamc``, as other MTAs use it."""

from __future__ import annotations

import json
import re
import shutil
import smtplib
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.lab.milter_process import MilterProcess
from gateway.lab.postfix import free_port
from tests.authlab import message, sign
from tests.helpers import PROJECT_ROOT, dns_config, milter_config, wait_until
from tests.lab.exim import EximBinary, EximInstance, EximUnavailable, fetch

pytestmark = pytest.mark.slow

EICAR = rb"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
AUTHSERV_ID = "mx.exim.test"
CHECKS = ["limits", "headers", "size", "lists", "rules", "spf", "dkim", "dmarc", "clamav"]
# Subjects that decide, whatever else the message has.
RULES = """
[rule.TEST_LOTTERY]
type = "header"
header = "Subject"
pattern = 'lottery-win'
score = 20.0
description = "test: spam over the reject threshold"

[rule.TEST_HOLD]
type = "header"
header = "Subject"
pattern = 'hold-me'
score = 9.0
description = "test: between quarantine and reject (after the passes' -1.8)"

[rule.TEST_TRY_LATER]
type = "header"
header = "Subject"
pattern = 'try-later'
score = 0.1
description = "test: a temporary failure"

[force]
TEST_TRY_LATER = "tempfail"
"""


@pytest.fixture(scope="module")
def exim_binary() -> EximBinary:
    try:
        return fetch()
    except EximUnavailable as exc:
        pytest.skip(f"Exim: {exc}")


@pytest.fixture(scope="module")
def gateway(lab_dir: Path, knot, clamd, keys) -> Iterator[int]:
    """``gateway run`` with its scan port; yields the port."""
    directory = lab_dir / "exim-gateway"
    directory.mkdir(exist_ok=True)
    rules = directory / "test-rules.toml"
    rules.write_text(RULES)
    port = free_port()
    rule_files = [str(PROJECT_ROOT / "rules" / "default.toml"), str(rules)]
    extra = (f"[pipeline]\nchecks = {json.dumps(CHECKS)}\nworkers = 1\n"
             f"[policy]\nrules = {json.dumps(rule_files)}\n"
             f'[clamav]\nsocket = "{clamd.socket_path}"\n'
             f'[auth]\nauthserv_id = "{AUTHSERV_ID}"\n'
             f'[scan]\nlisten = "127.0.0.1:{port}"\n' + dns_config(knot))
    process = MilterProcess(directory, milter_config(directory / "milter.sock", extra),
                            env={"PYTHONPATH": str(PROJECT_ROOT)})
    process.start(timeout=60)
    try:
        wait_until(lambda: _accepts(port), timeout=30, what="the scan port")
        yield port
    finally:
        process.stop()


@pytest.fixture(scope="module")
def exim(lab_dir: Path, exim_binary: EximBinary, gateway: int) -> Iterator[EximInstance]:
    with EximInstance(lab_dir / "exim", f"127.0.0.1 {gateway}", exim_binary) as running:
        yield running


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def send(exim: EximInstance, raw: bytes, mail_from: str = "alice@good.test",
         rcpt: str = "bob@example.net") -> tuple[int, str]:
    """(code, text) of Exim's answer at the end of DATA."""
    with smtplib.SMTP("127.0.0.1", exim.port, timeout=120) as client:
        client.ehlo("mail.good.test")
        client.mail(mail_from)
        client.rcpt(rcpt)
        code, text = client.data(raw)
        return code, text.decode()


def good_mail(keys, subject: str, body: str = "Hello Bob,\r\nsee you tomorrow.\r\n",
              extra: str = "") -> bytes:
    """From good.test, DKIM-signed: SPF (127.0.0.1 is in its record), DKIM and
    DMARC pass."""
    return sign(message(subject=subject, body=body, extra=extra), "good.test", "s2048",
                keys.rsa)


def delivered(exim: EximInstance, subject: str) -> bytes:
    def find() -> bytes | None:
        return next((m for m in exim.delivered() if f"Subject: {subject}".encode() in m), None)

    return wait_until(find, timeout=30, what=f"delivery of {subject!r}")


def header_block(raw: bytes) -> str:
    return raw.replace(b"\r\n", b"\n").split(b"\n\n", 1)[0].decode("utf-8", "replace")


def values(raw: bytes, name: str) -> list[str]:
    unfolded = re.sub(r"\n[ \t]+", " ", header_block(raw))
    return [line.split(":", 1)[1].strip() for line in unfolded.split("\n")
            if line.lower().startswith(name.lower() + ":")]


# -- through Exim ----------------------------------------------------------------------


def test_clean_mail_is_accepted_with_the_gateways_headers(exim, keys):
    code, _ = send(exim, good_mail(keys, "clean lunch"))
    assert code == 250
    raw = delivered(exim, "clean lunch")
    (results,) = values(raw, "Authentication-Results")
    assert results.startswith(f"{AUTHSERV_ID};")
    assert "spf=pass" in results and "dmarc=pass" in results
    assert values(raw, "X-Spam-Status")[0].startswith("No, score=")
    assert len(values(raw, "X-Spam-Score")) == 1
    assert values(raw, "X-Gateway-Symbols")[0].startswith("action=accept;")
    assert values(raw, "X-Spam-Flag") == []
    assert header_block(raw).index("Authentication-Results:") < header_block(raw).index(
        "Received:")


def test_spam_over_the_reject_threshold_gets_550_with_the_gateways_text(exim, keys):
    code, text = send(exim, good_mail(keys, "lottery-win today"))
    assert code == 550
    assert text.startswith("5.7.1 ")
    assert "TEST_LOTTERY" in text or "score" in text.lower(), text


def test_eicar_inline_in_a_dmarc_passing_message_is_rejected(exim, keys):
    body = EICAR.decode() + "\r\n"
    code, text = send(exim, good_mail(keys, "the test file", body=body))
    assert code == 550, text  # a forced reject at a score under every threshold
    assert "Gateway.Test.Eicar" in text


def test_quarantine_is_frozen_in_exims_queue_and_released_with_exim_m(exim, keys):
    code, text = send(exim, good_mail(keys, "hold-me please"))
    assert code == 250
    queue_id = re.search(r"id=(\S+)", text).group(1)
    assert any(m.id == queue_id and m.frozen for m in exim.queue())
    assert not any(b"Subject: hold-me please" in m for m in exim.delivered())
    exim.exim("-M", queue_id)  # the documented release: thaw and deliver
    raw = delivered(exim, "hold-me please")
    assert values(raw, "X-Gateway-Symbols")[0].startswith("action=quarantine;")
    assert values(raw, "X-Spam-Flag") == ["YES"]
    assert all(m.id != queue_id for m in exim.queue())


def test_a_tempfail_verdict_is_a_4xx_with_the_gateways_text(exim, keys):
    code, text = send(exim, good_mail(keys, "try-later now"))
    assert code == 451
    assert text.startswith("4.7.1 ")


def test_the_senders_copies_of_our_headers_are_removed(exim, keys):
    forged = ("X-Spam-Status: No, score=-50.0 forged\r\nX-Spam-Score: -50.0\r\n"
              "X-Spam-Flag: NO\r\nX-Gateway-Symbols: action=accept; forged\r\n"
              f"Authentication-Results: {AUTHSERV_ID}; dmarc=pass header.from=bank.test\r\n")
    code, _ = send(exim, good_mail(keys, "forged headers", extra=forged))
    assert code == 250
    raw = delivered(exim, "forged headers")
    assert "forged" not in " ".join(values(raw, "X-Spam-Status") + values(raw, "X-Gateway-"
                                                                            "Symbols"))
    assert values(raw, "X-Spam-Flag") == [] and "-50.0" not in values(raw, "X-Spam-Score")
    (results,) = values(raw, "Authentication-Results")
    assert "bank.test" not in results


def test_the_scanner_down_is_a_451(lab_dir, exim_binary):
    nothing = free_port()  # no one listens here
    with EximInstance(lab_dir / "exim-down", f"127.0.0.1 {nothing}", exim_binary) as down:
        code, text = send(down, message(subject="nobody scans"))
        assert code == 451
        assert "Content scanner unavailable" in text
        assert down.delivered() == [] and down.queue() == []


def test_an_answer_exim_cannot_read_is_a_451(lab_dir, exim_binary):
    listener = socket.create_server(("127.0.0.1", 0))

    def answer_garbage() -> None:
        with listener:
            while True:
                try:
                    connection, _ = listener.accept()
                except OSError:
                    return
                with connection:
                    connection.recv(65536)
                    connection.sendall(b"SPAMD/1.1 76 bad request line\r\n\r\n")

    threading.Thread(target=answer_garbage, daemon=True).start()
    port = listener.getsockname()[1]
    try:
        with EximInstance(lab_dir / "exim-garbage", f"127.0.0.1 {port}", exim_binary) as odd:
            code, _ = send(odd, message(subject="unreadable answer"))
            assert code == 451
            assert odd.delivered() == [] and odd.queue() == []
    finally:
        listener.close()


# -- the same over spamd's SPAMC protocol (spamc) --------------------------------------

needs_spamc = pytest.mark.skipif(shutil.which("spamc") is None,
                                 reason="spamc is not installed (see .ci/run)")


def spamc(port: int, *options: str, data: bytes) -> subprocess.CompletedProcess:
    """spamc as an MTA's filter runs it: -x, so a failure is an error exit
    (the MTA defers) and never the message passed through unscanned."""
    return subprocess.run(["spamc", "-x", "-d", "127.0.0.1", "-p", str(port), *options],
                          input=data, capture_output=True, timeout=120)


def with_envelope(raw: bytes) -> bytes:
    """What an MTA hands spamc: its Received: header on top (the client IP,
    HELO and MAIL FROM come from it on this protocol)."""
    return (b"Received: from mail.good.test (mail.good.test [127.0.0.1])\r\n"
            b"\tby mx.exim.test (Postfix) with ESMTP id 4F1;\r\n"
            b"\tTue, 24 Nov 2026 09:12:44 +0000 (UTC)\r\n"
            b"Return-Path: <alice@good.test>\r\n") + raw


@needs_spamc
def test_spamc_clean_mail_comes_back_with_the_headers(gateway, keys):
    forged = f"Authentication-Results: {AUTHSERV_ID}; dmarc=pass\r\nX-Spam-Flag: NO\r\n"
    processed = spamc(gateway, "-E", data=with_envelope(good_mail(keys, "spamc lunch",
                                                                  extra=forged)))
    assert processed.returncode == 0, processed.stderr
    raw = processed.stdout
    (results,) = values(raw, "Authentication-Results")
    assert "dmarc=pass header.from=good.test" in results
    assert values(raw, "X-Spam-Flag") == []
    assert values(raw, "X-Gateway-Symbols")[0].startswith("action=accept;")


@needs_spamc
@pytest.mark.parametrize(("subject", "body", "action", "symbol"), [
    ("lottery-win spamc", "Hi\r\n", "reject", "TEST_LOTTERY"),
    ("hold-me spamc", "Hi\r\n", "quarantine", "TEST_HOLD"),
    ("eicar spamc", EICAR.decode() + "\r\n", "reject", "CLAMAV_VIRUS"),
])
def test_spamc_says_spam_and_the_report_names_the_action(gateway, keys, subject, body,
                                                         action, symbol):
    raw = with_envelope(good_mail(keys, subject, body=body))
    assert spamc(gateway, "-c", data=raw).returncode == 1  # spam: the MTA acts on it
    report = spamc(gateway, "-R", data=raw).stdout.decode()
    assert f"Action: {action} (" in report and symbol in report


@needs_spamc
def test_spamc_with_the_scanner_down_fails_so_the_mta_defers():
    result = spamc(free_port(), "-E", data=message(subject="nobody scans"))
    assert result.returncode not in (0, 1)
    assert result.stdout == b""

"""Through a real Sendmail 8.17 (Debian's, unpacked: tests/lab/sendmail.py)
configured with deploy/sendmail/gateway.mc as shipped: what each verdict
becomes there, and releasing held mail both ways install.md documents."""

from __future__ import annotations

import json
import re
import smtplib
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gateway.lab.milter_process import MilterProcess
from gateway.lab.sink import Sink
from gateway.paths import DEFAULT_RULES
from tests.helpers import PROJECT_ROOT, dns_config, milter_config, wait_until
from tests.lab.sendmail import SendmailInstance, unavailable

pytestmark = pytest.mark.slow  # a private Sendmail: root, seconds to start

AUTHSERV = "mx.gateway.test"
INSTALL_MD = PROJECT_ROOT / "docs" / "install.md"


@pytest.fixture(scope="module")
def sendmail_socket(lab_dir: Path) -> Path:
    directory = lab_dir / "sendmail-milter"
    directory.mkdir(exist_ok=True)
    return directory / "milter.sock"


@pytest.fixture(scope="module")
def sendmail(lab_dir: Path, sink: Sink, sendmail_socket: Path) -> Iterator[SendmailInstance]:
    reason = unavailable()
    if reason is not None:
        pytest.skip(reason)
    with SendmailInstance(lab_dir / "sendmail", sink.port, sendmail_socket) as instance:
        yield instance


@pytest.fixture
def milter(sendmail: SendmailInstance, sendmail_socket: Path, tmp_path: Path
           ) -> Iterator[Callable[[str], MilterProcess]]:
    """The gateway on the socket Sendmail's INPUT_MAIL_FILTER names, with
    extra TOML; a rules file of the test's own holds undated mail and
    tempfails mail without a Message-ID."""
    rules = tmp_path / "local.toml"
    rules.write_text('[force]\nMISSING_DATE = "quarantine"\nMISSING_MESSAGE_ID = "tempfail"\n')
    started: list[MilterProcess] = []

    def start(extra: str = "") -> MilterProcess:
        for running in started:
            running.stop()
        process = MilterProcess(
            sendmail_socket.parent,
            milter_config(sendmail_socket, extra + '[lists]\nblock_senders = ["spammer.test"]\n'
                          f'[policy]\nrules = ["{DEFAULT_RULES}", "{rules}"]\n'
                          f'[release]\nsmtp = "127.0.0.1:{sendmail.release_port}"\n'),
            env={"PYTHONPATH": str(PROJECT_ROOT)})
        started.append(process.start())
        return process

    yield start
    for process in started:
        process.stop()


def message(tag: str, dated: bool = True, with_id: bool = True, extra_headers: str = ""
            ) -> bytes:
    date = "Date: Tue, 24 Nov 2026 09:12:44 +0000\r\n" if dated else ""
    message_id = f"Message-ID: <{tag}@good.test>\r\n" if with_id else ""
    return (f"{extra_headers}From: Alice <alice@good.test>\r\nTo: bob@example.net\r\n"
            f"Subject: lunch {tag}\r\n{date}{message_id}\r\n"
            "See you on Thursday.\r\n").encode()


def send(sendmail: SendmailInstance, raw: bytes, mail_from: str = "alice@good.test") -> str:
    """The server's answer to the end of DATA; raises SMTPResponseException
    at the first 4xx or 5xx (SMTPDataError at the end of DATA)."""
    with smtplib.SMTP("127.0.0.1", sendmail.smtp_port, timeout=60) as client:
        client.ehlo("mail.good.test")
        for code, answer in (client.mail(mail_from), client.rcpt("bob@example.net")):
            if code >= 400:
                raise smtplib.SMTPResponseException(code, answer)
        code, answer = client.data(raw)
        if code != 250:
            raise smtplib.SMTPDataError(code, answer)
        return answer.decode()


def queue_id_of(answer: str) -> str:
    """Sendmail's 250 after DATA: ``2.0.0 <queue id> Message accepted for delivery``."""
    found = re.search(r"\b([0-9A-Za-z]{14}) Message accepted", answer)
    assert found, answer
    return found.group(1)


def gateway(process: MilterProcess, *args: str) -> subprocess.CompletedProcess[str]:
    """``gateway ARGS --config <the milter's>``, as the admin runs it."""
    return subprocess.run([sys.executable, "-m", "gateway", *args, "--config",
                           str(process.config_path)], capture_output=True, text=True,
                          timeout=120, env={"PYTHONPATH": str(PROJECT_ROOT),
                                            "PATH": "/usr/bin:/bin"})


def test_clean_mail_gets_authentication_results_and_spam_headers_and_loses_forged_ones(
        sendmail, sink, milter, knot):
    milter('[pipeline]\nchecks = ["spf", "headers", "size", "lists"]\n' + dns_config(knot)
           + f'[auth]\nauthserv_id = "{AUTHSERV}"\n')
    tag = uuid.uuid4().hex
    forged = (f"Authentication-Results: {AUTHSERV}; spf=pass smtp.mailfrom=ceo@bank.test\r\n"
              # as a decoding mail program and a person read them (issue 23, finding 10)
              f"Authentication-Results: =?utf-8?q?{AUTHSERV}?=; dkim=pass header.d=bank.test\r\n"
              "Authentication-Results: m\u0445.g\u0430teway.test; dmarc=pass "
              "header.from=bank.test\r\n"
              "X-Spam-Status: No, score=-100 forged\r\nX-Spam-Score: -100\r\n")
    send(sendmail, message(tag, extra_headers=forged))
    delivery = sink.find(tag)
    assert delivery is not None, sendmail.log_tail()
    text = delivery.data.decode()
    assert "forged" not in text and "bank.test" not in text and "-100" not in text
    results = re.findall(r"^Authentication-Results: ([^\r\n]*)", text, re.MULTILINE)
    assert results == [f"{AUTHSERV}; spf=pass smtp.mailfrom=alice@good.test"]
    names = re.findall(r"^([A-Za-z-]+):", text.partition("\r\n\r\n")[0], re.MULTILINE)
    assert names[0] == "Authentication-Results", names  # at the top, above Sendmail's Received
    status, score = delivery.header("X-Spam-Status"), delivery.header("X-Spam-Score")
    assert status == f"No, score={score} required=4.0 tests=SPF_PASS"
    assert delivery.header("X-Gateway-Symbols") == f"action=accept; SPF_PASS({float(score):g})"


@pytest.mark.parametrize(("sender", "with_id", "code", "symbol"), [
    ("bulk@spammer.test", True, 550, "BLOCKLIST_SENDER"),
    ("alice@good.test", False, 451, "MISSING_MESSAGE_ID"),
], ids=["reject", "tempfail"])
def test_reject_and_tempfail_answer_at_the_end_of_data_naming_sendmails_queue_id(
        sendmail, sink, milter, sender, with_id, code, symbol):
    milter()
    tag = uuid.uuid4().hex
    with pytest.raises(smtplib.SMTPDataError) as caught:
        send(sendmail, message(tag, with_id=with_id), mail_from=sender)
    assert caught.value.smtp_code == code
    text = caught.value.smtp_error.decode()
    reference = re.search(rf"\[{symbol}\] \(ref ([0-9A-Za-z]{{14}})\)$", text)
    assert reference, text
    assert wait_until(lambda: re.search(
        rf"{reference.group(1)}: milter=gateway, reject={code} ", sendmail.log_text()),
        what="Sendmail's log line for the answer")
    assert sink.find(tag, timeout=1) is None


def test_spam_held_in_the_gateways_quarantine_is_released_through_the_release_port(
        sendmail, sink, milter):
    process = milter()
    tag = uuid.uuid4().hex
    queue_id = queue_id_of(send(sendmail, message(tag, dated=False)))
    lines = "\n".join(line for line in sendmail.log_text().splitlines() if queue_id in line)
    assert "discard" in lines, lines
    listed = gateway(process, "quarantine", "list", "--json", "--subject", tag)
    assert listed.returncode == 0, listed.stderr
    records = json.loads(listed.stdout)
    assert [(r["queue_id"], r["state"]) for r in records] == [(queue_id, "held")]
    assert sink.find(tag, timeout=1) is None
    released = gateway(process, "quarantine", "release", records[0]["id"])
    assert released.returncode == 0, released.stderr + sendmail.log_tail()
    again = re.search(r"queued as (\w+)", released.stdout)  # Sendmail's id of the copy
    assert again is not None, released.stdout
    assert again.group(1) in sendmail.log_text()
    delivery = sink.find(tag)
    assert delivery is not None, sendmail.log_tail()
    assert delivery.header("X-Gateway-Released") is not None
    # Through the listener without the filter: judged once, headers added once.
    assert delivery.data.count(b"X-Spam-Status:") == 1
    assert "daemon=MTA-release" in sendmail.log_text()


def test_spam_held_in_sendmails_quarantine_is_released_with_the_documented_commands(
        sendmail, sink, milter):
    milter('[quarantine]\nurl = ""\n')
    tag = uuid.uuid4().hex
    queue_id = queue_id_of(send(sendmail, message(tag, dated=False)))
    assert wait_until(lambda: queue_id in sendmail.quarantined(),
                      what="the message in mailq -qQ")
    assert queue_id not in sendmail.queued()
    # The documented release: out of the quarantine into the normal queue ...
    docs = INSTALL_MD.read_text()
    assert "sendmail -Q -qQ -qI<queue id>" in docs and "sendmail -qI<queue id>" in docs
    done = sendmail.command("-Q", "-qQ", f"-qI{queue_id}")
    assert done.returncode == 0, done.stderr
    assert queue_id not in sendmail.quarantined()
    assert queue_id in sendmail.queued()
    assert sink.find(tag, timeout=1) is None  # ... delivered at the next queue run,
    done = sendmail.command(f"-qI{queue_id}")  # or now
    assert done.returncode == 0, done.stderr
    delivery = sink.find(tag)
    assert delivery is not None, sendmail.log_tail()
    assert delivery.header("X-Gateway-Symbols") == "action=quarantine; MISSING_DATE(1)"


def test_a_run_of_the_quarantined_queue_delivers_held_mail_at_once(sendmail, sink, milter):
    milter('[quarantine]\nurl = ""\n')
    tag = uuid.uuid4().hex
    queue_id = queue_id_of(send(sendmail, message(tag, dated=False)))
    assert wait_until(lambda: queue_id in sendmail.quarantined(),
                      what="the message in mailq -qQ")
    assert "sendmail -qQ -qI<queue id>" in INSTALL_MD.read_text()
    done = sendmail.command("-qQ", f"-qI{queue_id}")
    assert done.returncode == 0, done.stderr
    assert sink.find(tag) is not None, sendmail.log_tail()
    assert queue_id not in sendmail.quarantined() + sendmail.queued()


def test_with_the_gateway_down_sendmail_answers_4xx_and_delivers_nothing(
        sendmail, sink, milter):
    milter().stop()
    tag = uuid.uuid4().hex
    with pytest.raises(smtplib.SMTPResponseException) as caught:
        send(sendmail, message(tag))
    assert 400 <= caught.value.smtp_code < 500, caught.value
    assert sink.find(tag, timeout=1) is None

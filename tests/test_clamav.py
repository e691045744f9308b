"""Virus scanning against a real clamd with the project's test signatures."""

from __future__ import annotations

import io
import smtplib
import uuid
import zipfile
from email.mime.application import MIMEApplication
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText

import pytest

from gateway.checks import CheckContext
from gateway.checks.clamav import ClamavCheck, ClamdUnavailable
from gateway.config import ClamavSection, Config, PipelineSection
from gateway.evaluator import LocalEvaluator
from gateway.lab.clamd import ClamdInstance
from gateway.message import Message
from gateway.quarantine.store import Filters, QuarantineStore
from tests.helpers import FIXTURES, send

EICAR = rb"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
TEST_STRING = "GATEWAY-CLAMAV-TEST-STRING-7F3A9C"


def zipped(name: str, data: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(name, data)
    return buffer.getvalue()


def with_attachment(filename: str, data: bytes, tag: str = "") -> bytes:
    message = MIMEMultipart()
    message["From"] = "alice@example.org"
    message["To"] = "bob@example.net"
    message["Subject"] = f"the file you asked for {tag}".strip()
    message["Message-ID"] = f"<{tag or uuid.uuid4().hex}@example.org>"
    message["Date"] = "Tue, 24 Nov 2026 09:00:00 +0000"
    message.attach(MIMEText("Here it is.\n"))
    message.attach(MIMEApplication(data, Name=filename))  # base64 by default
    return message.as_bytes().replace(b"\n", b"\r\n")


def clamav_config(clamd: ClamdInstance, **settings) -> Config:
    return Config(
        pipeline=PipelineSection(checks=["clamav"], budget=5.0),
        clamav=ClamavSection(socket=str(clamd.socket_path), **settings),
    )


def scan(clamd: ClamdInstance, raw: bytes, **settings):
    check = ClamavCheck.from_config(clamav_config(clamd, **settings))
    return check.run(Message.from_bytes(raw), CheckContext())


@pytest.mark.parametrize(("label", "raw", "signature"), [
    ("EICAR as a base64 attachment", with_attachment("eicar.com", EICAR),
     "Gateway.Test.Eicar"),
    ("inside a zip", with_attachment("eicar.zip", zipped("eicar.com", EICAR)),
     "Gateway.Test.Eicar"),
    ("inside a zip inside a zip",
     with_attachment("outer.zip", zipped("inner.zip", zipped("eicar.com", EICAR))),
     "Gateway.Test.Eicar"),
    ("the project's test string in a text body",
     f"Subject: hi\r\n\r\nplain text {TEST_STRING} here\r\n".encode(), "Gateway.Test.String"),
])
def test_infected_messages_are_found(clamd, label, raw, signature):
    report = scan(clamd, raw)
    (symbol,) = report.symbols
    assert symbol.name == "CLAMAV_VIRUS", label
    assert symbol.evidence.startswith(signature), symbol.evidence
    assert report.facts == {"scanned": True, "infected": True, "signature": symbol.evidence}


def test_clean_corpus_messages_come_back_clean(clamd):
    for path in sorted((FIXTURES / "corpus" / "ham").iterdir())[:10]:
        report = scan(clamd, path.read_bytes())
        assert report.symbols == (), path
        assert report.facts == {"scanned": True, "infected": False}


def test_a_message_over_the_scan_limit_is_not_called_clean(clamd):
    raw = with_attachment("big.bin", b"x" * 200_000)
    report = scan(clamd, raw, max_size=100_000)
    (symbol,) = report.symbols
    assert symbol.name == "CLAMAV_OVERSIZE"
    assert symbol.evidence == f"{len(raw)} bytes > clamav.max_size 100000"
    assert report.facts["scanned"] is False


def test_clamd_stream_limit_below_max_size_is_reported(lab_dir):
    with ClamdInstance(lab_dir / "clamd-small", stream_max_length=100_000) as small:
        raw = with_attachment("big.bin", bytes(range(256)) * 2000)
        check = ClamavCheck.from_config(clamav_config(small, max_size=10_000_000))
        try:
            report = check.run(Message.from_bytes(raw), CheckContext())
        except ClamdUnavailable as exc:  # clamd hangs up before it explains
            assert "is its StreamMaxLength below clamav.max_size (10000000)?" in str(exc)
        else:
            (symbol,) = report.symbols
            assert symbol.name == "CLAMAV_OVERSIZE"
            assert "StreamMaxLength" in symbol.evidence


def test_dead_clamd_fails_the_check_never_passes_it_clean(own_clamd):
    evaluator = LocalEvaluator(clamav_config(own_clamd))
    infected = with_attachment("eicar.com", EICAR)
    try:
        verdict = evaluator.evaluate_message(Message.from_bytes(infected))
        assert verdict.action == "reject"
        own_clamd.kill()
        for raw in (infected, b"Subject: clean\r\n\r\nhello\r\n"):
            verdict = evaluator.evaluate_message(Message.from_bytes(raw))
            assert verdict.action == "tempfail"
            assert verdict.failed_checks == ("clamav",)
            (symbol,) = verdict.symbols
            assert symbol.name == "CLAMAV_ERROR"
            assert "cannot connect to" in symbol.evidence
            assert str(verdict.reply).startswith("451 4.7.1 ")
    finally:
        evaluator.close()


def test_dead_clamd_with_on_fail_accept_marks_the_message(own_clamd):
    evaluator = LocalEvaluator(clamav_config(own_clamd, on_fail="accept"))
    own_clamd.kill()
    try:
        verdict = evaluator.evaluate_message(Message.from_bytes(b"Subject: x\r\n\r\nhi\r\n"))
    finally:
        evaluator.close()
    assert verdict.action == "accept"
    assert [s.name for s in verdict.symbols] == ["CLAMAV_ERROR"]
    assert verdict.failed_checks == ("clamav",)


def test_clamd_coming_back_is_used_again(own_clamd):
    check = ClamavCheck.from_config(clamav_config(own_clamd))
    raw = with_attachment("eicar.com", EICAR)
    assert check.run(Message.from_bytes(raw), CheckContext()).symbols[0].name == "CLAMAV_VIRUS"
    own_clamd.kill()
    with pytest.raises(ClamdUnavailable):
        check.run(Message.from_bytes(raw), CheckContext())
    own_clamd.start()
    assert check.run(Message.from_bytes(raw), CheckContext()).symbols[0].name == "CLAMAV_VIRUS"


# -- through the real Postfix -------------------------------------------------------

def milter_with_clamav(clamd: ClamdInstance, extra: str = "") -> str:
    return (f'[pipeline]\nchecks = ["headers", "clamav"]\n'
            f'[clamav]\nsocket = "{clamd.socket_path}"\n{extra}')


@pytest.mark.postfix
def test_eicar_is_rejected_with_550_naming_the_signature(postfix, sink, gateway_milter, clamd):
    gateway_milter(milter_with_clamav(clamd))
    tag = uuid.uuid4().hex
    with pytest.raises(smtplib.SMTPDataError) as caught:
        send(postfix, with_attachment("eicar.zip", zipped("eicar.com", EICAR), tag))
    assert caught.value.smtp_code == 550
    text = caught.value.smtp_error.decode()
    assert text.startswith("5.7.1 Rejected: virus found by ClamAV: Gateway.Test.Eicar")
    assert "[CLAMAV_VIRUS]" in text
    assert sink.find(tag, timeout=1) is None


@pytest.mark.postfix
def test_eicar_is_quarantined_when_configured(postfix, sink, gateway_milter, clamd, tmp_path):
    url = f"sqlite:///{tmp_path}/quarantine.db"
    gateway_milter(milter_with_clamav(clamd, 'on_virus = "quarantine"\n')
                   + f'[quarantine]\nurl = "{url}"\n')
    tag = uuid.uuid4().hex
    send(postfix, with_attachment("eicar.com", EICAR, tag))
    assert sink.find(tag, timeout=2) is None
    (record,) = QuarantineStore(url).records(Filters(symbol="CLAMAV_VIRUS"))
    assert record.subject == f"the file you asked for {tag}"
    assert record.reason == "forced by CLAMAV_VIRUS"


@pytest.mark.postfix
def test_dead_clamd_tempfails_through_postfix_and_nothing_is_lost(postfix, sink,
                                                                  gateway_milter, own_clamd):
    gateway_milter(milter_with_clamav(own_clamd))
    tag = uuid.uuid4().hex
    clean = with_attachment("notes.txt", b"meeting notes\n", tag)
    own_clamd.kill()
    with pytest.raises(smtplib.SMTPDataError) as caught:
        send(postfix, clean)
    assert caught.value.smtp_code == 451
    assert b"[CLAMAV_ERROR]" in caught.value.smtp_error
    own_clamd.start()  # the sender retries later, and then it goes through
    send(postfix, clean)
    delivery = sink.find(tag)
    assert delivery is not None
    assert "CLAMAV" not in delivery.header("X-Spam-Status")

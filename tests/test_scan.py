"""The scan protocol for MTAs without milter: spamd's SPAMC (with Debian's
real ``spamc`` as the client), rspamd's legacy RSPAMC as Exim 4.96 sends it,
and rspamd's /checkv2, against the same pipeline ``gateway check`` runs.
Hostile clients: slow, secretless, oversized, past their deadline.
(tests/test_exim.py has the same through a real Exim.)"""

from __future__ import annotations

import json
import logging
import re
import shutil
import socket
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack

import pytest

from gateway.config import (
    AuthSection,
    Config,
    PipelineSection,
    ScanSection,
    SizeSection,
)
from gateway.evaluator import LocalEvaluator
from gateway.lab.postfix import free_port
from gateway.message import RawContent
from gateway.replies import SmtpReply
from gateway.scan import RefusalLog, ScanServer
from gateway.scanproto import Head, envelope_of, rspamc_answer, split_header
from gateway.symbols import Symbol
from gateway.verdict import Verdict
from tests.helpers import PROJECT_ROOT, fixture_message, wait_until

CHECKS = ["limits", "headers", "size", "lists", "bayes"]
RECEIVED = (b"Received: from mail.example.org (mail.example.org [198.51.100.7])\r\n"
            b"\tby mx.example.net (Postfix) with ESMTP id 4F1;\r\n"
            b"\tTue, 24 Nov 2026 09:12:44 +0000 (UTC)\r\n"
            b"Return-Path: <alice@example.org>\r\n")
AUTHSERV_ID = "mx.gateway.test"


class FakeClock:
    """What the deadlines are measured on, moved by the test."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def config(max_bytes: int = 200_000, spool_threshold: int = 1024 * 1024, **scan) -> Config:
    return Config(pipeline=PipelineSection(checks=CHECKS, workers=0,
                                           spool_threshold=spool_threshold),
                  scan=ScanSection(listen=f"127.0.0.1:{free_port()}", **scan),
                  size=SizeSection(max_bytes=max_bytes),
                  auth=AuthSection(authserv_id=AUTHSERV_ID))


@pytest.fixture(scope="module")
def evaluator():
    local = LocalEvaluator(Config(pipeline=PipelineSection(checks=CHECKS, workers=0),
                                  size=SizeSection(max_bytes=200_000),
                                  auth=AuthSection(authserv_id=AUTHSERV_ID)))
    yield local
    local.close()


@pytest.fixture
def server(evaluator):
    running: list[ScanServer] = []

    def start(scanner=None, clock=None, max_bytes: int = 200_000,
              spool_threshold: int = 1024 * 1024, **scan) -> ScanServer:
        extra = {"clock": clock} if clock is not None else {}
        scanner = ScanServer(config(max_bytes, spool_threshold, **scan),
                             scanner or evaluator.evaluate, **extra).start()
        running.append(scanner)
        return scanner

    yield start
    for scanner in running:
        scanner.stop()


def connect(server: ScanServer, source: str = "127.0.0.1", timeout: float = 20.0) -> socket.socket:
    return socket.create_connection(server.address[:2], timeout=timeout,
                                    source_address=(source, 0))


def ask(server: ScanServer, data: bytes, timeout: float = 20.0, source: str = "127.0.0.1",
        close_write: bool = True) -> bytes:
    with connect(server, source, timeout) as connection:
        connection.sendall(data)
        if close_write:
            connection.shutdown(socket.SHUT_WR)
        return receive_all(connection)


def receive_all(connection: socket.socket) -> bytes:
    chunks = []
    while chunk := connection.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def spamc_request(command: str, raw: bytes, extra: str = "") -> bytes:
    return (f"{command} SPAMC/1.5\r\nContent-length: {len(raw)}\r\n{extra}\r\n").encode() + raw


def message() -> bytes:
    return RECEIVED + fixture_message("ham_plain.eml")


def spamc(server: ScanServer, *options: str, data: bytes) -> subprocess.CompletedProcess:
    host, port = server.address[:2]
    return subprocess.run(["spamc", "-d", host, "-p", str(port), *options], input=data,
                          capture_output=True, timeout=30)


def gateway_check(raw: bytes, tmp_path) -> dict:
    path = tmp_path / "message.eml"
    path.write_bytes(raw)
    conf = tmp_path / "gateway.toml"
    conf.write_text(f"[pipeline]\nchecks = {json.dumps(CHECKS)}\nworkers = 0\n")
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "check", str(path), "--json", "--config", str(conf),
         "--from", "alice@example.org", "--ip", "198.51.100.7", "--helo", "mail.example.org"],
        capture_output=True, text=True, timeout=60, cwd=PROJECT_ROOT)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[0])


def verdict(action: str, score: float = 1.0, reply: SmtpReply | None = None,
            auth: str | None = None) -> Verdict:
    return Verdict(action=action, score=score, required=4.0,  # type: ignore[arg-type]
                   symbols=(Symbol("TEST_ONE", score, "one"), Symbol("TEST_TWO", 0.0, "two")),
                   failed_checks=(), reason="test", reply=reply, authentication_results=auth)


# -- the real spamc --------------------------------------------------------------------

needs_spamc = pytest.mark.skipif(shutil.which("spamc") is None,
                                 reason="spamc is not installed (see .ci/run)")


@pytest.mark.slow
@needs_spamc
def test_spamc_gets_the_verdict_gateway_check_gives(server, tmp_path):
    scanner = server()
    raw = message()
    expected = gateway_check(raw, tmp_path)
    score = f"{expected['score']:.1f}/{expected['required']:.1f}"
    checked = spamc(scanner, "-c", data=raw)
    assert checked.stdout.decode().strip() == score
    assert checked.returncode == (1 if expected["action"] != "accept" else 0)
    symbols = spamc(scanner, "-y", data=raw).stdout.decode().strip()
    assert symbols.split(",") == [s["name"] for s in expected["symbols"]]
    reported = spamc(scanner, "-R", data=raw).stdout.decode()
    assert reported.splitlines()[0] == score
    for symbol in expected["symbols"]:
        assert symbol["name"] in reported
    processed = spamc(scanner, data=raw).stdout
    assert processed.startswith(b"X-Spam-Status: ")
    assert processed.endswith(raw.split(b"\r\n\r\n", 1)[1])


@pytest.mark.slow
@needs_spamc
def test_spamc_ping(server):
    pong = spamc(server(), "-K", data=b"")
    assert pong.returncode == 0 and pong.stdout.startswith(b"SPAMD/1.5 0")


@needs_spamc
def test_process_removes_the_senders_copies_of_our_headers(server):
    forged = (b"X-Spam-Status: No, score=-10.0\r\nX-Spam-Flag: NO\r\n"
              + f"Authentication-Results: {AUTHSERV_ID}; dmarc=pass header.from=bank.test\r\n"
              .encode()
              + b"Authentication-Results: upstream.example; spf=pass\r\n")
    raw = RECEIVED + forged + fixture_message("ham_plain.eml")
    processed = spamc(server(), data=raw).stdout
    head = processed.split(b"\r\n\r\n", 1)[0]
    assert b"score=-10.0" not in head and b"X-Spam-Flag: NO" not in head
    assert b"bank.test" not in head
    assert b"Authentication-Results: upstream.example; spf=pass" in head
    assert head.count(b"X-Spam-Status:") == 1
    assert processed.endswith(raw.split(b"\r\n\r\n", 1)[1])


def test_an_mbox_from_line_stays_first_and_is_not_a_header():
    raw = (b"From alice@example.org Tue Nov 24 09:12:44 2026\nX-Spam-Flag: YES\n"
           b"Subject: hi\n\nbody\n")
    separator, fields, body = split_header(raw)
    assert separator.startswith(b"From alice@")
    assert [name for name, _ in fields] == ["X-Spam-Flag", "Subject"]
    assert body == b"\nbody\n"


# -- rspamd's protocols: the envelope comes with the request ----------------------------

# What Exim 4.96 sends with spamd_address = ... variant=rspamd (src/spam.c).
def exim_request(raw: bytes) -> bytes:
    return (f"CHECK RSPAMC/1.3\r\nContent-length: {len(raw)}\r\nQueue-Id: 1tX0aB-000Abc-Zz\r\n"
            "From: <bob@example.org>\r\nRecipient-Number: 2\r\nRcpt: <carol@example.net>\r\n"
            "Rcpt: <dave@example.net>\r\nHelo: relay.example\r\n"
            "Hostname: relay.example\r\nIP: 203.0.113.5\r\n\r\n").encode() + raw


def exim_reads(answer: bytes) -> tuple[str, str]:
    """($spam_action, $spam_report) as Exim 4.96's spam.c makes them, or an
    AssertionError where Exim would log "cannot parse" and defer."""
    text = answer.decode("latin-1")
    found = re.match(r"RSPAMD/\S{1,7} 0 EX_OK\s*Metric: default;\s*\S{1,7}\s*(-?[\d.]+)\s*/"
                     r"\s*(-?[\d.]+)\s*/\s*(-?[\d.]+)\r\n", text)
    assert found, f"Exim cannot parse {text[:80]!r}"
    rest = text[found.end():]
    action = rest[len("Action: "):].split("\r", 1)[0] if rest.startswith("Action: ") else ""
    report = rest.replace("\r", "").replace("\n", "\n ").rstrip()
    return action, report


def from_report(report: str, name: str) -> str | None:
    """The ACL's ${if match{$spam_report}{...}{$1}} (deploy/exim/gateway-acl.conf)."""
    found = re.search(rf"(?m)^ ?{re.escape(name)}: (.*(?:\n \t.*)*)", report)
    return found.group(1) if found else None


def test_exims_rspamc_request_carries_the_envelope(server):
    seen = []

    def scanner(envelope, raw):
        seen.append(envelope)
        return verdict("accept")

    answer = ask(server(scanner), exim_request(fixture_message("ham_plain.eml")),
                 close_write=False)  # Exim does not shut its side down
    assert exim_reads(answer)[0] == "no action"
    (envelope,) = seen
    assert (envelope.client_ip, envelope.helo, envelope.client_name, envelope.mail_from,
            envelope.rcpt_to, envelope.queue_id) == (
        "203.0.113.5", "relay.example", "relay.example", "bob@example.org",
        ("carol@example.net", "dave@example.net"), "1tX0aB-000Abc-Zz")


@pytest.mark.parametrize(("action", "spam_action", "reply"), [
    ("accept", "no action", None),
    ("add_header", "add header", None),
    ("quarantine", "quarantine", None),
    ("reject", "reject", "550 5.7.1 Rejected: virus found (ref 4F1)"),
    ("tempfail", "soft reject", "451 4.7.1 Temporary failure, please try again later"),
])
def test_exims_spam_action_is_the_gateways_action(action, spam_action, reply):
    given = SmtpReply(*reply.split(" ", 2)) if reply else None
    auth = f"{AUTHSERV_ID};\n\tspf=pass smtp.mailfrom=bob@example.org;\n\tdmarc=pass"
    spam_action_seen, report = exim_reads(rspamc_answer(verdict(action, 2.0, given, auth)))
    assert spam_action_seen == spam_action
    assert from_report(report, "Message") == reply
    assert from_report(report, "X-Spam-Score") == "2.0"
    assert from_report(report, "X-Spam-Status").startswith(("Yes, score=2.0", "No, score=2.0"))
    assert from_report(report, "Authentication-Results") == (
        f"{AUTHSERV_ID};\n \tspf=pass smtp.mailfrom=bob@example.org;\n \tdmarc=pass")
    assert "Symbol: TEST_ONE(2.00)" in report


def test_a_value_from_the_message_cannot_become_a_header_line_of_the_answer():
    evil = "x\r\nX-Spam-Score: -100\n Message: 250 ok\rAction: no action"
    action, report = exim_reads(rspamc_answer(verdict("reject", 20.0,
                                                      SmtpReply("550", "5.7.1", evil))))
    assert action == "reject"
    assert from_report(report, "X-Spam-Score") == "20.0"
    assert from_report(report, "Message").startswith("550 5.7.1 x X-Spam-Score: -100")


@pytest.mark.slow
def test_checkv2_carries_the_envelope(server):
    scanner = server()
    raw = fixture_message("ham_plain.eml")
    request = (b"POST /checkv2 HTTP/1.0\r\n" + f"Content-Length: {len(raw)}\r\n".encode()
               + b"IP: 203.0.113.5\r\nHelo: relay.example\r\nFrom: <bob@example.org>\r\n"
               b"Rcpt: <carol@example.net>\r\nQueue-Id: EX1\r\n\r\n" + raw)
    answer = ask(scanner, request)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200 OK")
    result = json.loads(body)
    assert result["action"] in ("no action", "add header", "quarantine", "reject",
                                "soft reject")
    assert "BAYES" in " ".join(result["symbols"])
    assert "X-Spam-Status" in result["headers"]


def test_without_request_headers_the_envelope_comes_from_the_received_header():
    envelope = envelope_of(Head("spamc", "CHECK", {}), RawContent(data=message()))
    assert envelope.client_ip == "198.51.100.7"
    assert envelope.helo == "mail.example.org"
    assert envelope.mail_from == "alice@example.org"
    exim = (b"Received: from [203.0.113.9] (helo=bad.example)\r\n\tby mx.example.net with "
            b"esmtp (Exim 4.96)\r\n\t(envelope-from <eve@bad.example>)\r\n\tid 1;\r\n\r\nx\r\n")
    envelope = envelope_of(Head("spamc", "CHECK", {}), RawContent(data=exim))
    assert (envelope.client_ip, envelope.helo, envelope.mail_from) == (
        "203.0.113.9", "bad.example", "eve@bad.example")


# -- hostile clients ----------------------------------------------------------------------


@pytest.mark.parametrize(("request_bytes", "code"), [
    (b"GARBAGE\r\n\r\n", b"SPAMD/1.1 76"),
    (b"CHECK SPAMC/1.5\r\nContent-length: ten\r\n\r\nbody", b"SPAMD/1.1 76"),
    (b"CHECK SPAMC/1.5\r\n\r\nbody", b"SPAMD/1.1 76"),
    (b"FROBNICATE SPAMC/1.5\r\nContent-length: 1\r\n\r\nx", b"SPAMD/1.1 76"),
    (b"CHECK SPAMC/1.5\r\nno colon here\r\n\r\n", b"SPAMD/1.1 76"),
    (b"CHECK RSPAMC/1.3\r\nContent-length: -5\r\n\r\n", b"RSPAMD/1.3 76"),
    (b"GET /etc/passwd HTTP/1.0\r\n\r\n", b"SPAMD/1.1 64"),
    (b"CHECK SPAMC/1.5\r\n" + b"X-Long: " + b"a" * 70000 + b"\r\n\r\n", b"SPAMD/1.1 76"),
    (b"CHECK SPAMC/1.5" + b"a" * 70000 + b"\r\n\r\n", b"SPAMD/1.1 76"),
])
def test_malformed_requests_get_a_protocol_error(server, request_bytes, code):
    answer = ask(server(), request_bytes)
    assert answer.startswith(code + b" ")


@pytest.mark.slow
def test_truncated_requests_are_dropped_and_the_server_keeps_serving(server):
    scanner = server()
    raw = message()
    # A header line cut off is a protocol error; a body cut off gets no answer.
    assert ask(scanner, b"CHECK SPAMC/1.5\r\nContent-len").startswith(b"SPAMD/1.1 76 ")
    assert ask(scanner, spamc_request("CHECK", raw)[:-100]) == b""
    assert ask(scanner, spamc_request("CHECK", raw)).startswith(b"SPAMD/1.1 0 EX_OK")
    wait_until(lambda: scanner.open_connections() == 0 and not scanner.slots.held,
               what="every connection closed and every slot free")


@pytest.mark.slow
def test_fifty_clients_at_once_and_nothing_leaks(server):
    threads_before = threading.active_count()
    scanner = server()
    raw = message()
    garbage = [b"\x00\xff" * 50, b"CHECK SPAMC/1.5\r\nContent-length: 5\r\n\r\nab",
               spamc_request("SYMBOLS", raw)]

    def one(index: int) -> bytes:
        return ask(scanner, garbage[index % len(garbage)])

    with ThreadPoolExecutor(50) as pool:
        answers = list(pool.map(one, range(150)))
    good = [a for i, a in enumerate(answers) if i % 3 == 2]
    assert all(a.startswith(b"SPAMD/1.1 0 EX_OK") for a in good)
    assert all(a.startswith(b"SPAMD/1.1 76") for i, a in enumerate(answers) if i % 3 == 0)
    wait_until(lambda: scanner.open_connections() == 0 and not scanner.slots.held,
               what="every connection closed and every slot free")
    # the event loop and at most one scanning thread per slot, however many clients came
    assert threading.active_count() <= threads_before + 1 + scanner.settings.max_clients
    scanner.stop()
    wait_until(lambda: threading.active_count() <= threads_before, what="threads gone")


@pytest.mark.slow
def test_only_allowed_addresses_and_the_secret(server, caplog):
    caplog.set_level(logging.WARNING, "gateway.scan")
    refused = server(allow=["192.0.2.0/24"])
    assert ask(refused, spamc_request("CHECK", message())).startswith(b"SPAMD/1.1 77")
    assert "refused a request from 127.0.0.1: not in [scan] allow" in caplog.text
    guarded = server(secret="s3cret")
    assert ask(guarded, spamc_request("CHECK", message())).startswith(b"SPAMD/1.1 77")
    assert "refused a request from 127.0.0.1: wrong or missing [scan] secret" in caplog.text
    assert ask(guarded, spamc_request("CHECK", message(), "Secret: s3cret\r\n")).startswith(
        b"SPAMD/1.1 0 EX_OK")


def test_the_secret_is_checked_before_the_message_is_read(server):
    guarded = server(secret="s3cret")
    head = b"CHECK SPAMC/1.5\r\nContent-length: 150000\r\n\r\n"
    # The head alone, and the connection left open: the answer comes now,
    # not after 150,000 bytes that never come (or the client's deadline).
    assert ask(guarded, head, timeout=10, close_write=False).startswith(b"SPAMD/1.1 77")


def test_64_slow_clients_without_the_secret_leave_the_mta_its_answers(server):
    scanner = server(secret="s3cret", max_clients=8, max_per_client=8)
    with ExitStack() as stack:
        for _ in range(64):  # from the MTA's own address, never finishing their head
            slow = stack.enter_context(connect(scanner))
            slow.sendall(b"CHECK SPAMC/1.5\r\nContent-length: 100000\r\nX-Slow: ")
        wait_until(lambda: scanner.open_connections() >= 64, what="64 slow clients connected")
        for _ in range(8):
            answer = ask(scanner, spamc_request("CHECK", message(), "Secret: s3cret\r\n"))
            assert answer.startswith(b"SPAMD/1.1 0 EX_OK")


def test_slow_clients_of_one_address_hold_at_most_its_slots(server):
    scanner = server(allow=["127.0.0.0/8"], max_clients=8, max_per_client=4)
    with ExitStack() as stack:
        for index in range(64):  # another address, trickling messages that never end,
            length = 100_000 if index % 2 else 50_000_000  # half of them over [size] max_bytes
            slow = stack.enter_context(connect(scanner, source="127.0.0.2"))
            slow.sendall(f"CHECK RSPAMC/1.3\r\nContent-length: {length}\r\n\r\nFrom: x\r\n"
                         .encode())
        wait_until(lambda: scanner.open_connections() >= 64, what="64 slow clients connected")
        wait_until(lambda: scanner.slots.held["127.0.0.2"] == 4, what="4 slots taken")
        for _ in range(8):
            answer = ask(scanner, spamc_request("CHECK", message()))
            assert answer.startswith(b"SPAMD/1.1 0 EX_OK")
        assert scanner.slots.held["127.0.0.2"] == 4


@pytest.mark.slow  # 12 messages of 300 KB through the checks
def test_a_message_over_the_limit_streams_to_disk_and_gets_the_size_verdict(server, evaluator):
    seen: list[tuple[int, bool, int]] = []

    def scanner(envelope, raw: RawContent):
        stored = raw.path.stat().st_size if raw.path is not None else len(raw.bytes())
        seen.append((raw.size, raw.in_memory, stored))
        return evaluator.evaluate(envelope, raw)

    listener = server(scanner, max_bytes=200_000, spool_threshold=50_000)
    big = message() + b"x" * 298 + b"\r\n" * 150_000
    request = spamc_request("SYMBOLS", big)
    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(lambda _: ask(listener, request), range(12)))
    for answer in answers:
        assert answer.startswith(b"SPAMD/1.1 0 EX_OK\r\nSpam: True")
        assert b"SIZE_EXCEEDED" in answer
    # Each one held on disk, never in memory, and cut at [size] max_bytes.
    assert seen == [(len(big), False, 200_000)] * 12


def test_a_client_past_its_deadline_is_dropped_and_logged(server, caplog):
    caplog.set_level(logging.WARNING, "gateway.scan")
    clock = FakeClock()
    scanner = server(clock=clock, timeout=30.0)
    with connect(scanner) as slow:
        slow.sendall(b"CHECK SPAMC/1.5\r\nContent-length: 100\r\n\r\nonly part")
        wait_until(lambda: scanner.slots.held["127.0.0.1"] == 1, what="reading its body")
        clock.advance(29)
        assert ask(scanner, spamc_request("CHECK", message())).startswith(b"SPAMD/1.1 0")
        assert scanner.open_connections() >= 1  # not yet
        clock.advance(2)
        assert receive_all(slow) == b""
    wait_until(lambda: not scanner.slots.held, what="its slot freed")
    assert "refused a request from 127.0.0.1: no complete request within 30 s" in caplog.text


def test_waiting_for_a_slot_past_the_deadline_is_a_tempfail(server):
    clock = FakeClock()
    scanner = server(clock=clock, timeout=30.0, max_clients=1)
    with connect(scanner) as slow, connect(scanner) as waiting:
        slow.sendall(b"CHECK SPAMC/1.5\r\nContent-length: 100\r\n\r\nonly part")
        wait_until(lambda: scanner.slots.held["127.0.0.1"] == 1, what="the slot taken")
        waiting.sendall(spamc_request("CHECK", message()))
        wait_until(lambda: scanner.open_connections() == 2, what="the second one waiting")
        clock.advance(31)
        assert receive_all(waiting).startswith(b"SPAMD/1.1 75 too many clients")


def test_refusals_are_logged_once_a_minute_per_address_and_reason(caplog):
    caplog.set_level(logging.WARNING, "gateway.scan")
    clock = FakeClock()
    refusals = RefusalLog(clock)
    for _ in range(5):
        refusals.refused("192.0.2.1", "not in [scan] allow")
    refusals.refused("192.0.2.2", "not in [scan] allow")
    clock.advance(61)
    refusals.refused("192.0.2.1", "not in [scan] allow")
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "scan: refused a request from 192.0.2.1: not in [scan] allow",
        "scan: refused a request from 192.0.2.2: not in [scan] allow",
        "scan: refused a request from 192.0.2.1: not in [scan] allow (4 more since the "
        "last line)",
    ]


@pytest.mark.slow
def test_a_failing_scanner_answers_tempfail(server):
    def broken(envelope, raw):
        raise RuntimeError("worker died")

    listener = server(broken)
    assert ask(listener, spamc_request("CHECK", message())).startswith(b"SPAMD/1.1 75")
    assert ask(listener, exim_request(message()), close_write=False).startswith(
        b"RSPAMD/1.3 75")

"""The scan protocol for MTAs without milter: spamd's SPAMC (with Debian's
real ``spamc`` as the client) and rspamd's /checkv2, against the same
pipeline ``gateway check`` runs."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from gateway.config import Config, PipelineSection, ScanSection, SizeSection
from gateway.evaluator import LocalEvaluator
from gateway.lab.postfix import free_port
from gateway.scan import Request, ScanServer, envelope_of
from tests.helpers import PROJECT_ROOT, fixture_message

CHECKS = ["limits", "headers", "size", "lists", "bayes"]
RECEIVED = (b"Received: from mail.example.org (mail.example.org [198.51.100.7])\r\n"
            b"\tby mx.example.net (Postfix) with ESMTP id 4F1;\r\n"
            b"\tTue, 24 Nov 2026 09:12:44 +0000 (UTC)\r\n"
            b"Return-Path: <alice@example.org>\r\n")


def config(**scan) -> Config:
    return Config(pipeline=PipelineSection(checks=CHECKS, workers=0),
                  scan=ScanSection(listen=f"127.0.0.1:{free_port()}", **scan),
                  size=SizeSection(max_bytes=200_000))


@pytest.fixture(scope="module")
def evaluator():
    local = LocalEvaluator(Config(pipeline=PipelineSection(checks=CHECKS, workers=0)))
    yield local
    local.close()


@pytest.fixture
def server(evaluator):
    running: list[ScanServer] = []

    def start(**scan) -> ScanServer:
        scanner = ScanServer(config(**scan), evaluator.evaluate).start()
        running.append(scanner)
        return scanner

    yield start
    for scanner in running:
        scanner.stop()


def ask(server: ScanServer, data: bytes, timeout: float = 10.0) -> bytes:
    with socket.create_connection(server.address[:2], timeout=timeout) as connection:
        connection.sendall(data)
        connection.shutdown(socket.SHUT_WR)
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


# -- the real spamc --------------------------------------------------------------------

needs_spamc = pytest.mark.skipif(shutil.which("spamc") is None,
                                 reason="spamc is not installed (see .ci/run)")


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


@needs_spamc
def test_spamc_ping(server):
    pong = spamc(server(), "-K", data=b"")
    assert pong.returncode == 0 and pong.stdout.startswith(b"SPAMD/1.5 0")


# -- rspamd's protocol: the envelope comes with the request -----------------------------


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
    assert result["action"] in ("no action", "add header", "reject", "soft reject")
    assert "BAYES" in " ".join(result["symbols"])
    parsed = envelope_of(Request("CHECKV2", {"ip": ["203.0.113.5"], "helo": ["relay.example"],
                                             "from": ["<bob@example.org>"],
                                             "rcpt": ["<carol@example.net>"]}, raw, True))
    assert (parsed.client_ip, parsed.helo, parsed.mail_from, parsed.rcpt_to) == (
        "203.0.113.5", "relay.example", "bob@example.org", ("carol@example.net",))


def test_without_request_headers_the_envelope_comes_from_the_received_header():
    envelope = envelope_of(Request("CHECK", {}, message()))
    assert envelope.client_ip == "198.51.100.7"
    assert envelope.helo == "mail.example.org"
    assert envelope.mail_from == "alice@example.org"
    exim = (b"Received: from [203.0.113.9] (helo=bad.example)\r\n\tby mx.example.net with "
            b"esmtp (Exim 4.96)\r\n\t(envelope-from <eve@bad.example>)\r\n\tid 1;\r\n\r\nx\r\n")
    envelope = envelope_of(Request("CHECK", {}, exim))
    assert (envelope.client_ip, envelope.helo, envelope.mail_from) == (
        "203.0.113.9", "bad.example", "eve@bad.example")


# -- hostile clients ----------------------------------------------------------------------


@pytest.mark.parametrize(("request_bytes", "code"), [
    (b"GARBAGE\r\n\r\n", b"76"),
    (b"CHECK SPAMC/1.5\r\nContent-length: ten\r\n\r\nbody", b"76"),
    (b"CHECK SPAMC/1.5\r\n\r\nbody", b"76"),
    (b"FROBNICATE SPAMC/1.5\r\nContent-length: 1\r\n\r\nx", b"76"),
    (b"CHECK SPAMC/1.5\r\nno colon here\r\n\r\n", b"76"),
    (b"CHECK SPAMC/1.5\r\nContent-length: 999999999\r\n\r\nx", b"65"),
    (b"GET /etc/passwd HTTP/1.0\r\n\r\n", b"64"),
    (b"CHECK SPAMC/1.5\r\n" + b"X-Long: " + b"a" * 70000 + b"\r\n\r\n", b"76"),
])
def test_malformed_requests_get_a_protocol_error(server, request_bytes, code):
    answer = ask(server(), request_bytes)
    assert answer.startswith(b"SPAMD/1.1 " + code + b" ")


def test_truncated_requests_are_dropped_and_the_server_keeps_serving(server):
    scanner = server(timeout=1.0)
    raw = message()
    # A header line cut off is a protocol error; a body cut off gets no answer.
    assert ask(scanner, b"CHECK SPAMC/1.5\r\nContent-len").startswith(b"SPAMD/1.1 76 ")
    assert ask(scanner, spamc_request("CHECK", raw)[:-100]) == b""
    assert ask(scanner, spamc_request("CHECK", raw)).startswith(b"SPAMD/1.1 0 EX_OK")


def test_fifty_clients_at_once_and_nothing_leaks(server):
    scanner = server(timeout=15.0)  # under load a client thread may start late
    raw = message()
    threads_before = threading.active_count()
    garbage = [b"\x00\xff" * 50, b"CHECK SPAMC/1.5\r\nContent-length: 5\r\n\r\nab",
               spamc_request("SYMBOLS", raw)]

    def one(index: int) -> bytes:
        return ask(scanner, garbage[index % len(garbage)], timeout=20)

    with ThreadPoolExecutor(50) as pool:
        answers = list(pool.map(one, range(150)))
    good = [a for i, a in enumerate(answers) if i % 3 == 2]
    assert all(a.startswith(b"SPAMD/1.1 0 EX_OK") for a in good)
    assert all(a.startswith(b"SPAMD/1.1 76") for i, a in enumerate(answers) if i % 3 == 0)
    deadline = time.monotonic() + 10
    while threading.active_count() > threads_before + 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert threading.active_count() <= threads_before + 1  # the listener thread itself


def test_only_allowed_addresses_and_the_secret(server):
    refused = server(allow=["192.0.2.0/24"])
    assert ask(refused, spamc_request("CHECK", message())).startswith(b"SPAMD/1.1 77")
    guarded = server(secret="s3cret")
    assert ask(guarded, spamc_request("CHECK", message())).startswith(b"SPAMD/1.1 77")
    assert ask(guarded, spamc_request("CHECK", message(), "Secret: s3cret\r\n")).startswith(
        b"SPAMD/1.1 0 EX_OK")


def test_a_failing_scanner_answers_tempfail():
    def broken(envelope, raw):
        raise RuntimeError("worker died")

    scanner = ScanServer(config(), broken).start()
    try:
        assert ask(scanner, spamc_request("CHECK", message())).startswith(b"SPAMD/1.1 75")
    finally:
        scanner.stop()

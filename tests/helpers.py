"""Helpers the tests import: where the fixtures are, the milter's test
config, sending through Postfix. (Fixtures are in conftest.py, which pytest
loads by itself; a test imports from here, never from conftest.)"""

from __future__ import annotations

import smtplib
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from gateway.lab.dns import KnotServer
from gateway.lab.postfix import PostfixInstance

T = TypeVar("T")

FIXTURES = Path(__file__).parent / "fixtures"
MESSAGES = FIXTURES / "messages"
PROJECT_ROOT = Path(__file__).resolve().parent.parent


def fixture_message(name: str) -> bytes:
    return (MESSAGES / name).read_bytes()


SPINE_CHECKS = '[pipeline]\nchecks = ["headers", "size", "lists"]\n'


def dns_config(knot: KnotServer) -> str:
    """TOML pointing the gateway at the test DNS server, never the machine's."""
    return f'[dns]\nnameservers = ["127.0.0.1"]\nport = {knot.port}\n'


def milter_config(socket: Path, extra: str = "", store: str = "") -> str:
    """Milter config for tests: the spine's checks only, unless ``extra``
    sets [pipeline] itself (the classifier has tests of its own), and a
    quarantine at ``store`` (a URL; by default next to the socket), unless
    ``extra`` names one."""
    if "[pipeline]" not in extra:
        extra = SPINE_CHECKS + extra
    if "[quarantine]" not in extra:
        store = store or f"sqlite:///{socket.parent}/quarantine.db"
        extra += f'[quarantine]\nurl = "{store}"\n'
    if "[metrics]" not in extra:  # the default port may be taken by a real gateway
        extra += '[metrics]\nlisten = ""\n'
    return f'[milter]\nsocket = "unix:{socket}"\nsocket_mode = "666"\n{extra}'


def send(
    postfix: PostfixInstance,
    message: bytes,
    mail_from: str = "sender@example.org",
    rcpt_to: tuple[str, ...] = ("rcpt@example.net",),
) -> None:
    """Send over SMTP; raises smtplib.SMTPDataError on a 4xx/5xx at end of DATA."""
    with smtplib.SMTP("127.0.0.1", postfix.smtp_port, timeout=30) as client:
        client.sendmail(mail_from, list(rcpt_to), message)


def wait_until(condition: Callable[[], T], timeout: float = 10.0,
               what: str = "the condition") -> T:
    """The first true value of ``condition()``, asked every 20 ms: for what
    another thread or process makes true; fails the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not hold within {timeout:g} s")
        time.sleep(0.02)
    return value

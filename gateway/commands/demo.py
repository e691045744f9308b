"""``gateway demo``: a private Postfix on loopback with the gateway attached.

Sends the sample messages through it and shows what happened to each: the
SMTP answer, and for delivered mail the headers the gateway added. Needs
root (Postfix does) and touches nothing outside a temporary folder.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import smtplib
import tempfile
import zipfile
from email.message import EmailMessage
from email.utils import parseaddr
from pathlib import Path

from gateway.commands.common import UsageError
from gateway.headers import OWN_HEADERS
from gateway.lab.clamd import ClamdError, ClamdInstance
from gateway.lab.milter_process import MilterProcess
from gateway.lab.postfix import PostfixError, PostfixInstance
from gateway.lab.sink import Sink
from gateway.paths import PROJECT_ROOT

SAMPLES = Path(__file__).resolve().parent.parent / "lab" / "samples"

DEMO_CONFIG = """\
[milter]
socket = "unix:{socket}"
socket_mode = "666"

[lists]
block_senders = ["spammer.example"]

[clamav]
socket = "{clamd_socket}"
"""
# The EICAR test file (harmless by design), built here rather than stored so
# that no scanner flags the checkout.
EICAR = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$" + b"EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("messages", nargs="*", type=Path,
                        help=f"message files to send (default: the samples in {SAMPLES})")
    parser.add_argument("--keep", action="store_true",
                        help="keep the lab folder (Postfix log, milter log) for a look")


def main(args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        raise UsageError("demo: the private Postfix instance needs root (try sudo)")
    for program in ("postfix", "clamd"):
        if shutil.which(program) is None:
            raise UsageError(f"demo: {program} is not installed (run scripts/setup)")
    if args.messages:
        messages = [(p.name, p.read_bytes()) for p in args.messages]
    else:
        messages = [(p.name, p.read_bytes()) for p in sorted(SAMPLES.glob("*.eml"))]
        messages.append(("05-eicar-in-a-zip (built by the demo)", eicar_message()))
    root = Path(tempfile.mkdtemp(prefix="gateway-demo-", dir="/tmp"))
    os.chmod(root, 0o755)
    socket = root / "milter" / "milter.sock"
    clamd = ClamdInstance(root / "clamd")
    try:
        with Sink() as sink, clamd:
            config = DEMO_CONFIG.format(socket=socket, clamd_socket=clamd.socket_path)
            milter = MilterProcess(root / "milter", config, env={"PYTHONPATH": str(PROJECT_ROOT)})
            postfix = PostfixInstance(root / "postfix", relay_port=sink.port,
                                      milter=f"unix:{socket}")
            with milter, postfix:
                print(f"demo: Postfix on 127.0.0.1:{postfix.smtp_port} -> gateway milter -> "
                      f"sink on 127.0.0.1:{sink.port}; clamd with the test signatures\n")
                for name, raw in messages:
                    show(name, raw, postfix, sink)
    except (PostfixError, ClamdError) as exc:
        raise UsageError(f"demo: {exc}") from None
    finally:
        if args.keep:
            print(f"demo: lab kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return 0


def eicar_message() -> bytes:
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("invoice.com", EICAR)
    message = EmailMessage()
    message["From"] = "Billing <billing@example.com>"
    message["To"] = "bob@example.net"
    message["Subject"] = "Your invoice"
    message["Date"] = "Tue, 24 Nov 2026 12:00:00 +0000"
    message["Message-ID"] = "<eicar-demo@example.com>"
    message.set_content("Please find your invoice attached.\n")
    message.add_attachment(archive.getvalue(), maintype="application", subtype="zip",
                           filename="invoice.zip")
    return message.as_bytes().replace(b"\n", b"\r\n")


def show(name: str, raw: bytes, postfix: PostfixInstance, sink: Sink) -> None:
    sender = parseaddr(_header(raw, "From"))[1] or "demo@example.org"
    before = len(sink.deliveries)
    print(f"== {name}  (MAIL FROM:<{sender}>)")
    try:
        with smtplib.SMTP("127.0.0.1", postfix.smtp_port, timeout=60) as client:
            client.sendmail(sender, ["bob@example.net"], raw)
    except smtplib.SMTPResponseException as exc:
        print(f"   SMTP answer: {exc.smtp_code} {exc.smtp_error.decode(errors='replace')}\n")
        return
    deliveries = sink.wait_for(before + 1, timeout=30)
    if len(deliveries) <= before:
        print("   accepted, but not delivered to the sink in time\n")
        return
    delivered = deliveries[before]
    print("   SMTP answer: 250 accepted and delivered; the gateway added:")
    for name in OWN_HEADERS:
        value = delivered.header(name)
        if value is not None:
            print(f"   {name}: {' '.join(value.split())}")
    print()


def _header(raw: bytes, name: str) -> str:
    head = raw.replace(b"\r\n", b"\n").split(b"\n\n", 1)[0].decode("utf-8", "replace")
    for line in head.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() == name.lower():
            return value.strip()
    return ""

"""``gateway demo``: a private Postfix on loopback with the gateway attached.

Sends the sample messages through it and shows what happened to each: the
SMTP answer, for delivered mail the headers the gateway added, for held
mail the quarantine's record. Works offline: a private DNS server (knotd)
answers for the sample domains, a private clamd scans with the test
signatures, the quarantine is a file in the lab folder. Needs root
(Postfix does) and touches nothing outside a temporary folder.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import smtplib
import tempfile
import time
import zipfile
from email.message import EmailMessage
from pathlib import Path

from gateway.commands.common import UsageError
from gateway.headers import OWN_HEADERS
from gateway.message import Message
from gateway.paths import SOURCE_ROOT

SAMPLES = Path(__file__).resolve().parent.parent / "lab" / "samples"
LOOPBACK_NAME = "mail.example.org"  # the demo's SMTP client: its HELO and its PTR

DEMO_CONFIG = """\
[milter]
socket = "unix:{socket}"
socket_mode = "666"

[lists]
block_senders = ["spammer.example"]

[clamav]
socket = "{clamd_socket}"

[dns]
nameservers = ["127.0.0.1"]
port = {dns_port}

[quarantine]
url = "sqlite:///{root}/quarantine/quarantine.db"

[metrics]
listen = ""
"""
# The EICAR test file (harmless by design), built here rather than stored so
# that no scanner flags the checkout.
EICAR = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$" + b"EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("messages", nargs="*", type=Path,
                        help=f"message files to send (default: the samples in {SAMPLES})")
    parser.add_argument("--keep", action="store_true",
                        help="keep the lab folder (Postfix log, milter log) for a look")


def demo_zones() -> list:
    """The sample domains, as a small mail world on loopback: each domain
    has an MX; the ordinary ones an SPF record allowing 127.0.0.1 (where the
    demo sends from) and a DMARC record asking for nothing (p=none); the
    prize desk publishes neither, like much bulk mail. 127.0.0.1 has a name
    that resolves back to it."""
    from gateway.lab.dns import Zone

    zones = []
    for domain in ("example.org", "example.net", "example.com", "promo.example",
                   "spammer.example"):
        zone = Zone(domain).add("@", "MX", f"10 mail.{domain}.").add("mail", "A", "127.0.0.1")
        if domain != "promo.example":
            zone.txt("@", "v=spf1 ip4:127.0.0.1 -all").txt("_dmarc", "v=DMARC1; p=none")
        zones.append(zone)
    zones.append(Zone("127.in-addr.arpa").add("1.0.0", "PTR", f"{LOOPBACK_NAME}."))
    return zones


def main(args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        raise UsageError("demo: the private Postfix instance needs root (try sudo)")
    for program in ("postfix", "clamd", "knotd"):
        if shutil.which(program) is None and not Path("/usr/sbin", program).exists():
            raise UsageError(f"demo: {program} is not installed (run scripts/setup, or "
                             "apt install postfix clamav-daemon knot)")
    try:
        import aiosmtpd  # noqa: F401  (the sink behind Postfix)
    except ImportError:
        raise UsageError("demo: needs the [demo] extra: pip install 'gateway[demo]'") from None
    from gateway.lab.clamd import ClamdError, ClamdInstance
    from gateway.lab.dns import KnotServer
    from gateway.lab.milter_process import MilterProcess
    from gateway.lab.postfix import PostfixError, PostfixInstance
    from gateway.lab.sink import Sink

    for path in args.messages:
        if not path.is_file():
            raise UsageError(f"demo: {path}: no such file")
    if args.messages:
        messages = [(p.name, p.read_bytes()) for p in args.messages]
    else:
        messages = [(p.name, p.read_bytes()) for p in sorted(SAMPLES.glob("*.eml"))]
        messages.append(("05-eicar-in-a-zip (built by the demo)", eicar_message()))
    root = Path(tempfile.mkdtemp(prefix="gateway-demo-", dir="/tmp"))
    os.chmod(root, 0o755)
    socket = root / "milter" / "milter.sock"
    clamd = ClamdInstance(root / "clamd")
    env = {"PYTHONPATH": str(SOURCE_ROOT)} if (SOURCE_ROOT / "pyproject.toml").exists() else {}
    try:
        with Sink() as sink, clamd, KnotServer(root / "dns", demo_zones()) as dns:
            config = DEMO_CONFIG.format(socket=socket, clamd_socket=clamd.socket_path,
                                        dns_port=dns.port, root=root)
            milter = MilterProcess(root / "milter", config, env=env)
            postfix = PostfixInstance(root / "postfix", relay_port=sink.port,
                                      milter=f"unix:{socket}")
            with milter, postfix:
                print(f"demo: Postfix on 127.0.0.1:{postfix.smtp_port} -> gateway milter -> "
                      f"sink on 127.0.0.1:{sink.port}; clamd with the test signatures; "
                      f"DNS for the sample domains on 127.0.0.1:{dns.port}\n")
                store = root / "quarantine" / "quarantine.db"
                for name, raw in messages:
                    show(name, raw, postfix, sink, store)
    except (PostfixError, ClamdError, RuntimeError) as exc:
        raise UsageError(f"demo: {str(exc).strip().splitlines()[0]}") from None
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


def show(name: str, raw: bytes, postfix, sink, store: Path) -> None:
    author = Message.from_bytes(raw).authors.first
    sender = author.address if author is not None else "demo@example.org"
    before = len(sink.deliveries)
    print(f"== {name}  (MAIL FROM:<{sender}>)")
    try:
        with smtplib.SMTP("127.0.0.1", postfix.smtp_port, timeout=60,
                          local_hostname=LOOPBACK_NAME) as client:
            queue_id = _send(client, sender, "bob@example.net", raw)
    except smtplib.SMTPResponseException as exc:
        error = exc.smtp_error
        text = error.decode(errors="replace") if isinstance(error, bytes) else error
        print(f"   SMTP answer: {exc.smtp_code} {text}\n")
        return
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if len(sink.deliveries) > before:
            delivered = sink.deliveries[before]
            print("   SMTP answer: 250 accepted and delivered; the gateway added:")
            for header in OWN_HEADERS:
                value = delivered.header(header)
                if value is not None:
                    print(f"   {header}: {' '.join(value.split())}")
            print()
            return
        held = _held(store, queue_id)
        if held is not None:
            symbols = " ".join(f"{s['name']}({s['score']:g})" for s in held.symbols)
            print(f"   SMTP answer: 250 accepted, then held in the quarantine as {held.id}: "
                  f"{held.reason}\n   symbols: {symbols}\n"
                  f"   (gateway quarantine show {held.id} / release {held.id})\n")
            return
        time.sleep(0.1)
    print("   accepted, but neither delivered to the sink nor held in time\n")


def _send(client: smtplib.SMTP, sender: str, recipient: str, raw: bytes) -> str | None:
    """One SMTP transaction; Postfix's queue id from its answer to DATA
    ("250 2.0.0 Ok: queued as X"). A refusal raises SMTPResponseException."""
    client.ehlo_or_helo_if_needed()
    code, answer = client.mail(sender)
    if code != 250:
        raise smtplib.SMTPSenderRefused(code, answer, sender)
    code, answer = client.rcpt(recipient)
    if code not in (250, 251):
        raise smtplib.SMTPResponseException(code, answer)
    code, answer = client.data(raw)
    if code != 250:
        raise smtplib.SMTPDataError(code, answer)
    text = answer.decode(errors="replace")
    return text.rsplit("queued as ", 1)[-1].strip() if "queued as " in text else None


def _held(store: Path, queue_id: str | None):
    if queue_id is None or not store.exists():
        return None
    from gateway.quarantine.store import QuarantineError, QuarantineStore

    try:
        quarantine = QuarantineStore(f"sqlite:///{store}")
    except QuarantineError:
        return None
    try:
        return quarantine.get(queue_id)
    except QuarantineError:
        return None
    finally:
        quarantine.close()


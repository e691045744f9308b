"""Hostile mail through Postfix + the gateway + clamd: does anything get lost,
crash the milter, or pass with a check that silently failed?

Starts a private Postfix (relaying to smtp-sink, XCLIENT allowed from
loopback), the gateway milter with every check on, a private clamd and a
DNS server that serves the test zones of tests/authlab.py (good.test
publishes DMARC p=reject) and synthetic records for every other domain.
Then sends ``-n`` messages from tests/hostile.py, every builder in turn and
as many generated ones, from 203.0.113.66 with MAIL FROM on a domain of
the attacker's own whose SPF passes; a share of the sessions abuse SMTP
instead (connections dropped in DATA or before it, a thousand recipients,
RSET and several transactions in one session, junk commands).

Prints: sent, answered 2xx/4xx/5xx, delivered (at the sink), quarantined
(in the gateway's store), lost (accepted but neither), milter crashes and
restarts, messages accepted with a failed check (and how many of those with
no penalty), spoofs of good.test delivered, time per message (p50/p99/max,
at the client and as the gateway logged it) and the gateway's RSS.

    sudo .venv/bin/python tests/bench/fuzz.py -n 10000
    sudo .venv/bin/python tests/bench/fuzz.py --stall -n 300
    sudo .venv/bin/python tests/bench/fuzz.py -n 2000 --json

``--stall``: 8 pathological messages in flight at all times (from the
attacker's address) plus a stream of normal mail from another client, one
message at a time (the SpamAssassin corpus, tests/bench/corpus.py;
every 4th a ham message with a report attached, 300 KiB): p50/p99 of the
small and of the 300 KiB mail, without and with that load, and how each
was answered.

``--cpu``: the CPU each message of the corpus and each pathological shape
costs to check, in this process, without the lab (what ``[pipeline]
heavy_cpu_seconds`` is measured against; no root needed):

    .venv/bin/python tests/bench/fuzz.py --cpu

Needs root (Postfix), but for ``--cpu``. Not a test: it prints figures and
exits 1 only when mail was lost or the milter crashed.
"""

from __future__ import annotations

import argparse
import contextlib
import email
import email.message
import email.policy
import json
import os
import random
import re
import shutil
import smtplib
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(PROJECT_ROOT))

from gateway.config import PipelineSection  # noqa: E402
from gateway.lab.clamd import ClamdInstance  # noqa: E402
from gateway.lab.dns import Zone  # noqa: E402
from gateway.lab.milter_process import MilterProcess  # noqa: E402
from gateway.lab.postfix import PostfixInstance, free_port  # noqa: E402
from gateway.quarantine.store import Filters, QuarantineError, QuarantineStore  # noqa: E402
from gateway.symbols import failure_symbol_name  # noqa: E402
from tests import hostile  # noqa: E402
from tests.bench.corpus import add_corpus_argument, require_corpus  # noqa: E402
from tests.bench.procs import rss_bytes, tree  # noqa: E402
from tests.lab.dns import SyntheticServer  # noqa: E402

ATTACKER_IP = "203.0.113.66"  # tests/authlab.py: PTR mx.forwarder.test
ATTACKER_FROM = "eve@forwarder.test"  # forwarder.test's SPF allows ATTACKER_IP
ATTACKER_HELO = "mx.forwarder.test"
AUTHSERV = "mx.gateway.test"
FAILURE = re.compile(r"\b([A-Z][A-Z0-9_]*_ERROR|BUDGET_EXCEEDED)\((-?[\d.]+)\)")
FAILURE_NAME = re.compile(r"[A-Z][A-Z0-9_]*_ERROR|BUDGET_EXCEEDED")
TAG = re.compile(rb"fuzz-([0-9a-f]{8})-(\d+)")
# The heaviest shapes for --stall, each thread starting at another one.
PATHOLOGICAL = ("mime_siblings_bare", "mime_siblings", "text_huge", "html_huge_attribute",
                "header_many_fields", "encoded_words_subject", "mime_nested_multipart",
                "dkim_relaxed_spaces", "arc_relaxed_spaces", "ctype_many_parameters_folded")
LARGE_LEGITIMATE = 300 * 1024  # --stall: legitimate mail this large, beside small
ABUSE = ("drop-in-data", "drop-after-headers", "drop-before-data", "many-recipients",
         "rset-then-send", "several-transactions", "junk-commands")


# -- the lab -------------------------------------------------------------------------


class LabDns(SyntheticServer):
    """The zones of tests/authlab.py as written, synthetic answers elsewhere."""

    def __init__(self, zones: list[Zone]):
        super().__init__()
        from dnslib import QTYPE, RR

        self.origins = tuple(zone.origin.lower() for zone in zones)
        self.records: dict[tuple[str, str], list] = {}
        for zone in zones:
            for record in RR.fromZone(zone.render()):
                key = (str(record.rname).rstrip(".").lower(), QTYPE[record.rtype])
                self.records.setdefault(key, []).append(record)
        self.names = {name for name, _ in self.records}

    def answer(self, request):
        from dnslib import QTYPE, RCODE

        name = str(request.q.qname).rstrip(".").lower()
        if not any(name == o or name.endswith("." + o) for o in self.origins):
            return super().answer(request)
        reply = request.reply()
        for record in self.records.get((name, QTYPE[request.q.qtype]), ()):
            reply.add_answer(record)
        if name not in self.names:
            reply.header.rcode = RCODE.NXDOMAIN
        return reply


@dataclass
class Lab:
    root: Path
    postfix: PostfixInstance
    milter: MilterProcess
    store_url: str
    dump_dir: Path
    budget: float
    services: contextlib.ExitStack
    sink: subprocess.Popen
    crashes: list[str] = field(default_factory=list)
    workers_seen: set[int] = field(default_factory=set)
    workers_at_start: int = 0
    rss_peak: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)

    def watch(self) -> None:
        """Restart the milter if it dies; note worker processes and RSS."""
        def loop() -> None:
            while not self._stop.wait(0.2):
                process = self.milter.process
                if process is not None and process.poll() is not None:
                    tail = self.milter.log()[-1500:]
                    self.crashes.append(f"exit {process.returncode}: {tail}")
                    print(f"\nfuzz: MILTER DIED (exit {process.returncode}), restarting",
                          file=sys.stderr, flush=True)
                    with contextlib.suppress(Exception):
                        self.milter.start()
                    continue
                self.workers_seen.update(descendants(self.pid))
                self.rss_peak = max(self.rss_peak, tree_rss(self.pid))
        threading.Thread(target=loop, name="watch", daemon=True).start()

    @property
    def pid(self) -> int:
        assert self.milter.process is not None
        return self.milter.process.pid

    def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(Exception):
            self.postfix.stop()
        with contextlib.suppress(Exception):
            self.milter.stop()
        self.services.close()
        self.sink.terminate()
        self.sink.wait()


def start_lab(args: argparse.Namespace) -> Lab:
    from tests.authlab import build_zones, make_keys

    root = Path(tempfile.mkdtemp(prefix="gateway-fuzz-", dir="/tmp"))
    os.chmod(root, 0o755)
    dump_dir = root / "sink"
    dump_dir.mkdir()
    shutil.chown(dump_dir, "postfix")
    sink_port = free_port()
    sink = subprocess.Popen(
        ["smtp-sink", "-u", "postfix", "-d", f"{dump_dir}/%H%M%S.", f"127.0.0.1:{sink_port}",
         "1024"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    services = contextlib.ExitStack()
    clamd = services.enter_context(ClamdInstance(root / "clamd"))
    dns = services.enter_context(LabDns(build_zones(make_keys())))
    socket_path = root / "milter" / "milter.sock"
    (root / "quarantine").mkdir()
    store_url = f"sqlite:///{root}/quarantine/quarantine.db"
    extra = args.gateway_config.read_text() if args.gateway_config else ""
    config = (f'[milter]\nsocket = "unix:{socket_path}"\nsocket_mode = "666"\n'
              f'[clamav]\nsocket = "{clamd.socket_path}"\n'
              f'[dns]\nnameservers = ["127.0.0.1"]\nport = {dns.port}\n'
              f'[auth]\nauthserv_id = "{AUTHSERV}"\n'
              f'[quarantine]\nurl = "{store_url}"\n{extra}')
    if args.workers is not None:
        if "[pipeline]" in config:
            config = config.replace("[pipeline]\n", f"[pipeline]\nworkers = {args.workers}\n", 1)
        else:
            config += f"[pipeline]\nworkers = {args.workers}\n"
    milter = MilterProcess(root / "milter", config, env={"PYTHONPATH": str(PROJECT_ROOT)})
    postfix = PostfixInstance(
        root / "postfix", relay_port=sink_port, milter=f"unix:{socket_path}",
        settings={"smtpd_authorized_xclient_hosts": "127.0.0.0/8",
                  "mynetworks": "127.0.0.0/8 203.0.113.0/24",
                  "message_size_limit": str(20 * 1024 * 1024)})
    budget = PipelineSection().budget
    match = re.search(r"(?m)^budget\s*=\s*([\d.]+)", config)
    if match:
        budget = float(match.group(1))
    lab = Lab(root, postfix, milter, store_url, dump_dir, budget, services, sink)
    try:
        milter.start(timeout=120)
        postfix.start()
    except Exception:
        lab.close()
        raise
    lab.workers_at_start = len(descendants(lab.pid))
    lab.workers_seen.update(descendants(lab.pid))
    lab.watch()
    return lab


# -- processes -------------------------------------------------------------------------


def descendants(pid: int) -> set[int]:
    return set(tree(pid)[1:])


def tree_rss(pid: int) -> int:
    return sum(rss_bytes(process) for process in tree(pid))


# -- sending -----------------------------------------------------------------------------


@dataclass
class Sent:
    index: int
    name: str
    kind: str  # "message" or an ABUSE kind
    spoofs: bool
    code: int | None  # reply to the end of DATA; None: no DATA was finished
    seconds: float
    error: str = ""


def tag(run: str, index: int) -> str:
    return f"fuzz-{run}-{index}@example.net"


def send_message(port: int, raw: bytes, rcpt: str, mail_from: str = ATTACKER_FROM,
                 xclient: bool = True, timeout: float = 300) -> int:
    """One transaction; the reply code to the end of DATA."""
    with smtplib.SMTP("127.0.0.1", port, timeout=timeout) as client:
        client.ehlo("client.test")
        if xclient:
            code, text = client.docmd(
                "XCLIENT", f"ADDR={ATTACKER_IP} NAME=[UNAVAILABLE] HELO={ATTACKER_HELO}")
            if code != 220:
                raise RuntimeError(f"XCLIENT refused: {code} {text!r}")
            client.ehlo(ATTACKER_HELO)
        try:
            client.sendmail(mail_from, [rcpt], raw)
        except smtplib.SMTPDataError as refused:
            return refused.smtp_code
        except smtplib.SMTPRecipientsRefused as refused:
            return next(iter(refused.recipients.values()))[0]
        except smtplib.SMTPSenderRefused as refused:
            return refused.smtp_code
        return 250


class RawSession:
    """SMTP over a plain socket, for what smtplib will not do."""

    def __init__(self, port: int, timeout: float = 60):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.reader = self.sock.makefile("rb")
        self.reply()

    def reply(self) -> int:
        while True:
            line = self.reader.readline()
            if not line:
                raise ConnectionError("server closed the connection")
            if line[3:4] != b"-":
                return int(line[:3])

    def command(self, line: bytes) -> int:
        self.sock.sendall(line + b"\r\n")
        return self.reply()

    def greet(self) -> None:
        self.command(b"EHLO client.test")
        self.command(f"XCLIENT ADDR={ATTACKER_IP} NAME=[UNAVAILABLE] "
                     f"HELO={ATTACKER_HELO}".encode())
        self.command(f"EHLO {ATTACKER_HELO}".encode())

    def transaction(self, raw: bytes, rcpts: list[str]) -> int:
        self.command(f"MAIL FROM:<{ATTACKER_FROM}>".encode())
        for rcpt in rcpts:
            self.sock.sendall(f"RCPT TO:<{rcpt}>\r\n".encode())
        for _ in rcpts:
            self.reply()
        if self.command(b"DATA") != 354:
            return 554
        self.sock.sendall(data_lines(raw) + b".\r\n")
        return self.reply()

    def drop(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()

    def quit(self) -> None:
        with contextlib.suppress(OSError, ConnectionError):
            self.command(b"QUIT")
        self.drop()


def data_lines(raw: bytes) -> bytes:
    """Line ends as CRLF and dot-stuffed, as smtplib sends them."""
    text = re.sub(rb"(?:\r\n|\n|\r(?!\n))", b"\r\n", raw)
    if not text.endswith(b"\r\n"):
        text += b"\r\n"
    return re.sub(rb"(?m)^\.", b"..", text)


def abuse(port: int, kind: str, raw: bytes, run: str, index: int,
          ) -> tuple[list[tuple[int, int]], str]:
    """One abusive session: the (index, code) of each transaction it finished
    (extra transactions get indices above 10**7), and what went wrong on a
    session that should not have been cut."""
    session = RawSession(port)
    finished: list[tuple[int, int]] = []
    error = ""
    try:
        session.greet()
        if kind == "drop-before-data":
            session.command(f"MAIL FROM:<{ATTACKER_FROM}>".encode())
            session.command(f"RCPT TO:<{tag(run, index)}>".encode())
            session.drop()
        elif kind in ("drop-in-data", "drop-after-headers"):
            session.command(f"MAIL FROM:<{ATTACKER_FROM}>".encode())
            session.command(f"RCPT TO:<{tag(run, index)}>".encode())
            session.command(b"DATA")
            body = data_lines(raw)
            cut = body.find(b"\r\n\r\n") + 4 if kind == "drop-after-headers" else len(body) // 2
            session.sock.sendall(body[:max(cut, 1)])
            time.sleep(0.05)
            session.drop()
        elif kind == "many-recipients":
            rcpts = [tag(run, index)] + [f"fuzz-{run}-{index}-{r}@example.net"
                                         for r in range(999)]
            finished.append((index, session.transaction(raw, rcpts)))
            session.quit()
        elif kind == "rset-then-send":
            session.command(f"MAIL FROM:<{ATTACKER_FROM}>".encode())
            session.command(b"RCPT TO:<nobody@example.net>")
            session.command(b"RSET")
            finished.append((index, session.transaction(raw, [tag(run, index)])))
            session.quit()
        elif kind == "several-transactions":
            finished.append((index, session.transaction(raw, [tag(run, index)])))
            for extra in range(1, 5):
                number = 10**7 + index * 10 + extra
                finished.append((number, session.transaction(hostile.message(
                    tag=f"extra-{extra}"), [tag(run, number)])))
            session.quit()
        elif kind == "junk-commands":
            for junk in (b"\x00\x00\x00", b"X" * 5000, b"MAIL FROM:<" + b"a" * 3000 + b">",
                         b"HELO", b"RCPT TO:<>", b"DATA", b"\xff\xfe AUTH PLAIN",
                         b"NOOP " + b"%n" * 100, b"VRFY " + b"<" * 500):
                session.command(junk)
            session.command(b"RSET")
            finished.append((index, session.transaction(raw, [tag(run, index)])))
            session.sock.sendall(b"BDAT x LAST\r\n")  # Postfix hangs up on this one
            session.drop()
    except (OSError, ConnectionError) as exc:
        if not kind.startswith("drop-"):
            error = f"{kind}: {type(exc).__name__}: {exc}"[:200]
        session.drop()
    return finished, error


# -- what came out ----------------------------------------------------------------------------


@dataclass
class Delivered:
    index: int
    status: str  # X-Spam-Status
    symbols: str  # X-Gateway-Symbols


class Collector:
    """Reads smtp-sink's dump files as they arrive (and removes them)."""

    def __init__(self, dump_dir: Path, run: str):
        self.dump_dir = dump_dir
        self.run = run.encode()
        self.delivered: dict[int, Delivered] = {}
        self.bounced: set[int] = set()
        self.unmatched = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="collect", daemon=True)

    def start(self) -> Collector:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.scan()

    def _loop(self) -> None:
        while not self._stop.wait(0.5):
            self.scan()

    def scan(self) -> None:
        for path in sorted(self.dump_dir.iterdir()):
            try:
                if time.time() - path.stat().st_mtime < 0.3:
                    continue  # smtp-sink may still be writing it
                data = path.read_bytes()
            except OSError:
                continue
            self._read(data)
            with contextlib.suppress(OSError):
                path.unlink()

    def _read(self, data: bytes) -> None:
        head = data.split(b"\n\n", 1)[0].split(b"\r\n\r\n", 1)[0]
        envelope_from = re.search(rb"(?m)^X-Mail-Args: (\S*)", head)
        rcpt = re.search(rb"(?m)^X-Rcpt-Args: <([^>]*)>", head)
        with self._lock:
            if envelope_from and envelope_from.group(1).startswith(b"<>"):
                self.bounced.update(int(m.group(2)) for m in TAG.finditer(data)
                                    if m.group(1) == self.run)
                return
            match = TAG.search(rcpt.group(1)) if rcpt else None
            if match is None or match.group(1) != self.run:
                self.unmatched += 1
                return
            parsed = email.message_from_bytes(head + b"\n\n", policy=email.policy.compat32)
            index = int(match.group(2))
            self.delivered[index] = Delivered(
                index, " ".join(str(parsed.get("X-Spam-Status", "")).split()),
                " ".join(str(parsed.get("X-Gateway-Symbols", "")).split()))


def quarantined(store_url: str, run: str) -> set[int]:
    try:
        store = QuarantineStore(store_url)
    except QuarantineError:
        return set()
    try:
        records = store.records(Filters(state="held", action="quarantine", limit=10**7))
    except QuarantineError:
        return set()
    finally:
        store.close()
    found = set()
    for record in records:
        for rcpt in record.recipients:
            match = TAG.search(rcpt.encode())
            if match and match.group(1) == run.encode():
                found.add(int(match.group(2)))
    return found


def gateway_log(lab: Lab, run: str) -> dict[int, dict]:
    """The gateway's log line of each message of this run, by index."""
    entries: dict[int, dict] = {}
    for line in lab.milter.log().splitlines():
        _, marker, payload = line.partition("gateway.message: ")
        if not marker:
            continue
        try:  # the JSON follows the message's queue id ("4XyZ1: {...}")
            entry = json.loads(payload[payload.find("{"):])
        except ValueError:
            continue
        for rcpt in entry.get("rcpt", [])[:1]:
            match = TAG.search(rcpt.encode())
            if match and match.group(1) == run.encode():
                entries[int(match.group(2))] = entry
    return entries


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50": 0.0, "p99": 0.0, "max": 0.0}
    ordered = sorted(values)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {"p50": round(pick(0.5), 4), "p99": round(pick(0.99), 4),
            "max": round(ordered[-1], 4)}


# -- the fuzz run -------------------------------------------------------------------------------


def fuzz(lab: Lab, args: argparse.Namespace) -> dict:
    run = uuid.uuid4().hex[:8]
    chooser = random.Random(args.seed)
    plan = [(index, chooser.choice(ABUSE) if chooser.random() < args.abuse else "message")
            for index in range(args.messages)]
    rss_before = tree_rss(lab.pid)
    collector = Collector(lab.dump_dir, run).start()
    results: list[Sent] = []
    lock = threading.Lock()
    started = time.perf_counter()
    counts: Counter[str] = Counter()

    def one(item) -> None:
        index, kind = item
        name, raw, spoofs = hostile.nth(index, args.seed)
        began = time.perf_counter()
        outcomes: list[tuple[int, int | None]] = []
        error = ""
        try:
            if kind == "message":
                outcomes = [(index, send_message(lab.postfix.smtp_port, raw, tag(run, index)))]
            else:
                finished, error = abuse(lab.postfix.smtp_port, kind, raw, run, index)
                outcomes = list(finished) or [(index, None)]
        except Exception as exc:  # a refused connection, a timeout: counted, not fatal
            error = f"{type(exc).__name__}: {exc}"[:200]
            outcomes = [(index, None)]
        seconds = time.perf_counter() - began
        with lock:
            for number, code in outcomes:
                results.append(Sent(number, name if number == index else "extra", kind,
                                    spoofs and number == index, code, seconds, error))
                counts["2xx" if code and code < 300 else "4xx" if code and code < 500
                       else "5xx" if code else "none"] += 1

    tty = sys.stderr.isatty()

    def progress() -> None:
        while not done.wait(2.0 if tty else 15.0):
            with lock:
                finished = len({r.index for r in results if r.index < 10**7})
                line = " ".join(f"{k} {v}" for k, v in sorted(counts.items()))
            rate = finished / max(time.perf_counter() - started, 1e-9)
            print(("\r" if tty else "") + f"fuzz: {finished}/{len(plan)} sessions, {line}, "
                  f"{rate:.1f}/s, crashes {len(lab.crashes)}, "
                  f"RSS {tree_rss(lab.pid) / 2**20:.0f} MB   ", end="" if tty else "\n",
                  file=sys.stderr, flush=True)

    done = threading.Event()
    threading.Thread(target=progress, daemon=True).start()
    with ThreadPoolExecutor(args.concurrency) as pool:
        list(pool.map(one, plan))
    done.set()
    sending = time.perf_counter() - started
    print(file=sys.stderr)

    accepted = {r.index for r in results if r.code is not None and r.code < 300}
    deadline = time.monotonic() + args.wait
    held: set[int] = set()
    lab.postfix.flush()
    while time.monotonic() < deadline:
        collector.scan()
        held = quarantined(lab.store_url, run)
        if accepted <= set(collector.delivered) | held | collector.bounced:
            break
        time.sleep(1.0)
    collector.stop()
    held = quarantined(lab.store_url, run)
    time.sleep(0.5)
    rss_after = tree_rss(lab.pid)
    logged = gateway_log(lab, run)
    queued = sum(len(lab.postfix.queue_ids(q)) for q in ("incoming", "active", "deferred"))

    delivered = set(collector.delivered)
    lost = sorted(accepted - delivered - held - collector.bounced)
    names = {r.index: r.name for r in results}
    spoofs = {r.index for r in results if r.spoofs}
    failed_accepted, silent = [], []
    for index in sorted(accepted & delivered):
        header = collector.delivered[index].symbols
        entry = logged.get(index, {})
        logged_symbols = entry.get("symbols", {})
        failures = {name: float(score) for name, score in FAILURE.findall(header)}
        for check in entry.get("failed_checks", []):
            symbol = failure_symbol_name(check)
            failures[symbol] = float(logged_symbols.get(symbol, 0.0))
        failures.update({name: float(score) for name, score in logged_symbols.items()
                         if FAILURE_NAME.fullmatch(name)})
        if failures:
            failed_accepted.append((index, failures))
            if not any(score > 0 for score in failures.values()):
                silent.append((index, failures))
    failed_checks = Counter(check for entry in logged.values()
                            for check in entry.get("failed_checks", []))
    transactions = [r for r in results if r.code is not None]
    client = percentiles([r.seconds for r in transactions])
    gateway = percentiles([entry.get("total_ms", 0.0) / 1000 for entry in logged.values()])
    errors = Counter(": ".join(r.error.split(": ")[:2]) for r in results if r.error)
    return {
        "mode": "fuzz",
        "messages": len(plan),
        "sessions_abusive": sum(1 for _, kind in plan if kind != "message"),
        "sent": len(transactions),
        "answered": {"2xx": sum(1 for r in transactions if r.code < 300),
                     "4xx": sum(1 for r in transactions if 400 <= r.code < 500),
                     "5xx": sum(1 for r in transactions if r.code >= 500)},
        "no_answer": sum(1 for r in results if r.code is None),
        "client_errors": dict(errors),
        "delivered": len(accepted & delivered),
        "quarantined": len(accepted & held),
        "bounced": len(accepted & collector.bounced),
        "lost": len(lost),
        "lost_examples": [(i, names.get(i, "")) for i in lost[:10]],
        "still_queued_in_postfix": queued,
        "milter_crashes": len(lab.crashes),
        "milter_restarts": len(lab.crashes),
        "worker_processes": {"at_start": lab.workers_at_start, "seen": len(lab.workers_seen)},
        "accepted_with_failed_check": len(failed_accepted),
        "accepted_with_silently_failed_check": len(silent),
        "silent_examples": [(i, names.get(i, ""), f) for i, f in silent[:10]],
        "failed_checks": dict(failed_checks),
        "failed_check_examples": [
            (index, names.get(index, ""), entry.get("action"), entry.get("failed_checks"))
            for index, entry in sorted(logged.items()) if entry.get("failed_checks")][:10],
        "slowest": [(index, names.get(index, ""), round(entry.get("total_ms", 0.0) / 1000, 2))
                    for index, entry in sorted(logged.items(),
                                               key=lambda item: -item[1].get("total_ms", 0.0))
                    ][:5],
        "spoofs_sent": len(spoofs),
        "spoofs_delivered": sorted((i, names.get(i, "")) for i in spoofs & delivered)[:20],
        "seconds_per_message_client": client,
        "seconds_per_message_gateway": gateway,
        "budget": lab.budget,
        "over_budget": sum(1 for entry in logged.values()
                           if entry.get("total_ms", 0.0) / 1000 > lab.budget),
        "rss_mb": {"before": round(rss_before / 2**20, 1), "after": round(rss_after / 2**20, 1),
                   "peak": round(lab.rss_peak / 2**20, 1)},
        "sending_seconds": round(sending, 1),
    }


# -- the stall run ----------------------------------------------------------------------------


def load_normal(corpus: Path, count: int) -> list[bytes]:
    files = corpus_files(corpus)
    out = []
    for index in range(count):
        out.append(as_smtp(files[(index * 7919) % len(files)].read_bytes()))
    return out


def corpus_files(corpus: Path) -> list[Path]:
    files = sorted(p for p in require_corpus(corpus, "fuzz").rglob("*")
                   if p.is_file() and not p.name.startswith(".")
                   and p.suffix not in (".md", ".txt", ".json"))
    if not files:
        raise SystemExit(f"fuzz: no message files under {corpus}")
    return files


def as_smtp(raw: bytes) -> bytes:
    raw = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    if raw.startswith(b"From "):  # an mbox separator line, not a header
        raw = raw.split(b"\r\n", 1)[1]
    return raw


def with_report(raw: bytes, index: int, size: int) -> bytes:
    """A ham message of the corpus as its author might have sent it with a
    report attached: its fields and text, and random bytes as a PDF, about
    ``size`` bytes in all."""
    original = email.message_from_bytes(raw, policy=email.policy.default)
    message = email.message.EmailMessage()
    for name in ("From", "To", "Subject", "Date", "Message-ID"):
        value = original.get(name)
        if value is not None:
            with contextlib.suppress(Exception):  # a field the new message cannot hold
                message[name] = str(value)
    try:
        text = original.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    except Exception:
        text = "The report is attached.\n"
    message.set_content(text[:20_000])
    # base64 in 76-character lines: 4 bytes for 3, and 2 for each line end
    attached = max(size - len(message.as_bytes()) - 600, 1024) * 57 // 78
    message.add_attachment(random.Random(index).randbytes(attached), maintype="application",
                           subtype="pdf", filename=f"report-{index}.pdf")
    return message.as_bytes(policy=email.policy.SMTP)


@dataclass
class Normal:
    raw: bytes
    kind: str  # "small" or "large"


def normal_mail(corpus: Path, count: int, large_every: int) -> list[Normal]:
    """``count`` messages of the corpus, every ``large_every``-th replaced by
    a ham message with a report attached (LARGE_LEGITIMATE bytes)."""
    small = load_normal(corpus, count)
    hams = [p for p in corpus_files(corpus) if "ham" in p.parent.name] or corpus_files(corpus)
    mail = []
    for index, raw in enumerate(small):
        if large_every and index % large_every == large_every - 1:
            ham = as_smtp(hams[(index * 7919) % len(hams)].read_bytes())
            mail.append(Normal(with_report(ham, index, LARGE_LEGITIMATE), "large"))
        else:
            mail.append(Normal(raw, "small"))
    return mail


def stall(lab: Lab, args: argparse.Namespace) -> dict:
    """Normal mail one message at a time, small and LARGE_LEGITIMATE, from
    the loopback client; then again with ``--in-flight`` pathological
    messages from ATTACKER_IP in flight all along."""
    run = uuid.uuid4().hex[:8]
    normal = normal_mail(args.corpus, args.messages, args.large_every)
    heavy = [hostile.BUILDERS[name].build() for name in PATHOLOGICAL]

    def stream(label: str) -> dict[str, dict]:
        seconds: dict[str, list[float]] = {"small": [], "large": []}
        codes: dict[str, Counter] = {"small": Counter(), "large": Counter()}
        for index, message in enumerate(normal):
            began = time.perf_counter()
            try:
                code = send_message(lab.postfix.smtp_port, message.raw, tag(run, index),
                                    "bench@example.org", xclient=False)
            except (smtplib.SMTPException, OSError):
                code = None
            seconds[message.kind].append(time.perf_counter() - began)
            codes[message.kind][answer_class(code)] += 1
        figures = {kind: {**percentiles(seconds[kind]), "messages": len(seconds[kind]),
                          "answered": dict(codes[kind])} for kind in seconds}
        print(f"stall: {label}: " + ", ".join(
            f"{kind} p99 {f['p99'] * 1000:.0f} ms" for kind, f in figures.items()),
            file=sys.stderr, flush=True)
        return figures

    stream("warm-up")  # caches, the model, clamd's first scans
    quiet = stream("without load")
    stop = threading.Event()
    heavy_latencies: list[float] = []
    heavy_codes: Counter = Counter()
    lock = threading.Lock()

    def pathological(offset: int) -> None:
        turn = offset
        while not stop.is_set():
            raw = heavy[turn % len(heavy)]
            began = time.perf_counter()
            try:
                code = send_message(lab.postfix.smtp_port, raw, tag(run, 10**6 + turn))
            except (smtplib.SMTPException, OSError):
                code = None
            with lock:
                heavy_latencies.append(time.perf_counter() - began)
                heavy_codes[answer_class(code)] += 1
            turn += args.in_flight

    threads = [threading.Thread(target=pathological, args=(i,), daemon=True)
               for i in range(args.in_flight)]
    for thread in threads:
        thread.start()
    time.sleep(2.0)  # let all of them be in flight
    loaded = stream(f"with {args.in_flight} pathological in flight")
    stop.set()
    for thread in threads:
        thread.join(300)
    return {
        "mode": "stall",
        "normal_messages": len(normal),
        "large_bytes": round(statistics.mean(len(m.raw) for m in normal if m.kind == "large"))
        if any(m.kind == "large" for m in normal) else 0,
        "pathological_in_flight": args.in_flight,
        "pathological_sent": len(heavy_latencies),
        "pathological_answered": dict(heavy_codes),
        "normal_without_load": quiet,
        "normal_with_load": loaded,
        "added_p50": {kind: round(loaded[kind]["p50"] - quiet[kind]["p50"], 4) for kind in quiet},
        "added_p99": {kind: round(loaded[kind]["p99"] - quiet[kind]["p99"], 4) for kind in quiet},
        "pathological_seconds": percentiles(heavy_latencies),
        "milter_crashes": len(lab.crashes),
        "rss_mb": {"now": round(tree_rss(lab.pid) / 2**20, 1),
                   "peak": round(lab.rss_peak / 2**20, 1)},
    }


def answer_class(code: int | None) -> str:
    return "none" if code is None else f"{code // 100}xx"


# -- CPU per message --------------------------------------------------------------------------


def cpu_per_message(args: argparse.Namespace) -> dict:
    """The CPU each message costs to check, in this process (every check
    but clamav, whose scan is clamd's CPU, and lists, which needs a store):
    the corpus's messages and each pathological shape, after one message
    that loads what the checks need. What [pipeline] heavy_cpu_seconds is
    measured against."""
    from gateway.config import Config
    from gateway.evaluator import LocalEvaluator
    from gateway.message import Envelope, RawContent

    checks = [c for c in PipelineSection().checks if c not in ("clamav", "lists")]
    evaluator = LocalEvaluator(Config(pipeline=PipelineSection(checks=checks, workers=0,
                                                               parallel=False)))
    envelope = Envelope(mail_from="bench@example.org", rcpt_to=("rcpt@example.net",),
                        client_ip="198.51.100.7")

    def cost(raw: bytes) -> float:
        started = time.process_time()
        evaluator.evaluate(envelope, RawContent(data=raw))
        return time.process_time() - started

    files = corpus_files(args.corpus)
    cost(as_smtp(files[0].read_bytes()))  # the first message loads the model
    corpus = sorted((cost(as_smtp(path.read_bytes())), path.name) for path in files)
    shapes = {name: (round(cost(raw), 4), len(raw))
              for name in PATHOLOGICAL for raw in [hostile.BUILDERS[name].build()]}
    evaluator.close()
    seconds = [c for c, _ in corpus]
    return {"mode": "cpu", "corpus_messages": len(corpus),
            "corpus_seconds": {"p50": round(seconds[len(seconds) // 2], 4),
                               "p99": round(seconds[int(len(seconds) * 0.99)], 4),
                               "p99.9": round(seconds[int(len(seconds) * 0.999)], 4),
                               "max": round(seconds[-1], 4), "max_message": corpus[-1][1]},
            "pathological": shapes}


# -- output ---------------------------------------------------------------------------------------


def show(summary: dict) -> None:
    if summary["mode"] == "cpu":
        c = summary["corpus_seconds"]
        print("CPU per message, in one process (every check but clamav and lists):")
        print(f"  corpus ({summary['corpus_messages']} messages): "
              f"p50 {c['p50'] * 1000:.1f} ms, "
              f"p99 {c['p99'] * 1000:.1f} ms, p99.9 {c['p99.9'] * 1000:.1f} ms, "
              f"max {c['max'] * 1000:.1f} ms ({c['max_message']})")
        for name, (seconds, size) in sorted(summary["pathological"].items(),
                                            key=lambda item: -item[1][0]):
            print(f"  {name:<30} {size / 1024:6.0f} KiB  {seconds * 1000:7.1f} ms")
        return
    if summary["mode"] == "stall":
        print(f"normal mail: {summary['normal_messages']} messages, one at a time, "
              f"{summary['pathological_in_flight']} pathological in flight "
              f"({summary['pathological_sent']} sent meanwhile)")
        names = {"small": "corpus", "large": f"{summary['large_bytes'] / 1024:.0f} KiB"}
        for kind in ("small", "large"):
            for label in ("without_load", "with_load"):
                p = summary[f"normal_{label}"][kind]
                answered = " ".join(f"{k} {v}" for k, v in sorted(p["answered"].items()))
                print(f"  {names[kind]:>8} {label.replace('_', ' '):<13} "
                      f"p50 {p['p50'] * 1000:8.1f} ms   p99 {p['p99'] * 1000:8.1f} ms   "
                      f"max {p['max'] * 1000:8.1f} ms   ({p['messages']}: {answered})")
            print(f"  {names[kind]:>8} {'added':<13} "
                  f"p50 {summary['added_p50'][kind] * 1000:8.1f} ms   "
                  f"p99 {summary['added_p99'][kind] * 1000:8.1f} ms")
        p = summary["pathological_seconds"]
        answered = " ".join(f"{k} {v}" for k, v in sorted(summary["pathological_answered"].items()))
        print(f"pathological messages: p50 {p['p50']:.2f} s, p99 {p['p99']:.2f} s, "
              f"max {p['max']:.2f} s ({answered})")
        print(f"milter crashes: {summary['milter_crashes']}, RSS now {summary['rss_mb']['now']} "
              f"MB (peak {summary['rss_mb']['peak']} MB)")
        return
    answered = summary["answered"]
    rows = [
        ("messages (sessions)", f"{summary['messages']} ({summary['sessions_abusive']} abusive)"),
        ("sent (DATA finished)", summary["sent"]),
        ("answered 2xx/4xx/5xx", f"{answered['2xx']}/{answered['4xx']}/{answered['5xx']}"),
        ("no answer to DATA", f"{summary['no_answer']} {summary['client_errors'] or ''}"),
        ("delivered (sink)", summary["delivered"]),
        ("quarantined (store)", summary["quarantined"]),
        ("bounced", summary["bounced"]),
        ("lost", f"{summary['lost']} {summary['lost_examples'] or ''}"),
        ("still in Postfix's queue", summary["still_queued_in_postfix"]),
        ("milter crashes/restarts", f"{summary['milter_crashes']}/{summary['milter_restarts']}"),
        ("worker processes seen", f"{summary['worker_processes']['seen']} "
                                  f"({summary['worker_processes']['at_start']} at start)"),
        ("accepted, a check failed", summary["accepted_with_failed_check"]),
        ("  ... with no penalty", f"{summary['accepted_with_silently_failed_check']} "
                                  f"{summary['silent_examples'] or ''}"),
        ("failed checks (all mail)", summary["failed_checks"] or "none"),
        ("  ... examples", summary["failed_check_examples"] or "none"),
        ("spoofs of good.test delivered",
         f"{len(summary['spoofs_delivered'])} of {summary['spoofs_sent']} "
         f"{summary['spoofs_delivered'] or ''}"),
    ]
    for label in ("client", "gateway"):
        p = summary[f"seconds_per_message_{label}"]
        rows.append((f"time/message ({label})", f"p50 {p['p50'] * 1000:.1f} ms, p99 "
                     f"{p['p99'] * 1000:.1f} ms, max {p['max']:.2f} s"))
    rows.append(("over the budget", f"{summary['over_budget']} (budget {summary['budget']:g} s)"))
    rows.append(("slowest (gateway)", summary["slowest"]))
    rss_mb = summary["rss_mb"]
    rows.append(("gateway RSS", f"{rss_mb['before']} MB before, {rss_mb['after']} MB after "
                                f"(peak {rss_mb['peak']} MB)"))
    rows.append(("sending took", f"{summary['sending_seconds']} s"))
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"{label:<{width}}  {value}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--messages", type=int, default=10_000,
                        help="hostile messages (fuzz) or normal messages (--stall)")
    parser.add_argument("-c", "--concurrency", type=int, default=4)
    parser.add_argument("--abuse", type=float, default=0.1,
                        help="share of sessions that abuse SMTP instead of sending plainly")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stall", action="store_true",
                        help="normal mail's latency with and without pathological load")
    parser.add_argument("--cpu", action="store_true",
                        help="CPU per message in this process, corpus and pathological "
                             "shapes (what [pipeline] heavy_cpu_seconds is measured against; "
                             "no root, no lab)")
    parser.add_argument("--in-flight", type=int, default=8,
                        help="pathological messages in flight in --stall")
    parser.add_argument("--large-every", type=int, default=4,
                        help=f"in --stall, every n-th normal message is a ham message with a "
                             f"report attached, {LARGE_LEGITIMATE // 1024} KiB (0: none)")
    add_corpus_argument(parser)
    parser.add_argument("--workers", type=int, help="gateway pipeline.workers")
    parser.add_argument("--gateway-config", type=Path, help="extra TOML for the gateway")
    parser.add_argument("--wait", type=float, default=180,
                        help="seconds to wait for accepted mail to reach the sink")
    parser.add_argument("--keep", action="store_true", help="keep the lab folder")
    parser.add_argument("--json", action="store_true", help="one JSON summary line only")
    args = parser.parse_args()
    if args.cpu or args.stall:  # the modes that read the corpus: before any lab starts
        require_corpus(args.corpus, "fuzz")
    if args.cpu:
        summary = cpu_per_message(args)
        if args.json:
            print(json.dumps(summary, default=str))
        else:
            show(summary)
        return 0
    if os.geteuid() != 0:
        raise SystemExit("fuzz: needs root for the private Postfix")
    print(f"fuzz: starting Postfix, the gateway (every check), clamd and DNS "
          f"({'stall' if args.stall else f'{args.messages} hostile messages'}, "
          f"concurrency {args.concurrency})", file=sys.stderr, flush=True)
    lab = start_lab(args)
    try:
        summary = stall(lab, args) if args.stall else fuzz(lab, args)
    finally:
        lab.close()
        if args.keep:
            print(f"fuzz: lab kept in {lab.root}", file=sys.stderr)
        else:
            shutil.rmtree(lab.root, ignore_errors=True)
    if args.json:
        print(json.dumps(summary, default=str))
    else:
        show(summary)
    trouble = summary.get("lost", 0) or summary.get("milter_crashes", 0)
    return 1 if trouble else 0


if __name__ == "__main__":
    sys.exit(main())

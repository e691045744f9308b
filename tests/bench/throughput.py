"""Throughput through a real Postfix: bare versus with the gateway attached.

Starts three private Postfix instances on loopback, all relaying to one
smtp-sink: bare, with a pass-through pymilter (what the milter protocol
alone costs), and with the gateway. Replays N corpus messages
at each concurrency, alternating the three, checks that every
accepted message reached the sink (or Postfix's hold queue when the gateway
quarantined it), and prints msg/s, SMTP transaction latency, the milter's
CPU per message and the gateway/bare ratio.

    sudo .venv/bin/python tests/bench/throughput.py -n 1000 -c 1,10,50
    sudo .venv/bin/python tests/bench/throughput.py --gateway-config extra.toml

Needs root (Postfix). Not a test: it prints figures, it asserts nothing
about speed.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import smtplib
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from email.utils import parseaddr
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(PROJECT_ROOT))

from gateway.lab.clamd import ClamdInstance  # noqa: E402
from gateway.lab.dns import SyntheticServer  # noqa: E402
from gateway.lab.milter_process import MilterProcess  # noqa: E402
from gateway.lab.postfix import PostfixInstance, free_port  # noqa: E402
from gateway.quarantine.store import QuarantineError, QuarantineStore  # noqa: E402

DEFAULT_CORPUS = PROJECT_ROOT.parent / "shared" / "corpora" / "spamassassin"
FALLBACK_CORPUS = PROJECT_ROOT / "tests" / "fixtures"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Outcome:
    mode: str
    concurrency: int
    sent: int
    accepted: int
    refused: int
    seconds: float
    latencies: list[float]
    milter_cpu: float | None

    @property
    def rate(self) -> float:
        return self.sent / self.seconds if self.seconds else 0.0


def load_messages(corpus: Path, count: int) -> list[tuple[str, bytes]]:
    files = sorted(p for p in corpus.rglob("*") if p.is_file() and not p.name.startswith("."))
    if not files:
        raise SystemExit(f"bench: no message files under {corpus}")
    messages = []
    for index in range(count):
        raw = files[(index * 7919) % len(files)].read_bytes()  # spread over all folders
        raw = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        if raw.startswith(b"From "):  # mbox separator line, not a header
            raw = raw.split(b"\r\n", 1)[1]
        sender = parseaddr(_header(raw, b"From"))[1]
        if not sender.isascii() or "@" not in sender or " " in sender:
            sender = "bench@example.org"
        messages.append((sender, raw))
    return messages


def _header(raw: bytes, name: bytes) -> str:
    for line in raw.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line[: len(name) + 1].lower() == name.lower() + b":":
            return line[len(name) + 1 :].decode("utf-8", "replace").strip()
    return ""


def send_all(port: int, messages: list[tuple[str, bytes]], concurrency: int,
             run_id: str) -> tuple[float, list[float], int, int]:
    latencies: list[float] = []
    accepted = refused = 0
    lock = threading.Lock()

    def one(index: int) -> None:
        nonlocal accepted, refused
        sender, raw = messages[index]
        tagged = f"X-Bench-Id: {run_id}-{index}\r\n".encode() + raw
        started = time.perf_counter()
        ok = True
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=120) as client:
                client.sendmail(sender, ["bench@example.net"], tagged)
        except smtplib.SMTPResponseException:
            ok = False
        elapsed = time.perf_counter() - started
        with lock:
            latencies.append(elapsed)
            if ok:
                accepted += 1
            else:
                refused += 1

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(len(messages))))
    return time.perf_counter() - started, latencies, accepted, refused


def process_tree_cpu(pid: int) -> float:
    """CPU seconds of a process and its live descendants (pool workers)."""
    total, children = 0.0, {pid}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(stat.parent.name) in children or int(fields[1]) in children:
            children.add(int(stat.parent.name))
    for child in children:
        try:
            fields = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return total


def count_delivered(dump_dir: Path, run_id: str) -> int:
    needle = f"X-Bench-Id: {run_id}-".encode()
    return sum(1 for p in dump_dir.iterdir() if needle in p.read_bytes()[:4096])


def wait_delivered(dump_dir: Path, run_id: str, expected: int, timeout: float = 120) -> int:
    deadline = time.monotonic() + timeout
    while True:
        delivered = count_delivered(dump_dir, run_id)
        if delivered >= expected or time.monotonic() > deadline:
            return delivered
        time.sleep(0.2)


def quarantined(url: str) -> int:
    try:
        return QuarantineStore(url).count()
    except QuarantineError:
        return 0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path,
                        default=DEFAULT_CORPUS if DEFAULT_CORPUS.exists() else FALLBACK_CORPUS)
    parser.add_argument("-n", "--messages", type=int, default=1000)
    parser.add_argument("-c", "--concurrency", default="1,10,50")
    parser.add_argument("--rounds", type=int, default=2,
                        help="runs of each mode per concurrency (alternating)")
    parser.add_argument("--checks", choices=("all", "spine"), default="all",
                        help="every default check (with a private clamd and a synthetic DNS "
                             "server), or only the spine's header/size/list checks")
    parser.add_argument("--workers", type=int, default=2,
                        help="gateway pipeline.workers (scoring processes)")
    parser.add_argument("--gateway-config", type=Path, help="extra TOML for the gateway")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench: needs root for the private Postfix instances")

    messages = load_messages(args.corpus, args.messages)
    levels = [int(c) for c in args.concurrency.split(",")]
    print(f"bench: {len(messages)} messages from {args.corpus}, concurrency {levels}, "
          f"{args.rounds} round(s) each, gateway checks: {args.checks}, "
          f"workers: {args.workers}", flush=True)

    root = Path(tempfile.mkdtemp(prefix="gateway-bench-", dir="/tmp"))
    os.chmod(root, 0o755)
    dump_dir = root / "sink"
    dump_dir.mkdir()
    shutil.chown(dump_dir, "postfix")
    sink_port = free_port()
    sink = subprocess.Popen(
        ["smtp-sink", "-u", "postfix", "-d", f"{dump_dir}/%H%M%S.", f"127.0.0.1:{sink_port}",
         "1024"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    socket = root / "milter" / "milter.sock"
    services = contextlib.ExitStack()
    extra = args.gateway_config.read_text() if args.gateway_config else ""
    store_url = f"sqlite:///{root}/quarantine.db"
    if args.checks == "spine":
        extra += '[pipeline]\nchecks = ["headers", "size", "lists"]\n'
    else:
        clamd = services.enter_context(ClamdInstance(root / "clamd"))
        dns = services.enter_context(SyntheticServer())
        extra += (f'[clamav]\nsocket = "{clamd.socket_path}"\n'
                  f'[dns]\nnameservers = ["127.0.0.1"]\nport = {dns.port}\n')
    extra += f'[quarantine]\nurl = "{store_url}"\n'
    if "[pipeline]" in extra:
        extra = extra.replace("[pipeline]\n", f"[pipeline]\nworkers = {args.workers}\n", 1)
    else:
        extra += f"[pipeline]\nworkers = {args.workers}\n"
    milter = MilterProcess(
        root / "milter",
        f'[milter]\nsocket = "unix:{socket}"\nsocket_mode = "666"\n{extra}',
        env={"PYTHONPATH": str(PROJECT_ROOT)},
    )
    reference_socket = root / "passthrough.sock"
    reference = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("passthrough_milter.py")),
         f"unix:{reference_socket}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    instances = {
        "bare": PostfixInstance(root / "bare", relay_port=sink_port),
        "pymilter": PostfixInstance(root / "passthrough", relay_port=sink_port,
                                    milter=f"unix:{reference_socket}"),
        "gateway": PostfixInstance(root / "gateway", relay_port=sink_port,
                                   milter=f"unix:{socket}"),
    }
    outcomes: list[Outcome] = []
    problems = 0
    try:
        milter.start()
        for instance in instances.values():
            instance.start()
        for concurrency in levels:
            for round_index in range(args.rounds):
                for mode, instance in instances.items():
                    run_id = uuid.uuid4().hex[:12]
                    stored_before = quarantined(store_url)
                    pid = {"gateway": milter.process.pid, "pymilter": reference.pid}.get(mode)
                    cpu_before = process_tree_cpu(pid) if pid else 0.0
                    seconds, latencies, accepted, refused = send_all(
                        instance.smtp_port, messages, concurrency, run_id)
                    cpu = process_tree_cpu(pid) - cpu_before if pid else 0.0
                    held = len(instance.queue_ids("hold"))
                    if mode == "gateway":
                        held += quarantined(store_url) - stored_before
                    delivered = wait_delivered(dump_dir, run_id, accepted - held)
                    if delivered + held < accepted:
                        problems += 1
                        print(f"bench: LOST {accepted - delivered - held} of {accepted} "
                              f"accepted messages ({mode}, c={concurrency})", flush=True)
                    outcome = Outcome(mode, concurrency, len(messages), accepted, refused,
                                      seconds, latencies,
                                      cpu / len(messages) * 1000 if pid else None)
                    outcomes.append(outcome)
                    print(f"  c={concurrency:<3} round {round_index + 1} {mode:<8} "
                          f"{outcome.rate:7.1f} msg/s  accepted {accepted}, refused {refused}, "
                          f"delivered {delivered}, held {held}", flush=True)
    finally:
        for instance in instances.values():
            instance.stop()
        milter.stop()
        services.close()
        reference.terminate()
        reference.wait()
        sink.terminate()
        sink.wait()
        shutil.rmtree(root, ignore_errors=True)

    print()
    print(f"{'conc':>4}  {'mode':<8} {'msg/s':>8} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'milter CPU ms/msg':>18} {'x bare':>6}")
    for concurrency in levels:
        rows = {}
        for mode in instances:
            runs = [o for o in outcomes if o.mode == mode and o.concurrency == concurrency]
            latencies = [x for o in runs for x in o.latencies]
            rate = statistics.mean(o.rate for o in runs)
            cpu = [o.milter_cpu for o in runs if o.milter_cpu is not None]
            rows[mode] = rate
            cpu_text = f"{statistics.mean(cpu):.2f}" if cpu else "-"
            ratio = f"{rate / rows['bare']:.2f}" if mode != "bare" else ""
            print(f"{concurrency:>4}  {mode:<8} {rate:8.1f} {percentile(latencies, 0.5):8.1f} "
                  f"{percentile(latencies, 0.99):8.1f} {cpu_text:>18} {ratio:>6}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

"""Quarantine write latency, and throughput when every message is quarantined.

    sudo .venv/bin/python tests/bench/quarantine.py -n 500

1. Stores N corpus messages directly (the durable write the milter waits for
   before Postfix may discard a message) in SQLite and in a private
   PostgreSQL, at concurrency 1 and 10: median and p99 milliseconds.
2. Sends N messages through a private Postfix with the gateway, once with
   every message accepted and once with every message quarantined, and
   checks that all arrived at the sink or in the store.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(PROJECT_ROOT))

from gateway.lab.milter_process import MilterProcess  # noqa: E402
from gateway.lab.postfix import PostfixInstance, free_port  # noqa: E402
from gateway.message import Envelope, RawContent  # noqa: E402
from gateway.paths import DEFAULT_RULES  # noqa: E402
from gateway.policy import Policy  # noqa: E402
from gateway.quarantine.store import QuarantineStore  # noqa: E402
from gateway.ruleset import Ruleset  # noqa: E402
from gateway.symbols import Symbol  # noqa: E402
from gateway.verdict import PipelineResult  # noqa: E402
from tests.bench.corpus import add_corpus_argument, require_corpus  # noqa: E402
from tests.bench.throughput import load_messages, send_all  # noqa: E402
from tests.lab.postgres import PostgresInstance  # noqa: E402


def write_latency(store: QuarantineStore, messages: list[tuple[str, bytes]],
                  concurrency: int) -> list[float]:
    verdict = Policy(Ruleset()).decide(PipelineResult(
        symbols=(Symbol("BAYES_99", 8.0, "spam probability 99 to 99.9%", "p=0.995"),), runs=()))

    def one(item: tuple[str, bytes]) -> float:
        sender, raw = item
        envelope = Envelope(mail_from=sender, rcpt_to=("bench@example.net",),
                            queue_id=uuid.uuid4().hex[:10])
        started = time.perf_counter()
        store.put(envelope, RawContent(data=raw), verdict)
        return (time.perf_counter() - started) * 1000

    with ThreadPoolExecutor(concurrency) as pool:
        return sorted(pool.map(one, messages))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--messages", type=int, default=500)
    add_corpus_argument(parser)
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench: needs root (Postfix, PostgreSQL)")
    messages = load_messages(require_corpus(args.corpus), args.messages)
    root = Path(tempfile.mkdtemp(prefix="gateway-qbench-", dir="/tmp"))
    os.chmod(root, 0o755)

    print(f"quarantine write latency, {len(messages)} messages "
          f"(mean {statistics.mean(len(r) for _, r in messages) / 1024:.1f} KiB)")
    print(f"{'backend':<11} {'conc':>4} {'median ms':>10} {'p99 ms':>8} {'writes/s':>9}")
    with PostgresInstance(root / "pg") as postgres:
        for backend, url in (("sqlite", f"sqlite:///{root}/bench.db"),
                             ("postgresql", postgres.url)):
            store = QuarantineStore(url, node="bench")
            for concurrency in (1, 10):
                started = time.perf_counter()
                latencies = write_latency(store, messages, concurrency)
                rate = len(latencies) / (time.perf_counter() - started)
                print(f"{backend:<11} {concurrency:>4} {statistics.median(latencies):10.2f} "
                      f"{latencies[int(0.99 * len(latencies))]:8.2f} {rate:9.0f}", flush=True)
            store.close()

    print("\nthrough Postfix, concurrency 10")
    print(f"{'every message':<16} {'msg/s':>8} {'p50 ms':>8} {'p99 ms':>8}  arrived")
    sink_dir = root / "sink"
    sink_dir.mkdir()
    import shutil

    shutil.chown(sink_dir, "postfix")
    sink_port = free_port()
    sink = subprocess.Popen(["smtp-sink", "-u", "postfix", "-d", f"{sink_dir}/%H%M%S.",
                             f"127.0.0.1:{sink_port}", "1024"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    socket = root / "milter" / "milter.sock"
    postfix = PostfixInstance(root / "postfix", relay_port=sink_port, milter=f"unix:{socket}")
    try:
        postfix.start()
        for mode, threshold in (("accepted", 100.0), ("quarantined", -100.0)):
            rules = root / f"{mode}.toml"
            rules.write_text(f"[thresholds]\nquarantine = {threshold}\nreject = 1000.0\n")
            url = f"sqlite:///{root}/{mode}.db"
            milter = MilterProcess(root / "milter", (
                f'[milter]\nsocket = "unix:{socket}"\nsocket_mode = "666"\n'
                '[pipeline]\nchecks = ["headers", "size", "lists", "bayes"]\n'
                f'[policy]\nrules = ["{DEFAULT_RULES}", "{rules}"]\n'
                f'[quarantine]\nurl = "{url}"\n'), env={"PYTHONPATH": str(PROJECT_ROOT)})
            with milter:
                run_id = uuid.uuid4().hex[:12]
                seconds, latencies, accepted, refused = send_all(
                    postfix.smtp_port, messages, 10, run_id)
                if mode == "quarantined":
                    arrived = QuarantineStore(url).count()
                else:
                    deadline = time.monotonic() + 60
                    while time.monotonic() < deadline:
                        arrived = sum(1 for p in sink_dir.iterdir()
                                      if run_id.encode() in p.read_bytes()[:4096])
                        if arrived >= accepted:
                            break
                        time.sleep(0.2)
            latencies.sort()
            print(f"{mode:<16} {len(messages) / seconds:8.1f} "
                  f"{latencies[len(latencies) // 2] * 1000:8.1f} "
                  f"{latencies[int(0.99 * len(latencies))] * 1000:8.1f}  "
                  f"{arrived} of {accepted} accepted ({refused} refused)", flush=True)
    finally:
        postfix.stop()
        sink.terminate()
        sink.wait()
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""ClamAV scan latency and throughput through the gateway's clamav check.

    .venv/bin/python tests/bench/clamav.py -n 1000

Starts a private clamd with the project's test signatures on a unix socket,
scans N corpus messages through the check at concurrency 1 and 4, and prints
median and p99 latency, messages per second and clamd CPU per message.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(PROJECT_ROOT))

from gateway.checks import CheckContext  # noqa: E402
from gateway.checks.clamav import ClamavCheck  # noqa: E402
from gateway.config import ClamavSection, Config  # noqa: E402
from gateway.lab.clamd import ClamdInstance  # noqa: E402
from gateway.message import Message  # noqa: E402
from tests.bench.corpus import add_corpus_argument, require_corpus  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--messages", type=int, default=1000)
    add_corpus_argument(parser)
    args = parser.parse_args()
    files = sorted(p for p in require_corpus(args.corpus).rglob("*")
                   if p.is_file() and p.suffix != ".md")
    raws = [files[(i * 7919) % len(files)].read_bytes() for i in range(args.messages)]
    print(f"bench: {len(raws)} messages from {args.corpus}, "
          f"mean size {statistics.mean(map(len, raws)) / 1024:.1f} KiB")
    with tempfile.TemporaryDirectory(prefix="gateway-clamd-") as root, \
            ClamdInstance(Path(root)) as clamd:
        check = ClamavCheck.from_config(Config(clamav=ClamavSection(socket=str(clamd.socket_path))))
        print(f"{'conc':>4} {'msgs/s':>8} {'median ms':>10} {'p99 ms':>8} "
              f"{'clamd CPU ms/msg':>17}")
        for concurrency in (1, 4):
            def scan(raw: bytes) -> float:
                started = time.perf_counter()
                report = check.run(Message.from_bytes(raw), CheckContext())
                assert report.facts.get("scanned"), report
                return (time.perf_counter() - started) * 1000

            cpu_before = cpu_seconds(clamd.process.pid)
            started = time.perf_counter()
            with ThreadPoolExecutor(concurrency) as pool:
                latencies = sorted(pool.map(scan, raws))
            elapsed = time.perf_counter() - started
            cpu = (cpu_seconds(clamd.process.pid) - cpu_before) / len(raws) * 1000
            print(f"{concurrency:>4} {len(raws) / elapsed:8.0f} "
                  f"{statistics.median(latencies):10.2f} "
                  f"{latencies[int(0.99 * len(latencies))]:8.2f} {cpu:17.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

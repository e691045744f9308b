"""Memory of the scan listener while clients send it large messages.

    .venv/bin/python tests/bench/scan_memory.py -n 12 --mib 40

Starts the scan listener ([scan] listen) of this checkout in this process,
with a scanner that only waits half a second (so the figure is the
listener's buffering, not the checks'), lets ``-n`` clients each send a
message of ``--mib`` MiB at once over SPAMC, and prints this process's RSS
before and its peak while the messages are being scanned. ``--root DIR``
measures another checkout's listener instead (a ``git worktree`` of an
older commit), for a before/after.
"""

from __future__ import annotations

import argparse
import socket
import sys
import threading
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def rss_mib() -> int:
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0]) // 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=12, help="clients at once")
    parser.add_argument("--mib", type=int, default=40, help="size of each message")
    parser.add_argument("--root", default=str(PROJECT_ROOT), help="checkout to measure")
    args = parser.parse_args()
    sys.path.insert(0, args.root)
    from gateway.config import Config, PipelineSection, ScanSection, SizeSection
    from gateway.lab.postfix import free_port
    from gateway.scan import ScanServer
    from gateway.verdict import Verdict

    peak = [0]

    def scanner(envelope, raw):
        peak[0] = max(peak[0], rss_mib())
        time.sleep(0.5)
        return Verdict("accept", 0.0, 4.0, (), (), "ok")

    size = args.mib * 1024 * 1024
    config = Config(scan=ScanSection(listen=f"127.0.0.1:{free_port()}", max_clients=64),
                    size=SizeSection(max_bytes=max(size, 50 * 1024 * 1024)),
                    pipeline=PipelineSection(spool_threshold=1024 * 1024))
    server = ScanServer(config, scanner).start()
    block = (b"x" * 1000 + b"\r\n") * 512
    before = rss_mib()

    def client() -> None:
        with socket.create_connection(server.address[:2]) as connection:
            connection.sendall(f"CHECK SPAMC/1.5\r\nContent-length: {size}\r\n\r\n".encode())
            sent = 0
            while sent < size:
                part = block[: size - sent]
                connection.sendall(part)
                sent += len(part)
            connection.shutdown(socket.SHUT_WR)
            connection.recv(100)

    threads = [threading.Thread(target=client) for _ in range(args.n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    server.stop()
    print(f"{args.n} clients x {args.mib} MiB: RSS {before} MiB before, {peak[0]} MiB at the "
          f"peak ({args.root})")


if __name__ == "__main__":
    main()

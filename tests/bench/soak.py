"""Soak: many messages straight into ``gateway run``; does memory stay flat?

Talks the milter protocol to the gateway itself (tests/milterclient.py), so
100,000 messages take minutes, not the hour Postfix would: every check on,
a private clamd, the synthetic DNS server (a fresh sender domain per
message, like real traffic), a SQLite quarantine. A share of the sessions
misbehave as abusive clients do: they abort mid-message or hang up without
a word. RSS of the milter process and of its workers (and PSS, the memory
they take together, each shared page counted once), and its open file
descriptors, are sampled as it goes and printed as a table (and a PNG plot
with ``--plot``).

    sudo .venv/bin/python tests/bench/soak.py -n 100000
    sudo .venv/bin/python tests/bench/soak.py -n 20000 --workers 0 --plot /tmp/soak.png
    sudo .venv/bin/python tests/bench/soak.py -n 5000 --abuse 0 --dns-latency 0.02
    sudo .venv/bin/python tests/bench/soak.py -n 3000 --abuse 0 --profile /tmp/gateway.raw

The last line gives the gateway's CPU per message by process time, in all
and by part (supervisor, milter, fork server, workers). ``--profile``
also samples the running processes with py-spy and prints, per part, the
functions with the most CPU as shares and ms per message
(tests/bench/cpuprofile.py).

Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(PROJECT_ROOT))

from gateway.lab.clamd import ClamdInstance  # noqa: E402
from gateway.lab.milter_process import MilterProcess  # noqa: E402
from tests.bench.corpus import add_corpus_argument, require_corpus  # noqa: E402
from tests.bench.cpuprofile import Sampler, read_samples, report  # noqa: E402
from tests.bench.procs import (  # noqa: E402
    gateway_cpu_parts,
    gateway_processes,
    open_fds,
    pss_bytes,
    rss_bytes,
)
from tests.lab.dns import SyntheticServer  # noqa: E402
from tests.milterclient import MilterClient, MilterError  # noqa: E402


def load_messages(folder: Path, limit: int) -> list[bytes]:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.endswith(".md"))
    random.Random(7).shuffle(files)
    return [p.read_bytes() for p in files[:limit]]


def rss_mb(pid: int) -> float:
    return rss_bytes(pid) / 2**20


def sample(pid: int, done: int) -> dict:
    """``pid`` is gateway run's supervisor; its child is the milter, whose
    children are the fork server and the workers."""
    processes = gateway_processes(pid)
    family = [p for p, _, _ in processes]
    milter = next((p for p, part, _ in processes if part == "milter"), pid)
    workers = [p for p, part, _ in processes if part == "workers"]
    return {"messages": done, "supervisor_mb": round(rss_mb(pid), 1),
            "milter_mb": round(rss_mb(milter), 1),
            "workers_mb": round(sum(rss_mb(p) for p in workers), 1),
            "all_mb": round(sum(rss_mb(p) for p in family), 1),
            # What they take together: shared pages counted once.
            "all_pss_mb": round(sum(pss_bytes(p) for p in family) / 2**20, 1),
            "parts": part_memory(processes),
            "processes": len(family), "fds": open_fds(milter)}


def part_memory(processes: list[tuple[int, str, str]]) -> dict[str, dict[str, float]]:
    """RSS and PSS (MB) of each part of the gateway, with its number of
    processes: a worker's RSS counts the pages it shares with the fork
    server whole, its PSS only its share of them."""
    parts: dict[str, dict[str, float]] = {}
    for pid, part, _ in processes:
        row = parts.setdefault(part, {"processes": 0, "rss_mb": 0.0, "pss_mb": 0.0})
        row["processes"] += 1
        row["rss_mb"] = round(row["rss_mb"] + rss_bytes(pid) / 2**20, 1)
        row["pss_mb"] = round(row["pss_mb"] + pss_bytes(pid) / 2**20, 1)
    return parts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--messages", type=int, default=20000)
    parser.add_argument("-c", "--concurrency", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--max-workers", type=int,
                        help="[pipeline] max_workers (default: the gateway's); the pool grows "
                        "while every worker is busy for half a second, as on a loaded machine")
    parser.add_argument("--parallel", choices=("auto", "true", "false"), default="auto",
                        help="[pipeline] parallel: network checks in threads")
    parser.add_argument("--abuse", type=float, default=0.1,
                        help="share of sessions that abort or hang up mid-message")
    parser.add_argument("--samples", type=int, default=20, help="RSS samples over the run")
    add_corpus_argument(parser)
    parser.add_argument("--plot", type=Path, help="write an RSS/FD plot (PNG) here")
    parser.add_argument("--json", action="store_true", help="one JSON line per sample")
    parser.add_argument("--profile", type=Path, metavar="FILE",
                        help="sample the gateway's processes with py-spy into FILE (raw "
                        "stacks) and print where their CPU goes")
    parser.add_argument("--dns-latency", type=float, default=0.0, metavar="SECONDS",
                        help="each DNS answer this late, like a resolver that must ask the "
                        "sender domain's own servers (every message has a new domain)")
    args = parser.parse_args()
    corpus = require_corpus(args.corpus, "soak")
    messages = load_messages(corpus, 2000)
    print(f"soak: {args.messages} messages ({len(messages)} distinct from {corpus}), "
          f"{args.concurrency} sessions at a time, workers {args.workers}, "
          f"{args.abuse:.0%} abusive sessions, DNS answers after {args.dns_latency * 1000:g} ms",
          flush=True)

    root = Path(tempfile.mkdtemp(prefix="gateway-soak-", dir="/tmp"))
    services = contextlib.ExitStack()
    samples: list[dict] = []
    try:
        clamd = services.enter_context(ClamdInstance(root / "clamd"))
        dns = services.enter_context(SyntheticServer(latency=args.dns_latency))
        socket_path = root / "milter.sock"
        parallel = json.dumps(args.parallel) if args.parallel == "auto" else args.parallel
        milter = MilterProcess(root, (
            f'[milter]\nsocket = "unix:{socket_path}"\nsocket_mode = "600"\n'
            f'socket_group = ""\n[pipeline]\nworkers = {args.workers}\n'
            f'parallel = {parallel}\n'
            + (f'max_workers = {args.max_workers}\n' if args.max_workers else '') +
            f'[clamav]\nsocket = "{clamd.socket_path}"\n'
            f'[dns]\nnameservers = ["127.0.0.1"]\nport = {dns.port}\n'
            f'[quarantine]\nurl = "sqlite:///{root}/quarantine.db"\n'),
            env={"PYTHONPATH": str(PROJECT_ROOT)})
        services.callback(milter.stop)
        milter.start()
        pid = milter.process.pid
        counter = iter(range(args.messages))
        lock = threading.Lock()
        done = [0]
        outcomes: dict[str, int] = {}
        every = max(args.messages // args.samples, 1)
        started, cpu_before = time.monotonic(), gateway_cpu_parts(pid)

        def session(seed: int) -> None:
            rng = random.Random(seed)
            client: MilterClient | None = None
            while True:
                with lock:
                    index = next(counter, None)
                if index is None:
                    break
                try:
                    if client is None:
                        client = MilterClient(str(socket_path))
                        client.connect(f"client{index}.example", "127.0.0.1")
                        client.helo(f"client{index}.example")
                    raw = messages[index % len(messages)]
                    sender = f"user{index}@sender{index}.example"
                    if rng.random() < args.abuse:
                        client.message(sender, ["rcpt@example.net"], raw[: len(raw) // 2]
                                       if rng.random() < 0.5 else raw, queue_id=f"S{index}")
                        kind = "abort" if rng.random() < 0.5 else "hangup"
                        if kind == "abort":
                            client.abort()
                        else:
                            client.drop()
                            client = None
                    else:
                        kind = client.message(sender, ["rcpt@example.net"], raw,
                                              queue_id=f"S{index}").action
                        if rng.random() < 0.2:  # a new session now and then
                            client.quit()
                            client = None
                except (MilterError, OSError) as exc:
                    kind = f"error: {type(exc).__name__}"
                    client = None
                with lock:
                    outcomes[kind] = outcomes.get(kind, 0) + 1
                    done[0] += 1
                    if done[0] % every == 0:
                        row = sample(pid, done[0])
                        row["seconds"] = round(time.monotonic() - started, 1)
                        samples.append(row)
                        print(json.dumps(row) if args.json else
                              f"  {row['messages']:>7} msgs {row['seconds']:>7}s  supervisor "
                              f"{row['supervisor_mb']:5.1f} MB  milter "
                              f"{row['milter_mb']:7.1f} MB  workers {row['workers_mb']:7.1f} MB"
                              f"  all {row['all_mb']:7.1f} MB (PSS {row['all_pss_mb']:6.1f})"
                              f"  fds {row['fds']:>4}"
                              f"  processes {row['processes']}", flush=True)
            if client is not None:
                with contextlib.suppress(OSError):
                    client.quit()

        threads = [threading.Thread(target=session, args=(i,)) for i in range(args.concurrency)]
        with Sampler(pid, args.profile) if args.profile else contextlib.nullcontext():
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            parts = {p: part for p, part, _ in gateway_processes(pid)}
        elapsed = time.monotonic() - started
        cpu_ms = {part: (seconds - cpu_before[part]) / max(done[0], 1) * 1000
                  for part, seconds in gateway_cpu_parts(pid).items()}
        cpu = sum(cpu_ms.values())
        print(f"soak: {done[0]} messages in {elapsed:.0f}s ({done[0] / elapsed:.0f}/s), "
              f"{cpu:.2f} ms of the gateway's CPU a message ("
              + ", ".join(f"{part} {ms:.2f}" for part, ms in cpu_ms.items())
              + f"); outcomes {json.dumps(outcomes, sort_keys=True)}")
        if args.profile and args.profile.exists():
            args.profile.with_suffix(".pids").write_text(json.dumps(
                {"parts": parts, "cpu_ms": cpu_ms}))
            print("\n".join(report(read_samples(args.profile), parts, cpu_ms)))
        if samples:
            early = next((s for s in samples if s["messages"] >= args.messages // 10),
                         samples[0])
            last = samples[-1]
            print(f"soak: all processes {early['all_mb']} MB after {early['messages']} "
                  f"messages, {last['all_mb']} MB after {last['messages']} "
                  f"({last['all_mb'] - early['all_mb']:+.1f} MB; PSS {early['all_pss_mb']} -> "
                  f"{last['all_pss_mb']} MB); milter process "
                  f"{early['milter_mb']} -> {last['milter_mb']} MB; fds {early['fds']} -> "
                  f"{last['fds']}")
            print("soak: memory by part at the end, RSS (PSS): " + ", ".join(
                f"{part} {row['rss_mb']} MB ({row['pss_mb']})"
                + (f" in {row['processes']:.0f}" if row["processes"] > 1 else "")
                for part, row in last["parts"].items()))
        if args.plot and samples:
            plot(samples, args.plot)
            print(f"soak: plot written to {args.plot}")
    finally:
        services.close()
        shutil.rmtree(root, ignore_errors=True)
    return 0


def plot(samples: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [s["messages"] for s in samples]
    figure, memory = plt.subplots(figsize=(8, 4))
    memory.plot(x, [s["milter_mb"] for s in samples], label="milter RSS (MB)")
    memory.plot(x, [s["workers_mb"] for s in samples], label="workers RSS (MB)")
    memory.plot(x, [s["all_mb"] for s in samples], label="all processes RSS (MB)")
    memory.plot(x, [s["all_pss_mb"] for s in samples], label="all processes PSS (MB)")
    memory.set_xlabel("messages")
    memory.set_ylabel("MB")
    fds = memory.twinx()
    fds.plot(x, [s["fds"] for s in samples], "k:", label="milter open FDs")
    fds.set_ylabel("open FDs")
    memory.legend(loc="upper left")
    fds.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(path)


if __name__ == "__main__":
    sys.exit(main())

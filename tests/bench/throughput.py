"""Throughput through a real Postfix: bare versus with the gateway attached.

Starts private Postfix instances on loopback, all relaying to one
smtp-sink: bare, with a pass-through pymilter (what the milter protocol
alone costs), and with the gateway; with ``--anchors`` also with rspamd
alone (its proxy worker as the milter, Bayes in redis trained on the
corpus) and with clamav-milter + rspamd chained, the usual stack, from
Debian's packages (installed when missing). Replays N corpus messages at
each concurrency, alternating the modes, checks that every accepted message
reached the sink (or Postfix's hold queue when a milter quarantined it), and
prints msg/s, SMTP transaction latency, each mode's own CPU per message by
process (clamd's apart), its memory and each mode's ratio to bare Postfix in
the same rounds; then per concurrency the gateway's ratios to the usual
stack and to rspamd, and its own CPU over the pass-through pymilter's.

    sudo .venv/bin/python tests/bench/throughput.py -n 1000 -c 1,10,50
    sudo .venv/bin/python tests/bench/throughput.py --gateway-config extra.toml
    sudo .venv/bin/python tests/bench/throughput.py -n 1000 -c 1,10,50 --rounds 3 --anchors
    sudo .venv/bin/python tests/bench/throughput.py --anchors --json > figures.jsonl

Needs root (Postfix). Not a test: it prints figures, it asserts nothing
about speed.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import shutil
import signal
import smtplib
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from email.utils import parseaddr
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(PROJECT_ROOT))

from gateway.cpu import cpu_times  # noqa: E402
from gateway.lab.clamd import ClamdInstance  # noqa: E402
from gateway.lab.milter_process import MilterProcess  # noqa: E402
from gateway.lab.postfix import PostfixInstance, free_port  # noqa: E402
from gateway.quarantine.store import QuarantineError, QuarantineStore  # noqa: E402
from tests.bench import anchors  # noqa: E402
from tests.bench.corpus import add_corpus_argument, require_corpus  # noqa: E402
from tests.bench.procs import (  # noqa: E402
    CLOCK_TICKS,
    gateway_cpu_parts,
    rss_bytes,
    tree,
    tree_cpu,
)
from tests.lab.dns import SyntheticServer  # noqa: E402

ANCHOR_MODES = ("rspamd", "rspamd+clamav-milter")
JSON_FIELDS = ("mode", "concurrency", "msgs_per_s", "ratio_to_bare", "p50_ms", "p99_ms",
               "milter_cpu_ms_per_msg", "own_cpu_ms_per_msg", "own_cpu_parts",
               "clamd_cpu_ms_per_msg", "rss_mb", "pss_mb", "machine_cpu_ms_per_msg")
USUAL_STACK = "rspamd+clamav-milter"


@dataclass
class Outcome:
    mode: str
    concurrency: int
    round_index: int
    sent: int
    accepted: int
    refused: int
    seconds: float
    latencies: list[float]
    milter_cpu: float | None  # ms per message, the milter's whole process tree
    # the same by part (gateway: supervisor, milter, fork_server, workers;
    # rspamd: rspamd, redis; the usual stack also clamav-milter)
    own_parts: dict[str, float] | None
    clamd_cpu: float | None  # ms per message of the shared clamd, counted apart
    rss_mb: float | None  # the most its process tree held during the run: summed RSS
    pss_mb: float | None  # and PSS (shared pages split between the processes)
    # ms per message of every process on the machine (Postfix, the milters,
    # clamd, the DNS server and this client): with all cores busy, the rate
    # is at most cores * 1000 / this
    machine_cpu: float = 0.0

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


def machine_busy() -> float:
    """CPU seconds all the machine's cores have been busy so far."""
    idle, total = cpu_times()
    return (total - idle) / CLOCK_TICKS


def tree_rss(roots: list[int]) -> int:
    """Bytes resident in processes and their descendants (VmRSS summed:
    pages shared between forked processes count once per process)."""
    return sum(rss_bytes(pid) for pid in {p for root in roots for p in tree(root)})


def tree_pss(roots: list[int]) -> int:
    """The same processes' proportional set size: each shared page split
    between the processes that map it, so the sum is what they hold together."""
    total = 0
    for pid in {p for root in roots for p in tree(root)}:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1]) * 1024
                    break
        except (OSError, ValueError):
            continue
    return total


class MemoryPeak:
    """The most ``roots``' process trees held at once (summed RSS, and PSS),
    sampled every ``interval`` seconds while the block runs and at its end."""

    def __init__(self, roots: list[int], interval: float = 1.0):
        self.roots = roots
        self.interval = interval
        self.rss = self.pss = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._done.wait(self.interval):
            self._measure()

    def _measure(self) -> None:
        self.rss = max(self.rss, tree_rss(self.roots))
        self.pss = max(self.pss, tree_pss(self.roots))

    def __enter__(self) -> MemoryPeak:
        if self.roots:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.roots:
            self._done.set()
            self._thread.join()
            self._measure()


class DnsProcess:
    """The synthetic DNS server in a process of its own, so that its answers
    do not wait for the bench's sender threads (one GIL): rspamd asks it a
    dozen questions per message. It ends when the bench does (its stdin
    closes)."""

    def __init__(self) -> None:
        self.process: subprocess.Popen[str] | None = None
        self.port = 0

    def __enter__(self) -> DnsProcess:
        code = (f"import sys\nsys.path.insert(0, {str(PROJECT_ROOT)!r})\n"
                f"from {SyntheticServer.__module__} import SyntheticServer\n"
                "server = SyntheticServer().start()\n"
                "print(server.port, flush=True)\n"
                "sys.stdin.read()\n")
        self.process = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True, start_new_session=True)
        line = self.process.stdout.readline()
        if not line.strip().isdigit():
            self.__exit__()
            raise SystemExit("bench: the synthetic DNS server did not start")
        self.port = int(line)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            with contextlib.suppress(OSError):
                self.process.stdin.close()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def training_sets(corpus: Path, per_class: int) -> tuple[list[Path], list[Path]]:
    """``per_class`` spam and ham files spread over the corpus's folders
    (a folder whose name says spam or ham, as in the SpamAssassin corpus)."""
    spam, ham = [], []
    for path in sorted(p for p in corpus.rglob("*") if p.is_file() and not p.name.startswith(".")):
        folders = [part.lower() for part in path.relative_to(corpus).parts[:-1]]
        if any("spam" in part for part in folders):
            spam.append(path)
        elif any("ham" in part for part in folders):
            ham.append(path)

    def spread(files: list[Path]) -> list[Path]:
        step = max(1, len(files) // per_class) if per_class else 1
        return files[::step][:per_class]

    return spread(spam), spread(ham)


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
    add_corpus_argument(parser)
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
    parser.add_argument("--anchors", action="store_true",
                        help="also rspamd alone and clamav-milter + rspamd (Debian's packages, "
                             "installed when missing) on the same Postfix, corpus, clamd and DNS")
    parser.add_argument("--anchor-learn", type=int, default=300, metavar="N",
                        help="messages of each class rspamd's Bayes learns from the corpus "
                             "before the runs (it classifies from 200 of each)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the run's folder (configs and logs of Postfix, the milters, "
                             "rspamd) and print its path")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON line per mode and concurrency on stdout "
                             "(progress and the table go to stderr)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench: needs root for the private Postfix instances")
    out = sys.stderr if args.json else sys.stdout

    def say(text: str = "") -> None:
        print(text, file=out, flush=True)

    # SIGTERM ends the bench like Ctrl-C does: through the cleanup below.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.anchors:
        try:
            anchors.ensure_packages()
        except anchors.AnchorError as error:
            raise SystemExit(f"bench: {error}") from None

    messages = load_messages(require_corpus(args.corpus), args.messages)
    levels = [int(c) for c in args.concurrency.split(",")]
    say(f"bench: {len(messages)} messages from {args.corpus}, concurrency {levels}, "
        f"{args.rounds} round(s) each, gateway checks: {args.checks}, "
        f"workers: {args.workers}" + (f", anchors: {', '.join(ANCHOR_MODES)}"
                                      if args.anchors else ""))

    root = Path(tempfile.mkdtemp(prefix="gateway-bench-", dir="/tmp"))
    os.chmod(root, 0o755)
    services = contextlib.ExitStack()
    instances: dict[str, PostfixInstance] = {}
    milter_roots: dict[str, Callable[[], list[int]]] = {}
    # Each mode's own processes by part: CPU seconds so far.
    own_cpu: dict[str, Callable[[], dict[str, float]]] = {}
    outcomes: list[Outcome] = []
    problems = 0
    try:
        dump_dir = root / "sink"
        dump_dir.mkdir()
        shutil.chown(dump_dir, "postfix")
        sink_port = free_port()
        sink = subprocess.Popen(
            ["smtp-sink", "-u", "postfix", "-d", f"{dump_dir}/%H%M%S.",
             f"127.0.0.1:{sink_port}", "1024"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        services.callback(_end, sink)
        socket = root / "milter" / "milter.sock"
        extra = args.gateway_config.read_text() if args.gateway_config else ""
        store_url = f"sqlite:///{root}/quarantine.db"
        clamd = dns = None
        if args.checks == "all" or args.anchors:
            clamd = services.enter_context(ClamdInstance(root / "clamd"))
            dns = services.enter_context(DnsProcess())
        if args.checks == "spine":
            extra += '[pipeline]\nchecks = ["headers", "size", "lists"]\n'
        else:
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
        services.callback(_end, reference)
        instances["bare"] = PostfixInstance(root / "bare", relay_port=sink_port)
        instances["pymilter"] = PostfixInstance(root / "passthrough", relay_port=sink_port,
                                                milter=f"unix:{reference_socket}")
        instances["gateway"] = PostfixInstance(root / "gateway", relay_port=sink_port,
                                               milter=f"unix:{socket}")
        milter_roots["pymilter"] = lambda: [reference.pid]
        own_cpu["pymilter"] = lambda: {"pymilter": tree_cpu([reference.pid])}
        services.callback(milter.stop)
        milter.start()
        milter_roots["gateway"] = lambda: [milter.process.pid]
        own_cpu["gateway"] = lambda: gateway_cpu_parts(milter.process.pid)
        if args.anchors:
            redis = services.enter_context(anchors.RedisInstance(root / "redis"))
            say("bench: starting rspamd (its regexps compile for a while on a busy machine)")
            rspamd = services.enter_context(
                anchors.RspamdInstance(root / "rspamd", dns_port=dns.port, redis_port=redis.port))
            if not rspamd.hyperscan_ready():
                say("bench: rspamd's hyperscan database is not loaded yet; "
                    "its first runs may be slower")
            clamav_milter = services.enter_context(
                anchors.ClamavMilterInstance(root / "clamav-milter", clamd.socket_path))
            spam, ham = training_sets(args.corpus, args.anchor_learn)
            learned = rspamd.learn(spam, ham)
            bayes = rspamd.bayes_answers(spam[:1] + ham[:1])
            say(f"bench: rspamd Bayes learned {learned['learn_spam']} spam and "
                f"{learned['learn_ham']} ham from {args.corpus}"
                + ("" if bayes else "; WARNING: it does not classify yet (fewer than 200 "
                   "of a class?)"))
            for error, count in collections.Counter(rspamd.learn_errors).most_common(3):
                say(f"bench: rspamd did not learn {count}: {error}")
            instances["rspamd"] = PostfixInstance(root / "rspamd-postfix", relay_port=sink_port,
                                                  milter=rspamd.milter)
            # The usual order: the virus scan first, rspamd on what is left.
            instances["rspamd+clamav-milter"] = PostfixInstance(
                root / "chain-postfix", relay_port=sink_port,
                milter=f"{clamav_milter.milter}, {rspamd.milter}")
            milter_roots["rspamd"] = lambda: [rspamd.process.pid, redis.process.pid]
            milter_roots["rspamd+clamav-milter"] = lambda: [
                rspamd.process.pid, redis.process.pid, clamav_milter.process.pid]
            own_cpu["rspamd"] = lambda: {"rspamd": tree_cpu([rspamd.process.pid]),
                                         "redis": tree_cpu([redis.process.pid])}
            own_cpu["rspamd+clamav-milter"] = lambda: {
                **own_cpu["rspamd"](), "clamav-milter": tree_cpu([clamav_milter.process.pid])}
        for instance in instances.values():
            services.callback(instance.stop)
            instance.start()
        for concurrency in levels:
            for round_index in range(args.rounds):
                for mode, instance in instances.items():
                    run_id = uuid.uuid4().hex[:12]
                    stored_before = quarantined(store_url)
                    held_before = len(instance.queue_ids("hold"))
                    roots = milter_roots[mode]() if mode in milter_roots else []
                    parts_before = own_cpu[mode]() if mode in own_cpu else {}
                    clamd_before = tree_cpu([clamd.process.pid]) if clamd else 0.0
                    cpu_before, machine_before = tree_cpu(roots), machine_busy()
                    with MemoryPeak(roots) as memory:
                        seconds, latencies, accepted, refused = send_all(
                            instance.smtp_port, messages, concurrency, run_id)
                    cpu = tree_cpu(roots) - cpu_before
                    machine = machine_busy() - machine_before
                    per_message = 1000 / len(messages)
                    parts = ({part: (seconds - parts_before.get(part, 0.0)) * per_message
                              for part, seconds in own_cpu[mode]().items()}
                             if mode in own_cpu else None)
                    clamd_cpu = ((tree_cpu([clamd.process.pid]) - clamd_before) * per_message
                                 if clamd else None)
                    held = len(instance.queue_ids("hold")) - held_before
                    if mode == "gateway":
                        held += quarantined(store_url) - stored_before
                    delivered = wait_delivered(dump_dir, run_id, accepted - held)
                    if delivered + held < accepted:
                        problems += 1
                        say(f"bench: LOST {accepted - delivered - held} of {accepted} "
                            f"accepted messages ({mode}, c={concurrency})")
                    outcome = Outcome(mode, concurrency, round_index, len(messages), accepted,
                                      refused, seconds, latencies,
                                      cpu / len(messages) * 1000 if roots else None,
                                      parts, clamd_cpu,
                                      memory.rss / 2**20 if roots else None,
                                      memory.pss / 2**20 if roots else None,
                                      machine / len(messages) * 1000)
                    outcomes.append(outcome)
                    say(f"  c={concurrency:<3} round {round_index + 1} {mode:<20} "
                        f"{outcome.rate:7.1f} msg/s  accepted {accepted}, refused {refused}, "
                        f"delivered {delivered}, held {held}")
    except anchors.AnchorError as error:
        raise SystemExit(f"bench: {error}") from None
    finally:
        services.close()
        if args.keep:
            say(f"bench: kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)

    rows = summarize(outcomes, levels, list(instances))
    say()
    say(f"{'conc':>4}  {'mode':<20} {'msg/s':>8} {'x bare':>6} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'own CPU ms/msg':>14} {'clamd':>6} {'RSS MB':>7} {'PSS MB':>7} {'refused':>7} "
        f"{'machine CPU ms/msg':>18}")
    for row in rows:
        cpu = row["own_cpu_ms_per_msg"]
        clamd_cpu = row["clamd_cpu_ms_per_msg"]
        rss, pss = row["rss_mb"], row["pss_mb"]
        ratio = f"{row['ratio_to_bare']:.2f}" if row["mode"] != "bare" else ""
        say(f"{row['concurrency']:>4}  {row['mode']:<20} {row['msgs_per_s']:8.1f} {ratio:>6} "
            f"{row['p50_ms']:8.1f} {row['p99_ms']:8.1f} "
            f"{'-' if cpu is None else f'{cpu:.2f}':>14} "
            f"{'-' if clamd_cpu is None else f'{clamd_cpu:.2f}':>6} "
            f"{'-' if rss is None else f'{rss:.0f}':>7} "
            f"{'-' if pss is None else f'{pss:.0f}':>7} {row['refused']:>7} "
            f"{row['machine_cpu_ms_per_msg']:18.2f}")
    say()
    say("Own CPU ms per message by process (clamd apart):")
    for row in rows:
        if row["own_cpu_parts"]:
            say(f"{row['concurrency']:>4}  {row['mode']:<20} " + ", ".join(
                f"{part} {ms:.2f}" for part, ms in row["own_cpu_parts"].items()))
    summaries = [summary_of(outcomes, rows, concurrency) for concurrency in levels]
    say()
    say("The gateway beside the others in the same rounds (rate ratios, own CPU ratio):")
    for summary in summaries:
        say("  " + ", ".join(f"{key} {value}" for key, value in summary.items()
                             if key != "summary"))
    if args.anchors:
        say()
        say("Ratio to bare Postfix in the same rounds (p99 of the SMTP transaction):")
        say()
        compared = ["gateway", *ANCHOR_MODES]
        say("| conc | " + " | ".join(compared) + " |")
        say("|---" * (len(compared) + 1) + "|")
        for concurrency in levels:
            cells = []
            for mode in compared:
                row = next((r for r in rows if r["mode"] == mode
                            and r["concurrency"] == concurrency), None)
                cells.append("-" if row is None or row["ratio_to_bare"] is None
                             else f"{row['ratio_to_bare']:.2f}x ({row['p99_ms']:.0f} ms)")
            say(f"| {concurrency} | " + " | ".join(cells) + " |")
    if args.json:
        for row in rows:
            print(json.dumps({field: row[field] for field in JSON_FIELDS}), flush=True)
        for summary in summaries:
            print(json.dumps(summary), flush=True)
    return 1 if problems else 0


def summarize(outcomes: list[Outcome], levels: list[int], modes: list[str]) -> list[dict]:
    """One row per concurrency and mode: the mean rate over the rounds, its
    ratio to bare Postfix as the mean of each round's ratio to that round's
    bare run, latency percentiles over all the rounds' messages, the mean
    CPU per message and the highest RSS."""
    rows = []
    for concurrency in levels:
        bare = {o.round_index: o.rate for o in outcomes
                if o.mode == "bare" and o.concurrency == concurrency}
        for mode in modes:
            runs = [o for o in outcomes if o.mode == mode and o.concurrency == concurrency]
            if not runs:
                continue
            latencies = [x for o in runs for x in o.latencies]
            cpu = [o.milter_cpu for o in runs if o.milter_cpu is not None]
            parts = [o.own_parts for o in runs if o.own_parts is not None]
            clamd = [o.clamd_cpu for o in runs if o.clamd_cpu is not None]
            rss = [o.rss_mb for o in runs if o.rss_mb is not None]
            pss = [o.pss_mb for o in runs if o.pss_mb is not None]
            ratios = [o.rate / bare[o.round_index] for o in runs if bare.get(o.round_index)]
            rows.append({
                "mode": mode,
                "concurrency": concurrency,
                "msgs_per_s": round(statistics.mean(o.rate for o in runs), 1),
                "ratio_to_bare": round(statistics.mean(ratios), 3) if ratios else None,
                "p50_ms": round(percentile(latencies, 0.5), 1),
                "p99_ms": round(percentile(latencies, 0.99), 1),
                "milter_cpu_ms_per_msg": round(statistics.mean(cpu), 2) if cpu else None,
                "own_cpu_ms_per_msg": (round(statistics.mean(sum(p.values()) for p in parts), 3)
                                       if parts else None),
                "own_cpu_parts": ({part: round(statistics.mean(p.get(part, 0.0) for p in parts),
                                               3) for part in parts[0]} if parts else None),
                "clamd_cpu_ms_per_msg": round(statistics.mean(clamd), 3) if clamd else None,
                "rss_mb": round(max(rss), 1) if rss else None,
                "pss_mb": round(max(pss), 1) if pss else None,
                "refused": sum(o.refused for o in runs),
                "machine_cpu_ms_per_msg": round(statistics.mean(o.machine_cpu for o in runs), 2),
            })
    return rows


def summary_of(outcomes: list[Outcome], rows: list[dict], concurrency: int) -> dict:
    """The issue's figures at one concurrency: the gateway's rate over the
    usual stack's (rspamd + clamav-milter) and rspamd's, each the mean of
    the rounds' ratios (each round's runs are side by side); its own CPU per
    message over the pass-through pymilter's; the p99s (ms) and its memory.
    None where a mode did not run (no --anchors)."""
    def rates(mode: str) -> dict[int, float]:
        return {o.round_index: o.rate for o in outcomes
                if o.mode == mode and o.concurrency == concurrency}

    def ratio_to(mode: str) -> float | None:
        ours, theirs = rates("gateway"), rates(mode)
        ratios = [ours[r] / theirs[r] for r in ours if theirs.get(r)]
        return round(statistics.mean(ratios), 3) if ratios else None

    row = {r["mode"]: r for r in rows if r["concurrency"] == concurrency}
    gateway, pymilter = row.get("gateway", {}), row.get("pymilter", {})
    own, floor = gateway.get("own_cpu_ms_per_msg"), pymilter.get("own_cpu_ms_per_msg")
    return {
        "summary": "gateway",
        "concurrency": concurrency,
        "ratio_to_usual_stack": ratio_to(USUAL_STACK),
        "ratio_to_rspamd": ratio_to("rspamd"),
        "own_cpu_ratio_to_pymilter": round(own / floor, 2) if own and floor else None,
        "p99_ms": {mode: r["p99_ms"] for mode, r in row.items()},
        "gateway_rss_mb": gateway.get("rss_mb"),
        "gateway_pss_mb": gateway.get("pss_mb"),
    }


def _end(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


if __name__ == "__main__":
    sys.exit(main())

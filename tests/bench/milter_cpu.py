"""The milter process's own CPU per message, piece by piece, in-process.

What the milter does for a message besides the milter protocol, each on
the same corpus messages, by CPU time (``time.process_time``): reading a
worker's answer (a real worker pool, every check but clamav and sender
verification, which would need clamd and the sender's DNS), the
quarantine's write of held mail (SQLite, as the milter commits it), the
verdict's log line and headers, the correspondent memory's writer and
autolearning's candidates (``review``), their threads' writes included.
The workers' CPU for the same messages is read from /proc beside it: what
the milter no longer does may have moved there. To compare two commits,
run it from a ``git worktree`` of each in turn, a few times each
(``PYTHONPATH=TREE python -P TREE/tests/bench/...``), as this machine's
speed drifts; soak.py gives the milter's whole CPU per message, protocol
included.

    .venv/bin/python tests/bench/milter_cpu.py -n 300

Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import sys
import tempfile
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(PROJECT_ROOT))

from gateway.classifier.autolearn import Autolearner  # noqa: E402
from gateway.config import Config, PipelineSection, parse_config  # noqa: E402
from gateway.correspondents import Learner  # noqa: E402
from gateway.decider import Decision  # noqa: E402
from gateway.headers import authentication_results_header, verdict_headers  # noqa: E402
from gateway.logline import log_verdict  # noqa: E402
from gateway.logs import setup_logging  # noqa: E402
from gateway.message import Envelope, RawContent  # noqa: E402
from gateway.quarantine.store import QuarantineStore  # noqa: E402
from gateway.ruleset import Ruleset  # noqa: E402
from gateway.workers import WorkerPool, _cpu_seconds  # noqa: E402
from tests.bench.corpus import add_corpus_argument, require_corpus  # noqa: E402

ENVELOPE = Envelope(mail_from="alice@example.org", rcpt_to=("bob@example.net",),
                    client_ip="192.0.2.1", helo="mail.example.org", queue_id="Q1")
NEEDS_SERVERS = ("clamav", "sender")  # clamd; the sender's domain in DNS


def load(folder: Path, count: int) -> list[bytes]:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.endswith(".md"))
    random.Random(7).shuffle(files)
    return [p.read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
            for p in files[:count]]


def ms_each(seconds: float, count: int) -> str:
    return f"{seconds / max(count, 1) * 1000:.3f} ms"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--messages", type=int, default=300)
    add_corpus_argument(parser)
    args = parser.parse_args()
    messages = load(require_corpus(args.corpus, "milter_cpu"), args.messages)
    setup_logging("info", "text")  # as the milter logs, into nothing
    for handler in logging.getLogger().handlers:
        assert isinstance(handler, logging.StreamHandler)
        handler.setStream(open(os.devnull, "w"))  # noqa: SIM115
    checks = [c for c in Config().pipeline.checks if c not in NEEDS_SERVERS]
    pool = WorkerPool(Config(pipeline=PipelineSection(checks=checks)))
    try:
        for data in messages[:10]:  # the workers load what the checks need
            pool.evaluate(ENVELOPE, RawContent(data=data))
        workers_before = sum(_cpu_seconds(pid) for pid in pool.worker_pids())
        started = time.process_time()
        verdicts = [pool.evaluate(ENVELOPE, RawContent(data=data)) for data in messages]
        answers = time.process_time() - started
        workers = sum(_cpu_seconds(pid) for pid in pool.worker_pids()) - workers_before
    finally:
        pool.close()
    count = len(verdicts)
    held = [(data, v) for data, v in zip(messages, verdicts, strict=True)
            if v.action == "quarantine"]
    url = f"sqlite:///{tempfile.mkdtemp()}/quarantine.db"
    store = QuarantineStore(url, node="bench")
    for data, verdict in held[:5]:  # the first statements compile
        store.put(ENVELOPE, RawContent(data=data), verdict)
    started = time.process_time()
    held_ids = {id(verdict): store.put(ENVELOPE, RawContent(data=data), verdict)
                for data, verdict in held}
    writes = time.process_time() - started
    # The correspondent memory's writer and autolearning's candidates, each
    # with its own thread's writes (process time counts every thread).
    decisions = [Decision(v, "discard", notes={"quarantine_id": held_ids[id(v)]})
                 if id(v) in held_ids else Decision(v, "accept") for v in verdicts]
    started = time.process_time()
    learner = Learner(url, Config().identity)
    for decision in decisions:
        learner.observe(ENVELOPE, decision)
    learner.flush()
    learner.close()
    learned = time.process_time() - started
    autolearn_config = parse_config('[classifier]\nautolearn = "review"\n', "milter_cpu")
    started = time.process_time()
    autolearner = Autolearner(autolearn_config, lambda: store, Ruleset())
    offered = sum(autolearner.offer(ENVELOPE, lambda data=data: data, verdict,
                                    held_ids.get(id(verdict))) is not None
                  for data, verdict in zip(messages, verdicts, strict=True))
    autolearner.flush()
    autolearner.close()
    candidates = time.process_time() - started
    started = time.process_time()
    for verdict in verdicts:
        log_verdict(ENVELOPE, verdict, 5000, 12.5, {})
    logged = time.process_time() - started
    started = time.process_time()
    for verdict in verdicts:
        verdict_headers(verdict)
        authentication_results_header(verdict)
    headers = time.process_time() - started
    store.close()
    actions = {a: sum(v.action == a for v in verdicts) for a in sorted({v.action
                                                                       for v in verdicts})}
    print(f"milter_cpu: {count} corpus messages, {len(checks)} checks, actions {actions}")
    print(f"  a worker's answer read (milter side)  {ms_each(answers, count)} a message "
          f"(the workers: {ms_each(workers, count)})")
    print(f"  the quarantine's write of held mail   {ms_each(writes, len(held))} a held message "
          f"({len(held)} held)")
    print(f"  the verdict's log line                {ms_each(logged, count)} a message")
    print(f"  the correspondent memory's writer     {ms_each(learned, count)} a message")
    print(f"  autolearning's candidates             {ms_each(candidates, count)} a message "
          f"({offered} candidates)")
    print(f"  X-Spam-* and Authentication-Results   {ms_each(headers, count)} a message")
    return 0


if __name__ == "__main__":
    sys.exit(main())

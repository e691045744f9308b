"""Authentication latency: SPF + DKIM + DMARC + ARC + iprev + sender checks
against a local authoritative DNS server (knotd), cold and warm cache.

    .venv/bin/python tests/bench/auth.py -n 300
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(PROJECT_ROOT))

from gateway.config import AuthSection, Config, DnsSection, PipelineSection  # noqa: E402
from gateway.dns import shared_resolver  # noqa: E402
from gateway.evaluator import LocalEvaluator  # noqa: E402
from gateway.lab.dns import KnotServer  # noqa: E402
from gateway.message import Envelope, Message  # noqa: E402
from tests.authlab import GOOD_IP, build_zones, make_keys, message, sign  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--messages", type=int, default=300)
    args = parser.parse_args()
    keys = make_keys()
    with tempfile.TemporaryDirectory() as root, \
            KnotServer(Path(root), build_zones(keys)) as knot:
        config = Config(
            pipeline=PipelineSection(checks=["spf", "dkim", "arc", "dmarc", "sender", "iprev"]),
            dns=DnsSection(nameservers=("127.0.0.1",), port=knot.port),
            auth=AuthSection(authserv_id="mx.bench.test"),
        )
        evaluator = LocalEvaluator(config)
        resolver = shared_resolver(config)
        raws = [sign(message(subject=f"bench {i}"), "good.test", "s2048", keys.rsa)
                for i in range(args.messages)]
        envelope = Envelope(mail_from="alice@good.test", rcpt_to=("bob@example.net",),
                            client_ip=GOOD_IP, helo="mail.good.test")
        print(f"{args.messages} DKIM-signed messages, checks: {', '.join(config.pipeline.checks)}")
        print(f"{'cache':<6} {'median ms':>10} {'p99 ms':>8} {'DNS queries/msg':>16}")
        for label in ("cold", "warm"):
            timings, queries = [], resolver.queries
            for raw in raws:
                if label == "cold":
                    resolver._cache.clear()
                started = time.perf_counter()
                verdict = evaluator.evaluate_message(Message.from_bytes(raw, envelope))
                timings.append((time.perf_counter() - started) * 1000)
                assert verdict.facts["dmarc"]["result"] == "pass", verdict.symbols
            timings.sort()
            print(f"{label:<6} {statistics.median(timings):10.2f} "
                  f"{timings[int(0.99 * len(timings))]:8.2f} "
                  f"{(resolver.queries - queries) / len(raws):16.1f}")
        evaluator.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""CPU per DNS lookup on a cache miss, against a local authoritative server
(knotd), for each way of asking:

- ``gateway``: the gateway's resolver (gateway.dns.Resolver.lookup, its
  cache emptied before every lookup): run this script from another
  checkout's worktree to measure that checkout's resolver;
- ``resolve``: dnspython's Resolver.resolve and its Answer, then the plain
  values (the gateway's path until the wire reading, gateway/dnswire.py);
- ``pycares``: c-ares through pycares (only if it is installed; not a
  dependency: it reads no authority section on NXDOMAIN or NODATA, so the
  negative cache could not honour the SOA minimum).

The lookups are a mix like one message's: SPF and DMARC TXT, MX, A, an
AAAA that does not exist, a DKIM key, an NXDOMAIN, a PTR. CPU is this
process's (time.process_time: every thread, knotd not included); rounds
alternate the ways, and each round gives each way's ratio to ``resolve``.

    .venv/bin/python tests/bench/dnslookups.py -n 3000 --rounds 5

With ``--per-message N``: how many lookups the DNS checks (SPF, DKIM, ARC,
DMARC, sender verification, iprev) make for each of N corpus messages
(sender: the Return-Path, else the From), against a server that answers for
any domain: lookups asked, the same name and type asked again within the
message (answered by the cache), and what went to the network, by type.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

PROJECT_ROOT = Path.cwd() if (Path.cwd() / "gateway" / "dns.py").exists() \
    else Path(__file__).resolve().parents[2]
sys.path.insert(0, str(PROJECT_ROOT))

import dns.resolver  # noqa: E402

from gateway.config import DnsSection  # noqa: E402
from gateway.dns import DnsError, Resolver  # noqa: E402
from gateway.lab.dns import KnotServer, Zone  # noqa: E402

KEY = "v=DKIM1; k=rsa; p=" + "MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA" * 9
ZONE = (Zone("bench.test", ttl=300)
        .add("@", "MX", "10 mx.bench.test.")
        .add("mx", "A", "192.0.2.25")
        .txt("@", "v=spf1 ip4:192.0.2.0/24 include:_spf.bench.test -all")
        .txt("_dmarc", "v=DMARC1; p=reject; rua=mailto:dmarc@bench.test")
        .txt("s1._domainkey", KEY))
REVERSE = Zone("2.0.192.in-addr.arpa").add("25", "PTR", "mx.bench.test.")
LOOKUPS = [("bench.test", "TXT"), ("_dmarc.bench.test", "TXT"), ("bench.test", "MX"),
           ("mx.bench.test", "A"), ("mx.bench.test", "AAAA"),
           ("s1._domainkey.bench.test", "TXT"), ("_dmarc.mail.bench.test", "TXT"),
           ("25.2.0.192.in-addr.arpa", "PTR")]


def gateway_way(port: int) -> Callable[[str, str], object]:
    resolver = Resolver(DnsSection(nameservers=("127.0.0.1",), port=port))

    def ask(name: str, rdtype: str) -> object:
        resolver._cache.clear()
        try:
            return resolver.lookup(name, rdtype)
        except DnsError as exc:
            return type(exc).__name__
    return ask


def resolve_way(port: int) -> Callable[[str, str], object]:
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = ["127.0.0.1"]
    resolver.port = port
    resolver.timeout, resolver.lifetime = 2.0, 3.0
    resolver.search, resolver.use_search_by_default = [], False

    def ask(name: str, rdtype: str) -> object:
        try:
            answer = resolver.resolve(name, rdtype, search=False, raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN:
            return "NxDomain"
        if answer.rrset is None:
            return "NoRecords"
        return tuple(_value(rdata, rdtype) for rdata in answer.rrset)
    return ask


def _value(rdata, rdtype: str) -> object:
    if rdtype == "TXT":
        return b"".join(rdata.strings).decode("utf-8", "replace")
    if rdtype == "MX":
        return (rdata.preference, rdata.exchange.to_text(omit_final_dot=True).lower())
    if rdtype in ("A", "AAAA"):
        return rdata.address
    return rdata.target.to_text(omit_final_dot=True).lower()


def pycares_way(port: int) -> Callable[[str, str], object] | None:
    try:
        import pycares  # type: ignore[import-not-found]
    except ImportError:
        return None
    channel = pycares.Channel(servers=["127.0.0.1"], udp_port=port, tcp_port=port,
                              timeout=2.0, tries=1, flags=pycares.ARES_FLAG_NOSEARCH)

    def ask(name: str, rdtype: str) -> object:
        done = threading.Event()
        outcome: list[object] = []

        def answered(result, error) -> None:
            outcome.append(error if error else tuple(
                record.data for record in result.answer))
            done.set()
        channel.query(name, getattr(pycares, f"QUERY_TYPE_{rdtype}"), callback=answered)
        done.wait()
        return outcome[0]
    return ask


def cpu_per_lookup(ask: Callable[[str, str], object], lookups: int) -> float:
    for name, rdtype in LOOKUPS:  # warm up
        ask(name, rdtype)
    started = time.process_time()
    for index in range(lookups):
        name, rdtype = LOOKUPS[index % len(LOOKUPS)]
        ask(name, rdtype)
    return (time.process_time() - started) / lookups * 1e6


def lookups_per_message(count: int, corpus: Path) -> None:
    """Lookups per corpus message, counted at Resolver.lookup."""
    from email import message_from_bytes
    from email.utils import parseaddr

    from gateway.config import Config, PipelineSection
    from gateway.dns import shared_resolver
    from gateway.evaluator import LocalEvaluator
    from gateway.message import Envelope, Message
    from tests.bench.corpus import HAM_FOLDERS, SPAM_FOLDERS, require_corpus
    from tests.lab.dns import SyntheticServer

    folders = [require_corpus(corpus, "dns") / name for name in HAM_FOLDERS + SPAM_FOLDERS]
    files = sorted(p for folder in folders if folder.is_dir() for p in folder.iterdir()
                   if p.is_file() and not p.name.endswith(".md"))
    files = files[::max(1, len(files) // count)][:count]
    with SyntheticServer() as server:
        config = Config(pipeline=PipelineSection(
            checks=["spf", "dkim", "arc", "dmarc", "sender", "iprev"], parallel=False),
            dns=DnsSection(nameservers=("127.0.0.1",), port=server.port))
        evaluator = LocalEvaluator(config)
        resolver = shared_resolver(config)
        asked: list[tuple[str, str]] = []
        lookup = resolver.lookup

        def counted(name: str, rdtype: str):  # type: ignore[no-untyped-def]
            asked.append((name.lower().rstrip("."), rdtype))
            return lookup(name, rdtype)
        resolver.lookup = counted  # type: ignore[method-assign]
        totals, repeats, network = [], [], []
        by_type: dict[str, int] = {}
        for index, path in enumerate(files):
            raw = path.read_bytes()
            parsed = message_from_bytes(raw)
            sender = parseaddr(str(parsed.get("Return-Path", "") or parsed.get("From", "")))[1]
            envelope = Envelope(mail_from=sender, rcpt_to=("rcpt@example.net",),
                                client_ip="198.51.100.7", helo="mail.example")
            asked.clear()
            queries = resolver.queries
            evaluator.evaluate_message(Message.from_bytes(raw, envelope))
            totals.append(len(asked))
            repeats.append(len(asked) - len(set(asked)))
            network.append(resolver.queries - queries)
            for _name, rdtype in asked:
                by_type[rdtype] = by_type.get(rdtype, 0) + 1
            if index % 100 == 0:
                print(f"{index}/{len(files)} messages", file=sys.stderr)
        evaluator.close()
    print(f"{len(files)} corpus messages from {corpus}: DNS checks spf, dkim, arc, dmarc, "
          "sender, iprev")
    print(f"lookups a message: mean {statistics.mean(totals):.2f}, median "
          f"{statistics.median(totals):g}, max {max(totals)}")
    print(f"the same name and type asked again in one message: mean "
          f"{statistics.mean(repeats):.2f} (answered by the cache), in "
          f"{sum(1 for r in repeats if r)} of {len(files)} messages")
    print(f"to the network (cache misses, the cache shared across messages): mean "
          f"{statistics.mean(network):.2f} a message")
    print("by type: " + ", ".join(f"{t} {n / len(files):.2f}" for t, n in
                                  sorted(by_type.items(), key=lambda item: -item[1])))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--lookups", type=int, default=3000, help="lookups a way a round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--per-message", type=int, metavar="N",
                        help="count the lookups of N corpus messages instead")
    from tests.bench.corpus import add_corpus_argument
    add_corpus_argument(parser)
    args = parser.parse_args()
    if args.per_message:
        lookups_per_message(args.per_message, args.corpus)
        return 0
    with tempfile.TemporaryDirectory() as root, \
            KnotServer(Path(root), [ZONE, REVERSE]) as knot:
        ways = {"gateway": gateway_way(knot.port), "resolve": resolve_way(knot.port)}
        cares = pycares_way(knot.port)
        if cares is not None:
            ways["pycares"] = cares
        else:
            print("pycares: not installed, not measured", file=sys.stderr)
        reference = resolve_way(knot.port)
        for name, rdtype in LOOKUPS:  # the gateway reads what dnspython reads
            theirs = reference(name, rdtype)
            ours = ways["gateway"](name, rdtype)
            if ours != theirs:
                raise SystemExit(f"{name}/{rdtype}: gateway {ours!r}, dnspython {theirs!r}")
        figures: dict[str, list[float]] = {way: [] for way in ways}
        for round_ in range(args.rounds):
            for way, ask in ways.items():
                figures[way].append(cpu_per_lookup(ask, args.lookups))
                print(f"round {round_ + 1}/{args.rounds} {way}: {figures[way][-1]:.1f} us",
                      file=sys.stderr)
        print(f"{args.lookups} lookups a way a round, {args.rounds} rounds, "
              f"resolver from {PROJECT_ROOT}")
        print(f"{'way':<8} {'CPU us/lookup (median, min-max)':>32} {'ratio to resolve':>24}")
        for way, values in figures.items():
            ratios = [v / r for v, r in zip(values, figures["resolve"], strict=True)]
            spread = f"({min(values):.1f}-{max(values):.1f})"
            print(f"{way:<8} {statistics.median(values):12.1f} {spread:<19}"
                  f"{statistics.median(ratios):16.2f} ({min(ratios):.2f}-{max(ratios):.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

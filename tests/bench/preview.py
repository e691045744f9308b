"""The console's message preview beside the milter's own reading of the
same message, on the public corpus and on 2 MiB messages built to make an
HTML parser quadratic.

    .venv/bin/python tests/bench/preview.py -n 1000 --rounds 5

For each message: the milter's reading (the bounded MIME parse and the
checks' view: text parts, HTML without tags, URLs), and the preview
(the same reading plus the header list, attachments' hashes and types, and
the HTML through gateway.web.boundhtml and nh3), both in this process; the
preview through a worker process (gateway.web.render, as the console makes
it, not cached). Figures are p50 and p99 in ms and the preview's time as a
ratio to the milter's reading of the same messages in the same round, as
mean and spread over the rounds; only comparable on a quiet machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(PROJECT_ROOT))

from gateway.checks.view import MessageView  # noqa: E402
from gateway.config import LimitsSection  # noqa: E402
from gateway.mime import parse_bytes  # noqa: E402
from gateway.web.preview import analyse, sanitize_html  # noqa: E402
from gateway.web.render import Renderer  # noqa: E402
from tests.bench.corpus import add_corpus_argument, require_corpus  # noqa: E402
from tests.test_web_preview import PATHOLOGICAL, html_message  # noqa: E402

LIMITS = LimitsSection()


def milter_reading(raw: bytes) -> None:
    view = MessageView(parse_bytes(raw, LIMITS), LIMITS)
    view.parts  # noqa: B018 (the reading is the point)
    view.links  # noqa: B018


def preview(raw: bytes) -> None:
    shown = analyse(raw, LIMITS)
    if shown.html:
        sanitize_html(shown.html)


def timed(work, raw: bytes) -> float:
    started = time.perf_counter()
    work(raw)
    return (time.perf_counter() - started) * 1000


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--messages", type=int, default=1000,
                        help="corpus messages (every k-th file of the corpus)")
    parser.add_argument("--rounds", type=int, default=5)
    add_corpus_argument(parser)
    args = parser.parse_args()
    files = sorted(p for p in require_corpus(args.corpus, "preview bench").glob("*/*")
                   if p.is_file())
    if not files:
        print(f"preview bench: no messages under {args.corpus}", file=sys.stderr)
        return 2
    step = max(1, len(files) // args.messages)
    raws = [p.read_bytes() for p in files[::step][:args.messages]]
    print(f"{len(raws)} corpus messages ({sum(map(len, raws)) // 1024} KiB), "
          f"{args.rounds} rounds")
    for raw in raws:  # warm-up: imports, compiled patterns, the allocator
        milter_reading(raw)
        preview(raw)
    ratios, milter_all, preview_all = [], [], []
    for number in range(args.rounds):
        # message by message, the two side by side, in turns first
        milter, shown = [], []
        for raw in raws:
            pair = ((milter, milter_reading), (shown, preview))
            for times, work in (pair if number % 2 == 0 else pair[::-1]):
                times.append(timed(work, raw))
        ratios.append(sum(shown) / sum(milter))
        milter_all += milter
        preview_all += shown
    spread = statistics.stdev(ratios) if len(ratios) > 1 else 0.0
    print(f"{'':<28} {'p50 ms':>8} {'p99 ms':>8}")
    print(f"{'milter reading':<28} {percentile(milter_all, .5):8.2f} "
          f"{percentile(milter_all, .99):8.2f}")
    print(f"{'preview, in process':<28} {percentile(preview_all, .5):8.2f} "
          f"{percentile(preview_all, .99):8.2f}   x {statistics.mean(ratios):.2f} "
          f"(sd {spread:.2f}) the milter reading")
    renderer = Renderer(LIMITS, deadline=60.0)
    try:
        renderer.render("warm-up", raws[0])
        worker = [timed(lambda raw, i=i: renderer.render(f"m{i}", raw), raw)
                  for i, raw in enumerate(raws)]
    finally:
        renderer.close()
    print(f"{'preview, worker process':<28} {percentile(worker, .5):8.2f} "
          f"{percentile(worker, .99):8.2f}")
    print("\n2 MiB messages built to make an HTML parser quadratic (one run each):")
    print(f"{'form':<24} {'milter ms':>10} {'preview ms':>11} {'ratio':>6}")
    for kind, html in PATHOLOGICAL.items():
        raw = html_message(html)
        milter, shown = timed(milter_reading, raw), timed(preview, raw)
        print(f"{kind:<24} {milter:10.0f} {shown:11.0f} {shown / milter:6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

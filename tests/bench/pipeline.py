"""The pipeline's own CPU per message: scheduling the checks and building
their results, with checks that do nothing (each returns one symbol and a
fact), named, ordered and depending on each other as the built-in checks
do, under ``[pipeline] parallel = "auto"`` (every check inline, as on a
machine whose resolver and clamd answer at once) and with an observer, as
a worker runs them. CPU microseconds a message (time.process_time), the
least of three passes.

    .venv/bin/python tests/bench/pipeline.py -n 5000 --rounds 5 [--before DIR] [--profile]

``--before DIR``: another checkout (``git worktree add --detach DIR main``)
measured in turn with this one, A/B interleaved in fresh processes; printed
as the median and spread of each and of the ratio after/before within a
round. Only comparable on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def measure(root: Path, count: int) -> dict[str, float]:
    """CPU microseconds a message of ``root``'s pipeline."""
    sys.path.insert(0, str(root))
    from gateway.checks import BUILTIN, Check, resolve_check
    from gateway.message import Message
    from gateway.pipeline import Pipeline
    from gateway.symbols import Report, Symbol

    if not Path(sys.modules["gateway"].__file__ or "").is_relative_to(root):
        raise SystemExit(f"pipeline.py: gateway imported from {sys.modules['gateway'].__file__}")

    def idle_check(real: type[Check]) -> Check:
        class Idle(Check):
            name = real.name
            symbols = {"IDLE_" + real.name.upper(): "a check that does nothing"}
            requires, wants, io_bound = real.requires, real.wants, real.io_bound

            def run(self, message, context):
                return Report(symbols=(Symbol("IDLE_" + self.name.upper(), 0.0, "idle", ""),),
                              facts={"seen": len(context.facts)})

        check = Idle.__new__(Idle)  # no configuration to read
        return check

    checks = [idle_check(resolve_check(name)) for name in BUILTIN]
    pipeline = Pipeline(checks, budget=10.0, threads=8, parallel="auto")
    message = Message.from_bytes(b"Subject: x\r\n\r\nbody\r\n")
    observed: list[object] = []

    def observer(run, report) -> None:
        observed.append(run)

    for _ in range(200):  # warm
        pipeline.run(message, observer)
    passes = []
    for _ in range(3):
        started = time.process_time()
        for _ in range(count):
            observed.clear()
            pipeline.run(message, observer)
        passes.append((time.process_time() - started) * 1e6 / count)
    pipeline.close()
    return {"pipeline_us": min(passes), "checks": len(checks)}


def main(argv: list[str] | None = None) -> None:
    sys.path.insert(0, str(PROJECT_ROOT))
    from tests.bench.interleave import add_arguments, in_turn, print_parts

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=5000, help="messages a pass (default 5000)")
    parser.add_argument("--profile", action="store_true", help="cProfile this checkout")
    add_arguments(parser)
    args = parser.parse_args(argv)
    if args.child is not None:
        print(json.dumps(measure(args.child, args.n)))
        return
    if args.profile:
        import cProfile
        import pstats

        profiler = cProfile.Profile()
        profiler.runcall(measure, PROJECT_ROOT, args.n)
        pstats.Stats(profiler).sort_stats("tottime").print_stats(20)
        return
    runs = in_turn(Path(__file__), PROJECT_ROOT, args.before, args.rounds, ["-n", str(args.n)])
    print("pipeline CPU us a message, median (min-max):")
    print_parts(runs, ("pipeline_us",), 11, digits=1)

if __name__ == "__main__":
    main()

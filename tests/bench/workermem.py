"""A worker's private memory: what building its checks adds after the fork.

Does what the fork server does (imports the modules it preloads, loads the
shared model and the static tables: gateway.forkshare), then forks a child
that builds the pipeline as a worker does and reads its own Private_Dirty
(/proc/self/smaps_rollup) before and after, in all and check by check. A
page the child writes (a new object, or a reference count on one of the
fork server's objects) is private: the machine spends it once per worker.

    .venv/bin/python tests/bench/workermem.py --config /etc/gateway/gateway.toml
    .venv/bin/python tests/bench/workermem.py --config FILE --rounds 3 --cold

``--cold``: without the fork server's static tables (as before they were
built there). Needs no network: checks connect on first use.

Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(PROJECT_ROOT))

from gateway import forkshare  # noqa: E402
from gateway.config import load_config  # noqa: E402
from gateway.pipeline import check_classes  # noqa: E402
from gateway.ruleset import load_rules  # noqa: E402
from gateway.workers import _model_to_share, _preload  # noqa: E402


def private_mb() -> float:
    with open("/proc/self/smaps_rollup") as rollup:
        for line in rollup:
            if line.startswith("Private_Dirty:"):
                return int(line.split()[1]) / 1024
    return 0.0


def in_child(config_path: Path, write: int) -> None:
    config = load_config(config_path)
    ruleset = load_rules(config.policy.rules)  # the milter sends it pickled: rebuilt here too
    before = private_mb()
    by_check, checks = [], []
    for check_class in check_classes(config, []):  # as Pipeline.from_config, one at a time
        start = private_mb()
        checks.append(check_class(config, ruleset))
        by_check.append(f"{getattr(check_class, 'name', check_class.__name__)} "
                        f"{private_mb() - start:.1f}")
    os.write(write, (f"{private_mb() - before:.1f} MB private after building the "
                     f"checks ({before:.1f} MB before, with the config and rules read); by check: "
                     + ", ".join(by_check)).encode())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=1, help="forked children, one after another")
    parser.add_argument("--cold", action="store_true",
                        help="without the static tables the fork server builds")
    args = parser.parse_args()
    config = load_config(args.config)
    for module in _preload(config):
        if module != "gateway.forkshare":
            importlib.import_module(module)
    forkshare.share_model(_model_to_share(config))
    if args.cold:
        forkshare._warm_tables = lambda: None
    forkshare._load_shared()
    for _ in range(args.rounds):
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                in_child(args.config, write)
            finally:
                os._exit(0)
        os.close(write)
        os.waitpid(pid, 0)
        with os.fdopen(read, "rb") as answer:
            print(f"workermem{' (cold)' if args.cold else ''}: {answer.read().decode()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

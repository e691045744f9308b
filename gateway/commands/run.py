"""``gateway run``: the milter, in the foreground, until SIGTERM."""

from __future__ import annotations

import argparse
import dataclasses
import faulthandler
import logging

import milter as libmilter

from gateway.commands.common import UsageError, config_from, setup_logging
from gateway.config import socket_problem
from gateway.decider import Decider
from gateway.evaluator import build_evaluator
from gateway.milter import Runtime, serve
from gateway.quarantine.keeper import Keeper
from gateway.quarantine.store import QuarantineError

log = logging.getLogger("gateway")


def main(args: argparse.Namespace) -> int:
    config = config_from(args)
    if args.socket:
        if problem := socket_problem(args.socket):
            raise UsageError(f"--socket: {problem}")
        config = dataclasses.replace(
            config, milter=dataclasses.replace(config.milter, socket=args.socket)
        )
    setup_logging(config.logging.level)
    faulthandler.enable()  # a crash in a C extension leaves a Python traceback in the log
    evaluator = build_evaluator(config)
    for problem in evaluator.startup_problems():
        log.warning("%s", problem)
    keeper = Keeper(config) if config.quarantine.url else None
    if keeper is not None:
        try:
            keeper.store()
        except QuarantineError as exc:  # messages to quarantine get 4xx until it works
            log.error("quarantine: %s; quarantined mail is answered 4xx until it works", exc)
        keeper.start_purging()
    decider = Decider(evaluator, keeper, config.milter.threads)
    try:
        serve(Runtime(config=config, decider=decider))
    except (OSError, libmilter.error) as exc:
        raise UsageError(f"milter.socket {config.milter.socket}: {exc}") from None
    finally:
        decider.close()
    log.info("gateway milter stopped")
    return 0

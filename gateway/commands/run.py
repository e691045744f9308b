"""``gateway run``: the milter, in the foreground, until SIGTERM."""

from __future__ import annotations

import argparse
import dataclasses
import logging

import milter as libmilter

from gateway.cli import UsageError
from gateway.commands.common import config_from, setup_logging
from gateway.config import socket_problem
from gateway.evaluator import build_evaluator
from gateway.milter import Runtime, serve

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
    evaluator = build_evaluator(config)
    for problem in evaluator.startup_problems():
        log.warning("%s", problem)
    try:
        serve(Runtime(config=config, evaluator=evaluator))
    except (OSError, libmilter.error) as exc:
        raise UsageError(f"milter.socket {config.milter.socket}: {exc}") from None
    finally:
        evaluator.close()
    log.info("gateway milter stopped")
    return 0

"""``gateway run``: the milter, in the foreground, until SIGTERM.

By default this process is a small supervisor (see :mod:`gateway.supervisor`)
that owns the signals and runs the milter as its child: SIGHUP reloads the
configuration without a restart, SIGTERM stops after the messages in flight.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import faulthandler
import logging
import os
import threading
from collections.abc import Callable

from gateway import __version__
from gateway.commands.common import UsageError, config_from, setup_logging
from gateway.config import Config, load_config, socket_problem
from gateway.supervisor import CONTROL_FD_FLAG, READY_FD_FLAG, supervise

log = logging.getLogger("gateway")
# Seconds the messages in flight have to be answered once a stop is asked
# (under systemd's TimeoutStopSec=30 for the whole stop).
STOP_GRACE = 20.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--socket", help="override milter.socket")
    parser.add_argument("--no-supervisor", action="store_true",
                        help="run the milter in this process: no reload on SIGHUP "
                        "(libmilter stops on it)")
    parser.add_argument(CONTROL_FD_FLAG, dest="control_fd", type=int, help=argparse.SUPPRESS)
    parser.add_argument(READY_FD_FLAG, dest="ready_fd", type=int, help=argparse.SUPPRESS)


def main(args: argparse.Namespace) -> int:
    config = _config(args)  # a broken config stops here, before anything starts
    if args.control_fd is None and not args.no_supervisor:
        argv = []
        if getattr(args, "config", None):
            argv += ["--config", args.config]
        if args.socket:
            argv += ["--socket", args.socket]
        setup_logging(config.log.level, config.log.format)
        return supervise(argv, getattr(args, "config", None))
    return serve_milter(config, args)


def _config(args: argparse.Namespace) -> Config:
    config = config_from(args)
    if args.socket:
        if problem := socket_problem(args.socket):
            raise UsageError(f"--socket: {problem}")
        config = dataclasses.replace(
            config, milter=dataclasses.replace(config.milter, socket=args.socket))
    return config


def serve_milter(config: Config, args: argparse.Namespace) -> int:
    import milter as libmilter

    from gateway.checks.declared import declare_apart
    from gateway.metrics import Metrics
    from gateway.milter import Runtime, serve
    from gateway.service import Service

    setup_logging(config.log.level, config.log.format)
    faulthandler.enable()  # a crash in a C extension leaves a Python traceback in the log
    if config.pipeline.workers:  # the workers run the checks: the milter only declares them
        declare_apart()
    metrics = Metrics(config.quarantine.node)

    def load(path: str | None) -> Config:
        loaded = load_config(path)
        return dataclasses.replace(loaded, milter=config.milter)  # --socket stays

    service = Service(config, getattr(args, "config", None), load, observer=metrics.observe)
    service.listeners.append(metrics.reload)
    _wire_metrics(metrics, service)
    server = _start_metrics(config, metrics, service)
    if args.control_fd is not None:
        _listen_for_reloads(args.control_fd, service)
    scanner = _start_scan(config, service)
    runtime = Runtime(service=service, sessions=metrics.session,
                      listening=_tell_supervisor(args.ready_fd))
    log.info("gateway %s starting: config %s, checks %s, %s", __version__,
             getattr(args, "config", None) or "the embedded defaults",
             ", ".join(config.pipeline.checks),
             f"{config.pipeline.workers} worker processes" if config.pipeline.workers
             else "checks in the milter process")
    try:
        serve(runtime)
    except (OSError, libmilter.error) as exc:
        raise UsageError(f"milter.socket {config.milter.socket}: {exc}") from None
    finally:
        # libmilter's loop has ended: no new connection; the messages in flight
        # are answered before the workers that decide them stop.
        if left := service.drain(STOP_GRACE):
            log.warning("stopping with %d messages unanswered after %g s (Postfix answers "
                        "4xx, the senders retry)", left, STOP_GRACE)
        if server is not None:
            server.stop()
        if scanner is not None:
            scanner.stop()
        service.close()
    log.info("gateway milter stopped")
    return 0


def _tell_supervisor(fd: int | None) -> Callable[[], None] | None:
    """Once the socket is open: the supervisor then knows this milter served
    (and restarts it if it dies), however long starting took."""
    if fd is None:
        return None

    def listening() -> None:
        with contextlib.suppress(OSError):
            os.write(fd, b"1")
            os.close(fd)

    return listening


def _listen_for_reloads(fd: int, service) -> None:
    """Each byte from the supervisor is a reload request; end of file means
    the supervisor is gone, and the milter stops too."""

    def listen() -> None:
        while True:
            try:
                data = os.read(fd, 64)
            except OSError:
                data = b""
            if not data:
                import milter as libmilter

                log.warning("supervisor gone: stopping the milter")
                libmilter.stop()
                return
            log.info("reload requested (SIGHUP)")
            service.reload()

    threading.Thread(target=listen, name="reload", daemon=True).start()


def _wire_metrics(metrics, service) -> None:
    def store_counts() -> dict[str, int]:
        keeper = service.current.keeper
        return {} if keeper is None else keeper.store().count_by_state()

    def released() -> int:
        return store_counts().get("released", 0)

    def processes() -> list[int]:
        pool = service.current.evaluator
        return [os.getpid(), *pool.worker_pids()]

    metrics.store_counts = store_counts
    metrics.released = released
    metrics.processes = processes


def _start_metrics(config: Config, metrics, service):
    from gateway.health import health_problems
    from gateway.metrics import MetricsServer

    if not config.metrics.listen:
        return None
    try:
        server = MetricsServer(config.metrics.listen, metrics, lambda: health_problems(service))
    except OSError as exc:
        log.error("metrics: cannot listen on %s: %s; no /metrics or /health until restart",
                  config.metrics.listen, exc.strerror or exc)
        return None
    log.info("metrics and health on http://%s/metrics and /health", config.metrics.listen)
    return server.start()


def _start_scan(config: Config, service):
    """The spamd / rspamd protocol beside the milter, when [scan] listen is set."""
    if not config.scan.listen:
        return None
    import time

    from gateway.logline import log_verdict
    from gateway.scan import ScanServer

    def scan(envelope, raw):
        generation = service.current.acquire()
        started = time.perf_counter()
        try:
            verdict = generation.evaluator.evaluate(envelope, raw)
        finally:
            generation.release()
        log_verdict(envelope, verdict, raw.size, (time.perf_counter() - started) * 1000,
                    {"via": "scan"})
        return verdict

    try:
        return ScanServer(config, scan).start()
    except OSError as exc:
        raise UsageError(f"scan.listen {config.scan.listen}: {exc.strerror or exc}") from None

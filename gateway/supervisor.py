"""``gateway run`` as two processes: a small supervisor, and the milter.

libmilter runs a thread of its own that waits for SIGHUP, SIGTERM and
SIGINT and *stops the milter* on any of them, and every thread in a
process may be the one a signal is delivered to. A reload on SIGHUP inside
the milter process would race libmilter for the signal. So the process
systemd starts (and admins signal) is this supervisor, which imports
nothing heavy and owns the signals:

- SIGHUP: asks the milter to reload, through a pipe (never a signal);
- SIGTERM / SIGINT: passed on to the milter, which stops once in-flight
  messages are answered; then the supervisor exits with its status;
- the milter dying on its own (a crash in C code): started again after a
  short pause, the way systemd's Restart= would, but without dropping the
  supervisor's PID (and without losing mail: while it is down, Postfix's
  ``milter_default_action = tempfail`` makes senders retry).

A milter that fails while starting (a bad config, a socket in use) is not
restarted: the supervisor exits with its status, so the error reaches the
admin at once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

from gateway.logs import setup_logging

log = logging.getLogger("gateway.supervisor")

RESTART_PAUSE = 0.3
MAX_RESTART_PAUSE = 10.0  # a crash loop cannot spin: the pause doubles up to this
CONTROL_FD_FLAG = "--control-fd"
# glibc gives each thread that allocates at once an arena of its own (up to
# 8 a core), which Python's allocator leaves to larger blocks: the milter's
# session threads and the workers' network threads kept a few MB each.
# Two arenas (an admin's own setting wins): soak.py's milter 104.7-105.6
# -> 101.6-101.9 MB RSS, its workers 4 MB less, the CPU within the drift.
MALLOC_ARENAS = ("MALLOC_ARENA_MAX", "2")
READY_FD_FLAG = "--ready-fd"
# What libmilter waits for, in a thread of its own, to stop the milter.
STOP_SIGNALS = {signal.SIGHUP, signal.SIGINT, signal.SIGTERM}


def wants_supervisor(argv: Sequence[str]) -> bool:
    """Whether ``gateway ARGV`` is a plain ``gateway run``: the supervisor
    then starts before the CLI imports every command (and numpy and
    SQLAlchemy with them), so it stays small (~15 MB instead of ~60)."""
    words = list(argv)
    command = next((w for i, w in enumerate(words) if not w.startswith("-")
                    and (i == 0 or words[i - 1] != "--config")), None)
    return (command == "run" and CONTROL_FD_FLAG not in words
            and not {"--no-supervisor", "-h", "--help"} & set(words))


def serves_milter(argv: Sequence[str]) -> bool:
    """Whether ``gateway ARGV`` runs the milter in this process: the
    supervisor's child, or ``gateway run --no-supervisor``."""
    words = list(argv)
    return "run" in words and bool({CONTROL_FD_FLAG, "--no-supervisor"} & set(words))


def leave_stop_signals_to_libmilter() -> None:
    """Block SIGTERM, SIGINT and SIGHUP in this thread and every thread it
    starts, before any starts (numpy's BLAS starts one at import).

    libmilter waits for these in a thread of its own (sigwait) and stops
    once the messages in flight are answered; any thread that does not block
    them may be the one the kernel picks, and its default action kills the
    process mid-message. multiprocessing's resource tracker unblocks SIGINT
    and SIGTERM in the thread that first starts it (the worker pool's), so it
    is started here, first.
    """
    from multiprocessing import resource_tracker

    resource_tracker.ensure_running()
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)


def main(argv: Sequence[str]) -> int:
    """``gateway [--config F] run [--config F] [--socket S]`` as the supervisor.
    The config is validated here first, so a broken one is one line and
    exit 2 before anything starts."""
    import argparse

    from gateway.config import load_config, socket_problem
    from gateway.schema import ConfigError

    parser = argparse.ArgumentParser(prog="gateway")
    parser.add_argument("--config")
    parser.add_argument("command")
    parser.add_argument("--socket")
    args, _ = parser.parse_known_args(list(argv))
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        for line in exc.problems:
            print(f"gateway: {line}", file=sys.stderr)
        return 2
    if args.socket and (problem := socket_problem(args.socket)):
        print(f"gateway: --socket: {problem}", file=sys.stderr)
        return 2
    child = ["--config", args.config] if args.config else []
    if args.socket:
        child += ["--socket", args.socket]
    setup_logging(config.log.level, config.log.format)
    return supervise(child, args.config)


def supervise(argv: Sequence[str], config_path: str | None = None) -> int:
    """Run ``gateway run ARGV --control-fd N`` as a child until told to stop."""
    stopping = False
    reload_read, reload_write = os.pipe()
    os.set_inheritable(reload_read, True)
    child: subprocess.Popen[bytes] | None = None

    def on_reload(_signum, _frame) -> None:
        with contextlib.suppress(OSError):
            os.write(reload_write, b"R")
        _reload_logging(config_path)

    def on_stop(signum, _frame) -> None:
        nonlocal stopping
        if not stopping:
            log.info("%s: stopping once the messages in flight are answered",
                     signal.Signals(signum).name)
        stopping = True
        if child is not None and child.poll() is None:
            child.send_signal(signal.SIGTERM if signum != signal.SIGINT else signal.SIGINT)

    signal.signal(signal.SIGHUP, on_reload)
    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    # -P: the working directory is not put on sys.path, so a folder named
    # gateway/ where an admin happens to stand cannot stand in for the
    # installed package (PYTHONPATH, set on purpose, still counts).
    pause = RESTART_PAUSE
    while True:
        # The child writes a byte here once its socket is open: a milter that
        # never got there (a config or socket problem) is not restarted, one
        # that served is, however long a busy machine took to start it.
        started = time.monotonic()
        ready_read, ready_write = os.pipe()
        os.set_inheritable(ready_write, True)
        command = [sys.executable, "-P", "-m", "gateway", "run", *argv,
                   CONTROL_FD_FLAG, str(reload_read), READY_FD_FLAG, str(ready_write)]
        child = subprocess.Popen(command, pass_fds=(reload_read, ready_write),
                                 env=dict([MALLOC_ARENAS], **os.environ))
        os.close(ready_write)
        status = _wait(child)
        served = _read_all(ready_read) != b""
        if stopping or not served:
            return status
        log.error("the milter process ended (%s); starting it again", _describe(status))
        # One that keeps dying soon after it starts is restarted less and less often.
        quick = time.monotonic() - started < MAX_RESTART_PAUSE
        pause = min(pause * 2, MAX_RESTART_PAUSE) if quick else RESTART_PAUSE
        time.sleep(pause)


def _read_all(fd: int) -> bytes:
    with os.fdopen(fd, "rb") as stream:
        return stream.read()


def _reload_logging(config_path: str | None) -> None:
    """The supervisor's own lines follow a changed ``[log]`` too (the milter
    reports a broken config; the supervisor then keeps its settings)."""
    from gateway.config import load_config
    from gateway.schema import ConfigError

    try:
        config = load_config(config_path)
    except (ConfigError, OSError):
        return
    setup_logging(config.log.level, config.log.format)


def _wait(child: subprocess.Popen[bytes]) -> int:
    while True:
        try:
            return child.wait()
        except InterruptedError:  # pragma: no cover - PEP 475 retries for us
            continue


def _describe(status: int) -> str:
    if status < 0:
        try:
            return f"killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"killed by signal {-status}"
    return f"exit status {status}"

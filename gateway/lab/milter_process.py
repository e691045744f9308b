"""Run ``gateway run`` as a child process, for tests, benchmarks and the demo.

``gateway run`` starts processes of its own: the milter under its
supervisor, the forkserver and worker processes of the checks, the
multiprocessing resource tracker. It is started in a process group of its
own, and :meth:`MilterProcess.stop` ends the whole group once the main
process is gone, so nothing outlives a test or the demo, whatever state
the gateway was in.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


class MilterProcess:
    """``gateway run --config FILE`` in the background, ready when its socket is.

    ``config_text`` is written to ``directory/gateway.toml``; it must set
    ``milter.socket``. Output goes to ``directory/milter.log``.
    """

    def __init__(self, directory: Path, config_text: str, env: dict[str, str] | None = None):
        self.directory = Path(directory)
        self.config_path = self.directory / "gateway.toml"
        self.log_path = self.directory / "milter.log"
        self.config_text = config_text
        self.env = env
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def socket_path(self) -> Path:
        for line in self.config_text.splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "socket":
                return Path(value.strip().strip('"').split(":", 1)[1])
        raise ValueError("config_text must set milter.socket to a unix socket")

    def start(self, timeout: float = 30.0) -> MilterProcess:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self.config_text)
        socket_path = self.socket_path
        if socket_path.exists():
            socket_path.unlink()
        env = dict(os.environ)
        env.update(self.env or {})
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "gateway", "run", "--config", str(self.config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # its own process group: see stop()
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self._end_group()
                raise RuntimeError(
                    f"gateway run exited with {self.process.returncode}: {self.log()[-2000:]}"
                )
            if _accepts(socket_path):
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"gateway run did not open {socket_path}: {self.log()[-2000:]}")

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM and wait (SIGKILL after ``timeout``); then end whatever
        is left of its process group. Returns its exit status."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            # libmilter notices the stop request only when its accept loop wakes
            # (up to 5 s); a connection wakes it at once.
            time.sleep(0.05)
            _accepts(self.socket_path)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._end_group()
        return self.process.returncode

    def _end_group(self, grace: float = 5.0) -> None:
        """SIGTERM to every process left in the gateway's process group (a
        milter child, a forkserver, workers, the resource tracker), SIGKILL
        to those still there after ``grace`` seconds."""
        assert self.process is not None
        group = self.process.pid  # start_new_session: the group's id is its pid
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, grace)):
            if not group_members(group):
                return
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(group, sig)
            deadline = time.monotonic() + wait
            while group_members(group) and time.monotonic() < deadline:
                time.sleep(0.05)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def __enter__(self) -> MilterProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def group_members(group: int) -> list[int]:
    """Live processes (not zombies) in process group ``group``."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        # after "pid (comm)": state, ppid, pgrp, ...
        if int(fields[2]) == group and fields[0] not in (b"Z", b"X"):
            members.append(int(entry))
    return members


def _accepts(path: Path) -> bool:
    if not path.exists():
        return False
    with socket.socket(socket.AF_UNIX) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True

"""Run ``gateway run`` as a child process, for tests, benchmarks and the demo."""

from __future__ import annotations

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
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"gateway run exited with {self.process.returncode}: {self.log()[-2000:]}"
                )
            if _accepts(socket_path):
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"gateway run did not open {socket_path}: {self.log()[-2000:]}")

    def stop(self, timeout: float = 15.0) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        # libmilter notices the stop request only when its accept loop wakes
        # (up to 5 s); a connection wakes it at once.
        time.sleep(0.05)
        _accepts(self.socket_path)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def __enter__(self) -> MilterProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _accepts(path: Path) -> bool:
    if not path.exists():
        return False
    with socket.socket(socket.AF_UNIX) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True

"""A private clamd on a unix socket, with the project's test signatures."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from gateway.paths import PROJECT_ROOT

CLAMD = shutil.which("clamd") or "/usr/sbin/clamd"
TEST_SIGNATURES = PROJECT_ROOT / "deploy" / "clamav" / "test-signatures"


class ClamdError(RuntimeError):
    pass


class ClamdInstance:
    def __init__(self, root: Path, stream_max_length: int = 10 * 1024 * 1024,
                 signatures: Path = TEST_SIGNATURES):
        self.root = Path(root)
        self.socket_path = self.root / "clamd.sock"
        self.log_file = self.root / "clamd.log"
        self.database = self.root / "db"
        self.stream_max_length = stream_max_length
        self.signatures = signatures
        self.process: subprocess.Popen[bytes] | None = None

    def write_config(self) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        if not self.database.exists():
            shutil.copytree(self.signatures, self.database,
                            ignore=shutil.ignore_patterns("*.md"))
        config = self.root / "clamd.conf"
        config.write_text(
            f"LocalSocket {self.socket_path}\n"
            "LocalSocketMode 666\n"
            f"DatabaseDirectory {self.database}\n"
            "Foreground yes\n"
            f"LogFile {self.log_file}\n"
            f"TemporaryDirectory {self.root}\n"
            f"StreamMaxLength {self.stream_max_length}\n"
            "MaxThreads 4\n"
            "ScanMail yes\n"
            "ScanArchive yes\n"
            "SelfCheck 0\n"
        )
        return config

    def start(self, timeout: float = 60.0) -> ClamdInstance:
        config = self.write_config()
        if self.socket_path.exists():
            self.socket_path.unlink()
        self.process = subprocess.Popen([CLAMD, f"--config-file={config}"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ClamdError(f"clamd exited with {self.process.returncode}: {self.log_tail()}")
            if self.ping():
                return self
            time.sleep(0.05)
        self.stop()
        raise ClamdError(f"clamd did not answer on {self.socket_path}: {self.log_tail()}")

    def ping(self) -> bool:
        try:
            with socket.socket(socket.AF_UNIX) as probe:
                probe.settimeout(2)
                probe.connect(str(self.socket_path))
                probe.sendall(b"zPING\0")
                return probe.recv(16).startswith(b"PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def kill(self) -> None:
        """Die abruptly, as a crashed clamd would."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    def __enter__(self) -> ClamdInstance:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

"""The throughput bench's anchors: rspamd (with redis for its Bayes) and
clamav-milter from Debian's packages, as private instances on loopback.

- :class:`RedisInstance`: redis-server on a free loopback port, no persistence;
- :class:`RspamdInstance`: Debian's stock ``/etc/rspamd`` with the files under
  ``tests/bench/rspamd/`` as its local config: the proxy worker in milter mode
  on a unix socket, normal and controller workers on free loopback ports,
  Bayes in the private redis, DNS only from the bench's synthetic server;
- :class:`ClamavMilterInstance`: clamav-milter with Debian's settings, asking
  a given clamd (the bench's private one, with the project's test signatures).

Each is a context manager that starts on enter and stops on exit, whatever
happened in between; every process runs in a session of its own, so that a
stop ends all of its children too. Nothing listens on a fixed port, nothing
reads or writes outside the root folder given (apart from Debian's read-only
``/etc/rspamd`` and ``/usr/share/rspamd``). Needs root, like the bench.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterable
from pathlib import Path

from tests.bench.procs import tree

TEMPLATES = Path(__file__).with_name("rspamd")
# A normal worker's log line once it has loaded the compiled regexps.
HYPERSCAN_LOADED = re.compile(r"#\d+\(normal\).*full hyperscan database .* has been loaded")
PACKAGES = {"rspamd": "rspamd", "redis-server": "redis-server", "clamav-milter": "clamav-milter"}


class AnchorError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def ensure_packages() -> None:
    """apt-get install whichever of rspamd, redis-server and clamav-milter is
    missing (Debian's packages; the bench runs as root)."""
    missing = [package for program, package in PACKAGES.items() if not _which(program)]
    if not missing:
        return
    print(f"bench: installing {', '.join(missing)} (apt-get)", file=sys.stderr, flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    result = subprocess.run(["apt-get", "install", "-y", "-q", *missing],
                            env=env, capture_output=True, text=True)
    if result.returncode != 0:  # the package lists may be missing or stale
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True)
        result = subprocess.run(["apt-get", "install", "-y", "-q", *missing],
                                env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise AnchorError(f"apt-get install {' '.join(missing)} failed: "
                          f"{result.stderr.strip()[-2000:]}")


def _which(program: str) -> str | None:
    return shutil.which(program) or shutil.which(program, path="/usr/sbin:/usr/bin:/sbin:/bin")


def _stop(process: subprocess.Popen[bytes] | None, timeout: float = 15.0) -> None:
    """SIGTERM, SIGKILL after ``timeout``; then whatever is left of its
    session (each process here starts one: start_new_session=True)."""
    if process is None:
        return
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            process.wait()
    # While a process is left in the group, the group's id cannot be given to
    # another process: the signal reaches only what this module started.
    if _group_members(process.pid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while _group_members(process.pid) and time.monotonic() < deadline:
            time.sleep(0.1)


def _group_members(group: int) -> list[int]:
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[2]) == group:
                members.append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    return members


def _wait_for(ready, process: subprocess.Popen[bytes], what: str, timeout: float,
              log) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AnchorError(f"{what} exited with {process.returncode}: {log()}")
        if ready():
            return
        time.sleep(0.1)
    raise AnchorError(f"{what} was not ready after {timeout:.0f} s: {log()}")


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return f"(no {path.name})"


def _accepts_unix(path: Path) -> bool:
    try:
        with socket.socket(socket.AF_UNIX) as probe:
            probe.settimeout(1)
            probe.connect(str(path))
        return True
    except OSError:
        return False


def _rspamc_answers(output: str) -> dict[str, str]:
    """rspamc's output per file: "Results for file: PATH (N seconds)" blocks."""
    answers = {}
    for block in output.split("Results for file: ")[1:]:
        name = block.split(" (", 1)[0].strip()
        answers[name] = block
    return answers


class RedisInstance:
    """redis-server on a free loopback port, in memory only."""

    def __init__(self, root: Path, port: int | None = None):
        self.root = Path(root)
        self.port = port or free_port()
        self.log_file = self.root / "redis.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> RedisInstance:
        self.root.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [_which("redis-server") or "redis-server", "--bind", "127.0.0.1",
             "--port", str(self.port), "--save", "", "--appendonly", "no",
             "--dir", str(self.root), "--logfile", str(self.log_file),
             "--daemonize", "no", "--protected-mode", "yes"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            _wait_for(self.ping, self.process, "redis-server", timeout,
                      lambda: _tail(self.log_file))
        except BaseException:
            self.stop()
            raise
        return self

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as probe:
                probe.sendall(b"PING\r\n")
                return probe.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def pids(self) -> list[int]:
        return tree(self.process.pid) if self.process and self.process.poll() is None else []

    def stop(self) -> None:
        _stop(self.process)

    def __enter__(self) -> RedisInstance:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class RspamdInstance:
    """A private rspamd: Debian's /etc/rspamd with ``tests/bench/rspamd/`` as
    its local config. ``milter`` is the spec for Postfix's smtpd_milters."""

    def __init__(self, root: Path, dns_port: int, redis_port: int):
        self.root = Path(root)
        self.dns_port = dns_port
        self.redis_port = redis_port
        self.normal_port = free_port()
        self.controller_port = free_port()
        self.local_dir = self.root / "local"
        self.run_dir = self.root / "run"
        self.db_dir = self.root / "db"
        self.log_dir = self.root / "log"
        self.log_file = self.log_dir / "rspamd.log"
        self.milter_socket = self.run_dir / "milter.sock"
        self.learn_errors: list[str] = []
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def milter(self) -> str:
        return f"unix:{self.milter_socket}"

    @property
    def controller(self) -> str:
        return f"127.0.0.1:{self.controller_port}"

    def write_config(self) -> None:
        for directory in (self.run_dir, self.db_dir, self.log_dir, self.root / "tmp"):
            directory.mkdir(parents=True, exist_ok=True)
        values = {"ROOT": str(self.root), "DNS_PORT": str(self.dns_port),
                  "REDIS_PORT": str(self.redis_port), "NORMAL_PORT": str(self.normal_port),
                  "CONTROLLER_PORT": str(self.controller_port)}
        for template in TEMPLATES.rglob("*"):
            if not template.is_file() or template.suffix == ".md":
                continue
            text = template.read_text()
            for name, value in values.items():
                text = text.replace(f"@{name}@", value)
            if re.search(r"@[A-Z_]+@", text):
                raise AnchorError(f"unfilled placeholder in {template}")
            target = self.local_dir / template.relative_to(TEMPLATES)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)

    def command(self) -> list[str]:
        return [_which("rspamd") or "rspamd", "-f", "-i", "-u", "root", "-g", "root",
                "-c", "/etc/rspamd/rspamd.conf", "-p", str(self.run_dir / "rspamd.pid"),
                f"--var=LOCAL_CONFDIR={self.local_dir}", f"--var=RUNDIR={self.run_dir}",
                f"--var=DBDIR={self.db_dir}", f"--var=LOGDIR={self.log_dir}"]

    def start(self, timeout: float = 180.0) -> RspamdInstance:
        self.write_config()
        if self.milter_socket.exists():
            self.milter_socket.unlink()
        check = subprocess.run([_which("rspamadm") or "rspamadm", *self.command()[-4:],
                                "configtest", "-c", "/etc/rspamd/rspamd.conf"],
                               capture_output=True, text=True)
        if check.returncode != 0:
            raise AnchorError(f"rspamadm configtest: {check.stdout[-1500:]}{check.stderr[-1500:]}")
        with open(self.root / "rspamd.out", "ab") as out:
            self.process = subprocess.Popen(self.command(), stdout=out, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        try:
            _wait_for(self.ready, self.process, "rspamd", timeout, self.log_tail)
        except BaseException:
            self.stop()
            raise
        return self

    def ready(self) -> bool:
        return (_accepts_unix(self.milter_socket)
                and self._ping(self.controller_port) and self._ping(self.normal_port))

    @staticmethod
    def _ping(port: int) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as reply:
                return reply.read().strip() == b"pong"
        except OSError:
            return False

    def hyperscan_ready(self, timeout: float = 300.0) -> bool:
        """Wait until the normal workers scan with hyperscan rather than
        PCRE: a helper process compiles the regexps after the start (seconds
        to minutes), and a measurement taken before would be slower than
        rspamd in service. False if the log does not say so in time."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if HYPERSCAN_LOADED.search(self.log_text()):
                return True
            if self.process is not None and self.process.poll() is not None:
                raise AnchorError(f"rspamd exited: {self.log_tail()}")
            time.sleep(0.5)
        return False

    def learn(self, spam: Iterable[Path], ham: Iterable[Path]) -> dict[str, int]:
        """Train Bayes with ``rspamc learn_spam`` / ``learn_ham`` through the
        controller; returns how many messages of each class it learned. A
        file it did not learn is tried once more; ``learn_errors`` then has
        rspamd's reasons (it declines mail its Bayes already classifies with
        confidence: "all learn conditions denied learning ...")."""
        learned: dict[str, int] = {}
        self.learn_errors = []
        for command, files in (("learn_spam", list(spam)), ("learn_ham", list(ham))):
            learned[command] = 0
            for attempt in range(2):
                failed = []
                for start in range(0, len(files), 100):  # keep the command line short
                    batch = files[start:start + 100]
                    result = subprocess.run(
                        [_which("rspamc") or "rspamc", "-h", self.controller, "-n", "2",
                         "-t", "60", command, *map(str, batch)],
                        capture_output=True, text=True, timeout=900)
                    answers = _rspamc_answers(result.stdout)
                    for path in batch:
                        answer = answers.get(str(path), "no answer")
                        if "success = true" in answer:
                            learned[command] += 1
                        else:
                            failed.append(path)
                            if attempt:
                                reason = re.search(r'error = "([^"]*)"', answer)
                                self.learn_errors.append(
                                    reason.group(1) if reason
                                    else (answer.strip() or result.stderr.strip())[-300:])
                files = failed
                if not files:
                    break
        return learned

    def bayes_answers(self, files: Iterable[Path]) -> bool:
        """Whether Bayes gives a verdict (BAYES_SPAM or BAYES_HAM) on these
        messages, scanned by the normal worker: it stays silent until it has
        learned ``min_learns`` (200) messages of each class. False without
        a message to scan."""
        files = list(files)
        if not files:
            return False
        for path in files:
            result = subprocess.run(
                [_which("rspamc") or "rspamc", "-h", f"127.0.0.1:{self.normal_port}",
                 "-t", "60", "symbols", str(path)],
                capture_output=True, text=True, timeout=120)
            if not re.search(r"Symbol: BAYES_(SPAM|HAM)", result.stdout):
                return False
        return True

    def pids(self) -> list[int]:
        return tree(self.process.pid) if self.process and self.process.poll() is None else []

    def log_text(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 20) -> str:
        return (_tail(self.log_file, lines) + "\n" + _tail(self.root / "rspamd.out", lines)).strip()

    def stop(self) -> None:
        _stop(self.process, timeout=20)

    def __enter__(self) -> RspamdInstance:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class ClamavMilterInstance:
    """clamav-milter with Debian's settings (quarantine infected mail in
    Postfix's hold queue, defer on failure, replace X-Virus-Scanned), asking
    the clamd on ``clamd_socket``."""

    def __init__(self, root: Path, clamd_socket: Path):
        self.root = Path(root)
        self.clamd_socket = Path(clamd_socket)
        self.socket_path = self.root / "clamav-milter.sock"
        self.log_file = self.root / "clamav-milter.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def milter(self) -> str:
        return f"unix:{self.socket_path}"

    def write_config(self) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        config = self.root / "clamav-milter.conf"
        config.write_text(
            f"MilterSocket {self.socket_path}\n"
            "MilterSocketMode 666\n"
            "FixStaleSocket true\n"
            "Foreground true\n"
            f"PidFile {self.root / 'clamav-milter.pid'}\n"
            f"ClamdSocket unix:{self.clamd_socket}\n"
            "ReadTimeout 120\n"
            # Debian's /etc/clamav/clamav-milter.conf from here on.
            "OnClean Accept\n"
            "OnInfected Quarantine\n"
            "OnFail Defer\n"
            "AddHeader Replace\n"
            "LogSyslog false\n"
            "LogVerbose false\n"
            "LogInfected Off\n"
            "LogClean Off\n"
            "MaxFileSize 25M\n"
            "SupportMultipleRecipients false\n"
            f"TemporaryDirectory {self.root}\n"
            f"LogFile {self.log_file}\n"
            "LogTime true\n"
        )
        return config

    def start(self, timeout: float = 30.0) -> ClamavMilterInstance:
        config = self.write_config()
        self.process = subprocess.Popen(
            [_which("clamav-milter") or "clamav-milter", f"--config-file={config}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            _wait_for(lambda: _accepts_unix(self.socket_path), self.process, "clamav-milter",
                      timeout, lambda: _tail(self.log_file))
        except BaseException:
            self.stop()
            raise
        return self

    def pids(self) -> list[int]:
        return tree(self.process.pid) if self.process and self.process.poll() is None else []

    def stop(self) -> None:
        _stop(self.process)

    def __enter__(self) -> ClamavMilterInstance:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

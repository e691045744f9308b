"""A private Exim 4 on loopback, for the tests of deploy/exim/.

Debian's own Exim 4.96, never installed (installing it would remove
Postfix):

- ``apt-get download exim4-daemon-heavy`` and the libraries it needs that
  this machine lacks, unpacked with ``dpkg -x`` into a cache folder
  (:func:`fetch`, through tests/lab/debs.py; ``python -m tests.lab.exim``
  does it ahead of the tests).
  The heavy daemon, because Debian builds the light one without content
  scanning: it has no ``spam =`` condition at all.
- Run under ``unshare --mount``: Exim looks up its compiled-in user
  ``Debian-exim`` before it reads any config, so a private mount namespace
  gets copies of /etc/passwd and /etc/group that have that user.
- The copy of the binary is not setuid (the unpacked libraries come through
  ``LD_LIBRARY_PATH``, which a setuid program ignores), so the config sets
  ``exim_path`` to it and ``deliver_drop_privilege``.

The config is the test's own main section, ``GATEWAY_SCAN_ADDRESS`` and
deploy/exim/gateway-main.conf included verbatim, and a DATA ACL that
includes deploy/exim/gateway-acl.conf verbatim before its ``accept``.
Everything is delivered into one maildir.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import smtplib
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from gateway.lab.postfix import free_port
from gateway.paths import PROJECT_ROOT
from tests.lab import debs

PACKAGE = "exim4-daemon-heavy"
# Dependencies the binary does not need at all (maintainer scripts, docs).
NOT_NEEDED = frozenset({"exim4-base", "debconf", "debconf-2.0"})
DEPLOY = PROJECT_ROOT / "deploy" / "exim"
USER = "Debian-exim"


class EximUnavailable(RuntimeError):
    """Exim cannot be fetched or run here; the tests skip with this reason."""


@dataclass(frozen=True)
class EximBinary:
    exim: Path  # the binary (not setuid)
    libraries: str  # LD_LIBRARY_PATH for the libraries unpacked beside it


def fetch() -> EximBinary:
    """Exim from Debian's packages, downloaded and unpacked once (tests/lab/debs.py)."""
    try:
        root = debs.unpacked("exim", [PACKAGE], with_dependencies=True,
                             not_needed=NOT_NEEDED)
    except debs.UnpackError as exc:
        raise EximUnavailable(str(exc)) from None
    binary = root / "usr" / "sbin" / "exim4"
    if missing := debs.missing_libraries(binary, root):
        raise EximUnavailable(f"Exim's libraries are missing: {', '.join(missing)}")
    return EximBinary(binary, debs.library_path(root))


# -- a private instance -------------------------------------------------------------


@dataclass(frozen=True)
class QueuedMessage:
    id: str
    frozen: bool


class EximInstance:
    """Exim listening on a free loopback port, asking the gateway's scan
    listener at ``scan_address`` ("host port", Exim's spamd_address form)."""

    def __init__(self, directory: Path, scan_address: str, binary: EximBinary | None = None,
                 port: int | None = None):
        self.directory = Path(directory)
        self.scan_address = scan_address
        self.binary = binary or fetch()
        self.port = port or free_port()
        self.config = self.directory / "exim.conf"
        self.spool = self.directory / "spool"
        self.maildir = self.directory / "mail"
        self.logs = self.directory / "log"
        self.process: subprocess.Popen[bytes] | None = None

    # -- setting up ---------------------------------------------------------------

    def write_config(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        os.chmod(self.directory, 0o755)
        passwd, _group = self._private_user_files()
        uid = int(passwd.read_text().splitlines()[-1].split(":")[2])
        for folder in (self.spool, self.maildir, self.logs):
            folder.mkdir(exist_ok=True)
            os.chown(folder, uid, uid)
        exim = self.directory / "exim4"  # exim_path: where it re-executes itself
        if not exim.exists():
            shutil.copy2(self.binary.exim, exim)
            os.chmod(exim, 0o755)
        self.config.write_text(f"""\
GATEWAY_SCAN_ADDRESS = {self.scan_address}
.include {DEPLOY / 'gateway-main.conf'}

primary_hostname = mx.exim.test
qualify_domain = exim.test
daemon_smtp_ports = {self.port}
local_interfaces = 127.0.0.1
spool_directory = {self.spool}
log_file_path = {self.logs}/%slog
pid_file_path = {self.directory}/exim.pid
exim_path = {exim}
keep_environment = LD_LIBRARY_PATH
deliver_drop_privilege
never_users = root
host_lookup =
rfc1413_hosts =
tls_advertise_hosts =
queue_run_max = 0
acl_smtp_rcpt = acl_check_rcpt
acl_smtp_data = acl_check_data

begin acl

acl_check_rcpt:
  accept

acl_check_data:
.include {DEPLOY / 'gateway-acl.conf'}
  accept

begin routers

everyone:
  driver = accept
  transport = maildir

begin transports

maildir:
  driver = appendfile
  directory = {self.maildir}
  maildir_format
  create_directory
  user = {USER}
  delivery_date_add
  envelope_to_add
  return_path_add
""")
        os.chmod(self.config, 0o644)

    def _private_user_files(self) -> tuple[Path, Path]:
        """Copies of /etc/passwd and /etc/group with Debian-exim added, under an
        id nobody on this machine has."""
        passwd, group = self.directory / "passwd", self.directory / "group"
        if passwd.exists():
            return passwd, group
        users = Path("/etc/passwd").read_text()
        groups = Path("/etc/group").read_text()
        taken = {line.split(":")[2] for line in users.splitlines() if line.count(":") >= 3}
        taken |= {line.split(":")[2] for line in groups.splitlines() if line.count(":") >= 2}
        number = next(str(n) for n in range(64990, 60000, -1) if str(n) not in taken)
        passwd.write_text(users.rstrip("\n") + f"\n{USER}:x:{number}:{number}:Exim (gateway "
                          "tests):/nonexistent:/usr/sbin/nologin\n")
        group.write_text(groups.rstrip("\n") + f"\n{USER}:x:{number}:\n")
        for path in (passwd, group):
            os.chmod(path, 0o644)
        return passwd, group

    def command(self, *arguments: str) -> list[str]:
        """``exim -C our.conf ARGS`` inside a mount namespace of its own."""
        passwd, group = self._private_user_files()
        script = ('mount --bind "$1" /etc/passwd && mount --bind "$2" /etc/group && '
                  'shift 2 && exec "$@"')
        return ["unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c",
                script, "sh", str(passwd), str(group), "env",
                f"LD_LIBRARY_PATH={self.binary.libraries}", str(self.directory / "exim4"),
                "-C", str(self.config), *arguments]

    def exim(self, *arguments: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(self.command(*arguments), capture_output=True, text=True,
                                timeout=60)
        if check and result.returncode != 0:
            raise RuntimeError(f"exim {' '.join(arguments)}: exit {result.returncode}: "
                               f"{(result.stderr or result.stdout).strip()[-800:]}")
        return result

    # -- running ----------------------------------------------------------------------

    def start(self, timeout: float = 20.0) -> EximInstance:
        if os.geteuid() != 0:
            raise EximUnavailable("a private Exim needs root (a mount namespace, a port, "
                                  "its own user)")
        self.write_config()
        checked = self.exim("-bV", check=False)
        if checked.returncode != 0:
            raise RuntimeError(f"exim -bV: {(checked.stderr or checked.stdout)[-800:]}")
        with open(self.directory / "daemon.out", "ab") as output:
            self.process = subprocess.Popen(self.command("-bdf"), stdout=output,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"exim exited with {self.process.returncode}: "
                                   f"{self.log()[-1500:]}")
            with contextlib.suppress(OSError), smtplib.SMTP("127.0.0.1", self.port,
                                                            timeout=5) as probe:
                probe.noop()
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"exim did not listen on {self.port}: {self.log()[-1500:]}")

    def stop(self) -> None:
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        self.process = None

    def __enter__(self) -> EximInstance:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- looking ------------------------------------------------------------------------

    def log(self) -> str:
        texts = [(self.directory / "daemon.out")]
        texts += sorted(self.logs.glob("*log"))
        return "\n".join(path.read_text(errors="replace") for path in texts if path.exists())

    def queue(self) -> list[QueuedMessage]:
        """``exim -bp``: the messages in the queue, and whether each is frozen."""
        listing = self.exim("-bp").stdout
        found = re.finditer(r"^\s*\S+\s+\S+\s+(\S{16,23})\s+<[^>]*>(.*)$", listing, re.M)
        return [QueuedMessage(m.group(1), "*** frozen ***" in m.group(2)) for m in found]

    def delivered(self) -> list[bytes]:
        """The messages delivered so far, oldest first."""
        folder = self.maildir / "new"
        if not folder.exists():
            return []
        paths = sorted(folder.iterdir(), key=lambda p: p.stat().st_mtime_ns)
        return [path.read_bytes() for path in paths]


if __name__ == "__main__":  # fetch ahead of the tests (.ci/run)
    try:
        print(f"exim: {fetch().exim}")
    except EximUnavailable as exc:
        print(f"exim: not available: {exc}", file=sys.stderr)
        sys.exit(1)

"""A private Exim 4 on loopback, for the tests of deploy/exim/.

Debian's own Exim 4.96, never installed (installing it would remove
Postfix):

- ``apt-get download exim4-daemon-heavy`` and the libraries it needs that
  this machine lacks, unpacked with ``dpkg -x`` into a cache folder
  (:func:`fetch`; ``python -m tests.lab.exim`` does it ahead of the tests).
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
import fcntl
import os
import re
import shutil
import signal
import smtplib
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from gateway.lab.postfix import free_port
from gateway.paths import PROJECT_ROOT

PACKAGE = "exim4-daemon-heavy"
# Dependencies the binary does not need at all (maintainer scripts, docs).
NOT_NEEDED = {"exim4-base", "debconf", "debconf-2.0"}
DEPLOY = PROJECT_ROOT / "deploy" / "exim"
USER = "Debian-exim"


class EximUnavailable(RuntimeError):
    """Exim cannot be fetched or run here; the tests skip with this reason."""


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "gateway-tests" / "exim"


@dataclass(frozen=True)
class EximBinary:
    exim: Path  # the binary (not setuid)
    libraries: str  # LD_LIBRARY_PATH for the libraries unpacked beside it


def fetch(cache: Path | None = None) -> EximBinary:
    """Exim from Debian's packages, downloaded and unpacked once into ``cache``."""
    cache = cache or cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another test run may be fetching too
        root = cache / "root"
        binary = root / "usr" / "sbin" / "exim4"
        if not binary.exists():
            _download_and_unpack(cache, root)
    libraries = f"{root}/usr/lib/x86_64-linux-gnu:{root}/usr/lib"
    missing = _missing_libraries(binary, libraries)
    if missing:
        raise EximUnavailable(f"Exim's libraries are missing: {', '.join(missing)}")
    return EximBinary(binary, libraries)


def _download_and_unpack(cache: Path, root: Path) -> None:
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise EximUnavailable("no apt-get/dpkg here to fetch Debian's Exim")
    with tempfile.TemporaryDirectory(dir=cache) as scratch:
        work = Path(scratch)
        os.chmod(work, 0o755)  # apt's _apt user writes the download here
        _apt_download(work, [PACKAGE])
        (deb,) = work.glob(f"{PACKAGE}_*.deb")
        depends = subprocess.run(["dpkg-deb", "-f", str(deb), "Depends"], capture_output=True,
                                 text=True, check=True).stdout
        wanted = [name for name in _first_alternatives(depends)
                  if name not in NOT_NEEDED and not _installed(name)]
        if wanted:
            _apt_download(work, wanted)
        unpacked = work / "root"
        for package in sorted(work.glob("*.deb")):
            subprocess.run(["dpkg", "-x", str(package), str(unpacked)], check=True,
                           capture_output=True)
        binary = unpacked / "usr" / "sbin" / "exim4"
        os.chmod(binary, 0o755)  # not setuid: see the module's docstring
        if root.exists():
            shutil.rmtree(root)
        unpacked.rename(root)


def _apt_download(directory: Path, packages: list[str]) -> None:
    result = subprocess.run(["apt-get", "download", "-q", *packages], cwd=directory,
                            capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        why = " ".join(line for line in result.stderr.splitlines() if line.startswith("E:"))
        raise EximUnavailable(f"apt-get download {' '.join(packages)} failed: "
                              f"{why or result.stderr.strip()[-300:]} (apt-get update first?)")


def _first_alternatives(depends: str) -> list[str]:
    names = []
    for clause in depends.split(","):
        first = clause.split("|")[0].strip()
        names.append(re.split(r"[\s(:]", first, maxsplit=1)[0])
    return [name for name in names if name]


def _installed(package: str) -> bool:
    status = subprocess.run(["dpkg-query", "-W", "-f=${Status}", package],
                            capture_output=True, text=True)
    return status.returncode == 0 and status.stdout.endswith("installed")


def _missing_libraries(binary: Path, libraries: str) -> list[str]:
    result = subprocess.run(["ldd", str(binary)], capture_output=True, text=True,
                            env={**os.environ, "LD_LIBRARY_PATH": libraries})
    return [line.split()[0] for line in result.stdout.splitlines() if "not found" in line]


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

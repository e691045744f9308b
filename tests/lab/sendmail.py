"""A private Sendmail 8.17 on loopback, with the gateway attached as the
admin would attach it: ``deploy/sendmail/gateway.mc`` as shipped.

Debian's ``sendmail-bin`` would replace Postfix if installed, so its
packages are unpacked into a folder (:mod:`tests.lab.debs`) and the daemon
runs from there, as root, in a mount namespace of its own (``unshare -m``)
where two files are its own:

- ``/etc/hosts``, naming this machine: Sendmail looks its own name up
  before it reads a line of config, through the system's resolver (which
  answers nothing here), and sleeps a minute when it finds none;
- ``/dev/log``: there is no syslog here; a socket this module reads into
  ``maillog`` stands in for it, so a test can read what Sendmail logged;
- ``/run/gateway``, the folder of the gateway's milter socket, as the
  ``.mc`` file names it: Sendmail refuses a socket with a world-writable
  folder (such as /tmp) anywhere on its path, so the test's folder is
  mounted there, on a /run of the namespace's own.

Its config is built with Sendmail's own m4 files from a test ``.mc`` (a
queue, pid and status file under the instance's folder, listeners on free
loopback ports, every recipient relayed to a sink) and the lines of
``deploy/sendmail/gateway.mc``, with only the release port changed. The
queue commands (``mailq -qQ``, ``sendmail -Q -qQ -qI…``) run in the same
namespace (``nsenter``), with the same config.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

from gateway.lab.milter_process import group_members
from gateway.lab.postfix import free_port
from gateway.paths import PROJECT_ROOT
from tests.lab.debs import UnpackError, library_path, missing_libraries, unpacked

GATEWAY_MC = PROJECT_ROOT / "deploy" / "sendmail" / "gateway.mc"
# sendmail-bin's libraries a machine with Postfix may lack, and m4 for the .mc.
PACKAGES = ("sendmail-bin", "sendmail-base", "sendmail-cf", "m4", "liblockfile1", "libwrap0")
# What deploy/sendmail/gateway.mc names: the socket's folder is mounted at
# its place, the release port replaced by a free one.
SHIPPED_SOCKET = Path("/run/gateway/milter.sock")
SHIPPED_RELEASE_PORT = "10026"
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")

TEST_MC = """\
divert(-1)
divert(0)dnl
VERSIONID(`gateway tests')dnl
OSTYPE(`linux')dnl
define(`confDOMAIN_NAME', `mx.gateway.test')dnl
define(`QUEUE_DIR', `{root}/queue')dnl
define(`STATUS_FILE', `{root}/statistics')dnl
define(`ALIAS_FILE', `{root}/aliases')dnl
define(`HELP_FILE', `{root}/helpfile')dnl
define(`confPID_FILE', `{root}/sendmail.pid')dnl
define(`confSERVICE_SWITCH_FILE', `{root}/service.switch')dnl
define(`confHOSTS_FILE', `{root}/hosts')dnl
define(`confDONT_PROBE_INTERFACES', `True')dnl
define(`confLOG_LEVEL', `14')dnl
define(`confDEF_USER_ID', `daemon:daemon')dnl
define(`confTO_IDENT', `0s')dnl
define(`SMART_HOST', `relay:[127.0.0.1]')dnl
define(`RELAY_MAILER_ARGS', `TCP $h {relay_port}')dnl
FEATURE(`no_default_msa')dnl
FEATURE(`promiscuous_relay')dnl
FEATURE(`accept_unresolvable_domains')dnl
FEATURE(`nocanonify')dnl
DAEMON_OPTIONS(`Family=inet, Name=MTA, Port={smtp_port}, Addr=127.0.0.1')dnl
{gateway_mc}
MAILER(`smtp')dnl
"""


class SendmailError(RuntimeError):
    pass


def sendmail_root() -> Path:
    """Debian's Sendmail, unpacked (fetched on first use); raises
    UnpackError with the reason when it cannot be had."""
    root = unpacked("sendmail", PACKAGES)
    binary = root / "usr/libexec/sendmail/sendmail"
    if not binary.exists():
        raise UnpackError("sendmail-bin unpacked without usr/libexec/sendmail/sendmail")
    missing = missing_libraries(binary, root)
    if missing:
        raise UnpackError(f"Sendmail's libraries are missing: {', '.join(missing)}")
    return root


def unavailable() -> str | None:
    """Why a private Sendmail cannot run here, or None."""
    if os.geteuid() != 0:
        return "a private Sendmail runs in a mount namespace of its own: needs root"
    for tool in ("unshare", "nsenter", "mount"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (util-linux)"
    try:
        sendmail_root()
    except UnpackError as exc:
        return f"Sendmail's Debian packages cannot be had: {exc}"
    return None


class Syslog:
    """A unix datagram socket where syslog(3) writes; each message becomes
    one line of a file, without its <priority>."""

    def __init__(self, path: Path, log_file: Path):
        self.path = path
        self.log_file = log_file
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        self._socket.bind(str(path))
        os.chmod(path, 0o666)
        self._socket.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, name="sendmail-syslog", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        with open(self.log_file, "ab", buffering=0) as out:
            while not self._stop.is_set():
                try:
                    data = self._socket.recv(65536)
                except TimeoutError:
                    continue
                except OSError:
                    return
                out.write(re.sub(rb"^<\d+>", b"", data).rstrip(b"\n\0") + b"\n")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self._socket.close()


class SendmailInstance:
    """One private Sendmail daemon. ``milter_socket``: the gateway's unix
    socket (None: the ``.mc`` without the gateway's lines)."""

    def __init__(self, root: Path, relay_port: int, milter_socket: Path | None,
                 smtp_port: int | None = None, release_port: int | None = None,
                 queue_interval: str = "1h"):
        self.root = Path(root)
        self.relay_port = relay_port
        self.milter_socket = milter_socket
        self.smtp_port = smtp_port or free_port()
        self.release_port = release_port or free_port()
        self.queue_interval = queue_interval
        self.debs = sendmail_root()
        self.binary = self.debs / "usr/libexec/sendmail/sendmail"
        self.cf = self.root / "sendmail.cf"
        self.log_file = self.root / "maillog"
        self.process: subprocess.Popen[bytes] | None = None
        self.syslog: Syslog | None = None

    # -- configuration ---------------------------------------------------------

    def gateway_mc(self) -> str:
        """deploy/sendmail/gateway.mc with this instance's release port."""
        if self.milter_socket is None:
            return ""
        text = GATEWAY_MC.read_text()
        socket_name = f"unix:{SHIPPED_SOCKET}"
        for shipped in (socket_name, f"Port={SHIPPED_RELEASE_PORT}"):
            if shipped not in text:
                raise SendmailError(f"{GATEWAY_MC} no longer has {shipped!r}")
        return (text.replace(socket_name, f"unix:{SHIPPED_SOCKET.parent / self.milter_socket.name}")
                .replace(f"Port={SHIPPED_RELEASE_PORT}", f"Port={self.release_port}"))

    def mc(self) -> str:
        return TEST_MC.format(root=self.root, relay_port=self.relay_port,
                              smtp_port=self.smtp_port, gateway_mc=self.gateway_mc())

    def write_config(self) -> None:
        for directory in (self.root, self.root / "dev"):
            directory.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o755)
        queue = self.root / "queue"
        queue.mkdir(mode=0o700, exist_ok=True)
        for name in ("aliases", "statistics", "helpfile"):
            (self.root / name).touch()
        (self.root / "service.switch").write_text("hosts files\naliases files\n")
        (self.root / "hosts").write_text(
            f"127.0.0.1 localhost mx.gateway.test {socket.gethostname()}\n")
        (self.root / "sendmail.mc").write_text(self.mc())
        cf_dir = self.debs / "usr/share/sendmail/cf"
        m4 = shutil.which("m4") or str(self.debs / "usr/bin/m4")
        result = subprocess.run([m4, f"-D_CF_DIR_={cf_dir}/", str(cf_dir / "m4/cf.m4"),
                                 str(self.root / "sendmail.mc")],
                                capture_output=True, text=True, timeout=60)
        if result.returncode != 0 or "ERROR" in result.stderr:
            raise SendmailError(f"m4 could not build sendmail.cf: {result.stderr.strip()}")
        self.cf.write_text(result.stdout)
        os.chmod(self.cf, 0o644)

    # -- life cycle ------------------------------------------------------------

    def namespace_script(self, *command: str) -> list[str]:
        """``command`` in a new mount namespace with our /etc/hosts, /dev/log
        and /run/gateway: /dev becomes a folder of ours holding the devices
        Sendmail opens and the log socket."""
        dev = self.root / "dev"
        binds = [f'touch "{dev}/{name}" && mount --bind "/dev/{name}" "{dev}/{name}"'
                 for name in DEVICES]
        steps = ["mount --make-rprivate /", *binds, f'mount --rbind "{dev}" /dev',
                 f'mount --bind "{self.root}/hosts" /etc/hosts']
        if self.milter_socket is not None:
            run = SHIPPED_SOCKET.parent
            steps += [f"mount -t tmpfs -o mode=755 tmpfs {run.parent}", f"mkdir {run}",
                      f'mount --bind "{self.milter_socket.parent}" {run}']
        script = " && ".join([*steps, 'exec "$@"'])
        return ["unshare", "--mount", "--", "sh", "-c", script, "sendmail-namespace",
                *command]

    def environment(self) -> dict[str, str]:
        return {**os.environ, "LD_LIBRARY_PATH": library_path(self.debs)}

    def start(self, timeout: float = 30.0) -> SendmailInstance:
        self.write_config()
        self.syslog = Syslog(self.root / "dev" / "log", self.log_file)
        with open(self.root / "sendmail.out", "ab") as out:
            self.process = subprocess.Popen(
                self.namespace_script(str(self.binary), "-C", str(self.cf), "-bD",
                                      f"-q{self.queue_interval}"),
                stdout=out, stderr=subprocess.STDOUT, env=self.environment(),
                start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.stop()
                raise SendmailError(f"sendmail exited with {self.process.returncode}: "
                                    f"{self.output()[-1500:]} {self.log_tail()}")
            if _greets(self.smtp_port):
                return self
            time.sleep(0.05)
        self.stop()
        raise SendmailError(f"sendmail did not greet on port {self.smtp_port} within "
                            f"{timeout:g}s: {self.output()[-1500:]} {self.log_tail()}")

    def stop(self) -> None:
        """SIGTERM to the daemon, then to whatever of its session is left
        (per-connection children, queue runners), SIGKILL after 5 s."""
        if self.process is not None:
            group = self.process.pid  # start_new_session: the group's id is its pid
            for sig in (signal.SIGTERM, signal.SIGKILL):
                if self.process.poll() is None or group_members(group):
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(group, sig)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.process.wait(5)
                deadline = time.monotonic() + 5
                while group_members(group) and time.monotonic() < deadline:
                    time.sleep(0.05)
                if not group_members(group):
                    break
        if self.syslog is not None:
            self.syslog.close()
            self.syslog = None

    def __enter__(self) -> SendmailInstance:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the admin's commands ----------------------------------------------------

    def command(self, *arguments: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """``sendmail -C <our cf> ARGUMENTS`` in the daemon's mount namespace
        (its /dev/log and /etc/hosts), as the admin would run it."""
        if self.process is None or self.process.poll() is not None:
            raise SendmailError("the Sendmail daemon is not running")
        return subprocess.run(
            ["nsenter", f"--target={self.process.pid}", "--mount", "--",
             str(self.binary), "-C", str(self.cf), *arguments],
            capture_output=True, text=True, timeout=timeout, env=self.environment())

    def quarantined(self) -> list[str]:
        """Queue ids of the messages in Sendmail's quarantine (``mailq -qQ``)."""
        result = self.command("-bp", "-qQ")
        if result.returncode != 0:
            raise SendmailError(f"mailq -qQ failed: {result.stderr.strip()}")
        return re.findall(r"^([0-9A-Za-z]{14})\*?\s", result.stdout, re.MULTILINE)

    def queued(self) -> list[str]:
        """Queue ids of the messages in the normal queue (``mailq``)."""
        result = self.command("-bp")
        return re.findall(r"^([0-9A-Za-z]{14})\*?\s", result.stdout, re.MULTILINE)

    # -- inspection ------------------------------------------------------------

    def output(self) -> str:
        try:
            return (self.root / "sendmail.out").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_text(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])


def _greets(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.settimeout(5)
            greeting = s.recv(512).startswith(b"220")
            s.sendall(b"QUIT\r\n")
            return greeting
    except OSError:
        return False


if __name__ == "__main__":  # .ci/run fetches Sendmail ahead of the tests
    import sys

    try:
        print(f"Sendmail unpacked in {sendmail_root()}")
    except UnpackError as exc:
        sys.exit(f"Sendmail for tests/test_sendmail.py: {exc}")

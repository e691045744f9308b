"""A private Postfix instance on loopback, for tests, benchmarks and the demo.

It has its own config, queue and data directories under one root folder,
listens on 127.0.0.1 only, relays every recipient to a sink on loopback and
logs to a file (there is no syslog here). It needs root, like any Postfix.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path

from gateway.paths import PROJECT_ROOT

POSTFIX = shutil.which("postfix") or "/usr/sbin/postfix"
RELEASE_LISTENER = PROJECT_ROOT / "deploy" / "postfix" / "master.cf"
SUBMISSION_LISTENER = PROJECT_ROOT / "deploy" / "postfix" / "submission.cf"
SASLPASSWD = shutil.which("saslpasswd2") or "/usr/sbin/saslpasswd2"
OPENSSL = shutil.which("openssl") or "/usr/bin/openssl"
POSTMAP = shutil.which("postmap") or "/usr/sbin/postmap"

MASTER_CF = """\
{listen}
{reinject}
pickup     unix  n - n 60 1 pickup
cleanup    unix  n - n -  0 cleanup
qmgr       unix  n - n 300 1 qmgr
rewrite    unix  - - n -  - trivial-rewrite
bounce     unix  - - n -  0 bounce
defer      unix  - - n -  0 bounce
trace      unix  - - n -  0 bounce
verify     unix  - - n -  1 verify
flush      unix  n - n 1000? 0 flush
proxymap   unix  - - n -  - proxymap
proxywrite unix  - - n -  1 proxymap
smtp       unix  - - n -  - smtp
relay      unix  - - n -  - smtp
showq      unix  n - n -  - showq
error      unix  - - n -  - error
retry      unix  - - n -  - error
discard    unix  - - n -  - discard
local      unix  - n n -  - local
virtual    unix  - n n -  - virtual
lmtp       unix  - - n -  - lmtp
anvil      unix  - - n -  1 anvil
tlsmgr     unix  - - n 1000? 1 tlsmgr
scache     unix  - - n -  1 scache
postlog    unix-dgram n - n - 1 postlogd
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class PostfixError(RuntimeError):
    pass


class PostfixInstance:
    """One private Postfix. ``milter`` is a Postfix milter spec such as
    ``unix:/path/milter.sock``, or None for bare Postfix. With ``sasl``
    (login -> password) it listens as the submission service of
    ``deploy/postfix/submission.cf``: TLS with a certificate of its own,
    then AUTH, Cyrus SASL reading these users from a sasldb2 file, each
    sending as the addresses ``sender_logins`` gives it (address -> login;
    by default each login as itself), in :attr:`sender_logins_file`."""

    def __init__(
        self,
        root: Path,
        relay_port: int,
        milter: str | None = None,
        smtp_port: int | None = None,
        reinject_port: int | None = None,
        settings: Mapping[str, str] | None = None,
        sasl: Mapping[str, str] | None = None,
        sender_logins: Mapping[str, str] | None = None,
    ):
        self.root = Path(root)
        self.relay_port = relay_port
        self.milter = milter
        self.smtp_port = smtp_port or free_port()
        self.reinject_port = reinject_port
        self.settings = dict(settings or {})
        self.sasl = dict(sasl or {})
        self.sender_logins = dict(sender_logins or {login: login for login in self.sasl})
        self.config_dir = self.root / "etc"
        self.queue_dir = self.root / "queue"
        self.data_dir = self.root / "data"
        self.log_file = self.root / "maillog"
        self.sender_logins_file = self.config_dir / "sender_logins"

    # -- configuration ---------------------------------------------------------

    def main_cf(self) -> dict[str, str]:
        settings = {
            "compatibility_level": "3.6",
            "queue_directory": str(self.queue_dir),
            "data_directory": str(self.data_dir),
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "myhostname": "mx.gateway.test",
            "mydomain": "gateway.test",
            "mydestination": "",
            "local_recipient_maps": "",
            "alias_maps": "",
            "alias_database": "",
            "relay_domains": "",
            "mynetworks": "127.0.0.0/8",
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            "smtpd_relay_restrictions": "permit_mynetworks, reject",
            "relayhost": f"[127.0.0.1]:{self.relay_port}",
            "smtp_dns_support_level": "disabled",
            "smtpd_peername_lookup": "no",
            # Treat the test client like a remote one: no header fix-ups by cleanup.
            "local_header_rewrite_clients": "",
            "maillog_file": str(self.log_file),
            "maillog_file_prefixes": str(self.root),
            # Benchmarks open many connections at once: no flow-control stalls.
            "in_flow_delay": "0",
            "smtpd_client_connection_count_limit": "0",
            "smtpd_client_connection_rate_limit": "0",
            "default_process_limit": "200",
            "smtp_tls_security_level": "none",
            "smtpd_tls_security_level": "none",
            "biff": "no",
            "milter_protocol": "6",
            "milter_default_action": "tempfail",
            "smtpd_milters": self.milter or "",
            "non_smtpd_milters": self.milter or "",
            "milter_connect_macros": "j {daemon_name} {daemon_addr} v _ {client_addr}",
        }
        if self.sasl:
            sasl = self.root / "sasl"
            settings.update({
                "smtpd_sasl_type": "cyrus",
                "smtpd_sasl_path": "smtpd",  # the library reads etc/sasl/smtpd.conf
                "smtpd_tls_cert_file": str(sasl / "cert.pem"),
                "smtpd_tls_key_file": str(sasl / "key.pem"),
            })
        settings.update(self.settings)
        return settings

    def write_config(self) -> None:
        self.config_dir.mkdir(parents=True, exist_ok=True)
        for directory in (self.queue_dir, self.data_dir):
            directory.mkdir(parents=True, exist_ok=True)
        shutil.chown(self.data_dir, "postfix")
        lines = [f"{key} = {value}" for key, value in self.main_cf().items()]
        (self.config_dir / "main.cf").write_text("\n".join(lines) + "\n")
        reinject = ""
        if self.reinject_port:
            # The release path, exactly as documented for production.
            lines = [line for line in RELEASE_LISTENER.read_text().splitlines()
                     if line.strip() and not line.startswith("#")]
            reinject = "\n".join(lines).replace("10026", str(self.reinject_port)) + "\n"
        listen = f"127.0.0.1:{self.smtp_port} inet n - n - - smtpd"
        if self.sasl:
            listen = self._write_sasl()
        (self.config_dir / "master.cf").write_text(
            MASTER_CF.format(listen=listen, reinject=reinject)
        )

    def _write_sasl(self) -> str:
        """The SASL users, a certificate, and the submission service's
        master.cf lines as documented, on our port, socket and no chroot."""
        directory = self.root / "sasl"
        directory.mkdir(parents=True, exist_ok=True)
        database = directory / "sasldb2"
        database.unlink(missing_ok=True)
        # Debian's Postfix looks for it there whatever cyrus_sasl_config_path says.
        (self.config_dir / "sasl").mkdir(parents=True, exist_ok=True)
        (self.config_dir / "sasl" / "smtpd.conf").write_text(
            "pwcheck_method: auxprop\nauxprop_plugin: sasldb\nmech_list: PLAIN LOGIN\n"
            f"sasldb_path: {database}\n")
        for login, password in self.sasl.items():
            user, _, realm = login.partition("@")
            self._run([SASLPASSWD, "-c", "-p", "-f", str(database),
                       *(["-u", realm] if realm else []), user], password)
        shutil.chown(database, group="postfix")  # smtpd reads it as postfix
        database.chmod(0o640)
        self._run([OPENSSL, "req", "-x509", "-newkey", "ec", "-pkeyopt",
                   "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
                   "-subj", "/CN=mx.gateway.test", "-keyout", str(directory / "key.pem"),
                   "-out", str(directory / "cert.pem")])
        self.sender_logins_file.write_text("".join(
            f"{address} {login}\n" for address, login in self.sender_logins.items()))
        self._run([POSTMAP, "-c", str(self.config_dir), f"hash:{self.sender_logins_file}"])
        lines = [line for line in SUBMISSION_LISTENER.read_text().splitlines()
                 if line.strip() and not line.startswith("#")]
        lines[0] = f"127.0.0.1:{self.smtp_port} inet n - n - - smtpd"
        milter = self.milter or ""
        return "\n".join(line.replace("unix:/gateway/milter.sock", milter)
                         .replace("/etc/postfix/sender_logins", str(self.sender_logins_file))
                         for line in lines)

    @staticmethod
    def _run(command: list[str], stdin: str | None = None) -> None:
        result = subprocess.run(command, input=stdin, capture_output=True, text=True,
                                timeout=60)
        if result.returncode != 0:
            raise PostfixError(f"{Path(command[0]).name} failed: "
                               f"{result.stderr.strip() or result.stdout.strip()}")

    # -- life cycle ------------------------------------------------------------

    def start(self, timeout: float = 20.0) -> None:
        # Postfix daemons run as the postfix user and must reach their files.
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o755)
        for parent in self.root.parents:
            if not parent.stat().st_mode & 0o001:
                raise PostfixError(
                    f"{parent} is not searchable by the postfix user; put the instance under /tmp"
                )
        self.write_config()
        self._postfix("start")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.smtp_port), timeout=1) as s:
                    if s.recv(512).startswith(b"220"):
                        return
            except OSError:
                time.sleep(0.05)
        raise PostfixError(
            f"postfix did not start listening on {self.smtp_port}: {self.log_tail()}"
        )

    def stop(self) -> None:
        try:
            self._postfix("stop")
        except PostfixError:
            pid_file = self.queue_dir / "pid" / "master.pid"
            if pid_file.exists():
                with contextlib.suppress(ValueError, ProcessLookupError):
                    os.kill(int(pid_file.read_text().strip()), signal.SIGKILL)

    def flush(self) -> None:
        self._postfix("flush")

    def _postfix(self, *command: str) -> None:
        result = subprocess.run(
            [POSTFIX, "-c", str(self.config_dir), *command],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if result.returncode != 0:
            raise PostfixError(
                f"postfix {' '.join(command)} failed: {result.stderr.strip() or self._why(command)}"
            )

    def _why(self, command: tuple[str, ...]) -> str:
        """Postfix reports a failed start only to syslog, or to stderr when
        that is a terminal; rerun it under script(1) to see the reason."""
        line = " ".join([POSTFIX, "-c", str(self.config_dir), *command])
        result = subprocess.run(
            ["script", "-qec", line, "/dev/null"], capture_output=True, text=True, timeout=60
        )
        return result.stdout.strip() or "no reason given (see the maillog)"

    # -- inspection ------------------------------------------------------------

    def log_text(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def queue_ids(self, queue: str) -> list[str]:
        """Queue ids in one queue directory ("hold", "deferred", "active", ...)."""
        directory = self.queue_dir / queue
        if not directory.exists():
            return []
        return sorted(p.name for p in directory.rglob("*") if p.is_file())

    def __enter__(self) -> PostfixInstance:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

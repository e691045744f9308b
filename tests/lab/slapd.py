"""A private OpenLDAP server for the console's LDAP login tests: Debian's
slapd on a free loopback port, with a generated slapd.conf (mdb database
under a temporary folder) and the test's LDIF loaded by slapadd before it
starts. Nothing of the machine's own slapd (which need not be configured)
is used: no /etc/ldap/slapd.d, no /var/lib/ldap.

    with SlapdServer(folder, ldif) as directory:
        directory.url   # ldap://127.0.0.1:PORT
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

from gateway.lab.postfix import free_port

SLAPD = Path("/usr/sbin/slapd")
SLAPADD = Path("/usr/sbin/slapadd")
SCHEMAS = Path("/etc/ldap/schema")
MODULES = Path("/usr/lib/ldap")
SUFFIX = "dc=example,dc=org"
ROOT_DN = f"cn=admin,{SUFFIX}"
ROOT_PASSWORD = "lab-root-secret"


def available() -> bool:
    return SLAPD.exists() and SLAPADD.exists() and (SCHEMAS / "core.schema").exists()


class SlapdServer:
    def __init__(self, folder: Path, ldif: str):
        self.folder = folder
        self.ldif = ldif
        self.port = free_port()
        self.url = f"ldap://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> SlapdServer:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def start(self) -> None:
        if self.folder.exists():
            shutil.rmtree(self.folder)
        (self.folder / "db").mkdir(parents=True)
        config = self.folder / "slapd.conf"
        config.write_text("\n".join([
            *(f"include {SCHEMAS / name}.schema"
              for name in ("core", "cosine", "inetorgperson", "nis")),
            f"modulepath {MODULES}",
            "moduleload back_mdb",
            f"pidfile {self.folder / 'slapd.pid'}",
            f"argsfile {self.folder / 'slapd.args'}",
            "database mdb",
            "maxsize 16777216",
            f"suffix \"{SUFFIX}\"",
            f"rootdn \"{ROOT_DN}\"",
            f"rootpw {ROOT_PASSWORD}",
            f"directory {self.folder / 'db'}",
            # passwords only for binding; the rest readable by a bound user
            "access to attrs=userPassword by self write by anonymous auth by * none",
            "access to * by users read by * none",
            "",
        ]))
        data = self.folder / "data.ldif"
        data.write_text(self.ldif)
        loaded = subprocess.run([str(SLAPADD), "-f", str(config), "-l", str(data)],
                                capture_output=True, text=True, timeout=60)
        if loaded.returncode != 0:
            raise RuntimeError(f"slapadd failed: {loaded.stderr.strip()}")
        log = (self.folder / "slapd.log").open("wb")
        self.process = subprocess.Popen(
            [str(SLAPD), "-d", "256", "-f", str(config), "-h", f"{self.url}/"],
            stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"slapd exited: {self.log_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("slapd did not listen within 30 s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.process = None

    def log_text(self) -> str:
        path = self.folder / "slapd.log"
        return path.read_text(errors="replace") if path.exists() else ""

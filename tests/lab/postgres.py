"""A private PostgreSQL cluster on a loopback port (initdb + pg_ctl).

For the tests and benchmarks of a quarantine shared by several gateway
nodes. Runs as the ``postgres`` system user, as PostgreSQL requires.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
from pathlib import Path

from gateway.lab.postfix import free_port


def postgres_bin() -> Path | None:
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), reverse=True)
    return Path(candidates[0]).parent if candidates else None


class PostgresError(RuntimeError):
    pass


class PostgresInstance:
    def __init__(self, root: Path, port: int | None = None, database: str = "quarantine"):
        binaries = postgres_bin()
        if binaries is None:
            raise PostgresError("PostgreSQL server binaries not found (/usr/lib/postgresql)")
        self.bin = binaries
        self.root = Path(root)
        self.data = self.root / "data"
        self.port = port or free_port()
        self.database = database
        self.user = "gateway"

    @property
    def url(self) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{self.database}"

    def _run(self, *command: str) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(["runuser", "-u", "postgres", "--", *command],
                                capture_output=True, text=True, timeout=120, cwd="/")
        if result.returncode != 0:
            raise PostgresError(f"{Path(command[0]).name} failed: "
                                f"{(result.stderr or result.stdout).strip()[-800:]}")
        return result

    def start(self) -> PostgresInstance:
        if not self.data.exists():
            self.root.mkdir(parents=True, exist_ok=True)
            shutil.chown(self.root, "postgres", "postgres")
            os.chmod(self.root, 0o755)
            self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", self.user,
                      "-A", "trust", "--no-sync", "-E", "UTF8")
            first_start = True
        else:
            first_start = False
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l",
                  str(self.root / "postgres.log"), "-w", "-t", "60", "-o",
                  f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
                  "-c fsync=on -c max_connections=200", "start")
        if first_start:
            self._run(str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port),
                      "-U", self.user, self.database)
        return self

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w",
                      "stop")

    def __enter__(self) -> PostgresInstance:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

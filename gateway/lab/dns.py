"""A DNS server on loopback for ``gateway demo``, the tests and benchmarks,
never the machine's resolver.

:class:`KnotServer`: a real authoritative server (Debian's knotd) serving
zones written by :class:`Zone`, on a free loopback port. The servers that
misbehave on purpose or answer for any name are the tests' own
(``tests/lab/dns.py``).
"""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from gateway.lab.postfix import free_port

KNOTD = shutil.which("knotd") or "/usr/sbin/knotd"


def txt_strings(text: str) -> str:
    """A TXT value as zone-file strings: quoted, split into 255-byte parts."""
    parts = [text[i:i + 255] for i in range(0, len(text), 255)] or [""]
    return " ".join('"' + p.replace("\\", "\\\\").replace('"', '\\"') + '"' for p in parts)


@dataclass
class Zone:
    origin: str
    records: list[tuple[str, str, str]] = field(default_factory=list)
    ttl: int = 60

    def add(self, name: str, rdtype: str, data: str) -> Zone:
        self.records.append((name, rdtype, data))
        return self

    def txt(self, name: str, text: str) -> Zone:
        return self.add(name, "TXT", txt_strings(text))

    def render(self) -> str:
        lines = [
            f"$ORIGIN {self.origin}.",
            f"$TTL {self.ttl}",
            f"@ SOA ns.{self.origin}. hostmaster.{self.origin}. 1 3600 600 86400 30",
            f"@ NS ns.{self.origin}.",
            "ns A 127.0.0.1",
        ]
        lines += [f"{name} {rdtype} {data}" for name, rdtype, data in self.records]
        return "\n".join(lines) + "\n"


class KnotServer:
    def __init__(self, root: Path, zones: list[Zone], port: int | None = None):
        self.root = Path(root)
        self.zones = zones
        self.port = port or free_port()

    def write(self) -> Path:
        for sub in ("zones", "db", "run"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        for zone in self.zones:
            (self.root / "zones" / f"{zone.origin}.zone").write_text(zone.render())
        config = self.root / "knot.conf"
        zone_lines = "\n".join(f"  - domain: {z.origin}" for z in self.zones)
        config.write_text(f"""server:
    rundir: "{self.root / 'run'}"
    listen: 127.0.0.1@{self.port}
database:
    storage: "{self.root / 'db'}"
log:
  - target: "{self.root / 'knot.log'}"
    any: info
template:
  - id: default
    storage: "{self.root / 'zones'}"
    file: "%s.zone"
    zonefile-sync: -1
    zonefile-load: whole
    journal-content: none
    semantic-checks: off
zone:
{zone_lines}
""")
        return config

    def start(self, timeout: float = 20.0) -> KnotServer:
        config = self.write()
        self.process = subprocess.Popen([KNOTD, "-c", str(config)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        probe = self.zones[0].origin if self.zones else "."
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"knotd exited: {self.log()[-1500:]}")
            if self.answers(probe):
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"knotd did not answer on port {self.port}: {self.log()[-1500:]}")

    def answers(self, name: str) -> bool:
        import dns.message
        import dns.query

        try:
            query = dns.message.make_query(name, "SOA")
            response = dns.query.udp(query, "127.0.0.1", timeout=0.5, port=self.port)
        except Exception:
            return False
        return bool(response.answer)

    def log(self) -> str:
        try:
            return (self.root / "knot.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        if getattr(self, "process", None) is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> KnotServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

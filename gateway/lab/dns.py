"""DNS servers on loopback for tests and benchmarks, never the machine's resolver.

- :class:`KnotServer`: a real authoritative server (Debian's knotd) serving
  zones written by :class:`Zone`, on a free loopback port;
- :class:`FaultServer`: a tiny server (dnslib) that misbehaves on purpose:
  drops queries, answers late, SERVFAIL, REFUSED or truncated.
"""

from __future__ import annotations

import shutil
import socketserver
import subprocess
import threading
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


class _UdpServer:
    """A threaded UDP DNS server on a free loopback port; subclasses answer."""

    def __init__(self) -> None:
        self.port = free_port()
        self.queries = 0
        server = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                from dnslib import DNSRecord

                data, sock = self.request
                server.queries += 1
                reply = server.answer(DNSRecord.parse(data))
                if reply is not None:
                    sock.sendto(reply.pack(), self.client_address)

        self._server = socketserver.ThreadingUDPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True

    def answer(self, request):  # -> dnslib.DNSRecord | None (None: no reply at all)
        raise NotImplementedError

    def start(self):
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class FaultServer(_UdpServer):
    """Answers UDP queries according to ``mode``: "drop", "delay",
    "servfail", "refused" or "truncate" (TC bit, and no TCP service).

    With ``names`` (domains; their subdomains included), only queries for
    those names misbehave; the others are passed to the server on
    ``upstream`` (a port on 127.0.0.1, e.g. a :class:`KnotServer`'s) and its
    reply is relayed: one slow domain on an otherwise healthy resolver."""

    def __init__(self, mode: str = "drop", delay: float = 2.0,
                 names: tuple[str, ...] = (), upstream: int | None = None):
        super().__init__()
        self.mode = mode
        self.delay = delay
        self.names = tuple(n.lower().rstrip(".") for n in names)
        self.upstream = upstream
        self.asked: list[str] = []  # the names queried, in order

    def misbehaves_on(self, qname: str) -> bool:
        name = qname.lower().rstrip(".")
        return not self.names or any(name == n or name.endswith("." + n) for n in self.names)

    def answer(self, request):
        from dnslib import RCODE, DNSRecord

        self.asked.append(str(request.q.qname))
        if not self.misbehaves_on(str(request.q.qname)):
            if self.upstream is None:
                reply = request.reply()
                reply.header.rcode = RCODE.REFUSED
                return reply
            data = request.send("127.0.0.1", self.upstream, timeout=2.0)
            return DNSRecord.parse(data)
        if self.mode == "drop":
            return None
        if self.mode == "delay":
            time.sleep(self.delay)
        reply = request.reply()
        if self.mode == "servfail":
            reply.header.rcode = RCODE.SERVFAIL
        elif self.mode == "refused":
            reply.header.rcode = RCODE.REFUSED
        elif self.mode == "truncate":
            reply.header.tc = 1
        return reply


class SyntheticServer(_UdpServer):
    """Answers for any domain, for benchmarks over real-world mail: every
    domain has an MX, SPF allowing loopback, a p=none DMARC record and no
    DKIM keys; every address and name resolves to 127.0.0.1 / localhost."""

    def answer(self, request):
        from dnslib import MX, PTR, QTYPE, RCODE, RR, TXT, A

        reply = request.reply()
        name = str(request.q.qname).rstrip(".").lower()
        qtype = QTYPE[request.q.qtype]
        if "._domainkey." in name:
            reply.header.rcode = RCODE.NXDOMAIN
        elif qtype == "TXT" and name.startswith("_dmarc."):
            reply.add_answer(RR(name, QTYPE.TXT, rdata=TXT("v=DMARC1; p=none"), ttl=300))
        elif qtype == "TXT":
            reply.add_answer(RR(name, QTYPE.TXT, rdata=TXT("v=spf1 ip4:127.0.0.1 ~all"), ttl=300))
        elif qtype == "MX":
            reply.add_answer(RR(name, QTYPE.MX, rdata=MX(f"mx.{name}", 10), ttl=300))
        elif qtype == "A":
            reply.add_answer(RR(name, QTYPE.A, rdata=A("127.0.0.1"), ttl=300))
        elif qtype == "PTR":
            reply.add_answer(RR(name, QTYPE.PTR, rdata=PTR("localhost."), ttl=300))
        return reply

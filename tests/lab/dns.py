"""DNS servers on loopback for the tests and benchmarks (dnslib), beside
the knotd the demo uses too (:mod:`gateway.lab.dns`):

- :class:`FaultServer`: misbehaves on purpose: drops queries, answers late,
  SERVFAIL, REFUSED or truncated;
- :class:`SyntheticServer`: answers for any domain, for benchmarks over
  real-world mail.
"""

from __future__ import annotations

import socketserver
import threading
import time

from gateway.lab.postfix import free_port


class _UdpServer:
    """A threaded UDP DNS server on a free loopback port; subclasses answer."""

    def __init__(self, host: str = "127.0.0.1", port: int | None = None) -> None:
        self.port = port or free_port()
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

        self._server = socketserver.ThreadingUDPServer((host, self.port), Handler)
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
    reply is relayed: one slow domain on an otherwise healthy resolver.
    With ``exact``, only those names misbehave, not their subdomains; with
    ``rdtypes`` ("A", "MX", ...), only queries of those types. ``host`` and
    ``port``: another loopback address (a second server on the same port)."""

    def __init__(self, mode: str = "drop", delay: float = 2.0,
                 names: tuple[str, ...] = (), upstream: int | None = None,
                 exact: bool = False, rdtypes: tuple[str, ...] = (),
                 host: str = "127.0.0.1", port: int | None = None):
        super().__init__(host, port)
        self.mode = mode
        self.delay = delay
        self.names = tuple(n.lower().rstrip(".") for n in names)
        self.upstream = upstream
        self.exact = exact
        self.rdtypes = tuple(t.upper() for t in rdtypes)
        self.asked: list[str] = []  # the names queried, in order

    def misbehaves_on(self, qname: str, rdtype: str = "") -> bool:
        name = qname.lower().rstrip(".")
        if self.rdtypes and rdtype.upper() not in self.rdtypes:
            return False
        return not self.names or any(
            name == n or (not self.exact and name.endswith("." + n)) for n in self.names)

    def answer(self, request):
        from dnslib import QTYPE, RCODE, DNSRecord

        self.asked.append(str(request.q.qname))
        if not self.misbehaves_on(str(request.q.qname), QTYPE[request.q.qtype]):
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
    DKIM keys; every address and name resolves to 127.0.0.1 / localhost.
    With ``latency``, each answer comes that many seconds late, like a
    resolver asking the domain's own servers (answers are sent concurrently)."""

    def __init__(self, latency: float = 0.0):
        super().__init__()
        self.latency = latency

    def answer(self, request):
        from dnslib import MX, PTR, QTYPE, RCODE, RR, TXT, A

        if self.latency:
            time.sleep(self.latency)
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

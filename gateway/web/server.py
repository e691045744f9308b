"""The console's HTTP server: waitress, with limits slow clients cannot pass.

waitress reads requests in one event loop and hands only complete ones to
its threads, so a client that sends its request slowly holds a connection,
not a thread. Its stock limits still let a few hundred such clients take
every connection (100 by default, each kept while it sends a byte every two
minutes), and then nobody can log in or reach /health. Here:

- ``[web] connection_limit`` connections in all (waitress's own limit; the
  event loop uses poll(), not select(), so descriptors past 1024 work);
- ``[web] connections_per_client`` from one client (an IPv4 address, an
  IPv6 /64); more are closed as soon as they are accepted. The reverse
  proxies in ``[web] trusted_proxies`` are not counted: their clients'
  limits are the proxy's job;
- ``[web] request_seconds`` to send a whole request, headers and body: a
  connection still sending one after that is closed, however steadily it
  trickles; an idle keep-alive connection is closed after ``idle_seconds``;
- request headers up to 64 KiB and bodies up to 1 MiB (waitress would
  buffer a gigabyte to disk before the app could refuse it).
"""

from __future__ import annotations

import ipaddress
import logging
import time
from typing import Any

from waitress.adjustments import Adjustments
from waitress.channel import HTTPChannel
from waitress.server import MultiSocketServer, TcpWSGIServer
from waitress.task import ThreadedTaskDispatcher

from gateway.config import WebSection
from gateway.web.console import client_key

log = logging.getLogger("gateway.web")

MAX_HEADER_BYTES = 64 * 1024
MAX_BODY_BYTES = 1024 * 1024 + 64 * 1024  # the app's own limit is 1 MiB


def make_server(app: Any, host: str, port: int, web: WebSection) -> Any:
    """A waitress server for ``app`` on host:port; ``.run()`` serves until
    closed, ``.close()`` stops it."""
    adjustments = Adjustments(
        host=host, port=port, threads=web.threads, ident="gateway",
        clear_untrusted_proxy_headers=False, connection_limit=web.connection_limit,
        channel_timeout=web.idle_seconds,
        cleanup_interval=max(1, min(web.request_seconds, web.idle_seconds) // 4),
        max_request_header_size=MAX_HEADER_BYTES, max_request_body_size=MAX_BODY_BYTES,
        asyncore_use_poll=True)
    dispatcher = ThreadedTaskDispatcher()
    dispatcher.set_thread_count(adjustments.threads)
    channels: dict[int, Any] = {}
    trusted = frozenset(ipaddress.ip_address(a) for a in web.trusted_proxies)
    servers = [_Server(app, channels, dispatcher=dispatcher, adj=adjustments, sockinfo=info,
                       per_client=web.connections_per_client,
                       request_seconds=web.request_seconds, trusted=trusted)
               for info in adjustments.listen]
    if len(servers) == 1:
        return servers[0]
    return MultiSocketServer(channels, adjustments,
                             [(s.effective_host, s.effective_port) for s in servers],
                             dispatcher, servers[-1].log_info)


class _Channel(HTTPChannel):
    """A connection that knows since when it has been sending its request."""

    reading_since: float | None = None

    def received(self, data: bytes) -> bool:
        done = super().received(data)
        if self.request is None:  # nothing half-read: the last request was whole
            self.reading_since = None
        elif self.reading_since is None:
            self.reading_since = time.monotonic()
        return bool(done)


class _Server(TcpWSGIServer):
    channel_class = _Channel

    def __init__(self, *args: Any, per_client: int, request_seconds: float,
                 trusted: frozenset, **kwargs: Any):
        self.per_client = per_client
        self.request_seconds = request_seconds
        self.trusted = trusted
        self._refused_at = 0.0
        super().__init__(*args, **kwargs)

    def handle_accept(self) -> None:
        try:
            accepted = self.accept()
            if accepted is None:
                return
            connection, address = accepted
            self.set_socket_options(connection)
        except OSError:  # the client left before we got to it
            return
        address = self.fix_addr(address)
        if self._too_many_from(address[0]):
            connection.close()
            now = time.monotonic()
            if now - self._refused_at > 60:  # one line a minute, not one per connection
                self._refused_at = now
                log.warning("web: %s has %d connections open already; closing more "
                            "([web] connections_per_client)", address[0], self.per_client)
            return
        self.channel_class(self, connection, address, self.adj, map=self._map)

    def _too_many_from(self, address: str) -> bool:
        try:
            if ipaddress.ip_address(address) in self.trusted:
                return False
        except ValueError:
            return False
        client = client_key(address)
        count = 0
        for channel in list(self.active_channels.values()):
            if client_key(channel.addr[0]) == client:
                count += 1
                if count >= self.per_client:
                    return True
        return False

    def maintenance(self, now: float) -> None:
        super().maintenance(now)  # idle connections (channel_timeout)
        cutoff = time.monotonic() - self.request_seconds
        for channel in list(self.active_channels.values()):
            since = getattr(channel, "reading_since", None)
            if since is not None and since < cutoff:
                channel.will_close = True  # still sending one request: a slow client

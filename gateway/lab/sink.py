"""An SMTP sink on loopback that keeps what it receives (aiosmtpd)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope

from gateway.lab.postfix import free_port


@dataclass(frozen=True)
class Delivery:
    mail_from: str
    rcpt_to: tuple[str, ...]
    data: bytes

    def header(self, name: str) -> str | None:
        import email
        import email.policy

        value = email.message_from_bytes(self.data, policy=email.policy.compat32).get(name)
        return None if value is None else str(value)


class _Handler:
    def __init__(self) -> None:
        self.deliveries: list[Delivery] = []
        self.arrived = threading.Condition()

    async def handle_DATA(self, server: SMTP, session: object, envelope: Envelope) -> str:
        content = envelope.original_content or envelope.content or b""
        delivery = Delivery(
            mail_from=envelope.mail_from or "",
            rcpt_to=tuple(envelope.rcpt_tos),
            # str only with decode_data=True, which this sink does not ask for
            data=content.encode("utf-8", "surrogateescape") if isinstance(content, str)
            else bytes(content),
        )
        with self.arrived:
            self.deliveries.append(delivery)
            self.arrived.notify_all()
        return "250 2.0.0 Ok: kept by the sink"


class Sink:
    """Start with ``with Sink() as sink:``; ``sink.port`` is where to relay."""

    def __init__(self, port: int | None = None):
        self._handler = _Handler()
        self._port = port or free_port()
        self._controller = Controller(
            self._handler,
            hostname="127.0.0.1",
            port=self._port,
            data_size_limit=0,
        )

    @property
    def port(self) -> int:
        return self._port

    @property
    def deliveries(self) -> list[Delivery]:
        with self._handler.arrived:
            return list(self._handler.deliveries)

    def wait_for(self, count: int, timeout: float = 20.0) -> list[Delivery]:
        """Block until ``count`` messages arrived in all; return them all."""
        deadline = time.monotonic() + timeout
        with self._handler.arrived:
            while len(self._handler.deliveries) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._handler.arrived.wait(remaining)
            return list(self._handler.deliveries)

    def find(self, marker: str, timeout: float = 20.0) -> Delivery | None:
        """Wait for a delivery whose bytes contain ``marker``."""
        needle = marker.encode()
        deadline = time.monotonic() + timeout
        with self._handler.arrived:
            while True:
                for delivery in self._handler.deliveries:
                    if needle in delivery.data:
                        return delivery
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._handler.arrived.wait(remaining)

    def start(self) -> Sink:
        self._controller.start()
        return self

    def stop(self) -> None:
        self._controller.stop()

    def __enter__(self) -> Sink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

"""Local allow and block lists on the envelope sender and the client IP.

Sender entries: ``user@example.org`` (that address), ``@example.org`` (any
address at exactly that domain) or ``example.org`` (that domain and its
subdomains). IP entries: addresses or networks in CIDR form.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from gateway.checks import Check, CheckContext
from gateway.config import Config
from gateway.message import Message
from gateway.symbols import Symbol

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class SenderList:
    def __init__(self, entries: Iterable[str]):
        self.addresses: set[str] = set()
        self.exact_domains: set[str] = set()
        self.domains: set[str] = set()
        for entry in entries:
            entry = entry.strip().lower().rstrip(".")
            if entry.startswith("@"):
                self.exact_domains.add(entry[1:])
            elif "@" in entry:
                self.addresses.add(entry)
            else:
                self.domains.add(entry)

    def match(self, address: str) -> str | None:
        """The entry that matches ``address``, or None."""
        address = address.strip().strip("<>").lower()
        if not address or "@" not in address:
            return None
        if address in self.addresses:
            return address
        domain = address.rsplit("@", 1)[1].rstrip(".")
        if domain in self.exact_domains:
            return "@" + domain
        labels = domain.split(".")
        for i in range(len(labels)):
            candidate = ".".join(labels[i:])
            if candidate in self.domains:
                return candidate
        return None


class NetworkList:
    def __init__(self, entries: Iterable[str]):
        self.networks: list[Network] = [ipaddress.ip_network(e, strict=False) for e in entries]

    def match(self, ip: str | None) -> str | None:
        if not ip or not self.networks:
            return None
        try:
            address = ipaddress.ip_address(ip.strip("[]"))
        except ValueError:
            return None
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        for network in self.networks:
            if address.version == network.version and address in network:
                return str(network)
        return None


class ListsCheck(Check):
    name = "lists"
    symbols = {
        "ALLOWLIST_SENDER": "envelope sender is on the local allow list",
        "ALLOWLIST_IP": "client IP is on the local allow list",
        "BLOCKLIST_SENDER": "envelope sender is on the local block list",
        "BLOCKLIST_IP": "client IP is on the local block list",
    }

    def __init__(self, config: Config):
        super().__init__(config)
        lists = config.lists
        self.allow_senders = SenderList(lists.allow_senders)
        self.block_senders = SenderList(lists.block_senders)
        self.allow_ips = NetworkList(lists.allow_ips)
        self.block_ips = NetworkList(lists.block_ips)

    def run(self, message: Message, context: CheckContext) -> list[Symbol]:
        envelope = message.envelope
        found: list[Symbol] = []
        for symbol, entry in (
            ("BLOCKLIST_SENDER", self.block_senders.match(envelope.mail_from)),
            ("BLOCKLIST_IP", self.block_ips.match(envelope.client_ip)),
            ("ALLOWLIST_SENDER", self.allow_senders.match(envelope.mail_from)),
            ("ALLOWLIST_IP", self.allow_ips.match(envelope.client_ip)),
        ):
            if entry is not None:
                found.append(self.symbol(symbol, f"matched {entry}"))
        return found

"""iprev (RFC 8601 section 3): forward-confirmed reverse DNS of the client.

The client IP's PTR names are looked up forward; a name whose addresses
include the IP confirms it. Senders without working reverse DNS are often
compromised hosts, so a failure adds to the score; it decides nothing alone.
"""

from __future__ import annotations

import ipaddress
import logging

import dns.reversename

from gateway.checks import Check, CheckContext
from gateway.config import Config
from gateway.dns import DnsTempError, NoRecords, NxDomain, shared_resolver
from gateway.facts import IprevFacts
from gateway.message import Message
from gateway.ruleset import Ruleset
from gateway.symbols import Report

log = logging.getLogger("gateway.checks.iprev")

MAX_NAMES = 10


class IprevCheck(Check):
    name = "iprev"
    io_bound = True
    symbols = {
        "IPREV_PASS": "client's reverse DNS confirms forward (iprev pass)",
        "IPREV_FAIL": "client's reverse DNS does not point back to it",
        "IPREV_PERMERROR": "client has no reverse DNS (no PTR)",
        "IPREV_TEMPERROR": "client's reverse DNS could not be looked up now",
    }

    def __init__(self, config: Config, ruleset: Ruleset):
        super().__init__(config, ruleset)
        self.resolver = shared_resolver(config)

    def run(self, message: Message, context: CheckContext) -> Report:
        ip = (message.envelope.client_ip or "").strip("[]")
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return Report(facts=IprevFacts(None, reason="no client IP to check").to_json())
        try:
            return self._check(ip, address)
        except Exception as exc:  # what DNS answers must never make the check fail
            log.warning("iprev: cannot check %s: %r", ip, exc)
            return self._report("permerror", ip, "", f"{ip}: cannot be checked "
                                f"({type(exc).__name__})")

    def _check(self, ip: str, address: ipaddress.IPv4Address | ipaddress.IPv6Address
               ) -> Report:
        reverse = dns.reversename.from_address(str(address)).to_text(omit_final_dot=True)
        try:
            names = list(self.resolver.lookup(reverse, "PTR"))[:MAX_NAMES]
        except (NxDomain, NoRecords):
            return self._report("permerror", ip, "", f"{ip}: no PTR")
        except DnsTempError as exc:
            return self._report("temperror", ip, "", str(exc))
        errors = []
        for name in names:
            try:
                forward = self.resolver.addresses(name)
            except (NxDomain, NoRecords):
                continue
            except DnsTempError as exc:
                errors.append(str(exc))
                continue
            if any(ipaddress.ip_address(f) == address for f in forward):
                return self._report("pass", ip, name, f"{ip} <-> {name}")
        if errors:
            return self._report("temperror", ip, "", errors[0])
        return self._report("fail", ip, names[0] if names else "",
                            f"{ip} -> {', '.join(names)}, which do not point back")

    def _report(self, result: str, ip: str, name: str, evidence: str) -> Report:
        return Report(symbols=(self.symbol(f"IPREV_{result.upper()}", evidence),),
                      facts=IprevFacts(result, ip=ip, name=name).to_json())

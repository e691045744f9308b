"""Sender verification: does the envelope sender's domain take mail, and is
the HELO name believable?

The domain checks mirror Postfix's ``reject_unknown_sender_domain``: a
domain that does not exist (NXDOMAIN), publishes a null MX (RFC 7505), or
has neither MX nor address records cannot receive a reply, so mail from it
is rejected; when DNS itself fails the answer is 4xx, never 5xx.

No SMTP callouts by default: asking the sender's server whether the address
exists gets verifying hosts onto blocklists, catch-all domains answer yes to
everything, and every message would wait on someone else's server.
"""

from __future__ import annotations

import ipaddress
import re
import socket

from gateway.checks import Check, CheckContext
from gateway.config import Config
from gateway.dns import DnsTempError, NoRecords, NxDomain, shared_resolver
from gateway.message import Message
from gateway.symbols import Report, Symbol

LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$", re.IGNORECASE)


def helo_is_valid(helo: str) -> bool:
    """A fully qualified domain name or an address literal (RFC 5321 4.1.3)."""
    if helo.startswith("[") and helo.endswith("]"):
        literal = helo[1:-1]
        if literal.lower().startswith("ipv6:"):
            literal = literal[5:]
        try:
            ipaddress.ip_address(literal)
        except ValueError:
            return False
        return True
    name = helo.rstrip(".")
    labels = name.split(".")
    if len(name) > 253 or len(labels) < 2 or labels[-1].isdigit():
        return False
    return all(LABEL.match(label) for label in labels)


def is_loopback(ip: str | None) -> bool:
    try:
        return ip is not None and ipaddress.ip_address(ip.strip("[]")).is_loopback
    except ValueError:
        return False


class SenderCheck(Check):
    name = "sender"
    io_bound = True
    symbols = {
        "SENDER_DOMAIN_NXDOMAIN": "Sender address rejected: domain does not exist",
        "SENDER_NULL_MX": "Sender address rejected: domain accepts no mail (null MX)",
        "SENDER_NO_MAIL_HOST": "Sender address rejected: domain has no MX and no address",
        "SENDER_DOMAIN_TEMPFAIL": "Sender domain could not be looked up now",
        "HELO_INVALID": "HELO name is not a fully qualified name or address literal",
        "HELO_CLAIMS_OURS": "HELO name claims to be this server",
    }

    def __init__(self, config: Config):
        super().__init__(config)
        self.resolver = shared_resolver(config)
        auth = config.auth
        self.ours = {n.lower().strip("[]").rstrip(".") for n in auth.local_names}
        self.ours.add(auth.server_id().lower())
        self.ours.add(socket.getfqdn().lower())

    @classmethod
    def forced_actions(cls, config: Config) -> dict[str, str]:
        forced = {"SENDER_DOMAIN_NXDOMAIN": "reject", "SENDER_NULL_MX": "reject",
                  "SENDER_NO_MAIL_HOST": "reject", "SENDER_DOMAIN_TEMPFAIL": "tempfail"}
        if config.auth.helo_forged_action == "reject":
            forced["HELO_CLAIMS_OURS"] = "reject"
        return forced

    def run(self, message: Message, context: CheckContext) -> Report:
        envelope = message.envelope
        found: list[Symbol] = []
        facts: dict[str, str] = {}
        domain = envelope.sender_domain
        if domain:
            verdict = self._domain(domain)
            facts["sender_domain"] = verdict[0] if verdict else "ok"
            if verdict:
                found.append(self.symbol(verdict[0], verdict[1]))
        helo = (envelope.helo or "").strip()
        if helo and not is_loopback(envelope.client_ip):
            if not helo_is_valid(helo):
                found.append(self.symbol("HELO_INVALID", helo[:80]))
            elif helo.lower().strip("[]").rstrip(".") in self.ours:
                found.append(self.symbol("HELO_CLAIMS_OURS",
                                         f"{helo} from {envelope.client_ip}"))
        return Report(symbols=tuple(found), facts=facts)

    def _domain(self, domain: str) -> tuple[str, str] | None:
        try:
            exchangers = self.resolver.lookup(domain, "MX")
        except NxDomain:
            return "SENDER_DOMAIN_NXDOMAIN", f"{domain}: NXDOMAIN"
        except DnsTempError as exc:
            return "SENDER_DOMAIN_TEMPFAIL", str(exc)
        except NoRecords:
            exchangers = ()
        if exchangers:
            if len(exchangers) == 1 and exchangers[0][1] in ("", ".", "@"):
                return "SENDER_NULL_MX", f"{domain}: MX 0 ."
            return None
        try:
            self.resolver.addresses(domain)
        except (NxDomain, NoRecords):
            return "SENDER_NO_MAIL_HOST", f"{domain}: no MX, A or AAAA"
        except DnsTempError as exc:
            return "SENDER_DOMAIN_TEMPFAIL", str(exc)
        return None

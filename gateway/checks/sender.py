"""Sender verification: does the envelope sender's domain take mail, and is
the HELO name believable?

The domain checks mirror Postfix's ``reject_unknown_sender_domain``: a
domain that does not exist (NXDOMAIN), publishes a null MX (RFC 7505), or
has neither MX nor address records cannot receive a reply, so mail from it
is rejected; when DNS itself fails the answer is 4xx, never 5xx.

An address literal (``a@[192.0.2.1]``, RFC 5321 4.1.3) names no domain, so
there is nothing to look up: it gets ``SENDER_ADDRESS_LITERAL`` (a score).
Mail for ``postmaster@`` or ``abuse@`` alone (``[auth]
reject_exempt_recipients``) is not refused for its sender's domain: RFC 5321
4.5.1 wants postmaster reachable, most of all by those whose own mail
setup is broken. It gets ``SENDER_REJECT_EXEMPT_RCPT`` instead.

No SMTP callouts by default: asking the sender's server whether the address
exists gets verifying hosts onto blocklists, catch-all domains answer yes to
everything, and every message would wait on someone else's server.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import socket
from collections.abc import Iterable

from gateway.checks import Check, CheckContext
from gateway.config import Config
from gateway.dns import DnsTempError, InvalidName, NoRecords, NxDomain, shared_resolver
from gateway.facts import SenderFacts
from gateway.message import Message
from gateway.ruleset import Ruleset
from gateway.symbols import Report, Symbol

log = logging.getLogger("gateway.checks.sender")

# The findings that refuse a message (forced to reject below).
UNREPLYABLE = ("SENDER_DOMAIN_NXDOMAIN", "SENDER_NULL_MX", "SENDER_NO_MAIL_HOST")

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


def only_role_recipients(recipients: Iterable[str], local_parts: Iterable[str]) -> bool:
    """Whether every recipient is one of the role accounts (``postmaster``,
    ``abuse``, ...), whatever the domain: ``<Postmaster>`` alone counts too."""
    roles = {part.lower() for part in local_parts}
    found = [r.strip().strip("<>").rpartition("@") for r in recipients]
    return bool(roles) and bool(found) and \
        all((local if at else domain).lower() in roles for local, at, domain in found)


def is_address_literal(domain: str) -> bool:
    return domain.startswith("[") and domain.endswith("]")


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
        "SENDER_ADDRESS_LITERAL": "Sender address is an address literal: no domain to check",
        "SENDER_REJECT_EXEMPT_RCPT": "Sender domain cannot receive mail; not refused, as the "
                                     "message is for postmaster@/abuse@ only",
        "HELO_INVALID": "HELO name is not a fully qualified name or address literal",
        "HELO_CLAIMS_OURS": "HELO name claims to be this server",
    }

    def __init__(self, config: Config, ruleset: Ruleset):
        super().__init__(config, ruleset)
        self.resolver = shared_resolver(config)
        auth = config.auth
        self.ours = {n.lower().strip("[]").rstrip(".") for n in auth.local_names}
        self.ours.add(auth.server_id().lower())
        self.ours.add(socket.getfqdn().lower())
        self.exempt_recipients = auth.reject_exempt_recipients

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
        facts = SenderFacts()
        domain = envelope.sender_domain
        if domain and is_address_literal(domain):
            facts = SenderFacts(sender_domain="address literal")
            found.append(self.symbol("SENDER_ADDRESS_LITERAL", envelope.mail_from[:120]))
        elif domain:
            verdict = self._checked_domain(domain)
            facts = SenderFacts(sender_domain=verdict[0] if verdict else "ok")
            if verdict:
                name, evidence = verdict
                if name in UNREPLYABLE and only_role_recipients(
                        envelope.rcpt_to, self.exempt_recipients):
                    name, evidence = "SENDER_REJECT_EXEMPT_RCPT", f"{evidence} ({verdict[0]})"
                found.append(self.symbol(name, evidence))
        helo = (envelope.helo or "").strip()
        if helo and not is_loopback(envelope.client_ip):
            if not helo_is_valid(helo):
                found.append(self.symbol("HELO_INVALID", helo[:80]))
            elif helo.lower().strip("[]").rstrip(".") in self.ours:
                found.append(self.symbol("HELO_CLAIMS_OURS",
                                         f"{helo} from {envelope.client_ip}"))
        return Report(symbols=tuple(found), facts=facts.to_json())

    def _checked_domain(self, domain: str) -> tuple[str, str] | None:
        try:
            return self._domain(domain)
        except Exception as exc:  # what a sender writes must never make the check fail
            log.warning("sender: cannot check %r: %r", domain[:80], exc)
            # 4xx, never 5xx, for a failure that may be ours.
            return "SENDER_DOMAIN_TEMPFAIL", f"{domain[:80]}: cannot be checked ({exc})"

    def _domain(self, domain: str) -> tuple[str, str] | None:
        try:
            exchangers = self.resolver.lookup(domain, "MX")
        except InvalidName as exc:
            return "SENDER_DOMAIN_NXDOMAIN", f"{domain[:80]}: not a valid domain name ({exc})"
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

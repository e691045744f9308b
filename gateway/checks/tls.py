"""TLS of the inbound hop, and the per-domain "require TLS" policy.

Postfix tells the milter the TLS version and cipher of the SMTP session
(``{tls_version}``, ``{cipher}``). Mail from a domain listed in
``[auth] require_tls_from`` that arrived in plaintext gets
``TLS_REQUIRED_MISSING`` and the configured action.
"""

from __future__ import annotations

from gateway.checks import Check, CheckContext
from gateway.config import Config
from gateway.facts import TlsFacts
from gateway.message import Message
from gateway.ruleset import Ruleset
from gateway.symbols import Report


class TlsCheck(Check):
    name = "tls"
    symbols = {
        "TLS_REQUIRED_MISSING": "the sender's domain requires TLS, but this hop was plaintext",
    }

    def __init__(self, config: Config, ruleset: Ruleset):
        super().__init__(config, ruleset)
        self.required = {d.lower().rstrip(".") for d in config.auth.require_tls_from}

    @classmethod
    def forced_actions(cls, config: Config) -> dict[str, str]:
        return {"TLS_REQUIRED_MISSING": config.auth.require_tls_action}

    def run(self, message: Message, context: CheckContext) -> Report:
        envelope = message.envelope
        facts = TlsFacts(envelope.tls_version, envelope.tls_cipher).to_json()
        domain = envelope.sender_domain
        labels = domain.split(".")
        listed = next((".".join(labels[i:]) for i in range(len(labels))
                       if ".".join(labels[i:]) in self.required), None)
        if listed and not envelope.tls_version:
            return Report(symbols=(self.symbol("TLS_REQUIRED_MISSING",
                                               f"{domain} (listed as {listed})"),),
                          facts=facts)
        return Report(facts=facts)

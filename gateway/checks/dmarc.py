"""DMARC: does the From domain's policy hold, and what does it ask for?

Uses the SPF and DKIM results of this message (their checks run first), and
the ARC result when the ARC check is enabled. The policy becomes a symbol;
the symbol becomes an action through config: ``[auth] dmarc_reject`` (and
``dmarc_reject_domains`` per From domain) say whether p=reject is honoured
as a reject or downgraded to quarantine.
"""

from __future__ import annotations

from email.utils import getaddresses

from gateway.checks import Check, CheckContext
from gateway.config import Config
from gateway.dmarc import DmarcResult, PslDiscovery, evaluate
from gateway.dns import shared_resolver
from gateway.message import Message
from gateway.symbols import Report, Symbol


class DmarcCheck(Check):
    name = "dmarc"
    io_bound = True
    requires = ("spf", "dkim")
    wants = ("arc",)
    symbols = {
        "DMARC_PASS": "DMARC: SPF or DKIM passed aligned with the From domain",
        "DMARC_NA": "DMARC: the From domain publishes no policy",
        "DMARC_POLICY_NONE": "DMARC failed; the domain's policy is p=none (monitor only)",
        "DMARC_POLICY_QUARANTINE": "DMARC failed; the sender's domain asks to quarantine",
        "DMARC_POLICY_REJECT": "DMARC policy of the sender's domain says reject",
        "DMARC_REJECT_DOWNGRADED": "DMARC failed under p=reject; quarantined by local choice",
        "DMARC_SAMPLED_OUT": "DMARC failed but pct= left this message to a milder policy",
        "DMARC_ARC_OVERRIDE": "DMARC failed, but a trusted ARC sealer vouches for the message",
        "DMARC_TEMPERROR": "DMARC could not be checked now (DNS failure)",
        "DMARC_PERMERROR": "DMARC cannot apply: no single From domain",
    }

    def __init__(self, config: Config):
        super().__init__(config)
        self.discovery = PslDiscovery(shared_resolver(config))
        self.settings = config.auth

    @classmethod
    def forced_actions(cls, config: Config) -> dict[str, str]:
        return {"DMARC_POLICY_REJECT": "reject", "DMARC_POLICY_QUARANTINE": "quarantine",
                "DMARC_REJECT_DOWNGRADED": "quarantine"}

    def run(self, message: Message, context: CheckContext) -> Report:
        senders = message.headers("From")
        addresses = [a for _, a in getaddresses(senders) if "@" in a]
        domains = {a.rpartition("@")[2].lower().rstrip(".") for a in addresses}
        if len(senders) != 1 or len(domains) != 1:
            reason = f"{len(senders)} From header(s), {len(domains)} domain(s)"
            return Report(symbols=(self.symbol("DMARC_PERMERROR", reason),),
                          facts={"result": "permerror", "reason": reason})
        from_domain = domains.pop()
        spf = context.facts.get("spf", {})
        dkim = context.facts.get("dkim", {})
        # pct sampling keys on the message itself (not its bytes: a 25 MB
        # message need not be read again), so a re-check samples the same way.
        key = "\n".join([message.header("Message-ID") or "", message.header("Date") or "",
                          senders[0], message.header("Subject") or "",
                          str(message.size)]).encode("utf-8", "surrogateescape")
        outcome = evaluate(from_domain, spf.get("result"), spf.get("domain", ""),
                           list(dkim.get("signatures", [])), self.discovery, key)
        symbols = self._symbols(outcome, context.facts.get("arc", {}))
        facts = {"result": outcome.result, "from_domain": from_domain,
                 "policy": outcome.policy, "applied": outcome.applied,
                 "spf_aligned": outcome.spf_aligned, "dkim_aligned": outcome.dkim_aligned,
                 "dkim_domain": outcome.aligned_dkim_domain, "found_at": outcome.found_at,
                 "reason": outcome.reason}
        if any(s.name == "DMARC_ARC_OVERRIDE" for s in symbols):
            facts["override"] = "arc"
        return Report(symbols=tuple(symbols), facts=facts)

    def _symbols(self, outcome: DmarcResult, arc: dict) -> list[Symbol]:
        domain = outcome.from_domain
        if outcome.result == "pass":
            how = "DKIM " + outcome.aligned_dkim_domain if outcome.dkim_aligned else "SPF"
            return [self.symbol("DMARC_PASS", f"{domain}: aligned {how}")]
        if outcome.result == "none":
            return [self.symbol("DMARC_NA", domain)]
        if outcome.result == "temperror":
            return [self.symbol("DMARC_TEMPERROR", outcome.reason)]
        evidence = f"{domain}: p={outcome.policy}, SPF and DKIM not aligned"
        sealer = arc.get("sealer", "")
        if (arc.get("result") == "pass" and sealer
                and sealer in {s.lower() for s in self.settings.trusted_arc_sealers}):
            return [self.symbol("DMARC_ARC_OVERRIDE",
                                f"{evidence}; ARC chain sealed by trusted {sealer}")]
        found: list[Symbol] = []
        if outcome.sampled_out:
            found.append(self.symbol("DMARC_SAMPLED_OUT",
                                     f"{domain}: pct= left this message to p={outcome.applied}"))
        if outcome.applied == "reject":
            choice = self.settings.dmarc_reject_domains.get(domain, self.settings.dmarc_reject)
            if choice == "quarantine":
                found.append(self.symbol("DMARC_REJECT_DOWNGRADED", evidence))
            else:
                found.append(self.symbol("DMARC_POLICY_REJECT", evidence))
        elif outcome.applied == "quarantine":
            found.append(self.symbol("DMARC_POLICY_QUARANTINE", evidence))
        else:
            found.append(self.symbol("DMARC_POLICY_NONE", evidence))
        return found

"""DMARC: does the From domain's policy hold, and what does it ask for?

Uses the SPF and DKIM results of this message (their checks run first), and
the ARC result when the ARC check is enabled. The policy becomes a symbol;
the symbol becomes an action through config: ``[auth] dmarc_reject`` (and
``dmarc_reject_domains`` per From domain) say whether p=reject is honoured
as a reject or downgraded to quarantine.

Every author domain counts (RFC 7489 6.6.1): each mailbox of each From
field, ``From :`` fields included, and a ``user@domain`` written in an
unquoted display name, where a reader's mail program may show it; in a From
that is not exactly a mailbox list, every domain any reader could show
(``message.authors``, the one reading every check shares). Each is
evaluated and the strictest outcome applies, so ``From: ceo@bank.example,
x@evil.example`` is held to bank.example's policy. A From with no domain at
all (or only ones that cannot be domain names) is ``permerror``: DMARC can
pass nothing it cannot name.

A DNS failure is never a verdict: when an aligned identifier or the policy
record could not be checked, the result is ``DMARC_TEMPERROR``, and when
nothing aligned passed and the policy is or may be quarantine or reject,
``DMARC_TEMPFAIL`` asks the sender to retry (451 4.7.1 naming the name that
failed) rather than refusing or delivering the message on a DNS hiccup.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from gateway.checks import Check, CheckContext
from gateway.checks.sender import only_role_recipients
from gateway.config import Config
from gateway.dmarc import DmarcResult, PslDiscovery, evaluate
from gateway.dns import shared_resolver
from gateway.facts import ArcFacts, DkimFacts, DmarcFacts, SignatureResult, SpfFacts
from gateway.mail import DomainError, ascii_domain
from gateway.message import Message
from gateway.ruleset import Ruleset
from gateway.symbols import Report, Symbol

log = logging.getLogger("gateway.checks.dmarc")

# At most this many author domains are looked up for one message (each
# costs up to five lookups); more is itself a finding (DMARC_PERMERROR).
MAX_AUTHOR_DOMAINS = 10

# How strict each outcome is, to pick the one that applies when a message
# names several author domains.
SEVERITY = {
    "DMARC_PASS": 0, "DMARC_NA": 1, "DMARC_POLICY_NONE": 2, "DMARC_ARC_OVERRIDE": 2,
    "DMARC_TEMPERROR": 3, "DMARC_PERMERROR": 4, "DMARC_REJECT_EXEMPT_RCPT": 5,
    "DMARC_POLICY_QUARANTINE": 5, "DMARC_REJECT_DOWNGRADED": 6, "DMARC_TEMPFAIL": 7,
    "DMARC_POLICY_REJECT": 8,
}


@dataclass(frozen=True)
class AuthorOutcome:
    """One author domain's DMARC result and the symbols it comes to."""

    written: str
    outcome: DmarcResult
    symbols: tuple[Symbol, ...]

    @property
    def severity(self) -> int:
        return max(SEVERITY.get(s.name, 0) for s in self.symbols)


class DmarcCheck(Check):
    name = "dmarc"
    io_bound = True
    requires = ("spf", "dkim")
    wants = ("arc",)
    symbols = {
        "DMARC_PASS": "DMARC: SPF or DKIM passed aligned with the From domain",
        "DMARC_NA": "DMARC: the From domain publishes no usable policy",
        "DMARC_POLICY_NONE": "DMARC failed; the domain's policy is p=none (monitor only)",
        "DMARC_POLICY_QUARANTINE": "DMARC failed; the sender's domain asks to quarantine",
        "DMARC_POLICY_REJECT": "DMARC policy of the sender's domain says reject",
        "DMARC_REJECT_DOWNGRADED": "DMARC failed under p=reject; quarantined by local choice",
        "DMARC_REJECT_EXEMPT_RCPT": "DMARC failed under p=reject; not refused, as the message "
                                    "is for postmaster@/abuse@ only",
        "DMARC_SAMPLED_OUT": "DMARC failed but pct= or t=y left this message to a milder policy",
        "DMARC_ARC_OVERRIDE": "DMARC failed, but a trusted ARC sealer recorded a DMARC pass",
        "DMARC_TEMPERROR": "DMARC could not be checked now (DNS failure)",
        "DMARC_TEMPFAIL": "DMARC could not be checked now, and the sender's domain asks "
                          "to quarantine or reject what fails it: try again later",
        "DMARC_PERMERROR": "DMARC cannot apply: no author domain that can be checked",
    }

    def __init__(self, config: Config, ruleset: Ruleset):
        super().__init__(config, ruleset)
        self.discovery = PslDiscovery(shared_resolver(config))
        self.settings = config.auth
        self.trusted_sealers = {_ascii(s) for s in config.auth.trusted_arc_sealers}

    @classmethod
    def forced_actions(cls, config: Config) -> dict[str, str]:
        return {"DMARC_POLICY_REJECT": "reject", "DMARC_POLICY_QUARANTINE": "quarantine",
                "DMARC_REJECT_DOWNGRADED": "quarantine", "DMARC_TEMPFAIL": "tempfail"}

    def run(self, message: Message, context: CheckContext) -> Report:
        senders = message.headers("From")
        authors = message.authors
        if not authors.domains:
            reason = (f"{authors.fields} From field(s), {len(authors.mailboxes)} mailbox(es), "
                      "no author domain")
            if authors.problems:
                reason += f" ({'; '.join(authors.problems)[:200]})"
            return Report(symbols=(self.symbol("DMARC_PERMERROR", reason),),
                          facts=DmarcFacts("permerror", reason=reason).to_json())
        spf = SpfFacts.of(context.facts) or SpfFacts(None)
        dkim = DkimFacts.of(context.facts) or DkimFacts()
        signatures, unverified = dkim.signatures, dkim.unverified_domains or ()
        arc = ArcFacts.of(context.facts)
        # pct sampling keys on the message itself (not its bytes: a 25 MB
        # message need not be read again), so a re-check samples the same way.
        key = "\n".join([message.header("Message-ID") or "", message.header("Date") or "",
                         *senders, message.header("Subject") or "",
                         str(message.size)]).encode("utf-8", "surrogatepass")
        outcomes = [self._author(domain, spf, signatures, unverified, arc, key, message)
                    for domain in authors.domains[:MAX_AUTHOR_DOMAINS]]
        chosen = max(outcomes, key=lambda o: o.severity)  # the first of the strictest
        symbols = list(chosen.symbols)
        if len(outcomes) > 1:
            others = ", ".join(f"{o.outcome.from_domain or o.written} {o.outcome.result}"
                               for o in outcomes)
            symbols[-1] = self._with_evidence(
                symbols[-1], f"(strictest of {len(outcomes)} author domains: {others})")
        if len(authors.domains) > MAX_AUTHOR_DOMAINS:
            excess = (f"{len(authors.domains)} author domains, only the first "
                      f"{MAX_AUTHOR_DOMAINS} evaluated")
            if symbols[0].name == "DMARC_PERMERROR":
                symbols[0] = self._with_evidence(symbols[0], f"; {excess}")
            else:
                symbols.append(self.symbol("DMARC_PERMERROR", excess))
        outcome = chosen.outcome
        facts = DmarcFacts(
            outcome.result, from_domain=outcome.from_domain,
            # RFC 7489 11.2 policy.dmarc: the policy applied, after pct= and t=
            policy=outcome.applied if outcome.result == "fail" else outcome.policy,
            published_policy=outcome.policy, applied=outcome.applied,
            spf_aligned=outcome.spf_aligned, dkim_aligned=outcome.dkim_aligned,
            dkim_domain=outcome.aligned_dkim_domain, found_at=outcome.found_at,
            reason=outcome.reason,
            authors={o.outcome.from_domain or o.written: o.outcome.result for o in outcomes},
            override="arc" if any(s.name == "DMARC_ARC_OVERRIDE" for s in symbols) else None)
        return Report(symbols=tuple(symbols), facts=facts.to_json())

    def _author(self, written: str, spf: SpfFacts, signatures: Sequence[SignatureResult],
                unverified: Sequence[str], arc: ArcFacts | None, key: bytes,
                message: Message) -> AuthorOutcome:
        try:
            domain = ascii_domain(written)
            if _is_ip_address(domain):
                raise DomainError(f"{written!r}: an address literal is not a domain")
        except DomainError as exc:
            outcome = DmarcResult("permerror", reason=str(exc))
            return AuthorOutcome(written, outcome, (self.symbol("DMARC_PERMERROR", str(exc)),))
        try:
            outcome = evaluate(domain, spf.result, spf.domain or "", signatures,
                               self.discovery, key, unverified)
            return AuthorOutcome(written, outcome, tuple(self._symbols(outcome, arc, message)))
        except Exception as exc:  # message content must never make the check fail
            log.warning("DMARC: cannot evaluate %s: %r", domain, exc)
            reason = f"{domain}: cannot be evaluated ({type(exc).__name__})"
            return AuthorOutcome(written, DmarcResult("permerror", domain, reason=reason),
                                 (self.symbol("DMARC_PERMERROR", reason),))

    def _with_evidence(self, symbol: Symbol, more: str) -> Symbol:
        return self.symbol(symbol.name, f"{symbol.evidence} {more}".strip())

    def _symbols(self, outcome: DmarcResult, arc: ArcFacts | None,
                 message: Message) -> list[Symbol]:
        domain = outcome.from_domain
        # What the record had that was ignored or read as a default, and np=
        # left aside because the subdomain's existence could not be looked up.
        noted = "".join(f" ({what}: {text})" for what, text in sorted(outcome.details.items()))
        if outcome.result == "pass":
            how = "DKIM " + outcome.aligned_dkim_domain if outcome.dkim_aligned else "SPF"
            return [self.symbol("DMARC_PASS", f"{domain}: aligned {how}{noted}")]
        if outcome.result == "none":
            return [self.symbol("DMARC_NA", f"{domain}: {outcome.reason}")]
        if outcome.result == "permerror":
            return [self.symbol("DMARC_PERMERROR", outcome.reason)]
        if outcome.result == "temperror":
            policy = f"p={outcome.applied}" if outcome.applied else "policy unknown"
            evidence = f"{domain} ({policy}): {outcome.reason}"
            override = self._arc_override(domain, arc)
            if override.startswith("ARC chain"):
                return [self.symbol("DMARC_TEMPERROR", f"{evidence}; {override}")]
            temporary = [self.symbol("DMARC_TEMPERROR", evidence)]
            if outcome.retry:
                temporary.append(self.symbol("DMARC_TEMPFAIL", evidence))
            return temporary
        evidence = f"{domain}: p={outcome.policy}, SPF and DKIM not aligned{noted}"
        override = self._arc_override(domain, arc)
        if override.startswith("ARC chain"):
            return [self.symbol("DMARC_ARC_OVERRIDE", f"{evidence}; {override}")]
        if override:
            evidence += f"; {override}"

        found: list[Symbol] = []
        if outcome.sampled_out:
            why = "t=y (testing)" if outcome.testing else "pct="
            found.append(self.symbol("DMARC_SAMPLED_OUT",
                                     f"{domain}: {why} left this message to p={outcome.applied}"))
        if outcome.applied == "reject":
            choice = self.settings.dmarc_reject_domains.get(domain, self.settings.dmarc_reject)
            if only_role_recipients(message.envelope.rcpt_to,
                                    self.settings.reject_exempt_recipients):
                found.append(self.symbol("DMARC_REJECT_EXEMPT_RCPT", evidence))
            elif outcome.held_not_refused:  # a limit of ours, not the sender's doing
                found.append(self.symbol("DMARC_REJECT_DOWNGRADED",
                                         f"{evidence}; {outcome.held_not_refused}"))
            elif choice == "quarantine":
                found.append(self.symbol("DMARC_REJECT_DOWNGRADED", evidence))
            else:
                found.append(self.symbol("DMARC_POLICY_REJECT", evidence))
        elif outcome.applied == "quarantine":
            found.append(self.symbol("DMARC_POLICY_QUARANTINE", evidence))
        else:
            found.append(self.symbol("DMARC_POLICY_NONE", evidence))
        return found

    def _arc_override(self, domain: str, arc: ArcFacts | None) -> str:
        """"ARC chain ..." when a trusted sealer vouches for this domain's DMARC
        pass (RFC 8617 7.2), else why not (or "" when no trusted sealer sealed)."""
        if arc is None or arc.result != "pass" or not arc.sealer \
                or _ascii(arc.sealer) not in self.trusted_sealers:
            return ""
        sealer = arc.sealer
        recorded = arc.sealer_dmarc or "nothing"
        recorded_from = _ascii(arc.sealer_dmarc_from or "")
        if recorded == "pass" and recorded_from in ("", domain):
            return f"ARC chain sealed by trusted {sealer}, which recorded dmarc=pass"
        if recorded == "pass":
            return (f"trusted ARC sealer {sealer} recorded dmarc=pass for {recorded_from}, "
                    "not this domain: no override")
        return f"trusted ARC sealer {sealer} recorded dmarc={recorded}: no override"


def _is_ip_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text.removeprefix("ipv6:"))
    except ValueError:
        return False
    return True


def _ascii(domain: str) -> str:
    try:
        return ascii_domain(domain)
    except DomainError:
        return domain.strip().rstrip(".").lower()


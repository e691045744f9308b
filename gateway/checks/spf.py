"""SPF (RFC 7208, pyspf) on MAIL FROM, or on HELO for bounces (null sender).

pyspf does its DNS through the module-level ``spf.DNSLookup``; when the
check is built (not when this module is imported, so importing it changes
nothing for anyone else using pyspf), it is replaced by a function on the
gateway's shared resolver, so SPF gets the same timeouts and caches as every
other check (pyspf's own default asks the system resolver with the search
list and waits up to 20 s per lookup). The 10-lookup and 2-void-lookup
limits are pyspf's.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import spf

from gateway.checks import Check, CheckContext
from gateway.config import Config
from gateway.dns import DnsTempError, NoRecords, NxDomain, Resolver, shared_resolver
from gateway.facts import SpfFacts
from gateway.message import Message
from gateway.ruleset import Ruleset
from gateway.symbols import Report

log = logging.getLogger("gateway.checks.spf")

RESULTS = ("pass", "fail", "softfail", "neutral", "none", "temperror", "permerror")


# pyspf looks up through one module-level function; the resolver it should
# use is the one of the check running on this thread.
_current = threading.local()
_install_lock = threading.Lock()


def _pyspf_lookup(name: str, qtype: str, tcpfallback: bool = True,
                  timeout: float | None = None) -> list[tuple[tuple[str, str], Any]]:
    """spf.DNSLookup, answering from the calling check's resolver."""
    resolver: Resolver | None = getattr(_current, "resolver", None)
    if resolver is None:
        raise spf.TempError("DNS lookup outside the gateway's SPF check")
    try:
        values = resolver.lookup(str(name), qtype)
    except (NxDomain, NoRecords):
        return []
    except DnsTempError as exc:
        raise spf.TempError(f"DNS {exc}") from None
    if qtype in ("TXT", "SPF"):
        # pyspf wants the character-strings of a TXT record as bytes.
        return [((name, qtype), [value.encode("utf-8", "replace")]) for value in values]
    return [((name, qtype), value) for value in values]


def install_pyspf_lookup() -> None:
    """Make pyspf look up through :func:`_pyspf_lookup`. Called when the
    check is built; idempotent."""
    with _install_lock:
        if spf.DNSLookup is not _pyspf_lookup:
            spf.DNSLookup = _pyspf_lookup


class SpfCheck(Check):
    name = "spf"
    io_bound = True
    symbols = {
        "SPF_PASS": "SPF: the client may send for the sender domain",
        "SPF_FAIL": "SPF hard fail: the sender domain says this client may not send for it",
        "SPF_SOFTFAIL": "SPF soft fail: the sender domain doubts this client",
        "SPF_NEUTRAL": "SPF neutral: the sender domain makes no assertion",
        "SPF_NONE": "SPF: the sender domain publishes no SPF record",
        "SPF_TEMPERROR": "SPF could not be checked now (DNS failure)",
        "SPF_PERMERROR": "SPF record is broken (syntax, or too many lookups)",
    }

    def __init__(self, config: Config, ruleset: Ruleset):
        super().__init__(config, ruleset)
        self.resolver = shared_resolver(config)
        install_pyspf_lookup()

    def run(self, message: Message, context: CheckContext) -> Report:
        envelope = message.envelope
        if not envelope.client_ip:
            return Report(facts=SpfFacts(None, reason="no client IP to check").to_json())
        sender = envelope.mail_from
        identity = "mailfrom" if sender else "helo"
        if not sender and not envelope.helo:
            return Report(facts=SpfFacts(None, reason="null sender and no HELO").to_json())
        domain = sender.rpartition("@")[2].lower() if sender else (envelope.helo or "").lower()
        mechanism = explanation = ""
        if domain.startswith("["):
            # An address literal is no domain: nothing to look up (RFC 7208 2.3, 4.3).
            result, explanation = "none", "an address literal is not a domain"
        else:
            try:
                result, explanation, mechanism = self._check(envelope.client_ip, sender,
                                                             envelope.helo or "")
            except Exception as exc:  # what a sender writes must never make the check fail
                log.warning("SPF: cannot check %r: %r", domain[:80], exc)
                result = "permerror"
                explanation = f"cannot be checked: {type(exc).__name__}: {str(exc)[:80]}"
        evidence = f"{domain}: {result}" + (f" ({mechanism})" if mechanism else "")
        if result in ("temperror", "permerror", "none") and explanation:
            evidence += f": {explanation}"
        return Report(
            symbols=(self.symbol(f"SPF_{result.upper()}", evidence),),
            facts=SpfFacts(result, identity=identity, domain=domain,
                           sender=sender or f"postmaster@{domain}", mechanism=mechanism,
                           explanation=explanation).to_json(),
        )

    def _check(self, client_ip: str, sender: str, helo: str) -> tuple[str, str, str]:
        """(result, explanation, mechanism) from pyspf."""
        query = spf.query(i=client_ip.strip("[]"), s=sender, h=helo,
                          timeout=self.config.dns.lifetime,
                          querytime=self.config.pipeline.budget)
        _current.resolver = self.resolver
        try:
            result, _code, explanation = query.check()
        finally:
            _current.resolver = None
        if result not in RESULTS:
            result = "permerror"
        return result, explanation or "", getattr(query, "mechanism", None) or ""

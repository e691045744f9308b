"""ARC (RFC 8617, dkimpy): is the chain of custody intact, and who sealed it?

The result and the most recent sealer feed DMARC: a passing chain sealed by
a domain in ``[auth] trusted_arc_sealers`` (a mailing list or forwarder you
trust to have checked the original) may override a DMARC failure, but only
when that sealer's own ARC-Authentication-Results say ``dmarc=pass``
(RFC 8617 7.2: what the sealer recorded is what is trusted), so the facts
include what it recorded.

ARC fields longer than the DKIM check's limits are refused before dkimpy
sees them (its b= stripping is quadratic on folded white space): the chain
is then ``fail``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import dkim

from gateway import authresults
from gateway.checks import Check, CheckContext
from gateway.checks.dkim import (
    MIN_KEY_BITS,
    install_linear_relaxed_body,
    select_key_record,
    signature_header_problem,
)
from gateway.config import Config
from gateway.dns import DnsTempError, NoRecords, NxDomain, Resolver, shared_resolver
from gateway.facts import ArcFacts
from gateway.message import Message
from gateway.ruleset import Ruleset
from gateway.symbols import Report

log = logging.getLogger("gateway.checks.arc")

ARC_HEADERS = ("ARC-Seal", "ARC-Message-Signature", "ARC-Authentication-Results")
_ARC_HEADERS_LOWER = tuple(h.lower().encode() for h in ARC_HEADERS)


class ArcTempError(Exception):
    pass


def dkimpy_txt(resolver: Resolver) -> Callable[..., bytes | None]:
    """A dkimpy ``dnsfunc``: the key record as bytes, None if there is none
    (or several: RFC 6376 3.6.2.2); raises on a temporary failure instead of
    answering "no key"."""

    def lookup(name: bytes | str, timeout: float = 5) -> bytes | None:
        text = name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name)
        try:
            records = resolver.txt(text)
        except (NxDomain, NoRecords):  # InvalidName included: no key can exist
            return None
        except DnsTempError as exc:
            raise ArcTempError(str(exc)) from None
        record, _why = select_key_record(records, text)
        return record.encode() if record is not None else None

    return lookup


def sealer_results(fields: list[tuple[bytes, bytes]], instance: int) -> authresults.ParsedResults:
    """What the sealer of ARC set ``instance`` recorded: its
    ARC-Authentication-Results, read as RFC 8601 says (nothing if there is
    not exactly one for that instance)."""
    found = []
    for name, value in fields:
        if name.lower() != b"arc-authentication-results":
            continue
        text = value.decode("utf-8", "replace")
        if authresults.arc_instance(text) == instance:
            found.append(text)
    if len(found) != 1:
        return authresults.ParsedResults("")
    return authresults.parse(found[0], instance=True)


class ArcCheck(Check):
    name = "arc"
    io_bound = True
    symbols = {
        "ARC_PASS": "the ARC chain verifies",
        "ARC_FAIL": "the ARC chain is broken",
        "ARC_NONE": "no ARC chain",
        "ARC_TEMPERROR": "the ARC chain could not be checked now (DNS failure)",
    }

    def __init__(self, config: Config, ruleset: Ruleset):
        super().__init__(config, ruleset)
        self.lookup = dkimpy_txt(shared_resolver(config))
        install_linear_relaxed_body()

    def run(self, message: Message, context: CheckContext) -> Report:
        if not any(message.header(h) is not None for h in ARC_HEADERS):
            return Report(symbols=(self.symbol("ARC_NONE", "0 instance(s)"),),
                          facts=ArcFacts("none", sealer="", instances=0,
                                         reason="Message is not ARC signed").to_json())
        try:
            return self._verify(message)
        except ArcTempError as exc:
            return Report(symbols=(self.symbol("ARC_TEMPERROR", str(exc)),),
                          facts=ArcFacts("temperror", reason=str(exc)).to_json())
        except Exception as exc:  # message content must never make the check fail
            log.warning("ARC: cannot verify a chain: %r", exc)
            return self._failed(f"cannot verify: {type(exc).__name__}: {str(exc)[:80]}")

    def _failed(self, reason: str, instances: int = 0, sealer: str = "") -> Report:
        evidence = f"{instances} instance(s)" + (f", sealed by {sealer}" if sealer else "")
        return Report(symbols=(self.symbol("ARC_FAIL", f"{evidence}: {reason}"),),
                      facts=ArcFacts("fail", sealer=sealer, instances=instances,
                                     reason=reason).to_json())

    def _verify(self, message: Message) -> Report:
        chain = dkim.ARC(message.raw.bytes(), minkey=MIN_KEY_BITS)
        fields = [(n, v) for n, v in chain.headers if n.lower() in _ARC_HEADERS_LOWER]
        for name, value in fields:
            problem = signature_header_problem(value)
            if problem:
                return self._failed(f"{name.decode('ascii', 'replace')}: {problem}")
        try:
            cv, instances, reason = chain.verify(dnsfunc=self.lookup)
        except dkim.DKIMException as exc:
            cv, instances, reason = dkim.CV_Fail, [], str(exc)
        result = (cv or b"fail").decode("ascii", "replace").lower()
        sealer, latest = "", 0
        if instances:
            newest = max(instances, key=lambda i: i.get("instance", 0))
            latest = int(newest.get("instance", 0))
            sealer = (newest.get("as-domain") or b"").decode("ascii", "replace").lower()
        if result not in ("pass", "none"):
            return self._failed(reason, len(instances), sealer)
        symbol = "ARC_PASS" if result == "pass" else "ARC_NONE"
        evidence = f"{len(instances)} instance(s)" + (f", sealed by {sealer}" if sealer else "")
        sealer_dmarc = sealer_dmarc_from = ""
        if result == "pass" and latest:
            recorded = sealer_results(fields, latest)
            dmarc = next((r for r in recorded.results if r.method == "dmarc"), None)
            if dmarc is not None:
                sealer_dmarc = dmarc.result
                sealer_dmarc_from = dmarc.properties.get("header.from", "").lower()
                evidence += f", which recorded dmarc={dmarc.result}"
        facts = ArcFacts(result, sealer=sealer, instances=len(instances), reason=reason,
                         sealer_dmarc=sealer_dmarc, sealer_dmarc_from=sealer_dmarc_from)
        return Report(symbols=(self.symbol(symbol, evidence),), facts=facts.to_json())

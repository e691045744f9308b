"""ARC (RFC 8617, dkimpy): is the chain of custody intact, and who sealed it?

The result and the most recent sealer feed DMARC: a passing chain sealed by
a domain in ``[auth] trusted_arc_sealers`` (a mailing list or forwarder you
trust to have checked the original) may override a DMARC failure.
"""

from __future__ import annotations

import dkim

from gateway.checks import Check, CheckContext
from gateway.config import Config
from gateway.dns import DnsTempError, NoRecords, NxDomain, Resolver, shared_resolver
from gateway.message import Message
from gateway.symbols import Report

ARC_HEADERS = ("ARC-Seal", "ARC-Message-Signature", "ARC-Authentication-Results")


class ArcTempError(Exception):
    pass


def dkimpy_txt(resolver: Resolver):
    """A dkimpy ``dnsfunc``: the TXT record as bytes, None if there is none;
    raises on a temporary failure instead of answering "no key"."""

    def lookup(name, timeout=5):
        try:
            records = resolver.txt(name.decode() if isinstance(name, bytes) else name)
        except (NxDomain, NoRecords):
            return None
        except DnsTempError as exc:
            raise ArcTempError(str(exc)) from None
        return records[0].encode() if records else None

    return lookup


class ArcCheck(Check):
    name = "arc"
    io_bound = True
    symbols = {
        "ARC_PASS": "the ARC chain verifies",
        "ARC_FAIL": "the ARC chain is broken",
        "ARC_NONE": "no ARC chain",
        "ARC_TEMPERROR": "the ARC chain could not be checked now (DNS failure)",
    }

    def __init__(self, config: Config):
        super().__init__(config)
        self.lookup = dkimpy_txt(shared_resolver(config))

    def run(self, message: Message, context: CheckContext) -> Report:
        if not any(message.header(h) is not None for h in ARC_HEADERS):
            return Report(symbols=(self.symbol("ARC_NONE", "0 instance(s)"),),
                          facts={"result": "none", "sealer": "", "instances": 0,
                                 "reason": "Message is not ARC signed"})
        try:
            cv, instances, reason = dkim.arc_verify(message.raw.bytes(), dnsfunc=self.lookup)
        except ArcTempError as exc:
            return Report(symbols=(self.symbol("ARC_TEMPERROR", str(exc)),),
                          facts={"result": "temperror", "reason": str(exc)})
        result = (cv or b"fail").decode().lower()
        sealer = ""
        if instances:
            latest = max(instances, key=lambda i: i.get("instance", 0))
            sealer = (latest.get("as-domain") or b"").decode("ascii", "replace").lower()
        symbol = {"pass": "ARC_PASS", "none": "ARC_NONE"}.get(result, "ARC_FAIL")
        evidence = f"{len(instances)} instance(s)" + (f", sealed by {sealer}" if sealer else "")
        if result == "fail":
            evidence += f": {reason}"
        return Report(symbols=(self.symbol(symbol, evidence),),
                      facts={"result": result if result in ("pass", "none") else "fail",
                             "sealer": sealer, "instances": len(instances), "reason": reason})

"""The Authentication-Results header (RFC 8601), built with ``authres``.

One header per message, under our authserv-id, from the facts the SPF,
DKIM, DMARC, ARC and iprev checks reported. A header of the same name that
arrives claiming our authserv-id is forged (only we write under it) and the
milter removes it before adding ours.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import authres
import authres.arc
import authres.dmarc

HEADER = "Authentication-Results"


def build(authserv_id: str, facts: Mapping[str, Mapping[str, Any]]) -> str | None:
    """The header's value, or None if no authentication check ran."""
    results: list[authres.core.AuthenticationResult] = []
    spf = facts.get("spf") or {}
    if spf.get("result"):
        if spf.get("identity") == "helo":
            results.append(authres.SPFAuthenticationResult(
                result=spf["result"], smtp_helo=spf.get("domain")))
        else:
            results.append(authres.SPFAuthenticationResult(
                result=spf["result"], smtp_mailfrom=spf.get("sender")))
    signatures = (facts.get("dkim") or {}).get("signatures")
    if signatures is not None:
        if not signatures:
            results.append(authres.core.DKIMAuthenticationResult(result="none"))
        for signature in signatures:
            properties = []
            if signature.get("header_b"):
                properties.append(authres.AuthenticationResultProperty(
                    "header", "b", signature["header_b"][:8]))
            results.append(authres.core.DKIMAuthenticationResult(
                result=signature["result"],
                reason=signature.get("reason") or None,
                header_d=signature.get("domain") or None,
                header_s=signature.get("selector") or None,
                header_a=signature.get("algorithm") or None,
                properties=properties or None,
            ))
    dmarc = facts.get("dmarc") or {}
    if dmarc.get("result"):
        reason = "overridden by trusted ARC" if dmarc.get("override") else None
        results.append(authres.dmarc.DMARCAuthenticationResult(
            result=dmarc["result"], reason=reason,
            header_from=dmarc.get("from_domain") or None,
            policy=dmarc.get("policy") or None))
    arc = facts.get("arc") or {}
    if arc.get("result"):
        results.append(authres.arc.ARCAuthenticationResult(
            result=arc["result"], header_as_d=arc.get("sealer") or None))
    iprev = facts.get("iprev") or {}
    if iprev.get("result"):
        results.append(authres.IPRevAuthenticationResult(
            result=iprev["result"], policy_iprev=iprev.get("ip"),
            policy_iprev_comment=iprev.get("name") or None))
    if not results:
        return None
    header = authres.AuthenticationResultsHeader(authserv_id=authserv_id, results=results)
    return str(header).split(":", 1)[1].strip()


def claims(value: str, authserv_id: str) -> bool:
    """Whether an Authentication-Results value is written under ``authserv_id``."""
    head = value.strip().split(";", 1)[0].split()
    return bool(head) and head[0].lower() == authserv_id.lower()

"""DMARC (RFC 7489): records, policy discovery, alignment, the result.

Written here on top of ``publicsuffixlist`` rather than taken from the PyPI
``dmarc`` package, which (measured) treats relaxed alignment as a plain
suffix test, never applies ``pct`` and raises on a junk TXT record next to a
valid one. Policy discovery is an interface: RFC 7489 looks at the From
domain and then its organizational domain (public suffix list); DMARCbis
replaces that with a DNS tree walk, which can be added as another
:class:`PolicyDiscovery` without touching the evaluation.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Protocol

from gateway.classifier.features import registrable_domain
from gateway.dns import DnsTempError, NoRecords, NxDomain, Resolver

POLICIES = ("none", "quarantine", "reject")


class DmarcTempError(Exception):
    pass


@dataclass(frozen=True)
class DmarcRecord:
    policy: str  # p
    subdomain_policy: str  # sp (defaults to p)
    adkim: str = "r"
    aspf: str = "r"
    pct: int = 100
    raw: str = ""


class RecordError(ValueError):
    pass


def parse_record(text: str) -> DmarcRecord:
    """A DMARC TXT record; raises RecordError when it is not a usable one."""
    tags: dict[str, str] = {}
    for part in text.split(";"):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        if not sep:
            raise RecordError(f"tag without value: {part.strip()!r}")
        key = key.strip().lower()
        tags.setdefault(key, value.strip())
    if tags.get("v") != "DMARC1" or not text.lstrip().startswith("v"):
        raise RecordError("not a DMARC1 record")
    policy = tags.get("p", "").lower()
    if policy not in POLICIES:
        # RFC 7489 6.6.3: with a valid rua, an invalid or missing p is p=none.
        if "rua" in tags:
            policy = "none"
        else:
            raise RecordError(f"invalid p={tags.get('p')!r}")
    subdomain = tags.get("sp", "").lower()
    if subdomain not in POLICIES:
        subdomain = policy
    try:
        pct = int(tags.get("pct", "100"))
    except ValueError:
        pct = 100
    pct = min(max(pct, 0), 100)
    adkim = tags.get("adkim", "r").lower()
    aspf = tags.get("aspf", "r").lower()
    return DmarcRecord(policy=policy, subdomain_policy=subdomain,
                       adkim=adkim if adkim in ("r", "s") else "r",
                       aspf=aspf if aspf in ("r", "s") else "r", pct=pct, raw=text)


@dataclass(frozen=True)
class Discovered:
    record: DmarcRecord | None
    found_at: str | None  # the domain whose _dmarc record applies
    organizational_domain: str


class PolicyDiscovery(Protocol):
    def organizational_domain(self, domain: str) -> str: ...

    def discover(self, from_domain: str) -> Discovered: ...


class PslDiscovery:
    """RFC 7489 section 6.6.3: the From domain, then its organizational domain."""

    def __init__(self, resolver: Resolver):
        self.resolver = resolver

    def organizational_domain(self, domain: str) -> str:
        return registrable_domain(domain.lower().rstrip("."))

    def discover(self, from_domain: str) -> Discovered:
        organizational = self.organizational_domain(from_domain)
        for candidate in dict.fromkeys([from_domain, organizational]):
            record = self._record_at(candidate)
            if record is not None:
                return Discovered(record, candidate, organizational)
        return Discovered(None, None, organizational)

    def _record_at(self, domain: str) -> DmarcRecord | None:
        try:
            texts = self.resolver.txt(f"_dmarc.{domain}")
        except (NxDomain, NoRecords):
            return None
        except DnsTempError as exc:
            raise DmarcTempError(str(exc)) from None
        # Junk TXT records beside the DMARC one are ignored; two DMARC
        # records mean no policy at all (RFC 7489 6.6.3).
        candidates = [t for t in texts if t.strip().lower().startswith("v=dmarc1")]
        if len(candidates) != 1:
            return None
        try:
            return parse_record(candidates[0])
        except RecordError:
            return None


@dataclass(frozen=True)
class DmarcResult:
    result: str  # pass, fail, none, temperror, permerror
    from_domain: str = ""
    policy: str = ""  # the policy that applies (p or sp), "" without a record
    applied: str = ""  # after pct sampling: none, quarantine, reject
    sampled_out: bool = False
    spf_aligned: bool = False
    dkim_aligned: bool = False
    aligned_dkim_domain: str = ""
    found_at: str = ""
    reason: str = ""
    details: dict[str, str] = field(default_factory=dict)


def aligned(identifier: str, from_domain: str, mode: str,
            discovery: PolicyDiscovery) -> bool:
    identifier = identifier.lower().rstrip(".")
    from_domain = from_domain.lower().rstrip(".")
    if not identifier:
        return False
    if mode == "s":
        return identifier == from_domain
    return discovery.organizational_domain(identifier) == \
        discovery.organizational_domain(from_domain)


def sample(message_key: bytes, pct: int) -> bool:
    """Whether this message falls inside the pct% the policy applies to.
    Derived from the message itself, so a re-check gives the same answer."""
    if pct >= 100:
        return True
    draw = int.from_bytes(hashlib.sha256(message_key).digest()[:8], "big") / 2**64
    return draw * 100 < pct


def evaluate(from_domain: str, spf_result: str | None, spf_domain: str,
             dkim_signatures: list[dict], discovery: PolicyDiscovery,
             message_key: bytes) -> DmarcResult:
    try:
        found = discovery.discover(from_domain)
    except DmarcTempError as exc:
        return DmarcResult("temperror", from_domain, reason=str(exc))
    if found.record is None:
        return DmarcResult("none", from_domain, reason="no DMARC record")
    record = found.record
    policy = record.policy
    if found.found_at != from_domain:  # inherited from the organizational domain
        policy = record.subdomain_policy
    spf_ok = spf_result == "pass" and aligned(spf_domain, from_domain, record.aspf, discovery)
    dkim_domain = next(
        (s["domain"] for s in dkim_signatures
         if s.get("result") == "pass" and aligned(s["domain"], from_domain, record.adkim,
                                                  discovery)), "")
    passed = spf_ok or bool(dkim_domain)
    if passed:
        return DmarcResult("pass", from_domain, policy, "none", False, spf_ok, bool(dkim_domain),
                           dkim_domain, found.found_at or "")
    applies = sample(message_key, record.pct)
    applied = policy
    if not applies:  # outside pct: the next milder policy (RFC 7489 6.6.4)
        applied = {"reject": "quarantine", "quarantine": "none"}.get(policy, "none")
    return DmarcResult("fail", from_domain, policy, applied, not applies, False, False, "",
                       found.found_at or "", reason="neither SPF nor DKIM aligned and passed")

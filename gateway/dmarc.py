"""DMARC (RFC 7489): records, policy discovery, alignment, the result.

Written here on top of ``publicsuffixlist`` rather than taken from the PyPI
``dmarc`` package, which (measured) treats relaxed alignment as a plain
suffix test, never applies ``pct`` and raises on a junk TXT record next to a
valid one. Policy discovery is an interface: RFC 7489 looks at the From
domain and then its organizational domain (public suffix list); DMARCbis
replaces that with a DNS tree walk, which can be added as another
:class:`PolicyDiscovery` without touching the evaluation.

Where RFC 7489 is exact, this follows it to the letter:

- records are read with the grammar of section 6.4: white space around
  ``=`` and ``;``, tag names and keywords in any case (``V=DMARC1``,
  ``p=Reject``), but the version ``DMARC1`` exactly as written there;
  something that is not ``tag=value`` is ignored, like an unknown tag;
- discovery (6.6.3) stops at the first domain that has records beginning
  with ``v=DMARC1``: two of them, or one without a valid ``p=``/``sp=`` and
  no valid ``rua=``, mean no DMARC policy at all (the organizational
  domain's is *not* used instead); with a valid ``rua=`` such a record is
  read as ``p=none``.

From DMARCbis (draft-ietf-dmarc-dmarcbis) it takes ``np=``, the policy for
subdomains that do not exist, and ``t=y``, which asks for the next milder
policy (like ``pct=0``).

A DNS failure is never read as a permanent answer (RFC 7489 6.6.2 and
6.6.3, RFC 9091): an aligned identifier that could not be checked (its
DKIM key or its SPF record timed out) makes the result ``temperror``, not
``fail``; a policy record that could not be read is ``temperror`` too; and
``np=`` applies only when the subdomain is known not to exist (NXDOMAIN or
no A, AAAA or MX), never when its lookups fail. A ``temperror`` says
whether the message should be retried (:attr:`DmarcResult.retry`): when
nothing aligned passed and the policy is, or may be, quarantine or reject.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from gateway.dns import DnsTempError, NoRecords, NxDomain, Resolver
from gateway.facts import SignatureResult
from gateway.mail import DomainError, ascii_domain, registrable_domain

POLICIES = ("none", "quarantine", "reject")
VERSION = "DMARC1"  # RFC 7489 6.4: %x44 %x4d %x41 %x52 %x43 %x31, case-sensitive
MILDER = {"reject": "quarantine", "quarantine": "none", "none": "none"}
STRICTNESS = {"none": 0, "quarantine": 1, "reject": 2}
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:[^\s,!]+(?:![0-9]+[kmgtKMGT]?)?")
_DIGITS = re.compile(r"[0-9]{1,3}")


class DmarcTempError(Exception):
    pass


class RecordError(ValueError):
    """A TXT record that gives no DMARC policy."""


class NotDmarcRecord(RecordError):
    """It does not begin with ``v=DMARC1``: not a DMARC record at all."""


class UnusableRecord(RecordError):
    """A DMARC record without a valid p= (or with an invalid sp=) and no
    valid rua=: RFC 7489 6.6.3 step 6 applies no DMARC processing."""


@dataclass(frozen=True)
class DmarcRecord:
    policy: str  # p
    subdomain_policy: str  # sp, defaulting to p
    adkim: str = "r"
    aspf: str = "r"
    pct: int = 100
    raw: str = ""
    # DMARCbis np=: subdomains that do not exist (defaults to sp).
    nonexistent_policy: str = ""
    testing: bool = False  # DMARCbis t=y: apply the next milder policy
    problems: tuple[str, ...] = ()  # what was ignored or replaced by a default

    def __post_init__(self) -> None:
        if not self.nonexistent_policy:
            object.__setattr__(self, "nonexistent_policy", self.subdomain_policy)


def record_tags(text: str) -> tuple[list[tuple[str, str]], list[str]]:
    """(name, value) pairs in order, names lower case; and what was skipped."""
    tags: list[tuple[str, str]] = []
    skipped: list[str] = []
    for part in text.split(";"):
        part = part.strip(" \t\r\n")
        if not part:
            continue
        name, sep, value = part.partition("=")
        name = name.strip(" \t\r\n").lower()
        if not sep or not name or not re.fullmatch(r"[a-z][a-z0-9_]*", name):
            skipped.append(f"ignored {part[:40]!r} (not tag=value)")
            continue
        tags.append((name, value.strip(" \t\r\n")))
    return tags, skipped


def is_dmarc_record(text: str) -> bool:
    """Whether a TXT record begins with the v=DMARC1 tag (RFC 7489 6.6.3 step 2)."""
    first = text.split(";", 1)[0]
    name, sep, value = first.partition("=")
    return bool(sep) and name.strip(" \t\r\n").lower() == "v" and \
        value.strip(" \t\r\n") == VERSION


def valid_rua(value: str) -> bool:
    """At least one syntactically valid reporting URI (RFC 7489 6.6.3 step 6)."""
    return any(_URI.fullmatch(uri.strip(" \t\r\n")) for uri in value.split(","))


def parse_record(text: str) -> DmarcRecord:
    """A DMARC TXT record; raises NotDmarcRecord or UnusableRecord."""
    if not is_dmarc_record(text):
        raise NotDmarcRecord("not a DMARC1 record")
    pairs, problems = record_tags(text)
    tags: dict[str, str] = {}
    for name, value in pairs:
        if name in tags:
            problems.append(f"{name}= given twice, the first kept")
            continue
        tags[name] = value
    policy = tags.get("p", "").lower()
    subdomain = tags.get("sp", "").lower()
    invalid = []
    if policy not in POLICIES:
        invalid.append(f"p={tags['p']!r} is not valid" if "p" in tags else "no p=")
    if "sp" in tags and subdomain not in POLICIES:
        invalid.append(f"sp={tags['sp']!r} is not valid")
    if invalid:
        if not valid_rua(tags.get("rua", "")):
            raise UnusableRecord(", ".join(invalid) + " and no valid rua=")
        # 6.6.3 step 6.1: as if the record said v=DMARC1; p=none.
        problems.append(", ".join(invalid) + ": read as p=none (it has a valid rua=)")
        policy, subdomain = "none", ""
        tags.pop("np", None)  # as if the record were "v=DMARC1; p=none"
    nonexistent = tags.get("np", "").lower()
    if "np" in tags and nonexistent not in POLICIES:
        problems.append(f"np={tags['np']!r} ignored")
        nonexistent = ""
    pct = 100
    if "pct" in tags:
        if _DIGITS.fullmatch(tags["pct"]):
            pct = min(int(tags["pct"]), 100)
        else:
            problems.append(f"pct={tags['pct']!r} read as 100")
    alignment = {}
    for name in ("adkim", "aspf"):
        value = tags.get(name, "r").lower()
        if value not in ("r", "s"):
            problems.append(f"{name}={tags[name]!r} read as r")
            value = "r"
        alignment[name] = value
    testing = tags.get("t", "n").lower() == "y"
    return DmarcRecord(policy=policy, subdomain_policy=subdomain or policy,
                       adkim=alignment["adkim"], aspf=alignment["aspf"], pct=pct, raw=text,
                       nonexistent_policy=nonexistent,
                       testing=testing, problems=tuple(problems))


@dataclass(frozen=True)
class Discovered:
    record: DmarcRecord | None
    found_at: str | None  # the domain whose _dmarc record applies (or stopped discovery)
    organizational_domain: str
    reason: str = ""  # why no policy applies, when record is None


class PolicyDiscovery(Protocol):
    def organizational_domain(self, domain: str) -> str: ...

    def discover(self, from_domain: str) -> Discovered: ...

    def exists(self, domain: str) -> bool | None: ...


class PslDiscovery:
    """RFC 7489 section 6.6.3: the From domain, then its organizational domain."""

    def __init__(self, resolver: Resolver):
        self.resolver = resolver

    def organizational_domain(self, domain: str) -> str:
        return registrable_domain(domain.lower().rstrip("."))

    def discover(self, from_domain: str) -> Discovered:
        organizational = self.organizational_domain(from_domain)
        for candidate in dict.fromkeys([from_domain, organizational]):
            texts = self._dmarc_records(candidate)
            if not texts:
                continue  # steps 3-4: on to the organizational domain
            where = f"_dmarc.{candidate}"
            # Step 5 (and 6.2): records were found here, so discovery ends here.
            if len(texts) > 1:
                return Discovered(None, candidate, organizational,
                                  f"{len(texts)} DMARC records at {where}: no policy applies")
            try:
                return Discovered(parse_record(texts[0]), candidate, organizational)
            except RecordError as exc:
                return Discovered(None, candidate, organizational,
                                  f"{where}: {exc}: no policy applies")
        return Discovered(None, None, organizational, "no DMARC record")

    def exists(self, domain: str) -> bool | None:
        """DMARCbis: a domain exists when it has an A, AAAA or MX record;
        None when DNS could not tell."""
        failed = False
        for rdtype in ("A", "AAAA", "MX"):
            try:
                if self.resolver.lookup(domain, rdtype):
                    return True
            except NxDomain:
                return False  # no records of any type
            except NoRecords:
                continue
            except DnsTempError:
                failed = True
        return None if failed else False

    def _dmarc_records(self, domain: str) -> list[str]:
        """Steps 1-2: the TXT records at _dmarc.domain that begin with v=DMARC1
        (junk TXT records beside them are ignored)."""
        try:
            texts = self.resolver.txt(f"_dmarc.{domain}")
        except (NxDomain, NoRecords):
            return []
        except DnsTempError as exc:
            raise DmarcTempError(str(exc)) from None
        return [t for t in texts if is_dmarc_record(t)]


@dataclass(frozen=True)
class DmarcResult:
    result: str  # pass, fail, none, temperror, permerror
    from_domain: str = ""
    policy: str = ""  # the policy that applies (p, sp or np), "" without a record
    applied: str = ""  # after pct= and t=: none, quarantine, reject
    sampled_out: bool = False  # pct= or t=y made it milder
    spf_aligned: bool = False
    dkim_aligned: bool = False
    aligned_dkim_domain: str = ""
    found_at: str = ""
    reason: str = ""
    details: dict[str, str] = field(default_factory=dict)
    testing: bool = False  # t=y
    # temperror: nothing aligned passed and the policy is (or, unread, may be)
    # quarantine or reject, so the sender should retry rather than the
    # message being judged on a DNS failure.
    retry: bool = False
    # fail under an applied reject that should be held instead: why.
    held_not_refused: str = ""


def _ascii_or_empty(domain: str) -> str:
    try:
        return ascii_domain(domain)
    except DomainError:
        return ""


def aligned(identifier: str, from_domain: str, mode: str,
            discovery: PolicyDiscovery) -> bool:
    """Identifier alignment (RFC 7489 3.1), compared in A-labels."""
    identifier = _ascii_or_empty(identifier)
    from_domain = _ascii_or_empty(from_domain)
    if not identifier or not from_domain:
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


def stricter(first: str, second: str) -> str:
    return first if STRICTNESS.get(first, 0) >= STRICTNESS.get(second, 0) else second


def evaluate(from_domain: str, spf_result: str | None, spf_domain: str,
             dkim_signatures: Sequence[SignatureResult], discovery: PolicyDiscovery,
             message_key: bytes, unverified_domains: Sequence[str] = ()) -> DmarcResult:
    """DMARC for one author domain (in A-labels).

    ``unverified_domains``: the d= of signatures the DKIM check did not
    verify (past its cap); one aligned with the author means a failure may
    be the cap's doing, so a reject is held instead.
    """
    try:
        found = discovery.discover(from_domain)
    except DmarcTempError as exc:
        # The policy could not be read: a retry may find quarantine or reject,
        # unless an aligned identifier passed (relaxed, the default).
        authenticated = (spf_result == "pass" and aligned(spf_domain, from_domain, "r",
                                                          discovery)) or \
            any(s.result == "pass" and aligned(s.domain, from_domain, "r", discovery)
                for s in dkim_signatures)
        return DmarcResult("temperror", from_domain, reason=f"policy record: {exc}",
                           retry=not authenticated)
    if found.record is None:
        return DmarcResult("none", from_domain, found_at=found.found_at or "",
                           reason=found.reason)
    record = found.record
    policy = record.policy
    details = {"record": "; ".join(record.problems)} if record.problems else {}
    if found.found_at != from_domain:  # inherited from the organizational domain
        policy = record.subdomain_policy
        if record.nonexistent_policy != policy:
            exists = discovery.exists(from_domain)
            if exists is False:
                policy = record.nonexistent_policy
            elif exists is None:  # RFC 9091: non-existent only on NXDOMAIN/NODATA
                details["np"] = (f"whether {from_domain} exists could not be looked up "
                                 "(DNS failure): sp= applies, not np=")
    spf_ok = spf_result == "pass" and aligned(spf_domain, from_domain, record.aspf, discovery)
    ours = [s for s in dkim_signatures if aligned(s.domain, from_domain, record.adkim, discovery)]
    dkim_domain = next((s.domain for s in ours if s.result == "pass"), "")
    found_at = found.found_at or ""
    if spf_ok or dkim_domain:
        return DmarcResult("pass", from_domain, policy, "none", False, spf_ok, bool(dkim_domain),
                           dkim_domain, found_at, details=details, testing=record.testing)
    applies = not record.testing and sample(message_key, record.pct)
    applied = policy if applies else MILDER[policy]  # RFC 7489 6.6.4, DMARCbis t=y
    # RFC 7489 6.6.2: an aligned identifier that could not be checked now is a
    # temporary error, not a failure.
    unchecked = [f"DKIM {s.domain} s={s.selector}: {s.reason}" for s in ours
                 if s.result == "temperror"]
    if spf_result == "temperror" and aligned(spf_domain, from_domain, record.aspf, discovery):
        unchecked.insert(0, f"SPF {spf_domain}: DNS failure")
    if unchecked:
        return DmarcResult("temperror", from_domain, policy, applied, not applies,
                           found_at=found_at, reason="; ".join(unchecked), details=details,
                           testing=record.testing, retry=applied in ("quarantine", "reject"))
    held = ""
    capped = [d for d in unverified_domains if aligned(d, from_domain, record.adkim, discovery)]
    if applied == "reject" and capped:
        held = (f"{len(capped)} aligned signature(s) past the DKIM signature limit not "
                "verified: held, not refused")
    return DmarcResult("fail", from_domain, policy, applied, not applies, False, False, "",
                       found_at,
                       reason="neither SPF nor DKIM aligned and passed",
                       details=details, testing=record.testing, held_not_refused=held)

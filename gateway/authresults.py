"""The Authentication-Results header (RFC 8601), built with ``authres``.

One header per message, under our authserv-id, from the facts the SPF,
DKIM, DMARC, ARC and iprev checks reported. A header of the same name that
arrives claiming our authserv-id is forged (only we write under it) and the
milter removes it before adding ours.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import authres
import authres.arc
import authres.dmarc

from gateway.facts import ArcFacts, DkimFacts, DmarcFacts, IprevFacts, SpfFacts
from gateway.mail import DomainError, ascii_domain

HEADER = "Authentication-Results"


def build(authserv_id: str, facts: Mapping[str, Mapping[str, Any]]) -> str | None:
    """The header's value, or None if no authentication check ran."""
    results: list[authres.core.AuthenticationResult] = []
    spf = SpfFacts.of(facts)
    if spf is not None and spf.result:
        if spf.identity == "helo":
            results.append(authres.SPFAuthenticationResult(
                result=spf.result, smtp_helo=spf.domain))
        else:
            results.append(authres.SPFAuthenticationResult(
                result=spf.result, smtp_mailfrom=spf.sender))
    dkim = DkimFacts.of(facts)
    if dkim is not None:
        if not dkim.signatures:
            results.append(authres.core.DKIMAuthenticationResult(result="none"))
        for signature in dkim.signatures:
            properties = []
            if signature.header_b:
                properties.append(authres.AuthenticationResultProperty(
                    "header", "b", signature.header_b[:8]))
            results.append(authres.core.DKIMAuthenticationResult(
                result=signature.result,
                reason=signature.reason or None,
                header_d=signature.domain or None,
                header_s=signature.selector or None,
                header_a=signature.algorithm or None,
                properties=properties or None,
            ))
    dmarc = DmarcFacts.of(facts)
    if dmarc is not None and dmarc.result:
        reason = "overridden by trusted ARC" if dmarc.override else None
        results.append(authres.dmarc.DMARCAuthenticationResult(
            result=dmarc.result, reason=reason,
            header_from=dmarc.from_domain or None,
            policy=dmarc.policy or None))
    arc = ArcFacts.of(facts)
    if arc is not None and arc.result:
        results.append(authres.arc.ARCAuthenticationResult(
            result=arc.result, header_as_d=arc.sealer or None))
    iprev = IprevFacts.of(facts)
    if iprev is not None and iprev.result:
        results.append(authres.IPRevAuthenticationResult(
            result=iprev.result, policy_iprev=iprev.ip,
            policy_iprev_comment=iprev.name or None))
    if not results:
        return None
    header = authres.AuthenticationResultsHeader(authserv_id=authserv_id, results=results)
    return str(header).split(":", 1)[1].strip()


# -- reading Authentication-Results (RFC 8601 section 2.2) ------------------------------

_TSPECIALS = set('()<>@,;:\\"/[]?=')
_METHOD = re.compile(r"\s*([A-Za-z0-9][A-Za-z0-9_.-]*)\s*(?:/\s*[0-9]+\s*)?=\s*([A-Za-z0-9_-]+)")
_PROPERTY = re.compile(r'([A-Za-z0-9_-]+)\s*\.\s*([A-Za-z0-9_-]+)\s*=\s*'
                       r'("(?:[^"\\]|\\.)*"|[^\s"]+)')
_INSTANCE = re.compile(r"\s*i\s*=\s*([0-9]{1,5})\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class MethodResult:
    method: str  # lower case: spf, dkim, dmarc, ...
    result: str  # lower case
    properties: dict[str, str] = field(default_factory=dict)  # "header.from" -> value


@dataclass(frozen=True)
class ParsedResults:
    authserv_id: str  # lower case, no trailing dot; "" when there is none
    results: tuple[MethodResult, ...] = ()


def _segments(value: str) -> list[str]:
    """The value split at ';' outside quoted strings, comments (nested, with
    quoted-pairs) replaced by a space. Linear; never raises."""
    segments: list[str] = []
    current: list[str] = []
    depth = 0
    quoted = escaped = False
    for char in value:
        if escaped:
            escaped = False
            if depth == 0:
                current.append(char)
        elif char == "\\":
            escaped = True
            if depth == 0:
                current.append(char)
        elif depth:
            if char == "(":
                depth += 1
            elif char == ")":
                depth -= 1
                if depth == 0:
                    current.append(" ")
        elif quoted:
            current.append(char)
            quoted = char != '"'
        elif char == '"':
            quoted = True
            current.append(char)
        elif char == "(":
            depth = 1
        elif char == ";":
            segments.append("".join(current))
            current = []
        else:
            current.append(char)
    segments.append("".join(current))
    return segments


def _value(text: str) -> str:
    """An RFC 2045 value at the start of ``text``: a quoted string
    (unescaped) or a token."""
    text = text.lstrip(" \t\r\n")
    if text.startswith('"'):
        out, escaped = [], False
        for char in text[1:]:
            if escaped:
                out.append(char)
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                break
            else:
                out.append(char)
        return "".join(out)
    end = 0
    while end < len(text) and text[end] not in _TSPECIALS and text[end] > " " \
            and text[end] != "\x7f":
        end += 1
    return text[:end]


def _normal_id(authserv_id: str) -> str:
    name = authserv_id.strip().rstrip(".").lower()
    try:
        return ascii_domain(name)
    except DomainError:
        return name


def parse(value: str, instance: bool = False) -> ParsedResults:
    """An Authentication-Results value (or, with ``instance``, an
    ARC-Authentication-Results one, which starts with ``i=N;``) read as
    RFC 8601 says: comments and quoting are undone, the authserv-id is the
    first value, a version number after it is skipped. Never raises."""
    segments = _segments(value)
    if instance:
        segments = segments[1:]
    if not segments:
        return ParsedResults("")
    authserv_id = _normal_id(_value(segments[0]))
    results = []
    for segment in segments[1:]:
        match = _METHOD.match(segment)
        if not match:
            continue
        properties: dict[str, str] = {}
        for prop in _PROPERTY.finditer(segment, match.end()):
            key = f"{prop.group(1).lower()}.{prop.group(2).lower()}"
            raw = prop.group(3)
            properties.setdefault(key, _value(raw) if raw.startswith('"') else raw)
        results.append(MethodResult(match.group(1).lower(), match.group(2).lower(),
                                    properties))
    return ParsedResults(authserv_id, tuple(results))


def arc_instance(value: str) -> int | None:
    """The i= of an ARC-Authentication-Results value, None if it has none."""
    match = _INSTANCE.match(_segments(value)[0])
    return int(match.group(1)) if match else None


def claims(value: str, authserv_id: str) -> bool:
    """Whether an Authentication-Results value is written under ``authserv_id``,
    as an RFC 8601 reader (or authres) would take it: ``(x) id;``, ``id(x);``,
    ``"id";``, ``ID.;`` and ``id 1;`` all name ``id``."""
    found = parse(value).authserv_id
    return bool(found) and found == _normal_id(authserv_id)

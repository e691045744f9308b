"""The Authentication-Results header (RFC 8601), built with ``authres``.

One header per message, under our authserv-id, from the facts the SPF,
DKIM, DMARC, ARC and iprev checks reported. A header of the same name that
arrives claiming our authserv-id is forged (only we write under it) and the
milter removes it before adding ours: claiming it as anyone could read it,
an RFC 8601 parser, a mail program that decodes RFC 2047 words where they
do not belong, or a person who cannot tell a Cyrillic ``\u0445`` from an ``x``.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import authres
import authres.arc
import authres.dmarc
import idna

from gateway import confusables
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
    """Whether an Authentication-Results value is written under ``authserv_id``
    as any reader could take it: as RFC 8601 says (``(x) id;``, ``id(x);``,
    ``"id";``, ``ID.;`` and ``id 1;`` all name ``id``), after decoding RFC 2047
    encoded words (``=?utf-8?q?id?=;``, which a decoding mail program shows),
    and by the look of it: A-labels shown as Unicode, compatibility forms,
    invisible characters and confusable letters (UTS #39 skeletons) folded,
    so ``m\u0445.example`` with a Cyrillic ``\u0445`` names ``mx.example``."""
    ours = lookalike_key(authserv_id)
    for reading in {value[:MAX_READ], _decoded(value[:MAX_READ])}:
        found = _value(_segments(reading)[0])
        if found and lookalike_key(found) == ours:
            return True
    return False


# -- the same authserv-id to a reader ---------------------------------------------------

MAX_READ = 2000  # characters of a header value looked at: the id comes first
MAX_ID = 255  # characters of an authserv-id looked at (a domain name's length)
_ENCODED_WORD = re.compile(r"=\?([^?\s]{1,64})\?([bBqQ])\?([^?\s]*)\?=")
_BETWEEN_WORDS = re.compile(r"(?<=\?=)[ \t\r\n]+(?==\?)")
_QP_OCTET = re.compile(r"=([0-9A-Fa-f]{2})")


def _decoded(value: str) -> str:
    """``value`` with every RFC 2047 encoded word decoded wherever it stands,
    as lenient mail programs decode them (white space between two words
    dropped, RFC 2047 6.2); a word that cannot be decoded stays as it is."""
    def word(match: re.Match[str]) -> str:
        charset, encoding, text = match.groups()
        try:
            if encoding in "bB":
                data = base64.b64decode(text + "=" * (-len(text) % 4))
            else:
                data = _QP_OCTET.sub(lambda octet: chr(int(octet.group(1), 16)),
                                     text.replace("_", " ")).encode("latin-1")
            return data.decode(charset.partition("*")[0], "replace")
        except (LookupError, ValueError, binascii.Error, UnicodeEncodeError):
            return match.group(0)

    if "=?" not in value:
        return value
    return _ENCODED_WORD.sub(word, _BETWEEN_WORDS.sub("", value))


@lru_cache(maxsize=4096)
def lookalike_key(authserv_id: str) -> str:
    """The key under which two authserv-ids look the same to a reader: A-labels
    shown as Unicode, then :func:`gateway.confusables.fold` (compatibility
    forms, case, invisible characters, UTS #39 confusable skeleton)."""
    labels = []
    for label in authserv_id.strip().rstrip(".")[:MAX_ID].split("."):
        shown = label
        if label[:4].lower() == "xn--":
            with contextlib.suppress(idna.IDNAError, UnicodeError):
                shown = idna.decode(label)
        labels.append(shown)
    return confusables.fold(".".join(labels))

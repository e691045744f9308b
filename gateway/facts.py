"""Facts: what each check found, typed, for the parts that read it.

A check's symbols are for the score; its facts are for the other parts: a
later check (DMARC reads SPF's, DKIM's and ARC's), the
Authentication-Results header, the policy (the recipients the lists check
saw). Each check reports one frozen dataclass from this module, and every
reader imports the same class, so a misspelt field is an AttributeError (and
a mypy error) where a misspelt dict key was a silent ``None``.

Facts travel and are kept as JSON-shaped dicts (:meth:`Facts.to_json`):
that is what a worker process sends through its pipe (plain data pickles
several times faster than dataclasses, see :mod:`gateway.workers`), what
:class:`~gateway.verdict.PipelineResult` and the verdict hold, and what the
tests and tools read. A reader turns them back into the class with
:meth:`Facts.of`. The classes live here, not in the check modules, so that a
reader (the policy, the header builder) does not import dkimpy or pyspf, nor
a check that is not enabled, and no import cycle forms (the policy imports
the checks' base class; the ARC check imports the header parser).

A field made with :func:`optional` is one only some outcomes have (SPF's
``identity`` when there was nothing to check): it is left out of the JSON
while it is ``None``, so each outcome keeps the keys it always had.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Self

from gateway.symbols import Symbol

_OMIT_WHEN_NONE = "omit_when_none"


def optional() -> Any:
    """A field only some outcomes have: ``None`` when absent, and then left
    out of the JSON."""
    return field(default=None, metadata={_OMIT_WHEN_NONE: True})


def _plain(value: Any) -> Any:
    """A value as JSON has it: tuples as lists, mappings as dicts."""
    if value is None or isinstance(value, str | int | float):  # bool is an int
        return value
    if isinstance(value, JsonShaped):
        return value.to_json()
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    return value


@dataclass(frozen=True)
class JsonShaped:
    """A frozen dataclass that converts to and from its JSON shape."""

    def to_json(self) -> dict[str, Any]:
        """The facts as the pipeline carries them: a dict of plain values."""
        return {
            name: _plain(value)
            for name, omit_when_none in _layout(type(self))
            if (value := getattr(self, name)) is not None or not omit_when_none
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        """The record from its JSON shape; a key this class does not know is
        ignored, a missing one takes the field's default."""
        known = {name for name, _ in _layout(cls)}
        return cls(**{key: value for key, value in data.items() if key in known})


_LAYOUTS: dict[type[JsonShaped], tuple[tuple[str, bool], ...]] = {}


def _layout(cls: type[JsonShaped]) -> tuple[tuple[str, bool], ...]:
    """Each field's name and whether it is left out while None: read once
    per class (facts are written for every check of every message)."""
    layout = _LAYOUTS.get(cls)
    if layout is None:
        layout = tuple((f.name, bool(f.metadata.get(_OMIT_WHEN_NONE))) for f in fields(cls))
        _LAYOUTS[cls] = layout
    return layout


@dataclass(frozen=True)
class Facts(JsonShaped):
    """Base class: the facts of the check named ``check``."""

    check: ClassVar[str]

    @classmethod
    def of(cls, facts_by_check: Mapping[str, Mapping[str, Any]]) -> Self | None:
        """This check's facts among those of a message (a pipeline result's,
        a verdict's, a check context's), or None if it did not report any."""
        data = facts_by_check.get(cls.check)
        return None if data is None else cls.from_json(data)


# -- authentication ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SpfFacts(Facts):
    check = "spf"

    result: str | None  # None: nothing to check (no client IP, or a null sender and no HELO)
    identity: str | None = optional()  # "mailfrom", or "helo" for a null sender
    domain: str | None = optional()
    sender: str | None = optional()  # postmaster@<HELO> for a null sender
    mechanism: str | None = optional()  # the mechanism that matched, "" if none did
    explanation: str | None = optional()
    reason: str | None = optional()  # why there was nothing to check


@dataclass(frozen=True)
class SignatureResult(JsonShaped):
    """One DKIM signature's result (an item of :class:`DkimFacts`)."""

    domain: str
    selector: str
    algorithm: str
    result: str
    reason: str = ""
    partial_body: bool = False  # l= covers less than the body
    header_b: str = ""  # first bytes of b=, to tell signatures apart in A-R

    def describe(self) -> str:
        text = f"{self.domain} s={self.selector} a={self.algorithm}: {self.result}"
        return text + (f" ({self.reason})" if self.reason else "")


@dataclass(frozen=True)
class DkimFacts(Facts):
    check = "dkim"

    signatures: Sequence[SignatureResult] = ()
    unverified: int | None = optional()  # signatures past [auth] max_dkim_signatures
    unverified_domains: Sequence[str] | None = optional()  # their d=

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        signatures = tuple(SignatureResult.from_json(s) for s in data.get("signatures", ()))
        return cls(signatures=signatures, unverified=data.get("unverified"),
                   unverified_domains=data.get("unverified_domains"))


@dataclass(frozen=True)
class ArcFacts(Facts):
    check = "arc"

    result: str  # pass, fail, none, temperror
    sealer: str | None = optional()  # the most recent sealer's domain (as-domain)
    instances: int | None = optional()
    reason: str = ""
    # What that sealer's ARC-Authentication-Results recorded for DMARC (a
    # passing chain only): a trusted sealer's dmarc=pass may override DMARC.
    sealer_dmarc: str | None = optional()
    sealer_dmarc_from: str | None = optional()


@dataclass(frozen=True)
class DmarcFacts(Facts):
    check = "dmarc"

    result: str  # pass, fail, none, temperror, permerror
    from_domain: str | None = optional()
    # RFC 7489 11.2 policy.dmarc: the policy applied (after pct= and t=) on a
    # failure, the published one otherwise.
    policy: str | None = optional()
    published_policy: str | None = optional()
    applied: str | None = optional()  # after pct= and t=: none, quarantine, reject
    spf_aligned: bool | None = optional()
    dkim_aligned: bool | None = optional()
    dkim_domain: str | None = optional()  # the aligned DKIM signature's d=
    found_at: str | None = optional()  # the domain whose _dmarc record applies
    reason: str = ""
    authors: Mapping[str, str] = field(default_factory=dict)  # author domain -> result
    override: str | None = optional()  # "arc": a trusted ARC sealer's pass overrode a failure


@dataclass(frozen=True)
class IprevFacts(Facts):
    check = "iprev"

    result: str | None  # None: no client IP to check
    ip: str | None = optional()
    name: str | None = optional()  # the confirmed (or first) PTR name, "" if none
    reason: str | None = optional()


@dataclass(frozen=True)
class SenderFacts(Facts):
    check = "sender"

    # "ok", "address literal" or the symbol the domain earned; absent for a
    # null sender.
    sender_domain: str | None = optional()


@dataclass(frozen=True)
class TlsFacts(Facts):
    check = "tls"

    version: str | None = None  # None: the hop was plaintext
    cipher: str | None = None


# -- content and lists ------------------------------------------------------------------------


@dataclass(frozen=True)
class HeadersFacts(Facts):
    check = "headers"

    message_id: str = ""  # for `gateway trace`, through the verdict's log line


@dataclass(frozen=True)
class ListsFacts(Facts):
    """The envelope's recipients and, per recipient, the symbols that only
    its own policy's lists (or lists managed for it) give: the policy judges
    each recipient with them."""

    check = "lists"

    recipients: Sequence[str] = ()
    recipient_symbols: Mapping[str, Sequence[Symbol]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        # A symbol as a list of its fields: the shape Symbol(*fields) reads.
        return {"recipients": list(self.recipients),
                "recipient_symbols": {
                    recipient: [[s.name, s.score, s.description, s.evidence,
                                 *([s.reply] if s.reply else [])] for s in symbols]
                    for recipient, symbols in self.recipient_symbols.items()}}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        scoped = data.get("recipient_symbols") or {}
        return cls(recipients=tuple(data.get("recipients", ())),
                   recipient_symbols={recipient: tuple(Symbol(*item) for item in items)
                                      for recipient, items in scoped.items()})


@dataclass(frozen=True)
class ClamavFacts(Facts):
    check = "clamav"

    scanned: bool
    infected: bool | None = optional()
    signature: str | None = optional()  # the virus clamd found
    reason: str | None = optional()  # why it was not scanned (a scan limit)


@dataclass(frozen=True)
class RulesFacts(Facts):
    check = "rules"

    rules: int  # how many rules are defined
    millis: float  # the time they took on this message


@dataclass(frozen=True)
class AttachmentsFacts(Facts):
    check = "attachments"

    attachments: int  # parts that are not text
    archive_bytes_read: int


@dataclass(frozen=True)
class DnsblFacts(Facts):
    check = "dnsbl"

    listed: Mapping[str, Sequence[str]] = field(default_factory=dict)  # symbol -> what is listed
    queries: int = 0


@dataclass(frozen=True)
class IdentityFacts(Facts):
    """Who wrote, as the identity check read it: what the correspondent
    memory learns from once the message is decided (gateway.correspondents)."""

    check = "identity"

    direction: str = "inbound"  # inbound, or outbound: our user writing out
    author: str | None = optional()  # the one From address, lower case
    name: str | None = optional()  # its display name, decoded (at most 200 characters)
    via: str | None = optional()  # the authenticated domain vouching for it (DKIM d=, SPF)
    recipients: Sequence[str] = ()
    imitation: bool = False  # an impersonation symbol fired: such mail teaches nothing
    known: bool = False  # KNOWN_CORRESPONDENT was given
    history: bool = False  # the correspondent memory was read for this message


@dataclass(frozen=True)
class LinksFacts(Facts):
    check = "links"

    links: int = 0  # distinct links (a host to go to) in the text, HTML and QR codes
    qr: Sequence[str] = ()  # what the QR codes of the pictures say
    pictures: int = 0  # pictures searched for QR codes

"""Links: where the links of a message really go, and what they pretend.

Every URL of the message comes from the one extractor
(:mod:`gateway.urls`, through :func:`gateway.checks.view.view_of`): the
text, the HTML as a browser parses it (links with the text a reader sees,
pictures, srcset, forms, meta refresh, CSS), and the QR codes of the
pictures, attached or inline (:mod:`gateway.qr`, within ``[limits]
images``, ``image_bytes``, ``image_pixels`` and ``image_seconds``). Each
URL is read as a browser reads it (ada, the WHATWG URL standard), so the
host judged here is the host a click opens.

- ``LINK_TEXT_MISMATCH``: a link's text shows a URL or a host name
  (``https://www.paypal.com/login``, ``www.paypal.com``) on another
  registrable domain than the link's target. Not when the target is on the
  author's (From) domain, nor when the author domain passed DMARC and is
  the domain shown: a newsletter's click-tracking redirect is no lie, and
  a sender that names itself in From is judged by the identity and
  authentication checks.
- ``URL_BRAND_MISMATCH``: a link claims a brand (its text shows the
  brand's domain or names it with sign-in words, or its picture's alt text
  is the brand's name) and goes to none of the brand's domains.
- ``URL_LOOKALIKE_DOMAIN``: a linked host imitates our domain, a brand's or
  a known correspondent's (:class:`gateway.lookalike.DomainIndex`, the
  identity check's lists and memory).
- ``URL_LOOKALIKE_CRAFTED``: beside ``URL_LOOKALIKE_DOMAIN``, when the
  imitation has a form made to deceive (:func:`gateway.lookalike.crafted_form`:
  a confusable letter, a digit for the letter it resembles, one slip of the
  keyboard, hyphens, a bait word joined with a hyphen, the imitated domain
  written inside another, its name under a generic TLD other than .com,
  .net and .org: paypal.top), not a name of its own that happens to be
  close (lindows.com) nor the same name under .com, .net, .org or a
  country's code (brands own many: facebook.net, apple.co).
- ``URL_USERINFO_TRICK``: a host name written as the user name in front of
  the real host (``https://paypal.com@evil.example/`` goes to
  evil.example).
- ``URL_IP_LITERAL``: a link to an IP address (browsers also read
  ``http://3232235777/`` and ``http://0xC0A80001/`` as 192.168.0.1: so
  does this check).
- ``URL_SHORTENER``: a link through a public URL shortener
  (``rules/shorteners.txt`` and ``[links] shorteners``): the reader cannot
  see where it goes.
- ``URL_PUNYCODE_MIXED_SCRIPT``: an internationalised host label that
  mixes scripts (a Cyrillic a in ``paypal.com``) beyond what a
  language writes (UTS #39, "highly restrictive": one script, or Latin
  with Han and Japanese kana, with Han and Bopomofo, or with Han and
  Hangul).
- ``QR_CODE_URL``: a picture holds a QR code that leads to a URL, named in
  the evidence (the QR targets are links like the others: every symbol
  here and ``[[dnsbl]] lookup = "url_host"`` read them).
- ``QR_SCAN_LIMIT``: pictures past the ``[limits]`` were not searched.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.checks import Check, CheckContext
from gateway.checks.identity import _exists
from gateway.checks.view import MessageView, view_of
from gateway.config import Config
from gateway.confusables import mixed_script, name_tokens
from gateway.correspondents import MemoryReader, Snapshot, memory_url
from gateway.facts import DmarcFacts, LinksFacts
from gateway.lookalike import (
    MAX_LABELS,
    Brand,
    Brands,
    DomainIndex,
    OurIndexes,
    is_freemail,
    load_brands,
    load_freemail,
    registrable,
    unicode_host,
)
from gateway.mail import Authors, author_domains, has_public_suffix, registrable_domain
from gateway.message import Message
from gateway.paths import RULES_DIR
from gateway.ruleset import Ruleset
from gateway.symbols import Report
from gateway.urls import TEXT_URL, FoundUrl, Link, parse_link

SHORTENERS = RULES_DIR / "shorteners.txt"
SHOWN = 3  # examples named in one symbol's evidence
MAX_AUTHORS = 5  # From domains read (a From with more is its own problem: headers check)
MAX_RECIPIENT_DOMAINS = 50  # envelope recipients whose domains are ours
# A link's text that names a brand with words of signing in or paying, in
# a call to action's few words ("Log in to your PayPal account"), claims to
# lead to the brand; a headline that names it does not.
CALL_WORDS = 8
ACCOUNT_WORDS = frozenset({
    "sign", "signin", "login", "logon", "log", "verify", "verification", "validate", "account",
    "password", "reset", "unlock", "locked", "suspended", "confirm", "billing", "payment",
    "invoice", "refund", "wallet", "mfa", "authenticate"})
EVIDENCE_TEXT = 80  # characters of a link's text or URL in the evidence
# A host name with a path in a link's text ("paypal.com/signin"): labels of
# letters, digits and hyphens in any script (a reader sees Unicode), not
# part of an address or a longer word. A bare name without a path
# ("Dilbert.com", "CNET News.com: headlines") names a site more often than
# it shows a link's address, and newsletters link such names through their
# click-tracking redirects: 28% of the corpus's hard_ham did.
SHOWN_HOST_PATH = re.compile(r"(?<![\w@.-])((?:[^\W_](?:[\w-]{0,61}[^\W_])?\.)+[^\W\d_]{2,63})"
                             r"/")


@functools.cache
def shipped_shorteners(path: Path = SHORTENERS) -> frozenset[str]:
    """The shortener domains of ``rules/shorteners.txt`` (one a line)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return frozenset()
    return frozenset(line.strip().lower() for line in lines
                     if line.strip() and not line.lstrip().startswith("#"))


def shown_link(text: str) -> Link | None:
    """Where a link's text says it goes, if it says: a URL in it
    (``https://www.paypal.com/login``), a ``www.`` name, or a host name
    followed by a path (``paypal.com/signin``), on a real top-level domain
    (or an IP address after a scheme). Text that only names a site, or
    nothing, is None."""
    text = unicodedata.normalize("NFKC", text)
    for match in TEXT_URL.finditer(text):
        link = parse_link(match.group(0))
        if link is not None and (link.ip or has_public_suffix(link.host)):
            return link
    for match in SHOWN_HOST_PATH.finditer(text):
        link = parse_link("http://" + match.group(0))
        if link is not None and not link.ip and has_public_suffix(link.host):
            return link
    return None


def text_mismatch(found: FoundUrl, link: Link) -> str | None:
    """The registrable domain a link's text shows when it is not the one its
    target is on; None when the text shows no address, or the target's."""
    if not found.text:
        return None
    shown = shown_link(found.text)
    if shown is None or shown.domain == link.domain:
        return None
    return shown.domain


def mixed_script_label(host: str) -> str | None:
    """The first internationalised label of ``host`` (in Unicode) that mixes
    scripts beyond what one language writes (UTS #39 highly restrictive,
    :func:`gateway.confusables.mixed_script`); None if there is none."""
    for label in host.split(".")[-MAX_LABELS:]:
        if label.startswith("xn--"):
            shown = unicode_host(label)
            if shown != label and mixed_script(shown):
                return shown
    return None


@dataclass
class Findings:
    found: dict[str, list[str]] = field(default_factory=dict)

    def add(self, symbol: str, evidence: str) -> None:
        items = self.found.setdefault(symbol, [])
        if evidence not in items:
            items.append(evidence)


def _cut(text: str, length: int = EVIDENCE_TEXT) -> str:
    return text if len(text) <= length else text[:length - 1] + "…"


class LinksCheck(Check):
    name = "links"
    # An author domain that passed DMARC may show its own domain over its own
    # click-tracking redirects.
    wants = ("dmarc",)
    symbols = {
        "LINK_TEXT_MISMATCH": "a link's text shows a host or URL on another registrable "
                              "domain than the link's target",
        "URL_USERINFO_TRICK": "a link writes a host name as a user name in front of the real "
                              "host (https://paypal.com@evil.example/ goes to evil.example)",
        "URL_IP_LITERAL": "a link goes to an IP address instead of a host name",
        "URL_SHORTENER": "a link goes through a public URL shortener, which hides its target",
        "URL_PUNYCODE_MIXED_SCRIPT": "a linked host name mixes scripts (Latin with Cyrillic, "
                                     "say) in one label, as no language writes",
        "URL_LOOKALIKE_DOMAIN": "a linked host imitates our domain or a brand's (a confusable "
                                "spelling, a typo, a word added, another TLD)",
        "URL_LOOKALIKE_CRAFTED": "the linked lookalike is written to deceive (a confusable "
                                 "letter, a digit for a letter, a keyboard slip, hyphens, a "
                                 "bait word after a hyphen, the domain inside another, the "
                                 "name under a generic TLD other than .com, .net, .org), not "
                                 "a name of its own",
        "URL_BRAND_MISMATCH": "a link's text or picture speaks as a brand, and the link goes "
                              "to none of the brand's domains",
        "QR_CODE_URL": "a picture holds a QR code that leads to a URL",
        "QR_SCAN_LIMIT": "pictures past [limits] images, image_bytes, image_pixels or "
                         "image_seconds were not searched for QR codes",
    }

    def __init__(self, config: Config, ruleset: Ruleset, reader: MemoryReader | None = None,
                 memory: bool = True):
        super().__init__(config, ruleset)
        self.shorteners = shipped_shorteners() | {
            d.strip().lower().lstrip("@") for d in config.links.shorteners}
        identity = config.identity  # the brands, freemail and our domains are the same
        self.brands: Brands = load_brands(identity.brands)
        self.freemail = load_freemail(identity.freemail, identity.freemail_domains)
        self.org_domains = frozenset(registrable(d) for d in identity.org_domains)
        self._ours = OurIndexes(self.brands, self.freemail)
        # The identity check's correspondent memory: known correspondents'
        # domains may be imitated too (read every [identity] refresh seconds).
        url = memory_url(config.quarantine.url)
        if reader is None and memory and url is not None and \
                "identity" in config.pipeline.checks and _exists(url):
            reader = MemoryReader(url, identity)
        self.reader = reader
        self._known: tuple[int, DomainIndex] | None = None

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()

    def known(self, snapshot: Snapshot) -> DomainIndex:
        """Known correspondents' domains (not freemail), rebuilt when the
        memory's snapshot changes."""
        if self._known is None or self._known[0] != id(snapshot):
            self._known = (id(snapshot), DomainIndex({
                d: "a known correspondent's domain" for d in snapshot.known_domains
                if not is_freemail(d, self.freemail)}, brands=self.brands,
                freemail=self.freemail))
        return self._known[1]

    def index(self, org: frozenset[str]) -> DomainIndex:
        """The domains a link may imitate: ours and the brands' (a brand's
        own and a freemail provider's imitate nothing: :class:`DomainIndex`)."""
        return self._ours.of(org)

    def run(self, message: Message, context: CheckContext) -> Report:
        view = view_of(message)
        findings = Findings()
        for judged in self.links_of(message, context):
            for symbol, evidence in judged.marks:
                findings.add(symbol, evidence)
        scan = view.qr_scan
        for skipped in scan.skipped:
            findings.add("QR_SCAN_LIMIT", skipped)
        symbols = tuple(self.symbol(name, _joined(items)) for name, items in
                        findings.found.items())
        return Report(symbols=symbols, facts=LinksFacts(
            links=len(view.links), qr=[f.url for f in view.found if f.where == "qr"],
            pictures=scan.searched).to_json())

    def links_of(self, message: Message, context: CheckContext | None = None
                 ) -> list[JudgedLink]:
        """Every distinct URL of the message (:attr:`MessageView.found`), each
        with what this check finds in it: what :meth:`run` sums up."""
        return self.judge(view_of(message), message.authors, message.envelope.rcpt_to,
                          context.facts if context is not None else {})

    def judge(self, view: MessageView, author: Authors,
              recipients: Sequence[str] = (), facts: Mapping[str, Mapping[str, Any]] | None = None,
              ) -> list[JudgedLink]:
        """The URLs of ``view`` judged for a message with these authors (the
        one reading of its From fields) and recipients (and the other
        checks' ``facts``)."""
        facts = facts or {}
        authors = frozenset(registrable_domain(d) for d in author.domains[:MAX_AUTHORS])
        dmarc = DmarcFacts.of(facts)
        authenticated = registrable_domain(dmarc.from_domain) \
            if dmarc is not None and dmarc.result == "pass" and dmarc.from_domain else None
        snapshot = self.reader.snapshot() if self.reader is not None else Snapshot()
        org = self.org_domains or frozenset(
            registrable(r.strip().strip("<>").rpartition("@")[2])
            for r in recipients[:MAX_RECIPIENT_DOMAINS] if "@" in r
        ) | snapshot.recipient_domains
        seen = _Seen(authors, authenticated, self.index(org), self.known(snapshot))
        judged = []
        for found in dict.fromkeys(view.found):
            link = parse_link(found.url)
            marks: list[tuple[str, str]] = []
            if found.where == "qr" and link is not None:
                marks.append(("QR_CODE_URL", f"{_cut(found.text, 40)}: {_cut(link.url)}"))
            if link is not None:
                marks += self._judge(found, link, seen)
            judged.append(JudgedLink(found, link, tuple(marks)))
        return judged

    def _judge(self, found: FoundUrl, link: Link, seen: _Seen) -> list[tuple[str, str]]:
        marks = []
        # The author's own redirects are no lie: a link to the From domain
        # (a newsletter's click tracker), or one showing the author domain
        # when DMARC says the message is really from it.
        own = link.domain in seen.authors
        if found.where == "href" and not own:
            shown = text_mismatch(found, link)
            if shown is not None and shown != seen.authenticated:
                marks.append(("LINK_TEXT_MISMATCH",
                              f"text {_cut(found.text)!r} shows {shown}, goes to {link.host}"))
            brand = self._brand_shown(found)
            if brand is not None and not brand.owns(link.host) and not (
                    seen.authenticated and brand.owns(seen.authenticated)):
                what = "picture" if found.alt and found.text == found.alt else "text"
                marks.append(("URL_BRAND_MISMATCH", f"{what} {_cut(found.text)!r} speaks as "
                              f"{brand.title}, goes to {link.host}"))
        # A link to the author's own domain is the author's business: the
        # identity check judges that domain (FROM_LOOKALIKE_DOMAIN).
        if not own and not link.ip and has_public_suffix(link.host):
            imitation = seen.index.match(link.host)
            if imitation is None and seen.index.owner(link.host) is None:
                # Organisations own their name under several TLDs: another
                # TLD of a correspondent's domain is no imitation by itself
                # (the identity check's rule too).
                imitation = seen.known.match(link.host, other_tld=False)
            if imitation is not None:
                marks.append(("URL_LOOKALIKE_DOMAIN", imitation.describe()))
                if imitation.crafted:
                    marks.append(("URL_LOOKALIKE_CRAFTED", f"{imitation.domain} imitates "
                                  f"{imitation.imitates}: {imitation.crafted}"))
        if link.user and "." in link.user.partition(":")[0]:
            marks.append(("URL_USERINFO_TRICK", f"{_cut(link.url)} goes to {link.host}, not "
                          f"{_cut(link.user.partition(':')[0], 40)}"))
        if link.ip:
            marks.append(("URL_IP_LITERAL", _cut(found.url) if found.url == link.url
                          else f"{_cut(found.url)} ({link.host})"))
        if link.host in self.shorteners or link.domain in self.shorteners:
            marks.append(("URL_SHORTENER", _cut(link.url)))
        if "xn--" in link.host:
            label = mixed_script_label(link.host)
            if label is not None:
                marks.append(("URL_PUNYCODE_MIXED_SCRIPT", f"{label} in {link.host}"))
        return marks

    def _brand_shown(self, found: FoundUrl) -> Brand | None:
        """The brand a link claims to lead to: whose domain its text shows,
        whose name its text gives with an account's words ("PayPal login",
        "Sign in to Microsoft 365"; a brand's name alone, "Zoom", is a word),
        or whose name its picture's alt text speaks as (a logo)."""
        shown = shown_link(found.text) if found.text else None
        owner = self.brands.owner(shown.host) if shown is not None else None
        if owner is not None:
            return owner
        if found.text and found.text != found.alt:
            words = name_tokens(found.text)
            if len(words) <= CALL_WORDS and set(words) & ACCOUNT_WORDS:
                mention = self.brands.mentioned_in(found.text)
                if mention is not None and set(words) - set(mention.words.split()) & \
                        ACCOUNT_WORDS:
                    return mention.brand
        if found.alt:
            mention = self.brands.speaking_as(found.alt)
            if mention is not None:
                return mention.brand
        return None


@dataclass(frozen=True)
class JudgedLink:
    """A URL of the message, where it goes, and what the check found in it."""

    found: FoundUrl
    link: Link | None  # None: nowhere a browser would go (javascript:, mailto:, relative)
    marks: tuple[tuple[str, str], ...]  # (symbol, evidence)


@dataclass(frozen=True)
class _Seen:
    """What every link of a message is judged against."""

    authors: frozenset[str]  # the From domains, registrable
    authenticated: str | None  # the author domain DMARC passed, registrable
    index: DomainIndex  # ours and the brands': the domains a link may imitate
    known: DomainIndex  # known correspondents' domains, which it may imitate too


def _joined(items: Iterable[str]) -> str:
    listed = list(items)
    shown = "; ".join(listed[:SHOWN])
    return shown + (f"; and {len(listed) - SHOWN} more" if len(listed) > SHOWN else "")


@functools.cache
def _console_check() -> LinksCheck:
    return LinksCheck(Config(), Ruleset(), memory=False)  # it reads no rules


def judged_links(view: MessageView, from_values: list[str]) -> list[JudgedLink]:
    """The links of a message as the console lists them: each URL with its
    text and where it goes, marked by what this check finds (with the
    shipped brands and shorteners; the verdict's own symbols are the
    milter's, with the site's settings)."""
    return _console_check().judge(view, author_domains(from_values))

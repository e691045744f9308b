"""Lookalike domains, brands and freemail: who a domain or a name imitates.

Used by the identity check (the author's domain and display name) and by
the links check (link hosts and link texts); every comparison goes through
:mod:`gateway.confusables`, so ``p\u0430ypal.com`` (Cyrillic ``\u0430``),
``paypa1.com`` and ``PAYPAL.COM`` are one spelling here.

- :func:`compare` / :class:`DomainIndex`: is domain A a lookalike of
  domain B (or of any in a set), and by which technique:

  ``confusable``  the same skeleton (``p\u0430ypal.com``, ``rnicrosoft.com``);
  ``typo``        edit distance 1 on a registrable label of 5 or more
                  characters, 2 from 9 (``paypall.com``, ``micorsoft.com``);
                  swapped neighbours count once;
  ``hyphen``      hyphens inserted (``pay-pal.com``);
  ``affix``       a word added, with or without a hyphen (``paypal-secure.com``,
                  ``securepaypal.net``, ``paypal-alerts.example``);
  ``tld``         the same label under another public suffix (``paypal.co``);
                  not a country site the brand list gives the brand
                  (``country_tlds``: ``google.de``);
  ``subdomain``   the domain written as leading labels of another
                  (``paypal.com.account-check.example``);
  ``dots``        its dots written as hyphens or left out (``paypal-com.net``).

  A subdomain of the domain itself is the domain (``mail.paypal.com``).
  Nothing imitates when it is itself a freemail provider's domain (mail.com
  is no gmail.com, gmx.de no gmx.net: anyone can have an address at both)
  or a brand's own.

  A listed domain stands for itself and its subdomains, never for its
  parent: ``amazon.com.be`` is Amazon's, ``com.be`` (its registrable domain
  by the public suffix list, which does not list com.be as a suffix) is
  not. Only registrable domains are imitated (a name's label is compared).
- :class:`Brands` / :func:`load_brands`: ``rules/brands.toml``, brand ->
  names, the domains that are really its own and the country-code TLDs of
  its country sites; whether a display name or a subject names a brand.
- :func:`load_freemail` / :func:`is_freemail`: the shipped list of freemail
  domains (``rules/freemail.txt``) and a site's additions.

Everything is bounded: a host of more than :data:`MAX_HOST` characters or
:data:`MAX_LABELS` labels is looked at up to that, display names up to
:data:`gateway.confusables.MAX_TEXT` characters, and a name's brand spans
up to :data:`MAX_SPAN` words.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Container, Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from rapidfuzz.distance import OSA
from rapidfuzz.process import extractOne

from gateway.confusables import fold, name_tokens
from gateway.hosts import HOST_CACHE as HOST_CACHE  # named here too, as before
from gateway.hosts import MAX_HOST as MAX_HOST
from gateway.hosts import MAX_LABELS as MAX_LABELS
from gateway.hosts import ascii_host as ascii_host
from gateway.hosts import registrable as registrable
from gateway.hosts import unicode_host as unicode_host
from gateway.mail import is_public_suffix
from gateway.paths import RULES_DIR
from gateway.schema import ConfigError

DEFAULT_BRANDS = RULES_DIR / "brands.toml"
DEFAULT_FREEMAIL = RULES_DIR / "freemail.txt"

MAX_SPAN = 8  # words a brand's name may be spread over ("P a y P a l")
MAX_FREEMAIL_LINES = 100_000
TYPO_MIN = 5  # shortest label compared at edit distance 1
TYPO2_MIN = 9  # shortest label compared at edit distance 2
AFFIX_MIN = 3  # shortest label recognised with a word added
MATCH_MEMO = 4096  # hosts a DomainIndex remembers its answer for

TECHNIQUES: dict[str, str] = {
    "confusable": "a confusable spelling",
    "typo": "a typo",
    "hyphen": "hyphens inserted",
    "affix": "a word added",
    "tld": "another TLD",
    "subdomain": "written as its subdomain",
    "dots": "its dots written as hyphens",
}

def _words(text: str) -> list[str]:
    return text.split()


# Words phishers add to a name they imitate (``paypal-secure``,
# ``microsoft-alerts``), folded as every label is. A display name that is a
# brand's name plus only these words ("PayPal Security Team") speaks as
# the brand; "Chase Miller" does not.
AFFIX_WORDS = frozenset(fold(word) for word in _words("""
    access account accounts activity admin alert alerts app apps auth bank banking bill
    billing bonus care case center centre check claim client cloud com confirm connect corp
    customer customers delivery desk dispute doc docs document documents drive email
    express file files gift global go group guard help helpdesk hq id inc info invoice
    invoices it link live locked login logon mail message messages my net news newsletter
    notice notices notification notifications notify now office official online org parcel
    password pay payment payments portal protect protection recovery refund refunds reset
    resolution resolve review rewards safe safety secure security server service services
    share shipping signin sign store support team teams today track tracking uk unlock
    update updates us usa verify verification verified wallet web
    """))
# Words that may stand beside a brand's name in a display name that speaks
# as the brand, besides those.
ROLE_WORDS = AFFIX_WORDS | frozenset(fold(word) for word in _words("""
    no reply noreply donotreply do not the from of for and department dept ltd llc gmbh
    plc sa ag co corporation limited team information important urgent action required
    your center centre service payroll finance accounting accounts treasury procurement
    purchasing sales marketing legal management board executive hr
    """))


# -- domains ---------------------------------------------------------------------------------


def under(host: str, names: Container[str]) -> str | None:
    """The one of ``names`` that ``host`` (U-labels, lower case, bounded: as
    :func:`unicode_host` gives it) is, or is a subdomain of."""
    labels = host.split(".")
    for start in range(len(labels) - 1):
        name = ".".join(labels[start:])
        if name in names:
            return name
    return None


@lru_cache(maxsize=HOST_CACHE)
def country_site(host: str) -> tuple[str, str] | None:
    """(label, country code) when the host's registrable domain is a label
    right under a country-code TLD, or under a second-level suffix that the
    public suffix list's ICANN section lists for that country:
    ``www.yahoo.com.au`` -> ("yahoo", "au"), ``google.de`` -> ("google",
    "de"); not ``yahoo.blogspot.com.au`` (a private suffix: anyone's),
    ``paypal.com`` nor ``yahoo.xn--p1ai``."""
    label, suffix = split_registrable(registrable(host))
    code = suffix.rpartition(".")[2]
    if not label or len(code) != 2 or not (code.isascii() and code.isalpha()):
        return None
    if suffix != code and (suffix.count(".") != 1 or not suffix.isascii()
                           or not _icann_suffixes().is_public(suffix)):
        return None
    return label, code


@lru_cache(maxsize=1)
def _icann_suffixes() -> Any:
    """The public suffix list's ICANN section alone: the suffixes registries
    run (com.au, co.uk), not the private ones companies added (github.io)."""
    from publicsuffixlist import PublicSuffixList

    return PublicSuffixList(only_icann=True)


def split_registrable(domain: str) -> tuple[str, str]:
    """(label, public suffix) of a registrable domain: ``paypal.co.uk`` ->
    (``paypal``, ``co.uk``)."""
    label, _, suffix = domain.partition(".")
    return label, suffix


@dataclass(frozen=True)
class Lookalike:
    """A domain that imitates another."""

    domain: str  # the registrable domain looked at
    imitates: str  # the registrable domain it imitates
    technique: str  # a key of TECHNIQUES
    owner: str = ""  # whose domain it imitates: "our domain", "brand PayPal", ...
    distance: int = 0  # edit distance, for "typo"
    corroboration: str = ""  # what else points at the imitated owner ("the subject names PayPal")
    # How it was made to deceive (:func:`crafted_form`), or "": a name of
    # its own that happens to be close (lindows.com, one from windows.com).
    crafted: str = ""

    def describe(self) -> str:
        """``paypa1-alerts.example imitates paypal.com (brand PayPal): a word added``"""
        how = TECHNIQUES.get(self.technique, self.technique)
        if self.technique == "typo":
            how = f"a typo (edit distance {self.distance})"
        whose = f" ({self.owner})" if self.owner else ""
        also = f"; {self.corroboration}" if self.corroboration else ""
        return f"{self.domain} imitates {self.imitates}{whose}: {how}{also}"


def compare(candidate: str, legitimate: str) -> Lookalike | None:
    """Whether the host ``candidate`` imitates the domain ``legitimate``
    (neither is, nor is under, the other's registrable domain)."""
    return DomainIndex({legitimate: ""}).match(candidate)


class DomainIndex:
    """Legitimate domains (each with whose it is), to find which one a host
    imitates. Built once (from the org's domains, the brands', the known
    correspondents'); :meth:`match` costs a few dictionary lookups and one
    bounded edit-distance search over the labels of similar length.

    A domain given that is not registrable (``amazon.com.be``, whose
    registrable domain by the public suffix list is ``com.be``) is owned with
    its subdomains but imitated by nothing: its parent is not its owner's,
    and its first label is not its name. With ``brands`` and ``freemail``,
    a brand's own domain (its country sites too) and a freemail provider's
    imitate nothing either."""

    def __init__(self, domains: Mapping[str, str], *, brands: Brands | None = None,
                 freemail: frozenset[str] = frozenset()):
        self.brands = brands
        self.freemail = freemail
        self.owners: dict[str, str] = {}  # registrable -> owner
        self._hosts: dict[str, str] = {}  # a name under a registrable domain not given -> owner
        self._by_key: dict[str, str] = {}  # fold(registrable) -> registrable
        self._flat: dict[str, str] = {}  # "paypal-com", "paypalcom" -> registrable
        self._by_label: dict[str, list[str]] = {}  # fold(label) -> registrables
        # Labels by length, folded and as written (lower case): edit distance
        # counts on both, as the skeleton makes an m two letters (rn).
        self._by_length: dict[int, list[str]] = {}
        self._written: dict[str, str] = {}  # label as written -> registrable
        self._memo: dict[tuple[str, bool], Lookalike | None] = {}  # match's answers
        for domain, owner in domains.items():
            host = unicode_host(domain)
            reg = registrable(host)
            if not reg or "." not in reg:
                continue
            if reg != host:
                self._hosts.setdefault(host, owner)
                continue
            if reg in self.owners:
                continue
            self.owners[reg] = owner
            self._by_key.setdefault(fold(reg), reg)
            self._flat.setdefault(fold(reg).replace(".", "-"), reg)
            self._flat.setdefault(fold(reg).replace(".", ""), reg)
            written = split_registrable(reg)[0]
            label = fold(written)
            for form in {label, written}:
                if form not in self._by_label and form not in self._written:
                    self._by_length.setdefault(len(form), []).append(form)
            self._by_label.setdefault(label, []).append(reg)
            self._written.setdefault(written, reg)

    def __len__(self) -> int:
        return len(self.owners) + len(self._hosts)

    def owner(self, host: str) -> str | None:
        """Whose the host is, if it is (under) one of these domains."""
        shown = unicode_host(host)
        found = self.owners.get(registrable(shown))
        if found is None and self._hosts:
            name = under(shown, self._hosts)
            found = self._hosts[name] if name is not None else None
        return found

    def match(self, host: str, other_tld: bool = True) -> Lookalike | None:
        """The domain ``host`` imitates, or None (also when it is one of them,
        a brand's or a freemail provider's). ``other_tld=False``: the same
        label under another suffix alone is no imitation."""
        key = (host, other_tld)
        if key in self._memo:
            return self._memo[key]
        found = self._memo[key] = self._judged(host, other_tld)
        if len(self._memo) > MATCH_MEMO:  # hosts recur (newsletters, trackers); keep it bounded
            self._memo.clear()
        return found

    def _judged(self, host: str, other_tld: bool) -> Lookalike | None:
        shown = unicode_host(host)
        reg = registrable(shown)
        if not reg or "." not in reg or reg in self.owners or self._spared(shown, reg):
            return None
        found = self._match(shown, reg, other_tld)
        if found is None:
            return None
        imitated, technique, distance = found
        label, suffix = split_registrable(reg)
        crafted = crafted_form(technique, label, split_registrable(imitated)[0], distance,
                               suffix)
        return Lookalike(reg, imitated, technique, self.owners.get(imitated, ""), distance,
                         crafted=crafted)

    def _spared(self, host: str, reg: str) -> bool:
        """Whether the host is its own: under a name given, a freemail
        provider's (anyone can have an address at mail.com and at gmail.com;
        neither imitates the other), or a brand's own."""
        return (bool(self._hosts) and under(host, self._hosts) is not None) or \
            reg in self.freemail or host in self.freemail or \
            (self.brands is not None and self.brands.owner(host) is not None)

    def _match(self, host: str, reg: str, other_tld: bool) -> tuple[str, str, int] | None:
        key = fold(reg)
        same = self._by_key.get(key)
        if same is not None:
            return same, "confusable", 0
        label, suffix = split_registrable(reg)
        folded = fold(label)
        for other in self._by_label.get(folded, ()) if other_tld else ():
            if split_registrable(other)[1] != suffix:
                return other, "tld", 0
        labels = fold(host).split(".")
        for start in range(len(labels) - 2):  # a legitimate domain as leading labels
            for width in (2, 3):
                if start + width < len(labels):
                    inner = self._by_key.get(".".join(labels[start:start + width]))
                    if inner is not None:
                        return inner, "subdomain", 0
        flat = self._flat.get(folded)
        if flat is not None:
            return flat, "dots", 0
        joined = folded.replace("-", "")
        if joined != folded and joined in self._by_label:
            return self._by_label[joined][0], "hyphen", 0
        affixed = self._affixed(folded)
        if affixed is not None:
            return affixed, "affix", 0
        return self._typo(folded) or self._typo(label)

    def _affixed(self, label: str) -> str | None:
        parts = [p for p in label.split("-") if p]
        if len(parts) > 1:
            for index, part in enumerate(parts):
                rest = parts[:index] + parts[index + 1:]
                if len(part) >= AFFIX_MIN and part in self._by_label and \
                        all(word in AFFIX_WORDS for word in rest):
                    return self._by_label[part][0]
        # A word run into the name, after it or before it: each place the
        # label may be cut, two set lookups (not a pass over every word).
        plain = label.replace("-", "")
        for cut in range(AFFIX_MIN, len(plain)):
            if plain[cut:] in AFFIX_WORDS and plain[:cut] in self._by_label:
                return self._by_label[plain[:cut]][0]
        for cut in range(1, len(plain) - AFFIX_MIN + 1):
            if plain[:cut] in AFFIX_WORDS and plain[cut:] in self._by_label:
                return self._by_label[plain[cut:]][0]
        return None

    def _typo(self, label: str) -> tuple[str, str, int] | None:
        if len(label) < TYPO_MIN - 1:
            return None
        choices = [other for length in range(len(label) - 2, len(label) + 3)
                   for other in self._by_length.get(length, ())]
        if not choices:
            return None
        best = extractOne(label, choices, scorer=OSA.distance, score_cutoff=2)
        if best is None:
            return None
        other, distance = best[0], int(best[1])
        imitated = self._by_label[other][0] if other in self._by_label else self._written[other]
        # The imitated label's length as written decides (its skeleton may be
        # longer: m is rn): micrsft.com is two edits from the nine letters of
        # microsoft.com, apxle2.com too many from apple.com, nmrc.ie none
        # from the four of hmrc.gov.uk.
        length = len(split_registrable(imitated)[0])
        allowed = 2 if length >= TYPO2_MIN else 1 if length >= TYPO_MIN else 0
        if distance == 0 or distance > allowed:
            return None
        return imitated, "typo", distance


def crafted_form(technique: str, label: str, imitated: str, distance: int = 0,
                 suffix: str = "") -> str:
    """How a lookalike's form was made to deceive, or "" when it was not:
    forms where names of their own rarely fall. A confusable spelling,
    hyphens inserted, the imitated domain written inside another (its dots
    as hyphens, or as a subdomain), a bait word joined with a hyphen
    (``paypal-secure``), a letter written as the digit it resembles
    (:func:`leet_digit`), one slip of the keyboard (:func:`keyboard_slip`),
    or a name of 5 letters or more under a generic TLD other than .com,
    .net and .org (:func:`unkept_tld`: ``paypal.top``). Not crafted: the very name under
    .com, .net, .org or a country's code (brands keep sites there, and hold
    many such names: facebook.net, apple.co, google.org, not all listed),
    a word run into the name (``outlooksecure``, a product's name as often
    as a phish's) and other near spellings (``lindows``, ``qmail``: a letter
    far from the one it replaces on the keyboard, a name chosen, not a slip
    made).

    ``label``: the lookalike's registrable label; ``imitated``: the
    imitated domain's, as written; ``suffix``: the lookalike's public
    suffix."""
    if technique in ("confusable", "hyphen", "dots", "subdomain"):
        return TECHNIQUES[technique]
    if technique == "affix":
        return "a bait word after a hyphen" if "-" in label else ""
    if technique == "typo" and distance == 1:
        return keyboard_slip(label, imitated) or leet_digit(label, imitated)
    # Shorter names are acronyms and words others hold too (ups.shop: power supplies).
    if technique == "tld" and len(imitated) >= TYPO_MIN and unkept_tld(suffix):
        return f"its name under .{suffix}, a generic TLD other than .com, .net and .org"
    return ""


# The generic TLDs that organisations have kept their sites under since
# before 2001, and the ones only institutions can register under.
KEPT_TLDS = frozenset({"com", "net", "org", "edu", "gov", "mil", "int"})


def unkept_tld(suffix: str) -> bool:
    """Whether ``suffix`` is a generic top-level domain other than the
    ones brands keep sites under (:data:`KEPT_TLDS`) and the countries'
    codes (``google.de``, ``apple.co``): .top, .xyz, .shop, .info. A
    brand's name registered there is a defensive registration, which mail
    does not link to, or someone else's; the few a brand uses for a site
    of its own (amazon.jobs, netflix.shop) are listed in brands.toml and
    imitate nothing. Internationalised TLDs (``xn--``) are left out: some
    are countries' codes."""
    return len(suffix) > 2 and suffix.isascii() and suffix.isalpha() \
        and suffix not in KEPT_TLDS


# Digits written for the letters they resemble (leetspeak): paypa4l, n3tflix.
_LEET = {"4": "a", "8": "b", "3": "e", "6": "g", "9": "g", "1": "il", "0": "o", "5": "s",
         "7": "t", "2": "z"}


def leet_digit(written: str, meant: str) -> str:
    """How ``written`` is ``meant`` with one letter written as the digit
    that resembles it ("4 for a"), or "" (the confusable skeleton already
    knows 0 and 1)."""
    if len(written) != len(meant):
        return ""
    differ = [(a, b) for a, b in zip(written, meant, strict=True) if a != b]
    if len(differ) == 1 and differ[0][1] in _LEET.get(differ[0][0], ""):
        return f"the digit {differ[0][0]} for {differ[0][1]}"
    return ""


# QWERTY rows and how far each is shifted right, in keys: two keys are
# neighbours when a finger meant for one may strike the other.
_ROWS = (("1234567890", 0.0), ("qwertyuiop", 0.5), ("asdfghjkl", 0.75), ("zxcvbnm", 1.25))
_KEY_AT = {char: (row, column + shift) for row, (keys, shift) in enumerate(_ROWS)
           for column, char in enumerate(keys)}


def neighbouring_keys(a: str, b: str) -> bool:
    """Whether ``a`` and ``b`` are next to each other on a QWERTY keyboard."""
    if a not in _KEY_AT or b not in _KEY_AT or a == b:
        return False
    (row_a, x_a), (row_b, x_b) = _KEY_AT[a], _KEY_AT[b]
    if row_a == row_b:
        return abs(x_a - x_b) == 1
    return abs(row_a - row_b) == 1 and abs(x_a - x_b) < 1


def keyboard_slip(written: str, meant: str) -> str:
    """How ``written`` is ``meant`` typed with one slip, or "": the typing
    errors typosquatters register (Wang et al., "Strider Typo-Patrol",
    SRUTI 2006): a letter left out, a letter doubled or a neighbouring key
    struck as well, two neighbouring letters swapped, or a neighbouring
    key struck instead."""
    if len(written) == len(meant) - 1:
        for i in range(len(meant)):
            if meant[:i] + meant[i + 1:] == written:
                return f"a slip of the keyboard: {meant[i]} left out"
        return ""
    if len(written) == len(meant) + 1:  # a letter added beside its own or a neighbour's key
        for i, extra in enumerate(written):
            if written[:i] + written[i + 1:] == meant:
                beside = written[i - 1:i] + written[i + 1:i + 2]
                if extra in beside:
                    return f"a slip of the keyboard: {extra} doubled"
                if any(neighbouring_keys(extra, c) for c in beside):
                    return f"a slip of the keyboard: {extra} struck beside its neighbour"
        return ""
    if len(written) != len(meant):
        return ""
    differ = [i for i, (a, b) in enumerate(zip(written, meant, strict=True)) if a != b]
    if len(differ) == 2 and differ[1] == differ[0] + 1:  # neighbours swapped
        i = differ[0]
        if written[i] == meant[i + 1] and written[i + 1] == meant[i]:
            return f"a slip of the keyboard: {meant[i:i + 2]} swapped"
        return ""
    if len(differ) == 1 and neighbouring_keys(written[differ[0]], meant[differ[0]]):
        return f"a slip of the keyboard: {written[differ[0]]} for its neighbour " \
               f"{meant[differ[0]]}"
    return ""


# -- brands ----------------------------------------------------------------------------------



@dataclass(frozen=True)
class Brand:
    key: str  # the table's name in brands.toml
    names: tuple[str, ...]  # as written there ("PayPal")
    # Its own domains, U-labels, the main one first, each with its subdomains:
    # registrable ones (paypal.com), and names under a registrable domain
    # that is not the brand's (amazon.com.be, under com.be).
    domains: tuple[str, ...]
    # Each name as the concatenation of its folded words ("paypal").
    keys: tuple[str, ...] = ()
    # Country-code TLDs of its country sites ("de", "uk"; "*": every one):
    # its main label there (google.de, google.co.uk) is its own.
    country_tlds: frozenset[str] = frozenset()
    country_label: str = ""  # the label of its first registrable domain ("google")

    @property
    def title(self) -> str:
        return self.names[0] if self.names else self.key

    def owns(self, host: str) -> bool:
        """Whether the host is (under) one of its domains, or one of its
        country sites."""
        shown = unicode_host(host)
        if under(shown, self.domains) is not None:
            return True
        site = country_site(shown) if self.country_tlds else None
        return site is not None and self.country_site(*site)

    def country_site(self, label: str, code: str) -> bool:
        return label == self.country_label and (code in self.country_tlds or
                                                "*" in self.country_tlds)


@dataclass(frozen=True)
class BrandMention:
    brand: Brand
    words: str  # the words that named it, as written after folding ("pay pal")


@dataclass(frozen=True)
class Brands:
    brands: tuple[Brand, ...] = ()
    sources: tuple[str, ...] = ()
    _by_key: Mapping[str, Brand] = field(default_factory=dict)
    _longest: int = 0
    _by_domain: Mapping[str, Brand] = field(default_factory=dict)
    _by_country_label: Mapping[str, tuple[Brand, ...]] = field(default_factory=dict)

    @classmethod
    def of(cls, brands: Iterable[Brand], sources: Iterable[str] = ()) -> Brands:
        listed = tuple(brands)
        by_key: dict[str, Brand] = {}
        by_domain: dict[str, Brand] = {}
        by_country_label: dict[str, tuple[Brand, ...]] = {}
        for brand in listed:
            for key in brand.keys:
                by_key.setdefault(key, brand)
            for domain in brand.domains:
                by_domain.setdefault(domain, brand)
            if brand.country_tlds and brand.country_label:
                by_country_label[brand.country_label] = (
                    *by_country_label.get(brand.country_label, ()), brand)
        longest = max((len(k) for k in by_key), default=0)
        return cls(listed, tuple(sources), by_key, longest, by_domain, by_country_label)

    def owner(self, host: str) -> Brand | None:
        """The brand whose domain (or country site) the host is under, if any."""
        shown = unicode_host(host)
        name = under(shown, self._by_domain)
        if name is not None:
            return self._by_domain[name]
        site = country_site(shown) if self._by_country_label else None
        if site is not None:
            return next((b for b in self._by_country_label.get(site[0], ())
                         if b.country_site(*site)), None)
        return None

    def domains(self) -> dict[str, str]:
        """registrable domain -> "brand NAME", for a :class:`DomainIndex`."""
        return {d: f"brand {b.title}" for b in self.brands for d in b.domains}

    def speaking_as(self, display_name: str) -> BrandMention | None:
        """The brand a display name speaks as: its name, with nothing beside
        it but role words ("PayPal", "PayPal Security Team", "P a y P a l",
        "Microsoft 365 Alerts"); not "Chase Miller" nor "Tom via LinkedIn"."""
        tokens = name_tokens(display_name)
        for start, end, brand in self._spans(tokens):
            rest = tokens[:start] + tokens[end:]
            if all(word in ROLE_WORDS or word.isdigit() or word in self._by_key
                   for word in rest):
                return BrandMention(brand, " ".join(tokens[start:end]))
        return None

    def mentioned_in(self, text: str) -> BrandMention | None:
        """The first brand named in ``text`` (a subject) as whole words."""
        return next(iter(self.mentions(text)), None)

    def mentions(self, text: str) -> tuple[BrandMention, ...]:
        """Every brand named in ``text`` as whole words, in order, each once."""
        tokens = name_tokens(text)
        found: dict[str, BrandMention] = {}
        for start, end, brand in self._spans(tokens):
            found.setdefault(brand.key, BrandMention(brand, " ".join(tokens[start:end])))
        return tuple(found.values())

    def _spans(self, tokens: tuple[str, ...]) -> Iterable[tuple[int, int, Brand]]:
        """(start, end, brand) of each run of whole words spelling a brand's name."""
        if not self._by_key:
            return
        for start in range(len(tokens)):
            joined = ""
            for end in range(start + 1, min(len(tokens), start + MAX_SPAN) + 1):
                joined += tokens[end - 1]
                if len(joined) > self._longest:
                    break
                brand = self._by_key.get(joined)
                if brand is not None:
                    yield start, end, brand
                    break


class OurIndexes:
    """The index of our domains and the brands', one per set of our domains,
    built once and kept (a bounded few: a site receives for a handful of
    domain sets, and a message's recipients pick one). The identity and
    links checks match hosts against it for every message."""

    LIMIT = 64

    def __init__(self, brands: Brands, freemail: frozenset[str]):
        self.brands, self.freemail = brands, freemail
        self._built: dict[frozenset[str], DomainIndex] = {}

    def of(self, org: frozenset[str]) -> DomainIndex:
        found = self._built.get(org)
        if found is None:
            if len(self._built) >= self.LIMIT:
                self._built.clear()
            domains = dict(self.brands.domains())
            domains.update({d: "our domain" for d in org})
            found = self._built[org] = DomainIndex(domains, brands=self.brands,
                                                   freemail=self.freemail)
        return found


def load_brands(paths: Iterable[str | Path]) -> Brands:
    """Brands from ``brands.toml`` files, later ones replacing a brand of the
    same name; raises ConfigError listing every problem."""
    tables: dict[str, tuple[str, Mapping[str, Any]]] = {}
    errors: list[str] = []
    sources = []
    for path in paths:
        sources.append(str(path))
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            errors.append(f"{path}: brands file not found")
            continue
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            errors.append(f"{path}: cannot read brands file: {exc}")
            continue
        unknown = set(data) - {"brand"}
        for name in sorted(unknown):
            errors.append(f"{path}: [{name}]: unknown section (brands are [brand.NAME] tables)")
        brands = data.get("brand", {})
        if not isinstance(brands, Mapping):
            errors.append(f"{path}: brand: expected tables such as [brand.paypal]")
            continue
        for key, table in brands.items():
            tables[key] = (str(path), table)
    found = []
    for key, (source, table) in tables.items():
        brand = _brand(key, table, f"{source}: brand.{key}", errors)
        if brand is not None:
            found.append(brand)
    if errors:
        raise ConfigError(errors)
    return Brands.of(found, sources)


def _brand(key: str, table: Any, where: str, errors: list[str]) -> Brand | None:
    if not isinstance(table, Mapping):
        errors.append(f"{where}: expected a table")
        return None
    known = ("country_tlds", "domains", "enabled", "names")
    for name in sorted(set(table) - set(known)):
        errors.append(f"{where}.{name}: unknown key (known keys: {', '.join(known)})")
    if table.get("enabled", True) is False:
        return None
    names, domains = table.get("names", [key]), table.get("domains", [])
    if not isinstance(names, list) or not names or \
            not all(isinstance(n, str) and n.strip() for n in names):
        errors.append(f"{where}.names: expected a list of names such as [\"PayPal\"]")
        return None
    if not isinstance(domains, list) or not domains or \
            not all(isinstance(d, str) and d.strip() for d in domains):
        errors.append(f"{where}.domains: expected a list of domains such as [\"paypal.com\"]")
        return None
    countries = table.get("country_tlds", [])
    if not isinstance(countries, list) or not all(
            isinstance(c, str) and (c == "*" or re.fullmatch(r"[A-Za-z]{2}", c))
            for c in countries):
        errors.append(f"{where}.country_tlds: expected country-code TLDs such as "
                      "[\"de\", \"uk\"], or [\"*\"] for every one")
        return None
    owned = _own_domains(domains, f"{where}.domains", errors)
    if not owned:
        return None
    keys = tuple(dict.fromkeys("".join(name_tokens(n)) for n in names if name_tokens(n)))
    main = next((d for d in owned if registrable(d) == d), "")
    return Brand(key, tuple(names), owned, keys, frozenset(c.lower() for c in countries),
                 split_registrable(main)[0])


def _own_domains(listed: Iterable[str], where: str, errors: list[str]) -> tuple[str, ...]:
    """The domains a brand lists, each read by the public suffix list: a
    registrable domain or a name under one (amazon.com.be, under com.be),
    never a public suffix, which anyone registers under (com.au, github.io)."""
    found = []
    for written in listed:
        host = unicode_host(written)
        if "." not in host or not all(host.split(".")):
            errors.append(f"{where}: {written!r} is not a domain name")
        elif is_public_suffix(ascii_host(host)):
            errors.append(f"{where}: {written} is a public suffix: anyone registers names "
                          "under it; list the brand's own domains")
        else:
            found.append(host)
    return tuple(dict.fromkeys(found))


# -- freemail --------------------------------------------------------------------------------


def load_freemail(paths: Iterable[str | Path], extra: Iterable[str] = ()) -> frozenset[str]:
    """Freemail registrable domains from list files (one a line, ``#``
    comments) and ``extra``; raises ConfigError naming an unreadable file."""
    found: set[str] = set()
    errors = []
    for path in paths:
        try:
            with open(path, encoding="utf-8") as handle:
                for number, line in enumerate(handle, 1):
                    if number > MAX_FREEMAIL_LINES:
                        errors.append(f"{path}: more than {MAX_FREEMAIL_LINES} lines")
                        break
                    entry = line.partition("#")[0].strip()
                    if entry:
                        found.add(registrable(entry))
        except FileNotFoundError:
            errors.append(f"{path}: freemail list not found")
        except (OSError, UnicodeDecodeError) as exc:
            errors.append(f"{path}: cannot read freemail list: {exc}")
    if errors:
        raise ConfigError(errors)
    found.update(registrable(d) for d in extra if d.strip())
    found.discard("")
    return frozenset(found)


def is_freemail(host: str, freemail: frozenset[str]) -> bool:
    """Whether anyone can get an address under the host's domain."""
    return bool(host) and (registrable(host) in freemail or unicode_host(host) in freemail)

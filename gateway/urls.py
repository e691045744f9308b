"""Every URL of a message, found once and read the way a browser reads it.

One extractor for every part that looks at links (the links check, the
DNS blocklists' ``url_host``, the ``uri`` rules, the console's list), so
that no two of them can disagree about where a link goes:

- **text**: what a mail program turns into a link, ``scheme://...`` and
  ``www.`` names (:data:`TEXT_URL`);
- **HTML**, parsed by lexbor (selectolax), an HTML5 parser that builds the
  same tree a browser does from the same bytes, entities and broken markup
  included: ``href`` of links and image maps (with the text a reader sees
  for them, and the ``alt`` text of their pictures), ``src`` and
  ``srcset``, form ``action`` and ``formaction``, ``background``, a
  ``<meta http-equiv="refresh">`` target, CSS ``url()`` and ``@import`` in
  ``style`` attributes and ``<style>`` elements; relative URLs against the
  document's ``<base href>``, as a browser resolves them;
- **QR codes** in pictures (:mod:`gateway.qr`), added by the message view.

A URL string is parsed by one parser, ada (the WHATWG URL standard, which
browsers implement): its host is what a browser would connect to, whatever
tricks the string plays (``http:\\\\evil.example``, ``http://0xC0A80001/``,
tabs and newlines inside the URL, full-width dots, percent-encoded host
names, a user name in front of the host). :func:`parse_link` gives its
host, registrable domain, path and user name.

Nothing here raises on content, and the work is linear in the text: the
caller bounds the text by ``[limits] text_bytes`` and the URLs kept by
``[limits] urls``.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from gateway.mail import registrable_domain

# What mail programs make a link of in plain text. (The classifier's own
# tokenizer keeps its expression, gateway.classifier.features.URL: its
# tokens are the model's features.)
TEXT_URL = re.compile(r"""(?:\b[a-z][a-z0-9+.-]{1,20}://|\bwww\.)[^\s<>"'`{}|\\^\[\]]+""",
                      re.IGNORECASE)
# Every TEXT_URL match holds "://" or "www." (any case), at most
# LONGEST_SCHEME characters after its start: TEXT_URL is searched only from
# there (see text_urls). Written to start with a character class, which re
# scans for 3x faster than an alternation; what else it finds (":ww.",
# "w//") only starts a search sooner.
URL_ANCHOR = re.compile(r"[:wW](?://|[wW]{2}\.)")
LONGEST_SCHEME = 21
# Punctuation after a URL in running text is the sentence's, not the URL's.
TRAILING = ".,;:!?)'\"\u00bb\u201d\u2019"
CSS_URL = re.compile(r"""url\(\s*(?:"([^"]*)"|'([^']*)'|([^)\s]*))\s*\)"""
                     r"""|@import\s+(?:"([^"]*)"|'([^']*)')""", re.IGNORECASE)
REFRESH_URL = re.compile(r"""^\s*[\d.]*\s*[;,]?\s*(?:url\s*=\s*)?(["']?)(.*)$""",
                         re.IGNORECASE | re.DOTALL)
WHITESPACE = re.compile(r"\s+")
# The elements whose attributes name URLs (one CSS selector, matched by lexbor).
URL_ELEMENTS = ("[href], [src], [srcset], [action], [formaction], [background], [poster], "
                "[style], meta[http-equiv], style")
ATTRIBUTE_SOURCES = {"href": "href", "src": "src", "action": "action",
                     "formaction": "action", "background": "background", "poster": "src"}
LINK_TAGS = frozenset({"a", "area"})
SCHEMES = frozenset({"http", "https", "ftp"})
# HTML up to this size and tag count goes to the parser as it is (too few
# attributes or elements to make its work grow); larger HTML is trimmed, and
# read up to HTML_PARSED characters (its text is still searched for URLs).
SMALL_HTML = 16 * 1024
SMALL_HTML_TAGS = 1000
HTML_PARSED = 512 * 1024
# What is kept of a link's text, for the evidence and the console.
TEXT_SHOWN = 300
# A data: URL is listed by its start only (its bytes are a picture).
DATA_SHOWN = 60


@dataclass(frozen=True)
class FoundUrl:
    """A URL as the message has it, and where."""

    url: str  # as written (an HTML attribute's value with its entities decoded)
    where: str  # text, href, src, srcset, action, background, refresh, css or qr
    text: str = ""  # what a reader sees for it: a link's text, else its pictures' alt text
    alt: str = ""  # the alt text of the pictures inside a link

    @property
    def shown(self) -> str:
        """The URL for people: whole, but a data: URL by its start."""
        if self.url[:5].lower() == "data:" and len(self.url) > DATA_SHOWN:
            return f"{self.url[:DATA_SHOWN]}… ({len(self.url)} characters)"
        return self.url


@dataclass(frozen=True)
class Link:
    """A URL as a browser reads it (see :func:`parse_link`)."""

    url: str  # the URL as the browser has it: scheme and host lower-cased, IDNA applied
    host: str  # without user name, port or final dot (IDNA/punycode, an IPv6 without [])
    domain: str  # registrable domain of the host (the host itself for an IP address)
    path: str  # everything after the host: path, query, fragment
    ip: bool = False
    user: str = ""  # the user name (and password) written before the host, decoded


@dataclass
class Extracted:
    found: list[FoundUrl]
    images: list[tuple[str, str]]  # (name, data: URL) of inline pictures in the HTML


def text_urls(text: str) -> Iterator[FoundUrl]:
    """The URLs a mail program would make links of in ``text``: the
    matches of ``TEXT_URL.finditer(text)``, found faster. TEXT_URL tries a
    scheme of up to 21 characters at every word of the text (half the
    message view's reading of a plain text); a match holds "://" or starts
    with "www.", so none starts more than LONGEST_SCHEME characters before
    the next of those, and the search may start there (``\\b`` still sees
    the character before it)."""
    position = 0
    while (anchor := URL_ANCHOR.search(text, position)) is not None:
        match = TEXT_URL.search(text, max(position, anchor.start() - LONGEST_SCHEME))
        if match is None:
            return
        position = match.end()
        url = match.group(0).rstrip(TRAILING)
        if url:
            yield FoundUrl(url, "text")


def html_urls(markup: str) -> Extracted:
    """The URLs of an HTML document (see the module's description)."""
    from selectolax.lexbor import LexborHTMLParser

    from gateway.web.boundhtml import bound_html

    found: list[FoundUrl] = []
    images: list[tuple[str, str]] = []
    try:
        # An HTML5 tree builder's work grows with the square of the attributes
        # of one tag and of the formatting elements open (lexbor: 10 s for
        # 240 KiB of attributes in one tag, minutes for 2 MiB of <b x=N>).
        # What could hold that many is trimmed first as the console's
        # sanitizer gets it (gateway.web.boundhtml: 32 attributes a tag,
        # 1,024 open elements), and only its first HTML_PARSED characters.
        if len(markup) > SMALL_HTML or markup.count("<") > SMALL_HTML_TAGS:
            markup = bound_html(markup[:HTML_PARSED]).html
        tree = LexborHTMLParser(markup)
        nodes = tree.css(URL_ELEMENTS)
    except Exception:  # lexbor refusing a document is no reason to fail
        return Extracted(found, images)
    base = ""
    seen: set[int] = set()
    for node in nodes:
        if node.mem_id in seen:  # an element matching several selectors
            continue
        seen.add(node.mem_id)
        tag = node.tag or ""
        attributes = node.attributes
        if tag == "base":
            href = (attributes.get("href") or "").strip()
            if not base and _absolute(href):
                base = href
            continue
        if tag == "style":
            found.extend(_css_urls(node.text(deep=True), base))
            continue
        if tag == "meta":
            if (attributes.get("http-equiv") or "").strip().lower() == "refresh":
                target = _refresh_target(attributes.get("content") or "")
                if target:
                    found.append(FoundUrl(_resolve(target, base), "refresh"))
            continue
        for name, value in attributes.items():
            if not value:
                continue
            if name == "style":
                found.extend(_css_urls(value, base))
            elif name == "srcset":
                found.extend(FoundUrl(_resolve(url, base), "srcset") for url in srcset(value))
            elif name in ATTRIBUTE_SOURCES:
                value = value.strip()
                if name == "src" and value[:11].lower() == "data:image/":
                    images.append((f"inline picture {len(images) + 1} (data: URL)", value))
                if name == "href" and tag in LINK_TAGS:
                    found.append(_anchor(node, _resolve(value, base)))
                else:
                    found.append(FoundUrl(_resolve(value, base), ATTRIBUTE_SOURCES[name]))
    return Extracted(found, images)


def _anchor(node: Any, url: str) -> FoundUrl:
    """A link with the text a reader sees for it and its pictures' alt text
    (inline elements join without a space: www.pay<b>pal</b>.com reads as
    one name)."""
    text = _visible(node.text(deep=True, separator=""))
    alt = _visible(" ".join(image.attributes.get("alt") or "" for image in node.css("img[alt]")))
    return FoundUrl(url, "href", text or alt, alt)


def _visible(text: str) -> str:
    return WHITESPACE.sub(" ", text).strip()[:TEXT_SHOWN]


def srcset(value: str) -> Iterator[str]:
    """The URLs of a ``srcset`` (HTML's "parse a srcset attribute": a URL,
    then descriptors up to a comma; a URL may itself contain commas)."""
    position, end = 0, len(value)
    while position < end:
        while position < end and (value[position].isspace() or value[position] == ","):
            position += 1
        start = position
        while position < end and not value[position].isspace():
            position += 1
        url = value[start:position]
        if url.endswith(","):
            url = url.rstrip(",")
        else:
            depth = 0
            while position < end and (value[position] != "," or depth):
                depth += {"(": 1, ")": -1}.get(value[position], 0)
                depth = max(depth, 0)
                position += 1
        if url:
            yield url


def _css_urls(css: str, base: str) -> Iterator[FoundUrl]:
    for match in CSS_URL.finditer(css):
        url = next((g for g in match.groups() if g is not None), "").strip()
        if url:
            yield FoundUrl(_resolve(url, base), "css")


def _refresh_target(content: str) -> str:
    """The URL of a meta refresh's ``content`` ("5; url='https://...'")."""
    match = REFRESH_URL.match(content)
    if match is None:
        return ""
    quote, rest = match.groups()
    if quote and quote in rest:
        rest = rest[:rest.index(quote)]
    return rest.strip()


def _absolute(url: str) -> bool:
    return parse_link(url) is not None


def _resolve(url: str, base: str) -> str:
    """``url`` resolved against the document's <base href>, as a browser does
    (an absolute URL, or one without a base, stays as written). Without a
    base, a scheme-relative ``//host/...`` goes where a webmail would send it,
    https."""
    if ":" in url.split("/", 1)[0]:
        return url
    if not base:
        return "https:" + url if url[:2] in ("//", "\\\\", "/\\", "\\/") else url
    import ada_url

    try:
        return str(ada_url.join_url(base, url))
    except ValueError:
        return url


def parse_link(url: str) -> Link | None:
    """Where ``url`` goes, as a browser reads it; None for what has no
    host to go to (mailto:, javascript:, a fragment, a relative link). A
    ``www.`` name without a scheme is read as http, as mail programs do."""
    return _parse_cached(url) if len(url) <= CACHED_LENGTH else _parse(url)


CACHED_LENGTH = 2048
# What is read of a parsed URL (each attribute costs a call into ada).
PARSED = ("href", "username", "password", "protocol", "hostname", "pathname", "search", "hash",
          "host_type")


@functools.lru_cache(maxsize=4096)
def _parse_cached(url: str) -> Link | None:
    return _parse(url)


def _parse(url: str) -> Link | None:
    import ada_url

    text = url.strip()
    if text[:4].lower() == "www.":
        text = "http://" + text
    try:
        parsed = ada_url.parse_url(text, attributes=PARSED)
    except ValueError:
        return None
    if parsed["protocol"].rstrip(":") not in SCHEMES:
        return None
    host = parsed["hostname"].strip(".")
    kind = parsed["host_type"]
    if kind == ada_url.HostType.IPV6:
        host = host.strip("[]")
    if not host or len(host) > 253:
        return None
    ip = kind != ada_url.HostType.DEFAULT
    user = parsed["username"] + (":" + parsed["password"] if parsed["password"] else "")
    after = parsed["pathname"] + parsed["search"] + parsed["hash"]
    return Link(parsed["href"], host, host if ip else registrable_domain(host), after, ip,
                _percent_decoded(user))


def _percent_decoded(text: str) -> str:
    if "%" not in text:
        return text
    from urllib.parse import unquote

    return unquote(text)

"""Tokens for the spam classifier, from the parsed message.

The tokens describe what a recipient sees and what a sender chose: subject
and body words (text/plain and HTML-stripped text/html, in any charset),
selected headers, the MIME structure and the domains of links. They
deliberately leave out what describes how a message was *collected* rather
than what it is (see ``EXCLUDED_HEADERS`` and ``ARTEFACT``): a model that
learns the collectors' mail hosts or the month a corpus was gathered scores
well on that corpus and badly on real mail.

Bump ``FEATURE_VERSION`` whenever the tokens change: a model trained on
other tokens is refused at load time.
"""

from __future__ import annotations

import html
import itertools
import re
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from email.message import Message as EmailMessage
from typing import Any

from gateway.config import LimitsSection
from gateway.mail import (
    Authors,
    Mailbox,
    decode_bytes,
    decoded_header,
    first_author,
    registrable_domain,
    safe_getaddresses,
    safe_parseaddr,
    shown_first_author,
)

# Re-exported for callers that still import them from here.
__all__ = ["decode_bytes", "decoded_header", "registrable_domain"]

FEATURE_VERSION = 4

# Headers never turned into tokens. Delivery and mailbox bookkeeping added
# at the recipient's side (by the corpus collectors, by fetchmail, by the
# MUA) and earlier filters' verdicts say nothing about the sender.
EXCLUDED_HEADERS = frozenset(
    {
        "delivered-to",
        "return-path",
        "x-original-to",
        "envelope-to",
        "delivery-date",
        "x-keywords",
        "x-status",
        "status",
        "x-uid",
        "x-uidl",
        "lines",
        "content-length",
        "x-original-date",
        "date",
        "received",
        "x-authentication-warning",
        "x-mime-autoconverted",
        "x-envelope-to",
        "x-apparently-to",
        "x-mdaemon-deliver-to",
        "x-mdrcpt-to",
        "x-originally-to",
        "resent-to",
    }
)
# Headers with tokens of their own below; the others get generic value tokens.
SPECIAL_HEADERS = frozenset(
    {"subject", "from", "to", "cc", "reply-to", "x-mailer", "user-agent", "message-id"}
)
HEADER_VALUE_SPLIT = re.compile(r"[\s;,<>\"=()]+")
EXCLUDED_HEADER_PREFIXES = ("x-spam", "x-mozilla-", "x-evolution", "x-imap", "x-virus", "x-gateway")

# Corpus artefacts that leak into any header or body text: the collectors'
# hosts, and the anonymised recipient addresses the public corpus uses.
ARTEFACT = re.compile(
    r"netnoteinc|slashnull|jmason|fetchmail|taint\.org|spamassassin\.taint|"
    r"yyyy|zzzz|\bjm@|\bjm-",
    re.IGNORECASE,
)
# The same words without the regular expression, lower-case, for ASCII
# text (see without_artefacts); those after a \b in it.
ARTEFACT_WORDS = ("netnoteinc", "slashnull", "jmason", "fetchmail", "taint.org",
                  "spamassassin.taint", "yyyy", "zzzz", "jm@", "jm-")
BOUNDED_ARTEFACT_WORDS = frozenset({"jm@", "jm-"})
# Calendar words and years: they tell when a corpus was gathered, not what
# a message is.
CALENDAR_WORDS = frozenset(
    [
        "mon",
        "tue",
        "wed",
        "thu",
        "fri",
        "sat",
        "sun",
        "monday",
        "tuesday",
        "wednesday",
        "thursday",
        "friday",
        "saturday",
        "sunday",
        "jan",
        "feb",
        "mar",
        "apr",
        "may",
        "jun",
        "jul",
        "aug",
        "sep",
        "sept",
        "oct",
        "nov",
        "dec",
        "january",
        "february",
        "march",
        "april",
        "june",
        "july",
        "august",
        "september",
        "october",
        "november",
        "december",
    ]
)
CLOCK_TIME = re.compile(r"\d{1,2}:\d\d(?::\d\d)?")


# The look-ahead changes no match (case-blind, only h, H, w and W start one)
# but lets the engine skip to those letters instead of trying every position.
URL = re.compile(r"""(?=[hHwW])(?:https?://|www\.)[^\s<>"'()\[\]{}]+""", re.IGNORECASE)
# The same in a group: split() gives the text between the URLs and the URLs.
URL_PIECES = re.compile(f"({URL.pattern})", re.IGNORECASE)
HREF = re.compile(r"""(?:href|src)\s*=\s*["']?([^"'\s>]+)""", re.IGNORECASE)
# The HTML patterns are written so that no attempt can backtrack more than
# once over the same text (see strip_html): every one is linear in the input.
TAG = re.compile(r"<\s*(?:(/)\s*)?([a-zA-Z][a-zA-Z0-9]*)[^>]*>", re.DOTALL)
SCRIPT_STYLE_OPEN = re.compile(r"<(script|style)\b", re.IGNORECASE)
SCRIPT_STYLE_CLOSE = {kind: re.compile(rf"</{kind}\s*>", re.IGNORECASE)
                      for kind in ("script", "style")}
COMMENT_OPEN = re.compile(r"<!--")
COMMENT_CLOSE = re.compile(r"-->")
WORD_EDGES = "\"'`()[]{}<>,.;:!?*|~^-_=+/\\#&"
INTERESTING_TAGS = frozenset(
    {
        "font",
        "table",
        "img",
        "a",
        "form",
        "input",
        "script",
        "iframe",
        "center",
        "b",
        "map",
        "area",
        "style",
        "object",
        "embed",
    }
)


@dataclass
class TextStats:
    """What the tokenizer read past its ``[limits]`` (for the symbols)."""

    urls: int = 0
    text_bytes: int = 0
    truncated: bool = False


DEFAULT_LIMITS = LimitsSection()


def message_tokens(message: EmailMessage, limits: LimitsSection = DEFAULT_LIMITS,
                   stats: TextStats | None = None, authors: Authors | None = None) -> set[str]:
    """The set of tokens of one parsed message (presence, not counts).
    ``authors``: the reading of exactly these From field values
    (``author_domains``), when the caller has it (``Message.authors``)."""
    fields = HeaderIndex(message)
    author = _author(fields, limits) if authors is None else \
        shown_first_author(authors, limits.encoded_words)
    tokens = set(_header_tokens(fields, author, limits))
    for chunk in _body_chunks(message, limits, stats if stats is not None else TextStats()):
        tokens.update(chunk)
    tokens.update(_received_tokens(fields, author))
    return without_artefacts(tokens)


class HeaderIndex:
    """A message's header fields by lower-case name, read in one pass: what
    ``message.get`` and ``get_all`` answer (the same values), where each of
    those calls walks every field again."""

    def __init__(self, message: EmailMessage):
        self.items = message.items()
        self._by_name: dict[str, list[Any]] = {}
        for name, value in self.items:
            self._by_name.setdefault(name.lower(), []).append(value)

    def get(self, name: str, default: Any = None) -> Any:
        values = self._by_name.get(name.lower())
        return values[0] if values else default

    def get_all(self, name: str, default: Any = None) -> Any:
        values = self._by_name.get(name.lower())
        return list(values) if values else default


def _author(fields: HeaderIndex, limits: LimitsSection) -> Mailbox:
    """The first author, read once for the header and Received tokens."""
    return first_author(fields.get_all("From", []), limits.encoded_words,
                        limits.address_comment_depth)


def without_artefacts(tokens: set[str]) -> set[str]:
    """``tokens`` less those in which ``ARTEFACT`` matches.

    The tokens in ASCII are searched at once, joined by newlines (no token
    holds one, so no match spans two), lower-cased and word by word with
    ``str.find`` (see _artefact_starts); the few others with the
    expression itself, whose case-blind matching beyond ASCII lower-casing
    would not reproduce (the long s, U+017F, matches 's'; the Kelvin sign,
    U+212A, lower-cases to 'k' but does not match it)."""
    joined = "\n".join(tokens)
    others: list[str] = []
    if not joined.isascii():
        others = [t for t in tokens if not t.isascii()]
        joined = "\n".join(t for t in tokens if t.isascii())
    bad = {t for t in others if ARTEFACT.search(t)}
    for at in _artefact_starts(joined.lower()):
        start = joined.rfind("\n", 0, at) + 1
        end = joined.find("\n", at)
        bad.add(joined[start:end if end >= 0 else len(joined)])
    return tokens - bad if bad else tokens


def has_artefact(text: str) -> bool:
    """Whether ``ARTEFACT`` matches in ``text``."""
    if text.isascii():
        return next(_artefact_starts(text.lower()), None) is not None
    return ARTEFACT.search(text) is not None


def _artefact_starts(lowered: str) -> Iterator[int]:
    """Where ``ARTEFACT`` matches in lower-cased ASCII text: each of its
    words found with ``str.find``. A regular expression of alternatives
    with no common start is tried at every position, and took a third of
    the classifier's time on mail that has artefacts."""
    for word in ARTEFACT_WORDS:
        at = lowered.find(word)
        while at >= 0:
            # \b before a word that starts with a word character
            if not (word in BOUNDED_ARTEFACT_WORDS and at > 0
                    and _word_character(lowered[at - 1])):
                yield at
            at = lowered.find(word, at + 1)


def _word_character(char: str) -> bool:
    return char.isalnum() or char == "_"


# -- headers -------------------------------------------------------------------


def header_tokens(message: EmailMessage,
                  limits: LimitsSection = DEFAULT_LIMITS) -> Iterator[str]:
    fields = HeaderIndex(message)
    return _header_tokens(fields, _author(fields, limits), limits)


def _header_tokens(message: HeaderIndex, author: Mailbox,
                   limits: LimitsSection) -> Iterator[str]:
    subject = decoded_header(message.get("Subject", ""), limits.encoded_words)
    subject_words = words(subject)
    for word in subject_words:
        yield "subject:" + word
    for pair in bigrams(subject_words):
        yield "subject:" + pair
    for token in number_tokens(subject):
        yield "subject:" + token
    if subject and subject.upper() == subject and any(c.isalpha() for c in subject):
        yield "subject:ALLCAPS"
    if "!" in subject:
        yield "subject:has!"

    name, address = author.display, author.address
    for word in words(name):
        yield "from:name:" + word
    from_domain = address.rpartition("@")[2].lower()
    if from_domain:
        yield from domain_tokens("from", from_domain)
    local = address.partition("@")[0]
    if any(c.isdigit() for c in local):
        yield "from:local:digits"
    if not name:
        yield "from:noname"

    reply_to = safe_parseaddr(str(message.get("Reply-To", "")))[1].rpartition("@")[2].lower()
    if reply_to:
        yield from domain_tokens("replyto", reply_to)
        if reply_to != from_domain:
            yield "replyto:differs"

    for field in ("To", "Cc"):
        count = len(safe_getaddresses([str(v) for v in message.get_all(field, [])]))
        yield f"{field.lower()}:count:{bucket(count, (0, 1, 2, 5, 10, 50))}"

    for field in ("X-Mailer", "User-Agent"):
        value = message.get(field)
        if value is not None:
            for word in words(str(value))[:6]:
                yield "mailer:" + word

    hops = sum(1 for v in message.get_all("Received", []) if not has_artefact(str(v)))
    yield f"received:hops:{bucket(hops, (0, 1, 2, 3, 5, 8))}"

    message_id = str(message.get("Message-ID", ""))
    if not message_id:
        yield "message-id:none"
    elif "@" not in message_id:
        yield "message-id:noat"
    yield from shape_tokens(message)

    for name, value in message.items:
        key = name.lower()
        if key in EXCLUDED_HEADERS or key.startswith(EXCLUDED_HEADER_PREFIXES):
            continue
        yield "header:" + key
        yield "hname:" + name[:40]
        if key in SPECIAL_HEADERS:
            continue
        # Like SpamAssassin's Bayes: the words of other header values, under
        # the header's name (list ids, MIME boundaries' style, priorities...).
        # The first 12 pieces; maxsplit spares splitting the rest of a long
        # value (a DKIM signature) only to drop it.
        for word in HEADER_VALUE_SPLIT.split(str(value), 12)[:12]:
            word = word.strip(".:'").lower()
            if 2 < len(word) <= 30:
                yield f"h:{key}:{word}"


HEX_RUN = re.compile(r"[0-9A-Fa-f]{6,}")
SHAPE_RUN = re.compile(r"([0-9]+)|([a-z]+)|([A-Z]+)")


def shape(text: str, limit: int = 40) -> str:
    """How a value is written, not what it says: hexadecimal runs '#',
    digits '9', lower-case 'a', upper-case 'A', runs collapsed, punctuation
    kept ('<#.#@a.a>', 'Aa, 9 Aa 9 9:9:9 -9'). Mailers and spamware write
    their Message-IDs and Dates in shapes of their own; the values (ids,
    days, zones) would only teach the corpus."""
    text = HEX_RUN.sub(lambda m: "#" if any(c.isdigit() for c in m.group(0)) else m.group(0),
                       text[:200])
    return SHAPE_RUN.sub(lambda m: "9" if m.group(1) else "a" if m.group(2) else "A",
                         text)[:limit]


def shape_tokens(message: HeaderIndex) -> Iterator[str]:
    """The shapes of the Message-ID (left and right of the '@') and of the
    Date header (which the words exclude as calendar)."""
    message_id = str(message.get("Message-ID", "")).strip()
    if message_id:
        local, _, domain = message_id.strip("<>").partition("@")
        yield "msgid:shape:" + shape(local)
        yield "msgid:domshape:" + shape(domain, 20)
    date = str(message.get("Date", "")).strip()
    yield "date:shape:" + (shape(date, 60) if date else "none")


def domain_tokens(prefix: str, domain: str) -> Iterator[str]:
    domain = domain.strip().strip(".>").lower()
    yield f"{prefix}:dom:{domain}"
    registrable = registrable_domain(domain)
    if registrable != domain:
        yield f"{prefix}:dom:{registrable}"
    yield f"{prefix}:tld:{domain.rpartition('.')[2]}"


# -- body ----------------------------------------------------------------------


def body_tokens(message: EmailMessage, limits: LimitsSection = DEFAULT_LIMITS,
                stats: TextStats | None = None) -> Iterator[str]:
    """The body's tokens in the text's order, repeats included."""
    for chunk in _body_chunks(message, limits, stats if stats is not None else TextStats()):
        yield from chunk


def _body_chunks(message: EmailMessage, limits: LimitsSection,
                 stats: TextStats) -> Iterator[Iterable[str]]:
    """The body's tokens in chunks (a part's words, its pairs...), which
    message_tokens adds to its set a chunk at a time."""
    kinds: list[str] = []
    urls: list[str] = []
    for part in message.walk():
        content_type = part.get_content_type()
        if part.is_multipart():
            kinds.append(content_type)
            continue
        filename = part.get_filename()
        disposition = str(part.get("Content-Disposition", "")).split(";")[0].strip().lower()
        encoding = str(part.get("Content-Transfer-Encoding", "")).strip().lower()
        if encoding:
            yield ("cte:" + encoding[:20],)
        charset = part.get_content_charset()
        if charset:
            yield ("charset:" + charset[:20],)
        if filename or disposition == "attachment":
            kinds.append("attachment")
            yield ("attach:type:" + content_type,)
            extension = (filename or "").rpartition(".")[2].lower()
            if extension and len(extension) <= 5:
                yield ("attach:ext:" + extension,)
            continue
        kinds.append(content_type)
        if content_type not in ("text/plain", "text/html"):
            yield ("part:" + content_type,)
            continue
        room = limits.text_bytes - stats.text_bytes
        if room <= 0:
            stats.truncated = True
            continue
        text = part_text(part)
        if len(text) > room:
            text, stats.truncated = text[:room], True
        stats.text_bytes += len(text)
        if content_type == "text/html":
            yield html_structure_tokens(text)
            urls.extend(_capped(HREF.findall(text), limits.urls - len(urls), stats))
            text = stripped_text(part, text)
        # One pass for the URLs and the text without them: the pieces
        # between the URLs, then each URL.
        pieces = URL_PIECES.split(text)
        urls.extend(_capped(pieces[1::2], limits.urls - len(urls), stats))
        text = " ".join(pieces[::2])
        body_words = words(text)
        yield body_words
        yield bigrams(body_words)
        yield number_tokens(text)

    found: list[str] = ["structure:" + ",".join(sorted(set(kinds)))[:120]]
    if "text/html" in kinds and "text/plain" not in kinds:
        found.append("structure:html-only")
    found.append(f"url:count:{bucket(len(urls), (0, 1, 2, 5, 10, 20))}")
    domains: set[str] = set()
    for url in urls[:100]:
        for token in url_tokens(url):
            if token.startswith("url:dom:") or token.startswith("url:host:"):
                domains.add(token.partition(":")[2].partition(":")[2])
            found.append(token)
    found.append(f"url:domains:{bucket(len(domains), (0, 1, 2, 3, 5, 10))}")
    yield found


def _capped(found: list[str], room: int, stats: TextStats) -> list[str]:
    """The first ``room`` of ``found``; the rest are only counted."""
    stats.urls += len(found)
    return found[:max(room, 0)]


# The decoded text of a part and its HTML stripped, kept on the parsed part:
# the message view (rules, links, DNS blocklists...) and the classifier read
# the same parts of one parse, and decode and strip each once between them.
_TEXT = "_gateway_text"
_STRIPPED = "_gateway_stripped"


def part_text(part: EmailMessage) -> str:
    """The part's text, transfer encoding and charset undone (kept on the
    part: the same text for every reader of this parse)."""
    text = part.__dict__.get(_TEXT)
    if text is None:
        text = _decoded_text(part)
        setattr(part, _TEXT, text)
    return text


def stripped_text(part: EmailMessage, markup: str) -> str:
    """``strip_html(markup)`` for ``markup`` read from ``part`` (all or the
    start of its text), kept on the part for the next reader of the same."""
    kept: tuple[str, str] | None = part.__dict__.get(_STRIPPED)
    if kept is not None and (kept[0] is markup or kept[0] == markup):
        return kept[1]
    text = strip_html(markup)
    setattr(part, _STRIPPED, (markup, text))
    return text


def _decoded_text(part: EmailMessage) -> str:
    try:
        payload = part.get_payload(decode=True)
    except Exception:  # a broken transfer encoding: fall back to the raw text
        payload = None
    if not isinstance(payload, bytes):  # None: a multipart, or undecodable
        raw = part.get_payload()
        return raw if isinstance(raw, str) else ""
    return decode_bytes(payload, part.get_content_charset())


def html_structure_tokens(markup: str) -> Iterator[str]:
    seen: set[str] = set()
    for closing, name in TAG.findall(_through_last_gt(markup[:200_000])):
        name = name.lower()
        if not closing and name in INTERESTING_TAGS and name not in seen:
            seen.add(name)
            yield "html:tag:" + name


def strip_html(markup: str) -> str:
    """Text without scripts, styles, comments and tags; what the regular
    expressions ``<(script|style)\\b.*?</\\1\\s*>``, ``<!--.*?-->`` and TAG
    would remove, found in linear time: a lazy ``.*?`` retried from every
    ``<script`` of a page without ``</script>`` is quadratic (8 s for 160 KB)."""
    markup = _remove_spans(markup, SCRIPT_STYLE_OPEN,
                           lambda opener: SCRIPT_STYLE_CLOSE[opener.group(1).lower()])
    markup = _remove_spans(markup, COMMENT_OPEN, lambda _opener: COMMENT_CLOSE)
    end = _last_gt(markup)
    markup = TAG.sub(" ", markup[:end]) + markup[end:]
    return html.unescape(markup)


def _remove_spans(text: str, opener: re.Pattern[str], closer_for) -> str:
    """Replace each span from an opener to the first closer after it with a
    space, leftmost first, as ``re.sub`` of ``opener.*?closer`` would."""
    closers: dict[re.Pattern[str], tuple[list[int], list[int]]] = {}
    out: list[str] = []
    position = 0
    for match in opener.finditer(text):
        if match.start() < position:
            continue
        closer = closer_for(match)
        if closer not in closers:
            found = list(closer.finditer(text))
            closers[closer] = ([m.start() for m in found], [m.end() for m in found])
        starts, ends = closers[closer]
        index = bisect_left(starts, match.end())
        if index == len(starts):
            continue
        out.append(text[position:match.start()])
        out.append(" ")
        position = ends[index]
    if not out:
        return text
    out.append(text[position:])
    return "".join(out)


def _last_gt(text: str) -> int:
    """End of the last '>': no tag can start after it (TAG would retry to
    the end of the text from every '<' there)."""
    return text.rfind(">") + 1


def _through_last_gt(text: str) -> str:
    return text[: _last_gt(text)]


def url_tokens(url: str) -> Iterator[str]:
    url = url.strip().lower()
    if url.startswith("www."):
        url = "http://" + url
    if not url.startswith(("http://", "https://")):
        if url.startswith("mailto:"):
            yield "url:mailto"
        return
    after_scheme = url.split("://", 1)[1]
    authority = after_scheme.split("/", 1)[0].split("?", 1)[0]
    rest = after_scheme[len(authority):][:200]
    host_port = authority.rpartition("@")[2]
    host = host_port.split(":", 1)[0].strip(".")
    if not host:
        return
    if re.fullmatch(r"[\d.]+", host):
        yield "url:ip"
        return
    yield "url:host:" + host
    registrable = registrable_domain(host)
    if registrable != host:
        yield "url:dom:" + registrable
    if url.startswith("https://"):
        yield "url:https"
    if "@" in authority:
        yield "url:userinfo"
    if ":" in host_port:
        yield "url:port"
    if "%" in host or host.count(".") > 4:
        yield "url:odd-host"
    for piece in URL_PATH_SPLIT.split(rest)[:8]:
        if 2 < len(piece) <= 20 and not piece.isdigit():
            yield "url:path:" + piece


# -- words ---------------------------------------------------------------------


def words(text: str) -> list[str]:
    """Lower-cased words of 3 to 20 characters; longer ones become a
    'skip' token of their first letter and length, like SpamBayes."""
    raw_words = text.lower().split()
    # Each distinct word is read once (mail repeats its words); the list
    # then takes them in the text's order, the dropped ones ('') left out.
    token_of = dict.fromkeys(raw_words, "")
    calendar = CALENDAR_WORDS
    for raw in token_of:
        word = raw.strip(WORD_EDGES)
        length = len(word)
        # Calendar words: month and weekday names, years 19xx/20xx, clock times.
        if length < 3 or word in calendar or (
                length == 4 and word[:2] in ("19", "20") and word[2:].isdecimal()) or (
                ":" in word and CLOCK_TIME.fullmatch(word) is not None):
            continue
        if length > 20:
            token_of[raw] = f"skip:{word[0]}{length // 10 * 10}"
        elif "@" in word:
            token_of[raw] = "email:" + word.rpartition("@")[2]
        else:
            token_of[raw] = word
    return list(filter(None, map(token_of.__getitem__, raw_words)))


def bucket(value: int, edges: Iterable[int]) -> str:
    """'0', '1', '2-4', ... : the range of ``edges`` that holds ``value``."""
    edges = list(edges)
    for low, high in zip(edges, [*edges[1:], None], strict=True):
        if high is None or value < high:
            return str(low) if high is None or high - low == 1 else f"{low}-{high - 1}"
    return str(edges[-1])


# -- more token kinds ------------------------------------------------------------


URL_PATH_SPLIT = re.compile(r"[/?=&.+_;,#~!$:-]+")
MONEY = re.compile(r"[$\u00a3\u20ac]\s?(\d[\d,]*)")
# Numbers not inside a word or a dotted number: ``(?<![\w.])\d+(?![\w.])``
# and ``(?<![\d.])\d+(?:\.\d+)?\s?%`` written to start with the digit, the
# look-behind then checking the character before it: the same matches, but
# the engine skips to the next digit instead of trying the look-behind at
# every position (3x faster on the corpus).
PERCENT = re.compile(r"\d(?<![\d.]\d)\d*(?:\.\d+)?\s?%")
NUMBER = re.compile(r"\d(?<![\w.]\d)\d*(?![\w.])")


def bigrams(items: list[str]) -> list[str]:
    """Adjacent word pairs ('click here'), skips and addresses left out."""
    return [f"{first} {second}" for first, second in itertools.pairwise(items)
            if ":" not in first and ":" not in second]


def number_tokens(text: str) -> list[str]:
    """Amounts of money, percentages and numbers by size, not by value."""
    found = [f"money:{bucket(len(match.group(1).replace(',', '')), (1, 3, 4, 6, 7))}"
             for match in itertools.islice(MONEY.finditer(text), 50)]
    if PERCENT.search(text):
        found.append("number:percent")
    lengths = {min(len(match.group(0)), 12)
               for match in itertools.islice(NUMBER.finditer(text), 200)}
    found.extend(f"number:digits:{length}" for length in lengths)
    return found


RECEIVED_FROM = re.compile(r"^\s*from\s+(\S{1,100})(?:\s+\(([^()]{0,200})\))?", re.IGNORECASE)
HOSTNAME = re.compile(r"[a-z0-9-]{1,63}(?:\.[a-z0-9-]{1,63})+")
IPV4 = re.compile(r"\b(\d{1,3})\.(\d{1,3})\.\d{1,3}\.\d{1,3}\b")


def received_tokens(message: EmailMessage, limits: LimitsSection = DEFAULT_LIMITS
                    ) -> Iterator[str]:
    fields = HeaderIndex(message)
    return _received_tokens(fields, _author(fields, limits))


def _received_tokens(message: HeaderIndex, author: Mailbox) -> Iterator[str]:
    """Where the mail started: the 'from' part of the two oldest Received
    fields (the sender's side; the newest ones are the recipient's own
    hosts). The HELO name and the reverse-DNS name by registrable domain,
    an IP literal, 'unknown', a private address, and whether they belong to
    the From domain."""
    fields = message.get_all("Received", [])[-2:]
    address = author.address
    from_domain = registrable_domain(address.rpartition("@")[2].strip().strip(">").lower()) \
        if "@" in address else ""
    for position, value in enumerate(reversed(fields)):
        prefix = "rcvd:origin" if position == 0 else "rcvd:next"
        match = RECEIVED_FROM.match(str(value)[:400].lower())
        if match is None:
            yield prefix + ":no-from"
            continue
        helo, comment = match.group(1), match.group(2) or ""
        helo = helo.strip("[]()")
        if IPV4.fullmatch(helo):
            yield prefix + ":helo:ip"
        elif "." not in helo:
            yield prefix + ":helo:bare"
        elif not HOSTNAME.fullmatch(helo.strip(".")):
            yield prefix + ":helo:odd"
        else:
            domain = registrable_domain(helo.strip("."))
            yield f"{prefix}:helo:{domain}"
            if from_domain and domain == from_domain:
                yield prefix + ":from-domain"
        if "unknown" in comment:
            yield prefix + ":rdns:unknown"
        for host in HOSTNAME.findall(comment)[:2]:
            if not IPV4.fullmatch(host):
                domain = registrable_domain(host.strip("."))
                yield f"{prefix}:rdns:{domain}"
                if from_domain and domain == from_domain:
                    yield prefix + ":from-domain"
        ip = IPV4.search(comment) or IPV4.search(helo)
        if ip:
            first, second = int(ip.group(1)), int(ip.group(2))
            if first in (10, 127) or (first == 192 and second == 168) or \
                    (first == 172 and 16 <= second <= 31):
                yield prefix + ":ip:private"


# -- blocks ----------------------------------------------------------------------

# The model normalises each block of a message's tokens on its own (see
# train.Settings.blocks): what the headers say, what the text says, and how
# the message is built. One norm over all tokens lets a long body drown the
# few header tokens, and a short one inflate them.
HEADER_KINDS = frozenset({
    "subject", "from", "replyto", "to", "cc", "mailer", "received", "message-id", "msgid",
    "date", "header", "hname", "h", "rcvd",
})
STRUCTURE_KINDS = frozenset({"url", "html", "cte", "charset", "attach", "part", "structure"})
BLOCK_HEADER, BLOCK_TEXT, BLOCK_STRUCTURE = 0, 1, 2
BLOCKS = 3


def token_block(token: str) -> int:
    """The block of a token by its kind (its prefix before ':'): headers,
    structure (links, HTML, MIME), or text (words, pairs, numbers)."""
    kind = token.partition(":")[0] if ":" in token else ""
    if kind in HEADER_KINDS:
        return BLOCK_HEADER
    if kind in STRUCTURE_KINDS:
        return BLOCK_STRUCTURE
    return BLOCK_TEXT


# -- explanations ----------------------------------------------------------------

_DISPLAY_PREFIXES = (
    ("subject:", "subject "), ("from:name:", "from name "), ("from:dom:", "from:"),
    ("replyto:dom:", "reply-to:"), ("url:dom:", "url:"), ("url:host:", "url:"),
    ("mailer:", "mailer "), ("email:", "address @"),
)


def describe_token(token: str) -> str:
    """A token as people read it in evidence: words and word pairs quoted
    ('"click here"'), the others by kind ('url:example.biz',
    'subject "winner"', 'list-id: debian-user')."""
    def quoted(text: str) -> str:
        return '"' + text.replace('"', "'")[:60] + '"'

    if token.startswith("h:"):
        name, _, value = token[2:].partition(":")
        return f"{name}: {value[:60]}"
    for prefix, shown in _DISPLAY_PREFIXES:
        if token.startswith(prefix):
            rest = token[len(prefix):]
            if shown.endswith(" ") and ":" not in rest:
                return shown + quoted(rest)
            return shown + rest[:60]
    if ":" not in token or " " in token:
        return quoted(token)
    return token[:80]

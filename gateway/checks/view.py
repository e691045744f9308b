"""What the content checks read of a message, taken once per message.

The rules, DNS blocklist, attachment and links checks all want the same
things: the decoded text of the text parts, the URLs in them and in the
QR codes of the pictures, the leaf parts with their types and file names.
:func:`view_of` builds them once from the message's bounded parse
(:attr:`gateway.message.Message.email`, within ``[limits]``), with the
classifier's linear HTML stripper for the text (:mod:`gateway.classifier.
features`) and the one URL extractor (:mod:`gateway.urls`, QR codes by
:mod:`gateway.qr`), and keeps the result for as long as the message lives,
so a second check does not parse again.

Everything here is bounded: the text by ``[limits] text_bytes`` (across
parts), the URLs by ``[limits] urls``, the parts by the parser's
``mime_parts``, the pictures by ``images``, ``image_bytes``,
``image_pixels`` and ``image_seconds``. Nothing here raises on content.
"""

from __future__ import annotations

import base64
import binascii
import functools
import itertools
import threading
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import Message as EmailMessage

from gateway import qr
from gateway.classifier.features import part_text, stripped_text
from gateway.config import LimitsSection
from gateway.mail import decode_bytes, decoded_header
from gateway.message import Message
from gateway.urls import FoundUrl, Link, html_urls, parse_link, text_urls

# A file name longer than this is cut (a name is for people; the end of a
# long one still shows its extension, so the cut keeps both ends).
NAME_LENGTH = 255


@dataclass
class TextPart:
    content_type: str  # text/plain or text/html
    raw: str  # decoded text as sent (HTML with its tags)
    text: str  # what a reader sees: HTML without tags, scripts, styles, comments

    @functools.cached_property
    def raw_utf8(self) -> bytes:
        return self.raw.encode("utf-8", "replace")

    @functools.cached_property
    def text_utf8(self) -> bytes:
        return self.text.encode("utf-8", "replace")


@dataclass
class Part:
    """A leaf part: its declared type, file name and decoded bytes on demand."""

    content_type: str
    filename: str
    disposition: str
    index: int
    _part: EmailMessage | None = field(default=None, repr=False)
    _payload: bytes | None = field(default=None, repr=False)

    @property
    def is_text(self) -> bool:
        return self.content_type in ("text/plain", "text/html") and not self.filename \
            and self.disposition != "attachment"

    def payload(self) -> bytes:
        """The part's bytes, transfer encoding undone (never raises)."""
        if self._payload is None:
            data: object = None
            if self._part is not None:
                try:
                    data = self._part.get_payload(decode=True)
                except Exception:  # a broken transfer encoding
                    data = None
                if data is None:
                    raw = self._part.get_payload()
                    data = raw.encode("utf-8", "surrogateescape") if isinstance(raw, str) \
                        else b""
            self._payload = data if isinstance(data, bytes) else b""
        return self._payload


class MessageView:
    """The parts (cheap: no decoding), and the text and links of the text
    parts (decoded on first use). Holds the parsed message, never the
    :class:`~gateway.message.Message` (the cache's weak key)."""

    def __init__(self, email: EmailMessage, limits: LimitsSection):
        self._email = email
        self._limits = limits

    @functools.cached_property
    def parts(self) -> list[Part]:
        encoded_words = self._limits.encoded_words
        return [Part(_content_type(part), file_name(part, encoded_words), _disposition(part),
                     index, part)
                for index, part in enumerate(self._email.walk()) if not part.is_multipart()]

    @property
    def texts(self) -> list[TextPart]:
        return self._read.texts

    @functools.cached_property
    def found(self) -> list[FoundUrl]:
        """Every URL as the message has it, in order, with where it was
        (text, an HTML attribute, a QR code) and a link's visible text:
        at most [limits] urls from the text, and those of the QR codes."""
        return self._read.found + [FoundUrl(code.text, "qr", code.image)
                                   for code in self.qr_scan.codes]

    @functools.cached_property
    def links(self) -> list[Link]:
        """The distinct links of :attr:`found`, parsed (those with a host)."""
        return list(dict.fromkeys(link for found in self.found
                                  if (link := parse_link(found.url)) is not None))

    @property
    def urls_seen(self) -> int:
        """URLs found in the text, the ones past [limits] urls included."""
        return self._read.seen

    @property
    def text_truncated(self) -> bool:
        return self._read.truncated

    @functools.cached_property
    def _read(self) -> _Read:
        limits = self._limits
        read = _Read()
        room = limits.text_bytes
        for leaf in self.parts:
            if not leaf.is_text:
                continue
            if room <= 0:
                read.truncated = True
                continue
            assert leaf._part is not None
            raw = part_text(leaf._part)
            if len(raw) > room:
                raw, read.truncated = raw[:room], True
            room -= len(raw)
            urls: list[FoundUrl] = []
            if leaf.content_type == "text/html":
                text = stripped_text(leaf._part, raw)
                extracted = html_urls(raw)
                urls += extracted.found
                read.inline_images += extracted.images
            else:
                text = raw
            urls += text_urls(text)
            read.keep(urls, limits.urls)
            read.texts.append(TextPart(leaf.content_type, raw, text))
        for leaf in self.parts:
            # An attached web page (or SVG picture) is opened in a browser by a
            # click: its links and forms are the message's too. In what is
            # left of the text budget, after the text parts.
            if leaf.is_text or not _is_web_page(leaf):
                continue
            if room <= 0:
                read.truncated = True
                continue
            charset = leaf._part.get_content_charset() if leaf._part is not None else None
            page = decode_bytes(leaf.payload()[:room * 4], charset)[:room]
            room -= len(page)
            extracted = html_urls(page)
            read.keep(extracted.found, limits.urls)
            read.inline_images += extracted.images
        return read

    @functools.cached_property
    def qr_scan(self) -> qr.Scan:
        """The QR codes of the pictures: attached or inline parts that are
        pictures by their first bytes (whatever their declared type or
        name), and data: pictures in the HTML."""
        pictures = ((part.filename or f"part {part.index} ({part.content_type})", data)
                    for part in self.parts
                    if not part.is_text and qr.is_image(data := part.payload()))
        return qr.scan(itertools.chain(pictures, _data_pictures(self._read.inline_images)),
                       self._limits)


@dataclass
class _Read:
    texts: list[TextPart] = field(default_factory=list)
    found: list[FoundUrl] = field(default_factory=list)
    inline_images: list[tuple[str, str]] = field(default_factory=list)
    seen: int = 0
    truncated: bool = False

    def keep(self, urls: list[FoundUrl], limit: int) -> None:
        """Count ``urls`` and keep them up to ``limit`` in all."""
        self.seen += len(urls)
        self.found.extend(urls[:max(limit - len(self.found), 0)])


WEB_PAGE_TYPES = frozenset({"text/html", "application/xhtml+xml", "image/svg+xml"})
WEB_PAGE_NAMES = (".htm", ".html", ".shtml", ".xhtml", ".svg")


def _is_web_page(part: Part) -> bool:
    return part.content_type in WEB_PAGE_TYPES or \
        part.filename.lower().rstrip(". ").endswith(WEB_PAGE_NAMES)


def _data_pictures(images: list[tuple[str, str]]) -> Iterator[tuple[str, bytes]]:
    """The bytes of data: pictures (base64 only: what a picture needs)."""
    for name, url in images:
        head, _, payload = url.partition(",")
        if not head.lower().endswith(";base64"):
            continue
        try:
            yield name, base64.b64decode("".join(payload.split()), validate=False)
        except (ValueError, binascii.Error):
            continue


_views: weakref.WeakKeyDictionary[Message, MessageView] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def view_of(message: Message) -> MessageView:
    """The view of ``message``, made on first use and kept while it lives."""
    with _lock:
        view = _views.get(message)
    if view is None:
        made = MessageView(message.email, message.limits)  # the parse, outside the lock
        with _lock:
            view = _views.setdefault(message, made)
    return view


def file_name(part: EmailMessage, encoded_words: int = 200) -> str:
    """The part's file name (Content-Disposition filename, else Content-Type
    name), RFC 2231 and RFC 2047 decoded, as a reader's program shows it."""
    if not _may_name_a_file(part):
        return ""
    try:
        name = part.get_filename()
        if name and "\ufffd" in name:
            name = _raw_utf8_filename(part) or name
    except Exception:  # parameters the stdlib cannot decode
        name = None
    if not name:
        return ""
    name = decoded_header(str(name), encoded_words)
    name = " ".join(name.replace("\x00", " ").split("\n"))
    if len(name) > NAME_LENGTH:
        name = name[:NAME_LENGTH // 2] + "…" + name[-(NAME_LENGTH // 2):]
    return name


def _may_name_a_file(part: EmailMessage) -> bool:
    """Whether a Content-Disposition or Content-Type field says "name"
    (filename, name, name*0*...): the parameter names get_filename reads
    are the fields' own text lower-cased, so without it there is none, and
    most parts are spared the stdlib's parameter parse."""
    return any(not isinstance(value, str) or "name" in value.lower()
               for key, value in part.raw_items()
               if key.lower() in ("content-disposition", "content-type"))


def _raw_utf8_filename(part: EmailMessage) -> str | None:
    """A file name sent as raw UTF-8 (not RFC 2231 or 2047 encoded): the
    parser keeps such bytes as surrogate escapes, and its parameter reader
    turns them into U+FFFD; read them as the UTF-8 they are."""
    for header in ("content-disposition", "content-type"):
        value = next((v for k, v in part.raw_items() if k.lower() == header), None)
        if not isinstance(value, str):
            continue
        holder = EmailMessage()
        holder[header] = value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        found = holder.get_param("filename" if header == "content-disposition" else "name",
                                 header=header)
        if isinstance(found, str) and found:
            return found
    return None


def _content_type(part: EmailMessage) -> str:
    try:
        return part.get_content_type()
    except Exception:
        return "application/octet-stream"


def _disposition(part: EmailMessage) -> str:
    return str(part.get("Content-Disposition", "")).split(";")[0].strip().lower()

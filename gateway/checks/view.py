"""What the content checks read of a message, taken once per message.

The rules, DNS blocklist and attachment checks all want the same things:
the decoded text of the text parts, the URLs in them, the leaf parts with
their types and file names. :func:`view_of` builds them once from the
message's bounded parse (:attr:`gateway.message.Message.email`, within
``[limits]``) with the classifier's own bounded helpers
(:mod:`gateway.classifier.features`: the linear HTML stripper, the URL
patterns), and keeps the result for as long as the message lives, so a
second check does not parse again.

Everything here is bounded: the text by ``[limits] text_bytes`` (across
parts), the URLs by ``[limits] urls``, the parts by the parser's
``mime_parts``. Nothing here raises on content.
"""

from __future__ import annotations

import functools
import ipaddress
import threading
import weakref
from dataclasses import dataclass, field
from email.message import Message as EmailMessage

from gateway.classifier.features import HREF, URL, part_text, strip_html
from gateway.config import LimitsSection
from gateway.mail import decoded_header, registrable_domain
from gateway.message import Message

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


@dataclass(frozen=True)
class Link:
    url: str  # as found, lower-cased scheme and host
    host: str  # without user-info, port or final dot; "" when there is none
    domain: str  # registrable domain of the host (the host itself for an IP)
    path: str  # everything after the host
    ip: bool = False


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
        return self._read[0]

    @property
    def links(self) -> list[Link]:
        return self._read[1]

    @property
    def urls_seen(self) -> int:
        """URLs found, the ones past [limits] urls included."""
        return self._read[2]

    @property
    def text_truncated(self) -> bool:
        return self._read[3]

    @functools.cached_property
    def _read(self) -> tuple[list[TextPart], list[Link], int, bool]:
        limits = self._limits
        texts: list[TextPart] = []
        found: list[str] = []
        seen = 0
        room = limits.text_bytes
        truncated = False
        for leaf in self.parts:
            if not leaf.is_text:
                continue
            if room <= 0:
                truncated = True
                continue
            assert leaf._part is not None
            raw = part_text(leaf._part)
            if len(raw) > room:
                raw, truncated = raw[:room], True
            room -= len(raw)
            if leaf.content_type == "text/html":
                text = strip_html(raw)
                urls = [m.group(1) for m in HREF.finditer(raw)]
            else:
                text, urls = raw, []
            urls += [m.group(0) for m in URL.finditer(text)]
            seen += len(urls)
            found.extend(urls[:max(limits.urls - len(found), 0)])
            texts.append(TextPart(leaf.content_type, raw, text))
        links = list(dict.fromkeys(link for url in found
                                   if (link := parse_link(url)) is not None))
        return texts, links, seen, truncated


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


def parse_link(url: str) -> Link | None:
    """A URL's host, registrable domain and path; None for what has no host
    (mailto:, fragments, relative links)."""
    text = url.strip().strip("'\"<>").lower()
    if text.startswith("www."):
        text = "http://" + text
    scheme, sep, rest = text.partition("://")
    if not sep or scheme not in ("http", "https", "ftp"):
        return None
    end = min((i for i in (rest.find("/"), rest.find("?"), rest.find("#")) if i >= 0),
              default=len(rest))
    authority, path = rest[:end], rest[end:][:1000]
    host = authority.rpartition("@")[2]
    # [IPv6]:port, or host:port
    host = host[1:].partition("]")[0] if host.startswith("[") else host.partition(":")[0]
    host = host.strip(".")
    if not host or len(host) > 253:
        return None
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return Link(text[:2000], host, registrable_domain(host), path)
    return Link(text[:2000], host, host, path, ip=True)


def file_name(part: EmailMessage, encoded_words: int = 200) -> str:
    """The part's file name (Content-Disposition filename, else Content-Type
    name), RFC 2231 and RFC 2047 decoded, as a reader's program shows it."""
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

"""What a held message says, made safe to look at.

Everything here comes from the sender and is treated as hostile: header
fields are decoded but returned as plain text (the templates escape them,
the command line passes them through :func:`gateway.terminal.printable`);
the text body is text; the HTML body is only ever shown after
:func:`sanitize_html` (nh3, the Ammonia sanitizer) *and* inside a sandboxed
frame under a Content-Security-Policy that forbids scripts and any load from
elsewhere; attachments are listed — name, declared type, the type their
first bytes show, size, SHA-256 — and offered for download, never rendered;
URLs are listed as text, not as links.

The parse is the gateway's bounded MIME parser (``[limits]``), so a message
built to exhaust a parser costs no more here than in the checks.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import Message
from html.parser import HTMLParser

from gateway.mail import decode_bytes, decoded_header
from gateway.mime import parse_bytes

# What is shown of a body, and how many of each list.
MAX_TEXT = 512 * 1024
MAX_URLS = 500
MAX_PARTS = 200
MAX_HEADERS = 300

_URL = re.compile(r"""(?i)\b(?:https?://|www\.)[^\s<>"'`{}|\\^\[\]]{1,2000}""")


@dataclass(frozen=True)
class Attachment:
    index: int            # position among the message's leaf parts (for download)
    name: str
    declared: str         # Content-Type as sent
    detected: str         # what the first bytes are
    size: int
    sha256: str

    @property
    def mismatch(self) -> bool:
        """The bytes are not what the sender declared (an .exe called a PDF)."""
        if self.detected in ("application/octet-stream", "text/plain"):
            return False
        return self.detected.split("/")[0] != self.declared.split("/")[0] or (
            self.detected != self.declared and self.detected in DANGEROUS)


@dataclass
class Preview:
    headers: list[tuple[str, str]] = field(default_factory=list)
    text: str = ""
    text_truncated: bool = False
    text_from_html: bool = False
    html: str | None = None
    attachments: list[Attachment] = field(default_factory=list)
    urls: list[str] = field(default_factory=list)


def analyse(raw: bytes) -> Preview:
    message = parse_bytes(raw)
    preview = Preview()
    for count, (name, value) in enumerate(message.raw_items()):
        if count >= MAX_HEADERS:
            preview.headers.append(("…", f"{len(message.keys()) - count} more fields"))
            break
        preview.headers.append((str(name), " ".join(decoded_header(value).split())))
    urls: list[str] = []
    for index, part in enumerate(_leaves(message)):
        if index >= MAX_PARTS:
            break
        kind = part.get_content_type().lower()
        filename = _filename(part)
        disposition = (part.get("Content-Disposition") or "").split(";")[0].strip().lower()
        data = _payload(part)
        inline_text = kind in ("text/plain", "text/html") and not filename \
            and disposition != "attachment"
        if inline_text and kind == "text/plain" and not preview.text:
            text = decode_bytes(data, part.get_content_charset())
            preview.text_truncated = len(text) > MAX_TEXT
            preview.text = text[:MAX_TEXT]
            urls += _URL.findall(preview.text)
        elif inline_text and kind == "text/html" and preview.html is None:
            preview.html = decode_bytes(data, part.get_content_charset())[:MAX_TEXT * 2]
            urls += _html_urls(preview.html)
        else:
            preview.attachments.append(Attachment(
                index=index, name=filename or f"part-{index + 1}", declared=kind,
                detected=detect_type(data), size=len(data),
                sha256=hashlib.sha256(data).hexdigest()))
    if not preview.text and preview.html is not None:
        preview.text = html_to_text(preview.html)[:MAX_TEXT]
        preview.text_from_html = bool(preview.text)
    seen: dict[str, None] = {}
    for url in urls:
        seen.setdefault(url.rstrip(".,;:!?)"), None)
        if len(seen) >= MAX_URLS:
            break
    preview.urls = list(seen)
    return preview


def attachment_bytes(raw: bytes, index: int) -> tuple[Attachment, bytes] | None:
    """One leaf part's decoded bytes, for download."""
    for position, part in enumerate(_leaves(parse_bytes(raw))):
        if position == index:
            data = _payload(part)
            return Attachment(position, _filename(part) or f"part-{position + 1}",
                              part.get_content_type().lower(), detect_type(data), len(data),
                              hashlib.sha256(data).hexdigest()), data
        if position >= MAX_PARTS:
            break
    return None


def _leaves(message: Message) -> Iterator[Message]:
    for part in message.walk():
        if not part.is_multipart():
            yield part


def _payload(part: Message) -> bytes:
    try:
        data = part.get_payload(decode=True)
    except Exception:  # a broken transfer encoding: show what is there
        data = None
    if data is None:
        payload = part.get_payload()
        data = payload.encode("utf-8", "replace") if isinstance(payload, str) else b""
    return bytes(data)


def _filename(part: Message) -> str:
    try:
        name = part.get_filename() or ""
    except Exception:
        name = ""
    return " ".join(decoded_header(name).split())[:255]


# -- what the bytes are ------------------------------------------------------------

DANGEROUS = {"application/x-msdownload", "application/x-executable",
             "application/x-ole-storage", "application/java-archive"}
_MAGIC = (
    (b"%PDF-", "application/pdf"),
    (b"MZ", "application/x-msdownload"),
    (b"\x7fELF", "application/x-executable"),
    (b"PK\x03\x04", "application/zip"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "application/x-ole-storage"),
    (b"Rar!\x1a\x07", "application/vnd.rar"),
    (b"7z\xbc\xaf\x27\x1c", "application/x-7z-compressed"),
    (b"\x1f\x8b", "application/gzip"),
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"{\\rtf", "application/rtf"),
    (b"%!PS", "application/postscript"),
)


def detect_type(data: bytes) -> str:
    for magic, kind in _MAGIC:
        if data.startswith(magic):
            return kind
    head = data[:512].lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html", b"<head", b"<body", b"<script")):
        return "text/html"
    if head.startswith(b"<svg") or (b"<svg" in head[:200] and head.startswith(b"<?xml")):
        return "image/svg+xml"
    try:
        data[:4096].decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < 4090:
            return "application/octet-stream"
    if data and all(b >= 0x20 or b in (9, 10, 13) for b in data[:4096]):
        return "text/plain"
    return "application/octet-stream" if data else "application/x-empty"


# -- HTML ---------------------------------------------------------------------------

# Tags and attributes an HTML mail may keep for reading. No script, style
# sheet, form, frame, object, meta or link survives; images only as data:
# URLs (no remote load); links lose their target (the URLs are listed
# beside the frame instead, as text).
_TAGS = {
    "a", "abbr", "b", "blockquote", "br", "caption", "center", "code", "col", "colgroup",
    "dd", "del", "div", "dl", "dt", "em", "font", "h1", "h2", "h3", "h4", "h5", "h6", "hr",
    "i", "img", "ins", "kbd", "li", "ol", "p", "pre", "q", "s", "small", "span", "strike",
    "strong", "sub", "sup", "table", "tbody", "td", "tfoot", "th", "thead", "tr", "tt", "u",
    "ul",
}
_ATTRIBUTES = {
    "*": {"align", "valign", "dir", "lang", "title", "style", "width", "height", "bgcolor",
          "color", "border", "cellpadding", "cellspacing", "colspan", "rowspan", "face",
          "size"},
    "img": {"src", "alt"},
}
# CSS properties a style attribute may keep; the rest (background, content,
# cursor, position, anything that can name a URL) is dropped.
_STYLE_PROPERTIES = {
    "color", "background-color", "font-family", "font-size", "font-style", "font-weight",
    "text-align", "text-decoration", "vertical-align", "line-height", "white-space",
    "margin", "margin-top", "margin-right", "margin-bottom", "margin-left",
    "padding", "padding-top", "padding-right", "padding-bottom", "padding-left",
    "border", "border-top", "border-right", "border-bottom", "border-left", "border-color",
    "border-style", "border-width", "border-collapse", "width", "height", "max-width",
    "display",
}
_CSS_LOAD = re.compile(r"(?i)url\s*\(|@import|expression\s*\(|image-set\s*\(|behavior\s*:"
                       r"|-moz-binding|\\")
_REMOTE_IMAGE = re.compile(r"""(?i)<img\b[^>]*?\bsrc\s*=\s*["']?(?!data:)""")
_DATA_IMAGE = re.compile(r"(?i)^data:image/(png|gif|jpeg|webp);base64,[a-z0-9+/=\s]+$")


@dataclass(frozen=True)
class Sanitized:
    html: str
    blocked_images: int
    removed_styles: int


def sanitize_html(html: str) -> Sanitized:
    """The HTML with everything that could run or load removed (nh3)."""
    import nh3

    counts = {"images": 0, "styles": 0}

    def attribute(element: str, name: str, value: str) -> str | None:
        if name == "style" and _CSS_LOAD.search(value):
            counts["styles"] += 1
            return None
        if element == "img" and name == "src":
            if _DATA_IMAGE.match(value) and len(value) < 2_000_000:
                return value
            counts["images"] += 1
            return None
        return value

    cleaned = nh3.clean(
        html, tags=_TAGS, attributes=_ATTRIBUTES, attribute_filter=attribute,
        clean_content_tags={"script", "style", "title", "noscript", "template", "iframe",
                            "object", "svg", "math"},
        url_schemes={"data"}, link_rel="noopener noreferrer nofollow", strip_comments=True,
        filter_style_properties=_STYLE_PROPERTIES)
    remote = len(_REMOTE_IMAGE.findall(html))  # removed before the filter sees them
    return Sanitized(cleaned, max(counts["images"], remote), counts["styles"])


class _LinkFinder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.urls: list[str] = []
        self.text: list[str] = []
        self.hidden = 0  # inside <script>, <style>, <head>: not text

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style", "head", "title") and self.hidden:
            self.hidden -= 1

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("href", "src", "action", "background", "formaction") and value and \
                    len(self.urls) < MAX_URLS:
                value = value.strip()
                if not value.lower().startswith(("data:", "cid:", "#")):
                    self.urls.append(value[:2000])
        if tag in ("script", "style", "head", "title"):
            self.hidden += 1
        if tag in ("br", "p", "div", "tr", "li", "h1", "h2", "h3"):
            self.text.append("\n")

    def handle_data(self, data: str) -> None:
        if not self.hidden:
            self.text.append(data)


def _html_urls(html: str) -> list[str]:
    finder = _LinkFinder()
    try:
        finder.feed(html)
        finder.close()
    except Exception:
        pass
    return finder.urls + _URL.findall(" ".join(finder.text))[:MAX_URLS]


def html_to_text(html: str) -> str:
    """The words of an HTML body, for mail that has no text part."""
    finder = _LinkFinder()
    try:
        finder.feed(html)
        finder.close()
    except Exception:
        return ""
    text = "".join(finder.text)
    return re.sub(r"\n\s*\n+", "\n\n", text).strip()

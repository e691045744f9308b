"""What a held message says, made safe to look at.

Everything here comes from the sender and is treated as hostile: header
fields are decoded but returned as plain text (the templates escape them,
the command line passes them through :func:`gateway.terminal.printable`);
the text body is text; the HTML body is only ever shown after
:func:`sanitize_html` (nh3, the Ammonia sanitizer) *and* inside a sandboxed
frame under a Content-Security-Policy that forbids scripts and any load from
elsewhere; attachments are listed — name, declared type, the type their
first bytes show, size, SHA-256 — and offered for download, never rendered;
URLs are listed as text, not as links: each with the text a reader sees
for it and where it really goes, marked where the links check finds a
trick.

The message is read the way the milter's checks read it: the bounded MIME
parser (``[limits]``) and the checks' view of it
(:class:`gateway.checks.view.MessageView`: the decoded text parts, the HTML
without tags by the classifier's linear stripper, the file names), so a
message built to exhaust a parser costs no more here than in the checks,
and an analyst sees the text, URLs and names the checks saw. Only the first
``html_bytes`` of the HTML go to the sanitizer, trimmed by
:func:`gateway.web.boundhtml.bound_html`; the page says when either cut.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass, field

from gateway.checks.links import JudgedLink, judged_links
from gateway.checks.view import MessageView, TextPart
from gateway.config import LimitsSection
from gateway.mail import decoded_header
from gateway.mime import parse_bytes
from gateway.web.boundhtml import bound_html

# What is shown of a body, and how many of each list.
MAX_TEXT = 512 * 1024
HTML_BYTES = 256 * 1024
MAX_URLS = 500
MAX_PARTS = 200
MAX_HEADERS = 300
DEFAULT_LIMITS = LimitsSection()

# Lone surrogates: bytes that were not UTF-8, kept by the parser's
# surrogateescape (U+DC80-U+DCFF stand for the bytes 0x80-0xFF). No UTF-8
# page or pipe can carry them.
_SURROGATE = re.compile("[\ud800-\udfff]")


def displayable(text: str) -> str:
    """``text`` with each byte that was not UTF-8 shown as ``\\xNN`` (any
    other lone surrogate as ``\\uXXXX``), so that it can be encoded."""
    if not _SURROGATE.search(text):
        return text
    return _SURROGATE.sub(_escape_surrogate, text)


def _escape_surrogate(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"\\u{code:04x}"


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
    html: str | None = None       # the first html_bytes of the HTML body, as sent
    html_truncated: bool = False  # the HTML body is longer than that
    html_bytes: int = HTML_BYTES
    attachments: list[Attachment] = field(default_factory=list)
    urls: list[str] = field(default_factory=list)
    # Each URL with the text it shows and where it goes, marked by the links
    # check (gateway.checks.links): what the page lists side by side.
    links: list[JudgedLink] = field(default_factory=list)


def analyse(raw: bytes, limits: LimitsSection = DEFAULT_LIMITS,
            html_bytes: int = HTML_BYTES) -> Preview:
    """The message's headers, text, HTML, attachments and URLs; bounded
    work, linear in the size of the message, never raises on content."""
    message = parse_bytes(raw, limits)
    view = MessageView(message, limits)
    preview = Preview(html_bytes=html_bytes)
    fields = list(message.raw_items())  # an iterator: the table says how many are left
    for count, (name, value) in enumerate(fields):
        if count >= MAX_HEADERS:
            preview.headers.append(("…", f"{len(fields) - count} more fields"))
            break
        preview.headers.append((str(name), " ".join(
            decoded_header(value, limits.encoded_words).split())))
    texts = iter(view.texts)  # the inline text parts, in order, as the checks read them
    shown: dict[str, TextPart] = {}
    for index, part in enumerate(view.parts):
        text_part = next(texts, None) if part.is_text else None
        if text_part is not None and text_part.content_type not in shown:
            shown[text_part.content_type] = text_part
            continue
        if len(preview.attachments) < MAX_PARTS:
            data = part.payload()
            preview.attachments.append(Attachment(
                index=index, name=part.filename or f"part-{index + 1}",
                declared=part.content_type, detected=detect_type(data), size=len(data),
                sha256=hashlib.sha256(data).hexdigest()))
    plain, html = shown.get("text/plain"), shown.get("text/html")
    if html is not None:
        preview.html = html.raw[:html_bytes]
        preview.html_truncated = len(html.raw) > html_bytes
    body = plain.text if plain is not None else html.text.strip() if html is not None else ""
    preview.text_from_html = plain is None and bool(body)
    preview.text_truncated = len(body) > MAX_TEXT or view.text_truncated
    preview.text = body[:MAX_TEXT]
    # The links as the checks find them (gateway.urls: text, HTML attributes,
    # forms, meta refresh, CSS, srcset, attached pages, QR codes), each whole.
    preview.links = judged_links(view, [str(v) for v in message.get_all("From", [])]
                                 )[:MAX_URLS]
    preview.urls = list(dict.fromkeys(j.found.url for j in preview.links))
    return preview


def attachment_bytes(raw: bytes, index: int, limits: LimitsSection = DEFAULT_LIMITS
                     ) -> tuple[Attachment, bytes] | None:
    """One leaf part's decoded bytes, for download (``index`` as listed)."""
    parts = MessageView(parse_bytes(raw, limits), limits).parts
    if 0 <= index < len(parts):
        part = parts[index]
        data = part.payload()
        return Attachment(index, part.filename or f"part-{index + 1}",
                          part.content_type, detect_type(data), len(data),
                          hashlib.sha256(data).hexdigest()), data
    return None


# What a file name may not carry into the analyst's download folder: path
# separators, characters Windows refuses, controls (C0, DEL, C1), and the
# format characters that reorder or hide text ("invoice\u202egpj.exe" shows
# as "invoiceexe.jpg"; zero-width ones hide a second extension).
_UNSAFE_IN_NAME = re.compile(r'[/\\:*?"<>|\x00-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e'
                             r"\u2060-\u2069\ud800-\udfff\ufeff]")
_RESERVED_NAMES = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)),
                   *(f"lpt{i}" for i in range(10))}
MAX_NAME = 150


def download_name(name: str | None, index: int) -> str:
    """An attachment's original file name, safe to save: its last path
    component, unsafe characters as ``_``, no leading dots or trailing dots
    and spaces, not a device name, at most 150 characters with its extension
    kept; ``attachment-N`` when nothing is left."""
    text = unicodedata.normalize("NFC", name or "").replace("\\", "/").rsplit("/", 1)[-1]
    text = _UNSAFE_IN_NAME.sub("_", text).strip().lstrip(".").rstrip(". ")
    if len(text) > MAX_NAME:
        stem, dot, extension = text.rpartition(".")
        extension = extension[:20] if dot and stem else ""
        text = text[:MAX_NAME - len(extension) - 1].rstrip(". ") + \
            (f".{extension}" if extension else "")
    if not text.strip("_") or text.split(".")[0].lower() in _RESERVED_NAMES:
        text = f"attachment-{index + 1}" + (f"-{text}" if text.strip("_") else "")
    return text


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
_DATA_IMAGE = re.compile(r"(?i)^data:image/(png|gif|jpeg|webp);base64,[a-z0-9+/=\s]+$")


@dataclass(frozen=True)
class Sanitized:
    html: str
    blocked_images: int
    removed_styles: int
    dropped_tags: int = 0  # start tags left out to bound the parse (boundhtml)


def sanitize_html(html: str) -> Sanitized:
    """The HTML with everything that could run or load removed (nh3), after
    :func:`~gateway.web.boundhtml.bound_html` has bounded the parser's work."""
    import nh3

    bounded = bound_html(html)
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
        bounded.html, tags=_TAGS, attributes=_ATTRIBUTES, attribute_filter=attribute,
        clean_content_tags={"script", "style", "title", "noscript", "template", "iframe",
                            "object", "svg", "math"},
        url_schemes={"data"}, link_rel="noopener noreferrer nofollow", strip_comments=True,
        filter_style_properties=_STYLE_PROPERTIES)
    # nh3 drops a remote src before the filter sees it: bound_html counted them
    return Sanitized(cleaned, max(counts["images"], bounded.remote_images), counts["styles"],
                     bounded.dropped_tags)

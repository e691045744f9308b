"""HTML from mail, trimmed so that the sanitizer's parser does bounded work.

nh3's parser (html5ever) follows the HTML5 tree-building rules, and some of
them cost time in proportion to what is open so far: every new formatting
element is compared with the open ones ("Noah's Ark"), every block start
tag looks down the stack of open elements, every attribute is compared with
the tag's earlier ones. A mail built on that is quadratic: 256 KiB of
``<b x=N>`` took 76 s, 256 KiB of ``<div>`` 8 s, 2 MiB of distinct
attributes in one tag 54 s (measured when this was written).

:func:`bound_html` reads the markup once, the way an HTML5 tokenizer splits
it into tags (quoted attribute values, comments, raw-text elements such as
``<script>``), and drops what no reader needs and only an attacker sends:

- start tags past ``MAX_OPEN`` elements still open (Chromium likewise
  stops nesting at 512), and formatting elements (``<b>``, ``<font>``, ...)
  past ``MAX_FORMATTING`` still open;
- attributes past ``MAX_ATTRIBUTES`` in one tag;
- a tag cut off by the end of the text (the parser drops it anyway).

Everything else is passed on byte for byte. This is not the sanitizer: its
output still goes through nh3, which decides what is safe; a tokenizing
difference here can only change what is shown, never what is allowed. The
open-element count is an estimate (implied end tags are not modelled), so
the console also runs the sanitizer in a worker process under a deadline
(:mod:`gateway.web.render`). Linear in the length of the text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_OPEN = 1024
MAX_FORMATTING = 256
MAX_ATTRIBUTES = 32

VOID = frozenset({"area", "base", "br", "col", "embed", "hr", "img", "input", "keygen", "link",
                  "meta", "param", "source", "track", "wbr", "basefont", "bgsound", "frame"})
FORMATTING = frozenset({"a", "b", "big", "code", "em", "font", "i", "nobr", "s", "small",
                        "strike", "strong", "tt", "u"})
# Elements whose content the tokenizer reads as text up to their end tag.
RAW_TEXT = frozenset({"script", "style", "xmp", "iframe", "noembed", "noframes", "noscript",
                      "textarea", "title"})

_SPACE = "\t\n\f\r "
_TAG_NAME = re.compile(r"[^\t\n\f\r />]*")
_BEFORE_ATTRIBUTE = re.compile(r"[\t\n\f\r /]*")
_ATTRIBUTE_NAME = re.compile(r"[^\t\n\f\r />][^\t\n\f\r /=>]*")
_EQUALS = re.compile(r"[\t\n\f\r ]*=[\t\n\f\r ]*")
_UNQUOTED = re.compile(r"[^\t\n\f\r >]*")
_COMMENT_END = re.compile(r"--!?>")
_RAW_TEXT_END = {name: re.compile(rf"</{name}[\t\n\f\r />]", re.IGNORECASE)
                 for name in RAW_TEXT}


@dataclass(frozen=True)
class Bounded:
    html: str
    dropped_tags: int = 0       # start tags past the open-element limits
    cut_attributes: int = 0     # attributes past MAX_ATTRIBUTES
    remote_images: int = 0      # <img src> that is not a data: URL


@dataclass
class _Tag:
    name: str
    end: int                    # index just past the tag's '>' (or len(text): cut off)
    closing: bool
    complete: bool
    attributes: list[tuple[str, int, int]]  # (lower-cased name, start, end) in the text


def bound_html(text: str) -> Bounded:
    out: list[str] = []
    open_counts: dict[str, int] = {}
    depth = formatting = dropped = cut = remote = 0
    position = 0
    length = len(text)
    while position < length:
        less = text.find("<", position)
        if less < 0:
            out.append(text[position:])
            break
        out.append(text[position:less])
        following = text[less + 1:less + 2]
        if following == "!" or following == "?" or (following == "/" and not
                                                      text[less + 2:less + 3].isalpha()):
            position = _skip_markup_declaration(text, less)
            out.append(text[less:position])
            continue
        if not (following.isascii() and following.isalpha()) and following != "/":
            out.append("<")
            position = less + 1
            continue
        tag = _read_tag(text, less)
        if not tag.complete:  # end of text inside a tag: the parser drops it
            break
        position = tag.end
        if tag.closing:
            if open_counts.get(tag.name, 0) > 0:
                open_counts[tag.name] -= 1
                depth -= 1
                formatting -= tag.name in FORMATTING
            # an end tag's attributes mean nothing, but the parser reads them all
            cut += max(0, len(tag.attributes) - MAX_ATTRIBUTES)
            out.append(text[less:tag.end] if len(tag.attributes) <= MAX_ATTRIBUTES
                       else f"</{tag.name}>")
            continue
        if tag.name not in VOID:
            if depth >= MAX_OPEN or (tag.name in FORMATTING and formatting >= MAX_FORMATTING):
                dropped += 1
                continue
            open_counts[tag.name] = open_counts.get(tag.name, 0) + 1
            depth += 1
            formatting += tag.name in FORMATTING
        if tag.name == "img":
            remote += _remote_source(text, tag)
        if len(tag.attributes) > MAX_ATTRIBUTES:
            cut += len(tag.attributes) - MAX_ATTRIBUTES
            kept = " ".join(text[start:end] for _, start, end in
                            tag.attributes[:MAX_ATTRIBUTES])
            out.append(f"<{tag.name} {kept}>")
        else:
            out.append(text[less:tag.end])
        if tag.name in RAW_TEXT:  # its content is text up to its own end tag
            found = _RAW_TEXT_END[tag.name].search(text, position)
            stop = found.start() if found else length
            out.append(text[position:stop])
            position = stop
        elif tag.name == "plaintext":
            out.append(text[position:])
            break
    return Bounded("".join(out), dropped, cut, remote)


def _skip_markup_declaration(text: str, less: int) -> int:
    """The end of a comment, doctype, ``<?...>`` or ``</ ...>`` starting at ``less``."""
    if text.startswith("<!--", less):
        if text.startswith(("<!-->", "<!--->"), less):
            return text.index(">", less) + 1
        found = _COMMENT_END.search(text, less + 4)
        return found.end() if found else len(text)
    close = text.find(">", less + 1)
    return close + 1 if close >= 0 else len(text)


def _read_tag(text: str, less: int) -> _Tag:
    closing = text.startswith("</", less)
    start = less + (2 if closing else 1)
    name_end = _TAG_NAME.match(text, start).end()  # type: ignore[union-attr]
    name = text[start:name_end].lower()
    attributes: list[tuple[str, int, int]] = []
    position = name_end
    length = len(text)
    while True:
        position = _BEFORE_ATTRIBUTE.match(text, position).end()  # type: ignore[union-attr]
        if position >= length:
            return _Tag(name, length, closing, False, attributes)
        if text[position] == ">":
            return _Tag(name, position + 1, closing, True, attributes)
        found = _ATTRIBUTE_NAME.match(text, position)
        assert found is not None  # the character here is none of space, '/', '>'
        attribute_start, position = position, found.end()
        equals = _EQUALS.match(text, position)
        if equals is not None:
            position = equals.end()
            quote = text[position:position + 1]
            if quote in ('"', "'"):
                close = text.find(quote, position + 1)
                if close < 0:
                    return _Tag(name, length, closing, False, attributes)
                position = close + 1
            else:
                position = _UNQUOTED.match(text, position).end()  # type: ignore[union-attr]
        attributes.append((found.group().lower(), attribute_start, position))


def _remote_source(text: str, tag: _Tag) -> int:
    for name, start, end in tag.attributes:
        if name == "src":
            value = text[start:end].partition("=")[2].strip(_SPACE + "\"'").lower()
            return 0 if value.startswith("data:") else 1
    return 0

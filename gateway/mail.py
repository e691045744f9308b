"""Mail text helpers shared by the checks, the classifier and the quarantine.

Header fields, RFC 2047 encoded words, addresses and domains: every input
here is written by a sender, so every function is linear in its input or
capped, and none of them raises on content. Python's own address parser
(``email.utils.getaddresses``) recurses on nested comments and groups and
raises ``RecursionError`` on a few kilobytes of ``((((`` or ``::::``; it is
only called here after a cheap check that it cannot, and checks that decide
(DMARC) use :func:`parse_mailboxes`, an iterative RFC 5322 parser of our own.
"""

from __future__ import annotations

import codecs
import re
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from email.header import decode_header
from email.utils import getaddresses, parseaddr
from functools import lru_cache
from typing import Any

import idna

# Defaults of the [limits] settings that the helpers here apply.
DEFAULT_ENCODED_WORDS = 200
DEFAULT_COMMENT_DEPTH = 10
# Python's address parser recurses once per group (':') and per comment
# level; beyond this many, the iterative parser is used instead.
_STDLIB_SAFE_NESTING = 50
_ENCODED_WORD = re.compile(r"=\?[^?\s]*\?[bBqQ]\?[^?\s]*\?=")


# -- header fields -------------------------------------------------------------


@dataclass(frozen=True)
class HeaderField:
    name: str  # as sent, without whitespace before the colon
    value: str  # compat32-style: first line stripped on the left, folding kept


@dataclass(frozen=True)
class HeaderBlock:
    fields: tuple[HeaderField, ...]
    too_many: int = 0  # fields beyond the limit (dropped)
    too_long: tuple[tuple[str, int], ...] = ()  # (name, length) of truncated fields


_FIELD_NAME = re.compile(r"^[\x21-\x39\x3b-\x7e]+$")
# Fields kept whole however long: the author a reader's MUA shows may follow
# any length of display name, and a cut that drops it leaves DMARC without an
# author. Their readers (parse_mailboxes, author_domains) are linear.
UNCUT_FIELDS = frozenset({"from"})


def parse_header_block(lines: Iterable[bytes], max_fields: int, max_length: int,
                       uncut: frozenset[str] = UNCUT_FIELDS) -> HeaderBlock:
    """The header fields of a message from its raw lines, up to the blank line.

    Like Postfix and unlike Python's ``compat32`` parser, a field name may be
    followed by white space before the colon (RFC 5322 obs-syntax:
    ``From : x``): MUAs show such a field, so the checks must see it, on the
    first line too (where it is not an mbox ``From_`` separator). A line
    that is neither a field nor a continuation ends the header block, as in
    Postfix. At most ``max_fields`` fields are kept, each cut to
    ``max_length`` bytes except those named in ``uncut`` (lower case).
    """
    fields: list[HeaderField] = []
    too_long: list[tuple[str, int]] = []
    dropped = 0
    name: str | None = None
    parts: list[bytes] = []
    size = 0
    whole = False

    def finish() -> None:
        nonlocal dropped
        if name is None:
            return
        if len(fields) >= max_fields:
            dropped += 1
            return
        raw = b"".join(parts)
        if size > max_length and not whole:
            too_long.append((name, size))
            raw = raw[:max_length]
        value = raw.decode("utf-8", "replace").lstrip(" \t").rstrip("\r\n")
        fields.append(HeaderField(name, value))

    for number, line in enumerate(lines):
        if line in (b"\r\n", b"\n", b""):
            break
        if line[:1] in (b" ", b"\t"):
            if name is not None and (size <= max_length or whole):
                parts.append(line)
            size += len(line)
            continue
        if number == 0 and line.startswith(b"From ") and \
                not line[5:].lstrip(b" \t").startswith(b":"):  # an mbox From_ line
            continue
        head, colon, rest = line.partition(b":")
        label = head.rstrip(b" \t").decode("ascii", "replace")
        if not colon or not _FIELD_NAME.match(label):
            break  # the body starts here
        finish()
        name, parts, size = label, [rest], len(rest)
        whole = label.lower() in uncut
    finish()
    return HeaderBlock(tuple(fields), dropped, tuple(too_long))


# -- RFC 2047 ------------------------------------------------------------------


def decoded_header(value: object, max_words: int = DEFAULT_ENCODED_WORDS) -> str:
    """An RFC 2047 encoded header as text; never raises.

    Only the first ``max_words`` encoded words are decoded (Python's decoder
    slows down sharply on tens of thousands); the rest is kept as sent.
    """
    text = str(value)
    if "=?" not in text:
        return text
    tail = ""
    if max_words >= 0:
        for count, match in enumerate(_ENCODED_WORD.finditer(text), 1):
            if count > max_words:
                text, tail = text[: match.start()], text[match.start():]
                break
    try:
        decoded = "".join(
            decode_bytes(chunk, charset) if isinstance(chunk, bytes) else chunk
            for chunk, charset in decode_header(text)
        )
    except Exception:
        decoded = text
    return decoded + tail


def count_encoded_words(text: str) -> int:
    return sum(1 for _ in _ENCODED_WORD.finditer(text))


def decode_bytes(data: bytes, charset: str | None) -> str:
    if charset:
        try:
            codecs.lookup(charset)
            return data.decode(charset, errors="replace")
        except (LookupError, UnicodeError, ValueError):
            pass
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


# -- the stdlib address parser, where it is safe ---------------------------------


def _stdlib_safe(text: str) -> bool:
    """Whether Python's address parser cannot recurse too deep on ``text``."""
    return (text.count(":") < _STDLIB_SAFE_NESTING
            and text.count("(") < _STDLIB_SAFE_NESTING)


def safe_getaddresses(values: list[str]) -> list[tuple[str, str]]:
    """``email.utils.getaddresses`` where it is safe, else the iterative parser
    (same shape of answer; the names may differ on such input)."""
    if all(_stdlib_safe(v) for v in values):
        try:
            return getaddresses(values)
        except (RecursionError, ValueError, IndexError):
            pass
    found: list[tuple[str, str]] = []
    for value in values:
        found.extend((m.display, m.address) for m in parse_mailboxes(value).mailboxes)
    return found


def safe_parseaddr(value: str) -> tuple[str, str]:
    """``email.utils.parseaddr``, bounded like :func:`safe_getaddresses`."""
    if _stdlib_safe(value):
        try:
            return parseaddr(value)
        except (RecursionError, ValueError, IndexError):
            pass
    mailboxes = parse_mailboxes(value).mailboxes
    return (mailboxes[0].display, mailboxes[0].address) if mailboxes else ("", "")


# -- addresses -------------------------------------------------------------------


@dataclass(frozen=True)
class Mailbox:
    display: str
    address: str  # local@domain as written, or "" when there is no addr-spec

    @property
    def domain(self) -> str:
        """The domain, lower-cased, without a trailing dot ("" if none)."""
        if "@" not in self.address:
            return ""
        return self.address.rpartition("@")[2].strip().strip("[]").rstrip(".").lower()


@dataclass(frozen=True)
class MailboxList:
    mailboxes: tuple[Mailbox, ...]
    problems: tuple[str, ...] = ()  # why the list is not a clean RFC 5322 one
    # Domains written where only a display name belongs (``a@x.test <b@y.test>``
    # without quotes): a reader's MUA may show them as the author.
    phrase_domains: tuple[str, ...] = ()


_SPECIALS = '()<>[]:;@\\,."'


def _tokens(text: str, max_depth: int, gaps: bool = False) -> Iterator[tuple[str, str]]:
    """(kind, text) tokens: atom, quoted, literal, special, and comment (its
    text, without the outer parentheses).

    Iterative; comments nested deeper than ``max_depth`` are still read
    whole but reported as a ("toodeep", "") token. Once a quote is found not
    to close, no later one can (each later quote was an escaped character
    of that search, whose scan from there on is the same), so none is
    searched for again: the tokenizer stays linear. With ``gaps``, white
    space is reported as ("gap", "") tokens.
    """
    index, length = 0, len(text)
    quotes_close = True
    while index < length:
        char = text[index]
        if char in " \t\r\n":
            index += 1
            if gaps:
                while index < length and text[index] in " \t\r\n":
                    index += 1
                yield "gap", ""
        elif char == "(":
            start = index
            depth, deepest = 0, 0
            while index < length:
                c = text[index]
                if c == "\\":
                    index += 1
                elif c == "(":
                    depth += 1
                    deepest = max(deepest, depth)
                elif c == ")":
                    depth -= 1
                    if depth == 0:
                        index += 1
                        break
                index += 1
            if deepest > max_depth:
                yield "toodeep", ""
            if depth > 0:
                yield "unclosed", "("
            yield "comment", text[start + 1:index - (0 if depth else 1)]
        elif char == '"':
            end = _closing_quote(text, index + 1) if quotes_close else -1
            if end < 0:  # read on as if the quote were not there, as a MUA may
                quotes_close = False
                yield "unclosed", '"'
                index += 1
                continue
            yield "quoted", re.sub(r"\\(.)", r"\1", text[index + 1:end], flags=re.DOTALL)
            index = end + 1
        elif char == "[":
            end = text.find("]", index)
            if end < 0:
                yield "unclosed", "["
                yield "literal", text[index:]
                return
            yield "literal", text[index:end + 1]
            index = end + 1
        elif char in _SPECIALS:
            yield "special", char
            index += 1
        else:
            start = index
            while index < length and text[index] not in _SPECIALS and \
                    text[index] not in " \t\r\n":
                index += 1
            yield "atom", text[start:index]


def parse_mailboxes(value: str, max_comment_depth: int = DEFAULT_COMMENT_DEPTH) -> MailboxList:
    """An address list (From, To, Cc, ...) as mailboxes, never raising.

    Groups are flattened into their members; comments are skipped. What is
    not exactly an RFC 5322 address list (RFC 6532 UTF-8 allowed) is kept as
    far as it can be read and listed in ``problems``: two addresses without
    a comma, text after ``>``, an ``@`` in a display name, control or
    invisible characters, anything unclosed. A caller decides how much to
    trust such a list; for the author, any problem means a mail program may
    show another address than this reading (see :func:`author_domains`).
    """
    problems: list[str] = []
    mailboxes: list[Mailbox] = []
    phrase_domains: list[str] = []
    current: list[tuple[str, str]] = []
    spaced: list[tuple[str, str]] = []  # the same, with ("gap", "") where space or comments were
    in_group = group_ended = False
    comment = ""  # the last comment of the current item

    def flush() -> None:
        nonlocal comment
        if current:
            found, phrase_domain, problem = _mailbox(current)
            if len(found) == 1 and not found[0].display and comment:
                # RFC 5322 3.4's legacy "addr (Name)": mail programs show the
                # comment as the name.
                found = [Mailbox(" ".join(comment.split()), found[0].address)]
            mailboxes.extend(found)
            if phrase_domain:
                phrase_domains.append(phrase_domain)
            problem = problem or _grammar_problem(spaced)
            if problem:
                problems.append(problem)
            current.clear()
        spaced.clear()
        comment = ""

    angle = False
    for kind, text in _tokens(value, max_comment_depth, gaps=True):
        if kind in ("gap", "comment"):
            spaced.append(("gap", ""))
            if kind == "comment":
                comment = text
            continue
        if kind == "toodeep":
            problems.append(f"comments nested deeper than {max_comment_depth}")
            continue
        if kind == "unclosed":
            problems.append(f"unclosed {text}")
            continue
        if kind == "special" and not angle:
            if text == ",":
                flush()
                group_ended = False
                continue
            if text == ":":
                if ("special", "@") in current:  # not a group name: an address
                    problems.append("':' after an address")
                    flush()
                else:  # a group's name ends: its members follow
                    if in_group or not current or not _is_phrase(current):
                        problems.append("not a group name before ':'")
                    in_group = True
                    current.clear()
                    spaced.clear()
                continue
            if text == ";":
                flush()
                if not in_group:
                    problems.append("';' outside a group")
                in_group, group_ended = False, True
                continue
        if group_ended:  # RFC 5322 3.4: a comma must follow a group
            problems.append("no comma after a group")
            group_ended = False
        if kind == "special" and text == "<":
            angle = True
        elif kind == "special" and text == ">":
            angle = False
        current.append((kind, text))
        spaced.append((kind, text))
    flush()
    if in_group:
        problems.append("group without its closing ';'")
    return MailboxList(tuple(mailboxes), tuple(dict.fromkeys(problems)),
                       tuple(dict.fromkeys(phrase_domains)))


def _mailbox(tokens: list[tuple[str, str]]) -> tuple[list[Mailbox], str, str]:
    """The mailbox(es) in one comma-separated item: (mailboxes, a domain seen
    in the display name, problem). Two bare addresses without a comma
    between them are read as two, as a mail program shows them."""
    opens = [i for i, t in enumerate(tokens) if t == ("special", "<")]
    if opens:
        start = opens[-1]
        end = next((i for i in range(start + 1, len(tokens))
                    if tokens[i] == ("special", ">")), len(tokens))
        phrase, inner = tokens[:start], tokens[start + 1:end]
        # A source route (<@a,@b:x@y>) keeps only what follows its colon.
        if ("special", ":") in inner:
            inner = inner[len(inner) - inner[::-1].index(("special", ":")):]
        address = _join(inner)
        problem = "" if end < len(tokens) else "unclosed <"
        if len(opens) > 1:
            problem = "more than one <"
        phrase_domain = ""
        if ("special", "@") in phrase:
            phrase_domain = _domain_after_at(phrase)
            problem = problem or "unquoted @ in a display name"
        display = " ".join(text for kind, text in phrase if kind in ("atom", "quoted")
                           or text == ".")
        if "@" not in address:
            return ([Mailbox(display, address)] if address else [], phrase_domain,
                    problem or "no addr-spec in <>")
        return [Mailbox(display, address)], phrase_domain, problem
    address = _join(tokens)
    if not address:
        return [], "", ""
    if "@" not in address:
        return [], "", f"not an address: {address[:40]!r}"
    if sum(1 for token in tokens if token == ("special", "@")) > 1:
        return [Mailbox("", a) for a in _bare_addresses(tokens)], "", ""
    if any(kind == "quoted" for kind, _ in tokens[_last_at(tokens):]):
        return [Mailbox("", address)], "", "quoted text in a domain"
    return [Mailbox("", address)], "", ""


def _bare_addresses(tokens: list[tuple[str, str]]) -> list[str]:
    """Each ``local@domain`` in tokens that hold several without commas
    (``ceo@bank.test x@evil.test``): the dotted words just before each "@"
    and the dotted atoms (or a literal) just after it. Linear: a local part
    never reaches back into the previous address."""
    found: list[str] = []
    floor = 0  # tokens before this belong to an earlier address
    for at in [i for i, token in enumerate(tokens) if token == ("special", "@")]:
        if at < floor:
            continue
        start, want_word = at, True
        while start > floor:
            kind, text = tokens[start - 1]
            if want_word and kind in ("atom", "quoted"):
                want_word = False
            elif not want_word and (kind, text) == ("special", "."):
                want_word = True
            else:
                break
            start -= 1
        end = at + 1
        if end < len(tokens) and tokens[end][0] == "literal":
            end += 1
        else:
            want_atom = True
            while end < len(tokens):
                kind, text = tokens[end]
                if want_atom and kind == "atom":
                    want_atom = False
                elif not want_atom and (kind, text) == ("special", "."):
                    want_atom = True
                else:
                    break
                end += 1
        if start < at:
            found.append(_join(tokens[start:end]))
        floor = end
    return found


# -- the RFC 5322 grammar, exactly -------------------------------------------------

# Characters no mail program shows the same way (or at all): controls, and
# Unicode's spaces, line and paragraph separators and invisible formatting.
_UNSHOWABLE = frozenset({"Cc", "Cf", "Zs", "Zl", "Zp"})


def _clean_atom(text: str) -> bool:
    """atext (RFC 5322 3.2.3, with RFC 6532's UTF-8): what the tokenizer
    made an atom, minus what displays differently or not at all."""
    if text.isascii():
        return text.isprintable()
    return not any(unicodedata.category(char) in _UNSHOWABLE for char in text)


def _word(token: tuple[str, str]) -> bool:
    kind, text = token
    return (kind == "atom" and _clean_atom(text)) or kind == "quoted"


def _dotted(tokens: list[tuple[str, str]]) -> bool:
    """atom *("." atom): a domain (dot-atom, or obs-domain's white space
    around the dots)."""
    if len(tokens) % 2 == 0:
        return False
    for index, (kind, text) in enumerate(tokens):
        if index % 2:
            if (kind, text) != ("special", "."):
                return False
        elif kind != "atom" or not _clean_atom(text):
            return False
    return True


def _local_part(tokens: list[tuple[str, str]]) -> bool:
    """Words and dots, never two words in a row. Stray dots (``a.@``,
    ``a..b@``, written by some mobile carriers) are let through: they do not
    change which domain a reader sees."""
    previous_word = False
    for token in tokens:
        if token == ("special", "."):
            previous_word = False
        elif _word(token) and not previous_word:
            previous_word = True
        else:
            return False
    return any(_word(token) for token in tokens)


def _is_addr_spec(tokens: list[tuple[str, str]]) -> bool:
    """local-part "@" domain, nothing more (RFC 5322 3.4.1). Not obs-syntax's
    white space or comments inside it (``ceo@pay pal.test``: Python's two
    parsers read ``pay`` and ``paypal.test``), nor an encoded word, which
    RFC 2047 5 keeps out of addresses and some readers decode anyway."""
    if any(kind == "gap" or "=?" in text for kind, text in tokens):
        return False
    ats = [i for i, token in enumerate(tokens) if token == ("special", "@")]
    if len(ats) != 1:
        return False
    local, domain = tokens[:ats[0]], tokens[ats[0] + 1:]
    literal = len(domain) == 1 and domain[0][0] == "literal" and \
        re.fullmatch(r"\[[^\[\]\\]*\]", domain[0][1]) is not None
    return _local_part(local) and (literal or _dotted(domain))


def _shown(tokens: list[tuple[str, str]], limit: int = 80) -> str:
    """The start of tokens as the sender wrote them, a space where it had
    white space or a comment, quoted for a message."""
    out: list[str] = []
    size = 0
    for kind, text in tokens:
        if kind == "gap":
            if out and out[-1] != " ":
                out.append(" ")
                size += 1
        else:
            out.append(f'"{text}"' if kind == "quoted" else text)
            size += len(out[-1])
        if size > limit:
            break
    text = "".join(out).strip()
    return repr(text if len(text) <= limit else text[:limit - 1] + "…")


def _is_phrase(tokens: list[tuple[str, str]]) -> bool:
    """phrase: words, and dots after the first (obs-phrase)."""
    return bool(tokens) and _word(tokens[0]) and \
        all(_word(token) or token == ("special", ".") for token in tokens)


def _grammar_problem(spaced: list[tuple[str, str]]) -> str:
    """Why one mailbox's tokens (with its gaps) are not exactly
    ``[display-name] angle-addr`` or ``addr-spec``, or ""."""
    tokens = _trimmed(spaced)
    words = [token for token in tokens if token[0] != "gap"]
    if ("special", "<") in words:
        start = tokens.index(("special", "<"))
        if tokens[-1] != ("special", ">") or ("special", ">") in tokens[start:-1]:
            return f"text after '>' in {_shown(tokens)}"
        phrase = [token for token in tokens[:start] if token[0] != "gap"]
        if phrase and not _is_phrase(phrase):
            return f"not a display name before '<' in {_shown(tokens)}"
        inner = _trimmed(tokens[start + 1:-1])
        if ("special", ":") in inner:
            # obs-route (<@a.test,@b.test:x@c.test>): obsolete since RFC 2822,
            # and readers differ (compat32 shows "@b.test" as an address).
            return f"a source route in {_shown(tokens)}"
        if not _is_addr_spec(inner):
            return f"not one address inside <> in {_shown(tokens)}"
        return ""
    if ("special", ">") in words:
        return f"'>' without '<' in {_shown(tokens)}"
    if not _is_addr_spec(tokens):
        return f"not one address: {_shown(tokens)}"
    return ""


def _trimmed(tokens: list[tuple[str, str]]) -> list[tuple[str, str]]:
    start, end = 0, len(tokens)
    while start < end and tokens[start][0] == "gap":
        start += 1
    while end > start and tokens[end - 1][0] == "gap":
        end -= 1
    return tokens[start:end]


def _closing_quote(text: str, index: int) -> int:
    """Index of the quote closing a quoted string that starts at ``index``."""
    length = len(text)
    while index < length:
        char = text[index]
        if char == "\\":
            index += 2
        elif char == '"':
            return index
        else:
            index += 1
    return -1


def _join(tokens: list[tuple[str, str]]) -> str:
    out = []
    for kind, text in tokens:
        if kind == "quoted":
            out.append('"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"')
        else:
            out.append(text)
    return "".join(out)


def _last_at(tokens: list[tuple[str, str]]) -> int:
    for index in range(len(tokens) - 1, -1, -1):
        if tokens[index] == ("special", "@"):
            return index
    return len(tokens)


def _domain_after_at(tokens: list[tuple[str, str]]) -> str:
    at = _last_at(tokens)
    domain: list[str] = []
    for kind, text in tokens[at + 1:]:
        if kind in ("atom", "literal") or text == ".":
            domain.append(text)
        else:
            break
    return "".join(domain).strip("[]").rstrip(".").lower()


# -- the author ----------------------------------------------------------------------


@dataclass(frozen=True)
class Authors:
    """Who a message says it is from: the one reading of its From fields that
    every check, the classifier and the logs use, and every domain a reader
    may take for the author's (RFC 7489 6.6.1 evaluates each and applies the
    strictest)."""

    domains: tuple[str, ...]  # lower case, as written (convert with ascii_domain)
    fields: int  # number of From fields
    mailboxes: tuple[Mailbox, ...] = ()  # every mailbox of every From field, in order
    # Why a From field is not exactly an RFC 5322 mailbox list (or group):
    # then a mail program may show another author than ``mailboxes``.
    problems: tuple[str, ...] = ()

    @property
    def ambiguous(self) -> bool:
        return bool(self.problems)

    @property
    def first(self) -> Mailbox | None:
        """The author a one-author reader (the classifier, a log line) uses."""
        return self.mailboxes[0] if self.mailboxes else None


def author_domains(from_values: list[str],
                   max_comment_depth: int = DEFAULT_COMMENT_DEPTH) -> Authors:
    """The authors of a message from its From field values.

    Every mailbox of every From field counts, and so does a domain written
    as ``user@domain`` in an unquoted display name, because a reader's MUA
    may show it as the sender. A field that is not exactly a mailbox list
    adds every domain a mail program could read from it
    (:func:`candidate_domains`).
    """
    domains: list[str] = []
    problems: list[str] = []
    mailboxes: list[Mailbox] = []
    for value in from_values:
        parsed = parse_mailboxes(value, max_comment_depth)
        mailboxes.extend(parsed.mailboxes)
        domains.extend(m.domain for m in parsed.mailboxes if m.domain)
        domains.extend(parsed.phrase_domains)
        found = list(parsed.problems)
        if not parsed.mailboxes and not found and ":" not in value:  # not an empty group
            found.append(f"no address in {value.strip()[:60]!r}")
        if found:
            problems.extend(found)
            domains.extend(candidate_domains(value))
    return Authors(tuple(dict.fromkeys(domains)), len(from_values), tuple(mailboxes),
                   tuple(dict.fromkeys(problems)))


def first_author(from_values: Iterable[object], max_words: int = DEFAULT_ENCODED_WORDS,
                 max_comment_depth: int = DEFAULT_COMMENT_DEPTH) -> Mailbox:
    """The first author of the one reading (:func:`author_domains`), its
    display name decoded (RFC 2047), for readers of a parsed ``email``
    message that want one author (the classifier); an empty Mailbox if
    there is none."""
    return shown_first_author(
        author_domains([str(value) for value in from_values], max_comment_depth), max_words)


def shown_first_author(authors: Authors, max_words: int = DEFAULT_ENCODED_WORDS) -> Mailbox:
    """:func:`first_author` of a reading already made (``Message.authors``)."""
    first = authors.first
    if first is None:
        return Mailbox("", "")
    return Mailbox(decoded_header(first.display, max_words), first.address)


# After an "@" anywhere (raw, quoted, in a comment or an encoded word), past
# any white space and (one level of) comments: a domain as a reader that
# stops at the next white space or comment reads it, and as one that joins
# across them reads it. Each alternative starts with a character the others
# cannot, and a comment ends at the next parenthesis, so both are linear.
_COMMENT = r"\((?:[^()\\]|\\.)*\)"
_DOMAIN_CHAR = r"[^\s@<>()\[\]\\,;:\"]"
_AT_RUN = re.compile(rf"@(?:\s|{_COMMENT})*(\[[^\[\]\\]*\]|{_DOMAIN_CHAR}+)")
_AT_JOINED = re.compile(rf"@((?:\s|{_COMMENT}|{_DOMAIN_CHAR})+)")
_GAP = re.compile(rf"\s|{_COMMENT}")


def candidate_domains(value: str) -> list[str]:
    """Every domain a mail program could show as the author's in a field
    that is not exactly a mailbox list, in the order written.

    Readers disagree on such a field in three ways, and each is covered:
    after an ``@``, one stops at white space or a comment (Python's
    ``policy.default``: ``ceo@pay pal.test`` is ``pay``), another joins
    what follows across them (``compat32``: ``paypal.test``); and some read
    an ``@`` inside quotes, a comment or an RFC 2047 encoded word as an
    address. Regular expressions without backtracking: linear in the field.
    """
    texts = [value]
    if "=?" in value:
        texts.append(decoded_header(value))
    found: list[str] = []
    for text in texts:
        found.extend(match.group(1) for match in _AT_RUN.finditer(text))
        found.extend(_GAP.sub("", match.group(1)) for match in _AT_JOINED.finditer(text))
    domains = (name.strip("[]").rstrip(".").lower() for name in found)
    return list(dict.fromkeys(d for d in domains if d))


# -- domains ---------------------------------------------------------------------


class DomainError(ValueError):
    """A name that cannot be a DNS domain (RFC 1035 / IDNA)."""


def ascii_domain(domain: str) -> str:
    """The domain in A-labels (``bänk.test`` -> ``xn--bnk-qla.test``), lower
    case, no trailing dot; raises DomainError when it cannot be a domain name
    (empty labels, a label over 63 octets, invalid IDNA)."""
    name = domain.strip().rstrip(".").lower()
    if not name:
        raise DomainError("empty domain")
    if not name.isascii():
        try:
            name = idna.encode(name, uts46=True, transitional=False).decode("ascii")
        except (idna.IDNAError, UnicodeError) as exc:
            raise DomainError(f"{domain!r} is not a valid internationalised domain: {exc}") \
                from None
    labels = name.split(".")
    if len(name) > 253 or any(not label or len(label) > 63 for label in labels):
        raise DomainError(f"{domain!r} is not a valid domain name")
    return name


@lru_cache(maxsize=8192)  # as gateway.lookalike.HOST_CACHE: the hosts mail names again
def registrable_domain(host: str) -> str:
    """example.co.uk for mail.example.co.uk, via the public suffix list."""
    psl = _public_suffix_list()
    return psl.privatesuffix(host) or host


def has_public_suffix(host: str) -> bool:
    """Whether ``host`` ends in a public suffix that exists (a real top-level
    domain): "John.Smith" or "e.g" is not a host name."""
    return _public_suffix_list().privatesuffix(host, accept_unknown=False) is not None


def is_public_suffix(domain: str) -> bool:
    """Whether a domain (A-labels) is a public suffix, under which anyone may
    register names: com, co.uk, github.io, and an unlisted top-level domain
    such as test (the list's default rule)."""
    return bool(_public_suffix_list().is_public(domain))


@lru_cache(maxsize=1)
def _public_suffix_list() -> Any:
    from publicsuffixlist import PublicSuffixList

    return PublicSuffixList()

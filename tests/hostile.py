"""Hostile messages: what an attacker sends to switch a filter off.

Two kinds, both deterministic:

- **builders** (:data:`BUILDERS`): one function per known shape: header
  fields long, folded thousands of times, by the ten thousand, in
  obs-syntax, with NULs and invalid UTF-8, tens of thousands of encoded
  words; addresses nested a thousand comments deep, ``::::``, ``<<<<``,
  unclosed, grouped, routed, IDN; MIME trees a thousand levels deep or ten
  thousand parts wide, boundaries that are prefixes of each other, missing
  end boundaries, digests, delivery-status blocks, Content-Type fields with
  thousands of parameters; broken base64, quoted-printable, uuencode,
  unknown charsets and UTF-7; HTML that never closes; DKIM and ARC headers
  long, folded and many, and relaxed canonicalization over 100 KB of
  spaces. Each builder says which limit symbols the default ``[limits]``
  must report for it, and whether a reader still sees the spoofed author
  (``From: ceo@good.test``, whose domain publishes DMARC p=reject in
  tests/authlab.py).
- **generated** messages (:func:`generated_message`): random combinations
  of the same pieces, drawn through a :class:`Chooser` so that the same
  grammar serves hypothesis (:func:`messages`, shrinkable) and the fuzz
  benchmark (:class:`RandomChooser`, seeded).

Used by tests/test_hostile.py and tests/bench/fuzz.py.
"""

from __future__ import annotations

import base64
import random
import struct
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

T = TypeVar("T")

SPOOFED = "ceo@good.test"
CRLF = "\r\n"

# Every symbol that says a parser stopped at a limit (checks limits,
# headers and bayes).
LIMIT_SYMBOLS = frozenset({
    "MIME_TOO_DEEP", "MIME_TOO_MANY_PARTS", "MIME_TOO_MANY_PARAMETERS", "HEADERS_TOO_MANY",
    "HEADER_TOO_LONG", "TOO_MANY_ENCODED_WORDS", "ADDRESS_UNPARSEABLE", "URLS_TOO_MANY",
    "TEXT_TRUNCATED", "QR_SCAN_LIMIT",
})

BODY = "Please wire the 48,000 EUR payment to the new account today.\r\nThanks\r\n"


def head(from_: str | bytes = SPOOFED, subject: str | bytes = "Wire transfer today",
         tag: str = "hostile", extra: str | bytes = b"") -> bytes:
    """A header block a real MUA would write, with ``extra`` fields after it
    (without the blank line that ends it)."""
    def raw(value: str | bytes) -> bytes:
        return value if isinstance(value, bytes) else value.encode("utf-8")

    return (b"From: " + raw(from_) + b"\r\nTo: bob@example.net\r\nSubject: " + raw(subject)
            + b"\r\nDate: Tue, 24 Nov 2026 09:00:00 +0000\r\n"
            + f"Message-ID: <{tag}@good.test>\r\n".encode() + raw(extra))


def message(body: str | bytes = BODY, from_: str | bytes = SPOOFED,
            subject: str | bytes = "Wire transfer today", tag: str = "hostile",
            extra: str | bytes = b"") -> bytes:
    payload = body if isinstance(body, bytes) else body.encode("utf-8")
    return head(from_, subject, tag, extra) + b"\r\n" + payload


def mime_message(content_type: str, body: str | bytes, tag: str = "hostile",
                 extra: str = "") -> bytes:
    return message(body, tag=tag,
                   extra=f"MIME-Version: 1.0\r\nContent-Type: {content_type}\r\n{extra}")


@dataclass(frozen=True)
class Hostile:
    name: str
    build: Callable[[], bytes]
    # Limit symbols the default [limits] must report, and no others.
    expect: frozenset[str]
    # Does a reader's MUA still show ceo@good.test as the author? Then a
    # spoofed copy must never be accepted.
    spoofs: bool
    about: str
    # Takes seconds through every check (tests/test_hostile.py marks it slow).
    slow: bool = False


BUILDERS: dict[str, Hostile] = {}


def hostile(*expect: str, spoofs: bool = True, slow: bool = False
            ) -> Callable[[Callable[[], bytes]], Callable[[], bytes]]:
    def register(build: Callable[[], bytes]) -> Callable[[], bytes]:
        unknown = set(expect) - LIMIT_SYMBOLS
        assert not unknown, f"{build.__name__}: not limit symbols: {unknown}"
        about = (build.__doc__ or build.__name__).strip().splitlines()[0]
        BUILDERS[build.__name__] = Hostile(build.__name__, build, frozenset(expect), spoofs,
                                           about, slow)
        return build

    return register


# -- header fields ----------------------------------------------------------------


@hostile("HEADER_TOO_LONG")
def header_long_line(size: int = 200_000) -> bytes:
    """a Subject of one 200 KB line"""
    return message(subject="A" * size, tag="header-long-line")


@hostile("HEADER_TOO_LONG")
def header_folded(folds: int = 20_000) -> bytes:
    """a Subject folded 20,000 times"""
    return message(subject="urgent" + "\r\n w" * folds, tag="header-folded")


@hostile("HEADERS_TOO_MANY")
def header_many_fields(count: int = 20_000) -> bytes:
    """20,000 header fields"""
    extra = "".join(f"X-Filler-{i}: {i}\r\n" for i in range(count))
    return message(tag="header-many-fields", extra=extra)


@hostile()
def header_obs_from() -> bytes:
    """obs-syntax 'From : ceo@good.test' as the only From"""
    return head(tag="header-obs-from").replace(b"From: ", b"From : ", 1) + b"\r\n" + \
        BODY.encode()


@hostile()
def header_obs_second_from() -> bytes:
    """a plain From from elsewhere and an obs-syntax 'From :' with the spoof"""
    return (head(from_="news@example.org", tag="header-obs-second-from",
                 extra=f"From :{SPOOFED}\r\n") + b"\r\n" + BODY.encode())


@hostile()
def header_nul_8bit() -> bytes:
    """NULs, raw 8-bit, invalid UTF-8 and lone CRs in header values"""
    subject = b"wire\x00transfer \xff\xfe\xc3\x28 caf\xe9 \xe2\x82 \xf0\x9f\x92\xb0 a\rb"
    extra = (b"X-Null: \x00\x00\x00\r\nX-Latin1: Gr\xfc\xdfe\r\n"
             b"X-Overlong: \xc0\xaf\xe0\x80\xaf\r\nX-Surrogate: \xed\xa0\x80\r\n"
             b"Comments: \x1b[2J\x07 escape\r\n")
    return message(subject=subject, tag="header-nul-8bit", extra=extra)


@hostile()
def header_8bit_name() -> bytes:
    """a header field whose name has 8-bit bytes, after the From"""
    return message(tag="header-8bit-name", extra=b"X-\xff\xfe: v\r\nX-After: 1\r\n")


@hostile("TOO_MANY_ENCODED_WORDS", "HEADER_TOO_LONG")
def encoded_words_subject(count: int = 40_000) -> bytes:
    """a Subject of 40,000 RFC 2047 encoded words"""
    return message(subject=" ".join(["=?utf-8?q?a?="] * count), tag="encoded-words-subject")


@hostile("TOO_MANY_ENCODED_WORDS")
def encoded_words_folded(count: int = 700) -> bytes:
    """700 encoded words, one per folded line, under the length limit"""
    words = "\r\n ".join(f"=?utf-8?b?{base64.b64encode(b'w').decode()}?=" for _ in range(count))
    return message(subject=words, tag="encoded-words-folded")


@hostile()
def encoded_words_malformed() -> bytes:
    """encoded words with bad charsets, encodings, padding and nesting"""
    words = [
        "=?utf-8?q?=ZZ=?=", "=?utf-8?b?!!!!?=", "=?utf-8?b?YQ?=", "=?utf-8?b?YQ=?=",
        "=?no-such-charset?q?abc?=", "=?utf-8?x?abc?=", "=??q?abc?=", "=?utf-8??abc?=",
        "=?utf-8?q??=", "=?=?utf-8?q?a?=?=", "=?utf-8*en?q?a?=", "=?utf-7?q?+AGE-?=",
        "=?utf-16?b?2D3d?=", "=?iso-2022-jp?b?GyRC?=", "=?utf-8?q?" + "=C3" * 50 + "?=",
        "=?" + "x" * 500 + "?q?a?=", "=?utf-8?b?" + "Q" * 4001 + "?=", "=?utf-8?q?a",
        "=?\x00?q?a?=",
    ]
    return message(subject=" ".join(words), tag="encoded-words-malformed",
                   from_=f"=?utf-8?b?!!?= =?bogus?q?CEO?= <{SPOOFED}>",
                   extra="X-Words: " + "".join(words) + "\r\n")


@hostile("HEADER_TOO_LONG")
def from_long_display_name(size: int = 40_000) -> bytes:
    """a From whose display name pushes the address past the length limit"""
    return message(from_="A" * size + f" <{SPOOFED}>", tag="from-long-display-name")


@hostile("HEADER_TOO_LONG", "TOO_MANY_ENCODED_WORDS")
def from_encoded_words(count: int = 20_000) -> bytes:
    """a From display name of 20,000 encoded words before the address"""
    return message(from_=" ".join(["=?utf-8?q?CEO?="] * count) + f" <{SPOOFED}>",
                   tag="from-encoded-words")


# -- addresses ----------------------------------------------------------------------


@hostile("ADDRESS_UNPARSEABLE")
def from_nested_comments(depth: int = 1_000) -> bytes:
    """a From with 1,000 nested comments (issue 9, bypass a)"""
    return message(from_="(" * depth + ")" * depth + f" {SPOOFED}",
                   tag="from-nested-comments")


@hostile("ADDRESS_UNPARSEABLE")
def from_unclosed_comments(depth: int = 5_000) -> bytes:
    """a From with 5,000 comments opened and never closed"""
    return message(from_=f"{SPOOFED} " + "(" * depth, tag="from-unclosed-comments")


@hostile("HEADER_TOO_LONG")
def from_escaped_quotes(count: int = 50_000) -> bytes:
    """a From of 50,000 '"\\' (quotes that never close) before the address"""
    return message(from_='"\\' * count + f" <{SPOOFED}>", tag="from-escaped-quotes")


@hostile()
def from_colons(count: int = 5_000) -> bytes:
    """a From of 5,000 colons (group names) before the address"""
    return message(from_=":" * count + f" {SPOOFED}", tag="from-colons")


@hostile()
def from_angles(count: int = 5_000) -> bytes:
    """a From nested in 5,000 angle brackets"""
    return message(from_="<" * count + SPOOFED + ">" * count, tag="from-angles")


@hostile()
def from_unclosed_quote() -> bytes:
    """a From with a quote that never closes"""
    return message(from_=f'"CEO {SPOOFED}', tag="from-unclosed-quote")


@hostile()
def from_unclosed_angle() -> bytes:
    """a From whose angle bracket never closes"""
    return message(from_=f"CEO <{SPOOFED}", tag="from-unclosed-angle")


@hostile(spoofs=False)
def from_unclosed_literal() -> bytes:
    """a From whose domain literal never closes"""
    return message(from_="ceo@[good.test", tag="from-unclosed-literal")


@hostile()
def from_group() -> bytes:
    """a From that is a group of two spoofed mailboxes"""
    return message(from_=f"Board: {SPOOFED}, cfo@good.test;", tag="from-group")


@hostile("ADDRESS_UNPARSEABLE", spoofs=False)
def from_empty_group() -> bytes:
    """a From that is an empty group"""
    return message(from_="undisclosed-recipients:;", tag="from-empty-group")


@hostile()
def from_route_addr() -> bytes:
    """a From with an obsolete source route"""
    return message(from_=f"CEO <@relay.attacker.test,@x.test:{SPOOFED}>", tag="from-route-addr")


@hostile()
def from_at_in_display_name() -> bytes:
    """an unquoted address as the display name of another address"""
    return message(from_=f"{SPOOFED} <eve@attacker.test>", tag="from-at-in-display-name")


@hostile()
def from_two_mailboxes() -> bytes:
    """one From field, two mailboxes: the spoof and one of the attacker's"""
    return message(from_=f"eve@attacker.test, {SPOOFED}", tag="from-two-mailboxes")


@hostile()
def from_two_bare_addresses() -> bytes:
    """the spoof and the attacker's address with no comma between (issue 23)"""
    return message(from_=f"{SPOOFED} (CEO) eve@attacker.test", tag="from-two-bare-addresses")


@hostile()
def from_two_fields() -> bytes:
    """two From fields: the spoof and one of the attacker's"""
    return message(tag="from-two-fields", extra="From: eve@attacker.test\r\n")


@hostile(spoofs=False)
def from_idn_utf8() -> bytes:
    """a From with a raw UTF-8 (IDN) domain"""
    return message(from_="ceo@bänk.test".encode(), tag="from-idn-utf8")


@hostile(spoofs=False)
def from_idn_invalid() -> bytes:
    """a From whose domain is not valid IDNA"""
    return message(from_="ceo@xn--zz--.-bad-.test, x@\u200d.test, y@" + "a" * 70 + ".test",
                   tag="from-idn-invalid")


@hostile(spoofs=False)
def from_domain_literal() -> bytes:
    """a From with a domain literal"""
    return message(from_="a@[192.0.2.1]", tag="from-domain-literal")


@hostile("HEADER_TOO_LONG")
def to_many_addresses(count: int = 10_000) -> bytes:
    """a To with 10,000 addresses"""
    return message(tag="to-many-addresses", extra="Cc: " + ", ".join(
        f"user{i}@example.net" for i in range(count)) + "\r\n")


# -- MIME trees ----------------------------------------------------------------------


def nested_multipart(depth: int, close: bool = True, boundary: Callable[[int], str] | None
                     = None, leaf: str = "text/plain", leaf_body: str = BODY) -> str:
    """Body of a multipart nested ``depth`` levels (its Content-Type is
    ``multipart/mixed; boundary=<boundary(0)>``)."""
    name = boundary or (lambda level: f"b{level}")
    parts = []
    for level in range(depth):
        parts.append(f"--{name(level)}\r\nContent-Type: multipart/mixed; "
                     f'boundary="{name(level + 1)}"\r\n\r\n')
    parts.append(f"--{name(depth)}\r\nContent-Type: {leaf}\r\n\r\n{leaf_body}")
    if close:
        parts.extend(f"--{name(level)}--\r\n" for level in range(depth, -1, -1))
    return "".join(parts)


@hostile("MIME_TOO_DEEP")
def mime_nested_multipart(depth: int = 1_000) -> bytes:
    """1,000 nested multipart parts in about 70 KB (issue 9, bypass b)"""
    return mime_message('multipart/mixed; boundary="b0"', nested_multipart(depth),
                        tag="mime-nested-multipart")


@hostile("MIME_TOO_DEEP")
def mime_nested_rfc822(depth: int = 1_500) -> bytes:
    """1,500 nested message/rfc822 parts (issue 9, bypass c)"""
    inner = "Content-Type: message/rfc822\r\n\r\n" * depth
    return mime_message("message/rfc822", inner + "Subject: inner\r\n\r\n" + BODY,
                        tag="mime-nested-rfc822")


@hostile("MIME_TOO_DEEP")
def mime_nested_rfc822_multipart(depth: int = 600) -> bytes:
    """message/rfc822 and multipart alternating, 600 levels"""
    parts = []
    for level in range(depth):
        parts.append(f"--m{level}\r\nContent-Type: message/rfc822\r\n\r\n"
                     f"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; "
                     f'boundary="m{level + 1}"\r\n\r\n')
    parts.append(f"--m{depth}\r\nContent-Type: text/plain\r\n\r\n{BODY}")
    parts.extend(f"--m{level}--\r\n" for level in range(depth, -1, -1))
    return mime_message('multipart/mixed; boundary="m0"', "".join(parts),
                        tag="mime-nested-rfc822-multipart")


@hostile("MIME_TOO_MANY_PARTS")
def mime_siblings(count: int = 10_000) -> bytes:
    """10,000 sibling parts"""
    parts = "".join(f"--s\r\nContent-Type: text/plain\r\n\r\npart {i}\r\n" for i in range(count))
    return mime_message('multipart/mixed; boundary="s"', parts + "--s--\r\n",
                        tag="mime-siblings")


@hostile("MIME_TOO_MANY_PARTS")
def mime_siblings_bare(count: int = 30_000) -> bytes:
    """30,000 empty sibling parts (no header, no body)"""
    return mime_message('multipart/mixed; boundary="e"', "--e\r\n\r\n" * count + "--e--\r\n",
                        tag="mime-siblings-bare")


@hostile()
def mime_prefix_boundaries(depth: int = 20) -> bytes:
    """20 nested boundaries each a prefix of the next ('b', 'b-', 'b--', ...)"""
    return mime_message('multipart/mixed; boundary="b"',
                        nested_multipart(depth, boundary=lambda level: "b" + "-" * level),
                        tag="mime-prefix-boundaries")


@hostile()
def mime_boundary_is_close_of_parent() -> bytes:
    """an inner boundary equal to the outer close delimiter ('x' and 'x--')"""
    body = ('--x\r\nContent-Type: multipart/alternative; boundary="x--"\r\n\r\n'
            "--x--\r\nContent-Type: text/plain\r\n\r\nhidden\r\n--x----\r\n"
            "--x\r\nContent-Type: text/html\r\n\r\n<p>shown</p>\r\n--x--\r\n")
    return mime_message('multipart/mixed; boundary="x"', body, tag="mime-boundary-close")


@hostile("MIME_TOO_DEEP")
def mime_missing_end_deep(depth: int = 300) -> bytes:
    """300 nested multiparts, none closed"""
    return mime_message('multipart/mixed; boundary="b0"', nested_multipart(depth, close=False),
                        tag="mime-missing-end-deep")


@hostile()
def mime_missing_end_shallow() -> bytes:
    """5 nested multiparts without end boundaries, one without any boundary"""
    body = nested_multipart(5, close=False) + "--b6\r\nnot a boundary of anything\r\n"
    return mime_message('multipart/mixed; boundary="b0"', body, tag="mime-missing-end") + \
        b"--\r\n--\r\n"


@hostile()
def mime_no_boundary_parameter() -> bytes:
    """multiparts without a boundary, with an empty one, with a 500-byte one"""
    long = "z" * 500
    body = (f'--{long}\r\nContent-Type: multipart/mixed\r\n\r\nno boundary\r\n'
            f'--{long}\r\nContent-Type: multipart/mixed; boundary=""\r\n\r\n--\r\n----\r\n'
            f"--{long}--\r\n")
    return mime_message(f'multipart/mixed; boundary="{long}"', body, tag="mime-no-boundary")


@hostile("MIME_TOO_MANY_PARTS")
def mime_digest(count: int = 2_000) -> bytes:
    """a multipart/digest of 2,000 parts typed by default (message/rfc822)"""
    parts = "".join(f"--d\r\n\r\nSubject: digest {i}\r\n\r\nbody {i}\r\n" for i in range(count))
    return mime_message('multipart/digest; boundary="d"', parts + "--d--\r\n",
                        tag="mime-digest")


@hostile("MIME_TOO_DEEP")
def mime_digest_nested(depth: int = 200) -> bytes:
    """digests in digests, 200 levels, every part typed by default"""
    parts = []
    for level in range(depth):
        parts.append(f"--d{level}\r\n\r\nContent-Type: multipart/digest; "
                     f'boundary="d{level + 1}"\r\n\r\n')
    parts.append(f"--d{depth}\r\n\r\nSubject: innermost\r\n\r\n{BODY}")
    parts.extend(f"--d{level}--\r\n" for level in range(depth, -1, -1))
    return mime_message('multipart/digest; boundary="d0"', "".join(parts),
                        tag="mime-digest-nested")


@hostile("MIME_TOO_MANY_PARTS")
def mime_delivery_status(blocks: int = 5_000) -> bytes:
    """a report whose message/delivery-status has 5,000 field blocks"""
    status = "".join(f"Final-Recipient: rfc822; u{i}@example.net\r\nAction: failed\r\n"
                     f"Status: 5.0.0\r\n\r\n" for i in range(blocks))
    body = ("--r\r\nContent-Type: text/plain\r\n\r\nundeliverable\r\n"
            f"--r\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; x\r\n\r\n"
            f"{status}--r\r\nContent-Type: message/rfc822\r\n\r\n"
            f"From: {SPOOFED}\r\nSubject: original\r\n\r\n{BODY}--r--\r\n")
    return mime_message('multipart/report; report-type=delivery-status; boundary="r"', body,
                        tag="mime-delivery-status")


@hostile("MIME_TOO_MANY_PARTS")
def mime_delivery_status_broken() -> bytes:
    """1,000 delivery-status blocks that are not header fields at all"""
    body = ("--r\r\nContent-Type: message/delivery-status\r\n\r\n"
            + "not: a\r\n continuation\r\n\r\n\r\n\r\n: empty name\r\n\x00\x01\r\n" * 200
            + "--r--\r\n")
    return mime_message('multipart/report; boundary="r"', body, tag="mime-dsn-broken")


@hostile("MIME_TOO_MANY_PARAMETERS")
def ctype_many_parameters(count: int = 2_500) -> bytes:
    """a Content-Type with 2,500 parameters"""
    params = "".join(f";a{i % 10}=1" for i in range(count))
    return message(tag="ctype-many-parameters",
                   extra=f"MIME-Version: 1.0\r\nContent-Type: text/plain{params}\r\n")


@hostile("MIME_TOO_MANY_PARAMETERS", "HEADER_TOO_LONG")
def ctype_many_parameters_folded(count: int = 10_000) -> bytes:
    """a multipart whose part's Content-Disposition has 10,000 folded parameters"""
    params = "".join(f";\r\n x{i}=y" for i in range(count))
    body = (f"--p\r\nContent-Type: application/octet-stream\r\nContent-Disposition: "
            f"attachment{params}\r\n\r\nAAAA\r\n--p--\r\n")
    return mime_message('multipart/mixed; boundary="p"', body, tag="ctype-many-folded")


@hostile("MIME_TOO_MANY_PARAMETERS")
def ctype_quoted_semicolons(count: int = 3_000) -> bytes:
    """a filename holding 3,000 quoted semicolons"""
    body = (f'--q\r\nContent-Type: application/pdf; name="{";" * count}.pdf"\r\n'
            f'Content-Disposition: attachment; filename="{"a;" * 20}.pdf"\r\n\r\nJVBERi0=\r\n'
            "--q--\r\n")
    return mime_message('multipart/mixed; boundary="q"', body, tag="ctype-quoted-semicolons")


@hostile("MIME_TOO_MANY_PARAMETERS")
def ctype_rfc2231_continuations(count: int = 600) -> bytes:
    """a filename in 600 RFC 2231 continuations"""
    params = "".join(f";\r\n filename*{i}*=%41" for i in range(1, count))
    body = (f"--c\r\nContent-Type: application/octet-stream\r\nContent-Disposition: "
            f"attachment; filename*0*=utf-8''%41{params}\r\n\r\nAAAA\r\n--c--\r\n")
    return mime_message('multipart/mixed; boundary="c"', body, tag="ctype-rfc2231")


@hostile()
def ctype_rfc2231_odd() -> bytes:
    """RFC 2231 continuations out of order, huge, negative, bad charsets"""
    disposition = ("attachment; filename*99999999999999999999999=a; filename*-1=b; "
                   "filename*0*=no-such-charset'xx'%ZZ%4; filename*2*=''%41; "
                   "filename*1=c; filename*=''; name*0*=utf-8''%F0%9F; title*0*=%")
    body = (f"--o\r\nContent-Type: application/octet-stream; name*0*=x''%FF\r\n"
            f"Content-Disposition: {disposition}\r\n\r\nAAAA\r\n--o--\r\n")
    return mime_message('multipart/mixed; boundary="o"', body, tag="ctype-rfc2231-odd")


@hostile()
def ctype_rfc2231_mixed_sections() -> bytes:
    """'boundary*' beside 'boundary*0', which makes the stdlib parser raise"""
    body = ("--a\r\nContent-Type: text/plain; charset*=utf-8''x; charset*0=y\r\n"
            "Content-Disposition: attachment; filename*0=a; filename*=b\r\n\r\nwire it\r\n"
            "--a--\r\n")
    return mime_message("multipart/mixed; boundary*0=a; boundary*=b; boundary=a", body,
                        tag="ctype-rfc2231-mixed")


@hostile()
def ctype_rfc2231_long_section() -> bytes:
    """an RFC 2231 section number of 5,000 digits (past int()'s digit limit)"""
    digits = "9" * 5_000
    body = (f"--a\r\nContent-Type: text/plain; charset*{digits}=utf-8\r\n"
            f"Content-Disposition: attachment; filename*{digits}*=''%41\r\n\r\nwire it\r\n"
            "--a--\r\n")
    return mime_message(f'multipart/mixed; boundary="a"; boundary*{digits}=b', body,
                        tag="ctype-rfc2231-long-section")


# -- encodings ------------------------------------------------------------------------


@hostile()
def encoding_base64_garbage(size: int = 200_000) -> bytes:
    """parts that claim base64 and are not: bad alphabet, padding, lengths"""
    garbage = ("!!@@##$$%%^^&&**" * (size // 16))
    body = (f"--g\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\n"
            f"{garbage}\r\n--g\r\nContent-Type: text/html\r\nContent-Transfer-Encoding: base64"
            "\r\n\r\nQUJD=\r\n=\r\nQQ\r\nQ===\r\n====\r\n"
            "--g\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: BASE64 \r\n\r\n"
            + "YWJj" * 1000 + "\r\n--g--\r\n")
    return mime_message('multipart/mixed; boundary="g"', body, tag="encoding-base64-garbage")


@hostile()
def encoding_qp_garbage() -> bytes:
    """quoted-printable with bad escapes, soft breaks everywhere, long lines"""
    garbage = "=ZZ=\r\n=\r\n=3=4=G0==" * 5_000 + "x" * 100_000 + "=" * 10_000
    body = ("--q\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: "
            f"quoted-printable\r\n\r\n{garbage}\r\n--q--\r\n")
    return mime_message('multipart/mixed; boundary="q"', body, tag="encoding-qp-garbage")


@hostile()
def encoding_uuencode() -> bytes:
    """uuencoded parts: garbage, no begin, no end, wrong lengths"""
    body = ("--u\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: x-uuencode\r\n\r\n"
            "begin 644 a.txt\r\n" + "M" + "\x7f" * 60 + "\r\n" + "}}}}\r\n" * 2000 + "end\r\n"
            "--u\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: uuencode\r\n\r\n"
            "no begin line at all\r\n"
            "--u\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: x-uue\r\n\r\n"
            "begin 644\r\nM86)C\r\n"
            "--u--\r\n")
    return mime_message('multipart/mixed; boundary="u"', body, tag="encoding-uuencode")


@hostile()
def encoding_unknown_charsets() -> bytes:
    """text in charsets that do not exist, are huge, or decode badly"""
    parts = []
    for charset in ("x-no-such-charset", "utf-8'; drop", "a" * 2_000, "utf-32", "idna",
                    "unicode_escape", "raw_unicode_escape", "rot13", "base64_codec",
                    "zlib_codec", "bz2", "uu_codec", "punycode", "mbcs", "cp65001"):
        parts.append(f'--c\r\nContent-Type: text/plain; charset="{charset}"\r\n\r\n'
                     "\\N{foo} \\x4 xn--- =?x?q?y?= \xff\xfe caf\xe9\r\n")
    body = "".join(parts) + "--c--\r\n"
    return mime_message('multipart/mixed; boundary="c"', body.encode("latin-1"),
                        tag="encoding-unknown-charsets")


@hostile()
def encoding_utf7() -> bytes:
    """UTF-7 text and headers, well and badly formed"""
    text = "+AGEAYgBj- +ZZZZ- + +- +AAAAAAAAAAAAAAAAAAAAAAAA" + "+" * 10_000 + "+2D3d-"
    body = (f"--7\r\nContent-Type: text/plain; charset=utf-7\r\n\r\n{text}\r\n"
            f"--7\r\nContent-Type: text/html; charset=UTF-7\r\n\r\n+ADw-script+AD4-x\r\n"
            "--7--\r\n")
    return mime_message('multipart/mixed; boundary="7"', body, tag="encoding-utf7",
                        extra="X-Utf7: =?utf-7?q?+AGE-?= =?utf-7?b?KwBh?=\r\n")


# -- HTML ------------------------------------------------------------------------------


def html_message(markup: str, tag: str) -> bytes:
    return mime_message("text/html; charset=utf-8", markup, tag=tag)


@hostile()
def html_unclosed_script(count: int = 20_000) -> bytes:
    """20,000 '<script' without '</script>'"""
    return html_message("<p>wire it</p>" + "<script>x " * count, "html-unclosed-script")


@hostile()
def html_unclosed_style_then_closed(count: int = 20_000) -> bytes:
    """20,000 '<style' and one '</style>' at the very end"""
    return html_message("<style>a " * count + "</style><p>wire it</p>", "html-style")


@hostile()
def html_unclosed_comment(count: int = 20_000) -> bytes:
    """20,000 '<!--' without '-->'"""
    return html_message("<p>wire it</p>" + "<!-- x " * count, "html-unclosed-comment")


@hostile("URLS_TOO_MANY")
def html_unclosed_tag(count: int = 30_000) -> bytes:
    """30,000 '<a' without '>'"""
    return html_message("<p>wire it</p>" + "<a href=x " * count, "html-unclosed-tag")


@hostile()
def html_lt_whitespace(size: int = 1_000_000) -> bytes:
    """'< ' followed by 1 MB of white space, then '>'"""
    return html_message("<p>wire it</p><" + " " * size + "x>", "html-lt-whitespace")


@hostile()
def html_huge_attribute(size: int = 1_000_000) -> bytes:
    """an href attribute of 1 MB"""
    return html_message(f'<a href="http://{"a" * size}.test/">wire it</a>',
                        "html-huge-attribute")


@hostile("URLS_TOO_MANY")
def html_many_links(count: int = 5_000) -> bytes:
    """5,000 links"""
    return html_message("".join(f'<a href="http://h{i}.test/">{i}</a> ' for i in range(count)),
                        "html-many-links")


@hostile()
def text_digits(size: int = 200_000) -> bytes:
    """runs of 200,000 digits, with and without '%', '$' and '.'"""
    digits = "9" * size
    return message(f"{digits}\r\n$ {digits}\r\n{digits}.{digits} %\r\n{digits}x%\r\n",
                   tag="text-digits")


@hostile("TEXT_TRUNCATED", slow=True)
def text_huge(size: int = 3_000_000) -> bytes:
    """3 MB of text in one part"""
    return message("word " * (size // 5), tag="text-huge")


@hostile()
def html_url_places(count: int = 20_000) -> bytes:
    """20,000 srcset candidates, CSS url( without ')', meta refreshes and <base>s"""
    markup = ('<img srcset="' + "a.png 1x," * count + '">'
              + "<style>" + "url( " * count + "</style>"
              + '<meta http-equiv="refresh" content="' + "0;" * count + '">'
              + '<base href="https://x.test/">' * 1000 + "<p>wire it</p>")
    return html_message(markup, "html-url-places")


@hostile("TEXT_TRUNCATED")
def html_formatting(size: int = 2_000_000) -> bytes:
    """2 MB of '<b x=N>t' (an HTML5 tree builder's active formatting elements)"""
    return html_message("".join(f"<b x={i}>t" for i in range(size // 10)), "html-formatting")


@hostile("TEXT_TRUNCATED")
def html_one_tag_many_attributes(size: int = 2_000_000) -> bytes:
    """one tag with 2 MB of attributes"""
    return html_message("<a " + " ".join(f"<x{i}" for i in range(size // 8)) + ">wire it",
                        "html-many-attributes")


@hostile("URLS_TOO_MANY")
def html_nested_links(depth: int = 20_000) -> bytes:
    """20,000 links opened inside each other, each with text"""
    return html_message('<a href="https://a.test/">www.paypal.com/x ' * depth, "html-nested-links")


# -- pictures ------------------------------------------------------------------------------


def picture_message(pictures: list[tuple[str, bytes]], tag: str) -> bytes:
    boundary = "hostile-pictures"
    parts = "".join(
        f"--{boundary}\r\nContent-Type: image/png\r\nContent-Transfer-Encoding: base64\r\n"
        f"Content-Disposition: attachment; filename=\"{name}\"\r\n\r\n"
        + base64.encodebytes(data).decode().replace("\n", "\r\n") + "\r\n"
        for name, data in pictures)
    return head(tag=tag, extra=f'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; '
                f'boundary="{boundary}"\r\n') + (
        f"--{boundary}\r\nContent-Type: text/plain\r\n\r\n{BODY}\r\n{parts}"
        f"--{boundary}--\r\n").encode()


def png(width: int, height: int, data: bytes) -> bytes:
    """A PNG whose header declares ``width`` x ``height`` (grey, 8 bits)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(
            ">I", zlib.crc32(kind + body))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height,
                                                                8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(data)) + chunk(b"IEND", b""))


@hostile("QR_SCAN_LIMIT")
def picture_bomb() -> bytes:
    """a 1 KB PNG declaring 100,000 x 100,000 pixels"""
    return picture_message([("bomb.png", png(100_000, 100_000, b"\0" * 100_000))],
                           "picture-bomb")


@hostile("QR_SCAN_LIMIT")
def pictures_many(count: int = 300) -> bytes:
    """300 small pictures, every other one broken"""
    pictures = [(f"p{i}.png", png(64, 64, bytes(65 * 64)) if i % 2 else png(64, 64, b"x"))
                for i in range(count)]
    return picture_message(pictures, "pictures-many")


# -- DKIM and ARC -------------------------------------------------------------------------


def dkim_signature(c: str = "relaxed/relaxed", selector: str = "s2048", h: str = "from:to",
                   extra: str = "") -> str:
    return (f"DKIM-Signature: v=1; a=rsa-sha256; c={c}; d=good.test; s={selector};"
            f" h={h}; bh=47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=;{extra}"
            " b=dGVzdA==\r\n")


@hostile("HEADER_TOO_LONG")
def dkim_long(count: int = 5_000) -> bytes:
    """a DKIM-Signature listing 5,000 header names in h="""
    return message(tag="dkim-long", extra=dkim_signature(h=":".join(["from"] * count)))


@hostile("HEADER_TOO_LONG")
def dkim_folded(folds: int = 10_000) -> bytes:
    """a DKIM-Signature folded 10,000 times"""
    return message(tag="dkim-folded",
                   extra=dkim_signature(extra="\r\n\t" * folds + " z=a"))


@hostile()
def dkim_many(count: int = 200) -> bytes:
    """200 DKIM-Signature fields"""
    return message(tag="dkim-many", extra="".join(
        dkim_signature(selector=("s2048", "nokey", "revoked", "broken")[i % 4])
        for i in range(count)))


@hostile()
def dkim_malformed() -> bytes:
    """DKIM-Signature fields that are not tag lists"""
    signatures = ["DKIM-Signature: \x00\r\n", "DKIM-Signature: ;;;;;==;=\r\n",
                  "DKIM-Signature: v=1; v=1; d=good.test; d=x\r\n",
                  "DKIM-Signature: v=1; a=rsa-sha256; d=; s=; h=; bh=; b=\r\n",
                  "DKIM-Signature: v=1; a=rsa-sha256; d=good.test; s=s2048; h=from; "
                  "bh=!!!; b=!!!; l=99999999999999999999999999; x=-1; t=zz\r\n",
                  "DKIM-Signature: v=1; a=ed25519-sha256; d=\xff.test; s=\x00; h=from; "
                  "bh=AA; b=AA\r\n"]
    return message(tag="dkim-malformed", extra="".join(signatures))


@hostile()
def dkim_relaxed_spaces(size: int = 100_000, signatures: int = 1) -> bytes:
    """relaxed/relaxed DKIM over a body with a 100 KB run of spaces"""
    body = "wire it" + " " * size + "today\r\n" + "\t \t" * (size // 3) + "x\r\n"
    return message(body, tag="dkim-relaxed-spaces",
                   extra="".join(dkim_signature() for _ in range(signatures)))


def arc_set(instance: int, length: int = 0, folds: int = 0) -> str:
    fold = "\r\n " * folds
    return (f"ARC-Seal: i={instance}; a=rsa-sha256; cv={'none' if instance == 1 else 'pass'};"
            f" d=forwarder.test; s=arc; t=1;{fold} b=dGVzdA==\r\n"
            f"ARC-Message-Signature: i={instance}; a=rsa-sha256; c=relaxed/relaxed;"
            f" d=forwarder.test; s=arc; h=from:to{':x' * length}; bh=AAAA; b=dGVzdA==\r\n"
            f"ARC-Authentication-Results: i={instance}; mx.forwarder.test; spf=pass\r\n")


@hostile()
def arc_many(count: int = 100) -> bytes:
    """100 ARC sets"""
    return message(tag="arc-many", extra="".join(arc_set(i) for i in range(count, 0, -1)))


@hostile("HEADER_TOO_LONG")
def arc_long_and_folded() -> bytes:
    """ARC headers 40 KB long and folded 10,000 times"""
    return message(tag="arc-long", extra=arc_set(1, length=20_000, folds=10_000))


@hostile()
def arc_malformed() -> bytes:
    """ARC sets with bad instances, duplicates and junk"""
    junk = ("ARC-Seal: i=0; cv=pass\r\nARC-Seal: i=99999999999999999999; cv=zz\r\n"
            "ARC-Seal: i=-1\r\nARC-Message-Signature: \x00\r\nARC-Authentication-Results: ;\r\n"
            "ARC-Seal: i=1; i=1; i=1\r\n")
    return message(tag="arc-malformed", extra=junk + arc_set(1) + arc_set(1))


@hostile()
def arc_relaxed_spaces(size: int = 100_000) -> bytes:
    """an ARC set (relaxed body) over a body with a 100 KB run of spaces"""
    body = "wire it" + " " * size + "today\r\n"
    return message(body, tag="arc-relaxed-spaces", extra=arc_set(1))


# -- the three bypass shapes of issue 9, with a marker -------------------------------------


def bypass_shapes(tag: str) -> dict[str, bytes]:
    """The spoofed p=reject From sent plainly and in the three shapes that
    switched checks off in issue 9, each Subject carrying ``tag``."""
    subject = f"Wire transfer {tag}"
    return {
        "plain": message(subject=subject, tag=f"plain-{tag}"),
        "nested-comments": message(from_="(" * 1_000 + ")" * 1_000 + f" {SPOOFED}",
                                   subject=subject, tag=f"comments-{tag}"),
        "nested-multipart": message(nested_multipart(1_000), subject=subject,
                                    tag=f"multipart-{tag}",
                                    extra='MIME-Version: 1.0\r\nContent-Type: multipart/mixed;'
                                          ' boundary="b0"\r\n'),
        "nested-rfc822": message("Content-Type: message/rfc822\r\n\r\n" * 1_500
                                 + "Subject: inner\r\n\r\n" + BODY, subject=subject,
                                 tag=f"rfc822-{tag}",
                                 extra="MIME-Version: 1.0\r\nContent-Type: message/rfc822\r\n"),
    }


# -- generated messages ----------------------------------------------------------------------


class Chooser(Protocol):
    """Where a generated message's choices come from."""

    def integer(self, low: int, high: int) -> int: ...

    def choice(self, options: Sequence[T]) -> T: ...

    def boolean(self) -> bool: ...

    def blob(self, max_size: int) -> bytes: ...


class RandomChooser:
    """Choices from a seeded :class:`random.Random` (the fuzz benchmark)."""

    def __init__(self, seed: int | random.Random = 0):
        self.random = seed if isinstance(seed, random.Random) else random.Random(seed)

    def integer(self, low: int, high: int) -> int:
        return self.random.randint(low, high)

    def choice(self, options: Sequence[T]) -> T:
        return options[self.random.randrange(len(options))]

    def boolean(self) -> bool:
        return self.random.random() < 0.5

    def blob(self, max_size: int) -> bytes:
        return self.random.randbytes(self.random.randint(0, max_size))


class DrawChooser:
    """Choices drawn from hypothesis (``st.data()`` or a composite's ``draw``),
    so failing messages shrink."""

    def __init__(self, draw: Callable[[Any], Any]):
        self.draw = draw

    def integer(self, low: int, high: int) -> int:
        from hypothesis import strategies as st

        return self.draw(st.integers(low, high))

    def choice(self, options: Sequence[T]) -> T:
        from hypothesis import strategies as st

        return self.draw(st.sampled_from(options))

    def boolean(self) -> bool:
        from hypothesis import strategies as st

        return self.draw(st.booleans())

    def blob(self, max_size: int) -> bytes:
        from hypothesis import strategies as st

        return self.draw(st.binary(max_size=max_size))


# Generated messages are cut here (a cut is one more missing end).
MAX_GENERATED = 4 * 1024 * 1024
# Sizes are drawn from these, so that small and pathological ones both come up.
COUNTS = (0, 1, 2, 3, 7, 40, 150, 600, 2_500)
ATOMS = ("ceo", "good.test", "a", "", "x" * 70, "é", "\u202e", "\u200d", "xn--", "-", ".")
SPECIALS = ("(", ")", "<", ">", "[", "]", ":", ";", "@", "\\", ",", ".", '"', " ", "\t")


def _repeat(c: Chooser, text: str) -> str:
    return text * c.choice(COUNTS)


def encoded_word(c: Chooser) -> str:
    charset = c.choice(("utf-8", "iso-8859-1", "utf-7", "no-such", "", "utf-16", "a" * 80))
    kind = c.choice(("q", "b", "Q", "B", "x", ""))
    payload = c.choice(("abc", "=C3=A9", "w6k=", "!!!", "", "=ZZ", "_" * 50, "?", "YQ"))
    return f"=?{charset}?{kind}?{payload}?="


def address(c: Chooser) -> str:
    """One address-ish string: RFC 5322 mailboxes with hostile decoration."""
    local = c.choice(("ceo", '"c e o"', "a.b", "", "x" * 100, "é", '"\\"'))
    domain = c.choice(("good.test", "bänk.test", "[192.0.2.1]", "[good.test", "xn--zz--.test",
                       "a..test", "good.test.", "-x-.test", "", "a" * 70 + ".test"))
    mailbox = f"{local}@{domain}" if domain or c.boolean() else local
    shape = c.choice(("bare", "angle", "display", "group", "route", "at-display", "comment",
                      "specials"))
    if shape == "angle":
        return "<" * c.choice((1, 1, 2, 500)) + mailbox + ">" * c.choice((0, 1, 2, 500))
    if shape == "display":
        name = c.choice(("CEO", '"CEO, Good"', encoded_word(c), '"unclosed', "(c) CEO"))
        return f"{name} <{mailbox}>"
    if shape == "group":
        return c.choice(("Board", "", "x" * 30)) + ":" * c.choice((1, 1, 3, 2_000)) + \
            f" {mailbox}" + c.choice((";", "", ";;", ",;"))
    if shape == "route":
        return f"<@relay.test,@x.test:{mailbox}>"
    if shape == "at-display":
        return f"{mailbox} <{c.choice(('eve@attacker.test', mailbox, ''))}>"
    if shape == "comment":
        depth = c.choice((1, 2, 10, 11, 49, 50, 51, 1_000))
        closed = c.choice((depth, depth, 0, depth // 2))
        where = c.boolean()
        comment = "(" * depth + c.choice(("", "x", '"', "\\(")) + ")" * closed
        return f"{comment} {mailbox}" if where else f"{mailbox} {comment}"
    if shape == "specials":
        return "".join(c.choice(SPECIALS + ATOMS) for _ in range(c.choice((3, 20, 400))))
    return mailbox


def address_list(c: Chooser) -> str:
    return ", ".join(address(c) for _ in range(c.choice((1, 1, 2, 3, 60))))


def header_value(c: Chooser) -> str:
    shape = c.choice(("text", "encoded", "long", "folded", "bytes", "address", "params"))
    if shape == "encoded":
        return " ".join(encoded_word(c) for _ in range(c.choice(COUNTS)))
    if shape == "long":
        return c.choice(("A", " ", "\t", "=?", "(")) * c.choice((100, 998, 17_000, 70_000))

    if shape == "folded":
        return "x" + _repeat(c, c.choice(("\r\n w", "\r\n\t", "\r\n \r\n x")))
    if shape == "bytes":
        return c.blob(200).decode("latin-1").replace("\r", "").replace("\n", "")
    if shape == "address":
        return address_list(c)
    if shape == "params":
        return "text/plain" + _repeat(c, c.choice(PARAMETERS))
    return c.choice(("hello", "", " ", "a\x00b", "\x1b[31mred", "wire transfer"))


PARAMETERS = ('; a="b;c"', ";x*0*=''%41", ";;", "; q=1", "; charset*=utf-8''%41",
              "; charset*0=a", "; name*9" + "9" * 4_400 + "=x", "; filename*=''",
              '; boundary="b"', "; boundary*0=b", "; boundary*=c", '; name="=?utf-8?q?a?="',
              "; name*1*=%FF", "; =", "; a=", "; *=x")
HEADER_NAMES = ("Subject", "To", "Cc", "Reply-To", "Sender", "X-Mailer", "Comments",
                "Content-Type", "Content-Disposition", "Content-Transfer-Encoding",
                "DKIM-Signature", "ARC-Seal", "Received", "X-Spam-Status", "List-Id",
                "Authentication-Results", "MIME-Version", "X-" + "h" * 200)


def header_field(c: Chooser) -> str:
    name = c.choice(HEADER_NAMES)
    separator = c.choice((": ", ":", " : ", ":\t"))
    return f"{name}{separator}{header_value(c)}\r\n"


def header_fields(c: Chooser) -> str:
    """Extra header fields (each ending in CRLF): a few drawn one by one, or
    one drawn and repeated hundreds of times."""
    if c.choice((False, False, False, True)):
        field = header_field(c)
        return field * max(1, min(c.choice((40, 700, 3_000)), 400_000 // len(field)))
    return "".join(header_field(c) for _ in range(c.choice((0, 1, 2, 3, 5, 8))))


CTES = ("7bit", "8bit", "base64", "quoted-printable", "x-uuencode", "binary", "bogus", "")
CHARSETS = ("utf-8", "us-ascii", "iso-8859-1", "utf-7", "no-such-charset", "utf-16", "")


def leaf(c: Chooser, small: bool = False) -> str:
    """One non-multipart part: headers, blank line, body (``small``: the
    text once, not repeated)."""
    content_type = c.choice(("text/plain", "text/html", "application/octet-stream",
                             "image/png", "message/delivery-status", "text/rfc822-headers"))
    cte = c.choice(CTES)
    charset = c.choice(CHARSETS)
    text = c.choice(("wire it today", "<script>x", "<!-- x", "<a href=x", "< " + " " * 50,
                     "=ZZ=\r\n=", "!!!!", "begin 644 x\r\nM}}}\r\n", "+AGE-+ZZ",
                     "http://a.test/ ", "\x00\xff", "Final-Recipient: x\r\n\r\n",
                     "<" + "a" * 100 + " ", "\t \t  "))
    body = text if small else (_repeat(c, text) or text)
    if not small and c.choice((False, False, False, False, True)):  # one huge run
        body += c.choice(("<", " ", "-", "=", "A", "9", "$1", "@")) * c.choice((100_000, 400_000))
    if cte == "base64" and c.boolean():
        body = base64.encodebytes(body.encode("utf-8", "surrogatepass")).decode()
    extra = ""
    if c.boolean():
        extra = f"Content-Disposition: attachment; filename=\"{c.choice(('a.exe', ';;', ''))}\""\
                "\r\n"
    parameters = "".join(c.choice(PARAMETERS) for _ in range(c.choice((0, 0, 1, 2, 3))))
    return (f"Content-Type: {content_type}; charset=\"{charset}\"{parameters}\r\n"
            f"Content-Transfer-Encoding: {cte}\r\n{extra}\r\n{body}\r\n")


def mime_tree(c: Chooser, depth: int = 0) -> str:
    """A part (headers, blank line, body), possibly a deep or wide tree."""
    kind = c.choice(("leaf", "leaf", "multipart", "rfc822", "digest", "chain", "wide"))
    if kind == "leaf" or depth > 3:
        return leaf(c)
    boundary = c.choice(("b", "b-", "b--", "=_", "x" * 70, "b" + str(depth)))
    if kind == "wide":  # many copies of one part, drawn once
        child = leaf(c, small=True)
        count = c.choice((40, 700, 3_000))
        return (f'Content-Type: multipart/mixed; boundary="{boundary}"\r\n\r\n'
                + f"--{boundary}\r\n{child}" * count + f"--{boundary}--\r\n")
    if kind == "chain":  # a straight chain of nested containers, built without recursion
        levels = c.choice((2, 31, 200, 1_200))
        container = c.choice(("multipart", "rfc822"))
        if container == "rfc822":
            return "Content-Type: message/rfc822\r\n\r\n" * levels + leaf(c)
        return (f'Content-Type: multipart/mixed; boundary="{boundary}0"\r\n\r\n'
                + nested_multipart(levels, close=c.boolean(),
                                   boundary=lambda level: f"{boundary}{level}"))
    if kind == "rfc822":
        return "Content-Type: message/rfc822\r\n\r\nSubject: inner\r\n" + mime_tree(c, depth + 1)
    subtype = "digest" if kind == "digest" else c.choice(("mixed", "alternative", "related",
                                                           "report"))
    children = []
    for _ in range(c.choice((0, 1, 2, 3, 5))):
        child = mime_tree(c, depth + 1)
        if subtype == "digest" and c.boolean():  # typed by default: message/rfc822
            child = "\r\nSubject: digested\r\n\r\nbody\r\n"
        children.append(f"--{boundary}\r\n{child}")
    close = c.choice((f"--{boundary}--\r\n", "", f"--{boundary}\r\n"))
    parameters = "".join(c.choice(PARAMETERS) for _ in range(c.choice((0, 0, 1, 2))))
    return (f'Content-Type: multipart/{subtype}; boundary="{boundary}"{parameters}\r\n\r\n'
            + "".join(children) + close)


def generated_message(c: Chooser) -> tuple[bytes, bool]:
    """A random hostile message, and whether its From is the plain spoof
    (a reader sees ceo@good.test and nothing else claims to be the author)."""
    plain_from = c.boolean()
    from_ = SPOOFED if plain_from else address_list(c)
    extra = header_fields(c)
    # A generated From, or a second one, changes who the author seems to be.
    spoofs = plain_from and not any(
        line.lower().replace(" ", "").startswith(("from:", "sender:"))
        for line in extra.split("\r\n"))
    tree = mime_tree(c)
    headers, _, body = tree.partition("\r\n\r\n")
    raw = (head(from_=from_, tag="generated", extra=extra + "MIME-Version: 1.0\r\n")
           + headers.encode("utf-8", "surrogatepass") + b"\r\n\r\n"
           + body.encode("utf-8", "surrogatepass"))
    return raw[:MAX_GENERATED], spoofs


def messages():
    """hypothesis strategy: (raw message, whether its From is the plain spoof)."""
    from hypothesis import strategies as st

    @st.composite
    def draw_message(draw):
        return generated_message(DrawChooser(draw))

    return draw_message()


def header_field_strategy():
    """hypothesis strategy: one header field line (with CRLF)."""
    from hypothesis import strategies as st

    @st.composite
    def draw_field(draw):
        c = DrawChooser(draw)
        return f"{c.choice(HEADER_NAMES)}: {header_value(c)}\r\n"

    return draw_field()


def address_strategy():
    """hypothesis strategy: an address list."""
    from hypothesis import strategies as st

    @st.composite
    def draw_address(draw):
        return address_list(DrawChooser(draw))

    return draw_address()


def mime_tree_strategy():
    """hypothesis strategy: a MIME part (headers, blank line, body)."""
    from hypothesis import strategies as st

    @st.composite
    def draw_tree(draw):
        return mime_tree(DrawChooser(draw))

    return draw_tree()


def nth(index: int, seed: int = 0) -> tuple[str, bytes, bool]:
    """The ``index``-th message of the fuzz benchmark's stream, as (name, raw,
    spoofs): even ones are the builders in turn, odd ones generated (each
    from its own seed, so any one can be rebuilt alone)."""
    if index % 2 == 0:
        item = list(BUILDERS.values())[index // 2 % len(BUILDERS)]
        return item.name, item.build(), item.spoofs
    raw, spoofs = generated_message(RandomChooser(seed * 1_000_003 + index))
    return f"generated-{seed}-{index}", raw, spoofs

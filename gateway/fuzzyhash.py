"""Fuzzy hashes of mail: TLSH of the normalised text and of the HTML
structure, an exact hash for short texts, and an index that finds the
learned or recent hashes near a message's.

TLSH (py-tlsh, C++) computes a digest in a fraction of a millisecond and
its distance vectorises (:class:`TlshIndex`). ``tests/bench/fuzzy.py
--ssdeep`` measures ssdeep beside it: on the SpamAssassin corpus ssdeep of
the normalised text caught more unseen spam at the same ham hit rate (30%
against 26% for TLSH's text and HTML digests), but only ppdeep, a pure
Python ssdeep at 6 ms a message, installs here (the ssdeep package needs
libfuzzy to build); adding an ssdeep digest is the next step the figures
point to. TLSH needs 50 bytes of varied input, so texts shorter than
``[fuzzy] short_text`` are compared by an exact hash of their normalised
form.

Normalising removes what campaigns vary per recipient: case, digits (order
numbers, tracking ids), e-mail addresses, URLs' paths and queries (the host
stays), whitespace. Everything is bounded: the text by ``MAX_TEXT`` bytes,
the HTML structure by ``MAX_TAGS`` tags.

:class:`TlshIndex` holds many hashes as numpy arrays and computes TLSH's
distance to all of them at once (the same figure as ``tlsh.diff``, checked
by the tests), after skipping those whose length field alone puts them
past the threshold.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from gateway.urls import URL_ANCHOR

MAX_TEXT = 256 * 1024
MAX_TAGS = 5000
# Indexes from this many digests pick the lengths a query allows before
# comparing; smaller ones are compared whole in one pass.
BUCKETS_FROM = 2048
MIN_EXACT = 24  # normalised characters below which a text says too little to match on
TLSH_LENGTH = 72  # "T1" and 70 hex digits

_URL = re.compile(r"\b(?:https?://|www\.)([a-z0-9.-]{1,253})[^\s<>\"']{0,2000}", re.IGNORECASE)
_URL_LONGEST_SCHEME = 5  # "https", before the "://" URL_ANCHOR finds
_EMAIL = re.compile(r"[\w.+-]{1,64}@[\w-]{1,63}(?:\.[\w-]{1,63}){0,10}")
_DIGITS = re.compile(r"\d+")
_TAG = re.compile(r"<\s{0,8}(/?)\s{0,8}([a-zA-Z][a-zA-Z0-9]{0,15})")


def normalise_text(text: str) -> str:
    """What stays the same across a campaign's copies (bounded)."""
    text = text[:MAX_TEXT].lower()
    text = without_addresses(without_url_paths(text))
    # str.split() and \s agree on whitespace (both Py_UNICODE_ISSPACE): runs
    # of it made one space, as re.sub(r"\s+", " ", text).strip() did, 4x faster.
    text = " ".join(text.split())
    return _DIGITS.sub("0", text)


def without_url_paths(text: str) -> str:
    """``_URL.sub(lambda m: f" url:{m.group(1)} ", text)``, searched only
    from near each "://" or "www." (gateway.urls.URL_ANCHOR, as text_urls
    does): every match holds one, at most 5 characters ("https") after its
    start, and the regex alone is tried at every word of the text."""
    kept: list[str] = []
    position = 0
    while (anchor := URL_ANCHOR.search(text, position)) is not None:
        found = _URL.search(text, max(position, anchor.start() - _URL_LONGEST_SCHEME))
        if found is None:
            break
        kept += (text[position:found.start()], " url:", found.group(1), " ")
        position = found.end()
    kept.append(text[position:])
    return "".join(kept)


def without_addresses(text: str) -> str:
    """``_EMAIL.sub(" @ ", text)``, searched only near an @: the regex
    alone tries up to 64 characters at every position of the text (a third
    of the normalising). An address's local part is at most 64 characters
    and holds no @, so no match starts more than 64 characters before the
    first @ not yet passed: the search may start there, with the same
    matches."""
    kept: list[str] = []
    position = 0
    while (at := text.find("@", position)) >= 0:
        found = _EMAIL.search(text, max(position, at - 64))
        if found is None:
            break
        kept += (text[position:found.start()], " @ ")
        position = found.end()
    kept.append(text[position:])
    return "".join(kept)


def html_structure(html: str) -> str:
    """The sequence of tag names of an HTML text (its layout, not its words)."""
    tags = []
    for match in _TAG.finditer(html[:MAX_TEXT]):
        tags.append(match.group(1) + match.group(2).lower())
        if len(tags) >= MAX_TAGS:
            break
    return " ".join(tags)


def tlsh_of(data: bytes) -> str | None:
    """TLSH of the bytes, or None when they are too short or too uniform."""
    import tlsh

    if len(data) < 50:
        return None
    digest = str(tlsh.hash(data))
    return digest if len(digest) == TLSH_LENGTH and digest.startswith("T1") else None


def exact_of(normalised: str) -> str:
    return hashlib.sha256(normalised.encode("utf-8", "replace")).hexdigest()[:40]


@dataclass(frozen=True)
class Digest:
    kind: str  # text, html (TLSH) or exact (sha256 of a short normalised text)
    value: str


def digests(plain: str, html: str, short_text: int) -> list[Digest]:
    """The message's digests from its reader-visible text and its HTML."""
    found: list[Digest] = []
    text = normalise_text(plain)
    encoded = text.encode("utf-8", "replace")
    fuzzy = tlsh_of(encoded) if len(encoded) >= short_text else None
    if fuzzy is not None:
        found.append(Digest("text", fuzzy))
    elif len(text) >= MIN_EXACT:
        found.append(Digest("exact", exact_of(text)))
    if html:
        structure = html_structure(html)
        shape = tlsh_of(structure.encode()) if len(structure) >= short_text else None
        if shape is not None:
            found.append(Digest("html", shape))
    return found


# -- TLSH distance over many hashes at once ------------------------------------------------------


def _swap(byte: int) -> int:
    return ((byte & 0x0F) << 4) | (byte >> 4)


def _pair_table() -> npt.NDArray[np.int16]:
    """Body distance of two code bytes: four 2-bit buckets, |x - y| each, 3 counted as 6.

    Built with numpy (a fraction of a millisecond; the double loop took
    50-200 ms in every worker that met its first digest)."""
    codes = np.arange(256, dtype=np.int16)
    table = np.zeros((256, 256), dtype=np.int16)
    for shift in (0, 2, 4, 6):
        buckets = (codes >> shift) & 3
        d = np.abs(buckets[:, None] - buckets[None, :])
        table += np.where(d == 3, 6, d).astype(np.int16)
    return table


_TABLE: npt.NDArray[np.int16] | None = None


def _table() -> npt.NDArray[np.int16]:
    global _TABLE
    if _TABLE is None:
        _TABLE = _pair_table()
    return _TABLE


def parse_tlsh(digest: str) -> tuple[int, int, int, int, bytes]:
    """(checksum, length, q1, q2, body) of a "T1..." digest; raises ValueError."""
    if len(digest) != TLSH_LENGTH or not digest.startswith("T1"):
        raise ValueError(f"not a TLSH digest: {digest[:20]!r}")
    raw = bytes.fromhex(digest[2:])
    q = _swap(raw[2])
    return raw[0], _swap(raw[1]), q >> 4, q & 0x0F, raw[3:]


_HEX = frozenset("0123456789abcdefABCDEF")


def _swapped(column: npt.NDArray[np.uint8]) -> npt.NDArray[np.int32]:
    """:func:`_swap` of every byte."""
    wide = column.astype(np.int32)
    return ((wide & 0x0F) << 4) | (wide >> 4)


def _mod_diff(a: npt.NDArray[np.int32], b: int, size: int) -> npt.NDArray[np.int32]:
    d = np.abs(a - b)
    return np.minimum(d, size - d)


TLSH_BYTES = TLSH_LENGTH // 2 - 1  # what the 70 hex digits hold


def tlsh_rows(digests: Sequence[str]) -> tuple[npt.NDArray[np.uint8], list[int]]:
    """The bytes of each "T1" digest of 70 hex digits, one row each, and
    the positions in ``digests`` of those rows; the others are left out."""
    kept = [i for i, digest in enumerate(digests)
            if len(digest) == TLSH_LENGTH and digest.startswith("T1")]
    try:  # all at once, when every digest is hex digits alone (fromhex skips spaces)
        raw = np.frombuffer(bytes.fromhex("".join(digests[i][2:] for i in kept)),
                            dtype=np.uint8).reshape(len(kept), TLSH_BYTES)
    except ValueError:
        kept = [i for i in kept if _HEX.issuperset(digests[i][2:])]
        raw = np.frombuffer(bytes.fromhex("".join(digests[i][2:] for i in kept)),
                            dtype=np.uint8).reshape(len(kept), TLSH_BYTES)
    return raw, kept


class TlshIndex:
    """Many TLSH digests, each with a payload; the ones within a distance of
    a digest, nearest first."""

    def __init__(self, items: Iterable[tuple[str, object]] = ()):
        # Read all at once (a recent-copies index is rebuilt from up to
        # 100,000 digests): one hex decoding, numpy columns.
        pairs = list(items)
        raw, kept = tlsh_rows([digest for digest, _ in pairs])
        self._set_columns(raw, [pairs[i][1] for i in kept])

    @classmethod
    def from_rows(cls, raw: npt.NDArray[np.uint8], payloads: list[object]) -> TlshIndex:
        """An index of digests already decoded by :func:`tlsh_rows`."""
        index = cls.__new__(cls)
        index._set_columns(raw, payloads)
        return index

    def _set_columns(self, raw: npt.NDArray[np.uint8], payloads: list[object]) -> None:
        self.checksum = raw[:, 0].astype(np.int32)
        self.length = _swapped(raw[:, 1])
        q = _swapped(raw[:, 2])
        self.q1, self.q2 = q >> 4, q & 0x0F
        self.body = np.ascontiguousarray(raw[:, 3:])
        self.payloads = payloads
        # The digests by their length field: a query looks only at the
        # lengths its threshold allows (a recent-copies index holds up to
        # 100,000 digests, of 256 lengths).
        self._by_length = np.argsort(self.length, kind="stable")
        # Where each length's digests start in that order (and end: the next's start).
        self._starts = np.searchsorted(self.length[self._by_length], np.arange(257)).tolist()

    def __len__(self) -> int:
        return len(self.payloads)

    def near(self, digest: str, threshold: int) -> list[tuple[int, object]]:
        """(distance, payload) of each digest at most ``threshold`` away."""
        if not self.payloads:
            return []
        try:
            checksum, length, q1, q2, body = parse_tlsh(digest)
        except ValueError:
            return []
        if len(self.payloads) < BUCKETS_FROM:  # one pass over all costs less than picking
            ldiff = _mod_diff(self.length, length, 256)
            lpart = np.where(ldiff <= 1, ldiff, ldiff * 12)
            candidates = np.nonzero(lpart <= threshold)[0]
            total = lpart[candidates]
        else:
            candidates = self._of_lengths(length, threshold)
            ldiff = _mod_diff(self.length[candidates], length, 256)
            total = np.where(ldiff <= 1, ldiff, ldiff * 12)
        if not len(candidates):
            return []
        for column, value in ((self.q1, q1), (self.q2, q2)):
            qdiff = _mod_diff(column[candidates], value, 16)
            total += np.where(qdiff <= 1, qdiff, (qdiff - 1) * 12)
        total += (self.checksum[candidates] != checksum).astype(np.int32)
        # The body's share is never negative: those already past the
        # threshold need no look at their 32 body bytes (most of the cost).
        within = np.nonzero(total <= threshold)[0]
        if not len(within):
            return []
        candidates, total = candidates[within], total[within]
        query = np.frombuffer(body, dtype=np.uint8)
        total += _table()[self.body[candidates], query[None, :]].sum(axis=1, dtype=np.int32)
        close = np.nonzero(total <= threshold)[0]
        order = close[np.argsort(total[close], kind="stable")]
        return [(int(total[i]), self.payloads[int(candidates[i])]) for i in order]


    def _of_lengths(self, length: int, threshold: int) -> npt.NDArray[np.intp]:
        """The positions, in order, of the digests whose length field is
        within the threshold of ``length``."""
        slices = [self._by_length[self._starts[value]:self._starts[value + 1]]
                  for value in _lengths_within(length, threshold)]
        return np.sort(np.concatenate(slices))


@functools.lru_cache(maxsize=4096)
def _lengths_within(length: int, threshold: int) -> tuple[int, ...]:
    """The length fields within ``threshold`` of ``length``: a difference d
    costs d up to 1, then 12 d, around the 256 values."""
    return tuple(sorted({(length + sign * d) % 256 for d in range(129)
                         if (d if d <= 1 else d * 12) <= threshold for sign in (1, -1)}))


def distance(a: str, b: str) -> int:
    """TLSH distance of two digests, as :class:`TlshIndex` computes it."""
    found = TlshIndex([(b, None)]).near(a, 10_000)
    return found[0][0] if found else 10_000


def nearest(index: TlshIndex, digest: str, threshold: int) -> tuple[int, object] | None:
    found = index.near(digest, threshold)
    return found[0] if found else None


def combined(parts: Sequence[str]) -> str:
    return "\n".join(p for p in parts if p)

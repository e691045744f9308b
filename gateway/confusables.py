"""Confusable text: what a reader cannot tell apart, per Unicode UTS #39.

An attacker writes ``P\u0430yPal`` with a Cyrillic ``\u0430``, ``paypa1`` with a
digit, ``\uff30\uff41\uff59\uff50\uff41\uff4c`` in full-width letters, or ``Pay\u200bPal`` with an
invisible space; a reader sees PayPal every time. The functions here map
each spelling to one comparison key, so a check compares keys, never the
text as sent.

The confusables data and the skeleton algorithm (NFD, the confusables
mapping, NFD) are ICU's (``icu.SpoofChecker``, through PyICU), the reference
implementation of UTS #39, with the Unicode data of the system's ICU
(Debian 12: ICU 72, Unicode 15.0), kept up to date by the distribution.
Around it:

- :func:`skeleton` is the UTS #39 skeleton, exactly;
- :func:`fold` is the key for text whose case does not matter (domains,
  names): NFKC, case folding, invisible format characters removed, the
  skeleton, case folding again (the skeleton of ``0`` is ``O``);
- :func:`name_keys` / :func:`name_tokens` are keys for display names:
  :func:`fold` without spaces or punctuation (``"J. Smith"`` and
  ``"j smith"`` meet), and because the skeleton keeps case (``I`` is a
  confusable of ``l``, ``i`` is not), both orders of folding count;
- :func:`mixed_script` says whether text mixes scripts beyond what UTS #39's
  "highly restrictive" level allows (``p\u0430ypal``: Latin and Cyrillic).

Every input is bounded: text beyond :data:`MAX_TEXT` characters is cut
before it is looked at, so no caller can make these costly.
"""

from __future__ import annotations

import re
import threading
import unicodedata
from functools import lru_cache
from typing import Any

MAX_TEXT = 512  # characters looked at; display names and host names are shorter
# Texts (names, labels) whose foldings each process keeps, per function:
# the names mail repeats stay; at 65,536 two of them took 28 MB of a
# worker as a stream of new names filled them.
_CACHE = 8192

_local = threading.local()


def _checker() -> Any:
    """ICU's spoof checker, one per thread (ICU allows sharing a const one;
    a thread's own costs nothing and needs no reasoning)."""
    checker = getattr(_local, "checker", None)
    if checker is None:
        import icu

        checker = icu.SpoofChecker()
        _local.checker = checker
    return checker


def _bounded(text: str) -> str:
    return text[:MAX_TEXT]


def _visible(text: str) -> str:
    """Without format characters (zero-width spaces and joiners, soft
    hyphens, bidi controls: Unicode category Cf) and variation selectors,
    which a reader does not see."""
    return "".join(c for c in text if unicodedata.category(c) != "Cf"
                   and not 0xFE00 <= ord(c) <= 0xFE0F)


@lru_cache(maxsize=_CACHE)
def skeleton(text: str) -> str:
    """The UTS #39 skeleton of ``text`` (its first :data:`MAX_TEXT`
    characters): two strings are confusable when their skeletons are equal.
    Case is kept, as in the standard."""
    return str(_checker().getSkeleton(0, _bounded(text)))


@lru_cache(maxsize=_CACHE)
def fold(text: str) -> str:
    """The key under which case, compatibility forms, invisible characters
    and confusable letters do not matter: ``fold("P\u0430yPa1") == fold("paypal")``."""
    text = _visible(unicodedata.normalize("NFKC", _bounded(text))).casefold()
    return skeleton(text).casefold()


_WORD = re.compile(r"[^\W_]+")
# Where a CamelCase word splits ("PayPalSecurity"): a lower-case letter or
# digit before an upper-case one.
_CAMEL = re.compile(r"(?<=[^\W\d_])(?=[A-Z][a-z])|(?<=[a-z0-9])(?=[A-Z])")


@lru_cache(maxsize=_CACHE)
def name_tokens(text: str) -> tuple[str, ...]:
    """The words of a display name as comparison keys: split at spaces,
    punctuation and CamelCase, each word folded, combining marks dropped
    (``"Jos\u00e9  SMITH"`` -> ``("jose", "srnith")``: the skeleton of ``m`` is
    ``rn``)."""
    text = _visible(unicodedata.normalize("NFKC", _bounded(text)))
    words = []
    for word in _WORD.findall(_CAMEL.sub(" ", text)):
        key = "".join(c for c in fold(word) if c.isalnum())
        if key:
            words.append(key)
    return tuple(words)


@lru_cache(maxsize=_CACHE)
def name_keys(text: str) -> frozenset[str]:
    """Keys of a display name with spaces and punctuation removed: two names
    look the same when their key sets meet. Both orders of case folding and
    skeleton count, because the skeleton keeps case: ``IBM``'s includes
    ``lbm`` (the skeleton of capital I is l) and ``ibm``."""
    text = _visible(unicodedata.normalize("NFKC", _bounded(text)))

    def squeeze(value: str) -> str:
        return "".join(c for c in unicodedata.normalize("NFD", value) if c.isalnum())

    keys = {squeeze(fold(text)), squeeze(skeleton(skeleton(text).casefold()).casefold())}
    keys.discard("")
    return frozenset(keys)


def confusable(a: str, b: str) -> bool:
    """Whether a reader may take ``a`` for ``b`` (their folded keys are equal)."""
    return fold(a) == fold(b)


@lru_cache(maxsize=_CACHE)
def mixed_script(text: str) -> bool:
    """Whether ``text`` mixes scripts beyond UTS #39's highly restrictive
    level (one script, or Latin with Han and Japanese kana or with Han and
    Korean Hangul): ``p\u0430ypal`` with a Cyrillic ``\u0430`` does, ``b\u00fccher`` and
    ``\u6771\u4eactokyo`` do not. Digits and punctuation belong to every script."""
    import icu

    checker = icu.SpoofChecker()
    checker.setChecks(icu.USpoofChecks.RESTRICTION_LEVEL)
    checker.setRestrictionLevel(icu.URestrictionLevel.HIGHLY_RESTRICTIVE)
    try:
        return bool(checker.check(_bounded(text)))
    except icu.ICUError:
        return True  # text ICU cannot check (unpaired surrogates): not one script

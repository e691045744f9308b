"""One reading of a host: in U-labels, in A-labels, its registrable domain.

What the lookalike matching, the links check and the correspondent memory
read a host as. Here, apart from :mod:`gateway.lookalike`, whose tables
(folded with PyICU) and fuzzy matching (rapidfuzz) the milter never needs:
it only reads the registrable domain of each correspondent it learns.
"""

from __future__ import annotations

import contextlib
from functools import lru_cache

import idna

from gateway.mail import registrable_domain

MAX_HOST = 253
MAX_LABELS = 16
# Hosts whose readings each process keeps (about 630 bytes a host): the
# hosts mail names again and again (newsletters, trackers, the brands',
# the freemail list the fork server reads) stay; at 65,536 a worker grew
# by 40 MB as the stream's new names filled them.
HOST_CACHE = 8192


@lru_cache(maxsize=HOST_CACHE)
def unicode_host(host: str) -> str:
    """The host in U-labels, lower case, no trailing dot, bounded
    (``xn--pypal-4ve.com`` -> ``p\u0430ypal.com``); a label that is not valid
    IDNA is kept as written."""
    labels = host.strip().rstrip(".").lower()[:MAX_HOST].split(".")[-MAX_LABELS:]
    shown = []
    for label in labels:
        if label.startswith("xn--"):
            with contextlib.suppress(idna.IDNAError, UnicodeError, ValueError):
                label = idna.decode(label)
        shown.append(label)
    return ".".join(shown)


def ascii_host(host: str) -> str:
    """A host in U-labels in A-labels (``p\u0430ypal.com`` -> ``xn--pypal-4ve.com``);
    as given when it is not IDNA (an underscore, a lone confusable)."""
    if host.isascii() and host == host.lower():
        # What IDNA gives such a host, valid or not, is the host itself
        # (tested): most hosts, without idna's pass over every label.
        return host
    try:
        return idna.encode(host, uts46=True).decode("ascii")
    except (idna.IDNAError, UnicodeError, ValueError):
        return host


@lru_cache(maxsize=HOST_CACHE)
def registrable(host: str) -> str:
    """The registrable domain (``mail.paypal.co.uk`` -> ``paypal.co.uk``), in
    U-labels; the host itself when it has none (an IP, a bare suffix)."""
    shown = unicode_host(host)
    if not shown:
        return ""
    return unicode_host(registrable_domain(ascii_host(shown)))

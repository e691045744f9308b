"""What the worker processes share: loaded once in the fork server, before
it forks them.

Each worker is a fork of the fork server (gateway.workers), so whatever the
fork server holds when it forks is the workers' too, page for page, until a
process writes to a page (copy-on-write). The spam model (its vocabulary
and weights: numpy arrays, some 7 MB, that scoring only reads) is loaded
here once, not in every worker: with two workers the three processes hold
one copy. Then :func:`gc.freeze` moves
everything loaded so far out of the collector's reach: a collection in a
worker would otherwise write to every object's header, and so copy every
page it walks.

The milter names the model in the environment before the fork server
starts (:func:`share_model`); the fork server imports this module last of
its preloaded modules. A worker takes the shared model only if it is the
one its configuration selects, by the same signature the bayes check
watches (the folder's real path and its model.json's mtime): after a
promotion or a reload that selects another model, workers load their own
copy, as they did before.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.classifier.model import SpamModel

log = logging.getLogger("gateway.workers")

ENVIRONMENT = "GATEWAY_SHARED_MODEL"
Signature = tuple[str, int | None]

_models: dict[Signature, SpamModel] = {}


def signature(location: str | Path) -> Signature:
    """A model folder's real path and its model.json's mtime (None if
    unreadable): what the bayes check compares to see a new model."""
    real = os.path.realpath(location)
    try:
        return (real, (Path(real) / "model.json").stat().st_mtime_ns)
    except OSError:
        return (real, None)


def share_model(location: str | Path | None) -> None:
    """Have the fork server load this model (None: none) when it starts."""
    if location is None:
        os.environ.pop(ENVIRONMENT, None)
    else:
        os.environ[ENVIRONMENT] = json.dumps(list(signature(location)))


def shared_model(wanted: Signature) -> SpamModel | None:
    """The model the fork server loaded, if it is the one wanted."""
    return _models.get(wanted)


def _warm_tables() -> None:
    """In the fork server: build the static tables the checks otherwise
    build in every worker on first use, so that the workers share them.

    The public suffix lists (the whole one and its ICANN section) and the
    registrable domains of the shipped brands and freemail lists, kept in
    the caches of :func:`gateway.lookalike.registrable` and its helpers:
    each worker's identity and links checks read them from these caches
    when they build their indexes. Only for modules the fork server
    preloaded (a check that is off costs nothing); a table that fails to
    build is built in each worker as before.
    """
    warmers: list[Callable[[], object]] = []
    if "gateway.mail" in sys.modules:
        from gateway.mail import _public_suffix_list

        warmers.append(_public_suffix_list)  # built once a process, on first use
    if "gateway.lookalike" in sys.modules:
        from gateway.config import IdentitySection
        from gateway.lookalike import _icann_suffixes, load_brands, load_freemail

        defaults = IdentitySection()
        warmers += [_icann_suffixes,
                    lambda: load_brands(defaults.brands),
                    lambda: load_freemail(defaults.freemail)]
    if "gateway.checks.links" in sys.modules:
        from gateway.checks.links import shipped_shorteners

        warmers.append(shipped_shorteners)
    for warm in warmers:
        try:
            warm()
        except Exception as exc:  # the workers build it themselves, as before
            log.debug("fork server: a table not prebuilt: %s: %s", type(exc).__name__, exc)


def _load_shared() -> None:
    """In the fork server: load the model the milter named, build the
    static tables, then freeze."""
    named = os.environ.get(ENVIRONMENT)
    if named:
        try:
            real, mtime = json.loads(named)
            wanted = (str(real), mtime)
            if signature(real) == wanted:  # not replaced since the milter looked
                from gateway.classifier.model import load_model

                _models[wanted] = load_model(real)
        except Exception as exc:  # a worker then loads its own and says why
            log.debug("fork server: model not preloaded: %s: %s", type(exc).__name__, exc)
    _warm_tables()
    gc.collect()
    gc.freeze()


def _in_fork_server() -> bool:
    """Whether this process is multiprocessing's fork server: started as
    ``python -c 'from multiprocessing.forkserver import main; main(...)'``,
    it imports its preloaded modules (this one last) before serving."""
    return sys.argv == ["-c"] and "multiprocessing.forkserver" in sys.modules


if _in_fork_server():
    _load_shared()

"""What every area of the console asks of a request: who is logged in, from
which address (as the trusted proxy says), whether they are an admin, and
the shared parts (config, store, console, rules) the app was made with.

The app (gateway.web.app) sets ``g.session`` and ``g.address`` before any
view runs; the areas in their own modules (lists, release requests) read
them through these functions rather than importing the app.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from flask import abort, current_app, g, request

from gateway.config import Config
from gateway.quarantine.store import QuarantineError, QuarantineStore, Record
from gateway.web.console import Console, User

ID = re.compile(r"^[0-9a-f]{20}$")  # how the console names a held message


@dataclass(frozen=True)
class Parts:
    config: Config
    store: QuarantineStore
    console: Console
    rules: Any  # gateway.policy.Rules
    policy: Any  # gateway.quarantine.release.ReleasePolicy


def parts() -> Parts:
    found = current_app.extensions["gateway"]
    return Parts(found["config"], found["store"], found["console"], found["rules"],
                 found["policy"])


def client_address() -> str:
    """The client's address, as the trusted reverse proxy says (else the peer)."""
    return g.get("address") or request.remote_addr or "?"


def current_user() -> User:
    return g.session.user


def require_admin() -> User:
    user = current_user()
    if not user.is_admin:
        abort(403, "this page is for admins")
    return user


def audit(action: str, target: str = "", detail: str = "") -> None:
    """A line in the audit trail, by the logged-in user from their address."""
    parts().console.log(current_user().name, action, target, detail, client_address())


def record_or_404(store: QuarantineStore, identifier: str) -> Record:
    """The record a console URL names by its id (never a queue id), or 404."""
    if not ID.match(identifier):
        abort(404)
    try:
        record = store.get(identifier)
    except QuarantineError:
        abort(404)
    if record.id != identifier:  # matched a queue id: not how the console names messages
        abort(404)
    return record

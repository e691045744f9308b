"""What every area of the console asks of a request: who is logged in, from
which address (as the trusted proxy says), whether they are an admin, and
the shared parts (config, store, console, rules) the app was made with.

The app (gateway.web.app) sets ``g.session`` and ``g.address`` before any
view runs (gateway.web.guard); the areas in their own modules read them
through these functions rather than importing the app.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from flask import Blueprint, abort, current_app, g, request
from flask.blueprints import BlueprintSetupState
from flask.sansio.app import App

from gateway.config import Config
from gateway.quarantine.release import ReleasePolicy
from gateway.quarantine.store import QuarantineError, QuarantineStore, Record
from gateway.ruleset import Ruleset
from gateway.web.console import Console, User
from gateway.web.render import Renderer

ID = re.compile(r"^[0-9a-f]{20}$")  # how the console names a held message


class Area(Blueprint):
    """A blueprint whose views keep the console's own endpoint names
    (``message``, not ``quarantine.message``): the templates, the public
    pages and the pages a login may return to are named by them, and they
    are older than the split into areas. An Area therefore takes no request
    hooks of its own; the app's (gateway.web.guard) cover every page."""

    def make_setup_state(self, app: App, options: dict[str, Any],
                         first_registration: bool = False) -> BlueprintSetupState:
        state = super().make_setup_state(app, options, first_registration)
        state.name = state.name_prefix = ""  # Flask joins them before the view's name
        return state


@dataclass(frozen=True)
class Parts:
    config: Config
    store: QuarantineStore
    console: Console
    rules: Ruleset
    policy: ReleasePolicy
    renderer: Renderer


def parts() -> Parts:
    found = current_app.extensions["gateway"]
    return Parts(found["config"], found["store"], found["console"], found["rules"],
                 found["policy"], found["renderer"])


def client_address() -> str:
    """The client's address, as the trusted reverse proxy says (else the peer)."""
    return g.get("address") or request.remote_addr or "?"


def current_user() -> User:
    user: User = g.session.user
    return user


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

"""The console's web app (Flask, Jinja2 templates rendered on the server):
:func:`create_app` makes the app and the parts every page shares (the
store, the console's accounts and sessions, the rules, the release policy,
the preview renderer), puts the guards on every request
(gateway.web.guard: sessions, CSRF, Origin, security headers, error
pages) and registers the areas, one blueprint each:

=============  ==============================================================
auth           /login, /logout, /account
dashboard      /
quarantine     /quarantine: the list, bulk actions, one message and its parts
feedback       /feedback: the labels' review, training jobs (admins)
admin          /admin/users, /admin/audit (admins)
lists          /admin/lists and "block this sender" (admins)
approvals      /requests: release requests
greylist       /greylist: pending triplets
recipients     /digest/<token>: recipients' links, no account
=============  ==============================================================

Each area's templates are in ``templates/<area>/``; ``base.html`` and
``error.html`` are everyone's.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

from flask import Flask, g, get_flashed_messages
from flask.sessions import SecureCookieSessionInterface
from markupsafe import Markup

from gateway.config import Config
from gateway.quarantine import requests as release_requests
from gateway.quarantine.release import ReleasePolicy
from gateway.quarantine.store import QuarantineStore
from gateway.ruleset import load_rules
from gateway.web import (
    admin,
    approvals,
    auth,
    dashboard,
    feedback,
    greylist,
    guard,
    lists,
    preview,
    quarantine,
    recipients,
)
from gateway.web.console import Console, User
from gateway.web.directory import Directory
from gateway.web.render import Renderer

HERE = Path(__file__).resolve().parent
AREAS = (auth, dashboard, quarantine, feedback, admin, greylist, recipients, lists, approvals)


class _NoticeCookies(SecureCookieSessionInterface):
    """Flask's signed cookie carries only notices (flash) and the login form's
    token; Secure exactly when the session cookie is."""

    def get_cookie_secure(self, app: Flask) -> bool:
        return guard.secure()


def create_app(config: Config, store: QuarantineStore | None = None) -> Flask:
    app = Flask("gateway.web", root_path=str(HERE), template_folder="templates",
                static_folder="static")
    if store is None:
        store = QuarantineStore(config.quarantine.url, config.quarantine.node or None)
    console = Console(store, config.web.login_attempts,
                      timedelta(minutes=config.web.session_idle_minutes),
                      timedelta(hours=config.web.session_hours),
                      directory=Directory.of(config.web))
    rules = load_rules(config.policy.rules)
    policy = ReleasePolicy.of(config, rules)
    renderer = Renderer(config.limits, config.web.preview_html_kib * 1024,
                        config.web.preview_seconds)
    app.secret_key = console.secret("cookie_secret")
    app.session_interface = _NoticeCookies()
    app.config.update(SESSION_COOKIE_NAME="gateway_notice", SESSION_COOKIE_HTTPONLY=True,
                      SESSION_COOKIE_SAMESITE="Strict", MAX_CONTENT_LENGTH=1024 * 1024,
                      TEMPLATES_AUTO_RELOAD=False)
    # What the areas read through gateway.web.access.parts().
    app.extensions["gateway"] = {"config": config, "store": store, "console": console,
                                 "rules": rules, "renderer": renderer, "policy": policy}
    # Every value a template prints, whatever page: a header byte that was
    # not UTF-8 would otherwise make the whole page fail to encode.
    app.jinja_env.finalize = _displayable
    guard.install(app, config, store, console)

    @app.context_processor
    def _template_globals() -> dict[str, Any]:
        return {"me": g.session.user if g.get("session") else None,
                "csrf": g.session.csrf if g.get("session") else "",
                "notices": get_flashed_messages(with_categories=True),
                "pending_labels": _pending_labels(console) if g.get("session") and
                g.session.user.is_admin else 0,
                "pending_requests": _pending_requests(store, g.session.user)
                if g.get("session") else 0}

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    for area in AREAS:
        app.register_blueprint(area.blueprint)
    return app


def _displayable(value: Any) -> Any:
    if isinstance(value, Markup):
        return Markup(preview.displayable(str(value)))
    return preview.displayable(value) if isinstance(value, str) else value


def _pending_labels(console: Console) -> int:
    try:
        pending: int = console.count_labels()["pending"]
        return pending
    except Exception:
        return 0


def _pending_requests(store: QuarantineStore, user: User) -> int:
    """Requests this user may decide (the navigation's count)."""
    try:
        return release_requests.count_pending(store, ("admin", "analyst") if user.is_admin
                                              else ("analyst",))
    except Exception:
        return 0

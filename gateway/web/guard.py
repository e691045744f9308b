"""The guards every page of the console passes, whatever its area.

- Every page but /login, /static, /health and the recipients' /digest
  links needs a session; admin pages need an admin (each view asks,
  gateway.web.access.require_admin). Sessions are server-side (a random
  token in an HttpOnly, SameSite=Strict cookie, Secure over HTTPS; only its
  hash in the database), end after ``[web] session_idle_minutes`` unused or
  ``session_hours`` in all, and when the user is disabled or changes
  password.
- Every POST carries the session's CSRF token (compared in constant time);
  a POST whose Origin is another site is refused as well.
- Templates autoescape; message content is never marked safe. The one place
  HTML from a message reaches a browser is /quarantine/<id>/html: sanitized
  by nh3, served with a Content-Security-Policy that allows no script and
  no load from anywhere (``sandbox`` included), shown in an
  ``<iframe sandbox>``.
- A page the console redirects to after a login (``next``) or a bulk action
  (``back``) is one of its own pages (:func:`local_target`).
- Unknown or malformed ids are 404; any other failure is a plain error page
  (the traceback goes to the log, never to the browser).
"""

from __future__ import annotations

import ipaddress
import logging
import re
import uuid
from typing import Any
from urllib.parse import urlsplit

from flask import (
    Flask,
    Response,
    abort,
    current_app,
    flash,
    g,
    redirect,
    render_template,
    request,
    url_for,
)
from flask.typing import ResponseReturnValue
from werkzeug.exceptions import HTTPException

from gateway.config import Config
from gateway.quarantine.store import QuarantineStore
from gateway.web import notices
from gateway.web.console import Console, constant_equal

log = logging.getLogger("gateway.web")
SESSION_COOKIE = "gateway_session"
DEVICE_COOKIE = "gateway_device"
PUBLIC = ("login", "static", "digest", "health")

# The app's own pages: its stylesheet and script, nothing else.
PAGE_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
               "connect-src 'self'; "
               "frame-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
# A message's HTML: no script, no load of any kind (images only as data:),
# no form, no navigation of the page around it, a sandbox of its own.
MAIL_POLICY = ("default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
               "form-action 'none'; frame-ancestors 'self'; base-uri 'none'; sandbox")
DOWNLOAD_POLICY = "default-src 'none'; sandbox"


def install(app: Flask, config: Config, store: QuarantineStore, console: Console) -> None:
    """Put the guards on every request of ``app``."""
    trusted = {ipaddress.ip_address(a) for a in config.web.trusted_proxies}

    @app.before_request
    def _identify() -> ResponseReturnValue | None:
        _forwarded(trusted, config)
        g.session = console.session(request.cookies.get(SESSION_COOKIE))
        g.csp = PAGE_POLICY
        endpoint = request.endpoint
        if endpoint is None or endpoint in PUBLIC:  # no such page: 404 for everyone
            return None
        if request.method == "POST":
            check_origin()
        if g.session is None:
            if request.method == "GET":
                return redirect(url_for("login", next=request.full_path.rstrip("?")))
            abort(403)
        if request.method == "POST":
            token = request.form.get("csrf", "")
            if not constant_equal(token, g.session.csrf):
                abort(400, "the form was stale or not from this console (CSRF token); "
                           "reload the page and try again")
        elif endpoint != "static":  # decisions on this user's release requests
            for text, category in notices.tell_in_console(store, g.session.user.name):
                flash(text, category)
        return None

    @app.after_request
    def _headers(response: Response) -> Response:
        response.headers.setdefault("Content-Security-Policy", g.get("csp", PAGE_POLICY))
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers.setdefault("Referrer-Policy", "same-origin")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers["Cross-Origin-Opener-Policy"] = "same-origin"
        response.headers["Permissions-Policy"] = "camera=(), microphone=(), geolocation=()"
        if request.endpoint != "static":
            response.headers["Cache-Control"] = "no-store"
        if secure():
            response.headers["Strict-Transport-Security"] = "max-age=31536000"
        return response

    @app.errorhandler(HTTPException)
    def _http_error(error: HTTPException) -> tuple[str, int]:
        g.csp = PAGE_POLICY
        text = error.description if error.code in (400, 403, 410, 429) else None
        return render_template("error.html", code=error.code, title=error.name,
                               text=text), error.code or 500

    @app.errorhandler(Exception)
    def _failure(error: Exception) -> tuple[str, int]:
        reference = uuid.uuid4().hex[:8]
        log.error("web: %s %s failed (ref %s)", request.method, request.path, reference,
                  exc_info=error)
        return render_template("error.html", code=500, title="Something went wrong",
                               text=f"The console could not do that. The details are in its "
                                    f"log (ref {reference})."), 500


def _forwarded(trusted: set[Any], config: Config) -> None:
    """The client's address and scheme as the trusted reverse proxy says."""
    peer = request.remote_addr or ""
    g.address, g.https = peer, request.scheme == "https"
    try:
        believed = ipaddress.ip_address(peer) in trusted
    except ValueError:
        believed = False
    if believed:
        forwarded = request.headers.get("X-Forwarded-For", "")
        if forwarded:
            g.address = forwarded.split(",")[-1].strip()[:64]
        proto = request.headers.get("X-Forwarded-Proto", "").split(",")[-1].strip().lower()
        if proto:
            g.https = proto == "https"
    g.always_secure = config.web.secure_cookies == "always"


def secure() -> bool:
    """Whether cookies go Secure: the client came over HTTPS, or the config says always."""
    return bool(g.get("https") or g.get("always_secure"))


def check_origin() -> None:
    """A browser names the page a POST came from; it must be this console."""
    origin = request.headers.get("Origin")
    if origin and origin != "null":
        if urlsplit(origin).netloc != request.host:
            abort(403, "this request came from another site")
    elif origin == "null" and request.endpoint != "digest":
        abort(403, "this request came from a sandboxed page")


# A path and query of printable ASCII, starting with one "/": no scheme, no
# host, no "//" or "/\\" (a browser reads both as another host), no backslash,
# space or control character (a browser drops a tab or newline inside a URL,
# so "/<TAB>/evil.test" would become "//evil.test").
_LOCAL_TARGET = re.compile(r"/(?![/\\])[!-\[\]-~]*")
NOT_AFTER_LOGIN = ("login", "logout", "static", "digest", "health")


def local_target(target: str | None) -> str | None:
    """``target`` if it is the address of one of this console's own pages
    (as ``next`` after a login, ``back`` after a bulk action), else None."""
    if not target or len(target) > 2000 or not _LOCAL_TARGET.fullmatch(target):
        return None
    path = urlsplit(target).path
    try:
        endpoint, _ = current_app.url_map.bind("console").match(path, method="GET")
    except HTTPException:  # no such page (404, 405) or a redirect of the router's
        return None
    return target if endpoint not in NOT_AFTER_LOGIN else None

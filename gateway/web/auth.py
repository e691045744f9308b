"""Logging in and out (``/login``, ``/logout``) and a user's own password
(``/account``).

A login is refused in one line (wrong name or password, or too many
failures from this client: Console.authenticate's limits, with
Retry-After); a browser that has logged in as a user gets a device cookie
so strangers' failures do not hold it back. Both are in the audit trail.
"""

from __future__ import annotations

import secrets

from flask import abort, flash, g, redirect, render_template, request, session, url_for
from flask.typing import ResponseReturnValue

from gateway.web.access import Area, client_address, parts
from gateway.web.console import (
    DEVICE_DAYS,
    ConsoleError,
    LoginRefused,
    constant_equal,
    password_problem,
)
from gateway.web.guard import DEVICE_COOKIE, SESSION_COOKIE, check_origin, local_target, secure

blueprint = Area("auth", __name__)


@blueprint.route("/login", methods=["GET", "POST"])
def login() -> ResponseReturnValue:
    console = parts().console
    problem = None
    status, retry_after = 200, 0
    if request.method == "POST":
        check_origin()
        if not constant_equal(request.form.get("csrf", ""), session.get("login", "-")):
            abort(400, "the login form was stale; reload the page and try again")
        name = request.form.get("name", "").strip()
        known = console.known_device(request.cookies.get(DEVICE_COOKIE), name)
        try:
            user = console.authenticate(name, request.form.get("password", ""),
                                        client_address(), known=known)
        except LoginRefused as exc:
            problem, status = str(exc), 429 if exc.retry_after else 401
            retry_after = exc.retry_after
            console.log(name[:64] or "?", "login-failed", name[:64], str(exc),
                        client_address())
        else:
            token, _ = console.open_session(user, client_address())
            console.log(user.name, "login", user.name, "", client_address())
            target = local_target(request.args.get("next")) or url_for("dashboard")
            response = redirect(target)
            response.set_cookie(SESSION_COOKIE, token, httponly=True, samesite="Strict",
                                secure=secure(), path="/")
            # This browser has logged in as this user: the login limits
            # for strangers do not hold it back (see Console._wait).
            response.set_cookie(DEVICE_COOKIE, console.device_token(user.name),
                                max_age=DEVICE_DAYS * 86400, httponly=True,
                                samesite="Strict", secure=secure(), path="/login")
            session.pop("login", None)
            return response
    session["login"] = secrets.token_urlsafe(24)
    page = render_template("auth/login.html", problem=problem, login_csrf=session["login"])
    headers = {"Retry-After": str(retry_after)} if retry_after else {}
    return page, status, headers


@blueprint.post("/logout")
def logout() -> ResponseReturnValue:
    console = parts().console
    token = request.cookies.get(SESSION_COOKIE)
    if token:
        console.close_session(token)
    console.log(g.session.user.name, "logout", g.session.user.name, "", client_address())
    response = redirect(url_for("login"))
    response.delete_cookie(SESSION_COOKIE, path="/", samesite="Strict", secure=secure(),
                           httponly=True)
    return response


@blueprint.route("/account", methods=["GET", "POST"])
def account() -> ResponseReturnValue:
    console = parts().console
    me = g.session.user
    if request.method == "POST":
        current = request.form.get("current", "")
        new = request.form.get("password", "")
        try:
            console.authenticate(me.name, current, client_address(), known=True)
            if new != request.form.get("again", ""):
                raise ConsoleError("the two new passwords differ")
            if (problem := password_problem(new)) is not None:
                raise ConsoleError(problem)
            console.set_password(me.name, new)
        except ConsoleError as exc:
            flash(str(exc), "error")
            return redirect(url_for("account"))
        console.log(me.name, "password", me.name, "", client_address())
        flash("password changed; log in again", "ok")
        return redirect(url_for("login"))
    return render_template("auth/account.html")

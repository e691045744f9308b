"""The console's accounts (``/admin/users``) and its audit trail
(``/admin/audit``), admins only. An admin cannot disable or demote
themselves here, so the console always keeps one."""

from __future__ import annotations

from flask import abort, flash, g, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue

from gateway.web.access import Area, client_address, parts, require_admin
from gateway.web.console import ROLES, ConsoleError
from gateway.web.filters import bounded_int

blueprint = Area("admin", __name__)


@blueprint.get("/admin/users")
def users_page() -> str:
    require_admin()
    return render_template("admin/users.html", users=parts().console.users(), roles=ROLES)


@blueprint.post("/admin/users")
def users_add() -> ResponseReturnValue:
    require_admin()
    console = parts().console
    me = g.session.user
    name = request.form.get("name", "").strip()
    role = request.form.get("role", "")
    try:
        console.add_user(name, role, request.form.get("password", ""))
    except ConsoleError as exc:
        flash(str(exc), "error")
    else:
        console.log(me.name, "user-add", name, role, client_address())
        flash(f"user {name} added ({role})", "ok")
    return redirect(url_for("users_page"))


@blueprint.post("/admin/users/<name>")
def users_change(name: str) -> ResponseReturnValue:
    require_admin()
    console = parts().console
    me = g.session.user
    action = request.form.get("action", "")
    try:
        if action in ("disable", "enable", "analyst") and name == me.name:
            raise ConsoleError("you cannot disable or demote yourself here")
        if action == "disable":
            console.set_disabled(name, True)
        elif action == "enable":
            console.set_disabled(name, False)
        elif action in ROLES:
            console.set_role(name, action)
        elif action == "password":
            console.set_password(name, request.form.get("password", ""))
        else:
            abort(400, "unknown action")
    except ConsoleError as exc:
        flash(str(exc), "error")
    else:
        console.log(me.name, f"user-{action}", name, "", client_address())
        flash(f"user {name}: {action} done", "ok")
    return redirect(url_for("users_page"))


@blueprint.get("/admin/audit")
def audit_page() -> str:
    require_admin()
    page = bounded_int(request.args.get("page"), 1, 1, 10000)
    return render_template("admin/audit.html",
                           entries=parts().console.audit_trail(100, (page - 1) * 100),
                           page=page)

"""Release requests in the console (``/requests``): what analysts and
recipients asked to be released, for those who may approve it.

Admins see every request; analysts those an analyst may approve
(``[release] approve = "analyst"``: recipients' requests). Approving
releases the message to the request's recipients (a virus or an admin-only
symbol needs the same confirmation as a release); refusing needs a reason.
Both go into the message's history and the audit trail, and the requester
is told: by mail for a recipient, on their next page for a console user.
"""

from __future__ import annotations

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for

from gateway.quarantine import requests
from gateway.quarantine.release import ReleaseError, admin_only_symbols, approve_request, may_decide
from gateway.quarantine.requests import RequestError
from gateway.web import notices
from gateway.web.access import audit, current_user, parts

blueprint = Blueprint("approvals", __name__)
STATES = ("pending", "approved", "refused", "all")


@blueprint.get("/requests")
def page():
    me = current_user()
    found = parts()
    state = request.args.get("state", "pending")
    state = state if state in STATES else "pending"
    shown = [item for item in requests.listing(found.store, None if state == "all" else state,
                                               limit=300)
             if me.is_admin or item.approver != "admin" or item.requester == me.name]
    dangerous = {}
    for item in shown:
        if item.state == "pending" and item.message not in dangerous:
            try:
                record = found.store.get(item.message)
            except Exception:  # removed meanwhile: nothing to confirm
                continue
            dangerous[item.message] = admin_only_symbols(record, found.rules.release)
    return render_template("approvals/requests.html", items=shown, state=state, states=STATES,
                           dangerous=dangerous,
                           may_decide=lambda item: may_decide(me.role, item.approver))


@blueprint.post("/requests/<int:number>/approve")
def approve(number: int):
    me = current_user()
    found = parts()
    reason = request.form.get("reason", "").strip()[:500]
    try:
        done = approve_request(found.store, number, found.policy, me.name, me.role, reason=reason,
                               confirmed=request.form.get("confirm") == "yes")
    except RequestError as exc:
        if "only an admin" in str(exc):
            abort(403, str(exc))
        flash(str(exc), "error")
    except ReleaseError as exc:
        audit("release-refused", f"request #{number}", str(exc))
        flash(str(exc), "error")
    else:
        queued = f", queued as {done.queue_id}" if done and done.queue_id else ""
        audit("release-approve", f"request #{number}", f"{reason}{queued}".strip(", "))
        flash(f"request #{number} approved: released"
              + (f" to {', '.join(done.accepted)}{queued}" if done else " already"), "ok")
        _tell_later()
    return redirect(_back())


@blueprint.post("/requests/<int:number>/refuse")
def refuse(number: int):
    me = current_user()
    found = parts()
    try:
        item = requests.get(found.store, number)
    except RequestError:
        abort(404)
    if not may_decide(me.role, item.approver):
        abort(403, f"release request #{number}: only an admin may refuse it")
    try:
        requests.refuse(found.store, number, me.name, request.form.get("reason", ""))
    except RequestError as exc:
        flash(str(exc), "error")
    else:
        audit("release-refuse", f"request #{number}", request.form.get("reason", "")[:500])
        flash(f"request #{number} refused; {item.requester} is told why", "ok")
        _tell_later()
    return redirect(_back())


def _back() -> str:
    """Back to the message's page when the decision was made there."""
    identifier = request.form.get("message", "")
    if identifier and len(identifier) == 20 and identifier.isalnum():
        return url_for("message", identifier=identifier)
    return url_for("approvals.page")


def _tell_later() -> None:
    found = parts()
    notices.tell_by_mail_later(found.store, found.config)

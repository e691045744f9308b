"""The Lists page (``/admin/lists``): the managed allow and block lists in
the store's database, which the milter's workers apply within seconds,
beside gateway.toml's ``[lists]``; and "block this sender" from a held
message's page.

Admins only, every change in the audit trail. The entries are added,
removed and expired with the store's functions ``gateway list`` uses, so
the console validates values, scopes, public replies and expiry dates the
same way (a public suffix only when the admin ticks "add it all the same",
as ``--force``), and the owner is the logged-in admin.
"""

from __future__ import annotations

import contextlib

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for

from gateway.commands.lists import describe
from gateway.quarantine.lists import LIST_KINDS, PublicSuffixEntry, parse_expiry
from gateway.quarantine.store import QuarantineError
from gateway.web.access import audit, parts, record_or_404, require_admin

blueprint = Blueprint("lists", __name__)
SHOWN = 2000  # entries on the page; the command line shows them all


@blueprint.get("/admin/lists")
def page():
    require_admin()
    found = parts()
    kind = request.args.get("kind") if request.args.get("kind") in LIST_KINDS else None
    entries = found.store.list_entries(kind)
    expired = sum(1 for e in entries if not e.active())
    return render_template("lists/lists.html", entries=entries[:SHOWN], more=len(entries) > SHOWN,
                           kinds=LIST_KINDS, kind=kind, expired=expired,
                           lists=found.config.lists, source=found.config.source)


@blueprint.post("/admin/lists")
def add():
    me = require_admin()
    form = request.form
    kind = form.get("kind", "")
    try:
        entry, new = _add(kind, form.get("value", ""), form.get("scope", ""), me.name,
                          form.get("reason", ""), form.get("reply", ""),
                          form.get("expires", ""), form.get("force") == "yes")
    except ValueError as exc:
        flash(str(exc), "error")
        return redirect(url_for("lists.page"))
    audit("list-add" if new else "list-renew", f"{entry.kind} {entry.value}",
          describe(entry))
    flash(f"{'added' if new else 'renewed'} {describe(entry)}", "ok")
    return redirect(url_for("lists.page"))


@blueprint.post("/admin/lists/<int:number>/remove")
def remove(number: int):
    require_admin()
    store = parts().store
    entry = store.get_list_entry(number)
    if entry is None or not store.remove_list_entry(number):
        flash(f"no list entry {number} (removed meanwhile?)", "error")
    else:
        audit("list-remove", f"{entry.kind} {entry.value}", describe(entry))
        flash(f"removed {describe(entry)}", "ok")
    return redirect(url_for("lists.page"))


@blueprint.post("/admin/lists/expire")
def expire():
    require_admin()
    gone = parts().store.expire_list_entries()
    for entry in gone:
        audit("list-expire", f"{entry.kind} {entry.value}", describe(entry))
    flash(f"{len(gone)} expired entr{'y' if len(gone) == 1 else 'ies'} removed", "ok")
    return redirect(url_for("lists.page"))


@blueprint.post("/quarantine/<identifier>/block")
def block_sender(identifier: str):
    """Block a held message's envelope sender (the address, or its domain
    and subdomains) for all mail or for one of its recipients."""
    me = require_admin()
    store = parts().store
    record = record_or_404(store, identifier)
    back = redirect(url_for("message", identifier=record.id))
    sender = (record.sender or "").strip()
    if "@" not in sender:
        flash("this message has no sender address to block (MAIL FROM:<>)", "error")
        return back
    what = request.form.get("what", "address")
    value = sender if what == "address" else sender.rpartition("@")[2]
    scope = request.form.get("scope", "")
    if scope and scope not in record.recipients:
        abort(400, "block for all mail, or for one of this message's recipients")
    reason = request.form.get("reason", "").strip() or f"held message {record.id}"
    try:
        entry, new = _add("block-sender", value, scope, me.name, reason,
                          request.form.get("reply", ""), request.form.get("expires", ""),
                          request.form.get("force") == "yes")
    except ValueError as exc:
        flash(str(exc), "error")
        return back
    with contextlib.suppress(QuarantineError):  # the entry matters; the audit has it too
        store.record_event(record.id, me.name, "sender-blocked", describe(entry), reason)
    audit("list-add" if new else "list-renew", f"{entry.kind} {entry.value}",
          f"{describe(entry)}; from {record.id}")
    flash(f"{'added' if new else 'renewed'} {describe(entry)}: the gateway applies it within "
          "seconds", "ok")
    return back


def _add(kind: str, value: str, scope: str, owner: str, reason: str, reply: str,
         expires: str, force: bool):
    """One entry through the store, as ``gateway list add`` adds it; raises
    ValueError with the line for the page."""
    if kind not in LIST_KINDS:
        raise ValueError(f"choose a kind: {', '.join(LIST_KINDS)}")
    try:
        until = parse_expiry(expires)
    except ValueError as exc:
        raise ValueError(f"expires {exc}") from None
    try:
        return parts().store.add_list_entry(
            kind, value.strip()[:300], owner=owner, reason=reason.strip()[:1000],
            scope=scope.strip()[:300], expires=until, reply=reply, force=force)
    except PublicSuffixEntry as exc:
        raise ValueError(f"{kind}: {exc}; tick \"add it all the same\" to add it") from None
    except ValueError as exc:
        raise ValueError(f"{kind}: {exc}") from None

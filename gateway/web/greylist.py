"""Greylisting in the console (``/greylist``): the pending triplets
(gateway.greylist, in the store every node shares), and passing one at
once so the sender's next retry is accepted."""

from __future__ import annotations

from flask import flash, g, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue

from gateway.greylist import GreylistStore, Triplet
from gateway.web.access import Area, client_address, parts

blueprint = Area("greylist", __name__)


@blueprint.get("/greylist")
def greylist_page() -> str:
    found = parts()
    query = request.args.get("q", "").strip()[:200]
    entries = GreylistStore(found.store.engine, found.config.greylist, found.store.node).entries(
        pending_only=True, match=query, limit=200)
    return render_template("greylist/greylist.html", entries=entries, query=query,
                           enabled=found.config.greylist.enabled)


@blueprint.post("/greylist/pass")
def greylist_pass() -> ResponseReturnValue:
    found = parts()
    me = g.session.user
    triplet = Triplet(request.form.get("client", "")[:255],
                      request.form.get("sender", "")[:320],
                      request.form.get("recipient", "")[:320])
    passed = GreylistStore(found.store.engine, found.config.greylist,
                           found.store.node).pass_now([triplet])
    if passed:
        found.console.log(me.name, "greylist-pass", triplet.describe(), "", client_address())
        flash(f"passed: {triplet.describe()}; the sender's next retry is accepted", "ok")
    else:
        flash("that triplet is no longer pending", "error")
    return redirect(url_for("greylist_page"))

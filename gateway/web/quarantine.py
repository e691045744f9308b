"""The quarantine in the console: the list with its filters and bulk
actions (``/quarantine``), and one message's page with its safe preview,
sanitized HTML, raw source, attachments, release, delete and label.

A virus's or an admin-only message's attachments and source are an
admin's to download, after confirming, like its release; every view and
download of content is in the audit trail.
"""

from __future__ import annotations

import io

from flask import Response, abort, flash, g, redirect, render_template, request, send_file, url_for
from flask.typing import ResponseReturnValue

from gateway.quarantine import requests as release_requests
from gateway.quarantine.release import (
    ReleaseError,
    admin_only_symbols,
    may_decide,
    may_release,
    release_or_request,
)
from gateway.quarantine.requests import RequestError
from gateway.quarantine.store import SORTS, STATES, QuarantineError, QuarantineStore, Record
from gateway.web import notices, preview, stats
from gateway.web.access import ID, Area, client_address, parts, record_or_404
from gateway.web.console import ConsoleError
from gateway.web.filters import page_link, read_filters
from gateway.web.guard import DOWNLOAD_POLICY, MAIL_POLICY, local_target

blueprint = Area("quarantine", __name__)
RAW_SHOWN = 2 * 1024 * 1024  # of the raw source on its page; the download has it all


# -- the list --------------------------------------------------------------------

@blueprint.get("/quarantine")
def listing() -> str:
    found = parts()
    store = found.store
    filters, problems, form = read_filters(request.args, found.config.web.page_size)
    for problem in problems:
        flash(problem, "error")
    page = filters.offset // filters.limit + 1
    total = store.count_matching(filters)
    records = store.records(filters)
    pages = max(1, -(-total // filters.limit))
    return render_template(
        "quarantine/list.html", records=records, total=total, page=page, pages=pages,
        form=form, sorts=SORTS, states=STATES, nodes=stats.nodes(store),
        admin_only={r.id: admin_only_symbols(r, found.rules.release) for r in records},
        requested=release_requests.pending_by_message(store, [r.id for r in records]),
        link=lambda **changes: page_link(form, **changes),
        sort_link=lambda column: page_link(form, sort=column, page=None, order=(
            "asc" if form.get("sort", "created") == column and
            form.get("order", "desc") == "desc" else "desc")),
        top=lambda r: sorted(r.symbols, key=lambda s: -s["score"])[:3])


@blueprint.post("/quarantine/bulk")
def bulk() -> ResponseReturnValue:
    found = parts()
    store, console = found.store, found.console
    ids = [i for i in request.form.getlist("id") if ID.match(i)][:500]
    action = request.form.get("action", "")
    reason = request.form.get("reason", "").strip()[:500]
    back = local_target(request.form.get("back")) or url_for("listing")
    if not ids:
        flash("select messages first", "error")
        return redirect(back)
    me = g.session.user
    done, requested, failed = 0, 0, []
    for identifier in dict.fromkeys(ids):
        try:
            record = store.get(identifier)
            if action == "release":
                outcome = release_or_request(store, record, found.policy, me.name, me.role,
                                             reason=reason)
                if isinstance(outcome, release_requests.Request):
                    requested += 1
            elif action == "delete":
                _delete(store, record, me.name, reason)
            elif action in ("spam", "ham"):
                console.add_label(record.id, action, "analyst", me.name, reason)
            else:
                abort(400, "unknown action")
            done += 1
            console.log(me.name, f"bulk-{action}", record.id, reason, client_address())
        except (QuarantineError, ReleaseError, ConsoleError, RequestError) as exc:
            failed.append(str(exc))
    verb = {"release": "released", "delete": "deleted", "spam": "labelled spam",
            "ham": "labelled not spam"}[action]
    if done - requested:
        flash(f"{done - requested} message{'s' if done - requested != 1 else ''} {verb}"
              + (" (labels wait for an admin's review)" if action in ("spam", "ham")
                 else ""), "ok")
    if requested:
        flash(f"release requested for {requested} message{'s' if requested != 1 else ''}"
              " (an admin approves; you will see the decision here)", "ok")
    for problem in failed[:20]:
        flash(problem, "error")
    return redirect(back)


# -- one message -----------------------------------------------------------------

@blueprint.get("/quarantine/<identifier>")
def message(identifier: str) -> str:
    found = parts()
    store = found.store
    record = record_or_404(store, identifier)
    raw = store.raw(record.id)
    made = found.renderer.render(f"{record.id}:{record.sha256}", bytes(raw)) \
        if raw is not None else None
    dangerous = admin_only_symbols(record, found.rules.release)
    me = g.session.user
    needed = found.policy.approver(record)
    asked = release_requests.listing(store, None, message=record.id, limit=50)
    return render_template(
        "quarantine/message.html", r=record, preview=made.preview if made else None,
        sanitized=made.sanitized if made else None,
        preview_problem=made.problem if made else None, dangerous=dangerous,
        symbols=sorted(record.symbols, key=lambda s: -abs(s["score"])),
        labels=found.console.labels(state=None, message=record.id),
        may_release=raw is not None,
        release_now=may_release(me.role, needed), needed=needed,
        requests=asked, may_decide=may_decide(me.role, needed),
        pending_to={a: q for q in asked if q.state == "pending" for a in q.recipients})


@blueprint.get("/quarantine/<identifier>/html")
def message_html(identifier: str) -> ResponseReturnValue:
    found = parts()
    record = record_or_404(found.store, identifier)
    raw = found.store.raw(record.id)
    made = found.renderer.render(f"{record.id}:{record.sha256}", bytes(raw)) \
        if raw is not None else None
    if made is None or made.sanitized is None:
        abort(404)
    clean = made.sanitized
    g.csp = MAIL_POLICY
    response = Response(
        "<!doctype html><html><head><meta charset=\"utf-8\"><meta name=\"referrer\" "
        "content=\"no-referrer\"></head><body>" + clean.html + "</body></html>",
        mimetype="text/html")
    response.headers["X-Frame-Options"] = "SAMEORIGIN"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


@blueprint.route("/quarantine/<identifier>/raw", methods=["GET", "POST"])
def message_raw(identifier: str) -> ResponseReturnValue:
    found = parts()
    record = record_or_404(found.store, identifier)
    raw = found.store.raw(record.id)
    if raw is None:
        abort(410, f"{record.state}: the message's content is gone")
    if request.values.get("download"):
        confirmed = _may_download(record, "source")
        found.console.log(g.session.user.name, "download", record.id, f"source{confirmed}",
                          client_address())
        g.csp = DOWNLOAD_POLICY
        return Response(bytes(raw), mimetype="application/octet-stream", headers={
            "Content-Disposition": f'attachment; filename="{record.id}.eml"'})
    found.console.log(g.session.user.name, "view-raw", record.id, "", client_address())
    data = bytes(raw)
    text = data[:RAW_SHOWN].decode("utf-8", "replace")
    return render_template("quarantine/raw.html", r=record, text=text,
                           cut=len(data) > RAW_SHOWN and RAW_SHOWN // 1024,
                           dangerous=admin_only_symbols(record, found.rules.release))


@blueprint.route("/quarantine/<identifier>/attachment/<int:index>", methods=["GET", "POST"])
def attachment(identifier: str, index: int) -> ResponseReturnValue:
    found = parts()
    record = record_or_404(found.store, identifier)
    raw = found.store.raw(record.id)
    attached = preview.attachment_bytes(bytes(raw), index, found.config.limits) \
        if raw is not None else None
    if attached is None:
        abort(404)
    part, data = attached
    name = preview.displayable(part.name)
    confirmed = _may_download(record, f"attachment {index}: {name}")
    found.console.log(g.session.user.name, "download", record.id,
                      f"attachment {index}: {name}{confirmed}", client_address())
    g.csp = DOWNLOAD_POLICY
    # Its original name, made safe to save; never opened by the browser
    # (octet-stream, attachment). Flask writes a non-ASCII name as RFC
    # 6266's filename* with an ASCII fallback.
    return send_file(io.BytesIO(data), mimetype="application/octet-stream",
                     as_attachment=True,
                     download_name=preview.download_name(part.name, index),
                     etag=False, max_age=0)


def _may_download(record: Record, what: str) -> str:
    """A virus's or admin-only mail's attachments and source are an
    admin's to download, after confirming (a POST from the message's
    page), like its release; refusals are audited too. Returns what the
    audit line adds."""
    found = parts()
    dangerous = admin_only_symbols(record, found.rules.release)
    if not dangerous:
        return ""
    me, carries = g.session.user, ", ".join(dangerous)
    if not me.is_admin:
        found.console.log(me.name, "download-refused", record.id,
                          f"{what}; carries {carries}", client_address())
        abort(403, f"this message carries {carries}: only an admin may download its "
                   "attachments or source")
    if request.method != "POST" or request.form.get("confirm") != "yes":
        abort(403, f"this message carries {carries}: download it from the message's page, "
                   "after confirming")
    found.store.record_event(record.id, me.name, "downloaded", f"{what} (carries {carries})")
    return f" (confirmed: carries {carries})"


@blueprint.post("/quarantine/<identifier>/release")
def release_one(identifier: str) -> ResponseReturnValue:
    found = parts()
    store, console = found.store, found.console
    record = record_or_404(store, identifier)
    me = g.session.user
    chosen = request.form.getlist("rcpt")
    reason = request.form.get("reason", "").strip()[:500]
    if not chosen:
        flash("choose at least one recipient", "error")
        return redirect(url_for("message", identifier=record.id))
    try:
        done = release_or_request(store, record, found.policy, me.name, me.role, to=chosen,
                                  reason=reason, force=request.form.get("again") == "yes",
                                  confirmed=request.form.get("confirm") == "yes")
    except (ReleaseError, RequestError) as exc:
        console.log(me.name, "release-refused", record.id, str(exc), client_address())
        flash(str(exc), "error")
    else:
        if isinstance(done, release_requests.Request):
            console.log(me.name, "release-request", record.id,
                        f"request #{done.id}: to {', '.join(done.recipients)}; {reason}"
                        .rstrip("; "), client_address())
            flash(f"release to {', '.join(done.recipients)} requested (#{done.id}): "
                  f"an {done.approver} approves it; you will see the decision here", "ok")
            return redirect(url_for("message", identifier=record.id))
        if done.settled:
            notices.tell_by_mail_later(store, found.config)
        queued = f", queued as {done.queue_id}" if done.queue_id else ""
        console.log(me.name, "release", record.id,
                    f"to {', '.join(done.accepted)}{queued}; {reason}".rstrip("; "),
                    client_address())
        flash(f"released to {', '.join(done.accepted)}{queued}", "ok")
    return redirect(url_for("message", identifier=record.id))


@blueprint.post("/quarantine/<identifier>/delete")
def delete_one(identifier: str) -> ResponseReturnValue:
    found = parts()
    record = record_or_404(found.store, identifier)
    me = g.session.user
    reason = request.form.get("reason", "").strip()[:500]
    try:
        _delete(found.store, record, me.name, reason)
    except QuarantineError as exc:
        flash(str(exc), "error")
    else:
        found.console.log(me.name, "delete", record.id, reason, client_address())
        flash("deleted: the content is gone, the record and its history stay", "ok")
    return redirect(url_for("message", identifier=record.id))


@blueprint.post("/quarantine/<identifier>/label")
def label_one(identifier: str) -> ResponseReturnValue:
    found = parts()
    record = record_or_404(found.store, identifier)
    me = g.session.user
    label = request.form.get("label", "")
    note = request.form.get("note", "").strip()[:500]
    try:
        number, outcome = found.console.add_label(record.id, label, "analyst", me.name, note)
    except ConsoleError as exc:
        flash(str(exc), "error")
    else:
        found.console.log(me.name, "label", record.id, f"{label} (#{number}, {outcome})",
                          client_address())
        flash(f"labelled {'spam' if label == 'spam' else 'not spam'}: waiting for an "
              "admin's review (feedback queue)", "ok")
    return redirect(url_for("message", identifier=record.id))


def _delete(store: QuarantineStore, record: Record, who: str, reason: str) -> None:
    if record.state == "deleted":
        raise QuarantineError(f"{record.id}: already deleted")
    store.change_state(record.id, "deleted", who, "deleted", "", drop_body=True, reason=reason)

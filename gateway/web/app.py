"""The console's web app (Flask, Jinja2 templates rendered on the server).

Safety rules every route follows:

- Every page but /login, /static and the recipients' /digest links needs a
  session; admin pages need an admin. Sessions are server-side (a random
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
- Unknown or malformed ids are 404; any other failure is a plain error page
  (the traceback goes to the log, never to the browser).
"""

from __future__ import annotations

import io
import ipaddress
import logging
import re
import secrets
import threading
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

from flask import (
    Flask,
    Response,
    abort,
    current_app,
    flash,
    g,
    get_flashed_messages,
    redirect,
    render_template,
    request,
    send_file,
    session,
    url_for,
)
from flask.sessions import SecureCookieSessionInterface
from markupsafe import Markup
from werkzeug.exceptions import HTTPException

from gateway.config import Config
from gateway.quarantine import requests as release_requests
from gateway.quarantine.release import (
    ReleaseError,
    ReleasePolicy,
    admin_only_symbols,
    may_decide,
    may_release,
    release_or_request,
)
from gateway.quarantine.requests import RequestError
from gateway.quarantine.store import (
    SORTS,
    STATES,
    Filters,
    QuarantineError,
    QuarantineStore,
    Record,
)
from gateway.ruleset import load_rules
from gateway.web import approvals, charts, lists, notices, preview, stats, training
from gateway.web.access import ID
from gateway.web.access import client_address as _address
from gateway.web.access import record_or_404 as _record
from gateway.web.access import require_admin as _admin
from gateway.web.console import (
    DEVICE_DAYS,
    ROLES,
    Console,
    ConsoleError,
    LoginRefused,
    constant_equal,
    password_problem,
)
from gateway.web.digest import (
    LinkError,
    check_form_token,
    check_link,
    form_token,
    use_link,
)
from gateway.web.directory import Directory
from gateway.web.render import Renderer

log = logging.getLogger("gateway.web")
HERE = Path(__file__).resolve().parent
SESSION_COOKIE = "gateway_session"
DEVICE_COOKIE = "gateway_device"
PUBLIC = ("login", "static", "digest", "health")
RAW_SHOWN = 2 * 1024 * 1024  # of the raw source on its page; the download has it all

# The app's own pages: its stylesheet and script, nothing else.
PAGE_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
               "connect-src 'self'; "
               "frame-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
# A message's HTML: no script, no load of any kind (images only as data:),
# no form, no navigation of the page around it, a sandbox of its own.
MAIL_POLICY = ("default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
               "form-action 'none'; frame-ancestors 'self'; base-uri 'none'; sandbox")
DOWNLOAD_POLICY = "default-src 'none'; sandbox"


class _NoticeCookies(SecureCookieSessionInterface):
    """Flask's signed cookie carries only notices (flash) and the login form's
    token; Secure exactly when the session cookie is."""

    def get_cookie_secure(self, app: Flask) -> bool:
        return _secure()


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
    app.extensions["gateway"] = {"config": config, "store": store, "console": console,
                                 "rules": rules, "renderer": renderer, "policy": policy}
    # Every value a template prints, whatever page: a header byte that was
    # not UTF-8 would otherwise make the whole page fail to encode.
    app.jinja_env.finalize = _displayable
    trusted = {ipaddress.ip_address(a) for a in config.web.trusted_proxies}

    # -- every request ---------------------------------------------------------------

    @app.before_request
    def _identify() -> Response | None:
        _forwarded(trusted, config)
        g.session = console.session(request.cookies.get(SESSION_COOKIE))
        g.csp = PAGE_POLICY
        endpoint = request.endpoint
        if endpoint is None or endpoint in PUBLIC:  # no such page: 404 for everyone
            return None
        if request.method == "POST":
            _check_origin()
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
        if _secure():
            response.headers["Strict-Transport-Security"] = "max-age=31536000"
        return response

    @app.context_processor
    def _template_globals() -> dict[str, Any]:
        return {"me": g.session.user if g.get("session") else None,
                "csrf": g.session.csrf if g.get("session") else "",
                "notices": get_flashed_messages(with_categories=True),
                "pending_labels": _pending_labels(console) if g.get("session") and
                g.session.user.is_admin else 0,
                "pending_requests": _pending_requests(store, g.session.user)
                if g.get("session") else 0}

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

    # -- logging in ------------------------------------------------------------------

    @app.route("/login", methods=["GET", "POST"])
    def login():
        problem = None
        status, retry_after = 200, 0
        if request.method == "POST":
            _check_origin()
            if not constant_equal(request.form.get("csrf", ""), session.get("login", "-")):
                abort(400, "the login form was stale; reload the page and try again")
            name = request.form.get("name", "").strip()
            known = console.known_device(request.cookies.get(DEVICE_COOKIE), name)
            try:
                user = console.authenticate(name, request.form.get("password", ""),
                                            _address(), known=known)
            except LoginRefused as exc:
                problem, status = str(exc), 429 if exc.retry_after else 401
                retry_after = exc.retry_after
                console.log(name[:64] or "?", "login-failed", name[:64], str(exc), _address())
            else:
                token, _ = console.open_session(user, _address())
                console.log(user.name, "login", user.name, "", _address())
                target = _local(request.args.get("next")) or url_for("dashboard")
                response = redirect(target)
                response.set_cookie(SESSION_COOKIE, token, httponly=True, samesite="Strict",
                                    secure=_secure(), path="/")
                # This browser has logged in as this user: the login limits
                # for strangers do not hold it back (see Console._wait).
                response.set_cookie(DEVICE_COOKIE, console.device_token(user.name),
                                    max_age=DEVICE_DAYS * 86400, httponly=True,
                                    samesite="Strict", secure=_secure(), path="/login")
                session.pop("login", None)
                return response
        session["login"] = secrets.token_urlsafe(24)
        page = render_template("login.html", problem=problem, login_csrf=session["login"])
        headers = {"Retry-After": str(retry_after)} if retry_after else {}
        return page, status, headers

    @app.post("/logout")
    def logout():
        token = request.cookies.get(SESSION_COOKIE)
        if token:
            console.close_session(token)
        console.log(g.session.user.name, "logout", g.session.user.name, "", _address())
        response = redirect(url_for("login"))
        response.delete_cookie(SESSION_COOKIE, path="/", samesite="Strict", secure=_secure(),
                               httponly=True)
        return response

    @app.get("/health")
    def health():
        return {"status": "ok"}

    # -- dashboard -------------------------------------------------------------------

    @app.get("/")
    def dashboard():
        labels, series = stats.held_per_day(store)
        top = stats.top_symbols(store)
        states = store.count_by_state()
        model = stats.model_in_use(config)
        return render_template(
            "dashboard.html", states=states, model=model, fleet=_fleet(store),
            per_day=charts.stacked_bars("Messages held and kept-rejected per day", labels,
                                        series),
            top_chart=charts.horizontal_bars("Top symbols, last 7 days", top),
            state_chart=charts.horizontal_bars("Quarantine by state", list(states.items())),
            model_chart=charts.horizontal_bars(
                "Model figures (cross-validation mean)",
                [(f["label"], f["mean"] * 100) for f in model.get("figures", [])], unit="%",
                color=charts.COLORS["bar"], digits=2),
            labels=console.count_labels(), total=sum(series["quarantine"]) +
            sum(series["reject"]))

    # -- the list --------------------------------------------------------------------

    @app.get("/quarantine")
    def listing():
        filters, problems, form = _filters(request.args, config.web.page_size)
        for problem in problems:
            flash(problem, "error")
        page = filters.offset // filters.limit + 1
        total = store.count_matching(filters)
        records = store.records(filters)
        pages = max(1, -(-total // filters.limit))
        return render_template(
            "list.html", records=records, total=total, page=page, pages=pages, form=form,
            sorts=SORTS, states=STATES, nodes=stats.nodes(store),
            admin_only={r.id: admin_only_symbols(r, rules.release) for r in records},
            requested=release_requests.pending_by_message(store, [r.id for r in records]),
            link=lambda **changes: _link(form, **changes),
            sort_link=lambda column: _link(form, sort=column, page=None, order=(
                "asc" if form.get("sort", "created") == column and
                form.get("order", "desc") == "desc" else "desc")),
            top=lambda r: sorted(r.symbols, key=lambda s: -s["score"])[:3])

    @app.post("/quarantine/bulk")
    def bulk():
        ids = [i for i in request.form.getlist("id") if ID.match(i)][:500]
        action = request.form.get("action", "")
        reason = request.form.get("reason", "").strip()[:500]
        back = _local(request.form.get("back")) or url_for("listing")
        if not ids:
            flash("select messages first", "error")
            return redirect(back)
        me = g.session.user
        done, requested, failed = 0, 0, []
        for identifier in dict.fromkeys(ids):
            try:
                record = store.get(identifier)
                if action == "release":
                    outcome = release_or_request(store, record, policy, me.name, me.role,
                                                 reason=reason)
                    if isinstance(outcome, release_requests.Request):
                        requested += 1
                elif action == "delete":
                    _delete(store, console, record, me.name, reason)
                elif action in ("spam", "ham"):
                    console.add_label(record.id, action, "analyst", me.name, reason)
                else:
                    abort(400, "unknown action")
                done += 1
                console.log(me.name, f"bulk-{action}", record.id, reason, _address())
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

    @app.get("/quarantine/<identifier>")
    def message(identifier: str):
        record = _record(store, identifier)
        raw = store.raw(record.id)
        made = renderer.render(f"{record.id}:{record.sha256}", bytes(raw)) \
            if raw is not None else None
        dangerous = admin_only_symbols(record, rules.release)
        me = g.session.user
        needed = policy.approver(record)
        asked = release_requests.listing(store, None, message=record.id, limit=50)
        return render_template(
            "message.html", r=record, preview=made.preview if made else None,
            sanitized=made.sanitized if made else None,
            preview_problem=made.problem if made else None, dangerous=dangerous,
            symbols=sorted(record.symbols, key=lambda s: -abs(s["score"])),
            labels=console.labels(state=None, message=record.id),
            may_release=raw is not None,
            release_now=may_release(me.role, needed), needed=needed,
            requests=asked, may_decide=may_decide(me.role, needed),
            pending_to={a: q for q in asked if q.state == "pending" for a in q.recipients})

    @app.get("/quarantine/<identifier>/html")
    def message_html(identifier: str):
        record = _record(store, identifier)
        raw = store.raw(record.id)
        made = renderer.render(f"{record.id}:{record.sha256}", bytes(raw)) \
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

    @app.route("/quarantine/<identifier>/raw", methods=["GET", "POST"])
    def message_raw(identifier: str):
        record = _record(store, identifier)
        raw = store.raw(record.id)
        if raw is None:
            abort(410, f"{record.state}: the message's content is gone")
        if request.values.get("download"):
            confirmed = _may_download(record, "source")
            console.log(g.session.user.name, "download", record.id, f"source{confirmed}",
                        _address())
            g.csp = DOWNLOAD_POLICY
            return Response(bytes(raw), mimetype="application/octet-stream", headers={
                "Content-Disposition": f'attachment; filename="{record.id}.eml"'})
        console.log(g.session.user.name, "view-raw", record.id, "", _address())
        data = bytes(raw)
        text = data[:RAW_SHOWN].decode("utf-8", "replace")
        return render_template("raw.html", r=record, text=text,
                               cut=len(data) > RAW_SHOWN and RAW_SHOWN // 1024,
                               dangerous=admin_only_symbols(record, rules.release))

    @app.route("/quarantine/<identifier>/attachment/<int:index>", methods=["GET", "POST"])
    def attachment(identifier: str, index: int):
        record = _record(store, identifier)
        raw = store.raw(record.id)
        found = preview.attachment_bytes(bytes(raw), index, config.limits) \
            if raw is not None else None
        if found is None:
            abort(404)
        part, data = found
        name = preview.displayable(part.name)
        confirmed = _may_download(record, f"attachment {index}: {name}")
        console.log(g.session.user.name, "download", record.id,
                    f"attachment {index}: {name}{confirmed}", _address())
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
        dangerous = admin_only_symbols(record, rules.release)
        if not dangerous:
            return ""
        me, carries = g.session.user, ", ".join(dangerous)
        if not me.is_admin:
            console.log(me.name, "download-refused", record.id, f"{what}; carries {carries}",
                        _address())
            abort(403, f"this message carries {carries}: only an admin may download its "
                       "attachments or source")
        if request.method != "POST" or request.form.get("confirm") != "yes":
            abort(403, f"this message carries {carries}: download it from the message's page, "
                       "after confirming")
        store.record_event(record.id, me.name, "downloaded", f"{what} (carries {carries})")
        return f" (confirmed: carries {carries})"

    @app.post("/quarantine/<identifier>/release")
    def release_one(identifier: str):
        record = _record(store, identifier)
        me = g.session.user
        chosen = request.form.getlist("rcpt")
        reason = request.form.get("reason", "").strip()[:500]
        if not chosen:
            flash("choose at least one recipient", "error")
            return redirect(url_for("message", identifier=record.id))
        try:
            done = release_or_request(store, record, policy, me.name, me.role, to=chosen,
                                      reason=reason, force=request.form.get("again") == "yes",
                                      confirmed=request.form.get("confirm") == "yes")
        except (ReleaseError, RequestError) as exc:
            console.log(me.name, "release-refused", record.id, str(exc), _address())
            flash(str(exc), "error")
        else:
            if isinstance(done, release_requests.Request):
                console.log(me.name, "release-request", record.id,
                            f"request #{done.id}: to {', '.join(done.recipients)}; {reason}"
                            .rstrip("; "), _address())
                flash(f"release to {', '.join(done.recipients)} requested (#{done.id}): "
                      f"an {done.approver} approves it; you will see the decision here", "ok")
                return redirect(url_for("message", identifier=record.id))
            if done.settled:
                _tell_later(store, config)
            queued = f", queued as {done.queue_id}" if done.queue_id else ""
            console.log(me.name, "release", record.id,
                        f"to {', '.join(done.accepted)}{queued}; {reason}".rstrip("; "),
                        _address())
            flash(f"released to {', '.join(done.accepted)}{queued}", "ok")
        return redirect(url_for("message", identifier=record.id))

    @app.post("/quarantine/<identifier>/delete")
    def delete_one(identifier: str):
        record = _record(store, identifier)
        me = g.session.user
        reason = request.form.get("reason", "").strip()[:500]
        try:
            _delete(store, console, record, me.name, reason)
        except QuarantineError as exc:
            flash(str(exc), "error")
        else:
            console.log(me.name, "delete", record.id, reason, _address())
            flash("deleted: the content is gone, the record and its history stay", "ok")
        return redirect(url_for("message", identifier=record.id))

    @app.post("/quarantine/<identifier>/label")
    def label_one(identifier: str):
        record = _record(store, identifier)
        me = g.session.user
        label = request.form.get("label", "")
        note = request.form.get("note", "").strip()[:500]
        try:
            number, outcome = console.add_label(record.id, label, "analyst", me.name, note)
        except ConsoleError as exc:
            flash(str(exc), "error")
        else:
            console.log(me.name, "label", record.id, f"{label} (#{number}, {outcome})",
                        _address())
            flash(f"labelled {'spam' if label == 'spam' else 'not spam'}: waiting for an "
                  "admin's review (feedback queue)", "ok")
        return redirect(url_for("message", identifier=record.id))

    # -- the feedback queue (admins) -------------------------------------------------

    @app.get("/feedback")
    def feedback_queue():
        _admin()
        state = request.args.get("state", "pending")
        state = state if state in ("pending", "accepted", "rejected", "all") else "pending"
        return render_template(
            "feedback.html", items=console.labels(None if state == "all" else state),
            state=state, counts=console.count_labels(), jobs=console.jobs("train"),
            learned=_learned_counts(config), progress=training.progress,
            readable=training.readable, corpus=(config.web.train_ham, config.web.train_spam),
            minimum=training.MIN_PER_LABEL)

    @app.post("/feedback/<int:number>/review")
    def review(number: int):
        _admin()
        me = g.session.user
        decision = request.form.get("decision")
        if decision not in ("accept", "reject"):
            abort(400, "accept or reject")
        note = request.form.get("note", "").strip()[:500]
        try:
            outcome = console.review(number, decision == "accept", me.name, note,
                                     config.classifier.training_set_url(config.quarantine.url))
        except ConsoleError as exc:
            flash(str(exc), "error")
        else:
            console.log(me.name, f"label-{decision}", f"feedback #{number}", note, _address())
            flash(f"label #{number}: {outcome}", "ok")
        return redirect(url_for("feedback_queue"))

    @app.post("/feedback/bulk")
    def feedback_bulk():
        """Accept or reject the ticked labels at once, with one note."""
        _admin()
        me = g.session.user
        decision = request.form.get("decision")
        if decision not in ("accept", "reject"):
            abort(400, "accept or reject")
        note = request.form.get("note", "").strip()[:500]
        numbers = [int(n) for n in request.form.getlist("id") if n.isdigit()][:500]
        if not numbers:
            flash("select labels first", "error")
            return redirect(url_for("feedback_queue"))
        done, failed = 0, []
        url = config.classifier.training_set_url(config.quarantine.url)
        for number in dict.fromkeys(numbers):
            try:
                console.review(number, decision == "accept", me.name, note, url)
            except ConsoleError as exc:
                failed.append(str(exc))
                continue
            done += 1
            console.log(me.name, f"label-{decision}", f"feedback #{number}", note, _address())
        if done:
            verb = "accepted into the learned training set" if decision == "accept" \
                else "rejected"
            flash(f"{done} label{'s' if done != 1 else ''} {verb}", "ok")
        for problem in failed[:20]:
            flash(problem, "error")
        return redirect(url_for("feedback_queue"))

    @app.post("/feedback/train")
    def train():
        _admin()
        me = g.session.user
        problem = training.problem(config, _learned_counts(config))
        if problem is not None:
            flash(problem, "error")
            return redirect(url_for("feedback_queue"))
        try:
            job = console.start_job("train", me.name)
        except ConsoleError as exc:
            flash(str(exc), "error")
            return redirect(url_for("feedback_queue"))
        console.log(me.name, "train", f"job #{job}", " ".join(training.command(config)[2:]),
                    _address())
        threading.Thread(target=training.run, args=(console, config, job), daemon=True,
                         name="train").start()
        corpus = "your corpus and the learned set" if config.web.train_ham and \
            config.web.train_spam else "the learned set"
        flash(f"training a candidate model on {corpus} (job #{job}); it is not used until "
              "it is evaluated and promoted", "ok")
        return redirect(url_for("feedback_queue"))

    @app.get("/feedback/jobs/<int:number>")
    def job_progress(number: int):
        """A training job's state and progress, for the page's bar."""
        _admin()
        found = next((j for j in console.jobs("train", 20) if j["id"] == number), None)
        if found is None:
            abort(404)
        shown = training.progress(found["output"])
        return {"id": number, "status": found["status"],
                "progress": None if shown is None else {
                    "label": shown.label, "done": shown.done, "total": shown.total,
                    "percent": shown.percent}}

    # -- admin -----------------------------------------------------------------------

    @app.get("/admin/users")
    def users_page():
        _admin()
        return render_template("users.html", users=console.users(), roles=ROLES)

    @app.post("/admin/users")
    def users_add():
        _admin()
        me = g.session.user
        name = request.form.get("name", "").strip()
        role = request.form.get("role", "")
        try:
            console.add_user(name, role, request.form.get("password", ""))
        except ConsoleError as exc:
            flash(str(exc), "error")
        else:
            console.log(me.name, "user-add", name, role, _address())
            flash(f"user {name} added ({role})", "ok")
        return redirect(url_for("users_page"))

    @app.post("/admin/users/<name>")
    def users_change(name: str):
        _admin()
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
            console.log(me.name, f"user-{action}", name, "", _address())
            flash(f"user {name}: {action} done", "ok")
        return redirect(url_for("users_page"))

    # -- greylisting: pending triplets, passed at once (gateway.greylist) -----------------

    @app.get("/greylist")
    def greylist_page():
        from gateway.greylist import GreylistStore

        query = request.args.get("q", "").strip()[:200]
        entries = GreylistStore(store.engine, config.greylist, store.node).entries(
            pending_only=True, match=query, limit=200)
        return render_template("greylist.html", entries=entries, query=query,
                               enabled=config.greylist.enabled)

    @app.post("/greylist/pass")
    def greylist_pass():
        from gateway.greylist import GreylistStore, Triplet

        me = g.session.user
        triplet = Triplet(request.form.get("client", "")[:255],
                          request.form.get("sender", "")[:320],
                          request.form.get("recipient", "")[:320])
        passed = GreylistStore(store.engine, config.greylist, store.node).pass_now([triplet])
        if passed:
            console.log(me.name, "greylist-pass", triplet.describe(), "", _address())
            flash(f"passed: {triplet.describe()}; the sender's next retry is accepted", "ok")
        else:
            flash("that triplet is no longer pending", "error")
        return redirect(url_for("greylist_page"))

    @app.get("/admin/audit")
    def audit_page():
        _admin()
        page = _int(request.args.get("page"), 1, 1, 10000)
        return render_template("audit.html", entries=console.audit_trail(100, (page - 1) * 100),
                               page=page)

    @app.route("/account", methods=["GET", "POST"])
    def account():
        me = g.session.user
        if request.method == "POST":
            current = request.form.get("current", "")
            new = request.form.get("password", "")
            try:
                console.authenticate(me.name, current, _address(), known=True)
                if new != request.form.get("again", ""):
                    raise ConsoleError("the two new passwords differ")
                if (problem := password_problem(new)) is not None:
                    raise ConsoleError(problem)
                console.set_password(me.name, new)
            except ConsoleError as exc:
                flash(str(exc), "error")
                return redirect(url_for("account"))
            console.log(me.name, "password", me.name, "", _address())
            flash("password changed; log in again", "ok")
            return redirect(url_for("login"))
        return render_template("account.html")

    # -- recipients' digest links (no account) -----------------------------------------

    @app.route("/digest/<token>", methods=["GET", "POST"])
    def digest(token: str):
        """A recipient's link: GET only shows the message and a button (mail
        scanners fetch every link); the action is a POST carrying the page's
        own form token, so a request that did not come from the page does
        nothing."""
        if request.method == "POST":
            _check_origin()
        try:
            link = check_link(console, token)
        except LinkError as exc:
            abort(exc.status, str(exc))
        try:
            record = store.get(link.message)
        except QuarantineError:
            abort(410, "this message is no longer in the quarantine")
        action = request.values.get("action", "release")
        action = action if action in ("release", "spam") else "release"
        if request.method == "GET":
            return render_template("digest.html", r=record, link=link, action=action,
                                   done=None, form=form_token(console, link),
                                   asks=not may_release("recipient", policy.approver(record)))
        if not check_form_token(console, link, request.form.get("form", "")):
            abort(400, "open the link and press the button on its page")
        who = f"{link.recipient} (digest link)"
        try:
            use_link(console, token, action)
        except LinkError as exc:
            abort(exc.status, str(exc))
        if action == "release":
            try:
                done = release_or_request(store, record, policy, who, "recipient",
                                          to=[link.recipient], notify=link.recipient)
            except (ReleaseError, RequestError) as exc:
                console.log(link.recipient, "digest-release-failed", record.id, str(exc),
                            _address())
                abort(400, "the message could not be released; ask your mail admin")
            if request.form.get("not_spam") == "yes":
                console.add_label(record.id, "ham", "recipient", link.recipient)
            if isinstance(done, release_requests.Request):
                console.log(link.recipient, "digest-release-request", record.id,
                            f"request #{done.id}", _address())
                text = ("Your request is with the mail admins: you will get an email at "
                        f"{link.recipient} when they have decided.")
            else:
                console.log(link.recipient, "digest-release", record.id,
                            f"queued as {done.queue_id}" if done.queue_id else "", _address())
                text = f"The message was released to {link.recipient}."
        else:
            console.add_label(record.id, "spam", "recipient", link.recipient)
            console.log(link.recipient, "digest-spam", record.id, "", _address())
            text = "Thank you: the message is reported as spam."
        return render_template("digest.html", r=record, link=link, action=action, done=text)

    app.register_blueprint(lists.blueprint)
    app.register_blueprint(approvals.blueprint)
    return app


# -- helpers ----------------------------------------------------------------------------

def _displayable(value: Any) -> Any:
    if isinstance(value, Markup):
        return Markup(preview.displayable(str(value)))
    return preview.displayable(value) if isinstance(value, str) else value


def _forwarded(trusted: set, config: Config) -> None:
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


def _secure() -> bool:
    return bool(g.get("https") or g.get("always_secure"))


def _check_origin() -> None:
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


def _local(target: str | None) -> str | None:
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


def _delete(store: QuarantineStore, console: Console, record: Record, who: str,
            reason: str) -> None:
    if record.state == "deleted":
        raise QuarantineError(f"{record.id}: already deleted")
    store.change_state(record.id, "deleted", who, "deleted", "", drop_body=True, reason=reason)


def _pending_labels(console: Console) -> int:
    try:
        return console.count_labels()["pending"]
    except Exception:
        return 0


def _tell_later(store: QuarantineStore, config: Config) -> None:
    """Mail the recipients whose requests were just decided, off the request
    thread (the mail server may be slow)."""
    threading.Thread(target=notices.tell_by_mail, args=(store, config), daemon=True,
                     name="notices").start()


def _pending_requests(store: QuarantineStore, user: Any) -> int:
    """Requests this user may decide (the navigation's count)."""
    try:
        return release_requests.count_pending(store, ("admin", "analyst") if user.is_admin
                                              else ("analyst",))
    except Exception:
        return 0


def _learned_counts(config: Config) -> dict[str, int] | None:
    from gateway.classifier.trainingset import TrainingSet, TrainingSetError

    try:
        stored = TrainingSet(config.classifier.training_set_url(config.quarantine.url))
    except TrainingSetError:
        return None
    try:
        return stored.counts()
    finally:
        stored.close()


def _fleet(store: QuarantineStore) -> list[Any]:
    """The registered nodes, stale ones marked (see gateway.nodes)."""
    from gateway.nodes import fleet

    with store.engine.connect() as connection:
        return fleet(connection)


def _int(value: str | None, default: int, low: int, high: int) -> int:
    try:
        return min(max(int(value or default), low), high)
    except ValueError:
        return default


def _float(value: str | None) -> float | None:
    if not value:
        return None
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"{value!r} is not a number") from None
    if number != number or number in (float("inf"), float("-inf")):
        raise ValueError(f"{value!r} is not a number")
    return number


def _date(value: str | None, end: bool = False) -> datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{value!r} is not a date (YYYY-MM-DD)") from None
    parsed = parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    if end and len(value) <= 10:
        parsed += timedelta(days=1)  # "until 2026-12-01" includes that day
    return parsed


FILTER_FIELDS = ("sender", "recipient", "subject", "symbol", "min_score", "max_score", "since",
                 "until", "state", "action", "node", "sort", "order", "page")


def _filters(args, page_size: int) -> tuple[Filters, list[str], dict[str, str]]:
    form = {k: args.get(k, "").strip()[:200] for k in FILTER_FIELDS if args.get(k, "").strip()}
    problems = []
    values: dict[str, Any] = {}
    for name in ("min_score", "max_score"):
        try:
            values[name] = _float(form.get(name))
        except ValueError as exc:
            problems.append(f"{name.replace('_', ' ')}: {exc}")
            form.pop(name)
    for name, end in (("since", False), ("until", True)):
        try:
            values[name] = _date(form.get(name), end)
        except ValueError as exc:
            problems.append(f"{name}: {exc}")
            form.pop(name)
    state = form.get("state") if form.get("state") in STATES else None
    action = form.get("action") if form.get("action") in ("quarantine", "reject") else None
    sort = form.get("sort") if form.get("sort") in SORTS else "created"
    page = _int(form.get("page"), 1, 1, 100000)
    filters = Filters(sender=form.get("sender"), recipient=form.get("recipient"),
                      subject=form.get("subject"), symbol=form.get("symbol"),
                      state=state, action=action, node=form.get("node"), sort=sort,
                      descending=form.get("order", "desc") != "asc", limit=page_size,
                      offset=(page - 1) * page_size, **values)
    return filters, problems, form


def _link(form: dict[str, str], **changes: Any) -> str:
    merged = {**form, **{k: v for k, v in changes.items()}}
    query = {k: v for k, v in merged.items() if v not in (None, "")}
    return "/quarantine" + ("?" + urlencode(query) if query else "")

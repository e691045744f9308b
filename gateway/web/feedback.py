"""The feedback queue (``/feedback``, admins): labels from analysts and
recipients, accepted into the learned training set or rejected, one at a
time or ticked at once; and the "Train" button's jobs (gateway.web.training)
with their progress."""

from __future__ import annotations

import threading
from typing import Any

from flask import abort, flash, g, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue

from gateway.web import training
from gateway.web.access import Area, client_address, parts, require_admin
from gateway.web.console import Console, ConsoleError

blueprint = Area("feedback", __name__)


@blueprint.get("/feedback")
def feedback_queue() -> str:
    require_admin()
    found = parts()
    console, config = found.console, found.config
    state = request.args.get("state", "pending")
    state = state if state in ("pending", "accepted", "rejected", "all") else "pending"
    return render_template(
        "feedback/feedback.html", items=console.labels(None if state == "all" else state),
        state=state, counts=console.count_labels(), jobs=console.jobs("train"),
        learned=training.learned_counts(config), progress=training.progress,
        readable=training.readable, corpus=(config.web.train_ham, config.web.train_spam),
        minimum=training.MIN_PER_LABEL)


@blueprint.post("/feedback/<int:number>/review")
def review(number: int) -> ResponseReturnValue:
    require_admin()
    found = parts()
    config = found.config
    me = g.session.user
    decision = request.form.get("decision")
    if decision not in ("accept", "reject"):
        abort(400, "accept or reject")
    note = request.form.get("note", "").strip()[:500]
    try:
        outcome = _review(found.console, number, decision, me.name, note,
                          config.classifier.training_set_url(config.quarantine.url))
    except ConsoleError as exc:
        flash(str(exc), "error")
    else:
        flash(f"label #{number}: {outcome}", "ok")
    return redirect(url_for("feedback_queue"))


def _review(console: Console, number: int, decision: str, who: str, note: str,
            url: str | None) -> str:
    """Accept or reject one label, and audit it; raises ConsoleError."""
    outcome = console.review(number, decision == "accept", who, note, url)
    console.log(who, f"label-{decision}", f"feedback #{number}", note, client_address())
    return outcome


@blueprint.post("/feedback/bulk")
def feedback_bulk() -> ResponseReturnValue:
    """Accept or reject the ticked labels at once, with one note."""
    require_admin()
    found = parts()
    config, console = found.config, found.console
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
            _review(console, number, decision, me.name, note, url)
        except ConsoleError as exc:
            failed.append(str(exc))
            continue
        done += 1
    if done:
        verb = "accepted into the learned training set" if decision == "accept" \
            else "rejected"
        flash(f"{done} label{'s' if done != 1 else ''} {verb}", "ok")
    for problem in failed[:20]:
        flash(problem, "error")
    return redirect(url_for("feedback_queue"))


@blueprint.post("/feedback/train")
def train() -> ResponseReturnValue:
    require_admin()
    found = parts()
    config, console = found.config, found.console
    me = g.session.user
    problem = training.problem(config, training.learned_counts(config))
    if problem is not None:
        flash(problem, "error")
        return redirect(url_for("feedback_queue"))
    try:
        job = console.start_job("train", me.name)
    except ConsoleError as exc:
        flash(str(exc), "error")
        return redirect(url_for("feedback_queue"))
    console.log(me.name, "train", f"job #{job}", " ".join(training.command(config)[2:]),
                client_address())
    threading.Thread(target=training.run, args=(console, config, job), daemon=True,
                     name="train").start()
    corpus = "your corpus and the learned set" if config.web.train_ham and \
        config.web.train_spam else "the learned set"
    flash(f"training a candidate model on {corpus} (job #{job}); it is not used until "
          "it is evaluated and promoted", "ok")
    return redirect(url_for("feedback_queue"))


@blueprint.get("/feedback/jobs/<int:number>")
def job_progress(number: int) -> dict[str, Any]:
    """A training job's state and progress, for the page's bar."""
    require_admin()
    found = next((j for j in parts().console.jobs("train", 20) if j["id"] == number), None)
    if found is None:
        abort(404)
    shown = training.progress(found["output"])
    return {"id": number, "status": found["status"],
            "progress": None if shown is None else {
                "label": shown.label, "done": shown.done, "total": shown.total,
                "percent": shown.percent}}

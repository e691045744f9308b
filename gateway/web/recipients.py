"""Recipients' digest links (``/digest/<token>``), without an account: the
page of one held message with one button, release it to me or report it
as spam (gateway.web.digest makes and checks the links).

GET only shows the message and the button (mail scanners fetch every
link); the action is a POST carrying the page's own form token, so a
request that did not come from the page does nothing.
"""

from __future__ import annotations

from flask import abort, render_template, request
from flask.typing import ResponseReturnValue

from gateway.quarantine import requests as release_requests
from gateway.quarantine.release import ReleaseError, may_release, release_or_request
from gateway.quarantine.requests import RequestError
from gateway.quarantine.store import QuarantineError
from gateway.web.access import Area, client_address, parts
from gateway.web.digest import LinkError, check_form_token, check_link, form_token, use_link
from gateway.web.guard import check_origin

blueprint = Area("recipients", __name__)


@blueprint.route("/digest/<token>", methods=["GET", "POST"])
def digest(token: str) -> ResponseReturnValue:
    """A recipient's link: GET shows, POST (from the page) acts."""
    found = parts()
    store, console, policy = found.store, found.console, found.policy
    if request.method == "POST":
        check_origin()
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
        return render_template("recipients/digest.html", r=record, link=link, action=action,
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
                        client_address())
            abort(400, "the message could not be released; ask your mail admin")
        if request.form.get("not_spam") == "yes":
            console.add_label(record.id, "ham", "recipient", link.recipient)
        if isinstance(done, release_requests.Request):
            console.log(link.recipient, "digest-release-request", record.id,
                        f"request #{done.id}", client_address())
            text = ("Your request is with the mail admins: you will get an email at "
                    f"{link.recipient} when they have decided.")
        else:
            console.log(link.recipient, "digest-release", record.id,
                        f"queued as {done.queue_id}" if done.queue_id else "",
                        client_address())
            text = f"The message was released to {link.recipient}."
    else:
        console.add_label(record.id, "spam", "recipient", link.recipient)
        console.log(link.recipient, "digest-spam", record.id, "", client_address())
        text = "Thank you: the message is reported as spam."
    return render_template("recipients/digest.html", r=record, link=link, action=action,
                           done=text)

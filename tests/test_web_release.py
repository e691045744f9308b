"""Release that fits how people work, in the console (issue 28 #4 and its
request-then-approve flow), through Flask's test client and a real SMTP
sink: per-recipient state on the page and the list, a recipient's digest
request that an analyst approves (the recipient is mailed the decision), a
refusal with its reason, an analyst's request an admin decides (the analyst
sees it on the next page), and digest actions that need the page's own POST.
"""

from __future__ import annotations

import email
import email.policy
from dataclasses import replace
from pathlib import Path

import pytest

from gateway.lab.sink import Sink
from gateway.quarantine import requests
from gateway.web.app import create_app
from gateway.web.digest import make_link
from tests.test_quarantine import put
from tests.test_web import console_app, csrf_of, form_of, login


@pytest.fixture
def sink():
    with Sink() as running:
        yield running


def site(tmp_path: Path, sink: Sink, approve: str | dict[str, str] = "analyst"):
    app, store, console = console_app(tmp_path)
    config = app.extensions["gateway"]["config"]
    config = replace(config, release=replace(config.release, smtp=f"127.0.0.1:{sink.port}",
                                             approve=approve),
                     digest=replace(config.digest, sender="postmaster@example.net"))
    app.extensions["gateway"]["renderer"].close()
    return create_app(config, store), store, console


def text_of(delivery) -> str:
    parsed = email.message_from_bytes(delivery.data, policy=email.policy.default)
    return f"{parsed['Subject']}\n{parsed.get_body(('plain',)).get_content()}"


def test_a_recipients_digest_request_waits_for_an_analyst_who_approves_it(tmp_path, sink):
    app, store, console = site(tmp_path, sink)
    identifier = put(store, "digest-ask", rcpts=("bob@example.net", "carol@example.net"))
    token = make_link(console, identifier, "bob@example.net", days=7)
    visitor = app.test_client()
    page = visitor.get(f"/digest/{token}?action=release").text
    assert "Ask for it to be released to me" in page
    # a scanner's POST, or a form made elsewhere, without the page's token: nothing
    for data in ({"action": "release"}, {"action": "release", "form": "1.deadbeef"}):
        refused = visitor.post(f"/digest/{token}", data=data)
        assert refused.status_code == 400 and "press the button" in refused.text
    assert requests.listing(store) == []
    asked = visitor.post(f"/digest/{token}", data={"action": "release",
                                                   "form": form_of(page)})
    assert asked.status_code == 200 and "you will get an email" in asked.text
    (item,) = requests.listing(store)
    assert (item.recipients, item.source, item.approver, item.notify) == (
        ("bob@example.net",), "recipient", "analyst", "bob@example.net")
    assert sink.deliveries == [] and store.get(identifier).state == "held"

    analyst = app.test_client()
    login(analyst, "bob")
    listing = analyst.get("/quarantine").text
    assert "release requested" in listing
    assert 'class="badge">1<' in analyst.get("/requests").text
    token = csrf_of(analyst)
    approved = analyst.post(f"/requests/{item.id}/approve", data={
        "csrf": token, "reason": "his supplier"}, follow_redirects=True)
    assert f"request #{item.id} approved: released to bob@example.net" in approved.text
    released, notice = sorted(sink.wait_for(2), key=lambda d: d.mail_from)
    assert released.rcpt_to == ("bob@example.net",) and notice.rcpt_to == ("bob@example.net",)
    assert "was approved" in text_of(notice) and "Released: minutes digest-ask" in \
        text_of(notice)
    record = store.get(identifier)
    assert record.state == "held" and record.released_to == ("bob@example.net",)
    page = analyst.get(f"/quarantine/{identifier}").text
    assert "1 of 2 released" in analyst.get("/quarantine").text
    assert "approved</strong> by bob: his supplier" in page
    trail = [e["action"] for e in console.audit_trail()]
    assert trail[0] == "release-approve" and "digest-release-request" in trail


def test_a_refusal_needs_a_reason_and_the_recipient_is_told_it(tmp_path, sink):
    app, store, console = site(tmp_path, sink)
    identifier = put(store, "digest-no")
    token = make_link(console, identifier, "bob@example.net", days=7)
    visitor = app.test_client()
    page = visitor.get(f"/digest/{token}?action=release").text
    visitor.post(f"/digest/{token}", data={"action": "release", "form": form_of(page)})
    (item,) = requests.listing(store)
    admin = app.test_client()
    login(admin, "ann")
    token = csrf_of(admin)
    unsaid = admin.post(f"/requests/{item.id}/refuse", data={"csrf": token},
                        follow_redirects=True)
    assert "say why the release is refused" in unsaid.text
    admin.post(f"/requests/{item.id}/refuse", data={"csrf": token, "reason": "a fake invoice"})
    (notice,) = sink.wait_for(1)
    assert "was refused: a fake invoice" in text_of(notice)
    assert store.get(identifier).events[-1].reason == "a fake invoice"
    assert store.get(identifier).state == "held" and len(sink.deliveries) == 1


def test_an_analysts_request_is_an_admins_to_decide_and_the_analyst_sees_it(tmp_path, sink):
    app, store, _ = site(tmp_path, sink, approve={"default": "admin"})
    identifier = put(store, "ask-admin", rcpts=("bob@example.net", "carol@example.net"))
    analyst = app.test_client()
    login(analyst, "bob")
    page = analyst.get(f"/quarantine/{identifier}").text
    assert 'id="request-button"' in page and 'id="release-button"' not in page
    token = csrf_of(analyst)
    asked = analyst.post(f"/quarantine/{identifier}/release", data={
        "csrf": token, "rcpt": "carol@example.net", "reason": "she asked"},
        follow_redirects=True)
    assert "requested (#" in asked.text and sink.deliveries == []
    (item,) = requests.listing(store)
    assert "waiting for an admin" in analyst.get("/requests").text
    assert analyst.post(f"/requests/{item.id}/approve", data={"csrf": token}).status_code == 403
    assert analyst.post(f"/requests/{item.id}/refuse", data={"csrf": token, "reason": "no"}
                        ).status_code == 403

    admin = app.test_client()
    login(admin, "ann")
    page = admin.get(f"/quarantine/{identifier}").text
    assert "held, release requested (#" in page and "Approve" in page
    done = admin.post(f"/requests/{item.id}/approve", data={
        "csrf": csrf_of(admin), "message": identifier}, follow_redirects=True)
    assert done.request.path == f"/quarantine/{identifier}"
    (delivery,) = sink.wait_for(1)
    assert delivery.rcpt_to == ("carol@example.net",)
    told = analyst.get("/quarantine").text  # the next page tells the analyst
    assert f"Your request #{item.id} to release &#34;minutes ask-admin&#34; was approved" in told
    assert "was approved" not in analyst.get("/quarantine").text  # once

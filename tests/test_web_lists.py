"""The console's Lists page and "block this sender" (issue 28 #2), through
Flask's test client on a SQLite store: the managed entries ``gateway list``
writes are shown with their hits, admins add, renew, remove and expire them
with the validation the command line uses, every change is audited, and
analysts are refused. (The browser test in test_web_browser.py blocks a
sender from a held message and sees Postfix refuse its next mail.)"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.test_quarantine import put
from tests.test_web import console_app, csrf_of, login


@pytest.fixture
def web(tmp_path: Path):
    app, store, console = console_app(tmp_path)
    yield app, store, console
    app.extensions["gateway"]["renderer"].close()
    store.close()


def admin(app):
    client = app.test_client()
    login(client, "ann")
    return client, csrf_of(client)


def test_entries_the_command_line_added_are_shown_with_their_hits(web):
    """Issue 28 #2: the page showed only gateway.toml's [lists] while
    `gateway list add block-sender` entries rejected mail unseen."""
    app, store, _ = web
    entry, _ = store.add_list_entry("block-sender", "spammer.example", owner="root",
                                    reason="phishing wave", reply="Blocked by policy")
    store.record_list_hits({entry.id: 7})
    page = admin(app)[0].get("/admin/lists").text
    row = page[page.index(f'id="entry-{entry.id}"'):]
    row = row[:row.index("</tr>")]
    for shown in ("block-sender", "spammer.example", "all mail", "root", "phishing wave",
                  "Blocked by policy", "never", ">7 <"):
        assert shown in row, shown


def test_an_admin_adds_renews_removes_and_expires_entries_audited(web):
    app, store, console = web
    client, token = admin(app)
    added = client.post("/admin/lists", data={
        "csrf": token, "kind": "block-sender", "value": "Spammer.Example.", "scope":
        "bob@example.net", "reason": "invoices from a fake supplier", "reply":
        "Not accepted here", "expires": "30d"}, follow_redirects=True)
    assert "added block-sender spammer.example for bob@example.net" in added.text
    (entry,) = store.list_entries()
    assert (entry.value, entry.scope, entry.owner, entry.reason, entry.reply) == (
        "spammer.example", "bob@example.net", "ann", "invoices from a fake supplier",
        "Not accepted here")
    assert timedelta(days=29) < entry.expires - datetime.now(UTC) <= timedelta(days=30)

    renewed = client.post("/admin/lists", data={
        "csrf": token, "kind": "block-sender", "value": "spammer.example", "scope":
        "bob@example.net", "reason": "still at it"}, follow_redirects=True)
    assert "renewed block-sender spammer.example" in renewed.text
    assert [(e.id, e.reason, e.expires) for e in store.list_entries()] == [
        (entry.id, "still at it", None)]

    # the command line's validation, one line on the page each
    for data, problem in (
            ({"kind": "block-sender", "value": "*.example"}, "entries have no wildcards"),
            ({"kind": "block-ip", "value": "300.1.2.3"}, "is not an IP address or network"),
            ({"kind": "allow-sender", "value": "x@example.org", "expires": "soon"},
             "expires &#39;soon&#39;: expected 30d"),
            ({"kind": "allow-sender", "value": "x@example.org", "expires": "2001-01-01"},
             "is in the past"),
            ({"kind": "allow-sender", "value": "x@example.org", "reply": "caf\u00e9"},
             "printable ASCII only"),
            ({"kind": "block-sender", "value": "co.uk"}, "names a public suffix"),
            ({"kind": "nope", "value": "x"}, "choose a kind")):
        page = client.post("/admin/lists", data={"csrf": token, **data},
                           follow_redirects=True)
        assert problem in page.text, (data, page.text[-2000:])
    assert len(store.list_entries()) == 1
    forced = client.post("/admin/lists", data={"csrf": token, "kind": "block-sender",
                                               "value": "co.uk", "force": "yes"},
                         follow_redirects=True)
    assert "added block-sender co.uk" in forced.text

    stale, _ = store.add_list_entry("block-ip", "192.0.2.0/24", owner="root",
                                    expires=datetime.now(UTC) + timedelta(seconds=1))
    with store.engine.begin() as connection:  # its time has come
        connection.exec_driver_sql("UPDATE list_entries SET expires = '2000-01-01 00:00:00'"
                                   f" WHERE id = {stale.id}")
    page = client.get("/admin/lists").text
    assert "1 entry has expired" in page and 'id="expire-button"' in page
    client.post("/admin/lists/expire", data={"csrf": token})
    assert store.get_list_entry(stale.id) is None
    client.post(f"/admin/lists/{entry.id}/remove", data={"csrf": token})
    assert [e.value for e in store.list_entries()] == ["co.uk"]
    gone = client.post(f"/admin/lists/{entry.id}/remove", data={"csrf": token},
                       follow_redirects=True)
    assert f"no list entry {entry.id}" in gone.text
    trail = [(e["action"], e["target"]) for e in console.audit_trail(actor="ann")]
    assert trail[:5] == [("list-remove", "block-sender spammer.example"),
                         ("list-expire", "block-ip 192.0.2.0/24"),
                         ("list-add", "block-sender co.uk"),
                         ("list-renew", "block-sender spammer.example"),
                         ("list-add", "block-sender spammer.example")]


def test_block_sender_from_a_held_message(web):
    app, store, console = web
    held = put(store, "block", sender="Eve@Mail.Phish.Example",
               rcpts=("bob@example.net", "carol@example.net"))
    client, token = admin(app)
    page = client.get(f"/quarantine/{held}").text
    assert 'id="block-sender"' in page and "mail.phish.example and its subdomains" in page
    done = client.post(f"/quarantine/{held}/block", data={
        "csrf": token, "what": "domain", "scope": "carol@example.net", "expires": "2w"},
        follow_redirects=True)
    assert "added block-sender mail.phish.example for carol@example.net" in done.text
    client.post(f"/quarantine/{held}/block", data={"csrf": token, "what": "address",
                                                  "reason": "CEO fraud"})
    entries = {(e.value, e.scope): e for e in store.list_entries()}
    assert set(entries) == {("mail.phish.example", "carol@example.net"),
                            ("eve@mail.phish.example", "")}
    assert entries[("eve@mail.phish.example", "")].reason == "CEO fraud"
    assert entries[("mail.phish.example", "carol@example.net")].reason == \
        f"held message {held}"
    history = [(e.actor, e.action) for e in store.get(held).events]
    assert history[-2:] == [("ann", "sender-blocked")] * 2
    assert console.audit_trail(actor="ann")[0]["detail"].endswith(f"from {held}")
    # only the message's own recipients, and never for mail without a sender
    refused = client.post(f"/quarantine/{held}/block", data={
        "csrf": token, "what": "domain", "scope": "eve@elsewhere.example"})
    assert refused.status_code == 400
    bounce = put(store, "bounce", sender="")
    said = client.post(f"/quarantine/{bounce}/block", data={"csrf": token},
                       follow_redirects=True)
    assert "no sender address to block" in said.text
    assert len(store.list_entries()) == 2


def test_lists_are_for_admins_only(web):
    app, store, _ = web
    held = put(store, "analyst")
    entry, _ = store.add_list_entry("block-ip", "192.0.2.7", owner="root")
    client = app.test_client()
    login(client, "bob")
    token = csrf_of(client)
    assert client.get("/admin/lists").status_code == 403
    assert 'id="block-sender"' not in client.get(f"/quarantine/{held}").text
    for path, data in (("/admin/lists", {"kind": "allow-sender", "value": "x@example.org"}),
                       (f"/admin/lists/{entry.id}/remove", {}),
                       ("/admin/lists/expire", {}),
                       (f"/quarantine/{held}/block", {"what": "domain"})):
        assert client.post(path, data={"csrf": token, **data}).status_code == 403, path
    assert [e.value for e in store.list_entries()] == ["192.0.2.7/32"]

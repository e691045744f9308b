"""The analysts' console without a browser: its shared state on SQLite and
PostgreSQL (users, the login limit, sessions, the feedback queue, digest
links, retention of labelled mail), and the web app's security through
Flask's test client (sessions on every page, CSRF, roles, 404s, no
tracebacks, hostile mail escaped and sanitized)."""

from __future__ import annotations

import email
import email.policy
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote, unquote

import pytest

from gateway.classifier.trainingset import TrainingSet
from gateway.config import parse_config
from gateway.lab.postfix import free_port
from gateway.lab.sink import Sink
from gateway.message import Envelope, RawContent
from gateway.quarantine import requests as release_requests
from gateway.quarantine.store import QuarantineStore
from gateway.web.console import Console, ConsoleError, LoginRefused
from gateway.web.digest import LinkError, check_link, make_link, send_digests, use_link
from tests.helpers import PROJECT_ROOT
from tests.lab.postgres import PostgresInstance, postgres_bin
from tests.test_quarantine import put, verdict

PASSWORD = "correct horse battery"


# -- the console's state, on SQLite and on PostgreSQL ------------------------------------

@pytest.fixture(scope="module")
def postgres_server(lab_dir: Path):
    if postgres_bin() is None or shutil.which("runuser") is None:
        pytest.skip("PostgreSQL server is not installed (see .ci/run)")
    if os.geteuid() != 0:
        pytest.skip("a private PostgreSQL cluster runs as the postgres user: needs root")
    with PostgresInstance(lab_dir / "pg-web") as instance:
        yield instance


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path: Path):
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/q.db"
    else:
        server = request.getfixturevalue("postgres_server")
        name = f"t{uuid.uuid4().hex[:12]}"
        from sqlalchemy import create_engine, text

        engine = create_engine(server.url.replace("postgresql://", "postgresql+psycopg://"),
                               isolation_level="AUTOCOMMIT")
        with engine.connect() as connection:
            connection.execute(text(f"CREATE DATABASE {name}"))
        engine.dispose()
        url = server.url.rsplit("/", 1)[0] + f"/{name}"
    opened = QuarantineStore(url, node="node-a")
    yield opened
    opened.close()


@pytest.fixture
def console(store):
    return Console(store, login_attempts=3)


@pytest.mark.slow
def test_users_passwords_and_the_login_limit(console):
    console.add_user("ann", "admin", PASSWORD)
    with pytest.raises(ConsoleError, match="exists already"):
        console.add_user("ann", "analyst", PASSWORD)
    for short in ("short", "elevenchars"):  # 12 at least (OWASP ASVS 2.1.1)
        with pytest.raises(ConsoleError, match="12 characters"):
            console.add_user("bob", "analyst", short)
    with pytest.raises(ConsoleError, match="user name"):
        console.add_user("<script>", "analyst", PASSWORD)
    assert console.authenticate("ann", PASSWORD, "192.0.2.1").name == "ann"
    stored = console.engine.connect().exec_driver_sql("SELECT password FROM users").scalar()
    assert stored.startswith("$argon2id$") and PASSWORD not in stored
    console.clock = Clock()  # the waits below are exact, however slow the machine
    for _ in range(3):
        with pytest.raises(LoginRefused, match="wrong name or password"):
            console.authenticate("ann", "wrong password!", "192.0.2.66")
    with pytest.raises(LoginRefused, match="too many failed logins") as caught:
        console.authenticate("ann", PASSWORD, "192.0.2.66")  # right, but this client waits
    assert caught.value.retry_after == 30
    assert console.authenticate("ann", PASSWORD, "192.0.2.9").name == "ann"  # not ann
    console.add_user("bob", "analyst", PASSWORD)
    console.set_disabled("bob")
    with pytest.raises(LoginRefused):
        console.authenticate("bob", PASSWORD, "192.0.2.2")
    with pytest.raises(LoginRefused, match="wrong name"):
        console.authenticate("nobody", PASSWORD, "192.0.2.3")


class Clock:
    """The console's clock, moved by the test."""

    def __init__(self) -> None:
        self.now = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def cheap_hashes(console: Console) -> None:
    """argon2 with the least work: the limits tests log in hundreds of times."""
    from argon2 import PasswordHasher

    console._hasher = PasswordHasher(time_cost=1, memory_cost=64, parallelism=1)


def refused_for(console: Console, name: str, address: str, known: bool = False) -> int:
    """Seconds the console makes this client wait (0: it may try now)."""
    try:
        console.authenticate(name, "wrong password!", address, known=known)
    except LoginRefused as exc:
        return exc.retry_after
    return 0


def test_login_limits_count_per_account_and_client_with_backoff(console):
    """Issue 23 #7: five wrong passwords from anywhere locked any account
    for everyone for 15 minutes. Now a client that keeps failing for one
    account waits 30 s, doubling up to 15 minutes; the owner elsewhere does
    not; guessing many accounts from one client, or one account from many
    clients, is limited too, except for browsers that logged in before."""
    clock = console.clock = Clock()
    cheap_hashes(console)
    console.add_user("ann", "admin", PASSWORD)
    for _ in range(3):
        assert refused_for(console, "ann", "198.51.100.66") == 0  # wrong, counted
    waits = []
    for _ in range(7):
        wait = refused_for(console, "ann", "198.51.100.66")
        waits.append(wait)
        clock.advance(wait)
        assert refused_for(console, "ann", "198.51.100.66") == 0  # one more wrong try
    assert waits == [30, 60, 120, 240, 480, 900, 900]
    assert refused_for(console, "ann", "198.51.100.66") == 900
    assert console.authenticate("ann", PASSWORD, "192.0.2.10").name == "ann"  # the owner
    # IPv6: one host has a whole /64; another /64 is another client.
    for address in ("2001:db8::1", "2001:db8::2", "2001:db8::3"):
        assert refused_for(console, "ann", address) == 0
    assert refused_for(console, "ann", "2001:db8::ffff") == 30
    assert refused_for(console, "ann", "2001:db8:0:1::1") == 0
    # One client guessing many accounts: 4 x login_attempts in 15 minutes.
    clock.advance(3600)
    for number in range(12):
        assert refused_for(console, f"user{number}", "203.0.113.5") == 0
    assert refused_for(console, "user99", "203.0.113.5") == 900
    assert refused_for(console, "user99", "203.0.113.5", known=True) == 0
    # One account from many clients: 100 an hour; a browser that logged in
    # as ann before (known) still may, and so may ann, once the hour is over.
    clock.advance(3600)
    for number in range(100):
        assert refused_for(console, "ann", f"10.0.{number // 250}.{number % 250}") == 0
    assert refused_for(console, "ann", "10.9.9.9") == 3600
    with pytest.raises(LoginRefused, match="too many failed logins"):
        console.authenticate("ann", PASSWORD, "192.0.2.10")
    assert console.authenticate("ann", PASSWORD, "192.0.2.10", known=True).name == "ann"
    clock.advance(3600)
    assert console.authenticate("ann", PASSWORD, "10.9.9.9").name == "ann"


def test_a_device_token_names_one_user_and_expires(console):
    clock = console.clock = Clock()
    token = console.device_token("ann")
    assert console.known_device(token, "ann") and not console.known_device(token, "bob")
    _, issued, signature = token.split("~")
    for forged in (f"bob~{issued}~{signature}", f"ann~{int(issued) + 1}~{signature}",
                   token[:-1] + ("0" if token[-1] != "0" else "1"), "", "ann", "~~"):
        assert not console.known_device(forged, "ann"), forged
    clock.advance(91 * 86400)
    assert not console.known_device(token, "ann")


def test_sessions_end_when_the_user_is_disabled_or_idle(console):
    user = console.add_user("ann", "analyst", PASSWORD)
    token, opened = console.open_session(user, "192.0.2.1")
    assert console.session(token).user.name == "ann"
    assert console.session(token).csrf == opened.csrf
    assert console.session("forged") is None
    console.set_disabled("ann")
    assert console.session(token) is None
    console.set_disabled("ann", False)
    token, _ = console.open_session(console.user("ann"), "192.0.2.1")
    console.session_idle = timedelta(seconds=-1)
    assert console.session(token) is None


def test_the_feedback_queue_feeds_the_learned_set_and_holds_retention(console, store):
    held = put(store, "label-me")
    other = put(store, "other")
    number, outcome = console.add_label(held, "spam", "analyst", "bob", "phish")
    assert outcome == "added"
    assert console.add_label(held, "spam", "analyst", "bob")[1] == "unchanged"
    rejected, _ = console.add_label(other, "ham", "recipient", "carol@example.net")
    with pytest.raises(ConsoleError, match="no quarantined message"):
        console.add_label("0" * 20, "spam", "analyst", "bob")
    # Retention waits for the review: nothing expires or goes while labels are pending.
    later = datetime.now(UTC) + timedelta(days=400)
    retention = {"held": 30, "released": 7, "deleted": 1, "expired": 30}
    assert store.purge(retention, 0, at=later) == {"expired": 0, "removed": 0}
    assert store.raw(held) is not None
    assert "accepted into the learned training set as spam" in console.review(
        number, True, "ann", "confirmed")
    assert console.review(rejected, False, "ann") == "rejected"
    with pytest.raises(ConsoleError, match="accepted already"):
        console.review(number, False, "ann")
    learned = TrainingSet(store.url)
    assert learned.counts() == {"ham": 0, "spam": 1}
    (entry,) = learned.entries()
    assert entry.quarantine_id == held and "accepted by ann" in entry.who
    learned.close()
    actions = [e.action for e in store.get(held).events]
    assert actions == ["quarantined", "labelled-spam", "learned-spam", "label-accepted"]
    assert store.purge(retention, 0, at=later)["expired"] == 2  # now they may go


def test_digest_links_are_signed_bound_expiring_and_single_use(console, store):
    identifier = put(store, "digest", rcpts=("bob@example.net", "carol@example.net"))
    token = make_link(console, identifier, "bob@example.net", days=7)
    assert make_link(console, identifier, "bob@example.net", days=7) is None  # once
    link = check_link(console, token)
    assert (link.message, link.recipient) == (identifier, "bob@example.net")
    carol = make_link(console, identifier, "carol@example.net", days=7)
    forged = token.split(".")[0] + "." + carol.split(".")[1]  # carol's signature on bob's id
    for bad in (forged, token[:-1] + ("0" if token[-1] != "0" else "1"), "x" * 97, "",
                token.split(".")[0]):
        with pytest.raises(LinkError) as caught:
            check_link(console, bad)
        assert caught.value.status == 404
    use_link(console, token, "release")
    with pytest.raises(LinkError, match="used already") as caught:
        use_link(console, token, "spam")
    assert caught.value.status == 410
    with pytest.raises(LinkError, match="expired"):
        check_link(console, carol, at=datetime.now(UTC) + timedelta(days=8))


def test_two_consoles_starting_a_training_run_at_once_start_one(store):
    """Two nodes' consoles on one store, both asked at the same instant,
    round after round: one run starts, the other is told it is running."""
    consoles = (Console(store), Console(store))
    for _ in range(8):
        barrier = threading.Barrier(2)
        outcomes: list[tuple[str, object]] = []

        def start(console: Console, barrier: threading.Barrier = barrier,
                  outcomes: list = outcomes) -> None:
            barrier.wait()
            try:
                outcomes.append(("started", console.start_job("train", "ann")))
            except ConsoleError as exc:
                outcomes.append(("refused", str(exc)))

        threads = [threading.Thread(target=start, args=(c,)) for c in consoles]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert sorted(kind for kind, _ in outcomes) == ["refused", "started"], outcomes
        (job,) = [value for kind, value in outcomes if kind == "started"]
        (refusal,) = [value for kind, value in outcomes if kind == "refused"]
        assert f"(#{job})" in str(refusal)
        consoles[0].finish_job(job, True, "done")
    assert [j["status"] for j in consoles[0].jobs("train", limit=20)] == ["done"] * 8


def test_list_filters_prefixes_and_dashboard_figures_on_either_store(store):
    from gateway.quarantine.store import Filters
    from gateway.web import stats

    low = put(store, "low-one", names=("A_LOW",))
    high = put(store, "high-one", names=("B_HIGH", "CLAMAV_VIRUS"), action="reject")
    assert [r.id for r in store.records(Filters(subject="HIGH-one"))] == [high]
    assert [r.id for r in store.records(Filters(sort="subject", descending=False))] == [high, low]
    assert store.count_matching(Filters(min_score=1, node="node-a")) == 2
    assert store.get(low[:6], prefix=True).id == low
    days, series = stats.held_per_day(store)
    assert len(days) == 14
    assert series["quarantine"][-1] == 1 and series["reject"][-1] == 1
    assert dict(stats.top_symbols(store)) == {"A_LOW": 1, "B_HIGH": 1, "CLAMAV_VIRUS": 1}
    assert stats.nodes(store) == ["node-a"]


# -- the web app, through Flask's test client (SQLite) -------------------------------------

def hostile_html_message(tag: str, canary: str = "http://127.0.0.1:9/c") -> bytes:
    html = (f'<html><head><meta http-equiv="refresh" content="0;url={canary}/refresh">'
            f'<style>body {{ background: url({canary}/css-sheet) }}</style>'
            f'<script>console.log("PWNED"); document.title = "PWNED"; '
            f'fetch("{canary}/fetch")</script></head><body>'
            f'<p style="background-image: url({canary}/css-inline)">Invoice {tag}</p>'
            f'<img src="{canary}/remote.png" onerror="console.log(\'PWNED-onerror\')">'
            f'<a href="javascript:console.log(\'PWNED-js\')">pay now</a>'
            f'<a href="https://pay.example.net/{tag}">details</a>'
            f'<svg onload="console.log(\'PWNED-svg\')"></svg>'
            f'<iframe src="{canary}/frame"></iframe>'
            f'<form action="{canary}/form"><input name="q"></form></body></html>')
    return (f"From: <script>alert(1)</script> <eve@example.org>\r\nTo: bob@example.net\r\n"
            f"Subject: <img src=x onerror=alert(1)> invoice {tag}\r\nMIME-Version: 1.0\r\n"
            f"Date: Tue, 24 Nov 2026 09:00:00 +0000\r\nMessage-ID: <{tag}@example.org>\r\n"
            "Content-Type: multipart/mixed; boundary=b1\r\n\r\n--b1\r\n"
            "Content-Type: multipart/alternative; boundary=b2\r\n\r\n--b2\r\n"
            "Content-Type: text/plain; charset=utf-8\r\n\r\n"
            f"Pay the invoice {tag} at https://pay.example.net/{tag}\r\n--b2\r\n"
            "Content-Type: text/html; charset=utf-8\r\n\r\n"
            f"{html}\r\n--b2--\r\n--b1\r\n"
            'Content-Type: application/pdf; name="invoice.pdf"\r\n'
            'Content-Disposition: attachment; filename="<b>invoice</b>.pdf"\r\n'
            "Content-Transfer-Encoding: base64\r\n\r\nTVqQAAMAAAAEAAAA//8AALgAAAAAAAAAQAAAAAAA\r\n"
            "--b1--\r\n").encode()


def put_raw(store: QuarantineStore, data: bytes, rcpts=("bob@example.net",),
            names=("TEST_MARKER",)) -> str:
    envelope = Envelope(mail_from="eve@example.org", rcpt_to=rcpts, client_ip="198.51.100.7",
                        helo="mail.example.org", queue_id="QHOSTILE")
    return store.put(envelope, RawContent(data=data), verdict(*names), "quarantine")


def console_app(tmp_path: Path, web_section: str = "", extra: str = ""):
    """The console's app on a SQLite store, with ann (admin) and bob (analyst);
    ``extra``: more TOML sections."""
    from gateway.web.app import create_app

    url = f"sqlite:///{tmp_path}/q.db"
    config = parse_config(f'[quarantine]\nurl = "{url}"\n[release]\nsmtp = "127.0.0.1:9"\n'
                          '[digest]\nurl = "https://quarantine.example.org"\n'
                          f"[web]\n{web_section}\n{extra}", "test")
    store = QuarantineStore(url, node="node-a")
    app = create_app(config, store)
    console = app.extensions["gateway"]["console"]
    console.add_user("ann", "admin", PASSWORD)
    console.add_user("bob", "analyst", PASSWORD)
    return app, store, console


@pytest.fixture
def web(tmp_path: Path):
    app, store, console = console_app(tmp_path)
    yield app, store, console
    app.extensions["gateway"]["renderer"].close()
    store.close()


def login(client, name: str, password: str = PASSWORD, query: str = "", **headers):
    page = client.get("/login")
    token = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
    return client.post("/login" + query, data={"name": name, "password": password,
                                                "csrf": token}, headers=headers)


def session_cookie(response) -> str:
    return next(c for c in response.headers.getlist("Set-Cookie")
                if c.startswith("gateway_session="))


def csrf_of(client, path: str = "/account") -> str:
    return re.search(r'name="csrf" value="([^"]+)"', client.get(path).text).group(1)


@pytest.mark.slow
def test_every_page_but_login_needs_a_session(web):
    app, store, _ = web
    identifier = put(store, "pages")
    client = app.test_client()
    checked = 0
    for rule in app.url_map.iter_rules():
        if rule.endpoint in ("static", "login", "digest", "health"):
            continue
        path = re.sub(r"<int:\w+>", "0", rule.rule)
        path = re.sub(r"<\w+>", identifier if "quarantine" in rule.rule else "ann", path)
        for method in rule.methods & {"GET", "POST"}:
            response = client.open(path, method=method)
            if method == "GET":
                assert response.status_code == 302, path
                assert response.headers["Location"].startswith("/login?next="), path
            else:
                assert response.status_code == 403, path
            checked += 1
    assert checked >= 20
    assert client.get("/login").status_code == 200
    assert client.get("/static/console.css").status_code == 200



def test_the_pages_the_guards_name_are_the_apps_own(web):
    """The guards name pages by endpoint (the public ones, those a login
    may not return to): a page renamed or moved to another area must not
    leave them naming nothing, which would make /login need a session or
    let next= lead to /logout."""
    from gateway.web.guard import NOT_AFTER_LOGIN, PUBLIC

    app, _, _ = web
    endpoints = {rule.endpoint for rule in app.url_map.iter_rules()}
    assert set(PUBLIC) | set(NOT_AFTER_LOGIN) <= endpoints
    assert {"dashboard", "listing", "message", "account"} <= endpoints  # what templates name

@pytest.mark.slow
def test_session_cookie_flags_and_secure_behind_tls(tmp_path: Path):
    app, store, _ = console_app(tmp_path, 'trusted_proxies = ["127.0.0.1"]')
    plain = login(app.test_client(), "ann")
    cookie = session_cookie(plain)
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Secure" not in cookie
    tls = login(app.test_client(), "ann", **{"X-Forwarded-Proto": "https"})
    cookie = session_cookie(tls)
    assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert tls.headers["Strict-Transport-Security"].startswith("max-age=")
    # The header only counts from a trusted proxy.
    client = app.test_client()
    client.environ_base["REMOTE_ADDR"] = "192.0.2.44"
    spoofed = login(client, "ann", **{"X-Forwarded-Proto": "https"})
    cookie = session_cookie(spoofed)
    assert "Secure" not in cookie
    store.close()


@pytest.mark.slow
def test_login_is_rate_limited_and_audited(web):
    app, _, console = web
    client = app.test_client()
    for _ in range(5):
        assert login(client, "bob", "not the password").status_code == 401
    refused = login(client, "bob")
    assert refused.status_code == 429 and "too many failed logins" in refused.text
    assert 1 <= int(refused.headers["Retry-After"]) <= 30
    assert "gateway_session" not in refused.headers.get("Set-Cookie", "")
    assert [e["action"] for e in console.audit_trail()][:2] == ["login-failed", "login-failed"]


@pytest.mark.slow
def test_a_stranger_cannot_lock_an_account_nor_claim_an_address(web):
    """Issue 23 #7: five failures from anywhere locked the account for
    everyone, and X-Forwarded-For was believed from loopback by default."""
    app, _, console = web
    stranger = app.test_client()
    stranger.environ_base["REMOTE_ADDR"] = "198.51.100.66"
    for _ in range(5):
        assert login(stranger, "bob", "not the password").status_code == 401
    assert login(stranger, "bob").status_code == 429
    owner = app.test_client()
    owner.environ_base["REMOTE_ADDR"] = "192.0.2.10"
    welcome = login(owner, "bob")
    assert welcome.status_code == 302 and session_cookie(welcome)
    device = next(c for c in welcome.headers.getlist("Set-Cookie")
                  if c.startswith("gateway_device="))
    assert "HttpOnly" in device and "Path=/login" in device and "Max-Age=7776000" in device
    # No trusted proxy by default: a client on loopback cannot claim another address.
    local = app.test_client()
    for _ in range(5):
        login(local, "ann", "not the password", **{"X-Forwarded-For": f"192.0.2.{_}"})
    assert {e["address"] for e in console.audit_trail(actor="ann")} == {"127.0.0.1"}
    assert login(local, "ann", **{"X-Forwarded-For": "192.0.2.200"}).status_code == 429


OFFSITE_TARGETS = (
    "/%09/evil.test", "/%0a/evil.test", "/%0d/evil.test", "/%00/evil.test", "//evil.test",
    "/%5Cevil.test", "%5C%5Cevil.test", "/%5C/evil.test", "https://evil.test/",
    "%20//evil.test", "/%E3%80%80/evil.test", "/%0d%0aSet-Cookie:%20x=1",
    "/quarantine%0d%0aX:%201", "/%2F/evil.test", "/no/such/page", "/login", "/logout",
    "javascript:alert(1)", "/" + "a" * 3000)


@pytest.mark.slow
def test_next_and_back_accept_only_this_consoles_own_pages(web):
    """Issue 23 #4: /login?next=/%09/evil.test redirected to //evil.test, and
    CR/LF in next made a 500; the bulk form's back did the same."""
    app, store, _ = web
    identifier = put(store, "redirects")
    for target in OFFSITE_TARGETS:
        client = app.test_client()
        response = login(client, "bob", query=f"?next={target}")
        assert response.status_code == 302, target
        assert response.headers["Location"] == "/", (target, response.headers["Location"])
        back = client.post("/quarantine/bulk", data={"csrf": csrf_of(client), "id": identifier,
                                                     "action": "spam", "back":
                                                     unquote(target)})
        assert back.status_code == 302, target
        assert back.headers["Location"] == "/quarantine", (target, back.headers["Location"])
    for target in ("/quarantine?subject=x%20y&page=2", f"/quarantine/{identifier}",
                   "/admin/audit?page=2", "/"):
        client = app.test_client()
        response = login(client, "bob", query=f"?next={quote(target)}")
        assert response.headers["Location"] == target
        back = client.post("/quarantine/bulk", data={"csrf": csrf_of(client), "id": identifier,
                                                     "action": "ham", "back": target})
        assert back.headers["Location"] == target


@pytest.mark.slow
def test_state_changes_need_the_csrf_token(web):
    app, store, _ = web
    identifier = put(store, "csrf")
    client = app.test_client()
    login(client, "ann")
    other = app.test_client()
    login(other, "bob")
    for data in ({}, {"csrf": "forged"}, {"csrf": csrf_of(other)}):
        response = client.post(f"/quarantine/{identifier}/delete", data=data)
        assert response.status_code == 400 and "CSRF" in response.text
    assert store.get(identifier).state == "held"
    token = csrf_of(client)
    elsewhere = client.post(f"/quarantine/{identifier}/delete", data={"csrf": token},
                            headers={"Origin": "https://evil.example"})
    assert elsewhere.status_code == 403
    assert client.post("/login", data={"name": "ann", "password": PASSWORD}).status_code == 400
    assert store.get(identifier).state == "held"
    done = client.post(f"/quarantine/{identifier}/delete", data={"csrf": token,
                                                                 "reason": "phish"})
    assert done.status_code == 302
    last = store.get(identifier).events[-1]
    assert (last.actor, last.action, last.reason) == ("ann", "deleted", "phish")


@pytest.mark.slow
def test_an_analyst_cannot_reach_admin_pages_or_release_a_virus(web):
    app, store, console = web
    virus = put(store, "virus", names=("CLAMAV_VIRUS",))
    client = app.test_client()
    login(client, "bob")
    for path in ("/feedback", "/admin/users", "/admin/lists", "/admin/audit"):
        assert client.get(path).status_code == 403, path
    token = csrf_of(client)
    for path, data in (("/admin/users", {"name": "mallory", "role": "admin",
                                         "password": PASSWORD}),
                       ("/admin/users/bob", {"action": "admin"}),
                       ("/feedback/1/review", {"decision": "accept"}),
                       ("/feedback/train", {})):
        assert client.post(path, data={"csrf": token, **data}).status_code == 403, path
    assert console.user("mallory") is None and console.user("bob").role == "analyst"
    page = client.get(f"/quarantine/{virus}")
    assert "only an admin may release it" in page.text
    assert 'id="release-button"' not in page.text and 'id="request-button"' in page.text
    client.post(f"/quarantine/{virus}/release", data={
        "csrf": token, "rcpt": "bob@example.net", "confirm": "yes"})
    assert store.get(virus).state == "held"  # asked for, not released
    (asked,) = release_requests.listing(store)
    assert (asked.requester, asked.approver, asked.state) == ("bob", "admin", "pending")
    assert console.audit_trail()[0]["action"] == "release-request"
    assert client.post(f"/requests/{asked.id}/approve", data={
        "csrf": token, "confirm": "yes"}).status_code == 403
    assert store.get(virus).state == "held"


@pytest.mark.slow
def test_a_virus_is_an_admins_to_download_after_confirming_and_audited(web):
    """Issue 23 #8: an analyst could download a CLAMAV_VIRUS message's
    attachment and raw source, though only an admin may release it."""
    app, store, console = web
    virus = put_raw(store, hostile_html_message("v1"), names=("CLAMAV_VIRUS",))
    plain = put_raw(store, hostile_html_message("p1"))
    attachment, source = f"/quarantine/{virus}/attachment/2", f"/quarantine/{virus}/raw"
    analyst = app.test_client()
    login(analyst, "bob")
    token = csrf_of(analyst)
    assert analyst.get(f"/quarantine/{plain}/attachment/2").data.startswith(b"MZ")
    assert analyst.get(f"/quarantine/{plain}/raw?download=1").status_code == 200
    for response in (analyst.get(attachment), analyst.get(source + "?download=1"),
                     analyst.post(attachment, data={"csrf": token, "confirm": "yes"}),
                     analyst.post(source, data={"csrf": token, "confirm": "yes",
                                                "download": "1"})):
        assert response.status_code == 403 and "only an admin may download" in response.text
        assert b"MZ" not in response.data
    assert [e["action"] for e in console.audit_trail(actor="bob")][:4] == \
        ["download-refused"] * 4
    page = analyst.get(f"/quarantine/{virus}").text
    assert "only an admin may download its attachments or source" in page
    assert attachment not in page and "download=1" not in page
    assert analyst.get(source).status_code == 200  # reading the source stays open

    admin = app.test_client()
    login(admin, "ann")
    token = csrf_of(admin)
    unconfirmed = (admin.get(attachment), admin.post(attachment, data={"csrf": token}),
                   admin.get(source + "?download=1"))
    assert all(r.status_code == 403 and "after confirming" in r.text for r in unconfirmed)
    assert admin.post(attachment, data={"confirm": "yes"}).status_code == 400  # CSRF
    page = admin.get(f"/quarantine/{virus}").text
    assert 'id="dangerous-download"' in page and f'formaction="{attachment}"' in page
    got = admin.post(attachment, data={"csrf": token, "confirm": "yes"})
    assert got.status_code == 200 and got.data.startswith(b"MZ")
    eml = admin.post(source, data={"csrf": token, "confirm": "yes", "download": "1"})
    assert eml.status_code == 200 and b"invoice v1" in eml.data
    assert eml.headers["Content-Disposition"] == f'attachment; filename="{virus}.eml"'
    (source_line, attachment_line) = console.audit_trail(actor="ann")[:2]
    assert (source_line["action"], source_line["detail"]) == (
        "download", "source (confirmed: carries CLAMAV_VIRUS)")
    assert attachment_line["detail"].endswith("(confirmed: carries CLAMAV_VIRUS)")
    history = [(e.actor, e.action) for e in store.get(virus).events]
    assert history[-2:] == [("ann", "downloaded"), ("ann", "downloaded")]


@pytest.mark.slow
def test_made_up_and_foreign_ids_are_404_never_a_traceback(web):
    app, store, _ = web
    identifier = put(store, "real")
    client = app.test_client()
    login(client, "ann")
    for path in ("/quarantine/0123456789abcdef0123", "/quarantine/Qreal",  # a queue id
                 f"/quarantine/{identifier.upper()}", f"/quarantine/{identifier}x",
                 "/quarantine/..%2f..%2fetc%2fpasswd", f"/quarantine/{identifier[:10]}",
                 f"/quarantine/{identifier}/attachment/99", f"/quarantine/{identifier}/html",
                 "/quarantine/" + "a" * 5000, "/no/such/page", "/digest/abc.def"):
        response = client.get(path)
        assert response.status_code == 404, path
        assert "Traceback" not in response.text and "File \"" not in response.text
    assert client.get(f"/quarantine/{identifier}").status_code == 200


@pytest.mark.slow
def test_a_failure_is_a_plain_error_page(web, monkeypatch):
    app, store, _ = web
    client = app.test_client()
    login(client, "ann")

    def broken(*args, **kwargs):
        raise RuntimeError("secret internals /etc/gateway")

    monkeypatch.setattr(store, "records", broken)
    response = client.get("/quarantine")
    assert response.status_code == 500
    assert "Something went wrong" in response.text and "ref " in response.text
    assert "secret internals" not in response.text and "Traceback" not in response.text


@pytest.mark.slow
def test_hostile_mail_is_escaped_sanitized_and_never_rendered_in_the_page(web):
    app, store, _ = web
    identifier = put_raw(store, hostile_html_message("h1"))
    client = app.test_client()
    login(client, "ann")
    page = client.get(f"/quarantine/{identifier}")
    assert page.status_code == 200
    assert "<script>alert(1)" not in page.text and "<img src=x" not in page.text
    assert "&lt;img src=x onerror=alert(1)&gt; invoice h1" in page.text
    policy = page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert '<iframe class="mail" sandbox src=' in page.text
    assert "https://pay.example.net/h1" in page.text  # listed, as text
    assert 'href="https://pay.example.net' not in page.text
    assert "&lt;b&gt;invoice&lt;/b&gt;.pdf" in page.text  # the filename, escaped
    assert "application/x-msdownload" in page.text  # what the "PDF" really is
    frame = client.get(f"/quarantine/{identifier}/html")
    policy = frame.headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy and "sandbox" in policy and "img-src data:" in policy
    assert "script" not in policy
    body = frame.text.lower()
    for needle in ("<script", "onerror", "onload", "javascript:", "127.0.0.1:9", "url(",
                   "http-equiv", "<iframe", "<form", "<svg", "pwned"):
        assert needle not in body, needle
    assert "invoice h1" in body
    download = client.get(f"/quarantine/{identifier}/attachment/2")
    assert download.headers["Content-Type"] == "application/octet-stream"
    assert download.headers["Content-Disposition"].startswith("attachment;")
    assert download.data.startswith(b"MZ")
    raw = client.get(f"/quarantine/{identifier}/raw")
    assert "&lt;script&gt;console.log(&#34;PWNED&#34;)" in raw.text
    assert "<script>console.log" not in raw.text


def eight_bit_message(tag: str) -> bytes:
    """Bytes that are not UTF-8 in the From, To, Subject, an extension field,
    a file name, the text and the HTML (a sender can put them anywhere)."""
    return (b"From: Eve \xff\xfe <eve@example.org>\r\nTo: b\xf6b <bob@example.net>\r\n"
            b"Subject: caf\xe9 " + tag.encode() + b" \x80\r\nX-Odd: \x81\x9b[2J\r\n"
            b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b1\r\n\r\n"
            b"--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nna\xefve\r\n"
            b"--b1\r\nContent-Type: text/html\r\n\r\n<p>h\xe9llo \xff</p>\r\n"
            b"--b1\r\nContent-Type: application/octet-stream\r\n"
            b"Content-Disposition: attachment; filename=\"r\xe9sum\xff.bin\"\r\n\r\n"
            b"data\r\n--b1--\r\n")


@pytest.mark.slow
def test_every_page_shows_a_message_with_bytes_that_are_not_utf8(web):
    """Issue 23 #3: one byte that was not UTF-8 in a header made the message
    page 500 (UnicodeEncodeError). Every page type that shows a message, or
    what was done to it, answers; the message page shows the byte as \\xNN."""
    app, store, console = web
    identifier = put_raw(store, eight_bit_message("8bit"))
    console.add_label(identifier, "spam", "analyst", "bob", "same campaign")
    console.finish_job(console.start_job("train", "ann"), False, "a training job, #1")
    token = make_link(console, identifier, "bob@example.net", days=7)
    client = app.test_client()
    login(client, "ann")
    values = {"identifier": identifier, "index": "2", "name": "ann", "number": "1",
              "token": token}
    checked = set()
    for rule in app.url_map.iter_rules():
        if "GET" not in rule.methods or rule.endpoint in ("static", "health"):
            continue
        path = re.sub(r"<(?:int:)?(\w+)>", lambda m: values[m.group(1)], rule.rule)
        for query in ("", "?download=1", "?state=all"):
            response = client.get(path + query)
            if rule.endpoint == "login":  # logged in already: shown again, no harm
                assert response.status_code == 200
                continue
            assert response.status_code == 200, (path + query, response.status_code)
            checked.add(rule.endpoint)
    assert checked >= {"dashboard", "listing", "message", "message_html", "message_raw",
                       "attachment", "feedback_queue", "audit_page", "digest", "users_page",
                       "account", "lists.page"}
    page = client.get(f"/quarantine/{identifier}").text
    assert "Eve \\xff\\xfe &lt;eve@example.org&gt;" in page  # the header table
    assert "\\x81\\x9b[2J" in page
    assert "caf\\xe9 8bit \\x80" in page or "caf\ufffd 8bit \ufffd" in page
    assert "hé" in client.get(f"/quarantine/{identifier}/html").text  # latin-1 reading
    assert "sum" in console.audit_trail(actor="ann")[1]["detail"]  # the download, audited


@pytest.mark.slow
def test_bulk_actions_and_the_audit_trail_name_the_user(web):
    app, store, console = web
    ids = [put(store, f"bulk{i}") for i in range(3)]
    client = app.test_client()
    login(client, "bob")
    token = csrf_of(client)
    done = client.post("/quarantine/bulk", data={"csrf": token, "id": ids[:2],
                                                 "action": "spam", "reason": "campaign"})
    assert done.status_code == 302
    assert [(i.message, i.who, i.label) for i in console.labels()] == [
        (ids[1], "bob", "spam"), (ids[0], "bob", "spam")]
    client.post("/quarantine/bulk", data={"csrf": token, "id": [ids[2]], "action": "delete"})
    assert store.get(ids[2]).state == "deleted"
    trail = console.audit_trail()
    assert {(e["actor"], e["action"]) for e in trail} >= {("bob", "bulk-spam"),
                                                          ("bob", "bulk-delete"),
                                                          ("bob", "login")}
    listing = client.get("/quarantine?subject=bulk1&min_score=1&sort=score&order=asc")
    assert listing.status_code == 200 and ids[1] in listing.text and ids[0] not in listing.text
    odd = client.get("/quarantine?min_score=lots&since=yesterday&sort=evil&page=-3")
    assert odd.status_code == 200 and "is not a number" in odd.text


@pytest.mark.slow
def test_digest_links_release_to_their_recipient_only_and_once(web):
    app, store, console = web
    config = app.extensions["gateway"]["config"]
    identifier = put(store, "self", rcpts=("bob@example.net", "carol@example.net"))
    virus = put(store, "self-virus", names=("CLAMAV_VIRUS",))
    with Sink() as sink:
        from dataclasses import replace

        config = replace(config, release=replace(config.release, smtp=f"127.0.0.1:{sink.port}"))
        app.extensions["gateway"]["config"] = config
        sent = send_digests(store, console, config)
        assert sorted((r, n) for r, n, _ in sent) == [("bob@example.net", 1),
                                                      ("carol@example.net", 1)]
        digests = {d.rcpt_to[0]: d for d in sink.wait_for(2)}
        text = email.message_from_bytes(digests["bob@example.net"].data,
                                        policy=email.policy.default).get_body(
            ("plain",)).get_content()
        assert "invoice" not in text and "minutes self" in text and virus not in text
        token = re.search(r"/digest/([0-9a-f]{32}\.[0-9a-f]{64})\?action=release",
                          text).group(1)
        assert send_digests(store, console, config) == []  # listed once
    with Sink() as sink:
        # create_app read [release] at start: a fresh app on the same store,
        # where recipients release their own mail (approve = "none")
        from gateway.web.app import create_app

        fresh = create_app(replace(config, release=replace(
            config.release, smtp=f"127.0.0.1:{sink.port}", approve="none")), store).test_client()
        shown = fresh.get(f"/digest/{token}?action=release")  # no account
        assert shown.status_code == 200 and "Release it to me" in shown.text
        assert store.get(identifier).state == "held"  # opening the link does nothing
        done = fresh.post(f"/digest/{token}", data={"action": "release",
                                                    "form": form_of(shown.text),
                                                    "to": "carol@example.net",
                                                    "rcpt": "carol@example.net"})
        assert done.status_code == 200 and "released to bob@example.net" in done.text
        (delivery,) = sink.wait_for(1)
        assert delivery.rcpt_to == ("bob@example.net",)
        again = fresh.post(f"/digest/{token}", data={"action": "release"})
        assert again.status_code == 410 and "used already" in again.text
        time.sleep(0.3)
        assert len(sink.deliveries) == 1
    assert store.get(identifier).released_to == ("bob@example.net",)
    assert store.get(identifier).events[-1].actor == "bob@example.net (digest link)"


def form_of(page: str) -> str:
    """The form token a digest link's page carries."""
    return re.search(r'name="form" value="([^"]+)"', page).group(1)


@pytest.mark.slow
def test_a_recipient_reports_spam_into_the_queue(web):
    app, store, console = web
    identifier = put(store, "report")
    token = make_link(console, identifier, "bob@example.net", days=7)
    client = app.test_client()
    page = client.get(f"/digest/{token}?action=spam").text
    response = client.post(f"/digest/{token}", data={"action": "spam",
                                                      "form": form_of(page)})
    assert response.status_code == 200 and "reported as spam" in response.text
    (label,) = console.labels()
    assert (label.message, label.label, label.source, label.who) == (
        identifier, "spam", "recipient", "bob@example.net")


# -- the commands -------------------------------------------------------------------------

def gateway(config: Path, *args: str, stdin: str | None = None):
    return subprocess.run([sys.executable, "-m", "gateway", *args, "--config", str(config)],
                          capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=120,
                          input=stdin, env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)})


@pytest.mark.slow
def test_user_and_feedback_commands(tmp_path: Path):
    url = f"sqlite:///{tmp_path}/q.db"
    config = tmp_path / "gateway.toml"
    config.write_text(f'[quarantine]\nurl = "{url}"\n')
    added = gateway(config, "user", "add", "ann", "--role", "admin", "--password-stdin",
                    stdin=PASSWORD + "\n")
    assert added.returncode == 0, added.stderr
    assert "user ann added (admin)" in added.stdout
    short = gateway(config, "user", "add", "bob", "--role", "analyst", "--password-stdin",
                    stdin="short\n")
    assert short.returncode == 2 and short.stderr.count("\n") == 1
    assert "12 characters" in short.stderr
    no_tty = gateway(config, "user", "passwd", "ann", stdin="")
    assert no_tty.returncode == 2 and "--password-stdin" in no_tty.stderr
    assert gateway(config, "user", "passwd", "ann", "--password-stdin",
                   stdin="another long password\n").returncode == 0
    assert gateway(config, "user", "disable", "ann").returncode == 0
    listing = gateway(config, "user", "list")
    assert re.search(r"^ann\s+admin\s+disabled", listing.stdout, re.M)
    assert gateway(config, "user", "disable", "nobody").stderr == \
        "gateway: no user 'nobody'\n"

    store = QuarantineStore(url)
    identifier = put(store, "cli-label")
    number, _ = Console(store).add_label(identifier, "spam", "analyst", "bob")
    pending = gateway(config, "feedback", "list")
    assert f"#{number}" in pending.stdout and "by bob (analyst)" in pending.stdout
    accepted = gateway(config, "feedback", "accept", str(number), "--note", "yes")
    assert accepted.returncode == 0, accepted.stderr
    assert "accepted into the learned training set as spam" in accepted.stdout
    again = gateway(config, "feedback", "reject", str(number))
    assert again.returncode == 2 and "accepted already" in again.stderr
    dry = gateway(config, "digest", "send", "--dry-run")
    assert dry.returncode == 2 and "[digest] url is not set" in dry.stderr
    store.close()


@pytest.mark.slow
def test_gateway_web_serves_and_stops(tmp_path: Path):
    port = free_port()
    config = tmp_path / "gateway.toml"
    config.write_text(f'[quarantine]\nurl = "sqlite:///{tmp_path}/q.db"\n'
                      f'[web]\nlisten = "127.0.0.1:{port}"\n')
    process = subprocess.Popen([sys.executable, "-m", "gateway", "web", "--config", str(config)],
                               cwd=PROJECT_ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)})
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as conn:
                    conn.sendall(b"GET /quarantine HTTP/1.0\r\nHost: x\r\n\r\n")
                    reply = conn.recv(4096)
                break
            except OSError:
                time.sleep(0.1)
        else:
            pytest.fail("gateway web did not listen")
        assert reply.split(b" ")[1] == b"302" and b"Location: /login" in reply
        taken = gateway(config, "web")
        assert taken.returncode == 2 and "cannot listen on" in taken.stderr
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=10)


def test_the_daily_digest_goes_out_once_a_day_from_one_node(tmp_path: Path):
    from gateway.web.digest import DailyDigest

    store = QuarantineStore(f"sqlite:///{tmp_path}/q.db", node="node-a")
    put(store, "daily", rcpts=("bob@example.net",))
    with Sink() as sink:
        config = parse_config(f'[release]\nsmtp = "127.0.0.1:{sink.port}"\n[digest]\n'
                              'enabled = true\nurl = "https://q.example.org"\nhour = 7\n', "t")
        nodes = [DailyDigest(QuarantineStore(store.url, node=n), Console(store), config)
                 for n in ("node-a", "node-b")]
        morning = datetime(2026, 12, 2, 6, 59, tzinfo=UTC)
        assert nodes[0].run_once(morning) is None  # before [digest] hour
        later = morning + timedelta(minutes=5)
        assert nodes[0].run_once(later) == 1
        assert nodes[1].run_once(later) is None  # node-a had the day
        assert nodes[0].run_once(later + timedelta(hours=1)) is None
        assert len(sink.wait_for(1)) == 1
        time.sleep(0.2)
        assert len(sink.deliveries) == 1
    store.close()

"""The console in a real browser: Debian's headless Chromium, driven by
Selenium through chromium-driver, one browser for the whole module.

- An analyst logs in, filters the list, opens a held message, reads the
  symbol explanation and releases it to one of its two recipients: it
  arrives at the private Postfix's sink with X-Gateway-Released, and the
  history has Postfix's queue id.
- An analyst labels messages; an admin accepts the labels into the learned
  training set.
- An HTML mail with <script>, onerror=, javascript: links, a remote image,
  CSS url() and <meta refresh> is displayed: no script runs (the console
  log), and no request leaves the console (the browser's network log, and a
  canary HTTP server on loopback that the mail points at).

Screenshots of the dashboard, the list and a message view are saved in the
module's output folder (and in $GATEWAY_SCREENSHOTS when set, which is how
the ones in docs/ were made).
"""

from __future__ import annotations

import http.server
import json
import os
import shutil
import smtplib
import threading
import time
import uuid
from pathlib import Path

import pytest

from gateway.classifier.trainingset import TrainingSet
from gateway.config import parse_config
from gateway.lab.postfix import free_port
from gateway.quarantine.store import Filters, QuarantineStore
from tests.helpers import send
from tests.test_quarantine import message, quarantine_config
from tests.test_web import PASSWORD, hostile_html_message, put_raw
from tests.test_web_preview import PATHOLOGICAL, html_message

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")

selenium = pytest.importorskip("selenium", reason="selenium is not installed (the test extra)")
if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
    pytest.skip("Debian's chromium and chromium-driver are not installed "
                "(deploy/debian-packages.txt; scripts/setup installs them)",
                allow_module_level=True)

from selenium.common.exceptions import NoAlertPresentException  # noqa: E402
from selenium.webdriver import Chrome, ChromeOptions  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402


@pytest.fixture(scope="module")
def output(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("screenshots")


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    options = ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-background-networking", "--disable-component-update",
                     "--disable-sync", "--no-first-run", "--disable-default-apps",
                     "--window-size=1360,1000",
                     f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


class Site:
    """The console served by waitress on loopback, in this process."""

    def __init__(self, root: Path, release_smtp: str, extra: str = ""):
        from gateway.web.app import create_app
        from gateway.web.server import make_server

        self.url = f"sqlite:///{root}/q.db"
        self.config = parse_config(f'[quarantine]\nurl = "{self.url}"\nnode = "mx1"\n'
                                   f'[release]\nsmtp = "{release_smtp}"\n{extra}',
                                   "browser-test")
        self.store = QuarantineStore(self.url, node="mx1")
        self.app = create_app(self.config, self.store)
        self.console = self.app.extensions["gateway"]["console"]
        self.console.add_user("ann", "admin", PASSWORD)
        self.console.add_user("alice", "analyst", PASSWORD)
        self.port = free_port()
        self.server = make_server(self.app, "127.0.0.1", self.port, self.config.web)
        self.base = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.server.run, daemon=True).start()

    def close(self) -> None:
        self.server.close()
        self.app.extensions["gateway"]["renderer"].close()
        self.store.close()


@pytest.fixture(scope="module")
def site(tmp_path_factory, request):
    try:  # released mail goes to the private Postfix's listener when there is one
        postfix = request.getfixturevalue("postfix")
        smtp = f"127.0.0.1:{postfix.reinject_port}"
    except pytest.skip.Exception:
        smtp = f"127.0.0.1:{free_port()}"
    running = Site(tmp_path_factory.mktemp("console"), smtp)
    yield running
    running.close()


def shot(browser, output: Path, name: str) -> None:
    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(1360, min(max(height, 700), 2400))
    path = output / f"{name}.png"
    browser.save_screenshot(str(path))
    if os.environ.get("GATEWAY_SCREENSHOTS"):
        target = Path(os.environ["GATEWAY_SCREENSHOTS"])
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target / path.name)
    browser.set_window_size(1360, 1000)


def log_in(browser, site: Site, name: str, start: str = "/") -> None:
    browser.delete_all_cookies()
    browser.get(site.base + start)
    assert "/login" in browser.current_url  # every page but login needs a session
    browser.find_element(By.NAME, "name").send_keys(name)
    browser.find_element(By.NAME, "password").send_keys(PASSWORD)
    browser.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
    assert find(browser, By.CSS_SELECTOR, ".who a").text == name


def find(browser, by: str, value: str, timeout: float = 10.0):
    """An element, once the page that has it is there."""
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.wait import WebDriverWait

    return WebDriverWait(browser, timeout).until(
        expected_conditions.presence_of_element_located((by, value)))


def submit_filter(browser, subject: str) -> None:
    browser.find_element(By.NAME, "subject").send_keys(subject)
    browser.find_element(By.CSS_SELECTOR, "form.filters button[type=submit]").click()
    wait_for(lambda: "subject=" in browser.current_url, what="the filtered list")


def _stale(element) -> bool:
    from selenium.common.exceptions import WebDriverException

    try:
        element.is_enabled()
    except WebDriverException:
        # StaleElementReferenceException, or, while the next page is being
        # built, chromium's "Node with given id does not belong to the
        # document": either way the old page is gone.
        return True
    return False


def wait_for(condition, timeout: float = 20.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


@pytest.mark.postfix
def test_an_analyst_finds_a_held_message_and_releases_it_to_one_recipient(
        browser, site, postfix, sink, gateway_milter, tmp_path, output):
    gateway_milter(quarantine_config(tmp_path, postfix, f'[quarantine]\nurl = "{site.url}"\n'
                                                        'node = "mx1"\n'))
    tag, other = uuid.uuid4().hex[:12], uuid.uuid4().hex[:12]
    send(postfix, message(tag), rcpt_to=("bob@example.net", "carol@example.net"))
    send(postfix, message(other))
    wait_for(lambda: site.store.count_matching(Filters(subject=other)) == 1, what="held mail")
    assert sink.find(tag, timeout=1) is None  # held, not delivered

    log_in(browser, site, "alice")
    shot(browser, output, "dashboard")
    browser.get(site.base + "/quarantine")
    submit_filter(browser, f"minutes {tag}")
    rows = browser.find_elements(By.CSS_SELECTOR, "table.list tbody tr")
    assert len(rows) == 1 and f"minutes {tag}" in rows[0].text and "TEST_MARKER" in rows[0].text
    browser.get(site.base + "/quarantine")
    shot(browser, output, "list")
    submit_filter(browser, f"minutes {tag}")
    find(browser, By.LINK_TEXT, f"minutes {tag}").click()

    symbols = find(browser, By.CSS_SELECTOR, "table.symbols").text
    assert "TEST_MARKER" in symbols and "the body contains TRIGGER-MARKER" in symbols
    assert "10.00" in symbols
    shot(browser, output, "message")
    boxes = {b.get_attribute("value"): b for b in
             browser.find_elements(By.CSS_SELECTOR, "form.release input[name=rcpt]")}
    assert set(boxes) == {"bob@example.net", "carol@example.net"}
    boxes["carol@example.net"].click()  # untick: bob only
    browser.find_element(By.CSS_SELECTOR, "form.release input[name=reason]").send_keys(
        "minutes he asked for")
    browser.find_element(By.ID, "release-button").click()
    notice = find(browser, By.CSS_SELECTOR, ".notice.ok").text
    assert notice.startswith("released to bob@example.net, queued as ")
    queue_id = notice.rsplit(" ", 1)[1]

    delivery = sink.find(tag)
    assert delivery is not None and delivery.rcpt_to == ("bob@example.net",)
    released = delivery.header("X-Gateway-Released")
    assert released.startswith("by alice at ") and "(quarantine " in released
    assert delivery.header("X-Spam-Status").startswith("Yes, score=10.0")
    history = browser.find_element(By.XPATH, "//h2[text()='History']/following-sibling::table")
    assert f"queued as {queue_id}" in history.text and "minutes he asked for" in history.text
    assert f"{queue_id}: client=" in postfix.log_text()  # traceable in the mail log
    record = site.store.records(Filters(subject=f"minutes {tag}"))[0]
    assert record.released_to == ("bob@example.net",)
    assert next(e["action"] for e in site.console.audit_trail(actor="alice")) == "release"
    # carol has not had it: still held, in the list and on the page (issue 28 #4)
    assert record.state == "held"
    recipients = browser.find_element(By.CSS_SELECTOR, "td.recipients").text
    assert "bob@example.net released" in recipients and "carol@example.net held" in recipients
    browser.get(site.base + f"/quarantine?state=held&subject={tag}")
    assert "1 of 2 released" in find(browser, By.CSS_SELECTOR, "table.list tbody").text


def test_labels_wait_for_an_admin_who_accepts_them_into_the_training_set(browser, site,
                                                                        output):
    tag = uuid.uuid4().hex[:10]
    ids = [put_raw(site.store, message(f"{tag}-{i}").replace(
        b"Dear Bob", f"Dear Bob ({i}, {tag}, cheap pills)".encode())) for i in range(2)]
    log_in(browser, site, "alice", start=f"/quarantine?subject={tag}")
    assert f"subject={tag}" in browser.current_url  # back where the login was asked for
    browser.find_element(By.ID, "select-all").click()  # the console's one script
    assert all(b.is_selected() for b in browser.find_elements(By.NAME, "id"))
    browser.find_element(By.CSS_SELECTOR, "form#bulk input[name=reason]").send_keys(
        "same campaign")
    browser.find_element(By.CSS_SELECTOR, "button[name=action][value=spam]").click()
    assert "2 messages labelled spam" in find(browser, By.CSS_SELECTOR, ".notice.ok").text
    browser.get(site.base + "/feedback")
    assert "403" in browser.find_element(By.TAG_NAME, "h1").text  # analysts do not review
    browser.find_element(By.CSS_SELECTOR, "button.link").click()  # log out
    find(browser, By.NAME, "password")

    log_in(browser, site, "ann")
    browser.get(site.base + "/feedback")
    rows = [r for r in browser.find_elements(By.CSS_SELECTOR, "table.feedback tbody tr")
            if tag in r.text]
    assert len(rows) == 2 and all("alice" in r.text and "same campaign" in r.text
                                  for r in rows)
    shot(browser, output, "feedback")
    for _ in ids:
        row = next(r for r in browser.find_elements(By.CSS_SELECTOR,
                                                    "table.feedback tbody tr")
                   if tag in r.text and "Accept" in r.text)
        row.find_element(By.NAME, "note").send_keys("checked")
        row.find_element(By.CSS_SELECTOR, "button[value=accept]").click()
        wait_for(lambda row=row: _stale(row), what="the reviewed page")
        assert "accepted into the learned training set as spam" in find(
            browser, By.CSS_SELECTOR, ".notice.ok").text
    learned = TrainingSet(site.url)
    assert learned.counts()["spam"] >= 2
    assert {e.quarantine_id for e in learned.entries()} >= set(ids)
    learned.close()


class _Canary(http.server.BaseHTTPRequestHandler):
    hits: list[str] = []

    def do_GET(self):
        type(self).hits.append(self.path)
        self.send_response(204)
        self.end_headers()

    do_POST = do_GET

    def log_message(self, *args):
        pass


@pytest.fixture
def canary():
    _Canary.hits = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Canary)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", _Canary.hits
    server.shutdown()


def test_hostile_html_runs_no_script_and_loads_nothing(browser, site, canary, output):
    address, hits = canary
    tag = uuid.uuid4().hex[:10]
    identifier = put_raw(site.store, hostile_html_message(tag, canary=address))
    log_in(browser, site, "ann")
    browser.get_log("browser")
    browser.get_log("performance")  # start both logs here
    page = f"{site.base}/quarantine/{identifier}"
    browser.get(page)
    frame = browser.find_element(By.CSS_SELECTOR, "iframe.mail")
    assert frame.get_attribute("sandbox") == ""  # the strictest sandbox
    browser.switch_to.frame(frame)
    wait_for(lambda: "Invoice" in browser.find_element(By.TAG_NAME, "body").text,
             what="the sanitized HTML")
    assert browser.find_elements(By.TAG_NAME, "script") == []
    assert browser.find_elements(By.CSS_SELECTOR, "[onerror], [onload], meta[http-equiv], "
                                                  "iframe, form, svg, style, link") == []
    browser.switch_to.default_content()
    time.sleep(1.5)  # long enough for a meta refresh or a late load
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert.text  # noqa: B018
    assert browser.current_url == page and "PWNED" not in browser.title
    console = browser.get_log("browser")
    assert not [e for e in console if "PWNED" in e["message"]], console
    assert not [e for e in console if e["level"] == "SEVERE"], console
    requested = []
    for entry in browser.get_log("performance"):
        event = json.loads(entry["message"])["message"]
        if event["method"] == "Network.requestWillBeSent":
            requested.append(event["params"]["request"]["url"])
    assert requested and all(u.startswith(site.base + "/") or u.startswith("data:")
                             for u in requested), requested
    assert hits == []  # nothing reached the canary the mail points at
    assert f"{site.base}/quarantine/{identifier}/html" in requested
    text = browser.find_element(By.CSS_SELECTOR, "ul.urls").text
    assert f"https://pay.example.net/{tag}" in text
    shot(browser, output, "message-html")


def test_a_2_mib_message_built_to_hang_the_preview_opens_with_a_notice(browser, site):
    """Issue 23 #2: such a message held a console thread for minutes and the
    page never came. The page (the browser gives up after 30 s) shows the
    first 256 KiB of the HTML, says so, and the console still answers."""
    hostile = PATHOLOGICAL["unclosed a"] + PATHOLOGICAL["formatting"][:1024 * 1024]
    identifier = put_raw(site.store, html_message(hostile, "hang"))
    log_in(browser, site, "alice")
    browser.get(f"{site.base}/quarantine/{identifier}")
    notice = find(browser, By.ID, "html-truncated")
    assert "Only the first 256 KiB of the HTML body are shown" in notice.text
    assert "Invoice hang" in browser.find_element(By.CSS_SELECTOR, "pre.body").text
    browser.switch_to.frame(browser.find_element(By.CSS_SELECTOR, "iframe.mail"))
    wait_for(lambda: "Invoice hang" in browser.find_element(By.TAG_NAME, "body").text,
             what="the sanitized HTML")
    browser.switch_to.default_content()
    browser.get(f"{site.base}/quarantine")
    assert find(browser, By.CSS_SELECTOR, "table.list")


def _refused(postfix, data: bytes, sender: str) -> str | None:
    """The 5xx reply Postfix gave, or None when it took the message."""
    try:
        send(postfix, data, mail_from=sender)
    except smtplib.SMTPDataError as exc:
        return f"{exc.smtp_code} {exc.smtp_error.decode(errors='replace')}"
    return None


@pytest.mark.postfix
def test_an_admin_blocks_a_sender_from_a_held_message_and_postfix_refuses_its_next_mail(
        browser, site, postfix, gateway_milter, tmp_path):
    """Issue 28 #2: the console neither showed nor managed the lists that
    block mail. Block the sender's domain from its held message; its next
    message is refused through Postfix, the Lists page counts the hit, and
    removing the entry there lets the domain's mail in again."""
    gateway_milter(quarantine_config(tmp_path, postfix, f'[quarantine]\nurl = "{site.url}"\n'
                                                        'node = "mx1"\n[lists]\nrefresh = 0.3\n'))
    tag = uuid.uuid4().hex[:12]
    send(postfix, message(tag), mail_from="eve@phish.example")
    wait_for(lambda: site.store.count_matching(Filters(subject=tag)) == 1, what="held mail")
    identifier = site.store.records(Filters(subject=tag))[0].id

    log_in(browser, site, "ann", start=f"/quarantine/{identifier}")
    form = find(browser, By.ID, "block-sender")
    form.find_element(By.CSS_SELECTOR, "input[name=what][value=domain]").click()
    form.find_element(By.NAME, "reason").send_keys("phishing wave")
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    assert "added block-sender phish.example" in find(browser, By.CSS_SELECTOR,
                                                      ".notice.ok").text
    (entry,) = [e for e in site.store.list_entries() if e.value == "phish.example"]
    assert (entry.owner, entry.reason) == ("ann", "phishing wave")

    later = message(f"{tag}-later")
    reply = wait_for(lambda: _refused(postfix, later, "boss@mail.phish.example"),
                     what="Postfix refusing the blocked domain")
    assert reply.startswith("5"), reply

    def hits_shown() -> bool:
        browser.get(site.base + "/admin/lists")
        row = browser.find_element(By.ID, f"entry-{entry.id}").text
        return "phishing wave" in row and "ann" in row and \
            site.store.get_list_entry(entry.id).hits >= 1 and " 0 " not in f" {row} "
    wait_for(hits_shown, what="the hit counted on the Lists page")
    browser.find_element(By.ID, f"entry-{entry.id}").find_element(
        By.CSS_SELECTOR, "button.danger").click()
    assert "removed block-sender phish.example" in find(browser, By.CSS_SELECTOR,
                                                         ".notice.ok").text
    wait_for(lambda: _refused(postfix, message(f"{tag}-again"), "boss@phish.example") is None,
             what="the domain's mail taken again")


@pytest.mark.postfix
def test_an_analyst_requests_a_release_an_admin_approves_it_and_the_analyst_is_told(
        browser, site, postfix, sink):
    """The request-then-approve flow in the browser: an analyst cannot
    release a virus, only ask; the admin approves on the Requests page after
    confirming; Postfix delivers it; the analyst's next page says so."""
    tag = uuid.uuid4().hex[:10]
    identifier = put_raw(site.store, message(f"virus {tag}"), names=("CLAMAV_VIRUS",),
                         rcpts=("bob@example.net", "carol@example.net"))
    log_in(browser, site, "alice", start=f"/quarantine/{identifier}")
    form = find(browser, By.CSS_SELECTOR, "form.release")
    assert not browser.find_elements(By.ID, "release-button")
    form.find_element(By.CSS_SELECTOR, "input[name=rcpt][value='bob@example.net']").click()
    form.find_element(By.NAME, "reason").send_keys("carol expects this file")
    browser.find_element(By.ID, "request-button").click()
    assert "requested (#" in find(browser, By.CSS_SELECTOR, ".notice.ok").text
    assert "release requested" in browser.find_element(By.CSS_SELECTOR,
                                                       "td.recipients").text
    assert sink.find(f"virus {tag}", timeout=0.5) is None

    log_in(browser, site, "ann", start="/requests")
    row = find(browser, By.XPATH, f"//tr[contains(., 'virus {tag}')]")
    assert "carol expects this file" in row.text and "alice" in row.text
    row.find_element(By.NAME, "reason").send_keys("checked with carol")
    row.find_element(By.CSS_SELECTOR, "button.approve").click()
    assert "explicit confirmation" in find(browser, By.CSS_SELECTOR, ".notice.error").text
    row = find(browser, By.XPATH, f"//tr[contains(., 'virus {tag}')]")
    row.find_element(By.NAME, "confirm").click()
    row.find_element(By.CSS_SELECTOR, "button.approve").click()
    assert "approved: released to carol@example.net" in find(
        browser, By.CSS_SELECTOR, ".notice.ok").text
    delivery = sink.find(f"virus {tag}")
    assert delivery is not None and delivery.rcpt_to == ("carol@example.net",)
    assert delivery.header("X-Gateway-Released").startswith("by ann at ")
    assert site.store.get(identifier).state == "held"  # bob has not had it

    log_in(browser, site, "alice")
    told = [n.text for n in browser.find_elements(By.CSS_SELECTOR, ".notice.ok")]
    assert any(f"to release \"minutes virus {tag}\" was approved" in t for t in told), told


def _horizontal_scroll(browser) -> int:
    return browser.execute_script(
        "return document.documentElement.scrollWidth - document.documentElement.clientWidth")


def test_the_list_fits_1280_px_and_becomes_cards_under_1024(browser, site):
    """Issue 28 #7: the list overflowed at 1400 px and hid recipients and
    symbols at 1024 px."""
    tag = uuid.uuid4().hex[:8]
    long = "a-very-long-local-part-of-an-address-that-goes-on-and-on"
    for i in range(3):
        put_raw(site.store, message(f"wide {tag} {i} " + "subject words " * 20),
                rcpts=tuple(f"{long}.{n}@recipients.example.net" for n in range(4)),
                names=("BAYES_99", "FROM_LOOKALIKE_DOMAIN", "MISSING_DATE",
                       "A_VERY_LONG_SYMBOL_NAME_FOR_TESTING"))
    log_in(browser, site, "alice")
    try:
        for width in (1400, 1280):
            browser.set_window_size(width, 900)
            browser.get(f"{site.base}/quarantine?subject=wide+{tag}")
            find(browser, By.CSS_SELECTOR, "table.list tbody tr")
            assert _horizontal_scroll(browser) <= 0, width
            row = browser.find_element(By.CSS_SELECTOR, "table.list tbody tr")
            assert row.value_of_css_property("display") == "table-row"
        for width in (1000, 700):
            browser.set_window_size(width, 900)
            browser.get(f"{site.base}/quarantine?subject=wide+{tag}")
            row = find(browser, By.CSS_SELECTOR, "table.list tbody tr")
            assert row.value_of_css_property("display") == "grid", width  # a card
            assert _horizontal_scroll(browser) <= 0, width
            cells = {c.get_attribute("data-label"): c for c in
                     row.find_elements(By.CSS_SELECTOR, "td[data-label]")}
            for label in ("recipients", "top symbols", "sender", "subject", "score"):
                assert cells[label].is_displayed(), (width, label)
                assert cells[label].size["width"] > 0
            assert f"{long}.3@recipients.example.net" in cells["recipients"].text
            assert "FROM_LOOKALIKE_DOMAIN" in cells["top symbols"].text
    finally:
        browser.set_window_size(1360, 1000)


def test_a_training_job_shows_a_progress_bar(browser, site):
    job = site.console.start_job("train", "ann")
    try:
        site.console.update_job(job, "reading spam [########..........] 20/40 (9/s)")
        log_in(browser, site, "ann", start="/feedback")
        bar = find(browser, By.ID, f"job-{job}-bar")
        assert bar.tag_name == "progress" and bar.is_displayed()
        assert (bar.get_attribute("value"), bar.get_attribute("max")) == ("20", "40")
        assert "[####" not in browser.find_element(By.CSS_SELECTOR, "details.job").text
        # the page's script follows the job as it runs
        site.console.update_job(job, "cross-validation fold 15/20: AUC 0.99")
        wait_for(lambda: bar.get_attribute("value") == "15", what="the bar to move")
        assert browser.find_element(By.CSS_SELECTOR, ".progress .label").text == \
            "cross-validation fold: 15 of 20"
    finally:
        site.console.finish_job(job, False, "stopped by the test")


def test_a_directory_user_logs_in_with_the_role_of_their_group(browser, tmp_path):
    """LDAP login in the browser: bob, in the directory's mail-analysts
    group, logs in as an analyst; a local admin logs in beside him and sees
    his account marked as the directory's."""
    from tests.lab.slapd import SlapdServer, available
    from tests.test_web_ldap import LDAP_PASSWORD, LDIF, web_section

    if not available():
        pytest.skip("Debian's slapd is not installed (deploy/debian-packages.txt)")
    with SlapdServer(tmp_path / "slapd", LDIF) as directory:
        ldap_site = Site(tmp_path / "console", f"127.0.0.1:{free_port()}",
                         "[web]\n" + web_section(directory.url))
        try:
            browser.delete_all_cookies()
            browser.get(ldap_site.base + "/login")
            browser.find_element(By.NAME, "name").send_keys("bob")
            browser.find_element(By.NAME, "password").send_keys(LDAP_PASSWORD)
            browser.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
            assert find(browser, By.CSS_SELECTOR, ".who a").text == "bob"
            assert browser.find_element(By.CSS_SELECTOR, ".who .role").text == "analyst"
            log_in(browser, ldap_site, "ann")  # a local admin, beside the directory
            browser.get(ldap_site.base + "/admin/users")
            row = find(browser, By.XPATH, "//tr[td[contains(., 'bob')]]")
            assert "LDAP" in row.text and "analyst" in row.text
        finally:
            ldap_site.close()

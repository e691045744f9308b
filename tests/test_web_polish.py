"""Console polish (issue 28 #7), through Flask's test client: one wording
for the verdict and its thresholds (page and command line), attachment
downloads under their sanitised original names, the Train button's corpus,
its clear refusal when there is nothing to train on and its progress bar,
and bulk review of the feedback queue. (The list's layout at 1280 px and
below 1024 px is checked in Chromium, tests/test_web_browser.py.)"""

from __future__ import annotations

import time
from email.message import EmailMessage
from pathlib import Path

import pytest

from gateway.classifier.trainingset import TrainingSet
from gateway.commands.quarantine import print_record
from gateway.config import load_config
from gateway.web.preview import download_name
from tests.helpers import FIXTURES
from tests.test_quarantine import put
from tests.test_web import PASSWORD, console_app, csrf_of, login, put_raw


@pytest.fixture
def web(tmp_path: Path):
    app, store, console = console_app(tmp_path)
    yield app, store, console
    app.extensions["gateway"]["renderer"].close()
    store.close()


def test_the_verdict_names_each_threshold_the_same_way_on_the_page_and_the_cli(web, capsys):
    """Issue 28 #7: "Verdict: score 13.90 (required 3)" stood beside
    "quarantine threshold 4"; "required" was the add_header threshold."""
    app, store, _ = web
    identifier = put(store, "wording")
    client = app.test_client()
    login(client, "bob")
    page = client.get(f"/quarantine/{identifier}").text
    assert "Verdict: quarantine at score 7</h2>" in page
    assert "score 7 &gt;= quarantine threshold 6; marked as spam from score 6" in page
    assert "required" not in page
    print_record(store.get(identifier))
    shown = capsys.readouterr().out
    assert ("verdict:     quarantine at score 7: score 7 >= quarantine threshold 6; marked "
            "as spam from score 6") in shown


def with_attachment(name: str) -> bytes:
    mail = EmailMessage()
    mail["From"], mail["To"], mail["Subject"] = "eve@example.org", "bob@example.net", "files"
    mail.set_content("see the file")
    mail.add_attachment(b"%PDF-1.4 test", maintype="application", subtype="pdf",
                        filename=name)
    return mail.as_bytes()


def test_attachments_download_under_their_sanitised_original_names(web):
    """Issue 28 #7: every download was called ….bin."""
    app, store, _ = web
    client = app.test_client()
    login(client, "bob")
    for name, saved, header in (
            ("invoice 2026.pdf", "invoice 2026.pdf", 'filename="invoice 2026.pdf"'),
            ("../../etc/r\u00e9sum\u00e9.pdf", "r\u00e9sum\u00e9.pdf",
             "filename*=UTF-8''r%C3%A9sum%C3%A9.pdf"),
            ("invoice\u202egpj.exe", "invoice_gpj.exe", "filename=invoice_gpj.exe")):
        identifier = put_raw(store, with_attachment(name))
        response = client.get(f"/quarantine/{identifier}/attachment/1")
        disposition = response.headers["Content-Disposition"]
        assert response.status_code == 200 and response.data == b"%PDF-1.4 test"
        assert response.mimetype == "application/octet-stream"
        assert disposition.startswith("attachment;") and header in disposition, disposition
        assert download_name(name, 1) == saved
    for hostile, expected in (("", "attachment-3"), ("...", "attachment-3"),
                              ("CON.txt", "attachment-3-CON.txt"),
                              ("a\r\nb\x00c.pdf", "a__b_c.pdf"),
                              ("x" * 300 + ".pdf", "x" * 146 + ".pdf"),
                              ("bad\udcff.doc", "bad_.doc")):
        assert download_name(hostile, 2) == expected, hostile


def test_train_says_clearly_when_there_is_nothing_to_train_on(web):
    app, _, console = web
    client = app.test_client()
    login(client, "ann")
    said = client.post("/feedback/train", data={"csrf": csrf_of(client)},
                       follow_redirects=True)
    assert ("nothing to train on yet: the learned set has 0 ham and 0 spam (10 of each at "
            "least), and no corpus is configured") in said.text
    assert console.jobs("train") == []


def test_a_running_job_shows_its_progress_as_a_bar(web):
    app, _, console = web
    job = console.start_job("train", "ann")
    console.update_job(job, "learned training set: 3 ham, 2 spam\nreading ham [######....."
                            ".........] 12/40 (6/s)\ncross-validation fold 6/20: AUC 0.98")
    client = app.test_client()
    login(client, "ann")
    page = client.get("/feedback").text
    assert f'<progress max="20" value="6" id="job-{job}-bar">30%</progress>' in page
    assert "cross-validation fold: 6 of 20" in page
    assert "[######" not in page and "learned training set: 3 ham" in page
    assert client.get(f"/feedback/jobs/{job}").get_json() == {
        "id": job, "status": "running", "progress": {
            "label": "cross-validation fold", "done": 6, "total": 20, "percent": 30}}


def test_bulk_accept_and_reject_in_the_feedback_queue(web):
    app, store, console = web
    ids = [put_raw(store, with_attachment(f"distinct-{i}.pdf")) for i in range(3)]
    numbers = [console.add_label(i, "spam", "analyst", "bob")[0] for i in ids]
    client = app.test_client()
    login(client, "ann")
    page = client.get("/feedback").text
    assert 'id="bulk-accept"' in page and 'form="bulk-review"' in page
    token = csrf_of(client)
    done = client.post("/feedback/bulk", data={"csrf": token, "id": numbers[:2],
                                               "decision": "accept", "note": "campaign"},
                       follow_redirects=True)
    assert "2 labels accepted into the learned training set" in done.text
    client.post("/feedback/bulk", data={"csrf": token, "id": [numbers[2]],
                                        "decision": "reject"})
    states = {label.id: (label.state, label.reviewer) for label in console.labels(None)}
    assert states == {numbers[0]: ("accepted", "ann"), numbers[1]: ("accepted", "ann"),
                      numbers[2]: ("rejected", "ann")}
    learned = TrainingSet(store.url)
    assert learned.counts()["spam"] == 2
    learned.close()
    again = client.post("/feedback/bulk", data={"csrf": token, "id": numbers[:1],
                                                "decision": "reject"}, follow_redirects=True)
    assert "was accepted already" in again.text
    analyst = app.test_client()
    login(analyst, "bob")
    assert analyst.post("/feedback/bulk", data={"csrf": csrf_of(analyst), "id": numbers,
                                                "decision": "accept"}).status_code == 403


@pytest.mark.slow
def test_the_train_button_trains_on_the_configured_corpus_and_the_learned_set(tmp_path):
    """Issue 28 #7: Train used the learned set alone and failed below 10+10."""
    from gateway.web.app import create_app

    config_file = tmp_path / "gateway.toml"
    corpus = FIXTURES / "corpus"
    config_file.write_text(f'[quarantine]\nurl = "sqlite:///{tmp_path}/q.db"\n'
                           f'[classifier]\nstore = "{tmp_path}/models"\n'
                           f'[web]\ntrain_ham = ["{corpus}/ham"]\n'
                           f'train_spam = ["{corpus}/spam"]\n')
    app = create_app(load_config(config_file))
    console = app.extensions["gateway"]["console"]
    console.add_user("ann", "admin", PASSWORD)
    client = app.test_client()
    login(client, "ann")
    started = client.post("/feedback/train", data={"csrf": csrf_of(client)},
                          follow_redirects=True)
    assert "on your corpus and the learned set" in started.text
    deadline = time.monotonic() + 900
    while console.jobs("train")[0]["status"] == "running" and time.monotonic() < deadline:
        time.sleep(0.5)
    (job,) = console.jobs("train")
    assert job["status"] == "done", job["output"][-2000:]
    assert "learned training set: 0 ham, 0 spam" in job["output"]
    assert "0 from the learned set" in job["output"] and "model " in job["output"]
    app.extensions["gateway"]["store"].close()

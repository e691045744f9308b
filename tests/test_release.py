"""Safe release (a subset of the original recipients, admin-only symbols, the
released copy's headers, queue ids and failures in the history), the store's
new list filters and id prefixes, the migrations' single head, and the
command line's bulk ids and JSON keys."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from alembic.config import Config as AlembicConfig
from alembic.script import ScriptDirectory

from gateway.db import MIGRATIONS
from gateway.lab.postfix import free_port
from gateway.lab.sink import Sink
from gateway.message import Envelope, RawContent
from gateway.policy import Policy
from gateway.quarantine.release import RELEASED_HEADER, ReleaseError, release, released_copy
from gateway.quarantine.store import Filters, QuarantineError, QuarantineStore
from gateway.ruleset import Ruleset, load_rules
from gateway.schema import ConfigError
from gateway.symbols import Symbol
from gateway.verdict import PipelineResult
from tests.helpers import PROJECT_ROOT
from tests.test_quarantine import message, put


@pytest.fixture
def store(tmp_path: Path):
    opened = QuarantineStore(f"sqlite:///{tmp_path}/q.db", node="node-a")
    yield opened
    opened.close()


class _QueuedAs:
    """An SMTP server that answers DATA like Postfix: 'queued as <id>'."""

    def __init__(self) -> None:
        self.deliveries: list = []

    async def handle_DATA(self, server, session, envelope):
        self.deliveries.append((envelope.mail_from, tuple(envelope.rcpt_tos),
                                envelope.original_content))
        return f"250 2.0.0 Ok: queued as 4B7F{len(self.deliveries):03d}ABC"


@pytest.fixture
def listener():
    handler = _QueuedAs()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    handler.address = f"127.0.0.1:{port}"
    yield handler
    controller.stop()


def test_a_fresh_store_has_exactly_one_migration_head(tmp_path: Path):
    store = QuarantineStore(f"sqlite:///{tmp_path}/fresh.db")
    settings = AlembicConfig()
    settings.set_main_option("script_location", str(MIGRATIONS))
    heads = ScriptDirectory.from_config(settings).get_heads()
    assert len(heads) == 1, f"several migration heads: {heads}"
    with store.engine.connect() as connection:
        stamped = connection.exec_driver_sql("SELECT version_num FROM alembic_version").all()
    assert [v for (v,) in stamped] == heads
    store.close()


def test_release_to_a_chosen_recipient_only_then_the_other(store, listener):
    identifier = put(store, "sub", rcpts=("bob@example.net", "carol@example.net"))
    done = release(store, identifier, listener.address, "ann", to=["CAROL@example.net"],
                   reason="asked by phone")
    assert done.accepted == ["carol@example.net"] and done.queue_id == "4B7F001ABC"
    (sender, rcpts, _data), = listener.deliveries
    assert (sender, rcpts) == ("alice@example.org", ("carol@example.net",))
    record = store.get(identifier)
    # Issue 28 #4: bob has not had it, so the record stays held (it was
    # "released", and the released-mail retention deleted bob's copy).
    assert record.state == "held" and record.released_to == ("carol@example.net",)
    last = record.events[-1]
    assert (last.actor, last.action, last.reason) == ("ann", "released", "asked by phone")
    assert "queued as 4B7F001ABC" in last.detail and "carol@example.net" in last.detail
    # carol again needs --force; bob has not had it: the default now means bob.
    with pytest.raises(ReleaseError, match=r"already released to carol@example\.net"):
        release(store, identifier, listener.address, "ann", to=["carol@example.net"])
    assert release(store, identifier, listener.address, "ann").accepted == ["bob@example.net"]
    assert store.get(identifier).state == "released"  # every recipient has it now
    with pytest.raises(ReleaseError, match="already released"):
        release(store, identifier, listener.address, "ann")


def test_release_never_goes_to_anyone_else(store, listener):
    identifier = put(store, "else", rcpts=("bob@example.net",))
    for other in ("eve@example.org", "bob@example.net.evil.example", "bob@example.net,eve@x"):
        with pytest.raises(ReleaseError, match="is not a recipient of this message"):
            release(store, identifier, listener.address, "ann", to=[other], force=True)
    assert listener.deliveries == []
    assert store.get(identifier).state == "held"


def test_the_released_copy_says_who_released_it_and_carries_the_verdict(store, listener):
    envelope = Envelope(mail_from="alice@example.org", rcpt_to=("bob@example.net",),
                        client_ip="198.51.100.7", queue_id="QAR")
    symbols = (Symbol("TEST_MARKER", 7.0, "marker", "seen"),)
    verdict = Policy(Ruleset()).decide(PipelineResult(symbols=symbols, runs=()), "QAR")
    from dataclasses import replace

    verdict = replace(verdict, authentication_results="mx.test; spf=fail smtp.mailfrom=a.example")
    forged = (b"X-Spam-Status: No, score=-5\r\nX-Gateway-Released: by nobody\r\n"
              b"Authentication-Results: mx.test; dkim=pass\r\n" + message("hdr"))
    identifier = store.put(envelope, RawContent(data=forged), verdict, "quarantine")
    release(store, identifier, listener.address, "ann", server_id="mx.test")
    data = listener.deliveries[0][2]
    head, body = data.split(b"\r\n\r\n", 1)
    assert head.startswith(b"X-Gateway-Released: by ann at ")
    assert f"(quarantine {identifier})".encode() in head.split(b"\r\n")[0]
    assert b"by nobody" not in head and b"score=-5" not in head and b"dkim=pass" not in head
    assert b"Authentication-Results: mx.test; spf=fail" in head
    assert b"X-Spam-Status: Yes, score=7.0" in head and b"X-Gateway-Symbols:" in head
    assert body == message("hdr").split(b"\r\n\r\n", 1)[1]  # the body byte for byte


def test_an_old_record_without_stored_headers_gets_them_rebuilt(store):
    identifier = put(store, "old")
    with store.engine.begin() as connection:
        connection.exec_driver_sql("UPDATE messages SET verdict_headers = NULL")
    record = store.get(identifier)
    from datetime import UTC, datetime

    copy = released_copy(message("old"), record, "ann\r\nBcc: eve@x", datetime.now(UTC))
    lines = copy.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
    assert lines[0].startswith(b"X-Gateway-Released: by ann??Bcc: eve@x at ")  # no new line
    assert any(line.startswith(b"X-Spam-Status: Yes, score=7.0") for line in lines)


def test_a_virus_needs_an_admin_and_a_confirmation(store, listener):
    identifier = put(store, "virus", names=("CLAMAV_VIRUS",), action="reject")
    with pytest.raises(ReleaseError, match="only an admin may release it"):
        release(store, identifier, listener.address, "ann", role="analyst", confirmed=True)
    with pytest.raises(ReleaseError, match="explicit confirmation"):
        release(store, identifier, listener.address, "ann", role="admin", confirmed=False)
    with pytest.raises(ReleaseError, match=r"explicit confirmation \(--force\)"):
        release(store, identifier, listener.address, "root")  # the CLI without --force
    assert listener.deliveries == []
    release(store, identifier, listener.address, "root", force=True)
    assert len(listener.deliveries) == 1


@pytest.mark.slow
def test_rules_can_reserve_a_symbol_for_admins(store, listener, tmp_path: Path):
    rules = tmp_path / "local.toml"
    rules.write_text('[release]\nPHISHING_KIT = "admin"\n')
    reserved = load_rules([rules]).release
    identifier = put(store, "kit", names=("PHISHING_KIT",))
    with pytest.raises(ReleaseError, match="PHISHING_KIT; only an admin"):
        release(store, identifier, listener.address, "ann", role="analyst",
                release_rules=reserved)
    rules.write_text('[release]\nPHISHING_KIT = "root"\n')
    with pytest.raises(ConfigError, match=r'release\.PHISHING_KIT: expected "admin" '
                                          r'or "analyst"'):
        load_rules([rules])


def test_a_failed_release_is_in_the_history(store):
    identifier = put(store, "fail")
    dead = f"127.0.0.1:{free_port()}"
    with pytest.raises(ReleaseError, match="cannot re-inject"):
        release(store, identifier, dead, "ann", reason="customer asked", timeout=2)
    record = store.get(identifier)
    assert record.state == "held"
    last = record.events[-1]
    assert (last.actor, last.action, last.reason) == ("ann", "release-failed", "customer asked")
    assert dead in last.detail


def test_list_filters_sorting_paging_and_prefixes(store):
    low = put(store, "low", names=("A_LOW",))
    with store.engine.begin() as connection:
        connection.exec_driver_sql(f"UPDATE messages SET score = 2.5 WHERE id = '{low}'")
    high = put(store, "high", names=("B_HIGH",))
    other = QuarantineStore(store.url, node="node-b")
    elsewhere = put(other, "elsewhere")

    def ids(**filters):
        return [r.id for r in store.records(Filters(**filters))]

    assert set(ids(subject="MINUTES")) == {low, high, elsewhere}
    assert ids(subject="minutes low") == [low]
    assert set(ids(min_score=5)) == {high, elsewhere}
    assert ids(max_score=3) == [low]
    assert ids(node="node-b") == [elsewhere]
    assert ids(sort="score", descending=False)[0] == low
    assert len(ids(limit=2)) == 2 and len(ids(limit=2, offset=2)) == 1
    assert store.count_matching(Filters(min_score=5)) == 2
    assert store.get(high[:8], prefix=True).id == high
    with pytest.raises(QuarantineError):
        store.get(high[:8])  # prefixes only where asked for
    with pytest.raises(QuarantineError, match="no quarantined message"):
        store.get("ffffffffff", prefix=True)
    other.close()


def cli(config: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gateway", *args, "--config", str(config)],
                          capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=120,
                          input=stdin, env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)})


@pytest.mark.slow
def test_cli_bulk_prefix_ids_and_the_history_key(tmp_path: Path, listener):
    url = f"sqlite:///{tmp_path}/q.db"
    config = tmp_path / "gateway.toml"
    config.write_text(f'[quarantine]\nurl = "{url}"\n[release]\nsmtp = "{listener.address}"\n')
    store = QuarantineStore(url)
    first = put(store, "one", rcpts=("bob@example.net", "carol@example.net"))
    second = put(store, "two")
    third = put(store, "three", names=("CLAMAV_VIRUS",))

    done = cli(config, "quarantine", "release", first[:10], second, "--to", "bob@example.net",
               "--reason", "invoices")
    assert done.returncode == 0, done.stderr
    assert f"{first}: released to bob@example.net (queued as 4B7F001ABC)" in done.stdout
    assert f"{second}: released to bob@example.net" in done.stdout

    shown = json.loads(cli(config, "quarantine", "show", first, "--json").stdout)
    assert "events" not in shown
    released = shown["history"][-1]
    assert (released["action"], released["reason"]) == ("released", "invoices")
    assert "(" not in released["actor"]  # the reason is not folded into who did it
    assert shown["released_to"] == ["bob@example.net"]
    assert shown["text"].startswith("Dear Bob,") and shown["attachments"] == []

    refused = cli(config, "quarantine", "release", third, second, "--to", "bob@example.net")
    assert refused.returncode == 1
    assert "explicit confirmation (--force)" in refused.stderr
    assert "already released to bob@example.net" in refused.stderr
    assert cli(config, "quarantine", "release", third, "--force").returncode == 0

    deleted = cli(config, "quarantine", "delete", first[:6], "nosuchid", "--reason", "spam")
    assert deleted.returncode == 1 and "no quarantined message 'nosuchid'" in deleted.stderr
    assert store.get(first).state == "deleted"
    assert store.get(first).events[-1].reason == "spam"

    text = cli(config, "quarantine", "show", second).stdout
    assert "released to: bob@example.net" in text and "reason: invoices" in text
    assert "text:\n  Dear Bob," in text
    store.close()


def test_release_through_the_real_sink_records_no_queue_id_plainly(store):
    identifier = put(store, "sink")
    with Sink() as sink:
        done = release(store, identifier, f"127.0.0.1:{sink.port}", "ann")
        assert done.queue_id is None
        (delivery,) = sink.wait_for(1)
        assert delivery.header(RELEASED_HEADER).startswith("by ann at ")
    assert "no queue id in the reply" in store.get(identifier).events[-1].detail


def test_a_partly_released_message_stays_held_listed_and_kept(store, listener):
    """Issue 28 #4: released to bob only, carol's copy left --state held and
    the dashboard, and the released-mail retention deleted it."""
    from datetime import UTC, datetime, timedelta

    identifier = put(store, "partly", rcpts=("bob@example.net", "carol@example.net"))
    release(store, identifier, listener.address, "ann", to=["bob@example.net"])
    assert [r.id for r in store.records(Filters(state="held"))] == [identifier]
    assert store.count_by_state()["held"] == 1 and store.count_by_state()["released"] == 0
    later = datetime.now(UTC) + timedelta(days=8)  # past released = 7, within held = 30
    assert store.purge({"held": 30, "released": 7}, 0, at=later) == {"expired": 0,
                                                                      "removed": 0}
    assert store.raw(identifier) is not None
    release(store, identifier, listener.address, "ann")
    assert store.get(identifier).state == "released"
    assert store.purge({"held": 30, "released": 7}, 0, at=later)["removed"] == 1


def test_who_approves_a_release_by_symbol_class_and_symbol(store):
    from gateway.quarantine.release import approver, may_decide, may_release

    classes = {"BAYES_99": "bayes", "BAYES_95": "bayes", "MISSING_DATE": "headers",
               "FROM_LOOKALIKE_DOMAIN": "identity", "SPF_PASS": "spf"}
    spam = store.get(put(store, "spam", names=("BAYES_99", "MISSING_DATE")))
    with store.engine.begin() as connection:  # a symbol that spoke for it does not count
        connection.exec_driver_sql("INSERT INTO symbols VALUES "
                                   f"('{spam.id}', 9, 'SPF_PASS', -1.0, '', '')")
    spam = store.get(spam.id)
    assert approver(spam, "analyst", classes=classes) == "analyst"
    assert approver(spam, {"bayes": "none", "headers": "none"}, classes=classes) == "none"
    # every symbol that held it must allow it: the strictest wins
    assert approver(spam, {"default": "admin", "bayes": "none"}, classes=classes) == "admin"
    assert approver(spam, {"bayes": "none", "MISSING_DATE": "none", "spf": "admin"},
                    classes=classes) == "none"
    assert approver(spam, {"default": "none", "BAYES_99": "admin"}, classes=classes) == "admin"
    virus = store.get(put(store, "virus", names=("CLAMAV_VIRUS",)))
    assert approver(virus, "none", classes=classes) == "admin"  # viruses: always an admin
    kit = store.get(put(store, "kit", names=("PHISHING_KIT",)))
    assert approver(kit, "none", {"PHISHING_KIT": "admin"}) == "admin"
    assert [may_release(role, "analyst") for role in ("admin", "analyst", "recipient")] == \
        [True, True, False]
    assert [may_release(role, "none") for role in ("admin", "analyst", "recipient")] == \
        [True, True, True]
    assert [may_release(role, "admin") for role in ("admin", "analyst", "recipient")] == \
        [True, False, False]
    assert may_decide("analyst", "analyst") and not may_decide("analyst", "admin")


def test_a_request_waits_for_its_approver_then_releases_to_its_recipients(store, listener):
    from gateway.quarantine import requests
    from gateway.quarantine.release import ReleasePolicy, approve_request, release_or_request

    policy = ReleasePolicy(listener.address, approve="admin")
    identifier = put(store, "ask", rcpts=("bob@example.net", "carol@example.net"))
    record = store.get(identifier)
    asked = release_or_request(store, record, policy, "alice", "analyst",
                               to=["CAROL@example.net"], reason="her supplier")
    assert isinstance(asked, requests.Request) and listener.deliveries == []
    assert (asked.recipients, asked.approver, asked.source) == (("carol@example.net",),
                                                                "admin", "analyst")
    with pytest.raises(requests.RequestError, match="requested already"):
        release_or_request(store, record, policy, "dave", "analyst", to=["carol@example.net"])
    with pytest.raises(requests.RequestError, match="not a recipient"):
        release_or_request(store, record, policy, "alice", "analyst", to=["eve@x.example"])
    with pytest.raises(requests.RequestError, match="only an admin may approve"):
        approve_request(store, asked.id, policy, "dave", "analyst")
    with pytest.raises(requests.RequestError, match="say why"):
        requests.refuse(store, asked.id, "ann", "  ")
    done = approve_request(store, asked.id, policy, "ann", "admin", reason="checked")
    assert done.accepted == ["carol@example.net"] and [r.id for r in done.settled] == [asked.id]
    assert listener.deliveries[0][1] == ("carol@example.net",)
    after = requests.get(store, asked.id)
    assert (after.state, after.decider, after.decision_reason) == ("approved", "ann", "checked")
    assert store.get(identifier).state == "held"  # bob still has not had it
    history = [(e.actor, e.action) for e in store.get(identifier).events]
    assert history[-3:] == [("alice", "release-requested"), ("ann", "released"),
                            ("ann", "release-approved")]
    # a recipient's request (approve = "admin") is refused, with the reason
    mine = release_or_request(store, store.get(identifier), policy,
                              "bob@example.net (digest link)", "recipient",
                              to=["bob@example.net"], notify="bob@example.net")
    refused = requests.refuse(store, mine.id, "ann", "a phishing kit, not an invoice")
    assert (refused.state, refused.notify) == ("refused", "bob@example.net")
    assert [r.id for r in requests.untold(store, by_mail=True)] == [mine.id]
    assert [r.id for r in requests.untold(store, by_mail=False, requester="alice")] == [asked.id]
    assert store.get(identifier).events[-1].reason == "a phishing kit, not an invoice"
    with pytest.raises(requests.RequestError, match="was refused already"):
        approve_request(store, mine.id, policy, "ann", "admin")


def test_a_held_message_with_a_pending_request_outlives_its_retention(store):
    from datetime import UTC, datetime, timedelta

    from gateway.quarantine import requests

    identifier = put(store, "waiting")
    requests.create(store, store.get(identifier), ["bob@example.net"], "alice", "analyst")
    later = datetime.now(UTC) + timedelta(days=40)
    assert store.purge({"held": 30}, 0, at=later)["expired"] == 0
    assert store.raw(identifier) is not None


def test_the_command_line_release_approves_requests_and_refuse_tells_why(tmp_path: Path):
    """An admin's release from the command line is an approval: the requests
    it fulfils are approved, and the recipient who asked is told by mail."""
    from gateway.quarantine import requests

    with Sink() as sink:
        url = f"sqlite:///{tmp_path}/q.db"
        config = tmp_path / "gateway.toml"
        config.write_text(f'[quarantine]\nurl = "{url}"\n[release]\nsmtp = '
                          f'"127.0.0.1:{sink.port}"\n[digest]\nsender = "postmaster@example.net"\n')
        store = QuarantineStore(url)
        first = put(store, "cli-one", rcpts=("bob@example.net", "carol@example.net"))
        second = put(store, "cli-two")
        asked = requests.create(store, store.get(first), ["bob@example.net"],
                                "bob@example.net (digest link)", "recipient",
                                notify="bob@example.net")
        other = requests.create(store, store.get(second), ["bob@example.net"], "alice",
                                "analyst", reason="a customer")
        listed = cli(config, "quarantine", "requests")
        assert f"#{asked.id}" in listed.stdout and "a customer" in listed.stdout
        done = cli(config, "quarantine", "release", first, "--to", "bob@example.net",
                   "--reason", "checked")
        assert done.returncode == 0, done.stderr
        assert f"approves request #{asked.id} from bob@example.net (digest link)" in done.stdout
        refused = cli(config, "quarantine", "refuse", str(other.id), "--reason", "phishing")
        assert refused.returncode == 0 and f"request #{other.id} refused" in refused.stdout
        assert cli(config, "quarantine", "refuse", str(other.id), "--reason", "x").returncode == 1
        assert "say why" in cli(config, "quarantine", "refuse", "1").stderr + \
            cli(config, "quarantine", "refuse", "1", "--reason", " ").stderr
        mails = [d for d in sink.wait_for(2) if d.mail_from == "postmaster@example.net"]
        (notice,) = mails
        assert notice.rcpt_to == ("bob@example.net",)
        assert b"was approved" in notice.data and b"Released: minutes cli-one" in notice.data
        assert requests.get(store, asked.id).notified is not None
        assert requests.get(store, other.id).state == "refused"
        assert requests.untold(store, by_mail=True) == []
        store.close()


@pytest.mark.parametrize(("reply", "queue_id"), [
    (b"2.0.0 Ok: queued as 4bXyZ1Ab2", "4bXyZ1Ab2"),  # Postfix
    (b"2.0.0 5B7AB1l3012345 Message accepted for delivery", "5B7AB1l3012345"),  # Sendmail
    (b"OK id=1qXyZa-000123-AB", "1qXyZa-000123-AB"),  # Exim
    (b"2.0.0 Ok", None),
])
def test_the_released_copys_queue_id_is_read_from_each_mtas_reply(reply, queue_id):
    from gateway.quarantine.release import queue_id_of

    assert queue_id_of(reply) == queue_id

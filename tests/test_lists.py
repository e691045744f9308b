"""Managed allow and block lists: the store's entries, the lists check that
reads them live, and ``gateway list``."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gateway.checks import CheckContext
from gateway.checks.lists import ListsCheck
from gateway.config import Config, ListsSection, PipelineSection, PolicySection, QuarantineSection
from gateway.evaluator import LocalEvaluator
from gateway.message import Envelope, Message
from gateway.paths import DEFAULT_RULES
from gateway.quarantine.lists import (
    ListEntry,
    PublicSuffixEntry,
    normalize_scope,
    normalize_value,
)
from gateway.quarantine.store import QuarantineStore
from tests.helpers import PROJECT_ROOT, wait_until

RAW = b"From: a@example.org\r\nSubject: hello\r\n\r\nhello\r\n"


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/store.db"


@pytest.fixture
def store(store_url: str):
    opened = QuarantineStore(store_url)
    yield opened
    opened.close()


def config_for(url: str, refresh: float = 0.2, rules: list[str] | None = None,
               **lists) -> Config:
    return Config(quarantine=QuarantineSection(url=url),
                  lists=ListsSection(refresh=refresh, **lists),
                  policy=PolicySection(rules=rules or [str(DEFAULT_RULES)]),
                  pipeline=PipelineSection(checks=["lists"], workers=0))


def symbols(check: ListsCheck, sender: str = "x@spam.example", ip: str | None = None,
            rcpt: tuple[str, ...] = ("bob@example.org",), queue_id: str | None = "Q1"):
    message = Message.from_bytes(RAW, Envelope(mail_from=sender, client_ip=ip, rcpt_to=rcpt,
                                               queue_id=queue_id))
    return check.run(message, CheckContext())


@pytest.mark.parametrize(("kind", "value", "stored"), [
    ("allow-sender", "News@Shop.EXAMPLE.", "news@shop.example"),
    ("block-sender", "@Spam.example", "@spam.example"),
    ("block-sender", "bücher.example", "xn--bcher-kva.example"),
    ("allow-ip", "198.51.100.7", "198.51.100.7/32"),
    ("block-ip", "203.0.113.9/24", "203.0.113.0/24"),
    ("block-ip", "::ffff:192.0.2.1", "192.0.2.1/32"),
])
def test_values_are_stored_in_one_form(kind, value, stored):
    assert normalize_value(kind, value) == stored


@pytest.mark.parametrize(("kind", "value", "problem"), [
    ("allow-ip", "example.org", "'example.org' is not an IP address or network"),
    ("block-sender", "a b@example.org", "'a b@example.org' is not an address, @domain or domain"),
    ("block-sender", "x@a..b", "'x@a..b': 'a..b' is not a valid domain name"),
    ("allow-host", "x", "unknown kind 'allow-host'"),
    # Issue 23, finding 11: what would match no envelope sender.
    ("block-sender", "*.example.org", "'*.example.org': entries have no wildcards (* % ? "
     "match only themselves); example.org is that domain and its subdomains"),
    ("allow-sender", "%@example.org", "'%@example.org': entries have no wildcards"),
    ("allow-sender", "news?@shop.example", "'news?@shop.example': entries have no wildcards"),
    ("block-sender", "spam_er.example", "'spam_er.example': not a mail domain (labels of "
     "letters, digits and inner hyphens"),
    ("block-sender", "x@[192.0.2.1]", "'x@[192.0.2.1]': not a mail domain"),
    ("block-sender", "a..b@example.org", "'a..b@example.org': 'a..b' is not a local part"),
])
def test_values_that_cannot_be_entries(kind, value, problem):
    with pytest.raises(ValueError) as caught:
        normalize_value(kind, value)
    assert str(caught.value).startswith(problem)
    assert normalize_scope("Bob@Example.ORG") == "bob@example.org"
    assert normalize_scope("@example.org") == "example.org"


@pytest.mark.slow
def test_an_entry_added_applies_to_the_next_message_without_a_restart(store, store_url):
    check = ListsCheck.from_config(config_for(store_url))
    try:
        assert symbols(check).symbols == ()
        entry, new = store.add_list_entry("block-sender", "spam.example", owner="alice",
                                          reason="phishing wave")
        assert new
        (found,) = wait_until(lambda: symbols(check).symbols, what="the entry applies")
        assert (found.name, found.evidence) == (
            "BLOCKLIST_SENDER", f"matched spam.example (list entry {entry.id}, alice: "
            "phishing wave)")
        store.remove_list_entry(entry.id)
        wait_until(lambda: symbols(check).symbols == (), what="the removed entry stops")
    finally:
        check.close()


@pytest.mark.slow
def test_hits_are_counted_for_mail_the_mta_passed(store, store_url):
    entry, _ = store.add_list_entry("allow-ip", "198.51.100.0/24", owner="ops")
    check = ListsCheck.from_config(config_for(store_url))
    try:
        for _ in range(3):
            assert [s.name for s in symbols(check, ip="198.51.100.7").symbols] == [
                "ALLOWLIST_IP"]
        symbols(check, ip="198.51.100.7", queue_id=None)  # gateway check: not counted

        def counted_three() -> ListEntry | None:
            now = store.get_list_entry(entry.id)
            return now if now.hits >= 3 else None

        counted = wait_until(counted_three, what="three hits counted")
        assert counted.hits == 3
        assert counted.last_hit is not None
    finally:
        check.close()
    assert store.get_list_entry(entry.id).hits == 3


@pytest.mark.slow
def test_an_expired_entry_stops_applying_as_it_expires(store, store_url):
    soon = datetime.now(UTC) + timedelta(seconds=1.5)
    store.add_list_entry("block-sender", "spam.example", owner="ops", expires=soon)
    # the expiry, not the refresh
    check = ListsCheck.from_config(config_for(store_url, refresh=3600.0))
    try:
        assert [s.name for s in symbols(check).symbols] == ["BLOCKLIST_SENDER"]
        time.sleep(max((soon - datetime.now(UTC)).total_seconds(), 0) + 0.1)
        assert symbols(check).symbols == ()
    finally:
        check.close()
    assert [e.value for e in store.expire_list_entries()] == ["spam.example"]
    assert store.list_entries() == []


def test_a_recipients_own_entry_counts_for_that_recipient_only(store, store_url):
    store.add_list_entry("allow-sender", "news@shop.example", owner="bob",
                         scope="bob@example.org", reason="my newsletter")
    rules = Path(store_url.removeprefix("sqlite:///")).parent / "local.toml"
    rules.write_text('[domain."example.net".lists]\nblock_ips = ["203.0.113.0/24"]\n')
    config = config_for(store_url, rules=[str(DEFAULT_RULES), str(rules)],
                        allow_senders=["partner.example"])
    check = ListsCheck.from_config(config)
    try:
        report = symbols(check, sender="news@shop.example", ip="203.0.113.5",
                         rcpt=("bob@example.org", "eve@example.org", "joe@example.net"))
        assert report.symbols == ()
        assert report.facts["recipients"] == ["bob@example.org", "eve@example.org",
                                              "joe@example.net"]
        scoped = report.facts["recipient_symbols"]
        assert sorted(scoped) == ["bob@example.org", "joe@example.net"]
        assert [s[0] for s in scoped["bob@example.org"]] == ["ALLOWLIST_SENDER"]
        assert scoped["joe@example.net"][0][3] == (
            "matched 203.0.113.0/24 (policy of example.net), for example.net")
        # The config file's entries still apply, to all mail.
        assert [s.name for s in symbols(check, sender="a@mx.partner.example").symbols] == [
            "ALLOWLIST_SENDER"]
    finally:
        check.close()
    evaluator = LocalEvaluator(config)
    try:
        def verdict(*rcpt: str):
            return evaluator.evaluate_message(Message.from_bytes(
                RAW, Envelope(mail_from="news@shop.example", rcpt_to=rcpt)))

        assert verdict("bob@example.org").score == -20.0
        assert verdict("eve@example.org").score == 0.0
        both = verdict("bob@example.org", "joe@example.net")
        assert both.facts["policy"]["recipients"]["bob@example.org"]["score"] == -20.0
    finally:
        evaluator.close()


def test_no_store_file_means_no_managed_entries_and_none_is_created(tmp_path: Path):
    url = f"sqlite:///{tmp_path}/missing/store.db"
    check = ListsCheck.from_config(config_for(url))
    try:
        assert symbols(check).symbols == ()
    finally:
        check.close()
    assert not (tmp_path / "missing").exists()


# -- gateway list ------------------------------------------------------------------------------


def gateway(*args: str, config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", *args, "--config", str(config)],
                          capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=60)


@pytest.fixture
def config_file(tmp_path: Path, store_url: str) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(f'[quarantine]\nurl = "{store_url}"\n[pipeline]\nchecks = ["lists"]\n')
    return path


@pytest.mark.slow
def test_gateway_list_add_show_remove_expire(config_file: Path, tmp_path: Path):
    added = gateway("list", "add", "block-sender", "@Spam.Example", "--reason", "wave 12",
                    "--expires", "30d", "--owner", "alice", config=config_file)
    assert added.returncode == 0, added.stderr
    assert added.stdout.startswith("added block-sender @spam.example (id 1, alice, ")
    assert added.stdout.rstrip().endswith(") -- wave 12")
    scoped = gateway("list", "add", "allow-ip", "198.51.100.0/24", "--for", "Bob@Example.org",
                     config=config_file)
    assert "allow-ip 198.51.100.0/24 for bob@example.org (id 2" in scoped.stdout
    renewed = gateway("list", "add", "block-sender", "@spam.example", "--reason", "wave 13",
                      "--owner", "bob", config=config_file)
    assert renewed.stdout.startswith("renewed block-sender @spam.example (id 1, bob, ")
    # gateway check reads the entries as they are now: no reload, no restart.
    message = tmp_path / "m.eml"
    message.write_bytes(RAW)
    checked = gateway("check", "--json", "--from", "x@spam.example", str(message),
                      config=config_file)
    record = json.loads(checked.stdout)
    assert (record["action"], record["symbols"][0]["name"]) == ("reject", "BLOCKLIST_SENDER")
    shown = json.loads(gateway("list", "show", "--json", config=config_file).stdout)
    assert [(e["id"], e["kind"], e["value"], e["for"], e["owner"], e["reason"], e["hits"])
            for e in shown] == [
        (2, "allow-ip", "198.51.100.0/24", "bob@example.org", shown[0]["owner"], "", 0),
        (1, "block-sender", "@spam.example", None, "bob", "wave 13", 0)]
    assert shown[1]["expires"] is None
    text = gateway("list", "show", "block-sender", config=config_file).stdout
    assert text.startswith("block-sender @spam.example (id 1, bob, ")
    assert ", 0 hits) -- wave 13" in text
    removed = gateway("list", "remove", "allow-ip", "198.51.100.0/24", "--for",
                      "bob@example.org", config=config_file)
    assert removed.stdout.startswith("removed allow-ip 198.51.100.0/24 for bob@example.org")
    missing = gateway("list", "remove", "--id", "99", config=config_file)
    assert (missing.returncode, missing.stderr) == (1, "gateway: no list entry id 99\n")
    expired = gateway("list", "expire", config=config_file)
    assert expired.stdout == "0 expired entries removed\n"


@pytest.mark.slow
@pytest.mark.parametrize(("args", "problem"), [
    (["list", "add", "allow-ip", "nope"],
     "gateway: allow-ip: 'nope' is not an IP address or network (e.g. 198.51.100.7 or "
     "198.51.100.0/24)\n"),
    (["list", "add", "allow-sender", "x@example.org", "--expires", "soon"],
     "gateway: --expires 'soon': expected 30d, 12h, 2w, 90m or a date such as 2027-01-31\n"),
    (["list", "add", "allow-sender", "x@example.org", "--expires", "2001-01-01"],
     "gateway: --expires '2001-01-01' is in the past\n"),
    (["list", "remove"], "gateway: list remove: give KIND VALUE, or --id N\n"),
    (["list", "add", "allow-sender", "test"],
     "gateway: allow-sender: 'test' names a public suffix, under which anyone registers "
     "domains, not one sender's domain: it would match every sender under .test; --force "
     "adds it all the same\n"),
    (["list", "add", "block-sender", "*.spam.example"],
     "gateway: block-sender: '*.spam.example': entries have no wildcards (* % ? match only "
     "themselves); example.org is that domain and its subdomains, @example.org exactly that "
     "domain\n"),
])
def test_gateway_list_problems_are_one_line(config_file: Path, args, problem):
    result = gateway(*args, config=config_file)
    assert (result.returncode, result.stderr) == (2, problem)


@pytest.mark.slow
def test_gateway_list_needs_the_store(tmp_path: Path):
    config = tmp_path / "gateway.toml"
    config.write_text('[quarantine]\nurl = ""\n')
    result = gateway("list", "show", config=config)
    assert result.returncode == 2
    assert result.stderr == ("gateway: the managed lists live in the store's database, and "
                             "[quarantine] url is empty; use [lists] in gateway.toml instead\n")


@pytest.mark.parametrize(("kind", "value"), [
    ("allow-sender", "test"), ("allow-sender", "TEST."), ("block-sender", "co.uk"),
    ("allow-sender", "@co.uk"), ("allow-sender", "github.io"), ("block-sender", "xn--p1ai"),
])
def test_a_public_suffix_is_refused_unless_forced(store, kind, value):
    with pytest.raises(PublicSuffixEntry, match=r"names a public suffix, under which anyone "
                       r"registers domains, not one sender's domain"):
        store.add_list_entry(kind, value, owner="ops")
    assert store.list_entries() == []
    entry, _ = store.add_list_entry(kind, value, owner="ops", force=True)
    assert entry.value == normalize_value(kind, value)


def test_domains_under_a_public_suffix_and_addresses_are_entries(store):
    for value in ("example.co.uk", "@shop.test", "ann@test", "user.github.io"):
        store.add_list_entry("allow-sender", value, owner="ops")
    assert len(store.list_entries()) == 4


def test_the_config_files_lists_are_read_the_same_way(tmp_path: Path):
    rules = tmp_path / "local.toml"
    rules.write_text('[domain."example.net".lists]\nblock_senders = ["*@spam.example"]\n')
    check = ListsCheck.from_config(config_for("", rules=[str(DEFAULT_RULES), str(rules)],
                                  allow_senders=["partner.example", "test"]))
    try:
        assert check.startup_problems() == [
            "lists: [lists], allow-sender: 'test' names a public suffix, under which anyone "
            "registers domains, not one sender's domain: it would match every sender under "
            ".test",
            "lists: the policy of example.net, block-sender: '*@spam.example': entries have "
            "no wildcards (* % ? match only themselves); example.org is that domain and its "
            "subdomains, @example.org exactly that domain"]
    finally:
        check.close()


# -- what a rejected sender is told (issue 23, finding 9) ------------------------------------


def told(evaluator: LocalEvaluator, sender: str, ip: str | None = None,
         rcpt: str = "bob@example.org") -> str:
    """The SMTP reply the sender gets ("None" for mail that is accepted)."""
    verdict = evaluator.evaluate_message(Message.from_bytes(RAW, Envelope(
        mail_from=sender, client_ip=ip, rcpt_to=(rcpt,))))
    return str(verdict.reply)


def test_a_rejected_sender_is_never_told_the_entrys_owner_or_reason(store, store_url):
    store.add_list_entry("block-sender", "spam.example", owner="alice",
                         reason="ticket 4711: fraud ring")
    evaluator = LocalEvaluator(config_for(store_url, block_ips=["192.0.2.0/24"]))
    try:
        reply = wait_until(lambda: (found := told(evaluator, "x@spam.example")) != "None"
                           and found, what="the entry applies")
        assert reply == ("550 5.7.1 Rejected: envelope sender is on the local block list "
                         "[BLOCKLIST_SENDER]")
        # gateway.toml's entries too: the sender learns which list, not which entry.
        assert told(evaluator, "a@ok.example", "192.0.2.1") == (
            "550 5.7.1 Rejected: client IP is on the local block list [BLOCKLIST_IP]")
    finally:
        evaluator.close()


def test_a_rejected_sender_is_told_the_entrys_public_reply(store, store_url):
    store.add_list_entry("block-sender", "spam.example", owner="alice", reason="fraud ring",
                         reply="Not accepted here")
    store.add_list_entry("block-ip", "203.0.113.0/24", owner="bob", reason="botnet 7",
                         scope="joe@example.org",
                         reply="Refused by example.org; write to postmaster@example.org")
    evaluator = LocalEvaluator(config_for(store_url))
    try:
        reply = wait_until(lambda: (found := told(evaluator, "x@spam.example")) != "None"
                           and found, what="the entry applies")
        assert reply == "550 5.7.1 Rejected: Not accepted here [BLOCKLIST_SENDER]"
        # A recipient's own entry, judged through the policy's facts.
        assert told(evaluator, "a@ok.example", "203.0.113.9", "joe@example.org") == (
            "550 5.7.1 Rejected: Refused by example.org; write to postmaster@example.org "
            "[BLOCKLIST_IP]")
        assert told(evaluator, "a@ok.example", "203.0.113.9", "eve@example.org") == "None"
    finally:
        evaluator.close()


@pytest.mark.parametrize(("reply", "problem"), [
    ("Refusé", "the reply goes to the sender in an SMTP reply: printable ASCII only"),
    ("x" * 201, "the reply is 201 characters; at most 200"),
])
def test_a_reply_that_cannot_go_into_an_smtp_reply_is_refused(store, reply, problem):
    with pytest.raises(ValueError, match=problem):
        store.add_list_entry("block-sender", "spam.example", owner="ops", reply=reply)
    assert store.list_entries() == []


def test_gateway_list_add_reply(config_file: Path):
    added = gateway("list", "add", "block-ip", "203.0.113.0/24", "--reason", "botnet 7",
                    "--reply", "  Refused;\n write to postmaster@example.org ",
                    config=config_file)
    assert added.returncode == 0, added.stderr
    assert added.stdout.rstrip().endswith(
        "-- botnet 7 (replies: Refused; write to postmaster@example.org)")
    (shown,) = json.loads(gateway("list", "show", "--json", config=config_file).stdout)
    assert (shown["reason"], shown["reply"]) == ("botnet 7",
                                                "Refused; write to postmaster@example.org")
    forced = gateway("list", "add", "block-sender", "xn--p1ai", "--force", config=config_file)
    assert forced.stdout.startswith("added block-sender xn--p1ai (id 2, "), forced.stderr
    refused = gateway("list", "add", "block-ip", "198.51.100.1", "--reply", "Zurückgewiesen",
                      config=config_file)
    assert (refused.returncode, refused.stderr) == (
        2, "gateway: --reply: the reply goes to the sender in an SMTP reply: printable ASCII "
        "only\n")

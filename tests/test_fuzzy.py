"""The fuzzy check: TLSH distance as py-tlsh computes it, learned spam and
ham in the store, campaigns across copies, protected senders, limits."""

from __future__ import annotations

import random
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import tlsh
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from gateway.checks import CheckContext
from gateway.checks.fuzzy import FuzzyCheck, learn
from gateway.config import FuzzySection, parse_config
from gateway.fuzzyhash import (
    _DIGITS,
    _EMAIL,
    _URL,
    MAX_TAGS,
    MAX_TEXT,
    TlshIndex,
    digests,
    distance,
    html_structure,
    normalise_text,
    tlsh_of,
    without_addresses,
    without_url_paths,
)
from gateway.message import Envelope, Message
from gateway.quarantine.schema import fuzzy_hashes
from gateway.quarantine.store import QuarantineStore
from tests.hostile import BUILDERS

WORDS = ("offer", "price", "account", "limited", "exclusive", "shipping", "discount",
         "pharmacy", "quality", "watches", "investment", "returns", "guaranteed", "secure",
         "today", "members", "bonus", "credit", "approval", "instant", "savings", "brand")


def spam_text(seed: int = 7, words: int = 220) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) for _ in range(words))


def mail(body: str, name: str = "Bob", number: int = 1, sender: str = "x@spam.example",
         html: bool = False) -> bytes:
    """One copy of a campaign: the recipient's name, an order number and a
    tracking link differ from copy to copy."""
    text = (f"Dear {name},\n\nYour order {number * 7919} is waiting. {body}\n\n"
            f"Visit http://shop.spam.example/t/{number * 31337}?u={name} now.\n")
    content_type = "text/plain"
    if html:
        text = (f"<html><body><table><tr><td><font size=3>{text}</font></td></tr>"
                f"<tr><td><a href='http://shop.spam.example/{number}'>click</a></td></tr>"
                "</table></body></html>")
        content_type = "text/html"
    return (f"From: Shop <{sender}>\r\nTo: {name.lower()}@example.net\r\nSubject: Your order\r\n"
            f"Date: Tue, 01 Dec 2026 09:00:00 +0000\r\nMessage-ID: <{number}@spam.example>\r\n"
            f"MIME-Version: 1.0\r\nContent-Type: {content_type}; charset=utf-8\r\n\r\n"
            f"{text}").encode()


@pytest.fixture
def store(tmp_path: Path):
    opened = QuarantineStore(f"sqlite:///{tmp_path}/store.db", node="node-a")
    yield opened
    opened.close()


@pytest.fixture
def make_check(tmp_path: Path, store):
    made: list[FuzzyCheck] = []

    def make(extra: str = "") -> FuzzyCheck:
        config = parse_config(f'[quarantine]\nurl = "sqlite:///{tmp_path}/store.db"\n'
                              f'node = "node-a"\n[fuzzy]\nrefresh = 60\n{extra}', "t.toml")
        check = FuzzyCheck.from_config(config)
        made.append(check)
        return check

    yield make
    for check in made:
        check.close()


def run(check: FuzzyCheck, raw: bytes, recipients: tuple[str, ...] = ("bob@example.net",),
        queue_id: str | None = None, facts: dict | None = None):
    assert check.memory is not None
    check.memory.refresh_now()
    envelope = Envelope(mail_from="x@spam.example", rcpt_to=recipients, queue_id=queue_id)
    return check.run(Message.from_bytes(raw, envelope), CheckContext(facts or {}))


def names(report) -> set[str]:
    return {s.name for s in report.symbols}


# -- hashing ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("buckets_from", [0, 10**9])  # picked by length first, or not
def test_the_index_computes_tlsh_distance_exactly_as_py_tlsh(monkeypatch, buckets_from):
    monkeypatch.setattr("gateway.fuzzyhash.BUCKETS_FROM", buckets_from)
    rng = random.Random(3)
    vocabulary = ["".join(rng.choice("abcdefghijklmnop") for _ in range(rng.randint(2, 9)))
                  for _ in range(800)]
    hashes = [h for h in (tlsh_of(" ".join(rng.choice(vocabulary)
                                           for _ in range(rng.randint(20, 2000))).encode())
                          for _ in range(150)) if h]
    for _ in range(1500):
        a, b = rng.choice(hashes), rng.choice(hashes)
        assert distance(a, b) == tlsh.diff(a, b)
    index = TlshIndex((h, n) for n, h in enumerate(hashes))
    found = index.near(hashes[5], 60)
    assert found[0] == (0, 5) and all(d <= 60 for d, _ in found)
    assert [d for d, _ in found] == sorted(d for d, _ in found)
    assert TlshIndex().near(hashes[0], 300) == [] and index.near("T1nonsense", 300) == []
    # Digests that are not "T1" and 70 hex digits are left out, the others
    # keep their payloads.
    hex_digits = hashes[1][2:70]  # 34 bytes, two spaces between pairs: 72 characters
    spaced = "T1" + hex_digits[:34] + "  " + hex_digits[34:]
    mixed = TlshIndex([(hashes[0], "a"), ("T1" + "zz" * 35, "b"), (spaced, "c"),
                       ("T1" + "\u0663" * 70, "d"), (hashes[2].replace("T1", "T2"), "e"),
                       (hashes[2], "f"), (hashes[2] + "00", "g")])
    assert len(mixed) == 2
    assert mixed.near(hashes[0], 0) == [(0, "a")] and mixed.near(hashes[2], 0) == [(0, "f")]
    # Under any threshold, exactly the digests py-tlsh puts within it, nearest
    # first and in the index's order among equals (the query skips digests
    # by their length and quartiles first).
    for threshold in (0, 1, 11, 12, 13, 24, 50, 120, 300):
        for query in hashes[::10]:
            expected = sorted(((tlsh.diff(query, h), n) for n, h in enumerate(hashes)
                               if tlsh.diff(query, h) <= threshold), key=lambda x: x[0])
            assert index.near(query, threshold) == expected, threshold


def test_the_byte_pair_table_is_tlsh_body_distance_for_every_pair():
    from gateway.fuzzyhash import _pair_table

    def scalar(a: int, b: int) -> int:  # TLSH's definition, one pair at a time
        steps = (abs(((a >> s) & 3) - ((b >> s) & 3)) for s in (0, 2, 4, 6))
        return sum(6 if d == 3 else d for d in steps)

    table = _pair_table()
    assert table.shape == (256, 256)
    assert all(table[a, b] == scalar(a, b) for a in range(256) for b in range(256))


@given(st.text(alphabet=st.sampled_from("ab.+-_@ \n1\u00e9"), max_size=300))
@settings(derandomize=True, database=None, deadline=None, max_examples=400)
def test_addresses_are_removed_as_the_regex_alone_removes_them(text):
    assert without_addresses(text) == _EMAIL.sub(" @ ", text)


@pytest.mark.parametrize("text", ["a" * 100 + "@b.c", "x@" * 1000, "@" * 500,
                                  ("w" * 63 + "@") * 30, "\u00e9" * 70 + "@x.y",
                                  "a.b+c-d@e-f.g.h " * 50, "a@b" + "." * 20 + "c"])
def test_addresses_are_removed_as_the_regex_alone_removes_them_at_the_edges(text):
    assert without_addresses(text) == _EMAIL.sub(" @ ", text)


def _normalised_by_the_regexes(text: str) -> str:
    """normalise_text as it was written first: one regex after the other."""
    text = text[:MAX_TEXT].lower()
    text = _URL.sub(lambda m: f" url:{m.group(1)} ", text)
    text = _EMAIL.sub(" @ ", text)
    text = _DIGITS.sub("0", text)
    return re.sub(r"\s+", " ", text).strip()


@given(st.text(alphabet=st.sampled_from("htpsw:/.W\u017fHTx-_ 1\u00e9\n\t\x1c\u3000\u0660@"),
               max_size=300))
@settings(derandomize=True, database=None, deadline=None, max_examples=600)
def test_normalising_gives_what_the_regexes_alone_give(text):
    assert without_url_paths(text) == _URL.sub(lambda m: f" url:{m.group(1)} ", text)
    assert normalise_text(text) == _normalised_by_the_regexes(text)


@pytest.mark.parametrize("text", [
    "see https://Example.COM/a?b=1 and www.x.org/y, http://\u0131.example/z",
    "xhttps://a.b", "https://" * 300, "www." * 300, "w" * 500 + "ww.a", ":" * 500 + "//a",
    "http\u017f://a.b/c", "café http://x.y/é \u00a0 \u2028 end\x1f", "www.a" + "b" * 3000,
    "\u0663\u0664 order 12345 to 1@2.3 " * 40, "a" * (MAX_TEXT + 10) + " http://x.y"])
def test_normalising_gives_what_the_regexes_alone_give_at_the_edges(text):
    assert without_url_paths(text) == _URL.sub(lambda m: f" url:{m.group(1)} ", text)
    assert normalise_text(text) == _normalised_by_the_regexes(text)


def test_normalising_keeps_what_the_copies_of_a_campaign_share():
    one = normalise_text("Dear Bob, order 12345: see https://x.example/t/abc?u=1 or "
                         "mail bob@example.net NOW")
    two = normalise_text("Dear Bob,  order 99: see https://x.example/t/zzz?u=2 or "
                         "mail carol@example.org now")
    assert one == two == "dear bob, order 0: see url:x.example or mail @ now"
    assert html_structure("<HTML><body><p>hi</P><br/></body>") == "html body p /p br /body"
    assert len(html_structure("<b>" * (MAX_TAGS + 100)).split()) == MAX_TAGS
    short = digests("Reset code 123456 for your account, valid 10 minutes.", "", 512)
    assert [d.kind for d in short] == ["exact"]
    assert digests("hi", "", 512) == []  # too little to match on


# -- learned spam -------------------------------------------------------------------------------


def test_a_near_duplicate_of_learned_spam_is_fuzzy_spam(store, make_check):
    learn(store.engine, mail(spam_text()), "spam", "quarantine:4f2a")
    check = make_check()
    report = run(check, mail(spam_text(), name="Carol", number=2))
    assert names(report) == {"FUZZY_SPAM"}
    (symbol,) = report.symbols
    assert symbol.evidence.startswith("text at distance ")
    assert symbol.evidence.endswith("from spam learned from quarantine:4f2a")
    minutes = " ".join(f"item {n}: the committee reviewed section {n} of the draft and "
                       f"asked {name} to revise it before Thursday's meeting." for n, name in
                       enumerate(("Alice", "Bob", "Carol", "Dave", "Erin", "Frank") * 3))
    assert names(run(check, mail(minutes))) == set()  # another text


def test_learning_ham_retires_the_spam_hashes_it_matches(store, make_check):
    learn(store.engine, mail(spam_text()), "spam", "gateway learn")
    check = make_check()
    assert names(run(check, mail(spam_text(), name="Dave", number=3))) == {"FUZZY_SPAM"}
    learn(store.engine, mail(spam_text(), name="Erin", number=4), "ham", "released:77")
    with store.engine.connect() as connection:
        retired = connection.execute(select(func.count()).select_from(fuzzy_hashes).where(
            fuzzy_hashes.c.label == "spam", fuzzy_hashes.c.retired.is_not(None))).scalar_one()
    assert retired >= 1
    assert names(run(check, mail(spam_text(), name="Dave", number=3))) == set()


def test_short_texts_match_by_an_exact_hash(store, make_check):
    short = (b"From: a@spam.example\r\nSubject: hi\r\n\r\nCheap watches at 50% off, "
             b"call 555-0100 today!\r\n")
    learn(store.engine, short, "spam", "gateway learn")
    check = make_check()
    report = run(check, short.replace(b"555-0100", b"555-0199"))
    assert names(report) == {"FUZZY_SPAM"}
    assert report.symbols[0].evidence == "the same short text as spam learned from gateway learn"


def test_mail_from_a_known_dkim_authenticated_sender_is_spared(store, make_check):
    learn(store.engine, mail(spam_text()), "spam", "gateway learn")
    from gateway.senders import SenderHistory

    SenderHistory(lambda: store.engine).write("bank.example", "198.51.100.0/24")
    check = make_check('campaign_recipients = 2\n')
    facts = {"dmarc": {"result": "pass", "dkim_aligned": True, "dkim_domain": "mail.bank.example"}}
    report = run(check, mail(spam_text(), name="Carol", number=2), facts=facts,
                 recipients=("a@example.net", "b@example.net", "c@example.net"))
    assert names(report) == set()
    assert report.facts["protected"].startswith("bank.example")
    assert report.facts["spam"]["kind"] == "text"  # still said, in the facts


# -- campaigns ------------------------------------------------------------------------------


def test_copies_from_unknown_senders_reaching_many_recipients_are_a_campaign(make_check):
    check = make_check('campaign_recipients = 5\n')
    reports = [run(check, mail(spam_text(seed=11), name=f"N{n}", number=n),
                   recipients=(f"user{n}@example.net",), queue_id=f"Q{n}") for n in range(6)]
    assert [bool({"BULK_CAMPAIGN"} & names(r)) for r in reports] == [False] * 4 + [True] * 2
    assert reports[4].symbols[0].evidence == "5 recipients within 1h"
    assert reports[5].facts["campaign_recipients"] == 6
    # Another campaign's counts are its own; mail without a queue id (gateway check) is
    # never counted.
    assert run(check, mail(spam_text(seed=12))).facts["campaign_recipients"] == 1
    for _ in range(3):
        run(check, mail(spam_text(seed=12)))
    assert run(check, mail(spam_text(seed=12))).facts["campaign_recipients"] == 1


def test_one_message_to_many_recipients_is_a_campaign_on_its_own(make_check):
    check = make_check('campaign_recipients = 3\n')
    report = run(check, mail(spam_text(seed=13)),
                 recipients=("a@example.net", "b@example.net", "c@example.net"))
    assert names(report) == {"BULK_CAMPAIGN"}


# -- limits ------------------------------------------------------------------------------------


def test_learned_hashes_are_bounded_and_expire(store):
    settings = FuzzySection(max_hashes=3, expire="30d")
    start = datetime(2026, 12, 1, tzinfo=UTC)
    for n in range(5):
        learn(store.engine, mail(spam_text(seed=100 + n)), "spam", f"learn {n}", settings,
              at=start + timedelta(minutes=n))
    with store.engine.connect() as connection:
        sources = sorted(connection.execute(select(fuzzy_hashes.c.source)).scalars())
    assert sources == ["learn 2", "learn 3", "learn 4"]
    learn(store.engine, mail(spam_text(seed=200)), "spam", "later", settings,
          at=start + timedelta(days=31))
    with store.engine.connect() as connection:
        assert list(connection.execute(select(fuzzy_hashes.c.source)).scalars()) == ["later"]


def test_without_a_store_the_check_finds_nothing():
    check = FuzzyCheck.from_config(parse_config('[quarantine]\nurl = ""\n', "t.toml"))
    report = check.run(Message.from_bytes(mail(spam_text())), CheckContext())
    assert report.symbols == () and report.facts["reason"] == "no store: nothing learned"


def test_hostile_mail_never_makes_the_check_fail(store, make_check):
    learn(store.engine, mail(spam_text()), "spam", "gateway learn")
    check = make_check()
    for hostile in list(BUILDERS.values())[:40]:
        run(check, hostile.build(), queue_id="Q1")


def test_a_known_correspondent_is_spared(store, make_check):
    learn(store.engine, mail(spam_text()), "spam", "gateway learn")
    check = make_check()
    facts = {"identity": {"author": "x@spam.example", "known": True}}
    report = run(check, mail(spam_text(), name="Carol", number=2), facts=facts)
    assert names(report) == set()
    assert report.facts["protected"] == "x@spam.example: KNOWN_CORRESPONDENT"


# -- the recent copies, read a little at a time ------------------------------------------------


class Clock:
    def __init__(self, start: datetime):
        self.now = start

    def __call__(self) -> datetime:
        return self.now


def copies(memory, digest) -> int:
    """Recipients the memory holds for copies near ``digest`` (a text digest)."""
    index = memory.current.recent["text"]
    return sum(payload for _, payload in index.near(digest.value, 0))


def test_recent_copies_are_read_once_and_held_until_the_window_passes(store):
    from gateway.checks.fuzzy import FuzzyMemory
    from gateway.quarantine.schema import fuzzy_seen

    clock = Clock(datetime(2026, 12, 1, 9, 0, tzinfo=UTC))
    memory = FuzzyMemory(str(store.engine.url), FuzzySection(campaign_window="1h"), "node-a",
                         clock=clock)
    digest = next(d for d in digests(spam_text(seed=21), "", 50) if d.kind == "text")
    for recipients in (2, 3):
        memory.seen(digest, recipients, "spam.example")
    memory.refresh_now()
    assert copies(memory, digest) == 5
    # Read once: a later reading asks only for newer rows, so copies already
    # held stay even when their rows are gone (the old reading dropped them).
    with store.engine.begin() as connection:
        first = connection.execute(select(func.min(fuzzy_seen.c.id))).scalar_one()
        connection.execute(fuzzy_seen.delete().where(fuzzy_seen.c.id == first))
    memory.seen(digest, 4, "spam.example")
    memory.refresh_now()
    assert copies(memory, digest) == 9
    # The window passes the first three copies; the one seen since stays.
    clock.now += timedelta(minutes=59)
    memory.seen(digest, 1, "spam.example")
    clock.now += timedelta(minutes=1, seconds=1)
    memory.refresh_now()
    assert copies(memory, digest) == 1
    memory.close()


def test_a_copy_committed_after_newer_ones_were_read_is_still_counted(store):
    from gateway.checks.fuzzy import FuzzyMemory
    from gateway.quarantine.schema import fuzzy_seen

    clock = Clock(datetime(2026, 12, 1, 9, 0, tzinfo=UTC))
    memory = FuzzyMemory(str(store.engine.url), FuzzySection(), "node-a", clock=clock)
    digest = next(d for d in digests(spam_text(seed=22), "", 50) if d.kind == "text")
    exact = next(d for d in digests("a short text of a few words", "", 50)
                 if d.kind == "exact")

    def row(identifier: int, found, recipients: int) -> dict:
        return {"id": identifier, "kind": found.kind, "digest": found.value,
                "recipients": recipients, "sender": "spam.example", "seen": clock.now,
                "node": "node-b"}

    with store.engine.begin() as connection:
        connection.execute(fuzzy_seen.insert(), [row(50, digest, 1), row(51, exact, 2)])
    memory.refresh_now()
    # Another node's transaction took its ids first and committed last (as
    # PostgreSQL allows): its rows land below the newest id already read.
    with store.engine.begin() as connection:
        connection.execute(fuzzy_seen.insert(), [row(40, digest, 10), row(41, exact, 20)])
    memory.refresh_now()
    assert copies(memory, digest) == 11
    assert memory.current.recent_exact[exact.value] == 22
    memory.refresh_now()  # read again: nothing counted twice
    assert copies(memory, digest) == 11 and memory.current.recent_exact[exact.value] == 22
    memory.close()


def test_the_newest_recent_copies_are_kept_past_the_bound(store, monkeypatch):
    from gateway.checks.fuzzy import FuzzyMemory

    monkeypatch.setattr("gateway.checks.fuzzy.MAX_RECENT", 3)
    memory = FuzzyMemory(str(store.engine.url), FuzzySection(), "node-a")
    texts = [next(d for d in digests(spam_text(seed=30 + n), "", 50) if d.kind == "text")
             for n in range(5)]
    for n, digest in enumerate(texts[:4]):
        memory.seen(digest, n + 1, "spam.example")
    memory.refresh_now()
    memory.seen(texts[4], 5, "spam.example")
    memory.refresh_now()
    assert [copies(memory, d) for d in texts] == [0, 0, 3, 4, 5]
    memory.close()


def test_known_senders_are_read_in_full_only_every_ten_minutes(store, monkeypatch):
    from gateway.checks.fuzzy import FuzzyMemory
    from gateway.senders import RETENTION, SenderHistory

    clock = Clock(datetime(2026, 12, 1, 9, 0, tzinfo=UTC))
    history = SenderHistory(lambda: store.engine, clock)
    history.write("old.example", "198.51.100.0/24")
    clock.now += RETENTION - timedelta(minutes=1)  # old.example's last minute
    history.write("bank.example", "198.51.100.0/24")
    memory = FuzzyMemory(str(store.engine.url), FuzzySection(), "node-a", clock=clock)
    full_reads = []
    every = SenderHistory.all_domains
    monkeypatch.setattr(SenderHistory, "all_domains", lambda self, since=None: (
        full_reads.append(since is None), every(self, since))[1])
    memory.refresh_now()
    assert memory.current.known == {"old.example", "bank.example"}
    # A domain seen since, at the next refresh, without reading them all again
    # (the old reading read every domain every 5 s).
    clock.now += timedelta(minutes=2)
    history.write("shop.example", "203.0.113.0/24")
    memory.refresh_now()
    assert memory.current.known == {"old.example", "bank.example", "shop.example"}
    assert full_reads == [True, False]
    # The full reading, ten minutes on, lets go of old.example, past its retention.
    clock.now += timedelta(minutes=10)
    memory.refresh_now()
    assert memory.current.known == {"bank.example", "shop.example"}
    assert full_reads == [True, False, True]
    memory.close()


def test_learned_hashes_are_read_again_only_when_they_changed(store):
    from sqlalchemy import event

    from gateway.checks.fuzzy import FuzzyMemory

    learn(store.engine, mail(spam_text(seed=40)), "spam", "first")
    memory = FuzzyMemory(str(store.engine.url), FuzzySection(), "node-a")
    memory.refresh_now()
    reads = []
    event.listen(memory._engine, "before_cursor_execute",
                 lambda conn, cursor, statement, *rest: reads.append(statement)
                 if "fuzzy_hashes.digest" in statement else None)
    memory.refresh_now()
    memory.refresh_now()
    assert reads == []  # unchanged: the hashes held are kept
    spam = memory.current.spam["text"]
    learn(store.engine, mail(spam_text(seed=41)), "spam", "second")
    memory.refresh_now()
    assert len(reads) == 1 and len(memory.current.spam["text"]) == len(spam) + 1
    # Ham near the first retires it: read again, one fewer.
    learn(store.engine, mail(spam_text(seed=40), name="Ham"), "ham", "released")
    memory.refresh_now()
    assert len(reads) == 2 and len(memory.current.spam["text"]) == len(spam)
    memory.close()


def test_two_nodes_count_each_others_copies_and_known_senders_on_postgresql(postgres):
    from gateway.checks.fuzzy import FuzzyMemory
    from gateway.senders import SenderHistory

    QuarantineStore(postgres.url, node="node-a").close()  # the schema
    nodes = [FuzzyMemory(postgres.url, FuzzySection(), name) for name in ("node-a", "node-b")]
    first, second = nodes
    digest = next(d for d in digests(spam_text(seed=50), "", 50) if d.kind == "text")
    first.seen(digest, 2, "spam.example")
    second.seen(digest, 3, "spam.example")
    for node in (first, second, first):  # each writes its copies, then reads both
        node.refresh_now()
    assert copies(first, digest) == copies(second, digest) == 5
    # Read again and again: counted once; a later copy is added, on either node.
    second.seen(digest, 1, "spam.example")
    for node in (second, first, first, second):
        node.refresh_now()
    assert copies(first, digest) == copies(second, digest) == 6
    # PostgreSQL's times are aware: the known senders seen since are read too.
    SenderHistory(lambda: first._engine).write("bank.example", "198.51.100.0/24")
    first.refresh_now()
    assert "bank.example" in first.current.known
    for node in nodes:
        node.close()

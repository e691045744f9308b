"""The identity check through real Postfix instances, real SPF and DKIM
(knotd), and one correspondent memory in PostgreSQL shared by two nodes.

Node "submission" is a submission-like smtpd (``milter_macro_daemon_name =
ORIGINATING``, named in ``[identity] submission_daemons``): our user's
mail through it teaches the memory. Node "mx" receives: the partner our
user wrote to is a known correspondent there, and the same display name
from a freemail address is held as an impersonation. Node "sasl" is the
submission service of deploy/postfix/submission.cf as written (STARTTLS,
then AUTH PLAIN against Cyrus SASL's sasldb2), its milter naming no
submission service: the login alone (``{auth_authen}``) makes it outbound;
Postfix refuses an envelope sender the login does not own
(reject_sender_login_mismatch), and the gateway learns nothing from a From
the login does not own, by the same map.
"""

from __future__ import annotations

import os
import shutil
import smtplib
import ssl
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.correspondents import Memory
from gateway.lab.milter_process import MilterProcess
from gateway.lab.postfix import PostfixInstance
from gateway.quarantine.store import QuarantineStore
from tests.authlab import sign
from tests.helpers import PROJECT_ROOT, dns_config, send, wait_until
from tests.lab.postgres import PostgresInstance, postgres_bin

pytestmark = pytest.mark.postfix

USER = "bob@example.net"
PARTNER = "alice@good.test"
LOGIN, PASSWORD = USER, "correct horse battery staple"
TEAM = "team@example.net"  # a shared mailbox our user may send as (the sender login map)
CHECKS = '["headers", "size", "lists", "rules", "spf", "dkim", "dmarc", "identity"]'


@dataclass
class Node:
    milter: MilterProcess
    postfix: PostfixInstance


@dataclass
class Pair:
    postgres: PostgresInstance
    submission: Node
    mx: Node


def node_config(directory: Path, url: str, knot, name: str,
                daemons: str = '["ORIGINATING"]', logins: str = "[]") -> str:
    return (f'[milter]\nsocket = "unix:{directory / "milter.sock"}"\nsocket_mode = "666"\n'
            f'[pipeline]\nchecks = {CHECKS}\nworkers = 1\n'
            f'[quarantine]\nurl = "{url}"\nnode = "{name}"\n'
            '[metrics]\nlisten = ""\n'
            f'[identity]\norg_domains = ["example.net"]\nsubmission_daemons = {daemons}\n'
            f'sender_login_maps = {logins}\nrefresh = 0.5\n' + dns_config(knot))


@pytest.fixture(scope="module")
def pair(lab_dir: Path, sink, knot) -> Iterator[Pair]:
    if os.geteuid() != 0:
        pytest.skip("private Postfix and PostgreSQL instances need root")
    if shutil.which("postfix") is None or postgres_bin() is None:
        pytest.skip("postfix and PostgreSQL are needed (see .ci/run)")
    lab = lab_dir / "identity"
    lab.mkdir()
    postgres = PostgresInstance(lab / "pg").start()
    QuarantineStore(postgres.url).close()  # the schema, before either node reads it
    nodes: dict[str, Node] = {}
    try:
        for name, settings in (("submission", {"milter_macro_daemon_name": "ORIGINATING"}),
                               ("mx", {})):
            directory = lab / name
            milter = MilterProcess(directory, node_config(directory, postgres.url, knot, name),
                                   env={"PYTHONPATH": str(PROJECT_ROOT)}).start()
            instance = PostfixInstance(lab / f"postfix-{name}", relay_port=sink.port,
                                       milter=f"unix:{directory / 'milter.sock'}",
                                       settings=settings)
            instance.start()
            nodes[name] = Node(milter, instance)
        yield Pair(postgres, nodes["submission"], nodes["mx"])
    finally:
        for node in nodes.values():
            node.postfix.stop()
            node.milter.stop()
        postgres.stop()


@pytest.fixture(scope="module")
def sasl_node(pair: Pair, lab_dir: Path, sink, knot) -> Iterator[Node]:
    if shutil.which("saslpasswd2") is None:
        pytest.skip("saslpasswd2 is needed (Debian: sasl2-bin)")
    directory = lab_dir / "identity" / "sasl"
    instance = PostfixInstance(lab_dir / "identity" / "postfix-sasl", relay_port=sink.port,
                               milter=f"unix:{directory / 'milter.sock'}",
                               sasl={LOGIN: PASSWORD},
                               sender_logins={USER: LOGIN, TEAM: LOGIN})
    milter = None
    try:
        instance.start()  # writes the sender login map, which the gateway reads too
        logins = f'["{instance.sender_logins_file}"]'
        milter = MilterProcess(directory, node_config(directory, pair.postgres.url, knot,
                                                      "sasl", daemons="[]", logins=logins),
                               env={"PYTHONPATH": str(PROJECT_ROOT)}).start()
        yield Node(milter, instance)
    finally:
        instance.stop()
        if milter is not None:
            milter.stop()


def submit(postfix: PostfixInstance, message: bytes, mail_from: str, rcpt_to: tuple[str, ...],
           login: tuple[str, str] | None) -> None:
    """As a mail program submits: STARTTLS, AUTH PLAIN (unless ``login`` is
    None), then the message."""
    with smtplib.SMTP("127.0.0.1", postfix.smtp_port, timeout=30) as client:
        client.starttls(context=ssl._create_unverified_context())  # the lab's own certificate
        if login is not None:
            client.user, client.password = login
            client.auth("PLAIN", client.auth_plain)
        client.sendmail(mail_from, list(rcpt_to), message)


def mail(from_: str, to: str, tag: str, body: str = "See you on Tuesday.\r\n") -> bytes:
    return (f"From: {from_}\r\nTo: {to}\r\nSubject: minutes {tag}\r\n"
            f"Date: Mon, 07 Dec 2026 09:00:00 +0000\r\nMessage-ID: <{tag}@x.test>\r\n\r\n"
            f"{body}").encode()


def delivered(sink, tag: str) -> bytes:
    found = sink.find(f"<{tag}@x.test>", timeout=30)
    assert found is not None, f"message {tag} not delivered"
    return found.data


def spam_header(data: bytes) -> str:
    """The header of a delivered message (our X-Spam-* and symbols fields in it)."""
    return data.decode("utf-8", "replace").partition("\r\n\r\n")[0]


def test_outbound_mail_teaches_a_known_correspondent_on_the_other_node(pair, sink, keys):
    tag = uuid.uuid4().hex
    # Our user writes out through the submission service.
    send(pair.submission.postfix, mail(f"Bob <{USER}>", PARTNER, tag), mail_from=USER,
         rcpt_to=(PARTNER,))
    assert "OUTBOUND_SUBMISSION" in spam_header(delivered(sink, tag))
    memory = Memory.open(pair.postgres.url)
    try:
        rows = wait_until(lambda: memory.show(PARTNER), timeout=30,
                          what="the partner in the memory")
        assert [(r.sender, r.via, r.recipient, r.outbound) for r in rows] == [
            (PARTNER, "good.test", USER, 1)]
    finally:
        memory.close()
    # The partner answers, signed and from an address SPF allows: known on the mx node.
    reply = uuid.uuid4().hex
    signed = sign(mail(f"Alice Example <{PARTNER}>", USER, reply), "good.test", "s2048",
                  keys.rsa)
    send(pair.mx.postfix, signed, mail_from=PARTNER, rcpt_to=(USER,))
    header = spam_header(delivered(sink, reply))
    assert "KNOWN_CORRESPONDENT" in header and "FIRST_CONTACT" not in header
    # The same display name from a freemail address: held, naming whom it imitates.
    memory = Memory.open(pair.postgres.url)
    try:  # the reply taught her display name; the mx node reads it within `refresh`
        wait_until(lambda: any("Alice Example" in r.names for r in memory.show(PARTNER)),
                   timeout=30, what="her name in the memory")
    finally:
        memory.close()
    store = QuarantineStore(pair.postgres.url, node="test")
    try:
        def impersonation_held() -> list:
            # A worker reads the memory's name index again in the background
            # once `refresh` has passed: the message that finds it stale may
            # still see the old one, the next one does not.
            fake = uuid.uuid4().hex
            message = mail("Alice Example <alice.example.good@gmail.com>", USER, fake,
                           body="Our bank details have changed, please update them.\r\n")
            send(pair.mx.postfix, message, mail_from="alice.example.good@gmail.com",
                 rcpt_to=(USER,))
            return wait_until(lambda: store.find(f"<{fake}@x.test>") or
                              _delivered_now(sink, fake), timeout=30,
                              what="the impersonation decided")

        (record,) = wait_until(lambda: [r for r in impersonation_held()
                                        if not isinstance(r, bytes)],
                               timeout=30, what="the impersonation held")
    finally:
        store.close()
    symbols = {s["name"]: s["evidence"] for s in record.symbols}
    assert "known correspondent alice@good.test's; written from alice.example.good@gmail.com" \
        in symbols["FROM_NAME_IMPERSONATION"]
    assert record.action == "quarantine"


def _delivered_now(sink, tag: str) -> list:
    return [d.data for d in sink.deliveries if f"<{tag}@x.test>".encode() in d.data]


def test_a_sasl_login_makes_our_users_recipients_known_correspondents(pair, sasl_node, sink,
                                                                     keys):
    partner = "carol@good.test"
    tag = uuid.uuid4().hex
    # The submission service as documented lets no one in without TLS and a login ...
    with pytest.raises(smtplib.SMTPSenderRefused, match="STARTTLS"):
        send(sasl_node.postfix, mail(f"Bob <{USER}>", partner, tag), mail_from=USER,
             rcpt_to=(partner,))
    with pytest.raises(smtplib.SMTPRecipientsRefused):
        submit(sasl_node.postfix, mail(f"Bob <{USER}>", partner, tag), USER, (partner,),
               login=None)
    # ... and with one, the milter sees {auth_authen}: our user writing out.
    submit(sasl_node.postfix, mail(f"Bob <{USER}>", partner, tag), USER, (partner,),
           login=(LOGIN, PASSWORD))
    # (This node's milter names no submission service: the login alone decides.)
    header = spam_header(delivered(sink, tag))
    assert "OUTBOUND_SUBMISSION" in header and "FIRST_CONTACT" not in header
    memory = Memory.open(pair.postgres.url)
    try:
        rows = wait_until(lambda: memory.show(partner), timeout=30,
                          what="the partner in the memory")
        assert [(r.sender, r.via, r.recipient, r.outbound) for r in rows] == [
            (partner, "good.test", USER, 1)]
    finally:
        memory.close()
    # Her answer, signed, reaches the mx node: a known correspondent from the first message.
    reply = uuid.uuid4().hex
    signed = sign(mail(f"Carol Example <{partner}>", USER, reply), "good.test", "s2048",
                  keys.rsa)
    send(pair.mx.postfix, signed, mail_from=partner, rcpt_to=(USER,))
    header = spam_header(delivered(sink, reply))
    assert "KNOWN_CORRESPONDENT" in header and "FIRST_CONTACT" not in header


def test_a_login_sends_and_teaches_only_as_an_address_it_owns(pair, sasl_node, sink):
    # Postfix: an envelope sender the login does not own is refused
    # (reject_sender_login_mismatch, with the submission service's map).
    tag = uuid.uuid4().hex
    with pytest.raises(smtplib.SMTPRecipientsRefused, match="not owned by user"):
        submit(sasl_node.postfix, mail("Jane Doe <ceo@example.net>", "dave@good.test", tag),
               "ceo@example.net", ("dave@good.test",), login=(LOGIN, PASSWORD))
    # The gateway: its own envelope sender, someone else's From. Sent (our
    # user's mail is not spam-scored) and learned by nobody.
    submit(sasl_node.postfix, mail("Jane Doe <ceo@example.net>", "dave@good.test", tag),
           USER, ("dave@good.test",), login=(LOGIN, PASSWORD))
    assert "OUTBOUND_SUBMISSION" in spam_header(delivered(sink, tag))
    # The shared mailbox the map gives the login: learned under its address.
    # The learner writes in order: once this row is in, the one before would be.
    shared = uuid.uuid4().hex
    submit(sasl_node.postfix, mail(f"Team <{TEAM}>", "erin@good.test", shared), TEAM,
           ("erin@good.test",), login=(LOGIN, PASSWORD))
    delivered(sink, shared)
    memory = Memory.open(pair.postgres.url)
    try:
        rows = wait_until(lambda: memory.show("erin@good.test"), timeout=30,
                          what="the shared mailbox's correspondent in the memory")
        assert [(r.sender, r.recipient, r.outbound) for r in rows] == [
            ("erin@good.test", TEAM, 1)]
        assert memory.show("dave@good.test") == []
        assert memory.show("ceo@example.net") == []
    finally:
        memory.close()

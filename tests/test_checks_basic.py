from gateway.checks import CheckContext
from gateway.checks.headers import HeaderSanityCheck
from gateway.checks.lists import ListsCheck
from gateway.checks.size import SizeCheck
from gateway.config import Config, ListsSection, SizeSection
from gateway.message import Envelope, Message
from tests.helpers import fixture_message


def symbols_of(outcome):
    """A check returns symbols, or a Report holding them."""
    return getattr(outcome, "symbols", outcome)


def names(check, message):
    return sorted(s.name for s in symbols_of(check.run(message, CheckContext())))


def test_headers_quiet_on_a_proper_message():
    assert (
        names(HeaderSanityCheck.from_config(Config()),
              Message.from_bytes(fixture_message("ham_plain.eml")))
        == []
    )


def test_headers_missing_fields():
    message = Message.from_bytes(fixture_message("missing_headers.eml"))
    assert names(HeaderSanityCheck.from_config(Config()), message) == ["MISSING_DATE",
                                                                        "MISSING_MESSAGE_ID"]


def test_headers_broken_date_and_two_froms():
    raw = (
        b"From: a@example.org\r\nFrom: b@example.org\r\nDate: yesterday-ish\r\n"
        b"Message-ID: <1@x>\r\n\r\n"
    )
    found = symbols_of(
        HeaderSanityCheck.from_config(Config()).run(Message.from_bytes(raw), CheckContext()))
    assert {s.name: s.evidence for s in found} == {
        "MULTIPLE_FROM": "2 From headers",
        "INVALID_DATE": "yesterday-ish",
        "MISSING_SUBJECT": "",
    }


def test_size_limit():
    check = SizeCheck.from_config(Config(size=SizeSection(max_bytes=10)))
    (symbol,) = check.run(Message.from_bytes(b"x" * 11), CheckContext())
    assert symbol.name == "SIZE_EXCEEDED" and symbol.evidence == "11 bytes > 10"
    assert check.run(Message.from_bytes(b"x" * 10), CheckContext()) == []


def lists(**entries) -> ListsCheck:
    return ListsCheck.from_config(Config(lists=ListsSection(**entries)))


def listed(check: ListsCheck, mail_from: str = "", ip: str | None = None) -> dict[str, str]:
    message = Message.from_bytes(b"\r\n", Envelope(mail_from=mail_from, client_ip=ip))
    return {s.name: s.evidence for s in symbols_of(check.run(message, CheckContext()))}


def test_sender_list_forms():
    check = lists(block_senders=["spam.example", "@exact.example", "Eve@Evil.example"])
    assert listed(check, "x@spam.example") == {"BLOCKLIST_SENDER": "matched spam.example"}
    assert listed(check, "x@sub.spam.example") == {"BLOCKLIST_SENDER": "matched spam.example"}
    assert listed(check, "x@notspam.example") == {}
    assert listed(check, "x@exact.example") == {"BLOCKLIST_SENDER": "matched @exact.example"}
    assert listed(check, "x@sub.exact.example") == {}
    assert listed(check, "eve@evil.example") == {"BLOCKLIST_SENDER": "matched eve@evil.example"}
    assert listed(check, "adam@evil.example") == {}
    assert listed(check, "") == {}


def test_ip_list_networks_and_mapped_addresses():
    check = lists(allow_ips=["198.51.100.0/24", "2001:db8::/32"], block_ips=["203.0.113.7"])
    assert listed(check, ip="198.51.100.20") == {"ALLOWLIST_IP": "matched 198.51.100.0/24"}
    assert listed(check, ip="::ffff:198.51.100.20") == {"ALLOWLIST_IP": "matched 198.51.100.0/24"}
    assert listed(check, ip="2001:db8::1") == {"ALLOWLIST_IP": "matched 2001:db8::/32"}
    assert listed(check, ip="203.0.113.7") == {"BLOCKLIST_IP": "matched 203.0.113.7/32"}
    assert listed(check, ip="203.0.113.8") == {}
    assert listed(check, ip="not an ip") == {}

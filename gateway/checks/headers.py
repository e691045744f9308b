"""Header sanity: the fields RFC 5322 requires, present once and parseable.

Address fields are read with :func:`gateway.mail.parse_mailboxes`, which
never raises; a From that names no mailbox with a domain, or an address
field nested past ``[limits] address_comment_depth``, is
``ADDRESS_UNPARSEABLE``: a reader's MUA may still show an author there.

The From fields are read once, on the message (``message.authors``). One
that is not exactly an RFC 5322 mailbox list (``ceo@bank.test
x@evil.test``, text after ``>``, an ``@`` in a display name, a control or
invisible character) is ``FROM_AMBIGUOUS``: mail programs and parsers
disagree on which address such a field names, so DMARC evaluates every
domain any of them could show, and the message is held (rules/default.toml
[force]) unless DMARC refuses it.
"""

from __future__ import annotations

from email.utils import parsedate_tz

from gateway.checks import Check, CheckContext
from gateway.facts import HeadersFacts
from gateway.mail import parse_mailboxes
from gateway.message import Message
from gateway.symbols import Report, Symbol


class HeaderSanityCheck(Check):
    name = "headers"
    symbols = {
        "MISSING_FROM": "no From header (RFC 5322 requires one)",
        "MULTIPLE_FROM": "more than one From header",
        "MISSING_DATE": "no Date header (RFC 5322 requires one)",
        "INVALID_DATE": "Date header cannot be parsed",
        "MISSING_MESSAGE_ID": "no Message-ID header",
        "MISSING_SUBJECT": "no Subject header",
        "ADDRESS_UNPARSEABLE": "an address field cannot be read as RFC 5322 addresses",
        "FROM_AMBIGUOUS": "the From field is not exactly a mailbox list: mail programs may "
                          "show another author than the one DMARC checks",
    }
    address_fields = ("From", "Sender", "Reply-To", "To", "Cc")

    def run(self, message: Message, context: CheckContext) -> Report:
        found: list[Symbol] = []
        senders = message.headers("From")
        if not senders:
            found.append(self.symbol("MISSING_FROM"))
        elif len(senders) > 1:
            found.append(self.symbol("MULTIPLE_FROM", f"{len(senders)} From headers"))
        unreadable = self._unreadable_addresses(message)
        if unreadable:
            found.append(self.symbol("ADDRESS_UNPARSEABLE", "; ".join(unreadable)))
        authors = message.authors
        if authors.ambiguous:
            read = ", ".join(m.address for m in authors.mailboxes) or "no address"
            found.append(self.symbol("FROM_AMBIGUOUS", _clip(
                f"{'; '.join(authors.problems)} (read as {read}; author domains "
                f"{', '.join(authors.domains) or 'none'})", 300)))
        date = message.header("Date")
        if date is None:
            found.append(self.symbol("MISSING_DATE"))
        elif parsedate_tz(date) is None:
            found.append(self.symbol("INVALID_DATE", _clip(date)))
        if message.header("Message-ID") is None:
            found.append(self.symbol("MISSING_MESSAGE_ID"))
        if message.header("Subject") is None:
            found.append(self.symbol("MISSING_SUBJECT"))
        # The Message-ID lets `gateway trace` find accepted mail by its log line.
        message_id = " ".join((message.header("Message-ID") or "").split())[:255]
        return Report(symbols=tuple(found), facts=HeadersFacts(message_id).to_json())

    def _unreadable_addresses(self, message: Message) -> list[str]:
        depth = message.limits.address_comment_depth
        problems: list[str] = []
        authors = message.authors  # From: the one reading, not a parse of its own
        deep = [p for p in authors.problems if p.startswith("comments nested")]
        if deep:
            problems.append(f"From: {deep[0]}")
        elif authors.fields and not any(m.domain for m in authors.mailboxes):
            value = message.header("From") or ""
            problems.append(f"From: no address with a domain in {_clip(value, 60)!r}")
        for name in self.address_fields[1:]:
            for value in message.headers(name):
                parsed = parse_mailboxes(value, depth)
                deep = [p for p in parsed.problems if p.startswith("comments nested")]
                if deep:
                    problems.append(f"{name}: {deep[0]}")
        return problems[:5]


def _clip(text: str, limit: int = 80) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"

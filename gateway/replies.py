"""Every SMTP reply the gateway gives, in one place.

The policy's replies for reject and tempfail verdicts (from the symbol that
forced the action, or the score), and the fixed replies for the gateway's
own trouble (a failed evaluation, a store that cannot keep a message, a
hold the MTA cannot do). The milter sends them, made safe for libmilter by
:func:`smtp_safe`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from gateway.symbols import Symbol


@dataclass(frozen=True)
class SmtpReply:
    code: str  # "550"
    status: str  # "5.7.1"
    text: str

    def __str__(self) -> str:
        return f"{self.code} {self.status} {self.text}"


# Enhanced status codes other than 5.7.1 for symbols that have their own.
STATUS_OF = {"SENDER_NULL_MX": "5.7.27"}  # RFC 7505 4.2: the sender's domain has a null MX
# Tempfails whose evidence is the sender's own DNS name that failed: the
# reply says which, so its admin can look (other evidence stays ours).
TEMPFAIL_SAYS_WHY = frozenset({"SENDER_DOMAIN_TEMPFAIL", "DMARC_TEMPFAIL"})

# The gateway's own trouble: 4xx, so the sender retries and nothing is lost.
FILTER_FAILED = SmtpReply("451", "4.3.0", "Temporary failure in mail filter, try again later")
STORE_FAILED = SmtpReply("451", "4.3.0", "Temporary failure storing the message, try again later")
BUSY = SmtpReply("451", "4.3.2", "Too busy to check this message now, try again later")
# A verdict to hold, on an MTA that cannot hold mail: the sender learns of it.
HOLD_IMPOSSIBLE = SmtpReply("550", "5.7.1", "Rejected: held for review, but this mail "
                            "server cannot hold mail")
# For a reject or tempfail verdict that came without a reply of its own.
REJECTED = SmtpReply("550", "5.7.1", "Rejected")
TRY_AGAIN = SmtpReply("451", "4.7.1", "Try again later")


def for_verdict(action: str, score: float, forced_by: Symbol | None,
                reference: str | None) -> SmtpReply | None:
    """The reply for a verdict's action: None for the actions that accept."""
    ref = f" (ref {reference})" if reference else ""
    if action == "reject":
        if forced_by is not None:
            if forced_by.reply:  # its evidence is for the site's eyes only
                why = forced_by.reply
            else:
                why = forced_by.description or forced_by.name
                why += f": {forced_by.evidence}" if forced_by.evidence else ""
            status = STATUS_OF.get(forced_by.name, "5.7.1")
            return SmtpReply("550", status, f"Rejected: {why} [{forced_by.name}]{ref}")
        return SmtpReply("550", "5.7.1", f"Rejected as spam, score {score:g}{ref}")
    if action == "tempfail":
        why = f" [{forced_by.name}]" if forced_by is not None else ""
        if forced_by is not None and forced_by.name in TEMPFAIL_SAYS_WHY and forced_by.evidence:
            why = f": {forced_by.evidence}{why}"
        return SmtpReply("451", "4.7.1", f"Temporary failure, please try again later{why}{ref}")
    return None


def smtp_safe(text: str, limit: int = 400) -> str:
    """Printable ASCII on one line, '%' doubled for libmilter, clipped."""
    text = re.sub(r"[^\x20-\x7e]", "?", " ".join(text.split()))
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return text.replace("%", "%%")

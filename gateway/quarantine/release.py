"""Release: re-inject a quarantined message to its original recipients.

The original bytes go over SMTP to a Postfix listener that does not call the
milter again (``[release] smtp``, see docs/quarantine.md for the master.cf
entry), with the original envelope sender and only the original recipients:
an analyst never types an address, so a release cannot be turned into a
way to send mail anywhere.
"""

from __future__ import annotations

import smtplib

from gateway.quarantine.store import QuarantineError, QuarantineStore


class ReleaseError(Exception):
    pass


def release(store: QuarantineStore, identifier: str, smtp: str, who: str,
            force: bool = False, timeout: float = 60.0) -> list[str]:
    """Send the message; returns the recipients that were accepted."""
    record = store.get(identifier)
    if record.state in ("deleted", "expired"):
        raise ReleaseError(f"{record.id}: {record.state}, its content is gone")
    if record.state == "released" and not force:
        released = [e for e in record.events if e.action == "released"]
        when = released[-1].time.isoformat(timespec="seconds") if released else "before"
        raise ReleaseError(f"{record.id}: already released ({when}); --force sends it again")
    if not record.recipients:
        raise ReleaseError(f"{record.id}: no recipients recorded")
    raw = store.raw(record.id)
    if raw is None:
        raise ReleaseError(f"{record.id}: its content is gone")
    host, _, port = smtp.rpartition(":")
    try:
        with smtplib.SMTP(host, int(port), timeout=timeout) as client:
            refused = client.sendmail(record.sender, list(record.recipients), raw)
    except smtplib.SMTPRecipientsRefused as exc:
        raise ReleaseError(f"{record.id}: every recipient refused by {smtp}: "
                           f"{_reasons(exc.recipients)}") from None
    except (smtplib.SMTPException, OSError) as exc:
        raise ReleaseError(f"{record.id}: cannot re-inject through {smtp}: {exc}") from None
    accepted = [r for r in record.recipients if r not in refused]
    detail = f"to {', '.join(accepted)} via {smtp}"
    if refused:
        detail += f"; refused {_reasons(refused)}"
    try:
        store.change_state(record.id, "released", who, "released", detail)
    except QuarantineError as exc:  # sent, but not recorded: say so loudly
        raise ReleaseError(f"{record.id}: released but not recorded: {exc}") from None
    return accepted


def _reasons(refused: dict) -> str:
    parts = []
    for rcpt, (code, text) in refused.items():
        reason = text.decode(errors="replace") if isinstance(text, bytes) else str(text)
        parts.append(f"{rcpt} ({code} {reason})")
    return "; ".join(parts)

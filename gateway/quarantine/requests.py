"""Release requests: asking for held mail to be released, and the decision.

An analyst (in the console) or a recipient (from a digest link) whose
release needs someone's approval (``[release] approve``, see
:func:`gateway.quarantine.release.approver`) makes a request instead: the
message stays held, the request names the recipients to release to, who
asked and why, and who may approve it. An admin (or an analyst, where
analysts may) approves it, which releases the message to those recipients,
or refuses it with a reason; either is in the message's history, and the
requester is told (:mod:`gateway.web.notices`). A release of the same
recipients by any other way (the command line, the console's own release
button) approves the requests it fulfils.

A held message with a pending request is kept past its retention until the
request is decided, like a label waiting for review.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, insert, select, update
from sqlalchemy.engine import Connection

from gateway.db import now, utc
from gateway.quarantine.schema import events, messages, recipients, release_requests
from gateway.quarantine.store import QuarantineStore, Record

SOURCES = ("analyst", "recipient")
MAX_REASON = 500


class RequestError(Exception):
    """A request that cannot be made or decided, as one line."""


@dataclass(frozen=True)
class Request:
    id: int
    message: str
    recipients: tuple[str, ...]
    requester: str
    source: str  # analyst, recipient
    notify: str  # the address told by mail; "" for a console user
    reason: str
    approver: str  # admin, analyst
    created: datetime
    state: str  # pending, approved, refused
    decider: str | None
    decided: datetime | None
    decision_reason: str
    notified: datetime | None
    # from the message's record, for lists of requests
    subject: str | None = None
    sender: str | None = None
    score: float | None = None

    def as_dict(self) -> dict[str, Any]:
        def stamp(value: datetime | None) -> str | None:
            return value.isoformat(timespec="seconds") if value else None

        return {"id": self.id, "message": self.message, "recipients": list(self.recipients),
                "requester": self.requester, "source": self.source, "reason": self.reason,
                "approver": self.approver, "created": stamp(self.created),
                "state": self.state, "decider": self.decider, "decided": stamp(self.decided),
                "decision_reason": self.decision_reason, "subject": self.subject,
                "sender": self.sender}


def create(store: QuarantineStore, record: Record, to: Iterable[str], requester: str,
           source: str, reason: str = "", approver: str = "admin", notify: str = ""
           ) -> Request:
    """Ask for ``record`` to be released to ``to`` (original recipients only,
    not released yet, none with a request pending already)."""
    if source not in SOURCES:
        raise RequestError(f"source must be one of {', '.join(SOURCES)}")
    if record.state != "held":
        raise RequestError(f"{record.id}: {record.state}; only held mail can be released")
    by_lower = {r.lower(): r for r in record.recipients}
    chosen: list[str] = []
    for address in to:
        original = by_lower.get(address.strip().lower())
        if original is None:
            raise RequestError(f"{record.id}: {address} is not a recipient of this message; "
                               "a release goes only to the original recipients")
        if original in record.released_to:
            raise RequestError(f"{record.id}: already released to {original}")
        if original not in chosen:
            chosen.append(original)
    if not chosen:
        raise RequestError(f"{record.id}: no recipient chosen")
    stamp = now()
    with store.engine.begin() as connection:
        for other in _requests(connection, message=record.id, state="pending"):
            both = set(other.recipients) & set(chosen)
            if both:
                raise RequestError(f"{record.id}: a release to {', '.join(sorted(both))} is "
                                   f"requested already (request #{other.id}, "
                                   f"{other.requester})")
        identifier = connection.execute(insert(release_requests).values(
            message=record.id, recipients=json.dumps(chosen), requester=requester[:200],
            source=source, notify=notify[:320], reason=reason[:MAX_REASON],
            approver=approver, created=stamp, state="pending",
            decision_reason="").returning(release_requests.c.id)).scalar_one()
        _event(connection, record.id, requester, "release-requested",
               f"request #{identifier}: to {', '.join(chosen)}; an {approver} approves",
               reason)
    return get(store, int(identifier))


def get(store: QuarantineStore, identifier: int) -> Request:
    with store.engine.connect() as connection:
        found = _requests(connection, identifier=identifier)
    if not found:
        raise RequestError(f"no release request #{identifier}")
    return found[0]


def listing(store: QuarantineStore, state: str | None = "pending", *,
            message: str | None = None, requester: str | None = None,
            limit: int = 500) -> list[Request]:
    """Requests, newest first (``state`` None: all)."""
    with store.engine.connect() as connection:
        return _requests(connection, message=message, state=state, requester=requester,
                         limit=limit)


def pending_by_message(store: QuarantineStore, ids: Iterable[str]) -> dict[str, list[Request]]:
    ids = list(ids)
    found: dict[str, list[Request]] = {}
    if not ids:
        return found
    with store.engine.connect() as connection:
        for item in _requests(connection, state="pending", messages_in=ids):
            found.setdefault(item.message, []).append(item)
    return found


def count_pending(store: QuarantineStore, approvers: Iterable[str] = ("admin", "analyst")
                  ) -> int:
    with store.engine.connect() as connection:
        return int(connection.execute(select(func.count()).select_from(release_requests).where(
            and_(release_requests.c.state == "pending",
                 release_requests.c.approver.in_(list(approvers))))).scalar_one())


def settle(store: QuarantineStore, message: str, who: str, reason: str = "") -> list[Request]:
    """After a release of ``message``: its pending requests whose recipients
    have all had it are approved, by ``who``."""
    stamp = now()
    settled = []
    with store.engine.begin() as connection:
        released = {address for address, when in connection.execute(
            select(recipients.c.address, recipients.c.released).where(
                recipients.c.message == message)) if when is not None}
        for item in _requests(connection, message=message, state="pending"):
            if not set(item.recipients) <= released:
                continue
            done = connection.execute(update(release_requests).where(and_(
                release_requests.c.id == item.id, release_requests.c.state == "pending"))
                .values(state="approved", decider=who[:200], decided=stamp,
                        decision_reason=reason[:MAX_REASON])).rowcount
            if done:
                _event(connection, message, who, "release-approved",
                       f"request #{item.id} from {item.requester}", reason)
                settled.append(item.id)
    return [get(store, i) for i in settled]


def refuse(store: QuarantineStore, identifier: int, who: str, reason: str) -> Request:
    """Refuse a pending request; the reason is required (the requester is told it)."""
    reason = " ".join(reason.split())[:MAX_REASON]
    if not reason:
        raise RequestError("say why the release is refused (the requester is told)")
    item = get(store, identifier)
    with store.engine.begin() as connection:
        done = connection.execute(update(release_requests).where(and_(
            release_requests.c.id == identifier, release_requests.c.state == "pending"))
            .values(state="refused", decider=who[:200], decided=now(),
                    decision_reason=reason)).rowcount
        if not done:
            raise RequestError(f"release request #{identifier} was {get(store, identifier).state}"
                               " already")
        _event(connection, item.message, who, "release-refused",
               f"request #{identifier} from {item.requester}", reason)
    return get(store, identifier)


def untold(store: QuarantineStore, *, by_mail: bool | None = None,
           requester: str | None = None, limit: int = 200) -> list[Request]:
    """Decided requests whose requester has not been told yet (``by_mail``:
    those told by mail, or those told in the console)."""
    query = _query().where(and_(release_requests.c.state != "pending",
                                release_requests.c.notified.is_(None)))
    if by_mail is not None:
        query = query.where(release_requests.c.notify != "" if by_mail
                            else release_requests.c.notify == "")
    if requester is not None:
        query = query.where(release_requests.c.requester == requester)
    with store.engine.connect() as connection:
        return [_request(r) for r in connection.execute(
            query.order_by(release_requests.c.id).limit(limit))]


def mark_told(store: QuarantineStore, ids: Iterable[int]) -> None:
    ids = list(ids)
    if ids:
        with store.engine.begin() as connection:
            connection.execute(update(release_requests).where(
                release_requests.c.id.in_(ids)).values(notified=now()))


# -- rows ---------------------------------------------------------------------------------

def _query() -> Any:
    return (select(release_requests, messages.c.subject, messages.c.sender, messages.c.score)
            .select_from(release_requests.outerjoin(
                messages, messages.c.id == release_requests.c.message)))


def _requests(connection: Connection, *, identifier: int | None = None,
              message: str | None = None, state: str | None = None,
              requester: str | None = None, messages_in: list[str] | None = None,
              limit: int = 500) -> list[Request]:
    query = _query().order_by(release_requests.c.id.desc()).limit(limit)
    if identifier is not None:
        query = query.where(release_requests.c.id == identifier)
    if message is not None:
        query = query.where(release_requests.c.message == message)
    if messages_in is not None:
        query = query.where(release_requests.c.message.in_(messages_in))
    if state is not None:
        query = query.where(release_requests.c.state == state)
    if requester is not None:
        query = query.where(release_requests.c.requester == requester)
    return [_request(row) for row in connection.execute(query)]


def _request(row: Any) -> Request:
    return Request(row.id, row.message, tuple(json.loads(row.recipients)), row.requester,
                   row.source, row.notify, row.reason, row.approver, utc(row.created),
                   row.state, row.decider, utc(row.decided) if row.decided else None,
                   row.decision_reason, utc(row.notified) if row.notified else None,
                   row.subject, row.sender, row.score)


def _event(connection: Connection, message: str, who: str, what: str, detail: str,
           reason: str = "") -> None:
    connection.execute(insert(events), {"message": message, "time": now(), "actor": who,
                                        "action": what, "detail": detail,
                                        "reason": reason or None})

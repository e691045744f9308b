"""The learned training set: labelled mail that operators (``gateway learn``)
and, later, the console's reviewed feedback queue add, and that ``gateway
train --feedback`` trains on beside the mail it is given.

It lives in the store's database (the ``training_messages`` table that the
quarantine's Alembic migrations create): SQLite for one node, PostgreSQL
shared by several, so every node and the console see one set. A row keeps
the whole message (a quarantine record loses its body when it expires), its
label, where it came from (a file, ``quarantine:<id>``, the console), who
labelled it and when. A message is there once, identified by its body like
training's de-duplication; labelling it again with the other label changes
the label (the latest word wins), as ``sa-learn`` does.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.exc import SQLAlchemyError

from gateway.classifier.corpus import content_key
from gateway.db import first_line, now, utc
from gateway.quarantine.schema import events, training_messages
from gateway.quarantine.store import QuarantineError, QuarantineStore

if TYPE_CHECKING:  # training (numpy, scikit-learn) is imported by the paths that train
    from gateway.classifier.train import Labelled

LABELS = {"ham": 0, "spam": 1}


class TrainingSetError(Exception):
    """A training-set operation that failed, as one line."""


@dataclass(frozen=True)
class Entry:
    id: int
    key: str
    label: str
    source: str
    quarantine_id: str | None
    who: str
    created: datetime
    updated: datetime
    note: str
    size: int

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "key": self.key, "label": self.label, "source": self.source,
                "quarantine_id": self.quarantine_id, "who": self.who,
                "created": self.created.isoformat(timespec="seconds"),
                "updated": self.updated.isoformat(timespec="seconds"),
                "note": self.note, "size": self.size}


class TrainingSet:
    """The ``training_messages`` table of a store database (``sqlite:///...``
    or ``postgresql://...``); opening it brings the schema up to date."""

    def __init__(self, url: str):
        if not url:
            raise TrainingSetError(
                "no database for the training set: set [classifier] training_set or "
                "[quarantine] url to sqlite:////path/to/file.db or postgresql://...")
        try:
            self.store = QuarantineStore(url)
        except QuarantineError as exc:
            raise TrainingSetError(str(exc)) from None
        self.engine = self.store.engine

    def learn(self, raw: bytes, label: str, source: str, who: str,
              quarantine_id: str | None = None, note: str = "", replace: bool = True) -> str:
        """Add or relabel one message: 'added', 'relabelled' or 'unchanged'
        ('present' without ``replace``: a label that exists stays, as
        autolearning must never change a person's)."""
        if label not in LABELS:
            raise TrainingSetError(f"label must be ham or spam, not {label!r}")
        key = content_key(raw)
        stamp = now()
        try:
            with self.engine.begin() as connection:
                current = connection.execute(
                    select(training_messages.c.id, training_messages.c.label)
                    .where(training_messages.c.key == key)).first()
                if current is None:
                    connection.execute(insert(training_messages), {
                        "key": key, "sha256": hashlib.sha256(raw).hexdigest(),
                        "label": label, "source": source[:1000],
                        "quarantine_id": quarantine_id, "who": who, "created": stamp,
                        "updated": stamp, "note": note, "size": len(raw), "raw": raw})
                    outcome = "added"
                elif current.label == label:
                    return "unchanged"
                elif not replace:
                    return "present"
                else:
                    connection.execute(
                        update(training_messages).where(training_messages.c.id == current.id)
                        .values(label=label, source=source[:1000], who=who, updated=stamp,
                                quarantine_id=quarantine_id, note=note))
                    outcome = "relabelled"
                if quarantine_id is not None:
                    connection.execute(insert(events), {
                        "message": quarantine_id, "time": stamp, "actor": who,
                        "action": f"learned-{label}", "detail": note or "gateway learn"})
        except SQLAlchemyError as exc:
            raise TrainingSetError(f"cannot store the label: {first_line(exc)}") from None
        # The fuzzy check's hashes too (imported here: its hashing brings numpy,
        # which the milter, an autolearner's writer of this set, never needs).
        from gateway.checks.fuzzy import learn_quietly

        learn_quietly(self.engine, raw, label, source)
        return outcome

    def forget(self, key_or_id: str) -> bool:
        """Remove one message by its key (or a unique prefix) or row id."""
        column = training_messages.c
        condition = (column.id == int(key_or_id)) if key_or_id.isdigit() and \
            len(key_or_id) < 10 else column.key.startswith(key_or_id.lower(), autoescape=True)
        with self.engine.begin() as connection:
            found = connection.execute(select(column.id).where(condition)).scalars().all()
            if len(found) > 1:
                raise TrainingSetError(f"{key_or_id!r} matches {len(found)} messages; "
                                       "give more of the key")
            if not found:
                return False
            connection.execute(delete(training_messages).where(column.id == found[0]))
        return True

    def counts(self) -> dict[str, int]:
        with self.engine.connect() as connection:
            rows = connection.execute(
                select(training_messages.c.label, func.count())
                .group_by(training_messages.c.label)).all()
        return {"ham": 0, "spam": 0, **{label: int(n) for label, n in rows}}

    def entries(self, limit: int = 50) -> list[Entry]:
        columns = [c for c in training_messages.c if c.name != "raw"]
        with self.engine.connect() as connection:
            rows = connection.execute(select(*columns).order_by(
                training_messages.c.updated.desc(), training_messages.c.id.desc())
                .limit(limit)).all()
        return [Entry(r.id, r.key, r.label, r.source, r.quarantine_id, r.who,
                      utc(r.created), utc(r.updated), r.note, r.size) for r in rows]

    def labelled(self) -> Iterator[Labelled]:
        """Every message with its label, for training (oldest first)."""
        from gateway.classifier.train import Labelled

        with self.engine.connect() as connection:
            result = connection.execution_options(yield_per=200).execute(
                select(training_messages.c.id, training_messages.c.label,
                       training_messages.c.source, training_messages.c.raw)
                .order_by(training_messages.c.id))
            for row in result:
                yield Labelled(bytes(row.raw), LABELS[row.label],
                               f"learned #{row.id} ({row.source})")

    def close(self) -> None:
        self.store.close()

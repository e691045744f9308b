"""What a worker holds while it reads the store: bounded, whatever the size of the tables."""

from __future__ import annotations

import json
import tracemalloc
from datetime import timedelta
from pathlib import Path

from sqlalchemy import insert

from gateway.config import IdentitySection
from gateway.correspondents import INDEX_BATCH, MemoryReader, now
from gateway.db import make_engine, migrate
from gateway.quarantine.schema import correspondents

ROWS = 20_000


def test_the_correspondent_index_is_read_a_batch_at_a_time(tmp_path: Path):
    """Every worker reads the correspondent index's rows that can make a
    known correspondent every ``refresh`` seconds (the identity and the
    links checks each): here 20,000 senders accepted twice. Held all at
    once, the rows took some 0.6 kB each until the snapshot was built (11 MB
    here, 110 MB at MAX_INDEX_ROWS), and a worker's memory grew with the
    table; read INDEX_BATCH at a time, what it holds is the snapshot, and
    the snapshot still has every row's part, the oldest too."""
    url = f"sqlite:///{tmp_path}/store.db"
    engine = make_engine(url)
    migrate(engine)
    at = now()
    rows = [dict(sender=f"user{i}@sender{i}.example", via=f"sender{i}.example",
                 recipient=f"rcpt@site{i % 3}.example", first_seen=at, last_seen=at,
                 accepted=2, held=0, released=0, spam=0, outbound=0,
                 names=json.dumps([f"Someone Number{i}"])) for i in range(ROWS)]
    # The oldest row, read last: a known correspondent of another of our domains.
    rows.append(dict(rows[0], sender="ann.other@partner.example", via="partner.example",
                     recipient="ann@last.example", outbound=1, last_seen=at - timedelta(days=9),
                     first_seen=at - timedelta(days=90), names=json.dumps(["Ann Other"])))
    with engine.begin() as connection:
        connection.execute(insert(correspondents), rows)
    engine.dispose()
    del rows

    reader = MemoryReader(url, IdentitySection())
    try:
        reader._read_snapshot()  # once first: the engine, the statement, the caches
        tracemalloc.start()
        try:
            reader._read_snapshot()  # as the reader's thread does every refresh
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        snapshot = reader._snapshot
    finally:
        reader.close()
    assert snapshot.read
    assert snapshot.recipient_domains == {"site0.example", "site1.example", "site2.example",
                                          "last.example"}
    assert snapshot.known_domains == {"partner.example"}
    assert set(snapshot.shown.values()) == {"Ann Other"}
    assert INDEX_BATCH < ROWS
    assert peak < 3 * 2**20, f"{peak / 2**20:.1f} MB held to read {ROWS} rows"

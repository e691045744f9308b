"""gateway.db: the store's engines and the helpers every table's code shares."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from gateway.db import (
    engine_url,
    first_line,
    insert_ignoring,
    make_engine,
    migrate,
    read_only_engine,
    safe_url,
    schema_head,
    utc,
)
from gateway.quarantine.schema import jobs


@pytest.mark.parametrize(("url", "shown"), [
    ("postgresql://gw:s3cret@db.example.org/gateway", "postgresql://gw:***@db.example.org/gateway"),
    # a password holding '@' and ':' is hidden whole, the host kept
    ("postgresql://gw:p@ss:w@db/gateway", "postgresql://gw:***@db/gateway"),
    ("sqlite:////var/lib/gateway/quarantine.db", "sqlite:////var/lib/gateway/quarantine.db"),
    ("not a url @ all", "not a url @ all"),
])
def test_a_url_is_shown_without_its_password(url, shown):
    assert safe_url(url) == shown


def test_config_urls_get_the_driver_sqlalchemy_wants():
    assert engine_url("postgres://db/g") == "postgresql+psycopg://db/g"
    assert engine_url("postgresql://u@db/g") == "postgresql+psycopg://u@db/g"
    assert engine_url("sqlite:///x.db") == "sqlite:///x.db"


def test_times_read_back_are_utc_whatever_the_driver_returned():
    naive = datetime(2026, 1, 2, 3, 4, 5)  # SQLite: the UTC time it was given, naive
    assert utc(naive) == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    aware = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=2)))
    assert utc(aware) is aware  # PostgreSQL's: already a point in time
    assert utc(None) is None


def test_an_error_is_one_line_the_drivers_own_first():
    class DriverError(Exception):
        pass

    wrapped = OperationalError("SELECT 1", {}, DriverError("connection refused\nDETAIL: x"))
    assert first_line(wrapped) == "connection refused"
    assert first_line(ValueError("  two\nlines ")) == "two"
    assert first_line(TimeoutError()) == "TimeoutError"  # says nothing: its type says it


def test_a_sqlite_store_is_durable_private_and_migrated(tmp_path):
    path = tmp_path / "state" / "store.db"
    engine = make_engine(f"sqlite:///{path}")
    try:
        migrate(engine)
        with engine.begin() as connection:
            assert connection.execute(text("PRAGMA journal_mode")).scalar() == "wal"
            assert connection.execute(text("PRAGMA synchronous")).scalar() == 2  # FULL
            assert connection.execute(text("SELECT version_num FROM alembic_version")
                                      ).scalar() == schema_head()
            assert insert_ignoring(connection, jobs, {"name": "purge"})
            assert not insert_ignoring(connection, jobs, {"name": "purge"})  # there already
    finally:
        engine.dispose()
    assert path.parent.stat().st_mode & 0o777 == 0o700
    assert path.stat().st_mode & 0o777 == 0o600


def test_a_read_only_engine_creates_and_changes_nothing(tmp_path):
    path = tmp_path / "absent.db"
    engine = read_only_engine(f"sqlite:///{path}")
    try:
        with pytest.raises(OperationalError), engine.connect():
            pass
    finally:
        engine.dispose()
    assert not path.exists()

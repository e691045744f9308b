"""The store's database: engines, the schema's migrations, and the small
helpers every table's code needs (times as UTC, a driver's error as one
line, a URL without its password).

One database holds the quarantine, the lists, the jobs, the node registry
and, when ``[classifier] store`` names it, the models; each of those
modules reaches it through here, so none of them imports another's store
for its engine.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, overload

from sqlalchemy import Engine, Table, create_engine, event, text
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection

from gateway.quarantine.files import make_private

log = logging.getLogger("gateway.quarantine")

MIGRATIONS = Path(__file__).resolve().parent / "quarantine" / "migrations"
# Only one node migrates a shared PostgreSQL at a time: they take this lock.
MIGRATION_LOCK = 4711


def engine_url(url: str) -> str:
    """Config URLs name the database; SQLAlchemy also wants the driver."""
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def safe_url(url: str) -> str:
    """The URL without its password, for messages."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        credentials, _, host = rest.rpartition("@")
        user = credentials.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}"
    return url


def make_engine(url: str, pool_size: int = 10, connect_timeout: float | None = None) -> Engine:
    """An engine for a store URL: SQLite durable and private, PostgreSQL
    pooled and pinged (a connection that died with the server is replaced)."""
    url = engine_url(url)
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        if str(path) not in ("", ":memory:"):
            make_private(path)  # 0700 directory, 0600 files, before SQLite creates any
        engine = create_engine(url, connect_args={"timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    arguments = {} if connect_timeout is None else {"connect_timeout": int(connect_timeout)}
    return create_engine(url, pool_pre_ping=True, pool_size=pool_size, max_overflow=2 * pool_size,
                         connect_args=arguments)


def _sqlite_pragmas(connection: Any, _record: Any) -> None:
    """Durable (fsync'd WAL) and concurrent (readers beside the writer)."""
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def read_only_engine(url: str, connect_timeout: int = 5) -> Engine:
    """An engine that changes nothing: SQLite opened read-only (no WAL
    switch, no file modes narrowed, no file created), PostgreSQL as it is;
    no migration. For what only looks: gateway doctor, the dashboard."""
    if url.startswith("sqlite:///"):
        return create_engine(f"sqlite:///file:{url.removeprefix('sqlite:///')}?mode=ro&uri=true")
    return create_engine(engine_url(url), connect_args={"connect_timeout": connect_timeout})


class MigrationFailed(Exception):
    """A migration in a child process did not finish (its message is one line)."""


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest migration. Nodes sharing PostgreSQL
    take an advisory lock so that only one migrates at a time."""
    # alembic costs a quarter of a second to import: only what migrates pays it
    from alembic import command
    from alembic.config import Config as AlembicConfig
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    settings = AlembicConfig()
    settings.set_main_option("script_location", str(MIGRATIONS))
    known = {r.revision for r in ScriptDirectory(str(MIGRATIONS)).walk_revisions()}
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(text(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})"))
        current = set(MigrationContext.configure(connection).get_current_heads())
        if current - known:
            # A newer gateway on another node migrated it: during a rolling
            # upgrade this node keeps working on it (migrations only add).
            log.warning(
                "the store's schema is at %s, newer than this gateway's %s: using it as "
                "it is; upgrade this node", ", ".join(sorted(current)), schema_head())
            return
        settings.attributes["connection"] = connection
        command.upgrade(settings, "head")


def schema_head() -> str:
    """The newest migration this gateway knows, as the database records it
    (alembic_version): what the node registry and ``gateway nodes`` show."""
    if not _schema_head:
        from alembic.script import ScriptDirectory

        _schema_head.append(str(ScriptDirectory(str(MIGRATIONS)).get_current_head()))
    return _schema_head[0]


def know_schema_head(head: str) -> None:
    """The head as the migrating child process read it (gateway.quarantine.
    migrator): the milter then never imports alembic to name it."""
    _schema_head[:] = [head]


_schema_head: list[str] = []


def insert_ignoring(connection: Connection, table: Table, row: dict[str, Any]) -> bool:
    """INSERT unless a row with the same key exists (ON CONFLICT DO NOTHING,
    on SQLite and PostgreSQL alike; no savepoint needed); True if inserted."""
    key = next(iter(table.primary_key.columns))  # psycopg's rowcount says -1 here
    if connection.dialect.name == "postgresql":
        return connection.execute(postgresql_insert(table).values(**row)
                                  .on_conflict_do_nothing().returning(key)).first() is not None
    return connection.execute(sqlite_insert(table).values(**row)
                              .on_conflict_do_nothing().returning(key)).first() is not None


def now() -> datetime:
    """This machine's time, in UTC (what the store writes)."""
    return datetime.now(UTC)


@overload
def utc(value: datetime) -> datetime: ...
@overload
def utc(value: None) -> None: ...
def utc(value: datetime | None) -> datetime | None:
    """A time read back from the store, in UTC: SQLite returns the naive UTC
    time it was given, PostgreSQL an aware one."""
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def first_line(exc: BaseException) -> str:
    """An exception as one line: a driver's error (SQLAlchemy's ``orig``)
    without its detail lines, or the exception's type when it says nothing."""
    text_ = str(getattr(exc, "orig", None) or exc).strip()
    return text_.splitlines()[0] if text_ else type(exc).__name__

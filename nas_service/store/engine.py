"""SQLAlchemy engines for the store, configured so a reader and a writer process can share SQLite.

SQLite runs in WAL mode (readers never block the writer or each other) with a busy timeout, and write
transactions start with ``BEGIN IMMEDIATE``: they take the write lock up front, so two writers queue on
the timeout instead of failing with "database is locked" when a read lock cannot be upgraded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from nas_service.store.errors import StoreError

SQLITE_BUSY_TIMEOUT_MS = 30_000
_BEGIN_OPTION = "nas_store_sqlite_begin"
_DRIVERS = {
    "sqlite": "sqlite",
    "sqlite+pysqlite": "sqlite",
    "postgresql": "postgresql+psycopg",
    "postgresql+psycopg": "postgresql+psycopg",
}


def parse_url(url: str) -> URL:
    """The URL with its driver resolved; anything the store cannot serve is refused by name."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise StoreError(
            "database URL is not valid; expected sqlite:///path.db or postgresql+psycopg://user@host/db"
        ) from None
    driver = _DRIVERS.get(parsed.drivername)
    if driver is None:
        raise StoreError(
            f"unsupported database URL scheme {parsed.drivername!r}; "
            "use sqlite:///path.db or postgresql+psycopg://user@host/db"
        )
    parsed = parsed.set(drivername=driver)
    if driver == "sqlite":
        database = parsed.database
        if not database or database == ":memory:" or database.startswith("file:"):
            raise StoreError(
                "SQLite URL needs a file path (sqlite:///path.db): an in-memory database would vanish "
                "with the store and could not be shared by the runner and the API"
            )
        if not Path(database).parent.is_dir():
            raise StoreError(f"SQLite database {database}: directory {Path(database).parent} does not exist")
    return parsed


def create_store_engine(url: str) -> Engine:
    """An engine for ``url`` (SQLite file or PostgreSQL via psycopg)."""
    parsed = parse_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(parsed, pool_pre_ping=True)
    engine = create_engine(parsed)
    event.listen(engine, "connect", _configure_sqlite_connection)
    event.listen(engine, "begin", _begin_sqlite_transaction)
    return engine


def writer(engine: Engine) -> Engine:
    """The same engine (and pool) whose transactions take SQLite's write lock when they begin."""
    return engine.execution_options(**{_BEGIN_OPTION: "IMMEDIATE"})


def _configure_sqlite_connection(dbapi_connection: Any, _record: Any) -> None:
    # The driver must not open transactions itself: _begin_sqlite_transaction chooses their kind.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.execute("PRAGMA foreign_keys = ON")
    finally:
        cursor.close()


def _begin_sqlite_transaction(connection: Any) -> None:
    mode = connection.get_execution_options().get(_BEGIN_OPTION, "DEFERRED")
    connection.exec_driver_sql(f"BEGIN {mode}")

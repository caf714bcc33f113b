"""SQLAlchemy engines for the store, configured so a reader and a writer process can share SQLite.

SQLite runs in WAL mode (readers never block the writer or each other) with a busy timeout, and write
transactions start with ``BEGIN IMMEDIATE``: they take the write lock up front, so two writers queue on
the timeout instead of failing with "database is locked" when a read lock cannot be upgraded.
PostgreSQL connections time out and probe the server with TCP keepalives, so a server that went away
fails a call within seconds instead of hanging it; ``patient`` then waits for the server to return. The
server ends a session left idle inside a transaction (its client vanished in a network cut, holding a
search's row lock) and a wait for a lock fails in time, so no lost client blocks the runner for good.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, InterfaceError, OperationalError

from nas_service.store.errors import StoreError, StoreUnavailable

SQLITE_BUSY_TIMEOUT_MS = 30_000
POSTGRES_CONNECT_ARGS = {
    "connect_timeout": 10,
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
    # The store's transactions last milliseconds: one idle for seconds, or a lock wait of seconds,
    # means a client that is gone.
    "options": "-c idle_in_transaction_session_timeout=15000 -c lock_timeout=20000",
}
FIRST_RETRY_SECONDS = 0.25
MAX_RETRY_SECONDS = 4.0
"""Backoff doubles from the first to the last delay: a returning server is noticed within seconds."""
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
        return create_engine(parsed, pool_pre_ping=True, connect_args=POSTGRES_CONNECT_ARGS)
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


class _Patient(Protocol):
    patience: float
    """Seconds to keep retrying a database that does not answer (0: fail at once)."""
    where: str
    """The database, for messages (no password)."""


Params = ParamSpec("Params")
Result = TypeVar("Result")
Store = TypeVar("Store", bound=_Patient)
log = logging.getLogger("nas_service.store")


def patient(
    method: Callable[Concatenate[Store, Params], Result],
) -> Callable[Concatenate[Store, Params], Result]:
    """Run a store method again while its database does not answer, for up to ``store.patience``
    seconds from the first failure, then raise ``StoreUnavailable``; other errors pass through."""

    @functools.wraps(method)
    def call(store: Store, *args: Params.args, **kwargs: Params.kwargs) -> Result:
        failed_at: float | None = None
        delay = FIRST_RETRY_SECONDS
        while True:
            try:
                result = method(store, *args, **kwargs)
            except DBAPIError as error:
                if not _transient(error):
                    raise
                now = time.monotonic()
                if failed_at is None:
                    failed_at = now
                    if store.patience > 0:
                        log.warning("the store at %s does not answer (%s); retrying for %.0f s", store.where,
                                    _reason(error), store.patience)
                waited = now - failed_at
                if waited >= store.patience:
                    raise StoreUnavailable(
                        f"the store at {store.where} did not answer for {waited:.0f} s: {_reason(error)}"
                    ) from error
                time.sleep(min(delay, store.patience - waited))
                delay = min(2 * delay, MAX_RETRY_SECONDS)
            else:
                if failed_at is not None:
                    log.warning("the store at %s answers again after %.1f s", store.where,
                                time.monotonic() - failed_at)
                return result

    return call


def _transient(error: DBAPIError) -> bool:
    """A lost or refused connection, a server shutting down, a lock timeout: worth another try."""
    return error.connection_invalidated or isinstance(error, (OperationalError, InterfaceError))


def _reason(error: DBAPIError) -> str:
    return " ".join(str(error.orig).split()) or type(error.orig).__name__

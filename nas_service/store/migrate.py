"""Bring a database to the current schema with the Alembic revisions shipped in this package.

A database already at ``HEAD`` is recognised with one query, without importing Alembic (most of a
short command's start-up); Alembic runs only when there is something to upgrade.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError

from nas_service.store.engine import create_store_engine, writer
from nas_service.store.errors import StoreError, StoreUnavailable

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
# Any fixed key: concurrent first opens of a PostgreSQL database queue on it instead of racing to
# create the same tables. SQLite gets the same effect from BEGIN IMMEDIATE.
_PG_MIGRATION_LOCK = 0x6E61_7366_706E
HEAD = "0004"
"""The newest revision in ``migrations/versions`` (tests/test_migrations.py checks it is Alembic's head)."""


def upgrade_database(url: str) -> None:
    """Run ``alembic upgrade head`` on ``url``; a database already at head is left untouched."""
    engine = create_store_engine(url)
    try:
        upgrade_engine(engine)
    finally:
        engine.dispose()


def upgrade_engine(engine: Engine) -> None:
    """Upgrade through ``engine`` in one write transaction: a failed upgrade leaves nothing half-done."""
    if _at_head(engine):
        return
    from alembic import command
    from alembic.config import Config
    from alembic.util import CommandError

    config = Config()
    # Config values go through ConfigParser interpolation, which treats '%' as special.
    config.set_main_option("script_location", str(MIGRATIONS).replace("%", "%%"))
    where = engine.url.render_as_string(hide_password=True)
    try:
        with writer(engine).begin() as connection:
            if connection.dialect.name == "postgresql":
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK})
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
    except CommandError as error:
        raise StoreError(f"cannot upgrade the store at {where}: {error}") from None
    except DBAPIError as error:
        raise StoreUnavailable(f"cannot open the store at {where}: {error.orig}") from None


def _at_head(engine: Engine) -> bool:
    """Whether the database records ``HEAD`` as its revision (False also when it cannot say)."""
    try:
        with engine.connect() as connection:
            return connection.execute(text("SELECT version_num FROM alembic_version")).scalar() == HEAD
    except DBAPIError:  # no such table yet, or no database: the upgrade path reports what is wrong
        return False

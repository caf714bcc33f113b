"""Bring a database to the current schema with the Alembic revisions shipped in this package."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.util import CommandError
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError

from nas_service.store.engine import create_store_engine, writer
from nas_service.store.errors import StoreError, StoreUnavailable

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
# Any fixed key: concurrent first opens of a PostgreSQL database queue on it instead of racing to
# create the same tables. SQLite gets the same effect from BEGIN IMMEDIATE.
_PG_MIGRATION_LOCK = 0x6E61_7366_706E


def upgrade_database(url: str) -> None:
    """Run ``alembic upgrade head`` on ``url``; a database already at head is left untouched."""
    engine = create_store_engine(url)
    try:
        upgrade_engine(engine)
    finally:
        engine.dispose()


def upgrade_engine(engine: Engine) -> None:
    """Upgrade through ``engine`` in one write transaction: a failed upgrade leaves nothing half-done."""
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

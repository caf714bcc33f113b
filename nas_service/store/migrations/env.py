"""Alembic environment of the episode store; driven by ``nas_service.store.migrate``, not by a CLI.

The caller passes an open connection, already inside the transaction that should hold the upgrade, in
``config.attributes["connection"]``; the whole upgrade then commits or rolls back as one.
"""

from alembic import context

from nas_service.store.schema import Base

if context.is_offline_mode():
    raise RuntimeError("the episode store has no offline (--sql) migrations; use upgrade_database(url)")

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("no connection given; run migrations through nas_service.store.upgrade_database(url)")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    # SQLite cannot ALTER most things; batch mode lets later revisions copy-and-move tables instead.
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()

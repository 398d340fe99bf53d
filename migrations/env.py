"""Alembic environment for defectscan.

Where the database is, in order: a connection or engine handed in by the caller
(``config.attributes["connection"]``: ``upgrade_to_head``, pytest-alembic), ``-x url=...`` on
the alembic command line, ``sqlalchemy.url`` in the config (``defectscan db --url``), and
finally ``Settings.database_url`` (``DEFECTSCAN_DATABASE_URL``, default a SQLite file under
``var/``). Engines come from :func:`defectscan.store.db.make_engine`, so SQLite migrations run
in WAL mode inside a real transaction.
"""

from __future__ import annotations

from logging.config import fileConfig
from typing import Any

from alembic import context
from alembic.autogenerate.api import AutogenContext
from sqlalchemy import Connection, Engine

from defectscan.config import get_settings
from defectscan.store.db import make_engine
from defectscan.store.schema import Base, UTCDateTime

__all__: list[str] = []

config = context.config
if config.config_file_name and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = Base.metadata


def _url() -> str:
    return (
        context.get_x_argument(as_dictionary=True).get("url")
        or config.get_main_option("sqlalchemy.url")
        or get_settings().database_url
    )


def _render_item(type_: str, obj: Any, autogen_context: AutogenContext) -> str | bool:
    # Migrations spell the column type out instead of importing defectscan's decorator.
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def _configure(**kwargs: Any) -> None:
    context.configure(
        target_metadata=target_metadata,
        compare_type=True,
        render_item=_render_item,
        **kwargs,
    )


def run_migrations_offline() -> None:
    """Emit SQL to stdout (``alembic upgrade --sql``)."""
    url = _url()
    _configure(
        url=url,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        render_as_batch=url.startswith("sqlite"),
    )
    with context.begin_transaction():
        context.run_migrations()


#: pg_advisory_xact_lock key that serialises migrations ("dsmigr" as an integer).
MIGRATION_LOCK_KEY = 0x64736D69677221


def _run_online(connection: Connection) -> None:
    sqlite = connection.dialect.name == "sqlite"
    # SQLite DDL is transactional once SQLAlchemy emits BEGIN (make_engine does): the whole
    # upgrade then commits or rolls back as one.
    _configure(connection=connection, render_as_batch=sqlite, transactional_ddl=True)
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            # Several containers may run `db upgrade` at once: the first takes this lock, the
            # others wait for its commit and then find the schema at head (READ COMMITTED
            # reads the version table afresh). Released with the transaction.
            connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK_KEY})")
        context.run_migrations()


def run_migrations_online() -> None:
    """Migrate through a live connection."""
    given = config.attributes.get("connection")
    if isinstance(given, Connection):
        _run_online(given)
        return
    engine = given if isinstance(given, Engine) else make_engine(_url())
    try:
        with engine.connect() as connection:
            _run_online(connection)
            # With an engine handed in, nothing else would commit what the migration did.
            if connection.in_transaction():
                connection.commit()
    finally:
        if given is None:
            engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()

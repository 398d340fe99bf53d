"""Engines, sessions, retries and migrations for the results database.

SQLite (the embedded default) runs in WAL mode with a busy timeout, so that a reader (the
dashboard, a report) never blocks the writer (the line monitor) and two writers queue instead
of failing. SQLAlchemy, not the ``sqlite3`` driver, emits ``BEGIN``: that gives real
transactions for SELECTs and DDL (the driver's legacy mode skips both), and lets a writer
session ask for ``BEGIN IMMEDIATE`` so it takes the write lock up front and waits for it,
instead of failing later with "database is locked" when it upgrades a read snapshot.

PostgreSQL connections are pre-pinged on checkout and run in UTC, so hour buckets are UTC.
"""

from __future__ import annotations

import functools
import logging
import random
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from sqlalchemy import Connection, Engine, NullPool, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

import defectscan
from defectscan.config import get_settings
from defectscan.errors import StoreError

__all__ = [
    "REPO_ROOT",
    "alembic_config",
    "ensure_schema",
    "is_retryable",
    "make_engine",
    "migrations_dir",
    "retrying",
    "schema_revisions",
    "scratch_database",
    "session_factory",
    "upgrade_to_head",
    "with_retries",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")
P = ParamSpec("P")

REPO_ROOT = Path(defectscan.__file__).resolve().parents[2]
_BEGIN_OPTION = "defectscan_sqlite_begin"
DEFAULT_SQLITE_BUSY_TIMEOUT_MS = 30_000


def make_engine(
    url: str | None = None,
    *,
    sqlite_busy_timeout_ms: int = DEFAULT_SQLITE_BUSY_TIMEOUT_MS,
    echo: bool = False,
    **engine_kwargs: Any,
) -> Engine:
    """An engine for ``url`` (default: ``Settings.database_url``), ready for concurrent use.

    Creates the parent directory of a SQLite file. Every connection is pre-pinged on checkout,
    so a connection the server dropped while idle is replaced instead of failing the next
    statement.
    """
    url = url or get_settings().database_url
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    kwargs: dict[str, Any] = {"pool_pre_ping": True, "echo": echo, **engine_kwargs}
    if backend == "sqlite":
        database = parsed.database
        if database and database != ":memory:" and not database.startswith("file:"):
            Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(parsed, **kwargs)
        _configure_sqlite(engine, busy_timeout_ms=sqlite_busy_timeout_ms)
        return engine
    if backend == "postgresql":
        connect_args = dict(kwargs.pop("connect_args", {}))
        # date_trunc and friends work in the session time zone: pin it to UTC.
        connect_args.setdefault("options", "-c timezone=UTC")
        connect_args.setdefault("application_name", "defectscan")
        return create_engine(parsed, connect_args=connect_args, **kwargs)
    return create_engine(parsed, **kwargs)


def _configure_sqlite(engine: Engine, *, busy_timeout_ms: int) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Hand transaction control to SQLAlchemy (see _on_begin).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            # busy_timeout first: switching to WAL may itself wait for a lock.
            cursor.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            cursor.execute("PRAGMA journal_mode = WAL")
            # NORMAL is safe against process crashes in WAL mode; only a power cut can lose
            # the last commits, never corrupt the file.
            cursor.execute("PRAGMA synchronous = NORMAL")
            cursor.execute("PRAGMA foreign_keys = ON")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        options = connection.get_execution_options()
        if options.get("isolation_level") == "AUTOCOMMIT":
            return
        mode = options.get(_BEGIN_OPTION, "DEFERRED")
        connection.exec_driver_sql(f"BEGIN {mode}")


def session_factory(engine: Engine, *, write: bool = False) -> sessionmaker[Session]:
    """A session factory bound to ``engine``; objects stay usable after commit.

    ``write=True`` is for writer processes: on SQLite their transactions start with
    ``BEGIN IMMEDIATE`` and so queue for the write lock (up to the busy timeout) instead of
    failing when two writers overlap. It changes nothing on PostgreSQL.
    """
    bind = engine.execution_options(**{_BEGIN_OPTION: "IMMEDIATE"}) if write else engine
    return sessionmaker(bind=bind, expire_on_commit=False)


def is_retryable(exc: BaseException) -> bool:
    """Whether re-running the unit of work in a fresh transaction may succeed.

    True for a lost or invalidated connection, a failed connect, a deadlock or serialization
    failure (PostgreSQL), and a busy/locked database (SQLite). False for everything that
    would fail the same way again (constraint violations, missing tables, bad SQL).
    """
    if not isinstance(exc, DBAPIError):
        return False
    if exc.connection_invalidated:
        return True
    if not isinstance(exc, OperationalError):
        return False
    if type(exc.orig).__module__.startswith("sqlite3"):
        text = str(exc.orig).lower()
        return "locked" in text or "busy" in text
    return True


def retrying(
    fn: Callable[..., T],
    *,
    sessions: sessionmaker[Session],
    attempts: int = 8,
    base_delay: float = 0.1,
    max_delay: float = 5.0,
) -> T:
    """Run ``fn(session=...)`` in its own transaction and commit; retry transient failures.

    On a retryable error (see :func:`is_retryable`) the transaction is rolled back and the
    *whole* unit of work runs again in a fresh session, after an exponential backoff with
    jitter. Pair it with idempotent writes: a commit whose acknowledgement was lost is then
    harmless to repeat. The defaults wait up to about 11 s in all, long enough for a
    PostgreSQL restart; a writer that must ride out longer outages passes more attempts.
    """
    if attempts < 1:
        msg = f"attempts must be at least 1, got {attempts}"
        raise ValueError(msg)
    for attempt in range(1, attempts + 1):
        try:
            with sessions() as session, session.begin():
                return fn(session=session)
        except DBAPIError as exc:
            if attempt == attempts or not is_retryable(exc):
                raise
            delay = min(max_delay, base_delay * 2 ** (attempt - 1))
            delay *= 0.5 + random.random() / 2  # jitter: writers that failed together spread out
            logger.warning(
                "database write failed (%s: %s); retrying in %.2fs (attempt %d of %d)",
                type(exc.orig).__name__,
                str(exc.orig).strip().splitlines()[0] if str(exc.orig).strip() else "",
                delay,
                attempt + 1,
                attempts,
            )
            time.sleep(delay)
    msg = "unreachable: the retry loop either returns or raises"  # pragma: no cover
    raise AssertionError(msg)  # pragma: no cover


def with_retries(
    sessions: sessionmaker[Session],
    *,
    attempts: int = 8,
    base_delay: float = 0.1,
    max_delay: float = 5.0,
) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """Decorator form of :func:`retrying`.

    The decorated function takes keyword-only ``session``; the wrapper takes the same
    arguments without it, opens the session, commits, and retries::

        @with_retries(sessions)
        def store(batch, *, session):
            return save_inspections(batch, session=session)

        store(batch)
    """

    def decorate(fn: Callable[..., T]) -> Callable[..., T]:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> T:
            def unit(*, session: Session) -> T:
                return fn(*args, session=session, **kwargs)

            return retrying(
                unit,
                sessions=sessions,
                attempts=attempts,
                base_delay=base_delay,
                max_delay=max_delay,
            )

        return wrapper

    return decorate


def migrations_dir() -> Path:
    """The Alembic migrations folder (with ``env.py``), wherever defectscan is installed.

    An installed wheel carries them as the package ``defectscan._migrations`` (built from the
    top-level ``migrations/``); a source checkout whose install predates that mapping falls
    back to ``<repo>/migrations``.
    """
    from importlib.resources import as_file, files

    candidates: list[Path] = []
    try:
        env = files("defectscan._migrations") / "env.py"
    except ModuleNotFoundError:
        pass
    else:
        if env.is_file():
            # A wheel unpacked on disk: as_file hands back the real path, no temporary copy.
            with as_file(env) as path:
                candidates.append(Path(path).parent)
    candidates.append(REPO_ROOT / "migrations")
    for path in candidates:
        if (path / "env.py").is_file():
            return path
    msg = (
        f"Alembic migrations not found (looked in {', '.join(map(str, candidates))}): the "
        "defectscan install is incomplete; reinstall it (`pip install --force-reinstall "
        "defectscan`, or `pip install -e .` from a clone)"
    )
    raise StoreError(msg)


def alembic_config(engine_or_url: Engine | str | None = None) -> Any:
    """An ``alembic.config.Config`` for this repository's migrations.

    An engine is handed to ``env.py`` as is (``config.attributes["connection"]``); a URL is
    set as ``sqlalchemy.url``; None leaves ``env.py`` to read ``Settings.database_url``.
    """
    from alembic.config import Config  # alembic is only needed when migrating

    script_location = migrations_dir()
    ini = REPO_ROOT / "alembic.ini"
    config = Config(str(ini)) if ini.is_file() else Config()
    config.set_main_option("script_location", str(script_location))
    if isinstance(engine_or_url, Engine):
        config.attributes["connection"] = engine_or_url
    elif engine_or_url:
        # ConfigParser interpolates '%': URL-encoded passwords need it doubled.
        config.set_main_option("sqlalchemy.url", engine_or_url.replace("%", "%%"))
    # Programmatic runs keep the application's logging as it is.
    config.attributes["configure_logger"] = False
    return config


def upgrade_to_head(engine_or_url: Engine | str | None = None) -> str | None:
    """Run the Alembic migrations up to head; returns the head revision."""
    from alembic import command
    from alembic.script import ScriptDirectory

    config = alembic_config(engine_or_url)
    command.upgrade(config, "head")
    return ScriptDirectory.from_config(config).get_current_head()


@contextmanager
def scratch_database(admin_url: str, *, prefix: str = "defectscan_scratch") -> Iterator[str]:
    """A fresh, empty PostgreSQL database (URL) next to ``admin_url``'s, dropped afterwards.

    For tests and benchmarks that must write to a real server without touching real data.
    """
    name = f"{prefix}_{uuid.uuid4().hex[:16]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with admin.connect() as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            # FORCE: a run that failed half-way may leave connections open.
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def schema_revisions(engine: Engine) -> tuple[str | None, str | None, bool]:
    """``(current, head, empty)``: the database's Alembic revision, the code's, no tables yet."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory
    from sqlalchemy import inspect as sa_inspect

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    with engine.connect() as connection:
        current = MigrationContext.configure(connection).get_current_revision()
        empty = not sa_inspect(connection).get_table_names()
    return current, head, empty


def ensure_schema(engine: Engine, *, create_new_sqlite: bool = True) -> str | None:
    """Check that the database is at the code's migration head; never migrate it.

    Runtime commands (monitor, inspect --store, flows) call this instead of upgrading: several
    monitors share one PostgreSQL and must not race Alembic, and an operator decides when a
    schema changes (``defectscan db upgrade``). The one exception is a brand-new, empty SQLite
    file (the embedded default), which is created at head under a file lock.
    """
    current, head, empty = schema_revisions(engine)
    if current == head:
        return head
    url = engine.url
    if empty and current is None and create_new_sqlite and url.get_backend_name() == "sqlite":
        database = url.database
        if database and database != ":memory:" and not database.startswith("file:"):
            import fcntl

            lock_path = Path(database).expanduser().with_suffix(".migrate.lock")
            with lock_path.open("a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                current, head, empty = schema_revisions(engine)
                if current is None and empty:
                    logger.info("creating a new results database at %s", database)
                    upgrade_to_head(engine)
                    return head
        else:
            upgrade_to_head(engine)
            return head
        if current == head:
            return head
    shown = url.render_as_string(hide_password=True)
    msg = (
        f"the results database {shown} is at schema revision {current or 'none (empty)'}, "
        f"this defectscan needs {head}; run `defectscan db upgrade` (with the same "
        "DEFECTSCAN_DATABASE_URL) once, then start again"
    )
    raise StoreError(msg)

"""SQL helpers shared by the store's modules: dialect dispatch, datetime checks, hour buckets.

Package-private: the query and write modules of :mod:`defectscan.store` import these, nothing
outside the package should. This module imports only the schema, so every other store module
can import it without a cycle.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, func
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from defectscan.errors import StoreError
from defectscan.store.schema import Inspection

__all__ = ["_as_utc", "_aware", "_dialect", "_hour", "_insert", "_window"]


def _dialect(session: Session) -> str:
    return session.get_bind().dialect.name


def _insert(session: Session, entity: Any) -> Any:
    """The dialect's INSERT, which has ``on_conflict_do_nothing``/``_do_update``."""
    name = _dialect(session)
    if name == "postgresql":
        return postgresql.insert(entity)
    if name == "sqlite":
        return sqlite.insert(entity)
    msg = f"the results database supports SQLite and PostgreSQL, not {name!r}"
    raise StoreError(msg)


def _aware(value: datetime | None, what: str) -> datetime | None:
    if value is not None and value.tzinfo is None:
        msg = f"{what} is a naive datetime ({value.isoformat()}); pass a timezone-aware UTC one"
        raise StoreError(msg)
    return value


def _as_utc(value: Any) -> datetime:
    """A bucket value from either dialect (datetime, or SQLite's text) as aware UTC."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if not isinstance(value, datetime):
        msg = f"expected a datetime from the database, got {value!r}"
        raise StoreError(msg)
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def _hour(session: Session, column: Any) -> ColumnElement[Any]:
    """``column`` truncated to the hour (UTC: make_engine pins PostgreSQL to UTC)."""
    if _dialect(session) == "postgresql":
        return func.date_trunc("hour", column)
    return func.strftime("%Y-%m-%d %H:00:00", column)


def _window(since: datetime, until: datetime | None) -> list[ColumnElement[bool]]:
    _aware(since, "since")
    _aware(until, "until")
    conditions = [Inspection.finished_at >= since]
    if until is not None:
        conditions.append(Inspection.finished_at < until)
    return conditions

"""Revision 0003 (``inspections.source_key``) on a database that already holds rows, on SQLite
and PostgreSQL: old rows keep their rule, new deliveries get theirs, and a downgrade that would
break the old uniqueness says so instead of failing half-way."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from alembic import command

from defectscan.store.db import alembic_config, make_engine

SHA = "ab" * 32
NOW = datetime(2026, 11, 30, tzinfo=UTC)


def _insert(connection: sa.Connection, *, source_key: str | None = None, keyed: bool) -> None:
    columns = "sha256, uri, model_version_id, status, verdict, finished_at, timings_ms, n_defects"
    values = ":sha, :uri, 1, 'ok', 'pass', :now, '{}', 0"
    if keyed:
        columns += ", source_key"
        values += ", :key"
    connection.execute(
        sa.text(f"INSERT INTO inspections ({columns}) VALUES ({values})"),
        {"sha": SHA, "uri": "file:///cam/a.png", "now": NOW, "key": source_key},
    )


def test_upgrade_keeps_old_rows_and_downgrade_refuses_to_lose_deliveries(db_url: str) -> None:
    engine = make_engine(db_url)
    config = alembic_config(engine)
    try:
        command.upgrade(config, "0002")
        with engine.begin() as c:
            c.execute(
                sa.text(
                    "INSERT INTO model_versions (id, version, name, sha256, status, activation, "
                    "class_names, spec, created_at) VALUES (1, 'm-1', 'm', :sha, 'champion', "
                    "'sigmoid', '[\"dark\"]', '{}', :now)"
                ),
                {"sha": SHA, "now": NOW},
            )
            _insert(c, keyed=False)
        command.upgrade(config, "head")

        with engine.begin() as c:
            assert c.execute(sa.text("SELECT source_key FROM inspections")).all() == [(None,)]
        with pytest.raises(sa.exc.IntegrityError), engine.begin() as c:
            _insert(c, keyed=False)  # the old rule still holds for rows without a key
        with engine.begin() as c:  # two deliveries of the same bytes: two rows
            _insert(c, source_key="folder:/cam/a.png:10:1", keyed=True)
            _insert(c, source_key="folder:/cam/b.png:10:2", keyed=True)
        with pytest.raises(sa.exc.IntegrityError), engine.begin() as c:
            _insert(c, source_key="folder:/cam/a.png:10:1", keyed=True)

        with pytest.raises(RuntimeError, match="cannot downgrade below 0003"):
            command.downgrade(config, "0002")
        with engine.begin() as c:
            c.execute(sa.text("DELETE FROM inspections WHERE source_key IS NOT NULL"))
        command.downgrade(config, "0002")
        with engine.begin() as c:
            assert c.execute(sa.text("SELECT count(*) FROM inspections")).scalar_one() == 1
    finally:
        engine.dispose()

"""The Alembic history builds exactly the ORM's schema, both ways, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from pytest_alembic import tests as alembic_tests
from typer.testing import CliRunner

from defectscan.cli.db import db_app
from defectscan.store.db import alembic_config as make_alembic_config
from defectscan.store.db import make_engine, upgrade_to_head
from defectscan.store.schema import Base

TABLES = {
    "events",
    "defects",
    "inspections",
    "model_versions",
    "reviews",
    "run_metrics",
    "training_runs",
    # the operator console (revision 0004)
    "audit",
    "line_controls",
    "sessions",
    "threshold_rules",
    "users",
    # drift monitoring (revision 0005)
    "drift_references",
    "drift_windows",
    # the review queue (revision 0006)
    "review_queue",
}


@pytest.fixture
def alembic_config() -> Any:
    """pytest-alembic: this repository's migrations (URL injected through the engine)."""
    return make_alembic_config()


@pytest.fixture
def alembic_engine(db_url: str) -> Iterator[sa.Engine]:
    """pytest-alembic: an empty database of each kind, configured like production."""
    engine = make_engine(db_url)
    yield engine
    engine.dispose()


def _tables(engine: sa.Engine) -> set[str]:
    return set(sa.inspect(engine).get_table_names()) - {"alembic_version"}


def test_history_has_a_single_head(alembic_runner: Any) -> None:
    alembic_tests.test_single_head_revision(alembic_runner)


def test_upgrade_downgrade_upgrade(alembic_runner: Any, alembic_engine: sa.Engine) -> None:
    alembic_runner.migrate_up_to("heads")
    assert _tables(alembic_engine) == TABLES
    alembic_runner.migrate_down_to("base")
    assert _tables(alembic_engine) == set()
    alembic_runner.migrate_up_to("heads")
    assert _tables(alembic_engine) == TABLES
    assert alembic_runner.current == alembic_runner.heads[0]


def test_every_revision_downgrades(alembic_runner: Any) -> None:
    alembic_tests.test_up_down_consistency(alembic_runner)


def test_models_match_migrated_schema(alembic_runner: Any) -> None:
    # autogenerate against the migrated database must find nothing to do
    alembic_tests.test_model_definitions_match_ddl(alembic_runner)


def test_compare_metadata_finds_no_difference(db_url: str) -> None:
    engine = make_engine(db_url)
    try:
        upgrade_to_head(engine)
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []
    finally:
        engine.dispose()


def test_cli_check_fails_until_upgraded_then_passes(db_url: str) -> None:
    runner = CliRunner()
    before = runner.invoke(db_app, ["check", "--url", db_url])
    assert before.exit_code == 1
    assert "not up to date" in before.output

    assert runner.invoke(db_app, ["upgrade", "--url", db_url]).exit_code == 0
    current = runner.invoke(db_app, ["current", "--url", db_url])
    assert "(head)" in current.output
    after = runner.invoke(db_app, ["check", "--url", db_url])
    assert after.exit_code == 0, after.output

    assert runner.invoke(db_app, ["downgrade", "base", "--url", db_url]).exit_code == 0
    engine = make_engine(db_url)
    try:
        assert _tables(engine) == set()
    finally:
        engine.dispose()


def test_upgrade_to_head_is_idempotent(db_url: str) -> None:
    first = upgrade_to_head(db_url)
    second = upgrade_to_head(db_url)
    assert first == second is not None
    engine = make_engine(db_url)
    try:
        assert _tables(engine) == TABLES
    finally:
        engine.dispose()

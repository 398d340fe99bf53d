"""Runtime commands never migrate an existing database; they say what to run instead."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic import command

from defectscan.errors import StoreError
from defectscan.store.db import alembic_config, ensure_schema, make_engine, schema_revisions
from helpers.line import cli_env, oracle_checkpoint, start_cli, write_parts


def test_a_brand_new_sqlite_file_is_created_at_head(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'new.db'}")
    head = ensure_schema(engine)
    current, code_head, empty = schema_revisions(engine)
    engine.dispose()
    assert current == code_head == head
    assert not empty


@pytest.mark.parametrize(
    "kind", ["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)]
)
def test_an_old_schema_is_refused_with_the_command_to_run(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = request.getfixturevalue("sqlite_url" if kind == "sqlite" else "pg_url")
    command.upgrade(alembic_config(url), "0001")
    engine = make_engine(url)
    with pytest.raises(StoreError, match=r"at schema revision 0001.*defectscan db upgrade"):
        ensure_schema(engine)
    current, _, _ = schema_revisions(engine)
    engine.dispose()
    assert current == "0001"  # untouched


@pytest.mark.integration
def test_an_empty_postgresql_database_is_not_created_behind_the_operators_back(
    pg_url: str,
) -> None:
    engine = make_engine(pg_url)
    with pytest.raises(StoreError, match=r"none \(empty\).*defectscan db upgrade"):
        ensure_schema(engine)
    engine.dispose()


def test_monitor_stops_on_an_old_schema_and_names_db_upgrade(
    tmp_path: Path, sqlite_url: str
) -> None:
    command.upgrade(alembic_config(sqlite_url), "0001")
    camera = tmp_path / "camera"
    write_parts(camera, 2)
    model = oracle_checkpoint(tmp_path / "oracle.safetensors")
    log = tmp_path / "monitor.log"
    proc = start_cli(
        ["monitor", "--source", f"folder:{camera}", "--model", str(model), "--no-prefect"],
        cli_env(tmp_path, sqlite_url),
        log,
    )
    assert proc.wait(timeout=120) == 1
    output = log.read_text()
    assert "defectscan db upgrade" in output
    assert "Traceback" not in output
    assert len(list(camera.glob("*.png"))) == 2  # nothing was claimed

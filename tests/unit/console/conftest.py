"""A console app per test over an empty migrated database (SQLite, and PostgreSQL where the
suite runs it), with one user per role and seeded inspections whose images are archived."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from helpers.console import Seeded, make_users, seed


@pytest.fixture
def console_settings(tmp_path: Path, db_url: str) -> object:
    from defectscan.config import LineConfig, Settings

    return Settings(
        var_dir=tmp_path / "var",
        database_url=db_url,
        lines={"L1": LineConfig(name="L1", thresholds={"scratch": 0.6})},
    )


@pytest.fixture
def seeded(db_sessions: sessionmaker[Session], console_settings: object) -> Seeded:
    make_users(db_sessions)
    return seed(db_sessions, Path(console_settings.var_dir) / "archive")  # type: ignore[attr-defined]


@pytest.fixture
def app(console_settings: object, db_engine: sa.Engine, seeded: Seeded) -> Iterator[object]:
    from defectscan.console.app import create_app

    application = create_app(console_settings)  # type: ignore[arg-type]
    yield application
    application.state.console.engine.dispose()


@pytest.fixture
def client(app: object) -> Iterator[TestClient]:
    with TestClient(app, follow_redirects=False) as c:  # type: ignore[arg-type]
        yield c

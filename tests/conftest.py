"""Shared fixtures: database URLs (SQLite file, throwaway PostgreSQL databases) and Redis.

PostgreSQL and Redis are real servers (``make services`` starts them). When one cannot be
reached, tests that need it skip with a message, except under ``CI=true`` where that is a
failure: CI must never pass by skipping the integration suite.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import sqlalchemy as sa
from hypothesis import settings as hypothesis_settings
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

if TYPE_CHECKING:
    from defectscan.store.records import InspectionRecord


def pytest_configure(config: pytest.Config) -> None:
    """Keep pytest-alembic from binding its built-in tests to this file.

    pytest-alembic (0.13.1) attaches a synthetic test module to ``tests/conftest.py`` on
    every run, and that collector fails on pytest 9 (AttributeError ``_nodeid``), breaking
    collection of the whole suite. Our migration tests call its test functions explicitly
    (tests/integration/store/test_store_migrations.py), so we point the binding at a path
    that is never collected. Its fixtures (``alembic_runner``) keep working.
    """
    if not getattr(config.option, "pytest_alembic_tests_path", None):
        config.option.pytest_alembic_tests_path = "tests/.pytest-alembic-builtins-disabled"


# Tests never write into the checkout's var/ (engine cache, Prefect home, archive, databases):
# everything a test does not place itself goes under a throwaway folder.
os.environ.setdefault("DEFECTSCAN_VAR_DIR", tempfile.mkdtemp(prefix="defectscan-test-var-"))

# CI must not be flaky: the same examples every run there (a local run explores new ones).
hypothesis_settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
if os.environ.get("CI") == "true":
    hypothesis_settings.load_profile("ci")


PG_ADMIN_URL_DEFAULT = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
REDIS_URL_DEFAULT = "redis://127.0.0.1:6379/15"


def _unavailable(service: str, url: str, error: BaseException) -> None:
    msg = (
        f"{service} is not reachable at {url} ({type(error).__name__}: {error}). "
        "Start it with `make services`, or point the tests elsewhere with "
        "DEFECTSCAN_TEST_PG_URL / DEFECTSCAN_TEST_REDIS_URL."
    )
    if os.environ.get("CI") == "true":
        pytest.fail(msg, pytrace=False)
    pytest.skip(msg)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A SQLite database file in this test's temporary directory (not created yet)."""
    return f"sqlite:///{(tmp_path / 'defectscan.db').as_posix()}"


@pytest.fixture(scope="session")
def pg_admin_url() -> str:
    """A PostgreSQL URL allowed to create and drop databases; skips if none answers."""
    url = os.environ.get("DEFECTSCAN_TEST_PG_URL", PG_ADMIN_URL_DEFAULT)
    engine = sa.create_engine(url, connect_args={"connect_timeout": 3}, poolclass=sa.NullPool)
    try:
        with engine.connect() as connection:
            connection.execute(sa.text("SELECT 1"))
    except sa.exc.OperationalError as exc:
        _unavailable("PostgreSQL", make_url(url).render_as_string(hide_password=True), exc)
    finally:
        engine.dispose()
    return url


@pytest.fixture
def pg_url(pg_admin_url: str) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for this test, dropped afterwards."""
    from defectscan.store.db import scratch_database

    with scratch_database(pg_admin_url, prefix="defectscan_test") as url:
        yield url


@pytest.fixture(
    params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)],
)
def db_url(request: pytest.FixtureRequest) -> str:
    """The same test on an empty SQLite file and on an empty PostgreSQL database."""
    fixture = "sqlite_url" if request.param == "sqlite" else "pg_url"
    url: str = request.getfixturevalue(fixture)
    return url


@pytest.fixture
def db_engine(db_url: str) -> Iterator[sa.Engine]:
    """An engine on ``db_url`` with the schema migrated to head."""
    from defectscan.store.db import make_engine, upgrade_to_head

    engine = make_engine(db_url)
    upgrade_to_head(engine)
    try:
        yield engine
    finally:
        engine.dispose()


@pytest.fixture
def db_sessions(db_engine: sa.Engine) -> sessionmaker[Session]:
    """A session factory on the migrated ``db_engine`` (writer mode on SQLite)."""
    from defectscan.store.db import session_factory

    return session_factory(db_engine, write=True)


@pytest.fixture(scope="session")
def redis_url() -> str:
    """A Redis URL (database 15 by default) that answered a PING; skips if none answers.

    The database is shared with concurrently running tests: use unique key names, never
    FLUSHDB.
    """
    import redis

    url = os.environ.get("DEFECTSCAN_TEST_REDIS_URL", REDIS_URL_DEFAULT)
    client = redis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=3)
    try:
        client.ping()
    except redis.exceptions.ConnectionError as exc:
        _unavailable("Redis", url, exc)
    finally:
        client.close()
    return url


# --------------------------------------------------------------------------- store test data

MODEL_VERSION = "unet-test-0123456789ab"
MODEL_SHA256 = "0123456789ab" + "0" * 52


def make_inspection_record(
    i: int,
    *,
    model_version: str = MODEL_VERSION,
    n_defects: int = 2,
    line: str | None = "L1",
    camera: str | None = "cam1",
    verdict: str | None = None,
    finished_at: datetime | None = None,
    total_ms: float | None = 10.0,
) -> InspectionRecord:
    """A deterministic inspection record for image number ``i`` (its sha256 depends on i)."""
    from defectscan.store.records import DefectRecord, InspectionRecord

    defects = [
        DefectRecord(
            class_index=1 + k % 2,
            class_name=("scratch", "dent")[k % 2],
            area=10 + k,
            bbox=(k, 2 * k, 5, 6),
            centroid=(k + 2.5, 2 * k + 3.0),
            perimeter=22.0,
            mean_score=0.8,
            max_score=0.95,
            polygon=[[k, 2 * k], [k + 5, 2 * k], [k + 5, 2 * k + 6]],
        )
        for k in range(n_defects)
    ]
    return InspectionRecord(
        sha256=hashlib.sha256(f"image-{i}".encode()).hexdigest(),
        uri=f"file:///cam/{i}.png",
        model_version=model_version,
        status="ok",
        verdict=verdict or ("fail" if n_defects else "pass"),  # type: ignore[arg-type]
        camera=camera,
        line=line,
        width=64,
        height=48,
        channels=3,
        received_at=datetime(2026, 1, 1, tzinfo=UTC),
        finished_at=finished_at or datetime(2026, 1, 1, 0, 0, 1, tzinfo=UTC),
        timings_ms={"decode": 1.0, "infer": 5.0, **({"total": total_ms} if total_ms else {})},
        defects=defects,
    )


def register_test_model(
    session: Session, version: str = MODEL_VERSION, sha256: str = MODEL_SHA256
) -> None:
    """Register a model version the test records can be saved under."""
    from defectscan.store.model_versions import ensure_model_version

    ensure_model_version(
        session=session,
        version=version,
        sha256=sha256,
        name=version.rsplit("-", 1)[0],
        checkpoint_path=None,
        spec={"activation": "sigmoid", "class_names": ["scratch", "dent"]},
        activation="sigmoid",
        class_names=["scratch", "dent"],
    )


@pytest.fixture
def store_sessions(db_sessions: sessionmaker[Session]) -> sessionmaker[Session]:
    """``db_sessions`` with the test model version registered."""
    with db_sessions.begin() as session:
        register_test_model(session)
    return db_sessions


@pytest.fixture
def make_record() -> Callable[..., InspectionRecord]:
    """:func:`make_inspection_record`: deterministic test inspections."""
    return make_inspection_record


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Prefect server for this test session (``prefect_test_harness``); its API URL."""
    from defectscan.orchestration import configure_prefect

    configure_prefect(tmp_path_factory.mktemp("var"))
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield str(PREFECT_API_URL.value())

"""The champion poll rides out a PostgreSQL outage like the writer does, instead of stopping
the line: a real database that refuses every connection for a while."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from defectscan.monitor import LineMonitor, ModelProvider
from defectscan.pipeline import Inspector
from defectscan.sources.folder import FolderSource
from defectscan.store.db import make_engine, session_factory, upgrade_to_head
from defectscan.store.model_versions import set_model_status
from defectscan.training.registry import register_checkpoint
from helpers.line import oracle_checkpoint, rows, write_parts

pytestmark = pytest.mark.integration


def _load(path: str) -> Inspector:
    return Inspector.from_checkpoint(path, backend="torch", device="cpu")


def _promote(engine: sa.Engine, checkpoint: Path) -> str:
    with session_factory(engine, write=True).begin() as session:
        version = register_checkpoint(checkpoint, session=session).version
        set_model_status(version, "champion", session=session)
    return version


def _outage(admin_url: str, database: str, *, down: bool) -> None:
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    try:
        with admin.connect() as c:
            c.execute(sa.text(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS {not down!s}'))
            if down:
                c.execute(
                    sa.text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = :db AND pid <> pg_backend_pid()"
                    ),
                    {"db": database},
                )
    finally:
        admin.dispose()


def test_champion_poll_survives_a_database_outage(
    tmp_path: Path, pg_url: str, pg_admin_url: str
) -> None:
    engine = make_engine(pg_url)
    upgrade_to_head(engine)
    v1 = _promote(engine, oracle_checkpoint(tmp_path / "v1.safetensors"))
    camera = tmp_path / "camera"
    write_parts(camera, 2)
    source = FolderSource(camera, line="L1", stable_polls=1, watch=False)
    models = ModelProvider(
        "champion", load=_load, sessions=session_factory(engine, write=True), poll_s=0.0
    )
    monitor = LineMonitor(source, models, engine, line="L1", batch_size=4, claim_timeout=0.1)
    monitor.run(idle_exit=0.2)
    database = sa.engine.make_url(pg_url).database
    assert database is not None
    _outage(pg_admin_url, database, down=True)
    try:
        started = time.monotonic()
        for _ in range(5):  # every claim polls the registry (poll_s=0): none may stop the line
            assert monitor.step() is None
        assert time.monotonic() - started < 10
        assert monitor.models.inspector.model_version == v1
    finally:
        _outage(pg_admin_url, database, down=False)
    v2 = _promote(engine, oracle_checkpoint(tmp_path / "v2.safetensors", gain=61.0))
    write_parts(camera, 2, start=2)
    monitor.run(idle_exit=0.2)
    monitor.close()
    by_version = dict(
        rows(
            pg_url,
            "SELECT m.version, count(*) FROM inspections i JOIN model_versions m "
            "ON m.id = i.model_version_id GROUP BY m.version",
        )
    )
    assert by_version == {v1: 2, v2: 2}

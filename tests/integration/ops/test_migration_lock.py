"""Several processes running `db upgrade` at once on one new PostgreSQL database all succeed."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
import sqlalchemy as sa

pytestmark = pytest.mark.integration

_UPGRADE = (
    "from defectscan.store.db import upgrade_to_head; import sys; upgrade_to_head(sys.argv[1])"
)


def test_concurrent_upgrades_serialise_on_the_advisory_lock(pg_url: str) -> None:
    def upgrade(_: int) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", _UPGRADE, pg_url],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(upgrade, range(4)))
    for r in results:
        assert r.returncode == 0, r.stderr[-2000:]
    engine = sa.create_engine(pg_url, poolclass=sa.NullPool)
    try:
        with engine.connect() as connection:
            versions = connection.execute(sa.text("SELECT version_num FROM alembic_version")).all()
    finally:
        engine.dispose()
    assert len(versions) == 1

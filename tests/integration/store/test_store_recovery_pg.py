"""The writer survives PostgreSQL dropping its connection: no batch lost, none doubled.

The server kills the writer's backend with ``pg_terminate_backend`` (what a restart or a
failover does to the client), once between two batches and once inside a unit of work.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from defectscan import store as repo
from defectscan.store.db import retrying
from defectscan.store.records import InspectionRecord
from defectscan.store.schema import Defect, Inspection

pytestmark = [
    pytest.mark.integration,
    pytest.mark.parametrize("db_url", ["postgresql"], indirect=True),
]

MakeRecord = Callable[..., InspectionRecord]


@pytest.fixture
def pg_writer(store_sessions: sessionmaker[Session]) -> sessionmaker[Session]:
    """Writer sessions on a migrated throwaway PostgreSQL database, model registered."""
    return store_sessions


def _terminate(pg_admin_url: str, pid: int) -> None:
    admin = sa.create_engine(pg_admin_url, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    try:
        with admin.connect() as connection:
            killed = connection.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            assert killed.scalar() is True
    finally:
        admin.dispose()


def _counts(sessions: sessionmaker[Session]) -> tuple[int, int]:
    with sessions() as session:
        return (
            int(session.scalar(sa.select(sa.func.count()).select_from(Inspection)) or 0),
            int(session.scalar(sa.select(sa.func.count()).select_from(Defect)) or 0),
        )


def test_connection_killed_between_batches(
    pg_writer: sessionmaker[Session], pg_admin_url: str, make_record: MakeRecord
) -> None:
    first = [make_record(i, n_defects=5) for i in range(50)]
    second = [make_record(i, n_defects=5) for i in range(50, 100)]
    pids: list[int] = []

    def save(batch: list[InspectionRecord]) -> Callable[..., repo.SaveResult]:
        def unit(*, session: Session) -> repo.SaveResult:
            pids.append(int(session.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()))
            return repo.save_inspections(batch, session=session)

        return unit

    assert retrying(save(first), sessions=pg_writer).inserted == 50
    _terminate(pg_admin_url, pids[-1])  # the pooled connection is now dead
    assert retrying(save(second), sessions=pg_writer).inserted == 50
    assert pids[-1] != pids[0]  # a new backend took over
    assert _counts(pg_writer) == (100, 500)


def test_connection_killed_inside_a_unit_of_work_reruns_it_once(
    pg_writer: sessionmaker[Session], pg_admin_url: str, make_record: MakeRecord
) -> None:
    batch = [make_record(i, n_defects=5) for i in range(50)]
    attempts: list[repo.SaveResult] = []

    def unit(*, session: Session) -> repo.SaveResult:
        result = repo.save_inspections(batch, session=session)
        attempts.append(result)
        if len(attempts) == 1:
            # the batch is written but not committed when the server drops us
            pid = int(session.execute(sa.text("SELECT pg_backend_pid()")).scalar_one())
            _terminate(pg_admin_url, pid)
            session.execute(sa.text("SELECT 1"))  # the next statement finds the link gone
        return result

    result = retrying(unit, sessions=pg_writer, base_delay=0.01)
    assert len(attempts) == 2
    assert result == repo.SaveResult(inserted=50, duplicates=0)  # the first attempt rolled back
    assert _counts(pg_writer) == (50, 250)


def test_batches_redelivered_after_an_unacknowledged_commit_are_not_doubled(
    pg_writer: sessionmaker[Session], pg_admin_url: str, make_record: MakeRecord
) -> None:
    # The commit reached the server but the writer died before acking its source: the
    # source delivers the whole batch again, to a new connection.
    batch = [make_record(i, n_defects=5) for i in range(30)]
    pids: list[int] = []

    def unit(*, session: Session) -> repo.SaveResult:
        pids.append(int(session.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()))
        return repo.save_inspections(batch, session=session)

    assert retrying(unit, sessions=pg_writer).inserted == 30
    _terminate(pg_admin_url, pids[-1])
    assert retrying(unit, sessions=pg_writer) == repo.SaveResult(inserted=0, duplicates=30)
    assert _counts(pg_writer) == (30, 150)

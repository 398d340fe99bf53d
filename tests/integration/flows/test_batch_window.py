"""A scheduled batch run covers the period before its *scheduled* time, however late it starts.

A runner that is busy, or a run queued behind the deployment's concurrency limit, starts later
than scheduled; measured from its start, the window would skip the parts between the scheduled
time and the previous window and take parts of the next one. The run here is created for a
time three hours ago (as the scheduler does) and executed now by Prefect's engine, as a served
runner executes it.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import update

from defectscan.batch import BatchSelection, run_batch
from defectscan.pipeline import Inspector
from defectscan.store.db import make_engine, session_factory, upgrade_to_head
from defectscan.store.schema import Inspection
from helpers.line import oracle_checkpoint, write_parts

pytestmark = pytest.mark.integration


def test_a_late_batch_run_covers_the_period_before_its_scheduled_time(
    tmp_path: Path, sqlite_url: str, prefect_api: str, flow_settings: Callable[..., Path]
) -> None:
    from flows.batch_inspection import batch_inspection
    from prefect.client.orchestration import get_client
    from prefect.flow_engine import run_flow
    from prefect.states import Scheduled

    camera = tmp_path / "camera"
    write_parts(camera, 5)
    model = oracle_checkpoint(tmp_path / "oracle.safetensors")
    engine = make_engine(sqlite_url)
    upgrade_to_head(engine)
    scheduled = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=3)
    inspected_at = {
        0: scheduled - timedelta(minutes=50),  # the window before this run's
        1: scheduled - timedelta(minutes=20),  # this run's window: [scheduled - 30 min, scheduled)
        2: scheduled - timedelta(minutes=10),
        3: scheduled + timedelta(minutes=10),  # the next run's window
        4: datetime.now(UTC) - timedelta(minutes=5),  # a window measured from now would take it
    }
    try:
        run_batch(
            BatchSelection(paths=(str(camera),)),
            inspector=Inspector.from_checkpoint(model, backend="torch", device="cpu"),
            engine=engine,
            report_dir=tmp_path / "first",
            line="L1",
            camera="cam-1",
        )
        with session_factory(engine, write=True).begin() as session:
            for i, at in inspected_at.items():
                session.execute(
                    update(Inspection)
                    .where(Inspection.uri.like(f"%part{i:05d}.png"))
                    .values(finished_at=at)
                )
    finally:
        engine.dispose()
    flow_settings(
        tmp_path, sqlite_url, plant={"lines": {"L1": {}}}, DEFECTSCAN_VAR_DIR=str(tmp_path / "var")
    )
    params = {
        "line": "L1",
        "query_line": "L1",
        "since": "1800s",
        "until": "0s",
        "model": str(model),
        "title": "L1: parts since the previous batch run",
    }
    with get_client(sync_client=True) as client:
        run = client.create_flow_run(
            batch_inspection, parameters=params, state=Scheduled(scheduled_time=scheduled)
        )
    summary = run_flow(batch_inspection, flow_run=run, parameters=params)
    assert isinstance(summary, dict)
    # exactly the parts of the scheduled period: 1 and 2, not 4 (now) nor 0 or 3 (neighbours)
    assert (summary["inputs"], summary["parts"]) == (2, 2), summary["selection"]
    since = (scheduled - timedelta(minutes=30)).isoformat()
    assert f"since={since}" in summary["selection"]
    assert f"until={scheduled.isoformat()}" in summary["selection"]

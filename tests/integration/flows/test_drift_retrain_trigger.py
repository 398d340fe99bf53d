"""A confirmed drift alert with enough reviewed post-drift images schedules a retrain on the
Prefect server for later, which an engineer can cancel; the review-queue flow fills the queue."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from conftest import make_inspection_record, register_test_model
from defectscan.store.inspection_writes import save_inspections
from defectscan.store.operations import record_event
from defectscan.store.schema import Event, Inspection, ReviewQueueItem

pytestmark = pytest.mark.integration


def _drifted_camera(sessions: sessionmaker[Session], now: datetime) -> int:
    """A drift warning on L1/cam1 two hours ago (scratch fails moved), 10 images since."""
    with sessions.begin() as session:
        register_test_model(session)
        alert = record_event(
            session=session,
            kind="drift",
            level="warning",
            line="L1",
            message="drift warning on line L1 camera cam1",
            details={"camera": "cam1", "over": {"fail:scratch": 1.8, "mean_shift": 2.5}},
        )
        alert.created_at = now - timedelta(hours=2)
        alert_id = int(alert.id)
    with sessions.begin() as session:
        save_inspections(
            [
                make_inspection_record(
                    i, n_defects=1 if i % 2 else 0, finished_at=now - timedelta(minutes=i)
                )
                for i in range(10)
            ],
            session=session,
        )
    return alert_id


def test_confirmed_drift_schedules_a_retrain_for_later_that_can_be_cancelled(
    prefect_api: str, sqlite_url: str
) -> None:
    # One database (the scheduling is Prefect's side), and the run is deleted at the end: the
    # Prefect server is shared by the session, and later tests count the retrain
    # deployment's runs.
    from flows.retrain import retrain
    from prefect.client.orchestration import get_client

    from defectscan.store.db import make_engine, session_factory, upgrade_to_head

    engine = make_engine(sqlite_url)
    upgrade_to_head(engine)
    try:
        _schedule_and_cancel(retrain, get_client, session_factory(engine, write=True))
    finally:
        engine.dispose()


def _schedule_and_cancel(retrain: Any, get_client: Any, db_sessions: sessionmaker[Session]) -> None:

    from defectscan.drift.retrain_trigger import (
        cancel_scheduled_retrain,
        confirm_alert,
        due_retrains,
        prefect_submit,
        schedule_due_retrains,
    )
    from defectscan.training.reviews import record_review

    retrain.to_deployment(name="retrain").apply()
    now = datetime.now(UTC)
    alert_id = _drifted_camera(db_sessions, now)
    with db_sessions.begin() as session:
        ids = list(session.scalars(sa.select(Inspection.id).order_by(Inspection.id)))
        for iid in ids[:6]:
            record_review(iid, "confirm", session=session, operator="ana")
    limits = {"min_reviews": 6, "min_per_class": 3}
    with db_sessions() as session:
        # A warning nobody confirmed triggers nothing.
        assert due_retrains(session=session, **limits) == []
    with db_sessions.begin() as session:
        confirm_alert(alert_id, session=session, by="eve")
    with db_sessions() as session:
        (due,) = due_retrains(session=session, **limits)
        assert due.alert.affected_classes == ("scratch",)
        assert (due.reviews, due.per_class) == (6, {"scratch": 3})
        # Not enough scratches reviewed yet at 4 per class: it waits.
        assert due_retrains(session=session, min_reviews=6, min_per_class=4) == []
    with db_sessions.begin() as session:
        (event,) = schedule_due_retrains(
            session=session, submit=prefect_submit(), delay=timedelta(hours=2), **limits
        )
        details, message = dict(event.details or {}), event.message
    run_id = details["flow_run_id"]
    assert f"retrain-cancel {run_id}" in message
    assert details["alert_event_id"] == alert_id
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(run_id)
    assert run.state is not None
    assert run.state.name == "Scheduled"
    assert run.parameters["trigger"] == "drift"
    assert run.expected_start_time is not None
    assert abs(run.expected_start_time - (now + timedelta(hours=2))) < timedelta(minutes=5)
    # Once scheduled, the same alert never schedules another.
    with db_sessions.begin() as session:
        again = schedule_due_retrains(
            session=session, submit=prefect_submit(), delay=timedelta(0), **limits
        )
    assert again == []
    try:
        assert cancel_scheduled_retrain(run_id) == "Cancelled"
        with get_client(sync_client=True) as client:
            state = client.read_flow_run(run_id).state
        assert state is not None
        assert state.is_cancelled()
    finally:
        with get_client(sync_client=True) as client:
            client.delete_flow_run(run_id)


def test_the_review_queue_flow_fills_the_queue(
    tmp_path: Path,
    sqlite_url: str,
    prefect_api: str,
    flow_settings: Callable[..., Path],
    caplog: pytest.LogCaptureFixture,
) -> None:
    from flows.review_queue import review_queue

    from defectscan.store.db import make_engine, session_factory, upgrade_to_head

    engine = make_engine(sqlite_url)
    upgrade_to_head(engine)
    sessions = session_factory(engine, write=True)
    _drifted_camera(sessions, datetime.now(UTC))
    flow_settings(tmp_path, sqlite_url, plant={"var_dir": str(tmp_path / "var")})
    with caplog.at_level(logging.WARNING, logger="defectscan.drift.review_fill"):
        result = review_queue(hours=24.0)
    # Novelty is looked up beside the fill's write transaction without waiting for its lock.
    assert "could not be scored" not in caplog.text
    (filled,) = result["filled"]
    assert filled["line"] == "L1"
    assert filled["alerted_cameras"] == ["cam1"]
    assert result["retrains"] == []  # the warning is not confirmed
    with sessions() as session:
        n = session.scalar(sa.select(sa.func.count()).select_from(ReviewQueueItem))
        assert n == filled["total"] > 0
        assert session.scalar(sa.select(sa.func.count()).select_from(Event)) == 1
    engine.dispose()

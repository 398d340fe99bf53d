"""Training runs and the operator reviews they learn from.

A run is recorded when it is queued, marked when it starts and when it ends; reviews are
recorded against inspections and marked once a run has consumed them. Every function takes a
keyword-only ``session`` and never commits: the caller owns the transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from sqlalchemy import select, update
from sqlalchemy.orm import Session, selectinload

from defectscan.errors import StoreError
from defectscan.store.schema import (
    REVIEW_DECISIONS,
    TRAINING_STATUSES,
    TRAINING_TRIGGERS,
    Inspection,
    Review,
    TrainingRun,
    utcnow,
)

__all__ = [
    "add_review",
    "create_training_run",
    "finish_training_run",
    "mark_reviews_used",
    "record_training_progress",
    "reviews_for_training",
    "start_training_run",
]


def create_training_run(
    *,
    session: Session,
    trigger: str,
    requested_by: str | None = None,
    reason: str | None = None,
    params: dict[str, Any] | None = None,
    status: Literal["queued", "running"] = "queued",
) -> TrainingRun:
    """Record a training run that is queued (or already running)."""
    if trigger not in TRAINING_TRIGGERS:
        msg = f"training trigger {trigger!r}: expected one of {TRAINING_TRIGGERS}"
        raise StoreError(msg)
    run = TrainingRun(
        trigger=trigger,
        requested_by=requested_by,
        reason=reason,
        params=params,
        status=status,
        created_at=utcnow(),
        started_at=utcnow() if status == "running" else None,
    )
    session.add(run)
    session.flush()
    return run


def _require_run(run_id: int, session: Session) -> TrainingRun:
    run = session.get(TrainingRun, run_id)
    if run is None:
        msg = f"training run {run_id} does not exist"
        raise StoreError(msg)
    return run


def start_training_run(run_id: int, *, session: Session) -> TrainingRun:
    """Mark a queued training run as running."""
    run = _require_run(run_id, session)
    run.status = "running"
    run.started_at = run.started_at or utcnow()
    session.flush()
    return run


def record_training_progress(run_id: int, progress: dict[str, Any], *, session: Session) -> None:
    """Keep a running run's latest progress in ``metrics["progress"]`` (the console shows it)."""
    run = _require_run(run_id, session)
    # A new dict, not an in-place change: the JSON column sees the assignment.
    run.metrics = {**(run.metrics or {}), "progress": progress}
    session.flush()


def finish_training_run(
    run_id: int,
    *,
    session: Session,
    status: Literal["succeeded", "failed", "cancelled"],
    metrics: dict[str, Any] | None = None,
    dataset_stats: dict[str, Any] | None = None,
    error: str | None = None,
) -> TrainingRun:
    """Record how a training run ended."""
    terminal = tuple(s for s in TRAINING_STATUSES if s not in ("queued", "running"))
    if status not in terminal:
        msg = f"a finished training run's status must be one of {terminal}, not {status!r}"
        raise StoreError(msg)
    run = _require_run(run_id, session)
    run.status = status
    run.finished_at = utcnow()
    if metrics is not None:
        run.metrics = metrics
    if dataset_stats is not None:
        run.dataset_stats = dataset_stats
    if error is not None:
        run.error = error
    session.flush()
    return run


def add_review(
    *,
    session: Session,
    inspection_id: int,
    decision: Literal["confirm", "reject"],
    operator: str | None = None,
    corrected_mask_path: str | None = None,
    note: str | None = None,
) -> Review:
    """Record an operator's verdict on an inspection."""
    if decision not in REVIEW_DECISIONS:
        msg = f"review decision {decision!r}: expected one of {REVIEW_DECISIONS}"
        raise StoreError(msg)
    if session.get(Inspection, inspection_id) is None:
        msg = f"inspection {inspection_id} does not exist; cannot review it"
        raise StoreError(msg)
    review = Review(
        inspection_id=inspection_id,
        decision=decision,
        operator=operator,
        corrected_mask_path=corrected_mask_path,
        note=note,
        created_at=utcnow(),
    )
    session.add(review)
    session.flush()
    return review


def reviews_for_training(*, session: Session, unused_only: bool = True) -> list[Review]:
    """Reviews with their inspections (and defects), oldest first."""
    stmt = select(Review).options(selectinload(Review.inspection).selectinload(Inspection.defects))
    if unused_only:
        stmt = stmt.where(Review.used_in_training_run_id.is_(None))
    return list(session.scalars(stmt.order_by(Review.created_at, Review.id)))


def mark_reviews_used(review_ids: Sequence[int], training_run_id: int, *, session: Session) -> int:
    """Record that a training run consumed these reviews; returns how many were marked."""
    if not review_ids:
        return 0
    _require_run(training_run_id, session)
    result = session.execute(
        update(Review)
        .where(Review.id.in_(list(review_ids)))
        .values(used_in_training_run_id=training_run_id)
        .execution_options(synchronize_session="fetch")
    )
    return int(getattr(result, "rowcount", 0) or 0)

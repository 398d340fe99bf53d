"""What the running service records about itself: flow-run metrics and operational events.

Metrics are saved per flow run and window (saving a window again updates it); events record
model switches, failed model loads and released batches. Every function takes a keyword-only
``session`` and never commits: the caller owns the transaction.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import and_, select
from sqlalchemy.orm import Session

from defectscan.store._sql import _aware, _insert
from defectscan.store.schema import Event, RunMetric, utcnow

__all__ = ["recent_events", "record_event", "save_run_metrics"]


def save_run_metrics(
    *,
    session: Session,
    flow_run_id: str,
    window_start: datetime,
    window_end: datetime,
    processed: int,
    rejected: int = 0,
    throughput_per_s: float | None = None,
    latency_p50_ms: float | None = None,
    latency_p95_ms: float | None = None,
    flow_name: str | None = None,
    line: str | None = None,
    tiles: int = 0,
    failed: int = 0,
    defect_rate: float | None = None,
    rejected_by_reason: dict[str, int] | None = None,
    model_version: str | None = None,
) -> RunMetric:
    """Record a flow run's counts and speed over one window; saving a window again updates it."""
    _aware(window_start, "window_start")
    _aware(window_end, "window_end")
    values = {
        "flow_run_id": flow_run_id,
        "flow_name": flow_name,
        "line": line,
        "window_start": window_start,
        "window_end": window_end,
        "processed": processed,
        "rejected": rejected,
        "throughput_per_s": throughput_per_s,
        "latency_p50_ms": latency_p50_ms,
        "latency_p95_ms": latency_p95_ms,
        "tiles": tiles,
        "failed": failed,
        "defect_rate": defect_rate,
        "rejected_by_reason": dict(rejected_by_reason) if rejected_by_reason else None,
        "model_version": model_version,
        "created_at": utcnow(),
    }
    stmt = _insert(session, RunMetric).values(**values)
    stmt = stmt.on_conflict_do_update(
        index_elements=["flow_run_id", "window_start"],
        set_={
            k: getattr(stmt.excluded, k)
            for k in values
            if k not in ("flow_run_id", "window_start", "created_at")
        },
    )
    session.execute(stmt)
    return session.scalars(
        select(RunMetric)
        .where(and_(RunMetric.flow_run_id == flow_run_id, RunMetric.window_start == window_start))
        .execution_options(populate_existing=True)
    ).one()


def record_event(
    *,
    session: Session,
    kind: str,
    message: str,
    level: str = "info",
    line: str | None = None,
    model_version: str | None = None,
    flow_run_id: str | None = None,
    details: dict[str, Any] | None = None,
) -> Event:
    """Record an operational event (model switch, failed model load, released batch)."""
    event = Event(
        kind=kind,
        level=level,
        line=line,
        model_version=model_version,
        flow_run_id=flow_run_id,
        message=message,
        details=details,
        created_at=utcnow(),
    )
    session.add(event)
    session.flush()
    return event


def recent_events(
    *, session: Session, kind: str | None = None, line: str | None = None, limit: int = 100
) -> list[Event]:
    """The newest events first, optionally of one kind or line."""
    stmt = select(Event)
    if kind is not None:
        stmt = stmt.where(Event.kind == kind)
    if line is not None:
        stmt = stmt.where(Event.line == line)
    return list(
        session.scalars(stmt.order_by(Event.created_at.desc(), Event.id.desc()).limit(limit))
    )

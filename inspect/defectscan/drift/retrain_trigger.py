"""From a confirmed drift alert to a retrain an engineer can still cancel (issue 18, point 6).

- An alert is **confirmed** when it is critical, or when an engineer confirms a warning
  (:func:`confirm_alert`, ``defectscan drift confirm EVENT``: an ``events`` row
  ``drift_confirmed``).
- Its **post-drift reviews** are the reviewed inspections of that line and camera captured
  after the alert; the **affected classes** are those whose fail rate went over threshold in
  the alert's window (``fail:<class>`` in the window's ``over``).
- A retrain is **due** once at least ``retrain_min_reviews`` (200) post-drift images are
  reviewed, at least ``retrain_min_per_class`` (20) of each affected class, and no retrain was
  scheduled for that alert yet.
- :func:`schedule_due_retrains` submits it to the ``retrain/retrain`` deployment with a
  *scheduled* start ``retrain_delay_minutes`` ahead (Prefect's ``run_deployment(...,
  scheduled_time=...)``: the run waits in state Scheduled until then) and writes an
  ``events`` row ``drift_retrain`` with the flow run, the time, and how to cancel it
  (``defectscan drift retrain-cancel RUN`` or ``prefect flow-run cancel RUN``).

The retrain's promotion gate then adds the post-drift slice
(:func:`defectscan.training.retrain.post_drift_slice`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from defectscan.drift.reference import DriftError
from defectscan.store.operations import record_event
from defectscan.store.schema import Defect, Event, Inspection, Review

__all__ = [
    "SLICE_SHARE",
    "DriftAlert",
    "PostDriftSlice",
    "RetrainDue",
    "Submit",
    "cancel_scheduled_retrain",
    "check_drift_retrains",
    "confirm_alert",
    "confirmed_alerts",
    "due_retrains",
    "post_drift_reviews",
    "post_drift_slice",
    "prefect_submit",
    "schedule_due_retrains",
]

log = logging.getLogger(__name__)

#: ``submit(parameters, scheduled_time, idempotency_key) -> flow run id``.
Submit = Callable[[dict[str, Any], datetime, str], str]

#: Alerts older than this no longer trigger a retrain.
ALERT_LOOKBACK = timedelta(days=30)
#: Share of the reviewed post-drift images (chosen by content hash) that a drift retrain keeps
#: out of training, as the promotion gate's post-drift slice.
SLICE_SHARE = 0.3


@dataclass(frozen=True)
class DriftAlert:
    """A confirmed drift alert of one camera."""

    event_id: int
    line: str | None
    camera: str | None
    level: str
    at: datetime
    affected_classes: tuple[str, ...]
    model_version: str | None


@dataclass(frozen=True)
class RetrainDue:
    """A confirmed alert with enough post-drift reviews for a retrain."""

    alert: DriftAlert
    reviews: int
    per_class: dict[str, int]


def _aware(t: datetime) -> datetime:
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def confirm_alert(event_id: int, *, session: Session, by: str, note: str | None = None) -> Event:
    """An engineer confirms a drift warning (or critical): it may now trigger a retrain."""
    alert = session.get(Event, event_id)
    if alert is None or alert.kind != "drift" or alert.level not in ("warning", "critical"):
        msg = (
            f"event {event_id} is not a drift warning or critical; see "
            "`defectscan drift status` and the console's Events page"
        )
        raise DriftError(msg)
    camera = (alert.details or {}).get("camera")
    return record_event(
        session=session,
        kind="drift_confirmed",
        level="warning",
        line=alert.line,
        model_version=alert.model_version,
        message=f"{by} confirmed drift alert {event_id} on camera {camera or '-'}"
        + (f": {note}" if note else ""),
        details={"alert_event_id": event_id, "camera": camera, "by": by, "note": note},
    )


def _affected(details: dict[str, Any]) -> tuple[str, ...]:
    over = details.get("over") or {}
    return tuple(sorted(k.split(":", 1)[1] for k in over if k.startswith("fail:")))


def confirmed_alerts(*, session: Session, since: datetime) -> list[DriftAlert]:
    """Criticals and confirmed warnings since ``since``, oldest first (one per camera episode).

    A critical that follows a warning of the same camera belongs to the same episode: the
    earliest alert of the episode is kept, with the affected classes of all its alerts.
    """
    confirmed = {
        int((e.details or {}).get("alert_event_id", -1))
        for e in session.scalars(select(Event).where(Event.kind == "drift_confirmed"))
    }
    rows = session.scalars(
        select(Event)
        .where(
            Event.kind == "drift",
            Event.level.in_(("warning", "critical")),
            Event.created_at >= since,
        )
        .order_by(Event.created_at, Event.id)
    )
    alerts: list[DriftAlert] = []
    by_camera: dict[tuple[str | None, str | None], int] = {}
    all_events = list(rows)
    for e in all_events:
        details = e.details or {}
        key = (e.line, details.get("camera"))
        if e.level != "critical" and e.id not in confirmed:
            continue
        # The episode starts at the camera's first alert (a warning before the critical).
        first = next((x for x in all_events if (x.line, (x.details or {}).get("camera")) == key), e)
        classes = set(_affected(details))
        if key in by_camera:
            prev = alerts[by_camera[key]]
            merged = tuple(sorted(set(prev.affected_classes) | classes))
            alerts[by_camera[key]] = DriftAlert(
                prev.event_id,
                prev.line,
                prev.camera,
                "critical" if e.level == "critical" else prev.level,
                prev.at,
                merged,
                prev.model_version,
            )
            continue
        by_camera[key] = len(alerts)
        alerts.append(
            DriftAlert(
                int(first.id),
                e.line,
                details.get("camera"),
                e.level,
                _aware(first.created_at),
                tuple(sorted(classes | set(_affected(first.details or {})))),
                e.model_version,
            )
        )
    return alerts


def _since_alert(alert: DriftAlert) -> tuple[Any, ...]:
    """The filter of the alerted camera's inspections taken since the alert."""
    when = func.coalesce(Inspection.captured_at, Inspection.finished_at)
    line = Inspection.line.is_(None) if alert.line is None else Inspection.line == alert.line
    camera = (
        Inspection.camera.is_(None) if alert.camera is None else Inspection.camera == alert.camera
    )
    return line, camera, when >= alert.at


def _post_drift_inspections(session: Session, alert: DriftAlert) -> list[tuple[int, str]]:
    rows = session.execute(
        select(Inspection.id, Inspection.sha256)
        .join(Review, Review.inspection_id == Inspection.id)
        .where(*_since_alert(alert))
        .distinct()
    ).all()
    return [(int(i), str(s)) for i, s in rows]


@dataclass(frozen=True)
class PostDriftSlice:
    """Reviewed post-drift images written as a dataset (``images/`` + ``masks/``)."""

    root: Path
    sha256: frozenset[str]
    n_images: int


def post_drift_slice(
    root: Path, *, session: Session, archive: Any, now: datetime | None = None
) -> PostDriftSlice | None:
    """The promotion gate's post-drift slice: :data:`SLICE_SHARE` of the reviewed images of
    every confirmed alert's camera since the alert, chosen by content hash (the same images
    on every run), exported with their reviewed masks. None when there are none.

    The caller keeps these images out of training (they would flatter the candidate).
    """
    from defectscan.training.reviews import export_review_dataset

    now = now or datetime.now(UTC)
    chosen: dict[int, str] = {}
    for alert in confirmed_alerts(session=session, since=now - ALERT_LOOKBACK):
        for iid, sha in _post_drift_inspections(session, alert):
            if int(sha[:13], 16) / float(1 << 52) < SLICE_SHARE:
                chosen[iid] = sha
    if not chosen:
        return None
    export = export_review_dataset(
        root, session=session, unused_only=False, archive=archive, inspection_ids=set(chosen)
    )
    if not export.written:
        return None
    return PostDriftSlice(Path(root), frozenset(chosen.values()), len(export.written))


def post_drift_reviews(*, session: Session, alert: DriftAlert) -> tuple[int, dict[str, int]]:
    """Reviewed images of the alert's camera captured after it, and how many show each class.

    A reviewed image counts for a class when the model found that class in it or the reviewer
    painted it (the defects recomputed from a corrected mask).
    """
    rows = session.execute(
        select(Inspection.id, Review.details)
        .join(Review, Review.inspection_id == Inspection.id)
        .where(*_since_alert(alert))
    ).all()
    classes: dict[int, set[str]] = {}
    for iid, details in rows:
        found = classes.setdefault(int(iid), set())
        for d in (details or {}).get("defects") or []:
            if isinstance(d, dict) and d.get("class"):
                found.add(str(d["class"]))
    ids = list(classes)
    for chunk in range(0, len(ids), 5000):
        part = ids[chunk : chunk + 5000]
        for iid, name in session.execute(
            select(Defect.inspection_id, Defect.class_name).where(Defect.inspection_id.in_(part))
        ):
            classes[int(iid)].add(name)
    per_class = {c: sum(c in v for v in classes.values()) for c in alert.affected_classes}
    return len(classes), per_class


def _scheduled_for(session: Session) -> set[int]:
    return {
        int((e.details or {}).get("alert_event_id", -1))
        for e in session.scalars(select(Event).where(Event.kind == "drift_retrain"))
    }


def due_retrains(
    *,
    session: Session,
    min_reviews: int = 200,
    min_per_class: int = 20,
    now: datetime | None = None,
) -> list[RetrainDue]:
    """Confirmed alerts with enough post-drift reviews and no retrain scheduled for them yet."""
    now = now or datetime.now(UTC)
    done = _scheduled_for(session)
    out = []
    for alert in confirmed_alerts(session=session, since=now - ALERT_LOOKBACK):
        if alert.event_id in done:
            continue
        n, per_class = post_drift_reviews(session=session, alert=alert)
        if n >= min_reviews and all(v >= min_per_class for v in per_class.values()):
            out.append(RetrainDue(alert, n, per_class))
    return out


def schedule_due_retrains(
    *,
    session: Session,
    submit: Submit | None,
    delay: timedelta,
    min_reviews: int = 200,
    min_per_class: int = 20,
    now: datetime | None = None,
) -> list[Event]:
    """Schedule a retrain for each due alert; returns the ``drift_retrain`` events written.

    ``submit`` None (no Prefect server): the event says the retrain is due and how to start it.
    """
    now = now or datetime.now(UTC)
    events = []
    for due in due_retrains(
        session=session, min_reviews=min_reviews, min_per_class=min_per_class, now=now
    ):
        a = due.alert
        where = f"line {a.line or '-'} camera {a.camera or '-'}"
        reason = (
            f"drift alert {a.event_id} on {where}: {due.reviews} post-drift images reviewed"
            + (
                f" ({', '.join(f'{k} {v}' for k, v in sorted(due.per_class.items()))})"
                if due.per_class
                else ""
            )
        )
        params = {"trigger": "drift", "requested_by": "drift", "reason": reason[:500]}
        at = now + delay
        details: dict[str, Any] = {
            "alert_event_id": a.event_id,
            "camera": a.camera,
            "reviews": due.reviews,
            "per_class": due.per_class,
            "scheduled_for": at.isoformat(timespec="seconds"),
        }
        if submit is None:
            message = (
                f"retrain due after {reason}; no Prefect server to schedule it on: start it with "
                "`defectscan retrain --reason 'drift'` (or serve the deployments)"
            )
            details["flow_run_id"] = None
        else:
            # One run per alert, even if this check runs twice at once.
            run_id = submit(params, at, f"drift-retrain-{a.event_id}-{int(a.at.timestamp())}")
            details["flow_run_id"] = run_id
            message = (
                f"retrain scheduled for {at:%Y-%m-%d %H:%M} UTC (flow run {run_id}) after "
                f"{reason}; cancel it before then with `defectscan drift retrain-cancel {run_id}` "
                f"(or `prefect flow-run cancel {run_id}`)"
            )
        events.append(
            record_event(
                session=session,
                kind="drift_retrain",
                level="warning",
                line=a.line,
                model_version=a.model_version,
                message=message,
                details=details,
            )
        )
        log.warning("%s", message)
    return events


def prefect_submit(deployment: str = "retrain/retrain") -> Submit:
    """Submit to a deployment as a run scheduled for a later time (the Prefect server's API)."""

    def submit(parameters: dict[str, Any], at: datetime, key: str) -> str:
        from prefect.client.schemas.objects import FlowRun
        from prefect.deployments import run_deployment

        run: FlowRun = run_deployment(  # type: ignore[assignment]
            deployment,
            parameters=parameters,
            scheduled_time=at,
            idempotency_key=key,
            timeout=0,
            as_subflow=False,
            tags=["defectscan", "retrain", "drift"],
        )
        return str(run.id)

    return submit


def cancel_scheduled_retrain(flow_run_id: str) -> str:
    """Cancel a scheduled (not yet started) retrain run; returns the state it is now in."""
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.states import Cancelled

    run_id = UUID(flow_run_id)
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(run_id)
        if run.state is not None and run.state.is_final():
            msg = f"flow run {flow_run_id} has already ended ({run.state.name}); nothing to cancel"
            raise DriftError(msg)
        client.set_flow_run_state(run_id, Cancelled(message="cancelled by an engineer"), force=True)
        state = client.read_flow_run(run_id).state
    return str(state.name) if state is not None else "unknown"


def check_drift_retrains(settings: Any, *, submit: Submit | None) -> list[dict[str, Any]]:
    """Schedule the retrains that confirmed drift alerts are due for (the plant's settings)."""
    from defectscan.store.db import make_engine, session_factory

    cfg = settings.drift
    engine = make_engine(settings.database_url)
    try:
        with session_factory(engine, write=True).begin() as session:
            events = schedule_due_retrains(
                session=session,
                submit=submit,
                delay=timedelta(minutes=cfg.retrain_delay_minutes),
                min_reviews=cfg.retrain_min_reviews,
                min_per_class=cfg.retrain_min_per_class,
            )
            return [
                {"event_id": int(e.id), "message": e.message, **(e.details or {})} for e in events
            ]
    finally:
        engine.dispose()

"""The review queue's fill as a Prefect flow (nightly, ``drift.review_schedule``).

Orchestration only, one library function per task:

1. :func:`defectscan.drift.review_fill.fill_review_queue`: expire items older than 72 hours
   (and, after a promotion, those scored by the old model), then pick each line's daily budget
   from the past ``hours`` of inspections (strata, novelty at 40% for 72 hours after a drift
   alert on a camera, rate limits, never the fixed holdout);
2. :func:`defectscan.drift.retrain_trigger.check_drift_retrains`: a confirmed drift alert with
   enough reviewed post-drift images schedules a retrain ahead of time (cancellable);
3. :func:`defectscan.drift.reference_jobs.build_references_from_settings`: a new champion's
   drift references, once enough accepted images are archived.

``defectscan review fill`` runs the same functions without a Prefect server.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from pydantic import Field

from defectscan.config import get_settings
from defectscan.drift.reference_jobs import build_references_from_settings
from defectscan.drift.retrain_trigger import check_drift_retrains, prefect_submit
from defectscan.drift.review_fill import fill_review_queue
from defectscan.orchestration import label_run_owner, prefect_server_reachable

__all__ = ["build_references_task", "fill_task", "retrain_check_task", "review_queue"]


@task(name="fill-review-queue", cache_policy=NO_CACHE, persist_result=False)
def fill_task(lines: list[str] | None, hours: float, until: datetime) -> list[dict[str, Any]]:
    """Expire old items and pick each line's budget."""
    return [
        r.to_dict()
        for r in fill_review_queue(get_settings(), lines=lines, hours=hours, until=until)
    ]


@task(name="drift-retrain-check", cache_policy=NO_CACHE, persist_result=False)
def retrain_check_task() -> list[dict[str, Any]]:
    """Schedule the retrains confirmed drift alerts are due for."""
    submit = prefect_submit() if prefect_server_reachable() else None
    return check_drift_retrains(get_settings(), submit=submit)


@task(name="build-drift-references", cache_policy=NO_CACHE, persist_result=False)
def build_references_task() -> list[dict[str, Any]]:
    """Build a new champion's missing references where enough images are archived."""
    return build_references_from_settings(get_settings())


@flow(name="review-queue", persist_result=False, log_prints=False)
def review_queue(
    lines: list[Annotated[str, Field(min_length=1, max_length=100)]] | None = None,
    hours: Annotated[float, Field(gt=0, le=24 * 7)] = 24.0,
    references: bool = True,
) -> dict[str, Any]:
    """Fill the review queue from the past ``hours``; drift retrains; new references."""
    label_run_owner()
    scheduled = flow_run.get_scheduled_start_time()
    # The period ends at the run's scheduled time: a late start still covers its own day.
    until = (
        datetime.fromtimestamp(scheduled.timestamp(), UTC)
        if scheduled is not None
        else datetime.now(UTC)
    )
    filled = fill_task(lines, hours, until)
    retrains = retrain_check_task()
    built = build_references_task() if references else []
    return {"filled": filled, "retrains": retrains, "references": built}

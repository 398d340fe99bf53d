"""Retraining as a Prefect flow: base dataset + reviews -> candidate -> gate -> artifact.

Weekly (``retrain_schedule``) or when an operator asks (``defectscan retrain``). The flow holds
no logic: one task runs :func:`defectscan.training.retrain.retrain_from_settings` (training run
row, fixed holdout, training, registration, promotion gate, reviews marked used on success),
one publishes the result: both models' holdout metrics side by side, the decision and why.

At most one retrain runs at a time: the deployment's concurrency limit (1, later requests
queued) across machines, and a lock under ``var/`` on each machine, which refuses a second
run started outside Prefect.

Every parameter is checked before anything trains (:func:`defectscan.flow_params.check_retrain`;
the ranges are also in the signature, so Prefect refuses them first): the gate's ``margin`` lies
in [0, 1] (a negative margin would promote a worse candidate to every monitor that follows
``champion``), the recipe holds only valid TrainConfig fields, the data folder exists.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from pydantic import Field

from defectscan.flow_params import check_retrain
from defectscan.orchestration import label_run_owner
from defectscan.training.retrain import (
    RetrainError,
    RetrainOutcome,
    RetrainRequest,
    Trigger,
    retrain_from_settings,
)

__all__ = ["publish_retrain", "retrain", "retrain_task"]


@task(name="train-and-gate", cache_policy=NO_CACHE, persist_result=False)
def retrain_task(request: RetrainRequest) -> RetrainOutcome:
    """Build the data, train a candidate, gate it on the holdout, record the run."""
    return retrain_from_settings(request)


@task(name="publish-retrain-result", cache_policy=NO_CACHE, persist_result=False, retries=2)
def publish_retrain(outcome: RetrainOutcome) -> None:
    """The decision as markdown and the holdout metrics of both models as a table."""
    create_markdown_artifact(
        markdown=outcome.markdown(),
        key="retrain-result",
        description=f"training run {outcome.training_run_id}",
    )
    if outcome.side_by_side:
        create_table_artifact(
            table=[
                {
                    "metric": name,
                    "candidate": pair.get("candidate"),
                    "champion": pair.get("champion"),
                }
                for name, pair in outcome.side_by_side.items()
            ],
            key="retrain-holdout-metrics",
            description=f"candidate {outcome.candidate} vs champion {outcome.champion_before}",
        )


@flow(name="retrain", persist_result=False, log_prints=False)
def retrain(
    reason: Annotated[str, Field(max_length=500)] | None = None,
    requested_by: Annotated[str, Field(max_length=100)] | None = None,
    trigger: Trigger = "scheduled",
    data: Annotated[str, Field(min_length=1, max_length=4096)] | None = None,
    recipe: dict[str, Any] | None = None,
    metric: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*(/[A-Za-z0-9._-]+)?$")] = "mean_iou",
    margin: Annotated[float, Field(ge=0.0, le=1.0)] = 0.01,
) -> dict[str, Any]:
    """Retrain on the base dataset plus operator reviews; promote the candidate if it wins."""
    check_retrain(
        reason=reason,
        requested_by=requested_by,
        data=data,
        recipe=recipe or {},
        metric=metric,
        margin=margin,
    )
    label_run_owner()
    request = RetrainRequest(
        trigger=trigger,
        requested_by=requested_by,
        reason=reason,
        data=Path(data) if data else None,
        recipe=dict(recipe or {}),
        metric=metric,
        margin=margin,
        flow_run_id=str(flow_run.get_id() or "") or None,
    )
    try:
        outcome = retrain_task(request)
    except RetrainError as exc:
        if exc.outcome is not None:
            publish_retrain(exc.outcome)
        raise
    publish_retrain(outcome)
    return outcome.to_dict()

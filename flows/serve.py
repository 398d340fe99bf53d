"""Every scheduled flow of the plant served from one process, and its line monitors beside it.

``defectscan serve`` builds the deployments from the settings (the plant file) and serves
them with :func:`prefect.serve`:

- ``batch-inspection/batch-<line>``: one per line with a ``batch_schedule`` (cron); it
  re-inspects the line's parts of the period that ends at the run's *scheduled* time (a run
  that starts late still covers its own period, and consecutive runs tile the day) under the
  current champion and publishes the report; concurrency 1, later runs queued;
- ``review-queue/review-queue``: on ``drift.review_schedule`` (nightly), fills each line's
  review queue from the past 24 hours, schedules drift retrains that are due and builds a new
  champion's drift references (only while ``drift`` is on);
- ``retrain/retrain``: on ``retrain_schedule`` (cron; operator-only without one), concurrency
  1 with later requests queued (``defectscan retrain`` submits to it).

Line monitors are not deployments: a monitor is a long-lived process that owns its line's
model, consumer name, archive retention and metrics, and reports bounded flow runs from inside
itself. With ``monitors=True`` serve starts one ``defectscan monitor --line NAME`` per line
with a source as a child process and supervises it (:mod:`defectscan.supervisor`: restarted
with back-off, stopped when serve stops, each on its own /metrics port).

Schedules are not paused when serve stops (a restarted serve picks them up as they were), the
runner runs at most one flow run per deployment at once, and on start the runs that this serve
instance left Running or Pending are marked Crashed so they do not hold a concurrency slot
forever; runs of other serve processes are left alone (:mod:`defectscan.orchestration`).
``prefect.yaml`` at the repository root declares the same deployments for work pools.
"""

from __future__ import annotations

import logging
import os
from datetime import UTC, datetime, timedelta
from typing import cast

from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.deployments.runner import EntrypointType, RunnerDeployment

from defectscan.config import Settings
from defectscan.orchestration import (
    OWNER_ENV,
    ServeIdentity,
    crash_orphaned_runs,
    retire_monitor_deployments,
    serve_lock,
)
from defectscan.supervisor import Backoff, MonitorSupervisor, event_recorder, monitor_children
from flows.batch_inspection import batch_inspection
from flows.retrain import retrain
from flows.review_queue import review_queue

__all__ = [
    "RETRAIN_DEPLOYMENT",
    "build_deployments",
    "cron_period",
    "runner_limit",
    "serve_all",
]

logger = logging.getLogger(__name__)

RETRAIN_DEPLOYMENT = "retrain/retrain"


def cron_period(cron: str) -> timedelta:
    """Time between two consecutive firings of ``cron`` (the window a batch run covers)."""
    from cronsim import CronSim

    it = CronSim(cron, datetime(2026, 1, 5, tzinfo=UTC))
    first = next(it)
    return next(it) - first


def _seconds(delta: timedelta) -> str:
    return f"{int(delta.total_seconds())}s"


def _one(strategy: ConcurrencyLimitStrategy) -> ConcurrencyLimitConfig:
    return ConcurrencyLimitConfig(limit=1, collision_strategy=strategy)


def build_deployments(
    settings: Settings, *, identity: ServeIdentity | None = None
) -> list[RunnerDeployment]:
    """The plant's scheduled deployments (batch inspections, retrain); never a monitor.

    With ``identity`` each deployment carries its serve instance's tag, which the flow runs
    created from it inherit (see :func:`defectscan.orchestration.crash_orphaned_runs`).
    """
    out: list[RunnerDeployment] = []
    module = EntrypointType.MODULE_PATH
    owner = [identity.tag] if identity is not None else []
    for name, line in sorted(settings.lines.items()):
        if line.batch_schedule:
            out.append(
                cast(
                    RunnerDeployment,
                    batch_inspection.to_deployment(
                        name=f"batch-{name}",
                        cron=line.batch_schedule,
                        parameters={
                            "line": name,
                            "query_line": name,
                            # measured from the run's scheduled time, not from its start
                            "since": _seconds(cron_period(line.batch_schedule)),
                            "until": "0s",
                            "title": f"{name}: parts since the previous batch run",
                        },
                        concurrency_limit=_one(ConcurrencyLimitStrategy.ENQUEUE),
                        tags=["defectscan", f"line:{name}", "batch", *owner],
                        description=f"Batch inspection of {name} on its schedule",
                        entrypoint_type=module,
                    ),
                )
            )
    if settings.drift.enabled:
        out.append(
            cast(
                RunnerDeployment,
                review_queue.to_deployment(
                    name="review-queue",
                    cron=settings.drift.review_schedule,
                    parameters={"hours": 24.0},
                    concurrency_limit=_one(ConcurrencyLimitStrategy.ENQUEUE),
                    tags=["defectscan", "review", *owner],
                    description="Fill the review queue (past 24 h), drift retrains, references",
                    entrypoint_type=module,
                ),
            )
        )
    out.append(
        cast(
            RunnerDeployment,
            retrain.to_deployment(
                name="retrain",
                cron=settings.retrain_schedule,
                parameters={"trigger": "scheduled"},
                concurrency_limit=_one(ConcurrencyLimitStrategy.ENQUEUE),
                tags=["defectscan", "retrain", *owner],
                description="Retrain on base data + reviews; promote if it wins on the holdout",
                entrypoint_type=module,
            ),
        )
    )
    return out


def runner_limit(deployments: list[RunnerDeployment]) -> int:
    """Flow runs the runner may run at once: one per deployment (each has concurrency 1)."""
    return max(1, len(deployments))


def serve_all(
    settings: Settings,
    *,
    monitors: bool = True,
    instance: str | None = None,
    backoff: Backoff | None = None,
    stop_grace_s: float = 60.0,
) -> None:
    """Crash what this instance left running, start the monitors, serve until stopped."""
    from prefect import serve

    identity = ServeIdentity.current(settings.var_dir, instance)
    children = monitor_children(settings) if monitors else []
    with serve_lock(identity, settings.var_dir):
        # The runner starts flow runs as child processes with this environment: each run
        # labels itself with this serve (defectscan.orchestration.label_run_owner).
        os.environ[OWNER_ENV] = identity.encode()
        deployments = build_deployments(settings, identity=identity)
        crashed = crash_orphaned_runs(
            [d.full_name for d in deployments], instance=identity.instance
        )
        if crashed:
            logger.warning(
                "marked %d orphaned run(s) crashed: %s", len(crashed), ", ".join(crashed)
            )
        retire_monitor_deployments(sorted(settings.lines))
        supervisor = MonitorSupervisor(
            children,
            backoff=backoff,
            stop_grace_s=stop_grace_s,
            on_exit=event_recorder(settings.database_url),
        )
        logger.info(
            "serve instance %s (%s): serving %s; monitors: %s",
            identity.instance,
            identity.process,
            ", ".join(d.full_name for d in deployments),
            ", ".join(c.name for c in children) or "none",
        )
        supervisor.start()
        try:
            serve(
                *deployments,
                pause_on_shutdown=False,
                print_starting_message=False,
                limit=runner_limit(deployments),
            )
        finally:
            supervisor.stop()

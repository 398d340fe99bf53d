"""Every deployment of the plant, served with its schedule from one process.

``defectscan serve`` builds the deployments from the settings (the plant file) and serves
them with :func:`prefect.serve`:

- ``line-monitor/monitor-<line>``: one per line with a source; a bounded run every
  ``MONITOR_INTERVAL_S`` (each ends before the next is due), concurrency 1 (a run that comes
  due while the last one still drains is cancelled, so a line never has two monitors);
- ``batch-inspection/batch-<line>``: one per line with a ``batch_schedule`` (cron); it
  re-inspects the line's parts since the previous scheduled run under the current champion
  and publishes the report; concurrency 1, later runs queued;
- ``retrain/retrain``: on ``retrain_schedule`` (cron; operator-only without one), concurrency
  1 with later requests queued (``defectscan retrain`` submits to it).

Schedules are not paused when serve stops (a restarted serve picks them up as they were), the
runner runs at most one flow run per deployment at once, and on start runs that a killed serve
left Running or Pending are marked Crashed so they do not hold a concurrency slot forever.
``prefect.yaml`` at the repository root declares the same deployments for work pools.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.deployments.runner import EntrypointType, RunnerDeployment

from defectscan.config import Settings
from defectscan.orchestration import crash_orphaned_runs
from flows.batch_inspection import batch_inspection
from flows.line_monitor import line_monitor
from flows.retrain import retrain

__all__ = [
    "MONITOR_INTERVAL_S",
    "RETRAIN_DEPLOYMENT",
    "build_deployments",
    "cron_period",
    "runner_limit",
    "serve_all",
]

logger = logging.getLogger(__name__)

#: A line monitor's bounded runs start this often; each ends a little before the next.
MONITOR_INTERVAL_S = 300
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


def build_deployments(settings: Settings, *, monitors: bool = True) -> list[RunnerDeployment]:
    """The plant's deployments (monitors, batch inspections, retrain) with their schedules."""
    out: list[RunnerDeployment] = []
    module = EntrypointType.MODULE_PATH
    for name, line in sorted(settings.lines.items()):
        if monitors and line.source:
            params: dict[str, Any] = {
                "source": line.source,
                "model": str(settings.model_for(name)),
                "line": name,
                "max_seconds": float(MONITOR_INTERVAL_S - 20),
                "max_images": None,
            }
            out.append(
                cast(
                    RunnerDeployment,
                    line_monitor.to_deployment(
                        name=f"monitor-{name}",
                        interval=timedelta(seconds=MONITOR_INTERVAL_S),
                        parameters=params,
                        concurrency_limit=_one(ConcurrencyLimitStrategy.CANCEL_NEW),
                        tags=["defectscan", f"line:{name}", "monitor"],
                        description=f"Line monitor of {name}: bounded runs back to back",
                        entrypoint_type=module,
                    ),
                )
            )
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
                            "since": _seconds(cron_period(line.batch_schedule)),
                            "title": f"{name}: parts since the previous batch run",
                        },
                        concurrency_limit=_one(ConcurrencyLimitStrategy.ENQUEUE),
                        tags=["defectscan", f"line:{name}", "batch"],
                        description=f"Batch inspection of {name} on its schedule",
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
                tags=["defectscan", "retrain"],
                description="Retrain on base data + reviews; promote if it wins on the holdout",
                entrypoint_type=module,
            ),
        )
    )
    return out


def runner_limit(deployments: list[RunnerDeployment]) -> int:
    """Flow runs the runner may run at once: one per deployment (each has concurrency 1)."""
    return max(1, len(deployments))


def serve_all(settings: Settings, *, monitors: bool = True) -> None:
    """Crash what a killed serve left running, then serve every deployment until stopped."""
    from prefect import serve

    deployments = build_deployments(settings, monitors=monitors)
    crashed = crash_orphaned_runs([d.full_name for d in deployments])
    if crashed:
        logger.warning("marked %d orphaned run(s) crashed: %s", len(crashed), ", ".join(crashed))
    logger.info("serving %s", ", ".join(d.full_name for d in deployments))
    serve(
        *deployments,
        pause_on_shutdown=False,
        print_starting_message=False,
        limit=runner_limit(deployments),
    )

"""A line monitor's work as Prefect flow runs: bounded runs of micro-batches, from inside it.

A line monitor is a long-lived process (``defectscan monitor``: a compose service, a systemd
unit, or a child that ``defectscan serve`` supervises). It owns what must outlive a run: the
source with its stable consumer name, the model, the metrics and the archive's retention. This
flow is how that process reports its work to Prefect: one bounded run after another, each ending
after ``max_images`` images or ``max_seconds`` seconds (or ``idle_exit`` seconds without input,
or a stop request). A Prefect flow run keeps every task run's state in memory until it ends, and
bounded runs give the UI a heartbeat. A run drains what it claimed before it returns.
``continuous=True`` drops the bounds. It is never a scheduled deployment: a deployment run per
interval would be a new process each time, reloading the model and registering a new consumer.

The flow holds no logic: each micro-batch is one task calling
:meth:`defectscan.monitor.LineMonitor.process`, and when the archive is due for retention
(:mod:`defectscan.retention`: at the first run, then every ``retention_every_s``) one task runs
it. The monitor lives in the process and is reused by the next run of the same parameters, so a
model is loaded once. Redelivery after a crash comes from the sources, never from Prefect
re-running a run. Importing ``flows`` (this package) sets Prefect's environment first.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from pydantic import Field

from defectscan.monitor import LineMonitor
from defectscan.monitor_build import build_monitor
from defectscan.retention import hand_over_retention, retention_due, run_retention
from defectscan.service import BatchOutcome
from defectscan.sources.base import ImageRecord

__all__ = [
    "adopt_monitor",
    "archive_retention",
    "close_monitors",
    "inspect_batch",
    "line_monitor",
    "monitor_for",
]

_MONITORS: dict[tuple[Any, ...], LineMonitor] = {}


def monitor_for(
    source: str | None,
    *,
    model: str,
    line: str | None,
    camera: str | None,
    batch_size: int,
    root: str | None = None,
    claim_timeout: float = 1.0,
    auto_int8: bool | None = None,
    retry_int8: bool = False,
) -> LineMonitor:
    """The process's monitor for these parameters (built on first use)."""
    key = (source, model, line, camera, batch_size, root, claim_timeout)
    monitor = _MONITORS.get(key)
    if monitor is None:
        monitor = build_monitor(
            source,
            model=model,
            line=line,
            camera=camera,
            batch_size=batch_size,
            root=root,
            claim_timeout=claim_timeout,
            auto_int8=auto_int8,
            retry_int8=retry_int8,
        )
        hand_over_retention(monitor)
        _MONITORS[key] = monitor
    return monitor


def adopt_monitor(
    monitor: LineMonitor,
    *,
    source: str | None,
    model: str,
    line: str | None,
    camera: str | None,
    batch_size: int,
    root: str | None = None,
    claim_timeout: float = 1.0,
) -> None:
    """Make ``monitor`` (built before Prefect started) the process's monitor for these
    parameters: the CLI inspects while Prefect starts, then goes on with the same monitor."""
    _MONITORS[(source, model, line, camera, batch_size, root, claim_timeout)] = monitor


def close_monitors() -> None:
    """Close every monitor this process opened (the CLI calls it on exit)."""
    while _MONITORS:
        _, monitor = _MONITORS.popitem()
        monitor.close()


@task(name="inspect-batch", cache_policy=NO_CACHE, persist_result=False)
def inspect_batch(monitor: LineMonitor, records: list[ImageRecord], run_id: str) -> BatchOutcome:
    """Inspect, store, archive and acknowledge one claimed micro-batch."""
    return monitor.process(records, flow_run_id=run_id)


@task(name="archive-retention", cache_policy=NO_CACHE, persist_result=False)
def archive_retention(monitor: LineMonitor, run_id: str) -> dict[str, int] | None:
    """Apply the archive's retention (age, size), sparing images of pending reviews."""
    result = run_retention(monitor, flow_run_id=run_id or None)
    return None if result is None else asdict(result)


@flow(name="line-monitor", persist_result=False, log_prints=False)
def line_monitor(
    source: Annotated[str, Field(min_length=1, max_length=4096)] | None = None,
    model: Annotated[str, Field(min_length=1, max_length=4096)] = "champion",
    line: Annotated[str, Field(min_length=1, max_length=100)] | None = None,
    camera: Annotated[str, Field(min_length=1, max_length=100)] | None = None,
    batch_size: Annotated[int, Field(ge=1, le=4096)] = 32,
    max_images: Annotated[int, Field(ge=1)] | None = 2000,
    max_seconds: Annotated[float, Field(gt=0)] | None = 600.0,
    idle_exit: Annotated[float, Field(ge=0)] | None = None,
    continuous: bool = False,
    root: Annotated[str, Field(min_length=1, max_length=4096)] | None = None,
    retention_every_s: Annotated[float, Field(gt=0)] = 3600.0,
    auto_int8: bool | None = None,
    retry_int8: bool = False,
) -> dict[str, Any]:
    """Watch one line's source and inspect every image it delivers, for one bounded run."""
    from defectscan.config import get_settings
    from defectscan.flow_params import check_monitor

    check_monitor(
        get_settings(),
        model=model,
        line=line,
        camera=camera,
        batch_size=batch_size,
        max_images=max_images,
        max_seconds=max_seconds,
        idle_exit=idle_exit,
        root=root,
        retention_every_s=retention_every_s,
    )
    monitor = monitor_for(
        source,
        model=model,
        line=line,
        camera=camera,
        batch_size=batch_size,
        root=root,
        auto_int8=auto_int8,
        retry_int8=retry_int8,
    )
    run_id = str(flow_run.get_id() or "") or None
    if retention_due(monitor, every_s=retention_every_s):
        archive_retention(monitor, run_id or "")

    def step() -> BatchOutcome | None:
        # As LineMonitor.step: a line paused by a plant fault is not idle (an empty outcome,
        # not None), so idle_exit does not end the run while the fault lasts.
        records = monitor.claim(flow_run_id=run_id)
        if not records:
            return BatchOutcome() if monitor.plant_fault is not None else None
        return inspect_batch(monitor, records, run_id or "")

    summary = monitor.run(
        max_images=None if continuous else max_images,
        max_seconds=None if continuous else max_seconds,
        idle_exit=idle_exit,
        run_id=run_id,
        step=step,
    )
    return summary.to_dict()

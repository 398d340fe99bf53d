"""The always-on line monitor as a Prefect flow: bounded runs of micro-batches.

A run ends after ``max_images`` images or ``max_seconds`` seconds (or ``idle_exit`` seconds
without input, or a stop request) and the next run starts: a Prefect flow run keeps every task
run's state in memory until it ends, and bounded runs give the UI a heartbeat. A run drains
what it claimed before it returns. ``continuous=True`` drops the bounds.

The flow holds no logic: each micro-batch is one task calling
:meth:`defectscan.monitor.LineMonitor.process`. The monitor (source, model, writer) lives in
the process and is reused by the next run of the same parameters, so a model is loaded once.
Redelivery after a crash comes from the sources, never from Prefect re-running a run.
Importing ``flows`` (this package) sets Prefect's environment before Prefect is imported.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from defectscan.monitor import LineMonitor, build_monitor
from defectscan.service import BatchOutcome
from defectscan.sources.base import ImageRecord

__all__ = ["close_monitors", "inspect_batch", "line_monitor", "monitor_for"]

_MONITORS: dict[tuple[Any, ...], LineMonitor] = {}


def monitor_for(
    source: str,
    *,
    model: str,
    line: str | None,
    camera: str | None,
    batch_size: int,
    root: str | None = None,
    claim_timeout: float = 1.0,
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
        )
        _MONITORS[key] = monitor
    return monitor


def close_monitors() -> None:
    """Close every monitor this process opened (the CLI calls it on exit)."""
    while _MONITORS:
        _, monitor = _MONITORS.popitem()
        monitor.close()


@task(name="inspect-batch", cache_policy=NO_CACHE, persist_result=False)
def inspect_batch(monitor: LineMonitor, records: list[ImageRecord], run_id: str) -> BatchOutcome:
    """Inspect, store, archive and acknowledge one claimed micro-batch."""
    return monitor.process(records, flow_run_id=run_id)


@flow(name="line-monitor", persist_result=False, log_prints=False)
def line_monitor(
    source: str,
    model: str = "champion",
    line: str | None = None,
    camera: str | None = None,
    batch_size: int = 32,
    max_images: int | None = 2000,
    max_seconds: float | None = 600.0,
    idle_exit: float | None = None,
    continuous: bool = False,
    root: str | None = None,
) -> dict[str, Any]:
    """Watch one line's source and inspect every image it delivers, for one bounded run."""
    monitor = monitor_for(
        source, model=model, line=line, camera=camera, batch_size=batch_size, root=root
    )
    run_id = str(flow_run.get_id() or "") or None

    def step() -> BatchOutcome | None:
        records = monitor.claim(flow_run_id=run_id)
        if not records:
            return None
        return inspect_batch(monitor, records, run_id or "")

    summary = monitor.run(
        max_images=None if continuous else max_images,
        max_seconds=None if continuous else max_seconds,
        idle_exit=idle_exit,
        run_id=run_id,
        step=step,
    )
    return summary.to_dict()

"""A line monitor built from the settings: its source, model, database, archive and metrics.

:func:`build_monitor` opens what the plant file (or the caller) names for a line and hands
back a :class:`~defectscan.monitor.LineMonitor` ready to run; :func:`metrics_port_for` is the
port a line's monitor serves /metrics on, and :func:`set_process_metrics` the metrics every
monitor built in this process reports to. The inspectors a monitor loads come from
:func:`defectscan.champion.line_loader`.
"""

from __future__ import annotations

from typing import Any

from defectscan.archive import ArchivePolicy, ImageArchive
from defectscan.champion import InspectorLoader, ModelProvider, line_loader
from defectscan.drift.tracking import DriftMonitor
from defectscan.engine_upgrade import EngineOptions
from defectscan.errors import ConfigError
from defectscan.monitor import LineMonitor
from defectscan.monitor_controls import ConsoleControls
from defectscan.service import MetricsSink
from defectscan.store.db import session_factory

__all__ = ["build_monitor", "metrics_port_for", "set_process_metrics"]


def metrics_port_for(line: str | None, port: int | None = None) -> int:
    """The port line ``line``'s monitor serves /metrics on (0: none).

    ``port`` when given (the command line), else the line's ``metrics_port`` in the plant
    file, else ``DEFECTSCAN_METRICS_PORT`` (9464). Give each line its own port when several
    monitors share a host; a port that is taken anyway costs the monitor its /metrics (a
    logged error and a ``metrics_unavailable`` event), never its inspection.
    """
    from defectscan.config import get_settings

    if port is not None:
        return port
    settings = get_settings()
    line_cfg = settings.line(line)
    if line_cfg is not None and line_cfg.metrics_port is not None:
        return line_cfg.metrics_port
    return settings.metrics_port


_PROCESS_METRICS: MetricsSink | None = None


def set_process_metrics(metrics: MetricsSink | None) -> None:
    """Metrics every monitor built in this process reports to (the CLI's /metrics server)."""
    global _PROCESS_METRICS
    _PROCESS_METRICS = metrics


def build_monitor(
    source: str | None = None,
    *,
    model: str | None = None,
    line: str | None = None,
    camera: str | None = None,
    batch_size: int = 8,
    database_url: str | None = None,
    redis_url: str | None = None,
    root: str | None = None,
    archive: ImageArchive | None = None,
    metrics: MetricsSink | None = None,
    load: InspectorLoader | None = None,
    claim_timeout: float = 1.0,
    champion_poll_s: float = 5.0,
    source_options: dict[str, Any] | None = None,
    auto_int8: bool | None = None,
    retry_int8: bool = False,
) -> LineMonitor:
    """Open the source, check the database schema, load the model: a monitor ready to run.

    What is not given comes from the settings (the plant file's line ``line``): its source,
    model, engine and tiling, and archive policy. The database must already be at the code's
    migration head (``defectscan db upgrade``); only a brand-new SQLite file is created.

    A line whose engine is ``auto`` on the CPU starts at once on the best engine already
    cached (eager torch when none is) and improves it in the background
    (:mod:`defectscan.engine_upgrade`; ``auto_int8`` overrides the settings' ``auto_int8``,
    ``retry_int8`` forgets an earlier INT8 failure of the checkpoint). With a ``load`` of
    the caller's own, there is no background engine work.
    """
    from defectscan.config import get_settings
    from defectscan.sources import open_source
    from defectscan.store.db import ensure_schema, make_engine

    settings = get_settings()
    line_cfg = settings.line(line)
    source = source or (line_cfg.source if line_cfg else None)
    if not source:
        where = f"line {line!r} of the plant file" if line else "the plant file"
        msg = f"no source given: pass --source folder:PATH or redis://..., or set it for {where}"
        raise ConfigError(msg)
    model = model or str(settings.model_for(line))
    options = (
        EngineOptions.for_line(settings, line, auto_int8=auto_int8, retry_int8=retry_int8)
        if load is None
        else None
    )
    engine = make_engine(database_url or settings.database_url)
    try:
        ensure_schema(engine)
        models = ModelProvider(
            model,
            load=load or line_loader(line, fast_start=options is not None),
            sessions=session_factory(engine, write=True),
            line=line,
            poll_s=champion_poll_s,
        )
        src = open_source(
            source,
            line=line,
            camera=camera,
            redis_url=redis_url or settings.redis_url,
            root=root,
            **(source_options or {}),
        )
    except BaseException:
        engine.dispose()
        raise
    if archive is None:
        archive_dir = settings.archive_dir or settings.var_dir / "archive"
        archive = ImageArchive(archive_dir, ArchivePolicy.from_config(settings.archive_for(line)))
    cameras = list(line_cfg.cameras) if line_cfg else []
    monitor = LineMonitor(
        src,
        models,
        engine,
        line=line,
        batch_size=batch_size,
        claim_timeout=claim_timeout,
        archive=archive,
        metrics=metrics if metrics is not None else _PROCESS_METRICS,
        lines=list(settings.lines),
        cameras=[*cameras, camera] if camera else cameras,
        engine_options=options,
        # Latency: a row commits as soon as its image is inspected, not with its micro-batch.
        commit_every=1,
        drift=(
            DriftMonitor(
                session_factory(engine, write=True),
                metrics=metrics if metrics is not None else _PROCESS_METRICS,
            )
            if settings.drift
            else None
        ),
    )
    if line:
        # The operator console's pause and threshold rules, read between batches.
        monitor.controls = ConsoleControls(
            session_factory(engine, write=True),
            line,
            base=line_cfg,
            event=monitor._event,
        )
    return monitor

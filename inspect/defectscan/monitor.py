"""The line monitor: micro-batches from a source through the one inspect-and-store loop.

:class:`LineMonitor` owns what stays alive between batches: the source, the model (swapped to
a new champion between batches, never during one), the results writer, the archive and the
run statistics. :meth:`LineMonitor.step` is one micro-batch; :meth:`LineMonitor.run` is a
bounded run (N images, S seconds, idle for I seconds, or a stop request) that drains what it
claimed before it returns. The Prefect flow (``flows/line_monitor.py``) calls the same two
methods from thin tasks; the CLI's ``monitor --no-prefect`` calls them directly.

Failures: a batch that fails before its commit is handed back to the source, which counts the
delivery (so an input that crashes processing every time ends in quarantine after N tries);
the next batches are claimed one image at a time until the failed ones have gone through
again, so a single poison image does not count deliveries against its neighbours. A database
outage is ridden out inside the writer (it retries until the database answers again).
"""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from defectscan.archive import ArchivePolicy, ImageArchive
from defectscan.errors import ConfigError, DefectscanError, StoreError
from defectscan.pipeline import Inspector
from defectscan.service import BatchOutcome, MetricsSink, inspect_and_store, register_model
from defectscan.sources.base import ImageRecord, Source
from defectscan.store.db import retrying, session_factory
from defectscan.store.model_versions import get_champion
from defectscan.store.operations import record_event, save_run_metrics
from defectscan.store.training_runs import reviews_for_training
from defectscan.store.writer import ResultWriter

__all__ = [
    "STOP",
    "LineMonitor",
    "ModelProvider",
    "RunSummary",
    "WindowStats",
    "build_monitor",
    "inspector_loader",
    "line_loader",
    "parse_model_ref",
    "set_process_metrics",
]

logger = logging.getLogger(__name__)

#: Set by the CLI's SIGINT/SIGTERM handler: finish the batch in hand, settle it, stop.
STOP = threading.Event()

InspectorLoader = Callable[[str], Inspector]


def parse_model_ref(model: str) -> tuple[str, str | None]:
    """``("champion", name|None)`` for ``champion``/``champion:NAME``, else ``("file", path)``."""
    if model == "champion":
        return "champion", None
    if model.startswith("champion:"):
        return "champion", model.split(":", 1)[1] or None
    return "file", model


class ModelProvider:
    """The model the monitor inspects with, and the switch to a newly promoted champion.

    With a file, the model never changes. With ``champion`` the registry is polled every
    ``poll_s`` seconds between batches; a new champion is loaded *beside* the running model
    and swapped in only once it loaded and its weights match the registry. When loading fails,
    the old model keeps running, the failure is logged and recorded as an event, and that
    version is not tried again until ``retry_s`` has passed.
    """

    def __init__(
        self,
        model: str,
        *,
        load: InspectorLoader,
        sessions: sessionmaker[Session],
        line: str | None = None,
        poll_s: float = 5.0,
        retry_s: float = 300.0,
    ) -> None:
        self.kind, self.ref = parse_model_ref(model)
        self._load = load
        self._sessions = sessions
        self.line = line
        self.poll_s = poll_s
        self.retry_s = retry_s
        self._checked = 0.0
        self._failed: dict[str, float] = {}
        self.inspector = self._initial()
        self.switches = 0

    def _champion(self) -> tuple[str, str, str] | None:
        def unit(*, session: Session) -> tuple[str, str, str] | None:
            mv = get_champion(session=session, name=self.ref)
            if mv is None:
                return None
            return mv.version, mv.checkpoint_path or "", mv.sha256

        return retrying(unit, sessions=self._sessions)

    def _initial(self) -> Inspector:
        if self.kind == "file":
            assert self.ref is not None
            if not Path(self.ref).is_file():
                msg = f"model file {self.ref} does not exist; pass --model FILE or champion"
                raise ConfigError(msg)
            return self._load(self.ref)
        found = self._champion()
        if found is None:
            named = f" named {self.ref!r}" if self.ref else ""
            msg = (
                f"there is no champion model{named} in the registry yet: promote one "
                "(`defectscan models promote VERSION`) or pass --model FILE"
            )
            raise StoreError(msg)
        version, path, sha = found
        inspector = self._load(path)
        if inspector.checkpoint is not None and inspector.checkpoint.sha256 != sha:
            msg = f"checkpoint {path} no longer holds the weights of champion {version}"
            raise StoreError(msg)
        self._checked = time.monotonic()
        return inspector

    def refresh(self, *, flow_run_id: str | None = None) -> bool:
        """Between batches: switch to a new champion if there is one; True when switched."""
        if self.kind != "champion" or time.monotonic() - self._checked < self.poll_s:
            return False
        self._checked = time.monotonic()
        found = self._champion()
        if found is None or found[0] == self.inspector.model_version:
            return False
        version, path, sha = found
        failed_at = self._failed.get(version)
        if failed_at is not None and time.monotonic() - failed_at < self.retry_s:
            return False
        old = self.inspector.model_version
        try:
            candidate = self._load(path)
            if candidate.checkpoint is not None and candidate.checkpoint.sha256 != sha:
                msg = f"{path} does not hold the weights registered for {version}"
                raise StoreError(msg)
        except (DefectscanError, OSError, RuntimeError, ValueError) as exc:
            self._failed[version] = time.monotonic()
            message = (
                f"new champion {version} could not be loaded ({type(exc).__name__}: {exc}); "
                f"still inspecting with {old}"
            )
            logger.error(message)
            self._event("model_load_failed", message, "error", version, flow_run_id, {"path": path})
            return False
        previous, self.inspector = self.inspector, candidate
        previous.close()
        self.switches += 1
        message = f"switched from {old} to new champion {version}"
        logger.info(message)
        self._event("model_switch", message, "info", version, flow_run_id, {"previous": old})
        return True

    def _event(
        self,
        kind: str,
        message: str,
        level: str,
        version: str,
        flow_run_id: str | None,
        details: dict[str, Any],
    ) -> None:
        def unit(*, session: Session) -> None:
            record_event(
                session=session,
                kind=kind,
                level=level,
                message=message,
                line=self.line,
                model_version=version,
                flow_run_id=flow_run_id,
                details=details,
            )

        try:
            retrying(unit, sessions=self._sessions)
        except Exception:  # an event is worth a log line, not a stopped line
            logger.exception("could not record %s event", kind)


@dataclass
class WindowStats:
    """Counts and latencies over one metrics window (a minute, or a whole run)."""

    start: datetime = field(default_factory=lambda: datetime.now(UTC))
    outcome: BatchOutcome = field(default_factory=BatchOutcome)

    def percentile(self, q: float) -> float | None:
        """Capture-to-commit latency percentile ``q`` in [0, 1], in milliseconds."""
        values = sorted(self.outcome.latencies_s)
        if not values:
            return None
        pos = q * (len(values) - 1)
        lo, hi = math.floor(pos), math.ceil(pos)
        return 1e3 * (values[lo] + (values[hi] - values[lo]) * (pos - lo))

    def row(self, end: datetime) -> dict[str, Any]:
        """Keyword arguments of ``store.save_run_metrics`` for this window."""
        o = self.outcome
        seconds = max((end - self.start).total_seconds(), 1e-9)
        return {
            "window_start": self.start,
            "window_end": end,
            "processed": o.images,
            "rejected": o.rejected,
            "tiles": o.tiles,
            "failed": o.failed_parts,
            "throughput_per_s": o.images / seconds,
            "latency_p50_ms": self.percentile(0.5),
            "latency_p95_ms": self.percentile(0.95),
            "defect_rate": (o.failed_parts / o.inspected) if o.inspected else None,
            "rejected_by_reason": dict(o.rejected_by_reason),
            "model_version": ",".join(sorted(o.model_versions)) or None,
        }


@dataclass
class RunSummary:
    """What one bounded monitor run did."""

    run_id: str
    images: int
    inspected: int
    rejected: int
    failed_parts: int
    tiles: int
    duplicates: int
    seconds: float
    stopped_by: str
    model_versions: list[str]
    failed_batches: int
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    archived: dict[str, int]
    rejected_by_reason: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form (the flow's return value)."""
        return dict(self.__dict__)


class LineMonitor:
    """One line's monitor: source -> model -> results database -> archive -> acks."""

    def __init__(
        self,
        source: Source,
        models: ModelProvider,
        engine: Engine,
        *,
        line: str | None = None,
        batch_size: int = 8,
        claim_timeout: float = 1.0,
        archive: ImageArchive | None = None,
        metrics: MetricsSink | None = None,
        flow_name: str = "line-monitor",
        metrics_window_s: float = 60.0,
        writer_attempts: int = 100_000,
    ) -> None:
        if batch_size < 1:
            msg = f"batch size must be >= 1, got {batch_size}"
            raise ConfigError(msg)
        self.source = source
        self.models = models
        self.engine = engine
        self.line = line
        self.batch_size = batch_size
        self.claim_timeout = claim_timeout
        self.archive = archive
        self.metrics = metrics
        self.flow_name = flow_name
        self.metrics_window_s = metrics_window_s
        self._sessions = session_factory(engine, write=True)
        # A monitor rides out a database outage instead of failing batches: it cannot do
        # anything useful without the database, and what it claimed stays claimed meanwhile.
        self.writer = ResultWriter(engine, batch_size=max(batch_size, 1), attempts=writer_attempts)
        self._registered: set[str] = set()
        self._single = 0  # batches to claim one by one after a failure
        self.failed_batches = 0
        self._gauges_at = float("-inf")
        self._archive_at = float("-inf")
        self._model_shown: str | None = None
        self._archive_dirty = False
        self._pruned_at = time.monotonic()  # the first retention pass an interval after start
        self.prune_every_s = 3600.0

    # ------------------------------------------------------------------ one batch

    def _ensure_registered(self) -> None:
        version = self.models.inspector.model_version
        if version not in self._registered:
            register_model(self.writer, self.models.inspector)
            self._registered.add(version)

    def claim(self, *, flow_run_id: str | None = None) -> list[ImageRecord]:
        """Between batches: switch model if a new champion is in, then claim a micro-batch."""
        self.models.refresh(flow_run_id=flow_run_id)
        self._ensure_registered()
        if self.metrics is not None:
            self._update_gauges()
        if self.archive is not None and time.monotonic() - self._pruned_at >= self.prune_every_s:
            self._pruned_at = time.monotonic()
            self.prune_archive()
        n = 1 if self._single > 0 else self.batch_size
        return self.source.claim(n, timeout=self.claim_timeout)

    def process(
        self, records: list[ImageRecord], *, flow_run_id: str | None = None
    ) -> BatchOutcome:
        """Inspect, store, archive and settle claimed records; a failure hands them back."""
        try:
            outcome = inspect_and_store(
                records,
                inspector=self.models.inspector,
                writer=self.writer,
                source=self.source,
                archive=self.archive,
                metrics=self.metrics,
            )
        except Exception as exc:
            # inspect_and_store handed the records back to the source already.
            self.failed_batches += 1
            self._single = max(self._single, len(records) + 1) if len(records) > 1 else 0
            logger.exception("batch of %d failed; redelivering it", len(records))
            self._record_failure(records_n=len(records), exc=exc, flow_run_id=flow_run_id)
            return BatchOutcome()
        if self._single > 0:
            self._single -= 1
        if outcome.archived:
            self._archive_dirty = True
        return outcome

    def step(self, *, flow_run_id: str | None = None) -> BatchOutcome | None:
        """Claim one micro-batch and take it through the loop; None when nothing came."""
        records = self.claim(flow_run_id=flow_run_id)
        if not records:
            return None
        return self.process(records, flow_run_id=flow_run_id)

    def _update_gauges(self, *, queue_every_s: float = 5.0, archive_every_s: float = 60.0) -> None:
        """Queue lag, archive size and the model in use, for /metrics (throttled)."""
        assert self.metrics is not None
        inspector = self.models.inspector
        if self._model_shown != inspector.model_version:
            self.metrics.set_model(
                line=self.line,
                version=inspector.model_version,
                engine=inspector.backend.name,
                device=str(getattr(inspector.backend, "device", "cpu")),
            )
            self._model_shown = inspector.model_version
        now = time.monotonic()
        if now - self._gauges_at >= queue_every_s:
            self._gauges_at = now
            try:
                pending = getattr(self.source, "pending", None)
                self.metrics.set_queue(
                    line=self.line,
                    waiting=self.source.backlog(),
                    pending=pending() if callable(pending) else None,
                )
            except DefectscanError as exc:  # a source that cannot answer now: try later
                logger.debug("queue size unavailable: %s", exc)
        since = now - self._archive_at
        due = since >= archive_every_s or (self._archive_dirty and since >= queue_every_s)
        if self.archive is not None and due:
            self._archive_at = now
            self._archive_dirty = False
            files, size = self.archive.usage()
            self.metrics.set_archive(size, files)

    def prune_archive(self) -> None:
        """Apply the archive's retention, sparing images of reviews not yet used for training."""
        if self.archive is None:
            return

        def unit(*, session: Session) -> list[str]:
            return [r.inspection.sha256 for r in reviews_for_training(session=session)]

        try:
            protect = retrying(unit, sessions=self._sessions, attempts=3)
            self.archive.prune(protect=protect)
        except Exception:  # retention must never stop the line
            logger.exception("archive retention failed; will try again later")

    def _record_failure(self, *, records_n: int, exc: Exception, flow_run_id: str | None) -> None:
        def unit(*, session: Session) -> None:
            record_event(
                session=session,
                kind="batch_failed",
                level="error",
                message=f"batch of {records_n} failed and was handed back: "
                f"{type(exc).__name__}: {exc}",
                line=self.line,
                model_version=self.models.inspector.model_version,
                flow_run_id=flow_run_id,
            )

        try:
            retrying(unit, sessions=self._sessions, attempts=3)
        except Exception:
            logger.exception("could not record the failed batch")

    # ------------------------------------------------------------------ run metrics

    def save_window(self, stats: WindowStats, *, flow_run_id: str, end: datetime) -> None:
        """Write one window's row to ``run_metrics`` (idempotent per window)."""

        def unit(*, session: Session) -> None:
            save_run_metrics(
                session=session,
                flow_run_id=flow_run_id,
                flow_name=self.flow_name,
                line=self.line,
                **stats.row(end),
            )

        try:
            retrying(unit, sessions=self._sessions)
        except Exception:  # metrics must never stop the line
            logger.exception("could not save run metrics")

    # ------------------------------------------------------------------ a bounded run

    def run(
        self,
        *,
        max_images: int | None = None,
        max_seconds: float | None = None,
        idle_exit: float | None = None,
        stop: threading.Event | None = None,
        run_id: str | None = None,
        step: Callable[[], BatchOutcome | None] | None = None,
    ) -> RunSummary:
        """Batches until a bound is reached; drains what it claimed; writes run metrics.

        ``step`` replaces :meth:`step` (the Prefect flow passes its task); a run's per-minute
        windows are stored under ``run_id`` and the whole run under ``run_id + ":run"``.
        """
        stop = stop or STOP
        run_id = run_id or uuid.uuid4().hex
        do_step = step or (lambda: self.step(flow_run_id=run_id))
        started = time.monotonic()
        run_stats = WindowStats()
        window = WindowStats()
        last_work = time.monotonic()
        stopped_by = "max_seconds"
        while True:
            if stop.is_set():
                stopped_by = "signal"
                break
            if max_images is not None and run_stats.outcome.images >= max_images:
                stopped_by = "max_images"
                break
            if max_seconds is not None and time.monotonic() - started >= max_seconds:
                stopped_by = "max_seconds"
                break
            outcome = do_step()
            now = time.monotonic()
            if outcome is not None and (outcome.images or outcome.seconds):
                last_work = now
                run_stats.outcome.merge(outcome)
                window.outcome.merge(outcome)
            elif outcome is None and idle_exit is not None and now - last_work >= idle_exit:
                stopped_by = "idle"
                break
            if (datetime.now(UTC) - window.start).total_seconds() >= self.metrics_window_s:
                end = datetime.now(UTC)
                if window.outcome.images:
                    self.save_window(window, flow_run_id=run_id, end=end)
                window = WindowStats(start=end)
        end = datetime.now(UTC)
        if window.outcome.images:
            self.save_window(window, flow_run_id=run_id, end=end)
        self.save_window(run_stats, flow_run_id=f"{run_id}:run", end=end)
        o = run_stats.outcome
        return RunSummary(
            run_id=run_id,
            images=o.images,
            inspected=o.inspected,
            rejected=o.rejected,
            failed_parts=o.failed_parts,
            tiles=o.tiles,
            duplicates=o.duplicates,
            seconds=time.monotonic() - started,
            stopped_by=stopped_by,
            model_versions=sorted(o.model_versions),
            failed_batches=self.failed_batches,
            latency_p50_ms=run_stats.percentile(0.5),
            latency_p95_ms=run_stats.percentile(0.95),
            archived=dict(o.archived),
            rejected_by_reason=dict(o.rejected_by_reason),
        )

    def close(self) -> None:
        """Flush nothing (every batch commits itself), close the source, free connections."""
        self.source.close()
        self.models.inspector.close()
        self.engine.dispose()


def inspector_loader(
    *,
    backend: str = "auto",
    device: str = "auto",
    precision: str = "auto",
    tile_size: int | None = None,
    overlap: int | None = None,
    infer_batch: int = 8,
) -> InspectorLoader:
    """A function that builds an :class:`Inspector` for a checkpoint path with these options."""
    from defectscan.config import get_settings

    settings = get_settings()

    def load(path: str) -> Inspector:
        return Inspector.from_checkpoint(
            path,
            backend=backend,  # type: ignore[arg-type]
            device=device,
            precision=precision,  # type: ignore[arg-type]
            tile_size=tile_size,
            overlap=overlap,
            batch_size=infer_batch,
            max_pixels=settings.max_pixels,
            lines=settings.lines,
        )

    return load


def line_loader(line: str | None) -> InspectorLoader:
    """The loader a line's configuration describes (engine, device, precision, tiling)."""
    from defectscan.config import get_settings

    settings = get_settings()
    engine = settings.engine_for(line)
    tile_size, overlap = settings.tiling_for(line)
    return inspector_loader(
        backend=engine.backend,
        device=engine.device,
        precision=engine.precision,
        tile_size=tile_size,
        overlap=overlap,
        infer_batch=engine.batch_size,
    )


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
) -> LineMonitor:
    """Open the source, check the database schema, load the model: a monitor ready to run.

    What is not given comes from the settings (the plant file's line ``line``): its source,
    model, engine and tiling, and archive policy. The database must already be at the code's
    migration head (``defectscan db upgrade``); only a brand-new SQLite file is created.
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
    engine = make_engine(database_url or settings.database_url)
    try:
        ensure_schema(engine)
        models = ModelProvider(
            model,
            load=load or line_loader(line),
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
    return LineMonitor(
        src,
        models,
        engine,
        line=line,
        batch_size=batch_size,
        claim_timeout=claim_timeout,
        archive=archive,
        metrics=metrics if metrics is not None else _PROCESS_METRICS,
    )

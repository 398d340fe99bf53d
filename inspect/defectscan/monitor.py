"""The line monitor: micro-batches from a source through the one inspect-and-store loop.

:class:`LineMonitor` owns what stays alive between batches: the source, the model (swapped to
a new champion between batches, never during one), the results writer, the archive and the
run statistics. :meth:`LineMonitor.step` is one micro-batch; :meth:`LineMonitor.run` is a
bounded run (N images, S seconds, idle for I seconds, or a stop request) that drains what it
claimed before it returns. The Prefect flow (``flows/line_monitor.py``) calls the same two
methods from thin tasks; the CLI's ``monitor --no-prefect`` calls them directly.

Failures are classified (:func:`defectscan.service.is_plant_fault`):

- An image's fault (a crash in a native library on some input): the batch is handed back and
  the source counts the delivery, so an input that crashes processing every time ends in
  quarantine after N tries. Until every record of a failed batch is settled, the monitor
  claims one image at a time, so a poison image is never again taken with neighbours that
  would be charged with it.
- A fault of the plant (a full or read-only archive, an unwritable ``done/``, a database or
  broker that refuses work, a champion that does not fit the line's rules, the device out of
  memory): the batch is handed back *without* charging its deliveries, the line pauses and
  retries with exponential back-off until the fault clears, and each fault leaves an
  ``events`` row (``plant_fault``, then ``plant_fault_cleared``) and the metrics
  ``defectscan_plant_faults_total`` / ``defectscan_line_paused``.

A database outage is ridden out inside the writer (it retries until the database answers
again), and the champion poll skips its turn while the database is away instead of stopping
the line. ``champion`` follows one model name per line: ``champion:NAME`` (the plant file's
line ``model``), or for a plain ``champion`` the one name that has a champion when the monitor
starts; a new champion whose classes do not fit the line's rules is refused with an event
(:class:`~defectscan.champion.ModelProvider`).
Records that name a line the plant file does not know are refused, each with an error row,
and metric labels come only from configured lines and cameras.

Beside this module: :mod:`defectscan.monitor_stats` (per-minute windows and the run summary)
and :mod:`defectscan.monitor_build` (:func:`~defectscan.monitor_build.build_monitor`, a monitor
from the settings; it imports this module, so import it from there).
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Collection, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from defectscan.archive import ImageArchive
from defectscan.champion import (
    ModelProvider,
    inspector_loader,
    line_loader,
    parse_model_ref,
)
from defectscan.drift.tracking import DriftMonitor
from defectscan.engine_upgrade import EngineOptions, EngineUpgrader
from defectscan.errors import ConfigError, DefectscanError
from defectscan.model.engines import engine_label
from defectscan.monitor_controls import ConsoleControls
from defectscan.monitor_stats import RunSummary, WindowStats
from defectscan.pipeline import InspectionResult
from defectscan.service import (
    BatchOutcome,
    MetricsSink,
    inspect_and_store,
    is_plant_fault,
    register_model,
)
from defectscan.sources.base import ImageRecord, Source
from defectscan.store.db import retrying, session_factory
from defectscan.store.operations import record_event, save_run_metrics
from defectscan.store.training_runs import reviews_for_training
from defectscan.store.writer import ResultWriter

__all__ = [
    "STOP",
    "LineMonitor",
    "ModelProvider",
    "RunSummary",
    "WindowStats",
    "inspector_loader",
    "line_loader",
    "parse_model_ref",
]

logger = logging.getLogger(__name__)

#: Set by the CLI's SIGINT/SIGTERM handler: finish the batch in hand, settle it, stop.
STOP = threading.Event()


class _Labels:
    """A metrics sink that labels only with configured lines and cameras.

    A producer's ``line`` or ``camera`` field is free text: used as a label as it is, every typo
    would create new series without bound. A line outside ``lines`` is shown as the monitor's
    own line, a camera outside ``cameras`` as ``other``.
    """

    def __init__(
        self,
        sink: MetricsSink,
        *,
        line: str | None,
        lines: Collection[str],
        cameras: Collection[str],
    ) -> None:
        self.sink = sink
        self.line = line
        self.lines = frozenset(lines)
        self.cameras = frozenset(cameras)

    def _line(self, line: str | None) -> str | None:
        return line if line is None or line in self.lines else self.line

    def _camera(self, camera: str | None) -> str | None:
        return camera if camera is None or camera in self.cameras else "other"

    def observe_result(
        self,
        *,
        line: str | None,
        camera: str | None,
        status: str,
        verdict: str | None,
        error_kind: str | None,
        defect_classes: list[str],
        tiles: int,
        stage_ms: dict[str, float],
        capture_to_commit_s: float | None,
    ) -> None:
        self.sink.observe_result(
            line=self._line(line),
            camera=self._camera(camera),
            status=status,
            verdict=verdict,
            error_kind=error_kind,
            defect_classes=defect_classes,
            tiles=tiles,
            stage_ms=stage_ms,
            capture_to_commit_s=capture_to_commit_s,
        )

    def observe_batch(self, *, line: str | None, size: int, seconds: float) -> None:
        self.sink.observe_batch(line=self._line(line), size=size, seconds=seconds)

    def set_queue(self, *, line: str | None, waiting: int, pending: int | None = None) -> None:
        self.sink.set_queue(line=self._line(line), waiting=waiting, pending=pending)

    def set_archive(self, bytes_: int, files: int) -> None:
        self.sink.set_archive(bytes_, files)

    def set_model(self, *, line: str | None, version: str, engine: str, device: str) -> None:
        self.sink.set_model(line=self._line(line), version=version, engine=engine, device=device)

    def observe_plant_fault(self, *, line: str | None, kind: str) -> None:
        self.sink.observe_plant_fault(line=self._line(line), kind=kind)

    def set_paused(self, *, line: str | None, paused: bool) -> None:
        self.sink.set_paused(line=self._line(line), paused=paused)

    def set_dead_letter_dropped(self, *, line: str | None, dropped: int) -> None:
        self.sink.set_dead_letter_dropped(line=self._line(line), dropped=dropped)


def _fault_kind(exc: BaseException) -> str:
    """A short, bounded name of a plant fault (a metric label)."""
    if isinstance(exc, DefectscanError):
        return exc.kind
    if isinstance(exc, SQLAlchemyError):
        return "database"
    if isinstance(exc, OSError):
        return "volume"
    return "out_of_memory"


class LineMonitor:
    """One line's monitor: source -> model -> results database -> archive -> acks.

    ``lines`` are the lines the plant file configures (a record naming another line is
    refused with an error row; the monitor's own ``line`` is always known) and ``cameras`` the
    cameras whose names may label metrics. A plant fault pauses the line for ``pause_min_s``,
    doubling on each fault in a row up to ``pause_max_s``.
    """

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
        lines: Collection[str] | None = None,
        cameras: Collection[str] | None = None,
        pause_min_s: float = 1.0,
        pause_max_s: float = 60.0,
        engine_options: EngineOptions | None = None,
        commit_every: int | None = None,
        drift: DriftMonitor | None = None,
    ) -> None:
        if batch_size < 1:
            msg = f"batch size must be >= 1, got {batch_size}"
            raise ConfigError(msg)
        if not 0 < pause_min_s <= pause_max_s:
            msg = f"need 0 < pause_min_s <= pause_max_s, got {pause_min_s} and {pause_max_s}"
            raise ConfigError(msg)
        self.source = source
        self.models = models
        self.engine = engine
        self.line = line
        self.batch_size = batch_size
        self.claim_timeout = claim_timeout
        self.archive = archive
        self.lines = frozenset(lines or ()) | ({line} if line else frozenset())
        self.cameras = frozenset(cameras or ())
        self.metrics: _Labels | None = (
            _Labels(metrics, line=line, lines=self.lines, cameras=self.cameras)
            if metrics is not None
            else None
        )
        self._metrics_sink = metrics
        self.flow_name = flow_name
        self.metrics_window_s = metrics_window_s
        self._sessions = session_factory(engine, write=True)
        # A monitor rides out a database outage instead of failing batches: it cannot do
        # anything useful without the database, and what it claimed stays claimed meanwhile.
        # commit_every=1 (what build_monitor asks for) commits each row as soon as its image
        # is inspected: an image's row does not wait for the rest of its micro-batch. Default:
        # one transaction per micro-batch.
        self.writer = ResultWriter(
            engine, batch_size=max(commit_every or batch_size, 1), attempts=writer_attempts
        )
        self._registered: set[str] = set()
        #: Drift per camera from the features of the same pass (None: off in the plant file).
        self.drift = drift
        # Records of failed batches not settled yet: claim one at a time while any is left.
        self._suspects: set[str] = set()
        self._suspect_free_claims = 0
        self.failed_batches = 0
        self.pause_min_s = pause_min_s
        self.pause_max_s = pause_max_s
        self._pause_s = 0.0
        self._paused_until = float("-inf")
        self._plant_fault: str | None = None
        self.plant_faults = 0
        #: The operator console's pause and threshold rules (monitor_build sets it for a line).
        self.controls: ConsoleControls | None = None
        self._console_pause_shown = False
        self._gauges_at = float("-inf")
        self._archive_at = float("-inf")
        self._model_shown: str | None = None
        self._archive_dirty = False
        self._pruned_at = time.monotonic()  # the first retention pass an interval after start
        self.prune_every_s = 3600.0
        self._consumers_pruned_at = time.monotonic()
        self.prune_consumers_every_s = 600.0
        self._metrics_checked = False
        # Falling behind: the backlog sampled every backlog_every_s; growing across every
        # sample of the window (4 samples: 15 s) means images arrive faster than inspected.
        self.backlog_every_s = 5.0
        self._backlog: deque[int] = deque(maxlen=4)
        self._backlog_at = float("-inf")
        self.behind = False
        self._engine_reported: str | None = None
        #: Background engine work (fast start, INT8 from the line): None when pinned or off.
        self.engines: EngineUpgrader | None = (
            EngineUpgrader(
                engine_options,
                line=line,
                event=self._event,
                metrics=metrics,
                archive=archive,
                sessions=self._sessions,
            )
            if engine_options is not None
            else None
        )
        if getattr(source, "on_dead_overflow", False) is None:
            # A capped dead-letter stream that drops entries is worth an events row.
            setattr(source, "on_dead_overflow", self._dead_letter_overflow)  # noqa: B010

    # ------------------------------------------------------------------ one batch

    def _ensure_registered(self) -> None:
        version = self.models.inspector.model_version
        if version not in self._registered:
            register_model(self.writer, self.models.inspector)
            self._registered.add(version)

    @property
    def paused(self) -> bool:
        """True while the line waits out a plant fault before trying again."""
        return time.monotonic() < self._paused_until

    @property
    def console_paused(self) -> bool:
        """True while the operator console has this line paused (nothing is claimed)."""
        return self.controls is not None and self.controls.paused

    @property
    def plant_fault(self) -> str | None:
        """The plant fault the line is riding out (None when none): a paused line is not idle."""
        return self._plant_fault

    def claim(self, *, flow_run_id: str | None = None) -> list[ImageRecord]:
        """Between batches: switch model if a new champion is in, then claim a micro-batch.

        While the line is paused by a plant fault this waits (at most ``claim_timeout``) and
        claims nothing.
        """
        if not self._metrics_checked:
            self._metrics_checked = True
            self._report_metrics_endpoint(flow_run_id)
        wait = self._paused_until - time.monotonic()
        if wait > 0:
            STOP.wait(min(wait, self.claim_timeout))
            return []
        try:
            self.models.refresh(flow_run_id=flow_run_id)
            self._ensure_registered()
            if self._console_pause(flow_run_id):
                return []
            if self.engines is not None:
                self.engines.between_batches(self.models.inspector, flow_run_id=flow_run_id)
            self._report_engine(flow_run_id)
            if self.metrics is not None:
                self._update_gauges()
            self._housekeeping()
            self._watch_backlog(flow_run_id)
            n = 1 if self._suspects else self.batch_size
            records = self.source.claim(n, timeout=self.claim_timeout)
        except Exception as exc:
            if not is_plant_fault(exc):
                raise
            self._on_plant_fault(exc, records_n=0, flow_run_id=flow_run_id)
            return []
        if not records and self._plant_fault is not None:
            # The source answers and nothing failed is waiting to come back: the fault is over.
            self._plant_fault_cleared(flow_run_id)
        if self._suspects and records:
            if self._suspects.isdisjoint(r.id for r in records):
                self._suspect_free_claims += 1
                # The suspects went elsewhere (another consumer reclaimed them): stop waiting.
                if self._suspect_free_claims > len(self._suspects) + 2:
                    logger.info(
                        "%d record(s) of failed batches did not come back here; claiming "
                        "full batches again",
                        len(self._suspects),
                    )
                    self._suspects.clear()
            else:
                self._suspect_free_claims = 0
        return records

    def process(
        self, records: list[ImageRecord], *, flow_run_id: str | None = None
    ) -> BatchOutcome:
        """Inspect, store, archive and settle claimed records; a failure hands them back."""
        records = [self._known_line(r) for r in records]
        inspector = self.models.inspector
        drift_batch: list[InspectionResult] | None = None
        if self.drift is not None:
            inspector.drift_features = self.drift.wants_features(inspector.model_version)
            drift_batch = [] if inspector.drift_features else None
        try:
            with self._renewing(records):
                outcome = inspect_and_store(
                    records,
                    inspector=inspector,
                    writer=self.writer,
                    source=self.source,
                    archive=self.archive,
                    metrics=self.metrics,
                    on_result=self._result_hook(drift_batch),
                )
        except Exception as exc:
            # inspect_and_store handed the records back to the source already (charged as a
            # delivery only when the images may be to blame).
            self.failed_batches += 1
            if is_plant_fault(exc):
                self._on_plant_fault(exc, records_n=len(records), flow_run_id=flow_run_id)
            else:
                self._suspects.update(r.id for r in records)
                self._suspect_free_claims = 0
                logger.exception("batch of %d failed; redelivering it", len(records))
                self._record_failure(records_n=len(records), exc=exc, flow_run_id=flow_run_id)
            return BatchOutcome()
        self._suspects.difference_update(r.id for r in records)
        if self.drift is not None and drift_batch:
            # Committed rows only: a batch handed back never reaches the drift windows.
            self.drift.observe(inspector.model_version, inspector.spec.class_names, drift_batch)
        if self._plant_fault is not None:
            self._plant_fault_cleared(flow_run_id)
        if outcome.archived:
            self._archive_dirty = True
        return outcome

    def _result_hook(
        self, drift_batch: list[InspectionResult] | None
    ) -> Callable[[InspectionResult], Any] | None:
        """The service loop's ``on_result``: background engine work and drift's batch."""
        engines = self.engines
        if drift_batch is None:
            return engines.observe if engines is not None else None

        def hook(result: InspectionResult) -> None:
            drift_batch.append(result)
            if engines is not None:
                engines.observe(result)

        return hook

    def step(self, *, flow_run_id: str | None = None) -> BatchOutcome | None:
        """Claim one micro-batch and take it through the loop; None when nothing came.

        While the line is paused by a plant fault, an empty outcome (not None: a paused line
        is not idle, and a bounded run must not end on it as if the queue were empty).
        """
        records = self.claim(flow_run_id=flow_run_id)
        if not records:
            paused = self._plant_fault is not None or self.console_paused
            return BatchOutcome() if paused else None
        return self.process(records, flow_run_id=flow_run_id)

    def _console_pause(self, flow_run_id: str | None) -> bool:
        """The console's rules and pause, read between batches; True (after a wait) if paused."""
        if self.controls is None:
            return False
        paused = self.controls.poll(self.models.inspector, flow_run_id=flow_run_id)
        if self.metrics is not None and paused != self._console_pause_shown:
            self.metrics.set_paused(line=self.line, paused=paused)
        self._console_pause_shown = paused
        if paused:
            STOP.wait(self.claim_timeout)
        return paused

    def _known_line(self, record: ImageRecord) -> ImageRecord:
        """``record``, or its refusal when it names a line the plant file does not know."""
        if record.line is None or record.line in self.lines or record.error_kind is not None:
            return record
        known = ", ".join(sorted(self.lines)) or "none"
        message = (
            f"{record.uri} names line {record.line!r}, which is not in the plant file "
            f"(known: {known}); refused instead of inspecting it with another line's rules: "
            "fix the producer's line field or add the line to the plant file"
        )
        logger.warning(message)
        return dataclasses.replace(
            record, line=self.line, error_kind="unknown_line", error_message=message
        )

    @contextlib.contextmanager
    def _renewing(self, records: Sequence[ImageRecord]) -> Iterator[None]:
        """Renew the claim on ``records`` every ``claim_idle_ms / 3`` while the batch runs."""
        idle_ms = getattr(self.source, "claim_idle_ms", None)
        renew = getattr(self.source, "renew", None)
        if not records or not isinstance(idle_ms, int | float) or not callable(renew):
            yield
            return
        every = max(idle_ms / 3000.0, 0.05)
        done = threading.Event()

        def loop() -> None:
            while not done.wait(every):
                try:
                    renew(records)
                except Exception:  # a missed renewal risks a duplicate, never a lost image
                    logger.warning("could not renew the claim on %d record(s)", len(records))

        thread = threading.Thread(target=loop, name="defectscan-renew", daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join(timeout=5)

    # ------------------------------------------------------------------ plant faults

    def _on_plant_fault(
        self, exc: BaseException, *, records_n: int, flow_run_id: str | None
    ) -> None:
        """Pause the line (doubling back-off), record an event, count it in the metrics."""
        self.plant_faults += 1
        self._pause_s = min(self.pause_max_s, max(self.pause_min_s, 2 * self._pause_s))
        self._paused_until = time.monotonic() + self._pause_s
        kind = _fault_kind(exc)
        first = self._plant_fault is None
        self._plant_fault = f"{type(exc).__name__}: {exc}"
        message = (
            f"plant fault ({self._plant_fault}); line paused, retrying in {self._pause_s:.0f} s"
            + (f"; {records_n} image(s) handed back uncharged" if records_n else "")
        )
        logger.error(message)
        if self.metrics is not None:
            self.metrics.observe_plant_fault(line=self.line, kind=kind)
            self.metrics.set_paused(line=self.line, paused=True)
        self._event(
            "plant_fault",
            message,
            "error",
            flow_run_id,
            {
                "kind": kind,
                "error": self._plant_fault,
                "retry_in_s": self._pause_s,
                "images": records_n,
                "first": first,
            },
        )

    def _plant_fault_cleared(self, flow_run_id: str | None) -> None:
        message = f"plant fault cleared ({self._plant_fault}); line running again"
        logger.info(message)
        self._plant_fault = None
        self._pause_s = 0.0
        self._paused_until = float("-inf")
        if self.metrics is not None:
            self.metrics.set_paused(line=self.line, paused=False)
        self._event("plant_fault_cleared", message, "info", flow_run_id, {})

    def _event(
        self, kind: str, message: str, level: str, flow_run_id: str | None, details: dict[str, Any]
    ) -> None:
        def unit(*, session: Session) -> None:
            record_event(
                session=session,
                kind=kind,
                level=level,
                message=message,
                line=self.line,
                model_version=self.models.inspector.model_version,
                flow_run_id=flow_run_id,
                details=details,
            )

        try:
            retrying(unit, sessions=self._sessions, attempts=3)
        except Exception:  # the database may be the fault: the log line stands
            logger.exception("could not record the %s event", kind)

    def _dead_letter_overflow(self, dropped: int, message: str) -> None:
        self._event("dead_letter_overflow", message, "warning", None, {"dropped": dropped})
        self._gauges_at = float("-inf")  # show the new count at the next gauge update

    def _report_metrics_endpoint(self, flow_run_id: str | None) -> None:
        """An ``events`` row when this process's /metrics endpoint could not be served."""
        error = getattr(self._metrics_sink, "bind_error", None)
        if error:
            self._event("metrics_unavailable", str(error), "error", flow_run_id, {})

    def _report_engine(self, flow_run_id: str | None) -> None:
        """An ``engine_in_use`` event whenever the model or its engine changes (health)."""
        inspector = self.models.inspector
        engine = engine_label(inspector.backend)
        shown = f"{inspector.model_version} {engine}"
        if shown == self._engine_reported:
            return
        self._engine_reported = shown
        self._event(
            "engine_in_use",
            f"inspecting with {engine} ({inspector.model_version})",
            "info",
            flow_run_id,
            {"engine": engine, "device": str(getattr(inspector.backend, "device", "cpu"))},
        )

    def _watch_backlog(self, flow_run_id: str | None) -> None:
        """An event and ``defectscan_line_behind`` when the backlog keeps growing (and after)."""
        now = time.monotonic()
        if now - self._backlog_at < self.backlog_every_s:
            return
        self._backlog_at = now
        try:
            waiting = self.source.backlog()
        except DefectscanError:  # a source that cannot answer now: look again later
            return
        self._backlog.append(waiting)
        samples = list(self._backlog)
        growing = len(samples) == self._backlog.maxlen and all(
            b > a for a, b in itertools.pairwise(samples)
        )
        if not self.behind and growing:
            self.behind = True
            message = (
                f"line falling behind: {waiting} image(s) waiting and the backlog grew at each "
                f"of the last {len(samples)} looks ({self.backlog_every_s:.0f} s apart)"
            )
            logger.warning(message)
            self._event("line_behind", message, "warning", flow_run_id, {"backlog": waiting})
        elif self.behind and (waiting == 0 or waiting <= min(samples[:-1])):
            self.behind = False
            message = f"line keeping up again: {waiting} image(s) waiting"
            logger.info(message)
            self._event("line_caught_up", message, "info", flow_run_id, {"backlog": waiting})
        else:
            return
        set_behind = getattr(self._metrics_sink, "set_behind", None)
        if callable(set_behind):
            set_behind(line=self.line, behind=self.behind)

    def _housekeeping(self) -> None:
        """Archive retention (hourly) and idle consumers of the stream (every 10 minutes)."""
        now = time.monotonic()
        if self.archive is not None and now - self._pruned_at >= self.prune_every_s:
            self._pruned_at = now
            self.prune_archive()
        prune = getattr(self.source, "prune_consumers", None)
        if callable(prune) and now - self._consumers_pruned_at >= self.prune_consumers_every_s:
            self._consumers_pruned_at = now
            try:
                gone = prune()
            except DefectscanError as exc:  # housekeeping must never stop the line
                logger.warning("could not prune idle consumers: %s", exc)
            else:
                if gone:
                    logger.info("deleted idle consumer(s) without pending entries: %s", gone)

    def _update_gauges(self, *, queue_every_s: float = 5.0, archive_every_s: float = 60.0) -> None:
        """Queue lag, archive size and the model in use, for /metrics (throttled)."""
        assert self.metrics is not None
        inspector = self.models.inspector
        shown = f"{inspector.model_version} {engine_label(inspector.backend)}"
        if self._model_shown != shown:
            self.metrics.set_model(
                line=self.line,
                version=inspector.model_version,
                engine=engine_label(inspector.backend),
                device=str(getattr(inspector.backend, "device", "cpu")),
            )
            self._model_shown = shown
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
                dropped = getattr(self.source, "dead_letter_dropped", None)
                if callable(dropped):
                    self.metrics.set_dead_letter_dropped(line=self.line, dropped=int(dropped()))
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
        if self.engines is not None:
            self.engines.close()
        self.source.close()
        self.models.inspector.close()
        self.engine.dispose()

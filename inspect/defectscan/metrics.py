"""Prometheus metrics of a line monitor, served on ``/metrics``.

Each :class:`MonitorMetrics` owns its own ``CollectorRegistry``: tests and several monitors in
one process never clash on metric names, and nothing leaks into prometheus-client's global
registry. The service loop calls the ``observe_*`` / ``set_*`` methods; :meth:`serve` starts
the HTTP endpoint in a daemon thread. A port that cannot be bound (another monitor on the host
has it) is a logged error and :attr:`MonitorMetrics.bind_error`, never an exception: metrics
never stop inspection (the monitor records the error as a ``metrics_unavailable`` event). Give
each line's monitor its own port (the plant file's ``lines.<name>.metrics_port``).

Metric names (all prefixed ``defectscan_``), the Grafana dashboard in
``docker/grafana/defectscan-dashboard.json`` reads these:

- ``images_total{line,camera,status,verdict}``: images processed (status ok|rejected; verdict
  pass|fail, or ``none`` for rejected inputs)
- ``tiles_total{line}``: tiles run through the model
- ``rejected_total{line,reason}``: rejected inputs by error kind (empty, truncated, ...)
- ``defects_total{line,class}``: defects found by class
- ``stage_seconds{line,stage}``: latency histogram per stage (decode, infer, post, store, ...)
- ``capture_to_commit_seconds{line}``: from the camera's capture time to the database commit
- ``batch_seconds{line}`` and ``batch_images{line}``: one service-loop batch
- ``queue_waiting{line}``: files waiting in the folder / stream entries not yet delivered
- ``queue_pending{line}``: stream entries delivered but not acknowledged
- ``archive_bytes``, ``archive_files``: the image archive's size
- ``model_info{line,version,engine,device}``: the model a line serves (always 1)
- ``plant_faults_total{line,kind}``: faults of the plant that paused the line (kind: the
  error kind, ``database``, ``volume`` or ``out_of_memory``)
- ``line_paused{line}``: 1 while the line waits out a plant fault, else 0
- ``dead_letter_dropped{line}``: entries pushed off the capped dead-letter stream
- ``drift_state{line,camera}``: the camera's drift state after its last window (0 ok,
  1 warning, 2 critical); ``drift_statistic{line,camera,statistic}``: that window's mean
  shift, novelty rate and largest ratio of a statistic to its threshold (``max_ratio``)

Line and camera labels come only from the plant file's lines and cameras (the monitor maps
anything else to its own line and to ``other``): a producer's typo never creates new series.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.exposition import start_http_server

__all__ = ["ENGINE_STATES", "LATENCY_BUCKETS", "MonitorMetrics"]

logger = logging.getLogger(__name__)

#: Seconds: from a fast decode (~1 ms) to a slow CPU inference of a large frame (~1 min).
LATENCY_BUCKETS: tuple[float, ...] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    float("inf"),
)
#: Seconds from capture to commit: includes queueing, so it reaches further out.
LAG_BUCKETS: tuple[float, ...] = (
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    900.0,
    3600.0,
    float("inf"),
)
_BATCH_SIZE_BUCKETS: tuple[float, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256, float("inf"))


#: What a line's background engine work may be doing (``defectscan_engine_state``).
ENGINE_STATES: tuple[str, ...] = (
    "off",  # nothing to do, or automatic quantisation turned off
    "exporting",  # fp32 exports running in the background (a fast start on torch)
    "gathering",  # collecting calibration images from the line
    "quantising",  # the INT8 export and its parity check are running
    "int8",  # the line runs on INT8
    "kept",  # INT8 is ready but not faster than the running engine here
    "failed",  # INT8 failed parity (or export) for this checkpoint on this CPU
)


class MonitorMetrics:
    """The metrics of one monitor process, in their own registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.images = Counter(
            "defectscan_images",
            "Images processed, by line, camera, status (ok|rejected) and verdict (pass|fail|none).",
            ["line", "camera", "status", "verdict"],
            registry=r,
        )
        self.tiles = Counter(
            "defectscan_tiles", "Tiles run through the model.", ["line"], registry=r
        )
        self.rejected = Counter(
            "defectscan_rejected",
            "Rejected inputs by reason (the error kind).",
            ["line", "reason"],
            registry=r,
        )
        self.defects = Counter(
            "defectscan_defects", "Defects found, by class.", ["line", "class"], registry=r
        )
        self.stage_seconds = Histogram(
            "defectscan_stage_seconds",
            "Latency of one image in each pipeline stage (decode, infer, post, store).",
            ["line", "stage"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.capture_to_commit = Histogram(
            "defectscan_capture_to_commit_seconds",
            "From the image's capture time to its database commit.",
            ["line"],
            buckets=LAG_BUCKETS,
            registry=r,
        )
        self.batch_seconds = Histogram(
            "defectscan_batch_seconds",
            "Wall time of one service-loop batch (claim to ack).",
            ["line"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_images = Histogram(
            "defectscan_batch_images",
            "Images in one service-loop batch.",
            ["line"],
            buckets=_BATCH_SIZE_BUCKETS,
            registry=r,
        )
        self.queue_waiting = Gauge(
            "defectscan_queue_waiting",
            "Images waiting: files in the camera folder, or stream entries not yet delivered.",
            ["line"],
            registry=r,
        )
        self.queue_pending = Gauge(
            "defectscan_queue_pending",
            "Stream entries delivered to a consumer but not yet acknowledged.",
            ["line"],
            registry=r,
        )
        self.archive_bytes = Gauge(
            "defectscan_archive_bytes", "Size of the image archive in bytes.", registry=r
        )
        self.archive_files = Gauge(
            "defectscan_archive_files", "Images in the image archive.", registry=r
        )
        self.model = Info(
            "defectscan_model",
            "The model version a line serves, its engine and device.",
            ["line"],
            registry=r,
        )
        self.plant_faults = Counter(
            "defectscan_plant_faults",
            "Faults of the plant (not of the images) that paused the line, by kind.",
            ["line", "kind"],
            registry=r,
        )
        self.line_paused = Gauge(
            "defectscan_line_paused",
            "1 while the line waits out a plant fault before trying again.",
            ["line"],
            registry=r,
        )
        self.dead_letter_dropped = Gauge(
            "defectscan_dead_letter_dropped",
            "Entries pushed off the line's capped dead-letter stream.",
            ["line"],
            registry=r,
        )
        self.engine_state = Gauge(
            "defectscan_engine_state",
            "1 for what a line's background engine work is doing (exporting, gathering, "
            "quantising, int8, kept, failed, off), 0 for the others.",
            ["line", "state"],
            registry=r,
        )
        self.int8_failures = Counter(
            "defectscan_int8_failures",
            "INT8 engines quantised from the line's images that failed parity (or export).",
            ["line"],
            registry=r,
        )
        self.engine_switches = Counter(
            "defectscan_engine_switches",
            "Faster engines swapped in between batches, by the engine switched to.",
            ["line", "engine"],
            registry=r,
        )
        self.line_behind = Gauge(
            "defectscan_line_behind",
            "1 while the line's backlog keeps growing: images arrive faster than inspected.",
            ["line"],
            registry=r,
        )
        self.drift_state = Gauge(
            "defectscan_drift_state",
            "A camera's drift state after its last window: 0 ok, 1 warning, 2 critical.",
            ["line", "camera"],
            registry=r,
        )
        self.drift_statistic = Gauge(
            "defectscan_drift_statistic",
            "A camera's last drift window: mean_shift, novelty, max_ratio (to its threshold).",
            ["line", "camera", "statistic"],
            registry=r,
        )
        self._server: Any = None
        self._thread: threading.Thread | None = None
        #: Why ``/metrics`` could not be served (None while serving or never asked to).
        self.bind_error: str | None = None

    # ----------------------------------------------------------------------- observations

    def observe_result(
        self,
        *,
        line: str | None,
        camera: str | None,
        status: str,
        verdict: str | None,
        error_kind: str | None,
        defect_classes: Sequence[str],
        tiles: int,
        stage_ms: Mapping[str, float],
        capture_to_commit_s: float | None,
    ) -> None:
        """Count one inspected (or rejected) image; call it after its commit."""
        line_label = line or ""
        self.images.labels(
            line=line_label, camera=camera or "", status=status, verdict=verdict or "none"
        ).inc()
        if status == "rejected":
            self.rejected.labels(line=line_label, reason=error_kind or "unknown").inc()
        if tiles:
            self.tiles.labels(line=line_label).inc(tiles)
        for name in defect_classes:
            self.defects.labels(line=line_label, **{"class": name}).inc()
        for stage, ms in stage_ms.items():
            if stage == "total":  # the sum of the stages: a histogram of its own adds nothing
                continue
            self.stage_seconds.labels(line=line_label, stage=stage).observe(ms / 1e3)
        if capture_to_commit_s is not None:
            self.capture_to_commit.labels(line=line_label).observe(max(0.0, capture_to_commit_s))

    def observe_batch(self, *, line: str | None, size: int, seconds: float) -> None:
        """Record one service-loop batch: how many images, how long from claim to ack."""
        self.batch_seconds.labels(line=line or "").observe(seconds)
        self.batch_images.labels(line=line or "").observe(size)

    def set_queue(self, *, line: str | None, waiting: int, pending: int | None = None) -> None:
        """Queue lag: images not yet delivered, and (Redis) delivered but not acknowledged."""
        self.queue_waiting.labels(line=line or "").set(waiting)
        if pending is not None:
            self.queue_pending.labels(line=line or "").set(pending)

    def set_archive(self, bytes_: int, files: int) -> None:
        """The image archive's current size."""
        self.archive_bytes.set(bytes_)
        self.archive_files.set(files)

    def set_model(self, *, line: str | None, version: str, engine: str, device: str) -> None:
        """The model version a line serves (an info metric)."""
        self.model.labels(line=line or "").info(
            {"version": version, "engine": engine, "device": device}
        )

    def observe_plant_fault(self, *, line: str | None, kind: str) -> None:
        """Count one fault of the plant that paused the line."""
        self.plant_faults.labels(line=line or "", kind=kind).inc()

    def set_paused(self, *, line: str | None, paused: bool) -> None:
        """Whether the line is paused by a plant fault."""
        self.line_paused.labels(line=line or "").set(1 if paused else 0)

    def set_dead_letter_dropped(self, *, line: str | None, dropped: int) -> None:
        """Entries the capped dead-letter stream has dropped so far."""
        self.dead_letter_dropped.labels(line=line or "").set(dropped)

    def set_engine_state(self, *, line: str | None, state: str) -> None:
        """What the line's background engine work is doing (one state at 1)."""
        for name in ENGINE_STATES:
            self.engine_state.labels(line=line or "", state=name).set(1 if name == state else 0)

    def observe_int8_failure(self, *, line: str | None) -> None:
        """Count one INT8 engine that failed parity."""
        self.int8_failures.labels(line=line or "").inc()

    def observe_engine_switch(self, *, line: str | None, engine: str) -> None:
        """Count one engine swapped in between batches."""
        self.engine_switches.labels(line=line or "", engine=engine).inc()

    def set_behind(self, *, line: str | None, behind: bool) -> None:
        """Whether the line's backlog keeps growing."""
        self.line_behind.labels(line=line or "").set(1 if behind else 0)

    # ----------------------------------------------------------------------- HTTP endpoint

    def set_drift(
        self, *, line: str | None, camera: str | None, state: str, values: Mapping[str, float]
    ) -> None:
        """A camera's drift window closed: its state and headline statistics."""
        labels = {"line": line or "", "camera": camera or ""}
        self.drift_state.labels(**labels).set({"ok": 0, "warning": 1, "critical": 2}[state])
        for name, value in values.items():
            self.drift_statistic.labels(**labels, statistic=name).set(value)

    def serve(self, port: int, addr: str = "127.0.0.1") -> tuple[Any, threading.Thread] | None:
        """Serve ``/metrics`` on ``addr:port`` (0 picks a free port) in a daemon thread.

        Returns None when the port cannot be bound (taken by another monitor, not allowed):
        the reason is logged as an error and kept in :attr:`bind_error`; the metrics still
        count, they are only not served.
        """
        if self._server is not None:
            msg = "metrics are already served; call stop() first"
            raise RuntimeError(msg)
        try:
            server, thread = start_http_server(port, addr=addr, registry=self.registry)
        except OSError as exc:
            self.bind_error = (
                f"cannot serve Prometheus /metrics on {addr}:{port}: "
                f"{exc.strerror or exc}; inspection goes on without /metrics. Another process "
                "(a second monitor on this host?) holds the port: give each line its own "
                "(lines.<name>.metrics_port in the plant file, or --metrics-port), or 0 for none"
            )
            logger.error(self.bind_error)
            return None
        self._server, self._thread = server, thread
        self.bind_error = None
        logger.info("serving Prometheus metrics on http://%s:%d/metrics", addr, self.port)
        return server, thread

    @property
    def port(self) -> int | None:
        """The port ``/metrics`` listens on (None when not serving)."""
        if self._server is None:
            return None
        return int(self._server.server_address[1])

    def stop(self) -> None:
        """Stop serving ``/metrics`` (a no-op when not serving)."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)

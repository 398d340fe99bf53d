"""Drift in production: inspection results in, windows, database rows, events and gauges out.

- :func:`result_rows`: the drift inputs of inspected images (features and statistics from
  ``Inspector(drift_features=True)``; output flags from the verdict and the decision margin).
- :func:`inspect_rows`: run records through an inspector and keep their drift inputs (the
  reference build and the replay of stored images).
- :class:`DriftTracker`: per (line, camera), a :class:`~defectscan.drift.WindowCollector` and
  a :class:`~defectscan.drift.CameraDrift` against the newest stored reference of the model
  version; each closed window is written to ``drift_windows`` (an ``events`` row when a
  camera's state rises) and to the Prometheus gauges. Cheap: no model pass of its own.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from defectscan.drift.alerts import CameraDrift, DriftState, WindowCollector, WindowResult
from defectscan.drift.reference import DriftReference, ImageRows
from defectscan.image_stats import STAT_NAMES
from defectscan.pipeline import InspectionResult, Inspector
from defectscan.sources.base import ImageRecord

__all__ = [
    "CLOSE_CALL_MARGIN",
    "CameraKey",
    "DriftMonitor",
    "DriftTracker",
    "inspect_rows",
    "load_reference",
    "output_names",
    "result_rows",
    "store_window",
]

log = logging.getLogger(__name__)

#: A peak this close to its class's decision threshold is a close call.
CLOSE_CALL_MARGIN = 0.1

CameraKey = tuple[str | None, str | None]  # (line, camera)


def output_names(class_names: Sequence[str]) -> tuple[str, ...]:
    """The output flags tracked per image: a fail per class, and a close call."""
    return (*(f"fail:{c}" for c in class_names), "close_call")


def _time(result: InspectionResult) -> float:
    when = result.record.captured_at or result.finished_at or datetime.now(UTC)
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def result_rows(results: Iterable[InspectionResult], class_names: Sequence[str]) -> ImageRows:
    """Drift inputs of the inspected images among ``results`` (rejected ones are skipped)."""
    times, feats, stats, outs = [], [], [], []
    for r in results:
        if r.status != "ok" or r.features is None or r.image_stats is None:
            continue
        flags = [float(any(d.class_name == c for d in r.defects)) for c in class_names]
        close = r.decision_margin is not None and r.decision_margin < CLOSE_CALL_MARGIN
        times.append(_time(r))
        feats.append(r.features)
        stats.append(r.image_stats)
        outs.append([*flags, float(close)])
    q = len(class_names) + 1
    if not times:
        return ImageRows(
            np.zeros(0), np.zeros((0, 0)), np.zeros((0, len(STAT_NAMES))), np.zeros((0, q))
        )
    return ImageRows(
        np.asarray(times, np.float64),
        np.asarray(feats, np.float64),
        np.asarray(stats, np.float64),
        np.asarray(outs, np.float64),
    )


def inspect_rows(inspector: Inspector, records: Iterable[ImageRecord]) -> ImageRows:
    """Run ``records`` through ``inspector`` (with drift features on) and keep drift inputs."""
    inspector.drift_features = True
    return result_rows(inspector.inspect(records), inspector.spec.class_names)


def load_reference(
    *, session: Any, model_version: str, line: str | None, camera: str | None
) -> tuple[int, DriftReference] | None:
    """The newest stored reference of a model version and camera."""
    from defectscan.store.drift_rows import latest_reference

    found = latest_reference(session=session, model_version=model_version, line=line, camera=camera)
    if found is None:
        return None
    return found[0], DriftReference.from_dict(found[1])


def store_window(
    *,
    session: Any,
    key: CameraKey,
    model_version: str,
    reference_id: int | None,
    result: WindowResult,
    previous_state: DriftState | None,
) -> int:
    """Write a closed window (and its event, if its state rose); returns the row id."""
    from defectscan.store.drift_rows import save_drift_window

    row = save_drift_window(
        session=session,
        line=key[0],
        camera=key[1],
        model_version=model_version,
        reference_id=reference_id,
        window_start=datetime.fromtimestamp(result.start, UTC),
        window_end=datetime.fromtimestamp(result.end, UTC),
        n=result.n,
        statistics=result.statistics_json(),
        thresholds={k: round(v, 6) for k, v in result.thresholds.items()},
        state=result.state,
        hints=result.hints,
        previous_state=previous_state,
    )
    return int(row.id)


@dataclass
class _Camera:
    drift: CameraDrift | None
    reference_id: int | None
    collector: WindowCollector
    state: DriftState = "ok"


class DriftTracker:
    """Per-camera drift of one model version, fed by each batch of inspection results.

    ``references`` finds a camera's reference (None: that camera is not tracked until one is
    built); ``sink`` receives each closed window (the monitor writes it to the database).
    """

    def __init__(
        self,
        *,
        model_version: str,
        class_names: Sequence[str],
        references: Callable[[str | None, str | None], tuple[int, DriftReference] | None],
        sink: Callable[[CameraKey, WindowResult, int | None, DriftState], None] | None = None,
        metrics: Any = None,
        seconds: float = 600.0,
        min_images: int = 200,
        max_images: int = 1000,
    ) -> None:
        self.model_version = model_version
        self.class_names = tuple(class_names)
        self._references = references
        self._sink = sink
        self._metrics = metrics
        self._window = (seconds, min_images, max_images)
        self._cameras: dict[CameraKey, _Camera] = {}

    def _camera(self, key: CameraKey) -> _Camera:
        cam = self._cameras.get(key)
        if cam is None:
            found = self._references(*key)
            seconds, lo, hi = self._window
            collector = WindowCollector(seconds=seconds, min_images=lo, max_images=hi)
            if found is None:
                log.info("no drift reference for %s camera %s: not tracked", key[0], key[1])
                cam = _Camera(None, None, collector)
            else:
                cam = _Camera(CameraDrift(found[1]), found[0], collector)
            self._cameras[key] = cam
        return cam

    def observe(self, results: Iterable[InspectionResult]) -> list[tuple[CameraKey, WindowResult]]:
        """Feed a batch's results; returns the windows it closed."""
        by_key: dict[CameraKey, list[InspectionResult]] = {}
        for r in results:
            by_key.setdefault((r.record.line, r.record.camera), []).append(r)
        closed = []
        for key, group in by_key.items():
            cam = self._camera(key)
            if cam.drift is None:
                continue
            rows = result_rows(sorted(group, key=_time), self.class_names)
            if len(rows) == 0 or rows.features.shape[1] != cam.drift.reference.mean.shape[0]:
                continue
            for window in cam.collector.add(rows):
                result = cam.drift.evaluate(window)
                previous, cam.state = cam.state, result.state
                if self._sink is not None:
                    self._sink(key, result, cam.reference_id, previous)
                set_drift = getattr(self._metrics, "set_drift", None)
                if set_drift is not None:
                    set_drift(
                        line=key[0],
                        camera=key[1],
                        state=result.state,
                        values={
                            "mean_shift": result.values["mean_shift"],
                            "novelty": result.values["novelty"],
                            "max_ratio": max(
                                (
                                    abs(result.values.get(k, 0.0)) / t
                                    for k, t in result.thresholds.items()
                                ),
                                default=0.0,
                            ),
                        },
                    )
                closed.append((key, result))
        return closed


class DriftMonitor:
    """A line monitor's drift: one :class:`DriftTracker` per model version, stored windows.

    Features are asked of the inspector only while the running model version has a reference
    (checked again every ``recheck_s``): without one there is nothing to compare with, and the
    line pays nothing. A failure here is logged and never stops inspection.
    """

    def __init__(
        self,
        sessions: Callable[[], Any],
        *,
        metrics: Any = None,
        seconds: float = 600.0,
        min_images: int = 200,
        max_images: int = 1000,
        recheck_s: float = 600.0,
    ) -> None:
        self._sessions = sessions
        self._metrics = metrics
        self._window = (seconds, min_images, max_images)
        self.recheck_s = recheck_s
        self._tracker: DriftTracker | None = None
        self._wanted: dict[str, tuple[bool, float]] = {}
        self.windows_written = 0

    def wants_features(self, model_version: str) -> bool:
        """Whether the inspector should compute drift features for this model version."""
        from defectscan.store.drift_rows import has_reference

        now = time.monotonic()
        cached = self._wanted.get(model_version)
        if cached is not None and now - cached[1] < self.recheck_s:
            return cached[0]
        try:
            with self._sessions() as session:
                found = has_reference(session=session, model_version=model_version)
        except Exception:  # the database's faults are the writer's to report, not ours
            log.warning("drift: could not look up references", exc_info=True)
            found = cached[0] if cached is not None else False
        if cached is not None and found and not cached[0]:
            self._tracker = None  # a reference appeared: cameras look theirs up again
        self._wanted[model_version] = (found, now)
        return found

    def _references(
        self, model_version: str
    ) -> Callable[[str | None, str | None], tuple[int, DriftReference] | None]:
        def find(line: str | None, camera: str | None) -> tuple[int, DriftReference] | None:
            with self._sessions() as session:
                return load_reference(
                    session=session, model_version=model_version, line=line, camera=camera
                )

        return find

    def _sink(
        self, key: CameraKey, result: WindowResult, reference_id: int | None, previous: DriftState
    ) -> None:
        assert self._tracker is not None
        with self._sessions() as session, session.begin():
            store_window(
                session=session,
                key=key,
                model_version=self._tracker.model_version,
                reference_id=reference_id,
                result=result,
                previous_state=previous,
            )
        self.windows_written += 1

    def observe(
        self, model_version: str, class_names: Sequence[str], results: Iterable[InspectionResult]
    ) -> list[tuple[CameraKey, WindowResult]]:
        """Feed committed results of a batch; returns the windows that closed."""
        try:
            if self._tracker is None or self._tracker.model_version != model_version:
                self._tracker = DriftTracker(
                    model_version=model_version,
                    class_names=class_names,
                    references=self._references(model_version),
                    sink=self._sink,
                    metrics=self._metrics,
                    seconds=self._window[0],
                    min_images=self._window[1],
                    max_images=self._window[2],
                )
            return self._tracker.observe(results)
        except Exception:
            log.warning("drift: a batch could not be tracked", exc_info=True)
            return []

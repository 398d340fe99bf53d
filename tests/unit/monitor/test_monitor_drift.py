"""A running line monitor tracks drift per camera from the features of its own pass.

The golden checkpoint inspects a camera folder; a reference for its model version and the
camera is in the database. Dimmed parts (lamp at 80%) close windows that go to warning or
critical, each window is a ``drift_windows`` row, the rise is a ``drift`` event, and the
Prometheus gauges show the camera's state. Without a reference the monitor asks the engine
for no features at all.
"""

from __future__ import annotations

import os
from pathlib import Path

import sqlalchemy as sa

from defectscan.drift import fit_reference
from defectscan.drift.tracking import DriftMonitor, output_names
from defectscan.metrics import MonitorMetrics
from defectscan.monitor import LineMonitor, ModelProvider
from defectscan.pipeline import Inspector
from defectscan.sources.folder import FolderSource
from defectscan.store.db import make_engine, session_factory, upgrade_to_head
from defectscan.store.drift_rows import save_reference
from defectscan.store.operations import recent_events
from helpers.drift_line import GOLDEN, inspector, line_records, line_rows


def _load(path: str) -> Inspector:
    return Inspector.from_checkpoint(path, backend="torch", device="cpu", batch_size=32)


def _parts(folder: Path, n: int, shift: str | None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for rec in line_records(21, n, start_s=10_000.0, shift=shift):
        assert rec.data is not None
        assert rec.captured_at is not None
        path = folder / f"p{int(rec.id.split('-')[1]):05d}.png"
        path.write_bytes(rec.data)
        t = rec.captured_at.timestamp()
        os.utime(path, (t, t))


def _monitor(url: str, folder: Path, metrics: MonitorMetrics) -> LineMonitor:
    engine = make_engine(url)
    upgrade_to_head(engine)
    source = FolderSource(folder, line="L1", camera="cam1", stable_polls=1, watch=False)
    sessions = session_factory(engine, write=True)
    models = ModelProvider(str(GOLDEN), load=_load, sessions=sessions, line="L1", poll_s=0.0)
    drift = DriftMonitor(sessions, metrics=metrics, min_images=100, max_images=100)
    return LineMonitor(
        source, models, engine, line="L1", batch_size=25, claim_timeout=0.1, drift=drift
    )


def test_monitor_writes_drift_windows_events_and_gauges(tmp_path: Path, sqlite_url: str) -> None:
    insp = inspector()
    rows = line_rows(insp, 1, 600)
    ref = fit_reference(rows, output_names=output_names(insp.spec.class_names), min_images=400)
    engine = make_engine(sqlite_url)
    upgrade_to_head(engine)
    with session_factory(engine, write=True).begin() as s:
        save_reference(
            ref.to_dict(), session=s, model_version=insp.model_version, line="L1", camera="cam1"
        )
    engine.dispose()
    camera = tmp_path / "camera"
    _parts(camera, 300, "brightness_0.8")
    metrics = MonitorMetrics()
    monitor = _monitor(sqlite_url, camera, metrics)
    try:
        summary = monitor.run(idle_exit=0.5)
        assert monitor.models.inspector.drift_features
    finally:
        monitor.close()
    assert summary.images == 300
    engine = make_engine(sqlite_url)
    with engine.connect() as c:
        windows = c.execute(
            sa.text("SELECT n, state, hints FROM drift_windows ORDER BY window_end")
        ).all()
    assert [w[0] for w in windows] == [100, 100, 100]
    assert windows[-1][1] in ("warning", "critical")
    assert "lighting: brightness down" in windows[-1][2]
    with session_factory(engine)() as s:
        events = list(recent_events(session=s, kind="drift"))
    engine.dispose()
    assert events
    assert events[0].level in ("warning", "critical")
    assert events[0].details is not None
    assert events[0].details["camera"] == "cam1"
    state = metrics.registry.get_sample_value(
        "defectscan_drift_state", {"line": "L1", "camera": "cam1"}
    )
    assert state in (1.0, 2.0)


def test_without_a_reference_no_features_are_computed(tmp_path: Path, sqlite_url: str) -> None:
    camera = tmp_path / "camera"
    _parts(camera, 30, None)
    monitor = _monitor(sqlite_url, camera, MonitorMetrics())
    try:
        summary = monitor.run(idle_exit=0.5)
        assert monitor.models.inspector.drift_features is False
    finally:
        monitor.close()
    assert summary.images == 30
    engine = make_engine(sqlite_url)
    with engine.connect() as c:
        assert c.execute(sa.text("SELECT count(*) FROM drift_windows")).scalar() == 0
    engine.dispose()

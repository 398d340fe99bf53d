"""The operator console's controls as a running monitor sees them between batches: a paused
line claims nothing and resumes where it stopped; a threshold rule overrides the plant file's
from the next batch on, like a champion swap."""

from __future__ import annotations

from pathlib import Path

import pytest

from defectscan.config import LineConfig
from defectscan.monitor import LineMonitor, ModelProvider
from defectscan.monitor_controls import ConsoleControls
from defectscan.pipeline import Inspector
from defectscan.sources.folder import FolderSource
from defectscan.store.db import make_engine, session_factory, upgrade_to_head
from defectscan.store.line_rules import apply_threshold_rule, set_line_paused
from defectscan.store.operations import recent_events
from helpers.line import oracle_checkpoint, rows, write_parts


def _load(path: str) -> Inspector:
    return Inspector.from_checkpoint(path, backend="torch", device="cpu", batch_size=8)


def _monitor(url: str, folder: Path, model: Path, *, batch_size: int = 3) -> LineMonitor:
    engine = make_engine(url)
    upgrade_to_head(engine)
    source = FolderSource(folder, line="L1", camera="cam1", stable_polls=1, watch=False)
    sessions = session_factory(engine, write=True)
    models = ModelProvider(str(model), load=_load, sessions=sessions, line="L1", poll_s=0.0)
    monitor = LineMonitor(
        source, models, engine, line="L1", batch_size=batch_size, claim_timeout=0.1
    )
    monitor.controls = ConsoleControls(
        sessions, "L1", base=LineConfig(name="L1"), event=monitor._event, poll_s=0.0
    )
    return monitor


@pytest.fixture
def model(tmp_path: Path) -> Path:
    return oracle_checkpoint(tmp_path / "oracle.safetensors")


def test_a_paused_line_claims_nothing_and_resumes_where_it_stopped(
    tmp_path: Path, db_url: str, model: Path
) -> None:
    camera = tmp_path / "camera"
    write_parts(camera, 6)
    monitor = _monitor(db_url, camera, model)
    sessions = monitor.controls.sessions  # type: ignore[union-attr]
    try:
        assert monitor.step() is not None  # one batch of 3 before the pause
        assert rows(db_url) == [(3,)]
        with sessions.begin() as s:
            set_line_paused("L1", True, who="operator", session=s)
        for _ in range(3):
            outcome = monitor.step()
            assert outcome is not None  # paused is not idle
            assert outcome.inspected == 0
        assert monitor.console_paused
        assert rows(db_url) == [(3,)]
        assert len(list(camera.glob("*.png"))) == 3  # the rest waits in the camera folder
        with sessions.begin() as s:
            set_line_paused("L1", False, who="operator", session=s)
        summary = monitor.run(idle_exit=0.5)
    finally:
        monitor.close()
    assert not monitor.console_paused
    assert summary.images == 3
    assert rows(db_url) == [(6,)]
    with sessions() as s:
        kinds = [e.kind for e in recent_events(session=s, line="L1")]
    assert "monitor_paused" in kinds
    assert "monitor_resumed" in kinds


def test_a_threshold_rule_overrides_the_plant_file_between_batches(
    tmp_path: Path, db_url: str, model: Path
) -> None:
    camera = tmp_path / "camera"
    write_parts(camera, 6, fail_every=1)  # every part has a dark rectangle: all fail
    monitor = _monitor(db_url, camera, model)
    sessions = monitor.controls.sessions  # type: ignore[union-attr]
    try:
        monitor.step()
        assert rows(db_url, "SELECT verdict, count(*) FROM inspections GROUP BY verdict") == [
            ("fail", 3)
        ]
        with sessions.begin() as s:
            # 1 switches the class off: nothing is a defect any more
            apply_threshold_rule("L1", "dark", 1.0, who="engineer", reason="trial", session=s)
        monitor.run(idle_exit=0.5)
        inspector = monitor.models.inspector
    finally:
        monitor.close()
    verdicts = dict(
        rows(db_url, "SELECT verdict, count(*) FROM inspections GROUP BY verdict")  # type: ignore[arg-type]
    )
    assert verdicts == {"fail": 3, "pass": 3}
    assert inspector.postprocess_config("L1").thresholds == (1.0,)
    with sessions() as s:
        applied = [e for e in recent_events(session=s, line="L1") if e.kind == "threshold_applied"]
    assert applied
    assert "dark 1.000 (v1)" in applied[0].message


def test_a_rule_for_a_class_the_model_lacks_is_refused(
    tmp_path: Path, db_url: str, model: Path
) -> None:
    camera = tmp_path / "camera"
    write_parts(camera, 3, fail_every=1)
    monitor = _monitor(db_url, camera, model)
    sessions = monitor.controls.sessions  # type: ignore[union-attr]
    with sessions.begin() as s:
        apply_threshold_rule("L1", "scratch", 0.9, who="engineer", reason="x", session=s)
    try:
        monitor.run(idle_exit=0.5)
    finally:
        monitor.close()
    assert rows(db_url, "SELECT verdict, count(*) FROM inspections GROUP BY verdict") == [
        ("fail", 3)
    ]
    with sessions() as s:
        kinds = [e.kind for e in recent_events(session=s, line="L1")]
    assert "threshold_refused" in kinds

"""A line whose backlog keeps growing says so: an event, ``defectscan_line_behind``, health.

And ``defectscan health`` shows the engine each line's monitor inspects with.
"""

from __future__ import annotations

from pathlib import Path

from prometheus_client import generate_latest
from sqlalchemy.orm import Session

from defectscan.health import check_lines, run_checks
from defectscan.metrics import MonitorMetrics
from defectscan.monitor import LineMonitor, ModelProvider
from defectscan.pipeline import Inspector
from defectscan.sources.folder import FolderSource
from defectscan.store.db import make_engine, session_factory, upgrade_to_head
from defectscan.store.operations import recent_events
from helpers.line import oracle_checkpoint, write_parts

__all__: list[str] = []


def _load(path: str) -> Inspector:
    return Inspector.from_checkpoint(path, backend="torch", device="cpu", batch_size=8)


def _behind(metrics: MonitorMetrics) -> float | None:
    for family in metrics.registry.collect():
        for s in family.samples:
            if s.name == "defectscan_line_behind" and s.labels.get("line") == "L1":
                return float(s.value)
    return None


def test_a_growing_backlog_is_reported_then_its_end(tmp_path: Path, sqlite_url: str) -> None:
    camera = tmp_path / "camera"
    camera.mkdir()
    model = oracle_checkpoint(tmp_path / "oracle.safetensors")
    engine = make_engine(sqlite_url)
    upgrade_to_head(engine)
    metrics = MonitorMetrics()
    monitor = LineMonitor(
        FolderSource(camera, line="L1", camera="cam1", stable_polls=1, watch=False),
        ModelProvider(
            str(model), load=_load, sessions=session_factory(engine, write=True), line="L1"
        ),
        engine,
        line="L1",
        batch_size=2,
        claim_timeout=0.05,
        metrics=metrics,
    )
    monitor.backlog_every_s = 0.0  # look at every claim (production: every 5 s)
    assert check_lines(sqlite_url) is None  # no monitor has reported yet: no line to show
    # Arrivals outpace the line: each look sees more waiting than the one before.
    for i in range(4):
        write_parts(camera, 3, start=10 * i)
        monitor.step()  # claims and inspects 2 of the 3 new ones
    assert monitor.behind
    assert _behind(metrics) == 1.0
    lines = check_lines(sqlite_url)
    assert lines is not None
    assert lines.ok
    assert lines.warning
    assert "L1: torch, FALLING BEHIND" in lines.detail
    # The line drains its backlog: caught up.
    monitor.run(idle_exit=0.3)
    assert not monitor.behind
    assert _behind(metrics) == 0.0
    with Session(engine) as session:
        kinds = [e.kind for e in recent_events(session=session)]
    assert kinds.count("line_behind") == 1
    assert kinds.count("line_caught_up") == 1
    lines = check_lines(sqlite_url)
    assert lines is not None
    assert not lines.warning
    assert lines.detail == "L1: torch, keeping up"
    assert "defectscan_line_behind" in generate_latest(metrics.registry).decode()
    monitor.close()


def test_health_lists_the_lines_check_only_when_asked_or_reported(
    tmp_path: Path, sqlite_url: str
) -> None:
    from defectscan.config import Settings

    engine = make_engine(sqlite_url)
    upgrade_to_head(engine)
    engine.dispose()
    settings = Settings(database_url=sqlite_url, archive_dir=tmp_path, archive_min_free_gb=0)
    names = [r.name for r in run_checks(settings, only=["database", "lines"])]
    assert names == ["database"]  # nothing reported: nothing to show

"""Exactly one row per delivery, plant faults that charge no image, poison isolation, and the
champion a line follows: the line monitor in process, on a real camera folder and SQLite."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.orm import Session

from defectscan.archive import ArchivePolicy, ImageArchive
from defectscan.config import LineConfig
from defectscan.errors import ConfigError
from defectscan.metrics import MonitorMetrics
from defectscan.model.checkpoint import save_checkpoint
from defectscan.monitor import LineMonitor, ModelProvider
from defectscan.pipeline import Inspector
from defectscan.sources.base import ImageRecord
from defectscan.sources.folder import FolderSource
from defectscan.store.db import make_engine, session_factory, upgrade_to_head
from defectscan.store.model_versions import set_model_status
from defectscan.store.operations import recent_events
from defectscan.training.registry import register_checkpoint
from helpers.line import Crashy, oracle_checkpoint, part_bytes, rows, write_parts
from helpers.oracle import oracle_unet

LINES = {"L1": LineConfig(name="L1", thresholds={"dark": 0.5})}


def _load(path: str) -> Inspector:
    return Inspector.from_checkpoint(path, backend="torch", device="cpu", batch_size=8, lines=LINES)


class RecordingFolder(FolderSource):
    """A camera folder that remembers what it handed back, and with what charge."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.released: list[tuple[list[str], bool]] = []

    def release(self, records: Sequence[ImageRecord], error: str, *, charge: bool = True) -> None:
        self.released.append(([r.meta.get("original", r.id) for r in records], charge))
        super().release(records, error, charge=charge)


def _monitor(
    url: str,
    folder: Path,
    model: str,
    *,
    archive: ImageArchive | None = None,
    load=_load,
    batch_size: int = 4,
    metrics: MonitorMetrics | None = None,
) -> LineMonitor:
    engine = make_engine(url)
    upgrade_to_head(engine)
    source = RecordingFolder(
        folder, line="L1", camera="cam1", stable_polls=1, watch=False, max_deliveries=3
    )
    models = ModelProvider(
        model, load=load, sessions=session_factory(engine, write=True), line="L1", poll_s=0.0
    )
    return LineMonitor(
        source,
        models,
        engine,
        line="L1",
        batch_size=batch_size,
        claim_timeout=0.2,
        archive=archive,
        metrics=metrics,
        cameras=["cam1"],
        pause_min_s=0.01,
        pause_max_s=0.02,
    )


def _events(url: str) -> list[str]:
    engine = make_engine(url)
    with Session(engine) as session:
        kinds = [e.kind for e in recent_events(session=session, limit=1000)]
    engine.dispose()
    return kinds


def _promote(url: str, checkpoint: Path) -> str:
    engine = make_engine(url)
    upgrade_to_head(engine)
    with session_factory(engine, write=True).begin() as session:
        version = register_checkpoint(checkpoint, session=session).version
        set_model_status(version, "champion", session=session)
    engine.dispose()
    return version


def _by_version(url: str) -> dict[object, object]:
    return dict(
        rows(
            url,
            "SELECT m.version, count(*) FROM inspections i JOIN model_versions m "
            "ON m.id = i.model_version_id GROUP BY m.version",
        )
    )


def _sample(metrics: MonitorMetrics, name: str, **labels: str) -> float | None:
    text = generate_latest(metrics.registry).decode()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return None


# --------------------------------------------------------------------------- point 2


def test_two_parts_with_identical_bytes_each_get_their_row(tmp_path: Path, sqlite_url: str) -> None:
    camera = tmp_path / "camera"
    camera.mkdir()
    twin = part_bytes(4, fail=True)
    (camera / "a.png").write_bytes(twin)
    (camera / "b.png").write_bytes(twin)
    (camera / "c.png").write_bytes(part_bytes(5, fail=False))
    model = oracle_checkpoint(tmp_path / "oracle.safetensors")
    monitor = _monitor(sqlite_url, camera, str(model))
    summary = monitor.run(idle_exit=0.5)
    monitor.close()
    assert summary.images == 3
    got = rows(sqlite_url, "SELECT uri, verdict FROM inspections ORDER BY uri")
    assert [(Path(str(u)).name, v) for u, v in got] == [
        ("a.png", "fail"),
        ("b.png", "fail"),
        ("c.png", "pass"),
    ]
    assert rows(sqlite_url, "SELECT count(DISTINCT source_key) FROM inspections") == [(3,)]
    assert sorted(p.name for p in (camera / "done").rglob("*.png")) == ["a.png", "b.png", "c.png"]


def test_committed_but_unsettled_delivery_is_settled_not_reinspected_after_a_switch(
    tmp_path: Path, sqlite_url: str
) -> None:
    """The folder's ack fails after the commit (done/ unusable), a new champion comes in: the
    files come back and are settled under the rows they have, not inspected again."""
    v1 = _promote(sqlite_url, oracle_checkpoint(tmp_path / "v1.safetensors", gain=60.0))
    camera = tmp_path / "camera"
    write_parts(camera, 4)
    monitor = _monitor(sqlite_url, camera, "champion")
    (camera / "done").rmdir()
    (camera / "done").write_text("not a folder: the settle step cannot move files into it")
    assert monitor.step() is not None
    assert rows(sqlite_url) == [(4,)]  # committed ...
    assert len(list((camera / "processing").glob("*.png"))) == 4  # ... and not settled
    assert monitor.source.released[-1][1] is False  # a plant fault: no delivery charged

    v2 = _promote(sqlite_url, oracle_checkpoint(tmp_path / "v2.safetensors", gain=61.0))
    (camera / "done").unlink()
    time.sleep(0.05)  # the pause of the plant fault
    summary = monitor.run(idle_exit=0.5)
    write_parts(camera, 2, start=4)
    monitor.run(idle_exit=0.5)
    monitor.close()

    assert monitor.models.inspector.model_version == v2
    assert summary.duplicates == 4
    assert _by_version(sqlite_url) == {v1: 4, v2: 2}
    assert rows(sqlite_url, "SELECT count(DISTINCT sha256) FROM inspections") == [(6,)]
    assert len(list((camera / "done").rglob("*.png"))) == 6
    assert not list((camera / "processing").glob("*.png"))
    kinds = _events(sqlite_url)
    assert "plant_fault" in kinds
    assert "plant_fault_cleared" in kinds
    assert "model_switch" in kinds


# --------------------------------------------------------------------------- point 5


def test_one_at_a_time_isolation_stays_on_until_the_failed_records_are_settled(
    tmp_path: Path, sqlite_url: str
) -> None:
    camera = tmp_path / "camera"
    parts = write_parts(camera, 9)
    for i, p in enumerate(parts):  # a strict claim order: part 0 first
        os.utime(p, ns=(1_000_000_000 * (i + 1), 1_000_000_000 * (i + 1)))
    parts[2].rename(camera / "poison.png")

    def load(path: str) -> Inspector:
        return Crashy.wrap(_load(path))

    model = oracle_checkpoint(tmp_path / "oracle.safetensors")
    monitor = _monitor(sqlite_url, camera, str(model), load=load)
    summary = monitor.run(idle_exit=1.0)
    monitor.close()
    released = monitor.source.released

    assert rows(sqlite_url) == [(9,)]
    poison = rows(sqlite_url, "SELECT error_kind FROM inspections WHERE uri LIKE '%poison%'")
    assert poison == [("poison",)]
    assert summary.failed_batches == len(released) >= 3
    # Only the first failed batch held good parts: after it the poison part failed alone,
    # every time, and no later neighbour was charged with it.
    first, *later = released
    assert "poison.png" in first[0]
    assert all(names == ["poison.png"] for names, _ in later), released
    assert all(charged for _, charged in released)
    assert sorted(p.name for p in (camera / "done").rglob("*.png")) == sorted(
        p.name for p in parts if p.name != parts[2].name
    )


def test_an_unwritable_archive_pauses_the_line_and_quarantines_no_image(
    tmp_path: Path, sqlite_url: str
) -> None:
    camera = tmp_path / "camera"
    write_parts(camera, 5)
    archive_root = tmp_path / "archive"
    archive_root.write_text("the archive volume is not mounted")  # every write fails
    archive = ImageArchive(archive_root, ArchivePolicy(pass_share=1.0))
    metrics = MonitorMetrics()
    model = oracle_checkpoint(tmp_path / "oracle.safetensors")
    monitor = _monitor(sqlite_url, camera, str(model), archive=archive, metrics=metrics)
    faults = 0
    deadline = time.monotonic() + 20
    while faults < 6 and time.monotonic() < deadline:  # twice max_deliveries, and more
        monitor.step()
        faults = monitor.plant_faults
    assert faults == 6
    assert monitor.paused
    assert rows(sqlite_url) == [(0,)]
    assert _sample(metrics, "defectscan_line_paused", line="L1") == 1
    assert _sample(metrics, "defectscan_plant_faults_total", line="L1", kind="archive") == 6
    assert all(charged is False for _, charged in monitor.source.released)

    archive_root.unlink()  # the operator mounts the volume: the line resumes by itself
    archive_root.mkdir()
    summary = monitor.run(idle_exit=0.5)
    monitor.close()
    assert summary.images == 5
    assert rows(sqlite_url, "SELECT status, count(*) FROM inspections GROUP BY status") == [
        ("ok", 5)
    ]
    assert not (camera / "rejected").exists() or not list((camera / "rejected").iterdir())
    assert archive.usage()[0] == 5
    assert _sample(metrics, "defectscan_line_paused", line="L1") == 0
    kinds = _events(sqlite_url)
    assert kinds.count("plant_fault") == 6
    assert kinds.count("plant_fault_cleared") == 1


# --------------------------------------------------------------------------- point 6


def _other_classes(path: Path, *, gain: float) -> Path:
    """An oracle checkpoint of the same model name whose one class is not called 'dark'."""
    net, spec = oracle_unet("sigmoid", gain=gain, tile=64, overlap=16)
    save_checkpoint(net, spec.replace(name="oracle", class_names=("scratch",)), path)
    return path


def test_a_champion_whose_classes_do_not_fit_the_line_is_refused(
    tmp_path: Path, sqlite_url: str
) -> None:
    v1 = _promote(sqlite_url, oracle_checkpoint(tmp_path / "v1.safetensors"))
    camera = tmp_path / "camera"
    write_parts(camera, 3)
    monitor = _monitor(sqlite_url, camera, "champion")
    monitor.run(idle_exit=0.3)
    _promote(sqlite_url, _other_classes(tmp_path / "v2.safetensors", gain=61.0))
    write_parts(camera, 3, start=3)
    summary = monitor.run(idle_exit=0.3)
    monitor.close()
    assert monitor.models.inspector.model_version == v1
    assert summary.failed_batches == 0
    assert _by_version(sqlite_url) == {v1: 6}
    assert "model_refused" in _events(sqlite_url)
    # and a monitor cannot start on it either
    engine = make_engine(sqlite_url)
    with pytest.raises(ConfigError, match="does not fit line 'L1'"):
        ModelProvider(
            str(tmp_path / "v2.safetensors"),
            load=_load,
            sessions=session_factory(engine, write=True),
            line="L1",
        )
    engine.dispose()


def test_plain_champion_follows_one_model_name(tmp_path: Path, sqlite_url: str) -> None:
    v1 = _promote(sqlite_url, oracle_checkpoint(tmp_path / "v1.safetensors"))
    camera = tmp_path / "camera"
    write_parts(camera, 2)
    monitor = _monitor(sqlite_url, camera, "champion")
    monitor.run(idle_exit=0.3)
    # another product's model is promoted: this line stays on its own model
    _promote(sqlite_url, oracle_checkpoint(tmp_path / "o.safetensors", gain=70.0, name="other"))
    write_parts(camera, 2, start=2)
    monitor.run(idle_exit=0.3)
    assert monitor.models.inspector.model_version == v1
    # a new champion of its own name is followed
    v2 = _promote(sqlite_url, oracle_checkpoint(tmp_path / "v2.safetensors", gain=61.0))
    write_parts(camera, 2, start=4)
    monitor.run(idle_exit=0.3)
    monitor.close()
    assert _by_version(sqlite_url) == {v1: 4, v2: 2}
    # two names with a champion and none chosen: refuse to guess
    engine = make_engine(sqlite_url)
    sessions = session_factory(engine, write=True)
    with pytest.raises(ConfigError, match="champion:NAME"):
        ModelProvider("champion", load=_load, sessions=sessions, line="L1")
    named = ModelProvider("champion:other", load=_load, sessions=sessions, line="L1")
    assert named.inspector.model_version.startswith("other-")
    named.inspector.close()
    engine.dispose()


def test_plant_file_line_ports_and_refusals_are_configuration() -> None:
    line = LineConfig(name="L2", metrics_port=9470)
    assert line.metrics_port == 9470
    with pytest.raises(ValueError, match="metrics_port"):
        LineConfig(name="L3", metrics_port=70000)


def test_fault_injection_is_off_unless_named(monkeypatch: pytest.MonkeyPatch) -> None:
    from defectscan.service import fault_point

    monkeypatch.delenv("DEFECTSCAN_FAULT", raising=False)
    fault_point("after_commit")  # no-op
    monkeypatch.setenv("DEFECTSCAN_FAULT", "before_inspect:3")
    fault_point("after_commit")  # another point: no-op
    monkeypatch.setenv("DEFECTSCAN_FAULT", "after_comit")
    with pytest.raises(ConfigError, match="before_inspect, after_commit, mid_swap"):
        fault_point("after_commit")

"""The line monitor's loop in process: rows, settling, archive, poison, reviews, model swaps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from defectscan.archive import ArchivePolicy, ImageArchive
from defectscan.monitor import LineMonitor, ModelProvider
from defectscan.pipeline import Inspector
from defectscan.sources.folder import FolderSource
from defectscan.store.db import make_engine, session_factory, upgrade_to_head
from defectscan.store.model_versions import set_model_status
from defectscan.store.operations import recent_events
from defectscan.training.registry import register_checkpoint
from defectscan.training.reviews import export_review_dataset, record_review
from helpers.line import Crashy, oracle_checkpoint, rows, write_parts


def _load(path: str) -> Inspector:
    return Inspector.from_checkpoint(path, backend="torch", device="cpu", batch_size=8)


def _monitor(
    url: str,
    folder: Path,
    model: str,
    *,
    archive: ImageArchive | None = None,
    load=_load,
    after: str = "move",
    batch_size: int = 4,
) -> LineMonitor:
    engine = make_engine(url)
    upgrade_to_head(engine)
    source = FolderSource(
        folder,
        line="L1",
        camera="cam1",
        stable_polls=1,
        watch=False,
        after=after,  # type: ignore[arg-type]
        max_deliveries=3,
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
    )


@pytest.fixture
def model(tmp_path: Path) -> Path:
    return oracle_checkpoint(tmp_path / "oracle.safetensors")


def test_every_image_one_row_files_settled_bad_input_quarantined(
    tmp_path: Path, db_url: str, model: Path
) -> None:
    camera = tmp_path / "camera"
    write_parts(camera, 10)
    (camera / "empty.png").write_bytes(b"")
    (camera / "truncated.png").write_bytes((camera / "part00001.png").read_bytes()[:200])
    (camera / "notes.png").write_bytes(b"this is not an image at all, just text")
    # The oracle's clean parts sit at p=0.4998, a hair under the 0.5 threshold: margin 0 keeps
    # close calls out so that the count below is the failed parts and the rejected inputs.
    archive = ImageArchive(tmp_path / "archive", ArchivePolicy(pass_share=0.0, margin=0.0))
    monitor = _monitor(db_url, camera, str(model), archive=archive)
    summary = monitor.run(idle_exit=0.5)
    monitor.close()

    assert summary.images == 13
    assert summary.rejected == 3
    assert summary.stopped_by == "idle"
    assert rows(db_url) == [(13,)]
    verdicts = dict(rows(db_url, "SELECT uri, coalesce(verdict, error_kind) FROM inspections"))
    for i in range(10):
        uri = (camera / f"part{i:05d}.png").resolve().as_uri()
        assert verdicts[uri] == ("fail" if i % 3 == 0 else "pass"), uri
    kinds = sorted(v for k, v in verdicts.items() if "part" not in k)
    assert kinds == ["empty", "not_an_image", "truncated"]
    assert sorted(p.name for p in (camera / "done").rglob("*.png")) == [
        f"part{i:05d}.png" for i in range(10)
    ]
    rejected = sorted(p.name for p in (camera / "rejected").glob("*.png"))
    assert rejected == ["empty.png", "notes.png", "truncated.png"]
    reason = json.loads((camera / "rejected" / "truncated.png.error.json").read_text())
    assert "truncated" in json.dumps(reason)
    assert not [p for p in (camera / "processing").iterdir() if p.is_file()]
    # the archive holds every failed part and the rejected inputs that had bytes
    files, _ = archive.usage()
    assert files == 4 + 2
    # run metrics: a window row and a run row
    metrics = rows(db_url, "SELECT flow_run_id, processed, rejected, failed FROM run_metrics")
    run_rows = [r for r in metrics if str(r[0]).endswith(":run")]
    assert run_rows
    assert run_rows[0][1:] == (13, 3, 4)


def test_a_crashing_image_is_redelivered_then_quarantined_neighbours_unharmed(
    tmp_path: Path, sqlite_url: str, model: Path
) -> None:
    camera = tmp_path / "camera"
    write_parts(camera, 7)
    (camera / "part00003.png").rename(camera / "poison.png")

    def load(path: str) -> Inspector:
        return Crashy.wrap(_load(path))

    monitor = _monitor(sqlite_url, camera, str(model), load=load)
    summary = monitor.run(idle_exit=1.0)
    monitor.close()
    assert summary.failed_batches >= 3
    assert rows(sqlite_url) == [(7,)]
    poison = rows(
        sqlite_url,
        "SELECT status, error_kind, error_message FROM inspections WHERE uri LIKE '%poison%'",
    )
    assert poison[0][:2] == ("rejected", "poison")
    assert (camera / "rejected" / "poison.png").is_file()
    assert len(list((camera / "done").rglob("*.png"))) == 6
    # the failures are on record for the operator
    engine = make_engine(sqlite_url)
    with Session(engine) as session:
        events = recent_events(session=session, kind="batch_failed")
    engine.dispose()
    assert events
    assert "segfault-like" in events[0].message


def test_review_of_a_monitored_part_whose_file_is_gone_becomes_training_data(
    tmp_path: Path, sqlite_url: str, model: Path
) -> None:
    camera = tmp_path / "camera"
    write_parts(camera, 3)  # part 0 fails
    archive = ImageArchive(tmp_path / "archive", ArchivePolicy(pass_share=0.0))
    monitor = _monitor(sqlite_url, camera, str(model), archive=archive, after="delete")
    monitor.run(idle_exit=0.5)
    monitor.close()
    assert not list(camera.glob("*.png"))
    assert not list((camera / "done").rglob("*.png"))
    (insp_id,) = rows(sqlite_url, "SELECT id FROM inspections WHERE verdict = 'fail'")[0]
    engine = make_engine(sqlite_url)
    with session_factory(engine, write=True).begin() as session:
        record_review(int(insp_id), "confirm", session=session, operator="ana")
    with session_factory(engine).begin() as session:
        export = export_review_dataset(tmp_path / "reviewed", session=session, archive=archive)
    engine.dispose()
    assert export.skipped == {}
    assert len(export.written) == 1
    assert export.written[0].suffix == ".png"
    import cv2

    mask = cv2.imread(str(tmp_path / "reviewed" / "masks" / (export.written[0].stem + ".png")), 0)
    assert mask is not None
    assert mask.max() == 1
    assert (mask == 1).sum() > 100


def test_new_champion_is_used_between_batches_and_a_broken_one_is_refused(
    tmp_path: Path, sqlite_url: str
) -> None:
    a = oracle_checkpoint(tmp_path / "a.safetensors", gain=60.0)
    b = oracle_checkpoint(tmp_path / "b.safetensors", gain=61.0)
    c = oracle_checkpoint(tmp_path / "c.safetensors", gain=62.0)
    engine = make_engine(sqlite_url)
    upgrade_to_head(engine)
    sessions = session_factory(engine, write=True)
    with sessions.begin() as session:
        va = register_checkpoint(a, session=session).version
        set_model_status(va, "champion", session=session)
    camera = tmp_path / "camera"
    write_parts(camera, 4)
    monitor = _monitor(sqlite_url, camera, "champion", batch_size=2)
    monitor.run(idle_exit=0.3)
    with sessions.begin() as session:
        vb = register_checkpoint(b, session=session).version
        set_model_status(vb, "champion", session=session)
    write_parts(camera, 4, start=4)
    monitor.run(idle_exit=0.3)
    # a champion whose file broke after registration: the running model stays
    with sessions.begin() as session:
        vc = register_checkpoint(c, session=session).version
        set_model_status(vc, "champion", session=session)
    c.write_bytes(b"corrupted on disk")
    write_parts(camera, 4, start=8)
    monitor.run(idle_exit=0.3)
    monitor.close()
    by_version = dict(
        rows(
            sqlite_url,
            "SELECT m.version, count(*) FROM inspections i JOIN model_versions m "
            "ON m.id = i.model_version_id GROUP BY m.version",
        )
    )
    assert by_version == {va: 4, vb: 8}
    assert rows(sqlite_url, "SELECT count(DISTINCT sha256) FROM inspections") == [(12,)]
    with Session(engine) as session:
        kinds = [e.kind for e in recent_events(session=session)]
    engine.dispose()
    assert "model_load_failed" in kinds
    assert "model_switch" in kinds

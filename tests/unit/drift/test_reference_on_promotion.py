"""A promoted model's drift reference is built from accepted production, and it scores novelty.

Through the real encoder of the golden checkpoint (``helpers.drift_line``), on SQLite.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from pathlib import Path

import cv2
import numpy as np
import sqlalchemy as sa

from conftest import make_inspection_record
from defectscan.archive import ImageArchive
from defectscan.store.review_queue import CandidateRow
from defectscan.store.schema import DriftReferenceRow, Event
from helpers.drift_line import GOLDEN, inspector, line_records


def test_promotion_queues_then_builds_the_reference_which_scores_novel_images(
    tmp_path: Path, sqlite_url: str
) -> None:
    from defectscan.drift.reference_jobs import build_pending_references
    from defectscan.drift.review_fill import archive_novelty
    from defectscan.store.db import make_engine, session_factory, upgrade_to_head
    from defectscan.store.inspection_writes import save_inspections
    from defectscan.training.registry import promote, register_checkpoint

    engine = make_engine(sqlite_url)
    upgrade_to_head(engine)
    sessions = session_factory(engine, write=True)
    archive = ImageArchive(tmp_path / "archive")
    with sessions.begin() as session:
        version = register_checkpoint(GOLDEN, session=session).version
        promote(version, session=session, force=True)
    now = datetime.now(UTC)
    records = []
    for i, rec in enumerate(line_records(1, 120)):
        assert rec.data is not None
        sha = archive.put(rec.data).name
        row = make_inspection_record(
            i, model_version=version, n_defects=0, finished_at=now + timedelta(seconds=i)
        )
        records.append(dataclasses.replace(row, sha256=sha, captured_at=rec.captured_at))
    with sessions.begin() as session:
        save_inspections(records, session=session)
    insp = inspector()
    out = build_pending_references(
        sessions=sessions,
        archive=archive,
        min_images=120,
        inspector_for=lambda v: insp if v == version else None,
        now=now + timedelta(minutes=5),
    )
    assert [(o["state"], o["camera"], o["images"]) for o in out] == [("built", "cam1", 120)]
    with sessions() as session:
        ref = session.scalars(sa.select(DriftReferenceRow)).one()
        assert (ref.model_version, ref.line, ref.camera, ref.n_images) == (
            version,
            "L1",
            "cam1",
            120,
        )
        kinds = [
            (e.details or {}).get("state")
            for e in session.scalars(sa.select(Event).where(Event.kind == "drift_reference"))
        ]
    assert kinds == ["queued", "built"]
    # The reference now scores novelty for the review queue: images unlike the line stand out.
    rng = np.random.default_rng(0)
    unlike = [
        cv2.imencode(".png", rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))[1].tobytes()
        for _ in range(12)
    ]
    usual = [r.data for r in line_records(2, 12, start_s=3600)]
    rows = [
        CandidateRow(0, archive.put(data).name, "L1", "cam1", now, "pass", (), None, version)
        for data in [*usual, *unlike]
        if data is not None
    ]
    scores = archive_novelty(
        sessions=sessions, archive=archive, inspector_for=lambda v: insp, line="L1"
    )(rows)
    normal = [scores[r.sha256][0] for r in rows[:12]]
    novel = [scores[r.sha256][0] for r in rows[12:]]
    assert np.median(novel) > 1.0 > np.median(normal)
    assert scores[rows[0].sha256][1].shape == (ref.k,)
    insp.close()
    engine.dispose()

"""A drift retrain's gate: the reviewed post-drift images form a slice the candidate must not
do worse on than the champion (SQLite and PostgreSQL, real checkpoints and archive)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa
import torch
from sqlalchemy.orm import Session, sessionmaker

from conftest import make_inspection_record
from defectscan.archive import ImageArchive
from defectscan.model.checkpoint import build_model, load_checkpoint, save_checkpoint
from defectscan.store.schema import Event, Inspection
from helpers.drift_line import GOLDEN, line_records


def test_post_drift_slice_is_exported_and_a_candidate_worse_on_it_stays_a_candidate(
    tmp_path: Path, db_sessions: sessionmaker[Session]
) -> None:
    from defectscan.drift.retrain_trigger import SLICE_SHARE, post_drift_slice
    from defectscan.store.inspection_writes import save_inspections
    from defectscan.store.operations import record_event
    from defectscan.training.registry import evaluate_and_promote, promote, register_checkpoint
    from defectscan.training.reviews import record_review

    spec = load_checkpoint(GOLDEN).spec
    torch.manual_seed(0)
    other = tmp_path / "challenger.safetensors"
    save_checkpoint(build_model(spec), spec.replace(metrics={}), other)
    with db_sessions.begin() as session:
        champion = register_checkpoint(GOLDEN, session=session).version
        promote(champion, session=session, force=True)
        challenger = register_checkpoint(other, session=session).version
        alert = record_event(
            session=session,
            kind="drift",
            level="critical",
            line="L1",
            message="drift critical on line L1 camera cam1",
            details={"camera": "cam1", "over": {"mean_shift": 3.0}},
        )
        alert.created_at = datetime.now(UTC) - timedelta(hours=2)
    archive = ImageArchive(tmp_path / "archive")
    now = datetime.now(UTC)
    rows = []
    for i, rec in enumerate(line_records(4, 40, shift="blur_3")):
        assert rec.data is not None
        row = make_inspection_record(
            i, model_version=champion, n_defects=0, finished_at=now - timedelta(minutes=i)
        )
        rows.append(dataclasses.replace(row, sha256=archive.put(rec.data).name, captured_at=None))
    with db_sessions.begin() as session:
        save_inspections(rows, session=session)
        for iid in session.scalars(sa.select(Inspection.id)):
            record_review(iid, "confirm", session=session, operator="ana")
    with db_sessions() as session:
        found = post_drift_slice(tmp_path / "slice", session=session, archive=archive)
    assert found is not None
    want = {r.sha256 for r in rows if int(r.sha256[:13], 16) / float(1 << 52) < SLICE_SHARE}
    assert found.sha256 == want
    assert found.n_images == len(want) > 0
    assert len(list((found.root / "images").iterdir())) == len(want)
    assert len(list((found.root / "masks").iterdir())) == len(want)

    challenger_sha = load_checkpoint(other).sha256

    def scorer(slice_score: float) -> object:
        def evaluate(ckpt: object, folder: Path) -> dict[str, float]:
            mine = ckpt.sha256 == challenger_sha  # type: ignore[attr-defined]
            if folder == found.root:
                return {"mean_iou": slice_score if mine else 0.5}
            return {"mean_iou": 0.8 if mine else 0.6}

        return evaluate

    holdout = tmp_path / "holdout"
    slices = {"post_drift": found.root}
    with db_sessions.begin() as session:
        d = evaluate_and_promote(
            challenger,
            session=session,
            holdout=holdout,
            evaluate=scorer(0.4),
            slices=slices,  # type: ignore[arg-type]
        )
    assert not d.promoted
    assert "post_drift slice" in d.reason
    assert d.challenger_score == 0.8  # it won on the holdout
    with db_sessions.begin() as session:
        d = evaluate_and_promote(
            challenger,
            session=session,
            holdout=holdout,
            evaluate=scorer(0.5),
            slices=slices,  # type: ignore[arg-type]
        )
    assert d.promoted, d.reason  # not worse on the slice is enough
    with db_sessions() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(Event)) >= 2

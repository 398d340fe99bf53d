"""Operator reviews become a training dataset (SQLite and PostgreSQL)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from sqlalchemy.orm import Session, sessionmaker

from defectscan.archive import ImageArchive
from defectscan.errors import DatasetError, StoreError
from defectscan.store import (
    create_training_run,
    ensure_model_version,
    mark_reviews_used,
    reviews_for_training,
    save_inspection,
)
from defectscan.store.records import DefectRecord, InspectionRecord
from defectscan.store.schema import Inspection
from defectscan.synth import make_sample
from defectscan.training.datasets import load_mask, scan_dataset
from defectscan.training.reviews import export_review_dataset, record_review

CLASSES = ("scratch", "spot")


def _inspect(
    session: Session, folder: Path, seed: int, verdict: str, defects: list[DefectRecord]
) -> int:
    image = make_sample(seed, height=40, width=48, channels=1, n_defects=0).image
    path = folder / f"img{seed}.png"
    cv2.imwrite(str(path), image)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    save_inspection(
        InspectionRecord(
            sha256=sha,
            uri=str(path),
            model_version="unet-test",
            status="ok",
            verdict=verdict,  # type: ignore[arg-type]
            width=48,
            height=40,
            channels=1,
            defects=defects,
        ),
        session=session,
    )
    found = session.query(Inspection).filter_by(sha256=sha).one()
    return int(found.id)


def _spot(x: int, y: int) -> DefectRecord:
    poly = [[x, y], [x + 5, y], [x + 5, y + 5], [x, y + 5]]
    return DefectRecord(2, "spot", 36, (x, y, 6, 6), (x + 2.5, y + 2.5), 20.0, 0.9, 0.95, poly)


@pytest.fixture
def inspections(db_sessions: sessionmaker[Session], tmp_path: Path) -> dict[str, int]:
    folder = tmp_path / "camera"
    folder.mkdir()
    with db_sessions() as s, s.begin():
        ensure_model_version(
            session=s,
            version="unet-test",
            sha256="0" * 64,
            name="unet",
            checkpoint_path=None,
            spec={},
            activation="softmax",
            class_names=list(CLASSES),
        )
        return {
            "confirmed_fail": _inspect(s, folder, 1, "fail", [_spot(10, 10)]),
            "false_reject": _inspect(s, folder, 2, "fail", [_spot(20, 20)]),
            "missed": _inspect(s, folder, 3, "pass", []),
            "corrected": _inspect(s, folder, 4, "pass", []),
            "gone": _inspect(s, folder, 5, "pass", []),
        }


def test_reviews_become_an_images_masks_dataset(
    db_sessions: sessionmaker[Session], inspections: dict[str, int], tmp_path: Path
) -> None:
    corrected = np.zeros((40, 48), np.uint8)
    corrected[5:9, 0:30] = 1  # the operator outlines a scratch the model missed
    cv2.imwrite(str(tmp_path / "fix.png"), corrected)
    store = tmp_path / "var_reviews"
    with db_sessions() as s, s.begin():
        record_review(inspections["confirmed_fail"], "confirm", session=s, operator="ana")
        record_review(inspections["false_reject"], "reject", session=s)
        record_review(inspections["missed"], "reject", session=s)
        record_review(
            inspections["corrected"],
            "reject",
            session=s,
            mask=tmp_path / "fix.png",
            store_dir=store,
        )
        record_review(inspections["gone"], "confirm", session=s)
    (tmp_path / "camera" / "img5.png").unlink()

    out = tmp_path / "review_data"
    with db_sessions() as s, s.begin():
        # Nothing archived here: the images come from the files still at their file:// URIs.
        export = export_review_dataset(out, session=s, archive=ImageArchive(tmp_path / "archive"))
    assert export.class_names == CLASSES
    assert len(export.written) == 3
    assert set(export.skipped.values()) >= {
        "rejected pass without a corrected mask: the defect is not outlined"
    }
    assert any("its source" in why and "is gone" in why for why in export.skipped.values())

    index = scan_dataset(out)
    assert index.class_names == CLASSES
    masks = {
        int(s.image.stem.split("_")[0].removeprefix("inspection")): load_mask(
            s.mask, shape=(40, 48), n_classes=2
        )
        for s in index.samples
    }
    confirmed = masks[inspections["confirmed_fail"]]
    assert confirmed[12, 12] == 2  # the model's spot, filled with its class
    assert int((confirmed == 2).sum()) == 36
    assert not masks[inspections["false_reject"]].any()  # a false reject is a good part
    assert np.array_equal(masks[inspections["corrected"]], corrected)

    with db_sessions() as s, s.begin():
        run = create_training_run(session=s, trigger="operator")
        assert mark_reviews_used(list(export.review_ids), run.id, session=s) == 3
        left = reviews_for_training(session=s)
    assert {r.inspection_id for r in left} == {inspections["missed"], inspections["gone"]}


def test_review_validation(
    db_sessions: sessionmaker[Session], inspections: dict[str, int], tmp_path: Path
) -> None:
    cv2.imwrite(str(tmp_path / "small.png"), np.zeros((10, 10), np.uint8))
    with db_sessions() as s, s.begin():
        with pytest.raises(StoreError, match="confirm or reject"):
            record_review(inspections["missed"], "maybe", session=s)
        with pytest.raises(StoreError, match="does not exist"):
            record_review(999_999, "confirm", session=s)
        with pytest.raises(DatasetError, match="image is 48x40"):
            record_review(
                inspections["missed"],
                "reject",
                session=s,
                mask=tmp_path / "small.png",
                store_dir=tmp_path,
            )

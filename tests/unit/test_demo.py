"""`defectscan demo` end to end on a tiny budget: trains, inspects, stores, reuses its model."""

from __future__ import annotations

from pathlib import Path

import pytest

from defectscan.demo import run_demo


@pytest.mark.slow
def test_demo_trains_inspects_stores_and_reuses_its_model(tmp_path: Path, sqlite_url: str) -> None:
    first = run_demo(tmp_path / "demo", database_url=sqlite_url, images=3, epochs=1, device="cpu")
    assert first.trained
    assert first.model_path.is_file()
    assert sum(first.verdicts.values()) == 3
    assert first.rows_in_database == 3
    assert set(first.val_iou) == {"scratch", "crack", "spot", "stain"}
    assert first.report_path is not None
    assert first.report_path.is_file()
    # the batch-inspection flow wrote the report with an overlay per part
    assert len(list((tmp_path / "demo" / "out" / "overlays").glob("*.png"))) == 3
    assert first.flow_result["inserted"] == 3
    second = run_demo(tmp_path / "demo", database_url=sqlite_url, images=3, device="cpu")
    assert not second.trained
    assert second.model_version == first.model_version
    assert second.rows_in_database == 3  # the same parts again: no duplicate rows
    assert second.flow_result["inserted"] == 0
    assert second.val_iou == first.val_iou

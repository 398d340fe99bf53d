"""Training progress on the Models page: the retrain's progress callback writes epoch, best
validation IoU, elapsed and time left to ``training_runs.metrics`` (throttled), and the page
shows them and refreshes itself while a run is running, then the result once it is done."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from helpers.console import Seeded, login


def _run(sessions: sessionmaker[Session]) -> int:
    from defectscan.store.training_runs import create_training_run

    with sessions.begin() as s:
        run = create_training_run(
            session=s, trigger="operator", requested_by="operator", reason="r", status="running"
        )
        run.started_at = datetime.now(UTC) - timedelta(minutes=4)
        return int(run.id)


def _progress(sessions: sessionmaker[Session], run_id: int) -> dict[str, Any] | None:
    from defectscan.store.schema import TrainingRun

    with sessions() as s:
        run = s.get(TrainingRun, run_id)
        assert run is not None
        return (run.metrics or {}).get("progress")


def test_the_retrain_progress_callback_writes_throttled_progress(
    db_sessions: sessionmaker[Session], monkeypatch: Any, tmp_path: Path
) -> None:
    import importlib

    from defectscan.training.retrain import RetrainRequest, _ProgressRecorder, _train_from
    from defectscan.training.run import TrainProgress

    run_id = _run(db_sessions)
    recorder = _ProgressRecorder(run_id, db_sessions, every_s=3600)
    recorder(TrainProgress("start", 0, 10, elapsed_s=1.0))
    assert _progress(db_sessions, run_id)["phase"] == "start"  # type: ignore[index]
    recorder(TrainProgress("step", 2, 10, step=5, steps=10, best_score=0.61, elapsed_s=50.0))
    recorder(TrainProgress("epoch", 2, 10, metrics={"mean_iou": 0.64}, best_score=0.64))
    # within the throttle interval nothing more is written ...
    assert _progress(db_sessions, run_id)["phase"] == "start"  # type: ignore[index]
    # ... but the newest report is kept, and the next write after the interval carries it
    recorder.every_s = 0.0
    recorder(TrainProgress("step", 3, 10, step=5, steps=10, best_score=0.64, elapsed_s=70.0))
    p = _progress(db_sessions, run_id)
    assert p is not None
    assert (p["epoch"], p["epochs"], p["epochs_done"]) == (4, 10, 3)
    assert p["best_val_iou"] == 0.64
    assert p["val_iou"] == 0.64  # the last epoch's validation, carried to later steps
    assert p["fraction"] == 0.35
    assert p["eta_s"] == 130.0  # 70 s for 35%: 130 s to go

    # the retrain path hands the callback to the train loop
    seen: list[Any] = []

    def fake_train(config: Any, *, progress: Any = None, parent_version: Any = None) -> Any:
        seen.append(progress)
        raise RuntimeError("stop here")

    # the module, not the package's function of the same name
    train_module = importlib.import_module("defectscan.training.train")
    monkeypatch.setattr(train_module, "train", fake_train)
    fixed = {"data": tmp_path, "out": tmp_path / "m.safetensors"}
    with pytest.raises(RuntimeError, match="stop here"):
        _train_from(None, RetrainRequest(), settings=fixed, parent=None, progress=recorder)
    assert seen == [recorder]


def test_models_page_shows_progress_and_refreshes_while_running(
    client: TestClient, seeded: Seeded, db_sessions: sessionmaker[Session]
) -> None:
    from defectscan.store.training_runs import finish_training_run, record_training_progress

    run_id = _run(db_sessions)
    with db_sessions.begin() as s:
        record_training_progress(
            run_id,
            {
                "phase": "step",
                "epoch": 3,
                "epochs": 10,
                "epochs_done": 2,
                "step": 4,
                "steps": 8,
                "fraction": 0.25,
                "best_val_iou": 0.7123,
                "eta_s": 600.0,
                "elapsed_s": 200.0,
                "updated_at": datetime.now(UTC).isoformat(),
            },
            session=s,
        )
    login(client, "viewer")
    page = client.get("/models").text
    row = page.split(f'data-run="{run_id}"')[1].split("</tr>")[0]
    assert "epoch 3 of 10" in row
    assert "0.7123" in row
    assert "4 min" in row  # elapsed since it started
    assert "about 9 min" in row or "about 10 min" in row  # time left
    assert 'hx-get="/models/runs" hx-trigger="every 3s"' in page
    with db_sessions.begin() as s:
        finish_training_run(
            run_id,
            session=s,
            status="succeeded",
            metrics={
                "candidate": "unet-new",
                "decision": "promoted: beats the champion",
                "validation": {"mean_iou": 0.75},
                "progress": {"epochs": 10, "epochs_done": 7, "best_val_iou": 0.75},
            },
        )
    part = client.get("/models/runs", headers={"HX-Request": "true"}).text
    assert "hx-trigger" not in part  # nothing runs: the table stops refreshing
    row = part.split(f'data-run="{run_id}"')[1].split("</tr>")[0]
    assert "epoch 7 of 10" in row  # stopped early after 7 epochs
    assert "unet-new promoted: beats the champion" in row
    assert "0.7500" in row

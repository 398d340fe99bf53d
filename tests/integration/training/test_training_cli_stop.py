"""A training run stopped by its supervisor (SIGTERM) keeps its best checkpoint so far and is
recorded as cancelled with it, not left running."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import sqlalchemy as sa

from defectscan.model.checkpoint import load_checkpoint
from defectscan.synth import write_dataset
from defectscan.training import state_path


def test_sigterm_marks_the_training_run_cancelled(tmp_path: Path, sqlite_url: str) -> None:
    data = tmp_path / "data"
    out = tmp_path / "m.safetensors"
    write_dataset(data, 8, seed=3, height=32, width=32, channels=1, binary=True)
    cmd = [
        sys.executable,
        "-c",
        "from defectscan.cli import main; main()",
        "train",
        "--data",
        str(data),
        "--out",
        str(out),
        "--epochs",
        "500",
        "--patience",
        "500",  # no early stop: the run must still be going when the signal comes
        "--width",
        "4",
        "--tile-size",
        "32",
        "--db",
        sqlite_url,
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    engine = sa.create_engine(sqlite_url)
    try:
        deadline = time.monotonic() + 60
        status = None
        while time.monotonic() < deadline and status != "running":
            time.sleep(0.5)
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            try:
                with engine.connect() as conn:
                    status = conn.execute(sa.text("SELECT status FROM training_runs")).scalar()
            except sa.exc.OperationalError:
                continue  # migrations not applied yet
        assert status == "running"
        while time.monotonic() < deadline and not state_path(out).is_file():
            time.sleep(0.2)  # wait for a finished epoch: then there is a best model to keep
        assert state_path(out).is_file()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) != 0
        with engine.connect() as conn:
            row = conn.execute(
                sa.text("SELECT status, finished_at, metrics FROM training_runs")
            ).one()
            versions = conn.execute(sa.text("SELECT version FROM model_versions")).scalars().all()
        assert row.status == "cancelled"
        assert row.finished_at is not None
        # The best checkpoint so far was written, registered and recorded with the run.
        metrics = row.metrics if isinstance(row.metrics, dict) else json.loads(row.metrics)
        assert metrics["checkpoint"] == str(out)
        ckpt = load_checkpoint(out)
        assert ckpt.spec.metrics["interrupted"] is True
        assert list(versions) == [ckpt.version] == [metrics["version"]]
    finally:
        if proc.poll() is None:
            proc.kill()
        engine.dispose()

"""A training run stopped by its supervisor (SIGTERM) is recorded as cancelled, not running."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import sqlalchemy as sa

from defectscan.synth import write_dataset


def test_sigterm_marks_the_training_run_cancelled(tmp_path: Path, sqlite_url: str) -> None:
    data = tmp_path / "data"
    write_dataset(data, 8, seed=3, height=32, width=32, channels=1, binary=True)
    cmd = [
        sys.executable,
        "-c",
        "from defectscan.cli import main; main()",
        "train",
        "--data",
        str(data),
        "--out",
        str(tmp_path / "m.safetensors"),
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
        time.sleep(1.0)  # inside the training loop
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) != 0
        with engine.connect() as conn:
            row = conn.execute(sa.text("SELECT status, finished_at FROM training_runs")).one()
        assert row.status == "cancelled"
        assert row.finished_at is not None
    finally:
        if proc.poll() is None:
            proc.kill()
        engine.dispose()

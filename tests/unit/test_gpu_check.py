"""``make gpu-check`` runs on the CPU as a dry run of its own steps, before any GPU runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_the_dry_run_passes_every_step_and_writes_its_summary(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--dry-run", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dry_run"] is True
    assert summary["passed"] is True
    steps = {s["name"]: s for s in summary["steps"]}
    assert set(steps) == {"gpu_tests", "bench", "train"}
    # the gpu tests were collected (and skipped without CUDA), not missed
    assert (
        steps["gpu_tests"]["figures"].get("skipped", 0)
        + steps["gpu_tests"]["figures"].get("passed", 0)
        >= 3
    )
    assert steps["bench"]["figures"]["engines"]
    assert (out / "bench.json").is_file()
    train = steps["train"]["figures"]
    assert train["epochs_run"] == 1
    checkpoint = Path(train["checkpoint"]["path"])
    assert checkpoint.is_file()
    assert checkpoint.stat().st_size < 16 * 1024 * 1024


def test_a_failing_step_fails_the_command(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "gpu_check.py"),
            "--dry-run",
            "--steps",
            "train,nonsense",
            "--out",
            str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode != 0

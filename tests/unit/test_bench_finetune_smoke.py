"""``make bench-finetune`` at tiny sizes: both runs train, the table and the JSON come out."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_the_finetune_benchmark_runs_and_writes_its_json(tmp_path: Path) -> None:
    out = tmp_path / "finetune.json"
    args = ["--images", "8", "--size", "64", "--width", "4", "--tile", "32", "--epochs", "2"]
    args += ["--crops", "16", "--out", str(out)]
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bench_finetune.py"), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    payload = json.loads(out.read_text())
    assert set(payload["runs"]) == {"scratch", "fine-tune"}
    assert payload["runs"]["scratch"]["seconds_to_target"] is not None
    assert payload["runs"]["fine-tune"]["recipe"]["warmup_epochs"] >= 1
    assert "fine-tune/scratch time" in proc.stdout

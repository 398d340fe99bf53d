"""Smoke test of the benchmark harness: ``bench.py --quick`` runs and writes the promised JSON.

It times nothing (tiny model, 0.2 s budgets); it checks that every engine row is produced with
a rate and that the exported engines compute what eager PyTorch computes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

__all__: list[str] = []

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "benchmarks" / "bench.py"
CPU_ROWS = {
    "seed-naive",
    "torch-fp32-b8",
    "torch-bf16-b8",
    "onnxruntime-fp32-b8",
    "openvino-b8",
    "openvino-fp32-b8",
    "openvino-int8-b8",
}


@pytest.mark.slow
def test_quick_engines_run_writes_every_row_and_engines_match_torch(tmp_path: Path) -> None:
    pytest.importorskip("openvino")
    pytest.importorskip("onnxruntime")
    out = tmp_path / "bench.json"
    args = ["--quick", "--sections", "engines", "--seconds", "0.2", "--device", "cpu"]
    proc = subprocess.run(
        [sys.executable, str(BENCH), *args, "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        # Passive OpenMP waits: on a busy 2-core box torch's spinning threads would otherwise
        # stall at every operator (nothing is timed here, only that every row is produced).
        env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    payload = json.loads(out.read_text())
    assert payload["schema"] == "defectscan-bench/1"
    assert payload["config"]["width"] == 8
    assert payload["config"]["tile"] == 64
    assert payload["pipeline"] == []
    assert payload["store"] == []
    assert payload["machine"]["torch_threads"] >= 1
    # the conditions that change the figures are recorded with them
    assert payload["machine"]["threading_env"]["OMP_WAIT_POLICY"] == "PASSIVE"
    rows = {r["name"]: r for r in payload["engines"]}
    # auto precision is named for what it resolves to: bf16 where the CPU has it, else fp32
    if "torch-auto-b8" in rows:
        rows["torch-bf16-b8"] = rows.pop("torch-auto-b8")
    assert set(rows) == CPU_ROWS
    for name, row in rows.items():
        assert row["error"] is None, name
        assert row["rounds"] == 3, name
        stats = row["tiles_per_s"]
        assert 0 < stats["min"] <= stats["median"] <= stats["max"], name
    assert "seed-naive" in proc.stdout  # the table was printed too
    # fp32 engines (exported or not) agree with eager fp32 torch; reduced precision stays close
    for name in ("seed-naive", "torch-fp32-b8", "onnxruntime-fp32-b8", "openvino-fp32-b8"):
        assert rows[name]["max_abs_diff"] < 1e-4, name
    for name in ("torch-bf16-b8", "openvino-b8"):
        assert rows[name]["max_abs_diff"] < 2e-2, name

"""``benchmarks/learning_curve.py`` at tiny sizes: a row per epoch and the calibrated result."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from defectscan.synth import write_dataset

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_the_curve_has_a_row_per_epoch_and_the_calibrated_verdict(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_dataset(data, 10, seed=3, height=48, width=48, channels=1, binary=True)
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(
        "tile_size: 32\nbase_width: 4\nbatch_size: 4\nepochs: 2\nsamples_per_epoch: 8\n"
        "patience: 5\nval_fraction: 0.3\nprecision: fp32\nnum_workers: 0\n"
    )
    out = tmp_path / "curve.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "learning_curve.py"), "--recipe", str(recipe),
         "--data", str(data), "--device", "cpu", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    payload = json.loads(out.read_text())
    assert payload["recipe"] == "tiny"
    assert [r["epoch"] for r in payload["curve"]] == [1, 2]
    for row in payload["curve"]:
        assert row["minutes"] > 0
        assert set(row) >= {"pooled_iou", "recall_at_frr", "pixel_auroc", "loss"}
    assert payload["calibrated"]["n_images"] >= 1
    assert payload["calibrated"]["decision"]
    assert "calibrated: pooled IoU" in proc.stdout

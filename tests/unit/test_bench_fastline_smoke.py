"""Smoke test of the fast-line bench sections (``autoint8``, ``latency``, ``startup``).

It times nothing (a width-8 model, tiles of 64 px, a few tiny parts, calibration on 6 + 2
images): it checks that each section runs to its end through the real pieces - a monitor that
quantises by itself, a paced producer, ``defectscan monitor`` processes - and writes the rows
its table and JSON promise.
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


@pytest.mark.slow
def test_fastline_sections_run_and_write_their_rows(tmp_path: Path) -> None:
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    out = tmp_path / "bench.json"
    args = [
        "--quick",
        "--sections",
        "autoint8,latency,startup",
        "--seconds",
        "0.5",
        "--rounds",
        "1",
    ]
    proc = subprocess.run(
        [sys.executable, str(BENCH), *args, "--device", "cpu", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
        env={
            **os.environ,
            "OMP_WAIT_POLICY": "PASSIVE",
            "DEFECTSCAN_VAR_DIR": str(tmp_path / "var"),
            "DEFECTSCAN_INT8_CALIBRATION_IMAGES": "6",
            "DEFECTSCAN_INT8_PARITY_IMAGES": "2",
            # the monitor's CPU budget is metered but never binds: a smoke test, not a timing
            "DEFECTSCAN_BACKGROUND_CPU_SHARE": "1.0",
        },
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    payload = json.loads(out.read_text())
    assert payload["engines"] == []
    auto = {r["name"].split(" ")[0]: r for r in payload["autoint8"]}
    assert set(auto) == {
        "seed-naive",
        "openvino-fp32",
        "default-before",
        "default-after",
        "manual-int8",
    }
    head = payload["autoint8"][0]
    # the monitor settled by itself: INT8 swapped in, kept (not faster) or failed parity
    assert head["int8_state"] in ("int8", "kept", "failed")
    assert head["start_engine"] == "torch"  # a fast start on a new checkpoint
    if head["int8_state"] == "int8":
        assert head["switch_s"] > 0
    for row in payload["autoint8"]:
        assert row["tiles_per_s"]["median"] > 0
        assert row["vs_seed_naive"] > 0
    during = [r for r in payload["autoint8"] if "during a background INT8 job" in r["name"]]
    assert len(during) == 1
    assert during[0]["vs_same_engine_alone"] > 0
    latency = payload["latency"]
    assert [r["name"] for r in latency] == [
        "25% of capacity",
        "50% of capacity",
        "75% of capacity",
        "90% of capacity",
    ]
    for row in latency:
        assert row["images"] >= 4
        assert row["p95_s"] >= row["p50_s"] > 0
        assert row["capacity_images_per_s"] > 0
    startup = {r["name"]: r for r in payload["startup"]}
    assert startup["new checkpoint"]["first_row_s"] > 0
    assert startup["new checkpoint"]["start_engine"] == "torch"
    assert startup["known checkpoint"]["first_row_s"] > 0
    assert startup["known checkpoint"]["start_engine"] != "torch"  # from the cache
    assert "command to first committed row" in proc.stdout
    assert "arrival to committed row" in proc.stdout

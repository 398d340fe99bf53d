"""``benchmarks/bench_console.py`` runs and writes its JSON (tiny: 2,000 rows, SQLite only;
it times nothing worth reading, it checks the harness and that every page answers)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]


def test_bench_console_runs_small(tmp_path: Path) -> None:
    out = tmp_path / "console.json"
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "bench_console.py"),
            "--rows",
            "2000",
            "--requests",
            "2",
            "--databases",
            "sqlite",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    result = json.loads(out.read_text())
    pages = result["databases"]["sqlite"]["pages"]
    assert set(pages) == {"gallery", "gallery_filtered", "gallery_deep", "lines"}
    assert pages["gallery"]["items"] == 48
    assert pages["gallery_filtered"]["items"] > 0
    assert pages["gallery_deep"]["items"] == 48

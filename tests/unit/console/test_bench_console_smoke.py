"""``benchmarks/bench_console.py`` runs and writes its JSON (tiny: 2,000 rows, SQLite only;
it times nothing worth reading, it checks the harness and that every page answers), alone and
as the ``console`` section of ``benchmarks/bench.py``."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

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


def test_console_is_a_section_of_the_bench_harness(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``make bench`` runs the console pages too: ``bench.py --sections console`` (in-process,
    quick: 2,000 rows on SQLite), its rows in ``bench.json`` and its table printed."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    bench = importlib.import_module("bench")
    quick = bench.config_from_args(
        bench.build_parser().parse_args(["--quick", "--sections", "console", "--device", "cpu"])
    )
    assert (quick.console_rows, quick.sections) == (2000, ("console",))
    monkeypatch.setenv("DEFECTSCAN_BENCH_CONSOLE_ROWS", "1000000")
    full = bench.config_from_args(bench.build_parser().parse_args(["--device", "cpu"]))
    assert "console" in full.sections  # a plain `make bench` includes it
    assert full.console_rows == 1_000_000
    assert full.console_databases == ("sqlite", "postgresql")
    monkeypatch.delenv("DEFECTSCAN_BENCH_CONSOLE_ROWS")
    out = tmp_path / "bench.json"
    payload = bench.main(["--quick", "--sections", "console", "--device", "cpu", "--out", str(out)])
    rows = {r["name"]: r for r in json.loads(out.read_text())["console"]}
    assert set(rows) == {
        f"sqlite {p}" for p in ("gallery", "gallery_filtered", "gallery_deep", "lines")
    }
    assert all(r["rows"] == 2000 and r["p95_ms"] > 0 for r in rows.values())
    assert payload["console"] == list(rows.values())

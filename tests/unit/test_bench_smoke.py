"""Smoke test of the benchmark harness: ``bench.py --quick`` runs and writes the promised JSON.

It times nothing (tiny model, 0.2 s budgets); it checks that every engine row is produced with
a rate and that the exported engines compute what eager PyTorch computes. The harness is split
into modules beside ``bench.py``; their imports go only down, and ``bench.py`` also imports
as a module from outside ``benchmarks/``.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

__all__: list[str] = []

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "benchmarks" / "bench.py"
# Each file in benchmarks/ is a top-level module. Bottom up: a module may import a sibling only
# from a lower layer, so there are no cycles; a file not listed here counts as a top-layer
# entry point (it may import the modules below, and nothing may import it).
BENCH_LAYERS: tuple[tuple[str, ...], ...] = (
    ("bench_common",),
    (
        "bench_engines",
        "bench_pipeline",
        "bench_large",
        "bench_store",
        "bench_training",
        "bench_tta",
        "bench_tables",
        "bench_fastline",
        "bench_console",
    ),
    ("bench", "soak_monitor"),
)
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


def _sibling_imports(path: Path, siblings: set[str]) -> set[str]:
    """The sibling modules ``path`` imports, wherever in the file (``TYPE_CHECKING`` too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found & siblings


def test_benchmark_modules_import_only_downwards() -> None:
    modules = {path.stem: path for path in (REPO / "benchmarks").glob("*.py")}
    assert set(BENCH_LAYERS[0]) <= set(modules)
    top = len(BENCH_LAYERS)
    layer = {name: i for i, names in enumerate(BENCH_LAYERS) for name in names}
    for name, path in sorted(modules.items()):
        for target in sorted(_sibling_imports(path, set(modules))):
            assert layer.get(target, top) < layer.get(name, top), (
                f"benchmarks/{name}.py imports {target}, which is not below it: imports go "
                f"down only (layers, bottom up: {BENCH_LAYERS})"
            )


def test_bench_imports_as_a_module_from_another_directory(tmp_path: Path) -> None:
    # Loaded by file path, not run as a script: bench.py must find its sibling modules itself.
    code = f"""
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("bench", {str(BENCH)!r})
bench = importlib.util.module_from_spec(spec)
sys.modules["bench"] = bench
spec.loader.exec_module(bench)
cfg = bench.config_from_args(bench.build_parser().parse_args(["--quick", "--device", "cpu"]))
missing = [name for name in bench.__all__ if not hasattr(bench, name)]
print(json.dumps({{"missing": missing, "config": cfg.to_dict()}}))
"""
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["missing"] == []
    config = result["config"]
    assert config["sections"] == [
        "engines",
        "pipeline",
        "large",
        "store",
        "training",
        "tta",
        "autoint8",
        "latency",
        "startup",
        "console",
    ]
    assert (config["width"], config["tile"], config["batch"]) == (8, 64, 8)


@pytest.mark.slow
def test_quick_tta_run_reports_the_cost_of_each_flip_setting(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    args = ["--quick", "--sections", "tta", "--seconds", "0.2", "--device", "cpu"]
    proc = subprocess.run(
        [sys.executable, str(BENCH), *args, "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {r["name"]: r for r in json.loads(out.read_text())["tta"]}
    assert set(rows) == {"tta-none", "tta-h", "tta-hv"}
    assert [rows[f"tta-{m}"]["passes"] for m in ("none", "h", "hv")] == [1, 2, 3]
    assert rows["tta-none"]["cost"] == 1.0
    for row in rows.values():
        assert row["images_per_s"]["median"] > 0
    assert "test-time flips" in proc.stdout


@pytest.mark.slow
def test_quick_pipeline_run_measures_drift_on_beside_drift_off(tmp_path: Path) -> None:
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    out = tmp_path / "bench.json"
    args = ["--quick", "--sections", "pipeline", "--seconds", "0.2", "--rounds", "1"]
    proc = subprocess.run(
        [sys.executable, str(BENCH), *args, "--device", "cpu", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {r["name"]: r for r in json.loads(out.read_text())["pipeline"]}
    assert set(rows) == {
        "pipeline-torch",
        "pipeline-openvino",
        "pipeline-openvino-int8",
        "pipeline-openvino-int8+drift",
    }
    on, off = rows["pipeline-openvino-int8+drift"], rows["pipeline-openvino-int8"]
    assert on["drift"] is True
    assert off["drift"] is False
    # every pass of 4 images closed two windows of 2 images through the real statistics
    assert on["drift_windows"] == 2 * on["rounds"]
    assert on["rows_written"] == off["rows_written"] > 0
    assert on["vs_drift_off"] > 0
    assert off["vs_drift_off"] is None
    assert "vs drift off" in proc.stdout

"""The ``large`` section: peak memory of inspecting one very large frame, in a subprocess.

One ``--large-size`` square BGR frame (16384 px by default) is written by a child process and
inspected by another, fresh one: the seed architecture at ``--large-width`` (random init) on
``--tile`` tiles, OpenVINO where installed (torch otherwise), on the CPU. The row is about
memory (tiles on demand, band stitching), not speed: ``peak_rss_mib`` is the inspecting
process's own peak RSS (``VmHWM``), ``limit_mib`` the bound it must stay under (3 GB at
16k x 16k, process baseline included), ``within_limit`` whether it did.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

# Sibling modules import as top-level modules, whether bench.py runs as a script or is imported.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import BenchConfig, Log

__all__ = ["run_large"]

_LARGE_MAKE = """
import sys, numpy as np, cv2
side, out = int(sys.argv[1]), sys.argv[2]
rng = np.random.default_rng(0)
image = np.empty((side, side, 3), np.uint8)
for y in range(0, side, 1024):  # row blocks: no full-frame temporaries
    image[y : y + 1024] = 150 + rng.integers(0, 20, (min(1024, side - y), side, 1), np.uint8)
for i in range(12):
    y, x = rng.integers(0, side - 200, 2)
    image[y : y + 60, x : x + 150] = 20
if not cv2.imwrite(out, image):
    raise SystemExit("could not write " + out)
"""

_LARGE_MEASURE = """
import json, resource, sys, time
import numpy as np, torch


def peak_mib():
    # VmHWM is this process's own peak. ru_maxrss is not: a child started by vfork + exec
    # (subprocess) inherits the parent's peak, so a large bench process would show up here.
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

from defectscan.model.engines import make_backend
from defectscan.model.checkpoint import build_model
from defectscan.model.spec import ModelSpec
from defectscan.pipeline import ImageRecord, Inspector

path, engine = sys.argv[1], sys.argv[5]
side, width, tile = (int(a) for a in sys.argv[2:5])
spec = ModelSpec(
    n_channels=3, activation="sigmoid", class_names=("defect",), base_width=width,
    tile_size=tile, tile_overlap=tile // 8, name="large",
)
torch.manual_seed(0)
model = build_model(spec).eval()
backend = make_backend(engine, model, "sigmoid", n_channels=3, tile=tile, device="cpu")
backend.infer(np.zeros((8, 3, tile, tile), np.float32))
base = peak_mib()
inspector = Inspector(backend, spec, model_version="large", batch_size=8, max_pixels=side * side)
t0 = time.perf_counter()
result = inspector.inspect_one(ImageRecord.from_path(path))
seconds = time.perf_counter() - t0
peak = peak_mib()
row = {
    "status": result.status, "error": result.error_message, "tiles": result.tiles,
    "defects": len(result.defects), "seconds": seconds, "engine": backend.name,
    "base_rss_mib": base, "peak_rss_mib": peak,
}
print(json.dumps(row))
"""


def run_large(cfg: BenchConfig, notes: list[str], log: Log) -> list[dict[str, Any]]:
    """Peak RSS of inspecting one ``--large-size`` square frame, in a fresh subprocess.

    The model is the seed architecture at ``--large-width`` (random init): this row is about
    memory (tiles on demand, band stitching), not speed. The subprocess's own peak RSS (VmHWM).
    """
    import json
    import subprocess

    rows: list[dict[str, Any]] = []
    try:
        import openvino  # noqa: F401

        engine = "openvino"
    except ImportError:
        engine = "torch"
    with tempfile.TemporaryDirectory(prefix="defectscan-bench-large-") as tmp:
        frame = Path(tmp) / "large.png"
        log(f"large: writing a {cfg.large_size}x{cfg.large_size} BGR frame")
        subprocess.run(
            [sys.executable, "-c", _LARGE_MAKE, str(cfg.large_size), str(frame)], check=True
        )
        log(f"large: inspecting it ({engine}, width {cfg.large_width}) in a subprocess")
        proc = subprocess.run(
            [
                sys.executable,
                "-c",
                _LARGE_MEASURE,
                str(frame),
                str(cfg.large_size),
                str(cfg.large_width),
                str(cfg.tile),
                engine,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        row: dict[str, Any] = {
            "name": f"large-{cfg.large_size}",
            "side": cfg.large_size,
            "width": cfg.large_width,
            "tile": cfg.tile,
            "file_mib": round(frame.stat().st_size / 2**20, 1),
            # The bound is absolute (3 GB at 16k x 16k), process baseline included.
            "limit_mib": round(3e9 / 2**20, 1),
            "error": None,
        }
        if proc.returncode != 0:
            row["error"] = proc.stderr.strip().splitlines()[-1] if proc.stderr else "failed"
            notes.append(f"large frame failed: {row['error']}")
        else:
            row.update(json.loads(proc.stdout.strip().splitlines()[-1]))
            row["within_limit"] = row["peak_rss_mib"] < row["limit_mib"]
        rows.append(row)
    return rows

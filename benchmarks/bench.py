"""Side-by-side throughput benchmarks: inference engines, the whole pipeline, the results store.

    .venv/bin/python benchmarks/bench.py [--sections engines,pipeline,store,training] [--seconds 10]
                                         [--width 64] [--tile 256] [--device auto|cpu|cuda]
                                         [--quick] [--out var/bench/bench.json]

(``make bench BENCH_ARGS="--sections engines --seconds 5"`` runs the same.)

Absolute times on shared machines drift, so every comparison is measured in one run, side by
side, with the engines interleaved round by round (A B C A B C ...): whatever else the machine
does hits all of them alike. Threading is left at each engine's defaults (torch, OpenVINO and
ONNX Runtime each use every core); the torch thread count and the load average before and
after are recorded. On the 2-core reference CPU anything else running roughly halves every
figure: compare rows within one run, and rerun on an idle machine for absolute numbers.
Worse, torch's OpenMP threads busy-wait at every barrier by default: when another process
holds a core, each operator waits for a descheduled thread and small models slow down by an
order of magnitude (OpenVINO and ONNX Runtime much less). ``OMP_WAIT_POLICY=PASSIVE`` in the
environment avoids that on a busy machine; it is recorded in ``machine.threading_env``.

Sections
--------
One module each, beside this file; their docstrings say what each row measures:

- ``engines`` (``bench_engines.py``): model only, every inference engine on the same tiles.
- ``pipeline`` (``bench_pipeline.py``): file in to database row, next to the engine alone.
- ``large`` (``bench_large.py``): peak memory of inspecting one very large frame.
- ``store`` (``bench_store.py``): results-store writes, batched vs row by row.
- ``training`` (``bench_training.py``): training crops/s and where an epoch's time goes.
- ``tta`` (``bench_tta.py``): what test-time flips cost, images/s with none, h and hv.
- ``console`` (``bench_console.py``): the operator console's gallery, filtered gallery, deep
  gallery page and Lines page, p50/p95 over a database filled with ``--console-rows``
  inspections (100,000 by default; ``DEFECTSCAN_BENCH_CONSOLE_ROWS=1000000`` or
  ``make bench-console`` for the issue's 1,000,000), on SQLite and PostgreSQL.
- ``autoint8``, ``latency``, ``startup`` (``bench_fastline.py``): a monitor on the default
  settings before and after it switched to INT8 by itself (beside a manual INT8 export,
  OpenVINO fp32 and the seed loop); arrival to committed row under a paced producer at
  several rates, and the capacity; ``defectscan monitor`` to its first row for a new and a
  known checkpoint, and its time to reach INT8.

What they share (the config, machine info, statistics, the seed model and tiles, the timing
loop) is in ``bench_common.py``, the printed tables in ``bench_tables.py``. This module only
assembles: parse the options, run the chosen sections, write the JSON, print the tables.
Imports only go down: this runner imports the sections and the tables, the sections import
``bench_common``, and ``bench_common`` imports no sibling.

JSON (``--out``, default ``var/bench/bench.json``), schema ``defectscan-bench/1``::

    {
      "schema": "defectscan-bench/1",
      "created_at": "<ISO 8601 UTC>",
      "machine": {"cpu_model", "cpu_flags", "cores", "affinity_cores", "torch_threads",
                  "torch_interop_threads", "threading_env", "cpu_bf16", "openvino_cpu_capabilities",
                  "openvino_default_precision", "python", "platform", "torch",
                  "openvino", "onnxruntime", "numpy",
                  "device", "gpu_name", "gpu_peak_tflops", "loadavg_start", "loadavg_end"},
      "config": {"sections", "seconds", "rounds", "width", "tile", "batch", "device",
                 "quick", "images", "image_size", "overlap", "store_n", "store_batch",
                 "train_width", "train_batch", "large_size", "large_width", "flop_per_tile"},
      "engines": [{"name", "engine", "device", "precision", "batch", "tile", "width",
                   "tiles_per_s": {"median", "min", "max"}, "per_round": [...],
                   "rounds", "calls", "max_abs_diff", "speedup_vs_seed_naive",
                   "tflops", "pct_peak", "reference_tiles_per_s", "note", "error"}],
      "pipeline": [{"name", "backend", "device", "precision", "images", "image_size",
                    "tiles_per_image", "tiles", "batch", "rounds", "rows_written",
                    "images_per_s": {...}, "tiles_per_s": {...},
                    "engine_tiles_per_s": {...}, "ratio", "vs_openvino_model_only",
                    "vs_seed_naive", "seed_naive_tiles_per_s": {...},
                    "latency_ms": {"p50", "p95"}, "stage_ms", "error"}],
      "large": [{"name", "side", "width", "tile", "file_mib", "limit_mib", "status", "tiles",
                 "defects", "seconds", "engine", "base_rss_mib", "peak_rss_mib",
                 "within_limit", "error"}],
      "store": [<bench_store.run() rows>],
      "training": [{"name", "device", "precision", "width", "tile", "batch", "workers",
                    "crops", "crops_per_s", "share": {"data", "step", "val"}, "seconds",
                    "error"}],
      "tta": [{"name", "tta", "passes", "images", "image_size", "rounds",
               "images_per_s": {...}, "cost", "error"}],
      "autoint8": [{"name", "tiles_per_s": {...}, "images_per_s", "vs_seed_naive",
                    "vs_openvino_model_only", "start_engine", "int8_state", "switch_s",
                    "images_fed", "tiles_per_image"}],
      "latency": [{"name", "engine", "rate_images_per_s", "images", "seconds", "p50_s",
                   "p95_s", "capacity_images_per_s", "backlog_grew", "backlog_at_end"}],
      "startup": [{"name", "first_row_s", "start_engine", "int8_state", "switch_s",
                   "images_fed"}],
      "console": [{"name", "database", "page", "path", "rows", "requests", "fill_s",
                   "p50_ms", "p95_ms", "max_ms", "under_300ms", "error"}],
      "notes": ["..."]
    }

Rates are ``null`` (and ``error`` says why) for an engine that could not be built here, e.g.
OpenVINO not installed. Sections that were not run hold an empty list.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console

from defectscan.config import get_settings
from defectscan.model.backends import resolve_device

# Sibling modules import as top-level modules, whether this runs as a script or is imported.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import CPU_ENGINE_BATCH, SECTIONS, BenchConfig, Log, loadavg, machine_info
from bench_console import print_console_table, run_console
from bench_engines import run_engines
from bench_fastline import print_fastline_tables, run_autoint8, run_latency, run_startup
from bench_large import run_large
from bench_pipeline import run_pipeline
from bench_store import run_store
from bench_tables import print_tables, stdout_console
from bench_training import run_training
from bench_tta import run_tta

__all__ = [
    "SCHEMA",
    "BenchConfig",
    "build_parser",
    "config_from_args",
    "machine_info",
    "main",
    "run_autoint8",
    "run_console",
    "run_engines",
    "run_large",
    "run_latency",
    "run_pipeline",
    "run_startup",
    "run_store",
    "run_training",
    "run_tta",
]

SCHEMA = "defectscan-bench/1"
# The sections in the order they run, each ``run_<section>(cfg, notes, log) -> rows``.
_SECTIONS: dict[str, Callable[[BenchConfig, list[str], Log], list[Any]]] = {
    "engines": run_engines,
    "pipeline": run_pipeline,
    "large": run_large,
    "store": run_store,
    "training": run_training,
    "tta": run_tta,
    "autoint8": run_autoint8,
    "latency": run_latency,
    "startup": run_startup,
    "console": run_console,
}


# -- command line -----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The command-line options (defaults of ``None`` are filled by :func:`config_from_args`)."""
    parser = argparse.ArgumentParser(
        description="defectscan throughput benchmarks (engines, pipeline, store)"
    )
    parser.add_argument(
        "--sections",
        default=",".join(SECTIONS),
        help="comma-separated: engines,pipeline,large,store,training,tta,autoint8,latency,startup,"
        "console",
    )
    parser.add_argument("--seconds", type=float, default=None, help="budget per measurement")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (5)")
    parser.add_argument("--width", type=int, default=None, help="UNet base width (64 = seed)")
    parser.add_argument("--tile", type=int, default=None, help="tile size in pixels (256)")
    parser.add_argument("--batch", type=int, default=None, help="torch batch (8 CPU, 32 CUDA)")
    parser.add_argument("--images", type=int, default=None, help="pipeline images (16)")
    parser.add_argument("--image-size", type=int, default=None, help="pipeline image side (512)")
    parser.add_argument("--store-n", type=int, default=None, help="store: inspections (2000)")
    parser.add_argument("--store-batch", type=int, default=None, help="store: batch (200)")
    parser.add_argument("--train-width", type=int, default=None, help="training: width (32)")
    parser.add_argument("--train-batch", type=int, default=None, help="training: CPU batch (8)")
    parser.add_argument("--large-size", type=int, default=None, help="large frame side (16384)")
    parser.add_argument("--large-width", type=int, default=None, help="large frame: width (8)")
    parser.add_argument(
        "--console-rows",
        type=int,
        default=None,
        help="console: inspections to fill (100000; env DEFECTSCAN_BENCH_CONSOLE_ROWS)",
    )
    parser.add_argument(
        "--console-requests", type=int, default=None, help="console: requests per page (20)"
    )
    parser.add_argument(
        "--console-databases", default="sqlite,postgresql", help="console: databases measured"
    )
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    parser.add_argument(
        "--quick", action="store_true", help="smoke mode: width 8, tile 64, about 1 s each"
    )
    parser.add_argument("--out", type=Path, default=None, help="JSON file (var/bench/bench.json)")
    return parser


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    """Options -> config: quick-mode defaults, the device resolved, values checked."""
    sections = tuple(s.strip() for s in args.sections.split(",") if s.strip())
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown or not sections:
        msg = f"unknown sections {unknown or sections}: use a comma-separated subset of {SECTIONS}"
        raise SystemExit(msg)
    device = str(resolve_device(args.device))
    cuda = device.startswith("cuda")
    quick = bool(args.quick)

    def pick(value: Any, normal: Any, smoke: Any) -> Any:
        return value if value is not None else (smoke if quick else normal)

    cfg = BenchConfig(
        sections=sections,
        seconds=float(pick(args.seconds, 10.0, 1.0)),
        rounds=int(pick(args.rounds, 5, 3)),
        width=int(pick(args.width, 64, 8)),
        tile=int(pick(args.tile, 256, 64)),
        batch=int(pick(args.batch, 32 if cuda else CPU_ENGINE_BATCH, 32 if cuda else 8)),
        device=device,
        quick=quick,
        images=int(pick(args.images, 16, 4)),
        image_size=int(pick(args.image_size, 512, 128)),
        store_n=int(pick(args.store_n, 2000, 100)),
        store_batch=int(pick(args.store_batch, 200, 20)),
        train_width=int(pick(args.train_width, 32, 8)),
        train_batch=int(pick(args.train_batch, 8, 4)),
        large_size=int(pick(args.large_size, 16384, 2048)),
        large_width=int(pick(args.large_width, 8, 8)),
        console_rows=int(
            args.console_rows
            if args.console_rows is not None
            else os.environ.get("DEFECTSCAN_BENCH_CONSOLE_ROWS") or pick(None, 100_000, 2000)
        ),
        console_requests=int(pick(args.console_requests, 20, 2)),
        console_databases=tuple(d for d in args.console_databases.split(",") if d.strip()),
        out=args.out or get_settings().var_dir / "bench" / "bench.json",
    )
    for name in (
        "rounds",
        "width",
        "tile",
        "batch",
        "images",
        "image_size",
        "store_n",
        "console_rows",
        "console_requests",
    ):
        if getattr(cfg, name) < 1:
            msg = f"--{name.replace('_', '-')} must be >= 1, got {getattr(cfg, name)}"
            raise SystemExit(msg)
    if cfg.seconds <= 0:
        msg = f"--seconds must be > 0, got {cfg.seconds}"
        raise SystemExit(msg)
    if cfg.tile % 16:
        msg = f"--tile must be a multiple of 16 (the UNet halves it 4 times), got {cfg.tile}"
        raise SystemExit(msg)
    return cfg


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the chosen sections, print the tables, write the JSON; returns the payload."""
    cfg = config_from_args(build_parser().parse_args(argv))
    err = Console(stderr=True) if sys.stderr.isatty() else Console(stderr=True, width=160)

    def log(message: str) -> None:
        err.log(message)

    machine = machine_info(cfg.device)
    notes: list[str] = []
    cores = machine["affinity_cores"] or machine["cores"] or 1
    if machine["loadavg_start"] and machine["loadavg_start"][0] > 0.5 * cores:
        notes.append(
            f"machine busy at start (load average {machine['loadavg_start'][0]} on {cores} "
            "cores): absolute figures are low; compare rows within this run"
        )
    payload: dict[str, Any] = {
        "schema": SCHEMA,
        "created_at": datetime.now(UTC).isoformat(),
        "machine": machine,
        "config": cfg.to_dict(),
        "engines": [],
        "pipeline": [],
        "large": [],
        "store": [],
        "training": [],
        "autoint8": [],
        "latency": [],
        "startup": [],
        "console": [],
        "notes": notes,
    }
    for name in cfg.sections:
        payload[name] = _SECTIONS[name](cfg, notes, log)
    machine["loadavg_end"] = loadavg()
    cfg.out.parent.mkdir(parents=True, exist_ok=True)
    cfg.out.write_text(json.dumps(payload, indent=2) + "\n")
    print_tables(payload)
    print_fastline_tables(payload)
    print_console_table(payload)
    stdout_console().print(f"wrote {cfg.out}")
    return payload


if __name__ == "__main__":
    main()

"""The ``engines`` section: model-only tiles/s of every inference engine, side by side.

The seed architecture (``UNet(3, 1, bilinear=True, base_width=--width)``, random init, eval) on
``--tile`` square tiles cut from synthetic camera images. Rows:

- ``seed-naive``: what a user of the seed writes: eager fp32, NCHW, batch 1, ``model(x)`` then
  sigmoid under ``torch.no_grad()``, no BatchNorm folding.
- ``torch-fp32-b8``: :class:`~defectscan.model.backends.TorchBackend` with precision fp32
  (channels_last, BN folded), batch 8.
- ``torch-bf16-b8``: TorchBackend default (auto) precision: channels_last + BN folded + bf16
  autocast where the CPU supports bf16 (named ``torch-auto-b8`` where auto resolves to fp32).
- ``onnxruntime-fp32-b8``: the exported ONNX model in ONNX Runtime.
- ``openvino-b8``: OpenVINO with its default precision (bf16 on CPUs with native bf16).
- ``openvino-fp32-b8``: OpenVINO with the f32 inference-precision hint.
- ``openvino-int8-b8``: NNCF post-training INT8, calibrated on synthetic camera frames.

On CUDA the torch rows become ``seed-naive`` (on the GPU), ``torch-fp32-bN``, ``torch-bf16-bN``
and ``torch-fp16-bN`` with ``N = --batch`` (default 32), timed with ``torch.cuda.synchronize()``,
plus ``torch-compiled-{bf16,fp16}-bN``; the OpenVINO rows (and ONNX Runtime unless its build has
CUDA) run on the CPU and say so.
Each row: one warm-up pass (which also measures ``max_abs_diff``, the largest absolute
difference of its probabilities from the eager fp32 reference computed on the CPU on the same
tiles: "exported models match torch output"), then ``--rounds`` timing rounds of about
``--seconds / --rounds`` seconds each (at least one call), the engines interleaved round by
round. ``tflops`` is the achieved rate at about 62 GFLOP per 256x256 tile for the seed width,
scaled by ``(tile/256)^2 (width/64)^2``; ``pct_peak`` compares it with the card's dense bf16 peak
(CUDA rows only; null if unknown).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from defectscan.errors import DefectscanError
from defectscan.model.backends import OnnxRuntimeBackend, OpenVINOBackend, TorchBackend
from defectscan.model.unet import UNet

# Sibling modules import as top-level modules, whether bench.py runs as a script or is imported.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import (
    CPU_ENGINE_BATCH,
    BenchConfig,
    Log,
    TimedEngine,
    bench_spec,
    gpu_peak,
    make_tiles,
    precision_label,
    rate_stats,
    reference_probs,
    seed_model,
    seed_naive_engine,
    sync_for,
    timed_round,
)

__all__ = ["REFERENCE_CPU", "run_engines"]

# DESIGN.md section 6: idle 2-core reference CPU, width 64, 256x256 tiles (tiles/s).
REFERENCE_CPU: dict[str, tuple[float, float]] = {
    "seed-naive": (2.7, 2.8),
    "torch-fp32-b8": (1.9, 2.5),
    "torch-bf16-b8": (3.6, 4.9),
    "onnxruntime-fp32-b8": (3.1, 3.4),
    "openvino-b8": (6.9, 7.2),
}


def _build_engines(
    model: UNet, cfg: BenchConfig, notes: list[str]
) -> tuple[list[TimedEngine], list[dict[str, Any]]]:
    """The engines to time, plus rows for those that could not be built here."""
    engines: list[TimedEngine] = []
    failed: list[dict[str, Any]] = []
    cuda = cfg.device.startswith("cuda")
    cpu_sync = sync_for("cpu")

    def attempt(
        name: str, engine: str, precision: str, batch: int, build: Callable[[], TimedEngine]
    ) -> None:
        try:
            engines.append(build())
        except (DefectscanError, ImportError, RuntimeError, OSError) as exc:
            message = f"{type(exc).__name__}: {exc}"
            notes.append(f"{name} skipped: {message}")
            failed.append(
                {
                    **_empty_row(name, engine, precision, batch, cfg),
                    "error": message,
                }
            )

    attempt("seed-naive", "torch", "fp32", 1, lambda: seed_naive_engine(model, cfg.device))

    def torch_engine(precision: str, batch: int) -> TimedEngine:
        backend = TorchBackend(model, "sigmoid", device=cfg.device, precision=precision)  # type: ignore[arg-type]
        label = backend.precision if precision == "auto" and backend.precision != "fp32" else ""
        name = f"torch-{label or precision}-b{batch}"
        note = "channels_last, BN folded"
        if precision == "auto":
            note += f", auto precision -> {backend.precision}"
        return TimedEngine(
            name,
            "torch",
            backend.device,
            backend.precision,
            batch,
            backend.infer,
            sync_for(backend.device),
            note=note,
        )

    if cuda:
        for precision in ("fp32", "bf16", "fp16"):
            attempt(
                f"torch-{precision}-b{cfg.batch}",
                "torch",
                precision,
                cfg.batch,
                lambda p=precision: torch_engine(p, cfg.batch),  # type: ignore[misc]
            )
    else:
        attempt(
            "torch-fp32-b8", "torch", "fp32", cfg.batch, lambda: torch_engine("fp32", cfg.batch)
        )
        attempt(
            "torch-bf16-b8", "torch", "auto", cfg.batch, lambda: torch_engine("auto", cfg.batch)
        )

    def ort_engine() -> TimedEngine:
        backend = OnnxRuntimeBackend(model, "sigmoid", n_channels=3, tile=cfg.tile)
        return TimedEngine(
            f"onnxruntime-fp32-b{CPU_ENGINE_BATCH}",
            "onnxruntime",
            backend.device,
            "fp32",
            CPU_ENGINE_BATCH,
            backend.infer,
            sync_for(backend.device),
            note="exported ONNX, opset 17"
            + (" (CPU only)" if cuda and backend.device == "cpu" else ""),
        )

    def ov_engine(precision: str) -> TimedEngine:
        backend = OpenVINOBackend(
            model,
            "sigmoid",
            n_channels=3,
            tile=cfg.tile,
            precision=precision,  # type: ignore[arg-type]
        )
        suffix = "" if precision == "auto" else f"-{precision}"
        hint = "default hint (bf16 where the CPU has it)" if precision == "auto" else "f32 hint"
        return TimedEngine(
            f"openvino{suffix}-b{CPU_ENGINE_BATCH}",
            "openvino",
            "cpu",
            precision_label("openvino", precision),
            CPU_ENGINE_BATCH,
            backend.infer,
            cpu_sync,
            note=hint + (" (CPU only)" if cuda else ""),
        )

    def ov_int8_engine() -> TimedEngine:
        from defectscan import synth
        from defectscan.model.export import export_model

        with tempfile.TemporaryDirectory(prefix="defectscan-bench-int8-") as tmp:
            calib = Path(tmp) / "calib"
            # Calibration images: synthetic camera frames, tiled as inspection tiles them.
            synth.write_camera_folder(calib, 8, seed=11, height=2 * cfg.tile, width=2 * cfg.tile)
            exported = export_model(
                model,
                bench_spec(cfg),
                sha256="bench",
                fmt="openvino",
                out=Path(tmp) / "engine",
                tile=cfg.tile,
                int8=True,
                calibration=calib,
            )
            backend = OpenVINOBackend.from_file(exported.model_file, precision="int8")
        return TimedEngine(
            f"openvino-int8-b{CPU_ENGINE_BATCH}",
            "openvino",
            "cpu",
            "int8",
            CPU_ENGINE_BATCH,
            backend.infer,
            cpu_sync,
            note="NNCF post-training INT8, calibrated on synthetic camera frames"
            + (" (CPU only)" if cuda else ""),
        )

    b = CPU_ENGINE_BATCH
    attempt(f"onnxruntime-fp32-b{b}", "onnxruntime", "fp32", b, ort_engine)
    attempt(f"openvino-b{b}", "openvino", "auto", b, lambda: ov_engine("auto"))
    attempt(f"openvino-fp32-b{b}", "openvino", "fp32", b, lambda: ov_engine("fp32"))
    attempt(f"openvino-int8-b{b}", "openvino", "int8", b, ov_int8_engine)
    if cuda:

        def compiled(precision: str) -> TimedEngine:
            backend = TorchBackend(
                model,
                "sigmoid",
                device=cfg.device,
                precision=precision,  # type: ignore[arg-type]
                compile="on",
            )
            return TimedEngine(
                f"torch-compiled-{precision}-b{cfg.batch}",
                "torch",
                backend.device,
                backend.precision,
                cfg.batch,
                backend.infer,
                sync_for(backend.device),
                note="torch.compile max-autotune + CUDA graph, pinned host buffers",
            )

        for precision in ("bf16", "fp16"):
            attempt(
                f"torch-compiled-{precision}-b{cfg.batch}",
                "torch",
                precision,
                cfg.batch,
                lambda p=precision: compiled(p),  # type: ignore[misc]
            )
    return engines, failed


def _empty_row(
    name: str, engine: str, precision: str, batch: int, cfg: BenchConfig
) -> dict[str, Any]:
    return {
        "name": name,
        "engine": engine,
        "device": cfg.device,
        "precision": precision,
        "batch": batch,
        "tile": cfg.tile,
        "width": cfg.width,
        "tiles_per_s": rate_stats([]),
        "per_round": [],
        "rounds": 0,
        "calls": 0,
        "max_abs_diff": None,
        "speedup_vs_seed_naive": None,
        "tflops": None,
        "pct_peak": None,
        "reference_tiles_per_s": None,
        "note": "",
        "error": None,
    }


def _run_all(engine: TimedEngine, tiles: np.ndarray) -> np.ndarray:
    return np.concatenate(
        [engine.infer(tiles[i : i + engine.batch]) for i in range(0, len(tiles), engine.batch)]
    )


def run_engines(cfg: BenchConfig, notes: list[str], log: Log) -> list[dict[str, Any]]:
    """Model-only tiles/s of each engine, interleaved across rounds, with output differences."""
    model = seed_model(cfg.width)
    log(f"engines: building (exports to ONNX and OpenVINO), width {cfg.width}, tile {cfg.tile}")
    engines, failed = _build_engines(model, cfg, notes)
    n_ref = max([e.batch for e in engines] + [CPU_ENGINE_BATCH])
    tiles = make_tiles(n_ref, cfg.tile)
    log(f"engines: eager fp32 reference on {n_ref} tiles")
    reference = reference_probs(model, tiles)
    diffs: dict[str, float] = {}
    for engine in engines:
        log(f"engines: warm-up {engine.name}")
        probs = _run_all(engine, tiles[: max(engine.batch, CPU_ENGINE_BATCH)])
        diffs[engine.name] = float(np.abs(probs - reference[: len(probs)]).max())
        engine.infer(tiles[: engine.batch])  # a second call: allocators and caches settled
        engine.sync()
    budget = cfg.seconds / cfg.rounds
    for r in range(cfg.rounds):
        log(f"engines: round {r + 1}/{cfg.rounds}")
        for engine in engines:
            rate, calls = timed_round(engine.infer, engine.sync, tiles[: engine.batch], budget)
            engine.rates.append(rate)
            engine.calls += calls
    peak = gpu_peak(torch.cuda.get_device_name()) if cfg.device.startswith("cuda") else None
    naive = next((statistics.median(e.rates) for e in engines if e.name == "seed-naive"), None)
    rows = []
    for engine in engines:
        median = statistics.median(engine.rates)
        tflops = median * cfg.flop_per_tile / 1e12
        reference_range = (
            REFERENCE_CPU.get(engine.name)
            if (cfg.device == "cpu" and cfg.width == 64 and cfg.tile == 256)
            else None
        )
        rows.append(
            {
                **_empty_row(engine.name, engine.engine, engine.precision, engine.batch, cfg),
                "device": engine.device,
                "tiles_per_s": rate_stats(engine.rates),
                "per_round": [round(x, 4) for x in engine.rates],
                "rounds": len(engine.rates),
                "calls": engine.calls,
                "max_abs_diff": diffs[engine.name],
                "speedup_vs_seed_naive": round(median / naive, 3) if naive else None,
                "tflops": round(tflops, 6),
                "pct_peak": (
                    round(100 * tflops / peak, 2)
                    if peak and engine.device.startswith("cuda")
                    else None
                ),
                "reference_tiles_per_s": list(reference_range) if reference_range else None,
                "note": engine.note,
            }
        )
    if cfg.device.startswith("cuda") and peak is None:
        notes.append(f"GPU {torch.cuda.get_device_name()}: peak unknown, no % of peak")
    return rows + failed

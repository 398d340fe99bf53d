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
``engines``: model only. The seed architecture (``UNet(3, 1, bilinear=True,
base_width=--width)``, random init, eval) on ``--tile`` square tiles cut from synthetic camera
images. Rows:

- ``seed-naive``: what a user of the seed writes: eager fp32, NCHW, batch 1, ``model(x)`` then
  sigmoid under ``torch.no_grad()``, no BatchNorm folding.
- ``torch-fp32-b8``: :class:`~defectscan.model.backends.TorchBackend` with precision fp32
  (channels_last, BN folded), batch 8.
- ``torch-bf16-b8``: TorchBackend default (auto) precision: channels_last + BN folded + bf16
  autocast where the CPU supports bf16 (named ``torch-auto-b8`` where auto resolves to fp32).
- ``onnxruntime-fp32-b8``: the exported ONNX model in ONNX Runtime.
- ``openvino-b8``: OpenVINO with its default precision (bf16 on CPUs with native bf16).
- ``openvino-fp32-b8``: OpenVINO with the f32 inference-precision hint.

On CUDA the torch rows become ``seed-naive`` (on the GPU), ``torch-fp32-bN``, ``torch-bf16-bN``
and ``torch-fp16-bN`` with ``N = --batch`` (default 32), timed with ``torch.cuda.synchronize()``;
the OpenVINO rows (and ONNX Runtime unless its build has CUDA) run on the CPU and say so.
Each row: one warm-up pass (which also measures ``max_abs_diff``, the largest absolute
difference of its probabilities from the eager fp32 reference computed on the CPU on the same
tiles: "exported models match torch output"), then ``--rounds`` timing rounds of about
``--seconds / --rounds`` seconds each (at least one call). ``tflops`` is the achieved rate at
about 62 GFLOP per 256x256 tile for the seed width, scaled by ``(tile/256)^2 (width/64)^2``;
``pct_peak`` compares it with the card's dense bf16 peak (CUDA rows only; null if unknown).

``pipeline``: file in to database row. ``--images`` synthetic camera PNGs of
``--image-size`` pixels go through :class:`~defectscan.pipeline.Inspector` (read, hash,
decode, tile, infer, stitch, post-process) and a :class:`~defectscan.store.writer.ResultWriter`
(batches of 8) into a fresh, migrated SQLite file, for the torch (auto precision) and OpenVINO
backends. Every round uses a new model version, so every row is really inserted (checked).
Interleaved with each round, the same backend object is timed alone on batches of tiles;
``ratio`` = pipeline tiles/s / engine-alone tiles/s (target: >= 1.0, or close: host work
should overlap inference). ``vs_seed_naive`` = pipeline tiles/s / the seed's own loop (batch
1, eager fp32) on the same architecture and tiles, timed in the same rounds. A round is one
pass over all images; rounds repeat until ``--seconds`` per backend is spent, at most
``--rounds``.

``store``: ``benchmarks/bench_store.py``'s ``run()``: inspections (5 defects each) per second,
batched vs row by row, SQLite and PostgreSQL (skipped with a note when unreachable).

``training``: :func:`defectscan.training.train` on a synthetic dataset (``--images`` frames of
``--image-size``), UNet width ``--train-width`` (32; quick: 8), ``--tile`` crops, batch
``--train-batch`` (16 on CUDA, 8 on the CPU), auto precision, default loader workers, on the
CPU and on CUDA where present. Two epochs sized to about ``--seconds`` each; the second is
reported: ``crops_per_s`` (training crops through data + step) and the share of the epoch's time
in ``data`` (waiting for the loader), ``step`` (forward, backward, optimiser) and ``val``
(whole-frame validation with on-device metrics).

JSON (``--out``, default ``var/bench/bench.json``), schema ``defectscan-bench/1``::

    {
      "schema": "defectscan-bench/1",
      "created_at": "<ISO 8601 UTC>",
      "machine": {"cpu_model", "cores", "affinity_cores", "torch_threads",
                  "torch_interop_threads", "threading_env", "cpu_bf16", "openvino_cpu_capabilities",
                  "openvino_default_precision", "python", "platform", "torch",
                  "openvino", "onnxruntime", "numpy",
                  "device", "gpu_name", "gpu_peak_tflops", "loadavg_start", "loadavg_end"},
      "config": {"sections", "seconds", "rounds", "width", "tile", "batch", "device",
                 "quick", "images", "image_size", "overlap", "store_n", "store_batch",
                 "flop_per_tile"},
      "engines": [{"name", "engine", "device", "precision", "batch", "tile", "width",
                   "tiles_per_s": {"median", "min", "max"}, "per_round": [...],
                   "rounds", "calls", "max_abs_diff", "speedup_vs_seed_naive",
                   "tflops", "pct_peak", "reference_tiles_per_s", "note", "error"}],
      "pipeline": [{"name", "backend", "device", "precision", "images", "image_size",
                    "tiles_per_image", "tiles", "rounds", "rows_written",
                    "images_per_s": {...}, "tiles_per_s": {...},
                    "engine_tiles_per_s": {...}, "ratio", "stage_ms", "error"}],
      "store": [<bench_store.run() rows>],
      "training": [{"name", "device", "precision", "width", "tile", "batch", "workers",
                    "crops", "crops_per_s", "share": {"data", "step", "val"}, "seconds",
                    "error"}],
      "notes": ["..."]
    }

Rates are ``null`` (and ``error`` says why) for an engine that could not be built here, e.g.
OpenVINO not installed. Sections that were not run hold an empty list.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from defectscan.config import get_settings
from defectscan.errors import DefectscanError
from defectscan.model.backends import (
    OnnxRuntimeBackend,
    OpenVINOBackend,
    TorchBackend,
    autocast_dtype,
    cpu_model,
    cpu_supports_bf16,
    make_backend,
    resolve_device,
)
from defectscan.model.checkpoint import build_model
from defectscan.model.spec import ModelSpec
from defectscan.model.unet import UNet
from defectscan.tiling import make_grid

__all__ = [
    "SCHEMA",
    "BenchConfig",
    "build_parser",
    "config_from_args",
    "machine_info",
    "main",
    "run_engines",
    "run_pipeline",
    "run_store",
    "run_training",
]

SCHEMA = "defectscan-bench/1"
SECTIONS = ("engines", "pipeline", "large", "store", "training")
SEED_TILE_FLOP = 62e9  # seed UNet (3->1, bilinear, width 64) on one 256x256 tile
# Dense bf16 tensor-core peaks (TFLOP/s), by a substring of torch.cuda.get_device_name().
# Checked in order: the more specific names first.
GPU_PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("GH200", 989.0),
    ("H200", 989.0),
    ("H100", 989.0),
    ("A100", 312.0),
)
# DESIGN.md section 6: idle 2-core reference CPU, width 64, 256x256 tiles (tiles/s).
REFERENCE_CPU: dict[str, tuple[float, float]] = {
    "seed-naive": (2.7, 2.8),
    "torch-fp32-b8": (1.9, 2.5),
    "torch-bf16-b8": (3.6, 4.9),
    "onnxruntime-fp32-b8": (3.1, 3.4),
    "openvino-b8": (6.9, 7.2),
}
# Environment variables that change how the engines' thread pools wait and spread.
_THREADING_ENV = (
    "OMP_NUM_THREADS",
    "OMP_WAIT_POLICY",
    "GOMP_SPINCOUNT",
    "KMP_BLOCKTIME",
    "MKL_NUM_THREADS",
    "OV_CPU_NUM_STREAMS",
)
CPU_ENGINE_BATCH = 8
WRITER_BATCH = 8


@dataclass(frozen=True)
class BenchConfig:
    """What to measure and for how long."""

    sections: tuple[str, ...] = SECTIONS
    seconds: float = 10.0
    rounds: int = 5
    width: int = 64
    tile: int = 256
    batch: int = CPU_ENGINE_BATCH
    device: str = "cpu"
    quick: bool = False
    images: int = 16
    image_size: int = 512
    store_n: int = 2000
    store_batch: int = 200
    train_width: int = 32
    train_batch: int = 8
    large_size: int = 16384
    large_width: int = 8
    out: Path = Path("var/bench/bench.json")

    @property
    def overlap(self) -> int:
        """Tile overlap of the pipeline section (the spec default: 32 px at 256)."""
        return self.tile // 8

    @property
    def flop_per_tile(self) -> float:
        """Approximate FLOP of one forward pass over one tile."""
        return SEED_TILE_FLOP * (self.tile / 256) ** 2 * (self.width / 64) ** 2

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form for the output file."""
        return {
            "sections": list(self.sections),
            "seconds": self.seconds,
            "rounds": self.rounds,
            "width": self.width,
            "tile": self.tile,
            "batch": self.batch,
            "device": self.device,
            "quick": self.quick,
            "images": self.images,
            "image_size": self.image_size,
            "overlap": self.overlap,
            "store_n": self.store_n,
            "store_batch": self.store_batch,
            "train_width": self.train_width,
            "train_batch": self.train_batch,
            "large_size": self.large_size,
            "large_width": self.large_width,
            "flop_per_tile": self.flop_per_tile,
        }


@dataclass
class _Engine:
    """One row of the engines section: a way to turn tiles into probabilities."""

    name: str
    engine: str
    device: str
    precision: str
    batch: int
    infer: Callable[[np.ndarray], np.ndarray]
    sync: Callable[[], None]
    note: str = ""
    rates: list[float] = field(default_factory=list)
    calls: int = 0


# -- machine ----------------------------------------------------------------------------------


def _version(module: str) -> str | None:
    try:
        mod = __import__(module)
    except ImportError:
        return None
    return str(getattr(mod, "__version__", "unknown"))


def _openvino_capabilities() -> list[str] | None:
    try:
        import openvino as ov

        return [str(c) for c in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")]
    except (ImportError, RuntimeError):
        return None


def _openvino_default_precision() -> str | None:
    """The CPU plugin's default inference precision here (``bf16`` on CPUs with AMX/BF16)."""
    try:
        import openvino as ov

        return str(ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT").to_string())
    except (ImportError, RuntimeError, AttributeError):
        return None


def _precision_label(backend_name: str, precision: str) -> str:
    """What ``auto`` means for this engine on this machine, e.g. ``bf16 (auto)``."""
    if backend_name == "openvino" and precision == "auto":
        default = _openvino_default_precision()
        return f"{default} (auto)" if default else "auto"
    if backend_name == "openvino" and precision == "fp32":
        return "f32"
    return precision


def _gpu_peak(name: str | None) -> float | None:
    if not name:
        return None
    for key, peak in GPU_PEAK_TFLOPS:
        if key in name:
            return peak
    return None


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _cpu_flags() -> dict[str, bool]:
    """The instruction-set extensions the engines' speed depends on."""
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    return {
        "avx2": "avx2" in flags,
        "avx512": "avx512f" in flags,
        "avx512_bf16": "avx512_bf16" in flags,
        "amx": "amx_tile" in flags,
        "avx512_vnni": "avx512_vnni" in flags or "avx_vnni" in flags,
    }


def machine_info(device: str) -> dict[str, Any]:
    """CPU, library versions, threads and load: what the figures depend on."""
    gpu_name = torch.cuda.get_device_name() if device.startswith("cuda") else None
    try:
        affinity: int | None = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = None
    return {
        "cpu_model": cpu_model(),
        "cpu_flags": _cpu_flags(),
        "cores": os.cpu_count(),
        "affinity_cores": affinity,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "threading_env": {k: os.environ[k] for k in _THREADING_ENV if k in os.environ},
        "cpu_bf16": cpu_supports_bf16(),
        "openvino_cpu_capabilities": _openvino_capabilities(),
        "openvino_default_precision": _openvino_default_precision(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "openvino": _version("openvino"),
        "onnxruntime": _version("onnxruntime"),
        "numpy": np.__version__,
        "device": device,
        "gpu_name": gpu_name,
        "gpu_peak_tflops": _gpu_peak(gpu_name),
        "loadavg_start": _loadavg(),
        "loadavg_end": None,
    }


# -- helpers ----------------------------------------------------------------------------------


def _stats(values: Sequence[float]) -> dict[str, float | None]:
    if not values:
        return {"median": None, "min": None, "max": None}
    return {
        "median": round(statistics.median(values), 4),
        "min": round(min(values), 4),
        "max": round(max(values), 4),
    }


def _tiles(n: int, tile: int, seed: int = 0) -> np.ndarray:
    """``n`` model-input tiles ``[n, 3, tile, tile]`` in [0, 1], cut from synthetic parts."""
    from defectscan import synth

    out = np.empty((n, 3, tile, tile), np.float32)
    for i in range(n):
        image = synth.make_sample(synth.sample_seed(seed, i), height=tile, width=tile).image
        if image.ndim == 2:
            image = np.repeat(image[:, :, None], 3, axis=2)
        # BGR (OpenCV) -> RGB planes, as the pipeline feeds an RGB model
        out[i] = image[:, :, 2::-1].transpose(2, 0, 1).astype(np.float32) / 255.0
    return out


def _seed_model(width: int, seed: int = 0) -> UNet:
    torch.manual_seed(seed)
    return UNet(3, 1, bilinear=True, base_width=width).eval()


def _reference(model: UNet, tiles: np.ndarray) -> np.ndarray:
    """Eager fp32 probabilities on the CPU, NCHW, unmodified model: the yardstick."""
    out = []
    with torch.no_grad():
        for i in range(0, len(tiles), CPU_ENGINE_BATCH):
            x = torch.from_numpy(tiles[i : i + CPU_ENGINE_BATCH])
            out.append(torch.sigmoid(model(x)).numpy())
    return np.concatenate(out)


def _sync_for(device: str) -> Callable[[], None]:
    if device.startswith("cuda"):
        return torch.cuda.synchronize
    return lambda: None


def _seed_naive(model: UNet, device: str) -> _Engine:
    """The seed's predict loop: one tile at a time, eager fp32, ``torch.no_grad()``."""
    net = _clone(model).to(device)

    def infer(batch: np.ndarray) -> np.ndarray:
        out = []
        with torch.no_grad():
            for tile in batch:
                x = torch.from_numpy(tile[None]).to(device)
                out.append(torch.sigmoid(net(x)).cpu().numpy())
        return np.concatenate(out)

    return _Engine(
        "seed-naive",
        "torch",
        device,
        "fp32",
        1,
        infer,
        _sync_for(device),
        note="eager NCHW, no BN folding",
    )


def _clone(model: UNet) -> UNet:
    twin = UNet(model.n_channels, model.n_classes, model.bilinear, model.base_width)
    twin.load_state_dict(model.state_dict())
    return twin.eval()


def _build_engines(
    model: UNet, cfg: BenchConfig, notes: list[str]
) -> tuple[list[_Engine], list[dict[str, Any]]]:
    """The engines to time, plus rows for those that could not be built here."""
    engines: list[_Engine] = []
    failed: list[dict[str, Any]] = []
    cuda = cfg.device.startswith("cuda")
    cpu_sync = _sync_for("cpu")

    def attempt(
        name: str, engine: str, precision: str, batch: int, build: Callable[[], _Engine]
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

    attempt("seed-naive", "torch", "fp32", 1, lambda: _seed_naive(model, cfg.device))

    def torch_engine(precision: str, batch: int) -> _Engine:
        backend = TorchBackend(model, "sigmoid", device=cfg.device, precision=precision)  # type: ignore[arg-type]
        label = backend.precision if precision == "auto" and backend.precision != "fp32" else ""
        name = f"torch-{label or precision}-b{batch}"
        note = "channels_last, BN folded"
        if precision == "auto":
            note += f", auto precision -> {backend.precision}"
        return _Engine(
            name,
            "torch",
            backend.device,
            backend.precision,
            batch,
            backend.infer,
            _sync_for(backend.device),
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

    def ort_engine() -> _Engine:
        backend = OnnxRuntimeBackend(model, "sigmoid", n_channels=3, tile=cfg.tile)
        return _Engine(
            f"onnxruntime-fp32-b{CPU_ENGINE_BATCH}",
            "onnxruntime",
            backend.device,
            "fp32",
            CPU_ENGINE_BATCH,
            backend.infer,
            _sync_for(backend.device),
            note="exported ONNX, opset 17"
            + (" (CPU only)" if cuda and backend.device == "cpu" else ""),
        )

    def ov_engine(precision: str) -> _Engine:
        backend = OpenVINOBackend(
            model,
            "sigmoid",
            n_channels=3,
            tile=cfg.tile,
            precision=precision,  # type: ignore[arg-type]
        )
        suffix = "" if precision == "auto" else f"-{precision}"
        hint = "default hint (bf16 where the CPU has it)" if precision == "auto" else "f32 hint"
        return _Engine(
            f"openvino{suffix}-b{CPU_ENGINE_BATCH}",
            "openvino",
            "cpu",
            _precision_label("openvino", precision),
            CPU_ENGINE_BATCH,
            backend.infer,
            cpu_sync,
            note=hint + (" (CPU only)" if cuda else ""),
        )

    def ov_int8_engine() -> _Engine:
        from defectscan.model.export import export_model

        with tempfile.TemporaryDirectory(prefix="defectscan-bench-int8-") as tmp:
            calib = Path(tmp) / "calib"
            # Calibration images: synthetic camera frames, tiled as inspection tiles them.
            synth.write_camera_folder(calib, 8, seed=11, height=2 * cfg.tile, width=2 * cfg.tile)
            exported = export_model(
                model,
                _bench_spec(cfg),
                sha256="bench",
                fmt="openvino",
                out=Path(tmp) / "engine",
                tile=cfg.tile,
                int8=True,
                calibration=calib,
            )
            backend = OpenVINOBackend.from_file(exported.model_file, precision="int8")
        return _Engine(
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

    from defectscan import synth

    b = CPU_ENGINE_BATCH
    attempt(f"onnxruntime-fp32-b{b}", "onnxruntime", "fp32", b, ort_engine)
    attempt(f"openvino-b{b}", "openvino", "auto", b, lambda: ov_engine("auto"))
    attempt(f"openvino-fp32-b{b}", "openvino", "fp32", b, lambda: ov_engine("fp32"))
    attempt(f"openvino-int8-b{b}", "openvino", "int8", b, ov_int8_engine)
    if cuda:

        def compiled(precision: str) -> _Engine:
            backend = TorchBackend(
                model,
                "sigmoid",
                device=cfg.device,
                precision=precision,  # type: ignore[arg-type]
                compile="on",
            )
            return _Engine(
                f"torch-compiled-{precision}-b{cfg.batch}",
                "torch",
                backend.device,
                backend.precision,
                cfg.batch,
                backend.infer,
                _sync_for(backend.device),
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


def _bench_spec(cfg: BenchConfig) -> ModelSpec:
    return ModelSpec(
        n_channels=3,
        activation="sigmoid",
        class_names=("defect",),
        base_width=cfg.width,
        tile_size=cfg.tile,
        tile_overlap=cfg.overlap,
        name="bench",
    )


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
        "tiles_per_s": _stats([]),
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


def _run_all(engine: _Engine, tiles: np.ndarray) -> np.ndarray:
    return np.concatenate(
        [engine.infer(tiles[i : i + engine.batch]) for i in range(0, len(tiles), engine.batch)]
    )


def _timed_round(
    infer: Callable[[np.ndarray], np.ndarray],
    sync: Callable[[], None],
    batch: np.ndarray,
    budget_s: float,
) -> tuple[float, int]:
    """Tiles/s over repeated calls for about ``budget_s`` seconds (at least one call)."""
    calls = 0
    sync()
    start = time.perf_counter()
    while True:
        infer(batch)
        sync()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= budget_s:
            return calls * len(batch) / elapsed, calls


# -- sections ---------------------------------------------------------------------------------


def run_engines(
    cfg: BenchConfig, notes: list[str], log: Callable[[str], None]
) -> list[dict[str, Any]]:
    """Model-only tiles/s of each engine, interleaved across rounds, with output differences."""
    model = _seed_model(cfg.width)
    log(f"engines: building (exports to ONNX and OpenVINO), width {cfg.width}, tile {cfg.tile}")
    engines, failed = _build_engines(model, cfg, notes)
    n_ref = max([e.batch for e in engines] + [CPU_ENGINE_BATCH])
    tiles = _tiles(n_ref, cfg.tile)
    log(f"engines: eager fp32 reference on {n_ref} tiles")
    reference = _reference(model, tiles)
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
            rate, calls = _timed_round(engine.infer, engine.sync, tiles[: engine.batch], budget)
            engine.rates.append(rate)
            engine.calls += calls
    peak = _gpu_peak(torch.cuda.get_device_name()) if cfg.device.startswith("cuda") else None
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
                "tiles_per_s": _stats(engine.rates),
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


def _pipeline_spec(cfg: BenchConfig) -> ModelSpec:
    return ModelSpec(
        n_channels=3,
        activation="sigmoid",
        class_names=("defect",),
        base_width=cfg.width,
        tile_size=cfg.tile,
        tile_overlap=cfg.overlap,
        name="bench",
    )


@dataclass
class _PipelineRun:
    """One backend of the pipeline section and what its rounds measured."""

    name: str
    backend_name: str
    backend: Any
    engine_url: str
    image_rates: list[float] = field(default_factory=list)
    tile_rates: list[float] = field(default_factory=list)
    engine_rates: list[float] = field(default_factory=list)
    seconds: float = 0.0
    rows_written: int = 0
    stage_ms: dict[str, list[float]] = field(default_factory=dict)


def _empty_pipeline_row(name: str, backend: str, cfg: BenchConfig) -> dict[str, Any]:
    grid = make_grid(cfg.image_size, cfg.image_size, tile=cfg.tile, overlap=cfg.overlap)
    return {
        "name": name,
        "backend": backend,
        "device": cfg.device if backend == "torch" else "cpu",
        "precision": None,
        "images": cfg.images,
        "image_size": cfg.image_size,
        "tiles_per_image": grid.n_tiles,
        "tiles": grid.n_tiles * cfg.images,
        "batch": cfg.batch if cfg.device.startswith("cuda") else CPU_ENGINE_BATCH,
        "rounds": 0,
        "rows_written": 0,
        "images_per_s": _stats([]),
        "tiles_per_s": _stats([]),
        "engine_tiles_per_s": _stats([]),
        "ratio": None,
        "vs_openvino_model_only": None,
        "vs_seed_naive": None,
        "seed_naive_tiles_per_s": _stats([]),
        "latency_ms": {"p50": None, "p95": None},
        "stage_ms": {},
        "error": None,
    }


def _pipeline_pass(
    run: _PipelineRun, spec: ModelSpec, paths: Sequence[Path], batch: int, work: Path
) -> tuple[float, int]:
    """All images once, camera folder to committed rows, under a fresh model version.

    The images are copied into a fresh camera folder first (untimed); the timed part is what
    the line monitor does: claim them from a :class:`FolderSource`, inspect, store, commit, ack
    (move to ``done/``). Returns (seconds, rows).
    """
    import shutil

    from defectscan.pipeline import InspectionResult, Inspector
    from defectscan.service import inspect_and_store, register_model
    from defectscan.sources.folder import FolderSource
    from defectscan.store.db import make_engine
    from defectscan.store.writer import ResultWriter

    # A new version per pass: (image sha256, model version) is the idempotency key, so reusing
    # one would turn every write after the first pass into a no-op.
    version = f"bench-{run.backend_name}-{uuid.uuid4().hex[:12]}"
    inspector = Inspector(run.backend, spec, model_version=version, batch_size=batch)
    engine = make_engine(run.engine_url)
    camera = work / f"camera-{version}"
    camera.mkdir(parents=True)
    for path in paths:
        shutil.copyfile(path, camera / path.name)

    def check(result: InspectionResult) -> None:
        if result.status != "ok":
            msg = f"bench image {result.record.id} was rejected: {result.error_message}"
            raise RuntimeError(msg)
        for stage, ms in result.timings_ms.items():
            run.stage_ms.setdefault(stage, []).append(ms)

    try:
        writer = ResultWriter(engine, batch_size=WRITER_BATCH)
        register_model(writer, inspector)
        source = FolderSource(camera, line="bench", camera="cam-1", stable_polls=1, watch=False)
        started = time.perf_counter()
        records = source.claim(len(paths))
        inspect_and_store(
            records, inspector=inspector, writer=writer, source=source, on_result=check
        )
        elapsed = time.perf_counter() - started
        source.close()
    finally:
        engine.dispose()
    if writer.inserted != len(paths):
        msg = (
            f"{run.name} stored {writer.inserted} of {len(paths)} rows under the fresh model "
            f"version {version}: the writer or the store dropped results"
        )
        raise RuntimeError(msg)
    shutil.rmtree(camera, ignore_errors=True)
    return elapsed, writer.inserted


def _percentile(values: Sequence[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 2) if values else None


def _int8_backend(model: UNet, spec: ModelSpec, cfg: BenchConfig, work: Path) -> Any:
    """OpenVINO INT8 of ``model``, calibrated on synthetic camera frames."""
    from defectscan import synth
    from defectscan.model.export import export_model

    calib = work / "calib"
    synth.write_camera_folder(calib, 8, seed=11, height=cfg.image_size, width=cfg.image_size)
    exported = export_model(
        model,
        spec,
        sha256="bench",
        fmt="openvino",
        out=work / "engine",
        tile=cfg.tile,
        int8=True,
        calibration=calib,
    )
    return OpenVINOBackend.from_file(exported.model_file, precision="int8")


def run_pipeline(
    cfg: BenchConfig, notes: list[str], log: Callable[[str], None]
) -> list[dict[str, Any]]:
    """File in to database row, per backend, next to the same backend timed alone."""
    from defectscan import synth
    from defectscan.store.db import upgrade_to_head

    spec = _pipeline_spec(cfg)
    grid = make_grid(cfg.image_size, cfg.image_size, tile=cfg.tile, overlap=cfg.overlap)
    n_tiles = grid.n_tiles * cfg.images
    batch = cfg.batch if cfg.device.startswith("cuda") else CPU_ENGINE_BATCH
    tiles = _tiles(batch, cfg.tile, seed=1)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="defectscan-bench-") as tmp:
        folder = Path(tmp) / "camera"
        paths = synth.write_camera_folder(
            folder, cfg.images, seed=7, height=cfg.image_size, width=cfg.image_size
        )
        runs: list[_PipelineRun] = []
        for k, backend_name in enumerate(("torch", "openvino", "openvino-int8")):
            torch.manual_seed(100 + k)
            model = build_model(spec).eval()
            device = cfg.device if backend_name == "torch" else "cpu"
            try:
                if backend_name == "openvino-int8":
                    backend = _int8_backend(model, spec, cfg, Path(tmp) / "int8")
                else:
                    backend = make_backend(
                        backend_name,  # type: ignore[arg-type]
                        model,
                        spec.activation,
                        n_channels=3,
                        tile=cfg.tile,
                        device=device,
                        precision="auto",
                    )
            except (DefectscanError, ImportError, RuntimeError) as exc:
                message = f"{type(exc).__name__}: {exc}"
                notes.append(f"pipeline {backend_name} skipped: {message}")
                rows.append(
                    {
                        **_empty_pipeline_row(f"pipeline-{backend_name}", backend_name, cfg),
                        "error": message,
                    }
                )
                continue
            url = f"sqlite:///{(Path(tmp) / f'{backend_name}.db').as_posix()}"
            upgrade_to_head(url)
            backend.infer(tiles)  # warm-up outside the timed rounds
            runs.append(_PipelineRun(f"pipeline-{backend_name}", backend_name, backend, url))
        budget = cfg.seconds / cfg.rounds
        # The seed's own loop on the same architecture, timed in the same rounds: the
        # end-to-end rows are compared with it (issue 10: >= 2.5x on CPU).
        torch.manual_seed(100)
        naive = _seed_naive(build_model(spec).eval(), cfg.device)
        naive_rates: list[float] = []
        for r in range(cfg.rounds):
            active = [run for run in runs if r == 0 or run.seconds < cfg.seconds]
            if not active:
                break
            log(f"pipeline: round {r + 1} seed-naive")
            naive_rates.append(_timed_round(naive.infer, naive.sync, tiles, budget)[0])
            for run in active:
                log(f"pipeline: round {r + 1} {run.name}")
                rate, _ = _timed_round(
                    run.backend.infer, _sync_for(run.backend.device), tiles, budget
                )
                run.engine_rates.append(rate)
                elapsed, inserted = _pipeline_pass(run, spec, paths, batch, Path(tmp))
                run.rows_written += inserted
                run.seconds += elapsed
                run.image_rates.append(cfg.images / elapsed)
                run.tile_rates.append(n_tiles / elapsed)
        ov_alone = next(
            (statistics.median(r.engine_rates) for r in runs if r.backend_name == "openvino"),
            None,
        )
        for run in runs:
            ratio = statistics.median(run.tile_rates) / statistics.median(run.engine_rates)
            totals = run.stage_ms.get("total", [])
            rows.append(
                {
                    **_empty_pipeline_row(run.name, run.backend_name, cfg),
                    "device": run.backend.device,
                    "precision": _precision_label(run.backend_name, str(run.backend.precision)),
                    "rounds": len(run.tile_rates),
                    "rows_written": run.rows_written,
                    "images_per_s": _stats(run.image_rates),
                    "tiles_per_s": _stats(run.tile_rates),
                    "engine_tiles_per_s": _stats(run.engine_rates),
                    "ratio": round(ratio, 3),
                    "vs_openvino_model_only": (
                        round(statistics.median(run.tile_rates) / ov_alone, 3) if ov_alone else None
                    ),
                    "vs_seed_naive": (
                        round(statistics.median(run.tile_rates) / statistics.median(naive_rates), 3)
                        if naive_rates
                        else None
                    ),
                    "seed_naive_tiles_per_s": _stats(naive_rates),
                    "latency_ms": {"p50": _percentile(totals, 50), "p95": _percentile(totals, 95)},
                    "stage_ms": {
                        stage: round(statistics.mean(values), 2)
                        for stage, values in run.stage_ms.items()
                    },
                    "error": None,
                }
            )
    return rows


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

from defectscan.model.backends import make_backend
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


def run_large(
    cfg: BenchConfig, notes: list[str], log: Callable[[str], None]
) -> list[dict[str, Any]]:
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


def run_store(
    cfg: BenchConfig, notes: list[str], log: Callable[[str], None]
) -> list[dict[str, Any]]:
    """The results-store write benchmark (``bench_store.run``)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import bench_store

    log(f"store: {cfg.store_n} inspections per mode")
    rows: list[dict[str, Any]] = bench_store.run(cfg.store_n, cfg.store_batch)
    if not any(r["database"] == "postgresql" for r in rows):
        notes.append(
            f"store: PostgreSQL unreachable at {bench_store.PG_ADMIN_URL} "
            "(set DEFECTSCAN_TEST_PG_URL): only SQLite measured"
        )
    return rows


def _training_row(cfg: BenchConfig, device: str, data: Path, work: Path) -> dict[str, Any]:
    """One device: two epochs of about ``cfg.seconds`` each, the second one reported."""
    from defectscan.training import TrainConfig, TrainProgress, train
    from defectscan.training.train import default_workers

    cuda = device.startswith("cuda")
    batch = cfg.train_batch if not cuda else max(cfg.train_batch, 16)
    # Size an epoch from the model's cost: forward + backward ~ 3 forwards per crop.
    flop = 3 * SEED_TILE_FLOP * (cfg.tile / 256) ** 2 * (cfg.train_width / 64) ** 2
    rate = 100e12 if cuda else 40e9  # rough achieved FLOP/s, only to size the epochs
    steps = int(min(2000, max(2, cfg.seconds * rate / (flop * batch))))
    workers = default_workers(torch.device(device))
    row: dict[str, Any] = {
        "name": f"train-{device.split(':')[0]}-w{cfg.train_width}-b{batch}",
        "device": device,
        "precision": {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[
            autocast_dtype("auto", torch.device(device))
        ],
        "width": cfg.train_width,
        "tile": cfg.tile,
        "batch": batch,
        "workers": workers,
        "crops": None,
        "crops_per_s": None,
        "share": {},
        "seconds": None,
        "error": None,
    }
    epochs: list[dict[str, float]] = []

    def keep(p: TrainProgress) -> None:
        if p.phase == "epoch":
            epochs.append(dict(p.timings_s))

    config = TrainConfig(
        data=data,
        out=work / f"bench-{device.replace(':', '')}.safetensors",
        epochs=2,
        batch_size=batch,
        tile_size=cfg.tile,
        base_width=cfg.train_width,
        samples_per_epoch=steps * batch,
        device=device,
        augment="flips",
        defect_crop_p=0.7,
        resume=False,
        calibrate=False,
    )
    try:
        train(config, progress=keep)
    except (DefectscanError, RuntimeError) as exc:
        row["error"] = f"{type(exc).__name__}: {exc}"
        return row
    last = {k: epochs[-1][k] - (epochs[-2][k] if len(epochs) > 1 else 0.0) for k in epochs[-1]}
    total = last["data_s"] + last["step_s"] + last["val_s"]
    row.update(
        crops=int(last["crops"]),
        crops_per_s=last["crops"] / max(1e-9, last["data_s"] + last["step_s"]),
        share={k: last[f"{k}_s"] / total for k in ("data", "step", "val")},
        seconds=total,
    )
    return row


def run_training(
    cfg: BenchConfig, notes: list[str], log: Callable[[str], None]
) -> list[dict[str, Any]]:
    """Training throughput on the CPU, and on CUDA where present."""
    from defectscan.synth import write_dataset

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = []
    with tempfile.TemporaryDirectory(prefix="defectscan-bench-train-") as tmp:
        data = Path(tmp) / "data"
        write_dataset(data, max(8, cfg.images), seed=3, height=cfg.image_size, width=cfg.image_size)
        for device in devices:
            log(f"training: {device}, width {cfg.train_width}, {cfg.tile}x{cfg.tile} crops")
            rows.append(_training_row(cfg, device, data, Path(tmp)))
    if not torch.cuda.is_available():
        notes.append("training: no CUDA device here, CPU only")
    return rows


# -- output -----------------------------------------------------------------------------------


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _range(stats: dict[str, Any]) -> str:
    if stats.get("min") is None:
        return "-"
    return f"{stats['min']:.2f}-{stats['max']:.2f}"


def _console() -> Any:
    from rich.console import Console

    # Piped into a file or CI log, rich would wrap the tables at 80 columns.
    return Console() if sys.stdout.isatty() else Console(width=160)


def _print_tables(payload: dict[str, Any]) -> None:
    from rich.table import Table

    console = _console()
    machine, cfg = payload["machine"], payload["config"]
    console.print(
        f"[bold]{machine['cpu_model']}[/], {machine['cores']} cores, torch threads "
        f"{machine['torch_threads']}, device {machine['device']}"
        + (f" ({machine['gpu_name']})" if machine["gpu_name"] else "")
        + f", load average {machine['loadavg_start']} -> {machine['loadavg_end']}"
    )
    if payload["engines"]:
        cuda = str(cfg["device"]).startswith("cuda")
        table = Table(
            title=(
                f"engines: seed UNet width {cfg['width']}, {cfg['tile']}x{cfg['tile']} tiles, "
                f"model only ({cfg['rounds']} interleaved rounds, {cfg['seconds']:g} s each row)"
            )
        )
        columns = [
            "row",
            "device",
            "precision",
            "batch",
            "tiles/s",
            "min-max",
            "vs naive",
            "max |dp|",
            "TFLOP/s",
        ]
        if cuda:
            columns.append("% peak")
        if any(r["reference_tiles_per_s"] for r in payload["engines"]):
            columns.append("ref (idle)")
        for c in columns:
            table.add_column(c, justify="left" if c in ("row", "device", "precision") else "right")
        for r in payload["engines"]:
            ts = r["tiles_per_s"]
            cells = [
                r["name"],
                r["device"],
                r["precision"],
                str(r["batch"]),
                _fmt(ts["median"]) if not r["error"] else "[red]skipped[/]",
                _range(ts),
                "-" if r["speedup_vs_seed_naive"] is None else f"{r['speedup_vs_seed_naive']:.2f}x",
                "-" if r["max_abs_diff"] is None else f"{r['max_abs_diff']:.1e}",
                _fmt(r["tflops"], 3),
            ]
            if cuda:
                cells.append(_fmt(r["pct_peak"], 1) if r["pct_peak"] is not None else "-")
            if "ref (idle)" in columns:
                ref = r["reference_tiles_per_s"]
                cells.append(f"{ref[0]}-{ref[1]}" if ref else "-")
            table.add_row(*cells)
        console.print(table)
    if payload["pipeline"]:
        table = Table(
            title=(
                f"pipeline: file -> decode -> tile -> infer -> stitch -> post -> SQLite row, "
                f"{cfg['images']} images {cfg['image_size']}x{cfg['image_size']}"
            )
        )
        for c in (
            "row",
            "precision",
            "tiles",
            "images/s",
            "tiles/s",
            "engine alone",
            "ratio",
            "vs OV alone",
            "vs seed loop",
            "p50|p95 ms",
            "rows",
            "ms/img decode|infer|post|total",
        ):
            table.add_column(c, justify="left" if c in ("row", "precision") else "right")
        for r in payload["pipeline"]:
            if r.get("error"):
                table.add_row(
                    r["name"], "-", "-", "[red]skipped[/]", "", "", "", "", "", "", "", r["error"]
                )
                continue
            stages = r["stage_ms"]
            table.add_row(
                r["name"],
                r["precision"],
                str(r["tiles"]),
                _fmt(r["images_per_s"]["median"]),
                _fmt(r["tiles_per_s"]["median"]),
                _fmt(r["engine_tiles_per_s"]["median"]),
                f"{r['ratio']:.2f}",
                _fmt(r.get("vs_openvino_model_only")),
                _fmt(r.get("vs_seed_naive")),
                f"{_fmt(r['latency_ms']['p50'], 0)}|{_fmt(r['latency_ms']['p95'], 0)}",
                str(r["rows_written"]),
                " | ".join(_fmt(stages.get(k), 0) for k in ("decode", "infer", "post", "total")),
            )
        console.print(table)
    if payload.get("large"):
        table = Table(title="large frame: peak RSS of one inspection (subprocess, VmHWM)")
        for c in ("row", "engine", "tiles", "defects", "seconds", "peak RSS MiB", "limit MiB"):
            table.add_column(c, justify="left" if c in ("row", "engine") else "right")
        for r in payload["large"]:
            if r["error"]:
                table.add_row(r["name"], "-", "-", "-", "[red]failed[/]", r["error"], "")
                continue
            table.add_row(
                r["name"],
                r["engine"],
                str(r["tiles"]),
                str(r["defects"]),
                _fmt(r["seconds"], 1),
                _fmt(r["peak_rss_mib"], 0),
                _fmt(r["limit_mib"], 0),
            )
        console.print(table)
    if payload["store"]:
        table = Table(title=f"results store writes: inspections x 5 defects (n={cfg['store_n']})")
        for c in ("database", "mode", "batch", "seconds", "inspections/s", "vs row-by-row"):
            table.add_column(c, justify="left" if c in ("database", "mode") else "right")
        for r in payload["store"]:
            table.add_row(
                r["database"],
                r["mode"],
                str(r["batch"]),
                f"{r['seconds']:.2f}",
                f"{r['inspections_per_s']:.0f}",
                f"{r['speedup_vs_row_by_row']:.1f}x",
            )
        console.print(table)
    if payload.get("training"):
        table = Table(
            title=(
                f"training: synthetic {cfg['image_size']}px frames, {cfg['tile']}x{cfg['tile']} "
                f"crops, second of two epochs"
            )
        )
        for c in ("row", "precision", "workers", "crops", "crops/s", "data", "step", "val"):
            table.add_column(c, justify="left" if c in ("row", "precision") else "right")
        for r in payload["training"]:
            if r["error"]:
                table.add_row(r["name"], "-", "-", "-", "[red]failed[/]", "", "", r["error"])
                continue
            share = r["share"]
            table.add_row(
                r["name"],
                r["precision"],
                str(r["workers"]),
                str(r["crops"]),
                _fmt(r["crops_per_s"], 1),
                *(f"{100 * share[k]:.0f}%" for k in ("data", "step", "val")),
            )
        console.print(table)
    for note in payload["notes"]:
        console.print(f"[yellow]note:[/] {note}")


# -- command line -----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The command-line options (defaults of ``None`` are filled by :func:`config_from_args`)."""
    parser = argparse.ArgumentParser(
        description="defectscan throughput benchmarks (engines, pipeline, store)"
    )
    parser.add_argument(
        "--sections",
        default=",".join(SECTIONS),
        help="comma-separated: engines,pipeline,store,training",
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
        out=args.out or get_settings().var_dir / "bench" / "bench.json",
    )
    for name in ("rounds", "width", "tile", "batch", "images", "image_size", "store_n"):
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
    import json

    from rich.console import Console

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
        "notes": notes,
    }
    sections: dict[str, Callable[[BenchConfig, list[str], Callable[[str], None]], list[Any]]] = {
        "engines": run_engines,
        "pipeline": run_pipeline,
        "large": run_large,
        "store": run_store,
        "training": run_training,
    }
    for name in cfg.sections:
        payload[name] = sections[name](cfg, notes, log)
    machine["loadavg_end"] = _loadavg()
    cfg.out.parent.mkdir(parents=True, exist_ok=True)
    cfg.out.write_text(json.dumps(payload, indent=2) + "\n")
    _print_tables(payload)
    _console().print(f"wrote {cfg.out}")
    return payload


if __name__ == "__main__":
    main()

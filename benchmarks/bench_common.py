"""What every benchmark section shares: the config, the machine, statistics, the seed model.

The bottom layer of the benchmark modules: the sections (``bench_engines``, ``bench_pipeline``,
``bench_large``, ``bench_store``, ``bench_training``) import it, the runner ``bench.py``
imports them, and this module imports none of its siblings.

- :class:`BenchConfig`: what to measure and for how long (built by ``bench.config_from_args``).
- :func:`machine_info`: CPU and its instruction-set flags, library versions, threads, load.
- :func:`rate_stats` and :func:`percentile`: how rates and latencies are summarised.
- :func:`seed_model`, :func:`make_tiles`, :func:`reference_probs`, :func:`bench_spec`: the seed
  architecture at random init, synthetic input tiles, the eager fp32 yardstick.
- :class:`TimedEngine`, :func:`seed_naive_engine`, :func:`timed_round`, :func:`sync_for`: an
  engine as the sections time it, the seed's own loop, and the timing loop itself.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from defectscan.model.backends import cpu_model, cpu_supports_bf16
from defectscan.model.spec import ModelSpec
from defectscan.model.unet import UNet

__all__ = [
    "CPU_ENGINE_BATCH",
    "GPU_PEAK_TFLOPS",
    "SECTIONS",
    "SEED_TILE_FLOP",
    "BenchConfig",
    "Log",
    "TimedEngine",
    "bench_spec",
    "gpu_peak",
    "loadavg",
    "machine_info",
    "make_tiles",
    "percentile",
    "precision_label",
    "rate_stats",
    "reference_probs",
    "seed_model",
    "seed_naive_engine",
    "sync_for",
    "timed_round",
]

SECTIONS = (
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
)
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

Log = Callable[[str], None]  # how a section reports progress (the runner logs to stderr)


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
    #: console section: inspections filled, requests per page, databases (bench_console.py)
    console_rows: int = 100_000
    console_requests: int = 20
    console_databases: tuple[str, ...] = ("sqlite", "postgresql")
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
            "console_rows": self.console_rows,
            "console_requests": self.console_requests,
            "console_databases": list(self.console_databases),
            "flop_per_tile": self.flop_per_tile,
        }


@dataclass
class TimedEngine:
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


def precision_label(backend_name: str, precision: str) -> str:
    """What ``auto`` means for this engine on this machine, e.g. ``bf16 (auto)``."""
    if backend_name == "openvino" and precision == "auto":
        default = _openvino_default_precision()
        return f"{default} (auto)" if default else "auto"
    if backend_name == "openvino" and precision == "fp32":
        return "f32"
    return precision


def gpu_peak(name: str | None) -> float | None:
    """The card's dense bf16 peak in TFLOP/s, or ``None`` for a card not in the table."""
    if not name:
        return None
    for key, peak in GPU_PEAK_TFLOPS:
        if key in name:
            return peak
    return None


def loadavg() -> list[float] | None:
    """The 1, 5 and 15 minute load averages, rounded; ``None`` where the OS has none."""
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
        "gpu_peak_tflops": gpu_peak(gpu_name),
        "loadavg_start": loadavg(),
        "loadavg_end": None,
    }


# -- statistics -------------------------------------------------------------------------------


def rate_stats(values: Sequence[float]) -> dict[str, float | None]:
    """Median, min and max of per-round rates (all ``None`` when nothing was measured)."""
    if not values:
        return {"median": None, "min": None, "max": None}
    return {
        "median": round(statistics.median(values), 4),
        "min": round(min(values), 4),
        "max": round(max(values), 4),
    }


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile, rounded to 0.01 (``None`` when there are no values)."""
    return round(float(np.percentile(values, q)), 2) if values else None


# -- the seed model and its inputs ------------------------------------------------------------


def make_tiles(n: int, tile: int, seed: int = 0) -> np.ndarray:
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


def seed_model(width: int, seed: int = 0) -> UNet:
    """The seed architecture (3 -> 1, bilinear) at ``width``, random init, in eval mode."""
    torch.manual_seed(seed)
    return UNet(3, 1, bilinear=True, base_width=width).eval()


def reference_probs(model: UNet, tiles: np.ndarray) -> np.ndarray:
    """Eager fp32 probabilities on the CPU, NCHW, unmodified model: the yardstick."""
    out = []
    with torch.no_grad():
        for i in range(0, len(tiles), CPU_ENGINE_BATCH):
            x = torch.from_numpy(tiles[i : i + CPU_ENGINE_BATCH])
            out.append(torch.sigmoid(model(x)).numpy())
    return np.concatenate(out)


def bench_spec(cfg: BenchConfig) -> ModelSpec:
    """The model spec of the benchmark model: sigmoid, one class, ``cfg``'s width and tiles."""
    return ModelSpec(
        n_channels=3,
        activation="sigmoid",
        class_names=("defect",),
        base_width=cfg.width,
        tile_size=cfg.tile,
        tile_overlap=cfg.overlap,
        name="bench",
    )


# -- timing -----------------------------------------------------------------------------------


def sync_for(device: str) -> Callable[[], None]:
    """What waits for queued work on ``device`` (CUDA); a no-op on the CPU."""
    if device.startswith("cuda"):
        return torch.cuda.synchronize
    return lambda: None


def _clone(model: UNet) -> UNet:
    twin = UNet(model.n_channels, model.n_classes, model.bilinear, model.base_width)
    twin.load_state_dict(model.state_dict())
    return twin.eval()


def seed_naive_engine(model: UNet, device: str) -> TimedEngine:
    """The seed's predict loop: one tile at a time, eager fp32, ``torch.no_grad()``."""
    net = _clone(model).to(device)

    def infer(batch: np.ndarray) -> np.ndarray:
        out = []
        with torch.no_grad():
            for tile in batch:
                x = torch.from_numpy(tile[None]).to(device)
                out.append(torch.sigmoid(net(x)).cpu().numpy())
        return np.concatenate(out)

    return TimedEngine(
        "seed-naive",
        "torch",
        device,
        "fp32",
        1,
        infer,
        sync_for(device),
        note="eager NCHW, no BN folding",
    )


def timed_round(
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

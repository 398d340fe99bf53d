"""Engine selection: which engine runs a model here, and the factory every caller uses.

- :func:`make_backend` builds the named engine (``torch``, ``openvino``, ``onnxruntime``) or,
  for ``auto``, chooses one: torch (compiled) on CUDA; on the CPU :func:`auto_cpu_backend`.
- :func:`auto_cpu_backend` picks the fastest engine that holds parity on this CPU: an INT8
  OpenVINO engine exported for this checkpoint (cache), then OpenVINO at its default
  precision (bf16 where the CPU has it), then ONNX Runtime, then eager torch. Engines are
  cached under ``var/engines/<sha256[:16]>-<format>-<precision>-t<tile>/`` so a restart loads
  instead of converting; a failing engine is skipped with a warning that says why. The choice
  is remembered per checkpoint, tile, precision and CPU model.

This module sits above both :mod:`.backends` (the engines) and :mod:`.export` (exported files,
parity, the cache) and is imported by the pipeline, training, health and the benchmarks.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from torch import nn

from defectscan.errors import ConfigError, DefectscanError
from defectscan.model.backends import (
    Backend,
    BackendName,
    OnnxRuntimeBackend,
    OpenVINOBackend,
    Precision,
    TorchBackend,
    bf16_disabled,
    cpu_model,
    cpu_supports_bf16,
    resolve_device,
)
from defectscan.model.export import (
    ENGINE_META,
    TOLERANCES,
    EngineFormat,
    ParityReport,
    auto_int8_key,
    check_parity,
    engine_cache_dir,
    engine_key,
    export_model,
    load_exported,
    reference_probs,
    synthetic_tiles,
)
from defectscan.model.spec import Activation, ModelSpec

__all__ = [
    "CPU_CANDIDATES",
    "auto_cpu_backend",
    "cached_engine",
    "engine_label",
    "make_backend",
    "remember_choice",
    "remembered_choice",
    "tiles_per_s",
]

#: The CPU engines ``auto`` chooses among, fastest first where they hold parity.
CPU_CANDIDATES: tuple[str, ...] = ("openvino-int8", "openvino", "onnxruntime", "torch")

log = logging.getLogger(__name__)


def make_backend(
    name: BackendName,
    model: nn.Module,
    activation: Activation,
    *,
    n_channels: int,
    tile: int,
    device: str = "auto",
    precision: Precision = "auto",
    checkpoint_sha256: str | None = None,
    spec: ModelSpec | None = None,
    cached_only: bool = False,
) -> Backend:
    """Build the named engine.

    ``auto``: torch (compiled) on CUDA; on the CPU the fastest engine that passes parity
    against eager torch (an exported INT8 engine from the cache first, then OpenVINO, ONNX
    Runtime, torch), cached under ``var/engines`` when ``checkpoint_sha256`` is given.
    ``cached_only`` (a fast start): no engine is exported now; without a cached one, eager
    torch at once (the monitor exports and times the others in the background).
    """
    if name == "auto":
        if resolve_device(device).type == "cuda":
            name = "torch"
        else:
            return auto_cpu_backend(
                model,
                activation,
                n_channels=n_channels,
                tile=tile,
                precision=precision,
                checkpoint_sha256=checkpoint_sha256,
                spec=spec,
                cached_only=cached_only,
            )
    if name == "torch":
        return TorchBackend(model, activation, device=device, precision=precision)
    if name == "openvino":
        if device not in ("auto", "cpu"):
            msg = f"the OpenVINO backend runs on the CPU here, not {device!r}"
            raise ConfigError(msg)
        return OpenVINOBackend(
            model, activation, n_channels=n_channels, tile=tile, precision=precision
        )
    if name == "onnxruntime":
        return OnnxRuntimeBackend(model, activation, n_channels=n_channels, tile=tile)
    msg = f"unknown backend {name!r}: use auto, torch, openvino or onnxruntime"
    raise ConfigError(msg)


def _first_use_check(
    backend: Backend,
    model: nn.Module,
    spec: ModelSpec,
    tiles: np.ndarray,
    reference: np.ndarray,
    precision: str,
) -> ParityReport:
    return check_parity(backend.infer, model, spec, tiles, precision=precision, reference=reference)


def _runtime_precision(backend: Backend) -> str:
    """The precision an engine really computes in, for its parity tolerance."""
    p = str(getattr(backend, "precision", "fp32"))
    if backend.name == "openvino" and p == "auto":
        return "bf16" if cpu_supports_bf16() and not bf16_disabled() else "fp32"
    return p if p in TOLERANCES else "fp32"


def auto_cpu_backend(
    model: nn.Module,
    activation: Activation,
    *,
    n_channels: int,
    tile: int,
    precision: Precision = "auto",
    checkpoint_sha256: str | None = None,
    spec: ModelSpec | None = None,
    candidates: Sequence[str] = CPU_CANDIDATES,
    cached_only: bool = False,
) -> Backend:
    """The fastest CPU engine, measured here, among those that hold parity with eager torch.

    Engines are converted (or taken from the cache), checked on a few synthetic tiles, then
    timed side by side on the same tiles; the fastest wins. INT8 comes only from the cache
    (``defectscan export --int8 --calibration DIR`` writes it, with its parity checked on real
    images). With the checkpoint's sha256 known, the choice is remembered per checkpoint,
    tile, precision and CPU model (``var/engines/<sha>-auto-<precision>-t<tile>.json``), so the
    timing runs once:
    which engine is fastest differs between CPUs (OpenVINO with bf16 on a Xeon with AMX,
    ONNX Runtime or torch on some AVX2-only CPUs).

    ``cached_only``: only engines already in the cache are considered (no export now) and the
    choice is not remembered (it was made among some engines only); eager torch when none is.
    """
    if spec is None:
        spec = ModelSpec(
            n_channels=n_channels,
            activation=activation,
            class_names=tuple(
                f"class{i}" for i in range(_out_channels(model) - (activation == "softmax"))
            ),
            tile_size=tile,
            tile_overlap=tile // 4,  # the default overlap may exceed a small probe tile
            channel_order="GRAY" if n_channels == 1 else "RGB",
        )
    choice_file = _choice_file(checkpoint_sha256, precision, tile)
    remembered = _remembered_choice(choice_file)
    order = list(candidates)
    probe: list[np.ndarray] = []

    def probe_tiles() -> tuple[np.ndarray, np.ndarray]:
        """Tiles and eager torch's answer on them, computed once and only when needed."""
        if not probe:
            tiles = synthetic_tiles(spec, tile, n=4)
            probe.extend((tiles, reference_probs(model, activation, tiles)))
        return probe[0], probe[1]

    def candidate(name: str) -> Backend | None:
        # INT8 (parity checked at export) and torch itself need no probe: a restart on a
        # remembered INT8 engine runs no eager pass before its first image.
        none = np.empty(0, np.float32)
        tiles, reference = (none, none) if name in ("openvino-int8", "torch") else probe_tiles()
        return _candidate(
            name,
            model,
            activation,
            spec,
            n_channels,
            tile,
            precision,
            checkpoint_sha256,
            tiles,
            reference,
            cached_only=cached_only,
        )

    if remembered in order:
        chosen = candidate(remembered)
        if chosen is not None:
            log.info("engine: %s (remembered as the fastest here)", remembered)
            return chosen
        # Its engine is gone from the cache (or fails now): choose again among the others.
        log.info("engine %s remembered but unavailable: choosing again", remembered)
        order = [name for name in order if name != remembered]
    passing: dict[str, Backend] = {}
    for name in order:
        backend = candidate(name)
        if backend is not None:
            passing[name] = backend
    if not passing:
        return TorchBackend(model, activation, device="cpu", precision=precision)
    if len(passing) == 1:
        name, backend = next(iter(passing.items()))
        log.info("engine: %s (%s)", name, getattr(backend, "precision", "?"))
        return backend
    tiles = probe_tiles()[0]
    rates = {name: tiles_per_s(backend, tiles) for name, backend in passing.items()}
    best = max(rates, key=lambda n: rates[n])
    log.info(
        "engine: %s, the fastest here (%s tiles/s)",
        best,
        ", ".join(f"{n} {r:.2f}" for n, r in rates.items()),
    )
    if checkpoint_sha256 is not None and not cached_only:
        remember_choice(checkpoint_sha256, precision, tile, best, rates)
    return passing[best]


def _choice_file(sha256: str | None, precision: str, tile: int) -> Path | None:
    if sha256 is None:
        return None
    return engine_cache_dir() / f"{sha256[:16]}-auto-{precision}-t{tile}.json"


def remember_choice(
    sha256: str, precision: str, tile: int, engine: str, rates: dict[str, float]
) -> None:
    """Remember ``engine`` as the fastest for this checkpoint, precision, tile and CPU model."""
    choice_file = _choice_file(sha256, precision, tile)
    assert choice_file is not None
    try:
        choice_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = choice_file.with_name(choice_file.name + ".tmp")
        tmp.write_text(
            json.dumps(
                {
                    "engine": engine,
                    "tiles_per_s": rates,
                    "cpu": cpu_model(),
                    "format": _CHOICE_FORMAT,
                    "at": _now(),
                },
                indent=2,
            )
        )
        tmp.replace(choice_file)
    except OSError as exc:
        log.warning("cannot remember the engine choice in %s: %s", choice_file, exc)


def remembered_choice(sha256: str, precision: str, tile: int) -> str | None:
    """The engine remembered as fastest for this checkpoint on this CPU model, if any."""
    return _remembered_choice(_choice_file(sha256, precision, tile))


def engine_label(backend: Backend) -> str:
    """How an engine is shown (metrics, events, health): ``openvino-int8``, ``torch``, ..."""
    precision = str(getattr(backend, "precision", "") or "")
    if backend.name == "openvino" and precision == "int8":
        return "openvino-int8"
    return backend.name


def cached_engine(
    name: str,
    model: nn.Module,
    spec: ModelSpec,
    *,
    tile: int,
    precision: Precision,
    checkpoint_sha256: str,
) -> Backend | None:
    """Engine ``name`` of the auto choice if it is in the cache and holds parity, else None.

    Nothing is exported: this is what a running monitor loads between batches once the
    background export has written the engine.
    """
    tiles = synthetic_tiles(spec, tile, n=4)
    reference = reference_probs(model, spec.activation, tiles)
    return _candidate(
        name,
        model,
        spec.activation,
        spec,
        spec.n_channels,
        tile,
        precision,
        checkpoint_sha256,
        tiles,
        reference,
        cached_only=True,
    )


def _candidate(
    name: str,
    model: nn.Module,
    activation: Activation,
    spec: ModelSpec,
    n_channels: int,
    tile: int,
    precision: Precision,
    checkpoint_sha256: str | None,
    tiles: np.ndarray,
    reference: np.ndarray,
    *,
    cached_only: bool = False,
) -> Backend | None:
    """One engine of the auto choice, if it is available and holds parity.

    ``cached_only``: an engine that would have to be exported first is not available.
    """
    try:
        if name == "torch":
            return TorchBackend(model, activation, device="cpu", precision=precision)
        if name == "openvino-int8":
            if checkpoint_sha256 is None:
                return None
            # A manual export (defectscan export --int8), else the monitor's own for this CPU.
            for directory in (
                engine_cache_dir() / engine_key(checkpoint_sha256, "openvino", "int8", tile),
                engine_cache_dir() / auto_int8_key(checkpoint_sha256, tile),
            ):
                meta = directory / ENGINE_META
                if meta.is_file() and _parity_passed(meta):
                    # Parity was checked at export, on real images: the record says so.
                    return load_exported(directory, sha256=checkpoint_sha256, tile=tile)
            return None
        fmt: EngineFormat = "openvino" if name == "openvino" else "onnx"
        if cached_only and checkpoint_sha256 is not None:
            directory = engine_cache_dir() / engine_key(checkpoint_sha256, fmt, "fp32", tile)
            if not (directory / ENGINE_META).is_file():
                return None
        elif cached_only:
            return None
        backend = _cached_or_built(
            fmt, model, activation, spec, n_channels, tile, precision, checkpoint_sha256
        )
        report = _first_use_check(
            backend, model, spec, tiles, reference, _runtime_precision(backend)
        )
        if report.passed:
            return backend
        log.warning("engine %s does not match eager torch (%s): not used", name, report.reason)
    except (DefectscanError, ImportError, RuntimeError, OSError) as exc:
        log.warning("engine %s unavailable (%s: %s)", name, type(exc).__name__, exc)
    return None


def _parity_passed(meta: Path) -> bool:
    try:
        return bool(json.loads(meta.read_text()).get("parity", {}).get("passed"))
    except (OSError, ValueError, AttributeError):
        return False


def tiles_per_s(backend: Backend, tiles: np.ndarray, rounds: int = 2) -> float:
    """Best of ``rounds`` timed passes over ``tiles`` after one warm-up pass."""
    backend.infer(tiles)
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        backend.infer(tiles)
        best = min(best, time.perf_counter() - t0)
    return len(tiles) / max(best, 1e-9)


# Raised when the engines' speed changes (2: OpenVINO runs a batch on every stream): choices
# timed by an older defectscan are timed again.
_CHOICE_FORMAT = 2


def _remembered_choice(path: Path | None) -> str | None:
    """The engine chosen earlier for this checkpoint on this CPU model, if any."""
    if path is None or not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if data.get("cpu") != cpu_model() or data.get("format") != _CHOICE_FORMAT:
        return None
    engine = data.get("engine")
    return engine if isinstance(engine, str) else None


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _out_channels(model: nn.Module) -> int:
    n = getattr(model, "n_classes", None)
    if isinstance(n, int):
        return n
    msg = "cannot tell the model's output channels: pass its ModelSpec"
    raise ConfigError(msg)


def _cached_or_built(
    fmt: EngineFormat,
    model: nn.Module,
    activation: Activation,
    spec: ModelSpec,
    n_channels: int,
    tile: int,
    precision: Precision,
    sha256: str | None,
) -> Backend:
    """Load the fp32 export from the cache, exporting it there first; in memory without sha."""
    if sha256 is None:
        if fmt == "openvino":
            return OpenVINOBackend(
                model, activation, n_channels=n_channels, tile=tile, precision=precision
            )
        return OnnxRuntimeBackend(model, activation, n_channels=n_channels, tile=tile)
    directory = engine_cache_dir() / engine_key(sha256, fmt, "fp32", tile)
    if not (directory / ENGINE_META).is_file():
        export_model(model, spec, sha256=sha256, fmt=fmt, out=directory, tile=tile)
    backend = load_exported(directory, sha256=sha256, tile=tile)
    if fmt == "openvino" and isinstance(backend, OpenVINOBackend) and precision != "fp32":
        # The file holds fp32 weights; at run time OpenVINO may compute in bf16 (auto).
        backend = OpenVINOBackend.from_file(
            directory / "model.xml", precision=precision if precision != "fp16" else "auto"
        )
    return backend

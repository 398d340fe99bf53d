"""The ``pipeline`` section: file in to database row, next to the same engine timed alone.

``--images`` synthetic camera PNGs of ``--image-size`` pixels go through
:class:`~defectscan.pipeline.Inspector` (read, hash, decode, tile, infer, stitch, post-process)
and a :class:`~defectscan.store.writer.ResultWriter` (batches of 8) into a fresh, migrated
SQLite file, for the torch (auto precision), OpenVINO and OpenVINO INT8 backends. Every round
uses a new model version, so every row is really inserted (checked). Interleaved with each
round, the same backend object is timed alone on batches of tiles; ``ratio`` = pipeline tiles/s
/ engine-alone tiles/s (target: >= 1.0, or close: host work should overlap inference).
``vs_seed_naive`` = pipeline tiles/s / the seed's own loop (batch 1, eager fp32) on the same
architecture and tiles, timed in the same rounds. A round is one pass over all images; rounds
repeat until ``--seconds`` per backend is spent, at most ``--rounds``.

``pipeline-<engine>+drift`` is the last engine measured again with drift monitoring on, as a
monitor runs it once a camera has a reference: the pooled features from the same pass, the
thumbnail statistics of every frame, and a :class:`~defectscan.drift.tracking.DriftTracker`
fed each pass, with windows closing every ``--images // 2`` images (a line closes one per
200 or more: this costs more than production). ``vs_drift_off`` compares it with the same
engine's row in the same rounds (issue 18: within 5%).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from defectscan.errors import DefectscanError
from defectscan.model.backends import OpenVINOBackend
from defectscan.model.checkpoint import build_model
from defectscan.model.engines import make_backend
from defectscan.model.spec import ModelSpec
from defectscan.model.unet import UNet
from defectscan.tiling import make_grid

# Sibling modules import as top-level modules, whether bench.py runs as a script or is imported.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import (
    CPU_ENGINE_BATCH,
    BenchConfig,
    Log,
    bench_spec,
    make_tiles,
    percentile,
    precision_label,
    rate_stats,
    seed_naive_engine,
    sync_for,
    timed_round,
)

__all__ = ["WRITER_BATCH", "run_pipeline"]

WRITER_BATCH = 8


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
    #: Drift monitoring on: the camera's reference (None: off, as without one).
    drift_reference: Any = None
    windows: int = 0


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
        "images_per_s": rate_stats([]),
        "tiles_per_s": rate_stats([]),
        "engine_tiles_per_s": rate_stats([]),
        "ratio": None,
        "vs_openvino_model_only": None,
        "vs_seed_naive": None,
        "seed_naive_tiles_per_s": rate_stats([]),
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
    drift = run.drift_reference is not None
    inspector = Inspector(
        run.backend, spec, model_version=version, batch_size=batch, drift_features=drift
    )
    results: list[InspectionResult] = []
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
        if drift:
            results.append(result)

    try:
        writer = ResultWriter(engine, batch_size=WRITER_BATCH)
        register_model(writer, inspector)
        source = FolderSource(camera, line="bench", camera="cam-1", stable_polls=1, watch=False)
        started = time.perf_counter()
        records = source.claim(len(paths))
        inspect_and_store(
            records, inspector=inspector, writer=writer, source=source, on_result=check
        )
        if drift:
            run.windows += len(_tracker(run.drift_reference, spec, version, paths).observe(results))
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


def _tracker(reference: Any, spec: ModelSpec, version: str, paths: Sequence[Path]) -> Any:
    """The drift tracker a monitor keeps for a camera, its windows closing every half pass."""
    from defectscan.drift.tracking import DriftTracker

    half = max(2, len(paths) // 2)
    return DriftTracker(
        model_version=version,
        class_names=spec.class_names,
        references=lambda _line, _camera: (0, reference),
        min_images=half,
        max_images=half,
    )


def _drift_reference(backend: Any, spec: ModelSpec, tiles: Any) -> Any:
    """A fitted reference of the engine's feature width (random rows: its cost is what counts)."""
    import numpy as np

    from defectscan.drift.reference import ImageRows, fit_reference
    from defectscan.drift.tracking import output_names
    from defectscan.image_stats import STAT_NAMES

    _, feats = backend.infer_features(tiles[:1])
    if feats is None:
        return None
    rng = np.random.default_rng(0)
    n, width = 600, int(feats.shape[-1])
    names = output_names(spec.class_names)
    rows = ImageRows(
        np.arange(n, dtype=np.float64) * 2.0,
        rng.normal(size=(n, width)),
        rng.normal(size=(n, len(STAT_NAMES))),
        (rng.random((n, len(names))) < 0.1).astype(np.float64),
    )
    return fit_reference(rows, output_names=names, k=min(64, width), bootstrap_windows=200)


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


def run_pipeline(cfg: BenchConfig, notes: list[str], log: Log) -> list[dict[str, Any]]:
    """File in to database row, per backend, next to the same backend timed alone."""
    from defectscan import synth
    from defectscan.store.db import upgrade_to_head

    spec = bench_spec(cfg)
    grid = make_grid(cfg.image_size, cfg.image_size, tile=cfg.tile, overlap=cfg.overlap)
    n_tiles = grid.n_tiles * cfg.images
    batch = cfg.batch if cfg.device.startswith("cuda") else CPU_ENGINE_BATCH
    tiles = make_tiles(batch, cfg.tile, seed=1)
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
        if runs and hasattr(runs[-1].backend, "infer_features"):
            last = runs[-1]
            reference = _drift_reference(last.backend, spec, tiles)
            if reference is not None:
                url = f"sqlite:///{(Path(tmp) / f'{last.backend_name}-drift.db').as_posix()}"
                upgrade_to_head(url)
                runs.append(
                    _PipelineRun(
                        f"{last.name}+drift",
                        last.backend_name,
                        last.backend,
                        url,
                        drift_reference=reference,
                    )
                )
        budget = cfg.seconds / cfg.rounds
        # The seed's own loop on the same architecture, timed in the same rounds: the
        # end-to-end rows are compared with it (issue 10: >= 2.5x on CPU).
        torch.manual_seed(100)
        naive = seed_naive_engine(build_model(spec).eval(), cfg.device)
        naive_rates: list[float] = []
        for r in range(cfg.rounds):
            active = [run for run in runs if r == 0 or run.seconds < cfg.seconds]
            if not active:
                break
            log(f"pipeline: round {r + 1} seed-naive")
            naive_rates.append(timed_round(naive.infer, naive.sync, tiles, budget)[0])
            for run in active:
                log(f"pipeline: round {r + 1} {run.name}")
                rate, _ = timed_round(
                    run.backend.infer, sync_for(run.backend.device), tiles, budget
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
        drift_off = {r.backend_name: r for r in runs if r.drift_reference is None}
        for run in runs:
            ratio = statistics.median(run.tile_rates) / statistics.median(run.engine_rates)
            off = drift_off.get(run.backend_name) if run.drift_reference is not None else None
            totals = run.stage_ms.get("total", [])
            rows.append(
                {
                    **_empty_pipeline_row(run.name, run.backend_name, cfg),
                    "device": run.backend.device,
                    "precision": precision_label(run.backend_name, str(run.backend.precision)),
                    "rounds": len(run.tile_rates),
                    "rows_written": run.rows_written,
                    "images_per_s": rate_stats(run.image_rates),
                    "tiles_per_s": rate_stats(run.tile_rates),
                    "engine_tiles_per_s": rate_stats(run.engine_rates),
                    "ratio": round(ratio, 3),
                    "vs_openvino_model_only": (
                        round(statistics.median(run.tile_rates) / ov_alone, 3) if ov_alone else None
                    ),
                    "vs_seed_naive": (
                        round(statistics.median(run.tile_rates) / statistics.median(naive_rates), 3)
                        if naive_rates
                        else None
                    ),
                    "seed_naive_tiles_per_s": rate_stats(naive_rates),
                    "latency_ms": {"p50": percentile(totals, 50), "p95": percentile(totals, 95)},
                    "stage_ms": {
                        stage: round(statistics.mean(values), 2)
                        for stage, values in run.stage_ms.items()
                    },
                    "error": None,
                    "drift": run.drift_reference is not None,
                    "drift_windows": run.windows,
                    "vs_drift_off": (
                        round(
                            statistics.median(run.tile_rates) / statistics.median(off.tile_rates), 3
                        )
                        if off is not None and off.tile_rates
                        else None
                    ),
                }
            )
    return rows

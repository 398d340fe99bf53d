"""The end-to-end demo behind ``make demo``: synthetic line -> trained UNet -> results in SQL.

Everything runs on embedded defaults: a SQLite file under ``var/``, a camera folder of
synthetic parts, CPU or GPU, no server to start. The camera folder is inspected by the
batch-inspection Prefect flow (on Prefect's ephemeral API), which stores a row per part and
writes the HTML report. A second run reuses the trained model and stores nothing twice.
"""

from __future__ import annotations

import os
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import select
from sqlalchemy.orm import selectinload

from defectscan import synth
from defectscan.store.db import ensure_schema, make_engine, session_factory
from defectscan.store.schema import Inspection, ModelVersion

__all__ = ["DemoSummary", "run_demo"]


@dataclass
class DemoSummary:
    """What the demo did and how well the model found the synthetic defects."""

    workdir: Path
    model_path: Path
    model_version: str
    trained: bool
    train_seconds: float
    val_iou: dict[str, float | None]
    images: int
    verdicts: Counter[str] = field(default_factory=Counter)
    defects_by_class: Counter[str] = field(default_factory=Counter)
    image_recall: float = 0.0
    false_reject_rate: float = 0.0
    inspect_seconds: float = 0.0
    database_url: str = ""
    rows_in_database: int = 0
    report_path: Path | None = None
    flow_result: dict[str, Any] = field(default_factory=dict)


@contextmanager
def _settings(env: dict[str, str]) -> Iterator[None]:
    """Run with these ``DEFECTSCAN_*`` settings, then restore the process's own."""
    from defectscan.config import get_settings

    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    get_settings.cache_clear()
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        get_settings.cache_clear()


def _verdicts(
    database_url: str, version: str, paths: list[Path], summary: DemoSummary
) -> list[bool]:
    """Whether each camera part failed, read back from the results database."""
    engine = make_engine(database_url)
    try:
        with session_factory(engine)() as session:
            rows = session.scalars(
                select(Inspection)
                .join(ModelVersion, Inspection.model_version_id == ModelVersion.id)
                .where(ModelVersion.version == version)
                .options(selectinload(Inspection.defects))
            ).all()
            by_uri = {r.uri: r for r in rows}
            summary.rows_in_database = len(rows)
            found = []
            for p in paths:
                row = by_uri.get(p.resolve().as_uri())
                summary.verdicts[(row.verdict if row else None) or "rejected"] += 1
                if row is not None:
                    summary.defects_by_class.update(d.class_name for d in row.defects)
                found.append(row is not None and row.verdict == "fail")
            return found
    finally:
        engine.dispose()


def run_demo(
    workdir: Path,
    *,
    database_url: str,
    images: int = 12,
    epochs: int = 20,
    retrain: bool = False,
    device: str = "auto",
    say: Callable[[str], None] = lambda _msg: None,
) -> DemoSummary:
    """Generate data, train (or reuse) a small model, inspect a camera folder, store results."""
    from defectscan.training import TrainConfig, train

    workdir.mkdir(parents=True, exist_ok=True)
    data = workdir / "train"
    model_path = workdir / "model.safetensors"
    if not (data / "images").is_dir():
        say(f"writing a synthetic training set to {data}")
        synth.write_dataset(data, 160, seed=7, height=128, width=128)
    trained = False
    train_s = 0.0
    if retrain or not model_path.is_file():
        say("training a small UNet on it (one to two minutes on a 2-core CPU)")
        t0 = time.perf_counter()
        trained_run = train(
            TrainConfig(
                data=data,
                out=model_path,
                epochs=epochs,
                tile_size=96,
                tile_overlap=16,
                base_width=8,
                batch_size=8,
                # thin scratches/cracks and small spots are rare pixels: weight them up
                class_weights=(0.5, 4.0, 3.0, 6.0, 1.0),
                samples_per_epoch=256,
                # The library's lr (2e-3): 6e-3 trained the thin classes later and less reliably.
                device=device,
                name="demo-unet",
                resume=False,
            ),
            progress=lambda p: (
                say(f"epoch {p.epoch}/{p.epochs} val IoU {p.metrics.get('mean_iou', 0):.3f}")
                if p.phase == "epoch"
                else None
            ),
        )
        train_s = time.perf_counter() - t0
        trained = True
        val_iou = {k: v.get("iou") for k, v in trained_run.report.per_class.items()}
    else:
        say(f"reusing {model_path} (pass --retrain to train again)")
        val_iou = {}

    camera = workdir / "camera"
    shutil.rmtree(camera, ignore_errors=True)
    seed = 2024
    paths = synth.write_camera_folder(camera, images, seed=seed, height=384, width=384)
    truth = [
        synth.make_sample(synth.sample_seed(seed, i), height=384, width=384).mask.any()
        for i in range(images)
    ]
    say(f"camera dropped {images} parts into {camera}")

    # The demo line, as a plant file declares one: it drops specks below a few pixels (a
    # small, briefly trained model fragments thin defects, and a 3-pixel scratch fragment is
    # noise, not a finding) and runs on the requested device.
    plant = workdir / "plant.yaml"
    plant.write_text(
        yaml.safe_dump(
            {
                # the batch flow reads and reports only under allowed roots: the demo's folder
                "batch_roots": [str(workdir.resolve())],
                "lines": {
                    "demo": {
                        "name": "demo",
                        "cameras": ["cam-1"],
                        "min_area": {"scratch": 20, "crack": 20, "spot": 12, "stain": 40},
                        "engine": {"device": device, "batch_size": 8},
                    }
                },
            },
            sort_keys=False,
        )
    )
    engine = make_engine(database_url)
    try:
        ensure_schema(engine)
    finally:
        engine.dispose()
    out = workdir / "out"
    shutil.rmtree(out, ignore_errors=True)
    say("inspecting the camera folder with the batch-inspection flow (Prefect, local)")
    t0 = time.perf_counter()
    with _settings({"DEFECTSCAN_CONFIG": str(plant), "DEFECTSCAN_DATABASE_URL": database_url}):
        from flows.batch_inspection import batch_inspection

        result = batch_inspection(
            paths=[str(camera)],
            model=str(model_path),
            line="demo",
            camera="cam-1",
            report_dir=str(out),
            title="defectscan demo",
        )
    inspect_s = time.perf_counter() - t0
    version = str(result["model_version"])
    if not val_iou:
        from defectscan.model.checkpoint import load_checkpoint

        spec = load_checkpoint(model_path).spec
        val_iou = {c: spec.metrics.get(f"iou/{c}") for c in spec.class_names}
    summary = DemoSummary(
        workdir=workdir,
        model_path=model_path,
        model_version=version,
        trained=trained,
        train_seconds=train_s,
        val_iou=val_iou,
        images=images,
        database_url=database_url,
        inspect_seconds=inspect_s,
        report_path=Path(result["report"]) if result.get("report") else None,
        flow_result=result,
    )
    found = _verdicts(database_url, version, paths, summary)
    defective = [f for f, t in zip(found, truth, strict=True) if t]
    clean = [f for f, t in zip(found, truth, strict=True) if not t]
    summary.image_recall = sum(defective) / len(defective) if defective else 1.0
    summary.false_reject_rate = sum(clean) / len(clean) if clean else 0.0
    return summary

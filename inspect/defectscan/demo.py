"""The end-to-end demo behind ``make demo``: synthetic line -> trained UNet -> results in SQL.

Everything runs on embedded defaults: a SQLite file under ``var/``, a camera folder of
synthetic parts, CPU or GPU, no server to start. A second run reuses the trained model.
"""

from __future__ import annotations

import shutil
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import func, select

from defectscan import synth
from defectscan.config import LineConfig
from defectscan.pipeline import ImageRecord, InspectionResult, Inspector
from defectscan.report import html_report, write_result_images
from defectscan.service import inspect_and_store, register_model
from defectscan.store.db import ensure_schema, make_engine, session_factory
from defectscan.store.schema import Inspection, ModelVersion
from defectscan.store.writer import ResultWriter

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
        say("training a small UNet on it (about a minute on a 2-core CPU)")
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
                lr=6e-3,
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

    engine = make_engine(database_url)
    ensure_schema(engine)
    writer = ResultWriter(engine, batch_size=16)
    # The demo line drops specks below a few pixels, as a real line's config would
    # (DEFECTSCAN_CONFIG YAML, ``lines:``): a small, briefly trained model fragments thin
    # defects, and a 3-pixel scratch fragment is noise, not a finding.
    line = LineConfig(name="demo", min_area={"scratch": 20, "crack": 20, "spot": 12, "stain": 40})
    inspector = Inspector.from_checkpoint(
        model_path, backend="auto", device=device, batch_size=8, lines={"demo": line}
    )
    register_model(writer, inspector)
    if not val_iou:
        metrics = inspector.spec.metrics
        val_iou = {c: metrics.get(f"iou/{c}") for c in inspector.spec.class_names}
    out = workdir / "out"
    summary = DemoSummary(
        workdir=workdir,
        model_path=model_path,
        model_version=inspector.model_version,
        trained=trained,
        train_seconds=train_s,
        val_iou=val_iou,
        images=images,
        database_url=database_url,
    )
    rows = []
    found = []
    t0 = time.perf_counter()
    records = [ImageRecord.from_path(p, camera="cam-1", line="demo") for p in paths]

    def keep(result: InspectionResult) -> tuple[str | None, str | None]:
        stem = Path(result.record.id).stem
        mask, over = write_result_images(result, out, stem, inspector.spec.class_names)
        summary.verdicts[result.verdict or "rejected"] += 1
        summary.defects_by_class.update(d.class_name for d in result.defects)
        found.append(result.verdict == "fail")
        rows.append({**result.to_dict(), "path": str(result.record.path), "overlay": str(over)})
        return str(mask), str(over)

    inspect_and_store(records, inspector=inspector, writer=writer, on_result=keep, keep_images=True)
    summary.inspect_seconds = time.perf_counter() - t0
    defective = [f for f, t in zip(found, truth, strict=True) if t]
    clean = [f for f, t in zip(found, truth, strict=True) if not t]
    summary.image_recall = sum(defective) / len(defective) if defective else 1.0
    summary.false_reject_rate = sum(clean) / len(clean) if clean else 0.0
    with session_factory(engine)() as session:
        summary.rows_in_database = (
            session.scalar(
                select(func.count(Inspection.id))
                .join(ModelVersion, Inspection.model_version_id == ModelVersion.id)
                .where(ModelVersion.version == inspector.model_version)
            )
            or 0
        )
    engine.dispose()
    summary.report_path = html_report(rows, out / "report.html", title="defectscan demo")
    return summary

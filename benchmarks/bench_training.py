"""The ``training`` section: training throughput, and where an epoch's time goes.

:func:`defectscan.training.train` on a synthetic dataset (``--images`` frames of
``--image-size``), UNet width ``--train-width`` (32; quick: 8), ``--tile`` crops, batch
``--train-batch`` (16 on CUDA, 8 on the CPU), auto precision, default loader workers, on the
CPU and on CUDA where present. Two epochs sized to about ``--seconds`` each; the second is
reported: ``crops_per_s`` (training crops through data + step) and the share of the epoch's time
in ``data`` (waiting for the loader), ``step`` (forward, backward, optimiser) and ``val``
(whole-frame validation with on-device metrics).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from defectscan.errors import DefectscanError
from defectscan.model.backends import autocast_dtype

# Sibling modules import as top-level modules, whether bench.py runs as a script or is imported.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import SEED_TILE_FLOP, BenchConfig, Log

__all__ = ["run_training"]


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


def run_training(cfg: BenchConfig, notes: list[str], log: Log) -> list[dict[str, Any]]:
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

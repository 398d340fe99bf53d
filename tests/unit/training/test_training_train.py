"""The training loop: short CPU runs reach a useful IoU; checkpoints carry thresholds; resume."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from defectscan.model.checkpoint import load_checkpoint
from defectscan.synth import write_dataset
from defectscan.training import TrainConfig, TrainProgress, evaluate_dataset, state_path, train


class _InterruptedError(Exception):
    pass


def _easy(root: Path, *, binary: bool, n: int = 48, size: int = 96) -> Path:
    # Easy synthetic task: spots and stains (compact blobs), grayscale, full contrast. Thin
    # scratches and cracks need far more steps than a test budget allows to reach IoU 0.8.
    data = root / "data"
    write_dataset(
        data, n, seed=1, height=size, width=size, channels=1, binary=binary, kinds=("spot", "stain")
    )
    if not binary:
        # Keep only the two classes present (synth indices 3, 4 -> 1, 2), so the softmax
        # has no class that never occurs.
        for m in sorted((data / "masks").glob("*.png")):
            arr = cv2.imread(str(m), cv2.IMREAD_UNCHANGED)
            cv2.imwrite(str(m), np.where(arr > 0, arr - 2, 0).astype(np.uint8))
        (data / "classes.txt").write_text("spot\nstain\n")
    return data


def _config(data: Path, out: Path, **kw: object) -> TrainConfig:
    base: dict[str, object] = {
        "data": data,
        "out": out,
        "tile_size": 64,
        "base_width": 8,
        "batch_size": 8,
        "lr": 1e-2,
        "epochs": 20,
        "samples_per_epoch": 96,
        "patience": 20,
        "val_fraction": 0.25,
        "seed": 0,
    }
    base.update(kw)
    return TrainConfig(**base)  # type: ignore[arg-type]


@pytest.mark.slow
def test_binary_sigmoid_training_reaches_iou_08(tmp_path: Path) -> None:
    data = _easy(tmp_path, binary=True)
    seen: list[TrainProgress] = []
    result = train(_config(data, tmp_path / "m.safetensors", mode="binary"), progress=seen.append)
    assert result.spec.activation == "sigmoid"
    assert result.spec.class_names == ("defect",)
    assert result.best_metrics["iou/defect"] >= 0.8, result.history
    # The calibrated decision rule travels in the checkpoint, and it is the one the metrics
    # were measured with: inspecting the validation split with the saved file reproduces them.
    ckpt = load_checkpoint(result.checkpoint_path)
    assert result.calibration is not None
    assert ckpt.spec.thresholds == tuple(result.calibration["thresholds"])
    assert ckpt.spec.min_area == tuple(result.calibration["min_area"])
    assert ckpt.spec.metrics["calibration"] == result.calibration
    # Calibration tried each test-time flip setting and the checkpoint carries its choice.
    tta = result.calibration["tta"]
    assert set(tta["image_recall"]) == {"none", "h", "hv"}
    assert ckpt.spec.tta == tta["chosen"]
    rescored = evaluate_dataset(ckpt, data, split="val").flat()
    for key in ("iou/defect", "image_recall", "false_reject_rate"):
        assert rescored[key] == pytest.approx(result.best_metrics[key], abs=1e-6), key
    assert ckpt.spec.metrics["iou/defect"] == pytest.approx(result.best_metrics["iou/defect"])
    assert ckpt.spec.metrics["dataset_fingerprint"] == result.dataset_fingerprint
    assert (ckpt.spec.n_channels, ckpt.spec.channel_order) == (1, "GRAY")
    phases = {p.phase for p in seen}
    assert phases == {"start", "step", "epoch", "done"}


@pytest.mark.slow
def test_multiclass_softmax_training_reaches_iou_08(tmp_path: Path) -> None:
    # Two classes told apart by size (small spots, large stains). A class-wise IoU needs more
    # examples than the binary task (120 images, 22 short epochs), and the rare small spots
    # need a class weight, as tiny real defects do. At lr 1e-2 with affine and photometric
    # augmentation the result depended on the CPU's arithmetic (0.75 in fp32 on an AMD EPYC,
    # above 0.8 in bf16 on a Xeon); lr 5e-3 with flips and turns reaches about 0.89 / 0.96 in
    # fp32 (AMD EPYC, DEFECTSCAN_DISABLE_BF16 or not), a margin that does not hinge on rounding.
    data = _easy(tmp_path, binary=False, n=120)
    cfg = _config(
        data,
        tmp_path / "m.safetensors",
        epochs=22,
        samples_per_epoch=192,
        tile_size=96,
        lr=5e-3,
        augment="flips",
        class_weights=(0.5, 4.0, 1.0),
    )
    result = train(cfg)
    assert result.spec.activation == "softmax"
    assert result.spec.n_classes == 3  # background, spot, stain
    for cls in ("spot", "stain"):
        assert result.best_metrics[f"iou/{cls}"] >= 0.8, result.history


def test_interrupted_training_resumes_where_it_stopped(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_dataset(data, 8, seed=2, height=32, width=32, channels=1, binary=True)
    cfg = _config(
        data,
        tmp_path / "m.safetensors",
        epochs=2,
        tile_size=32,
        base_width=4,
        samples_per_epoch=8,
        precision="fp32",
    )

    def stop_after_first_epoch(p: TrainProgress) -> None:
        if p.phase == "epoch" and p.epoch == 0:
            raise _InterruptedError

    with pytest.raises(_InterruptedError):
        train(cfg, progress=stop_after_first_epoch)
    state = state_path(cfg.out)
    assert state.is_file()
    assert not cfg.out.exists()
    saved = torch.load(state, weights_only=True)  # plain tensors and data only
    assert saved["epoch"] == 0

    resumed = train(cfg)
    assert resumed.resumed_from_epoch == 1
    assert [row["epoch"] for row in resumed.history] == [0.0, 1.0]
    assert resumed.checkpoint_path.is_file()

    fresh = train(cfg.model_copy(update={"resume": False, "out": tmp_path / "f.safetensors"}))
    assert fresh.resumed_from_epoch == 0
    # Per-epoch seeds: the resumed run drew what an uninterrupted run draws.
    assert resumed.history[1]["loss"] == pytest.approx(fresh.history[1]["loss"], rel=1e-4)

    # A later invocation (new run id, more epochs) continues the same training.
    longer = train(cfg.model_copy(update={"epochs": 3, "training_run": "42"}))
    assert longer.resumed_from_epoch == 2
    assert len(longer.history) == 3

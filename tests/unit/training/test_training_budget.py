"""``max_minutes``: a training run stops starting epochs once its wall-clock budget is spent."""

from __future__ import annotations

from pathlib import Path

from defectscan.model.checkpoint import load_checkpoint
from defectscan.synth import write_dataset
from defectscan.training import TrainConfig, train
from defectscan.training.train import _out_of_time


def _config(tmp_path: Path, **kw: object) -> TrainConfig:
    data = tmp_path / "data"
    write_dataset(data, 12, seed=2, height=64, width=64, channels=1, kinds=("spot", "stain"))
    base: dict[str, object] = {
        "data": data,
        "out": tmp_path / "m.safetensors",
        "tile_size": 32,
        "base_width": 4,
        "batch_size": 4,
        "epochs": 4,
        "samples_per_epoch": 8,
        "patience": 10,
        "val_fraction": 0.25,
        "precision": "fp32",
        "num_workers": 0,
    }
    base.update(kw)
    return TrainConfig(**base)  # type: ignore[arg-type]


def test_no_epoch_starts_that_would_end_after_the_budget(tmp_path: Path) -> None:
    config = _config(tmp_path, max_minutes=1.0)
    assert not _out_of_time(config, elapsed_s=30.0, epoch_s=29.0)
    assert _out_of_time(config, elapsed_s=30.0, epoch_s=31.0)
    assert not _out_of_time(config.model_copy(update={"max_minutes": None}), 1e9, 1e9)


def test_a_spent_budget_ends_training_after_the_first_epoch_with_a_calibrated_checkpoint(
    tmp_path: Path,
) -> None:
    # 6 ms: the first epoch always runs (there is nothing to keep otherwise) and takes longer.
    result = train(_config(tmp_path, max_minutes=1e-4))
    assert len(result.history) == 1
    assert result.checkpoint_path.is_file()
    spec = load_checkpoint(result.checkpoint_path).spec
    assert spec.thresholds  # calibrated as after any run

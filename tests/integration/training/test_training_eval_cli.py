"""`eval` judges what `inspect` decides; `train --config` takes a recipe; Ctrl-C keeps the best.

The first test is the contract behind the promotion gate: the IoU `eval` reports equals the IoU
of the masks `defectscan inspect --out` writes (pixel value = class index) on the same images.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import pytest
import torch

from defectscan.model.checkpoint import load_checkpoint
from defectscan.synth import write_dataset
from defectscan.training import TrainConfig, TrainProgress, state_path, train
from defectscan.training.train import TrainingInterrupted
from helpers.cli import run_cli


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("evalcli")
    data = root / "data"
    write_dataset(data, 24, seed=11, height=80, width=72, channels=1, binary=True)
    result = train(
        TrainConfig(
            data=data,
            out=root / "m.safetensors",
            tile_size=48,  # frames of 80 x 72 are inspected as several overlapping tiles
            tile_overlap=8,
            base_width=4,
            epochs=4,
            samples_per_epoch=48,
            lr=1e-2,
            resume=False,
        )
    )
    return data, result.checkpoint_path


def test_eval_iou_equals_iou_of_the_masks_inspect_writes(
    trained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, model = trained
    common = ["--model", str(model), "--backend", "torch", "--device", "cpu"]
    code, out = _run(["eval", *common, "--data", str(data), "--json"], capsys)
    assert code == 0
    report = json.loads(out)
    masks_dir = tmp_path / "out"
    images = sorted((data / "images").glob("*.png"))
    code, _ = _run(["inspect", *[str(p) for p in images], *common, "--out", str(masks_dir)], capsys)
    assert code == 0
    tp = fp = fn = 0
    rejected = 0
    for image in images:
        pred = cv2.imread(str(masks_dir / f"{image.stem}.mask.png"), cv2.IMREAD_UNCHANGED) > 0
        truth = cv2.imread(str(data / "masks" / f"{image.stem}.png"), cv2.IMREAD_UNCHANGED) > 0
        tp += int((pred & truth).sum())
        fp += int((pred & ~truth).sum())
        fn += int((~pred & truth).sum())
        rejected += bool(pred.any()) and not truth.any()
    assert tp > 0  # the model finds something: the comparison is not between two empty sets
    assert report["iou"]["defect"] == pytest.approx(tp / (tp + fp + fn), abs=1e-12)
    assert report["n_images"] == len(images)
    n_good = report["n_images"] - report["n_defective_images"]
    if n_good:
        assert report["false_reject_rate"] == pytest.approx(rejected / n_good)
    # the decision rule used is the checkpoint's own (calibrated at training time)
    spec = load_checkpoint(model).spec
    assert report["decision"]["thresholds"] == list(spec.thresholds)
    assert report["decision"]["min_area"] == list(spec.min_area)


def test_train_takes_a_recipe_file_and_flags_override_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    write_dataset(data, 8, seed=12, height=32, width=32, channels=1, binary=True)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "base_width: 6\ntile_size: 32\nepochs: 5\nsamples_per_epoch: 8\nmode: binary\n"
    )
    out = tmp_path / "m.safetensors"
    args = ["train", "--config", str(recipe), "--data", str(data), "--out", str(out)]
    code, stdout = _run([*args, "--epochs", "1", "--no-register", "--json"], capsys)
    assert code == 0
    summary = json.loads(stdout)
    assert summary["epochs_run"] == 1  # the flag wins over the recipe's 5
    spec = load_checkpoint(out).spec
    assert (spec.base_width, spec.tile_size) == (6, 32)  # from the recipe


@pytest.mark.parametrize(("name", "frr"), [("magnetic-tile", 0.02), ("magnetic-tile-cpu", 0.05)])
def test_the_shipped_recipes_are_valid_training_configs(
    tmp_path: Path, name: str, frr: float
) -> None:
    import yaml

    from defectscan.cli.training import recipe_path

    settings = yaml.safe_load(recipe_path(name).read_text())
    config = TrainConfig(data=tmp_path, out=tmp_path / "m.safetensors", **settings)
    assert config.mode == "binary"
    assert config.target_false_reject_rate == pytest.approx(frr)
    if name == "magnetic-tile-cpu":  # an hour on 2 cores: a budget, and no early stop
        assert config.max_minutes == 60
        assert config.patience >= config.epochs


def test_ctrl_c_writes_the_best_checkpoint_so_far(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_dataset(data, 8, seed=13, height=32, width=32, channels=1, binary=True)
    config = TrainConfig(
        data=data,
        out=tmp_path / "m.safetensors",
        tile_size=32,
        base_width=4,
        epochs=50,
        samples_per_epoch=8,
        patience=50,
    )

    def ctrl_c_in_second_epoch(p: TrainProgress) -> None:
        if p.phase == "step" and p.epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(TrainingInterrupted) as caught:
        train(config, progress=ctrl_c_in_second_epoch)
    partial = caught.value.result
    assert partial is not None
    assert partial.interrupted
    assert partial.best_epoch == 0
    ckpt = load_checkpoint(config.out)
    assert ckpt.sha256 == partial.sha256
    assert ckpt.spec.metrics["interrupted"] is True
    assert ckpt.spec.metrics["epochs_run"] == 1
    # ... holding the best epoch's weights (not the half-trained ones of the stopped epoch)
    best = torch.load(state_path(config.out), weights_only=True)["best_model"]
    weights = ckpt.model.state_dict()
    shared = [k for k in weights if k in best and best[k].is_floating_point()]
    assert shared
    for k in shared:
        assert torch.equal(weights[k], best[k].float()), k


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code, out, _ = run_cli(args, capsys)
    return code, out

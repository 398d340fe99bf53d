"""Fine-tuning: a run starts from a checkpoint's weights when it fits, and says so."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from defectscan.model.checkpoint import build_model, load_checkpoint
from defectscan.synth import write_dataset
from defectscan.training import TrainConfig, train
from defectscan.training.data import load_run_data
from defectscan.training.retrain import RetrainRequest, _train_from, fine_tune_recipe, resolve_init
from defectscan.training.warm_start import (
    InitMismatchError,
    apply_init,
    warm_start,
    with_warmup,
)

# Lineage, refusal, the learning-rate schedule and the fallback: what they check does not
# depend on the training's precision, so the bf16-off rerun of `make test` leaves them out.
pytestmark = pytest.mark.any_precision


def _data(
    root: Path,
    kinds: tuple[str, ...],
    *,
    seed: int = 1,
    contrast: float = 1.0,
    binary: bool = False,
) -> Path:
    write_dataset(
        root,
        16,
        seed=seed,
        height=64,
        width=64,
        channels=1,
        kinds=kinds,
        contrast=contrast,
        binary=binary,
    )
    return root


def _config(data: Path, out: Path, **kw: object) -> TrainConfig:
    base: dict[str, object] = {
        "data": data,
        "out": out,
        "tile_size": 32,
        "base_width": 4,
        "batch_size": 4,
        "epochs": 2,
        "samples_per_epoch": 8,
        "val_fraction": 0.25,
        "precision": "fp32",
        "num_workers": 0,
        "resume": False,
    }
    base.update(kw)
    return TrainConfig(**base)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def champion(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("champion")
    data = _data(root / "data", ("spot", "stain"))
    return train(_config(data, root / "champion.safetensors")).checkpoint_path


def test_a_fitting_checkpoint_lends_its_weights_normalisation_and_lineage(
    champion: Path, tmp_path: Path
) -> None:
    start = load_checkpoint(champion)
    new = _data(tmp_path / "new", ("spot", "stain"), seed=5, contrast=0.5)
    config = _config(new, tmp_path / "tuned.safetensors", init=champion)
    data, loaded = warm_start(config, load_run_data(config))
    assert loaded is not None
    assert data.spec.mean == start.spec.mean
    assert data.spec.std == start.spec.std  # the weights expect the champion's inputs
    model = build_model(data.spec)
    apply_init(model, loaded)
    for key, value in start.model.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    result = train(config)
    origin = result.spec.metrics["init_from"]
    assert origin["sha256"] == start.sha256
    assert origin["version"] == start.version
    assert load_checkpoint(result.checkpoint_path).spec.metrics["init_from"] == origin


def test_a_checkpoint_of_other_classes_is_refused_with_the_reason(
    champion: Path, tmp_path: Path
) -> None:
    other = _data(tmp_path / "other", ("spot", "stain"), seed=2, binary=True)
    config = _config(other, tmp_path / "x.safetensors", init=champion)
    with pytest.raises(InitMismatchError, match=r"class_names|activation"):
        warm_start(config, load_run_data(config))


def test_warm_up_ramps_the_learning_rate_then_follows_the_cosine(tmp_path: Path) -> None:
    config = _config(tmp_path, tmp_path / "m.safetensors", epochs=6, warmup_epochs=2, lr=1e-2)
    net = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(net.parameters(), lr=config.lr)
    scheduler = with_warmup(optimizer, None, config)
    rates = []
    for _ in range(6):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates[0] == pytest.approx(1e-3)
    assert rates[0] < rates[1] < rates[2] == pytest.approx(1e-2)
    assert rates[2] > rates[3] > rates[4] > rates[5]


def test_retrain_fine_tunes_a_fitting_champion_and_falls_back_to_scratch_otherwise(
    champion: Path, tmp_path: Path
) -> None:
    assert resolve_init("champion", str(champion)) == champion
    assert resolve_init("champion", None) is None
    assert resolve_init("scratch", str(champion)) is None
    assert fine_tune_recipe()["warmup_epochs"] >= 1
    fixed = {"tile_size": 32, "base_width": 4, "batch_size": 4, "samples_per_epoch": 8}
    fixed |= {"val_fraction": 0.25, "precision": "fp32", "num_workers": 0, "resume": False}
    request = RetrainRequest(recipe={"epochs": 1, "patience": 2})
    same = _data(tmp_path / "same", ("spot", "stain"), seed=9)
    result, began = _train_from(
        champion,
        request,
        settings={**fixed, "data": same, "out": tmp_path / "a.safetensors", "device": "cpu"},
        parent=None,
    )
    assert began.startswith("fine-tuned from ")
    assert result.spec.metrics["init_from"]["path"] == str(champion.resolve())
    other = _data(tmp_path / "other", ("spot", "stain"), seed=2, binary=True)
    result, began = _train_from(
        champion,
        request,
        settings={**fixed, "data": other, "out": tmp_path / "b.safetensors", "device": "cpu"},
        parent=None,
    )
    assert began.startswith("scratch (")
    assert "class_names" in began or "activation" in began
    assert "init_from" not in result.spec.metrics

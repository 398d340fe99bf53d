"""``max_minutes``: a training run stops starting epochs once its wall-clock budget is spent."""

from __future__ import annotations

import itertools
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


def _budget_lrs(config: TrainConfig, epoch_times: list[float]) -> tuple[list[float], float]:
    """Epochs as the training loop runs them (real optimizer and schedule, a clock that moves
    by ``epoch_times``): the learning rate of each epoch that starts, and the floor."""
    import types

    import torch

    from defectscan.training.train import _fit_schedule_to_budget
    from defectscan.training.warm_start import with_warmup

    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=config.epochs, eta_min=config.lr * 0.01
    )
    clock = {"now": 0.0}
    run = types.SimpleNamespace(
        config=config,
        loop=types.SimpleNamespace(epoch=0),
        fit=types.SimpleNamespace(scheduler=with_warmup(optimizer, cosine, config)),
        elapsed=lambda: clock["now"],
    )
    lrs: list[float] = []
    for took in epoch_times:
        if run.loop.epoch and _out_of_time(config, clock["now"], clock["now"] / run.loop.epoch):
            break
        if run.loop.epoch >= config.epochs:
            break
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        run.fit.scheduler.step()
        clock["now"] += took
        run.loop.epoch += 1
        _fit_schedule_to_budget(run, clock["now"] / run.loop.epoch)  # type: ignore[arg-type]
    return lrs, config.lr * 0.01


def test_a_budget_shorter_than_the_recipe_anneals_the_cosine_by_the_last_epoch_that_fits(
    tmp_path: Path,
) -> None:
    # 45 epochs planned, 60 s each would take 45 min; the budget is 30 min: 30 epochs fit.
    config = _config(tmp_path, epochs=45, warmup_epochs=1, lr=3e-3, max_minutes=30.0)
    lrs, floor = _budget_lrs(config, [60.0] * 45)
    assert len(lrs) == 30
    after_warmup = lrs[1:]
    assert all(b <= a + 1e-12 for a, b in itertools.pairwise(after_warmup))
    # The last epoch runs one step above the floor, as the last epoch of the full schedule does.
    full, _ = _budget_lrs(config.model_copy(update={"max_minutes": None}), [60.0] * 45)
    assert lrs[-1] < 0.02 * config.lr
    assert abs(lrs[-1] - full[-1]) < 0.01 * config.lr
    assert floor <= lrs[-1]


def test_epochs_that_speed_up_give_the_horizon_back_and_the_rate_never_rises(
    tmp_path: Path,
) -> None:
    config = _config(tmp_path, epochs=20, warmup_epochs=1, lr=1e-2, max_minutes=20.0)
    # Slow at first (the horizon shrinks), then fast enough that all 20 epochs fit.
    lrs, _ = _budget_lrs(config, [120.0] * 3 + [30.0] * 17)
    assert len(lrs) == 20
    after_warmup = lrs[1:]
    assert all(b <= a + 1e-12 for a, b in itertools.pairwise(after_warmup))
    assert lrs[-1] < 0.05 * config.lr
    # Without a budget nothing changes: the recipe's own schedule.
    plain, _ = _budget_lrs(config.model_copy(update={"max_minutes": None}), [120.0] * 20)
    assert len(plain) == 20
    assert plain[10] > lrs[10]  # the budgeted run had annealed further by then

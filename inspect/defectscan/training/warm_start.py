"""Fine-tuning: start a training run from a checkpoint's weights instead of random ones.

A run with ``TrainConfig.init`` (``defectscan train --init FILE``, or ``retrain``'s champion)
starts from that checkpoint when it fits the run: the same architecture, width, input channels
and channel order, activation and class names. The run then also takes the checkpoint's input
normalisation (its weights expect it), and its lineage records the weights it started from
(``init_from`` in the new checkpoint's metrics: path, sha256, version). A checkpoint that does
not fit is refused with the reason (:class:`InitMismatchError`); callers that can fall back to
random weights (retrain) catch it and say so.

``warmup_epochs`` ramps the learning rate up linearly over the first epochs before the cosine
schedule, so the first large gradients of new data do not wreck the features the weights
bring. :func:`fit_cosine_to_epochs` shortens a cosine schedule under way, so that a run cut
by its time budget (``max_minutes``) still anneals to its floor learning rate by its last
epoch instead of stopping halfway down.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from defectscan.errors import ConfigError
from defectscan.model.checkpoint import Checkpoint, load_checkpoint
from defectscan.model.spec import ModelSpec
from defectscan.training.data import RunData
from defectscan.training.run import TrainConfig

__all__ = [
    "InitMismatchError",
    "apply_init",
    "fit_cosine_to_epochs",
    "init_mismatch",
    "warm_start",
    "with_warmup",
]

logger = logging.getLogger(__name__)

_MUST_MATCH = (
    "architecture",
    "base_width",
    "bilinear",
    "n_channels",
    "channel_order",
    "activation",
    "class_names",
)


class InitMismatchError(ConfigError):
    """The checkpoint to start from does not fit this training run."""

    kind = "init_mismatch"


def init_mismatch(start: ModelSpec, run: ModelSpec) -> list[str]:
    """What differs between the checkpoint's spec and the run's (empty when it fits)."""
    return [
        f"{name}: checkpoint {getattr(start, name)!r}, this run {getattr(run, name)!r}"
        for name in _MUST_MATCH
        if getattr(start, name) != getattr(run, name)
    ]


def warm_start(config: TrainConfig, data: RunData) -> tuple[RunData, Checkpoint | None]:
    """The run's data with the start checkpoint's normalisation, and that checkpoint.

    Without ``config.init`` the data is returned as it is. Raises :class:`InitMismatchError` when
    the checkpoint does not fit the run.
    """
    if config.init is None:
        return data, None
    path = Path(config.init)
    start = load_checkpoint(path)
    problems = init_mismatch(start.spec, data.spec)
    if problems:
        msg = (
            f"cannot fine-tune from {path.name}: it does not fit this run ("
            + "; ".join(problems)
            + "): train from scratch (no --init), or match the options to the checkpoint"
        )
        raise InitMismatchError(msg)
    mean = np.asarray(start.spec.mean, dtype=np.float32)
    std = np.asarray(start.spec.std, dtype=np.float32)
    origin: dict[str, Any] = {
        "path": str(path.resolve()),
        "sha256": start.sha256,
        "version": start.version,
    }
    spec = data.spec.replace(
        mean=start.spec.mean,
        std=start.spec.std,
        metrics={**data.spec.metrics, "init_from": origin},
    )
    logger.info("fine-tuning from %s (%s)", start.version, path)
    return dataclasses.replace(data, mean=mean, std=std, spec=spec), start


def apply_init(model: nn.Module, start: Checkpoint) -> None:
    """Copy the start checkpoint's weights into ``model`` (same architecture: checked)."""
    with torch.no_grad():
        model.load_state_dict(start.model.state_dict(), strict=True)


def with_warmup(optimizer: torch.optim.Optimizer, scheduler: Any, config: TrainConfig) -> Any:
    """``scheduler`` preceded by a linear warm-up over ``config.warmup_epochs`` epochs."""
    if not config.warmup_epochs:
        return scheduler
    if config.scheduler != "cosine":
        msg = "warmup_epochs needs the cosine schedule (scheduler: cosine)"
        raise ConfigError(msg)
    warm = config.warmup_epochs
    ramp = torch.optim.lr_scheduler.LinearLR(
        optimizer, start_factor=0.1, end_factor=1.0, total_iters=warm
    )
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=max(1, config.epochs - warm), eta_min=config.lr * 0.01
    )
    return torch.optim.lr_scheduler.SequentialLR(
        optimizer, schedulers=[ramp, cosine], milestones=[warm]
    )


def fit_cosine_to_epochs(scheduler: Any, config: TrainConfig, epochs: int, done: int) -> bool:
    """Make the cosine schedule reach its floor with epoch ``epochs`` (at most ``config.epochs``).

    ``done`` epochs have run and stepped the schedule. Called after every epoch of a run with a
    time budget, with the epochs that fit by then: the horizon follows that estimate (down when
    epochs take longer than the recipe planned, back up to the recipe's when they speed up),
    and from where the learning rate is now it follows a cosine to ``eta_min`` at the horizon
    (torch's recursive form continues smoothly from the current value). Returns whether the
    horizon changed. Not during warm-up, and not for the plateau schedule.
    """
    if config.scheduler != "cosine":
        return False
    warm = config.warmup_epochs
    if isinstance(scheduler, torch.optim.lr_scheduler.SequentialLR):
        if done < warm:
            return False
        cosine = scheduler._schedulers[-1]  # torch keeps them there, no accessor
        offset = warm
    else:
        cosine, offset = scheduler, 0
    if not isinstance(cosine, torch.optim.lr_scheduler.CosineAnnealingLR):
        return False
    planned = max(1, config.epochs - offset)
    # The next step must stay short of the horizon's far side (its ratio divides by 1 + cos).
    t_max = min(planned, max(int(cosine.last_epoch) + 1, epochs - offset))
    if t_max == cosine.T_max:
        return False
    cosine.T_max = t_max
    return True

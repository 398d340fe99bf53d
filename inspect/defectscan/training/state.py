"""The resumable training state written after every epoch (``<out>.state.pt``).

Tensors, numbers and strings only, so it loads with ``torch.load(weights_only=True)``. A saved
state is resumed only when its compatibility key (data fingerprint, model settings, batch size,
seed, split, scheduler) matches the new run's; epochs, patience and lr may change.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from defectscan.model.spec import ModelSpec

__all__ = ["LoopState", "compat_key", "load_state", "save_state", "state_path"]

logger = logging.getLogger(__name__)


@dataclass
class LoopState:
    """Where a run stands: the next epoch, the best score so far and its weights, the history."""

    epoch: int = 0
    best_score: float = -math.inf
    best_epoch: int = -1
    bad_epochs: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    best_state: dict[str, torch.Tensor] = field(default_factory=dict)


def state_path(out: Path) -> Path:
    """Where the resumable training state of ``out`` lives."""
    return Path(out).with_name(Path(out).name + ".state.pt")


def compat_key(
    spec: ModelSpec,
    fingerprint: str,
    *,
    batch_size: int,
    seed: int,
    val_fraction: float,
    scheduler: str,
) -> str:
    """What must match for a saved state to be resumed (not epochs, patience or lr)."""
    return json.dumps(
        {
            "fingerprint": fingerprint,
            # Not the run id or the thresholds: a resumed run is a new run of the same training.
            "spec": {
                k: v
                for k, v in spec.to_dict().items()
                if k not in ("metrics", "thresholds", "min_confidence", "min_area", "training_run")
            },
            "batch_size": batch_size,
            "seed": seed,
            "val_fraction": val_fraction,
            "scheduler": scheduler,
        },
        sort_keys=True,
    )


def load_state(
    path: Path,
    compat: str,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: torch.amp.GradScaler | None,
    epochs: int,
) -> LoopState | None:
    """Restore model, optimiser, scheduler and scaler from ``path``; None when it does not fit.

    A cosine schedule is stretched to ``epochs`` (a resumed run may be longer).
    """
    saved = torch.load(path, map_location="cpu", weights_only=True)
    if saved.get("compat") != compat:
        logger.warning(
            "ignoring %s: it was written for other data or model settings; starting afresh", path
        )
        return None
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    if scaler is not None and saved.get("scaler"):
        scaler.load_state_dict(saved["scaler"])
    if isinstance(scheduler, torch.optim.lr_scheduler.CosineAnnealingLR):
        # A longer run stretches the schedule; T_max is not a learned quantity.
        scheduler.T_max = epochs
    state = LoopState(
        epoch=int(saved["epoch"]) + 1,
        best_score=float(saved["best_score"]),
        best_epoch=int(saved["best_epoch"]),
        bad_epochs=int(saved["bad_epochs"]),
        history=json.loads(saved["history"]),
        best_state=dict(saved["best_model"]),
    )
    logger.info("resuming %s from epoch %d (best IoU %.4f)", path, state.epoch, state.best_score)
    return state


def save_state(
    path: Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: torch.amp.GradScaler | None,
    loop: LoopState,
    compat: str,
) -> None:
    """Write the state after epoch ``loop.epoch`` atomically (a temporary file, then a rename)."""
    state = {
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "best_model": loop.best_state,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else {},
        "epoch": loop.epoch,
        "best_score": loop.best_score,
        "best_epoch": loop.best_epoch,
        "bad_epochs": loop.bad_epochs,
        "history": json.dumps(loop.history),
        "compat": compat,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    tmp.replace(path)

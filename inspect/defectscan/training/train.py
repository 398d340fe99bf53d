"""The training loop: a library function with a progress callback, resumable, early-stopping.

:func:`train` reads a dataset folder (:mod:`.data`), splits it deterministically, trains the
seed UNet on random ``tile_size`` crops (:mod:`.augment`) with the activation's loss
(:mod:`.losses`), validates on whole frames (reflect-padded to a multiple of 16) after every
epoch, keeps the weights with the best mean defect IoU and stops early when it stops improving.
Then it calibrates the verdict on the validation split through the inspection path
(:mod:`.evaluate`: thresholds or minimum confidence and minimum area for a target false-reject
rate on defect-free parts) and writes one product checkpoint (``.safetensors`` +
:class:`ModelSpec`) with that decision rule and the metrics it achieves in its metadata.
Its config, progress reports and result are defined in :mod:`.run` and importable from here.

Data (:mod:`.frames`): frames are decoded once and kept in memory; crops are cut in O(1) and
augmented in DataLoader workers (``num_workers``, by default from the cores), each with its own
seed, so the crops do not depend on the number of workers. Validation (:mod:`.validation`) runs
on frames normalised, padded and batched once; only summaries reach the host.

Ctrl-C (or SIGTERM mapped to it by the CLI) after at least one epoch writes the best checkpoint
so far and raises :class:`TrainingInterrupted` carrying it.

After every epoch a training state is written next to the output (:mod:`.state`:
``<out>.state.pt``, which loads with ``torch.load(weights_only=True)``). Calling
:func:`train` again with the same data and model settings continues from it, also with a larger
``epochs``. The random streams of epoch ``e`` are derived from ``(seed, e)``, so a resumed run
draws what an uninterrupted one would have drawn.

Speed: channels_last and autocast (bf16 on CPUs that support it, bf16 or fp16 + GradScaler on
CUDA; ``DEFECTSCAN_DISABLE_BF16=1`` keeps ``auto`` off bf16); AdamW with a cosine or plateau
schedule.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from defectscan.errors import ConfigError
from defectscan.model.backends import autocast_dtype, resolve_device
from defectscan.model.checkpoint import build_model, save_checkpoint
from defectscan.model.engines import make_backend
from defectscan.model.spec import ModelSpec, TestTimeFlips
from defectscan.training.augment import build_train_transform
from defectscan.training.data import RunData, load_run_data
from defectscan.training.evaluate import (
    Calibration,
    InspectedFrame,
    calibrate,
    choose_tta,
    evaluate_dataset,
    inspect_frames,
    score_frames,
)
from defectscan.training.frames import (
    EpochSampler,
    Frames,
    TileDataset,
    default_workers,
    epoch_keys,
    make_loader,
    to_target,
)
from defectscan.training.losses import SegmentationLoss
from defectscan.training.metrics import EvalReport
from defectscan.training.run import (
    ProgressFn,
    TrainConfig,
    TrainingInterrupted,
    TrainProgress,
    TrainResult,
)
from defectscan.training.state import LoopState, compat_key, load_state, save_state, state_path
from defectscan.training.validation import ValBatches, autocast, evaluate_model
from defectscan.training.warm_start import (
    apply_init,
    fit_cosine_to_epochs,
    warm_start,
    with_warmup,
)

__all__ = [
    "TrainConfig",
    "TrainProgress",
    "TrainResult",
    "TrainingInterrupted",
    "default_workers",
    "evaluate_dataset",
    "evaluate_model",
    "state_path",
    "train",
]

logger = logging.getLogger(__name__)


@dataclass
class _Fit:
    """The model and what updates it."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    use_scaler: bool
    loss_fn: SegmentationLoss


@dataclass
class _Run:
    """One call of :func:`train`: what is fixed for it, and the loop's state."""

    config: TrainConfig
    data: RunData
    fit: _Fit
    device: torch.device
    amp_dtype: torch.dtype | None
    val_batches: ValBatches
    report: ProgressFn
    t0: float
    parent_version: str | None
    compat: str
    loop: LoopState
    resumed_from: int
    stopped_early: bool
    timings: dict[str, float] = field(
        default_factory=lambda: {"data_s": 0.0, "step_s": 0.0, "val_s": 0.0, "crops": 0.0}
    )

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0


def train(
    config: TrainConfig,
    *,
    progress: ProgressFn | None = None,
    parent_version: str | None = None,
) -> TrainResult:
    """Train as ``config`` says, write the checkpoint to ``config.out``, return the result.

    Raises :class:`TrainingInterrupted` on Ctrl-C after writing the best checkpoint so far.
    """
    t0 = time.perf_counter()
    out = Path(config.out)
    if out.suffix != ".safetensors":
        msg = f"--out must end in .safetensors (the product's checkpoint format), got {out.name!r}"
        raise ConfigError(msg)
    torch.manual_seed(config.seed)
    device = resolve_device(config.device)
    amp_dtype = autocast_dtype(config.precision, device)
    data, start = warm_start(config, load_run_data(config))
    workers = config.num_workers if config.num_workers is not None else default_workers(device)
    logger.info(
        "training %s (%s, %d classes) on %d images, validating on %d, device %s, autocast %s, "
        "%d loader workers",
        config.name,
        data.spec.activation,
        len(data.spec.class_names),
        len(data.train_frames.images),
        len(data.val_frames.images),
        device,
        amp_dtype,
        workers,
    )
    fit = _build_fit(config, data.spec, device, amp_dtype)
    if start is not None:
        apply_init(fit.model, start)
    fit.scheduler = with_warmup(fit.optimizer, fit.scheduler, config)
    compat = compat_key(
        data.spec,
        data.fingerprint,
        batch_size=config.batch_size,
        seed=config.seed,
        val_fraction=config.val_fraction,
        scheduler=config.scheduler,
    )
    loop = _resume(config, fit, compat)
    run = _Run(
        config=config,
        data=data,
        fit=fit,
        device=device,
        amp_dtype=amp_dtype,
        val_batches=_val_batches(config, data, device),
        report=progress or (lambda _p: None),
        t0=t0,
        parent_version=parent_version,
        compat=compat,
        loop=loop,
        resumed_from=loop.epoch,
        stopped_early=loop.bad_epochs >= config.patience,
    )
    sampler = EpochSampler()
    loader = _crop_loader(config, data, sampler, device, workers)
    _epochs(run, loader, sampler)
    try:
        result = _finish(run, interrupted=False)
    except KeyboardInterrupt as exc:
        # Stopped while calibrating: keep the trained weights with the default rule.
        partial = _finish(run, interrupted=True)
        raise TrainingInterrupted(partial) from exc
    run.report(
        TrainProgress(
            "done",
            max(0, loop.epoch - 1),
            config.epochs,
            metrics=result.best_metrics,
            best_score=_finite(loop.best_score),
            elapsed_s=result.wall_s,
            message=str(out),
            timings_s=dict(result.timings_s),
        )
    )
    return result


def _build_fit(
    config: TrainConfig, spec: ModelSpec, device: torch.device, amp_dtype: torch.dtype | None
) -> _Fit:
    """The model (fresh weights), AdamW, the lr schedule, the gradient scaler and the loss."""
    model = build_model(spec).to(device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    scheduler: Any
    if config.scheduler == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=config.epochs, eta_min=config.lr * 0.01
        )
    else:
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="max", factor=0.5, patience=max(1, config.patience // 2)
        )
    use_scaler = device.type == "cuda" and amp_dtype == torch.float16
    loss_fn = SegmentationLoss(
        spec.activation,
        spec.n_classes,
        dice_weight=config.dice_weight,
        dice_log=config.dice_log,
        class_weights=config.class_weights,
        focal_gamma=config.focal_gamma,
    ).to(device)
    return _Fit(
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=torch.amp.GradScaler("cuda", enabled=use_scaler),
        use_scaler=use_scaler,
        loss_fn=loss_fn,
    )


def _resume(config: TrainConfig, fit: _Fit, compat: str) -> LoopState:
    """The saved state of this training when there is one that fits, else a fresh start."""
    spath = state_path(Path(config.out))
    if config.resume and spath.is_file():
        saved = load_state(
            spath,
            compat,
            model=fit.model,
            optimizer=fit.optimizer,
            scheduler=fit.scheduler,
            scaler=fit.scaler if fit.use_scaler else None,
            epochs=config.epochs,
        )
        if saved is not None:
            return saved
    return LoopState(best_state=_weights(fit.model))


def _val_batches(config: TrainConfig, data: RunData, device: torch.device) -> ValBatches:
    return ValBatches(data.val_frames, data.spec, device, channels_last=config.channels_last)


def _crop_loader(
    config: TrainConfig, data: RunData, sampler: EpochSampler, device: torch.device, workers: int
) -> DataLoader[tuple[torch.Tensor, torch.Tensor]]:
    """Augmented training crops, in the order ``sampler`` gives each epoch."""
    flips_only = config.augment == "flips"
    transform = build_train_transform(
        config.tile_size,
        seed=config.seed,
        crop=False,
        affine=not flips_only,
        photometric=not flips_only,
    )
    tiles = TileDataset(
        data.train_frames,
        transform,
        data.mean,
        data.std,
        tile_size=config.tile_size,
        defect_crop_p=config.defect_crop_p,
    )
    n_keys = len(_keys(config, data.train_frames, 0))
    return make_loader(
        tiles,
        sampler,
        batch_size=config.batch_size,
        device=device,
        workers=workers,
        n_keys=n_keys,
    )


def _keys(config: TrainConfig, frames: Frames, epoch: int) -> list[tuple[int, int]]:
    return epoch_keys(
        frames,
        seed=config.seed,
        epoch=epoch,
        neg_per_pos=config.neg_per_pos,
        samples_per_epoch=config.samples_per_epoch,
    )


def _epochs(
    run: _Run,
    loader: DataLoader[tuple[torch.Tensor, torch.Tensor]],
    sampler: EpochSampler,
) -> None:
    """Train and validate epoch after epoch until the last one or an early stop.

    On Ctrl-C after at least one epoch, writes the best checkpoint so far and raises
    :class:`TrainingInterrupted` carrying it.
    """
    config, loop = run.config, run.loop
    run.report(
        TrainProgress(
            "start",
            loop.epoch,
            config.epochs,
            elapsed_s=run.elapsed(),
            message=f"{len(run.data.train_frames.images)} train / "
            f"{len(run.data.val_frames.images)} val",
        )
    )
    sync = torch.cuda.synchronize if run.device.type == "cuda" else (lambda: None)
    started, done = time.perf_counter(), 0
    try:
        while loop.epoch < config.epochs and not run.stopped_early:
            if done and _out_of_time(config, run.elapsed(), (time.perf_counter() - started) / done):
                logger.info(
                    "time budget of %s min reached after %d epochs", config.max_minutes, done
                )
                break
            torch.manual_seed(config.seed * 100_003 + loop.epoch)
            sampler.keys = _keys(config, run.data.train_frames, loop.epoch)
            losses, steps = _train_epoch(run, loader, len(sampler.keys))
            sync()
            _end_epoch(run, losses, steps)
            loop.epoch += 1
            done += 1
            _fit_schedule_to_budget(run, (time.perf_counter() - started) / done)
    except KeyboardInterrupt as exc:
        if loop.best_epoch < 0:
            raise
        partial = _finish(run, interrupted=True)
        logger.warning(
            "training interrupted after %d epochs: best checkpoint so far written to %s",
            len(loop.history),
            partial.checkpoint_path,
        )
        raise TrainingInterrupted(partial) from exc
    finally:
        del loader  # stops persistent workers


def _min_epochs(config: TrainConfig) -> int:
    """Epochs that always run before early stopping counts (see ``TrainConfig.min_epochs``)."""
    if config.min_epochs is not None:
        return config.min_epochs
    return config.epochs // 2 if config.scheduler == "cosine" else 0


def _fit_schedule_to_budget(run: _Run, epoch_s: float) -> None:
    """With ``max_minutes``, end the cosine schedule with the last epoch the budget allows.

    A run on a slower machine than its recipe was written for stops early (``_out_of_time``);
    without this its learning rate would stop partway down the cosine, where the model is
    worst settled.
    """
    config, loop = run.config, run.loop
    if config.max_minutes is None or epoch_s <= 0:
        return
    left_s = 60.0 * config.max_minutes - run.elapsed()
    fit = loop.epoch + max(0, math.floor(left_s / epoch_s))
    if fit_cosine_to_epochs(run.fit.scheduler, config, fit, loop.epoch):
        logger.info(
            "time budget of %s min: about %d of %d epochs fit; the cosine schedule ends there",
            config.max_minutes,
            fit,
            config.epochs,
        )


def _out_of_time(config: TrainConfig, elapsed_s: float, epoch_s: float) -> bool:
    """Whether another epoch of ``epoch_s`` would end after ``config.max_minutes``."""
    return config.max_minutes is not None and elapsed_s + epoch_s > 60.0 * config.max_minutes


def _train_epoch(
    run: _Run, loader: DataLoader[tuple[torch.Tensor, torch.Tensor]], n_keys: int
) -> tuple[list[torch.Tensor], int]:
    """One pass over this epoch's crops: (the per-step losses, on the device; the steps)."""
    config, fit, timings = run.config, run.fit, run.timings
    batch = config.batch_size
    steps = max(1, n_keys // batch) if n_keys > batch else 1
    fit.model.train()
    losses: list[torch.Tensor] = []
    shown_loss: float | None = None
    t_fetch = time.perf_counter()
    for step, (x, m) in enumerate(loader, start=1):
        t_step = time.perf_counter()
        timings["data_s"] += t_step - t_fetch
        x = x.to(run.device, non_blocking=True)
        if config.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        m = m.to(run.device, non_blocking=True)
        target = to_target(m, run.data.spec.activation, len(run.data.spec.class_names))
        losses.append(_step(run, x, target))
        timings["crops"] += x.shape[0]
        if step % 20 == 0 or step == steps:
            # One host sync every 20 steps: the loss is shown, not needed per step.
            shown_loss = float(torch.stack(losses[-20:]).mean())
            logger.info(
                "epoch %d step %d/%d loss %.4f (%.0f s)",
                run.loop.epoch + 1,
                step,
                steps,
                shown_loss,
                run.elapsed(),
            )
        run.report(
            TrainProgress(
                "step",
                run.loop.epoch,
                config.epochs,
                step=step,
                steps=steps,
                loss=shown_loss,
                lr=fit.optimizer.param_groups[0]["lr"],
                best_score=_finite(run.loop.best_score),
                elapsed_s=run.elapsed(),
            )
        )
        t_fetch = time.perf_counter()
        timings["step_s"] += t_fetch - t_step
    return losses, steps


def _step(run: _Run, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """One optimiser step on a batch; the loss, detached, still on the device."""
    fit = run.fit
    fit.optimizer.zero_grad(set_to_none=True)
    with autocast(run.device, run.amp_dtype):
        logits = fit.model(x)
    loss = fit.loss_fn(logits, target)
    if fit.use_scaler:
        fit.scaler.scale(loss).backward()
        fit.scaler.step(fit.optimizer)
        fit.scaler.update()
    else:
        loss.backward()
        fit.optimizer.step()
    return loss.detach()


def _end_epoch(run: _Run, losses: list[torch.Tensor], steps: int) -> None:
    """Validate, keep the best weights, step the schedule, save the state, report the epoch."""
    config, fit, loop = run.config, run.fit, run.loop
    t_val = time.perf_counter()
    report, _ = evaluate_model(
        fit.model, run.data.spec, run.val_batches, device=run.device, autocast_dtype=run.amp_dtype
    )
    run.timings["val_s"] += time.perf_counter() - t_val
    score = report.mean_iou if report.mean_iou is not None else 0.0
    row = {
        "epoch": float(loop.epoch),
        "loss": float(torch.stack(losses).mean()) if losses else math.nan,
        "lr": float(fit.optimizer.param_groups[0]["lr"]),
        **report.flat(),
    }
    loop.history.append(row)
    if score > loop.best_score + config.min_delta:
        loop.best_score, loop.best_epoch, loop.bad_epochs = score, loop.epoch, 0
        loop.best_state = _weights(fit.model)
    elif loop.epoch + 1 > _min_epochs(config):
        # Early in a run the mean IoU can sit still while the frequent classes saturate and the
        # rare ones have not started (the demo's thin classes scored 0 for 13 of 20 epochs).
        loop.bad_epochs += 1
    if isinstance(fit.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        fit.scheduler.step(score)
    else:
        fit.scheduler.step()
    run.stopped_early = loop.bad_epochs >= config.patience and loop.epoch + 1 < config.epochs
    save_state(
        state_path(Path(config.out)),
        model=fit.model,
        optimizer=fit.optimizer,
        scheduler=fit.scheduler,
        scaler=fit.scaler if fit.use_scaler else None,
        loop=loop,
        compat=run.compat,
    )
    run.report(
        TrainProgress(
            "epoch",
            loop.epoch,
            config.epochs,
            step=steps,
            steps=steps,
            loss=row["loss"],
            lr=row["lr"],
            metrics=report.flat(),
            best_score=_finite(loop.best_score),
            elapsed_s=run.elapsed(),
            message="early stop" if run.stopped_early else "",
            timings_s=dict(run.timings),
        )
    )


def _finish(run: _Run, *, interrupted: bool) -> TrainResult:
    """Best weights -> calibrated decision rule -> scored through inspection -> checkpoint.

    An interrupted run skips calibration and the inspection pass (a supervisor that sent
    SIGTERM waits only so long): its checkpoint keeps the default rule and the epoch's scores.
    """
    config, data, loop = run.config, run.data, run.loop
    t_fin = time.perf_counter()
    model = run.fit.model
    model.load_state_dict(loop.best_state)
    model.eval()
    cpu_model = copy.deepcopy(model).to("cpu").float()
    cpu_model.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]
    spec = data.spec
    calibration: Calibration | None = None
    if interrupted:
        final, _ = evaluate_model(
            model, spec, run.val_batches, device=run.device, autocast_dtype=run.amp_dtype
        )
    else:
        spec, final, calibration = _calibrate_and_score(run, cpu_model)
    timings = {**run.timings, "finish_s": time.perf_counter() - t_fin}
    n_train, n_val = len(data.train_frames.images), len(data.val_samples)
    metrics: dict[str, Any] = {
        **data.spec.metrics,  # init_from, when fine-tuned
        **final.flat(),
        "best_epoch": loop.best_epoch,
        "epochs_run": len(loop.history),
        "n_train": n_train,
        "n_val": n_val,
        "val_fraction": config.val_fraction,
        "split_seed": config.seed,
        "dataset_fingerprint": data.fingerprint,
        "parent_version": run.parent_version,
        "interrupted": interrupted,
        "scored_by": "epoch-validation" if interrupted else "inspection",
    }
    if calibration is not None:
        metrics["calibration"] = calibration.to_dict()
    spec = spec.replace(metrics=metrics)
    out = Path(config.out)
    digest = save_checkpoint(cpu_model, spec, out)
    return TrainResult(
        checkpoint_path=out,
        spec=spec,
        sha256=digest,
        version=f"{spec.name}-{digest[:12]}",
        best_epoch=loop.best_epoch,
        best_metrics=final.flat(),
        report=final,
        history=loop.history,
        dataset_fingerprint=data.fingerprint,
        n_train=n_train,
        n_val=n_val,
        wall_s=run.elapsed(),
        stopped_early=run.stopped_early,
        resumed_from_epoch=run.resumed_from,
        parent_version=run.parent_version,
        interrupted=interrupted,
        calibration=calibration.to_dict() if calibration is not None else None,
        timings_s=timings,
    )


def _calibrate_and_score(
    run: _Run, cpu_model: torch.nn.Module
) -> tuple[ModelSpec, EvalReport, Calibration | None]:
    """Inspect the validation frames as production would, calibrate the verdict, score it.

    With ``tta: auto`` the frames are inspected once per test-time flip setting and each is
    calibrated; flips are kept only when their recall at the false-reject target beats the
    plain model's by ``tta_margin`` (the cheapest such setting wins a tie).
    """
    from defectscan.pipeline import Inspector
    from defectscan.postprocess import PostprocessConfig

    config, data, spec = run.config, run.data, run.data.spec
    samples = data.val_samples or data.val_frames.samples
    backend = make_backend(
        "torch",
        cpu_model,
        spec.activation,
        n_channels=spec.n_channels,
        tile=spec.tile_size,
        device=str(run.device),
        precision=config.precision,
    )
    options: tuple[TestTimeFlips, ...]
    if config.tta != "auto":
        options = (config.tta,)
    else:
        options = ("none", "h", "hv") if config.calibrate else ("none",)
    tried: dict[TestTimeFlips, tuple[list[InspectedFrame], Calibration | None]] = {}
    for tta in options:
        inspector = Inspector(
            backend,
            spec,
            model_version="validation",
            batch_size=8,  # as `inspect` and `eval` batch by default: the same numbers
            max_pixels=config.max_pixels,
            tta=tta,
        )
        frames = list(
            inspect_frames(inspector, samples, n_classes=data.n_index_classes, binary=data.binary)
        )
        calibration = (
            calibrate(frames, spec, target_false_reject_rate=config.target_false_reject_rate)
            if config.calibrate
            else None
        )
        tried[tta] = (frames, calibration)
    chosen: TestTimeFlips = options[0]
    if len(tried) > 1:
        chosen = choose_tta(
            {t: c for t, (_, c) in tried.items() if c is not None}, margin=config.tta_margin
        )
    frames, calibration = tried[chosen]
    spec = spec.replace(tta=chosen)
    if calibration is not None:
        spec = calibration.apply(spec)
        if len(tried) > 1:
            calibration = dataclasses.replace(
                calibration,
                tta={
                    "chosen": chosen,
                    "margin": config.tta_margin,
                    "image_recall": {
                        t: c.image_recall for t, (_, c) in tried.items() if c is not None
                    },
                    "false_reject_rate": {
                        t: c.false_reject_rate for t, (_, c) in tried.items() if c is not None
                    },
                },
            )
        logger.info("verdict calibration: %s", calibration.to_dict())
    final = score_frames(frames, spec, config=PostprocessConfig.from_spec(spec))
    return spec, final, calibration


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A CPU copy of the model's current weights."""
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None

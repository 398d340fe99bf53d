"""CLI commands for training: ``train`` and ``eval`` (the registry and reviews: :mod:`.models`).

Heavy imports (torch, the training loop) happen inside the commands, so ``defectscan --help``
stays fast. The database URL comes from Settings (``DEFECTSCAN_DATABASE_URL``; default a SQLite
file under ``var/``) and is migrated to head before use.
"""

from __future__ import annotations

import json
import logging
import signal
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from defectscan.cli.common import DbUrlOpt, console, err_console
from defectscan.cli.common import db_session as _session

__all__ = ["register"]

logger = logging.getLogger(__name__)

LayoutOpt = Annotated[
    str,
    typer.Option("--layout", help="auto, images-masks or class-folders (Magnetic Tile style)."),
]


def _check_layout(layout: str) -> Literal["auto", "images-masks", "class-folders"]:
    if layout not in ("auto", "images-masks", "class-folders"):
        msg = f"--layout must be auto, images-masks or class-folders, got {layout!r}"
        raise typer.BadParameter(msg)
    return layout  # type: ignore[return-value]


def _sigterm_as_interrupt(signum: int, frame: object) -> None:
    # Once: a second SIGTERM while the best checkpoint is being written must not cut it short.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt


def _parse_weights(text: str | None) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        msg = f"--class-weights takes comma-separated numbers, got {text!r}"
        raise typer.BadParameter(msg) from None


#: ``train`` options whose TrainConfig field has another name.
_FIELD_OF_OPTION = {
    "width": "base_width",
    "workers": "num_workers",
    "target_frr": "target_false_reject_rate",
}
#: ``train`` options that are not training settings.
_NOT_TRAINING = {"config", "parent", "do_register", "db", "as_json", "ctx", "init"}


def recipe_path(name_or_path: str) -> Path:
    """A recipe file: a path, or the name of a recipe shipped in ``defectscan/training/recipes``."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    from importlib.resources import files

    stem = name_or_path.removesuffix(".yaml")
    shipped = files("defectscan.training") / "recipes" / f"{stem}.yaml"
    if shipped.is_file():
        return Path(str(shipped))
    known = sorted(
        p.name.removesuffix(".yaml")
        for p in (files("defectscan.training") / "recipes").iterdir()
        if p.name.endswith(".yaml")
    )
    msg = f"--config {name_or_path!r} is neither a file nor a shipped recipe ({', '.join(known)})"
    raise typer.BadParameter(msg)


def _read_recipe(name_or_path: str) -> dict[str, Any]:
    import yaml

    path = recipe_path(name_or_path)
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        msg = f"--config {path}: not valid YAML: {exc}"
        raise typer.BadParameter(msg) from exc
    if not isinstance(loaded, dict):
        msg = (
            f"--config {path}: expected a mapping of training options, got {type(loaded).__name__}"
        )
        raise typer.BadParameter(msg)
    return {str(k).replace("-", "_"): v for k, v in loaded.items()}


def _train_settings(ctx: typer.Context, params: dict[str, Any]) -> dict[str, Any]:
    """TrainConfig fields: the command's defaults < the recipe (``--config``) < flags given."""
    recipe = _read_recipe(params["config"]) if params.get("config") else {}
    settings: dict[str, Any] = {}
    for name, value in params.items():
        if name in _NOT_TRAINING:
            continue
        field = _FIELD_OF_OPTION.get(name, name)
        source = ctx.get_parameter_source(name)
        # By name: typer may bring its own copy of click, with its own ParameterSource enum.
        given = source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")
        if given or field not in recipe:
            settings[field] = value
    for field, value in recipe.items():
        if field not in settings:
            settings[field] = value
    if settings.get("data") is None or settings.get("out") is None:
        msg = "give --data and --out (on the command line or in the --config recipe)"
        raise typer.BadParameter(msg)
    return settings


def train_cmd(
    ctx: typer.Context,
    data: Annotated[Path | None, typer.Option("--data", help="Dataset folder.")] = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Checkpoint to write (.safetensors).")
    ] = None,
    config: Annotated[
        str | None,
        typer.Option(
            "--config",
            help="Recipe: a YAML file of training options (TrainConfig field names), or the "
            "name of a shipped recipe (magnetic-tile, magnetic-tile-cpu, fine-tune). Flags given "
            "on the command line win.",
        ),
    ] = None,
    layout: LayoutOpt = "auto",
    epochs: Annotated[
        int, typer.Option("--epochs", min=1, help="Passes over the crops of an epoch.")
    ] = 20,
    width: Annotated[int, typer.Option("--width", min=1, help="UNet base width (seed: 64).")] = 16,
    tile_size: Annotated[
        int, typer.Option("--tile-size", min=16, help="Training crop size in pixels.")
    ] = 256,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Crops per step.")] = 8,
    mode: Annotated[str, typer.Option("--mode", help="auto, binary or multiclass.")] = "auto",
    lr: Annotated[float, typer.Option("--lr", help="Peak learning rate (AdamW).")] = 2e-3,
    val_fraction: Annotated[
        float, typer.Option("--val-fraction", help="Share of images held out for validation.")
    ] = 0.2,
    seed: Annotated[
        int, typer.Option("--seed", help="Seed of the split, the crops and the weights.")
    ] = 0,
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")] = "auto",
    precision: Annotated[str, typer.Option("--precision", help="auto, fp32, bf16, fp16.")] = "auto",
    workers: Annotated[
        int | None,
        typer.Option("--workers", min=0, help="DataLoader workers (default: from the cores)."),
    ] = None,
    patience: Annotated[
        int,
        typer.Option("--patience", min=1, help="Stop after this many epochs without progress."),
    ] = 6,
    neg_per_pos: Annotated[
        float | None,
        typer.Option("--neg-per-pos", help="Defect-free images per defect image per epoch."),
    ] = None,
    max_minutes: Annotated[
        float | None,
        typer.Option(
            "--max-minutes",
            min=0,
            help="Wall-clock budget: start no epoch that would end after it.",
        ),
    ] = None,
    samples_per_epoch: Annotated[
        int | None,
        typer.Option(
            "--samples-per-epoch", min=1, help="Crops per epoch (default: one per image)."
        ),
    ] = None,
    class_weights: Annotated[
        str | None,
        typer.Option(
            "--class-weights",
            help="Comma-separated loss weight per output channel (softmax: background first); "
            "raise rare, tiny defect classes.",
        ),
    ] = None,
    focal_gamma: Annotated[
        float | None, typer.Option("--focal-gamma", min=0, help="Focal loss instead of CE/BCE.")
    ] = None,
    defect_crop_p: Annotated[
        float,
        typer.Option("--defect-crop-p", min=0, max=1, help="Share of crops centred on a defect."),
    ] = 0.5,
    augment: Annotated[
        str, typer.Option("--augment", help="full (flips, turns, affine, photometric) or flips.")
    ] = "full",
    target_frr: Annotated[
        float,
        typer.Option(
            "--target-frr",
            min=0,
            max=1,
            help="Calibrate the verdict on the validation split to this false-reject rate.",
        ),
    ] = 0.02,
    name: Annotated[str, typer.Option("--name", help="Model name in the registry.")] = "unet",
    parent: Annotated[str | None, typer.Option("--parent", help="Parent model version.")] = None,
    init: Annotated[
        str,
        typer.Option(
            "--init",
            help="Weights to start from: scratch, champion (the registry's champion of --name: "
            "fine-tuning) or a checkpoint file.",
        ),
    ] = "scratch",
    resume: Annotated[
        bool,
        typer.Option(
            "--resume/--no-resume", help="Continue from <out>.state.pt when its settings match."
        ),
    ] = True,
    do_register: Annotated[
        bool, typer.Option("--register/--no-register", help="Register as a candidate.")
    ] = True,
    db: DbUrlOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Train a UNet on a dataset folder, write a checkpoint, register it as a candidate."""
    params = dict(locals())  # first: the options only
    from pydantic import ValidationError

    from defectscan.training.train import TrainConfig, TrainingInterrupted, TrainProgress, train

    params["layout"] = _check_layout(layout)
    params["class_weights"] = _parse_weights(class_weights)
    settings = _train_settings(ctx, params)
    start, champion_version = _init_checkpoint(init, settings.get("name", name), db)
    if start is not None:
        settings["init"] = start
        parent = parent or champion_version
    try:
        train_config = TrainConfig(**settings)
    except ValidationError as exc:
        msg = f"invalid training options: {exc}"
        raise typer.BadParameter(msg) from exc
    run_id: int | None = None
    if do_register:
        from defectscan.store import create_training_run

        with _session(db) as session:
            run = create_training_run(
                session=session,
                trigger="cli",
                params=json.loads(train_config.model_dump_json()),
                status="running",
            )
            run_id = run.id
        train_config = train_config.model_copy(update={"training_run": str(run_id)})

    columns = (
        TextColumn("[bold]epoch {task.fields[epoch]}/{task.fields[epochs]}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} steps"),
        TextColumn("loss {task.fields[loss]}"),
        TextColumn("best IoU {task.fields[best]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    n_epochs = train_config.epochs
    with Progress(*columns, console=err_console, disable=as_json) as bar:
        task = bar.add_task("train", total=None, epoch=0, epochs=n_epochs, loss="-", best="-")

        def on_progress(p: TrainProgress) -> None:
            best = f"{p.best_score:.3f}" if p.best_score is not None else "-"
            if p.phase == "step":
                fields: dict[str, Any] = {"epoch": p.epoch + 1, "best": best}
                if p.loss is not None:
                    fields["loss"] = f"{p.loss:.4f}"
                bar.update(task, completed=p.step, total=p.steps, **fields)
            elif p.phase == "epoch":
                iou = p.metrics.get("mean_iou")
                bar.console.print(
                    f"epoch {p.epoch + 1}/{p.epochs}: loss {p.loss:.4f}, val mean IoU "
                    f"{iou if iou is None else round(iou, 4)}, best {best} "
                    f"({p.elapsed_s:.0f} s){' - ' + p.message if p.message else ''}"
                )

        # A stopped run (Ctrl-C, or SIGTERM from a supervisor) keeps its best checkpoint and is
        # recorded as cancelled instead of staying "running" forever in training_runs.
        previous = signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
        try:
            result = train(train_config, progress=on_progress, parent_version=parent)
        except BaseException as exc:
            partial = exc.result if isinstance(exc, TrainingInterrupted) else None
            if run_id is not None:
                _record_stopped_run(run_id, db, exc, partial, parent)
            if partial is not None:
                err_console.print(
                    f"[yellow]interrupted[/]: best checkpoint so far (epoch "
                    f"{partial.best_epoch + 1}) written to {partial.checkpoint_path}"
                )
            if isinstance(exc, KeyboardInterrupt):
                raise typer.Exit(130) from None
            raise
        finally:
            signal.signal(signal.SIGTERM, previous)

    version_status = None
    if do_register and run_id is not None:
        from defectscan.store import finish_training_run
        from defectscan.training.registry import register_checkpoint

        with _session(db) as session:
            mv = register_checkpoint(
                result.checkpoint_path,
                session=session,
                parent_version=parent,
                training_run_id=run_id,
                dataset_fingerprint=result.dataset_fingerprint,
            )
            version_status = mv.status
            finish_training_run(
                run_id,
                session=session,
                status="succeeded",
                metrics=result.best_metrics,
                dataset_stats={
                    "fingerprint": result.dataset_fingerprint,
                    "n_train": result.n_train,
                    "n_val": result.n_val,
                },
            )
    summary = {
        "checkpoint": str(result.checkpoint_path),
        "version": result.version,
        "status": version_status,
        "training_run": run_id,
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.history),
        "stopped_early": result.stopped_early,
        "wall_s": round(result.wall_s, 1),
        "thresholds": list(result.spec.thresholds),
        "min_confidence": result.spec.min_confidence,
        "min_area": list(result.spec.min_area),
        "calibration": result.calibration,
        "timings_s": {k: round(v, 2) for k, v in result.timings_s.items()},
        "metrics": result.report.to_dict(),
    }
    if as_json:
        typer.echo(json.dumps(summary))
        return
    _print_report(result.report.to_dict(), title=f"{result.version} on the validation split")
    cal = result.calibration
    if cal:
        console.print(
            f"verdict calibrated for false-reject rate <= {cal['target_false_reject_rate']}: "
            f"thresholds {cal['thresholds']}, min confidence {cal['min_confidence']}, min area "
            f"{cal['min_area']} -> false-reject rate {cal['false_reject_rate']}, image recall "
            f"{cal['image_recall']}" + ("" if cal["met"] else f" ({cal['note']})")
        )
    console.print(
        f"wrote {result.checkpoint_path} ({result.version}) in {result.wall_s:.0f} s"
        + (f"; registered as {version_status}" if version_status else "")
    )


def _init_checkpoint(init: str, name: str, db: str | None) -> tuple[Path | None, str | None]:
    """``--init``: the checkpoint to start from and, for ``champion``, the champion's version."""
    if init == "scratch":
        return None, None
    if init == "champion":
        from defectscan.store import get_champion

        with _session(db) as session:
            champ = get_champion(session=session, name=name)
            if champ is None or not champ.checkpoint_path:
                msg = f"--init champion: model {name!r} has no champion in the registry yet"
                raise typer.BadParameter(msg)
            return Path(champ.checkpoint_path), champ.version
    path = Path(init)
    if not path.is_file():
        msg = f"--init {init!r}: give scratch, champion or an existing checkpoint file"
        raise typer.BadParameter(msg)
    return path, None


def _record_stopped_run(
    run_id: int, db: str | None, exc: BaseException, partial: Any, parent: str | None
) -> None:
    """Record a run that did not finish; an interrupted one with its best checkpoint so far."""
    from defectscan.store import finish_training_run
    from defectscan.training.registry import register_checkpoint

    interrupted = isinstance(exc, KeyboardInterrupt)
    with _session(db) as session:
        metrics = None
        if partial is not None:
            mv = register_checkpoint(
                partial.checkpoint_path,
                session=session,
                parent_version=parent,
                training_run_id=run_id,
                dataset_fingerprint=partial.dataset_fingerprint,
            )
            metrics = {
                **partial.best_metrics,
                "checkpoint": str(partial.checkpoint_path),
                "version": mv.version,
                "best_epoch": partial.best_epoch,
                "epochs_run": len(partial.history),
            }
        finish_training_run(
            run_id,
            session=session,
            status="cancelled" if interrupted else "failed",
            metrics=metrics,
            error=str(exc)[:2000] or type(exc).__name__,
        )


def _print_report(d: dict[str, Any], *, title: str) -> None:
    table = Table(title=title)
    for col in ("class", "IoU", "Dice", "IoU/img", "Dice/img", "best thr"):
        table.add_column(col)

    def f(v: Any) -> str:
        return "-" if v is None else f"{v:.4f}"

    for name, row in d["per_class"].items():
        table.add_row(
            name,
            f(row["iou"]),
            f(row["dice"]),
            f(row["iou_per_image"]),
            f(row["dice_per_image"]),
            f(row["best_threshold"]),
        )
    console.print(table)
    console.print(
        f"mean IoU {f(d['mean_iou'])}, mean Dice {f(d['mean_dice'])}, pooled defect IoU "
        f"{f(d.get('pooled_iou'))}, Dice {f(d.get('pooled_dice'))}; pixel AUROC "
        f"{f(d['pixel_auroc'])}, image AUROC {f(d.get('image_auroc'))}, image recall "
        f"{f(d['image_recall'])}, false-reject rate {f(d['false_reject_rate'])} "
        f"({d['n_images']} images, {d['n_defective_images']} defective)"
    )


def eval_cmd(
    model: Annotated[Path, typer.Option("--model", "-m", help="Checkpoint file.")],
    data: Annotated[Path, typer.Option("--data", help="Dataset folder.")],
    layout: LayoutOpt = "auto",
    split: Annotated[
        str, typer.Option("--split", help="all, or val: the split held out in training.")
    ] = "all",
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")] = "auto",
    backend: Annotated[
        str,
        typer.Option(
            "--backend",
            help="As for inspect: auto (OpenVINO on CPU where installed, torch on CUDA), torch, "
            "openvino or onnxruntime.",
        ),
    ] = "auto",
    precision: Annotated[str, typer.Option("--precision", help="auto, fp32, bf16, fp16.")] = "auto",
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Tiles per batch.")] = 8,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Score a checkpoint on a dataset as `inspect` decides: pixel IoU/Dice, recall, false rejects.

    Images go through the inspection pipeline (tiling, the model's thresholds, minimum
    confidence and area, the verdict), so the class maps are those `inspect --out` writes.
    """
    from defectscan.model.checkpoint import load_checkpoint
    from defectscan.training.evaluate import evaluate_dataset

    if split not in ("all", "val"):
        msg = f"--split must be all or val, got {split!r}"
        raise typer.BadParameter(msg)
    if backend not in ("auto", "torch", "openvino", "onnxruntime"):
        msg = f"--backend must be auto, torch, openvino or onnxruntime, got {backend!r}"
        raise typer.BadParameter(msg)
    if precision not in ("auto", "fp32", "bf16", "fp16"):
        msg = f"--precision must be auto, fp32, bf16 or fp16, got {precision!r}"
        raise typer.BadParameter(msg)
    ckpt = load_checkpoint(model)
    report = evaluate_dataset(
        ckpt,
        data,
        layout=_check_layout(layout),
        split="val" if split == "val" else "all",
        device=device,
        backend=backend,  # type: ignore[arg-type]
        precision=precision,  # type: ignore[arg-type]
        batch_size=batch_size,
    )
    d = {"model": str(model), "version": ckpt.version, "split": split, **report.to_dict()}
    if as_json:
        typer.echo(json.dumps(d))
        return
    _print_report(d, title=f"{ckpt.version} on {data} ({split})")


def register(app: typer.Typer) -> None:
    """Add ``train`` and ``eval`` to ``app``."""
    app.command("train")(train_cmd)
    app.command("eval")(eval_cmd)

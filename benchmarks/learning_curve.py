"""A recipe's learning curve: validation figures after every epoch, against wall-clock minutes.

``python benchmarks/learning_curve.py --recipe magnetic-tile-cpu --data DATA [--minutes 60]``
trains the recipe (a shipped name or a YAML file) on ``DATA`` from scratch, as ``defectscan
train --config`` would, and records after each epoch the validation split's pooled defect IoU
(threshold 0.5), image recall at 5% false rejects (peak defect score), pixel AUROC and the
training loss. ``--minutes`` caps the run (the recipe's own ``max_minutes`` otherwise): a recipe
planned for many hours shows its first stretch on the same minutes axis. At the end the
checkpoint is calibrated as after any run and the calibrated verdict's figures are added.

Two recipes run one after the other with the same ``--data`` use the same validation split (it
depends only on the files, ``val_fraction`` and ``seed``). Run it on an idle machine: the
minutes are the point. JSON: ``var/bench/curve-<recipe>.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import machine_info

__all__ = ["main"]

_EPOCH_KEYS = ("pooled_iou", "recall_at_frr", "pixel_auroc", "image_auroc")


def _row(progress: Any, t0: float) -> dict[str, Any]:
    return {
        "epoch": progress.epoch + 1,
        "minutes": round((time.perf_counter() - t0) / 60.0, 2),
        "loss": progress.loss,
        "lr": progress.lr,
        **{k: progress.metrics.get(k) for k in _EPOCH_KEYS},
    }


def run_curve(
    recipe: str, data: Path, out_dir: Path, *, minutes: float | None, device: str = "auto"
) -> dict[str, Any]:
    """Train ``recipe`` on ``data`` into ``out_dir``; the curve and the calibrated result."""
    import yaml

    from defectscan.cli.training import recipe_path
    from defectscan.training import TrainConfig, train

    path = recipe_path(recipe)
    settings = yaml.safe_load(path.read_text()) or {}
    settings.update(data=data, out=out_dir / "model.safetensors", resume=False, device=device)
    if minutes is not None:
        settings["max_minutes"] = minutes
    config = TrainConfig(**settings)
    curve: list[dict[str, Any]] = []
    t0 = time.perf_counter()

    def progress(p: Any) -> None:
        if p.phase == "epoch":
            curve.append(_row(p, t0))
            r = curve[-1]
            print(
                f"epoch {r['epoch']:>3} {r['minutes']:6.1f} min  pooled IoU "
                f"{_fmt(r['pooled_iou'])}  recall@5%FRR {_fmt(r['recall_at_frr'])}  "
                f"pixel AUROC {_fmt(r['pixel_auroc'])}",
                flush=True,
            )

    result = train(config, progress=progress)
    report = result.report.to_dict()
    return {
        "recipe": path.stem,
        "recipe_settings": {k: str(v) for k, v in settings.items()},
        "minutes_cap": config.max_minutes,
        "minutes_total": round((time.perf_counter() - t0) / 60.0, 2),
        "epochs_planned": config.epochs,
        "epochs_run": len(curve),
        "best_epoch": result.best_epoch + 1,
        "curve": curve,
        "calibrated": {
            k: report.get(k)
            for k in (
                "pooled_iou",
                "image_recall",
                "false_reject_rate",
                "recall_at_frr",
                "pixel_auroc",
                "n_images",
                "n_defective_images",
                "decision",
            )
        },
        "tta": result.spec.tta,
    }


def _fmt(v: float | None, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _device_name(device: str) -> str:
    from defectscan.model.backends import resolve_device

    return str(resolve_device(device))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--recipe", default="magnetic-tile-cpu", help="shipped name or YAML file")
    p.add_argument("--data", type=Path, required=True, help="dataset (e.g. Magnetic Tile)")
    p.add_argument("--minutes", type=float, default=None, help="cap (default: the recipe's)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    p.add_argument("--out", type=Path, default=None, help="JSON (var/bench/curve-RECIPE.json)")
    p.add_argument("--keep", type=Path, default=None, help="keep the checkpoint in this folder")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="defectscan-curve-") as tmp:
        out_dir = args.keep or Path(tmp)
        out_dir.mkdir(parents=True, exist_ok=True)
        payload = run_curve(
            args.recipe, args.data, out_dir, minutes=args.minutes, device=args.device
        )
    payload = {
        "schema": "defectscan-curve/1",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_info(_device_name(args.device)),
        **payload,
    }
    out = args.out or Path("var/bench") / f"curve-{payload['recipe']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=1, default=str))
    cal = payload["calibrated"]
    print(
        f"{payload['recipe']}: {payload['epochs_run']} of {payload['epochs_planned']} epochs in "
        f"{payload['minutes_total']} min, best epoch {payload['best_epoch']}; calibrated: pooled "
        f"IoU {_fmt(cal['pooled_iou'])}, image recall {_fmt(cal['image_recall'])} at "
        f"{_fmt(cal['false_reject_rate'])} false rejects; JSON {out}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

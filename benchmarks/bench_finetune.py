"""Fine-tuning from the champion against training from scratch, side by side in one run.

``make bench-finetune`` (``python benchmarks/bench_finetune.py``). The line changes: a champion
trained on synthetic parts meets new data in which the defects look different (fainter, on
other surfaces), mixed with parts as before. Two runs train on that new data with the same
split, model and crops:

- ``scratch``: random weights, the default recipe (``--epochs``, cosine);
- ``fine-tune``: the champion's weights, the shipped ``fine-tune`` recipe (lower peak rate,
  one warm-up epoch, fewer epochs).

The scratch run's best validation mean IoU is the target; the table gives each run's best IoU
and the wall time at which it first reached the target (for scratch: its best epoch). The
issue's bar: fine-tuning reaches the target in at most a quarter of scratch's time. Times
include each run's data loading and validation; the champion's own training is not counted
(it exists already on a line). JSON: ``var/bench/finetune.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
import shutil
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


def _mix(root: Path, parts: Sequence[tuple[Path, str]]) -> Path:
    """One images/masks dataset from several, stems prefixed so that none collide."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir(parents=True)
    for src, prefix in parts:
        for sub in ("images", "masks"):
            for f in sorted((src / sub).iterdir()):
                shutil.copy(f, root / sub / f"{prefix}{f.name}")
        shutil.copy(src / "classes.txt", root / "classes.txt")
    return root


def _datasets(work: Path, n: int, size: int) -> tuple[Path, Path]:
    from defectscan.synth import write_dataset

    common = {"height": size, "width": size, "channels": 1, "kinds": ("spot", "stain")}
    old = work / "old"
    write_dataset(old, n, seed=1, **common)  # type: ignore[arg-type]
    faint = work / "faint"
    write_dataset(faint, n, seed=2, contrast=0.35, **common)  # type: ignore[arg-type]
    again = work / "again"
    write_dataset(again, n // 2, seed=3, **common)  # type: ignore[arg-type]
    return old, _mix(work / "new", [(faint, "f_"), (again, "a_")])


def _run(config: Any) -> tuple[Any, list[tuple[int, float, float]]]:
    from defectscan.training import TrainProgress, train

    curve: list[tuple[int, float, float]] = []

    def seen(p: TrainProgress) -> None:
        iou = p.metrics.get("mean_iou") if p.metrics else None
        if p.phase == "epoch" and iou is not None:
            curve.append((p.epoch + 1, round(p.elapsed_s, 2), float(iou)))

    result = train(config, progress=seen)
    return result, curve


def _first_reaching(curve: list[tuple[int, float, float]], target: float) -> float | None:
    return next((t for _, t, iou in curve if iou >= target), None)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run both trainings, print the table, write the JSON; returns the payload."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--images", type=int, default=64, help="parts per appearance (64)")
    p.add_argument("--size", type=int, default=96, help="part side in pixels (96)")
    p.add_argument("--width", type=int, default=8, help="UNet base width (8)")
    p.add_argument("--tile", type=int, default=64, help="crop size (64)")
    p.add_argument("--epochs", type=int, default=30, help="scratch and champion epochs (30)")
    p.add_argument("--crops", type=int, default=192, help="crops per epoch (192)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--out", type=Path, default=None, help="JSON (var/bench/finetune.json)")
    args = p.parse_args(argv)

    from defectscan.config import get_settings
    from defectscan.training import TrainConfig
    from defectscan.training.retrain import fine_tune_recipe

    out = args.out or get_settings().var_dir / "bench" / "finetune.json"
    machine = machine_info(args.device)
    with tempfile.TemporaryDirectory(prefix="defectscan-finetune-") as tmp:
        work = Path(tmp)
        old, new = _datasets(work, args.images, args.size)
        base: dict[str, Any] = {
            "tile_size": args.tile,
            "base_width": args.width,
            "batch_size": 8,
            "samples_per_epoch": args.crops,
            "val_fraction": 0.25,
            "device": args.device,
            "resume": False,
            "seed": 0,
        }
        t0 = time.perf_counter()
        champion, _ = _run(
            TrainConfig(
                data=old,
                out=work / "champion.safetensors",
                epochs=args.epochs,
                patience=args.epochs,
                lr=6e-3,
                **base,
            )
        )
        champion_s = time.perf_counter() - t0
        scratch, scratch_curve = _run(
            TrainConfig(
                data=new,
                out=work / "scratch.safetensors",
                epochs=args.epochs,
                patience=args.epochs,
                lr=6e-3,
                **base,
            )
        )
        tuned_settings = {**base, **fine_tune_recipe()}
        tuned, tuned_curve = _run(
            TrainConfig(
                data=new,
                out=work / "tuned.safetensors",
                init=champion.checkpoint_path,
                **tuned_settings,
            )
        )
    target = max(iou for _, _, iou in scratch_curve)
    t_scratch = _first_reaching(scratch_curve, target)
    t_tuned = _first_reaching(tuned_curve, target)
    ratio = (t_tuned / t_scratch) if (t_tuned is not None and t_scratch) else None
    payload: dict[str, Any] = {
        "schema": "defectscan-bench-finetune/1",
        "created_at": datetime.now(UTC).isoformat(),
        "machine": machine,
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "champion_s": round(champion_s, 1),
        "target_mean_iou": round(target, 4),
        "runs": {
            "scratch": {
                "best_mean_iou": round(max(i for *_, i in scratch_curve), 4),
                "seconds_to_target": t_scratch,
                "epochs": len(scratch_curve),
                "wall_s": round(scratch.wall_s, 1),
                "curve": scratch_curve,
            },
            "fine-tune": {
                "best_mean_iou": round(max(i for *_, i in tuned_curve), 4),
                "seconds_to_target": t_tuned,
                "epochs": len(tuned_curve),
                "wall_s": round(tuned.wall_s, 1),
                "curve": tuned_curve,
                "recipe": fine_tune_recipe(),
            },
        },
        "time_ratio": None if ratio is None else round(ratio, 3),
        "met": ratio is not None and ratio <= 0.25,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2) + "\n")
    print(
        f"fine-tuning vs scratch on new-looking parts ({machine.get('cpu_model')}, {args.device})"
    )
    print(f"{'run':<10} {'best val mIoU':>13} {'s to target':>12} {'epochs':>7} {'wall s':>7}")
    for name, r in payload["runs"].items():
        reach = "-" if r["seconds_to_target"] is None else f"{r['seconds_to_target']:.1f}"
        print(
            f"{name:<10} {r['best_mean_iou']:>13.4f} {reach:>12} {r['epochs']:>7} "
            f"{r['wall_s']:>7.1f}"
        )
    print(
        f"target (scratch's best) {target:.4f}; fine-tune/scratch time "
        f"{'-' if ratio is None else f'{ratio:.2f}'} ({'met' if payload['met'] else 'not met'}: "
        f"<= 0.25); wrote {out}"
    )
    return payload


if __name__ == "__main__":
    main()

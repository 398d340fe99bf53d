"""``make gpu-check``: everything a lent GPU machine must show, as one prepared command.

A GPU is lent for about 15 minutes, start-up included, so the checks run as one command that
stays under 10 minutes on a 16-core host with one H100/H200, writes what it found under one
folder (``--out``, by default ``$OUT`` when set, else ``var/gpu-check``) and exits non-zero when
a check fails:

1. ``gpu_tests``: ``pytest -m gpu`` (the CUDA paths: compile, CUDA graphs, pinned buffers).
2. ``bench``: the benchmark's GPU rows (``engines``, ``pipeline``, ``training`` sections),
   JSON in ``bench.json``.
3. ``train``: the real-data recipe (``--recipe``, default ``magnetic-tile``) on the Magnetic
   Tile split, capped at ``--max-minutes``, calibrated and evaluated on its validation split;
   the checkpoint (under 16 MB, saved in half precision when the float32 file is larger) and
   the metrics are kept.

``summary.json`` holds each step's command, exit status, seconds and figures.

Without CUDA (or with ``--dry-run``) the same steps run at tiny sizes on the CPU: the gpu tests
are collected and skip, the benchmark runs ``--quick``, and training runs one short epoch on
synthetic parts. ``make test`` runs that dry run, so the script is known to work before a GPU
ever runs it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
MAX_CHECKPOINT_BYTES = 16 * 1024 * 1024

__all__ = ["Step", "build_parser", "main"]


@dataclass
class Step:
    """One check: what ran, how it ended, what it measured."""

    name: str
    command: list[str]
    rc: int | None = None
    seconds: float = 0.0
    passed: bool = False
    figures: dict[str, Any] = field(default_factory=dict)
    tail: str = ""


def _cuda() -> tuple[bool, str | None]:
    try:
        import torch
    except ImportError:
        return False, None
    if not torch.cuda.is_available():
        return False, None
    return True, torch.cuda.get_device_name(0)


def _run(step: Step, *, timeout_s: float, env: dict[str, str], log: Path) -> Step:
    started = time.perf_counter()
    try:
        proc = subprocess.run(
            step.command,
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
        step.rc = proc.returncode
        output = proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as exc:
        step.rc = 124
        output = f"{exc.stdout or ''}{exc.stderr or ''}\n[gpu-check] timed out after {timeout_s} s"
    step.seconds = round(time.perf_counter() - started, 1)
    log.write_text(output if isinstance(output, str) else str(output))
    step.tail = output[-2000:] if isinstance(output, str) else ""
    return step


def _pytest_counts(text: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for n, what in re.findall(r"(\d+) (passed|failed|skipped|deselected|errors?)", text):
        counts[what] = counts.get(what, 0) + int(n)
    return counts


def _gpu_tests(dry: bool, env: dict[str, str], out: Path, timeout_s: float) -> Step:
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", "tests"]
    step = _run(Step("gpu_tests", cmd), timeout_s=timeout_s, env=env, log=out / "gpu_tests.log")
    counts = _pytest_counts(step.tail)
    step.figures = counts
    # Without CUDA every gpu test skips: the dry run shows they are collected and runnable.
    ran = counts.get("passed", 0) + counts.get("skipped", 0)
    step.passed = step.rc == 0 and ran > 0 and not counts.get("failed") and not counts.get("error")
    if not dry and counts.get("skipped"):
        step.passed = False  # on a GPU nothing may skip
    return step


def _bench(dry: bool, env: dict[str, str], out: Path, timeout_s: float) -> Step:
    json_out = out / "bench.json"
    cmd = [sys.executable, "benchmarks/bench.py", "--sections", "engines,pipeline,training"]
    if dry:
        cmd += ["--device", "cpu", "--quick", "--rounds", "1", "--images", "2"]
        cmd += ["--image-size", "128", "--seconds", "0.5"]
    else:
        cmd += ["--device", "cuda", "--batch", "64", "--rounds", "3", "--seconds", "4"]
    cmd += ["--out", str(json_out)]
    step = _run(Step("bench", cmd), timeout_s=timeout_s, env=env, log=out / "bench.log")
    if json_out.is_file():
        payload = json.loads(json_out.read_text())
        step.figures = {
            "engines": {
                r["name"]: (r.get("tiles_per_s") or {}).get("median")
                for r in payload.get("engines", [])
            },
            "engines_pct_peak": {r["name"]: r.get("pct_peak") for r in payload.get("engines", [])},
            "pipeline": {
                r["name"]: {
                    "tiles_per_s": (r.get("tiles_per_s") or {}).get("median"),
                    "ratio_vs_engine": r.get("ratio"),
                }
                for r in payload.get("pipeline", [])
            },
            "training": payload.get("training"),
            "errors": [
                f"{section}/{r.get('name')}: {r['error']}"
                for section in ("engines", "pipeline", "training")
                for r in payload.get(section) or []
                if isinstance(r, dict) and r.get("error")
            ],
        }
    step.passed = step.rc == 0 and json_out.is_file() and not step.figures.get("errors")
    return step


def _synthetic_data(root: Path) -> Path:
    from defectscan import synth

    data = root / "synthetic-data"
    if not (data / "classes.txt").is_file():
        synth.write_dataset(data, 12, seed=3, height=96, width=96)
    return data


def _train(
    dry: bool,
    env: dict[str, str],
    out: Path,
    timeout_s: float,
    data: Path,
    recipe: str,
    max_minutes: float,
) -> Step:
    ckpt = out / "model.safetensors"
    cmd = [sys.executable, "-m", "defectscan.cli", "train", "--json", "--no-register"]
    cmd += ["--no-resume", "--out", str(ckpt)]
    if dry:
        data = _synthetic_data(out)
        cmd += ["--data", str(data), "--width", "4", "--tile-size", "64", "--batch-size", "4"]
        cmd += ["--epochs", "1", "--samples-per-epoch", "8", "--device", "cpu"]
        cmd += ["--max-minutes", "2"]
    else:
        cmd += ["--config", recipe, "--data", str(data), "--device", "cuda"]
        cmd += ["--max-minutes", str(max_minutes)]
    log = out / "train.log"
    step = _run(Step("train", cmd), timeout_s=timeout_s, env=env, log=log)
    summary = None
    # The whole log, not the step's tail: the summary is one JSON line longer than the tail.
    for line in reversed(log.read_text().splitlines()):
        if line.startswith("{"):
            try:
                summary = json.loads(line)
            except ValueError:
                continue
            break
    if summary is not None:
        metrics = summary.get("metrics") or {}
        cal = summary.get("calibration") or {}
        step.figures = {
            "version": summary.get("version"),
            "epochs_run": summary.get("epochs_run"),
            "best_epoch": summary.get("best_epoch"),
            "wall_s": summary.get("wall_s"),
            "timings_s": summary.get("timings_s"),
            "pooled_iou": metrics.get("pooled_iou", metrics.get("mean_iou")),
            "mean_iou": metrics.get("mean_iou"),
            "per_class_iou": metrics.get("per_class_iou"),
            "image_recall": cal.get("image_recall"),
            "false_reject_rate": cal.get("false_reject_rate"),
            "recall_at_5pct_frr": metrics.get("recall_at_frr"),
            "tta": (cal.get("tta") or {}).get("chosen"),
        }
        step.figures["checkpoint"] = _fit_checkpoint(ckpt)
    step.passed = step.rc == 0 and summary is not None and ckpt.is_file()
    return step


def _fit_checkpoint(path: Path) -> dict[str, Any]:
    """Keep the checkpoint under 16 MB: a half-precision copy replaces a larger float32 file."""
    if not path.is_file():
        return {"path": None}
    size = path.stat().st_size
    if size <= MAX_CHECKPOINT_BYTES:
        return {"path": str(path), "bytes": size, "dtype": "float32"}
    from safetensors import safe_open
    from safetensors.torch import save_file

    tensors = {}
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
        for key in f.keys():  # noqa: SIM118 - safe_open has no __iter__
            t = f.get_tensor(key)
            tensors[key] = t.half() if t.is_floating_point() else t
    half = path.with_suffix(".fp16.safetensors")
    save_file(tensors, str(half), metadata=metadata)
    path.unlink()
    return {"path": str(half), "bytes": half.stat().st_size, "dtype": "float16"}


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``make gpu-check``."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--out", type=Path, default=None, help="output folder ($OUT, var/gpu-check)")
    p.add_argument("--data", type=Path, default=None, help="Magnetic Tile folder")
    p.add_argument("--recipe", default="magnetic-tile", help="training recipe (magnetic-tile)")
    p.add_argument("--max-minutes", type=float, default=4.0, help="training budget (4)")
    p.add_argument("--dry-run", action="store_true", help="tiny CPU run of the same steps")
    p.add_argument(
        "--steps", default="gpu_tests,bench,train", help="comma-separated subset of the steps"
    )
    return p


def _default_data() -> Path:
    for candidate in (
        REPO / ".device" / "data" / "magnetic-tile",
        REPO.parent / "shared" / "datasets" / "magnetic-tile",
    ):
        if candidate.is_dir():
            return candidate
    return REPO / ".device" / "data" / "magnetic-tile"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the checks; 0 when every one passed."""
    args = build_parser().parse_args(argv)
    cuda, gpu_name = _cuda()
    dry = args.dry_run or not cuda
    out = args.out or Path(os.environ.get("OUT") or REPO / "var" / "gpu-check")
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_WAIT_POLICY="PASSIVE")
    env.setdefault("DEFECTSCAN_VAR_DIR", str(out / "var"))
    env.setdefault("DEFECTSCAN_DATABASE_URL", f"sqlite:///{out / 'var' / 'gpu-check.db'}")
    steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    # Budgets that fit a 10-minute command with start-up to spare on a 16-core H100/H200 host.
    budget = {"gpu_tests": 120.0, "bench": 180.0, "train": 60.0 * args.max_minutes + 120.0}
    if dry:
        budget = {"gpu_tests": 300.0, "bench": 600.0, "train": 300.0}
    data = args.data or _default_data()
    results: list[Step] = []
    for name in steps:
        if name == "gpu_tests":
            results.append(_gpu_tests(dry, env, out, budget[name]))
        elif name == "bench":
            results.append(_bench(dry, env, out, budget[name]))
        elif name == "train":
            if not dry and not data.is_dir():
                step = Step("train", [], rc=2, tail=f"no Magnetic Tile data at {data}")
                results.append(step)
                continue
            results.append(_train(dry, env, out, budget[name], data, args.recipe, args.max_minutes))
        else:
            print(f"unknown step {name!r}", file=sys.stderr)
            return 2
    summary = {
        "schema": "defectscan-gpu-check/1",
        "created_at": datetime.now(UTC).isoformat(),
        "dry_run": dry,
        "gpu": gpu_name,
        "passed": all(s.passed for s in results),
        "steps": [asdict(s) for s in results],
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    for s in results:
        mark = "ok  " if s.passed else "FAIL"
        print(f"{mark} {s.name:<10} rc={s.rc} {s.seconds:>7.1f} s  {json.dumps(s.figures)[:300]}")
    print(
        f"gpu-check {'passed' if summary['passed'] else 'FAILED'}"
        f" ({'dry run on the CPU' if dry else gpu_name}): {out / 'summary.json'}"
    )
    return 0 if summary["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())

"""The ``tta`` section: what test-time flips cost, files in to inspection results.

The same model and engine (``--backend auto``'s CPU choice is not used here: the torch engine
at auto precision, as `inspect --backend torch`) inspect ``--images`` synthetic camera frames
with ``tta`` none, ``h`` (one extra pass per tile) and ``hv`` (two extra passes), interleaved
round by round. ``cost`` = images/s without flips / images/s with them: about 1 + the extra
passes when the model dominates, less when decoding and post-processing take a share.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from defectscan.model.checkpoint import build_model
from defectscan.model.engines import make_backend

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import BenchConfig, Log, bench_spec, rate_stats

__all__ = ["run_tta"]

MODES = ("none", "h", "hv")


def run_tta(cfg: BenchConfig, notes: list[str], log: Log) -> list[dict[str, Any]]:
    """Images/s of the pipeline per test-time flip setting, and the cost against none."""
    from defectscan import synth
    from defectscan.pipeline import ImageRecord, Inspector

    spec = bench_spec(cfg)
    torch.manual_seed(100)
    model = build_model(spec).eval()
    backend = make_backend(
        "torch", model, spec.activation, n_channels=3, tile=cfg.tile, device=cfg.device
    )
    rates: dict[str, list[float]] = {m: [] for m in MODES}
    with tempfile.TemporaryDirectory(prefix="defectscan-bench-tta-") as tmp:
        paths = synth.write_camera_folder(
            Path(tmp), cfg.images, seed=7, height=cfg.image_size, width=cfg.image_size
        )
        inspectors = {
            m: Inspector(backend, spec, model_version=f"bench-tta-{m}", tta=m)  # type: ignore[arg-type]
            for m in MODES
        }
        list(inspectors["none"].inspect(ImageRecord.from_path(p) for p in paths[:1]))  # warm-up
        spent = 0.0
        for r in range(cfg.rounds):
            if r and spent >= cfg.seconds * len(MODES):
                break
            for mode, inspector in inspectors.items():
                log(f"tta: round {r + 1} {mode}")
                started = time.perf_counter()
                results = list(inspector.inspect(ImageRecord.from_path(p) for p in paths))
                elapsed = time.perf_counter() - started
                spent += elapsed
                if any(res.status != "ok" for res in results):
                    msg = "tta bench: an image was rejected"
                    raise RuntimeError(msg)
                rates[mode].append(len(paths) / elapsed)
        for inspector in inspectors.values():
            inspector.close()
    base = statistics.median(rates["none"])
    notes.append(
        f"tta: torch engine, {backend.precision}, {cfg.images} images of {cfg.image_size}px"
    )
    return [
        {
            "name": f"tta-{mode}",
            "tta": mode,
            "passes": 1 + len(mode.replace("none", "")),
            "images": cfg.images,
            "image_size": cfg.image_size,
            "rounds": len(rates[mode]),
            "images_per_s": rate_stats(rates[mode]),
            "cost": round(base / statistics.median(rates[mode]), 3),
            "error": None,
        }
        for mode in MODES
    ]

"""Retraining in miniature: a base dataset the oracle gets right, a blind champion, a recipe.

Parts are the line helpers' gray frames: a dark rectangle is the one defect class (``dark``),
so the oracle checkpoint (``helpers.line.oracle_checkpoint``) scores perfectly on the holdout,
a blind one (it never finds anything) scores zero, and a few seconds of training land between.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2

from defectscan.model.checkpoint import load_checkpoint, save_checkpoint
from helpers.images import gray_frame
from helpers.oracle import oracle_unet

__all__ = ["FAST_RECIPE", "blind_checkpoint", "write_base_dataset"]

#: A retrain that takes seconds on two busy cores and still learns the dark rectangles.
FAST_RECIPE: dict[str, Any] = {
    "epochs": 4,
    "tile_size": 64,
    "tile_overlap": 16,
    "base_width": 4,
    "batch_size": 8,
    "samples_per_epoch": 48,
    "lr": 0.02,
    "patience": 10,
    "val_fraction": 0.25,
    "num_workers": 0,
    "augment": "flips",
    "device": "cpu",
    "precision": "fp32",
}


def write_base_dataset(root: Path, n: int = 16) -> Path:
    """``n`` parts (two of three with a dark rectangle) with masks and ``classes.txt``."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        rects = ((8 + (5 * i) % 30, 10 + (3 * i) % 20, 14, 10),) if i % 3 else ()
        frame = gray_frame(64, 80, rects=rects, discs=(), seed=100 + i)
        cv2.imwrite(str(root / "images" / f"base{i:03d}.png"), frame.image)
        cv2.imwrite(str(root / "masks" / f"base{i:03d}.png"), frame.truth)
    (root / "classes.txt").write_text("dark\n")
    return root


def blind_checkpoint(path: Path, *, name: str = "oracle") -> Path:
    """An oracle that never fires (its dark level is 0): the champion any training beats."""
    net, spec = oracle_unet("sigmoid", dark=0.0, tile=64, overlap=16)
    save_checkpoint(net, spec.replace(name=name), path)
    load_checkpoint(path)
    return path

"""The golden-output cases: fixed inputs, and the outputs computed from them.

``python tests/helpers/golden_cases.py`` (from the repository root) rewrites the stored
outputs in ``tests/helpers/golden/``. Only do that for an intended change, and say why in the
commit: the golden tests exist to catch *silent* changes of the model and post-processing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from defectscan.model.backends import TorchBackend
from defectscan.model.checkpoint import load_checkpoint, save_checkpoint
from defectscan.model.spec import ModelSpec
from defectscan.model.unet import UNet
from defectscan.pipeline import ImageRecord, Inspector
from defectscan.postprocess import PostprocessConfig, postprocess

__all__ = ["GOLDEN", "compute", "golden_input", "golden_model", "probability_field"]

GOLDEN = Path(__file__).parent / "golden"


def golden_input() -> np.ndarray:
    """A 72x88 BGR image: smooth noise (numpy's PCG64 stream is stable across versions)."""
    rng = np.random.default_rng(20261125)
    noise = rng.integers(0, 256, (72, 88, 3), dtype=np.uint8)
    return cv2.GaussianBlur(noise, (7, 7), 0)


def golden_model() -> tuple[UNet, ModelSpec]:
    """The stored checkpoint (created once from a fixed torch seed, then kept as a file)."""
    path = GOLDEN / "unet_w4_softmax.safetensors"
    if not path.exists():
        torch.manual_seed(1234)
        net = UNet(3, 3, bilinear=True, base_width=4).eval()
        with torch.no_grad():
            net.outc.conv.weight.mul_(40)  # decisive logits: argmax is not knife-edge
        spec = ModelSpec(
            n_channels=3,
            activation="softmax",
            class_names=("scratch", "spot"),
            base_width=4,
            tile_size=32,
            tile_overlap=8,
            name="golden",
        )
        save_checkpoint(net, spec, path)
    ckpt = load_checkpoint(path)
    return ckpt.model, ckpt.spec


def probability_field(seed: int, channels: int, shape: tuple[int, int]) -> np.ndarray:
    """Smooth random per-class probabilities [C, H, W] in [0, 1]."""
    rng = np.random.default_rng(seed)
    out = np.empty((channels, *shape), np.float32)
    for c in range(channels):
        raw = rng.random(shape, dtype=np.float32)
        out[c] = cv2.GaussianBlur(raw, (0, 0), 3)
        out[c] = (out[c] - out[c].min()) / (np.ptp(out[c]) + 1e-6)
    return out


def _defects(items: list[Any]) -> list[dict[str, Any]]:
    keep = ("class", "area", "bbox", "centroid", "perimeter", "mean_score", "max_score")
    return [{k: d.to_dict()[k] for k in keep} for d in items]


def compute() -> dict[str, Any]:
    """Every golden output, as JSON-safe data."""
    net, spec = golden_model()
    image = golden_input()
    x = torch.from_numpy(cv2.cvtColor(image, cv2.COLOR_BGR2RGB)).permute(2, 0, 1)[None] / 255.0
    with torch.inference_mode():
        logits, features = net.forward_features(x.float())
        probs = torch.softmax(logits, 1)[0].numpy()
    pooled = cv2.resize(probs.transpose(1, 2, 0), (11, 9), interpolation=cv2.INTER_AREA)
    backend = TorchBackend(net, spec.activation, device="cpu", precision="fp32")
    inspector = Inspector(backend, spec, model_version="golden")
    ok, png = cv2.imencode(".png", image)
    assert ok
    result = inspector.inspect_one(ImageRecord(id="g", uri="mem://g", data=png.tobytes()))
    assert result.class_map is not None
    sig = probability_field(7, 2, (96, 128))
    sig_cfg = PostprocessConfig(
        activation="sigmoid", class_names=("crack", "stain"), thresholds=(0.6, 0.7)
    )
    soft = probability_field(8, 3, (96, 128))
    soft /= soft.sum(0, keepdims=True)
    soft_cfg = PostprocessConfig(
        activation="softmax",
        class_names=("crack", "stain"),
        min_confidence=0.4,
        min_area=(10, 10),
        morph_kernel=3,
        fail_area=(None, 200),
    )
    post_sig = postprocess(sig, sig_cfg)
    post_soft = postprocess(soft, soft_cfg)
    return {
        "model": {
            "prob_mean": probs.mean(axis=(1, 2)).tolist(),
            "prob_std": probs.std(axis=(1, 2)).tolist(),
            "prob_pooled": pooled.tolist(),
            "features_mean": float(features.mean()),
            "features_shape": list(features.shape),
        },
        "pipeline": {
            "class_counts": np.bincount(result.class_map.ravel(), minlength=3).tolist(),
            "verdict": result.verdict,
            "defects": _defects(result.defects),
        },
        "postprocess_sigmoid": {
            "verdict": post_sig.verdict,
            "defects": _defects(post_sig.defects),
        },
        "postprocess_softmax": {
            "verdict": post_soft.verdict,
            "defects": _defects(post_soft.defects),
        },
    }


if __name__ == "__main__":
    GOLDEN.mkdir(exist_ok=True)
    (GOLDEN / "expected.json").write_text(json.dumps(compute(), indent=1) + "\n")

"""Test-time flips: the checkpoint's setting travels with it and the pipeline applies it."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from defectscan.errors import CheckpointError, DefectscanError
from defectscan.model.checkpoint import build_model, load_checkpoint, save_checkpoint
from defectscan.model.engines import make_backend
from defectscan.model.spec import ModelSpec
from defectscan.pipeline import ImageRecord, Inspector, infer_with_flips
from defectscan.training.evaluate import Calibration, choose_tta, probe

TILE = 64


def _spec(**kw: object) -> ModelSpec:
    base: dict[str, object] = {
        "n_channels": 1,
        "activation": "sigmoid",
        "class_names": ("defect",),
        "channel_order": "GRAY",
        "base_width": 4,
        "tile_size": TILE,
        "tile_overlap": 16,
    }
    base.update(kw)
    return ModelSpec(**base)  # type: ignore[arg-type]


def _model(spec: ModelSpec) -> torch.nn.Module:
    torch.manual_seed(3)
    model = build_model(spec)
    with torch.no_grad():  # a model whose output is far from mirror-symmetric
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def _backend(model: torch.nn.Module, spec: ModelSpec):  # type: ignore[no-untyped-def]
    return make_backend(
        "torch", model, spec.activation, n_channels=1, tile=TILE, device="cpu", precision="fp32"
    )


def test_flips_average_the_mirrored_passes_mirrored_back() -> None:
    spec = _spec()
    backend = _backend(_model(spec), spec)
    tiles = np.random.default_rng(0).random((3, 1, TILE, TILE), dtype=np.float32)
    plain = backend.infer(tiles)
    h = backend.infer(np.ascontiguousarray(tiles[..., ::-1]))[..., ::-1]
    v = backend.infer(np.ascontiguousarray(tiles[..., ::-1, :]))[..., ::-1, :]
    assert np.abs(plain - h).max() > 1e-3  # the model is not symmetric: the test can fail
    np.testing.assert_array_equal(infer_with_flips(backend, tiles, "none"), plain)
    np.testing.assert_allclose(infer_with_flips(backend, tiles, "h"), (plain + h) / 2, atol=1e-6)
    np.testing.assert_allclose(
        infer_with_flips(backend, tiles, "hv"), (plain + h + v) / 3, atol=1e-6
    )


def test_the_inspector_follows_the_checkpoint_setting(tmp_path: Path) -> None:
    spec = _spec(tta="h")
    model = _model(spec)
    save_checkpoint(model, spec, tmp_path / "m.safetensors")
    ckpt = load_checkpoint(tmp_path / "m.safetensors")
    assert ckpt.spec.tta == "h"
    image = (np.random.default_rng(1).random((TILE, TILE)) * 255).astype(np.uint8)
    cv2.imwrite(str(tmp_path / "a.png"), image)
    cv2.imwrite(str(tmp_path / "a_flipped.png"), image[:, ::-1])

    def probs(inspector: Inspector, name: str) -> np.ndarray:
        probing = probe(inspector)
        (result,) = probing.inspect([ImageRecord.from_path(tmp_path / name)])
        return probing.probs.pop(result.record.id)  # type: ignore[attr-defined, no-any-return]

    flipped = Inspector.from_checkpoint(ckpt, backend="torch", device="cpu", precision="fp32")
    plain = Inspector.from_checkpoint(
        ckpt, backend="torch", device="cpu", precision="fp32", tta="none"
    )
    assert (flipped.tta, plain.tta) == ("h", "none")
    # One tile per frame: flips of the whole frame are flips of its tile.
    expected = (probs(plain, "a.png") + probs(plain, "a_flipped.png")[..., ::-1]) / 2
    np.testing.assert_allclose(probs(flipped, "a.png"), expected, atol=1e-5)
    assert np.abs(probs(plain, "a.png") - expected).max() > 1e-3


def test_the_setting_is_stored_only_when_set_and_checked() -> None:
    assert "tta" not in _spec().to_dict()  # files without flips read as before, by any version
    assert ModelSpec.from_dict(_spec().to_dict()).tta == "none"
    assert ModelSpec.from_dict(_spec(tta="hv").to_dict()).tta == "hv"
    with pytest.raises(CheckpointError, match="tta"):
        _spec(tta="v")
    spec = _spec()
    backend = _backend(_model(spec), spec)
    with pytest.raises(DefectscanError, match="tta"):
        Inspector(backend, spec, model_version="x", tta="d")  # type: ignore[arg-type]


def _cal(recall: float, *, met: bool = True) -> Calibration:
    return Calibration(
        thresholds=(0.5,),
        min_confidence=0.0,
        min_area=(0,),
        target_false_reject_rate=0.05,
        false_reject_rate=0.0 if met else 0.2,
        image_recall=recall,
        met=met,
        n_good=10,
        n_defective=10,
    )


def test_flips_are_chosen_only_when_they_raise_recall_by_the_margin() -> None:
    # Within the margin: no flips (they cost a pass of the model each).
    assert (
        choose_tta({"none": _cal(0.9), "h": _cal(0.91), "hv": _cal(0.915)}, margin=0.02) == "none"
    )
    assert choose_tta({"none": _cal(0.9), "h": _cal(0.93), "hv": _cal(0.94)}, margin=0.02) == "h"
    # hv must beat h by the margin too.
    assert choose_tta({"none": _cal(0.8), "h": _cal(0.85), "hv": _cal(0.9)}, margin=0.02) == "hv"
    # Meeting the false-reject target comes first.
    assert choose_tta({"none": _cal(0.95, met=False), "h": _cal(0.7)}, margin=0.02) == "h"
    assert choose_tta({"none": _cal(0.7), "h": _cal(0.99, met=False)}, margin=0.02) == "none"

"""Drift features from the same forward pass, on torch, ONNX Runtime and OpenVINO."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from defectscan import synth
from defectscan.model.backends import (
    FeatureBackend,
    OnnxRuntimeBackend,
    OpenVINOBackend,
    TorchBackend,
    WithActivation,
    fold_batchnorm,
)
from defectscan.model.checkpoint import Checkpoint, load_checkpoint
from defectscan.model.export import EngineFormat, export_model, load_exported
from defectscan.pipeline import Inspector
from defectscan.sources.base import ImageRecord

GOLDEN = Path(__file__).resolve().parents[2] / "helpers" / "golden" / "unet_w4_softmax.safetensors"


@pytest.fixture(scope="module")
def ckpt() -> Checkpoint:
    return load_checkpoint(GOLDEN)


@pytest.fixture(scope="module")
def tiles() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.random((6, 3, 32, 32), dtype=np.float32)


def _pooled(ckpt: Checkpoint, tiles: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        _, x5 = ckpt.model.eval().forward_features(torch.from_numpy(tiles))
    return x5.mean(dim=(2, 3)).numpy()


def test_torch_returns_pooled_bottleneck_of_the_same_pass(
    ckpt: Checkpoint, tiles: np.ndarray
) -> None:
    backend = TorchBackend(ckpt.model, ckpt.spec.activation, device="cpu", precision="fp32")
    assert isinstance(backend, FeatureBackend)
    probs, feats = backend.infer_features(tiles)
    assert feats is not None
    assert feats.shape == (6, 8 * ckpt.spec.base_width)
    np.testing.assert_allclose(feats, _pooled(ckpt, tiles), atol=1e-4)
    np.testing.assert_allclose(probs, backend.infer(tiles), atol=1e-6)


def test_plain_wrapper_output_is_unchanged(ckpt: Checkpoint, tiles: np.ndarray) -> None:
    net = fold_batchnorm(ckpt.model)
    plain = WithActivation(net, "softmax")
    both = WithActivation(net, "softmax", features=True)
    x = torch.from_numpy(tiles)
    with torch.inference_mode():
        a = plain(x)
        b, f = both(x)
    assert torch.equal(a, b)
    assert f.shape == (6, 32)


@pytest.mark.parametrize("fmt", ["onnx", "openvino"])
def test_exports_carry_features_as_a_second_output_and_keep_parity(
    ckpt: Checkpoint, tiles: np.ndarray, fmt: EngineFormat, tmp_path: Path
) -> None:
    pytest.importorskip("onnxruntime" if fmt == "onnx" else "openvino")
    out = export_model(
        ckpt.model, ckpt.spec, sha256=ckpt.sha256, fmt=fmt, out=tmp_path / fmt, features=True
    )
    assert out.parity is not None
    assert out.parity.passed, out.parity.reason
    engine = load_exported(out.directory)
    assert isinstance(engine, FeatureBackend)
    probs, feats = engine.infer_features(tiles)
    assert feats is not None
    np.testing.assert_allclose(feats, _pooled(ckpt, tiles), atol=1e-3)
    np.testing.assert_allclose(probs, engine.infer(tiles), atol=1e-6)
    # Exports without features (as engines cached before them) still load and say so.
    plain = export_model(
        ckpt.model, ckpt.spec, sha256=ckpt.sha256, fmt=fmt, out=tmp_path / "plain", features=False
    )
    engine = load_exported(plain.directory)
    assert isinstance(engine, OnnxRuntimeBackend | OpenVINOBackend)
    assert engine.has_features is False
    assert engine.infer_features(tiles)[1] is None


def _records(n: int) -> list[ImageRecord]:
    out = []
    for i in range(n):
        img = synth.make_sample(synth.sample_seed(11, i), height=64, width=80).image
        ok, enc = cv2.imencode(".png", img)
        assert ok
        out.append(ImageRecord(id=str(i), uri=f"mem://{i}", data=enc.tobytes(), camera="c1"))
    return out


def test_inspector_gives_per_frame_features_and_statistics_without_changing_results(
    ckpt: Checkpoint,
) -> None:
    records = _records(5)
    off = Inspector.from_checkpoint(ckpt, backend="torch", device="cpu", precision="fp32")
    on = Inspector.from_checkpoint(
        ckpt, backend="torch", device="cpu", precision="fp32", drift_features=True, batch_size=4
    )
    plain = list(off.inspect(records))
    rich = list(on.inspect(records))
    for a, b in zip(plain, rich, strict=True):
        assert a.features is None
        assert a.image_stats is None
        assert a.verdict == b.verdict
        assert a.class_map is not None
        assert b.class_map is not None
        assert np.array_equal(a.class_map, b.class_map)
        assert b.features is not None
        assert b.features.shape == (32,)
        assert b.image_stats is not None
        assert b.image_stats.shape == (8,)
    # The frame's features are the mean over its tiles' pooled bottlenecks.
    from defectscan.imaging import decode, to_model_input
    from defectscan.tiling import iter_tiles, make_grid

    image = decode(records[0].read())
    spec = ckpt.spec
    frame = to_model_input(
        image, n_channels=3, channel_order=spec.channel_order, mean=spec.mean, std=spec.std
    )
    grid = make_grid(image.height, image.width, tile=spec.tile_size, overlap=spec.tile_overlap)
    t = np.stack([np.array(x) for _, x in iter_tiles(frame, grid)])
    assert rich[0].features is not None
    np.testing.assert_allclose(rich[0].features, _pooled(ckpt, t).mean(axis=0), atol=1e-4)
    off.close()
    on.close()

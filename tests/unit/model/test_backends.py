"""Every engine computes the same probabilities as the eager fp32 model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from defectscan.errors import ConfigError
from defectscan.model.backends import (
    OnnxRuntimeBackend,
    OpenVINOBackend,
    TorchBackend,
    fold_batchnorm,
    resolve_device,
)
from defectscan.model.engines import make_backend
from defectscan.model.unet import UNet


@pytest.fixture(scope="module")
def net() -> UNet:
    torch.manual_seed(0)
    model = UNet(3, 3, bilinear=True, base_width=8)
    # Non-trivial BatchNorm statistics, so that folding them is really exercised.
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.rand(4, 3, 64, 64) * 2 - 0.5)
    return model.eval()


@pytest.fixture(scope="module")
def tiles() -> np.ndarray:
    return np.random.default_rng(0).random((3, 3, 64, 64), dtype=np.float32)


def _reference(net: UNet, tiles: np.ndarray, activation: str) -> np.ndarray:
    with torch.inference_mode():
        logits = net(torch.from_numpy(tiles))
    act = torch.sigmoid(logits) if activation == "sigmoid" else torch.softmax(logits, 1)
    return act.numpy()


def test_fold_batchnorm_keeps_outputs(net: UNet, tiles: np.ndarray) -> None:
    folded = fold_batchnorm(net)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    with torch.inference_mode():
        x = torch.from_numpy(tiles)
        torch.testing.assert_close(folded(x), net(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("activation", ["sigmoid", "softmax"])
def test_torch_fp32_matches_eager(net: UNet, tiles: np.ndarray, activation: str) -> None:
    out = TorchBackend(net, activation, device="cpu", precision="fp32").infer(tiles)  # type: ignore[arg-type]
    assert out.dtype == np.float32
    assert out.shape == (3, 3, 64, 64)
    np.testing.assert_allclose(out, _reference(net, tiles, activation), atol=1e-5)


def test_torch_bf16_is_close(net: UNet, tiles: np.ndarray) -> None:
    out = TorchBackend(net, "softmax", device="cpu", precision="bf16").infer(tiles)
    # bf16 keeps 8 bits of mantissa: probabilities agree to about 1e-2
    np.testing.assert_allclose(out, _reference(net, tiles, "softmax"), atol=3e-2)
    np.testing.assert_allclose(out.sum(1), 1.0, atol=1e-3)


@pytest.mark.slow
def test_exported_engines_match_torch(net: UNet, tiles: np.ndarray) -> None:
    ref = _reference(net, tiles, "softmax")
    ort = OnnxRuntimeBackend(net, "softmax", n_channels=3, tile=64)
    np.testing.assert_allclose(ort.infer(tiles), ref, atol=1e-5)
    np.testing.assert_allclose(ort.infer(tiles[:1]), ref[:1], atol=1e-5)  # dynamic batch
    ov32 = OpenVINOBackend(net, "softmax", n_channels=3, tile=64, precision="fp32")
    np.testing.assert_allclose(ov32.infer(tiles), ref, atol=1e-5)
    # A batch is split over one request per stream (uneven parts here): order is kept.
    order = [2, 0, 1, 1, 2]
    np.testing.assert_allclose(ov32.infer(tiles[order]), ref[order], atol=1e-5)
    np.testing.assert_allclose(ov32.infer(tiles[:1]), ref[:1], atol=1e-5)
    ov = OpenVINOBackend(net, "softmax", n_channels=3, tile=64)  # bf16 where the CPU has it
    np.testing.assert_allclose(ov.infer(tiles), ref, atol=3e-2)


def test_device_and_precision_errors(net: UNet) -> None:
    assert resolve_device("cpu").type == "cpu"
    with pytest.raises(ConfigError, match="unknown device"):
        resolve_device("tpu")
    with pytest.raises(ConfigError, match="fp16 autocast is for CUDA"):
        TorchBackend(net, "sigmoid", device="cpu", precision="fp16")
    with pytest.raises(ConfigError, match="unknown backend"):
        make_backend("tensorrt", net, "sigmoid", n_channels=3, tile=64)  # type: ignore[arg-type]
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no usable CUDA"):
            resolve_device("cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_fp16_and_bf16_are_close(net: UNet, tiles: np.ndarray) -> None:
    ref = _reference(net, tiles, "softmax")
    for precision in ("fp16", "bf16"):
        out = TorchBackend(net, "softmax", device="cuda", precision=precision).infer(tiles)  # type: ignore[arg-type]
        np.testing.assert_allclose(out, ref, atol=3e-2)

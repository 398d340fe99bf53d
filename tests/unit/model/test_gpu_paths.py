"""CUDA paths: compiled + CUDA-graph torch matches eager, and the pipeline runs on the GPU.

Marked ``gpu``: they run only where a CUDA device is present.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from defectscan.model.backends import TorchBackend
from defectscan.model.unet import UNet
from defectscan.pipeline import ImageRecord, Inspector
from helpers.images import encode, gray_frame
from helpers.oracle import oracle_unet

__all__: list[str] = []

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_compiled_graph_replay_matches_eager(precision: str) -> None:
    torch.manual_seed(0)
    net = UNet(3, 2, bilinear=True, base_width=8).eval()
    tiles = np.random.default_rng(0).random((8, 3, 128, 128), dtype=np.float32)
    eager = TorchBackend(net, "softmax", device="cuda", precision=precision, compile="off")
    fast = TorchBackend(net, "softmax", device="cuda", precision=precision, compile="on")
    want = eager.infer(tiles)
    for _ in range(3):  # capture, then replays reuse the graph and its pinned buffers
        got = fast.infer(tiles)
        np.testing.assert_allclose(got, want, atol=2e-2)
    assert fast.compiled


def test_pipeline_on_cuda_finds_the_oracle_defects_in_a_streamed_frame() -> None:
    net, spec = oracle_unet(tile=64, overlap=16)
    frame = gray_frame(400, 500)
    backend = TorchBackend(net, spec.activation, device="cuda", precision="fp32")
    inspector = Inspector(backend, spec, model_version="o", batch_size=16, stream_pixels=10_000)
    result = inspector.inspect_one(ImageRecord(id="g", uri="mem://g", data=encode(frame.image)))
    np.testing.assert_array_equal(result.class_map, frame.truth)
    assert result.verdict == "fail"

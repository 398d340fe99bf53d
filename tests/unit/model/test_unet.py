"""The UNet is the seed's: same parameter names and shapes, same outputs, any input size."""

from __future__ import annotations

import pytest
import torch

from defectscan.model.unet import UNet
from helpers.seed_reference import SeedUNet


@pytest.mark.parametrize("bilinear", [True, False])
def test_seed_state_dict_loads_unchanged_and_computes_the_same(bilinear: bool) -> None:
    torch.manual_seed(0)
    seed = SeedUNet(3, 2, bilinear).eval()
    ours = UNet(3, 2, bilinear).eval()
    seed_state = seed.state_dict()
    assert list(seed_state) == list(ours.state_dict())
    ours.load_state_dict(seed_state, strict=True)
    x = torch.randn(1, 3, 48, 64)
    with torch.inference_mode():
        torch.testing.assert_close(ours(x), seed(x), rtol=0, atol=0)


def test_odd_sizes_work_like_the_seed() -> None:
    """Sizes that are not multiples of 16 go through the int padding path."""
    torch.manual_seed(1)
    seed = SeedUNet(1, 1, True).eval()
    ours = UNet(1, 1, True).eval()
    ours.load_state_dict(seed.state_dict())
    x = torch.randn(1, 1, 37, 53)
    with torch.inference_mode():
        out = ours(x)
        torch.testing.assert_close(out, seed(x), rtol=0, atol=0)
    assert out.shape == (1, 1, 37, 53)


@pytest.mark.parametrize("size", [(16, 16), (17, 31), (33, 80), (100, 23)])
def test_any_input_size(size: tuple[int, int]) -> None:
    net = UNet(3, 4, bilinear=False, base_width=4).eval()
    with torch.inference_mode():
        assert net(torch.randn(2, 3, *size)).shape == (2, 4, *size)


def test_base_width_scales_stages_and_64_is_the_seed() -> None:
    n_seed = sum(p.numel() for p in SeedUNet(3, 1).parameters())
    assert sum(p.numel() for p in UNet(3, 1).parameters()) == n_seed
    small = UNet(3, 1, base_width=8)
    assert small.inc.double_conv[0].out_channels == 8
    assert small.down4.maxpool_conv[1].double_conv[0].out_channels == 64


def test_forward_features_exposes_the_bottleneck() -> None:
    net = UNet(3, 1, base_width=4).eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.inference_mode():
        logits, feats = net.forward_features(x)
        torch.testing.assert_close(logits, net(x), rtol=0, atol=0)
    assert feats.shape == (1, 32, 4, 6)  # 8 * base_width channels at 1/16 resolution


def test_traceable_for_export() -> None:
    """Python-int padding: tracing records no tensor-valued pad (which broke export)."""
    net = UNet(3, 1, base_width=4).eval()
    x = torch.randn(1, 3, 40, 56)
    with torch.inference_mode():
        exported = torch.export.export(net, (x,))
        torch.testing.assert_close(exported.module()(x), net(x))


def test_invalid_arguments_are_rejected() -> None:
    with pytest.raises(ValueError, match="n_channels"):
        UNet(0, 1)

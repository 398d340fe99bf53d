"""Hand-built UNets whose output is a known per-pixel function of the input.

Every 3x3 kernel has only its centre tap set and BatchNorm is the identity, so the network
computes ``logit = f(pixel)`` exactly: no context, no tile-edge effects. With it the pipeline
tests know the right mask for every pixel of a synthetic image, and can check positions, areas,
classes and verdicts exactly instead of trusting a trained model.

- sigmoid oracle: one class, ``logit = gain * (level - gray)``: dark pixels are defects.
- softmax oracle: background / dark (< ``dark``) / bright (> ``bright``).
"""

from __future__ import annotations

import torch
from torch import nn

from defectscan.model.spec import ModelSpec
from defectscan.model.unet import DoubleConv, UNet

__all__ = ["oracle_unet"]


def _identity_bn(bn: nn.BatchNorm2d) -> None:
    bn.weight.data.fill_(1.0)
    bn.bias.data.zero_()
    bn.running_mean.zero_()
    bn.running_var.fill_(1.0 - bn.eps)  # (x - 0) / sqrt(var + eps) == x


def _centre(conv: nn.Conv2d, weights: torch.Tensor, bias: torch.Tensor) -> None:
    conv.weight.data.zero_()
    conv.weight.data[:, :, 1, 1] = weights
    conv.bias.data.copy_(bias)


def _pass_through(block: DoubleConv, n_in: int, keep: int) -> None:
    """First conv copies input channels [0, keep) into outputs [0, keep); second is identity."""
    conv1, bn1, _, conv2, bn2, _ = block.double_conv
    w1 = torch.zeros(conv1.out_channels, n_in)
    w2 = torch.zeros(conv2.out_channels, conv2.in_channels)
    for c in range(keep):
        w1[c, c] = 1.0
        w2[c, c] = 1.0
    _centre(conv1, w1, torch.zeros(conv1.out_channels))
    _centre(conv2, w2, torch.zeros(conv2.out_channels))
    _identity_bn(bn1)
    _identity_bn(bn2)


def oracle_unet(
    activation: str = "sigmoid",
    *,
    dark: float = 0.35,
    bright: float = 0.85,
    gain: float = 60.0,
    width: int = 4,
    tile: int = 64,
    overlap: int = 16,
) -> tuple[UNet, ModelSpec]:
    """A GRAY-input UNet computing a pixelwise threshold function, and its spec."""
    n_classes = 1 if activation == "sigmoid" else 3
    net = UNet(1, n_classes, bilinear=True, base_width=width).eval()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
                m.weight.zero_()
                if m.bias is not None:
                    m.bias.zero_()
            if isinstance(m, nn.BatchNorm2d):
                _identity_bn(m)
        # inc: feature 0 = relu(dark - x), feature 1 = relu(x - bright)
        conv1, _, _, conv2, _, _ = net.inc.double_conv
        w1 = torch.zeros(width, 1)
        w1[0, 0], w1[1, 0] = -1.0, 1.0
        b1 = torch.zeros(width)
        b1[0], b1[1] = dark, -bright
        _centre(conv1, w1, b1)
        w2 = torch.zeros(width, width)
        w2[0, 0] = w2[1, 1] = 1.0
        _centre(conv2, w2, torch.zeros(width))
        # up4 sees cat([x1, upsampled]); keep x1's two features, drop the deep path (zeros)
        _pass_through(net.up4.conv, 2 * width, 2)
        # outc: logits from the two features
        if activation == "sigmoid":
            # logit = gain * relu(dark - x) - tiny: positive exactly where x < dark
            _centre_1x1(net.outc.conv, torch.tensor([[gain, 0.0]]), torch.tensor([-1e-3]))
        else:
            w = torch.tensor([[0.0, 0.0], [gain, 0.0], [0.0, gain]])
            _centre_1x1(net.outc.conv, w, torch.tensor([1e-3 * gain, 0.0, 0.0]))
    names = ("dark",) if activation == "sigmoid" else ("dark", "bright")
    spec = ModelSpec(
        n_channels=1,
        activation=activation,  # type: ignore[arg-type]
        class_names=names,
        channel_order="GRAY",
        base_width=width,
        tile_size=tile,
        tile_overlap=overlap,
        name=f"oracle-{activation}",
    )
    return net, spec


def _centre_1x1(conv: nn.Conv2d, weights: torch.Tensor, bias: torch.Tensor) -> None:
    conv.weight.data.zero_()
    n_out, n_in = weights.shape
    conv.weight.data[:n_out, :n_in, 0, 0] = weights
    conv.bias.data.copy_(bias)

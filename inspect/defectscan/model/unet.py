"""The UNet of the seed (``seed/unet-seed.txt``), with the same module names.

A ``state_dict`` saved from the seed's classes loads into :class:`UNet` unchanged, in both
upsampling modes. What we add does not touch the parameter names:

- ``base_width`` (64 = seed) scales every stage: w, 2w, 4w, 8w, 8w.
- ``Up`` pads with Python ints (the seed builds tensors for the padding, which breaks tracing and
  ONNX/OpenVINO export), so any input size works, not only multiples of 16.
- :meth:`UNet.forward_features` also returns the bottleneck features, which the seed's changed
  middle exposes "to make data extraction convenient": monitoring uses them to track drift.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DoubleConv", "Down", "OutConv", "UNet", "Up"]


class DoubleConv(nn.Module):
    """(3x3 conv -> BatchNorm -> ReLU) twice."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.double_conv = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.double_conv(x)


class Down(nn.Module):
    """2x2 max-pool, then :class:`DoubleConv`."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.maxpool_conv = nn.Sequential(nn.MaxPool2d(2), DoubleConv(in_channels, out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool_conv(x)


class Up(nn.Module):
    """Upsample ``x1``, pad it to ``x2``'s size, concatenate ``[x2, x1]``, :class:`DoubleConv`."""

    def __init__(self, in_channels: int, out_channels: int, bilinear: bool = True) -> None:
        super().__init__()
        self.up: nn.Module
        if bilinear:
            self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
        else:
            half = in_channels // 2
            self.up = nn.ConvTranspose2d(half, half, kernel_size=2, stride=2)
        self.conv = DoubleConv(in_channels, out_channels)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        x1 = self.up(x1)
        diff_y = int(x2.shape[2]) - int(x1.shape[2])
        diff_x = int(x2.shape[3]) - int(x1.shape[3])
        if diff_x or diff_y:
            x1 = F.pad(x1, [diff_x // 2, diff_x - diff_x // 2, diff_y // 2, diff_y - diff_y // 2])
        return self.conv(torch.cat([x2, x1], dim=1))


class OutConv(nn.Module):
    """1x1 convolution to one channel per output class."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class UNet(nn.Module):
    """The seed's UNet; returns logits ``[B, n_classes, H, W]`` for input ``[B, n_channels, H, W]``.

    The activation (sigmoid or softmax) is not part of the network: it lives in the model's
    :class:`~defectscan.model.spec.ModelSpec` and is applied by the inference backends.
    """

    def __init__(
        self, n_channels: int, n_classes: int, bilinear: bool = True, base_width: int = 64
    ) -> None:
        super().__init__()
        if n_channels < 1 or n_classes < 1 or base_width < 1:
            msg = (
                f"UNet needs n_channels, n_classes and base_width >= 1, got "
                f"{n_channels}, {n_classes}, {base_width}"
            )
            raise ValueError(msg)
        self.n_channels = n_channels
        self.n_classes = n_classes
        self.bilinear = bilinear
        self.base_width = base_width
        w = base_width
        self.inc = DoubleConv(n_channels, w)
        self.down1 = Down(w, 2 * w)
        self.down2 = Down(2 * w, 4 * w)
        self.down3 = Down(4 * w, 8 * w)
        self.down4 = Down(8 * w, 8 * w)
        self.up1 = Up(16 * w, 4 * w, bilinear)
        self.up2 = Up(8 * w, 2 * w, bilinear)
        self.up3 = Up(4 * w, w, bilinear)
        self.up4 = Up(2 * w, w, bilinear)
        self.outc = OutConv(w, n_classes)

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and the bottleneck features ``[B, 8*base_width, H/16, W/16]``."""
        x1 = self.inc(x)
        x2 = self.down1(x1)
        x3 = self.down2(x2)
        x4 = self.down3(x3)
        x5 = self.down4(x4)
        y = self.up1(x5, x4)
        y = self.up2(y, x3)
        y = self.up3(y, x2)
        y = self.up4(y, x1)
        return self.outc(y), x5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)[0]

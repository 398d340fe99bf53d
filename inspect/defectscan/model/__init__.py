"""The seed UNet, its description (:class:`ModelSpec`), checkpoints and inference backends."""

from __future__ import annotations

from defectscan.model.spec import Activation, ModelSpec
from defectscan.model.unet import DoubleConv, Down, OutConv, UNet, Up

__all__ = ["Activation", "DoubleConv", "Down", "ModelSpec", "OutConv", "UNet", "Up"]

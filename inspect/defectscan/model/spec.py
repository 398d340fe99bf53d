"""What a model is and how to feed it: the metadata that travels inside every checkpoint.

Activation is part of the model's description and is never guessed at inference (the seed's
rule: sigmoid for binary / multi-label segmentation, softmax for multi-class). Class index
``i + 1`` in every class map is ``class_names[i]``; 0 is background. For sigmoid there is one
output channel per class; for softmax channel 0 is background and there are ``len(class_names)+1``.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Literal

from defectscan.errors import CheckpointError

__all__ = ["SPEC_VERSION", "TTA_MODES", "Activation", "ChannelOrder", "ModelSpec", "TestTimeFlips"]

SPEC_VERSION = 1
Activation = Literal["sigmoid", "softmax"]
ChannelOrder = Literal["RGB", "BGR", "GRAY"]
#: Test-time flips: the probabilities averaged over the tile and its mirror images (``h``: the
#: left-right mirror; ``hv``: also the upside-down one). Calibration picks one only where it
#: pays (``TrainConfig.tta``).
TestTimeFlips = Literal["none", "h", "hv"]
TTA_MODES: tuple[str, ...] = ("none", "h", "hv")


@dataclass(frozen=True)
class ModelSpec:
    """Architecture, activation, classes, preprocessing and post-processing defaults."""

    n_channels: int
    activation: Activation
    class_names: tuple[str, ...]
    bilinear: bool = True
    base_width: int = 64
    architecture: str = "unet"
    thresholds: tuple[float, ...] = ()
    min_confidence: float = 0.0
    min_area: tuple[int, ...] = ()
    channel_order: ChannelOrder = "RGB"
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    mask_values: tuple[Any, ...] = ()
    tile_size: int = 256
    tile_overlap: int = 32
    name: str = "unet"
    training_run: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    tta: TestTimeFlips = "none"

    def __post_init__(self) -> None:
        k = len(self.class_names)
        if self.activation not in ("sigmoid", "softmax"):
            msg = f"activation must be 'sigmoid' or 'softmax', got {self.activation!r}"
            raise CheckpointError(msg)
        if k < 1:
            msg = "a model needs at least one defect class name"
            raise CheckpointError(msg)
        if self.channel_order == "GRAY" and self.n_channels != 1:
            msg = f"channel_order GRAY needs n_channels=1, got {self.n_channels}"
            raise CheckpointError(msg)
        if self.channel_order != "GRAY" and self.n_channels not in (3, 4):
            msg = (
                f"channel_order {self.channel_order} needs 3 or 4 input channels, "
                f"got {self.n_channels}; use GRAY for single-channel models"
            )
            raise CheckpointError(msg)
        # Fill per-class defaults so that every consumer can index by class.
        if not self.thresholds:
            object.__setattr__(self, "thresholds", (0.5,) * k)
        if not self.min_area:
            object.__setattr__(self, "min_area", (0,) * k)
        if not self.mean:
            object.__setattr__(self, "mean", (0.0,) * self.n_channels)
        if not self.std:
            object.__setattr__(self, "std", (1.0,) * self.n_channels)
        for name, values, n in (
            ("thresholds", self.thresholds, k),
            ("min_area", self.min_area, k),
            ("mean", self.mean, self.n_channels),
            ("std", self.std, self.n_channels),
        ):
            if len(values) != n:
                msg = f"{name} has {len(values)} values, expected {n}"
                raise CheckpointError(msg)
        if any(s == 0 for s in self.std):
            msg = "std values must be non-zero"
            raise CheckpointError(msg)
        if self.tta not in TTA_MODES:
            msg = f"tta must be one of {', '.join(TTA_MODES)}, got {self.tta!r}"
            raise CheckpointError(msg)
        if self.tile_overlap < 0 or self.tile_overlap >= self.tile_size:
            msg = f"tile_overlap must be in [0, tile_size), got {self.tile_overlap}"
            raise CheckpointError(msg)

    @property
    def n_classes(self) -> int:
        """Number of output channels of the network."""
        k = len(self.class_names)
        return k if self.activation == "sigmoid" else k + 1

    def replace(self, **changes: Any) -> ModelSpec:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict, the form stored in checkpoint metadata."""
        d = dataclasses.asdict(self)
        if d["tta"] == "none":
            del d["tta"]  # what every checkpoint without flips was written as, read by any version
        d["spec_version"] = SPEC_VERSION
        return d

    def to_json(self) -> str:
        """Compact JSON of :meth:`to_dict`."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        """Build from :meth:`to_dict` output; unknown keys are an error, not silently dropped."""
        data = dict(data)
        version = data.pop("spec_version", SPEC_VERSION)
        if version > SPEC_VERSION:
            msg = (
                f"checkpoint metadata has spec_version {version}; this defectscan reads up to "
                f"{SPEC_VERSION}: upgrade defectscan"
            )
            raise CheckpointError(msg)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            msg = f"unknown model metadata fields {unknown}: was it written by a newer defectscan?"
            raise CheckpointError(msg)
        for key in ("class_names", "thresholds", "min_area", "mean", "std", "mask_values"):
            if key in data and data[key] is not None:
                data[key] = tuple(tuple(v) if isinstance(v, list) else v for v in data[key])
        try:
            return cls(**data)
        except TypeError as exc:
            msg = f"model metadata is incomplete: {exc}"
            raise CheckpointError(msg) from exc

    @classmethod
    def from_json(cls, text: str) -> ModelSpec:
        """Parse :meth:`to_json` output."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            msg = f"model metadata is not valid JSON: {exc}"
            raise CheckpointError(msg) from exc
        if not isinstance(data, dict):
            msg = "model metadata must be a JSON object"
            raise CheckpointError(msg)
        return cls.from_dict(data)

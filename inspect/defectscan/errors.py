"""One exception hierarchy for the whole library.

Every error carries a short machine-readable ``kind`` (stored in error rows and printed by the
CLI's ``--json``) and a message that says what is wrong and how to fix it.
"""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DatasetError",
    "DefectscanError",
    "EmptyImageError",
    "ImageDecodeError",
    "ImageTooLargeError",
    "NotAnImageError",
    "PlantFault",
    "RejectedInputError",
    "SourceError",
    "StoreError",
    "TargetShapeError",
    "TruncatedImageError",
    "UnsupportedBitDepthError",
    "UnsupportedChannelsError",
]


class DefectscanError(Exception):
    """Base class of every error raised on purpose by defectscan."""

    kind: str = "error"


class ConfigError(DefectscanError):
    """Settings or a line configuration are invalid."""

    kind = "config"


class CheckpointError(DefectscanError):
    """A checkpoint file cannot be read, or does not describe a model we can build."""

    kind = "checkpoint"


class ImageDecodeError(DefectscanError):
    """Input bytes are not an image we can inspect."""

    kind = "decode"


class EmptyImageError(ImageDecodeError):
    """The input has no bytes."""

    kind = "empty"


class TruncatedImageError(ImageDecodeError):
    """The input starts like an image but its data stops early."""

    kind = "truncated"


class NotAnImageError(ImageDecodeError):
    """The bytes are not in any supported image format."""

    kind = "not_an_image"


class UnsupportedChannelsError(ImageDecodeError):
    """The image has a channel count the model cannot take."""

    kind = "channels"


class UnsupportedBitDepthError(ImageDecodeError):
    """The image has a pixel depth other than 8 or 16 bit unsigned."""

    kind = "bit_depth"


class ImageTooLargeError(ImageDecodeError):
    """The header announces more pixels than the configured limit (decompression-bomb guard)."""

    kind = "too_large"


class RejectedInputError(ImageDecodeError):
    """A source refused a delivery before decoding (unsafe path, too many failed deliveries)."""

    def __init__(self, message: str, *, kind: str = "refused") -> None:
        super().__init__(message)
        self.kind = kind


class TargetShapeError(DefectscanError):
    """A training target does not match the model's activation (the seed's "fake loss" trap)."""

    kind = "target_shape"


class StoreError(DefectscanError):
    """The results database refused an operation."""

    kind = "store"


class SourceError(DefectscanError):
    """An image source (folder, Redis stream) cannot deliver or settle a message."""

    kind = "source"


class DatasetError(DefectscanError):
    """A training dataset (folder layout, image/mask pair, mask values) cannot be used."""

    kind = "dataset"


class PlantFault(DefectscanError):  # noqa: N818 (the name the sources and monitor agreed on)
    """A fault of the plant, not of the image: a full or read-only volume, a database or broker
    that refuses work, an unwritable folder, a model that does not fit the line's rules.

    The line monitor pauses on it and hands its batch back without charging the deliveries:
    the images are not to blame, and none of them may end in quarantine because of it.
    """

    kind = "plant_fault"

"""From per-pixel class probabilities to a class map, defect records and a pass/fail verdict.

The activation comes from the model's metadata, never from the output's shape (the seed's rule):

- ``sigmoid`` (binary or multi-label): one channel per class; a pixel belongs to class ``c`` when
  ``prob[c] > thresholds[c]`` (strictly greater, as the seed's reference ``predict`` does). Class
  masks may overlap; the class map shows the most probable of the classes over threshold.
- ``softmax`` (multi-class): channel 0 is background; the class map is the argmax, and pixels
  whose winning probability is below ``min_confidence`` become background.

Each class mask is then optionally cleaned (morphological open then close), split into
8-connected components, components smaller than the class's ``min_area`` are dropped (from the
defects and from the class map), and every kept component becomes a :class:`Defect` with its
outer contour. The verdict fails the part when any kept defect is at least its class's
``fail_area``.

With the defaults (no morphology, ``min_area`` 0) the class map equals the raw thresholding /
argmax exactly, so an imported seed checkpoint gives the seed's masks. All work on a class is
confined to the bounding box of that class's pixels, and skipped when the mask is empty, because
this runs on every frame and frames are large while defects are small.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import cv2
import numpy as np

from defectscan.errors import ConfigError

if TYPE_CHECKING:
    from defectscan.config import LineConfig
    from defectscan.model.spec import ModelSpec

__all__ = [
    "Defect",
    "PostprocessConfig",
    "Postprocessed",
    "class_masks",
    "defect_order",
    "postprocess",
]

logger = logging.getLogger(__name__)

_MAX_CLASSES = 255  # the class map is uint8 with 0 for background
_NEVER_FAILS = 2**62  # fail_area of a line's pass_classes: larger than any image


@dataclass(frozen=True)
class PostprocessConfig:
    """How probabilities become masks, defects and a verdict.

    Per-class tuples are indexed like ``class_names`` (class index ``i + 1`` is
    ``class_names[i]``; 0 is background). Empty tuples mean the defaults: threshold 0.5,
    ``min_area`` 0 and ``fail_area`` None (any kept defect fails the part).
    """

    activation: Literal["sigmoid", "softmax"]
    class_names: tuple[str, ...]
    thresholds: tuple[float, ...] = ()
    min_confidence: float = 0.0
    min_area: tuple[int, ...] = ()
    morph_kernel: int = 0
    fail_area: tuple[int | None, ...] = ()

    def __post_init__(self) -> None:
        k = len(self.class_names)
        if self.activation not in ("sigmoid", "softmax"):
            msg = f"activation must be 'sigmoid' or 'softmax', got {self.activation!r}"
            raise ConfigError(msg)
        if not 1 <= k <= _MAX_CLASSES:
            msg = f"need 1 to {_MAX_CLASSES} class names, got {k}"
            raise ConfigError(msg)
        if len(set(self.class_names)) != k:
            msg = f"class names must be unique, got {list(self.class_names)}"
            raise ConfigError(msg)
        # Normalise to tuples of plain Python numbers so the config hashes and compares.
        object.__setattr__(self, "class_names", tuple(str(n) for n in self.class_names))
        for name, default in (("thresholds", 0.5), ("min_area", 0), ("fail_area", None)):
            values = tuple(getattr(self, name)) or (default,) * k
            if len(values) != k:
                msg = (
                    f"{name} has {len(values)} values but there are {k} classes "
                    f"{list(self.class_names)}: give one per class, in class order"
                )
                raise ConfigError(msg)
            object.__setattr__(self, name, values)
        for name, thr in zip(self.class_names, self.thresholds, strict=True):
            if not 0.0 <= thr <= 1.0:
                msg = (
                    f"threshold for class {name!r} is {thr}; it must be in [0, 1] "
                    "(a pixel is a defect when its probability is strictly greater, "
                    "so 1 switches the class off)"
                )
                raise ConfigError(msg)
        if not 0.0 <= self.min_confidence <= 1.0:
            msg = f"min_confidence must be in [0, 1], got {self.min_confidence}"
            raise ConfigError(msg)
        for name, area in zip(self.class_names, self.min_area, strict=True):
            if area < 0:
                msg = f"min_area for class {name!r} is {area}; it must be >= 0 pixels"
                raise ConfigError(msg)
        for name, fail in zip(self.class_names, self.fail_area, strict=True):
            if fail is not None and fail < 0:
                msg = (
                    f"fail_area for class {name!r} is {fail}; use a pixel count >= 0, "
                    "or None to fail on any kept defect of that class"
                )
                raise ConfigError(msg)
        if self.morph_kernel < 0:
            msg = (
                f"morph_kernel must be 0 (off) or a kernel size in pixels, got {self.morph_kernel}"
            )
            raise ConfigError(msg)

    @property
    def n_channels(self) -> int:
        """Channels the probabilities must have: one per class, plus background for softmax."""
        k = len(self.class_names)
        return k if self.activation == "sigmoid" else k + 1

    @property
    def channel_of(self) -> list[int]:
        """The probability channel of each class (softmax channel 0 is background)."""
        offset = 1 if self.activation == "softmax" else 0
        return [c + offset for c in range(len(self.class_names))]

    @property
    def margin(self) -> int:
        """How far past a class's pixels post-processing's work reaches (0 without morphology).

        Closing can reach ``kernel // 2`` beyond the pixels, and its erosion must see a margin
        of background past that for a crop to give exactly the full-frame result.
        """
        return self.morph_kernel + 2 if self.morph_kernel > 0 else 0

    @classmethod
    def from_spec(
        cls, spec: ModelSpec, line: LineConfig | None = None, **overrides: Any
    ) -> PostprocessConfig:
        """The model's defaults, then a production line's per-class overrides, then ``overrides``.

        The line's dicts are keyed by class name; a name the model does not know is an error.
        """
        names = tuple(spec.class_names)
        thresholds = list(spec.thresholds) or [0.5] * len(names)
        min_area = list(spec.min_area) or [0] * len(names)
        fail_area: list[int | None] = [None] * len(names)
        if line is not None:
            for field_name, target in (
                ("thresholds", thresholds),
                ("min_area", min_area),
                ("fail_area", fail_area),
            ):
                values: dict[str, Any] = getattr(line, field_name)
                unknown = sorted(set(values) - set(names))
                if unknown:
                    msg = (
                        f"line {line.name!r} sets {field_name} for unknown classes {unknown}; "
                        f"the model's classes are {list(names)}"
                    )
                    raise ConfigError(msg)
                for class_name, value in values.items():
                    target[names.index(class_name)] = value
            unknown = sorted(set(line.pass_classes) - set(names))
            if unknown:
                msg = (
                    f"line {line.name!r} lists unknown pass_classes {unknown}; "
                    f"the model's classes are {list(names)}"
                )
                raise ConfigError(msg)
            for class_name in line.pass_classes:
                # Recorded, never failing: no defect reaches this area.
                fail_area[names.index(class_name)] = _NEVER_FAILS
            if line.thresholds and spec.activation == "softmax":
                logger.warning(
                    "line %r sets thresholds, which a softmax model does not use "
                    "(it takes the argmax; use min_confidence instead)",
                    line.name,
                )
        fields: dict[str, Any] = {
            "activation": spec.activation,
            "class_names": names,
            "thresholds": tuple(thresholds),
            "min_confidence": spec.min_confidence,
            "min_area": tuple(min_area),
            "fail_area": tuple(fail_area),
        }
        known = {f.name for f in dataclasses.fields(cls)}
        unknown_overrides = sorted(set(overrides) - known)
        if unknown_overrides:
            msg = f"unknown post-processing settings {unknown_overrides}; known: {sorted(known)}"
            raise ConfigError(msg)
        fields.update(overrides)
        return cls(**fields)


@dataclass(frozen=True)
class Defect:
    """One connected region of one class."""

    class_index: int
    class_name: str
    area: int
    bbox: tuple[int, int, int, int]  # x, y, w, h
    centroid: tuple[float, float]  # x, y
    perimeter: float
    polygon: list[list[int]]  # outer contour points [[x, y], ...]
    mean_score: float
    max_score: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict; the class name is under ``"class"``, ``"score"`` is the mean score."""
        return {
            "class": self.class_name,
            "class_index": self.class_index,
            "area": self.area,
            "bbox": list(self.bbox),
            "centroid": list(self.centroid),
            "score": self.mean_score,
            "perimeter": self.perimeter,
            "polygon": [list(p) for p in self.polygon],
            "mean_score": self.mean_score,
            "max_score": self.max_score,
        }


@dataclass(frozen=True)
class Postprocessed:
    """Post-processing output for one frame."""

    class_map: np.ndarray  # uint8 [H, W]: 0 background, i + 1 = class_names[i]
    defects: list[Defect]
    verdict: Literal["pass", "fail"]


def _check_probs(probs: np.ndarray, cfg: PostprocessConfig) -> None:
    if not isinstance(probs, np.ndarray) or probs.ndim != 3:
        shape = getattr(probs, "shape", None)
        msg = f"probabilities must be a numpy array [K, H, W], got shape {shape}"
        raise ValueError(msg)
    if not np.issubdtype(probs.dtype, np.floating):
        msg = f"probabilities must be floating point (activation applied), got {probs.dtype}"
        raise ValueError(msg)
    k = probs.shape[0]
    if k != cfg.n_channels:
        names = list(cfg.class_names)
        if cfg.activation == "sigmoid":
            expected = f"{cfg.n_channels} (one per class {names})"
        else:
            expected = f"{cfg.n_channels} (background + classes {names})"
        msg = (
            f"{cfg.activation} probabilities have {k} channels, expected {expected}: "
            "check that the model's activation and class names match its output"
        )
        raise ValueError(msg)
    if probs.shape[1] < 1 or probs.shape[2] < 1:
        msg = f"probabilities have an empty frame, shape {tuple(probs.shape)}"
        raise ValueError(msg)


def _argmax_map(probs: np.ndarray, min_confidence: float) -> np.ndarray:
    """Softmax class map: argmax over channels (first wins ties), uint8, background when unsure."""
    cmap = np.zeros(probs.shape[1:], dtype=np.uint8)
    best = probs[0].copy()
    # A running max over K channels is as exact as np.argmax (strict > keeps the first of
    # equal maxima), yields uint8 directly and gives the winning probability for free.
    for c in range(1, probs.shape[0]):
        better = probs[c] > best
        cmap[better] = c
        np.maximum(best, probs[c], out=best)
    if min_confidence > 0.0:
        cmap[best < min_confidence] = 0
    return cmap


def class_masks(probs: np.ndarray, cfg: PostprocessConfig) -> list[np.ndarray]:
    """One ``uint8`` 0/1 mask ``[H, W]`` per class, before morphology and ``min_area``.

    Sigmoid masks may overlap (multi-label); softmax masks partition the non-background pixels.
    """
    _check_probs(probs, cfg)
    if cfg.activation == "sigmoid":
        return [(probs[c] > thr).view(np.uint8) for c, thr in enumerate(cfg.thresholds)]
    cmap = _argmax_map(probs, cfg.min_confidence)
    return [(cmap == c + 1).view(np.uint8) for c in range(len(cfg.class_names))]


# Above this many components in one class's region, one connected-components pass over the
# region beats one small pass per component (noisy masks: thousands of specks).
_MANY_COMPONENTS = 64
_NO_CONTOUR = np.zeros((0, 1, 2), np.int32)  # for components dropped before tracing


def _region(mask: np.ndarray, margin: int) -> tuple[int, int, int, int] | None:
    """Bounding box (y0, y1, x0, x1) of the mask's pixels grown by ``margin``; None if empty."""
    if cv2.countNonZero(mask) == 0:  # the common case (a good part), and cheaper than a bbox
        return None
    x, y, w, h = cv2.boundingRect(mask)
    height, width = mask.shape
    return (
        max(0, y - margin),
        min(height, y + h + margin),
        max(0, x - margin),
        min(width, x + w + margin),
    )


def _morphology(mask: np.ndarray, kernel_size: int) -> np.ndarray:
    # Open removes specks smaller than the kernel, close fills pinholes and hairline gaps.
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (kernel_size, kernel_size))
    opened = cv2.morphologyEx(mask, cv2.MORPH_OPEN, kernel)
    return cv2.morphologyEx(opened, cv2.MORPH_CLOSE, kernel)


@dataclass(frozen=True)
class _Component:
    """One 8-connected component, in the coordinates of its class's region crop."""

    x: int
    y: int
    w: int
    h: int
    area: int
    cx: float
    cy: float
    pixels: np.ndarray  # bool [h, w]: the component within its bbox (not other components)
    contour: np.ndarray  # outer border, int32 [N, 1, 2]


def _components_by_contour(crop: np.ndarray, outer: list[np.ndarray]) -> list[_Component]:
    """Few components: label each one's bbox only. Pixel work is the sum of the bboxes."""
    comps = []
    for contour in outer:
        x, y, w, h = cv2.boundingRect(contour)
        _, labels, stats, centroids = cv2.connectedComponentsWithStats(
            crop[y : y + h, x : x + w], connectivity=8, ltype=cv2.CV_32S
        )
        # Border points are pixels of the component they enclose; other components (and the
        # holes' contents) in the same bbox have other labels.
        px, py = contour[0, 0]
        label = int(labels[py - y, px - x])
        cx, cy = centroids[label]
        comps.append(
            _Component(
                x=x,
                y=y,
                w=w,
                h=h,
                area=int(stats[label, cv2.CC_STAT_AREA]),
                cx=float(cx) + x,
                cy=float(cy) + y,
                pixels=labels == label,
                contour=contour,
            )
        )
    return comps


def _components_by_labels(crop: np.ndarray, min_area: int) -> list[_Component]:
    """Many components: one labelling pass; contours only for those big enough to keep."""
    n, labels, stats, centroids = cv2.connectedComponentsWithStats(
        crop, connectivity=8, ltype=cv2.CV_32S
    )
    comps = []
    for i in range(1, n):
        x, y, w, h, area = (int(v) for v in stats[i, :5])
        pixels = labels[y : y + h, x : x + w] == i
        contour = _NO_CONTOUR
        if area >= min_area:
            contours, _ = cv2.findContours(
                pixels.view(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE, offset=(x, y)
            )
            # One component has exactly one outer border; max() only guards against surprises.
            contour = max(contours, key=len)
        cx, cy = centroids[i]
        comps.append(_Component(x, y, w, h, area, float(cx), float(cy), pixels, contour))
    return comps


def _paint(
    class_map: np.ndarray,
    probs: np.ndarray,
    channel_of: list[int],
    class_index: int,
    y: int,
    x: int,
    pixels: np.ndarray,
) -> None:
    """Write one component into the class map, resolving overlaps as raw thresholding does.

    Where an earlier class already holds a pixel, the more probable class wins (ties: the
    earlier, lower index), which is the argmax rule applied one class at a time.
    """
    h, w = pixels.shape
    view = class_map[y : y + h, x : x + w]
    held = view[pixels]
    if not held.any():
        view[pixels] = class_index
        return
    ys, xs = np.nonzero(pixels)
    ys += y
    xs += x
    channels = np.asarray(channel_of, dtype=np.intp)
    new = probs[channel_of[class_index - 1], ys, xs]
    old = probs[channels[np.maximum(held.astype(np.intp) - 1, 0)], ys, xs]
    view[pixels] = np.where((held == 0) | (new > old), class_index, held)


def _class_defects(
    mask: np.ndarray,
    probs: np.ndarray,
    class_index: int,
    cfg: PostprocessConfig,
    class_map: np.ndarray,
    channel_of: list[int],
) -> list[Defect]:
    """Clean one class's mask, paint what is kept into the class map, return its defects."""
    c = class_index - 1
    region = _region(mask, cfg.margin)
    if region is None:
        return []
    y0, y1, x0, x1 = region
    crop = mask[y0:y1, x0:x1]
    if cfg.morph_kernel > 0:
        crop = _morphology(crop, cfg.morph_kernel)
    # RETR_CCOMP puts the outer border of every component at the top level, including
    # components that sit inside another one's hole (RETR_EXTERNAL would miss those).
    contours, hierarchy = cv2.findContours(crop, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return []
    outer = [cnt for cnt, link in zip(contours, hierarchy[0], strict=True) if link[3] < 0]
    min_area = cfg.min_area[c]
    if len(outer) > _MANY_COMPONENTS:
        comps = _components_by_labels(crop, min_area)
    else:
        comps = _components_by_contour(crop, outer)
    p = probs[channel_of[c], y0:y1, x0:x1]
    name = cfg.class_names[c]
    defects: list[Defect] = []
    for comp in comps:
        if comp.area < min_area:
            continue  # dropped: neither a defect nor in the class map
        _paint(class_map, probs, channel_of, class_index, comp.y + y0, comp.x + x0, comp.pixels)
        scores = p[comp.y : comp.y + comp.h, comp.x : comp.x + comp.w][comp.pixels]
        defects.append(
            Defect(
                class_index=class_index,
                class_name=name,
                area=comp.area,
                bbox=(comp.x + x0, comp.y + y0, comp.w, comp.h),
                centroid=(comp.cx + x0, comp.cy + y0),
                perimeter=float(cv2.arcLength(comp.contour, True)),
                polygon=(comp.contour.reshape(-1, 2) + np.array([x0, y0])).tolist(),
                mean_score=float(scores.mean(dtype=np.float64)),
                max_score=float(scores.max()),
            )
        )
    return defects


def defect_order(d: Defect) -> tuple[Any, ...]:
    """Sort key of a frame's defects: class, then top-left corner, then contour start.

    Bboxes of different components can share a corner; a contour starts at its component's
    first pixel in raster order, which no other component has: a total, stable order.
    """
    return (d.class_index, d.bbox[1], d.bbox[0], d.polygon[0][::-1])


def _verdict(defects: list[Defect], cfg: PostprocessConfig) -> Literal["pass", "fail"]:
    for d in defects:
        limit = cfg.fail_area[d.class_index - 1]
        if limit is None or d.area >= limit:
            return "fail"
    return "pass"


def postprocess(probs: np.ndarray, cfg: PostprocessConfig) -> Postprocessed:
    """Class map, defects sorted by (class, y, x), and verdict for one frame's probabilities."""
    masks = class_masks(probs, cfg)
    channel_of = cfg.channel_of
    class_map = np.zeros(probs.shape[1:], dtype=np.uint8)
    defects: list[Defect] = []
    # Ascending class order matters: _paint resolves overlaps against earlier classes.
    for c, mask in enumerate(masks):
        defects += _class_defects(mask, probs, c + 1, cfg, class_map, channel_of)
    defects.sort(key=defect_order)
    verdict = _verdict(defects, cfg)
    logger.debug("%d defects, verdict %s", len(defects), verdict)
    return Postprocessed(class_map=class_map, defects=defects, verdict=verdict)

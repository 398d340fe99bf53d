"""Evaluation that judges what inspection decides, and verdict calibration on a validation split.

:func:`inspect_frames` runs images through :class:`defectscan.pipeline.Inspector` - decode,
tiling, the backend, stitching and post-processing with the model's thresholds, minimum
confidence, minimum area and verdict rule - and keeps each frame's stitched probabilities.
:func:`score_frames` turns those into an :class:`EvalReport`: the class maps are the ones
``defectscan inspect`` writes, a part counts as flagged when its verdict is ``fail``.
``eval``, the promotion gate and the end of training all score this way, so they judge the
decision production makes.

:func:`calibrate` chooses, on the same stitched probabilities, the per-class thresholds (sigmoid)
or the minimum confidence (softmax) and the minimum defect area that keep the false-reject rate
on defect-free frames at or below a target (default 2%) with the highest image recall (ties: the
highest pooled pixel IoU, then the smallest area). For each candidate threshold the largest
connected component of each class is measured once per frame; a frame fails at minimum area
``a`` exactly when that component has ``a`` pixels or more, which is the post-processing rule
(8-connected components, no morphology), so every (threshold, area) pair is scored without
running post-processing again.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
import torch

from defectscan.errors import DatasetError
from defectscan.imaging import DEFAULT_MAX_PIXELS
from defectscan.model.backends import BackendName, Precision
from defectscan.model.spec import ModelSpec, TestTimeFlips
from defectscan.pipeline import ImageRecord, InspectionResult, Inspector
from defectscan.postprocess import PostprocessConfig, postprocess
from defectscan.training.datasets import Sample, load_mask, scan_dataset, split_dataset
from defectscan.training.metrics import EvalReport, SegmentationEvaluator

__all__ = [
    "AREA_CANDIDATES",
    "Calibration",
    "InspectedFrame",
    "calibrate",
    "evaluate_dataset",
    "inspect_frames",
    "score_frames",
    "truth_mask",
]

logger = logging.getLogger(__name__)

#: Minimum defect areas (pixels) the calibration tries.
AREA_CANDIDATES = (0, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)
_SIGMOID_THRESHOLDS = (*np.round(np.arange(0.05, 0.951, 0.05), 3).tolist(), 0.975, 0.99)
_SOFTMAX_CONFIDENCES = (0.0, *np.round(np.arange(0.4, 0.951, 0.05), 3).tolist(), 0.975, 0.99)
_BINS = 200


@dataclass
class InspectedFrame:
    """One inspected frame: the inspection result, its stitched probabilities, the truth."""

    sample: Sample
    result: InspectionResult
    probs: np.ndarray  # float32 [K, H, W], what post-processing saw
    truth: np.ndarray  # uint8 [H, W] class indices


class _ProbeInspector(Inspector):
    """An :class:`Inspector` that also keeps each frame's stitched probabilities."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.probs: dict[str, np.ndarray] = {}

    def _finish(self, job: Any) -> InspectionResult:
        # Stitcher.result() is cached: post-processing below reads the same array.
        probs = job.stitcher.result()
        result = super()._finish(job)
        self.probs[result.record.id] = probs
        return result


def probe(inspector: Inspector) -> Inspector:
    """A copy of ``inspector`` (same backend and settings) that keeps probabilities."""
    return _ProbeInspector(
        inspector.backend,
        inspector.spec,
        model_version=inspector.model_version,
        tile_size=inspector.tile,
        overlap=inspector.overlap,
        batch_size=inspector.batch_size,
        max_pixels=inspector.max_pixels,
        lines=inspector.lines,
        checkpoint=inspector.checkpoint,
        tta=inspector.tta,
    )


def truth_mask(
    sample: Sample, shape: tuple[int, int], *, n_classes: int, binary: bool
) -> np.ndarray:
    """The ground-truth class map of ``sample`` (binarised for a one-class model)."""
    mask = load_mask(
        sample.mask,
        shape=shape,
        n_classes=n_classes if sample.class_index is None else max(n_classes, sample.class_index),
        class_index=sample.class_index,
    )
    if binary:
        return (mask > 0).astype(np.uint8)
    if int(mask.max(initial=0)) > n_classes:
        msg = f"mask {sample.mask} has class {int(mask.max())} > {n_classes} classes"
        raise DatasetError(msg)
    return mask


def inspect_frames(
    inspector: Inspector,
    samples: Sequence[Sample],
    *,
    n_classes: int,
    binary: bool,
) -> Iterator[InspectedFrame]:
    """Inspect ``samples`` as production does; yield results with probabilities and truth."""
    probing = inspector if isinstance(inspector, _ProbeInspector) else probe(inspector)
    assert isinstance(probing, _ProbeInspector)
    by_id = {str(s.image): s for s in samples}
    records = (ImageRecord.from_path(s.image) for s in samples)
    for result in probing.inspect(records):
        sample = by_id[result.record.id]
        if result.status != "ok":
            msg = f"cannot evaluate on {sample.image}: {result.error_message}"
            raise DatasetError(msg)
        probs = probing.probs.pop(result.record.id)
        shape = (int(result.height or 0), int(result.width or 0))
        truth = truth_mask(sample, shape, n_classes=n_classes, binary=binary)
        yield InspectedFrame(sample, result, probs, truth)


def score_frames(
    frames: Iterable[InspectedFrame],
    spec: ModelSpec,
    *,
    config: PostprocessConfig | None = None,
) -> EvalReport:
    """The report of inspected frames; with ``config``, their probabilities post-processed again.

    Without ``config`` the class maps and verdicts are the inspection's own.
    """
    ev = SegmentationEvaluator(spec.class_names, spec.activation, thresholds=spec.thresholds)
    for f in frames:
        if config is None:
            assert f.result.class_map is not None
            class_map, verdict = f.result.class_map, f.result.verdict
        else:
            post = postprocess(f.probs, config)
            class_map, verdict = post.class_map, post.verdict
        ev.update_predictions(
            torch.from_numpy(class_map.astype(np.int64)).unsqueeze(0),
            torch.from_numpy(f.truth.astype(np.int64)).unsqueeze(0),
            probs=torch.from_numpy(f.probs).unsqueeze(0),
            flagged=torch.tensor([verdict == "fail"]),
        )
    report = ev.compute()
    cfg = config or PostprocessConfig.from_spec(spec)
    extra = {
        "decision": {
            "thresholds": list(cfg.thresholds),
            "min_confidence": cfg.min_confidence,
            "min_area": list(cfg.min_area),
        }
    }
    return dataclasses.replace(report, extra={**report.extra, **extra})


@dataclass(frozen=True)
class Calibration:
    """The chosen decision parameters and what they achieve on the calibration frames."""

    thresholds: tuple[float, ...]
    min_confidence: float
    min_area: tuple[int, ...]
    target_false_reject_rate: float
    false_reject_rate: float | None
    image_recall: float | None
    met: bool
    n_good: int
    n_defective: int
    note: str = ""
    table: list[dict[str, float]] = field(default_factory=list, compare=False)
    #: The test-time flip settings tried and the one chosen (empty when only one was tried).
    tta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe summary (stored in the checkpoint's metrics under ``calibration``)."""
        return {
            "thresholds": list(self.thresholds),
            "min_confidence": self.min_confidence,
            "min_area": list(self.min_area),
            "target_false_reject_rate": self.target_false_reject_rate,
            "false_reject_rate": self.false_reject_rate,
            "image_recall": self.image_recall,
            "met": self.met,
            "n_good": self.n_good,
            "n_defective": self.n_defective,
            "note": self.note,
            **({"tta": self.tta} if self.tta else {}),
        }

    def apply(self, spec: ModelSpec) -> ModelSpec:
        """``spec`` with these thresholds, minimum confidence and minimum areas."""
        return spec.replace(
            thresholds=self.thresholds,
            min_confidence=self.min_confidence,
            min_area=self.min_area,
        )


def choose_tta(tried: Mapping[TestTimeFlips, Calibration], *, margin: float) -> TestTimeFlips:
    """The test-time flip setting to ship: flips only where they pay.

    A setting that meets the false-reject target beats one that does not; flips (``h``, then
    the dearer ``hv``) replace the plain model only when their image recall at the target is
    at least ``margin`` higher; otherwise ``none`` (no extra passes in production).
    """

    def rank(t: TestTimeFlips) -> tuple[bool, float]:
        c = tried[t]
        return (c.met, c.image_recall if c.image_recall is not None else -1.0)

    best: TestTimeFlips = "none" if "none" in tried else next(iter(tried))
    flips: tuple[TestTimeFlips, ...] = ("h", "hv")
    for t in flips:
        if t not in tried:
            continue
        met, recall = rank(t)
        best_met, best_recall = rank(best)
        if (met and not best_met) or (met == best_met and recall >= best_recall + margin):
            best = t
    return best


def _largest_components(masks: np.ndarray) -> np.ndarray:
    """Pixels of the largest 8-connected component of each uint8 mask ``[N, H, W]``."""
    out = np.zeros(len(masks), np.int64)
    for i, m in enumerate(masks):
        if not m.any():
            continue
        n, _, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8, ltype=cv2.CV_32S)
        if n > 1:
            out[i] = int(stats[1:, cv2.CC_STAT_AREA].max())
    return out


def calibrate(
    frames: Sequence[InspectedFrame],
    spec: ModelSpec,
    *,
    target_false_reject_rate: float = 0.02,
    areas: Sequence[int] = AREA_CANDIDATES,
) -> Calibration:
    """Thresholds / minimum confidence and minimum areas meeting the false-reject target.

    First one threshold (sigmoid) or minimum confidence (softmax) and one minimum area for all
    classes, on a grid; then, with several classes, each class's own threshold (sigmoid) and
    minimum area are refined in turn while the others stay put (coordinate ascent): classes
    differ in size and in how sure the model is of them. A setting meeting the target beats one
    that does not; among those, higher image recall, then pooled pixel IoU, then smaller areas.
    Without defect-free frames the false-reject rate cannot be measured: the thresholds then
    maximise pooled pixel IoU and the minimum area stays 0.
    """
    k = len(spec.class_names)
    sigmoid = spec.activation == "sigmoid"
    levels = np.asarray(_SIGMOID_THRESHOLDS if sigmoid else _SOFTMAX_CONFIDENCES, np.float64)
    n = len(frames)
    defective = np.array([bool(f.truth.any()) for f in frames], bool)
    n_good, n_def = int((~defective).sum()), int(defective.sum())
    # largest[i, j, c]: largest component of class c in frame i at level j
    largest = np.zeros((n, len(levels), k), np.int64)
    tp = np.zeros((len(levels), k), np.float64)
    fp = np.zeros((len(levels), k), np.float64)
    target_px = np.zeros(k, np.float64)
    for i, f in enumerate(frames):
        truth = f.truth
        if sigmoid:
            for c in range(k):
                score = f.probs[c]
                masks = score[None] > levels[:, None, None].astype(np.float32)
                largest[i, :, c] = _largest_components(masks.view(np.uint8))
                pos = truth == c + 1
                target_px[c] += pos.sum()
                tp[:, c] += (masks & pos).reshape(len(levels), -1).sum(1)
                fp[:, c] += (masks & ~pos).reshape(len(levels), -1).sum(1)
        else:
            cmap = f.probs.argmax(0)
            best = f.probs.max(0)
            confident = best[None] >= levels[:, None, None].astype(np.float32)
            for c in range(k):
                masks = confident & (cmap == c + 1)[None]
                largest[i, :, c] = _largest_components(masks.view(np.uint8))
                pos = truth == c + 1
                target_px[c] += pos.sum()
                tp[:, c] += (masks & pos).reshape(len(levels), -1).sum(1)
                fp[:, c] += (masks & ~pos).reshape(len(levels), -1).sum(1)
    fn = target_px[None, :] - tp
    union = tp.sum(1) + fp.sum(1) + fn.sum(1)
    pooled_iou = np.divide(tp.sum(1), union, out=np.zeros(len(levels)), where=union > 0)
    area_arr = np.asarray(areas, np.int64)
    # flagged[i, j, a]: frame i fails at level j with minimum area areas[a]
    flagged = (largest.max(2)[:, :, None] >= np.maximum(area_arr, 1)[None, None, :]).astype(bool)
    frr = flagged[~defective].mean(0) if n_good else np.zeros(flagged.shape[1:])
    recall = flagged[defective].mean(0) if n_def else np.zeros(flagged.shape[1:])
    table = [
        {
            "level": float(levels[j]),
            "min_area": int(area_arr[a]),
            "false_reject_rate": float(frr[j, a]),
            "image_recall": float(recall[j, a]),
            "pooled_iou": float(pooled_iou[j]),
        }
        for j in range(len(levels))
        for a in range(len(area_arr))
    ]

    def decision(j: int, a: int, *, note: str = "") -> Calibration:
        js, aas = np.full(k, j), np.full(k, a)
        if k > 1 and n_good and n_def:
            js, aas = _refine_per_class(
                largest,
                tp,
                fp,
                fn,
                defective,
                area_arr,
                js,
                aas,
                target_false_reject_rate,
                per_class_levels=sigmoid,
            )
        fails = _fails(largest, js, area_arr[aas])
        frr_ = float(fails[~defective].mean()) if n_good else None
        recall_ = float(fails[defective].mean()) if n_def else None
        # Measurable only with both kinds of frame; per-class settings may reach a target that
        # one shared setting could not, and then the note about missing it no longer holds.
        met = frr_ is not None and recall_ is not None and frr_ <= target_false_reject_rate + 1e-12
        note = "" if met else note
        return Calibration(
            thresholds=tuple(float(levels[x]) for x in js) if sigmoid else tuple(spec.thresholds),
            min_confidence=0.0 if sigmoid else float(levels[j]),
            min_area=tuple(int(area_arr[x]) for x in aas),
            target_false_reject_rate=target_false_reject_rate,
            false_reject_rate=frr_,
            image_recall=recall_,
            met=met,
            n_good=n_good,
            n_defective=n_def,
            note=note,
            table=table,
        )

    if n_good == 0 or n_def == 0:
        j = int(np.argmax(pooled_iou))
        what = "defect-free" if n_good == 0 else "defective"
        return decision(j, 0, note=f"no {what} validation frames: best pixel IoU")
    ok = frr <= target_false_reject_rate + 1e-12
    if ok.any():
        # Highest recall, then highest pixel IoU, then the smallest area.
        key = np.where(
            ok, recall * 1e6 + pooled_iou[:, None] * 1e3 - area_arr[None, :] * 1e-6, -1e18
        )
        jj, aa = np.unravel_index(int(np.argmax(key)), key.shape)
        return decision(int(jj), int(aa))
    # Not reachable: the lowest false-reject rate, then the highest recall.
    key = -frr * 1e6 + recall
    jj, aa = np.unravel_index(int(np.argmax(key)), key.shape)
    return decision(
        int(jj),
        int(aa),
        note=f"no setting reaches false-reject rate {target_false_reject_rate}: lowest chosen",
    )


def _fails(largest: np.ndarray, js: np.ndarray, areas: np.ndarray) -> np.ndarray:
    """Frames failed when class ``c`` uses level ``js[c]`` and minimum area ``areas[c]``."""
    k = largest.shape[2]
    sizes = largest[:, js, np.arange(k)]  # [n, k]
    return (sizes >= np.maximum(areas, 1)[None, :]).any(1)


def _refine_per_class(
    largest: np.ndarray,
    tp: np.ndarray,
    fp: np.ndarray,
    fn: np.ndarray,
    defective: np.ndarray,
    area_arr: np.ndarray,
    js: np.ndarray,
    aas: np.ndarray,
    target: float,
    *,
    per_class_levels: bool,
    rounds: int = 3,
) -> tuple[np.ndarray, np.ndarray]:
    """Coordinate ascent over each class's (level, area) from a shared starting point."""
    k = largest.shape[2]
    classes = np.arange(k)

    def score(js_: np.ndarray, aas_: np.ndarray) -> tuple[float, ...]:
        fails = _fails(largest, js_, area_arr[aas_])
        frr = float(fails[~defective].mean())
        recall = float(fails[defective].mean())
        inter = tp[js_, classes].sum()
        union = inter + fp[js_, classes].sum() + fn[js_, classes].sum()
        iou = float(inter / union) if union > 0 else 0.0
        if frr <= target + 1e-12:
            return (1.0, recall, iou, -float(area_arr[aas_].sum()))
        return (0.0, -frr, recall, iou)

    best = score(js, aas)
    for _ in range(rounds):
        improved = False
        for c in range(k):
            levels = range(largest.shape[1]) if per_class_levels else (js[c],)
            for j in levels:
                for a in range(len(area_arr)):
                    trial_j, trial_a = js.copy(), aas.copy()
                    trial_j[c], trial_a[c] = j, a
                    got = score(trial_j, trial_a)
                    if got > best:
                        best, js, aas, improved = got, trial_j, trial_a, True
        if not improved:
            break
    return js, aas


def evaluate_dataset(
    checkpoint: Any,
    data: Path,
    *,
    layout: Literal["auto", "images-masks", "class-folders"] = "auto",
    split: Literal["all", "val"] = "all",
    val_fraction: float | None = None,
    seed: int | None = None,
    device: str = "cpu",
    precision: Precision = "auto",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    backend: BackendName = "torch",
    batch_size: int = 8,
) -> EvalReport:
    """Score a loaded :class:`~defectscan.model.checkpoint.Checkpoint` on a dataset folder.

    Images go through the :class:`~defectscan.pipeline.Inspector` with the checkpoint's own
    decision rule, exactly as ``defectscan inspect`` runs them. ``split="val"`` scores only the
    held-out split that training used (its ``val_fraction`` and seed are read from the
    checkpoint's metrics unless given). A single-class (binary) model on a multi-class dataset
    is scored on defect vs background.
    """
    spec: ModelSpec = checkpoint.spec
    index = scan_dataset(data, layout=layout, class_names=None)
    binary = len(spec.class_names) == 1 and len(index.class_names) > 1
    if not binary and tuple(index.class_names) != tuple(spec.class_names):
        index = scan_dataset(data, layout=layout, class_names=spec.class_names)
    samples: Sequence[Sample] = index.samples
    if split == "val":
        frac = val_fraction if val_fraction is not None else spec.metrics.get("val_fraction", 0.2)
        sd = seed if seed is not None else spec.metrics.get("split_seed", 0)
        samples = split_dataset(index, val_fraction=float(frac), seed=int(sd))[1]
    inspector = Inspector.from_checkpoint(
        checkpoint,
        backend=backend,
        device=device,
        precision=precision,
        batch_size=batch_size,
        max_pixels=max_pixels,
    )
    frames = inspect_frames(inspector, samples, n_classes=len(index.class_names), binary=binary)
    return score_frames(frames, spec)

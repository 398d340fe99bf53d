"""A console review: accept or overrule, class changes, a painted mask, a comment.

The inspection row is never edited: everything goes into a new ``reviews`` row (who, when,
decision, the corrected mask as a PNG of the image's size, and in ``details`` the reviewer's
verdict, the class changes and the defects recomputed from the mask by the same
post-processing the pipeline uses).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from defectscan.console.images import class_map_from_defects, decode_rle, mask_png
from defectscan.errors import DefectscanError
from defectscan.postprocess import PostprocessConfig, postprocess
from defectscan.store.schema import Inspection, Review
from defectscan.training.reviews import record_review

__all__ = ["ReviewInput", "ReviewRefusedError", "defects_of_mask", "save_review"]

MAX_COMMENT = 4000


class ReviewRefusedError(DefectscanError):
    """The review cannot be saved as sent (shown to the reviewer)."""

    kind = "review"


@dataclass(frozen=True)
class ReviewInput:
    """What the review page sends."""

    action: str  # accept | overrule
    classes: dict[int, str]  # defect id -> new class name
    mask_rle: list[int] | None
    comment: str

    @classmethod
    def from_json(cls, data: Any) -> ReviewInput:
        """Checked input from the page's JSON body."""
        if not isinstance(data, dict):
            msg = "the review must be a JSON object"
            raise ReviewRefusedError(msg)
        action = data.get("action")
        if action not in ("accept", "overrule"):
            msg = "choose accept or overrule"
            raise ReviewRefusedError(msg)
        raw_classes = data.get("classes") or {}
        if not isinstance(raw_classes, dict):
            msg = "classes must map defect ids to class names"
            raise ReviewRefusedError(msg)
        try:
            classes = {int(k): str(v) for k, v in raw_classes.items()}
        except (TypeError, ValueError):
            msg = "classes must map defect ids to class names"
            raise ReviewRefusedError(msg) from None
        rle = data.get("mask")
        if rle is not None and (
            not isinstance(rle, list) or not all(isinstance(v, int) for v in rle)
        ):
            msg = "the mask must be a run-length list of integers"
            raise ReviewRefusedError(msg)
        comment = str(data.get("comment") or "")
        if len(comment) > MAX_COMMENT:
            msg = f"a comment has at most {MAX_COMMENT} characters"
            raise ReviewRefusedError(msg)
        return cls(action=action, classes=classes, mask_rle=rle, comment=comment)


def defects_of_mask(class_map: np.ndarray, class_names: tuple[str, ...]) -> list[dict[str, Any]]:
    """Areas, boxes and polygons of every region of a class map, by the pipeline's own
    post-processing (the map is turned into certain probabilities, one channel per class)."""
    k = len(class_names)
    probs = np.zeros((k, *class_map.shape), np.float32)
    for c in range(k):
        probs[c][class_map == c + 1] = 1.0
    result = postprocess(probs, PostprocessConfig(activation="sigmoid", class_names=class_names))
    return [
        {
            "class": d.class_name,
            "class_index": d.class_index,
            "area": d.area,
            "bbox": list(d.bbox),
            "centroid": [round(v, 2) for v in d.centroid],
            "perimeter": round(d.perimeter, 2),
            "polygon": d.polygon,
        }
        for d in result.defects
    ]


def save_review(
    inspection: Inspection,
    given: ReviewInput,
    *,
    reviewer: str,
    session: Session,
    store_dir: Path,
) -> Review:
    """Validate and store the review (a new row; the inspection stays as it is)."""
    if inspection.status != "ok" or inspection.verdict is None:
        msg = "a rejected input has no verdict to review"
        raise ReviewRefusedError(msg)
    names = tuple(str(n) for n in inspection.model_version.class_names)
    by_id = {d.id: d for d in inspection.defects}
    changes: dict[int, str] = {}
    for defect_id, new in given.classes.items():
        if defect_id not in by_id:
            msg = f"defect {defect_id} is not a defect of inspection {inspection.id}"
            raise ReviewRefusedError(msg)
        if new not in names:
            msg = f"class {new!r} is not one of the model's classes {list(names)}"
            raise ReviewRefusedError(msg)
        if new != by_id[defect_id].class_name:
            changes[defect_id] = new
    shape = (inspection.height or 0, inspection.width or 0)
    mask: np.ndarray | None = None
    if given.mask_rle is not None:
        if not all(shape):
            msg = "this inspection has no recorded size, so no mask can be painted on it"
            raise ReviewRefusedError(msg)
        try:
            mask = decode_rle(given.mask_rle, shape, len(names))
        except ValueError as exc:
            raise ReviewRefusedError(str(exc)) from None
    if changes:
        if mask is None:
            if not all(shape):
                msg = "this inspection has no recorded size, so its classes cannot be changed"
                raise ReviewRefusedError(msg)
            mask = class_map_from_defects(inspection.defects, shape)
        for defect_id, new in changes.items():
            region = class_map_from_defects([by_id[defect_id]], shape) > 0
            old_index = by_id[defect_id].class_index
            mask[region & (mask == old_index)] = names.index(new) + 1
    model_verdict = inspection.verdict
    verdict = (
        model_verdict
        if given.action == "accept"
        else ("pass" if model_verdict == "fail" else "fail")
    )
    corrected = mask is not None
    decision = "confirm" if given.action == "accept" and not corrected else "reject"
    details: dict[str, Any] = {
        "source": "console",
        "verdict": verdict,
        "model_verdict": model_verdict,
        "class_changes": {str(k): v for k, v in changes.items()},
    }
    mask_file: Path | None = None
    with tempfile.TemporaryDirectory(prefix="defectscan-review-") as tmp:
        if mask is not None:
            details["defects"] = defects_of_mask(mask, names)
            mask_file = Path(tmp) / "mask.png"
            mask_file.write_bytes(mask_png(mask))
        review = record_review(
            inspection.id,
            decision,
            session=session,
            mask=mask_file,
            operator=reviewer,
            note=given.comment or None,
            store_dir=store_dir,
        )
    review.details = details
    session.flush()
    return review

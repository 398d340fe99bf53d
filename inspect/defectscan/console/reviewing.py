"""A console review: accept or overrule, class changes, a painted mask, a comment; the queue.

The inspection row is never edited: everything goes into a new ``reviews`` row (who, when,
decision, the corrected mask as a PNG of the image's size, and in ``details`` the reviewer's
verdict, the class changes and the defects recomputed from the mask by the same
post-processing the pipeline uses). Saving it marks the image's review-queue item done.

The queue (:func:`queue_entries`, :func:`next_inspection`) serves the filled ``review_queue``
(``defectscan review fill``, the nightly flow) while it has open items for the line, and
falls back to today's ordering (close calls, fails, a sample of passes) when it is empty.
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
from defectscan.store.review_queue import mark_reviewed
from defectscan.store.schema import Inspection, Review
from defectscan.training.reviews import record_review

__all__ = [
    "WHY",
    "QueueEntry",
    "ReviewInput",
    "ReviewRefusedError",
    "defects_of_mask",
    "next_inspection",
    "queue_entries",
    "save_review",
]

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
    mark_reviewed(inspection.id, session=session, review_id=review.id)
    return review


# --------------------------------------------------------------------------- the review queue

#: What the queue page says for each reason an image is there.
WHY = {
    "close_call": "close call",
    "novelty": "novel image",
    "class_balance": "class balance",
    "random_pass": "random pass",
    "random_fail": "random fail",
    "flagged": "flagged",
    "close": "close call",
    "fail": "fail",
    "pass": "sampled pass",
}


@dataclass(frozen=True)
class QueueEntry:
    """One image of the console's review queue."""

    id: int  # the inspection
    line: str | None
    camera: str | None
    verdict: str | None
    score: float
    why: str
    queue_item: int | None = None  # the review_queue row (None: today's ordering)


def queue_entries(
    *, session: Session, line: str | None = None, limit: int = 50
) -> tuple[bool, list[QueueEntry]]:
    """``(from_queue, entries)``: the filled review queue's open items for ``line`` when it has
    any, else today's ordering (close calls, fails, a sample of passes)."""
    from sqlalchemy import select

    from defectscan.store.console_queries import review_queue
    from defectscan.store.review_queue import has_open_items, open_queue_items

    if has_open_items(session=session, line=line):
        items = open_queue_items(session=session, line=line, limit=limit)
        verdicts = dict(
            session.execute(
                select(Inspection.id, Inspection.verdict).where(
                    Inspection.id.in_([it.inspection_id for it in items])
                )
            ).all()
        )
        return True, [
            QueueEntry(
                it.inspection_id,
                it.line,
                it.camera,
                verdicts.get(it.inspection_id),
                float(it.score),
                WHY.get(it.stratum, it.stratum),
                it.id,
            )
            for it in items
        ]
    return False, [
        QueueEntry(q.id, q.line, None, q.verdict, q.peak, WHY.get(q.kind, q.kind))
        for q in review_queue(session=session, line=line, limit=limit)
    ]


def next_inspection(
    *, session: Session, line: str | None = None, after: int | None = None
) -> int | None:
    """The inspection to review next, after inspection ``after`` (skipped if still open)."""
    from sqlalchemy import select

    from defectscan.store.console_queries import review_queue
    from defectscan.store.review_queue import has_open_items, next_queue_item
    from defectscan.store.schema import ReviewQueueItem

    if has_open_items(session=session, line=line):
        after_item = None
        if after is not None:
            after_item = session.scalars(
                select(ReviewQueueItem.id).where(
                    ReviewQueueItem.inspection_id == after, ReviewQueueItem.state == "open"
                )
            ).first()
        item = next_queue_item(session=session, line=line, after_id=after_item)
        if item is not None:
            return int(item.inspection_id)
    ids = [q.id for q in review_queue(session=session, line=line)]
    if after is not None and after in ids:
        ids = ids[ids.index(after) + 1 :]
    return ids[0] if ids else None

"""The review queue in the database (table ``review_queue``): fill, serve, expire, label.

The picking itself (strata, budgets, probabilities) lives one floor up, in
:mod:`defectscan.drift.review_sampling` and :mod:`defectscan.drift.review_fill`; this module
reads the day's candidates, writes the picks and serves them. An operator's flag (the console's
"Flag for review", ``defectscan review flag``) is an ``events`` row of kind ``review_flag``
that the next fills take into the flagged stratum while it is younger than 72 hours.

An item is ``open`` until its inspection is reviewed (``done``: by the console, ``defectscan
review`` or any other review of that inspection, which :func:`next_queue_item` notices) or
until it expires (72 hours).

All functions take ``*, session`` and leave the transaction to the caller.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, exists, func, select, update
from sqlalchemy.orm import Session

from defectscan.store.schema import (
    Defect,
    Event,
    Inspection,
    ModelVersion,
    Review,
    ReviewQueueItem,
    utcnow,
)

__all__ = [
    "FLAG_EVENT",
    "MODEL_SCORED_STRATA",
    "QUEUE_EXPIRY",
    "CandidateRow",
    "HTRow",
    "add_queue_items",
    "candidates_of",
    "expire_queue_items",
    "flag_for_review",
    "flagged_sha256",
    "has_open_items",
    "mark_reviewed",
    "model_wrong",
    "next_queue_item",
    "open_queue_items",
    "queued_sha256",
    "random_strata_rows",
    "retire_model_scored_items",
    "review_candidates",
]

#: How long an item waits for a reviewer.
QUEUE_EXPIRY = timedelta(hours=72)
#: The ``events`` kind of an operator's "review this image" flag.
FLAG_EVENT = "review_flag"
#: Strata whose choice depends on the model's scores: stale once another model is champion.
MODEL_SCORED_STRATA = ("close_call", "novelty", "class_balance")


@dataclass(frozen=True)
class CandidateRow:
    """One inspected, unreviewed image of a line's period: what the sampler needs of it."""

    inspection_id: int
    sha256: str
    line: str | None
    camera: str | None
    time: datetime
    verdict: str
    classes: tuple[str, ...]
    peak: float | None  # highest defect score (None: no defect)
    model_version: str


@dataclass(frozen=True)
class HTRow:
    """A random-stratum pick and, once its inspection is reviewed, whether the model was wrong."""

    batch: str
    stratum: str
    sha256: str
    inclusion_probability: float
    population: int
    model_wrong: bool | None  # None: not reviewed yet (not a label)


def _line(column: Any, line: str | None) -> Any:
    return column.is_(None) if line is None else column == line


def review_candidates(
    *, session: Session, line: str | None, since: datetime, until: datetime, limit: int = 200_000
) -> list[CandidateRow]:
    """The line's ok inspections finished in ``[since, until)`` that nobody reviewed yet.

    One row per sha256 (its newest inspection); the classes are those the model found.
    """
    period = and_(Inspection.finished_at >= since, Inspection.finished_at < until)
    return _candidate_rows(session, line, period, limit=limit, tz=since.tzinfo)


def candidates_of(
    *, session: Session, line: str | None, sha256: Collection[str]
) -> list[CandidateRow]:
    """The line's unreviewed ok inspections of these images, whenever inspected (flagged ones);
    one row per image, its newest inspection."""
    if not sha256:
        return []
    return _candidate_rows(session, line, Inspection.sha256.in_(sorted(sha256)), tz=UTC)


def _candidate_rows(
    session: Session, line: str | None, which: Any, *, limit: int = 200_000, tz: Any
) -> list[CandidateRow]:
    """Unreviewed ok inspections of ``line`` matching ``which``; naive times read in ``tz``."""
    reviewed = exists().where(Review.inspection_id == Inspection.id)
    rows = session.execute(
        select(
            Inspection.id,
            Inspection.sha256,
            Inspection.line,
            Inspection.camera,
            func.coalesce(Inspection.captured_at, Inspection.finished_at),
            Inspection.verdict,
            ModelVersion.version,
        )
        .join(ModelVersion, ModelVersion.id == Inspection.model_version_id)
        .where(
            Inspection.status == "ok",
            _line(Inspection.line, line),
            which,
            ~reviewed,
        )
        .order_by(Inspection.finished_at.desc(), Inspection.id.desc())
        .limit(limit)
    ).all()
    ids = [r[0] for r in rows]
    classes: dict[int, set[str]] = {}
    peaks: dict[int, float] = {}
    for chunk in range(0, len(ids), 5000):
        part = ids[chunk : chunk + 5000]
        for iid, name, score in session.execute(
            select(Defect.inspection_id, Defect.class_name, Defect.max_score).where(
                Defect.inspection_id.in_(part)
            )
        ):
            classes.setdefault(iid, set()).add(name)
            peaks[iid] = max(peaks.get(iid, 0.0), float(score))
    seen: set[str] = set()
    out = []
    for iid, sha, ln, cam, when, verdict, version in rows:
        if sha in seen:
            continue
        seen.add(sha)
        when = when if when.tzinfo else when.replace(tzinfo=tz)
        out.append(
            CandidateRow(
                iid,
                sha,
                ln,
                cam,
                when,
                str(verdict),
                tuple(sorted(classes.get(iid, ()))),
                peaks.get(iid),
                version,
            )
        )
    return out[::-1]


def flag_for_review(
    inspection: Inspection, *, by: str, note: str | None = None, session: Session
) -> Event:
    """``by`` asks for ``inspection``'s image to be reviewed: a ``review_flag`` event.

    The review queue's fills put the image in their flagged stratum (inclusion probability 1)
    while the flag is under 72 hours old, unless it is reviewed, queued or in the retrain
    holdout by then.
    """
    from defectscan.store.operations import record_event

    note = (note or "").strip()[:500] or None
    return record_event(
        session=session,
        kind=FLAG_EVENT,
        line=inspection.line,
        message=f"{by} flagged inspection {inspection.id} for review"
        + (f": {note}" if note else ""),
        details={
            "inspection_id": inspection.id,
            "sha256": inspection.sha256,
            "camera": inspection.camera,
            "by": by,
            "note": note,
        },
    )


def flagged_sha256(*, session: Session, line: str | None, since: datetime) -> set[str]:
    """Images of ``line`` flagged for review since ``since`` and not reviewed since."""
    flags = session.scalars(
        select(Event).where(
            Event.kind == FLAG_EVENT, _line(Event.line, line), Event.created_at >= since
        )
    )
    ids = {
        int(d["inspection_id"])
        for d in ((e.details or {}) for e in flags)
        if isinstance(d.get("inspection_id"), int)
    }
    if not ids:
        return set()
    reviewed = exists().where(Review.inspection_id == Inspection.id)
    return set(session.scalars(select(Inspection.sha256).where(Inspection.id.in_(ids), ~reviewed)))


def queued_sha256(*, session: Session, line: str | None = None) -> set[str]:
    """Images with an open queue item (``line`` None: on every line)."""
    stmt = select(ReviewQueueItem.sha256).where(ReviewQueueItem.state == "open")
    if line is not None:
        stmt = stmt.where(ReviewQueueItem.line == line)
    return set(session.scalars(stmt))


def add_queue_items(items: Iterable[dict[str, Any]], *, session: Session) -> int:
    """Insert picks (``ReviewQueueItem`` columns as keys); ``expires_at`` defaults to 72 h."""
    now = utcnow()
    n = 0
    for item in items:
        row = ReviewQueueItem(
            **{"created_at": now, "expires_at": now + QUEUE_EXPIRY, "state": "open", **item}
        )
        session.add(row)
        n += 1
    session.flush()
    return n


def expire_queue_items(*, session: Session, now: datetime | None = None) -> int:
    """Open items past their expiry become ``expired``; returns how many."""
    now = now or utcnow()
    result = session.execute(
        update(ReviewQueueItem)
        .where(ReviewQueueItem.state == "open", ReviewQueueItem.expires_at <= now)
        .values(state="expired")
        .execution_options(synchronize_session=False)
    )
    return int(getattr(result, "rowcount", 0) or 0)


def retire_model_scored_items(*, session: Session) -> int:
    """Expire open close-call, novelty and class-balance items chosen under a replaced model.

    An item's model is replaced when its model name has a champion that is another version
    (after a promotion or a rollback): its scores came from a model that no longer serves,
    and the next fill picks again under the champion. Random and flagged items stay (they do
    not depend on a model's scores), and so do items of models outside the registry's
    champions (a line that runs a checkpoint file).
    """
    versions = list(
        session.scalars(
            select(ReviewQueueItem.model_version)
            .where(
                ReviewQueueItem.state == "open",
                ReviewQueueItem.stratum.in_(MODEL_SCORED_STRATA),
            )
            .distinct()
        )
    )
    if not versions:
        return 0
    names = dict(
        session.execute(
            select(ModelVersion.version, ModelVersion.name).where(
                ModelVersion.version.in_(versions)
            )
        ).all()
    )
    champions = dict(
        session.execute(
            select(ModelVersion.name, ModelVersion.version).where(ModelVersion.status == "champion")
        ).all()
    )
    stale = [v for v in versions if v in names and champions.get(names[v], v) != v]
    if not stale:
        return 0
    result = session.execute(
        update(ReviewQueueItem)
        .where(
            ReviewQueueItem.state == "open",
            ReviewQueueItem.stratum.in_(MODEL_SCORED_STRATA),
            ReviewQueueItem.model_version.in_(stale),
        )
        .values(state="expired")
        .execution_options(synchronize_session=False)
    )
    return int(getattr(result, "rowcount", 0) or 0)


def mark_reviewed(inspection_id: int, *, session: Session, review_id: int | None = None) -> int:
    """Open items of this inspection (or of the same image) become ``done``; returns how many."""
    sha = session.scalar(select(Inspection.sha256).where(Inspection.id == inspection_id))
    cond = ReviewQueueItem.inspection_id == inspection_id
    if sha is not None:
        cond = cond | (ReviewQueueItem.sha256 == sha)
    result = session.execute(
        update(ReviewQueueItem)
        .where(ReviewQueueItem.state == "open", cond)
        .values(state="done", done_at=utcnow(), review_id=review_id)
        .execution_options(synchronize_session=False)
    )
    return int(getattr(result, "rowcount", 0) or 0)


def _open(line: str | None, now: datetime) -> list[Any]:
    conds = [ReviewQueueItem.state == "open", ReviewQueueItem.expires_at > now]
    if line is not None:
        conds.append(ReviewQueueItem.line == line)
    return conds


def has_open_items(*, session: Session, line: str | None = None) -> bool:
    """Whether the queue has an open, unexpired item (for ``line``, or any line)."""
    found = session.scalars(
        select(ReviewQueueItem.id).where(*_open(line, utcnow())).limit(1)
    ).first()
    return found is not None


def open_queue_items(
    *, session: Session, line: str | None = None, limit: int = 50
) -> list[ReviewQueueItem]:
    """Open items in serving order: the soonest to expire first, then as the fill shuffled them."""
    return list(
        session.scalars(
            select(ReviewQueueItem)
            .where(*_open(line, utcnow()))
            .order_by(ReviewQueueItem.expires_at, ReviewQueueItem.id)
            .limit(limit)
        )
    )


def next_queue_item(
    *, session: Session, line: str | None = None, after_id: int | None = None
) -> ReviewQueueItem | None:
    """The next open item (after queue item ``after_id``, which is skipped).

    An item whose inspection was reviewed elsewhere (the inspections page, the CLI) is marked
    done on the way, so an image is never served twice.
    """
    now = utcnow()
    skip: set[int] = set()
    after: ReviewQueueItem | None = session.get(ReviewQueueItem, after_id) if after_id else None
    for _ in range(100):
        stmt = select(ReviewQueueItem).where(*_open(line, now))
        if skip:
            stmt = stmt.where(ReviewQueueItem.id.not_in(skip))
        if after is not None:
            stmt = stmt.where(
                (ReviewQueueItem.expires_at > after.expires_at)
                | (
                    (ReviewQueueItem.expires_at == after.expires_at)
                    & (ReviewQueueItem.id > after.id)
                )
            )
        item = session.scalars(
            stmt.order_by(ReviewQueueItem.expires_at, ReviewQueueItem.id).limit(1)
        ).first()
        if item is None:
            return None
        review = session.scalar(
            select(func.max(Review.id)).where(Review.inspection_id == item.inspection_id)
        )
        if review is None:
            return item
        item.state, item.done_at, item.review_id = "done", now, int(review)
        session.flush()
        skip.add(item.id)
    return None


def model_wrong(review: Review) -> bool:
    """Whether a review says the model's verdict was wrong.

    A console review records the reviewer's and the model's verdict; a review from the CLI
    only its decision (``reject``: the result is wrong).
    """
    d = review.details or {}
    if "verdict" in d and "model_verdict" in d:
        return bool(d["verdict"] != d["model_verdict"])
    return review.decision == "reject"


def random_strata_rows(
    *, session: Session, line: str | None = None, since: datetime | None = None
) -> list[HTRow]:
    """Picks of the random strata (fills created since ``since``) and their reviews' labels.

    The newest review of the picked inspection is its label; expired or open picks without a
    review are returned with ``model_wrong=None``.
    """
    stmt = select(ReviewQueueItem).where(
        ReviewQueueItem.stratum.in_(("random_pass", "random_fail")),
        ReviewQueueItem.population.is_not(None),
    )
    if line is not None:
        stmt = stmt.where(ReviewQueueItem.line == line)
    if since is not None:
        stmt = stmt.where(ReviewQueueItem.created_at >= since)
    items = list(session.scalars(stmt))
    ids = {it.inspection_id for it in items}
    latest: dict[int, Review] = {}
    if ids:
        for review in session.scalars(
            select(Review).where(Review.inspection_id.in_(ids)).order_by(Review.id)
        ):
            latest[review.inspection_id] = review
    return [
        HTRow(
            it.batch,
            it.stratum,
            it.sha256,
            float(it.inclusion_probability),
            int(it.population or 0),
            model_wrong(latest[it.inspection_id]) if it.inspection_id in latest else None,
        )
        for it in items
    ]

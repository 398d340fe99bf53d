"""A new champion's drift references: queued at promotion, built once production allows.

At promotion (:func:`on_promoted`, called by the registry in the promoting transaction: cheap,
no model pass) the open review-queue items scored by the previous model are expired and an
``events`` row ``drift_reference`` says the new version's references are queued. Nothing is
built there: promotion happens in a console request, a CLI command or a retrain, never in a
monitor's loop, and building a reference is thousands of forward passes.

:func:`build_pending_references` (run by the review-queue flow, and by ``defectscan drift
reference pending --build``) builds, for each champion and each camera that inspected under
its model name in the past week, the missing reference from *accepted production after the
promotion*: the camera's archived images inspected since ``promoted_at`` whose review (if any)
did not overrule the model. Until at least ``min_images`` (3,000) exist, the camera waits
(an ``events`` row once a day says how many it has).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from defectscan.store.drift_rows import latest_reference, save_reference
from defectscan.store.operations import record_event
from defectscan.store.review_queue import model_wrong, retire_model_scored_items
from defectscan.store.schema import Event, Inspection, ModelVersion, Review

__all__ = [
    "PendingReference",
    "accepted_production",
    "build_pending_references",
    "build_references_from_settings",
    "on_promoted",
    "pending_references",
]

log = logging.getLogger(__name__)

#: Cameras that inspected under a model name within this period are the ones it serves.
SERVED_WITHIN = timedelta(days=7)


@dataclass(frozen=True)
class PendingReference:
    """A champion's camera without a drift reference yet."""

    model_version: str
    checkpoint_path: str | None
    promoted_at: datetime | None
    line: str | None
    camera: str | None


def on_promoted(version: str, *, session: Session) -> None:
    """What a promotion changes for drift: stale queue items expire, references are queued."""
    session.flush()
    expired = retire_model_scored_items(session=session)
    record_event(
        session=session,
        kind="drift_reference",
        level="info",
        model_version=version,
        message=(
            f"{version} promoted: its drift references per camera are built from accepted "
            f"production at the next review-queue fill once enough images exist"
            + (
                f"; {expired} review-queue item(s) scored by the old model expired"
                if expired
                else ""
            )
        ),
        details={"state": "queued", "expired_queue_items": expired},
    )


def _aware(t: datetime | None) -> datetime | None:
    return None if t is None else (t if t.tzinfo else t.replace(tzinfo=UTC))


def pending_references(*, session: Session, now: datetime | None = None) -> list[PendingReference]:
    """Each champion's served cameras that have no reference for its version yet."""
    now = now or datetime.now(UTC)
    out = []
    for mv in session.scalars(select(ModelVersion).where(ModelVersion.status == "champion")):
        cameras = session.execute(
            select(Inspection.line, Inspection.camera)
            .join(ModelVersion, ModelVersion.id == Inspection.model_version_id)
            .where(
                ModelVersion.name == mv.name,
                Inspection.status == "ok",
                Inspection.finished_at >= now - SERVED_WITHIN,
            )
            .distinct()
        ).all()
        for line, camera in sorted(cameras, key=lambda k: (str(k[0]), str(k[1]))):
            if (
                latest_reference(
                    session=session, model_version=mv.version, line=line, camera=camera
                )
                is None
            ):
                out.append(
                    PendingReference(
                        mv.version, mv.checkpoint_path, _aware(mv.promoted_at), line, camera
                    )
                )
    return out


def accepted_production(
    *, session: Session, pending: PendingReference, limit: int
) -> list[tuple[str, datetime | None]]:
    """``(sha256, captured_at)`` of the camera's images since the promotion, oldest first,
    leaving out those a review overruled (one entry per image, the newest ``limit``)."""
    when = Inspection.finished_at
    stmt = select(Inspection.id, Inspection.sha256, Inspection.captured_at).where(
        Inspection.status == "ok",
        Inspection.line.is_(None) if pending.line is None else Inspection.line == pending.line,
        Inspection.camera.is_(None)
        if pending.camera is None
        else Inspection.camera == pending.camera,
    )
    if pending.promoted_at is not None:
        stmt = stmt.where(when >= pending.promoted_at)
    rows = session.execute(stmt.order_by(when.desc(), Inspection.id.desc()).limit(limit * 2)).all()
    overruled: set[int] = set()
    ids = [r[0] for r in rows]
    for chunk in range(0, len(ids), 5000):
        for review in session.scalars(
            select(Review).where(Review.inspection_id.in_(ids[chunk : chunk + 5000]))
        ):
            if model_wrong(review):
                overruled.add(review.inspection_id)
    seen: set[str] = set()
    out: list[tuple[str, datetime | None]] = []
    for iid, sha, captured in rows:
        if iid in overruled or sha in seen:
            continue
        seen.add(sha)
        out.append((sha, _aware(captured)))
        if len(out) >= limit:
            break
    return out[::-1]


def _waiting_noted(session: Session, p: PendingReference, now: datetime) -> bool:
    for e in session.scalars(
        select(Event).where(
            Event.kind == "drift_reference",
            Event.model_version == p.model_version,
            Event.created_at >= now - timedelta(days=1),
        )
    ):
        d = e.details or {}
        if d.get("state") == "waiting" and (d.get("line"), d.get("camera")) == (p.line, p.camera):
            return True
    return False


def build_pending_references(
    *,
    sessions: Callable[[], Any],
    archive: Any,
    min_images: int = 3000,
    limit: int = 10_000,
    k: int = 64,
    device: str = "cpu",
    inspector_for: Callable[[str], Any] | None = None,
    now: datetime | None = None,
) -> list[dict[str, Any]]:
    """Build what :func:`pending_references` lists where enough accepted images are archived.

    Returns one dict per pending camera: ``state`` built (with the reference id) or waiting
    (with the images found so far).
    """
    from defectscan.drift.replay import build_reference
    from defectscan.sources.base import ImageRecord

    now = now or datetime.now(UTC)
    with sessions() as session:
        todo = pending_references(session=session, now=now)
    out: list[dict[str, Any]] = []
    for p in todo:
        with sessions() as session:
            found = [
                (sha, when)
                for sha, when in accepted_production(session=session, pending=p, limit=limit)
                if archive.has(sha)
            ]
        info: dict[str, Any] = {
            "model_version": p.model_version,
            "line": p.line,
            "camera": p.camera,
            "images": len(found),
        }
        inspector = None
        if len(found) >= min_images:
            if inspector_for is not None:
                inspector = inspector_for(p.model_version)
            elif p.checkpoint_path and Path(p.checkpoint_path).is_file():
                from defectscan.pipeline import Inspector

                inspector = Inspector.from_checkpoint(
                    p.checkpoint_path, backend="torch", device=device, drift_features=True
                )
        if inspector is None:
            info["state"] = "waiting"
            with sessions() as session, session.begin():
                if not _waiting_noted(session, p, now):
                    need = (
                        f"{len(found)} of {min_images} accepted images archived"
                        if len(found) < min_images
                        else "its checkpoint is not readable here"
                    )
                    record_event(
                        session=session,
                        kind="drift_reference",
                        level="info",
                        line=p.line,
                        model_version=p.model_version,
                        message=(
                            f"drift reference of {p.model_version} for camera "
                            f"{p.camera or '-'} waits: {need}"
                        ),
                        details={"state": "waiting", **info},
                    )
            out.append(info)
            continue
        records = [
            ImageRecord(
                id=sha,
                uri=f"archive:{sha}",
                data=archive.get(sha),
                line=p.line,
                camera=p.camera,
                captured_at=when,
            )
            for sha, when in found
        ]
        reference = build_reference(inspector, records, k=k, min_images=min_images)
        if inspector_for is None:
            inspector.close()

        def at(t: float | None) -> datetime | None:
            return None if t is None else datetime.fromtimestamp(t, UTC)

        with sessions() as session, session.begin():
            ref_id = save_reference(
                reference.to_dict(),
                session=session,
                model_version=p.model_version,
                line=p.line,
                camera=p.camera,
                built_from=at(reference.built_from),
                built_to=at(reference.built_to),
            )
            record_event(
                session=session,
                kind="drift_reference",
                level="info",
                line=p.line,
                model_version=p.model_version,
                message=(
                    f"drift reference {ref_id} of {p.model_version} for camera "
                    f"{p.camera or '-'} built from {reference.n_images} accepted images"
                ),
                details={"state": "built", "reference_id": ref_id, **info},
            )
        info.update(state="built", reference_id=ref_id)
        out.append(info)
    return out


def build_references_from_settings(settings: Any) -> list[dict[str, Any]]:
    """:func:`build_pending_references` on the plant's database and archive."""
    from defectscan.archive import ImageArchive
    from defectscan.store.db import make_engine, session_factory

    engine = make_engine(settings.database_url)
    try:
        return build_pending_references(
            sessions=session_factory(engine, write=True),
            archive=ImageArchive(settings.archive_dir or Path(settings.var_dir) / "archive"),
            min_images=settings.drift.reference_min_images,
        )
    finally:
        engine.dispose()

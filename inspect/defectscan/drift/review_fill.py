"""Filling the review queue: a line's day of inspections -> strata picks -> ``review_queue`` rows.

:func:`fill_line` is one line's fill, in the caller's transaction: expire what waited 72 hours,
read the period's unreviewed inspections (:func:`~defectscan.store.review_queue.review_candidates`),
leave out the fixed holdout's images and those already queued, score novelty where a drift
reference exists (:func:`archive_novelty`: archived images of each camera through the champion,
Mahalanobis distance in the reference's whitened space), and let
:func:`~defectscan.drift.review_sampling.select_for_review` pick the line's daily budget. After
a drift alert (warning or critical) on one of the line's cameras in the past 72 hours, the
novelty stratum takes 40% of the budget and is drawn from the alerted cameras only.

Images an operator flagged for review (``review_flag`` events of the past 72 hours, see
:func:`~defectscan.store.review_queue.flag_for_review`) are candidates whenever they were
inspected, and go to the flagged stratum (inclusion probability 1).

Picks are written in a shuffled order: the queue serves a fill's items in that order, so which
picks are reviewed first does not depend on their labels (what the Horvitz-Thompson estimates
of :func:`~defectscan.drift.review_sampling.estimate_rate` assume of unreviewed picks).

:func:`fill_review_queue` runs every line of the plant (the Prefect flow
``flows/review_queue.py`` and ``defectscan review fill`` both call it).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from defectscan.drift.review_sampling import SELECTOR_VERSION, Candidate, select_for_review
from defectscan.store.review_queue import (
    QUEUE_EXPIRY,
    CandidateRow,
    add_queue_items,
    candidates_of,
    expire_queue_items,
    flagged_sha256,
    queued_sha256,
    retire_model_scored_items,
    review_candidates,
)
from defectscan.store.schema import Event, ModelVersion

__all__ = [
    "ALERT_HOURS",
    "FillResult",
    "NoveltyScorer",
    "alerted_cameras",
    "archive_novelty",
    "fill_line",
    "fill_review_queue",
    "holdout_sha256",
    "line_estimates",
]

log = logging.getLogger(__name__)

#: How long a drift alert raises its camera's novelty share.
ALERT_HOURS = 72.0
#: A defect whose peak score lies this close to 0.5 is a close call (the console's rule too).
_DECISION = 0.5

#: Novelty of candidate images: sha256 -> (score, whitened features); score 1 = the
#: reference's 99th percentile of Mahalanobis distance.
NoveltyScorer = Callable[[Sequence[CandidateRow]], dict[str, tuple[float, np.ndarray]]]


@dataclass
class FillResult:
    """What one line's fill did."""

    line: str | None
    batch: str
    candidates: int
    picked: dict[str, int] = field(default_factory=dict)
    expired: int = 0
    alerted_cameras: list[str | None] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form (the flow's result, the CLI's --json)."""
        return {
            "line": self.line,
            "batch": self.batch,
            "candidates": self.candidates,
            "picked": dict(self.picked),
            "total": sum(self.picked.values()),
            "expired": self.expired,
            "alerted_cameras": list(self.alerted_cameras),
        }


def holdout_sha256(var_dir: Path) -> frozenset[str]:
    """The fixed holdout's images (``var/retrain/holdout/manifest.json``; empty without one)."""
    manifest = Path(var_dir) / "retrain" / "holdout" / "manifest.json"
    if not manifest.is_file():
        return frozenset()
    return frozenset(json.loads(manifest.read_text()).get("sha256", []))


def alerted_cameras(
    *, session: Session, line: str | None, now: datetime, hours: float = ALERT_HOURS
) -> set[str | None]:
    """Cameras of ``line`` with a drift warning or critical in the past ``hours``."""
    rows = session.scalars(
        select(Event).where(
            Event.kind == "drift",
            Event.level.in_(("warning", "critical")),
            Event.line.is_(None) if line is None else Event.line == line,
            Event.created_at >= now - timedelta(hours=hours),
        )
    )
    return {(e.details or {}).get("camera") for e in rows}


def _candidate(
    row: CandidateRow, novelty: dict[str, tuple[float, np.ndarray]], flagged: set[str]
) -> Candidate:
    score, feats = novelty.get(row.sha256, (None, None))
    return Candidate(
        sha256=row.sha256,
        camera=row.camera,
        time=row.time.timestamp(),
        verdict=row.verdict,
        classes=row.classes,
        margin=None if row.peak is None else abs(row.peak - _DECISION),
        novelty=score,
        features=feats,
        flagged=row.sha256 in flagged,
    )


def fill_line(
    *,
    session: Session,
    line: str | None,
    since: datetime,
    until: datetime,
    budget: int = 150,
    holdout: frozenset[str] = frozenset(),
    class_names: Sequence[str] = (),
    novelty: NoveltyScorer | None = None,
    expiry: timedelta = QUEUE_EXPIRY,
    rng: np.random.Generator | None = None,
    now: datetime | None = None,
) -> FillResult:
    """Expire, then pick ``line``'s budget from the inspections of ``[since, until)``."""
    now = now or datetime.now(UTC)
    rng = rng or np.random.default_rng()
    batch = f"{line or '-'}@{until.astimezone(UTC):%Y%m%dT%H%M%S}"[:64]
    expired = expire_queue_items(session=session, now=now)
    rows = review_candidates(session=session, line=line, since=since, until=until)
    # An operator's flag stands until the image is reviewed, queued or 72 hours old, however
    # long ago it was inspected; such an image is a candidate of the flagged stratum only.
    flagged = flagged_sha256(session=session, line=line, since=min(since, now - expiry))
    outside = candidates_of(session=session, line=line, sha256=flagged - {r.sha256 for r in rows})
    result = FillResult(line, batch, len(rows) + len(outside), expired=expired)
    if not rows and not outside:
        return result
    alerted = alerted_cameras(session=session, line=line, now=now)
    result.alerted_cameras = sorted(alerted, key=str)
    scores: dict[str, tuple[float, np.ndarray]] = {}
    if novelty is not None:
        pool = [r for r in rows if r.camera in alerted] if alerted else rows
        try:
            scores = novelty(pool)
        except Exception:  # novelty is one stratum: the others still fill
            log.warning("review queue: novelty of line %s could not be scored", line, exc_info=True)
    by_sha = {r.sha256: r for r in (*rows, *outside)}
    queued = queued_sha256(session=session)
    names = sorted({*class_names, *(c for r in rows for c in r.classes)})
    picks = select_for_review(
        [
            *(_candidate(r, scores, flagged) for r in rows),
            *(
                dataclasses.replace(_candidate(r, {}, flagged), outside_period=True)
                for r in outside
            ),
        ],
        budget=budget,
        drift_alert=bool(alerted),
        holdout=holdout,
        queued=queued,
        class_names=names,
        rng=rng,
    )
    eligible = [r for r in rows if r.sha256 not in holdout and r.sha256 not in queued]
    population = {
        "random_pass": sum(r.verdict == "pass" for r in eligible),
        "random_fail": sum(r.verdict == "fail" for r in eligible),
    }
    order = rng.permutation(len(picks))
    items = []
    for i in order:
        p = picks[int(i)]
        row = by_sha[p.sha256]
        items.append(
            {
                "inspection_id": row.inspection_id,
                "sha256": p.sha256,
                "line": row.line,
                "camera": row.camera,
                "stratum": p.stratum,
                "score": float(p.score),
                "inclusion_probability": float(min(1.0, p.inclusion_probability)),
                "population": population.get(p.stratum),
                "batch": batch,
                "model_version": row.model_version,
                "selector_version": p.selector_version or SELECTOR_VERSION,
                "created_at": now,
                "expires_at": now + expiry,
            }
        )
        result.picked[p.stratum] = result.picked.get(p.stratum, 0) + 1
    add_queue_items(items, session=session)
    return result


def archive_novelty(
    *,
    sessions: Callable[[], Any],
    archive: Any,
    inspector_for: Callable[[str], Any],
    line: str | None,
    per_camera: int = 300,
) -> NoveltyScorer:
    """A scorer that runs each camera's newest archived candidates through their model.

    Only cameras with a drift reference for the candidates' model version are scored (at most
    ``per_camera`` images each); ``inspector_for(model_version)`` gives an inspector (drift
    features on) or None when the checkpoint is gone.
    """
    from defectscan.drift.reference import DriftReference
    from defectscan.sources.base import ImageRecord
    from defectscan.store.drift_rows import latest_reference

    def score(rows: Sequence[CandidateRow]) -> dict[str, tuple[float, np.ndarray]]:
        out: dict[str, tuple[float, np.ndarray]] = {}
        groups: dict[tuple[str, str | None], list[CandidateRow]] = {}
        for r in rows:
            groups.setdefault((r.model_version, r.camera), []).append(r)
        for (version, camera), group in groups.items():
            with sessions() as session:
                found = latest_reference(
                    session=session, model_version=version, line=line, camera=camera
                )
            if found is None:
                continue
            reference = DriftReference.from_dict(found[1])
            inspector = inspector_for(version)
            if inspector is None:
                continue
            chosen = [r for r in group if archive.has(r.sha256)][-per_camera:]
            records = [
                ImageRecord(
                    id=r.sha256,
                    uri=f"archive:{r.sha256}",
                    data=archive.get(r.sha256),
                    line=line,
                    camera=camera,
                    captured_at=r.time,
                )
                for r in chosen
            ]
            from defectscan.drift.tracking import inspect_rows  # torch: only when scoring

            image_rows = inspect_rows(inspector, records)
            if len(image_rows) != len(chosen):
                continue  # an archived image no longer decodes: do not guess which
            whitened = reference.whiten(image_rows.features)
            distance = np.linalg.norm(whitened, axis=1)
            cut = max(float(reference.novelty_cut), 1e-9)
            for r, d, w in zip(chosen, distance, whitened, strict=True):
                out[r.sha256] = (float(d) / cut, w)
        return out

    return score


def line_estimates(
    *, session: Session, line: str | None = None, days: float = 30.0
) -> list[dict[str, Any]]:
    """Escape and false-reject rates per line from the review queue's random strata.

    Horvitz-Thompson (:func:`~defectscan.drift.review_sampling.estimate_rate`) over the fills
    of the past ``days``: ``rate``, ``ci95``, ``n`` (reviewed picks), ``picked``, ``population``.
    """
    from collections import defaultdict

    from defectscan.drift.review_sampling import estimate_rate
    from defectscan.store.review_queue import random_strata_rows

    since = datetime.now(UTC) - timedelta(days=days)
    by_line: dict[str | None, dict[str, list[Any]]] = defaultdict(lambda: defaultdict(list))
    for r in random_strata_rows(session=session, line=line, since=since):
        item_line = r.batch.rsplit("@", 1)[0]
        by_line[None if item_line == "-" else item_line][r.stratum].append(
            (r.batch, r.inclusion_probability, r.population, r.model_wrong)
        )
    out = []
    for name in sorted(by_line, key=str):
        row: dict[str, Any] = {"line": name, "days": days}
        for key, stratum in (("escape", "random_pass"), ("false_reject", "random_fail")):
            e = estimate_rate(by_line[name][stratum])
            row[key] = {
                "rate": e.rate,
                "ci95": None if e.rate is None else [e.low, e.high],
                "n": e.reviewed,
                "picked": e.picked,
                "population": e.population,
            }
        out.append(row)
    return out


def _lines(session: Session, settings: Any, since: datetime) -> list[str | None]:
    from defectscan.store.schema import Inspection

    if settings.lines:
        return sorted(settings.lines)
    found = session.scalars(
        select(Inspection.line).where(Inspection.finished_at >= since).distinct()
    )
    return sorted(found, key=lambda v: (v is None, v or ""))


def fill_review_queue(
    settings: Any,
    *,
    lines: Sequence[str] | None = None,
    hours: float = 24.0,
    until: datetime | None = None,
    novelty: bool = True,
    rng: np.random.Generator | None = None,
) -> list[FillResult]:
    """Fill every line's queue from the past ``hours`` (each line in its own transaction)."""
    from defectscan.archive import ImageArchive
    from defectscan.store.db import make_engine, session_factory

    cfg = settings.drift
    until = until or datetime.now(UTC)
    since = until - timedelta(hours=hours)
    holdout = holdout_sha256(settings.var_dir)
    engine = make_engine(settings.database_url)
    sessions = session_factory(engine, write=True)
    # Novelty is scored while a line's fill holds its write transaction: on SQLite a second
    # writer session would wait for that very lock, so the scorer reads with plain sessions.
    readers = session_factory(engine)
    inspectors: dict[str, Any] = {}
    archive = ImageArchive(settings.archive_dir or Path(settings.var_dir) / "archive")

    def inspector_for(version: str) -> Any:
        if version not in inspectors:
            with readers() as session:
                mv = session.scalars(
                    select(ModelVersion).where(ModelVersion.version == version)
                ).first()
                path = mv.checkpoint_path if mv is not None else None
            if not path or not Path(path).is_file():
                inspectors[version] = None
            else:
                from defectscan.pipeline import Inspector

                inspectors[version] = Inspector.from_checkpoint(
                    path, backend="torch", device="cpu", drift_features=True
                )
        return inspectors[version]

    out = []
    try:
        with sessions() as session:
            todo = list(lines) if lines else _lines(session, settings, since)
        with sessions.begin() as session:
            retire_model_scored_items(session=session)
        for line in todo:
            scorer = (
                archive_novelty(
                    sessions=readers,
                    archive=archive,
                    inspector_for=inspector_for,
                    line=line,
                    per_camera=cfg.novelty_images,
                )
                if novelty and cfg.novelty_images > 0
                else None
            )
            with sessions.begin() as session:
                result = fill_line(
                    session=session,
                    line=line,
                    since=since,
                    until=until,
                    budget=cfg.review_budget,
                    holdout=holdout,
                    novelty=scorer,
                    expiry=timedelta(hours=cfg.review_expiry_hours),
                    rng=rng,
                )
            log.info("review queue of %s: %s", line, result.to_dict())
            out.append(result)
    finally:
        for inspector in inspectors.values():
            if inspector is not None:
                inspector.close()
        engine.dispose()
    return out

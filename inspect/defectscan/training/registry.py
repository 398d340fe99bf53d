"""Model registry on top of the results database: candidates, a promotion gate, rollback.

A trained checkpoint is registered as a **candidate** with its metrics and lineage (parent
version, training run, dataset fingerprint). It becomes **champion** only through the gate:
challenger and champion are scored on the same holdout, and the challenger must beat the
champion on the chosen metric by at least ``margin``; otherwise it stays a candidate and the
champion keeps serving. A bad model never replaces a good one without an operator forcing it.

:func:`rollback` puts the previous champion back and retires the current one; a rolled-back
version is marked (``metrics["rolled_back_at"]``) so that a second rollback goes further back
instead of flipping between the same two versions.

All functions take ``*, session`` and leave the transaction to the caller.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from defectscan.errors import StoreError
from defectscan.model.checkpoint import Checkpoint, load_checkpoint
from defectscan.store import (
    ensure_model_version,
    get_champion,
    get_model_version,
    list_model_versions,
    set_model_status,
)
from defectscan.store.schema import ModelVersion, utcnow

__all__ = [
    "LOWER_IS_BETTER",
    "PromotionDecision",
    "evaluate_and_promote",
    "promote",
    "register_checkpoint",
    "rollback",
]

logger = logging.getLogger(__name__)

#: Metrics where smaller is better; every other metric is "higher is better".
LOWER_IS_BETTER = frozenset({"false_reject_rate", "loss"})

Evaluate = Callable[[Checkpoint, Path], dict[str, float]]


@dataclass(frozen=True)
class PromotionDecision:
    """What the gate decided and why."""

    promoted: bool
    challenger: str
    champion: str | None
    metric: str
    margin: float
    challenger_score: float | None
    champion_score: float | None
    reason: str


def register_checkpoint(
    path: str | Path,
    *,
    session: Session,
    parent_version: str | None = None,
    training_run_id: int | None = None,
    dataset_fingerprint: str | None = None,
    metrics: dict[str, Any] | None = None,
) -> ModelVersion:
    """Register a product checkpoint as a candidate (idempotent on its version).

    Metrics and the dataset fingerprint default to those training stored in the checkpoint;
    the parent defaults to the one recorded there too.
    """
    ckpt = load_checkpoint(path)
    spec = ckpt.spec
    recorded = dict(spec.metrics)
    parent = parent_version or recorded.get("parent_version")
    if parent is not None and get_model_version(str(parent), session=session) is None:
        logger.warning("parent version %s is not registered; lineage keeps it in metrics", parent)
        parent = None
    return ensure_model_version(
        session=session,
        **ckpt.registration(),
        status="candidate",
        metrics=metrics if metrics is not None else recorded,
        parent_version=str(parent) if parent is not None else None,
        training_run_id=training_run_id,
        dataset_fingerprint=dataset_fingerprint or recorded.get("dataset_fingerprint"),
    )


def _better(challenger: float, champion: float, metric: str, margin: float) -> bool:
    if metric in LOWER_IS_BETTER:
        return challenger <= champion - margin
    return challenger >= champion + margin


def _holdout_metrics(ckpt: Checkpoint, holdout: Path) -> dict[str, float]:
    # Imported here: the registry itself does not need torch-heavy training code to list models.
    from defectscan.training.train import evaluate_dataset

    return evaluate_dataset(ckpt, holdout).flat()


def _require(version: str, session: Session) -> ModelVersion:
    mv = get_model_version(version, session=session)
    if mv is None:
        msg = f"model version {version!r} is not registered; see `defectscan models list`"
        raise StoreError(msg)
    return mv


def _load(mv: ModelVersion) -> Checkpoint:
    if not mv.checkpoint_path or not Path(mv.checkpoint_path).is_file():
        msg = (
            f"checkpoint of {mv.version} is missing ({mv.checkpoint_path!r}); it cannot be "
            f"scored on a holdout"
        )
        raise StoreError(msg)
    ckpt = load_checkpoint(mv.checkpoint_path)
    if ckpt.sha256 != mv.sha256:
        msg = f"checkpoint {mv.checkpoint_path} no longer holds the weights of {mv.version}"
        raise StoreError(msg)
    return ckpt


def _record_holdout(mv: ModelVersion, holdout_key: str, scores: dict[str, float]) -> None:
    metrics = dict(mv.metrics or {})
    holdouts = dict(metrics.get("holdout", {}))
    holdouts[holdout_key] = scores
    metrics["holdout"] = holdouts
    mv.metrics = metrics  # a new dict, so the JSON column is seen as changed


def evaluate_and_promote(
    challenger: str,
    *,
    session: Session,
    holdout: str | Path,
    metric: str = "mean_iou",
    margin: float = 0.01,
    evaluate: Evaluate | None = None,
    slices: Mapping[str, Path] | None = None,
) -> PromotionDecision:
    """Score challenger and champion on ``holdout``; promote the challenger if it wins.

    ``slices`` (name -> dataset folder, e.g. the reviewed post-drift images of a drift
    retrain): a challenger that wins on the holdout must also not be worse than the champion
    on each slice (no margin: not worse is enough), or it stays a candidate.

    With no champion yet, the challenger is promoted (there is nothing to protect). Both
    versions' holdout scores are recorded in their metrics (``metrics["holdout"][path]``).
    ``evaluate`` replaces the scorer (default: :func:`defectscan.training.evaluate_dataset`).
    """
    holdout = Path(holdout)
    scorer = evaluate or _holdout_metrics
    ch = _require(challenger, session)
    if ch.status == "champion":
        return PromotionDecision(
            False, ch.version, ch.version, metric, margin, None, None, "already the champion"
        )
    champ = get_champion(session=session, name=ch.name)
    key = str(holdout.resolve())
    ch_scores = scorer(_load(ch), holdout)
    _record_holdout(ch, key, ch_scores)
    ch_score = ch_scores.get(metric)
    if ch_score is None or math.isnan(ch_score):
        msg = (
            f"metric {metric!r} is not available for {ch.version} on {holdout}; available: "
            f"{sorted(ch_scores)}"
        )
        raise StoreError(msg)
    if champ is None:
        _champion(ch.version, session)
        return PromotionDecision(
            True, ch.version, None, metric, margin, ch_score, None, "no champion yet"
        )
    champ_scores = scorer(_load(champ), holdout)
    _record_holdout(champ, key, champ_scores)
    champ_score = champ_scores.get(metric)
    if (
        champ_score is None
        or math.isnan(champ_score)
        or _better(ch_score, champ_score, metric, margin)
    ):
        worse = _worse_on_slices(ch, champ, slices or {}, scorer, metric)
        if worse is not None:
            logger.info("kept champion %s: %s", champ.version, worse)
            return PromotionDecision(
                False, ch.version, champ.version, metric, margin, ch_score, champ_score, worse
            )
        _champion(ch.version, session)
        reason = f"{metric} {ch_score:.4f} vs champion {champ_score} (margin {margin})"
        logger.info("promoted %s over %s: %s", ch.version, champ.version, reason)
        return PromotionDecision(
            True, ch.version, champ.version, metric, margin, ch_score, champ_score, reason
        )
    reason = (
        f"{metric} {ch_score:.4f} does not beat champion {champ.version} ({champ_score:.4f}) "
        f"by {margin}; it stays a candidate"
    )
    logger.info("kept champion %s: %s", champ.version, reason)
    return PromotionDecision(
        False, ch.version, champ.version, metric, margin, ch_score, champ_score, reason
    )


def _worse_on_slices(
    ch: ModelVersion,
    champ: ModelVersion,
    slices: Mapping[str, Path],
    scorer: Evaluate,
    metric: str,
) -> str | None:
    """Why the challenger is worse than the champion on some slice (None: on none)."""
    for name, folder in sorted(slices.items()):
        key = f"{name}:{Path(folder).resolve()}"
        a, b = scorer(_load(ch), Path(folder)), scorer(_load(champ), Path(folder))
        _record_holdout(ch, key, a)
        _record_holdout(champ, key, b)
        x, y = a.get(metric), b.get(metric)
        if x is None or y is None or math.isnan(x) or math.isnan(y):
            continue
        if _better(y, x, metric, 1e-12):  # the champion is strictly better there
            return (
                f"{metric} {x:.4f} on the {name} slice is worse than champion "
                f"{champ.version}'s {y:.4f}; it stays a candidate"
            )
    return None


def promote(
    version: str,
    *,
    session: Session,
    holdout: str | Path | None = None,
    metric: str = "mean_iou",
    margin: float = 0.01,
    force: bool = False,
    evaluate: Evaluate | None = None,
) -> PromotionDecision:
    """Promote ``version`` through the gate (``holdout`` given) or by operator decision (``force``).

    Without a holdout and without ``force`` this refuses: metrics recorded at training time
    come from different validation splits and do not compare fairly.
    """
    if holdout is not None and not force:
        return evaluate_and_promote(
            version,
            session=session,
            holdout=holdout,
            metric=metric,
            margin=margin,
            evaluate=evaluate,
        )
    mv = _require(version, session)
    champ = get_champion(session=session, name=mv.name)
    if not force and champ is not None and champ.id != mv.id:
        msg = (
            f"promoting {version} over champion {champ.version} needs a holdout to compare them "
            f"on (--holdout DIR), or --force for an operator decision without the gate"
        )
        raise StoreError(msg)
    _champion(version, session)
    return PromotionDecision(
        True,
        version,
        champ.version if champ else None,
        metric,
        margin,
        None,
        None,
        "forced by operator" if force else "no champion yet",
    )


def rollback(*, session: Session, name: str | None = None) -> tuple[ModelVersion, ModelVersion]:
    """Retire the current champion and bring back the previous one; returns ``(old, new)``."""
    current = get_champion(session=session, name=name)
    if current is None:
        msg = "there is no champion to roll back" + (f" for model {name!r}" if name else "")
        raise StoreError(msg)
    previous = [
        mv
        for mv in list_model_versions(session=session, status="retired", name=current.name)
        if mv.promoted_at is not None and not (mv.metrics or {}).get("rolled_back_at")
    ]
    if not previous:
        msg = (
            f"{current.version} is the first champion of {current.name!r}: nothing to roll back to"
        )
        raise StoreError(msg)
    target = max(previous, key=lambda mv: (_aware_ts(mv.promoted_at), mv.id))
    metrics = dict(current.metrics or {})
    metrics["rolled_back_at"] = utcnow().isoformat()
    current.metrics = metrics
    _champion(target.version, session)
    logger.info("rolled back %s to %s", current.version, target.version)
    return current, target


def _champion(version: str, session: Session) -> None:
    """Make ``version`` champion, and queue what drift needs of a new champion."""
    from defectscan.drift.reference_jobs import on_promoted

    set_model_status(version, "champion", session=session)
    on_promoted(version, session=session)


def _aware_ts(value: Any) -> float:
    return value.timestamp() if value is not None else 0.0
